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

Repos with `tier_signing = "mirror"` (`mirror_signed`): under a tier's path, a suite's
`InRelease`, `Release` and `Release.gpg` are the ones the mirror re-issued for that tier
(`mirror.releases`): the newest issue whose snapshot the tier serves or still answers for within
the grace window. The upstream's own signed root files are never served there (only under
`/snapshots/`, byte for byte), so a client trusting only the mirror's key never sees a mix.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from mirror.affinity import AFFINITY_SECONDS, MemoryPins, Pins
from mirror.model import EntryKind, ManifestEntry, utcnow
from mirror.pool import Pool
from mirror.store import Store

MANIFEST_CACHE = 16


AFFINITY = timedelta(seconds=AFFINITY_SECONDS)  # how long a client keeps the snapshot of its root file
ROOT_NAMES = ("repomd.xml", "InRelease", "Release")  # reading one of these pins the client


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
    # (repo, tier) -> path -> ((snapshot, entry), ...) of re-issued Release files, newest first
    issued: dict[tuple[str, str], dict[str, tuple[tuple[str, ManifestEntry], ...]]]


class StoreCatalog:
    """The `mirror.web.repo.Catalog` the server resolves requests through.

    `grace` is how long after a move a tier still answers for the snapshots it served before;
    `mirror_signed` names the repos whose tiers serve re-issued Release files; `pins` keeps the
    per-client snapshot pins (mirror.affinity; in memory by default); `clock` is injectable for
    tests."""

    def __init__(self, store: Store, pool: Pool, public_key: Path | None = None, *,
                 grace: timedelta = timedelta(hours=1),
                 clock: Callable[[], datetime] = utcnow, mirror_signed: Collection[str] = (),
                 pins: Pins | None = None) -> None:
        self.store = store
        self.pool = pool
        self.public_key = public_key
        self.grace = grace
        self.clock = clock
        self.mirror_signed = frozenset(mirror_signed)
        self._lock = threading.Lock()
        self._version: tuple[int, int] | None = None
        self._hint: bytes | None = None
        self._view = _View({}, {}, {})
        self._manifests: OrderedDict[tuple[str, str], dict[str, ManifestEntry]] = OrderedDict()
        self.pins: Pins = pins if pins is not None else MemoryPins()

    def _current_view(self) -> _View:
        # Asked on every request: the store's cheap hint first (no SQL), read before the marker so
        # that a commit in between is seen at the next look rather than hidden behind it.
        hint = self.store.change_hint()
        if hint is not None and hint == self._hint:
            return self._view
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
                self._view = _View(pointers, {k: tuple(v) for k, v in recent.items()}, self._load_issued())
                self._version = version
                # gc may have removed a snapshot: forget its cached manifest
                for key in [k for k in self._manifests if not self.store.has_snapshot(*k)]:
                    del self._manifests[key]
            self._hint = hint
            return self._view

    def _load_issued(self) -> dict[tuple[str, str], dict[str, tuple[tuple[str, ManifestEntry], ...]]]:
        if not self.mirror_signed:
            return {}
        issued: dict[tuple[str, str], dict[str, list[tuple[str, ManifestEntry]]]] = {}
        for release in self.store.tier_releases():  # newest first
            if release.repo not in self.mirror_signed:
                continue
            paths = issued.setdefault((release.repo, release.tier), {})
            for path, (sha256, size) in release.files().items():
                paths.setdefault(path, []).append(
                    (release.snapshot, ManifestEntry(path, sha256, size, EntryKind.ROOT)))
        return {key: {path: tuple(v) for path, v in paths.items()} for key, paths in issued.items()}

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

    def lookup_tier(self, tier: str, repo: str, path: str, client: str | None = None) -> ManifestEntry | None:
        view = self._current_view()
        key = (repo, tier)
        snapshot = view.pointers.get(key)
        if repo not in self.mirror_signed:
            if path.endswith(ROOT_NAMES):  # a root file always comes from the current snapshot
                entry = self._resolve(view, key, snapshot, path)
                if client is not None and entry is not None and entry.kind is EntryKind.ROOT:
                    self._pin(client, key, snapshot)
                return entry
            return self._resolve(view, key, self._pinned(view, key, snapshot, client) or snapshot, path)
        issued = view.issued.get(key, {}).get(path)
        if issued is not None:
            serving = {snapshot, *self._graced(view, key, snapshot)}
            return next((entry for snap, entry in issued if snap in serving), None)
        entry = self._resolve(view, key, snapshot, path)
        return None if entry is not None and entry.kind is EntryKind.ROOT else entry

    def _resolve(self, view: _View, key: tuple[str, str], snapshot: str | None,
                 path: str) -> ManifestEntry | None:
        repo = key[0]
        if snapshot is not None and (entry := self._lookup(repo, snapshot, path)) is not None:
            return entry
        recent = view.recent.get(key)
        if not recent:
            return None
        horizon = self.clock() - self.grace
        for served in recent:
            if served.until < horizon:
                break
            if served.snapshot != snapshot and (
                    entry := self._lookup(repo, served.snapshot, path)) is not None:
                return entry
        return None

    def _pinned(self, view: _View, key: tuple[str, str], current: str | None,
                client: str | None) -> str | None:
        """The snapshot this client read its root metadata from, while the tier still answers for it.

        A client reads a root file and then, in separate requests, its detached signature and the
        files it names (dnf: repomd.xml, then repomd.xml.asc, then primary...). If the tier moves
        in between, the signature would belong to another snapshot; so for AFFINITY after reading a
        root file, a client keeps being answered from that snapshot (within the grace window).
        Pins only matter while the tier moved within AFFINITY (before that, every pin is the
        current pointer), so only then are they looked up."""
        if client is None:
            return None
        recent = view.recent.get(key)
        if not recent or recent[0].until < self.clock() - AFFINITY:
            return None
        snapshot = self.pins.get(client, *key)
        if snapshot is None:
            return None
        return snapshot if snapshot == current or snapshot in self._graced(view, key, current) else None

    def _pin(self, client: str, key: tuple[str, str], snapshot: str | None) -> None:
        if snapshot is not None:
            self.pins.pin(client, key[0], key[1], snapshot)

    def _graced(self, view: _View, key: tuple[str, str], current: str | None) -> list[str]:
        horizon = self.clock() - self.grace
        seen: list[str] = []
        for served in view.recent.get(key, ()):
            if served.until >= horizon and served.snapshot != current and served.snapshot not in seen:
                seen.append(served.snapshot)
        return seen

    def grace_snapshots(self, repo: str, tier: str) -> list[str]:
        """The snapshots other than the current one that `tier` still answers for, newest first."""
        view = self._current_view()
        return self._graced(view, (repo, tier), view.pointers.get((repo, tier)))

    def lookup_snapshot(self, repo: str, snapshot: str, path: str) -> ManifestEntry | None:
        self._current_view()  # after a commit: forget the manifests of deleted snapshots (gc, delete)
        return self._lookup(repo, snapshot, path)

    def _lookup(self, repo: str, snapshot: str, path: str) -> ManifestEntry | None:
        """lookup_snapshot for callers that have just refreshed the view (one look per request)."""
        manifest = self._manifest(repo, snapshot)
        return manifest.get(path) if manifest is not None else None

    def pool_path(self, sha256: str) -> Path:
        return self.pool.path_for(sha256)

    def public_key_path(self) -> Path | None:
        return self.public_key if self.public_key is not None and self.public_key.is_file() else None
