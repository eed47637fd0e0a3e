"""No broken client during a move: under a tier's path, what the current snapshot lacks is still
answered from the snapshots the tier served within the grace window (by-hash indices and
packages of the old snapshot), and no longer once the window has passed. Served by the real
repo-port app on 127.0.0.1, with the catalog's clock under the test's control."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from mirror.model import utcnow
from mirror.pool import Pool
from mirror.publish import StoreCatalog
from mirror.store import Store
from mirror.tiers import Tiers
from mirror.web.repo import RepoResponder
from tests.helpers import app_in_thread, http, seed_snapshot

ORDER = ("dev", "test", "uat", "prod")
OLD_INDEX = b"Package: hello\nVersion: 1.0\n"
NEW_INDEX = b"Package: hello\nVersion: 2.0\n"


def by_hash(data: bytes) -> str:
    return f"dists/stable/main/binary-amd64/by-hash/SHA256/{hashlib.sha256(data).hexdigest()}"


def tree(index: bytes, release: bytes, package: str, payload: bytes) -> dict[str, bytes]:
    return {"dists/stable/InRelease": release,
            "dists/stable/main/binary-amd64/Packages": index,
            by_hash(index): index,
            package: payload}


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[str, Tiers, Clock, str, str]]:
    store = Store(tmp_path / "state.db")
    pool = Pool(tmp_path)
    old = seed_snapshot(store, pool, "repo",
                        tree(OLD_INDEX, b"old release", "pool/hello_1.0_amd64.deb", b"h1"))
    new = seed_snapshot(store, pool, "repo",
                        tree(NEW_INDEX, b"new release", "pool/hello_2.0_amd64.deb", b"h2"))
    tiers = Tiers(Store(tmp_path / "state.db"), ORDER)  # moves through another connection
    tiers.promote("repo", "dev", snapshot=old, actor="t")  # dev serves old, as a client read it
    clock = Clock()
    catalog = StoreCatalog(Store(tmp_path / "state.db"), pool, grace=timedelta(hours=1), clock=clock)
    with app_in_thread(RepoResponder(catalog)) as url:
        yield url, tiers, clock, old, new


def get(url: str) -> tuple[int, bytes]:
    reply = http("GET", url)
    return reply.status, reply.body


def test_old_index_by_hash_and_old_package_stay_served_within_the_window(
        setup: tuple[str, Tiers, Clock, str, str]) -> None:
    url, tiers, clock, _old, new = setup
    base = f"{url}/dev/repo"
    assert get(f"{base}/dists/stable/InRelease") == (200, b"old release")
    tiers.promote("repo", "dev", snapshot=new, actor="t")  # the switch, mid-update for that client
    assert get(f"{base}/dists/stable/InRelease") == (200, b"new release")
    # what the client read InRelease for is still there ...
    assert get(f"{base}/{by_hash(OLD_INDEX)}") == (200, OLD_INDEX)
    assert get(f"{base}/pool/hello_1.0_amd64.deb") == (200, b"h1")
    # ... the current snapshot wins where both have the path ...
    assert get(f"{base}/dists/stable/main/binary-amd64/Packages") == (200, NEW_INDEX)
    # ... nothing else leaks in: other tiers and unknown paths are still 404
    assert get(f"{url}/test/repo/pool/hello_1.0_amd64.deb")[0] == 404
    assert get(f"{base}/pool/nothing_1_all.deb")[0] == 404
    clock.now += timedelta(minutes=59)
    assert get(f"{base}/pool/hello_1.0_amd64.deb") == (200, b"h1")
    clock.now += timedelta(minutes=2)  # the window has passed
    assert get(f"{base}/{by_hash(OLD_INDEX)}")[0] == 404
    assert get(f"{base}/pool/hello_1.0_amd64.deb")[0] == 404
    assert get(f"{base}/{by_hash(NEW_INDEX)}") == (200, NEW_INDEX)


def test_back_and_forth_serves_both_snapshots_files(setup: tuple[str, Tiers, Clock, str, str]) -> None:
    url, tiers, clock, old, new = setup
    base = f"{url}/dev/repo"
    for target in (new, old, new, old):
        tiers.promote("repo", "dev", snapshot=target, actor="t")
        clock.now += timedelta(seconds=1)
        for path, body in ((by_hash(OLD_INDEX), OLD_INDEX), (by_hash(NEW_INDEX), NEW_INDEX),
                           ("pool/hello_1.0_amd64.deb", b"h1"), ("pool/hello_2.0_amd64.deb", b"h2")):
            assert get(f"{base}/{path}") == (200, body), (target, path)


def test_rollback_keeps_the_newer_snapshots_files_for_the_window(
        setup: tuple[str, Tiers, Clock, str, str]) -> None:
    url, tiers, clock, _old, new = setup
    tiers.promote("repo", "dev", snapshot=new, actor="t")
    tiers.rollback("repo", "dev", actor="t")  # back to old; a client had read new's InRelease
    assert get(f"{url}/dev/repo/dists/stable/InRelease") == (200, b"old release")
    assert get(f"{url}/dev/repo/pool/hello_2.0_amd64.deb") == (200, b"h2")
    assert get(f"{url}/dev/repo/{by_hash(NEW_INDEX)}") == (200, NEW_INDEX)
    clock.now += timedelta(hours=2)
    assert get(f"{url}/dev/repo/pool/hello_2.0_amd64.deb")[0] == 404


def test_zero_grace_serves_only_the_current_snapshot(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    pool = Pool(tmp_path)
    seed_snapshot(store, pool, "repo", tree(OLD_INDEX, b"old", "pool/hello_1.0_amd64.deb", b"h1"))
    seed_snapshot(store, pool, "repo", tree(NEW_INDEX, b"new", "pool/hello_2.0_amd64.deb", b"h2"))
    catalog = StoreCatalog(Store(tmp_path / "state.db"), pool, grace=timedelta(0))
    assert catalog.lookup_tier("dev", "repo", "pool/hello_1.0_amd64.deb") is None
    assert catalog.lookup_tier("dev", "repo", "pool/hello_2.0_amd64.deb") is not None
    graced = StoreCatalog(Store(tmp_path / "state.db"), pool)
    assert graced.lookup_tier("dev", "repo", "pool/hello_1.0_amd64.deb") is not None
    assert graced.grace_snapshots("repo", "dev") == [s.id for s in store.snapshots("repo")][1:]
