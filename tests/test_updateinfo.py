"""updateinfo.xml -> advisories (mirror.formats.updateinfo), on real files written by createrepo_c
through the fixtures, and on hostile or malformed ones."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fixtures.keys import SigningKey
from fixtures.rpm_repo import Advisory as FixtureAdvisory
from fixtures.rpm_repo import RpmPackage, RpmRepo, updateinfo_xml
from mirror.diff import AdvisoryPackage, Reference, diff_advisories, diff_rows
from mirror.errors import MalformedMetadataError
from mirror.formats.compression import decompress_to_file
from mirror.formats.updateinfo import load_updateinfo, parse_date, parse_updateinfo

ISSUED = datetime(2026, 11, 20, 8, 30, 0, tzinfo=UTC)

ADVISORIES = [
    FixtureAdvisory("RLSA-2026:1234", type="security", severity="Important", title="openssl security update",
                    issued=ISSUED, updated=ISSUED + timedelta(days=2),
                    cves=["CVE-2026-0001", "CVE-2026-0002"],
                    packages=[("openssl", 1, "3.0.7", "25.el9", "x86_64"),
                              ("openssl-libs", 1, "3.0.7", "25.el9", "x86_64"),
                              ("openssl", 1, "3.0.7", "25.el9", "src")]),
    FixtureAdvisory("RLBA-2026:0002", type="bugfix", severity="", issued=ISSUED,
                    packages=[("tzdata", 0, "2026a", "1.el9", "noarch")]),
    FixtureAdvisory("RLEA-2026:0003", type="enhancement", severity="Low", issued=ISSUED,
                    packages=[("hello", 0, "1.1", "1", "x86_64"), ("hello", 0, "1.1", "1", "aarch64")]),
    FixtureAdvisory("RLSA-2026:0900", type="security", severity="Critical", issued=ISSUED,
                    cves=["CVE-2026-9999"], packages=[("kernel", 0, "5.14.0", "362.13.1.el9_3", "x86_64")]),
]


@pytest.fixture
def updateinfo(tmp_path: Path) -> Path:
    path = tmp_path / "updateinfo.xml"
    path.write_text(updateinfo_xml(ADVISORIES))
    return path


def test_parses_real_updateinfo(updateinfo: Path) -> None:
    advisories = parse_updateinfo(updateinfo, what="updateinfo.xml")
    assert [a.id for a in advisories] == [a.id for a in ADVISORIES]
    sec = advisories[0]
    assert (sec.type, sec.severity, sec.title) == ("security", "Important", "openssl security update")
    assert sec.issued == ISSUED and sec.updated == ISSUED + timedelta(days=2)
    assert sec.cves == ("CVE-2026-0001", "CVE-2026-0002")
    assert sec.references == ()  # the fixture's only references are CVEs
    assert sec.source == "updateinfo" and sec.status == "final" and sec.description == "A test advisory."
    assert sec.packages[0] == AdvisoryPackage("openssl", "1", "3.0.7", "25.el9", "x86_64",
                                              filename="openssl-3.0.7-25.el9.x86_64.rpm")
    assert sec.nevras == ("openssl-1:3.0.7-25.el9.x86_64", "openssl-libs-1:3.0.7-25.el9.x86_64",
                          "openssl-1:3.0.7-25.el9.src")
    assert advisories[1].type == "bugfix" and advisories[1].severity == "" and advisories[1].cves == ()
    assert advisories[1].nevras == ("tzdata-2026a-1.el9.noarch",)
    assert advisories[1].updated == ISSUED  # the fixture writes updated = issued
    assert advisories[2].type == "enhancement"
    assert {p.arch for p in advisories[2].packages} == {"x86_64", "aarch64"}


def test_other_references_are_kept(tmp_path: Path) -> None:
    text = updateinfo_xml(ADVISORIES[:1]).replace(
        "<references>",
        '<references>\n      <reference href="https://bugzilla.example.org/42" id="42" type="bugzilla" '
        'title="openssl: crash"/>\n      <reference href="https://errata.example.org/RLSA-2026:1234" '
        'id="RLSA-2026:1234" type="self" title="RLSA-2026:1234"/>\n'
        '      <reference href="https://www.cve.org/CVERecord?id=CVE-2026-0003" type="cve" '
        'title="CVE-2026-0003"/>')
    path = tmp_path / "u.xml"
    path.write_text(text)
    [adv] = parse_updateinfo(path, what="u.xml")
    assert adv.references == (
        Reference("bugzilla", "42", "https://bugzilla.example.org/42", "openssl: crash"),
        Reference("self", "RLSA-2026:1234", "https://errata.example.org/RLSA-2026:1234", "RLSA-2026:1234"),
    )
    # a CVE reference without an id: taken from its title or link
    assert adv.cves == ("CVE-2026-0003", "CVE-2026-0001", "CVE-2026-0002")


@pytest.mark.parametrize("compression", ["gz", "zst"])
def test_compressed_updateinfo_from_a_published_repo(tmp_path: Path, archive_key: SigningKey,
                                                     compression: str) -> None:
    repo = RpmRepo(tmp_path / "el9", archive_key)
    repo.add(RpmPackage("hello", "1.1"), sign=False)
    repo.publish(updateinfo=ADVISORIES, compression=compression, sign_repomd=False)
    record = repo.record_path("updateinfo")
    assert record.name.endswith(f".{compression}")
    # parse_updateinfo takes an already-decompressed file, and says so when given a compressed one
    with pytest.raises(MalformedMetadataError, match=f"{compression}-compressed: decompress it first"):
        parse_updateinfo(record, what="repodata/updateinfo")
    plain = tmp_path / "updateinfo.xml"
    decompress_to_file(record, compression, plain, cap=10 << 20, what="repodata/updateinfo")
    expected = parse_updateinfo(plain, what="updateinfo.xml")
    assert [a.id for a in expected] == [a.id for a in ADVISORIES]
    # load_updateinfo: bounded decompression, then the same parse
    assert load_updateinfo(record, compression, cap=10 << 20, what="x", tmp_dir=tmp_path) == expected
    from mirror.errors import TooLargeError

    with pytest.raises(TooLargeError):
        load_updateinfo(record, compression, cap=100, what="x", tmp_dir=tmp_path)


@pytest.mark.parametrize(("raw", "expected"), [
    ("2024-01-02 03:04:05", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ("2024-01-02", datetime(2024, 1, 2, tzinfo=UTC)),
    ("1704164645", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ("2024-01-02T03:04:05Z", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ("2024-01-02T04:04:05+01:00", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ("2024-01-02 03:04:05 UTC", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ("2024-01-02 03:04:05.250000", datetime(2024, 1, 2, 3, 4, 5, 250000, tzinfo=UTC)),
    ("  2024-01-02 ", datetime(2024, 1, 2, tzinfo=UTC)),
    ("", None),
    (None, None),
])
def test_parse_date(raw: str | None, expected: datetime | None) -> None:
    got = parse_date(raw)
    assert got == expected
    assert got is None or got.utcoffset() == timedelta(0)


def test_parse_date_refuses_garbage() -> None:
    with pytest.raises(ValueError):
        parse_date("last tuesday")


@pytest.mark.parametrize(("raw", "expected"), [
    ("2024-01-02", datetime(2024, 1, 2, tzinfo=UTC)),
    ("1704164645", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ("2024-01-02T03:04:05Z", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),  # createrepo_c's getter: midnight
    ("", None),
    ("soon", None),  # unreadable: None (strict: an error)
])
def test_dates_in_real_files(tmp_path: Path, raw: str, expected: datetime | None) -> None:
    text = updateinfo_xml(ADVISORIES[:1]).replace('date="2026-11-20 08:30:00"', f'date="{raw}"')
    assert f'date="{raw}"' in text
    path = tmp_path / "u.xml"
    path.write_text(text)
    [adv] = parse_updateinfo(path, what="u.xml")
    assert adv.issued == expected
    if expected is None and raw:
        with pytest.raises(MalformedMetadataError, match="unreadable issued date"):
            parse_updateinfo(path, what="u.xml", strict=True)


def test_vendor_elements_are_tolerated_unless_strict(tmp_path: Path) -> None:
    text = updateinfo_xml(ADVISORIES[:1]).replace(
        "<severity>", "<reboot_suggested>True</reboot_suggested><vendor_note>x</vendor_note><severity>")
    path = tmp_path / "u.xml"
    path.write_text(text)
    [adv] = parse_updateinfo(path, what="u.xml")
    assert adv.id == "RLSA-2026:1234"
    with pytest.raises(MalformedMetadataError, match="vendor_note"):
        parse_updateinfo(path, what="u.xml", strict=True)


def test_a_repeated_id_keeps_the_latest_revision(tmp_path: Path) -> None:
    old = FixtureAdvisory("A-1", issued=ISSUED, packages=[("p", 0, "1", "1", "x86_64")])
    new = FixtureAdvisory("A-1", issued=ISSUED, updated=ISSUED + timedelta(days=1),
                          packages=[("p", 0, "1", "2", "x86_64")])
    path = tmp_path / "u.xml"
    path.write_text(updateinfo_xml([old, new, FixtureAdvisory("B-2", issued=ISSUED)]))
    advisories = parse_updateinfo(path, what="u.xml")
    assert [a.id for a in advisories] == ["A-1", "B-2"]
    assert advisories[0].nevras == ("p-1-2.x86_64",)


MALFORMED = {
    "empty": "",
    "whitespace": "  \n",
    "not xml": "hello",
    "truncated": '<?xml version="1.0"?>\n<updates><update type="security"><id>A</id>',
    "mismatched": "<updates><update><id>A</update></updates>",
    "wrong root": "<metadata><package/></metadata>",
    "no id": '<updates><update type="security"><title>x</title></update></updates>',
    "utf-16": "\ufeff<updates/>",
    "unterminated comment": "<!-- <updates/>",
    "text before root": "junk<updates/>",
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_input_is_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / "u.xml"
    text = MALFORMED[name]
    path.write_bytes(text.encode("utf-16") if name == "utf-16" else text.encode())
    with pytest.raises(MalformedMetadataError) as info:
        parse_updateinfo(path, what="repodata/x-updateinfo.xml")
    assert info.value.path == "repodata/x-updateinfo.xml"


def test_empty_updates_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "u.xml"
    path.write_text('<?xml version="1.0" encoding="UTF-8"?>\n<!-- no advisories yet -->\n<updates/>\n')
    assert parse_updateinfo(path, what="u.xml") == []


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE updates [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<updates><update type="security"><id>A-1</id><title>&lol9;</title></update></updates>
"""


@pytest.mark.parametrize("doc", [
    BILLION_LAUGHS,
    # the DTD after a comment longer than the 4 KiB a naive check would look at
    '<?xml version="1.0"?>\n<!-- ' + "x" * 10_000 + " -->\n" + BILLION_LAUGHS.split("\n", 1)[1],
    # external entity (XXE)
    '<?xml version="1.0"?>\n<!DOCTYPE updates [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'
    '<updates><update type="security"><id>&x;</id></update></updates>',
    '<!doctype updates SYSTEM "http://example.org/updateinfo.dtd"><updates/>',
])
def test_dtds_are_refused(tmp_path: Path, doc: str) -> None:
    path = tmp_path / "u.xml"
    path.write_text(doc)
    start = time.monotonic()
    with pytest.raises(MalformedMetadataError, match="DTD"):
        parse_updateinfo(path, what="u.xml")
    assert time.monotonic() - start < 1


def test_advisories_from_a_real_file_in_a_diff(updateinfo: Path) -> None:
    before = [("openssl", "x86_64", "1:3.0.7-24.el9"), ("openssl-libs", "x86_64", "1:3.0.7-24.el9"),
              ("kernel", "x86_64", "5.14.0-362.8.1.el9_3"), ("tzdata", "noarch", "2026a-1.el9")]
    after = [("openssl", "x86_64", "1:3.0.7-25.el9"), ("openssl-libs", "x86_64", "1:3.0.7-25.el9"),
             ("kernel", "x86_64", "5.14.0-362.8.1.el9_3"), ("tzdata", "noarch", "2026a-1.el9")]
    advisories = parse_updateinfo(updateinfo, what="updateinfo.xml")
    d = diff_rows("rpm", before, after)
    refs = diff_advisories("rpm", d, advisories, advisories, after_packages=after)
    # only the openssl advisory: its fix arrives with this upgrade (kernel did not move)
    assert [(r.id, r.cves, r.packages) for r in refs] == [
        ("RLSA-2026:1234", ("CVE-2026-0001", "CVE-2026-0002"),
         ("openssl-1:3.0.7-25.el9.x86_64", "openssl-libs-1:3.0.7-25.el9.x86_64"))]
