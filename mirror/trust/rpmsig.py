"""RPM package signatures: each package's header signature checked against the repo's pinned keys.

`rpmkeys --checksig` runs against a private rpm database (never the host's) that holds only the
repo's pinned keys, with `_pkgverify_level signature` so that an unsigned package fails (rpm's
default passes it). The database is built once per key set, atomically, under the storage root.
A package that verified once for a key set is remembered by digest, so a resync never re-checks
what it already proved.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mirror.errors import SignatureError, StorageError
from mirror.trust.gpg import Keyring

BATCH = 200
TIMEOUT = 600
_KEY_LINE = re.compile(r"Signature, key ID ([0-9a-fA-F]+): (\S+)")


@dataclass(frozen=True)
class PackageCheck:
    label: str  # the package's path in the repo, for messages
    file: Path  # the bytes to check (a pool file)


def keyset_id(keyring: Keyring) -> str:
    return hashlib.sha256(",".join(sorted(keyring.pinned)).encode()).hexdigest()[:16]


class PackageVerifier:
    def __init__(self, keyring: Keyring, root: Path) -> None:
        self.keyring = keyring
        self.keyset = keyset_id(keyring)
        self.dbpath = root / self.keyset
        self._build(root)

    def _env(self) -> dict[str, str]:
        return {"HOME": str(self.dbpath), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}

    def _defines(self, dbpath: Path) -> list[str]:
        return ["--define", f"_dbpath {dbpath}", "--define", "_pkgverify_level signature"]

    def _build(self, root: Path) -> None:
        if (self.dbpath / ".complete").exists():
            return
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.keyset}.", dir=root))
        try:
            keys = subprocess.run(
                ["gpg", "--homedir", str(self.keyring.home), "--batch", "--no-options", "--armor",
                 "--export", *sorted(self.keyring.pinned)], capture_output=True, check=False, timeout=60)
            if keys.returncode != 0 or not keys.stdout:
                raise StorageError(f"cannot export the pinned keys for rpm: {keys.stderr.decode()[-300:]}")
            (tmp / "keys.asc").write_bytes(keys.stdout)
            proc = subprocess.run(["rpmkeys", *self._defines(tmp), "--import", str(tmp / "keys.asc")],
                                  capture_output=True, text=True, check=False, timeout=60,
                                  env={**self._env(), "HOME": str(tmp)})
            if proc.returncode != 0:
                raise StorageError(f"rpmkeys --import failed: {proc.stderr[-300:]}")
            (tmp / ".complete").write_text("ok\n")
            try:
                os.replace(tmp, self.dbpath)
            except OSError:
                if not (self.dbpath / ".complete").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def check(self, packages: Sequence[PackageCheck]) -> list[str]:
        """Blocking: the problems found, one line per bad package (empty: every one verified)."""
        problems: list[str] = []
        for i in range(0, len(packages), BATCH):
            problems += self._check_batch(packages[i:i + BATCH])
        return problems

    def _check_batch(self, batch: Sequence[PackageCheck]) -> list[str]:
        try:
            proc = subprocess.run(["rpmkeys", *self._defines(self.dbpath), "--checksig", "-v",
                                   *(str(p.file) for p in batch)], capture_output=True, text=True,
                                  check=False, timeout=TIMEOUT, env=self._env())
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SignatureError(f"cannot run rpmkeys: {exc}") from exc
        blocks = _blocks(proc.stdout)
        problems = []
        for p in batch:
            lines = blocks.get(str(p.file))
            verdict = _verdict(lines) if lines is not None else "rpmkeys gave no verdict"
            if verdict is not None:
                problems.append(f"{p.label}: {verdict}")
        if proc.returncode not in (0, 1) and not problems:
            problems.append(f"rpmkeys exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
        return problems


def _blocks(output: str) -> dict[str, list[str]]:
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            current = blocks.setdefault(line[:-1], [])
        elif current is not None and line.strip():
            current.append(line.strip())
    return blocks


def _verdict(lines: list[str]) -> str | None:
    """None when the package carries a good signature by a key in the database and intact digests."""
    if not lines:  # its name and nothing else: rpmkeys refused the headers (the reason is on stderr)
        return "rpmkeys could not read its signature header or header (no check reported)"
    signed_ok = False
    for line in lines:
        name, _, result = line.rpartition(": ")
        key = _KEY_LINE.search(line)
        if key is not None:
            if result == "OK":
                signed_ok = True
            elif result == "NOKEY":
                return f"signed by key ID {key.group(1).lower()}, which is not one of this repo's keys"
            else:
                return f"signature by key ID {key.group(1).lower()}: {result}"
        elif result not in ("OK", "NOTFOUND"):
            return f"{name}: {result}"
    return None if signed_ok else "not signed (no signature by any key)"
