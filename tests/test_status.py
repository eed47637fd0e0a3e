"""HOSTILE.md 76 (staleness is alarmed): `mirror status [--json]` and the matching gauges.

A repo is stale when no sync succeeded within `[sync] stale_after`, expiring when a tier serves
upstream metadata whose Valid-Until is less than `[sync] expiry_warning` away; either makes the
exit status 1. The state is seeded straight into the database (sync runs, snapshots), with times
moved into the past where a test needs it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from fixtures.keys import SigningKey
from mirror.metrics import StateCollector
from mirror.model import utcnow
from mirror.pool import Pool
from mirror.status import duration_text, repo_statuses
from mirror.store import Store, VerifyDamageRow, VerifyResult
from tests.helpers import Mirror, seed_snapshot, write_config

FILES = {"dists/stable/InRelease": b"signed", "pool/main/h/hello/hello_1.0_amd64.deb": b"deb"}


@pytest.fixture
def mirror(tmp_path: Path, archive_key: SigningKey) -> Iterator[Mirror]:
    keyring = archive_key.write_public(tmp_path / "keys" / "archive.asc")
    m = write_config(tmp_path / "mirror", "http://127.0.0.1:9/", keyring)
    m.config.write_text(m.config.read_text().replace("[sync]\n", '[sync]\nstale_after = "2d"\n'
                                                                 'expiry_warning = "1d"\n'))
    yield m


def seed(m: Mirror, *, valid_until: datetime | None, finished_ago: timedelta | None = None,
         then_failed: bool = False) -> str:
    """A successful sync run that made a snapshot (finished `finished_ago` ago), optionally
    followed by a failed one."""
    store = m.store()
    try:
        run = store.start_sync_run("repo")
        snap = seed_snapshot(store, Pool(m.settings.storage.root), "repo", FILES, valid_until=valid_until)
        store.finish_sync_run(run, "snapshot", snapshot=snap, files=2, size=9)
        if finished_ago is not None:
            with store.transaction() as db:
                db.execute("UPDATE sync_runs SET finished = ? WHERE id = ?",
                           ((utcnow() - finished_ago).isoformat(), run))
        if then_failed:
            failed = store.start_sync_run("repo")
            store.finish_sync_run(failed, "failed", error_code="fetch_failed",
                                  message="repo: HTTP 503 from http://127.0.0.1:9/dists/stable/InRelease")
        return snap
    finally:
        store.close()


def test_a_fresh_repo_is_ok_and_shows_each_tier_s_upstream_expiry(mirror: Mirror) -> None:
    snap = seed(mirror, valid_until=utcnow() + timedelta(days=7))
    done = mirror.cli("status")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("repo: ok; last successful sync ")
    assert f"dev      {snap}  valid until" in done.stdout and "6d 23h left" in done.stdout
    data = json.loads(mirror.cli("status", "--json").stdout)
    assert data["ok"] is True and data["stale_after"] == 172800.0
    (repo,) = data["repos"]
    assert repo["stale"] is False and repo["expiring"] is False and repo["problems"] == []
    assert repo["last_run"]["outcome"] == "snapshot" and repo["last_run"]["snapshot"] == snap
    assert 0 <= repo["seconds_since_success"] < 60
    assert 7 * 86400 - 120 < repo["tiers"]["dev"]["seconds_remaining"] <= 7 * 86400


def test_no_successful_sync_within_stale_after_is_stale_with_the_last_error(mirror: Mirror) -> None:
    seed(mirror, valid_until=None, finished_ago=timedelta(days=3), then_failed=True)
    done = mirror.cli("status")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "repo: STALE;" in done.stdout and "(3d 0h ago)" in done.stdout
    assert "last sync: failed fetch_failed: repo: HTTP 503" in done.stdout
    assert "! last successful sync 3d 0h ago (stale after 2d 0h)" in done.stdout
    assert "no Valid-Until" in done.stdout
    data = json.loads(mirror.cli("status", "--json").stdout)
    assert data["ok"] is False and data["repos"][0]["stale"] is True
    assert data["repos"][0]["last_run"]["error_code"] == "fetch_failed"


@pytest.mark.parametrize(("valid_for", "says"), [
    (timedelta(hours=2), "whose upstream metadata expires in 1h 59m"),
    (timedelta(hours=-1), "whose upstream metadata expired 1h 0m ago"),
])
def test_a_tier_serving_metadata_about_to_expire_is_flagged(mirror: Mirror, valid_for: timedelta,
                                                             says: str) -> None:
    snap = seed(mirror, valid_until=utcnow() + valid_for)
    done = mirror.cli("status")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "repo: EXPIRING;" in done.stdout and "EXPIRING\n" in done.stdout
    assert f"! tier dev serves {snap}, {says}" in done.stdout


def test_a_repo_never_synced_is_stale_and_an_unknown_one_refused(mirror: Mirror) -> None:
    done = mirror.cli("status", "repo")
    assert done.returncode == 1
    assert "repo: STALE; last successful sync never" in done.stdout
    assert "! no sync has succeeded yet" in done.stdout
    unknown = mirror.cli("status", "nope")
    assert unknown.returncode == 2 and "unknown repo 'nope'" in unknown.stderr


def test_damage_left_by_the_last_verify_shows_as_degraded(mirror: Mirror) -> None:
    snap = seed(mirror, valid_until=None)
    store = mirror.store()
    try:
        now = utcnow()
        store.record_verify([VerifyResult("repo", now, now, files=2, bytes=9, damaged=1)],
                            [VerifyDamageRow("repo", snap, "ab" * 32, "pool/x.deb", "missing from the pool",
                                             False)])
    finally:
        store.close()
    done = mirror.cli("status")
    assert done.returncode == 0  # degraded is shown, staleness decides the exit status
    assert "degraded: 1 damaged objects at the last verify" in done.stdout


def test_the_metrics_carry_the_same_figures(mirror: Mirror) -> None:
    seed(mirror, valid_until=utcnow() + timedelta(hours=5), finished_ago=timedelta(days=3))
    store = Store(mirror.settings.storage.root / "state.db")
    try:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StateCollector(store, ["repo"], stale_after=2 * 86400, expiry_warning=86400))
        text = generate_latest(registry).decode()
        (status,) = repo_statuses(store, ["repo"], stale_after=2 * 86400, expiry_warning=86400)
    finally:
        store.close()
    assert 'mirror_repo_stale{repo="repo"} 1.0' in text
    assert 'mirror_repo_expiring{repo="repo"} 1.0' in text
    assert 'mirror_tier_valid_until_remaining_seconds{repo="repo",tier="dev"}' in text
    assert 'mirror_sync_last_success_age_seconds{repo="repo"}' in text
    assert status.stale and status.expiring and status.since_success is not None
    assert abs(status.since_success - 3 * 86400) < 60


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "-"), (5, "5s"), (65, "1m 5s"), (3600 * 5 + 60 * 7, "5h 7m"), (86400 * 2 + 3600 * 3, "2d 3h"),
    (-90, "-1m 30s"),
])
def test_durations_read_like_a_person_would_say_them(seconds: float | None, text: str) -> None:
    assert duration_text(seconds) == text
