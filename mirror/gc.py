"""`mirror gc`: remove snapshots nothing needs, then pool files nothing references.

A snapshot of a repo is kept when any of these holds, else removed (manifest, roots, issued
Release rows, the snapshot row; the tier history keeps naming it):

- a tier points at it, or would point back at it on `rollback` (the `from` of its last move);
- a tier served it within the grace window (`[server] grace_period`): the repo port still answers
  for it (`mirror.publish`);
- it is the repo's newest snapshot (the freshness and rollback checks of the next sync compare
  against it);
- retention keeps it: among the newest `keep_last`, or younger than `keep_days` days.

Issued Release rows (`tier_signing = "mirror"`) are kept only where the repo port may serve them:
the newest per tier, suite and snapshot, for the snapshots the tier serves or still answers for.

The pool is shared by every repo: a blob goes only when no snapshot of any repo and no kept
Release row references it. That sweep runs only while no sync of any configured repo runs (it
holds every repo's sync lock, `mirror.sync.repo_lock`) and no Release is being issued (the pool
lock, exclusive); a repo named on the command line whose sync runs is refused outright. Blob rows
are deleted in the same transaction as the snapshots, then the files are unlinked: a crash in
between leaves unrecorded files, which are harmless (a sync re-hashes an unrecorded file before it
trusts it) and the next gc removes. Files in the pool that the database never recorded (a sync that
failed after downloading) are removed as well.

`dry_run` does all of it inside a transaction that is rolled back, and unlinks nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from mirror.config import RepoSettings, Settings
from mirror.errors import LockedError
from mirror.model import SHA256_RE, utcnow
from mirror.pool import Pool
from mirror.releases import pool_lock
from mirror.store import Store
from mirror.sync import repo_lock

log = logging.getLogger(__name__)


@dataclass
class RepoGc:
    repo: str
    removed: list[str] = field(default_factory=list)  # snapshot ids, newest first
    kept: int = 0


@dataclass
class GcReport:
    dry_run: bool
    repos: list[RepoGc] = field(default_factory=list)
    releases_removed: int = 0  # issued Release rows
    swept: bool = False  # whether pool files were considered at all
    sweep_skipped: str | None = None  # why not
    files_removed: int = 0
    bytes_removed: int = 0
    unrecorded_removed: int = 0  # pool files the database never recorded
    unrecorded_bytes: int = 0

    def as_json(self) -> dict[str, object]:
        return {"dry_run": self.dry_run,
                "repos": [{"repo": r.repo, "removed": r.removed, "kept": r.kept} for r in self.repos],
                "snapshots_removed": sum(len(r.removed) for r in self.repos),
                "releases_removed": self.releases_removed,
                "pool": {"swept": self.swept, "skipped": self.sweep_skipped, "files": self.files_removed,
                         "bytes": self.bytes_removed, "unrecorded_files": self.unrecorded_removed,
                         "unrecorded_bytes": self.unrecorded_bytes}}


def kept_snapshots(store: Store, repo: RepoSettings, *, now: datetime, grace: timedelta) -> set[str]:
    """What the rules above keep for `repo` (call inside the transaction that deletes the rest)."""
    ages = store.snapshot_ages(repo.name)
    keep: set[str] = set()
    if ages:
        keep.add(ages[0][0])  # the newest
    retention = repo.retention
    keep.update(snap for snap, _ in ages[:retention.keep_last])
    if retention.keep_days > 0:
        cutoff = now - timedelta(days=retention.keep_days)
        keep.update(snap for snap, created in ages if created >= cutoff)
    keep.update(s.snapshot for s in store.tiers(repo.name).values() if s.snapshot is not None)
    keep.update(store.rollback_targets(repo.name).values())
    keep.update(_graced(store, repo.name, now=now, grace=grace))
    return keep


def _graced(store: Store, repo: str, *, now: datetime, grace: timedelta) -> set[str]:
    """Snapshots a tier of `repo` served until less than `grace` ago (+1 minute of margin)."""
    if grace <= timedelta(0):
        return set()
    return {m.from_snapshot for m in store.moves_since(now - grace - timedelta(minutes=1))
            if m.repo == repo and m.from_snapshot is not None}


def _served_releases(store: Store, repos: Sequence[str], *, now: datetime, grace: timedelta) -> set[int]:
    """Ids of the issued Release rows the repo port may serve (the newest per tier, suite and
    snapshot, for what each tier serves or answers for within the grace window)."""
    serving: dict[tuple[str, str], set[str]] = {}
    for (repo, tier), snap in store.all_tier_pointers().items():
        serving.setdefault((repo, tier), set()).add(snap)
    if grace > timedelta(0):
        for move in store.moves_since(now - grace - timedelta(minutes=1)):
            if move.from_snapshot is not None:
                serving.setdefault((move.repo, move.tier), set()).add(move.from_snapshot)
    wanted = set(repos)
    return {r.id for r in store.tier_releases()
            if r.repo not in wanted or r.snapshot in serving.get((r.repo, r.tier), set())}


def collect_garbage(settings: Settings, store: Store, repos: Sequence[str] | None = None, *,
                    dry_run: bool = False, now: datetime | None = None) -> GcReport:
    """Remove (or with `dry_run`, count) what nothing needs. Raises LockedError if a sync of a
    named repo (all configured ones when none are named) runs."""
    targets = [settings.repo(name) for name in repos] if repos else list(settings.repos)
    root = settings.storage.root
    grace = timedelta(seconds=settings.server.grace_period)
    report = GcReport(dry_run=dry_run, repos=[RepoGc(r.name) for r in targets])
    with ExitStack() as stack:
        for repo in targets:
            stack.enter_context(repo_lock(root, repo.name))  # LockedError: a sync runs
        busy: list[str] = []
        for other in settings.repos:
            if other in targets:
                continue
            try:
                stack.enter_context(repo_lock(root, other.name))
            except LockedError:
                busy.append(other.name)
        if busy:
            report.sweep_skipped = f"a sync of {', '.join(busy)} is running"
        elif not stack.enter_context(pool_lock(root, exclusive=True, wait=30.0)):
            report.sweep_skipped = "a Release is being issued (pool lock busy)"
        report.swept = report.sweep_skipped is None
        doomed_blobs = _collect_in_db(settings, store, targets, report, dry_run=dry_run,
                                      now=now or utcnow(), grace=grace)
        if report.swept:
            _sweep_files(Pool(root), store, doomed_blobs, report, dry_run=dry_run)
    return report


def _collect_in_db(settings: Settings, store: Store, targets: Sequence[RepoSettings], report: GcReport, *,
                   dry_run: bool, now: datetime, grace: timedelta) -> dict[str, int]:
    """One transaction: snapshots, Release rows and (when sweeping) blob rows. The doomed blobs."""
    doomed: dict[str, int] = {}
    with store.transaction(dry_run=dry_run):
        for repo, entry in zip(targets, report.repos, strict=True):
            keep = kept_snapshots(store, repo, now=now, grace=grace)
            for snap, _created in store.snapshot_ages(repo.name):
                if snap in keep:
                    entry.kept += 1
                else:
                    store.delete_snapshot(repo.name, snap)
                    entry.removed.append(snap)
        served = _served_releases(store, [r.name for r in targets], now=now, grace=grace)
        stale = [r.id for r in store.tier_releases(latest=False) if r.id not in served]
        report.releases_removed = store.delete_tier_releases(stale)
        store.delete_orphan_advisories()  # advisories only the removed snapshots listed
        if report.swept:
            referenced = store.referenced_digests()
            doomed = {d: n for d, n in store.blob_sizes().items() if d not in referenced}
            store.delete_blobs(doomed)
            report.files_removed = len(doomed)
            report.bytes_removed = sum(doomed.values())
    return doomed


def _sweep_files(pool: Pool, store: Store, doomed: dict[str, int], report: GcReport, *,
                 dry_run: bool) -> None:
    """Unlink the blobs whose rows are gone, then the files nobody ever recorded."""
    if not dry_run:
        for digest in doomed:
            with suppress(FileNotFoundError):
                pool.path_for(digest).unlink()
    recorded = set(store.blob_sizes())  # in a dry run, still with the doomed blobs' rows
    for path in _pool_files(pool.root):
        if path.name in recorded:
            continue
        try:
            size = path.stat().st_size
            if not dry_run:
                path.unlink()
        except FileNotFoundError:
            continue
        report.unrecorded_removed += 1
        report.unrecorded_bytes += size
    if not dry_run:
        _prune_empty_dirs(pool.root)


def _pool_files(root: Path) -> list[Path]:
    found: list[Path] = []
    if not root.is_dir():
        return found
    for top in os.scandir(root):  # <root>/ab/<hex> (mirror.pool)
        if not top.is_dir(follow_symlinks=False):
            continue
        for leaf in os.scandir(top.path):
            if leaf.is_file(follow_symlinks=False) and SHA256_RE.match(leaf.name):
                found.append(Path(leaf.path))
    return found


def _prune_empty_dirs(root: Path) -> None:
    if not root.is_dir():
        return
    for top in os.scandir(root):
        if top.is_dir(follow_symlinks=False):
            with suppress(OSError):
                os.rmdir(top.path)
