"""What a promotion changes: two package sets in, a :class:`Diff` out. Pure: no I/O, no store.

A package is identified by (name, arch); its version is a full version string of the repo's
type (RPM ``[epoch:]version-release`` with the epoch left out when 0, the Debian version as is),
ordered by :mod:`mirror.versions` exactly as rpm and dpkg order them.

Several versions of one (name, arch) in a snapshot
--------------------------------------------------
RPM repos often keep old builds next to new ones, and an APT repo with several suites (or a
pool) can hold several versions of a package. A security team asks two questions: "what will a
client install or upgrade to?" (the *newest* version of each (name, arch): what ``dnf upgrade``
and ``apt`` pick, at equal priority) and "exactly which builds appear or disappear?". So, per
(name, arch), with ``A`` the versions before and ``B`` the versions after:

- ``A`` empty: every version of ``B`` is *added*; ``B`` empty: every version of ``A`` is *removed*.
- Otherwise, when the newest of ``A`` and the newest of ``B`` differ in order, that is ONE
  *upgraded* (or *downgraded*) entry ``newest(A) -> newest(B)``, and the other versions that
  appear or disappear are *added* / *removed* entries. ``from_kept`` says the old newest
  version is still in the snapshot (typical of RPM repos keeping older builds: ``{24} -> {24,
  25}`` is an upgrade 24 -> 25 with ``from_kept``); ``to_was_present`` says the new newest was
  there before (``{1, 2} -> {1}``: a downgrade 2 -> 1, because 2 went away).
- When the newest versions are equal, only the older builds changed: plain added / removed.
- Two strings that compare equal but differ (``1.0-1`` and ``1.00-1``) are never an upgrade or a
  downgrade: the old one is removed and the new one added.

With one version per (name, arch) on each side (a Debian suite, most RPM repos that prune) this
is exactly one entry per (name, arch) as the contract shows. Every entry is exact, so applying a
diff to the package set it was computed from gives the other set (:func:`apply_diff`), and
swapping the two sets swaps added/removed and upgraded/downgraded.

Cost
----
Package sets are compared as text lines (``name<TAB>arch<TAB>version``): two set subtractions
in C; only the changed lines, and the other lines of the names they touch (found by bisection
or a small index), go through Python code and version comparison, so the work beyond the two
subtractions follows the size of the change. A :class:`PackageSet` is what to keep per
snapshot: in memory (snapshots are immutable) or in the store as a blob (:meth:`PackageSet.to_blob`,
about 9 bytes a package), which loads several times faster than the same rows out of SQLite.
``bench/diff_bench.py`` measures each path.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Collection, Iterable, Set
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cmp_to_key
from typing import Any

from mirror.model import PackageKey
from mirror.packageset import PackageSet, Row, line_row, row_line
from mirror.versions import compare_deb, compare_rpm_evr

__all__ = [
    "Advisory",
    "AdvisoryPackage",
    "AdvisoryRef",
    "Diff",
    "FixStatus",
    "FixedPackage",
    "PackageSet",
    "PackageVersion",
    "Reference",
    "Row",
    "SnapshotRef",
    "VersionChange",
    "advisory_ref_json",
    "apply_diff",
    "diff_advisories",
    "diff_packages",
    "diff_rows",
    "diff_to_csv",
    "diff_to_json",
    "diff_to_table",
    "fix_status",
    "line_row",
    "row_line",
]

_COMPARE: dict[str, Callable[[str, str], int]] = {"rpm": compare_rpm_evr, "deb": compare_deb}


# -- the model ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PackageVersion:
    name: str
    arch: str
    version: str


@dataclass(frozen=True, slots=True)
class VersionChange:
    """The newest version of (name, arch) moved from ``from_version`` to ``to_version``."""

    name: str
    arch: str
    from_version: str
    to_version: str
    #: ``from_version`` is still in the new snapshot (older builds kept next to the new one).
    from_kept: bool = False
    #: ``to_version`` was already in the old snapshot (the newest changed because newer went away).
    to_was_present: bool = False


@dataclass(frozen=True, slots=True)
class Reference:
    """One updateinfo <reference> (bugzilla, cve, self, ...) or a DSA/DLA link."""

    type: str
    id: str
    href: str = ""
    title: str = ""


@dataclass(frozen=True, slots=True)
class AdvisoryPackage:
    """A package version an advisory ships (the fixed version).

    RPM (updateinfo): binary or source package, ``arch`` as rpm names it ("x86_64", "noarch",
    "src"). Debian advisories (``source`` "dsa"/"dla", later): ``name`` is the source package,
    ``arch`` "source", ``version`` the whole Debian version, ``epoch`` "0" and ``release`` "".
    """

    name: str
    epoch: str
    version: str
    release: str
    arch: str
    filename: str = ""

    @property
    def evr(self) -> str:
        """``[epoch:]version[-release]``, epoch left out when 0: the form manifests store."""
        text = f"{self.version}-{self.release}" if self.release else self.version
        return f"{self.epoch}:{text}" if self.epoch not in ("", "0") else text

    @property
    def nevra(self) -> str:
        """``openssl-1:3.0.7-25.el9.x86_64`` (``foo-1.2-1.noarch`` when the epoch is 0)."""
        return f"{self.name}-{self.evr}.{self.arch}"


@dataclass(frozen=True, slots=True)
class Advisory:
    """One security/bugfix/enhancement advisory as a repo publishes it.

    ``source`` says where it came from: "updateinfo" (an RPM repo's updateinfo.xml) or, later,
    "dsa"/"dla" (Debian security tracker data imported for an APT repo)."""

    id: str
    type: str  # "security", "bugfix", "enhancement", "newpackage", ... as published
    severity: str  # "Critical", "Important", "Moderate", "Low", or "" when not given
    title: str
    issued: datetime | None  # UTC
    updated: datetime | None  # UTC
    cves: tuple[str, ...]  # from references of type "cve", in document order, no duplicates
    references: tuple[Reference, ...]  # every other reference
    packages: tuple[AdvisoryPackage, ...]
    source: str = "updateinfo"
    status: str = ""
    description: str = ""

    @property
    def nevras(self) -> tuple[str, ...]:
        return tuple(p.nevra for p in self.packages)


@dataclass(frozen=True, slots=True)
class AdvisoryRef:
    """An advisory as a diff lists it (CONTRACT: id, type, severity, cves, packages)."""

    id: str
    type: str
    severity: str
    cves: tuple[str, ...]
    packages: tuple[str, ...]  # its NEVRAs that TO carries (all of them if TO's rows were not given)
    title: str = ""
    issued: datetime | None = None


@dataclass(frozen=True, slots=True)
class SnapshotRef:
    """How the user named a side of the diff (tier, snapshot id, TIER@TIME) and what it resolved to."""

    ref: str
    snapshot: str | None


@dataclass(frozen=True, slots=True)
class Diff:
    added: tuple[PackageVersion, ...] = ()
    removed: tuple[PackageVersion, ...] = ()
    upgraded: tuple[VersionChange, ...] = ()
    downgraded: tuple[VersionChange, ...] = ()
    advisories: tuple[AdvisoryRef, ...] = ()

    @property
    def is_empty(self) -> bool:
        """No package moved and no advisory came in (``mirror diff`` exits 0, else 1)."""
        return not (self.added or self.removed or self.upgraded or self.downgraded or self.advisories)

    def summary(self) -> dict[str, int]:
        return {"added": len(self.added), "removed": len(self.removed), "upgraded": len(self.upgraded),
                "downgraded": len(self.downgraded), "advisories": len(self.advisories)}

    def __len__(self) -> int:
        """Entries in all: package changes and advisories (what pages are cut from)."""
        return (len(self.added) + len(self.removed) + len(self.upgraded) + len(self.downgraded)
                + len(self.advisories))

    def page(self, offset: int, limit: int) -> Diff:
        """Entries ``offset`` to ``offset + limit`` (exclusive) of the sequence added, removed,
        upgraded, downgraded, advisories (each list in its own stable order, as the JSON and CSV
        list them), as a Diff holding only those. Slices only: costs what the page holds."""
        if offset < 0 or limit < 0:
            raise ValueError("offset and limit must not be negative")
        parts: list[tuple[Any, ...]] = []
        start, left = offset, limit
        for seq in (self.added, self.removed, self.upgraded, self.downgraded, self.advisories):
            if start >= len(seq) or left == 0:
                start = max(0, start - len(seq))
                parts.append(())
                continue
            taken = seq[start:start + left]
            parts.append(taken)
            left -= len(taken)
            start = 0
        return Diff(*parts)


EMPTY = Diff()


# -- packages -----------------------------------------------------------------------------------


def _check_kind(kind: str) -> Callable[[str, str], int]:
    try:
        return _COMPARE[kind]
    except KeyError:
        raise ValueError(f"unknown repo type {kind!r} (expected 'rpm' or 'deb')") from None


def _group(lines: Iterable[str]) -> dict[tuple[str, str], list[str]]:
    """(name, arch) -> versions, from changed lines."""
    out: dict[tuple[str, str], list[str]] = {}
    get = out.get
    for line in lines:
        n, a, v = line_row(line) if "\\" in line else line.split("\t")
        entry = get((n, a))
        if entry is None:
            out[(n, a)] = [v]
        else:
            entry.append(v)
    return out


def diff_packages(kind: str, before: Iterable[PackageKey], after: Iterable[PackageKey]) -> Diff:
    """Diff two snapshots' packages (e.g. the ``package`` of their manifest entries)."""
    return diff_rows(kind, [(p.name, p.arch, p.version) for p in before],
                     [(p.name, p.arch, p.version) for p in after])


def diff_rows(kind: str, before: PackageSet | Iterable[Row], after: PackageSet | Iterable[Row]) -> Diff:
    """Diff two package sets given as PackageSets or ``(name, arch, version)`` rows (duplicate
    rows count once). ``kind`` is the repo type, "rpm" or "deb": it picks the version order."""
    cmp = _check_kind(kind)
    a = before if isinstance(before, PackageSet) else PackageSet(before)
    b = after if isinstance(after, PackageSet) else PackageSet(after)
    gone = a._set - b._set
    new = b._set - a._set
    if not gone and not new:
        return EMPTY

    # Every version, on both sides, of the (name, arch) pairs that changed: the changed lines,
    # plus the unchanged versions of the same pairs (other builds kept next to a changed one).
    va = _group(gone)
    vb = _group(new)
    touched = va.keys() | vb.keys()
    names = {n for n, _ in touched}
    candidates: tuple[Iterable[str], Iterable[str]]
    if isinstance(before, PackageSet) and isinstance(after, PackageSet):
        # Kept objects: use (and keep) their multi names. A name with one line at most on a side
        # whose line did not change has that line on the other side too, next to a changed one:
        # so only names with several lines on one side or the other are looked up.
        multi_a, multi_b = a.multi_names(), b.multi_names()
        from_a: list[str] = []
        from_b: list[str] = []
        for name in names:
            in_a, in_b = name in multi_a, name in multi_b
            if in_a or in_b:
                lines_a = a._lines_of_multi(name) if in_a else None
                lines_b = b._lines_of_multi(name) if in_b else None
                from_a += lines_a if lines_a is not None else [x for x in lines_b or () if x in a._set]
                from_b += lines_b if lines_b is not None else [x for x in lines_a or () if x in b._set]
        candidates = (from_a, from_b)
    else:  # one-off PackageSets made from rows here: one scan each, in C
        candidates = (a._lines_named(names), b._lines_named(names))
    for lines, changed, versions in ((candidates[0], gone, va), (candidates[1], new, vb)):
        for line in lines:
            if line not in changed:
                n, ar, v = line_row(line)
                if (n, ar) in touched:
                    versions.setdefault((n, ar), []).append(v)
    return _changes(cmp, va, vb, touched)


def _changes(cmp: Callable[[str, str], int], va: dict[tuple[str, str], list[str]],
             vb: dict[tuple[str, str], list[str]], touched: Set[tuple[str, str]]) -> Diff:
    """The Diff, from every version before (``va``) and after (``vb``) of the touched pairs."""
    added: list[PackageVersion] = []
    removed: list[PackageVersion] = []
    upgraded: list[VersionChange] = []
    downgraded: list[VersionChange] = []
    for pair in sorted(touched):
        name, arch = pair
        old = va.get(pair, ())
        cur = vb.get(pair, ())
        if len(old) == 1 and len(cur) == 1:  # the common case: one version on each side
            o, c = old[0], cur[0]
            rel = cmp(o, c)
            if rel < 0:
                upgraded.append(VersionChange(name, arch, o, c))
            elif rel > 0:
                downgraded.append(VersionChange(name, arch, o, c))
            else:  # equal in order, different strings
                removed.append(PackageVersion(name, arch, o))
                added.append(PackageVersion(name, arch, c))
            continue
        if not old:
            added += [PackageVersion(name, arch, v) for v in _ordered(cur, cmp)]
            continue
        if not cur:
            removed += [PackageVersion(name, arch, v) for v in _ordered(old, cmp)]
            continue
        set_old, set_cur = set(old), set(cur)
        top_old, top_cur = _newest(old, cmp), _newest(cur, cmp)
        rel = cmp(top_old, top_cur)
        if rel:
            change = VersionChange(name, arch, top_old, top_cur, from_kept=top_old in set_cur,
                                   to_was_present=top_cur in set_old)
            (upgraded if rel < 0 else downgraded).append(change)
            set_old.add(top_cur)  # neither end of the change is also an added/removed entry
            set_cur.add(top_old)
        removed += [PackageVersion(name, arch, v) for v in _ordered(set_old - set_cur, cmp)]
        added += [PackageVersion(name, arch, v) for v in _ordered(set_cur - set_old, cmp)]
    return Diff(tuple(added), tuple(removed), tuple(upgraded), tuple(downgraded))


def _ordered(versions: Iterable[str], cmp: Callable[[str, str], int]) -> list[str]:
    """Oldest first; versions equal in order by string (deterministic)."""
    def order(x: str, y: str) -> int:
        return cmp(x, y) or (x > y) - (x < y)

    return sorted(versions, key=cmp_to_key(order))


def _newest(versions: list[str], cmp: Callable[[str, str], int]) -> str:
    """The newest version; among versions equal in order, the greatest string (deterministic)."""
    best = versions[0]
    for v in versions[1:]:
        rel = cmp(v, best)
        if rel > 0 or (rel == 0 and v > best):
            best = v
    return best


def apply_diff(before: Iterable[Row], diff: Diff) -> set[Row]:
    """The package set a diff leads to from ``before`` (the set it was computed from)."""
    rows = set(before)
    for p in diff.removed:
        rows.discard((p.name, p.arch, p.version))
    for p in diff.added:
        rows.add((p.name, p.arch, p.version))
    for c in (*diff.upgraded, *diff.downgraded):
        if not c.from_kept:
            rows.discard((c.name, c.arch, c.from_version))
        rows.add((c.name, c.arch, c.to_version))
    return rows


# -- advisories ---------------------------------------------------------------------------------


def diff_advisories(kind: str, diff: Diff, before: Iterable[Advisory | str], after: Iterable[Advisory], *,
                    after_packages: PackageSet | Collection[Row] | None = None) -> tuple[AdvisoryRef, ...]:
    """The advisories a promotion brings in, sorted by id:

    - every advisory of ``after`` whose id is not in ``before`` (FROM's advisories, or just their
      ids), i.e. new in TO, and
    - for each upgraded package, the advisories of ``after`` that *cover the new version*: they
      list that (name, arch) with a fixed version above the old version and at most the new one
      (the fix arrives with this upgrade; a fix the old version already had is not listed).

    With ``after_packages`` (the TO snapshot's rows), an advisory's ``packages`` are the NEVRAs TO
    actually carries, and an advisory none of whose packages TO carries is left out (a repo
    filtered down to a few packages does not list every advisory of its upstream). Without
    it, every package of the advisory is listed.

    Use: ``diff = dataclasses.replace(diff, advisories=diff_advisories(...))``. The store should
    pass, for ``before``/``after``, only what can matter when advisories are many: the ids of
    FROM's advisories and TO's advisories that are new or list an upgraded package's name.
    """
    cmp = _check_kind(kind)
    before_ids = {a if isinstance(a, str) else a.id for a in before}
    carried: PackageSet | Collection[Row] | None = after_packages
    if after_packages is not None and not isinstance(after_packages, (PackageSet, set, frozenset)):
        carried = set(after_packages)
    upgrades: dict[tuple[str, str], list[VersionChange]] = {}
    for change in diff.upgraded:
        upgrades.setdefault((change.name, change.arch), []).append(change)

    chosen: dict[str, AdvisoryRef] = {}
    for adv in after:
        if adv.id in chosen:
            continue
        wanted = adv.id not in before_ids
        if not wanted and upgrades:
            for p in adv.packages:
                for change in upgrades.get((p.name, p.arch), ()):
                    evr = p.evr
                    if cmp(change.from_version, evr) < 0 <= cmp(change.to_version, evr):
                        wanted = True
                        break
                if wanted:
                    break
        if not wanted:
            continue
        if carried is None:
            nevras = adv.nevras
        else:
            nevras = tuple(p.nevra for p in adv.packages if (p.name, p.arch, p.evr) in carried)
            if not nevras:
                continue
        chosen[adv.id] = AdvisoryRef(id=adv.id, type=adv.type, severity=adv.severity, cves=adv.cves,
                                     packages=nevras, title=adv.title, issued=adv.issued)
    return tuple(chosen[i] for i in sorted(chosen))


@dataclass(frozen=True, slots=True)
class FixedPackage:
    """One (name, arch) an advisory fixes, as a snapshot carries it."""

    name: str
    arch: str
    carried: str  # the newest version the snapshot has
    fixed_in: str  # the lowest fixed version the advisories give for it
    fixed: bool  # carried is at least fixed_in


@dataclass(frozen=True, slots=True)
class FixStatus:
    #: "fixed": every advisory package the snapshot carries is at or above its fixed version;
    #: "vulnerable": at least one is below; "not_affected": it carries none of them.
    status: str
    packages: tuple[FixedPackage, ...]  # the (name, arch) pairs it carries, sorted


def fix_status(kind: str, advisories: Iterable[Advisory], rows: PackageSet | Iterable[Row]) -> FixStatus:
    """Whether a snapshot (``rows``) carries the fix of ``advisories`` (those naming one CVE, for
    ``mirror cve``): compares the newest version of each (name, arch) the advisories list with the
    lowest fixed version they give for it. ``rows`` need only hold the rows of those names."""
    cmp = _check_kind(kind)
    fixed_in: dict[tuple[str, str], str] = {}
    for adv in advisories:
        for p in adv.packages:
            pair, evr = (p.name, p.arch), p.evr
            known = fixed_in.get(pair)
            if known is None or cmp(evr, known) < 0:
                fixed_in[pair] = evr
    carried: dict[tuple[str, str], list[str]] = {}
    names = {n for n, _ in fixed_in}
    candidates = map(line_row, rows._lines_named(names)) if isinstance(rows, PackageSet) else rows
    for n, a, v in candidates:
        if (n, a) in fixed_in:
            carried.setdefault((n, a), []).append(v)
    packages = []
    for pair in sorted(carried):
        newest, wanted = _newest(carried[pair], cmp), fixed_in[pair]
        packages.append(FixedPackage(pair[0], pair[1], newest, wanted, cmp(newest, wanted) >= 0))
    if not packages:
        return FixStatus("not_affected", ())
    return FixStatus("fixed" if all(p.fixed for p in packages) else "vulnerable", tuple(packages))


# -- output -------------------------------------------------------------------------------------


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _side(ref: SnapshotRef | tuple[str, str | None]) -> dict[str, str | None]:
    if isinstance(ref, SnapshotRef):
        return {"ref": ref.ref, "snapshot": ref.snapshot}
    return {"ref": ref[0], "snapshot": ref[1]}


def _change_json(c: VersionChange) -> dict[str, Any]:
    return {"name": c.name, "arch": c.arch, "from": c.from_version, "to": c.to_version,
            "from_kept": c.from_kept, "to_was_present": c.to_was_present}


def advisory_ref_json(a: AdvisoryRef) -> dict[str, Any]:
    return {"id": a.id, "type": a.type, "severity": a.severity, "cves": list(a.cves),
            "packages": list(a.packages), "title": a.title, "issued": _iso(a.issued)}


def diff_to_json(diff: Diff, repo: str, from_ref: SnapshotRef | tuple[str, str | None],
                 to_ref: SnapshotRef | tuple[str, str | None]) -> dict[str, Any]:
    """The CONTRACT's diff document (``mirror diff --json`` and the API). Extra fields: upgraded
    and downgraded entries carry ``from_kept``/``to_was_present``, advisories ``title``/``issued``."""
    return {
        "repo": repo,
        "from": _side(from_ref),
        "to": _side(to_ref),
        "added": [{"name": p.name, "arch": p.arch, "version": p.version} for p in diff.added],
        "removed": [{"name": p.name, "arch": p.arch, "version": p.version} for p in diff.removed],
        "upgraded": [_change_json(c) for c in diff.upgraded],
        "downgraded": [_change_json(c) for c in diff.downgraded],
        "advisories": [advisory_ref_json(a) for a in diff.advisories],
        "summary": diff.summary(),
    }


CSV_COLUMNS = ("change", "name", "arch", "from", "to", "type", "severity", "cves", "packages")


def terminal_safe(text: str) -> str:
    """`text` with control and format characters (ESC, BEL, CR, U+202E ...) as visible escapes:
    upstream metadata must never drive the terminal of whoever reads a diff (HOSTILE case 45)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
                   for c in text)


class _SafeWriter:
    def __init__(self, buf: io.StringIO) -> None:
        self._w = csv.writer(buf, lineterminator="\n")

    def writerow(self, row: tuple[str, ...]) -> None:
        self._w.writerow([terminal_safe(cell) for cell in row])


def diff_to_csv(diff: Diff) -> str:
    """One row per package change, then one per advisory (``change`` = "advisory", ``name`` = its
    id, ``cves`` and ``packages`` space-separated). Header row first. Control characters in
    upstream strings come out escaped (`terminal_safe`)."""
    buf = io.StringIO()
    w = _SafeWriter(buf)
    w.writerow(CSV_COLUMNS)
    for p in diff.added:
        w.writerow(("added", p.name, p.arch, "", p.version, "", "", "", ""))
    for p in diff.removed:
        w.writerow(("removed", p.name, p.arch, p.version, "", "", "", "", ""))
    for label, changes in (("upgraded", diff.upgraded), ("downgraded", diff.downgraded)):
        for c in changes:
            w.writerow((label, c.name, c.arch, c.from_version, c.to_version, "", "", "", ""))
    for a in diff.advisories:
        w.writerow(("advisory", a.id, "", "", "", a.type, a.severity, " ".join(a.cves), " ".join(a.packages)))
    return buf.getvalue()


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    rows = [tuple(terminal_safe(cell) for cell in r) for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    return [line.format(*header).rstrip(), *(line.format(*r).rstrip() for r in rows)]


def diff_to_table(diff: Diff) -> str:
    """A readable text table: package changes (upgrades first), advisories, a summary line."""
    rows: list[tuple[str, ...]] = []
    for label, changes in (("upgraded", diff.upgraded), ("downgraded", diff.downgraded)):
        for c in changes:
            note = " (old kept)" if c.from_kept else ""
            rows.append((label, c.name, c.arch, c.from_version, c.to_version + note))
    rows += [("added", p.name, p.arch, "", p.version) for p in diff.added]
    rows += [("removed", p.name, p.arch, p.version, "") for p in diff.removed]
    out: list[str] = []
    if rows:
        out += _table(("CHANGE", "NAME", "ARCH", "FROM", "TO"), rows)
    if diff.advisories:
        if out:
            out.append("")
        out += _table(("ADVISORY", "TYPE", "SEVERITY", "CVES", "PACKAGES"),
                      [(a.id, a.type, a.severity or "-", " ".join(a.cves) or "-", " ".join(a.packages))
                       for a in diff.advisories])
    if out:
        out.append("")
    s = diff.summary()
    out.append("no changes" if diff.is_empty else
               f"{s['added']} added, {s['removed']} removed, {s['upgraded']} upgraded, "
               f"{s['downgraded']} downgraded, {s['advisories']} advisories")
    return "\n".join(out) + "\n"

