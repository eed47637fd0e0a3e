"""Tier policy on the state database: promotion, force, compare-and-swap, rollback, time travel,
and racing moves (each racer on its own database connection, as separate processes would be)."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mirror.errors import (
    InvalidRequestError,
    NotFoundError,
    NothingToRollBackError,
    PolicyError,
    TierChangedError,
)
from mirror.model import utcnow
from mirror.pool import Pool
from mirror.store import Store
from mirror.tiers import Tiers, parse_moment
from tests.helpers import seed_snapshot

ORDER = ("dev", "test", "uat", "prod")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "state.db")


@pytest.fixture
def two(store: Store, tmp_path: Path) -> tuple[str, str]:
    """Two snapshots of "repo"; dev serves the second (it landed last)."""
    pool = Pool(tmp_path)
    a = seed_snapshot(store, pool, "repo", {"dists/stable/InRelease": b"A", "pool/a_1_all.deb": b"a1"})
    b = seed_snapshot(store, pool, "repo", {"dists/stable/InRelease": b"B", "pool/a_2_all.deb": b"a2"})
    return a, b


def chain_is_clean(store: Store, repo: str, tier: str) -> None:
    moves = list(reversed(store.moves(repo, tier=tier)))
    for before, after in itertools.pairwise(moves):
        assert after.from_snapshot == before.to_snapshot, (before, after)
        assert after.id > before.id and after.at >= before.at
    assert store.tier_snapshot(repo, tier) == (moves[-1].to_snapshot if moves else None)


def test_promote_along_the_order_records_who_what_and_why(store: Store, two: tuple[str, str]) -> None:
    _a, b = two
    tiers = Tiers(store, ORDER)
    result = tiers.promote("repo", "test", from_tier="dev", actor="alice", reason="tested in dev")
    assert result.changed and result.snapshot == b
    move = result.move
    assert move is not None
    assert (move.tier, move.from_snapshot, move.to_snapshot, move.actor, move.reason, move.forced,
            move.action) == ("test", None, b, "alice", "tested in dev", False, "promote")
    assert tiers.promote("repo", "uat", from_tier="test", actor="alice").snapshot == b
    assert tiers.current("repo")["uat"].snapshot == b


def test_skipping_a_tier_needs_force_and_is_recorded_forced(store: Store, two: tuple[str, str]) -> None:
    _a, b = two
    tiers = Tiers(store, ORDER)
    with pytest.raises(PolicyError, match=r"tier uat .* never served") as err:
        tiers.promote("repo", "prod", from_tier="dev", actor="bob")
    assert err.value.http_status == 422 and err.value.code == "policy_refused"
    assert store.tier_snapshot("repo", "prod") is None and store.moves("repo", tier="prod") == []
    result = tiers.promote("repo", "prod", snapshot=b, actor="bob", force=True, reason="hotfix")
    assert result.move is not None and result.move.forced
    # force is recorded only when the policy needed it
    assert not tiers.promote("repo", "test", from_tier="dev", actor="bob", force=True).move.forced  # type: ignore[union-attr]


def test_first_tier_takes_any_verified_snapshot(store: Store, two: tuple[str, str]) -> None:
    a, b = two
    tiers = Tiers(store, ORDER)
    move = tiers.promote("repo", "dev", snapshot=a, actor="x").move
    assert move is not None and (move.from_snapshot, move.to_snapshot, move.forced) == (b, a, False)


def test_promoting_what_the_tier_serves_changes_nothing(store: Store, two: tuple[str, str]) -> None:
    _a, b = two
    tiers = Tiers(store, ORDER)
    before = len(store.moves("repo"))
    result = tiers.promote("repo", "dev", snapshot=b, actor="x")
    assert not result.changed and result.move is None and len(store.moves("repo")) == before


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"to": "qa", "from_tier": "dev"}, NotFoundError),
    ({"to": "test", "from_tier": "staging"}, NotFoundError),
    ({"to": "test"}, InvalidRequestError),
    ({"to": "test", "from_tier": "dev", "snapshot": "20260101T000000Z"}, InvalidRequestError),
    ({"to": "test", "from_tier": "test"}, InvalidRequestError),
    ({"to": "test", "snapshot": "not-an-id"}, InvalidRequestError),
    ({"to": "dev", "snapshot": "20000101T000000Z"}, NotFoundError),
    ({"to": "prod", "from_tier": "uat"}, NotFoundError),  # uat serves nothing yet
])
def test_bad_promotions_are_refused(store: Store, two: tuple[str, str], kwargs: dict[str, str],
                                    error: type[Exception]) -> None:
    to = kwargs.pop("to")
    with pytest.raises(error):
        Tiers(store, ORDER).promote("repo", to, actor="x", **kwargs)  # type: ignore[arg-type]


def test_compare_and_swap_refuses_a_tier_that_moved(store: Store, two: tuple[str, str]) -> None:
    a, b = two
    tiers = Tiers(store, ORDER)
    with pytest.raises(TierChangedError) as err:
        tiers.promote("repo", "dev", snapshot=a, actor="x", expected=a)
    assert err.value.http_status == 409
    assert tiers.promote("repo", "dev", snapshot=a, actor="x", expected=b).changed
    assert tiers.promote("repo", "test", from_tier="dev", actor="x", expected=None).changed


def test_rollback_returns_to_what_the_tier_served_before(store: Store, two: tuple[str, str]) -> None:
    a, b = two
    tiers = Tiers(store, ORDER)
    result = tiers.rollback("repo", "dev", actor="carol", reason="broken")
    assert result.snapshot == a and result.move is not None
    assert (result.move.action, result.move.from_snapshot, result.move.actor) == ("rollback", b, "carol")
    # rolling back the rollback goes forward again
    assert tiers.rollback("repo", "dev", actor="carol").snapshot == b
    chain_is_clean(store, "repo", "dev")


def test_rollback_with_nothing_before_is_refused(store: Store, two: tuple[str, str]) -> None:
    tiers = Tiers(store, ORDER)
    tiers.promote("repo", "test", from_tier="dev", actor="x")
    with pytest.raises(NothingToRollBackError, match="served nothing before"):
        tiers.rollback("repo", "test", actor="x")
    with pytest.raises(NothingToRollBackError):
        tiers.rollback("repo", "prod", actor="x")  # never moved
    assert store.tier_snapshot("repo", "test") is not None


def test_time_travel_answers_what_each_tier_served(store: Store, two: tuple[str, str]) -> None:
    a, b = two
    tiers = Tiers(store, ORDER)
    t0 = utcnow()
    time.sleep(0.01)
    tiers.promote("repo", "test", from_tier="dev", actor="x")  # test: b
    time.sleep(0.01)
    t1 = utcnow()
    time.sleep(0.01)
    tiers.promote("repo", "dev", snapshot=a, actor="x")  # dev: a
    tiers.promote("repo", "test", from_tier="dev", actor="x")  # test: a
    at0, at1, now = tiers.at("repo", t0), tiers.at("repo", t1), tiers.at("repo", utcnow())
    assert (at0["dev"].snapshot, at0["test"].snapshot) == (b, None)
    assert (at1["dev"].snapshot, at1["test"].snapshot) == (b, b)
    assert (now["dev"].snapshot, now["test"].snapshot) == (a, a)
    assert at1["test"].since is not None and t0 < at1["test"].since < t1
    assert tiers.at("repo", datetime(2000, 1, 1, tzinfo=UTC))["dev"].snapshot is None
    assert [m.to_snapshot for m in tiers.history("repo", tier="test", until=t1)] == [b]
    assert len(tiers.history("repo", until=t1)) == 3  # two syncs into dev, one promotion


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-27T02:00:00Z", datetime(2026, 11, 27, 2, tzinfo=UTC)),
    ("20261127T020000Z", datetime(2026, 11, 27, 2, tzinfo=UTC)),
    ("2026-11-27T03:00:00+01:00", datetime(2026, 11, 27, 2, tzinfo=UTC)),
    ("2026-11-27T02:00:00", datetime(2026, 11, 27, 2, tzinfo=UTC)),
    ("2026-11-27", datetime(2026, 11, 27, tzinfo=UTC)),
])
def test_times_are_iso_8601_or_snapshot_style(text: str, expected: datetime) -> None:
    assert parse_moment(text) == expected


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "", "2026-11-27T25:00:00Z"])
def test_a_bad_time_is_refused_clearly(text: str) -> None:
    with pytest.raises(InvalidRequestError, match="not a time"):
        parse_moment(text)


def _race(db: Path, workers: int, move: object) -> list[object]:
    barrier = threading.Barrier(workers)
    outcomes: list[object] = [None] * workers

    def run(i: int) -> None:
        store = Store(db)  # own connection: the database serialises, not a Python lock
        try:
            barrier.wait()
            outcomes[i] = move(Tiers(store, ORDER), i)  # type: ignore[operator]
        except Exception as exc:
            outcomes[i] = exc
        finally:
            store.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return outcomes


def test_twenty_racing_promotions_leave_a_clean_history(tmp_path: Path, store: Store) -> None:
    pool = Pool(tmp_path)
    snaps = [seed_snapshot(store, pool, "repo", {"dists/stable/InRelease": f"S{i}".encode()})
             for i in range(20)]
    before = len(store.moves("repo", tier="dev"))
    outcomes = _race(tmp_path / "state.db", 20, lambda tiers, i: tiers.promote(
        "repo", "dev", snapshot=snaps[i], actor=f"racer{i}", reason=f"race {i}"))
    assert not [o for o in outcomes if isinstance(o, Exception)]
    moves = store.moves("repo", tier="dev")
    changed = [o for o in outcomes if o.changed]  # type: ignore[attr-defined]
    # every racer promotes its own snapshot, so every move changes the tier (the last seeded
    # snapshot is already in dev: that racer alone may find nothing to do)
    assert len(moves) - before == len(changed) >= 19
    chain_is_clean(store, "repo", "dev")
    assert store.tier_snapshot("repo", "dev") == moves[0].to_snapshot
    assert [m.id for m in moves] == sorted((m.id for m in moves), reverse=True)
    assert len({m.id for m in moves}) == len(moves)


def test_racing_compare_and_swap_has_exactly_one_winner(tmp_path: Path, store: Store) -> None:
    pool = Pool(tmp_path)
    snaps = [seed_snapshot(store, pool, "repo", {"dists/stable/InRelease": f"S{i}".encode()})
             for i in range(3)]
    current = snaps[-1]
    outcomes = _race(tmp_path / "state.db", 20, lambda tiers, i: tiers.promote(
        "repo", "dev", snapshot=snaps[i % 2], actor=f"racer{i}", expected=current))
    winners = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(winners) == 1, outcomes
    assert all(isinstance(o, TierChangedError) for o in outcomes if o not in winners)
    chain_is_clean(store, "repo", "dev")


def test_promotion_cost_does_not_depend_on_snapshot_size(tmp_path: Path, store: Store) -> None:
    """One row update + one history row: a 20,000-file snapshot moves as fast as a 2-file one."""
    pool = Pool(tmp_path)
    big = {f"pool/p{i}_1_all.deb": b"" for i in range(20_000)}
    big["dists/stable/InRelease"] = b"big"
    seed_snapshot(store, pool, "big", big)
    seed_snapshot(store, pool, "small", {"dists/stable/InRelease": b"small", "pool/s_1_all.deb": b""})
    tiers = Tiers(store, ORDER)

    def timed(repo: str) -> float:
        start = time.perf_counter()
        for tier in ("test", "uat", "prod"):
            tiers.promote(repo, tier, from_tier=ORDER[ORDER.index(tier) - 1], actor="bench")
        return (time.perf_counter() - start) / 3

    small, big_time = timed("small"), timed("big")
    assert big_time < 0.05, big_time
    assert big_time < max(small * 5, 0.01), (small, big_time)
    assert timedelta(seconds=big_time) < timedelta(milliseconds=50)


def test_snapshot_ids_are_utc_seconds_and_one_second_later_when_taken(store: Store) -> None:
    """CONTRACT: ids are YYYYMMDDTHHMMSSZ (UTC); a second snapshot within the same second takes the
    next free second; a deleted snapshot's id is never given again."""
    from mirror.store import NewSnapshot

    def commit(at: datetime) -> str:
        new = NewSnapshot(repo="repo", signed_by="upstream", plan_key="k", roots=[], entries=[])
        return store.commit_snapshot(new, "dev", now=at)

    from datetime import timezone

    moment = datetime(2026, 11, 28, 3, 4, 5, 678_000, tzinfo=timezone(timedelta(hours=2)))
    first = commit(moment)
    assert first == "20261128T010405Z"
    assert commit(moment) == "20261128T010406Z"
    assert commit(moment - timedelta(hours=1)) == "20261128T010407Z"  # never before the latest
    with store.transaction():
        store.record_snapshot_deletion("repo", "20261128T010407Z", actor="t", reason=None, now=moment)
        store.delete_snapshot("repo", "20261128T010407Z")
    assert commit(moment) == "20261128T010408Z"
    assert commit(moment + timedelta(minutes=1)) == "20261128T010505Z"
