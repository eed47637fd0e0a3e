"""The content-addressed pool: ``<root>/pool/sha256/ab/<hex>``.

One fan-out level (as git's objects): 256 folders of up to a few thousand names each for a
million objects, which ext4 and xfs index. The two-level ``ab/cd/<hex>`` layout of earlier
versions cost one more directory creation for nearly every new object of an initial sync (about
0.25 ms each here: 0.5 s of a 2,000-package sync); a pool in that layout is moved over once, in
place, the first time this version opens it (`Pool.__init__`, under a lock; `<root>/pool/layout`
records that it is done).

`ingest` streams into a temp file on the same filesystem, hashes while writing, aborts as soon
as the declared size is exceeded, and stages the file only when size and digest match. A small
file (at most INLINE_MAX bytes) is received whole into memory (the size cap still checked as
bytes arrive), then checked and written on the event loop in one go (`store_whole`): nothing is
created on disk for bytes that do not match.

Staged files stay in the temp folder, reachable through this `Pool`'s `path_for` (the sync reads
its indices and checks its package signatures there), until `make_durable`: one syncfs makes
their bytes durable, only then are they renamed to their final names, and a second syncfs makes
the names durable; the state database records a blob as present only after that. (While a sync
still fetches, `write_ahead` flushes in the background; the files it covered are on disk: the
packages nothing reads again are renamed right then, beside the downloads, and `make_durable`
names the others while its first syncfs writes the rest.) So after a
power loss at any point no name in the pool holds incomplete bytes (HOSTILE 57), without an
fsync per file. A crash before the renames leaves only temp files, named by their digests: the
next run of that repo re-hashes them and stages the whole ones (`salvage_stale_temp`,
`adopt_salvaged`); an unrecorded file under its final name is re-hashed before it is trusted too
(`adopt`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import hashlib
import itertools
import logging
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterable, Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from mirror.errors import ChecksumMismatchError, NoSpaceError, SizeMismatchError, StorageError
from mirror.model import SHA256_RE, ExpectedFile

CHUNK = 256 * 1024
BUFFER = 1024 * 1024  # bytes received before a slice is handed to the writer thread
#: Files up to this size are received whole into memory, then hashed, checked, written and renamed
#: on the event loop itself in one go (about 0.15 ms for 100 KB into the page cache). Handing them
#: to other threads cost more than that, on a 2-CPU machine, in GIL handovers and context switches:
#: `asyncio.to_thread` per file, and also dedicated writer threads fed by a plain queue (9 context
#: switches a file instead of 0.4; bench/sync_bench.py, 2,000 x 100 KB: fetching 20% slower).
INLINE_MAX = 256 * 1024
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_FANOUT = re.compile(r"^[0-9a-f]{2}$")


LAYOUT = "sha256/ab/<hex>\n"  # what <root>/pool/layout says once the pool is in this layout

log = logging.getLogger(__name__)


class Pool:
    def __init__(self, root: Path) -> None:
        self.root = root / "pool" / "sha256"
        self.tmp = root / "tmp"
        self._root = str(self.root)
        self._dirs: set[str] = set()
        #: Verified files waiting in a temp folder for `make_durable`: sha256 -> (temp file, final
        #: name, fan-out folder).
        self._staged: dict[str, tuple[str, str, str]] = {}
        #: Temp files whose bytes a completed `write_ahead` flushed (all written before it began).
        self._flushed: set[str] = set()
        self._naming_stopped = False  # `stop_naming_ahead`
        #: Files a dead run of the same repo had staged (named by their sha256 in its temp folder),
        #: unverified since: sha256 -> path (`salvage_stale_temp`, `adopt_salvaged`).
        self._salvage: dict[str, str] = {}
        self._layout = root / "pool" / "layout"
        if not self._layout_recorded() and self.root.is_dir():
            self._upgrade_layout()

    def path_for(self, sha256: str) -> Path:
        """Where the object is: its final name, or its temp file while it is staged here."""
        if not SHA256_RE.match(sha256):
            raise StorageError(f"not a sha256 digest: {sha256!r}")
        staged = self._staged.get(sha256)
        if staged is not None:
            return Path(staged[0])
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
        if not SHA256_RE.match(sha256):
            raise StorageError(f"not a sha256 digest: {sha256!r}")
        if sha256 in self._staged:
            return True
        return os.path.isfile(f"{self._root}/{sha256[:2]}/{sha256}")  # no pathlib: once per file

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

    def salvage_stale_temp(self, prefix: str) -> list[Path]:
        """The temp dirs a dead run of `prefix` left (call while holding that repo's lock); the
        files it had staged in them (named by their sha256) may be adopted by this run
        (`adopt_salvaged`) before the caller removes the dirs at its end."""
        if not self.tmp.is_dir():
            return []
        stale = [entry for entry in self.tmp.iterdir() if entry.name.startswith(f"{prefix}.")]
        for folder in stale:
            with contextlib.suppress(OSError):
                for entry in os.scandir(folder):
                    if SHA256_RE.match(entry.name) and entry.is_file(follow_symlinks=False):
                        self._salvage[entry.name] = entry.path
        return stale

    def salvageable(self, sha256: str) -> bool:
        return sha256 in self._salvage

    def adopt_salvaged(self, expected: ExpectedFile) -> bool:
        """Blocking: stage the file a dead run left for `expected` if it is complete and correct
        (re-hashed: it was never flushed); a wrong one is removed."""
        path = self._salvage.pop(expected.sha256, None)
        if path is None:
            return False
        try:
            if os.stat(path).st_size == expected.size and file_sha256(Path(path)) == expected.sha256:
                self._stage(expected.sha256, path)
                return True
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise storage_error(exc, path) from exc
        return False

    async def ingest(self, chunks: AsyncIterable[bytes], expected: ExpectedFile, tmp_dir: Path,
                     *, what: str, url: str | None = None) -> str:
        """Write `chunks` into the pool; return the sha256. Raise and leave nothing behind on mismatch.

        Checked against `expected.sha256` and, when given, `expected.alt` (another strong digest).
        The size is checked as bytes arrive (an overlong body is cut at once); received bytes are
        handed to a worker thread in slices of up to BUFFER bytes, which writes and hashes them,
        so the event loop never blocks long on the disk; a file of at most INLINE_MAX bytes is
        received whole, then checked, written and renamed on the event loop (`store_whole`).
        A mismatch names the expected and the received size or digest, and `url` (where the
        bytes came from) when the caller gives it (HOSTILE 76)."""
        if not expected.sha256 and expected.alt is None:
            raise ChecksumMismatchError("no digest from verified metadata to check it against", path=what)
        limit = expected.size
        pending: list[bytes] = []
        size = 0
        if limit <= INLINE_MAX:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise _too_long(expected, size, what, url)
                pending.append(chunk)
            return self.store_whole(pending[0] if len(pending) == 1 else b"".join(pending), expected,
                                    str(tmp_dir), what, url)
        buffered = 0
        blob = _BlobWriter(self, expected, tmp_dir, what, url)
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise _too_long(expected, size, what, url)
                pending.append(chunk)
                buffered += len(chunk)
                if buffered >= BUFFER:
                    data, pending, buffered = b"".join(pending), [], 0
                    await asyncio.to_thread(blob.write, data)
            return await asyncio.to_thread(blob.finish, b"".join(pending))
        except BaseException:
            await asyncio.to_thread(blob.abort)
            raise

    def ensure_dir(self, directory: str) -> None:
        if directory not in self._dirs:
            os.makedirs(directory, exist_ok=True)
            self._dirs.add(directory)

    def _replace(self, name: str, final: str, directory: str) -> None:
        """Rename temp file `name` to `final` (in `directory`, created if need be)."""
        self.ensure_dir(directory)
        try:
            os.replace(name, final)
        except FileNotFoundError:  # the fan-out folder went away (gc prunes empty ones): once more
            self._dirs.discard(directory)
            self.ensure_dir(directory)
            os.replace(name, final)

    def ingest_bytes(self, data: bytes, sha256: str, tmp_dir: Path, *, what: str) -> None:
        """Blocking: store bytes already in memory, with the same checks and staging as `ingest`."""
        self.store_whole(data, ExpectedFile(what, len(data), sha256), str(tmp_dir), what)

    def store_received(self, data: bytes, size: int, expected: ExpectedFile, tmp_dir: Path, *, what: str,
                       url: str | None = None) -> str:
        """Blocking: `ingest` for a small file already received whole (`Fetcher.fetch_capped` with
        `expected.size` as the cap: `size` bytes arrived, more than declared if it was cut)."""
        if not expected.sha256 and expected.alt is None:
            raise ChecksumMismatchError("no digest from verified metadata to check it against", path=what)
        if size > expected.size:
            raise _too_long(expected, size, what, url)
        return self.store_whole(data, expected, str(tmp_dir), what, url)

    def store_whole(self, data: bytes, expected: ExpectedFile, tmp_dir: str, what: str,
                    url: str | None = None) -> str:
        """Blocking: check `data` against `expected`, then write it to a temp file in `tmp_dir` and
        stage it (`make_durable` puts it into the pool); the sha256. Nothing is created when the
        check fails, and the temp file is gone if writing it fails."""
        digest = hashlib.sha256(data).hexdigest()
        _check(expected, len(data), digest,
               hashlib.new(expected.alt[0], data).hexdigest() if expected.alt is not None else None,
               what, url)
        if digest in self._staged:  # the same verified bytes are already waiting
            return digest
        name = ""
        try:
            fd, name = _temp_file(tmp_dir, digest)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            self._stage(digest, name)
            name = ""
        except OSError as exc:
            raise storage_error(exc, what) from exc
        finally:
            if name:
                with contextlib.suppress(OSError):
                    os.unlink(name)
        return digest

    @property
    def staged(self) -> int:
        """How many verified files wait for `make_durable`."""
        return len(self._staged)

    def _stage(self, digest: str, name: str) -> None:
        directory = f"{self._root}/{digest[:2]}"
        self._staged[digest] = (name, f"{directory}/{digest}", directory)

    def unstage(self, digest: str) -> str:
        """The temp file a staged blob waits in, handed over (a download helper process gives it
        to the sync's own Pool, `adopt_staged`): this Pool forgets it."""
        return self._staged.pop(digest)[0]

    def adopt_staged(self, digest: str, name: str) -> None:
        """Blocking: stage temp file `name`, verified as `digest` by a download helper process of
        this sync (`unstage` there); a second copy of bytes already staged is removed."""
        staged = self._staged.get(digest)
        if staged is not None:
            if staged[0] != name:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name)
            return
        self._stage(digest, name)

    def adopt(self, expected: ExpectedFile) -> bool:
        """Blocking: is an unrecorded file already under its final name complete and correct?

        Leftovers of an interrupted run are re-hashed here, never trusted by name alone; a wrong
        one is removed so that it is fetched again. (A file staged by this run verified already.)
        """
        if expected.sha256 in self._staged:
            return True
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
        """Blocking: put every staged file into the pool, durably: a syncfs (their bytes), the
        renames to their final names, a syncfs (the names). A name that already exists (the
        same content: a name is its digest) is replaced only by bytes already on disk.

        Files a completed `write_ahead` flushed are on disk already: they are renamed while the
        first syncfs writes the others, which are renamed after it."""
        self.prepare()
        batch = list(self._staged.items())  # what the first flush covers
        early = [item for item in batch if item[1][0] in self._flushed]
        if early:
            with ThreadPoolExecutor(1, thread_name_prefix="mirror-flush") as flusher:
                flushed = flusher.submit(self._flush)
                try:
                    self._name(early)
                finally:
                    flushed.result()
        else:
            self._flush()
        if not batch:
            return
        self._name([item for item in batch if item[0] in self._staged])
        self._flush()

    def _name(self, items: list[tuple[str, tuple[str, str, str]]]) -> None:
        """Rename staged files, whose bytes are on disk, to their final names."""
        final = ""
        try:
            for digest, (name, final, directory) in items:
                self._replace(name, final, directory)
                del self._staged[digest]
                self._flushed.discard(name)
        except OSError as exc:
            raise storage_error(exc, final) from exc

    def write_ahead(self, name: Collection[str] = ()) -> None:
        """Blocking: have the disk write what is staged so far (one syncfs), while a sync still
        fetches (mirror.sync.fetch_all): `make_durable`'s own flush then has less left to wait
        for. The files of `name` (digests) it covered are then renamed to their final names at
        once, beside the downloads, their bytes being on disk: the caller's word that nothing
        reads them by their temp name any more (`path_for` gives the final name from then on).
        The other files it covered are renamed by `make_durable` while its first syncfs writes
        the rest. A failure here is only logged: the files then wait for `make_durable`, as the
        ones staged since."""
        covered = {digest: staged[0] for digest, staged in list(self._staged.items())}  # all written
        try:
            self.prepare()
            self._flush()
        except OSError as exc:
            log.warning("pool %s: writing ahead failed (the commit flushes anyway): %s", self.root, exc)
            return
        self._flushed.update(covered.values())
        early = [(digest, staged) for digest, staged in list(self._staged.items())
                 if digest in name and covered.get(digest) == staged[0]]
        try:
            for item in early:
                if self._naming_stopped:  # the commit names the rest, beside its own flush
                    break
                self._name([item])
        except StorageError as exc:
            log.warning("pool %s: naming files ahead failed (the commit names them): %s", self.root, exc)

    def stop_naming_ahead(self) -> None:
        """A running `write_ahead` names no more files (the sync is about to commit: `make_durable`
        names the flushed ones left while its own first flush runs, rather than after it)."""
        self._naming_stopped = True

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
                fd, self.name = _temp_file(str(self.tmp_dir))
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
            self.file.close()
        except OSError as exc:
            raise storage_error(exc, what) from exc
        got = self.digest.hexdigest()
        alt = self.alt.hexdigest() if self.alt is not None else None
        _check(expected, self.size, got, alt, what, self.url)
        if got in self.pool._staged:  # the same verified bytes are already waiting
            self.abort()
            return got
        named = f"{self.tmp_dir}/{got}"  # by its digest: a later run can adopt it if this one dies
        try:
            if not os.path.exists(named):
                os.replace(self.name, named)
                self.name = named
        except OSError as exc:
            raise storage_error(exc, what) from exc
        self.pool._stage(got, self.name)
        self.name = None
        return got

    def abort(self) -> None:
        if self.file is not None and not self.file.closed:
            self.file.close()
        if self.name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.name)
            self.name = None


_names = itertools.count()


def _temp_file(tmp_dir: str, digest: str | None = None) -> tuple[int, str]:
    """A new, exclusively created temp file in `tmp_dir` (no symlink followed): (fd, name); named
    `digest` when given and free (verified bytes: a later run can adopt it if this one dies)."""
    if digest is not None:
        name = f"{tmp_dir}/{digest}"
        with contextlib.suppress(FileExistsError):
            return os.open(name, _TEMP_FLAGS, 0o600), name
    while True:
        name = f"{tmp_dir}/{os.getpid()}-{next(_names)}.part"
        try:
            return os.open(name, _TEMP_FLAGS, 0o600), name
        except FileExistsError:
            continue


def _too_long(expected: ExpectedFile, size: int, what: str, url: str | None) -> SizeMismatchError:
    return SizeMismatchError(
        f"longer than the {expected.size} bytes the verified metadata declares: expected "
        f"{expected.size} bytes, received at least {size} (transfer cut){_source(url)}", path=what)


def _check(expected: ExpectedFile, size: int, sha256: str, alt: str | None, what: str,
           url: str | None) -> None:
    """Size and digests received against what the verified metadata declares (messages name both)."""
    if size != expected.size:
        raise SizeMismatchError(f"size mismatch: expected {expected.size} bytes (the verified metadata "
                                f"declares it), received {size}{_source(url)}", path=what)
    if expected.sha256 and sha256 != expected.sha256:
        raise ChecksumMismatchError(f"sha256 mismatch: received {sha256} does not match the expected "
                                    f"{expected.sha256} from the verified metadata{_source(url)}", path=what)
    if alt is not None and expected.alt is not None and alt != expected.alt[1]:
        algo, want = expected.alt
        raise ChecksumMismatchError(f"{algo} mismatch: received {alt} does not match the expected {want} "
                                    f"from the verified metadata{_source(url)}", path=what)


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
    try:  # the C library is already loaded: no `ctypes.util.find_library` (it runs ldconfig)
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        from ctypes.util import find_library

        name = find_library("c")
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
