"""Package filters of a repo (`include`, `exclude`, `keep_newest`), applied to verified index entries.

A pattern is a name glob (`fnmatch`, case-sensitive) or a regular expression written `/regex/`
(searched anywhere in the name; anchor it with `^...$`). A package is kept when `include` is empty
or one of its patterns matches, and no `exclude` pattern matches; then, with `keep_newest = N`, only
the newest N versions of each (name, arch) remain (the format's own version ordering). Filtering
happens before any package is fetched, so an excluded package is never requested upstream.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from mirror.diff import Advisory
from mirror.versions import sort_key

T = TypeVar("T")


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A `/regex/` or a glob as a compiled expression (re.error for a bad regex)."""
    if len(pattern) >= 2 and pattern.startswith("/") and pattern.endswith("/"):
        return re.compile(pattern[1:-1])
    return re.compile(r"\A(?:" + fnmatch.translate(pattern) + r")")


@dataclass(frozen=True)
class PackageFilter:
    kind: str  # "deb" | "rpm": whose version ordering keep_newest uses
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    keep_newest: int | None = None

    @property
    def active(self) -> bool:
        return bool(self.include or self.exclude or self.keep_newest)

    def shape(self) -> dict[str, object]:
        """What the snapshot's plan key includes (a change makes a new snapshot)."""
        return {"include": list(self.include), "exclude": list(self.exclude), "keep_newest": self.keep_newest}

    def _matcher(self) -> Callable[[str], bool]:
        inc = [compile_pattern(p) for p in self.include]
        exc = [compile_pattern(p) for p in self.exclude]

        def keep(name: str) -> bool:
            if inc and not any(p.search(name) for p in inc):
                return False
            return not any(p.search(name) for p in exc)

        return keep

    def select(self, items: Sequence[T], ident: Callable[[T], tuple[str, str, str]],
               allowed: Callable[[str, str, str], bool] | None = None) -> list[T]:
        """The items kept, in their original order; `ident` gives (name, arch, version). `allowed`
        (name, arch, version) further restricts them before `keep_newest` (advisory filters)."""
        keep = self._matcher()
        kept = [i for i, item in enumerate(items) if keep(ident(item)[0])]
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
        return [items[i] for i in kept]



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
