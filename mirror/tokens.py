"""API tokens: the `[server] token_file`, one `NAME:TOKEN` per line; NAME is the actor in history.

Blank lines and lines starting with `#` are ignored. A name is `[A-Za-z0-9][A-Za-z0-9._@-]*`; a
token is at least 16 printable characters without spaces. The file must not be readable or
writable by others (mode `o-rwx`), since it holds secrets. Any problem refuses the whole file,
naming the file and the line (never the token itself).

A presented token is compared with every configured token in constant time
(`hmac.compare_digest`), so neither the answer nor its timing tells which token was close.
The file is re-read when it changes (so a token can be revoked without a restart); a file that
became invalid refuses every token until it is fixed.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from mirror.errors import ConfigError

log = logging.getLogger(__name__)

TOKEN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
TOKEN_RE = re.compile(r"^[\x21-\x7e]{16,512}$")
MAX_TOKEN_FILE = 1024 * 1024


@dataclass(frozen=True)
class Token:
    name: str
    secret: bytes


def parse_token_file(path: Path) -> tuple[Token, ...]:
    """Read and validate a token file, or raise ConfigError naming the file and the line."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path}: server.token_file: not a regular file")
        if st.st_mode & (stat.S_IROTH | stat.S_IWOTH):
            raise ConfigError(f"{path}: server.token_file: readable or writable by others "
                              f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod o-rwx it")
        if st.st_size > MAX_TOKEN_FILE:
            raise ConfigError(f"{path}: server.token_file: larger than {MAX_TOKEN_FILE} bytes")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: server.token_file: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: server.token_file: cannot read: {exc}") from None
    tokens: list[Token] = []
    names: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}: line {number}"
        name, sep, secret = line.partition(":")
        if not sep:
            raise ConfigError(f"{where}: expected NAME:TOKEN")
        if not TOKEN_NAME_RE.match(name):
            raise ConfigError(f"{where}: token name must match [A-Za-z0-9][A-Za-z0-9._@-]* (64 at most)")
        if not TOKEN_RE.match(secret):
            raise ConfigError(f"{where}: token of {name!r} must be 16 to 512 printable characters "
                              "without spaces")
        if name in names:
            raise ConfigError(f"{where}: duplicate token name {name!r}")
        encoded = secret.encode()
        if any(hmac.compare_digest(encoded, t.secret) for t in tokens):
            raise ConfigError(f"{where}: token of {name!r} is the same as another one")
        names.add(name)
        tokens.append(Token(name, encoded))
    return tuple(tokens)


class TokenRing:
    """The tokens the API accepts, reloaded when the token file changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._tokens: tuple[Token, ...] = ()
        self._stamp: tuple[int, int, int] | None = None
        if path is not None:
            self._tokens = parse_token_file(path)  # refused at startup if invalid
            self._stamp = self._file_stamp()

    def _file_stamp(self) -> tuple[int, int, int] | None:
        assert self.path is not None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _current(self) -> tuple[Token, ...]:
        if self.path is None:
            return ()
        with self._lock:
            stamp = self._file_stamp()
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._tokens = parse_token_file(self.path)
                    log.info("reloaded %d API tokens from %s", len(self._tokens), self.path)
                except ConfigError as exc:
                    log.error("token file became invalid, refusing every token: %s", exc)
                    self._tokens = ()
            return self._tokens

    @property
    def configured(self) -> bool:
        return bool(self._current())

    def identify(self, presented: str) -> str | None:
        """The name of the token `presented` is, or None. Compares against every token."""
        candidate = presented.encode()
        found: str | None = None
        for token in self._current():
            if hmac.compare_digest(candidate, token.secret) and found is None:
                found = token.name
        return found
