"""The mirror's own OpenPGP key (`[signing]`): checked at config load, used to sign what the mirror
re-issues (APT Release files of tiers with `tier_signing = "mirror"`), exported for clients.

gpg runs against the configured GnuPG home only, non-interactively: `--batch --pinentry-mode
loopback` with an empty passphrase, so it can never wait for a prompt. The key must therefore
have no passphrase, or the home's gpg-agent must hold it preset (`gpg-preset-passphrase`, with
`allow-preset-passphrase` in its gpg-agent.conf). gpg 2.1+ keeps secret keys in its agent, which
gpg starts on demand in that home (its sockets live in the home or under /run/user/UID).

`check_signing_key` is what config loading calls: the key must match exactly one secret key that
is present (not a stub or on a missing card), not expired or revoked, able to sign, and a trial
signature must succeed. Its verdict is cached per process while the home's key files do not
change. Blocking: async callers use `asyncio.to_thread`.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from mirror.errors import MirrorError

GPG = "gpg"
GPG_TIMEOUT = 60.0
DIGEST = "SHA512"
_BASE = ("--no-options", "--batch", "--no-tty", "--pinentry-mode", "loopback", "--passphrase", "")
_BAD_VALIDITY = {"e": "expired", "r": "revoked", "d": "disabled", "i": "invalid", "n": "not valid"}
_cache: dict[tuple[str, str, tuple[float, ...]], str] = {}
_cache_lock = threading.Lock()


class SigningKeyError(MirrorError):
    """The mirror's signing key is missing or cannot sign."""

    code = "signing_failed"
    http_status = 500


def _gpg(home: Path, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run([GPG, "--homedir", str(home), *_BASE, *args], input=input,
                              stdin=None if input is not None else subprocess.DEVNULL,
                              capture_output=True, check=False, timeout=GPG_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise SigningKeyError(f"gpg did not finish in {GPG_TIMEOUT:.0f} s (waiting for a passphrase?)") \
            from None
    except OSError as exc:
        raise SigningKeyError(f"cannot run gpg: {exc}") from None


def _stderr(proc: subprocess.CompletedProcess[bytes]) -> str:
    lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if lines else f"gpg exit status {proc.returncode}"


def _home_state(home: Path) -> tuple[float, ...]:
    """Changes when the home's keys change (for the check cache)."""
    stamps: list[float] = []
    for name in ("pubring.kbx", "pubring.gpg", "private-keys-v1.d", "secring.gpg"):
        try:
            stamps.append((home / name).stat().st_mtime)
        except OSError:
            stamps.append(-1.0)
    return tuple(stamps)


def _find_secret_key(home: Path, key: str) -> str:
    """The primary fingerprint of the one usable secret key `key` names, or SigningKeyError."""
    if not home.is_dir():
        raise SigningKeyError("gnupghome is not a directory")
    proc = _gpg(home, "--with-colons", "--with-fingerprint", "--list-secret-keys", "--", key)
    if proc.returncode != 0:
        raise SigningKeyError(f"no secret key found ({_stderr(proc)})")
    keys: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        rec = line.split(":")
        if rec[0] == "sec":
            current = {"validity": rec[1], "caps": rec[11] if len(rec) > 11 else "",
                       "serial": rec[14] if len(rec) > 14 else "", "fpr": ""}
            keys.append(current)
        elif rec[0] == "fpr" and current is not None and not current["fpr"] and len(rec) > 9:
            current["fpr"] = rec[9].upper()
        elif rec[0] in ("ssb", "uid") and current is not None and not current["fpr"]:
            current = None
    if not keys:
        raise SigningKeyError("no secret key found")
    if len(keys) > 1:
        raise SigningKeyError(f"matches {len(keys)} secret keys ({', '.join(k['fpr'] for k in keys)}); "
                              "give the full fingerprint")
    found = keys[0]
    if found["validity"] in _BAD_VALIDITY:
        raise SigningKeyError(f"key {found['fpr']} is {_BAD_VALIDITY[found['validity']]}")
    if "S" not in found["caps"]:
        raise SigningKeyError(f"key {found['fpr']} has no usable signing (sub)key")
    if not found["fpr"]:
        raise SigningKeyError("gpg listed the key without a fingerprint")
    return found["fpr"]


def check_signing_key(home: Path, key: str) -> str:
    """The fingerprint of the key `key` names in `home`, after a trial signature; else SigningKeyError."""
    cache_key = (str(home), key, _home_state(home))
    with _cache_lock:
        if (known := _cache.get(cache_key)) is not None:
            return known
    fingerprint = _find_secret_key(home, key)
    MirrorSigner(home, fingerprint).detach_sign(b"mirror: signing key check\n")
    with _cache_lock:
        _cache[cache_key] = fingerprint
    return fingerprint


@dataclass(frozen=True)
class MirrorSigner:
    """Signs with one key of one GnuPG home. Build it with `MirrorSigner.load` (checks the key)."""

    home: Path
    fingerprint: str

    @classmethod
    def load(cls, home: Path, key: str) -> MirrorSigner:
        return cls(home, check_signing_key(home, key))

    def _sign(self, mode: str, data: bytes) -> bytes:
        proc = _gpg(self.home, "--status-fd", "2", "--digest-algo", DIGEST, "--local-user", self.fingerprint,
                    *mode.split(), input=data)
        status = proc.stderr.decode("utf-8", "replace")
        if proc.returncode != 0 or "[GNUPG:] SIG_CREATED " not in status or not proc.stdout:
            detail = [line for line in status.splitlines() if not line.startswith("[GNUPG:]")]
            reason = detail[-1] if detail else f"exit status {proc.returncode}"
            if "passphrase" in reason.lower():
                reason += " (the key must have no passphrase, or its gpg-agent must hold it preset)"
            raise SigningKeyError(f"gpg could not sign with {self.fingerprint} in {self.home}: {reason}")
        return proc.stdout

    def clearsign(self, data: bytes) -> bytes:
        """An inline-signed message (InRelease)."""
        return self._sign("--clearsign", data)

    def detach_sign(self, data: bytes) -> bytes:
        """An armored detached signature (Release.gpg)."""
        return self._sign("--armor --detach-sign", data)

    def public_key(self) -> bytes:
        """The armored public key (primary and subkeys, no secrets)."""
        proc = _gpg(self.home, "--armor", "--export-options", "export-minimal", "--export", self.fingerprint)
        if proc.returncode != 0 or b"BEGIN PGP PUBLIC KEY BLOCK" not in proc.stdout:
            raise SigningKeyError(f"gpg could not export {self.fingerprint}: {_stderr(proc)}")
        return proc.stdout

    def export_public(self, storage_root: Path) -> Path:
        """Write the public key to `<storage>/keys/mirror.asc` (served at /keys/mirror.asc) if it changed."""
        path = storage_root / "keys" / "mirror.asc"
        data = self.public_key()
        try:
            if path.read_bytes() == data:
                return path
        except OSError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".mirror.asc.")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path
