"""API tokens: the `[server] token_file`, one token a line; NAME is the actor in history.

    NAME:TOKEN [scope=read|promote|admin] [tiers=TIER,TIER...] [expires=RFC3339-TIME]

`NAME:TOKEN` alone (the original format) is an admin token that never expires. The optional
fields, separated by blanks, each at most once:

- `scope`: `read` may only read (GET; reads need a token only with `[server] read_auth`), every
  mutating call is 403; `promote` may read, promote and roll back, nothing else (sync, gc,
  snapshot delete: 403); `admin` (the default) may do everything.
- `tiers`: the tiers the token may move (promote into, roll back); a move of another tier is
  403. Only with `scope=promote`, which it implies when `scope` is not given.
- `expires`: an RFC 3339 time with an offset (`2027-01-01T00:00:00Z`); from then on the token is
  refused with 401 ("token expired"), as if it were unknown, and logged with its name.

Blank lines and lines starting with `#` are ignored. A name is `[A-Za-z0-9][A-Za-z0-9._@-]*`; a
token is at least 16 printable characters without spaces. The file must not be readable or
writable by others (mode `o-rwx`), since it holds secrets. Any problem refuses the whole file,
naming the file and the line (never the token itself).

A presented token is compared with every configured token in constant time
(`hmac.compare_digest`), so neither the answer nor its timing tells which token was close; the
scope, tiers and expiry are looked at only after that, for the token found.
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
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from mirror.errors import ConfigError

log = logging.getLogger(__name__)

TOKEN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
TOKEN_RE = re.compile(r"^[\x21-\x7e]{16,512}$")
TIER_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,127}$")
RFC3339_RE = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")
MAX_TOKEN_FILE = 1024 * 1024

#: scopes, weakest first: a scope allows what every weaker one does
SCOPES = ("read", "promote", "admin")
READ, PROMOTE, ADMIN = SCOPES


@dataclass(frozen=True)
class Token:
    name: str
    secret: bytes
    scope: str = ADMIN
    tiers: frozenset[str] | None = None  # None: any tier
    expires: datetime | None = None

    def __repr__(self) -> str:  # never the secret
        return f"Token({self.name!r}, scope={self.scope!r})"

    def expired(self, now: datetime) -> bool:
        return self.expires is not None and now >= self.expires

    def allows(self, needed: str) -> bool:
        """Whether the scope covers `needed` ("read", "promote" or "admin")."""
        return SCOPES.index(self.scope) >= SCOPES.index(needed)

    def allows_tier(self, tier: str) -> bool:
        return self.tiers is None or tier in self.tiers


def _parse_expires(value: str, where: str) -> datetime:
    if not RFC3339_RE.match(value):
        raise ConfigError(f"{where}: expires must be an RFC 3339 time with an offset, "
                          f"e.g. 2027-01-01T00:00:00Z (got {value[:40]!r})")
    try:
        moment = datetime.fromisoformat(value.upper().replace(" ", "T").replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{where}: expires {value[:40]!r} is not a valid time") from None
    return moment


def _parse_fields(name: str, secret: bytes, fields: list[str], where: str) -> Token:
    seen: dict[str, str] = {}
    for field in fields:
        key, sep, value = field.partition("=")
        if not sep or not value:
            raise ConfigError(f"{where}: expected KEY=VALUE after the token, got {field[:40]!r}")
        if key not in ("scope", "tiers", "expires"):
            raise ConfigError(f"{where}: unknown field {key[:40]!r} (allowed: scope, tiers, expires)")
        if key in seen:
            raise ConfigError(f"{where}: field {key!r} given twice")
        seen[key] = value
    scope = seen.get("scope")
    if scope is not None and scope not in SCOPES:
        raise ConfigError(f"{where}: scope must be one of {', '.join(SCOPES)} (got {scope[:40]!r})")
    tiers: frozenset[str] | None = None
    if "tiers" in seen:
        names = seen["tiers"].split(",")
        for tier in names:
            if not TIER_RE.match(tier):
                raise ConfigError(f"{where}: tiers must be tier names separated by commas "
                                  f"(got {tier[:40]!r})")
        if scope is None:
            scope = PROMOTE
        elif scope != PROMOTE:
            raise ConfigError(f"{where}: tiers applies to scope=promote only (this token has scope={scope})")
        tiers = frozenset(names)
    expires = _parse_expires(seen["expires"], where) if "expires" in seen else None
    return Token(name, secret, scope or ADMIN, tiers, expires)


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
        first, *fields = line.split()
        name, sep, secret = first.partition(":")
        if not sep:
            raise ConfigError(f"{where}: expected NAME:TOKEN [scope=...] [tiers=...] [expires=...]")
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
        tokens.append(_parse_fields(name, encoded, fields, where))
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

    def find(self, presented: str) -> Token | None:
        """The token `presented` is, or None. Compares against every token, in constant time."""
        candidate = presented.encode()
        found: Token | None = None
        for token in self._current():
            if hmac.compare_digest(candidate, token.secret) and found is None:
                found = token
        return found

    def identify(self, presented: str) -> str | None:
        """The name of the token `presented` is, or None (expiry and scope not considered)."""
        token = self.find(presented)
        return token.name if token is not None else None

    def check_tiers(self, tiers: Collection[str]) -> None:
        """Log a warning for every token naming a tier that is not configured (it never matches)."""
        for token in self._current():
            unknown = sorted((token.tiers or frozenset()) - set(tiers))
            if unknown:
                log.warning("API token %s names unknown tiers: %s", token.name, ", ".join(unknown))
