"""The pure package diff (mirror.diff): known changes, the several-versions semantics, advisories,
the output formats, and Hypothesis properties (diff(a, a) is empty, swapping the sides swaps the
diff, applying diff(a, b) to a gives b)."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fixtures.keys import SigningKey
from mirror.diff import (
    Advisory,
    AdvisoryPackage,
    AdvisoryRef,
    Diff,
    FixedPackage,
    PackageSet,
    PackageVersion,
    Reference,
    Row,
    SnapshotRef,
    VersionChange,
    apply_diff,
    diff_advisories,
    diff_packages,
    diff_rows,
    diff_to_csv,
    diff_to_json,
    diff_to_table,
    fix_status,
)
from mirror.model import PackageKey


def names(items: tuple[PackageVersion, ...] | tuple[VersionChange, ...]) -> list[tuple[str, str]]:
    return [(i.name, i.arch) for i in items]


# -- known changes --------------------------------------------------------------------------------

RPM_BEFORE: list[Row] = [
    ("bash", "x86_64", "5.1.8-6.el9"),
    ("openssl", "x86_64", "1:3.0.7-24.el9"),
    ("openssl", "i686", "1:3.0.7-24.el9"),
    ("openssl-libs", "x86_64", "1:3.0.7-24.el9"),
    ("kernel", "x86_64", "5.14.0-362.8.1.el9_3"),
    ("tzdata", "noarch", "2024a-1.el9"),
    ("telnet", "x86_64", "1:0.17-85.el9"),
    ("vim-minimal", "x86_64", "2:8.2.2637-20.el9_1"),
    ("glibc", "x86_64", "2.34-83.el9"),
    ("glibc", "i686", "2.34-83.el9"),
    ("shim-x64", "x86_64", "15.8-1.el9"),
    ("python3", "x86_64", "3.9.18-1.el9"),
]
RPM_AFTER: list[Row] = [
    ("bash", "x86_64", "5.1.8-6.el9"),  # unchanged
    ("openssl", "x86_64", "1:3.0.7-25.el9"),  # upgraded (release)
    ("openssl-libs", "x86_64", "1:3.0.7-25.el9"),  # upgraded; openssl.i686 removed
    ("kernel", "x86_64", "5.14.0-362.13.1.el9_3"),  # upgraded (numeric segment 8 -> 13)
    ("tzdata", "noarch", "2024a-1.el9"),
    ("vim-minimal", "x86_64", "2:8.2.2637-20.el9_1"),
    ("glibc", "x86_64", "2.34-83.el9_3.7"),  # upgraded, i686 unchanged
    ("glibc", "i686", "2.34-83.el9"),
    ("shim-x64", "x86_64", "15.6-1.el9"),  # downgraded
    ("python3", "x86_64", "1:3.9.10-1.el9"),  # epoch bump: an upgrade although 3.9.10 < 3.9.18
    ("curl", "x86_64", "7.76.1-26.el9"),  # added
    ("curl", "aarch64", "7.76.1-26.el9"),  # added, another arch
]


def test_rpm_known_changes() -> None:
    d = diff_rows("rpm", RPM_BEFORE, RPM_AFTER)
    assert d.added == (PackageVersion("curl", "aarch64", "7.76.1-26.el9"),
                       PackageVersion("curl", "x86_64", "7.76.1-26.el9"))
    assert d.removed == (PackageVersion("openssl", "i686", "1:3.0.7-24.el9"),
                         PackageVersion("telnet", "x86_64", "1:0.17-85.el9"))
    assert d.upgraded == (
        VersionChange("glibc", "x86_64", "2.34-83.el9", "2.34-83.el9_3.7"),
        VersionChange("kernel", "x86_64", "5.14.0-362.8.1.el9_3", "5.14.0-362.13.1.el9_3"),
        VersionChange("openssl", "x86_64", "1:3.0.7-24.el9", "1:3.0.7-25.el9"),
        VersionChange("openssl-libs", "x86_64", "1:3.0.7-24.el9", "1:3.0.7-25.el9"),
        VersionChange("python3", "x86_64", "3.9.18-1.el9", "1:3.9.10-1.el9"),
    )
    assert d.downgraded == (VersionChange("shim-x64", "x86_64", "15.8-1.el9", "15.6-1.el9"),)
    assert d.summary() == {"added": 2, "removed": 2, "upgraded": 5, "downgraded": 1, "advisories": 0}
    assert not d.is_empty
    assert apply_diff(RPM_BEFORE, d) == set(RPM_AFTER)


def test_epoch_removal_is_a_downgrade_and_zero_epoch_is_no_epoch() -> None:
    d = diff_rows("rpm", [("p", "noarch", "1:1.0-1"), ("q", "noarch", "0:2.0-1")],
                  [("p", "noarch", "9.9-9"), ("q", "noarch", "2.0-1")])
    assert d.downgraded == (VersionChange("p", "noarch", "1:1.0-1", "9.9-9"),)
    # "0:2.0-1" and "2.0-1" are the same version written two ways: not an up/downgrade.
    assert d.removed == (PackageVersion("q", "noarch", "0:2.0-1"),)
    assert d.added == (PackageVersion("q", "noarch", "2.0-1"),)
    assert not d.upgraded


def test_tilde_and_caret_ordering_in_a_diff() -> None:
    before = [("a", "x86_64", "1.0~rc1-1"), ("b", "x86_64", "1.0-1"), ("c", "x86_64", "1.0^git1-1")]
    after = [("a", "x86_64", "1.0-1"), ("b", "x86_64", "1.0^20240101-1"), ("c", "x86_64", "1.0.1-1")]
    d = diff_rows("rpm", before, after)
    assert names(d.upgraded) == [("a", "x86_64"), ("b", "x86_64"), ("c", "x86_64")]


DEB_BEFORE: list[Row] = [
    ("openssl", "amd64", "3.0.11-1~deb12u1"),
    ("libssl3", "amd64", "3.0.11-1~deb12u1"),
    ("libssl3", "i386", "3.0.11-1~deb12u1"),
    ("tzdata", "all", "2024a-0+deb12u1"),
    ("base-files", "amd64", "12.4+deb12u4"),
    ("vim", "amd64", "2:9.0.1378-2"),
    ("nano", "amd64", "7.2-1"),
    ("openssl", "source", "3.0.11-1~deb12u1"),
    ("gcc-12", "amd64", "12.2.0-14"),
]
DEB_AFTER: list[Row] = [
    ("openssl", "amd64", "3.0.11-1~deb12u2"),  # ~deb12u1 < ~deb12u2
    ("libssl3", "amd64", "3.0.11-1~deb12u2"),
    ("libssl3", "i386", "3.0.11-1~deb12u1"),  # one arch only
    ("tzdata", "all", "2024a-0+deb12u1"),
    ("base-files", "amd64", "12.4+deb12u5"),
    ("vim", "amd64", "9.1.0-1"),  # epoch 2 dropped: a downgrade
    ("openssl", "source", "3.0.11-1~deb12u2"),
    ("gcc-12", "amd64", "12.2.0-14+deb12u1"),
    ("curl", "amd64", "7.88.1-10+deb12u5"),
    ("curl", "arm64", "7.88.1-10+deb12u5"),
]


def test_deb_known_changes() -> None:
    d = diff_rows("deb", DEB_BEFORE, DEB_AFTER)
    assert names(d.added) == [("curl", "amd64"), ("curl", "arm64")]
    assert d.removed == (PackageVersion("nano", "amd64", "7.2-1"),)
    assert names(d.upgraded) == [("base-files", "amd64"), ("gcc-12", "amd64"), ("libssl3", "amd64"),
                                 ("openssl", "amd64"), ("openssl", "source")]
    assert d.downgraded == (VersionChange("vim", "amd64", "2:9.0.1378-2", "9.1.0-1"),)
    assert apply_diff(DEB_BEFORE, d) == set(DEB_AFTER)


def test_same_strings_order_differently_per_format() -> None:
    # rpm: "+" only separates, so "1a" has one more segment than "1+"; dpkg: letters sort before "+".
    before, after = [("p", "amd64", "1a")], [("p", "amd64", "1+")]
    assert diff_rows("deb", before, after).upgraded
    assert diff_rows("rpm", before, after).downgraded


def test_diff_packages_from_manifest_keys() -> None:
    before = [PackageKey(n, a, v) for n, a, v in RPM_BEFORE]
    after = [PackageKey(n, a, v) for n, a, v in RPM_AFTER]
    assert diff_packages("rpm", before, after) == diff_rows("rpm", RPM_BEFORE, RPM_AFTER)


def test_unchanged_and_unknown_kind() -> None:
    assert diff_rows("rpm", RPM_BEFORE, list(reversed(RPM_BEFORE))).is_empty
    assert diff_rows("deb", [], []) == Diff()
    with pytest.raises(ValueError, match="unknown repo type"):
        diff_rows("apk", [], [])


# -- several versions of one (name, arch) ------------------------------------------------------


def test_new_build_next_to_the_old_one_is_an_upgrade_with_the_old_kept() -> None:
    d = diff_rows("rpm", [("openssl", "x86_64", "1:3.0.7-24.el9")],
                  [("openssl", "x86_64", "1:3.0.7-24.el9"), ("openssl", "x86_64", "1:3.0.7-25.el9")])
    assert d.upgraded == (VersionChange("openssl", "x86_64", "1:3.0.7-24.el9", "1:3.0.7-25.el9",
                                        from_kept=True),)
    assert not d.added and not d.removed


def test_newest_going_away_is_a_downgrade_to_a_version_already_there() -> None:
    d = diff_rows("rpm", [("k", "x86_64", "1-1"), ("k", "x86_64", "2-1")], [("k", "x86_64", "1-1")])
    assert d.downgraded == (VersionChange("k", "x86_64", "2-1", "1-1", to_was_present=True),)
    assert not d.removed


def test_older_builds_changing_under_the_same_newest() -> None:
    d = diff_rows("rpm", [("k", "x86_64", v) for v in ("1-1", "3-1")],
                  [("k", "x86_64", v) for v in ("2-1", "3-1")])
    assert d.removed == (PackageVersion("k", "x86_64", "1-1"),)
    assert d.added == (PackageVersion("k", "x86_64", "2-1"),)
    assert not d.upgraded and not d.downgraded


def test_several_builds_pruned_and_added_around_an_upgrade() -> None:
    before = [("kernel", "x86_64", v) for v in ("5.14.0-1", "5.14.0-2", "5.14.0-3")]
    after = [("kernel", "x86_64", v) for v in ("5.14.0-3", "5.14.0-10", "5.14.0-4")]
    d = diff_rows("rpm", before, after)
    assert d.upgraded == (VersionChange("kernel", "x86_64", "5.14.0-3", "5.14.0-10", from_kept=True),)
    assert d.removed == (PackageVersion("kernel", "x86_64", "5.14.0-1"),
                         PackageVersion("kernel", "x86_64", "5.14.0-2"))
    assert d.added == (PackageVersion("kernel", "x86_64", "5.14.0-4"),)
    assert apply_diff(before, d) == set(after)


def test_new_package_with_several_versions_lists_them_oldest_first() -> None:
    d = diff_rows("deb", [], [("p", "amd64", v) for v in ("1.0", "1.0~rc1", "1:0.1", "1.0+b1")])
    assert [p.version for p in d.added] == ["1.0~rc1", "1.0", "1.0+b1", "1:0.1"]


def test_duplicate_rows_count_once() -> None:
    d = diff_rows("rpm", [("a", "x86_64", "1-1")] * 3, [("a", "x86_64", "2-1")] * 2)
    assert d.upgraded == (VersionChange("a", "x86_64", "1-1", "2-1"),)


# -- Hypothesis ---------------------------------------------------------------------------------

RPM_VERSIONS = ["1.0-1", "1.00-1", "0:1.0-1", "1:1.0-1", "1.0-2", "1.0~rc1-1", "1.0^git1-1", "2.0-1",
                "1.0-1.el9", "1.0-1.el9_1", "10-1", "9-1"]
DEB_VERSIONS = ["1.0", "1.00", "0:1.0", "1:1.0", "1.0-1", "1.0-0", "1.0~rc1", "1.0+b1", "1.0a", "2.0",
                "1.0-1~bpo1", "1.0-1+deb12u1"]


# Names that are prefixes of each other, and ones the line format must escape.
NAMES = ["a", "b", "a-b", "a2", "c", "t\tab", "new\nline", "back\\slash", "a\\tb"]


def _rows(versions: list[str]) -> st.SearchStrategy[frozenset[Row]]:
    row = st.tuples(st.sampled_from(NAMES), st.sampled_from(["x86_64", "noarch", "i686"]),
                    st.sampled_from(versions))
    return st.frozensets(row, max_size=30)


def _swapped(c: VersionChange) -> VersionChange:
    return VersionChange(c.name, c.arch, c.to_version, c.from_version, from_kept=c.to_was_present,
                         to_was_present=c.from_kept)


@pytest.mark.parametrize(("kind", "versions"), [("rpm", RPM_VERSIONS), ("deb", DEB_VERSIONS)])
def test_properties(kind: str, versions: list[str]) -> None:
    @settings(max_examples=300, deadline=None)
    @given(_rows(versions), _rows(versions))
    def check(a: frozenset[Row], b: frozenset[Row]) -> None:
        assert diff_rows(kind, a, a).is_empty
        d = diff_rows(kind, a, b)
        # applying diff(a, b) to a gives b
        assert apply_diff(a, d) == set(b)
        # swapping the arguments swaps added/removed and upgraded/downgraded
        r = diff_rows(kind, b, a)
        assert r.added == d.removed and r.removed == d.added
        assert r.upgraded == tuple(_swapped(c) for c in d.downgraded)
        assert r.downgraded == tuple(_swapped(c) for c in d.upgraded)
        # one up/downgrade per (name, arch) at most, and it goes the right way
        moved = names(d.upgraded) + names(d.downgraded)
        assert len(moved) == len(set(moved))
        # every input form gives the same answer: rows, PackageSets, PackageSets read from blobs
        assert diff_rows(kind, list(a), iter(sorted(b))) == d
        assert diff_rows(kind, [*a, *a], [*b, *sorted(b)]) == d  # rows given twice count once
        pa, pb = PackageSet(a), PackageSet(b)
        assert diff_rows(kind, pa, pb) == d
        blob_a, blob_b = PackageSet.from_blob(pa.to_blob()), PackageSet.from_blob(pb.to_blob())
        assert blob_a == pa and set(blob_a) == set(a) and len(blob_a) == len(a)
        assert diff_rows(kind, blob_a, blob_b) == d
        assert diff_rows(kind, blob_a, pb) == d
        assert diff_rows(kind, list(a), blob_b) == d
        for name in NAMES:
            expected = sorted(r for r in a if r[0] == name)
            assert sorted(pa.named(name)) == expected == sorted(blob_a.named(name))

    check()


def test_package_set_blob() -> None:
    ps = PackageSet(RPM_BEFORE)
    blob = ps.to_blob()
    back = PackageSet.from_blob(blob)
    assert back == ps and set(back) == set(RPM_BEFORE)
    assert ("openssl", "i686", "1:3.0.7-24.el9") in back and ("openssl", "i686", "0") not in back
    assert sorted(back.named("openssl")) == [("openssl", "i686", "1:3.0.7-24.el9"),
                                             ("openssl", "x86_64", "1:3.0.7-24.el9")]
    assert back.multi_names() == {"openssl", "glibc"} == ps.multi_names()
    assert PackageSet.from_blob(PackageSet().to_blob()) == PackageSet()
    with pytest.raises(ValueError, match="not a PackageSet blob"):
        PackageSet.from_blob(b"\x02" + blob[1:])
    with pytest.raises(ValueError, match="corrupt"):
        PackageSet.from_blob(blob[:-5])
    with pytest.raises(ValueError, match="a package row is"):
        PackageSet([("a", "b")])  # type: ignore[list-item]


# -- advisories ---------------------------------------------------------------------------------


def _adv(id_: str, *pkgs: tuple[str, str, str, str, str], type_: str = "security", cves: tuple[str, ...] = (),
         severity: str = "Important") -> Advisory:
    return Advisory(id=id_, type=type_, severity=severity, title=f"{id_} title",
                    issued=datetime(2026, 11, 20, tzinfo=UTC), updated=None, cves=cves,
                    references=(Reference("bugzilla", "123", "https://bugzilla.example.org/123"),),
                    packages=tuple(AdvisoryPackage(n, e, v, r, a) for n, e, v, r, a in pkgs))


def test_advisory_package_nevra() -> None:
    p = AdvisoryPackage("openssl", "1", "3.0.7", "25.el9", "x86_64")
    assert p.evr == "1:3.0.7-25.el9"
    assert p.nevra == "openssl-1:3.0.7-25.el9.x86_64"
    assert AdvisoryPackage("tzdata", "0", "2024a", "1.el9", "noarch").nevra == "tzdata-2024a-1.el9.noarch"
    assert AdvisoryPackage("openssl", "0", "3.0.11-1~deb12u2", "", "source").evr == "3.0.11-1~deb12u2"


def test_advisories_new_in_to_and_covering_upgrades() -> None:
    d = diff_rows("rpm", RPM_BEFORE, RPM_AFTER)
    fix24 = _adv("RLSA-2026:0001", ("openssl", "1", "3.0.7", "24.el9", "x86_64"))  # FROM had it
    fix25 = _adv("RLSA-2026:1234", ("openssl", "1", "3.0.7", "25.el9", "x86_64"),
                 ("openssl-libs", "1", "3.0.7", "25.el9", "x86_64"),
                 ("openssl", "1", "3.0.7", "25.el9", "src"),
                 cves=("CVE-2026-0001",))
    kern = _adv("RLSA-2026:0900", ("kernel", "0", "5.14.0", "362.13.1.el9_3", "x86_64"), cves=("CVE-2026-9",))
    bug = _adv("RLBA-2026:0002", ("bash", "0", "5.1.8", "6.el9", "x86_64"), type_="bugfix", severity="")
    future = _adv("RLSA-2026:9999", ("openssl", "1", "3.0.7", "26.el9", "x86_64"))  # not shipped yet
    before_adv = [fix24, fix25, kern]  # fix25/kern were already published while FROM held the old builds
    after_adv = [fix24, fix25, kern, bug, future]
    refs = diff_advisories("rpm", d, before_adv, after_adv, after_packages=set(RPM_AFTER))
    assert [r.id for r in refs] == ["RLBA-2026:0002", "RLSA-2026:0900", "RLSA-2026:1234"]
    by_id = {r.id: r for r in refs}
    # covering, not new: only the NEVRAs TO carries (the src.rpm is not mirrored here)
    assert by_id["RLSA-2026:1234"] == AdvisoryRef(
        id="RLSA-2026:1234", type="security", severity="Important", cves=("CVE-2026-0001",),
        packages=("openssl-1:3.0.7-25.el9.x86_64", "openssl-libs-1:3.0.7-25.el9.x86_64"),
        title="RLSA-2026:1234 title", issued=datetime(2026, 11, 20, tzinfo=UTC))
    # new in TO (bash did not change)
    assert by_id["RLBA-2026:0002"].packages == ("bash-5.1.8-6.el9.x86_64",)
    # "future" is new in TO, but TO does not carry its package: left out
    # without the TO package set, every new advisory is listed with all its packages
    everything = diff_advisories("rpm", d, before_adv, after_adv)
    assert [r.id for r in everything] == ["RLBA-2026:0002", "RLSA-2026:0900", "RLSA-2026:1234",
                                          "RLSA-2026:9999"]
    assert everything[-1].packages == ("openssl-1:3.0.7-26.el9.x86_64",)
    assert "openssl-1:3.0.7-25.el9.src" in {p for r in everything for p in r.packages}


def test_advisory_covering_rule_is_above_old_and_at_most_new() -> None:
    d = diff_rows("rpm", [("p", "x86_64", "1.0-3")], [("p", "x86_64", "1.0-6")])
    advs = [_adv(f"A-{r}", ("p", "0", "1.0", str(r), "x86_64")) for r in range(1, 9)]
    refs = diff_advisories("rpm", d, advs, advs)
    assert [r.id for r in refs] == ["A-4", "A-5", "A-6"]
    # a downgrade brings no fix in
    back = diff_rows("rpm", [("p", "x86_64", "1.0-6")], [("p", "x86_64", "1.0-3")])
    assert diff_advisories("rpm", back, advs, advs) == ()


def test_deb_advisories_leave_room_for_dsa() -> None:
    d = diff_rows("deb", DEB_BEFORE, DEB_AFTER)
    dsa = Advisory(id="DSA-5678-1", type="security", severity="", title="openssl security update",
                   issued=datetime(2026, 11, 1, tzinfo=UTC), updated=None, cves=("CVE-2026-1111",),
                   references=(), source="dsa",
                   packages=(AdvisoryPackage("openssl", "0", "3.0.11-1~deb12u2", "", "source"),))
    refs = diff_advisories("deb", d, [dsa], [dsa], after_packages=DEB_AFTER)
    assert [(r.id, r.packages) for r in refs] == [("DSA-5678-1", ("openssl-3.0.11-1~deb12u2.source",))]


def test_before_can_be_just_ids() -> None:
    d = diff_rows("rpm", RPM_BEFORE, RPM_AFTER)
    bug = _adv("RLBA-2026:0002", ("bash", "0", "5.1.8", "6.el9", "x86_64"), type_="bugfix")
    assert diff_advisories("rpm", d, ["RLBA-2026:0002"], [bug]) == ()
    assert [r.id for r in diff_advisories("rpm", d, [], [bug], after_packages=PackageSet(RPM_AFTER))] == [
        "RLBA-2026:0002"]


def test_fix_status_for_a_cve() -> None:
    advs = [_adv("RLSA-2026:1234", ("openssl", "1", "3.0.7", "25.el9", "x86_64"),
                 ("openssl-libs", "1", "3.0.7", "25.el9", "x86_64"), cves=("CVE-2026-0001",)),
            # a later revision for the same CVE: the lowest fixed version counts
            _adv("RLSA-2026:1300", ("openssl", "1", "3.0.7", "27.el9", "x86_64"), cves=("CVE-2026-0001",))]
    prod = fix_status("rpm", advs, RPM_BEFORE)
    assert prod.status == "vulnerable"
    assert prod.packages[0] == FixedPackage("openssl", "x86_64", "1:3.0.7-24.el9", "1:3.0.7-25.el9", False)
    uat = fix_status("rpm", advs, PackageSet(RPM_AFTER))
    assert uat.status == "fixed" and [p.name for p in uat.packages] == ["openssl", "openssl-libs"]
    # an older build kept next to the fixed one does not matter: clients get the newest
    assert fix_status("rpm", advs, [*RPM_AFTER, ("openssl", "x86_64", "1:3.0.7-1.el9")]).status == "fixed"
    # one package fixed, another not: vulnerable
    mixed = [("openssl", "x86_64", "1:3.0.7-25.el9"), ("openssl-libs", "x86_64", "1:3.0.7-24.el9")]
    assert fix_status("rpm", advs, mixed).status == "vulnerable"
    assert fix_status("rpm", advs, [("bash", "x86_64", "5.1.8-6.el9")]).status == "not_affected"


# -- output -------------------------------------------------------------------------------------


CONTRACT_EXAMPLE = {
    "repo": "baseos",
    "from": {"ref": "prod", "snapshot": "20261120T020000Z"},
    "to": {"ref": "uat", "snapshot": "20261127T020000Z"},
    "added": [{"name": "foo", "arch": "x86_64", "version": "1.2-1"}],
    "removed": [{"name": "bar", "arch": "noarch", "version": "0.9-3"}],
    "upgraded": [{"name": "openssl", "arch": "x86_64", "from": "1:3.0.7-24.el9", "to": "1:3.0.7-25.el9"}],
    "downgraded": [],
    "advisories": [{"id": "RLSA-2026:1234", "type": "security", "severity": "Important",
                    "cves": ["CVE-2026-0001"], "packages": ["openssl-1:3.0.7-25.el9.x86_64"]}],
    "summary": {"added": 1, "removed": 1, "upgraded": 1, "downgraded": 0, "advisories": 1},
}


def _contract_diff() -> Diff:
    before = [("bar", "noarch", "0.9-3"), ("openssl", "x86_64", "1:3.0.7-24.el9")]
    after = [("foo", "x86_64", "1.2-1"), ("openssl", "x86_64", "1:3.0.7-25.el9")]
    d = diff_rows("rpm", before, after)
    adv = _adv("RLSA-2026:1234", ("openssl", "1", "3.0.7", "25.el9", "x86_64"), cves=("CVE-2026-0001",))
    return Diff(d.added, d.removed, d.upgraded, d.downgraded,
                diff_advisories("rpm", d, [], [adv], after_packages=after))


def _project(doc: object, shape: object) -> object:
    """``doc`` reduced to the keys ``shape`` has (the contract allows more fields)."""
    if isinstance(shape, dict):
        assert isinstance(doc, dict)
        return {k: _project(doc[k], v) for k, v in shape.items()}
    if isinstance(shape, list):
        assert isinstance(doc, list) and len(doc) == len(shape)
        return [_project(d, s) for d, s in zip(doc, shape, strict=True)]
    return doc


def test_json_has_the_contract_shape() -> None:
    doc = diff_to_json(_contract_diff(), "baseos", SnapshotRef("prod", "20261120T020000Z"),
                       ("uat", "20261127T020000Z"))
    assert _project(doc, CONTRACT_EXAMPLE) == CONTRACT_EXAMPLE
    assert doc["upgraded"][0]["from_kept"] is False
    assert doc["advisories"][0]["issued"] == "2026-11-20T00:00:00Z"
    json.dumps(doc)  # serialisable as it is


def test_csv_round_trips() -> None:
    text = diff_to_csv(_contract_diff())
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["change"] for r in rows] == ["added", "removed", "upgraded", "advisory"]
    assert rows[2] == {"change": "upgraded", "name": "openssl", "arch": "x86_64", "from": "1:3.0.7-24.el9",
                       "to": "1:3.0.7-25.el9", "type": "", "severity": "", "cves": "", "packages": ""}
    assert rows[3]["name"] == "RLSA-2026:1234" and rows[3]["cves"] == "CVE-2026-0001"
    assert diff_to_csv(Diff()) == "change,name,arch,from,to,type,severity,cves,packages\n"


def test_table_is_readable() -> None:
    text = diff_to_table(_contract_diff())
    lines = text.splitlines()
    assert lines[0].split() == ["CHANGE", "NAME", "ARCH", "FROM", "TO"]
    assert lines[1].split() == ["upgraded", "openssl", "x86_64", "1:3.0.7-24.el9", "1:3.0.7-25.el9"]
    assert any(line.split()[:3] == ["RLSA-2026:1234", "security", "Important"] for line in lines)
    assert lines[-1] == "1 added, 1 removed, 1 upgraded, 0 downgraded, 1 advisories"
    assert diff_to_table(Diff()) == "no changes\n"


# -- real metadata: snapshots generated by the fixtures ------------------------------------------


def test_rpm_repos_built_by_the_fixtures(tmp_path: Path, archive_key: SigningKey) -> None:
    """Real rpms and primary.xml (createrepo_c), parsed by the sync's own parser, then diffed."""
    from fixtures.rpm_repo import RpmPackage, RpmRepo
    from mirror.formats.compression import decompress_to_file
    from mirror.formats.rpm import parse_primary

    def keys(repo: RpmRepo) -> list[PackageKey]:
        plain = tmp_path / f"{repo.root.name}-primary.xml"  # parse_primary takes what a sync decompressed
        decompress_to_file(repo.primary_path(), "gz", plain, cap=1 << 26, what="primary")
        return [PackageKey(e.name, e.arch, e.evr) for e in parse_primary(plain, what="primary")]

    repo = RpmRepo(tmp_path / "el9", archive_key)
    repo.add(RpmPackage("hello", "1.0"), RpmPackage("hello", "1.0", arch="aarch64"),
             RpmPackage("data", "2", arch="noarch"), RpmPackage("old", "0.1"),
             RpmPackage("tool", "3.0", release="2"), sign=False)
    repo.publish(sign_repomd=False)
    before = keys(repo)
    repo.remove("old")
    repo.add(RpmPackage("hello", "1.1"), RpmPackage("tool", "2.0", release="1", epoch=1),
             RpmPackage("new", "1.0~rc1"), sign=False)
    repo.remove("tool", "3.0")
    repo.publish(sign_repomd=False)
    after = keys(repo)
    d = diff_packages("rpm", before, after)
    assert d.upgraded == (
        VersionChange("hello", "x86_64", "1.0-1", "1.1-1", from_kept=True),  # both builds in the repo
        VersionChange("tool", "x86_64", "3.0-2", "1:2.0-1"),  # epoch bump
    )
    assert d.added == (PackageVersion("new", "x86_64", "1.0~rc1-1"),)
    assert d.removed == (PackageVersion("old", "x86_64", "0.1-1"),)
    assert not d.downgraded
    rows = {(k.name, k.arch, k.version) for k in after}
    assert apply_diff({(k.name, k.arch, k.version) for k in before}, d) == rows


def test_apt_repos_built_by_the_fixtures(tmp_path: Path, archive_key: SigningKey) -> None:
    """Real .debs and Packages indices, parsed by the sync's own parser, then diffed."""
    from fixtures.apt_repo import AptRepo, DebPackage
    from mirror.formats.deb import parse_packages

    def keys(repo: AptRepo) -> list[PackageKey]:
        out = []
        for arch in ("amd64", "arm64"):
            text = repo.packages_text("main", arch).encode()
            out += [PackageKey(p.name, p.arch, p.version) for p in parse_packages(text, what="Packages")]
        return out

    repo = AptRepo(tmp_path / "deb", archive_key, architectures=("amd64", "arm64"))
    repo.add(DebPackage("hello", "1.0-1"), DebPackage("hello", "1.0-1", arch="arm64"),
             DebPackage("libfoo", "2:1.2-3"), DebPackage("docs", "1.0", arch="all"),
             DebPackage("gone", "0.1-1"))
    before = keys(repo)
    repo.remove("gone")
    repo.remove("hello", "1.0-1")
    repo.remove("libfoo")
    repo.add(DebPackage("hello", "1.0-1+deb12u1"), DebPackage("hello", "1.0-1", arch="arm64"),
             DebPackage("libfoo", "1.3-1"), DebPackage("fresh", "1.0~rc1-1"))
    after = keys(repo)
    d = diff_packages("deb", before, after)
    assert d.upgraded == (VersionChange("hello", "amd64", "1.0-1", "1.0-1+deb12u1"),)
    assert d.downgraded == (VersionChange("libfoo", "amd64", "2:1.2-3", "1.3-1"),)  # epoch dropped
    assert d.added == (PackageVersion("fresh", "amd64", "1.0~rc1-1"),)
    assert d.removed == (PackageVersion("gone", "amd64", "0.1-1"),)
