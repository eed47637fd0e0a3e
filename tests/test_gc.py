"""`mirror gc`: removes exactly the snapshots that no tier, rollback, grace window or retention rule
needs, then the pool files nothing references (re-issued Release files included); never while a
sync runs; `--dry-run` changes nothing; `mirror verify` is clean afterwards."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path

import pytest

from fixtures.keys import SigningKey
from mirror.errors import LockedError
from mirror.gc import collect_garbage
from mirror.integrity import verify_pool
from mirror.model import utcnow
from mirror.pool import Pool
from mirror.publish import StoreCatalog
from mirror.store import Store
from mirror.sync import repo_lock
from mirror.tiers import Tiers
from tests.helpers import Mirror, http, seed_snapshot, serve_both, write_config, write_tokens

ORDER = ("dev", "test", "uat", "prod")
COMMON = b"a package every snapshot has"
TOKEN = "gc-token-0123456789abcdef0123"
RETENTION = "[retention]\nkeep_last = 1\nkeep_days = 0\n"


def files(i: int) -> dict[str, bytes]:
    return {"dists/stable/InRelease": f"release {i}".encode(), "pool/common_1_all.deb": COMMON,
            f"pool/p_{i}_all.deb": f"package {i}".encode()}


def blob(pool: Pool, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    path = pool.path_for(digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest, len(data)


def make_mirror(tmp_path: Path, archive_key: SigningKey, *, extra_repo: str = "",
                extra_server: str = "") -> Mirror:
    keyring = archive_key.write_public(tmp_path / "keys" / "archive.asc")
    return write_config(tmp_path / "mirror", "http://127.0.0.1:9/", keyring, extra_top=RETENTION,
                        extra_repo=extra_repo, extra_server=extra_server)


def pool_files(pool: Pool) -> set[str]:
    return {p.name for p in pool.root.rglob("*") if p.is_file()}


def state(store: Store) -> tuple[object, ...]:
    return ([s.id for s in store.snapshots("repo")], sorted(store.blob_sizes()),
            sorted(r.id for r in store.tier_releases(latest=False)))


def test_gc_removes_exactly_what_nothing_needs(tmp_path: Path, archive_key: SigningKey) -> None:
    mirror = make_mirror(tmp_path, archive_key)
    settings = mirror.settings
    root = settings.storage.root
    store, pool = Store(root / "state.db"), Pool(root)
    s1, s2, s3, s4, s5 = (seed_snapshot(store, pool, "repo", files(i)) for i in range(1, 6))  # dev: s1 .. s5
    Tiers(store, ORDER).promote("repo", "prod", snapshot=s1, actor="t", force=True)
    # re-issued Release files: dev's older issue for s5 (superseded), its newest one, one for s2
    now = utcnow()

    def issue(snapshot: str, tag: str) -> None:
        store.record_tier_release("repo", "dev", "stable", snapshot, issued=utcnow(), valid_until=now,
                                  inrelease=blob(pool, f"{tag} InRelease".encode()),
                                  release=blob(pool, f"{tag} Release".encode()),
                                  release_gpg=blob(pool, f"{tag} Release.gpg".encode()))

    issue(s5, "superseded")
    issue(s2, "old")
    issue(s5, "current")
    stray = blob(pool, b"left behind by a failed sync")  # never recorded
    before, files_before = state(store), pool_files(pool)

    # now: every older snapshot is still in dev's grace window (1 h): nothing goes
    report = collect_garbage(settings, store, dry_run=True)
    assert [r.removed for r in report.repos] == [[]] and report.repos[0].kept == 5

    # two hours on: s5 (newest, dev), s1 (prod), s4 (dev's rollback target) stay; s3 and s2 go
    later = now + timedelta(hours=2)
    dry = collect_garbage(settings, store, dry_run=True, now=later)
    assert dry.repos[0].removed == [s3, s2] and dry.repos[0].kept == 3 and dry.swept
    assert (dry.releases_removed, dry.files_removed, dry.unrecorded_removed) == (1, 10, 1)
    snapshot_bytes = sum(len(b) for i in (2, 3) for p, b in files(i).items() if "common" not in p)
    release_bytes = sum(len(f"{tag} {name}") for tag in ("superseded", "old")
                        for name in ("InRelease", "Release", "Release.gpg"))
    assert dry.bytes_removed == snapshot_bytes + release_bytes
    assert state(store) == before and pool_files(pool) == files_before  # the dry run changed nothing

    done = collect_garbage(settings, store, now=later)
    assert done.as_json() == {**dry.as_json(), "dry_run": False}
    assert [s.id for s in store.snapshots("repo")] == [s5, s4, s1]
    left = pool_files(pool)
    assert stray[0] not in left and hashlib.sha256(COMMON).hexdigest() in left
    assert hashlib.sha256(b"package 2").hexdigest() not in left
    assert hashlib.sha256(b"current InRelease").hexdigest() in left
    assert [r.snapshot for r in store.tier_releases(latest=False)] == [s5]
    assert left == set(store.blob_sizes())  # every file recorded, every record on disk
    report = verify_pool(settings, store)
    assert report.damaged == [] and report.checked == len(store.referenced_digests()) - 3
    # every byte a tier serves is still there
    catalog = StoreCatalog(Store(root / "state.db"), pool, grace=timedelta(0))
    for tier, snapshot in (("dev", s5), ("prod", s1)):
        for path in store.manifest("repo", snapshot):
            entry = catalog.lookup_tier(tier, "repo", path)
            assert entry is not None and catalog.pool_path(entry.sha256).is_file()
    Tiers(store, ORDER).rollback("repo", "dev", actor="t")  # the rollback target survived
    # a second run: no snapshot goes (s5 is now dev's rollback target, s4 what it serves), but the
    # Release issued for s5 is no longer served by dev once the grace window is over
    again = collect_garbage(settings, store, now=later)
    assert again.repos[0].removed == [] and again.unrecorded_removed == 0
    assert (again.releases_removed, again.files_removed) == (1, 3)


def test_gc_never_runs_beside_a_sync(tmp_path: Path, archive_key: SigningKey) -> None:
    keyring = archive_key.write_public(tmp_path / "keys" / "archive.asc")
    mirror = make_mirror(tmp_path, archive_key, extra_repo=(
        f'\n[[repos]]\nname = "other"\ntype = "deb"\nurl = "http://127.0.0.1:9/"\nsuites = ["stable"]\n'
        f'keyring = "{keyring}"\n'))
    settings = mirror.settings
    root = settings.storage.root
    store, pool = Store(root / "state.db"), Pool(root)
    for i in range(1, 4):
        seed_snapshot(store, pool, "repo", files(i))
        seed_snapshot(store, pool, "other", files(10 + i))
    later = utcnow() + timedelta(hours=2)
    with repo_lock(root, "repo"):  # a sync of "repo" is running
        for names in (["repo"], None):
            with pytest.raises(LockedError, match="repo"):
                collect_garbage(settings, store, names, now=later)
        assert len(store.snapshots("repo")) == 3
        # another repo's snapshots may go, but the shared pool is not swept while any sync runs
        report = collect_garbage(settings, store, ["other"], now=later)
        assert len(report.repos[0].removed) == 1 and not report.swept
        assert report.sweep_skipped is not None and "repo" in report.sweep_skipped
        assert pool.path_for(hashlib.sha256(b"package 11").hexdigest()).is_file()
    report = collect_garbage(settings, store, now=later)  # the sync is over
    assert report.swept and len(report.repos[0].removed) == 1
    assert not pool.path_for(hashlib.sha256(b"package 11").hexdigest()).exists()
    assert verify_pool(settings, store).damaged == []


def test_gc_from_the_cli_and_the_api(tmp_path: Path, archive_key: SigningKey) -> None:
    tokens = write_tokens(tmp_path / "mirror" / "tokens", {"ops": TOKEN})
    mirror = make_mirror(tmp_path, archive_key, extra_server=f'token_file = "{tokens}"\ngrace_period = 0')
    root = mirror.settings.storage.root
    store, pool = Store(root / "state.db"), Pool(root)
    snaps = [seed_snapshot(store, pool, "repo", files(i)) for i in range(1, 5)]  # dev: s4, rollback: s3
    store.close()

    with serve_both(mirror) as served:
        url = f"{served.api_url}/api/v1/gc"
        assert http("POST", url, body={"dry_run": True}).status == 401
        assert http("POST", url, body={"repo": "nope"}, token=TOKEN).status == 404
        reply = http("POST", url, body={"dry_run": True}, token=TOKEN)
        assert reply.status == 200, reply.body
        body = reply.json()
        assert body["dry_run"] is True
        assert body["repos"] == [{"repo": "repo", "removed": snaps[1::-1], "kept": 2}]
        assert body["pool"]["swept"] and body["pool"]["files"] == 4
        with repo_lock(root, "repo"):
            reply = http("POST", url, body={}, token=TOKEN)
            assert reply.status == 409 and reply.json()["error"]["code"] == "repo_locked"
        assert mirror.snapshots() == snaps[::-1]

    out = mirror.cli("gc", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert f"repo: would remove 2 snapshots, kept 2: {snaps[1]}, {snaps[0]}" in out.stdout
    assert "pool: would remove 4 files" in out.stdout and mirror.snapshots() == snaps[::-1]
    out = mirror.cli("gc", "repo", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["snapshots_removed"] == 2 and mirror.snapshots() == snaps[:1:-1]
    out = mirror.cli("verify")
    assert out.returncode == 0 and "0 damaged" in out.stdout, out.stdout + out.stderr
