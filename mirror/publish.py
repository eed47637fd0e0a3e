"""What the repo port serves: tier pointers and snapshot manifests, resolved to pool files.

Tier pointers live in the state database; a promotion is one row update there, so the served
view switches atomically. The catalog caches manifests (immutable per snapshot) and reloads
tier pointers and recent tier history whenever anyone commits (`Store.change_marker`).

No broken client during a move: a client that read InRelease (or repomd.xml) from the snapshot
a tier served before a move goes on asking for that snapshot's index files (often by hash) and
packages. Under a tier's path, a file the current snapshot lacks is therefore looked up in the
snapshots the tier served within the grace window (newest first): those named by the `from`
side of the tier's moves made within the window. The current snapshot always wins, so a path
only ever resolves to bytes some verified snapshot of that tier listed under that very path.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from mirror.model import ManifestEntry, utcnow
from mirror.pool import Pool
from mirror.store import Store

MANIFEST_CACHE = 16


@dataclass(frozen=True)
class _Recent:
    """A snapshot a tier served until `until` (newest first in a tier's list)."""

    snapshot: str
    until: datetime


@dataclass(frozen=True)
class _View:
    """Per data version: every tier's pointer and the snapshots it left recently."""

    pointers: dict[tuple[str, str], str]
    recent: dict[tuple[str, str], tuple[_Recent, ...]]


class StoreCatalog:
    """The `mirror.web.repo.Catalog` the server resolves requests through.

    `grace` is how long after a move a tier still answers for the snapshots it served before;
    `clock` is injectable for tests."""

    def __init__(self, store: Store, pool: Pool, public_key: Path | None = None, *,
                 grace: timedelta = timedelta(hours=1),
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.store = store
        self.pool = pool
        self.public_key = public_key
        self.grace = grace
        self.clock = clock
        self._lock = threading.Lock()
        self._version: tuple[int, int] | None = None
        self._view = _View({}, {})
        self._manifests: OrderedDict[tuple[str, str], dict[str, ManifestEntry]] = OrderedDict()

    def _current_view(self) -> _View:
        with self._lock:
            version = self.store.change_marker()
            if version != self._version:
                pointers = self.store.all_tier_pointers()
                recent: dict[tuple[str, str], list[_Recent]] = {}
                if self.grace > timedelta(0):
                    # Moves are newest first; entries older than the window only get older, so
                    # the list is filtered again by time at lookup and never needs a reload.
                    for move in self.store.moves_since(self.clock() - self.grace):
                        if move.from_snapshot is not None:
                            recent.setdefault((move.repo, move.tier), []).append(
                                _Recent(move.from_snapshot, move.at))
                self._view = _View(pointers, {k: tuple(v) for k, v in recent.items()})
                self._version = version
            return self._view

    def _manifest(self, repo: str, snapshot: str) -> dict[str, ManifestEntry] | None:
        key = (repo, snapshot)
        with self._lock:
            cached = self._manifests.get(key)
            if cached is not None:
                self._manifests.move_to_end(key)
                return cached
        if not self.store.has_snapshot(repo, snapshot):
            return None
        manifest = self.store.manifest(repo, snapshot)
        with self._lock:
            self._manifests[key] = manifest
            while len(self._manifests) > MANIFEST_CACHE:
                self._manifests.popitem(last=False)
        return manifest

    def lookup_tier(self, tier: str, repo: str, path: str) -> ManifestEntry | None:
        view = self._current_view()
        key = (repo, tier)
        snapshot = view.pointers.get(key)
        if snapshot is not None and (entry := self.lookup_snapshot(repo, snapshot, path)) is not None:
            return entry
        recent = view.recent.get(key)
        if not recent:
            return None
        horizon = self.clock() - self.grace
        for served in recent:
            if served.until < horizon:
                break
            if served.snapshot != snapshot and (
                    entry := self.lookup_snapshot(repo, served.snapshot, path)) is not None:
                return entry
        return None

    def grace_snapshots(self, repo: str, tier: str) -> list[str]:
        """The snapshots other than the current one that `tier` still answers for, newest first."""
        view = self._current_view()
        current = view.pointers.get((repo, tier))
        horizon = self.clock() - self.grace
        seen: list[str] = []
        for served in view.recent.get((repo, tier), ()):
            if served.until >= horizon and served.snapshot != current and served.snapshot not in seen:
                seen.append(served.snapshot)
        return seen

    def lookup_snapshot(self, repo: str, snapshot: str, path: str) -> ManifestEntry | None:
        manifest = self._manifest(repo, snapshot)
        return manifest.get(path) if manifest is not None else None

    def pool_path(self, sha256: str) -> Path:
        return self.pool.path_for(sha256)

    def public_key_path(self) -> Path | None:
        return self.public_key if self.public_key is not None and self.public_key.is_file() else None
