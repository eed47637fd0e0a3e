"""Package filters of a repo, applied to verified index entries before any package is fetched.

A pattern is a name glob (`fnmatch`, case-sensitive) or a regular expression written `/regex/`
(searched anywhere in the name; anchor it with `^...$`).

Two kinds of filter. *Restrictions* say what the repo may carry at all: `exclude` (names),
`architectures` (RPM) and `versions` (name pattern -> constraints such as ">= 3.0, < 3.2", in the
format's own ordering). *Selections* say what to carry of that: `include` (names; empty: all), the
RPM advisory filters (`allowed`), then `keep_newest = N` (the newest N versions of each (name,
arch)). With `with_deps`, what the selected packages need is added from what the restrictions
allow (see mirror.dependencies): an excluded package is never pulled in as a dependency.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from mirror.dependencies import OPERATORS, PackageNeeds, Unresolved, resolve
from mirror.diff import Advisory
from mirror.versions import compare, sort_key, split_rpm_evr

T = TypeVar("T")
log = logging.getLogger(__name__)
#: How many unresolvable needs a warning names (the rest are counted).
REPORTED_NEEDS = 20

#: One version constraint: (operator, version), e.g. (">=", "3.0").
Constraint = tuple[str, str]
_CONSTRAINT_RE = re.compile(r"\s*(<=|>=|!=|<|>|=)\s*(\S*)\s*")
_OPS = (*OPERATORS, "!=")


def parse_constraints(text: str) -> tuple[Constraint, ...]:
    """">= 3.0, < 3.2" -> ((">=", "3.0"), ("<", "3.2")); ValueError saying what is wrong."""
    out: list[Constraint] = []
    for part in text.split(","):
        if not part.strip():
            raise ValueError(f"{text!r} has an empty constraint (one needs an operator and a version)")
        match = _CONSTRAINT_RE.fullmatch(part)
        if match is None:
            raise ValueError(f"{part.strip()!r} is not a constraint: an operator ({', '.join(_OPS)}) "
                             "and a version, e.g. \">= 3.0, < 3.2\"")
        op, version = match.groups()
        if not version:
            raise ValueError(f"{part.strip()!r} has no version after {op!r}")
        if any(c in version for c in "<>=!"):
            raise ValueError(f"{part.strip()!r}: {version!r} is not a version")
        out.append((op, version))
    return tuple(out)


def satisfies(kind: str, version: str, constraints: Sequence[Constraint]) -> bool:
    """Whether a package version meets every constraint, in the format's own ordering (dpkg;
    rpmvercmp on [epoch:]version-release, where a constraint without a release compares the
    epoch and version only, as rpm does)."""
    for op, wanted in constraints:
        have = version
        if kind == "rpm" and split_rpm_evr(wanted)[2] is None:
            epoch, upstream, _ = split_rpm_evr(version)
            have = f"{epoch}:{upstream}"
        c = compare(kind, have, wanted)
        ok = {"<": c < 0, "<=": c <= 0, "=": c == 0, ">=": c >= 0, ">": c > 0, "!=": c != 0}[op]
        if not ok:
            return False
    return True


@dataclass(frozen=True)
class Selection(Generic[T]):
    """What a filter kept (original order); `unresolved`: kept packages' needs nothing provides."""

    kept: list[T]
    unresolved: tuple[Unresolved, ...] = ()


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A `/regex/` or a glob as a compiled expression (re.error for a bad regex)."""
    if len(pattern) >= 2 and pattern.startswith("/") and pattern.endswith("/"):
        return re.compile(pattern[1:-1])
    return re.compile(r"\A(?:" + fnmatch.translate(pattern) + r")")


@dataclass(frozen=True)
class PackageFilter:
    kind: str  # "deb" | "rpm": whose version ordering keep_newest and versions use
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    keep_newest: int | None = None
    architectures: tuple[str, ...] = ()  # the architectures kept (RPM; empty: all)
    versions: tuple[tuple[str, tuple[Constraint, ...]], ...] = ()  # (name pattern, constraints)
    with_deps: bool = False
    repo: str | None = None  # for messages only

    @property
    def active(self) -> bool:
        return bool(self.include or self.exclude or self.keep_newest or self.architectures or self.versions
                    or self.with_deps)

    def shape(self) -> dict[str, object]:
        """What the snapshot's plan key includes (a change makes a new snapshot). The keys added
        after the first three appear only when set, so existing plan keys stay as they were."""
        shape: dict[str, object] = {"include": list(self.include), "exclude": list(self.exclude),
                                    "keep_newest": self.keep_newest}
        if self.architectures:
            shape["architectures"] = list(self.architectures)
        if self.versions:
            shape["versions"] = [[p, [list(c) for c in cs]] for p, cs in self.versions]
        if self.with_deps:
            shape["with_deps"] = True
        return shape

    def _matchers(self) -> tuple[Callable[[str], bool], Callable[[str], bool]]:
        """(may carry, is included) by name."""
        inc = [compile_pattern(p) for p in self.include]
        exc = [compile_pattern(p) for p in self.exclude]

        def allowed(name: str) -> bool:
            return not any(p.search(name) for p in exc)

        def included(name: str) -> bool:
            return not inc or any(p.search(name) for p in inc)

        return allowed, included

    def _restricted(self, items: Sequence[T], ident: Callable[[T], tuple[str, str, str]]) -> list[int]:
        """Positions of the items the restrictions allow (exclude, architectures, versions)."""
        allowed, _ = self._matchers()
        arches = set(self.architectures)
        versions = [(compile_pattern(p), cs) for p, cs in self.versions]
        out: list[int] = []
        for i, item in enumerate(items):
            name, arch, version = ident(item)
            if not allowed(name) or (arches and arch not in arches):
                continue
            if any(p.search(name) and not satisfies(self.kind, version, cs) for p, cs in versions):
                continue
            out.append(i)
        return out

    def select(self, items: Sequence[T], ident: Callable[[T], tuple[str, str, str]],
               allowed: Callable[[str, str, str], bool] | None = None) -> list[T]:
        """The items kept, in their original order; `ident` gives (name, arch, version). `allowed`
        (name, arch, version) further restricts them before `keep_newest` (advisory filters).
        Without dependencies (see `select_with_deps`)."""
        return [items[i] for i in self._selected(items, self._restricted(items, ident), ident, allowed)]

    def select_with_deps(self, items: Sequence[T], ident: Callable[[T], tuple[str, str, str]],
                         needs: Callable[[T], PackageNeeds],
                         allowed: Callable[[str, str, str], bool] | None = None) -> Selection[T]:
        """As `select`; with `with_deps`, plus what the kept items need (`needs` describes an item),
        resolved among the items the restrictions allow. Blocking: run it in a thread."""
        universe = self._restricted(items, ident)
        kept = self._selected(items, universe, ident, allowed)
        if not self.with_deps:
            return Selection([items[i] for i in kept])
        position = {item: n for n, item in enumerate(universe)}
        resolution = resolve(self.kind, [needs(items[i]) for i in universe], [position[i] for i in kept])
        chosen = sorted({*kept, *(universe[n] for n in resolution.added)})
        return Selection([items[i] for i in chosen], resolution.unresolved)

    def _selected(self, items: Sequence[T], universe: list[int], ident: Callable[[T], tuple[str, str, str]],
                  allowed: Callable[[str, str, str], bool] | None) -> list[int]:
        _, included = self._matchers()
        kept = [i for i in universe if included(ident(items[i])[0])]
        if allowed is not None:
            kept = [i for i in kept if allowed(*ident(items[i]))]
        if self.keep_newest:
            key = sort_key(self.kind)
            groups: dict[tuple[str, str], list[int]] = {}
            for i in kept:
                name, arch, _ = ident(items[i])
                groups.setdefault((name, arch), []).append(i)
            chosen: set[int] = set()
            for members in groups.values():
                versions = sorted({ident(items[i])[2] for i in members}, key=key, reverse=True)
                newest = set(versions[: self.keep_newest])
                chosen.update(i for i in members if ident(items[i])[2] in newest)
            kept = [i for i in kept if i in chosen]
        return kept


@dataclass(frozen=True)
class AdvisoryFilter:
    """RPM: keep the packages named by advisories of these types and severities (case-insensitive),
    issued before a moment; packages that no advisory names are kept or dropped (`unadvised`)."""

    types: tuple[str, ...] = ()
    severities: tuple[str, ...] = ()
    issued_before: datetime | None = None
    unadvised: str = "drop"  # "keep" | "drop"

    @property
    def active(self) -> bool:
        return bool(self.types or self.severities or self.issued_before is not None)

    def matches(self, advisory: Advisory) -> bool:
        if self.types and advisory.type.lower() not in {t.lower() for t in self.types}:
            return False
        if self.severities and advisory.severity.lower() not in {s.lower() for s in self.severities}:
            return False
        before = self.issued_before
        return before is None or (advisory.issued is not None and advisory.issued < before)

    def allowed(self, advisories: Sequence[Advisory]) -> Callable[[str, str, str], bool]:
        """(name, arch, evr) -> kept? (evr as manifests store it: epoch left out when 0)."""
        named: set[tuple[str, str, str]] = set()
        chosen: set[tuple[str, str, str]] = set()
        for advisory in advisories:
            keys = {(p.name, p.arch, p.evr) for p in advisory.packages}
            named |= keys
            if self.matches(advisory):
                chosen |= keys
        keep_unadvised = self.unadvised == "keep"

        def allowed(name: str, arch: str, evr: str) -> bool:
            key = (name, arch, evr)
            return key in chosen or (keep_unadvised and key not in named)

        return allowed


def report_unresolved(flt: PackageFilter, unresolved: Sequence[Unresolved], *, what: str,
                      notes: list[str] | None = None) -> None:
    """Log the kept packages' needs that nothing in the repo provides: one warning per index, each
    need named with the (first) package that has it; the same line goes into `notes` (the sync
    run's message, `mirror status` and the API's sync runs show it)."""
    if not unresolved:
        return
    by_need: dict[str, list[str]] = {}
    for u in unresolved:
        by_need.setdefault(u.need, []).append(u.package)
    parts = [f"{need} (needed by {who[0]}{f' and {len(who) - 1} more' if len(who) > 1 else ''})"
             for need, who in list(by_need.items())[:REPORTED_NEEDS]]
    more = f"; and {len(by_need) - REPORTED_NEEDS} more" if len(by_need) > REPORTED_NEEDS else ""
    line = (f"{what}: with_deps: nothing in the repo provides "
            f"{'this need' if len(by_need) == 1 else f'{len(by_need)} needs'} (left to the clients' other "
            f"repos): {'; '.join(parts)}{more}")
    log.warning("%s", f"{flt.repo}: {line}" if flt.repo else line)
    if notes is not None:
        notes.append(line)
