"""`with_deps`: what the packages a filter kept need from the same repo, resolved by libsolv.

The universe is what the repo may carry (the verified index after `exclude`, `architectures` and
`versions`); the roots are the packages the filters selected. Every package of the universe becomes
a libsolv solvable built here from the index's own relations (deb: Depends and Pre-Depends with
alternatives, Provides, dpkg ordering; rpm: Requires, Provides, the files primary.xml lists,
rpmvercmp ordering), and one solver run per architecture installs all the roots at once into an
empty system (every package multiversion, so several kept versions of a name do not conflict).
What the transaction adds besides the roots is the dependency closure: the solver picks one of
several alternatives or providers (the best version), as a package manager would, so the result
is installable.

Conflicts, Breaks, Obsoletes and weak dependencies (Recommends, Suggests) are not considered: a
repo offers choices, it is not one installation. A need that nothing in the universe provides (in
practice: a package of another repo, such as the C library for a third-party repo) does not stop
the sync: it is dropped for the solver and reported by name (see `Resolution.unresolved`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from mirror.errors import DependencyError

#: Relation operators, as the configuration's `versions` writes them.
OPERATORS = ("<", "<=", "=", ">=", ">")


@dataclass(frozen=True, slots=True)
class Relation:
    """One package relation: a name, optionally with an operator and a version (format's syntax)."""

    name: str
    op: str | None = None  # one of OPERATORS
    version: str | None = None
    rich: bool = False  # rpm: a rich (boolean) dependency, `name` holds it whole: "(a or b)"

    def __str__(self) -> str:
        return f"{self.name} {self.op} {self.version}" if self.op and self.version else self.name

    def written(self, kind: str) -> str:
        """As the format writes it: deb `name (>> 1.0)`, rpm `name > 1.0`."""
        if not (self.op and self.version):
            return self.name
        if kind == "deb":
            return f"{self.name} ({_DEB_OPS.get(self.op, self.op)} {self.version})"
        return str(self)


_DEB_OPS = {"<": "<<", ">": ">>"}

#: A requirement: one or more alternatives (deb `a | b`), any one of which satisfies it.
Requirement = tuple[Relation, ...]


@dataclass(frozen=True, slots=True)
class PackageNeeds:
    """What one package of the universe offers and needs."""

    name: str
    arch: str
    version: str  # deb version / rpm [epoch:]version-release
    requires: tuple[Requirement, ...] = ()
    provides: tuple[Relation, ...] = ()
    files: tuple[str, ...] = ()  # rpm: file paths it provides (as primary.xml lists them)

    def __str__(self) -> str:
        return f"{self.name} {self.version} {self.arch}"


@dataclass(frozen=True, slots=True)
class Unresolved:
    """A need of a kept package that nothing in the repo provides."""

    package: str  # "name version arch"
    need: str  # the dependency as the index writes it (alternatives joined with " | ")

    def __str__(self) -> str:
        return f"{self.package} needs {self.need}"


@dataclass(frozen=True, slots=True)
class Resolution:
    added: tuple[int, ...]  # universe positions the roots need, not roots themselves, ascending
    unresolved: tuple[Unresolved, ...]  # of the roots and the added packages, in universe order


_NOARCH = {"deb": "all", "rpm": "noarch"}
_SOURCE_ARCHES = frozenset({"src", "nosrc", "source"})


def resolve(kind: str, universe: Sequence[PackageNeeds], roots: Collection[int]) -> Resolution:
    """Blocking (run it in a thread): the packages of `universe` that the `roots` (positions in it)
    need, transitively, chosen by libsolv's solver; and the needs nothing in it provides."""
    import solv

    if kind not in _NOARCH:
        raise ValueError(f"unknown package kind {kind!r} (expected 'deb' or 'rpm')")
    # source packages (in a repo that lists them) are installed by nobody: kept, needing nothing
    roots = sorted(r for r in set(roots) if universe[r].arch not in _SOURCE_ARCHES)
    if not roots:
        return Resolution((), ())
    pool = solv.Pool()
    pool.setdisttype(solv.Pool.DISTTYPE_DEB if kind == "deb" else solv.Pool.DISTTYPE_RPM)
    builder = _Builder(pool, kind)
    repo = pool.add_repo("upstream")
    solvables = [builder.add(repo, pkg) for pkg in universe]
    repo.internalize()
    pool.installed = pool.add_repo("empty")
    by_id = {s.id: i for i, s in enumerate(solvables)}

    dropped: dict[int, set[int]] = {}  # universe position -> ids of the requirements nothing provides
    chosen: set[int] = set()
    for arch in _passes(kind, universe, roots):
        if arch is not None:
            pool.setarch(arch)
        pool.createwhatprovides()
        todo = [r for r in roots if r not in chosen and solvables[r].installable()]
        if not todo:
            continue
        while True:  # each round drops at least one need nothing provides, or ends
            solver = pool.Solver()
            install = solv.Job.SOLVER_INSTALL | solv.Job.SOLVER_SOLVABLE
            jobs = [pool.Job(install, solvables[r].id) for r in todo]
            jobs.append(pool.Job(solv.Job.SOLVER_MULTIVERSION | solv.Job.SOLVER_SOLVABLE_ALL, 0))
            problems = solver.solve(jobs)
            if not problems:
                chosen.update(by_id[s.id] for s in solver.transaction().newsolvables() if s.id in by_id)
                break
            progress = False
            for problem in problems:
                for rule in problem.findallproblemrules():
                    info = rule.info()
                    if info.type != solv.Solver.SOLVER_RULE_PKG_NOTHING_PROVIDES_DEP or info.solvable is None:
                        continue
                    position = by_id.get(info.solvable.id)
                    if position is not None and info.dep.id not in dropped.setdefault(position, set()):
                        dropped[position].add(info.dep.id)
                        builder.drop_requires(solvables[position], dropped[position])
                        progress = True
            if not progress:
                first = problems[0]
                raise DependencyError(f"no installable set of dependencies for the kept packages: {first}")
            repo.internalize()
            pool.createwhatprovides()
    missing = [r for r in roots if r not in chosen]
    if missing:
        raise DependencyError(f"{universe[missing[0]]}: not installable on any architecture of the repo")
    root_set = set(roots)
    added = tuple(sorted(chosen - root_set))
    unresolved = tuple(
        Unresolved(str(universe[i]), builder.text(dep_id))
        for i in sorted(chosen) if i in dropped for dep_id in sorted(dropped[i], key=builder.order))
    return Resolution(added, unresolved)


def _passes(kind: str, universe: Sequence[PackageNeeds], roots: Iterable[int]) -> list[str | None]:
    """The architectures to solve for, one solver run each: the roots' own (a noarch root goes with
    the first; only noarch roots: the universe's most common architecture)."""
    noarch = _NOARCH[kind]
    arches = sorted({universe[r].arch for r in roots} - {noarch})
    if not arches:
        counts: dict[str, int] = {}
        for pkg in universe:
            if pkg.arch != noarch:
                counts[pkg.arch] = counts.get(pkg.arch, 0) + 1
        arches = [max(sorted(counts), key=counts.__getitem__)] if counts else []
    return list(arches) or [None]


class _Builder:
    """Solvables from PackageNeeds; dependency objects are interned (an index repeats them a lot)."""

    def __init__(self, pool: Any, kind: str) -> None:  # solv has no type information: objects are Any
        import solv

        self._solv = solv
        self.pool = pool
        self.kind = kind
        self._deps: dict[object, Any] = {}
        self._texts: dict[int, str] = {}
        self._order: dict[int, int] = {}
        self._requires: dict[int, list[Any]] = {}
        self._flags: dict[str, int] = {
            "<": solv.REL_LT, "<=": solv.REL_LT | solv.REL_EQ, "=": solv.REL_EQ,
            ">=": solv.REL_GT | solv.REL_EQ, ">": solv.REL_GT}

    def add(self, repo: Any, pkg: PackageNeeds) -> Any:
        s = repo.add_solvable()
        s.name = pkg.name
        s.evr = pkg.version
        # libsolv's deb policy does not take "all" as installable: give it the universal noarch
        s.arch = "noarch" if pkg.arch in ("all", "noarch") else pkg.arch
        s.add_provides(self._relation(Relation(pkg.name, "=", pkg.version)))
        for relation in pkg.provides:
            s.add_provides(self._relation(relation))
        for path in pkg.files:
            s.add_provides(self._relation(Relation(path)))
        requires = [self._requirement(req) for req in pkg.requires]
        for dep in requires:
            s.add_requires(dep)
        self._requires[s.id] = requires
        return s

    def drop_requires(self, s: Any, dep_ids: Collection[int]) -> None:
        """Take needs nothing provides off a solvable's requirements (the rest stay)."""
        s.unset(self._solv.SOLVABLE_REQUIRES)
        for dep in self._requires[s.id]:
            if dep.id not in dep_ids:
                s.add_requires(dep)

    def text(self, dep_id: int) -> str:
        return self._texts.get(dep_id) or str(self.pool.dep2str(dep_id))

    def order(self, dep_id: int) -> int:
        return self._order.get(dep_id, 1 << 30)

    def _requirement(self, requirement: Requirement) -> Any:
        key = ("req", requirement)
        dep = self._deps.get(key)
        if dep is None:
            dep = self._relation(requirement[0])
            for alternative in requirement[1:]:
                dep = dep.Rel(self._solv.REL_OR, self._relation(alternative))
            self._deps[key] = dep
            self._texts.setdefault(dep.id, " | ".join(r.written(self.kind) for r in requirement))
            self._order.setdefault(dep.id, len(self._order))
        return dep

    def _relation(self, relation: Relation) -> Any:
        dep = self._deps.get(relation)
        if dep is None:
            if relation.rich:
                dep = self.pool.parserpmrichdep(relation.name)
                if dep is None:
                    dep = self.pool.Dep(relation.name)
            else:
                dep = self.pool.Dep(relation.name)
                if relation.op is not None and relation.version is not None:
                    dep = dep.Rel(self._flags[relation.op], self.pool.Dep(relation.version))
            self._deps[relation] = dep
        return dep
