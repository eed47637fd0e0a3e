"""Diffs between stored snapshots, and what the store knows about a CVE: the I/O around :mod:`mirror.diff`.

A side of a diff is named by a tier ("prod": what it serves now), a snapshot id
("20261127T020000Z") or ``TIER@TIME`` (what the tier served then, from its history). Package
sets come from the store's per-snapshot blobs and are kept in a small in-process LRU cache:
snapshots never change, so a cached set never goes stale (a snapshot id removed by gc and
re-used later cannot happen: ids only grow).
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mirror.config import Settings
from mirror.diff import (
    EMPTY,
    Advisory,
    Diff,
    PackageSet,
    SnapshotRef,
    advisory_ref_json,
    diff_advisories,
    diff_rows,
    diff_to_json,
    fix_status,
)
from mirror.errors import InvalidRequestError, NotFoundError
from mirror.model import SNAPSHOT_ID_RE
from mirror.names import MAX_NAME_LENGTH, check_snapshot, check_tier
from mirror.store import Store
from mirror.tiers import Tiers, parse_moment

__all__ = ["CveReport", "DiffResult", "compute_diff", "cve_report", "pending_advisories", "resolve_ref"]

_CACHE_SIZE = 8
_cache: OrderedDict[tuple[str, str, str], PackageSet] = OrderedDict()
_cache_lock = threading.Lock()


def package_set(store: Store, repo: str, snapshot: str) -> PackageSet:
    """The snapshot's PackageSet, from the cache or the store (NotFoundError if none)."""
    key = (str(store.path), repo, snapshot)
    with _cache_lock:
        found = _cache.get(key)
        if found is not None:
            _cache.move_to_end(key)
            return found
    ps = store.package_set(repo, snapshot)
    with _cache_lock:
        _cache[key] = ps
        _cache.move_to_end(key)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return ps


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def resolve_ref(store: Store, settings: Settings, repo: str, ref: str) -> SnapshotRef:
    """A tier, a snapshot id or TIER@TIME -> the snapshot it names (400 if malformed, 404 if none)."""
    if not ref or len(ref) > MAX_NAME_LENGTH + 40:
        raise InvalidRequestError("a ref is a tier, a snapshot id or TIER@TIME")
    tiers = Tiers.for_settings(store, settings)
    if "@" in ref:
        tier, _, when = ref.partition("@")
        check_tier(tier)
        tiers.check_tier(tier)
        try:
            moment: datetime = parse_moment(when)
        except (OverflowError, ValueError):
            raise InvalidRequestError(f"{when[:60]!r} is not a time") from None
        snap = tiers.at(repo, moment)[tier].snapshot
        if snap is None:
            raise NotFoundError(f"tier {tier} of {repo} served nothing at {moment.isoformat()}", repo=repo)
    elif SNAPSHOT_ID_RE.fullmatch(ref):
        snap = check_snapshot(ref)
        if not store.has_snapshot(repo, snap):
            raise NotFoundError(f"no snapshot {snap} in repo {repo}", repo=repo)
    else:
        tiers.check_tier(check_tier(ref))
        found = store.tier_snapshot(repo, ref)
        if found is None:
            raise NotFoundError(f"tier {ref} of {repo} serves no snapshot", repo=repo)
        snap = found
    return SnapshotRef(ref=ref, snapshot=snap)


@dataclass(frozen=True)
class DiffResult:
    repo: str
    kind: str  # "rpm" | "deb"
    from_ref: SnapshotRef
    to_ref: SnapshotRef
    diff: Diff

    def as_json(self) -> dict[str, Any]:
        return diff_to_json(self.diff, self.repo, self.from_ref, self.to_ref)


def compute_diff(store: Store, settings: Settings, repo: str, from_ref: str, to_ref: str) -> DiffResult:
    """What moving from FROM to TO changes: packages, and for RPM the advisories it brings in."""
    kind = settings.repo(repo).type
    a = resolve_ref(store, settings, repo, from_ref)
    b = resolve_ref(store, settings, repo, to_ref)
    assert a.snapshot is not None and b.snapshot is not None
    if a.snapshot == b.snapshot or (store.package_set_digest(repo, a.snapshot)
                                    == store.package_set_digest(repo, b.snapshot)):
        return DiffResult(repo, kind, a, b, EMPTY)
    before = package_set(store, repo, a.snapshot)
    after = package_set(store, repo, b.snapshot)
    diff = diff_rows(kind, before, after)
    if kind == "rpm":
        from_ids = store.advisory_ids(repo, a.snapshot)
        candidates = store.advisories_for_diff(repo, b.snapshot, from_ids, {c.name for c in diff.upgraded})
        if candidates:
            diff = dataclasses.replace(diff, advisories=diff_advisories(
                kind, diff, from_ids, candidates, after_packages=after))
    return DiffResult(repo, kind, a, b, diff)


# -- CVEs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TierFix:
    repo: str
    tier: str
    snapshot: str | None
    status: str  # "fixed" | "vulnerable" | "not_affected" | "unknown"
    first_fixed: str | None  # the repo's first snapshot that carried the fix
    advisories: tuple[str, ...]
    packages: tuple[dict[str, Any], ...]

    def as_json(self) -> dict[str, Any]:
        return {"repo": self.repo, "tier": self.tier, "snapshot": self.snapshot, "status": self.status,
                "first_fixed": self.first_fixed, "advisories": list(self.advisories),
                "packages": list(self.packages)}


@dataclass(frozen=True)
class CveReport:
    cve: str
    tiers: tuple[TierFix, ...]

    def as_json(self) -> dict[str, Any]:
        return {"cve": self.cve, "tiers": [t.as_json() for t in self.tiers]}


def check_cve(cve: str) -> str:
    import re

    if not re.fullmatch(r"CVE-\d{4}-\d{4,19}", cve, re.IGNORECASE):
        raise InvalidRequestError(f"{cve[:60]!r} is not a CVE id (CVE-YYYY-NNNN)")
    return cve.upper()


def cve_report(store: Store, settings: Settings, cve: str) -> CveReport:
    """Per configured repo and tier: does the tier's snapshot carry the fix of `cve`?

    "unknown": the repo has no advisory naming it (APT repos have none yet); "not_affected": the
    snapshot carries none of the packages the advisories list; "fixed"/"vulnerable" as
    :func:`mirror.diff.fix_status`. ``first_fixed``: the repo's oldest snapshot that is fixed."""
    cve = check_cve(cve)
    known = store.advisories_by_cve(cve)
    out: list[TierFix] = []
    for repo in settings.repos:
        found = known.get(repo.name, [])
        advisories: list[Advisory] = list({a.id: a for a, _ in found}.values())
        ids = tuple(sorted(a.id for a in advisories))
        first: str | None = None
        if advisories:
            for snap, _created in reversed(store.snapshot_ages(repo.name)):
                if fix_status(repo.type, advisories, package_set(store, repo.name, snap)).status == "fixed":
                    first = snap
                    break
        for tier, state in Tiers.for_settings(store, settings).current(repo.name).items():
            served = state.snapshot
            if not advisories or served is None:
                out.append(TierFix(repo.name, tier, served, "unknown", first, ids, ()))
                continue
            status = fix_status(repo.type, advisories, package_set(store, repo.name, served))
            out.append(TierFix(repo.name, tier, served, status.status, first, ids, tuple(
                {"name": p.name, "arch": p.arch, "carried": p.carried, "fixed_in": p.fixed_in,
                 "fixed": p.fixed} for p in status.packages)))
    return CveReport(cve, tuple(out))


def pending_advisories(store: Store, settings: Settings, repo: str, in_ref: str, not_in_ref: str | None,
                       type_: str | None) -> dict[str, Any]:
    """Advisories IN lists and NOT_IN does not (by id), optionally of one type: what waits for promotion."""
    settings.repo(repo)
    a = resolve_ref(store, settings, repo, in_ref)
    assert a.snapshot is not None
    b = resolve_ref(store, settings, repo, not_in_ref) if not_in_ref is not None else None
    excluded = store.advisory_ids(repo, b.snapshot) if b is not None and b.snapshot is not None else set()
    chosen = [x for x in store.snapshot_advisories(repo, a.snapshot)
              if x.id not in excluded and (type_ is None or x.type == type_)]
    refs = diff_advisories(settings.repo(repo).type, EMPTY, excluded, chosen)
    return {"repo": repo, "in": {"ref": a.ref, "snapshot": a.snapshot},
            "not_in": {"ref": b.ref, "snapshot": b.snapshot} if b is not None else None,
            "type": type_, "advisories": [advisory_ref_json(r) for r in refs]}
