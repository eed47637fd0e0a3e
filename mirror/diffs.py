"""Diffs between stored snapshots, and what the store knows about a CVE: the I/O around :mod:`mirror.diff`.

A side of a diff is named by a tier ("prod": what it serves now), a snapshot id
("20261127T020000Z") or ``TIER@TIME`` (what the tier served then, from its history). Package
sets come from the store's per-snapshot blobs and are kept in a small in-process LRU cache:
snapshots never change, so a cached set never goes stale (a snapshot id removed by gc and
re-used later cannot happen: ids only grow, also past a deleted snapshot).

The API serves a diff in pages (:func:`diff_page`, HOSTILE 75): the diff of two snapshots is
computed once and kept in a second small LRU (:func:`cached_diff`), a page is a slice of it
(:meth:`mirror.diff.Diff.page`), and an opaque cursor pins the two snapshots and the offset, so
paging through tens of thousands of changes costs one diff plus what each page holds.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

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
    terminal_safe,
)
from mirror.errors import InvalidRequestError, NotFoundError
from mirror.model import SNAPSHOT_ID_RE
from mirror.names import MAX_NAME_LENGTH, check_snapshot, check_tier
from mirror.store import Store
from mirror.tiers import Tiers, parse_moment

__all__ = ["CveReport", "DiffPage", "DiffResult", "compute_diff", "cve_report", "diff_page",
           "pending_advisories", "resolve_ref"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Lru(Generic[K, V]):
    """A small thread-safe LRU of values computed outside the lock (snapshots never change, so
    two threads computing the same value at once is only wasted work)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K, compute: Callable[[], V]) -> V:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                return found
        value = compute()
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_package_sets: _Lru[tuple[str, str, str], PackageSet] = _Lru(8)
_diffs: _Lru[tuple[str, str, str, str], Diff] = _Lru(4)


def package_set(store: Store, repo: str, snapshot: str) -> PackageSet:
    """The snapshot's PackageSet, from the cache or the store (NotFoundError if none)."""
    return _package_sets.get((str(store.path), repo, snapshot), lambda: store.package_set(repo, snapshot))


def clear_cache() -> None:
    """Forget the cached package sets and diffs."""
    _package_sets.clear()
    _diffs.clear()


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
    return DiffResult(repo, kind, a, b, _snapshot_diff(store, kind, repo, a.snapshot, b.snapshot))


def _snapshot_diff(store: Store, kind: str, repo: str, a: str, b: str) -> Diff:
    if a == b or store.package_set_digest(repo, a) == store.package_set_digest(repo, b):
        return EMPTY
    before = package_set(store, repo, a)
    after = package_set(store, repo, b)
    diff = diff_rows(kind, before, after)
    if kind == "rpm":
        from_ids = store.advisory_ids(repo, a)
        candidates = store.advisories_for_diff(repo, b, from_ids, {c.name for c in diff.upgraded})
        if candidates:
            diff = dataclasses.replace(diff, advisories=diff_advisories(
                kind, diff, from_ids, candidates, after_packages=after))
    return diff


# -- pages (the API) -----------------------------------------------------------------------------

DEFAULT_PAGE = 1000
MAX_PAGE = 10000
_MAX_OFFSET = 10**9
MAX_CURSOR = 200


def cached_diff(store: Store, kind: str, repo: str, a: str, b: str) -> Diff:
    """The diff of two snapshots, kept in a small LRU: paging through a big diff computes it once
    (snapshots never change; a deleted one is checked for by the caller)."""
    return _diffs.get((str(store.path), repo, a, b), lambda: _snapshot_diff(store, kind, repo, a, b))


def _refs_tag(from_ref: str, to_ref: str) -> str:
    return hashlib.sha256(f"{from_ref}\n{to_ref}".encode()).hexdigest()[:16]


def encode_cursor(from_ref: str, to_ref: str, a: str, b: str, offset: int) -> str:
    """An opaque cursor (about 120 characters): a tag of the refs as asked, the snapshots they
    resolved to on the first page (so every page is cut from the same diff even if a tier moves
    meanwhile) and the offset."""
    doc = json.dumps({"v": 1, "r": _refs_tag(from_ref, to_ref), "a": a, "b": b, "o": offset},
                     separators=(",", ":"))
    return base64.urlsafe_b64encode(doc.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, from_ref: str, to_ref: str) -> tuple[str, str, int]:
    """(from snapshot, to snapshot, offset) of a cursor made for these refs, else 400."""
    bad = InvalidRequestError("cursor is not one this API gave out (start again without it)")
    if len(cursor) > MAX_CURSOR or not re.fullmatch(r"[A-Za-z0-9_-]+", cursor):
        raise bad
    try:
        doc = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, UnicodeDecodeError):
        raise bad from None
    if not isinstance(doc, dict) or doc.get("v") != 1:
        raise bad
    a, b, offset = doc.get("a"), doc.get("b"), doc.get("o")
    if (not isinstance(a, str) or not isinstance(b, str) or not SNAPSHOT_ID_RE.fullmatch(a)
            or not SNAPSHOT_ID_RE.fullmatch(b) or type(offset) is not int or not 0 <= offset <= _MAX_OFFSET):
        raise bad
    if doc.get("r") != _refs_tag(from_ref, to_ref):
        raise InvalidRequestError("cursor belongs to a diff of other refs "
                                  "(from and to must stay as they were on the first page)")
    return a, b, offset


@dataclass(frozen=True)
class DiffPage:
    """One page of a diff: `result.diff` holds the page's entries, `summary` counts the whole diff."""

    result: DiffResult
    summary: dict[str, int]
    offset: int
    limit: int
    total: int
    next_cursor: str | None

    def as_json(self) -> dict[str, Any]:
        doc = self.result.as_json()
        doc["summary"] = self.summary
        doc["page"] = {"offset": self.offset, "limit": self.limit, "total": self.total,
                       "next_cursor": self.next_cursor}
        return doc


def diff_page(store: Store, settings: Settings, repo: str, from_ref: str, to_ref: str, *,
              limit: int | None = DEFAULT_PAGE, cursor: str | None = None) -> DiffPage:
    """A page of the diff FROM -> TO: at most `limit` entries of the sequence added, removed,
    upgraded, downgraded, advisories, from the offset `cursor` says (the start without one).
    The diff is computed once per pair of snapshots (`cached_diff`); a page costs its size.
    `limit` None (no cursor): the whole diff in one page."""
    if limit is None and cursor is not None:
        limit = DEFAULT_PAGE
    if limit is not None and not 1 <= limit <= MAX_PAGE:
        raise InvalidRequestError(f"limit must be an integer from 1 to {MAX_PAGE}")
    kind = settings.repo(repo).type
    if cursor is None:
        a = resolve_ref(store, settings, repo, from_ref)
        b = resolve_ref(store, settings, repo, to_ref)
        offset = 0
    else:
        snap_a, snap_b, offset = decode_cursor(cursor, from_ref, to_ref)
        for snap in (snap_a, snap_b):
            if not store.has_snapshot(repo, snap):
                raise NotFoundError(f"no snapshot {snap} in repo {repo} (deleted since the first page)",
                                    repo=repo)
        a, b = SnapshotRef(from_ref, snap_a), SnapshotRef(to_ref, snap_b)
    assert a.snapshot is not None and b.snapshot is not None
    full = cached_diff(store, kind, repo, a.snapshot, b.snapshot)
    total = len(full)
    if limit is None:
        limit = max(total, 1)
    end = offset + limit
    following = encode_cursor(from_ref, to_ref, a.snapshot, b.snapshot, end) if end < total else None
    return DiffPage(DiffResult(repo, kind, a, b, full.page(offset, limit)), full.summary(), offset, limit,
                    total, following)


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


def cve_to_table(report: CveReport) -> str:
    """`mirror cve` as a table: one line per repo and tier. Advisory ids come from upstream
    updateinfo: control and format characters are shown escaped (`terminal_safe`, HOSTILE 45)."""
    lines = [f"{'REPO':<20} {'TIER':<8} {'SNAPSHOT':<18} {'STATUS':<13} {'FIRST FIXED':<18} ADVISORIES"]
    for t in report.tiers:
        advisories = " ".join(terminal_safe(a) for a in t.advisories) or "-"
        lines.append(f"{terminal_safe(t.repo):<20} {terminal_safe(t.tier):<8} {t.snapshot or '-':<18} "
                     f"{t.status.replace('_', ' '):<13} {t.first_fixed or '-':<18} {advisories}")
    return "".join(f"{line}\n" for line in lines)


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
