"""APT metadata parsing (exactness against python-debian) and bounded decompression."""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
import tracemalloc
import zlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
import zstandard
from debian.deb822 import Packages
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mirror.errors import (
    ExpiredMetadataError,
    MalformedMetadataError,
    TooLargeError,
    WeakDigestError,
)
from mirror.formats.compression import (
    PREFERENCE,
    SUFFIXES,
    decompress_file,
    split_variant,
)
from mirror.formats.deb import (
    BinaryPackage,
    parse_packages,
    parse_release,
    parse_sources,
    require_not_expired,
)

H1 = "1" * 64
H2 = "2" * 64
M1 = "a" * 32
S1 = "b" * 40
X1 = "c" * 128

# ---------------------------------------------------------------------------------------------
# python-debian as the oracle

_SOURCE_RE = re.compile(r"(?P<source>[^ ]+)( \((?P<version>.+)\))?")

Row = tuple[str, str, str, str, int, "str | None", "str | None"]


def _ours(data: bytes) -> list[Row]:
    return [
        (p.name, p.version, p.arch, p.filename, p.size, p.sha256, p.source)
        for p in parse_packages(data, what="Packages")
    ]


def _theirs(data: bytes) -> list[Row]:
    rows: list[Row] = []
    for p in Packages.iter_paragraphs(data, use_apt_pkg=False):
        source = p.get("Source")
        match = None if source is None else _SOURCE_RE.match(source)
        rows.append((
            p["Package"], p["Version"], p["Architecture"], p["Filename"], int(p["Size"]),
            p.get("SHA256"), None if match is None else match.group("source"),
        ))
    return rows


# ---------------------------------------------------------------------------------------------
# Generators for Packages files inside the accepted grammar

_ws = st.sampled_from(["", " ", "  ", "\t", " \t", "\x0b", " \x0c"])  # ASCII whitespace
_after_colon = st.sampled_from(["", " ", "  ", "\t", " \t "])
_text_chars = st.characters(
    codec="utf-8", exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp"), exclude_characters="#"
)
_word = st.text(_text_chars, min_size=1, max_size=12)
_inner = st.lists(_word, min_size=1, max_size=4).map(" ".join)  # no whitespace at the ends
_field_name_chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.+"
_NEEDED = {"package", "version", "architecture", "filename", "size", "sha256", "source"}
_extra_name = (
    st.text(st.sampled_from(_field_name_chars), min_size=1, max_size=16)
    .filter(lambda n: n.lower() not in _NEEDED and not n.startswith("-"))
)


def _random_case(draw: st.DrawFn, name: str) -> str:
    style = draw(st.sampled_from(["canonical", "lower", "upper", "mixed"]))
    if style == "lower":
        return name.lower()
    if style == "upper":
        return name.upper()
    if style == "mixed":
        flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
        return "".join(c.swapcase() if f else c for c, f in zip(name, flips, strict=True))
    return name


@st.composite
def _continuation(draw: st.DrawFn) -> str:
    lead = draw(st.sampled_from([" ", "\t", "  "]))
    kind = draw(st.sampled_from(["text", "dot", "blank"]))
    if kind == "dot":
        return lead + "."
    if kind == "blank":
        return lead + draw(st.sampled_from(["", " ", "\t"]))  # whitespace-only: ignored
    # Only space/tab at the end: python-debian's validate_input() splits multi-line values with
    # str.splitlines(), which breaks at \x0b, \x0c, \x1c-\x1e, \x85, U+2028/9 and then raises
    # "value must not have blank lines" - it crashes rather than answering, so no oracle there.
    return lead + draw(_inner) + draw(st.sampled_from(["", " ", "\t "]))


@st.composite
def _field(draw: st.DrawFn, name: str, value: str, multiline: bool) -> list[str]:
    first = f"{name}:{draw(_after_colon)}{value}{draw(_ws)}"
    if not multiline:
        # Our single-line fields may still be followed by whitespace-only continuation lines.
        blanks = draw(st.lists(st.sampled_from([" ", "\t", "  \t"]), max_size=2))
        return [first, *blanks]
    return [first, *draw(st.lists(_continuation(), max_size=4))]


@st.composite
def _paragraph(draw: st.DrawFn) -> list[str]:
    needed: dict[str, str] = {
        "Package": draw(st.from_regex(r"[a-z0-9][a-z0-9.+-]{0,15}", fullmatch=True)),
        "Version": draw(st.from_regex(r"([0-9]:)?[0-9][A-Za-z0-9.+~-]{0,12}", fullmatch=True)),
        "Architecture": draw(st.sampled_from(["amd64", "all", "arm64", "i386", "any"])),
        "Filename": "pool/main/" + draw(_inner),
        "Size": str(draw(st.integers(0, 10**15))).zfill(draw(st.integers(0, 3))),
    }
    if draw(st.booleans()):
        needed["SHA256"] = draw(st.from_regex(r"[0-9a-f]{64}", fullmatch=True))
    if draw(st.booleans()):
        src = draw(st.from_regex(r"[a-z0-9][a-z0-9.+-]{0,10}", fullmatch=True))
        if draw(st.booleans()):
            src += f" ({needed['Version']})"
        needed["Source"] = src
    fields: list[list[str]] = [
        draw(_field(_random_case(draw, name), value, False)) for name, value in needed.items()
    ]
    for name in draw(st.lists(_extra_name, max_size=6, unique_by=str.lower)):
        value = draw(st.one_of(st.just(""), _inner))
        fields.append(draw(_field(name, value, True)))
    order = draw(st.permutations(range(len(fields))))
    lines = [line for i in order for line in fields[i]]
    if draw(st.booleans()):  # whitespace-only lines inside the paragraph are ignored
        at = draw(st.integers(1, len(lines)))
        lines.insert(at, draw(st.sampled_from([" ", "\t", "  "])))
    return lines


@st.composite
def packages_files(draw: st.DrawFn) -> bytes:
    paragraphs = draw(st.lists(_paragraph(), min_size=0, max_size=5))
    out = "\n" * draw(st.integers(0, 2))
    for i, lines in enumerate(paragraphs):
        if i:
            out += "\n" * draw(st.integers(1, 3))  # one or more empty lines between paragraphs
        out += "\n".join(lines) + "\n"
    out += "\n" * draw(st.integers(0, 2))
    if paragraphs and draw(st.booleans()):
        out = out.rstrip("\n")  # no final newline
    data = out.encode()
    if draw(st.booleans()):
        data = data.replace(b"\n", b"\r\n")
    return data


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packages_files())
def test_packages_match_python_debian(data: bytes) -> None:
    assert _ours(data) == _theirs(data)


# Outside the grammar: whatever we accept must still equal python-debian's answer.
_noise_line = st.one_of(
    st.sampled_from([
        "", " ", "\t", "# comment", "garbage line", "Package : spaced", "-----BEGIN PGP SIGNED MESSAGE-----",
        " orphan?", "Size: x", "Size: 1_0", "Size: +5", "SHA256: " + "A" * 64, "SHA256: abc",
        "Package:", "Filename:", "\xa0Package: nbsp", "Pac\u212aage: kelvin", "Source:", " \xa0",
        "Filename: a\rb", "Version: 1\x1c", "\x0bFoo: bar", "Package: dup", "Size: 7",
        "Architecture: all", "Filename: f", "Version: 1",
    ]),
    _inner.map(lambda v: "Description: " + v),
    _inner.map(lambda v: " " + v),
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.lists(_noise_line, max_size=14).map(lambda ls: "\n".join(ls).encode()),
    st.tuples(packages_files(), st.lists(_noise_line, min_size=1, max_size=3), st.integers(0, 10**6))
    .map(lambda t: _splice(*t)),
))
def test_anything_we_accept_equals_python_debian(data: bytes) -> None:
    try:
        ours = _ours(data)
    except MalformedMetadataError:
        return  # stricter than python-debian is allowed; silently different is not
    assert ours == _theirs(data)


def _splice(data: bytes, noise: list[str], where: int) -> bytes:
    lines = data.split(b"\n")
    at = where % (len(lines) + 1)
    return b"\n".join([*lines[:at], *(n.encode() for n in noise), *lines[at:]])


def test_realistic_paragraph() -> None:
    data = (
        b"Package: hello\nSource: hello-src (2.10-3)\nVersion: 2.10-3\nInstalled-Size: 280\n"
        b"Maintainer: Santiago Vila <sanvila@debian.org>\nArchitecture: amd64\n"
        b"Depends: libc6 (>= 2.34)\nDescription: example package based on GNU hello\n"
        b" The GNU hello program produces a familiar, friendly greeting.\n .\n More text.\n"
        b"Homepage: https://www.gnu.org/software/hello/\nSection: devel\nPriority: optional\n"
        b"Filename: pool/main/h/hello/hello_2.10-3_amd64.deb\nSize: 53092\n"
        b"MD5sum: " + M1.encode() + b"\nSHA256: " + H1.encode() + b"\n\n"
        b"Package: other\nVersion: 1\nArchitecture: all\nFilename: pool/o.deb\nSize: 0\n"
    )
    assert parse_packages(data, what="Packages") == [
        BinaryPackage("hello", "2.10-3", "amd64", "pool/main/h/hello/hello_2.10-3_amd64.deb",
                      53092, H1, "hello-src"),
        BinaryPackage("other", "1", "all", "pool/o.deb", 0, None, None),
    ]
    assert _ours(data) == _theirs(data)


def test_empty_packages_file() -> None:
    assert parse_packages(b"", what="Packages") == []
    assert parse_packages(b"\n\n \n", what="Packages") == []


_BASE = b"Package: foo\nVersion: 1.0\nArchitecture: amd64\nFilename: pool/f/foo.deb\nSize: 10\n"


def test_packages_missing_filename_is_rejected() -> None:
    data = _BASE + b"\nPackage: bar\nVersion: 2\nArchitecture: all\nSize: 5\n"
    with pytest.raises(MalformedMetadataError) as info:
        parse_packages(data, what="main/binary-amd64/Packages")
    message = str(info.value)
    assert "main/binary-amd64/Packages" in message
    assert "'bar'" in message and "Filename" in message and "line 7" in message


@pytest.mark.parametrize("size", [b"x", b"-1", b"1.5", b"1_000", b"+3", b"", b"\xd9\xa1", b"9" * 21])
def test_packages_bad_size_is_rejected(size: bytes) -> None:
    data = _BASE.replace(b"Size: 10", b"Size: " + size)
    with pytest.raises(MalformedMetadataError, match="Size"):
        parse_packages(data, what="Packages")


def test_packages_missing_package_is_rejected() -> None:
    with pytest.raises(MalformedMetadataError, match="no Package field"):
        parse_packages(_BASE + b"\nDescription: orphan paragraph\n", what="Packages")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ((b"Size: 10\n", b"Size: 10\nsize: 11\n"), "appears twice"),
        ((b"Package: foo\n", b"Package: foo\nPackage: evil\n"), "appears twice"),
        ((b"Filename: pool/f/foo.deb\n", b"Filename: pool/f/foo.deb\n evil.deb\n"), "several lines"),
        ((b"Version: 1.0\n", b"Version: 1.0\n# comment\n"), "comment"),
        ((b"Version: 1.0\n", b"Version: 1.0\ngarbage\n"), "not a field line"),
        ((b"Version: 1.0\n", b"Version : 1.0\n"), "not a field line"),
        ((b"Version: 1.0\n", b"Version: 1.0\n-----BEGIN PGP SIGNATURE-----\n"), "OpenPGP"),
        ((b"Size: 10\n", b"Size: 10\rFilename: evil\n"), "carriage return"),
        ((b"Package: foo\n", b" orphan\nPackage: foo\n"), "continuation line without a field"),
        # python-debian would give "\n pool/f/foo.deb" and "\n src": never silently different
        ((b"Filename: pool/f/foo.deb\n", b"Filename:\n pool/f/foo.deb\n"), "several lines"),
        ((b"Size: 10\n", b"Size: 10\nSource: \n src\n"), "several lines"),
    ],
)
def test_packages_ambiguous_input_is_rejected(change: tuple[bytes, bytes], reason: str) -> None:
    with pytest.raises(MalformedMetadataError, match=reason):
        parse_packages(_BASE.replace(*change), what="Packages")


def test_packages_whitespace_only_continuations_are_ignored() -> None:
    data = _BASE.replace(b"Size: 10\n", b"Size: 10 \n \t\n \x1c\xc2\xa0\n")
    assert parse_packages(data, what="Packages")[0].size == 10
    assert _ours(data) == _theirs(data)


def test_packages_orphan_after_blank_line_is_rejected() -> None:
    with pytest.raises(MalformedMetadataError, match="continuation line without a field"):
        parse_packages(_BASE + b"\n \n orphan\n" + _BASE, what="Packages")


def test_packages_sha256_must_be_lowercase_hex() -> None:
    for bad in ("A" * 64, "1" * 63, "g" * 64, ""):
        with pytest.raises(MalformedMetadataError, match="SHA256"):
            parse_packages(_BASE + f"SHA256: {bad}\n".encode(), what="Packages")


def test_packages_non_utf8_in_read_field_is_rejected_elsewhere_ignored() -> None:
    with pytest.raises(MalformedMetadataError, match="UTF-8"):
        parse_packages(_BASE.replace(b"foo.deb", b"f\xffo.deb"), what="Packages")
    # A latin-1 Maintainer is not ours to judge: the fields we read are unaffected.
    assert parse_packages(_BASE + b"Maintainer: J\xf6rg\n", what="Packages")[0].name == "foo"


def test_packages_crlf_and_case_and_whitespace() -> None:
    data = (
        b"PACKAGE:foo  \r\nversion:\t1.0\r\nArchitecture: amd64\r\n \r\n"
        b"filename: pool/f/foo.deb\r\n \t\r\nsize: 10\r\nsha256: " + H1.encode() + b"\r\n\r\n\r\n"
    )
    assert parse_packages(data, what="Packages") == [
        BinaryPackage("foo", "1.0", "amd64", "pool/f/foo.deb", 10, H1, None)
    ]
    assert _ours(data) == _theirs(data)


# ---------------------------------------------------------------------------------------------
# Release

RELEASE = f"""Origin: Debian
Label: Debian
Suite: stable
Version: 12.5
Codename: bookworm
Changelogs: https://metadata.ftp-master.debian.org/changelogs/@CHANGEPATH@_changelog
Date: Sat, 10 Feb 2024 10:00:00 UTC
Valid-Until: Sat, 17 Feb 2024 10:00:00 +0000
Acquire-By-Hash: yes
No-Support-for-Architecture-all: Packages
Architectures: all amd64 arm64
Components: main contrib non-free-firmware
Description: Debian 12.5 Released 10 February 2024
MD5Sum:
 {M1}   1234 main/binary-amd64/Packages
 {M1}    345 main/binary-amd64/Packages.xz
SHA1:
 {S1} 1234 main/binary-amd64/Packages
SHA256:
 {H1}   1234 main/binary-amd64/Packages
 {H2}    345 main/binary-amd64/Packages.xz
SHA512:
 {X1} 1234 main/binary-amd64/Packages
""".encode()


def test_release_parses() -> None:
    release = parse_release(RELEASE, what="dists/stable/InRelease")
    assert release.suite == "stable" and release.codename == "bookworm"
    assert release.date == datetime(2024, 2, 10, 10, 0, 0, tzinfo=UTC)
    assert release.valid_until == datetime(2024, 2, 17, 10, 0, 0, tzinfo=UTC)
    assert release.architectures == ("all", "amd64", "arm64")
    assert release.components == ("main", "contrib", "non-free-firmware")
    assert release.acquire_by_hash is True
    assert release.fields["origin"] == "Debian" and release.fields["LABEL"] == "Debian"
    assert list(release.fields)[:3] == ["Origin", "Label", "Suite"]
    packages = release.files["main/binary-amd64/Packages"]
    assert (packages.size, packages.md5, packages.sha1, packages.sha256, packages.sha512) == (
        1234, M1, S1, H1, X1
    )
    xz = release.files["main/binary-amd64/Packages.xz"]
    assert (xz.size, xz.sha256, xz.sha1, xz.sha512) == (345, H2, None, None)
    assert xz.require_sha256(what="x") == H2
    assert set(release.files) == {"main/binary-amd64/Packages", "main/binary-amd64/Packages.xz"}


def test_release_with_only_md5_has_no_sha256() -> None:
    data = f"Suite: old\nMD5Sum:\n {M1} 10 main/binary-i386/Packages\n".encode()
    release = parse_release(data, what="Release")
    entry = release.files["main/binary-i386/Packages"]
    assert entry.sha256 is None and entry.md5 == M1 and entry.size == 10
    with pytest.raises(WeakDigestError, match="MD5"):
        entry.require_sha256(what="Release")


def test_release_size_disagreement_is_rejected() -> None:
    data = RELEASE.replace(f" {H1}   1234 ".encode(), f" {H1}   1235 ".encode())
    with pytest.raises(MalformedMetadataError, match="size of main/binary-amd64/Packages"):
        parse_release(data, what="dists/stable/InRelease")


@pytest.mark.parametrize(
    "date",
    [
        "yesterday",
        "Sat, 10 Feb 2024 10:00:00 +0200",  # apt only takes UTC
        "Sat, 10 Feb 2024 10:00:00 CET",
        "Sat, 31 Feb 2024 10:00:00 UTC",
        "Sat, 10 Foo 2024 10:00:00 UTC",
        "Sat, 10 Feb 2024 25:00:00 UTC",
        "2024-02-10T10:00:00Z",
        "Sat, 10 Feb 2024 10:00:00",
        "",
    ],
)
def test_release_bad_date_is_rejected(date: str) -> None:
    data = RELEASE.replace(b"Date: Sat, 10 Feb 2024 10:00:00 UTC", f"Date: {date}".encode())
    with pytest.raises(MalformedMetadataError, match="Date"):
        parse_release(data, what="InRelease")


@pytest.mark.parametrize("zone", ["UTC", "GMT", "Z", "+0000", "-0000"])
def test_release_utc_zones(zone: str) -> None:
    data = RELEASE.replace(b"10:00:00 UTC", f"10:00:00 {zone}".encode())
    assert parse_release(data, what="InRelease").date == datetime(2024, 2, 10, 10, tzinfo=UTC)


def test_release_two_paragraphs_is_rejected() -> None:
    with pytest.raises(MalformedMetadataError, match="line 2") as info:
        parse_release(b"Origin: Debian\n\nSuite: evil\n", what="InRelease")
    assert "InRelease" in str(info.value)
    with pytest.raises(MalformedMetadataError):
        parse_release(b"\nOrigin: Debian\n", what="InRelease")  # blank lines only at the end
    assert parse_release(b"Origin: Debian\n\n\n", what="InRelease").fields["Origin"] == "Debian"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"Origin: a\norigin: b\n", "twice"),
        (b"# comment\nOrigin: a\n", "comment"),
        (b"Origin a\n", "not a field line"),
        (b" orphan\nOrigin: a\n", "continuation"),
        (b"SHA256:\n " + H1.encode() + b" 12\n", "digest"),
        (b"SHA256:\n " + H1[:-1].encode() + b" 12 a\n", "malformed digest"),
        (b"SHA256:\n " + b"AB" * 32 + b" 12 a\n", "malformed digest"),
        (b"SHA256:\n " + H1.encode() + b" -12 a\n", "malformed size"),
        (b"SHA256:\n " + H1.encode() + b" 12 a\n " + H2.encode() + b" 12 a\n", "twice"),
        (b"SHA256: " + H1.encode() + b" 12 a\n", "continuation lines"),
        (b"Acquire-By-Hash: maybe\n", "Acquire-By-Hash"),
        (b"Origin: a\rSuite: b\n", "carriage return"),
        (b"", "empty"),
    ],
)
def test_release_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedMetadataError, match=reason):
        parse_release(data, what="InRelease")


def test_release_crlf_is_accepted() -> None:
    release = parse_release(RELEASE.replace(b"\n", b"\r\n"), what="InRelease")
    assert release.files["main/binary-amd64/Packages"].sha256 == H1


def test_require_not_expired() -> None:
    release = parse_release(RELEASE, what="InRelease")
    require_not_expired(release, now=datetime(2024, 2, 16, tzinfo=UTC), what="InRelease")
    with pytest.raises(ExpiredMetadataError):
        require_not_expired(release, now=datetime(2024, 2, 18, tzinfo=UTC), what="InRelease")


# ---------------------------------------------------------------------------------------------
# Sources

SOURCES = f"""Package: hello
Binary: hello
Version: 2.10-3
Maintainer: Santiago Vila <sanvila@debian.org>
Architecture: any
Directory: pool/main/h/hello
Files:
 {M1} 1847 hello_2.10-3.dsc
 {M1} 725946 hello_2.10.orig.tar.gz
Checksums-Sha256:
 {H1} 1847 hello_2.10-3.dsc
 {H2} 725946 hello_2.10.orig.tar.gz

Package: other
Version: 1
Directory: pool/main/o/other
Checksums-Sha256:
 {H1} 10 other_1.dsc
""".encode()


def test_sources_parse() -> None:
    hello, other = parse_sources(SOURCES, what="Sources")
    assert (hello.name, hello.version, hello.directory) == ("hello", "2.10-3", "pool/main/h/hello")
    assert hello.files == (("hello_2.10-3.dsc", 1847, H1), ("hello_2.10.orig.tar.gz", 725946, H2))
    assert other.files == (("other_1.dsc", 10, H1),)


def test_sources_weak_or_inconsistent() -> None:
    only_md5 = SOURCES.split(b"\n\n")[0].split(b"Checksums-Sha256:")[0]
    with pytest.raises(WeakDigestError):
        parse_sources(only_md5, what="Sources")
    extra = SOURCES.replace(b"Checksums-Sha256:", f" {M1} 5 evil.tar.gz\nChecksums-Sha256:".encode(), 1)
    with pytest.raises(WeakDigestError, match=r"evil\.tar\.gz"):
        parse_sources(extra, what="Sources")
    with pytest.raises(MalformedMetadataError, match="differs"):
        parse_sources(
            SOURCES.replace(b"725946 hello_2.10.orig.tar.gz\nChecksums",
                            b"725947 hello_2.10.orig.tar.gz\nChecksums"),
            what="Sources",
        )
    with pytest.raises(MalformedMetadataError, match="no Directory"):
        parse_sources(SOURCES.replace(b"Directory: pool/main/o/other\n", b""), what="Sources")


# ---------------------------------------------------------------------------------------------
# Compression


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_checksum=True).compress(data)


COMPRESSORS = {
    "xz": lambda d: lzma.compress(d, format=lzma.FORMAT_XZ),
    "lzma": lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE),
    "gz": gzip.compress,
    "bz2": bz2.compress,
    "zst": _zstd,
    "plain": lambda d: d,
}


def _write(tmp_path: Path, blob: bytes, name: str = "f") -> Path:
    path = tmp_path / name
    path.write_bytes(blob)
    return path


def test_suffixes_and_split_variant() -> None:
    assert set(SUFFIXES.values()) == set(PREFERENCE) == set(COMPRESSORS)
    assert PREFERENCE[0] == "xz" and PREFERENCE[-1] == "plain"
    assert split_variant("main/binary-amd64/Packages.xz") == ("main/binary-amd64/Packages", "xz")
    assert split_variant("main/binary-amd64/Packages.gz") == ("main/binary-amd64/Packages", "gz")
    assert split_variant("main/source/Sources.zst") == ("main/source/Sources", "zst")
    assert split_variant("main/i18n/Translation-en.bz2") == ("main/i18n/Translation-en", "bz2")
    assert split_variant("main/binary-amd64/Packages") == ("main/binary-amd64/Packages", "plain")
    assert split_variant("main/binary-amd64/Release") == ("main/binary-amd64/Release", "plain")
    assert split_variant("a.b/Packages.lzma") == ("a.b/Packages", "lzma")
    assert split_variant("a.xz/Packages") == ("a.xz/Packages", "plain")


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
@pytest.mark.parametrize("size", [0, 1, 70_000, 3_000_000])
def test_round_trip(tmp_path: Path, kind: str, size: int) -> None:
    data = (b"Package: x\nVersion: 1\n" * (size // 22 + 1))[:size]
    path = _write(tmp_path, COMPRESSORS[kind](data))
    assert decompress_file(path, kind, cap=size, what="idx") == data
    if size:
        with pytest.raises(TooLargeError, match="idx"):
            decompress_file(path, kind, cap=size - 1, what="idx")


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200_000), st.sampled_from(sorted(COMPRESSORS)))
def test_round_trip_property(tmp_path_factory: pytest.TempPathFactory, data: bytes, kind: str) -> None:
    path = _write(tmp_path_factory.mktemp("rt"), COMPRESSORS[kind](data))
    assert decompress_file(path, kind, cap=len(data), what="idx") == data


def _stream(compressor: lzma.LZMACompressor | bz2.BZ2Compressor, total: int) -> bytes:
    zeros = bytes(1 << 20)
    parts = [compressor.compress(zeros) for _ in range(total >> 20)]
    parts.append(compressor.flush())
    return b"".join(parts)


def test_decompression_bomb_is_capped(tmp_path: Path) -> None:
    bomb = _write(tmp_path, _stream(lzma.LZMACompressor(preset=0), 200 << 20), "Packages.xz")
    assert bomb.stat().st_size < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(TooLargeError, match=r"Packages\.xz"):
            decompress_file(bomb, "xz", cap=10 << 20, what="Packages.xz")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20


@pytest.mark.parametrize("kind", ["gz", "bz2", "zst", "lzma"])
def test_other_bombs_are_capped(tmp_path: Path, kind: str) -> None:
    compress = {
        "gz": lambda d: gzip.compress(d, compresslevel=1),
        "bz2": lambda d: bz2.compress(d, 1),
        "zst": _zstd,
        "lzma": lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE, preset=0),
    }[kind]
    blob = compress(bytes(64 << 20))
    bomb = _write(tmp_path, blob)
    tracemalloc.start()
    try:
        with pytest.raises(TooLargeError):
            decompress_file(bomb, kind, cap=4 << 20, what="bomb")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 << 20


_PAYLOAD = b"".join(b"Package: p%d\nVersion: 1.%d\n\n" % (i, i) for i in range(20_000))


@pytest.mark.parametrize("cut", [1, 13, 100, 0.5, -1, -5])
def test_truncated_xz_is_rejected(tmp_path: Path, cut: float) -> None:
    blob = lzma.compress(_PAYLOAD)
    end = int(len(blob) * cut) if isinstance(cut, float) else (cut if cut > 0 else len(blob) + cut)
    path = _write(tmp_path, blob[:end])
    with pytest.raises(MalformedMetadataError):
        decompress_file(path, "xz", cap=1 << 30, what="Packages.xz")


@pytest.mark.parametrize("offset", [-8, -6, -5, -4, -1])  # CRC32 (-8..-5) and ISIZE (-4..-1)
def test_gzip_bad_crc_is_rejected(tmp_path: Path, offset: int) -> None:
    blob = bytearray(gzip.compress(_PAYLOAD))
    blob[offset] ^= 0xFF
    with pytest.raises(MalformedMetadataError, match=r"Packages\.gz"):
        decompress_file(_write(tmp_path, bytes(blob)), "gz", cap=1 << 30, what="Packages.gz")


@pytest.mark.parametrize("cut", [0.3, 0.5, 0.9, -1, -4])
def test_zstd_cut_mid_frame_is_rejected(tmp_path: Path, cut: float) -> None:
    blob = zstandard.ZstdCompressor(write_checksum=False).compress(_PAYLOAD)
    end = int(len(blob) * cut) if isinstance(cut, float) else len(blob) + int(cut)
    with pytest.raises(MalformedMetadataError, match="truncated"):
        decompress_file(_write(tmp_path, blob[:end]), "zst", cap=1 << 30, what="Packages.zst")


def test_truncated_other_kinds_are_rejected(tmp_path: Path) -> None:
    for kind in ("gz", "bz2", "lzma"):
        blob = COMPRESSORS[kind](_PAYLOAD)
        with pytest.raises(MalformedMetadataError):
            decompress_file(_write(tmp_path, blob[:-3], kind), kind, cap=1 << 30, what=kind)
    for kind in ("xz", "gz", "bz2", "lzma", "zst"):
        with pytest.raises(MalformedMetadataError):
            decompress_file(_write(tmp_path, b"", f"empty-{kind}"), kind, cap=1 << 30, what=kind)


def test_concatenated_gzip_members_decode_fully(tmp_path: Path) -> None:
    parts = [_PAYLOAD, b"", b"second member\n", bytes(range(256)) * 1000]
    blob = b"".join(gzip.compress(p) for p in parts)
    path = _write(tmp_path, blob)
    assert decompress_file(path, "gz", cap=1 << 30, what="Packages.gz") == b"".join(parts)


def test_concatenated_streams_of_other_kinds(tmp_path: Path) -> None:
    for kind in ("xz", "bz2", "zst"):
        blob = COMPRESSORS[kind](_PAYLOAD) + COMPRESSORS[kind](b"tail\n")
        path = _write(tmp_path, blob, kind)
        assert decompress_file(path, kind, cap=1 << 30, what=kind) == _PAYLOAD + b"tail\n"
    blob = COMPRESSORS["lzma"](b"a") + COMPRESSORS["lzma"](b"b")
    with pytest.raises(MalformedMetadataError, match="trailing"):
        decompress_file(_write(tmp_path, blob, "l"), "lzma", cap=1 << 30, what="lzma")


@pytest.mark.parametrize("kind", ["xz", "gz", "bz2", "zst"])
@pytest.mark.parametrize("junk", [b"garbage", b"\x00" * 8, b"\x1f"])
def test_trailing_garbage_is_rejected(tmp_path: Path, kind: str, junk: bytes) -> None:
    blob = COMPRESSORS[kind](_PAYLOAD) + junk
    with pytest.raises(MalformedMetadataError):
        decompress_file(_write(tmp_path, blob), kind, cap=1 << 30, what="idx")


def test_corrupt_middle_is_rejected(tmp_path: Path) -> None:
    for kind in ("xz", "gz", "bz2", "zst"):
        blob = bytearray(COMPRESSORS[kind](_PAYLOAD))
        blob[len(blob) // 2] ^= 0x55
        with pytest.raises(MalformedMetadataError):
            decompress_file(_write(tmp_path, bytes(blob), kind), kind, cap=1 << 30, what=kind)


def test_zlib_raw_stream_is_not_gzip(tmp_path: Path) -> None:
    with pytest.raises(MalformedMetadataError):
        decompress_file(_write(tmp_path, zlib.compress(b"x")), "gz", cap=100, what="idx")


def test_decompress_then_parse(tmp_path: Path) -> None:
    path = _write(tmp_path, lzma.compress(_BASE))
    assert parse_packages(decompress_file(path, "xz", cap=1000, what="P"), what="P")[0].size == 10


def test_xz_asking_for_huge_decoder_memory_is_refused(tmp_path: Path) -> None:
    blob = bytearray(lzma.compress(b"hello" * 100, preset=0))
    header = slice(12, 12 + (blob[12] + 1) * 4)  # the block header after the stream header
    assert blob[header][1:4] == b"\x00\x21\x01"  # no sizes, one filter: LZMA2, 1 property byte
    blob[16] = 36  # LZMA2 dictionary size code 36: 1 GiB
    end = header.stop - 4
    blob[end:header.stop] = zlib.crc32(blob[12:end]).to_bytes(4, "little")
    with pytest.raises(TooLargeError, match="decoder memory"):
        decompress_file(_write(tmp_path, bytes(blob)), "xz", cap=1 << 30, what="Packages.xz")
