"""The content-addressed pool: ``<root>/pool/sha256/ab/cd/<hex>``.

`ingest` streams into a temp file on the same filesystem, hashes while writing, aborts as soon
as the declared size is exceeded, and renames into place only when size and digest match.
Durability is paid once per sync (`make_durable`, a syncfs) before the snapshot that needs the
blobs commits; the state database records a blob as present only after that, so after a crash an
unrecorded file under its final name is re-hashed before it is trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import hashlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterable
from pathlib import Path
from typing import BinaryIO

from mirror.errors import ChecksumMismatchError, NoSpaceError, SizeMismatchError, StorageError
from mirror.model import SHA256_RE, ExpectedFile

CHUNK = 256 * 1024
BUFFER = 1024 * 1024  # bytes received before a slice is handed to the writer thread


class Pool:
    def __init__(self, root: Path) -> None:
        self.root = root / "pool" / "sha256"
        self.tmp = root / "tmp"
        self._dirs: set[Path] = set()

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

        Checked against `expected.sha256` and, when given, `expected.alt` (another strong digest).
        The size is checked as bytes arrive (an overlong body is cut at once); received bytes are
        handed to a worker thread in slices of up to BUFFER bytes, which writes and hashes them,
        so the event loop never blocks on the disk and a small file costs one thread hop."""
        if not expected.sha256 and expected.alt is None:
            raise ChecksumMismatchError("no digest from verified metadata to check it against", path=what)
        blob = _BlobWriter(self, expected, tmp_dir, what)
        pending: list[bytes] = []
        buffered = size = 0
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > expected.size:
                    raise SizeMismatchError(
                        f"longer than the {expected.size} bytes the verified metadata declares", path=what)
                pending.append(chunk)
                buffered += len(chunk)
                if buffered >= BUFFER:
                    data, pending, buffered = b"".join(pending), [], 0
                    await asyncio.to_thread(blob.write, data)
            return await asyncio.to_thread(blob.finish, b"".join(pending))
        except BaseException:
            await asyncio.to_thread(blob.abort)
            raise

    def ensure_dir(self, directory: Path) -> None:
        if directory not in self._dirs:
            directory.mkdir(parents=True, exist_ok=True)
            self._dirs.add(directory)

    def ingest_bytes(self, data: bytes, sha256: str, tmp_dir: Path, *, what: str) -> None:
        """Blocking: store bytes already in memory, with the same checks and rename as `ingest`."""
        blob = _BlobWriter(self, ExpectedFile(what, len(data), sha256), tmp_dir, what)
        try:
            blob.finish(data)
        except BaseException:
            blob.abort()
            raise

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


class _BlobWriter:
    """The blocking half of `Pool.ingest`: a temp file, hashes, and the final checks and rename."""

    def __init__(self, pool: Pool, expected: ExpectedFile, tmp_dir: Path, what: str) -> None:
        self.pool, self.expected, self.tmp_dir, self.what = pool, expected, tmp_dir, what
        self.digest = hashlib.sha256()
        self.alt = hashlib.new(expected.alt[0]) if expected.alt is not None else None
        self.size = 0
        self.file: BinaryIO | None = None
        self.name: str | None = None

    def write(self, data: bytes) -> None:
        try:
            if self.file is None:
                fd, self.name = tempfile.mkstemp(dir=self.tmp_dir, suffix=".part")
                self.file = os.fdopen(fd, "wb")
            self.file.write(data)
        except OSError as exc:
            raise storage_error(exc, self.what) from exc
        self.digest.update(data)
        if self.alt is not None:
            self.alt.update(data)
        self.size += len(data)

    def finish(self, data: bytes) -> str:
        self.write(data)
        expected, what = self.expected, self.what
        assert self.file is not None and self.name is not None
        try:
            if self.pool.path_for(self.digest.hexdigest()).exists():
                # Replacing a name a tier may serve: the new bytes go to disk first, or a power
                # loss right after the rename could leave that name empty (HOSTILE 57).
                os.fsync(self.file.fileno())
            self.file.close()
        except OSError as exc:
            raise storage_error(exc, what) from exc
        if self.size != expected.size:
            raise SizeMismatchError(f"got {self.size} bytes, the verified metadata declares {expected.size}",
                                    path=what)
        got = self.digest.hexdigest()
        if expected.sha256 and got != expected.sha256:
            raise ChecksumMismatchError(f"sha256 {got} does not match {expected.sha256} from the verified "
                                        "metadata", path=what)
        if self.alt is not None and expected.alt is not None and self.alt.hexdigest() != expected.alt[1]:
            algo, want = expected.alt
            raise ChecksumMismatchError(f"{algo} {self.alt.hexdigest()} does not match {want} from the "
                                        "verified metadata", path=what)
        final = self.pool.path_for(got)
        try:
            self.pool.ensure_dir(final.parent)
            os.replace(self.name, final)
        except OSError as exc:
            raise storage_error(exc, what) from exc
        self.name = None
        return got

    def abort(self) -> None:
        if self.file is not None and not self.file.closed:
            self.file.close()
        if self.name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.name)
            self.name = None


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
