"""`mirror.sync.commit`: the snapshot's rows are written while the pool flushes, and the database
commits only once the flush is done (HOSTILE 57); if the flush fails, nothing is recorded."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from mirror.errors import NoSpaceError
from mirror.model import EntryKind, ExpectedFile, ManifestEntry, RootRecord, utcnow
from mirror.pool import Pool
from mirror.store import NewSnapshot, Store
from mirror.sync import commit


def _staged_snapshot(tmp_path: Path) -> tuple[Pool, Store, NewSnapshot, str]:
    pool, store = Pool(tmp_path / "storage"), Store(tmp_path / "storage" / "state.db")
    data = b"package bytes\n" * 100
    digest = hashlib.sha256(data).hexdigest()
    tmp = pool.temp_dir("repo")
    pool.store_whole(data, ExpectedFile("pool/p.deb", len(data), digest), str(tmp), "pool/p.deb")
    root = RootRecord(name="stable", sha256="0" * 64, date=utcnow(), valid_until=None)
    new = NewSnapshot(repo="repo", signed_by="upstream", plan_key="k", roots=[root],
                      entries=[ManifestEntry("pool/p.deb", digest, len(data), EntryKind.INDEX)])
    return pool, store, new, digest


def _snapshots_seen_by_another_connection(db: Path) -> int:
    with sqlite3.connect(db) as other:
        return int(other.execute("SELECT COUNT(*) FROM snapshots").fetchone()[0])


def test_the_commit_waits_for_the_pool_flush_and_follows_it(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    pool, store, new, digest = _staged_snapshot(tmp_path)
    seen: list[tuple[str, object]] = []
    flush = Pool.make_durable

    def make_durable(self: Pool) -> None:
        flush(self)
        # the flush is done: the name is in the pool, the rows are not yet visible to anyone
        seen.append(("flushed", (self.path_for(digest).is_file(),
                                 _snapshots_seen_by_another_connection(store.path))))

    monkeypatch.setattr(Pool, "make_durable", make_durable)
    snapshot = commit(pool, store, new, "dev")
    assert seen == [("flushed", (True, 0))]
    assert store.latest_snapshot("repo") == snapshot
    assert _snapshots_seen_by_another_connection(store.path) == 1
    assert pool.staged == 0


def test_a_failed_pool_flush_records_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pool, store, new, _ = _staged_snapshot(tmp_path)

    def make_durable(self: Pool) -> None:
        raise NoSpaceError("no space left on device", path=str(self.root))

    monkeypatch.setattr(Pool, "make_durable", make_durable)
    with pytest.raises(NoSpaceError):
        commit(pool, store, new, "dev")
    assert store.latest_snapshot("repo") is None
    assert _snapshots_seen_by_another_connection(store.path) == 0
    assert store.tier_snapshot("repo", "dev") is None
