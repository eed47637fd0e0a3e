"""What the repo port serves: tier pointers and snapshot manifests, resolved to pool files.

Tier pointers live in the state database; a promotion is one row update there, so the served
view switches atomically. The catalog caches manifests (immutable per snapshot) and reloads
tier pointers whenever another process commits (SQLite's `data_version`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from mirror.model import ManifestEntry
from mirror.pool import Pool
from mirror.store import Store

MANIFEST_CACHE = 16


class StoreCatalog:
    """The `mirror.web.repo.Catalog` the server resolves requests through."""

    def __init__(self, store: Store, pool: Pool, public_key: Path | None = None) -> None:
        self.store = store
        self.pool = pool
        self.public_key = public_key
        self._lock = threading.Lock()
        self._version = -1
        self._tiers: dict[tuple[str, str], str] = {}
        self._manifests: OrderedDict[tuple[str, str], dict[str, ManifestEntry]] = OrderedDict()

    def _pointers(self) -> dict[tuple[str, str], str]:
        with self._lock:
            version = self.store.data_version()
            if version != self._version:
                self._tiers = self.store.all_tier_pointers()
                self._version = version
            return self._tiers

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
        snapshot = self._pointers().get((repo, tier))
        return self.lookup_snapshot(repo, snapshot, path) if snapshot else None

    def lookup_snapshot(self, repo: str, snapshot: str, path: str) -> ManifestEntry | None:
        manifest = self._manifest(repo, snapshot)
        return manifest.get(path) if manifest is not None else None

    def pool_path(self, sha256: str) -> Path:
        return self.pool.path_for(sha256)

    def public_key_path(self) -> Path | None:
        return self.public_key if self.public_key is not None and self.public_key.is_file() else None
