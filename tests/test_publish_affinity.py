"""A client that read a tier's root file keeps getting the files of that snapshot for a while,
even if the tier moves in between (dnf reads repomd.xml, then repomd.xml.asc and the records in
separate requests: a move in between must not pair one snapshot's file with another's
signature). Root files themselves always come from the current snapshot, so a looping client is
never held back."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from mirror.pool import Pool
from mirror.publish import StoreCatalog
from mirror.store import Store
from mirror.tiers import Tiers
from tests.helpers import seed_snapshot

INDEX = "dists/stable/main/binary-amd64/Packages"


def test_client_keeps_the_snapshot_of_the_root_file_it_read(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    pool = Pool(tmp_path)
    old = seed_snapshot(store, pool, "repo", {"dists/stable/InRelease": b"old", INDEX: b"old index"})
    new = seed_snapshot(store, pool, "repo", {"dists/stable/InRelease": b"new", INDEX: b"new index"})
    tiers = Tiers(Store(tmp_path / "state.db"), ("dev", "prod"))
    tiers.promote("repo", "dev", snapshot=old, actor="t")
    catalog = StoreCatalog(Store(tmp_path / "state.db"), pool, grace=timedelta(hours=1))

    def read(path: str, client: str | None) -> bytes:
        entry = catalog.lookup_tier("dev", "repo", path, client)
        assert entry is not None
        return pool.path_for(entry.sha256).read_bytes()

    assert read("dists/stable/InRelease", "10.0.0.1") == b"old"
    tiers.promote("repo", "dev", snapshot=new, actor="t")
    assert read(INDEX, "10.0.0.1") == b"old index"  # pinned to what it read the root file from
    assert read(INDEX, "10.0.0.2") == b"new index"  # another client: the current snapshot
    assert read(INDEX, None) == b"new index"
    assert read("dists/stable/InRelease", "10.0.0.1") == b"new"  # root files: always current
    assert read(INDEX, "10.0.0.1") == b"new index"


def test_pin_ends_when_the_grace_window_no_longer_covers_the_snapshot(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    pool = Pool(tmp_path)
    old = seed_snapshot(store, pool, "repo", {"dists/stable/InRelease": b"old", INDEX: b"old index"})
    new = seed_snapshot(store, pool, "repo", {"dists/stable/InRelease": b"new", INDEX: b"new index"})
    tiers = Tiers(Store(tmp_path / "state.db"), ("dev", "prod"))
    tiers.promote("repo", "dev", snapshot=old, actor="t")
    catalog = StoreCatalog(Store(tmp_path / "state.db"), pool, grace=timedelta(0))
    entry = catalog.lookup_tier("dev", "repo", "dists/stable/InRelease", "10.0.0.1")
    assert entry is not None
    tiers.promote("repo", "dev", snapshot=new, actor="t")
    index = catalog.lookup_tier("dev", "repo", INDEX, "10.0.0.1")
    assert index is not None and pool.path_for(index.sha256).read_bytes() == b"new index"
