"""The content-addressed pool: ``<root>/pool/sha256/ab/<hex>``.

One fan-out level (as git's objects): 256 folders of up to a few thousand names each for a
million objects, which ext4 and xfs index. The two-level ``ab/cd/<hex>`` layout of earlier
versions cost one more directory creation for nearly every new object of an initial sync (about
0.25 ms each here: 0.5 s of a 2,000-package sync); a pool in that layout is moved over once, in
place, the first time this version opens it (`Pool.__init__`, under a lock; `<root>/pool/layout`
records that it is done).

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
import fcntl
import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterable
from pathlib import Path
from typing import BinaryIO

from mirror.errors import ChecksumMismatchError, NoSpaceError, SizeMismatchError, StorageError
from mirror.model import SHA256_RE, ExpectedFile

CHUNK = 256 * 1024
BUFFER = 1024 * 1024  # bytes received before a slice is handed to the writer thread
#: Files up to this size are written, hashed and renamed on the event loop itself, in one go once
#: all their bytes arrived (about 0.1 ms for 100 KB into the page cache): a thread hop per file
#: cost more than that in GIL and futex traffic (bench/sync_bench.py: 2,000 x 100 KB).
INLINE_MAX = 256 * 1024
_FANOUT = re.compile(r"^[0-9a-f]{2}$")


LAYOUT = "sha256/ab/<hex>\n"  # what <root>/pool/layout says once the pool is in this layout

log = logging.getLogger(__name__)


class Pool:
    def __init__(self, root: Path) -> None:
        self.root = root / "pool" / "sha256"
        self.tmp = root / "tmp"
        self._dirs: set[Path] = set()
        self._layout = root / "pool" / "layout"
        if not self._layout_recorded() and self.root.is_dir():
            self._upgrade_layout()

    def path_for(self, sha256: str) -> Path:
        if not SHA256_RE.match(sha256):
            raise StorageError(f"not a sha256 digest: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def _layout_recorded(self) -> bool:
        try:
            return self._layout.read_text() == LAYOUT
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise storage_error(exc, str(self._layout)) from exc

    def _record_layout(self) -> None:
        if not self._layout_recorded():
            self._layout.write_text(LAYOUT)

    def _upgrade_layout(self) -> None:
        """Blocking: move every object of the two-level layout (ab/cd/<hex>) to ab/<hex>, make the
        moves durable, then record the layout. Idempotent (a crash part-way: the next open goes
        on); serialised between processes by a lock file beside the marker."""
        try:
            with open(self.root.parent / "layout.lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if self._layout_recorded():
                    return
                moved = 0
                for top in os.scandir(self.root):
                    if not (top.is_dir(follow_symlinks=False) and _FANOUT.match(top.name)):
                        continue
                    for mid in os.scandir(top.path):
                        if not (mid.is_dir(follow_symlinks=False) and _FANOUT.match(mid.name)):
                            continue
                        for leaf in os.scandir(mid.path):
                            if leaf.is_file(follow_symlinks=False) and SHA256_RE.match(leaf.name) \
                                    and leaf.name.startswith(top.name + mid.name):
                                target = os.path.join(top.path, leaf.name)
                                if os.path.exists(target):  # the same content, by its name
                                    os.unlink(leaf.path)
                                else:
                                    os.replace(leaf.path, target)
                                moved += 1
                        with contextlib.suppress(OSError):  # not empty: something stray is left there
                            os.rmdir(mid.path)
                if moved:
                    self._flush()  # the moves are on disk before the marker says so
                    log.info("pool: %d objects moved to the one-level layout (%s)", moved, self.root)
                self._record_layout()
        except OSError as exc:
            raise storage_error(exc, str(self.root)) from exc

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._record_layout()

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
                     *, what: str, url: str | None = None) -> str:
        """Write `chunks` into the pool; return the sha256. Raise and leave nothing behind on mismatch.

        Checked against `expected.sha256` and, when given, `expected.alt` (another strong digest).
        The size is checked as bytes arrive (an overlong body is cut at once); received bytes are
        handed to a worker thread in slices of up to BUFFER bytes, which writes and hashes them,
        so the event loop never blocks long on the disk; a file of at most INLINE_MAX bytes is
        written, hashed and renamed on the event loop once complete (no thread hop).
        A mismatch names the expected and the received size or digest, and `url` (where the
        bytes came from) when the caller gives it (HOSTILE 76)."""
        if not expected.sha256 and expected.alt is None:
            raise ChecksumMismatchError("no digest from verified metadata to check it against", path=what)
        blob = _BlobWriter(self, expected, tmp_dir, what, url)
        pending: list[bytes] = []
        buffered = size = 0
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > expected.size:
                    raise SizeMismatchError(
                        f"longer than the {expected.size} bytes the verified metadata declares: expected "
                        f"{expected.size} bytes, received at least {size} (transfer cut){_source(url)}",
                        path=what)
                pending.append(chunk)
                buffered += len(chunk)
                if buffered >= BUFFER:
                    data, pending, buffered = b"".join(pending), [], 0
                    await asyncio.to_thread(blob.write, data)
            if expected.size <= INLINE_MAX:
                return blob.finish(b"".join(pending))
            return await asyncio.to_thread(blob.finish, b"".join(pending))
        except BaseException:
            if expected.size <= INLINE_MAX:
                blob.abort()
            else:
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
        self._flush()

    def _flush(self) -> None:
        fd = os.open(self.root, os.O_RDONLY)
        try:
            if _syncfs is None or _syncfs(fd) != 0:
                os.sync()
        finally:
            os.close(fd)


class _BlobWriter:
    """The blocking half of `Pool.ingest`: a temp file, hashes, and the final checks and rename."""

    def __init__(self, pool: Pool, expected: ExpectedFile, tmp_dir: Path, what: str,
                 url: str | None = None) -> None:
        self.pool, self.expected, self.tmp_dir, self.what, self.url = pool, expected, tmp_dir, what, url
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
        src = _source(self.url)
        if self.size != expected.size:
            raise SizeMismatchError(f"size mismatch: expected {expected.size} bytes (the verified metadata "
                                    f"declares it), received {self.size}{src}", path=what)
        got = self.digest.hexdigest()
        if expected.sha256 and got != expected.sha256:
            raise ChecksumMismatchError(f"sha256 mismatch: received {got} does not match the expected "
                                        f"{expected.sha256} from the verified metadata{src}", path=what)
        if self.alt is not None and expected.alt is not None and self.alt.hexdigest() != expected.alt[1]:
            algo, want = expected.alt
            raise ChecksumMismatchError(f"{algo} mismatch: received {self.alt.hexdigest()} does not match "
                                        f"the expected {want} from the verified metadata{src}", path=what)
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


def _source(url: str | None) -> str:
    """The ` (from URL)` of a mismatch message: where the bytes came from, if known, without any
    user:password part (messages reach logs, run records and the API), `repr()`-quoted if it
    holds a control character (an upstream path may)."""
    if not url:
        return ""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        host = parts.hostname or ""
        with contextlib.suppress(ValueError):
            host += f":{parts.port}" if parts.port is not None else ""
        url = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return f" (from {url})" if url.isprintable() else f" (from {url[:500]!r})"


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
