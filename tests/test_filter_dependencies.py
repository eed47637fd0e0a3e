"""Version constraints, the RPM architecture filter and `with_deps` (what the kept packages need,
resolved by libsolv from the same repo): unit tests on synthetic package sets in both formats, the
configuration's refusals, and end to end through a sync against the fixture upstreams, with the
known answer of a security-only RPM snapshot with and without its dependencies."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fixtures.keys import SigningKey
from mirror.config import RepoSettings, load
from mirror.dependencies import PackageNeeds, Relation, resolve
from mirror.errors import ConfigError
from mirror.filters import PackageFilter, parse_constraints, satisfies
from mirror.formats.deb import BinaryPackage, package_needs
from mirror.regenerate import filter_packages, filter_suite
from mirror.sync import plan_key
from tests.test_filters import _config, mirror_key, signing_toml

__all__ = ["mirror_key"]  # the module-scoped fixture, shared with tests.test_filters

X86 = "x86_64"


# -- version constraints -------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "parsed"), [
    (">= 3.0, < 3.2", ((">=", "3.0"), ("<", "3.2"))),
    ("<=1:2.0-1", (("<=", "1:2.0-1"),)),
    ("= 1.0~rc1", (("=", "1.0~rc1"),)),
    ("!= 2.4, > 1", (("!=", "2.4"), (">", "1"))),
])
def test_constraints_parse(text: str, parsed: tuple[tuple[str, str], ...]) -> None:
    assert parse_constraints(text) == parsed


@pytest.mark.parametrize(("text", "reason"), [
    ("~> 3.0", "is not a constraint"),
    ("3.0", "is not a constraint"),
    (">= ", "has no version after '>='"),
    (">= 3.0,", "'>= 3.0,' has an empty constraint"),
    ("", "has an empty constraint"),
    ("=> 3.0", "is not a constraint"),
    ("=>3.0", "'>3.0' is not a version"),
    (">= 3.0 4.0", "is not a constraint"),
])
def test_bad_constraints_are_refused(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_constraints(text)


@pytest.mark.parametrize(("kind", "version", "constraints", "expected"), [
    # dpkg ordering
    ("deb", "1.0~rc1", "< 1.0", True),
    ("deb", "1.0", "< 1.0", False),
    ("deb", "1:0.5", "> 2.0", True),  # the epoch wins
    ("deb", "3.0-1", ">= 3.0", True),  # a revision sorts after none
    ("deb", "3.2-1", ">= 3.0, < 3.2", False),
    ("deb", "3.2~rc1-1", ">= 3.0, < 3.2", True),
    ("deb", "3.1.4-2", ">= 3.0, < 3.2", True),
    ("deb", "2.9.9-1", ">= 3.0, < 3.2", False),
    ("deb", "1.0-1", "= 1.0-1", True),
    ("deb", "1.0-1", "!= 1.0-1", False),
    ("deb", "1.0-10", "> 1.0-9", True),
    # rpmvercmp on [epoch:]version-release; no release in the constraint: epoch and version only
    ("rpm", "3.0.7-25.el9", ">= 3.0", True),
    ("rpm", "3.2.0-1.el9", "< 3.2", False),
    ("rpm", "3.2-1.el9", "< 3.2", False),
    ("rpm", "3.1.9-1.el9", "< 3.2", True),
    ("rpm", "3.0.7-25.el9", "= 3.0.7", True),
    ("rpm", "3.0.7-25.el9", "= 3.0.7-24.el9", False),
    ("rpm", "3.0.7-25.el9", "> 3.0.7-24.el9", True),
    ("rpm", "1:1.0-1", "> 2.0", True),
    ("rpm", "1.0~rc1-1", "< 1.0", True),
    ("rpm", "1.0a-1", "> 1.0", True),
    ("rpm", "6.1.0-1", "!= 6.1.0", False),
])
def test_constraints_follow_the_formats_ordering(kind: str, version: str, constraints: str,
                                                 expected: bool) -> None:
    assert satisfies(kind, version, parse_constraints(constraints)) is expected


def _ident(item: tuple[str, str, str]) -> tuple[str, str, str]:
    return item


def test_versions_filter_applies_to_matching_names_only() -> None:
    items = [("openssl", X86, "2.9-1"), ("openssl", X86, "3.0.7-1"), ("openssl", X86, "3.2.0-1"),
             ("openssl-libs", X86, "3.1-1"), ("kernel", X86, "5.14-1"), ("kernel-core", X86, "6.1-1"),
             ("bash", X86, "5.1-1")]
    flt = PackageFilter("rpm", versions=(("openssl*", parse_constraints(">= 3.0, < 3.2")),
                                         ("/^kernel/", parse_constraints("< 6.0"))))
    assert flt.active
    assert flt.select(items, _ident) == [("openssl", X86, "3.0.7-1"), ("openssl-libs", X86, "3.1-1"),
                                         ("kernel", X86, "5.14-1"), ("bash", X86, "5.1-1")]
    # versions first, then keep_newest among what remains
    newest = PackageFilter("rpm", keep_newest=1, versions=(("openssl", parse_constraints("< 3.2")),))
    assert [i for i in newest.select(items, _ident) if i[0] == "openssl"] == [("openssl", X86, "3.0.7-1")]


def test_architecture_filter() -> None:
    items = [("hello", X86, "1-1"), ("hello", "i686", "1-1"), ("hello", "aarch64", "1-1"),
             ("data", "noarch", "1-1")]
    flt = PackageFilter("rpm", architectures=(X86, "noarch"))
    assert flt.active
    assert flt.select(items, _ident) == [("hello", X86, "1-1"), ("data", "noarch", "1-1")]


def test_shape_names_the_new_filters_only_when_set() -> None:
    plain = PackageFilter("rpm", exclude=("x",))
    assert plain.shape() == {"include": [], "exclude": ["x"], "keep_newest": None}  # as before
    full = PackageFilter("rpm", exclude=("x",), architectures=(X86,),
                         versions=(("a*", ((">=", "1"),)),), with_deps=True)
    assert full.shape() == {"include": [], "exclude": ["x"], "keep_newest": None, "architectures": [X86],
                            "versions": [["a*", [[">=", "1"]]]], "with_deps": True}
    shapes = {str(PackageFilter("rpm", include=("a",), versions=(("a", ((">=", v),)),)).shape())
              for v in ("1", "2")}
    assert len(shapes) == 2


# -- dependency resolution -----------------------------------------------------------------------


def _names(universe: list[PackageNeeds], positions: tuple[int, ...] | list[int]) -> list[str]:
    return [f"{universe[i].name}-{universe[i].version}" for i in positions]


def pkg(name: str, version: str, arch: str = "amd64", *, requires: tuple[tuple[Relation, ...], ...] = (),
        provides: tuple[Relation, ...] = (), files: tuple[str, ...] = ()) -> PackageNeeds:
    return PackageNeeds(name, arch, version, requires, provides, files)


def test_libsolv_orders_deb_versions_as_dpkg() -> None:
    universe = [pkg("libfoo", "1.0~rc1"), pkg("libfoo", "1.0"), pkg("libfoo", "1:0.5"),
                pkg("pre", "1", requires=((Relation("libfoo", "<", "1.0"),),)),
                pkg("post", "1", requires=((Relation("libfoo", ">", "1.0"),),)),
                pkg("exact", "1", requires=((Relation("libfoo", "=", "1.0"),),))]
    assert _names(universe, resolve("deb", universe, [3]).added) == ["libfoo-1.0~rc1"]
    assert _names(universe, resolve("deb", universe, [4]).added) == ["libfoo-1:0.5"]  # epoch 1 > 1.0
    assert _names(universe, resolve("deb", universe, [5]).added) == ["libfoo-1.0"]


def _index(*stanzas: tuple[str, str, str, str]) -> bytes:
    """A Packages text of (name, version, architecture, extra fields) stanzas."""
    return b"\n\n".join(
        (f"Package: {n}\nVersion: {v}\nArchitecture: a\nFilename: pool/{n}_{v}.deb\nSize: 1\n"
         f"SHA256: {'0' * 64}\n" + (f"{extra}\n" if extra else "") + "Description: x").replace(
            "Architecture: a", f"Architecture: {a}").encode()
        for n, v, a, extra in stanzas) + b"\n"


def test_deb_needs_are_resolved_across_the_components_and_the_all_index_of_a_suite() -> None:
    """A package in contrib needs one in main, which needs an `Architecture: all` package listed
    only in binary-all: each comes from the index that lists it, per architecture."""
    indices = [
        ("dists/stable/main/binary-amd64/Packages",
         _index(("libmain", "1.0", "amd64", "Depends: data-common"), ("other", "1", "amd64", ""))),
        ("dists/stable/main/binary-arm64/Packages",
         _index(("libmain", "1.0", "arm64", "Depends: data-common"), ("other", "1", "arm64", ""))),
        ("dists/stable/main/binary-all/Packages",
         _index(("data-common", "2.0", "all", ""), ("docs", "1", "all", ""))),
        ("dists/stable/contrib/binary-amd64/Packages",
         _index(("driver", "3.0", "amd64", "Depends: libmain (>= 1.0)"))),
        ("dists/stable/contrib/binary-arm64/Packages", _index(("unused", "1", "arm64", ""))),
    ]
    flt = PackageFilter("deb", include=("driver",), with_deps=True, repo="deb")
    kept = [sorted(f"{p.name}-{p.version}" for p in packages)
            for packages, _ in filter_suite(flt, indices, suite="stable")]
    assert kept == [["libmain-1.0"], [], ["data-common-2.0"], ["driver-3.0"], []]
    # without with_deps every index is filtered on its own, as before
    plain = PackageFilter("deb", include=("driver", "docs"), repo="deb")
    assert [len(packages) for packages, _ in filter_suite(plain, indices, suite="stable")] == [0, 0, 1, 1, 0]


def test_deb_closure_alternatives_virtual_packages_and_versions(caplog: pytest.LogCaptureFixture) -> None:
    """Through the real Packages parsing: Depends (with alternatives, versions, arch qualifiers),
    Pre-Depends, Provides; an excluded package is never a dependency; a need nothing provides is
    reported by name and the rest of the closure still comes."""
    stanzas = [
        ("app", "1.0", "Pre-Depends: libc6 (>= 2.36)\nDepends: libfoo (>= 1.1), mail-transport-agent,\n"
                       " python3:any | python3-minimal, telnet | netcat, gone (>= 2)"),
        ("libfoo", "1.0", ""), ("libfoo", "1.1", ""), ("libfoo", "1.2~rc1", ""),
        ("libc6", "2.36-9", ""),
        ("postfix", "3.7", "Provides: mail-transport-agent\nDepends: libc6"),
        ("python3-minimal", "3.11", "Provides: python3 (= 3.11)"),
        ("telnet", "0.17", ""), ("netcat", "1.2", ""),
        ("unrelated", "1", "Depends: libfoo"),
    ]
    text = b"\n\n".join(
        (f"Package: {n}\nVersion: {v}\nArchitecture: amd64\nFilename: pool/{n}_{v}.deb\nSize: 1\n"
         f"SHA256: {'0' * 64}\n" + (f"{extra}\n" if extra else "") + "Description: x").encode()
        for n, v, extra in stanzas) + b"\n"
    flt = PackageFilter("deb", include=("app",), exclude=("telnet",), with_deps=True, repo="deb")
    with caplog.at_level(logging.WARNING, logger="mirror.filters"):
        kept, index = filter_packages(flt, text, what="dists/stable/main/binary-amd64/Packages")
    assert sorted(f"{p.name}-{p.version}" for p in kept) == [
        "app-1.0", "libc6-2.36-9", "libfoo-1.2~rc1", "netcat-1.2", "postfix-3.7", "python3-minimal-3.11"]
    assert index.count(b"Package: ") == 6
    (record,) = [r for r in caplog.records if "with_deps" in r.getMessage()]
    assert record.getMessage() == (
        "deb: dists/stable/main/binary-amd64/Packages: with_deps: nothing in the repo provides this need "
        "(left to the clients' other repos): gone (>= 2) (needed by app 1.0 amd64)")
    # without with_deps: only what the names select
    plain = PackageFilter("deb", include=("app",), exclude=("telnet",))
    assert [p.name for p in filter_packages(plain, text, what="P")[0]] == ["app"]


def test_deb_relation_parsing() -> None:
    p = BinaryPackage("a", "1", "amd64", "pool/a.deb", 1, None, None)
    needs = package_needs(p, b"Package: a\nDepends: b (<< 2), c:any (>= 1~) | d [amd64] <!nocheck>,\n e\n"
                             b"Provides: x, y (= 1.0)\nDescription: z", what="P")
    assert needs.requires == ((Relation("b", "<", "2"),), (Relation("c", ">=", "1~"), Relation("d")),
                              (Relation("e"),))
    assert needs.provides == (Relation("x"), Relation("y", "=", "1.0"))
    from mirror.errors import MalformedMetadataError

    with pytest.raises(MalformedMetadataError, match=r"package a 1: Depends: 'b \(~ 2\)' is not a package"):
        package_needs(p, b"Package: a\nDepends: b (~ 2)", what="P")


def test_rpm_closure_rich_file_and_versioned_requires() -> None:
    universe = [
        pkg("tool", "1.0-1", X86, requires=(
            (Relation("(libA or libB)", rich=True),), (Relation("/usr/bin/sh"),),
            (Relation("hello", ">=", "1.1"),), (Relation("config(tool)", "=", "1.0-1"),))),
        pkg("libB", "1-1", "noarch"),
        pkg("bash", "5-1", X86, files=("/usr/bin/bash", "/usr/bin/sh")),
        pkg("hello", "1.0-1", X86), pkg("hello", "1.1-1", X86), pkg("hello", "1:0.1-1", X86),
        pkg("config-holder", "1-1", X86, provides=(Relation("config(tool)", "=", "1.0-1"),)),
        pkg("hello", "1.1-1", "aarch64"),
    ]
    result = resolve("rpm", universe, [0])
    assert _names(universe, result.added) == ["libB-1-1", "bash-5-1", "hello-1:0.1-1", "config-holder-1-1"]
    assert result.unresolved == ()


def test_each_architecture_resolves_within_itself() -> None:
    universe = [pkg("app", "1-1", X86, requires=((Relation("libz"),),)),
                pkg("app", "1-1", "i686", requires=((Relation("libz"),),)),
                pkg("libz", "1-1", X86), pkg("libz", "1-1", "i686"), pkg("libz", "1-1", "aarch64"),
                pkg("docs", "1-1", "noarch", requires=((Relation("app"),),)), pkg("extra", "1-1", X86)]
    result = resolve("rpm", universe, [0, 1])
    assert [(universe[i].name, universe[i].arch) for i in result.added] == [("libz", X86), ("libz", "i686")]
    only_noarch = resolve("rpm", universe, [5])  # solved for the repo's most common architecture
    assert [(universe[i].name, universe[i].arch) for i in only_noarch.added] == [("app", X86), ("libz", X86)]
    source = [pkg("app", "1-1", "src", requires=((Relation("gcc"),),)), pkg("odd", "1-1", "riscv64"),
              pkg("app", "1-1", "riscv64", requires=((Relation("odd"),),))]
    assert resolve("rpm", source, [0]).added == ()  # a source package needs nothing installed
    assert resolve("rpm", source, [2]).added == (1,)  # an architecture libsolv has no policy for


def test_unresolvable_needs_are_reported_by_name_and_the_rest_still_resolves() -> None:
    universe = [pkg("a", "1-1", X86, requires=((Relation("glibc", ">=", "2.34"),), (Relation("b"),))),
                pkg("b", "1-1", X86, requires=((Relation("/usr/lib/missing.so"),), (Relation("c"),))),
                pkg("c", "1-1", X86), pkg("d", "1-1", X86, requires=((Relation("nothing"),),))]
    result = resolve("rpm", universe, [0])
    assert _names(universe, result.added) == ["b-1-1", "c-1-1"]  # d is not needed: not reported
    assert [str(u) for u in result.unresolved] == [
        "a 1-1 x86_64 needs glibc >= 2.34", "b 1-1 x86_64 needs /usr/lib/missing.so"]
    assert resolve("rpm", universe, []).added == ()


def test_select_with_deps_draws_from_what_the_restrictions_allow() -> None:
    items = [("app", X86, "1-1"), ("lib", X86, "1-1"), ("lib", X86, "2-1"), ("lib", "aarch64", "3-1"),
             ("banned", X86, "1-1")]
    requires = {"app": ((Relation("lib"),), (Relation("banned"),))}

    def needs(item: tuple[str, str, str]) -> PackageNeeds:
        return pkg(item[0], item[2], item[1], requires=requires.get(item[0], ()))

    flt = PackageFilter("rpm", include=("app",), exclude=("banned",), architectures=(X86,),
                        versions=(("lib", parse_constraints("< 2")),), with_deps=True)
    selection = flt.select_with_deps(items, _ident, needs)
    assert selection.kept == [("app", X86, "1-1"), ("lib", X86, "1-1")]
    assert [str(u) for u in selection.unresolved] == ["app 1-1 x86_64 needs banned"]
    assert PackageFilter("rpm", include=("app",)).select_with_deps(items, _ident, needs).kept == [items[0]]


# -- configuration -------------------------------------------------------------------------------


def _rpm(path: Path) -> Path:
    text = path.read_text().replace('type = "deb"', 'type = "rpm"')
    path.write_text(text.replace('suites = ["stable"]\n', ""))
    return path


def test_new_filter_keys_load(tmp_path: Path, archive_key: SigningKey, mirror_key: SigningKey) -> None:
    extra = ('include = ["openssl*"]\nversions = { "openssl*" = ">= 3.0, < 3.2", "/^kernel/" = "< 6.0" }\n'
             'with_deps = true\narchitectures = ["x86_64", "noarch"]')
    repo = load(_rpm(_config(tmp_path, archive_key, extra, signing_toml(mirror_key)))).repo("r")
    assert repo.versions == (("openssl*", ((">=", "3.0"), ("<", "3.2"))), ("/^kernel/", (("<", "6.0"),)))
    assert repo.with_deps and repo.filtered
    assert repo.package_architectures == ("x86_64", "noarch")
    plain_rpm = load(_rpm(_config(tmp_path, archive_key, "", signing_toml(mirror_key)))).repo("r")
    assert plain_rpm.architectures == () and not plain_rpm.filtered  # rpm: every architecture
    deb = load(_config(tmp_path, archive_key, "", signing_toml(mirror_key))).repo("r")
    assert deb.architectures == ("amd64",) and deb.package_architectures == () and not deb.filtered


@pytest.mark.parametrize(("repo_type", "extra", "message"), [
    ("deb", 'versions = { "openssl*" = "~> 3.0" }',
     "repos[0].versions.\"openssl*\": '~> 3.0' is not a constraint"),
    ("deb", 'versions = { "openssl*" = ">= " }', "repos[0].versions.\"openssl*\": '>=' has no version"),
    ("rpm", 'versions = { "kernel" = 6 }', "repos[0].versions.\"kernel\": must be a string of constraints"),
    ("rpm", 'versions = { "/[x/" = "< 1" }', "repos[0].versions: '/[x/' is not a valid regular expression"),
    ("rpm", 'versions = ["< 1"]', "repos[0].versions: must be a table"),
    ("rpm", 'architectures = ["amd64"]', "repos[0].architectures: 'amd64' is a Debian name: RPM calls it "
                                         "'x86_64'"),
    ("rpm", "architectures = []", "repos[0].architectures: must not be empty"),
    ("rpm", 'with_deps = "yes"', "repos[0].with_deps: must be true or false"),
    ("rpm", 'exclude = ["x"]\nwith_deps = true', "repos[0].with_deps: adds what the selected packages need"),
])
def test_bad_new_filters_are_refused(tmp_path: Path, archive_key: SigningKey, mirror_key: SigningKey,
                                     repo_type: str, extra: str, message: str) -> None:
    path = _config(tmp_path, archive_key, extra, signing_toml(mirror_key))
    if repo_type == "rpm":
        _rpm(path)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(path)


@pytest.mark.parametrize(("repo_type", "extra", "key"), [
    ("deb", 'versions = { "a" = "< 1" }', "versions"),
    ("rpm", 'architectures = ["x86_64"]', "architectures"),
    ("rpm", 'advisory_types = ["security"]\nwith_deps = true', "advisory_types"),
])
def test_new_filters_without_signing_key_are_refused(tmp_path: Path, archive_key: SigningKey,
                                                     repo_type: str, extra: str, key: str) -> None:
    path = _config(tmp_path, archive_key, extra)
    if repo_type == "rpm":
        _rpm(path)
    message = f"repos[0].{key}: package filters need the mirror's own"
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(path)


def _repo(tmp_path: Path, archive_key: SigningKey, mirror_key: SigningKey, extra: str) -> RepoSettings:
    return load(_rpm(_config(tmp_path, archive_key, extra, signing_toml(mirror_key)))).repo("r")


def test_filter_shape_of_the_repo(tmp_path: Path, archive_key: SigningKey, mirror_key: SigningKey) -> None:
    base = _repo(tmp_path, archive_key, mirror_key, 'include = ["a"]')
    assert base.filter_shape() == {"include": ["a"], "exclude": [], "keep_newest": None}
    shapes = [_repo(tmp_path, archive_key, mirror_key, extra).filter_shape() for extra in (
        'include = ["a"]', 'include = ["a"]\nwith_deps = true', 'include = ["a"]\nversions = { "a" = "< 2" }',
        'include = ["a"]\nversions = { "a" = "< 3" }', 'include = ["a"]\narchitectures = ["noarch"]')]
    assert len({str(s) for s in shapes}) == 5


def test_plan_key_changes_with_versions_and_with_deps(tmp_path: Path, archive_key: SigningKey,
                                                      mirror_key: SigningKey) -> None:
    keys = {plan_key(_repo(tmp_path, archive_key, mirror_key, extra)) for extra in (
        'include = ["a"]', 'include = ["a"]\nwith_deps = true', 'include = ["a"]\nversions = { "a" = "< 2" }',
        'include = ["a"]\nversions = { "a" = "< 3" }')}
    assert len(keys) == 4


def test_plan_key_changes_with_rpm_architectures(tmp_path: Path, archive_key: SigningKey,
                                                 mirror_key: SigningKey) -> None:
    keys = {plan_key(_repo(tmp_path, archive_key, mirror_key, extra)) for extra in (
        'include = ["a"]', 'include = ["a"]\narchitectures = ["noarch"]',
        'include = ["a"]\narchitectures = ["x86_64"]')}
    assert len(keys) == 3


# -- end to end ----------------------------------------------------------------------------------


def test_security_only_rpm_snapshot_with_dependencies_known_answer(
        tmp_path: Path, archive_key: SigningKey, mirror_key: SigningKey,
        caplog: pytest.LogCaptureFixture) -> None:
    """The issue's acceptance test: a security-only snapshot holds exactly the packages security
    advisories name (newest versions), plus their dependencies when asked (which no advisory names),
    and nothing else is requested from the upstream."""
    import createrepo_c as cr

    from fixtures.dnf_client import DnfClient
    from fixtures.dnf_client import describe as dnf_describe
    from fixtures.rpm_repo import Advisory, RpmPackage, RpmRepo, export_key
    from fixtures.upstream import UpstreamServer
    from tests.helpers import http, serve_both
    from tests.test_sync_rpm import write_rpm_config

    upstream = RpmRepo(tmp_path / "upstream", archive_key)
    upstream.add(
        RpmPackage("hello", "1.1"), RpmPackage("hello", "1.2", requires=["libhello >= 2.0", "telnet"]),
        RpmPackage("libhello", "1.0"), RpmPackage("libhello", "2.0"),
        RpmPackage("libhello", "3.0", requires=["zlib"]), RpmPackage("zlib", "1.0"),
        RpmPackage("tool", "3.0", requires=["mta"]),
        RpmPackage("postfix", "1.0", arch="noarch", provides=["mta"]),
        RpmPackage("telnet", "1.0"), RpmPackage("base", "1.0"), RpmPackage("fixed", "1.0"))

    def on(month: int) -> datetime:
        return datetime(2026, month, 1, tzinfo=UTC)

    upstream.publish(revision="1", timestamp=1_700_000_001, updateinfo=[
        Advisory("SEC-1", "security", "Important", issued=on(1), packages=[("hello", 0, "1.1", "1", X86)]),
        Advisory("SEC-2", "security", "Important", issued=on(6), packages=[("hello", 0, "1.2", "1", X86)]),
        Advisory("SEC-3", "security", "Low", issued=on(2), packages=[("tool", 0, "3.0", "1", X86)]),
        Advisory("BUG-1", "bugfix", "", issued=on(2), packages=[("fixed", 0, "1.0", "1", X86)]),
    ])
    keyring = archive_key.write_public(tmp_path / "keys" / "archive.asc")
    selection = 'advisory_types = ["security"]\nkeep_newest = 1\nexclude = ["telnet"]'
    mirrors = {}
    with UpstreamServer(upstream.root) as server:
        for name, extra in (("sec", selection), ("secdeps", selection + "\nwith_deps = true")):
            mirror = write_rpm_config(tmp_path / name, server.url, keyring, name=name, extra_repo=extra)
            mirror.config.write_text(signing_toml(mirror_key) + mirror.config.read_text())
            with caplog.at_level(logging.WARNING, logger="mirror.filters"):
                (result,) = mirror.sync(name)
            assert result.ok and result.snapshot, result.error
            mirrors[name] = (mirror, result.snapshot)
        for pkg_name, version in (("hello", "1.1"), ("libhello", "1.0"), ("libhello", "2.0"),
                                  ("telnet", "1.0"), ("base", "1.0"), ("fixed", "1.0")):
            assert server.count(upstream.url_path_of(pkg_name, version)) == 0, (pkg_name, version)
    warnings = [r.getMessage() for r in caplog.records if "with_deps" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("secdeps: ")
    assert warnings[0].endswith(": telnet (needed by hello 1.2-1 x86_64)")
    # ... and the successful run's record says it too (mirror status, the API's sync runs)
    store = mirrors["secdeps"][0].store()
    try:
        (run,) = store.sync_runs("secdeps")
    finally:
        store.close()
    assert run.outcome == "snapshot" and run.message is not None
    assert run.message.endswith(": telnet (needed by hello 1.2-1 x86_64)") and "with_deps" in run.message

    def packages(name: str) -> list[str]:
        mirror, snapshot = mirrors[name]
        store = mirror.store()
        try:
            return sorted(f"{e.package.name}-{e.package.version}"
                          for e in store.manifest(name, snapshot).values() if e.package)
        finally:
            store.close()

    assert packages("sec") == ["hello-1.2-1", "tool-3.0-1"]
    assert packages("secdeps") == [
        "hello-1.2-1", "libhello-3.0-1", "postfix-1.0-1", "tool-3.0-1", "zlib-1.0-1"]

    # the regenerated repodata lists exactly them; dnf installs `tool` from this repo alone
    mirror, snapshot = mirrors["secdeps"]
    with serve_both(mirror) as served:
        base = f"{served.repo_url}/snapshots/secdeps/{snapshot}"
        repomd = tmp_path / "repomd.xml"
        repomd.write_bytes(http("GET", f"{base}/repodata/repomd.xml").body)
        (primary,) = [r for r in cr.Repomd(str(repomd)).records if r.type == "primary"]
        local = tmp_path / "primary.xml.gz"
        local.write_bytes(http("GET", f"{base}/{primary.location_href}").body)
        names: list[str] = []
        cr.xml_parse_primary(str(local), pkgcb=lambda p: names.append(f"{p.name}-{p.version}") or True,
                             do_files=False)
        assert sorted(names) == ["hello-1.2", "libhello-3.0", "postfix-1.0", "tool-3.0", "zlib-1.0"]
        dnf = DnfClient(tmp_path / "dnf")
        dnf.configure("mirror", f"{base}/", export_key(mirror_key, tmp_path / "mirror.asc"), gpgcheck=False)
        assert (r := dnf.download("tool")).returncode == 0, dnf_describe(r)
        assert [p.name for p in dnf.downloaded()] == ["postfix-1.0-1.noarch.rpm", "tool-3.0-1.x86_64.rpm"]


def test_filtered_apt_snapshot_with_dependencies(tmp_path: Path, archive_key: SigningKey,
                                                 mirror_key: SigningKey) -> None:
    from fixtures.apt_client import AptClient, describe, ok
    from fixtures.apt_repo import AptRepo, DebPackage
    from fixtures.upstream import UpstreamServer
    from tests.helpers import serve_both, write_config

    upstream = AptRepo(tmp_path / "upstream", archive_key, suite="stable", codename="demo")
    for p in (DebPackage("tool", "2.0-1", depends="libhello (>= 1.1) | libalt, mail-transport-agent"),
              DebPackage("libhello", "1.0-1"), DebPackage("libhello", "1.1-1"),
              DebPackage("libhello", "1.2-1"), DebPackage("libalt", "1.0-1"),
              DebPackage("postfix", "3.7-1", depends="libhello",
                         extra_control={"Provides": "mail-transport-agent"}),
              DebPackage("unrelated", "1.0-1")):
        upstream.add(p)
    upstream.publish(date=datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1))
    keyring = archive_key.write_public(tmp_path / "keys" / "archive.asc")
    with UpstreamServer(upstream.root) as server:
        mirror = write_config(tmp_path / "mirror", server.url, keyring, name="deb",
                              extra_top=signing_toml(mirror_key),
                              extra_repo='include = ["tool"]\nwith_deps = true\n'
                                         'versions = { "libhello" = "< 1.2" }')
        (result,) = mirror.sync("deb")
        assert result.ok and result.snapshot, result.error
        for name, version in (("libhello", "1.0-1"), ("libhello", "1.2-1"), ("libalt", "1.0-1"),
                              ("unrelated", "1.0-1")):
            assert server.count(upstream.url_path_of(name, version)) == 0, name
    store = mirror.store()
    try:
        manifest = store.manifest("deb", result.snapshot)
    finally:
        store.close()
    assert sorted(f"{e.package.name}-{e.package.version}" for e in manifest.values() if e.package) == [
        "libhello-1.1-1", "postfix-3.7-1", "tool-2.0-1"]
    with serve_both(mirror) as served:
        apt = AptClient(tmp_path / "apt")
        apt.configure(f"{served.repo_url}/snapshots/deb/{result.snapshot} stable main",
                      mirror_key.write_public(tmp_path / "mirror.asc"))
        assert ok(update := apt.update()), describe(update)
        assert ok(install := apt.install_download_only("tool")), describe(install)
        assert sorted(p.name for p in apt.downloaded()) == [
            "libhello_1.1-1_amd64.deb", "postfix_3.7-1_amd64.deb", "tool_2.0-1_amd64.deb"]


def test_filtered_apt_suite_resolves_contrib_on_main_in_a_sync(tmp_path: Path, archive_key: SigningKey,
                                                              mirror_key: SigningKey) -> None:
    from fixtures.apt_repo import AptRepo, DebPackage
    from fixtures.upstream import UpstreamServer
    from tests.helpers import write_config

    upstream = AptRepo(tmp_path / "upstream", archive_key, suite="stable", components=("main", "contrib"))
    upstream.add(DebPackage("libmain", "1.0-1"), DebPackage("other", "1.0-1"))
    upstream.add(DebPackage("driver", "3.0-1", depends="libmain (>= 1.0)"), component="contrib")
    upstream.publish(date=datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1))
    keyring = archive_key.write_public(tmp_path / "keys" / "archive.asc")
    with UpstreamServer(upstream.root) as server:
        mirror = write_config(tmp_path / "mirror", server.url, keyring, name="deb",
                              extra_top=signing_toml(mirror_key),
                              extra_repo='include = ["driver"]\nwith_deps = true')
        mirror.config.write_text(mirror.config.read_text().replace(
            'components = ["main"]', 'components = ["main", "contrib"]'))
        (result,) = mirror.sync("deb")
        assert result.ok and result.snapshot, result.error
        assert server.count(upstream.url_path_of("other", "1.0-1")) == 0
    store = mirror.store()
    try:
        manifest = store.manifest("deb", result.snapshot)
    finally:
        store.close()
    assert sorted(e.path for e in manifest.values() if e.package) == [
        "pool/contrib/d/driver/driver_3.0-1_amd64.deb", "pool/main/libm/libmain/libmain_1.0-1_amd64.deb"]
    assert {"dists/stable/main/binary-amd64/Packages.xz",
            "dists/stable/contrib/binary-amd64/Packages.xz"} <= set(manifest)


@pytest.mark.parametrize("compress", ["gz", "xz", "zst"])
def test_dependency_parse_refuses_a_dtd_inside_a_compressed_primary(tmp_path: Path, compress: str) -> None:
    """parse_primary_needs reads the verified primary as upstream compressed it: its prolog check
    looks at the decompressed bytes (HOSTILE 40), however far into the prolog the DTD is."""
    import gzip
    import lzma

    import zstandard

    from mirror.errors import MalformedMetadataError
    from mirror.formats.rpm import parse_primary_needs

    xml = ('<?xml version="1.0"?>\n<!--' + "x" * 8000 + '-->\n<!DOCTYPE metadata SYSTEM '
           '"http://127.0.0.1:9/x.dtd">\n<metadata xmlns="http://linux.duke.edu/metadata/common" '
           'packages="0"></metadata>\n').encode()
    packed = {"gz": gzip.compress, "xz": lzma.compress,
              "zst": zstandard.ZstdCompressor().compress}[compress](xml)
    path = tmp_path / f"primary.xml.{compress}"
    path.write_bytes(packed)
    with pytest.raises(MalformedMetadataError, match=r"DOCTYPE|DTD|doctype"):
        parse_primary_needs(path, what="repodata/primary.xml")
