"""`mirror status`: is each repo fresh? Staleness, upstream expiry and damage, from the state DB.

Per repo: when the last successful sync (a new snapshot, or "unchanged") finished and how long
ago; how the last finished sync ended (outcome, error code, message) and whether one runs now;
per tier, the snapshot it serves and the earliest upstream `Valid-Until` of its roots with the
time left; and what the last `mirror verify` left damaged.

A repo is **stale** when no sync succeeded within `[sync] stale_after` (or none ever did), and
**expiring** when a tier serves a snapshot whose upstream metadata expires within
`[sync] expiry_warning` (or has expired: clients such as apt refuse it then). The metrics carry
the same figures (`mirror.metrics`), computed by the same function.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mirror.model import utcnow
from mirror.store import Store, SyncRunRecord


@dataclass(frozen=True)
class TierStatus:
    tier: str
    snapshot: str
    since: datetime  # when the tier last moved
    created: datetime  # when the snapshot was made
    valid_until: datetime | None  # earliest upstream Valid-Until of the snapshot's roots
    remaining: float | None  # seconds until then (negative: expired)
    expiring: bool


@dataclass(frozen=True)
class RepoStatus:
    repo: str
    last_success: datetime | None
    since_success: float | None  # seconds
    last_run: SyncRunRecord | None  # the last finished run
    running: bool  # a sync of the repo runs now
    tiers: list[TierStatus]
    damaged: int  # objects the last `mirror verify` left damaged
    verified: datetime | None  # when that verify finished
    stale: bool
    expiring: bool
    problems: list[str] = field(default_factory=list)  # why it is flagged, one sentence each

    @property
    def ok(self) -> bool:
        return not (self.stale or self.expiring)

    def as_json(self) -> dict[str, Any]:
        run = self.last_run
        return {
            "repo": self.repo, "ok": self.ok, "stale": self.stale, "expiring": self.expiring,
            "problems": self.problems,
            "last_success": _iso(self.last_success), "seconds_since_success": self.since_success,
            "running": self.running,
            "last_run": None if run is None else {
                "id": run.id, "outcome": run.outcome, "started": _iso(run.started),
                "finished": _iso(run.finished), "snapshot": run.snapshot, "error_code": run.error_code,
                "message": run.message},
            "tiers": {t.tier: {"snapshot": t.snapshot, "since": _iso(t.since), "created": _iso(t.created),
                               "valid_until": _iso(t.valid_until), "seconds_remaining": t.remaining,
                               "expiring": t.expiring} for t in self.tiers},
            "damaged_objects": self.damaged, "last_verify": _iso(self.verified),
        }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


def duration_text(seconds: float | None) -> str:
    """ "3d 4h", "2h 5m", "40s"; negative: "-1h 2m"."""
    if seconds is None:
        return "-"
    sign = "-" if seconds < 0 else ""
    left = int(abs(seconds))
    days, left = divmod(left, 86400)
    hours, left = divmod(left, 3600)
    minutes, secs = divmod(left, 60)
    if days:
        return f"{sign}{days}d {hours}h"
    if hours:
        return f"{sign}{hours}h {minutes}m"
    if minutes:
        return f"{sign}{minutes}m {secs}s"
    return f"{sign}{secs}s"


def repo_statuses(store: Store, repos: Sequence[str], *, stale_after: float, expiry_warning: float,
                  tier_order: Sequence[str] = (), now: datetime | None = None) -> list[RepoStatus]:
    """The status of every repo in `repos`, its tiers in `tier_order` (then by name)."""
    now = now or utcnow()
    rank = {t: i for i, t in enumerate(tier_order)}
    stats = {s.repo: s for s in store.sync_stats()}
    served: dict[str, list[TierStatus]] = {}
    for s in store.served_snapshots():
        remaining = (s.valid_until - now).total_seconds() if s.valid_until is not None else None
        served.setdefault(s.repo, []).append(TierStatus(
            tier=s.tier, snapshot=s.snapshot, since=s.since, created=s.created, valid_until=s.valid_until,
            remaining=remaining, expiring=remaining is not None and remaining < expiry_warning))
    damage: dict[str, set[str]] = {}
    for row in store.verify_damage():
        damage.setdefault(row.repo, set()).add(row.sha256)
    verified = {r.repo: r.finished for r in store.verify_results()}
    out: list[RepoStatus] = []
    for repo in repos:
        stat = stats.get(repo)
        last_success = stat.last_success if stat else None
        since = (now - last_success).total_seconds() if last_success is not None else None
        runs = store.sync_runs(repo, limit=5)
        last_run = next((r for r in runs if r.finished is not None), None)
        running = bool(runs) and runs[0].outcome == "running"
        tiers = sorted(served.get(repo, []), key=lambda t: (rank.get(t.tier, len(rank)), t.tier))
        problems: list[str] = []
        stale = since is None or since > stale_after
        if since is None:
            problems.append("no sync has succeeded yet")
        elif stale:
            problems.append(f"last successful sync {duration_text(since)} ago "
                            f"(stale after {duration_text(stale_after)})")
        for t in tiers:
            if t.expiring and t.remaining is not None:
                when = (f"expired {duration_text(-t.remaining)} ago" if t.remaining < 0
                        else f"expires in {duration_text(t.remaining)}")
                problems.append(f"tier {t.tier} serves {t.snapshot}, whose upstream metadata {when}")
        if stale and last_run is not None and last_run.outcome == "failed":
            problems.append(f"last sync failed: {last_run.error_code}: {last_run.message}")
        out.append(RepoStatus(
            repo=repo, last_success=last_success, since_success=since, last_run=last_run, running=running,
            tiers=tiers, damaged=len(damage.get(repo, ())), verified=verified.get(repo), stale=stale,
            expiring=any(t.expiring for t in tiers), problems=problems))
    return out
