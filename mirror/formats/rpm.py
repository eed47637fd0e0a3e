"""Parsing RPM repository metadata (repomd.xml, primary.xml), from verified bytes only.

repomd.xml is small and parsed with the standard library after refusing any DTD (no entities,
no external references: the billion-laughs and XXE classes are excluded before the parser runs).
primary.xml is parsed with createrepo_c's streaming parser from a file that was already checked
against the size and digest repomd gives it; warnings go to a callback and become errors.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from mirror.errors import MalformedMetadataError

if TYPE_CHECKING:
    from collections.abc import Callable

    import createrepo_c as cr

    from mirror.dependencies import PackageNeeds, Relation

REPO_NS = "{http://linux.duke.edu/metadata/repo}"
XML_BASE = "{http://www.w3.org/XML/1998/namespace}base"
_DTD = re.compile(rb"<!(DOCTYPE|ENTITY)", re.IGNORECASE)
_PACKAGES_ATTR = re.compile(rb"<metadata\b[^>]*?\spackages=[\"']([0-9]{1,12})[\"']")
STRONG_CHECKSUMS = ("sha256", "sha512", "sha384", "sha224")


@dataclass(frozen=True, slots=True)
class RepomdRecord:
    type: str
    href: str
    base: str | None  # location xml:base, if any (refused by the chain unless it is the repo itself)
    checksum_type: str
    checksum: str
    size: int | None
    open_checksum_type: str | None
    open_checksum: str | None
    open_size: int | None
    timestamp: int | None

    def open_cap(self, max_size: int) -> int:
        """How many decompressed bytes the record may have: its open-size, never more than
        `max_size` (the configured `max_index_size`: a signed repomd may claim any open-size)."""
        return min(self.open_size, max_size) if self.open_size is not None else max_size


def decompress_record(source: Path, record: RepomdRecord, plain: Path, *, max_size: int, what: str) -> None:
    """Blocking: `source` (the record's verified file) decompressed into `plain`, at most
    `record.open_cap(max_size)` bytes, and exactly its open-size when repomd gives one."""
    from mirror.formats.compression import decompress_to_file, split_variant

    decompress_to_file(source, split_variant(what)[1], plain, cap=record.open_cap(max_size), what=what)
    size = plain.stat().st_size
    if record.open_size is not None and size != record.open_size:
        raise MalformedMetadataError(f"decompresses to {size} bytes, repomd says open-size "
                                     f"{record.open_size}", path=what)


@dataclass(frozen=True, slots=True)
class Repomd:
    revision: str | None
    records: tuple[RepomdRecord, ...]

    @property
    def newest_timestamp(self) -> int | None:
        stamps = [r.timestamp for r in self.records if r.timestamp is not None]
        return max(stamps) if stamps else None

    def record(self, kind: str) -> RepomdRecord | None:
        return next((r for r in self.records if r.type == kind), None)


#: A repomd `<revision>` of exactly ten digits reads as a Unix time (createrepo_c's default
#: revision is the time it ran): 1000000000 (2001-09-09) to 9999999999 (2286-11-20). Shorter
#: counters ("1000", "20240101") and other text are not times and are never judged as such.
_UNIX_TIME_REVISION = re.compile(r"[1-9][0-9]{9}")


def revision_problem(revision: str | None, now: datetime, skew: timedelta) -> str | None:
    """Why a repomd `<revision>` must be refused as dated in the future, or None (HOSTILE 24).

    A revision that reads as a Unix time (ten digits) more than `skew` after `now` is what a
    fast-forward leaves behind: accepted, it would become the high-water mark that makes every
    genuine later revision a rollback. The record timestamps are checked on their own (the
    repomd Date); this closes the case where they are sane and only the revision jumps."""
    if revision is None or not _UNIX_TIME_REVISION.fullmatch(revision):
        return None
    moment = datetime.fromtimestamp(int(revision), UTC)
    if moment <= now + skew:
        return None
    return (f"dated in the future: revision {revision} reads as Unix time {moment.isoformat()}, more than "
            f"{skew} after now ({now.replace(microsecond=0).isoformat()})")


def refuse_dtd(data: bytes, *, what: str) -> None:
    if _DTD.search(data):
        raise MalformedMetadataError("XML with a DTD or entity declarations is refused", path=what)


def _int(value: str | None, what: str, field: str) -> int | None:
    if value is None or value.strip() == "":
        return None
    try:
        number = int(value.strip())
    except ValueError:
        raise MalformedMetadataError(f"{field} {value!r} is not an integer", path=what) from None
    if number < 0:
        raise MalformedMetadataError(f"{field} {value!r} is negative", path=what)
    return number


def _attr_lower(el: ET.Element | None, name: str) -> str | None:
    return (el.get(name) or "").lower() if el is not None else None


def _text_lower(el: ET.Element | None) -> str | None:
    return el.text.strip().lower() if el is not None and el.text else None


def parse_repomd(payload: bytes, *, what: str) -> Repomd:
    refuse_dtd(payload, what=what)
    try:
        root = ET.fromstring(payload)
    except ET.ParseError as exc:
        raise MalformedMetadataError(f"not well-formed XML: {exc}", path=what) from None
    if root.tag != f"{REPO_NS}repomd":
        raise MalformedMetadataError(f"root element is {root.tag}, not repomd", path=what)
    revision_el = root.find(f"{REPO_NS}revision")
    revision = revision_el.text.strip() if revision_el is not None and revision_el.text else None
    records: list[RepomdRecord] = []
    seen: set[str] = set()
    for data in root.findall(f"{REPO_NS}data"):
        kind = data.get("type") or ""
        if not kind or kind in seen:
            raise MalformedMetadataError(f"data record with missing or duplicate type {kind!r}", path=what)
        seen.add(kind)
        location = data.find(f"{REPO_NS}location")
        checksum = data.find(f"{REPO_NS}checksum")
        if location is None or not location.get("href") or checksum is None or not checksum.text:
            raise MalformedMetadataError(f"record {kind!r} lacks a location or checksum", path=what)
        open_checksum = data.find(f"{REPO_NS}open-checksum")
        timestamp = data.find(f"{REPO_NS}timestamp")
        size = data.find(f"{REPO_NS}size")
        open_size = data.find(f"{REPO_NS}open-size")
        records.append(RepomdRecord(
            type=kind, href=location.get("href", ""), base=location.get(XML_BASE) or location.get("base"),
            checksum_type=(checksum.get("type") or "").lower(), checksum=checksum.text.strip().lower(),
            size=_int(size.text if size is not None else None, what, f"{kind} size"),
            open_checksum_type=_attr_lower(open_checksum, "type"),
            open_checksum=_text_lower(open_checksum),
            open_size=_int(open_size.text if open_size is not None else None, what, f"{kind} open-size"),
            timestamp=_int(timestamp.text if timestamp is not None else None, what, f"{kind} timestamp"),
        ))
    return Repomd(revision=revision, records=tuple(records))


@dataclass(frozen=True, slots=True)
class RpmPackageEntry:
    name: str
    epoch: str
    version: str
    release: str
    arch: str
    href: str
    base: str | None
    size: int
    checksum_type: str
    checksum: str

    @property
    def evr(self) -> str:
        evr = f"{self.version}-{self.release}"
        return f"{self.epoch}:{evr}" if self.epoch not in ("", "0") else evr


_MAGIC = {
    b"\x1f\x8b": "gz",
    b"\xfd7zXZ\x00": "xz",
    b"BZh": "bz2",
    b"\x28\xb5\x2f\xfd": "zst",
    b"\x00ZCK1": "zck",
}
_PROLOG_LIMIT = 1 << 20  # the root element must start within the first MiB


def check_prolog(path: Path, *, what: str, hint: str = "", compressed: bool = False) -> None:
    """Blocking: refuse compressed input, non-UTF-8 input and any DTD in an XML file, looking only
    at what precedes the root element (a DTD can be nowhere else; entities can only be declared
    in one), however long the prolog is up to a MiB (HOSTILE 39, 40). `compressed`: a gz, xz,
    bz2 or zst file (as createrepo_c reads it) is looked at decompressed instead of refused."""
    with path.open("rb") as f:
        head = f.read(_PROLOG_LIMIT)
    for magic, kind in _MAGIC.items():
        if head.startswith(magic) and compressed and kind != "zck":  # what the parser will read
            from mirror.formats.compression import decompressed_head

            head = decompressed_head(path, kind, _PROLOG_LIMIT, what=what)
            break
        if head.startswith(magic):
            raise MalformedMetadataError(
                f"is {kind}-compressed: decompress it first (bounded, with "
                f"mirror.formats.compression.decompress_to_file{', ' + hint if hint else ''})", path=what)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in head[:4]:
        raise MalformedMetadataError("only UTF-8 XML is accepted", path=what)
    pos = 3 if head.startswith(b"\xef\xbb\xbf") else 0
    n = len(head)
    while True:
        while pos < n and head[pos] in b" \t\r\n":
            pos += 1
        if pos >= n:
            if n >= _PROLOG_LIMIT:
                raise MalformedMetadataError("no root element in the first MiB", path=what)
            raise MalformedMetadataError("no root element (empty or truncated document)", path=what)
        if head.startswith(b"<?", pos):
            end = head.find(b"?>", pos + 2)
            step = 2
        elif head.startswith(b"<!--", pos):
            end = head.find(b"-->", pos + 4)
            step = 3
        elif head.startswith(b"<!", pos):
            refuse_dtd(head[pos:pos + 16], what=what)  # <!DOCTYPE / <!ENTITY: refused by name
            raise MalformedMetadataError("markup declaration before the root element", path=what)
        elif head.startswith(b"<", pos):
            return  # the root element: no DTD before it
        else:
            raise MalformedMetadataError("text before the root element", path=what)
        if end < 0:
            raise MalformedMetadataError("unterminated comment or processing instruction in the prolog",
                                         path=what)
        pos = end + step


#: The longest run of bytes without a `<` (a text node, an attribute value, a comment) an XML
#: file the mirror parses may hold. createrepo_c's streaming parser keeps each text node whole
#: in memory (about twice its size), so without this a single 2 GiB description, within the
#: decompressed-size cap, would cost gigabytes (HOSTILE 41). Real descriptions, changelogs and
#: advisory texts are kilobytes; libxml2 itself refuses a CDATA section or comment over 10 MB.
MAX_TEXT_RUN = 4 * 1024 * 1024
_SCAN_CHUNK = 1024 * 1024  # read size; at most `limit`, so a run inside one chunk is short enough


def check_text_runs(path: Path, *, what: str, limit: int = MAX_TEXT_RUN) -> None:
    """Blocking: refuse an uncompressed XML file holding more than `limit` bytes in a row without a
    `<` (one huge text node or attribute value), reading it in chunks (constant memory)."""
    start = pos = 0  # start: where the current run (after the last `<` seen) began
    size = min(_SCAN_CHUNK, limit)
    with path.open("rb") as f:
        while chunk := f.read(size):
            first = chunk.find(b"<")
            end = pos + (first if first >= 0 else len(chunk))
            if end - start > limit:
                raise MalformedMetadataError(
                    f"more than {limit} bytes without markup from byte {start} on (one huge text node "
                    "or attribute value): refused", path=what)
            if first >= 0:
                start = pos + chunk.rfind(b"<") + 1
            pos += len(chunk)


def _stream_primary(path: Path, pkgcb: Callable[[cr.Package], bool], *, what: str, do_files: bool) -> None:
    """createrepo_c's streaming primary parser with `pkgcb` per package; a parse error or any
    parser warning is refused (MalformedMetadataError naming `what`)."""
    import createrepo_c as cr

    warnings: list[str] = []

    def warningcb(kind: int, message: str) -> bool:
        warnings.append(message)
        return True

    try:
        cr.xml_parse_primary(str(path), pkgcb=pkgcb, do_files=do_files, warningcb=warningcb)
    except Exception as exc:  # createrepo_c raises its own error type for malformed XML
        raise MalformedMetadataError(f"cannot parse: {exc}", path=what) from None
    if warnings:
        raise MalformedMetadataError(f"parser warnings: {'; '.join(warnings[:3])}", path=what)


def parse_primary(path: Path, *, what: str) -> list[RpmPackageEntry]:
    """Blocking: stream-parse an uncompressed primary.xml already verified (a compressed one is
    refused: createrepo_c would decompress it without a cap); no text run over MAX_TEXT_RUN."""

    check_prolog(path, what=what)
    check_text_runs(path, what=what)
    with path.open("rb") as f:
        head = f.read(4096)
    declared = _PACKAGES_ATTR.search(head)
    out: list[RpmPackageEntry] = []

    def pkgcb(pkg: cr.Package) -> bool:
        out.append(RpmPackageEntry(
            name=pkg.name or "", epoch=pkg.epoch or "0", version=pkg.version or "", release=pkg.release or "",
            arch=pkg.arch or "", href=pkg.location_href or "", base=pkg.location_base or None,
            size=int(pkg.size_package or 0), checksum_type=(pkg.checksum_type or "").lower(),
            checksum=(pkg.pkgId or "").lower()))
        return True

    _stream_primary(path, pkgcb, what=what, do_files=False)
    if declared is not None and int(declared.group(1)) != len(out):
        raise MalformedMetadataError(f"declares packages=\"{int(declared.group(1))}\" but lists {len(out)} "
                                     "packages", path=what)
    for p in out:
        if not (p.name and p.version and p.arch and p.href and p.checksum):
            raise MalformedMetadataError(f"package entry {p.name!r} lacks name, version, arch, location "
                                         "or checksum", path=what)
    return out


_RPM_FLAGS = {"LT": "<", "LE": "<=", "EQ": "=", "GE": ">=", "GT": ">"}


def _rpm_relation(entry: tuple[str, str | None, str | None, str | None, str | None, bool]) -> Relation:
    from mirror.dependencies import Relation

    name, flags, epoch, version, release, _pre = entry
    if name.startswith("("):
        return Relation(name, rich=True)
    op = _RPM_FLAGS.get(flags or "")
    if op is None or not version:
        return Relation(name)
    evr = version if epoch in (None, "", "0") else f"{epoch}:{version}"
    return Relation(name, op, f"{evr}-{release}" if release else evr)


def parse_primary_needs(path: Path, *, what: str) -> dict[str, PackageNeeds]:
    """Blocking: what each package of a verified primary.xml offers and needs (`with_deps` only:
    the plain parse above skips all this), keyed by package checksum (lower case): Requires
    (rpmlib() ones left out: rpm itself provides them), Provides, and the files primary lists."""

    from mirror.dependencies import PackageNeeds

    check_prolog(path, what=what, compressed=True)
    out: dict[str, PackageNeeds] = {}

    def pkgcb(pkg: cr.Package) -> bool:
        epoch, version, release = pkg.epoch or "0", pkg.version or "", pkg.release or ""
        evr = f"{version}-{release}" if epoch == "0" else f"{epoch}:{version}-{release}"
        requires = tuple((_rpm_relation(r),) for r in pkg.requires or () if not r[0].startswith("rpmlib("))
        out[(pkg.pkgId or "").lower()] = PackageNeeds(
            pkg.name or "", pkg.arch or "", evr, requires,
            tuple(_rpm_relation(p) for p in pkg.provides or ()),
            tuple(f"{directory}{name}" for _kind, directory, name in pkg.files or ()))
        return True

    _stream_primary(path, pkgcb, what=what, do_files=True)
    return out
