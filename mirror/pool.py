"""The content-addressed pool: ``<root>/pool/sha256/ab/cd/<hex>``.

`ingest` streams into a temp file on the same filesystem, hashes while writing, aborts as soon
as the declared size is exceeded, and renames into place only when size and digest match.
Durability is paid once per sync (`make_durable`, a syncfs) before the snapshot that needs the
blobs commits; the state database records a blob as present only after that, so after a crash an
unrecorded file under its final name is re-hashed before it is trusted.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterable
from pathlib import Path

import aiofiles
import aiofiles.os

from mirror.errors import ChecksumMismatchError, NoSpaceError, SizeMismatchError, StorageError
from mirror.model import SHA256_RE, ExpectedFile

CHUNK = 256 * 1024


class Pool:
    def __init__(self, root: Path) -> None:
        self.root = root / "pool" / "sha256"
        self.tmp = root / "tmp"

    def path_for(self, sha256: str) -> Path:
        if not SHA256_RE.match(sha256):
            raise StorageError(f"not a sha256 digest: {sha256!r}")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def temp_dir(self, prefix: str) -> Path:
        self.prepare()
        return Path(tempfile.mkdtemp(prefix=f"{prefix}.", dir=self.tmp))

    def remove_stale_temp(self, prefix: str) -> None:
        """Remove temp dirs a dead run of `prefix` left (call while holding that repo's lock)."""
        if not self.tmp.is_dir():
            return
        for entry in self.tmp.iterdir():
            if entry.name.startswith(f"{prefix}."):
                shutil.rmtree(entry, ignore_errors=True)

    async def ingest(self, chunks: AsyncIterable[bytes], expected: ExpectedFile, tmp_dir: Path,
                     *, what: str) -> str:
        """Write `chunks` into the pool; return the sha256. Raise and leave nothing behind on mismatch.

        Checked against `expected.sha256` and, when given, `expected.alt` (another strong digest)."""
        if not expected.sha256 and expected.alt is None:
            raise ChecksumMismatchError("no digest from verified metadata to check it against", path=what)
        fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, suffix=".part")
        os.close(fd)
        digest = hashlib.sha256()
        alt = hashlib.new(expected.alt[0]) if expected.alt is not None else None
        size = 0
        try:
            async with aiofiles.open(tmp_name, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > expected.size:
                        raise SizeMismatchError(
                            f"longer than the {expected.size} bytes the verified metadata declares",
                            path=what)
                    digest.update(chunk)
                    if alt is not None:
                        alt.update(chunk)
                    await out.write(chunk)
            if size != expected.size:
                raise SizeMismatchError(
                    f"got {size} bytes, the verified metadata declares {expected.size}", path=what)
            got = digest.hexdigest()
            if expected.sha256 and got != expected.sha256:
                raise ChecksumMismatchError(f"sha256 {got} does not match the expected {expected.sha256}",
                                            path=what)
            if alt is not None and expected.alt is not None and alt.hexdigest() != expected.alt[1]:
                algo, want = expected.alt
                raise ChecksumMismatchError(f"{algo} {alt.hexdigest()} does not match the expected {want}",
                                            path=what)
            final = self.path_for(got)
            await aiofiles.os.makedirs(final.parent, exist_ok=True)
            await aiofiles.os.replace(tmp_name, final)
            return got
        except OSError as exc:
            raise storage_error(exc, what) from exc
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)

    def ingest_bytes(self, data: bytes, sha256: str, tmp_dir: Path, *, what: str) -> None:
        """Blocking: store bytes already in memory (and already checked by the caller)."""
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ChecksumMismatchError("content does not match its expected sha256", path=what)
        final = self.path_for(sha256)
        fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp_name, final)
        except OSError as exc:
            raise storage_error(exc, what) from exc
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)

    def adopt(self, expected: ExpectedFile) -> bool:
        """Blocking: is an unrecorded file already under its final name complete and correct?

        Leftovers of an interrupted run are re-hashed here, never trusted by name alone; a wrong
        one is removed so that it is fetched again.
        """
        final = self.path_for(expected.sha256)
        try:
            if final.stat().st_size != expected.size:
                final.unlink()
                return False
            if file_sha256(final) == expected.sha256:
                return True
            final.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise storage_error(exc, str(final)) from exc
        return False

    def make_durable(self) -> None:
        """Blocking: flush everything written to the pool's filesystem (one syncfs per sync)."""
        self.prepare()
        fd = os.open(self.root, os.O_RDONLY)
        try:
            if _syncfs is None or _syncfs(fd) != 0:
                os.sync()
        finally:
            os.close(fd)


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def storage_error(exc: OSError, what: str) -> StorageError:
    import errno

    if exc.errno == errno.ENOSPC:
        return NoSpaceError(f"no space left on device while storing it ({exc.filename or ''})", path=what)
    return StorageError(f"cannot store it: {exc}", path=what)


def _load_syncfs() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        fn = ctypes.CDLL(name, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_syncfs = _load_syncfs()
