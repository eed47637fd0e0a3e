"""`mirror verify`: re-hash stored files against the digests their snapshots recorded, and repair.

`verify_pool` re-hashes every pool object a manifest references (of one repo, or all), in
parallel threads, and reports each damaged object (missing, wrong size, wrong content) with the
snapshots and paths that use it. It only reads.

`repair` fetches a replacement for each damaged object from upstream: the expected size and
sha256 come from the manifest (recorded from verified metadata), the upstream path is the
manifest path (newest snapshot first; APT's by-hash aliases are manifest paths too), and the
bytes go through `Fetcher` and `Pool.ingest`, the same checks a sync applies, so a replacement
that does not hash right is refused and the damaged object stays as it was. An object that
cannot be repaired is moved out of the pool into `<storage>/quarantine/` and its blob row is
forgotten: the repo port then answers an error for it instead of wrong bytes, `verify` goes on
reporting it, and the next sync that lists it fetches it again. Repairs hold the sync lock of
every repo involved (so neither a sync of those repos nor gc runs meanwhile).

`record` stores the outcome per repo (`verify_results`, `verify_damage`) for the metrics and
`mirror status`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from mirror.config import Settings
from mirror.errors import LockedError, MirrorError
from mirror.fetch import Fetcher, with_retries
from mirror.model import EntryKind, ExpectedFile, utcnow
from mirror.pool import Pool, file_sha256, storage_error
from mirror.store import Store, VerifyDamageRow, VerifyResult

Reference = tuple[str, str, str]  # (repo, snapshot, path)
#: done files, done bytes, total files, total bytes
ProgressCallback = Callable[[int, int, int, int], None]
MAX_SOURCES = 4  # upstream paths tried per damaged object


@dataclass
class Damage:
    sha256: str
    size: int  # what the manifest records
    problem: str
    references: list[Reference]  # (repo, snapshot, path), newest snapshot first
    repaired: bool = False
    repair: str | None = None  # how it was repaired, or why not

    @property
    def repos(self) -> list[str]:
        return sorted({r for r, _s, _p in self.references})


@dataclass
class IntegrityReport:
    checked: int = 0
    bytes: int = 0
    damaged: list[Damage] = field(default_factory=list)
    repos: list[str] = field(default_factory=list)  # the repos this run covered
    per_repo: dict[str, tuple[int, int]] = field(default_factory=dict)  # repo -> (objects, bytes)
    started: datetime = field(default_factory=utcnow)

    @property
    def remaining(self) -> list[Damage]:
        """Damage not repaired (all of it when no repair was tried)."""
        return [d for d in self.damaged if not d.repaired]


def check_object(pool: Pool, digest: str, size: int) -> str | None:
    """What is wrong with one pool object (None: present, right size, right content)."""
    path = pool.path_for(digest)
    try:
        actual = path.stat().st_size
        if actual != size:
            return f"size {actual}, expected {size}"
        got = file_sha256(path)
    except FileNotFoundError:
        return "missing from the pool"
    except OSError as exc:
        return f"unreadable: {exc}"
    return None if got == digest else f"content hashes to {got}"


def verify_pool(settings: Settings, store: Store, repo: str | None = None, *,
                progress: ProgressCallback | None = None, workers: int | None = None) -> IntegrityReport:
    """Re-hash every object the manifests of `repo` (or of every repo) reference."""
    pool = Pool(settings.storage.root)
    targets = store.manifest_objects(repo)
    report = IntegrityReport(repos=[repo] if repo else sorted(
        set(settings.repo_names) | {r for _size, refs in targets.values() for r, _s, _p in refs}))
    total_files, total_bytes = len(targets), sum(size for size, _refs in targets.values())
    for size, refs in targets.values():
        for name in {r for r, _s, _p in refs}:
            files, size_sum = report.per_repo.get(name, (0, 0))
            report.per_repo[name] = (files + 1, size_sum + size)
    if progress is not None:
        progress(0, 0, total_files, total_bytes)
    # biggest first: the long hashes start early and the threads finish together
    order = sorted(targets, key=lambda d: (-targets[d][0], d))
    with ThreadPoolExecutor(workers or max(2, min(16, os.cpu_count() or 2))) as executor:
        results = executor.map(lambda d: (d, check_object(pool, d, targets[d][0])), order)
        for digest, problem in results:
            size, refs = targets[digest]
            report.checked += 1
            report.bytes += size
            if problem is not None:
                refs = sorted(refs, key=lambda r: (r[1], r[0], r[2]), reverse=True)
                report.damaged.append(Damage(digest, size, problem, refs))
            if progress is not None:
                progress(report.checked, report.bytes, total_files, total_bytes)
    report.damaged.sort(key=lambda d: d.sha256)
    return report


# -- repair ---------------------------------------------------------------------------------------


def _sources(settings: Settings, damage: Damage) -> list[tuple[str, str]]:
    """(repo, path) to fetch a replacement from: configured repos only, newest snapshot first."""
    configured = set(settings.repo_names)
    seen: list[tuple[str, str]] = []
    for repo, _snapshot, path in damage.references:
        if repo in configured and (repo, path) not in seen:
            seen.append((repo, path))
    return seen[:MAX_SOURCES]


@contextmanager
def _repair_locks(settings: Settings, repos: Sequence[str]) -> Iterator[None]:
    """The sync lock of every repo whose objects are repaired, and the verify lock."""
    from mirror.sync import repo_lock

    root = settings.storage.root
    with ExitStack() as stack:
        try:
            stack.enter_context(repo_lock(root, "_verify"))  # never a repo name (they start [a-z0-9])
        except LockedError:
            raise LockedError("another `mirror verify --repair` is running") from None
        for name in sorted(repos):
            try:
                stack.enter_context(repo_lock(root, name))
            except LockedError:
                raise LockedError(f"a sync or gc of {name} is running: repair later", repo=name) from None
        yield


async def repair(settings: Settings, store: Store, report: IntegrityReport, *,
                 fetcher: Fetcher | None = None) -> None:
    """Try to replace every damaged object in `report` with verified bytes from upstream; what
    cannot be replaced is quarantined and forgotten (see the module docstring). Updates `report`."""
    import asyncio

    if not report.damaged:
        return
    root = settings.storage.root
    pool = Pool(root)
    repos = {r for d in report.damaged for r, _p in _sources(settings, d)}
    with _repair_locks(settings, sorted(repos)):
        await asyncio.to_thread(pool.remove_stale_temp, "_verify")
        tmp = await asyncio.to_thread(pool.temp_dir, "_verify")
        try:
            if fetcher is None:
                from mirror.downloads import fetch_policy

                async with Fetcher(fetch_policy(settings)) as own:
                    await _repair_all(settings, store, pool, own, tmp, report)
            else:
                await _repair_all(settings, store, pool, fetcher, tmp, report)
        finally:
            await asyncio.to_thread(shutil.rmtree, tmp, True)


async def _repair_all(settings: Settings, store: Store, pool: Pool, fetcher: Fetcher, tmp: Path,
                      report: IntegrityReport) -> None:
    import asyncio

    for damage in report.damaged:
        failures: list[str] = []
        for repo_name, path in _sources(settings, damage):
            url = settings.repo(repo_name).url + path
            expected = ExpectedFile(path, damage.size, damage.sha256, EntryKind.PACKAGE)

            async def attempt(url: str = url, expected: ExpectedFile = expected) -> str:
                async with fetcher.open_stream(url) as (_length, chunks):
                    return await pool.ingest(chunks, expected, tmp, what=expected.path)

            try:
                await with_retries(attempt, fetcher.policy)
            except MirrorError as exc:
                failures.append(f"{url}: {exc}")
                continue
            damage.repaired, damage.repair = True, f"fetched from {url}"
            break
        if not damage.repaired:
            damage.repair = "; ".join(failures) or "no configured repo lists it"
            await asyncio.to_thread(_quarantine, settings, store, pool, damage)
    if any(d.repaired for d in report.damaged):
        await asyncio.to_thread(pool.make_durable)


def _quarantine(settings: Settings, store: Store, pool: Pool, damage: Damage) -> None:
    """Move a damaged object out of the pool (kept for inspection) and forget its blob row."""
    source = pool.path_for(damage.sha256)
    if source.exists():
        target_dir = settings.storage.root / "quarantine"
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / f"{damage.sha256}.{utcnow().strftime('%Y%m%dT%H%M%S%fZ')}"
        try:
            os.replace(source, target)
        except OSError as exc:
            raise storage_error(exc, str(source)) from exc
        damage.repair = f"{damage.repair}; moved to {target}"
    store.forget_blobs([damage.sha256])


# -- results --------------------------------------------------------------------------------------


def record(store: Store, report: IntegrityReport, *, repair_tried: bool) -> None:
    """Store the outcome per covered repo (replacing that repo's previous result)."""
    finished = utcnow()
    results: list[VerifyResult] = []
    rows: list[VerifyDamageRow] = []
    for repo in report.repos:
        mine = [d for d in report.damaged if repo in d.repos]
        files, size = report.per_repo.get(repo, (0, 0))
        results.append(VerifyResult(
            repo=repo, started=report.started, finished=finished, files=files, bytes=size,
            damaged=sum(1 for d in mine if not d.repaired), repaired=sum(1 for d in mine if d.repaired),
            repair_tried=repair_tried))
        for d in mine:
            for snapshot in sorted({s for r, s, _p in d.references if r == repo}):
                path = next(p for r, s, p in d.references if r == repo and s == snapshot)
                rows.append(VerifyDamageRow(repo=repo, snapshot=snapshot, sha256=d.sha256, path=path,
                                            problem=d.problem, repaired=d.repaired))
    store.record_verify(results, rows)
