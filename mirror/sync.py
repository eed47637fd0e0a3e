"""One sync run of one repo: verify the roots, plan, fetch what is missing, commit — or nothing.

The format-specific chains (`mirror.trust.apt`, later `mirror.trust.rpm`) verify the signed root
metadata and turn it into a plan; everything else here is shared: the per-repo lock, the
freshness and rollback checks, the no-op test, the bounded parallel fetch into the pool, the
durable commit, and the sync-run record.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar, cast

from mirror.config import RepoSettings, Settings
from mirror.downloads import Helpers, fetch_into_pool, fetch_policy, landing_check
from mirror.errors import (
    ConfigError,
    ExpiredMetadataError,
    FutureMetadataError,
    LockedError,
    MirrorError,
    RollbackError,
)
from mirror.fetch import Fetcher
from mirror.model import EntryKind, ExpectedFile, ManifestEntry, PackageKey, RootRecord, utcnow
from mirror.pool import Pool, storage_error
from mirror.store import NewSnapshot, Store
from mirror.trust.gpg import Keyring, keyring_home

if TYPE_CHECKING:  # a sync needs mirror.diff only at its commit (mirror.store imports it there)
    from mirror.diff import Advisory

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_FAILURES_BEFORE_ABORT = 20
#: Signed metadata dated more than this ahead of our clock is refused (fast-forward, HOSTILE T4):
#: accepted, its Date would become the mark that makes every genuine later release a rollback.
MAX_FUTURE_SKEW = timedelta(days=1)


@dataclass
class Progress:
    """Counters one repo's sync updates; the CLI renders them."""

    repo: str
    phase: str = "starting"
    files_total: int = 0
    files_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    listeners: list[Callable[[Progress], None]] = field(default_factory=list)

    def update(self, *, phase: str | None = None, files: int = 0, size: int = 0) -> None:
        if phase is not None:
            self.phase = phase
        self.files_done += files
        self.bytes_done += size
        for listener in self.listeners:
            listener(self)


@dataclass(frozen=True)
class VerifiedRoot:
    """A root file that verified: what it said, and the raw files to serve byte for byte."""

    record: RootRecord
    files: dict[str, bytes]  # repo-relative path -> raw bytes as fetched


@dataclass(frozen=True)
class Wanted:
    """A file the snapshot needs, with what verified metadata says it is."""

    expected: ExpectedFile
    package: PackageKey | None = None
    aliases: tuple[str, ...] = ()  # further manifest paths with the same content (APT by-hash)


@dataclass
class SyncContext:
    settings: Settings
    repo: RepoSettings
    fetcher: Fetcher
    pool: Pool
    store: Store
    keyring: Keyring
    tmp: Path
    now: datetime
    semaphore: asyncio.Semaphore
    progress: Progress
    recorded: set[str] = field(default_factory=set)
    recorded_loaded: bool = False  # `recorded` holds every wanted digest the database has
    advisories: Sequence[Advisory] = ()  # parsed from verified metadata (RPM updateinfo), committed along
    #: Set by a format that checks files as they land (RPM package signatures): `fetch_all` calls it,
    #: on the event loop, once for each file of its list as soon as the bytes are in the pool.
    on_present: Callable[[ExpectedFile], None] | None = None
    #: Set by a format that reads the fetched packages again by their pool path while the sync
    #: runs (RPM package signatures): they then keep their temp names until the commit; otherwise
    #: the packages a background flush covered are moved to their final names beside the downloads
    #: (`Pool.write_ahead`).
    reads_packages: bool = False
    #: Set by a format that checks each package's RPM signature as its bytes land, in whichever
    #: process fetched them (`mirror.downloads.landing_check`): the certificates file (it exists
    #: once the verifier is built) and the pinned fingerprints.
    landing_check_with: tuple[str, tuple[str, ...]] | None = None
    landed: set[str] = field(default_factory=set)  # digests a landing check accepted
    on_close: list[Callable[[], Awaitable[None]]] = field(default_factory=list)  # run when the sync ends
    accept_identity_change: bool = False  # `mirror sync --accept-identity-change` (mirror.trust.apt)
    notes: list[str] = field(default_factory=list)  # overrides used: the successful run's message
    helpers: Helpers | None = None  # download helper processes (`mirror sync` forks them)
    #: Work the snapshot needs only at its commit (`meanwhile`), done while the packages download.
    background: list[asyncio.Future[None]] = field(default_factory=list)
    release_helpers: Callable[[], None] = lambda: None  # this sync is done with `helpers`

    def url(self, path: str) -> str:
        return self.repo.url + path

    def meanwhile(self, work: Awaitable[None]) -> None:
        """Run `work` beside the downloads; the sync waits for it (and fails with it) before its
        commit, and cancels it if the sync ends otherwise."""
        self.background.append(asyncio.ensure_future(work))

    async def settle(self) -> None:
        """Wait for every `meanwhile` work; the first failure, in the order they were started."""
        await in_order(self.background)
        self.background.clear()

    async def abandon(self) -> None:
        """Cancel the `meanwhile` work still running (the sync ends without a commit)."""
        for task in self.background:
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        self.background.clear()

    async def ingest(self, expected: ExpectedFile, *, known_absent: bool = False) -> str:
        """Make `expected` present in the pool (fetching it only if the pool lacks it); its sha256.

        `known_absent`: the caller already checked the database and the pool for it."""
        digest = expected.sha256
        if digest and not known_absent:
            if digest in self.recorded:
                return digest
            if not self.recorded_loaded:
                found = await asyncio.to_thread(self.store.recorded_blobs, (digest,))
                if found:
                    self.recorded.add(digest)
                    return digest
            if await asyncio.to_thread(self.pool.adopt, expected):
                return digest
        if digest and self.pool.salvageable(digest) \
                and await asyncio.to_thread(self.pool.adopt_salvaged, expected):
            return digest  # verified and staged by a run that died, re-hashed now
        url = self.url(expected.fetch_path or expected.path)
        check_with = self.landing_check_with if expected.kind is EntryKind.PACKAGE else None
        check = landing_check(*check_with) if check_with is not None else None
        try:
            fetched = None
            if known_absent and self.helpers is not None:
                fetched = await self.helpers.fetch(url, expected, self.tmp, self.pool, check_with)
            digest, accepted = fetched or await fetch_into_pool(self.fetcher, self.pool, expected, url,
                                                                self.tmp, self.semaphore, check=check)
        except MirrorError as exc:
            raise exc.with_context(repo=self.repo.name, path=expected.path) from None
        if accepted:
            self.landed.add(digest)
        if expected.kind is EntryKind.PACKAGE:  # the totals count packages (indices are few and small)
            self.progress.update(files=1, size=expected.size)
        return digest


class RepoFormat(Protocol):
    async def fetch_roots(self, ctx: SyncContext) -> list[VerifiedRoot]: ...

    async def plan(self, ctx: SyncContext, roots: Sequence[VerifiedRoot]) -> list[Wanted]: ...

    async def verify_fetched(self, ctx: SyncContext, wanted: Sequence[Wanted]) -> None:
        """Checks that need the package bytes (RPM header signatures); runs before the commit."""


@dataclass(frozen=True)
class SyncResult:
    repo: str
    snapshot: str | None = None  # None: unchanged
    error: MirrorError | None = None
    files: int = 0
    bytes: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


def format_for(repo: RepoSettings) -> RepoFormat:
    if repo.type == "deb":
        from mirror.trust.apt import AptFormat

        return AptFormat()
    if repo.type == "rpm":
        from mirror.trust.rpm import RpmFormat

        return RpmFormat()
    raise MirrorError(f"repo type {repo.type!r} is not supported by this version", repo=repo.name)


def plan_key(repo: RepoSettings) -> str:
    """What, besides upstream, decides a snapshot's content: a change makes a new snapshot."""
    shape = {"type": repo.type, "suites": repo.suites, "components": repo.components,
             "architectures": repo.architectures, "languages": repo.languages, "sources": repo.sources}
    if repo.filtered:  # only then: unfiltered repos keep the key (and the snapshots) they had
        shape["filters"] = repo.filter_shape()
    if repo.advisory_filtered:
        before = repo.advisory_issued_before
        shape["advisories"] = {"types": repo.advisory_types, "severities": repo.advisory_severities,
                               "issued_before": before.isoformat() if before else None,
                               "unadvised": repo.unadvised}
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


@contextmanager
def repo_lock(root: Path, repo: str) -> Iterator[None]:
    """An exclusive per-repo lock; the kernel releases it if the holder dies."""
    locks = root / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    fd = os.open(locks / f"{repo}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(f"another sync of {repo} is running", repo=repo) from None
        yield
    finally:
        os.close(fd)


def check_freshness(ctx: SyncContext, roots: Sequence[VerifiedRoot], previous: dict[str, RootRecord],
                    *, allow_rollback: bool) -> None:
    for root in roots:
        record = root.record
        what = next(iter(root.files), record.name)
        if record.valid_until is not None and record.valid_until < ctx.now:
            raise ExpiredMetadataError(
                f"expired: Valid-Until {record.valid_until.isoformat()} is before now "
                f"({ctx.now.replace(microsecond=0).isoformat()})", repo=ctx.repo.name, path=what)
        max_age = ctx.repo.max_age
        if max_age is not None and record.date is not None \
                and record.date + timedelta(seconds=max_age) < ctx.now:
            raise ExpiredMetadataError(
                f"expired: Date {record.date.isoformat()} is older than max_age "
                f"({timedelta(seconds=max_age)}) allows", repo=ctx.repo.name, path=what)
        if record.date is not None and record.date > ctx.now + MAX_FUTURE_SKEW:
            raise FutureMetadataError(
                f"dated in the future: Date {record.date.isoformat()} is more than {MAX_FUTURE_SKEW} "
                f"after now ({ctx.now.replace(microsecond=0).isoformat()})", repo=ctx.repo.name, path=what)
        problem = _revision_problem(record.revision, ctx.now)
        if problem is not None:
            raise FutureMetadataError(problem, repo=ctx.repo.name, path=what)
        before = previous.get(record.name)
        if allow_rollback or before is None:
            continue
        if _older_revision(record.revision, before.revision):
            raise RollbackError(
                f"rollback refused: revision {record.revision} is older than {before.revision} of the last "
                "accepted snapshot", repo=ctx.repo.name, path=what)
        if before.date is not None and record.date is not None and record.date < before.date:
            raise RollbackError(
                f"rollback refused: Date {record.date.isoformat()} is older than "
                f"{before.date.isoformat()} of the last accepted snapshot", repo=ctx.repo.name, path=what)


def _revision_problem(revision: str | None, now: datetime) -> str | None:
    if revision is None:  # APT roots have none: no need to load the RPM format module
        return None
    from mirror.formats.rpm import revision_problem

    return revision_problem(revision, now, MAX_FUTURE_SKEW)


def _older_revision(new: str | None, old: str | None) -> bool:
    """Revisions are compared when both are integers (createrepo_c writes a timestamp by default)."""
    if new is None or old is None or not new.isdigit() or not old.isdigit():
        return False
    return int(new) < int(old)


async def sync_repo(settings: Settings, repo: RepoSettings, store: Store, fetcher: Fetcher,
                    progress: Progress | None = None, *, allow_rollback: bool = False,
                    accept_identity_change: bool = False, helpers: Helpers | None = None,
                    release_helpers: bool = False) -> SyncResult:
    """Sync one repo. Never raises for the repo's own failures: they are in the result.

    `release_helpers`: `helpers` were held for this sync (`Helpers.hold`); it releases them once
    its downloads and checks are over, or when it ends."""
    progress = progress or Progress(repo=repo.name)
    release = _Once(helpers.release if helpers is not None and release_helpers else None)
    root = settings.storage.root
    run_id: int | None = None
    ctx: SyncContext | None = None
    try:
        with repo_lock(root, repo.name):
            # A run still "running" under a lock we now hold died with its process (kill -9, power loss).
            await asyncio.to_thread(store.interrupt_running_runs, repo.name,
                                    "interrupted: the process running this sync died")
            run_id = await asyncio.to_thread(store.start_sync_run, repo.name)
            pool = Pool(root)
            stale = await asyncio.to_thread(pool.salvage_stale_temp, repo.name)
            tmp = await asyncio.to_thread(pool.temp_dir, repo.name)
            try:
                try:
                    keyring = await asyncio.to_thread(
                        Keyring, [repo.keyring], repo.fingerprints, keyring_home(root, repo.name))
                except ValueError as exc:
                    raise ConfigError(f"keyring {repo.keyring}: {exc}", repo=repo.name) from None
                ctx = SyncContext(settings=settings, repo=repo, fetcher=fetcher, pool=pool, store=store,
                                  keyring=keyring, tmp=tmp, now=utcnow(), progress=progress,
                                  semaphore=asyncio.Semaphore(_own_transfers(settings, helpers)),
                                  accept_identity_change=accept_identity_change, helpers=helpers,
                                  release_helpers=release)
                snapshot = await _run(ctx, run_id, allow_rollback=allow_rollback)
            finally:
                release()
                if ctx is not None:
                    await ctx.abandon()
                for close in ctx.on_close if ctx is not None else ():
                    await close()
                if ctx is not None:
                    await _keep_staged(ctx)
                for folder in (tmp, *stale):
                    await asyncio.to_thread(_rmtree, folder)
        outcome = "unchanged" if snapshot is None else "snapshot"
        if snapshot is None:  # a snapshot's commit recorded the run's end already
            await _finish_run(store, run_id, outcome, progress,
                              note="; ".join(ctx.notes) if ctx is not None and ctx.notes else None)
        progress.update(phase=outcome)
        return SyncResult(repo=repo.name, snapshot=snapshot, files=progress.files_done,
                          bytes=progress.bytes_done)
    except MirrorError as exc:
        exc.with_context(repo=repo.name)
        error: MirrorError = exc
    except OSError as exc:
        error = storage_error(exc, str(exc.filename or "")).with_context(repo=repo.name)
    progress.update(phase="failed")
    log.error("%s: sync failed: %s", repo.name, error)
    for other in error.others:
        log.error("%s: sync failed: also %s", repo.name, other.with_context(repo=repo.name).within(repo.name))
    if run_id is not None:
        await _finish_run(store, run_id, "failed", progress, error=error)
    return SyncResult(repo=repo.name, error=error, files=progress.files_done, bytes=progress.bytes_done)


def _report(error: MirrorError) -> str:
    """A failed run's message: the failure, then every other one that came with it."""
    return "; ".join([str(error), *(f"also {o.within(error.repo or '')}" for o in error.others)])


async def _keep_staged(ctx: SyncContext) -> None:
    """A sync that failed keeps what it verified: its staged files go into the pool, unrecorded
    (bytes flushed before they are named, as at a commit), so the next run adopts them (re-hashed)
    instead of fetching them again. A successful sync has nothing staged left."""
    if not ctx.pool.staged:
        return
    try:
        await asyncio.to_thread(ctx.pool.make_durable)
    except (MirrorError, OSError) as exc:
        log.warning("%s: cannot keep the files this failed sync fetched: %s", ctx.repo.name, exc)


async def _finish_run(store: Store, run_id: int, outcome: str, progress: Progress, *,
                      snapshot: str | None = None, error: MirrorError | None = None,
                      note: str | None = None) -> None:
    """Record how the run ended. If even that fails (a full disk), say so and go on: the outcome
    itself stands, and the next sync closes the run as interrupted."""
    try:
        await asyncio.to_thread(store.finish_sync_run, run_id, outcome, snapshot=snapshot,
                                error_code=error.code if error else None,
                                message=_report(error) if error else note,
                                files=progress.files_done, size=progress.bytes_done)
    except MirrorError as exc:
        log.error("%s: cannot record the end of sync run %d (%s): %s", progress.repo, run_id, outcome, exc)


async def _run(ctx: SyncContext, run_id: int, *, allow_rollback: bool) -> str | None:
    repo, store = ctx.repo, ctx.store
    fmt = format_for(repo)
    ctx.progress.update(phase="verifying")
    roots = await fmt.fetch_roots(ctx)
    latest = await asyncio.to_thread(store.latest_snapshot, repo.name)
    previous = await asyncio.to_thread(store.roots, repo.name, latest) if latest else {}
    check_freshness(ctx, roots, previous, allow_rollback=allow_rollback)
    key = plan_key(repo)
    if latest is not None and await asyncio.to_thread(store.snapshot_plan_key, repo.name, latest) == key \
            and {r.record.name: r.record.sha256 for r in roots} == {n: r.sha256 for n, r in previous.items()}:
        return None

    ctx.progress.update(phase="indices")
    wanted = await fmt.plan(ctx, roots)
    entries: dict[str, ManifestEntry] = {}
    for root in roots:  # after planning: a format may add verified root files (APT Release.gpg)
        for path, data in root.files.items():
            digest = hashlib.sha256(data).hexdigest()
            await asyncio.to_thread(ctx.pool.ingest_bytes, data, digest, ctx.tmp, what=path)
            _add(entries, ManifestEntry(path, digest, len(data), EntryKind.ROOT), repo.name)
    recorded = await asyncio.to_thread(store.recorded_blob_sizes, (w.expected.sha256 for w in wanted))
    ctx.recorded = set(recorded)
    ctx.recorded_loaded = True

    ctx.progress.update(phase="packages")
    packages = [w for w in wanted if w.expected.kind is EntryKind.PACKAGE]
    distinct = {w.expected.sha256: w.expected.size for w in packages}
    ctx.progress.files_total += len(distinct)
    ctx.progress.bytes_total += sum(distinct.values())
    await fetch_all(ctx, [w.expected for w in packages])
    ctx.progress.update(phase="checking")
    await fmt.verify_fetched(ctx, packages)
    ctx.release_helpers()  # the helpers stop beside the commit once no sync needs them
    for w in wanted:
        e = w.expected
        for path in (e.path, *w.aliases):
            _add(entries, ManifestEntry(path, e.sha256, e.size, e.kind, w.package), repo.name)

    _check_sizes(entries, recorded, repo.name)
    ctx.pool.stop_naming_ahead()  # a background flush still naming files leaves the rest to the commit
    await ctx.settle()
    ctx.progress.update(phase="committing")
    new = NewSnapshot(repo=repo.name, signed_by="mirror" if repo.filtered else "upstream", plan_key=key,
                      roots=[r.record for r in roots], entries=sorted(entries.values(), key=lambda e: e.path),
                      sync_run=run_id, advisories=ctx.advisories, run_files=ctx.progress.files_done,
                      run_bytes=ctx.progress.bytes_done, run_note="; ".join(ctx.notes) or None)
    return await asyncio.to_thread(commit, ctx.pool, store, new, ctx.settings.tiers[0])


def commit(pool: Pool, store: Store, new: NewSnapshot, first_tier: str) -> str:
    """Blocking: make the staged files durable in the pool and record the snapshot; its id.

    The two overlap: the database rows are written while the pool flushes (the flush mostly waits
    for the disk), and the transaction commits only once `Pool.make_durable` has returned, so the
    database never records a blob whose name and bytes are not on disk (HOSTILE 57). If either
    fails, nothing is recorded; files already named in the pool stay, unrecorded (as after a
    failed sync: `Pool.adopt` re-hashes them before use)."""
    with ThreadPoolExecutor(1, thread_name_prefix="mirror-durable") as flusher:
        durable = flusher.submit(pool.make_durable)
        return store.commit_snapshot(new, first_tier, before_commit=durable.result)


async def in_order(jobs: Sequence[Awaitable[T]]) -> list[T]:
    """Run `jobs` at once; their results in order, or the first failure in that order (raised once
    all have finished: nothing is left running)."""
    results = await asyncio.gather(*jobs, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return cast("list[T]", results)


def _check_sizes(entries: dict[str, ManifestEntry], recorded: dict[str, int], repo: str) -> None:
    """Every path's size is its content's: a file found in the database or the pool, or fetched once
    for several paths, is not measured again, so a signed index that gives the right sha256 with a
    wrong size would otherwise be recorded with it (and served as damaged)."""
    from mirror.errors import SizeMismatchError

    said: dict[str, tuple[int, str | None]] = {d: (size, None) for d, size in recorded.items()}
    for path, e in entries.items():
        size, where = said.setdefault(e.sha256, (e.size, path))
        if size != e.size:
            source = "as stored before" if where is None else f"as listed for {where}"
            raise SizeMismatchError(f"listed as {e.size} bytes, but its content (sha256 {e.sha256}) is "
                                    f"{size} bytes {source}", repo=repo, path=path)


def _add(entries: dict[str, ManifestEntry], entry: ManifestEntry, repo: str) -> None:
    """One path, one content: two different digests for a path is a mix-and-match upstream."""
    from mirror.errors import MalformedMetadataError

    old = entries.get(entry.path)
    if old is not None and old.sha256 != entry.sha256:
        raise MalformedMetadataError(
            f"listed twice with different content ({old.sha256} and {entry.sha256})",
            repo=repo, path=entry.path)
    if old is None or (old.package is None and entry.package is not None):
        entries[entry.path] = entry


async def fetch_all(ctx: SyncContext, files: Sequence[ExpectedFile]) -> None:
    """Fetch every file the pool lacks, in parallel (bounded by the context's semaphore).

    Every failure is collected; after MAX_FAILURES_BEFORE_ABORT the rest is not attempted. The
    first failure is raised, its message saying how many more there were.
    """
    present = ctx.on_present or (lambda f: None)
    unique: list[ExpectedFile] = []
    for f in {f.sha256: f for f in files}.values():
        if f.sha256 in ctx.recorded:
            present(f)
        else:
            unique.append(f)
    failures: list[MirrorError] = []
    queue: asyncio.Queue[ExpectedFile] = asyncio.Queue()
    for f in unique:
        queue.put_nowait(f)
    pool = ctx.pool
    ahead = _WriteAhead(ctx, sum(f.size for f in unique))

    async def worker() -> None:
        while not queue.empty() and len(failures) < MAX_FAILURES_BEFORE_ABORT:
            item = queue.get_nowait()
            try:
                # A leftover of an interrupted run under its final name, unrecorded: re-hashed,
                # never trusted by name (one stat here, on the loop, as each file's turn comes).
                if pool.exists(item.sha256) and await asyncio.to_thread(pool.adopt, item):
                    present(item)
                    continue
                await ctx.ingest(item, known_absent=True)
            except MirrorError as exc:
                failures.append(exc)
            else:
                present(item)
                ahead.fetched(item.size, item.sha256)

    queued = ctx.helpers.queue_capacity if ctx.helpers is not None else 0
    workers = min(len(unique), ctx.settings.sync.max_parallel_downloads * 2 + queued) or 1
    async with asyncio.TaskGroup() as group:
        for _ in range(workers):
            group.create_task(worker())
    if failures:
        first = failures[0]
        if len(failures) > 1:
            first.message += f" (and {len(failures) - 1} more failed files)"
            first.args = (first.message,)
            first.others = failures[1:]
        raise first


#: While a sync fetches, the pool's filesystem is flushed in the background (`Pool.write_ahead`)
#: each time this share of the bytes to fetch has been staged since the last flush began, within
#: these bounds; smaller fetches are left to the commit's flush alone. On the 2,000 x 100 KB
#: benchmark, one flush at 70% took 80 ms off the commit (its flush waits for what is still
#: unwritten) for 35 ms more of fetching: the disk's work moves beside the downloads.
WRITE_AHEAD_SHARE = 0.7
WRITE_AHEAD_MIN = 64 * 1024 * 1024
WRITE_AHEAD_MAX = 1024 * 1024 * 1024


class _WriteAhead:
    """Starts `Pool.write_ahead` as a sync's fetched bytes pass each step (one at a time); the
    sync waits for it before its commit (`SyncContext.meanwhile`). The packages fetched so far are
    moved to their final names once it has flushed them, unless the format reads them again
    (`SyncContext.reads_packages`): the commit then has only the later ones to rename (on the
    benchmark, 25 ms less of commit for 10 ms more of fetching)."""

    def __init__(self, ctx: SyncContext, total: int) -> None:
        self.ctx = ctx
        self.step = 0 if total < WRITE_AHEAD_MIN else \
            min(max(int(total * WRITE_AHEAD_SHARE), WRITE_AHEAD_MIN), WRITE_AHEAD_MAX)
        self.done = self.mark = 0
        self.running: asyncio.Future[None] | None = None
        self.unread: set[str] = set()  # digests fetched, read by nothing more

    def fetched(self, size: int, digest: str | None = None) -> None:
        self.done += size
        if digest is not None and not self.ctx.reads_packages:
            self.unread.add(digest)
        if not self.step or self.done - self.mark < self.step:
            return
        if self.running is not None and not self.running.done():
            return  # the next step starts once this one is over
        self.mark = self.done
        unread, self.unread = self.unread, set()
        self.running = asyncio.ensure_future(asyncio.to_thread(self.ctx.pool.write_ahead, unread))
        self.ctx.meanwhile(self.running)


async def sync_repos(settings: Settings, names: Sequence[str], store: Store,
                     progress_for: Callable[[str], Progress] | None = None,
                     *, allow_rollback: bool = False, accept_identity_change: bool = False,
                     helpers: Helpers | None = None) -> list[SyncResult]:
    """Sync several repos in parallel with one HTTP client (and `helpers`' own, if any); one
    failing repo never stops the others."""
    repos = [settings.repo(n) for n in names] if names else list(settings.repos)
    if helpers is not None:
        helpers.hold(len(repos))  # each repo's sync releases them once its downloads are over
    async with Fetcher(fetch_policy(settings)) as fetcher:
        tasks = [sync_repo(settings, r, store, fetcher,
                           progress_for(r.name) if progress_for else None, allow_rollback=allow_rollback,
                           accept_identity_change=accept_identity_change, helpers=helpers,
                           release_helpers=helpers is not None)
                 for r in repos]
        return list(await asyncio.gather(*tasks))


class _Once:
    """Calls `action` (if any) the first time it is called; later calls do nothing."""

    def __init__(self, action: Callable[[], None] | None) -> None:
        self._action = action

    def __call__(self) -> None:
        action, self._action = self._action, None
        if action is not None:
            action()


def _own_transfers(settings: Settings, helpers: Helpers | None) -> int:
    """The sync's own share of `max_parallel_downloads`: what its download helpers do not take."""
    parallel = settings.sync.max_parallel_downloads
    return max(1, parallel - helpers.transfers) if helpers is not None else parallel


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
