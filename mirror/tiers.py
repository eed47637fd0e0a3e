"""Tiers: promotion, rollback and time travel over the tier history.

A tier is a pointer per repo (dev -> test -> uat -> prod, in the configured order). Moving it is
one row update plus one history row, in one `BEGIN IMMEDIATE` transaction: the cost does not
depend on the snapshot's size, concurrent moves are serialised by the database, and the history
is a clean chain (each row's `from` is the previous row's `to`).

Policy (checked inside the same transaction as the move, so it cannot race):

- a tier serves only complete, verified snapshots of its own repo;
- a snapshot enters a tier only if the tier before it (configured order) has served it at some
  time; anything else needs `force` and is recorded as forced. The first tier takes any
  verified snapshot (new snapshots land there);
- compare-and-swap: a caller that names the snapshot it expects the tier to serve now gets
  `TierChangedError` (409) when someone moved it in between;
- a move to what the tier already serves changes nothing and writes no history row;
- rollback points the tier at what it served before its last move (a second rollback undoes the
  first); a tier that served nothing before is refused.
- APT repos whose tiers serve the upstream's signed files byte for byte (`tier_signing =
  "upstream"`, the `date_checked` repos): a move (promotion or rollback) that would serve a
  Release whose `Valid-Until` has passed (apt refuses it), or whose `Date` is older than the one
  the tier serves now (apt silently keeps the newer one, so the move would not reach clients that
  saw it), needs `force`. With `tier_signing = "mirror"` the mirror re-issues fresh Release files
  instead (`mirror.releases`), so neither applies.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from mirror.errors import (
    InvalidRequestError,
    NotFoundError,
    NothingToRollBackError,
    PolicyError,
    SnapshotNotVerifiedError,
    TierChangedError,
)
from mirror.model import SNAPSHOT_ID_RE, utcnow
from mirror.store import Store, TierMove

if TYPE_CHECKING:
    from mirror.config import Settings

_COMPACT_RE = re.compile(r"^[0-9]{8}T[0-9]{6}Z$")


class Unset:
    """Marker: the caller did not ask for compare-and-swap (None means "expects nothing")."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET = Unset()


def parse_moment(text: str) -> datetime:
    """A point in time from the CLI or the API: ISO 8601 (`2026-11-27T02:00:00Z`, an offset, a
    date alone) or a snapshot-style id (`20261127T020000Z`). Without a zone it is UTC."""
    value = text.strip()
    try:
        if _COMPACT_RE.match(value):
            moment = datetime.strptime(value, "%Y%m%dT%H%M%SZ")
        else:
            moment = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise InvalidRequestError(
            f"{text!r} is not a time (use ISO 8601, e.g. 2026-11-27T02:00:00Z, or 20261127T020000Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class TierView:
    """What one tier serves (or served at a moment): the snapshot and since when."""

    tier: str
    snapshot: str | None
    since: datetime | None


@dataclass(frozen=True)
class MoveResult:
    """The outcome of a promotion or rollback: the history row, or none if nothing changed."""

    repo: str
    tier: str
    snapshot: str | None
    changed: bool
    move: TierMove | None


class Tiers:
    """The tier policy for the configured tier order, on top of the state database."""

    def __init__(self, store: Store, order: Sequence[str], *, date_checked: Collection[str] = (),
                 clock: Callable[[], datetime] = utcnow) -> None:
        if not order:
            raise ValueError("at least one tier is needed")
        self.store = store
        self.order = tuple(order)
        self.date_checked = frozenset(date_checked)
        self.clock = clock

    @classmethod
    def for_settings(cls, store: Store, settings: Settings) -> Tiers:
        """The configured order; Valid-Until and Date checks for APT repos with tier_signing "upstream"."""
        return cls(store, settings.tiers, date_checked=[
            r.name for r in settings.repos if r.type == "deb" and r.tier_signing == "upstream"])

    # -- reading -------------------------------------------------------------------------

    def check_tier(self, tier: str) -> str:
        if tier not in self.order:
            raise NotFoundError(f"unknown tier {tier!r} (configured: {', '.join(self.order)})")
        return tier

    def previous_tier(self, tier: str) -> str | None:
        index = self.order.index(self.check_tier(tier))
        return self.order[index - 1] if index > 0 else None

    def current(self, repo: str) -> dict[str, TierView]:
        """Every configured tier of `repo`, in order, with what it serves now."""
        states = self.store.tiers(repo)
        views: dict[str, TierView] = {}
        for tier in self.order:
            state = states.get(tier)
            views[tier] = TierView(tier, state.snapshot if state else None, state.since if state else None)
        return views

    def at(self, repo: str, moment: datetime) -> dict[str, TierView]:
        """Every configured tier of `repo`, in order, with what it served at `moment`."""
        moves = self.store.tiers_at(repo, moment)
        views: dict[str, TierView] = {}
        for tier in self.order:
            move = moves.get(tier)
            views[tier] = TierView(tier, move.to_snapshot if move else None, move.at if move else None)
        return views

    def history(self, repo: str, *, tier: str | None = None, until: datetime | None = None,
                limit: int | None = None) -> list[TierMove]:
        if tier is not None:
            self.check_tier(tier)
        return self.store.moves(repo, tier=tier, until=until, limit=limit)

    # -- moving --------------------------------------------------------------------------

    def promote(self, repo: str, to: str, *, from_tier: str | None = None, snapshot: str | None = None,
                actor: str, reason: str | None = None, force: bool = False,
                expected: str | Unset | None = UNSET) -> MoveResult:
        """Point tier `to` at the snapshot tier `from_tier` serves, or at `snapshot`."""
        self.check_tier(to)
        if (from_tier is None) == (snapshot is None):
            raise InvalidRequestError("name exactly one source: a tier (from) or a snapshot id")
        if from_tier is not None:
            self.check_tier(from_tier)
            if from_tier == to:
                raise InvalidRequestError(f"cannot promote tier {to} onto itself")
        if snapshot is not None and not SNAPSHOT_ID_RE.match(snapshot):
            raise InvalidRequestError(f"{snapshot!r} is not a snapshot id (YYYYMMDDTHHMMSSZ)")
        store = self.store
        with store.transaction():
            if from_tier is not None:
                snapshot = store.tier_snapshot(repo, from_tier)
                if snapshot is None:
                    raise NotFoundError(f"tier {from_tier} of {repo} serves no snapshot yet", repo=repo)
            assert snapshot is not None
            current = self._check_expected(repo, to, expected)
            self._check_snapshot(repo, snapshot)
            if current == snapshot:
                return MoveResult(repo, to, snapshot, changed=False, move=None)
            refusals = self._policy_refusals(repo, to, current, snapshot)
            if refusals and not force:
                raise PolicyError(f"promotion of {snapshot} into {to} refused: {'; '.join(refusals)} "
                                  "(force it to promote anyway; it is recorded as forced)", repo=repo)
            move = store.record_move(repo, to, snapshot, actor=actor, reason=reason, action="promote",
                                     forced=bool(refusals))
        return MoveResult(repo, to, snapshot, changed=True, move=move)

    def rollback(self, repo: str, tier: str, *, actor: str, reason: str | None = None,
                 force: bool = False, expected: str | Unset | None = UNSET) -> MoveResult:
        """Point `tier` back at what it served before its last move."""
        self.check_tier(tier)
        store = self.store
        with store.transaction():
            current = self._check_expected(repo, tier, expected)
            last = store.last_move(repo, tier)
            if last is None or last.from_snapshot is None:
                raise NothingToRollBackError(
                    f"tier {tier} of {repo} served nothing before its last move: nothing to roll back to",
                    repo=repo)
            target = last.from_snapshot
            self._check_snapshot(repo, target)
            refusals = self._rollback_refusals(repo, tier, current, target)
            if refusals and not force:
                raise PolicyError(f"rollback of {tier} to {target} refused: {'; '.join(refusals)} "
                                  "(force it to roll back anyway; it is recorded as forced)", repo=repo)
            move = store.record_move(repo, tier, target, actor=actor, reason=reason, action="rollback",
                                     forced=bool(refusals))
        return MoveResult(repo, tier, target, changed=True, move=move)

    # -- policy --------------------------------------------------------------------------

    def _check_expected(self, repo: str, tier: str, expected: str | Unset | None) -> str | None:
        current = self.store.tier_snapshot(repo, tier)
        if not isinstance(expected, Unset) and current != expected:
            raise TierChangedError(
                f"tier {tier} of {repo} serves {current or 'nothing'}, not {expected or 'nothing'} "
                "as expected: someone moved it in between", repo=repo)
        return current

    def _check_snapshot(self, repo: str, snapshot: str) -> None:
        state = self.store.snapshot_state(repo, snapshot)
        if state is None:
            raise NotFoundError(f"no snapshot {snapshot} in repo {repo}", repo=repo)
        if state != "verified":
            raise SnapshotNotVerifiedError(f"snapshot {snapshot} is {state}, not verified", repo=repo)

    def _policy_refusals(self, repo: str, tier: str, current: str | None, snapshot: str) -> list[str]:
        """Why a promotion needs force (empty: it does not)."""
        reasons: list[str] = []
        before = self.previous_tier(tier)
        if before is not None and not self.store.tier_has_served(repo, before, snapshot):
            reasons.append(f"tier {before} (before {tier}) never served {snapshot}")
        return reasons + self._freshness_refusals(repo, tier, current, snapshot)

    def _rollback_refusals(self, repo: str, tier: str, current: str | None, target: str) -> list[str]:
        """Why a rollback needs force (the tier served `target` before, so only freshness)."""
        return self._freshness_refusals(repo, tier, current, target)

    def _freshness_refusals(self, repo: str, tier: str, current: str | None, target: str) -> list[str]:
        """For tiers serving the upstream's Release byte for byte: what apt would make of `target`."""
        if repo not in self.date_checked:
            return []
        reasons: list[str] = []
        now = self.clock()
        roots = self.store.roots(repo, target)
        for suite, root in sorted(roots.items()):
            if root.valid_until is not None and root.valid_until <= now:
                reasons.append(f"the Release of {suite} in {target} expired at {_text(root.valid_until)} "
                               "(Valid-Until): apt refuses it")
        if current is not None:
            serving = self.store.roots(repo, current)
            for suite, root in sorted(roots.items()):
                now_served = serving.get(suite)
                if root.date is None or now_served is None or now_served.date is None:
                    continue
                if root.date.replace(microsecond=0) < now_served.date.replace(microsecond=0):
                    reasons.append(
                        f"the Release of {suite} in {target} is dated {_text(root.date)}, older than "
                        f"{_text(now_served.date)} of {current} that {tier} serves now: apt ignores an older "
                        "Date, so clients that saw the newer one would not see this move")
        if reasons:
            reasons[-1] += " (tier_signing = \"mirror\" re-issues fresh Release files instead)"
        return reasons


def _text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
