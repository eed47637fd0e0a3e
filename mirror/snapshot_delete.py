"""`mirror snapshots delete REPO ID` and `POST /api/v1/repos/{repo}/snapshots/{id}/delete`.

An operator deletes one snapshot on purpose (a bad upstream state, a leaked package). Refused
(`SnapshotInUseError`, 409, the message naming every reason) while the snapshot is needed:

- a tier points at it;
- a tier would point back at it on `rollback` (the `from` of the tier's last move);
- a tier served it within the grace window (`[server] grace_period`, +1 minute, as gc counts
  it): the repo port still answers clients that fetched that tier's metadata before the move;
- it is the repo's newest snapshot: the next sync compares against it (the upstream freshness
  and rollback marks, and "unchanged"), and a sync that is running started from it.

Retention (`keep_last`, `keep_days`) does not protect a snapshot from an explicit delete.

Deleting is one transaction: an append-only `snapshot_deletions` row (actor, reason, time and
what the snapshot was), then the snapshot's rows (manifest, roots, package set, advisories
links, issued Release rows, the snapshot row) as gc removes them; the tier history keeps naming
it. `mirror snapshots` and the API no longer list it, `/snapshots/REPO/ID/...` on the repo port
is 404 from then on, and the next `mirror gc` reclaims the pool files no other snapshot uses.
A deleted snapshot's id is never given to a later snapshot.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from mirror.config import Settings
from mirror.errors import NotFoundError, SnapshotInUseError
from mirror.model import utcnow
from mirror.store import SnapshotDeletion, Store

log = logging.getLogger(__name__)

__all__ = ["delete_snapshot", "in_use"]


def in_use(store: Store, repo: str, snapshot: str, *, now: datetime, grace: timedelta) -> list[str]:
    """Why `snapshot` of `repo` must stay (empty: it may be deleted)."""
    reasons: list[str] = []
    for tier, state in sorted(store.tiers(repo).items()):
        if state.snapshot == snapshot:
            reasons.append(f"tier {tier} serves it")
    for tier, target in sorted(store.rollback_targets(repo).items()):
        if target == snapshot:
            reasons.append(f"a rollback of tier {tier} would point it back at it")
    if grace > timedelta(0):
        window = now - grace - timedelta(minutes=1)
        for move in store.moves_since(window):
            if move.repo == repo and move.from_snapshot == snapshot:
                until = (move.at + grace).isoformat()
                reasons.append(f"tier {move.tier} served it until {move.at.isoformat()}: the repo port "
                               f"answers for it within the grace window (until {until})")
    if store.latest_snapshot(repo) == snapshot:
        reasons.append("it is the newest snapshot of the repo: the next sync compares against it")
    return list(dict.fromkeys(reasons))


def delete_snapshot(store: Store, settings: Settings, repo: str, snapshot: str, *, actor: str,
                    reason: str | None = None, now: datetime | None = None) -> SnapshotDeletion:
    """Delete `snapshot` of `repo` (NotFoundError if none, SnapshotInUseError if needed)."""
    settings.repo(repo)
    grace = timedelta(seconds=settings.server.grace_period)
    moment = now or utcnow()
    with store.transaction():
        if not store.has_snapshot(repo, snapshot):
            raise NotFoundError(f"no snapshot {snapshot} in repo {repo}", repo=repo)
        reasons = in_use(store, repo, snapshot, now=moment, grace=grace)
        if reasons:
            raise SnapshotInUseError(f"snapshot {snapshot} cannot be deleted: {'; '.join(reasons)}",
                                     repo=repo)
        record = store.record_snapshot_deletion(repo, snapshot, actor=actor, reason=reason, now=moment)
        store.delete_snapshot(repo, snapshot)
    log.info("%s: snapshot %s deleted by %s%s", repo, snapshot, actor, f" ({reason!r})" if reason else "")
    return record
