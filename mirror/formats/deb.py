"""APT metadata: Release, Packages and Sources, parsed exactly and fast.

Input is trusted (verified) bytes; the parsers are still strict, because "trusted" only means
"signed by upstream", not "well formed", and a parser differential is a security bug.

The deb822 grammar accepted here (a strict subset of what python-debian and apt accept; anything
outside it is a :class:`MalformedMetadataError` naming ``what``, the line number and the line):

* Lines end with LF. CRLF is accepted and treated as LF (python-debian does the same); a bare CR
  is refused, because python-debian splits lines there and apt does not.
* A field line is ``Name:value``. Name is printable ASCII without ``:`` and does not start with
  ``#``; nothing (not even whitespace) between the name and the colon. Field names are compared
  case-insensitively (ASCII), as deb822 and apt do. The value is what follows the colon with
  surrounding whitespace stripped (Unicode whitespace, as python-debian's regex does).
* A continuation line starts with a space or a tab. Continuation lines made only of ASCII
  whitespace are ignored, as python-debian ignores them.
* Paragraphs are separated by empty lines; several empty lines are one separator; lines made
  only of spaces/tabs do not separate paragraphs (``whitespace-separates-paragraphs`` is off for
  Packages/Sources in python-debian, and apt agrees).
* Refused: comment lines (``#``; python-debian silently drops them, apt does not for indices),
  any other line (OpenPGP armor, garbage without a colon, lines starting with other bytes), and a
  paragraph whose first line is a continuation line.

Packages/Sources specifics: the fields we read (Package, Version, Architecture, Filename, Size,
SHA256, Source; Sources: Package, Version, Directory, Checksums-Sha256, Files) must be valid
UTF-8, must not be repeated within a paragraph (python-debian keeps the last one, apt the first:
a differential, so refused), and - except the checksum lists - must be single-line. Bytes in
fields we do not read are not decoded (python-debian would raise on invalid UTF-8 there).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from types import MappingProxyType
from typing import TYPE_CHECKING

from mirror.errors import (
    ExpiredMetadataError,
    MalformedMetadataError,
    WeakDigestError,
)

if TYPE_CHECKING:
    from mirror.dependencies import PackageNeeds, Relation

__all__ = [
    "BinaryPackage",
    "FieldMap",
    "Release",
    "ReleaseFileEntry",
    "SourcePackage",
    "parse_packages",
    "parse_release",
    "parse_sources",
    "require_not_expired",
]


# --------------------------------------------------------------------------------------------
# Value objects


@dataclass(frozen=True, slots=True)
class ReleaseFileEntry:
    """One file listed by a Release file, merged over its MD5Sum/SHA1/SHA256/SHA512 sections."""

    path: str
    size: int
    sha256: str | None
    sha512: str | None
    md5: str | None
    sha1: str | None

    def require_sha256(self, *, what: str) -> str:
        """The SHA256 digest, or :class:`WeakDigestError` when the Release file gave none."""
        if self.sha256 is None:
            listed = [
                name
                for name, value in (("SHA512", self.sha512), ("SHA1", self.sha1), ("MD5", self.md5))
                if value is not None
            ]
            raise WeakDigestError(
                f"{what}: {self.path} has no SHA256 digest (listed only with "
                f"{', '.join(listed) or 'no digest'}); weak digests alone are not enough"
            )
        return self.sha256


class FieldMap(Mapping[str, str]):
    """Read-only deb822 fields: original order and spelling, case-insensitive lookup."""

    __slots__ = ("_names", "_values")

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        names: list[str] = []
        values: dict[str, str] = {}
        for name, value in items:
            key = name.lower()
            if key in values:
                raise ValueError(f"duplicate field {name!r}")
            names.append(name)
            values[key] = value
        self._names = tuple(names)
        self._values = values

    def __getitem__(self, key: str) -> str:
        return self._values[key.lower()]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"FieldMap({ {name: self[name] for name in self._names}!r})"


@dataclass(frozen=True, slots=True)
class Release:
    fields: Mapping[str, str]  # every top-level field; lookup is case-insensitive
    suite: str | None
    codename: str | None
    date: datetime | None  # tz-aware UTC
    valid_until: datetime | None  # tz-aware UTC
    architectures: tuple[str, ...]
    components: tuple[str, ...]
    acquire_by_hash: bool
    files: Mapping[str, ReleaseFileEntry]


@dataclass(frozen=True, slots=True)
class BinaryPackage:
    name: str
    version: str
    arch: str
    filename: str
    size: int
    sha256: str | None  # None if the paragraph has no SHA256 field: the sync refuses it
    source: str | None  # source package name (without "(version)"); None if absent


@dataclass(frozen=True, slots=True)
class SourcePackage:
    name: str
    version: str
    directory: str
    files: tuple[tuple[str, int, str], ...]  # (name, size, sha256) from Checksums-Sha256


def require_not_expired(release: Release, *, now: datetime, what: str) -> None:
    """:class:`ExpiredMetadataError` if the Release's Valid-Until is at or before ``now``."""
    if release.valid_until is not None and release.valid_until <= now:
        raise ExpiredMetadataError(
            f"{what}: Release file expired at {release.valid_until.isoformat()} "
            f"(now {now.astimezone(UTC).isoformat()})"
        )


# --------------------------------------------------------------------------------------------
# Shared line grammar

# What may follow a line feed: an empty line, a continuation line, the end of the data, or a
# field name and its colon (printable ASCII, no colon, not starting with "#").
_LINE_OK = rb"(?:[ \t\n]|\Z|[!-\"$-9;-~][!-9;-~]*:)"
_FIRST_LINE_OK_RE = re.compile(_LINE_OK)
_BAD_LINE_RE = re.compile(rb"\n(?!" + _LINE_OK + rb")")

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_HEX_RES = {
    "md5": re.compile(r"[0-9a-f]{32}"),
    "sha1": re.compile(r"[0-9a-f]{40}"),
    "sha256": _SHA256_RE,
    "sha512": re.compile(r"[0-9a-f]{128}"),
}
_DIGITS_RE = re.compile(r"[0-9]+")

_PARAGRAPH_ODD_STARTS = frozenset((b"", b"\n", b" ", b"\t"))


def _show(line: bytes) -> str:
    text = line[:120].decode("utf-8", "backslashreplace")
    return repr(text + ("..." if len(line) > 120 else ""))


def _line_at(data: bytes, pos: int) -> tuple[int, bytes]:
    """Line number (1-based) and content of the line containing offset ``pos``."""
    start = data.rfind(b"\n", 0, pos) + 1
    end = data.find(b"\n", pos)
    return data.count(b"\n", 0, start) + 1, data[start : end if end >= 0 else len(data)]


def _malformed(what: str, reason: str, data: bytes | None = None, pos: int = 0) -> MalformedMetadataError:
    if data is None:
        return MalformedMetadataError(f"{what}: {reason}")
    lineno, line = _line_at(data, pos)
    return MalformedMetadataError(f"{what}: line {lineno}: {reason}: {_show(line)}")


def _normalise_text(data: bytes, what: str) -> bytes:
    """CRLF -> LF, refuse bare CR, and check every line against the grammar (one C-level pass)."""
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
        bare = data.find(b"\r")
        if bare >= 0:
            raise _malformed(what, "carriage return not followed by a line feed", data, bare)
    if not _FIRST_LINE_OK_RE.match(data):
        end = data.find(b"\n")
        raise _malformed(what, _bad_line_reason(data[: end if end >= 0 else len(data)]), data, 0)
    bad = _BAD_LINE_RE.search(data)
    if bad is not None:
        pos = bad.start() + 1
        end = data.find(b"\n", pos)
        raise _malformed(what, _bad_line_reason(data[pos : end if end >= 0 else len(data)]), data, pos)
    return data


def _bad_line_reason(line: bytes) -> str:
    if line.startswith(b"#"):
        return "comment lines are not allowed"
    if line.startswith(b"-----BEGIN PGP") or line.startswith(b"-----END PGP"):
        return "OpenPGP armor inside the data"
    return "not a field line (Name: value) nor a continuation line"


# --------------------------------------------------------------------------------------------
# Release


_MONTHS = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}
_WEEKDAYS = frozenset(("mon", "tue", "wed", "thu", "fri", "sat", "sun"))
_DATE_RE = re.compile(
    r"([A-Za-z]{3}),\s+([0-9]{1,2})\s+([A-Za-z]{3})\s+([0-9]{4})\s+"
    r"([0-9]{1,2}):([0-9]{1,2}):([0-9]{1,2})\s+(\S+)",
    re.ASCII,
)
_UTC_ZONE_RE = re.compile(r"GMT|UTC|Z|[+-]?0+", re.ASCII)


def _parse_date(value: str, *, field: str, what: str) -> datetime:
    """RFC 1123 dates as apt's RFC1123StrToTime reads them; only UTC zones, like apt.

    ``Sat, 27 Nov 2026 10:00:00 UTC``; the zone may be GMT, UTC, Z or a zero offset (``+0000``).
    """
    m = _DATE_RE.fullmatch(value)
    if m is None:
        raise MalformedMetadataError(f"{what}: {field}: not an RFC 1123 date: {value!r}")
    weekday, day, month, year, hour, minute, second, zone = m.groups()
    if weekday.lower() not in _WEEKDAYS or month.lower() not in _MONTHS:
        raise MalformedMetadataError(f"{what}: {field}: not an RFC 1123 date: {value!r}")
    if not _UTC_ZONE_RE.fullmatch(zone):
        raise MalformedMetadataError(
            f"{what}: {field}: time zone must be UTC (GMT, UTC, Z or +0000): {value!r}"
        )
    try:
        return datetime(
            int(year), _MONTHS[month.lower()], int(day), int(hour), int(minute), int(second),
            tzinfo=UTC,
        )
    except ValueError as exc:
        raise MalformedMetadataError(f"{what}: {field}: invalid date {value!r}: {exc}") from None


_RELEASE_HASHES = {"md5sum": "md5", "sha1": "sha1", "sha256": "sha256", "sha512": "sha512"}
_TRUE = frozenset(("yes", "true"))
_FALSE = frozenset(("no", "false"))


def parse_release(payload: bytes, *, what: str) -> Release:
    """Parse the verified content of a Release/InRelease file (one deb822 paragraph)."""
    data = _normalise_text(payload, what)
    lines = data.split(b"\n")
    # One paragraph from the first line; blank (or whitespace-only) lines only at the end.
    end = len(lines)
    while end and (not lines[end - 1] or lines[end - 1].isspace()):
        end -= 1
    if end == 0:
        raise MalformedMetadataError(f"{what}: empty Release file")
    offsets: list[int] = []
    pos = 0
    for line in lines:
        offsets.append(pos)
        pos += len(line) + 1

    raw: list[tuple[str, str, list[tuple[int, str]]]] = []  # name, first-line value, continuations
    for index in range(end):
        line = lines[index]
        if not line or line.isspace():
            raise _malformed(what, "blank line inside the paragraph (one paragraph expected)",
                             data, offsets[index])
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise _malformed(what, "not valid UTF-8", data, offsets[index]) from None
        if line[0] in b" \t":
            if not raw:
                raise _malformed(what, "continuation line without a field", data, offsets[index])
            raw[-1][2].append((index, text.strip()))
            continue
        name, _, value = text.partition(":")  # the grammar check guarantees the colon
        raw.append((name, value.strip(), []))

    seen: dict[str, str] = {}
    for name, _, _ in raw:
        key = name.lower()
        if key in seen:
            raise MalformedMetadataError(f"{what}: field {name!r} appears twice")
        seen[key] = name
    fields = FieldMap(
        (name, "".join([value, *("\n " + cont for _, cont in conts if cont)]))
        for name, value, conts in raw
    )

    files: dict[str, dict[str, str | int]] = {}
    for name, value, conts in raw:
        kind = _RELEASE_HASHES.get(name.lower())
        if kind is None:
            continue
        if value:
            raise MalformedMetadataError(
                f"{what}: {name}: entries must be on continuation lines, found {value!r}"
            )
        hex_re = _HEX_RES[kind]
        in_section: set[str] = set()
        for index, cont in conts:
            if not cont:
                continue
            parts = cont.split()
            if len(parts) != 3:
                raise _malformed(what, f"{name}: expected '<digest> <size> <path>'", data,
                                 offsets[index])
            digest, size_text, path = parts
            if not hex_re.fullmatch(digest):
                raise _malformed(what, f"{name}: malformed digest", data, offsets[index])
            if not _DIGITS_RE.fullmatch(size_text):
                raise _malformed(what, f"{name}: malformed size", data, offsets[index])
            if path in in_section:
                raise _malformed(what, f"{name}: {path} listed twice", data, offsets[index])
            in_section.add(path)
            size = int(size_text)
            entry = files.setdefault(path, {"size": size})
            if entry["size"] != size:
                raise _malformed(
                    what,
                    f"{name}: size of {path} disagrees with another section "
                    f"({size} != {entry['size']})",
                    data, offsets[index],
                )
            entry[kind] = digest

    def opt(field: str) -> str | None:
        return fields.get(field)

    def date(field: str) -> datetime | None:
        value = opt(field)
        return None if value is None else _parse_date(value, field=field, what=what)

    by_hash = opt("Acquire-By-Hash")
    if by_hash is None or by_hash.lower() in _FALSE:
        acquire_by_hash = False
    elif by_hash.lower() in _TRUE:
        acquire_by_hash = True
    else:
        raise MalformedMetadataError(f"{what}: Acquire-By-Hash: expected yes or no, got {by_hash!r}")

    return Release(
        fields=fields,
        suite=opt("Suite"),
        codename=opt("Codename"),
        date=date("Date"),
        valid_until=date("Valid-Until"),
        architectures=tuple((opt("Architectures") or "").split()),
        components=tuple((opt("Components") or "").split()),
        acquire_by_hash=acquire_by_hash,
        files=MappingProxyType(
            {
                path: ReleaseFileEntry(
                    path=path,
                    size=int(entry["size"]),
                    sha256=_opt_str(entry.get("sha256")),
                    sha512=_opt_str(entry.get("sha512")),
                    md5=_opt_str(entry.get("md5")),
                    sha1=_opt_str(entry.get("sha1")),
                )
                for path, entry in files.items()
            }
        ),
    )


def _opt_str(value: str | int | None) -> str | None:
    return None if value is None else str(value)


# --------------------------------------------------------------------------------------------
# Packages


# Only the fields we need, found by one C-level scan per paragraph. A field line is "\n" + name
# + ":" (the grammar check already refused whitespace before the colon); the value group takes
# the continuation lines too, so that they can be checked: these fields are single-line, and a
# continuation line that is not whitespace-only (which python-debian would append) is refused.
_PACKAGES_FIELD_RE = re.compile(
    rb"\n(package|version|architecture|filename|size|sha256|source):([^\n]*(?:\n[ \t][^\n]*)*)",
    re.IGNORECASE,
)
_PACKAGES_CANONICAL = {
    b"package": b"Package",
    b"version": b"Version",
    b"architecture": b"Architecture",
    b"filename": b"Filename",
    b"size": b"Size",
    b"sha256": b"SHA256",
    b"source": b"Source",
}
_PACKAGES_KEYS = frozenset(_PACKAGES_CANONICAL.values())


def _paragraph_is_blank(part: bytes, what: str, data: bytes, parts: list[bytes], index: int) -> bool:
    """For a paragraph that starts oddly: True if it has only blank lines; refuse orphans."""
    for line in part.split(b"\n"):
        if not line or line.isspace():
            continue
        if line[0] in b" \t":
            raise _malformed(what, "continuation line without a field",
                             data, _paragraph_offset(parts, index) + part.find(line))
        return False
    return True


def _paragraph_offset(parts: list[bytes], index: int) -> int:
    return sum(len(part) + 2 for part in parts[:index])


def _fold_keys(
    found: list[tuple[bytes, bytes]], canonical: Mapping[bytes, bytes]
) -> tuple[dict[bytes, bytes], bytes | None]:
    """Fields by canonical name, and the first field name that is repeated (if any)."""
    fields: dict[bytes, bytes] = {}
    for key, value in found:
        name = canonical[key.lower()]
        if name in fields:
            return fields, name
        fields[name] = value
    return fields, None


def _drop_blank_continuations(fields: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """Single-line fields: drop whitespace-only continuation lines; refuse any other one."""
    out: dict[bytes, bytes] = {}
    for key, value in fields.items():
        first, newline, rest = value.partition(b"\n")
        if newline and rest.decode().strip():  # python-debian skips str.isspace() lines
            raise _ParagraphError(f"field {key.decode()} spans several lines")
        out[key] = first
    return out


class _ParagraphError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _paragraph_error(
    what: str, reason: str, data: bytes, parts: list[bytes], index: int, name: str | None
) -> MalformedMetadataError:
    offset = _paragraph_offset(parts, index)
    part = parts[index]
    offset += len(part) - len(part.lstrip(b"\n"))
    lineno = data.count(b"\n", 0, offset) + 1
    who = f"package {name!r}" if name else "paragraph"
    return MalformedMetadataError(f"{what}: {who} (paragraph at line {lineno}): {reason}")


def parse_packages(data: bytes, *, what: str) -> list[BinaryPackage]:
    """Parse a Packages index.

    Gives exactly the name/version/arch/filename/size/sha256 python-debian's
    ``Packages.iter_paragraphs(data, use_apt_pkg=False)`` gives, for every input in the grammar
    described in this module's docstring; refuses everything else.
    """
    data = _normalise_text(data, what)
    parts = data.split(b"\n\n")
    result: list[BinaryPackage] = []
    append = result.append
    findall = _PACKAGES_FIELD_RE.findall
    keys = _PACKAGES_KEYS
    odd_starts = _PARAGRAPH_ODD_STARTS
    sha256_match = _SHA256_RE.fullmatch
    name: str | None = None
    for index, part in enumerate(parts):
        if part[:1] in odd_starts and _paragraph_is_blank(part, what, data, parts, index):
            continue
        name = None
        try:
            found: list[tuple[bytes, bytes]] = findall(b"\n" + part)
            fields = dict(found)
            if len(fields) != len(found) or not fields.keys() <= keys:
                fields, repeated = _fold_keys(found, _PACKAGES_CANONICAL)
                if repeated is not None:
                    raw = fields.get(b"Package")
                    name = raw.decode("utf-8", "replace").strip() if raw is not None else None
                    raise _ParagraphError(f"field {repeated.decode()} appears twice")
            if b"\n" in b"".join(fields.values()):
                fields = _drop_blank_continuations(fields)
            raw_name = fields.get(b"Package")
            if raw_name is None:
                raise _ParagraphError("no Package field")
            name = raw_name.decode().strip()
            if not name:
                raise _ParagraphError("empty Package field")
            try:
                version = fields[b"Version"].decode().strip()
                arch = fields[b"Architecture"].decode().strip()
                filename = fields[b"Filename"].decode().strip()
                size_text = fields[b"Size"].decode().strip()
            except KeyError as missing:
                raise _ParagraphError(f"no {missing.args[0].decode()} field") from None
            if not (version and arch and filename):
                raise _ParagraphError("empty Version, Architecture or Filename field")
            if not (size_text.isascii() and size_text.isdigit() and len(size_text) <= 20):
                raise _ParagraphError(f"Size is not a non-negative integer: {size_text!r}")
            raw_sha256 = fields.get(b"SHA256")
            sha256: str | None = None
            if raw_sha256 is not None:
                sha256 = raw_sha256.decode().strip()
                if not sha256_match(sha256):
                    raise _ParagraphError(f"SHA256 is not 64 lowercase hex digits: {sha256!r}")
            raw_source = fields.get(b"Source")
            source: str | None = None
            if raw_source is not None:
                source = raw_source.decode().strip().split(" ", 1)[0]
                if not source:
                    raise _ParagraphError(f"malformed Source field: {source!r}")
        except _ParagraphError as exc:
            raise _paragraph_error(what, exc.reason, data, parts, index, name) from None
        except UnicodeDecodeError:
            raise _paragraph_error(what, "a field we read is not valid UTF-8", data, parts,
                                   index, name) from None
        append(BinaryPackage(name, version, arch, filename, int(size_text), sha256, source))
    return result


def packages_paragraphs(data: bytes, *, what: str) -> list[tuple[BinaryPackage, bytes]]:
    """Each package of a Packages index with its paragraph as written (LF line ends, no blank lines
    around it, no trailing newline), in `parse_packages` order; refuses what it refuses."""
    packages = parse_packages(data, what=what)
    data = _normalise_text(data, what)
    parts = data.split(b"\n\n")
    texts: list[bytes] = []
    odd_starts = _PARAGRAPH_ODD_STARTS
    for index, part in enumerate(parts):
        if part[:1] in odd_starts and _paragraph_is_blank(part, what, data, parts, index):
            continue
        lines = part.split(b"\n")
        while lines and (not lines[0] or lines[0].isspace()):
            lines.pop(0)
        while lines and (not lines[-1] or lines[-1].isspace()):
            lines.pop()
        texts.append(b"\n".join(lines))
    if len(texts) != len(packages):
        raise _malformed(what, f"{len(texts)} paragraphs for {len(packages)} packages")
    return list(zip(packages, texts, strict=True))


# --------------------------------------------------------------------------------------------
# Sources


_SOURCES_FIELD_RE = re.compile(
    rb"\n(package|version|directory|checksums-sha256|files):([^\n]*)((?:\n[ \t][^\n]*)*)",
    re.IGNORECASE,
)
_SOURCES_CANONICAL = {
    b"package": b"Package",
    b"version": b"Version",
    b"directory": b"Directory",
    b"checksums-sha256": b"Checksums-Sha256",
    b"files": b"Files",
}
_SOURCES_MULTILINE = frozenset((b"checksums-sha256", b"files"))


def _checksum_lines(
    first: bytes, cont: bytes, field: str, digest_re: re.Pattern[str]
) -> list[tuple[str, int, str]]:
    if first.strip():
        raise _ParagraphError(f"{field}: entries must be on continuation lines")
    entries: list[tuple[str, int, str]] = []
    for line in cont.decode().split("\n")[1:]:
        if not line or line.isspace():
            continue
        parts = line.split()
        if len(parts) != 3:
            raise _ParagraphError(f"{field}: expected '<digest> <size> <name>': {line.strip()!r}")
        digest, size_text, filename = parts
        if not digest_re.fullmatch(digest) or not _DIGITS_RE.fullmatch(size_text):
            raise _ParagraphError(f"{field}: malformed entry {line.strip()!r}")
        entries.append((filename, int(size_text), digest))
    if not entries:
        raise _ParagraphError(f"{field}: no entries")
    return entries


def parse_sources(data: bytes, *, what: str) -> list[SourcePackage]:
    """Parse a Sources index: name, version, directory and the SHA256-listed files."""
    data = _normalise_text(data, what)
    parts = data.split(b"\n\n")
    result: list[SourcePackage] = []
    for index, part in enumerate(parts):
        if part[:1] in _PARAGRAPH_ODD_STARTS and _paragraph_is_blank(part, what, data, parts, index):
            continue
        name: str | None = None
        try:
            found: list[tuple[bytes, bytes, bytes]] = _SOURCES_FIELD_RE.findall(b"\n" + part)
            fields: dict[bytes, tuple[bytes, bytes]] = {}
            for key, value, cont in found:
                folded = key.lower()
                if folded not in _SOURCES_MULTILINE and cont and not cont.isspace():
                    raise _ParagraphError(f"field {key.decode()} spans several lines")
                canonical = _SOURCES_CANONICAL[folded]
                if canonical in fields:
                    raise _ParagraphError(f"field {canonical.decode()} appears twice")
                fields[canonical] = (value, cont)
            if b"Package" not in fields:
                raise _ParagraphError("no Package field")
            name = fields[b"Package"][0].decode().strip()
            if not name:
                raise _ParagraphError("empty Package field")
            values: dict[bytes, str] = {}
            for field in (b"Version", b"Directory"):
                if field not in fields:
                    raise _ParagraphError(f"no {field.decode()} field")
                values[field] = fields[field][0].decode().strip()
                if not values[field]:
                    raise _ParagraphError(f"empty {field.decode()} field")
            if b"Checksums-Sha256" not in fields:
                raise WeakDigestError(
                    f"{what}: source package {name!r} has no Checksums-Sha256 field "
                    "(weak digests alone are not enough)"
                )
            listed = _checksum_lines(*fields[b"Checksums-Sha256"], "Checksums-Sha256", _SHA256_RE)
            by_name: dict[str, int] = {}
            for filename, size, _ in listed:
                if filename in by_name:
                    raise _ParagraphError(f"Checksums-Sha256: {filename} listed twice")
                by_name[filename] = size
            if b"Files" in fields:
                for filename, size, _ in _checksum_lines(*fields[b"Files"], "Files", _HEX_RES["md5"]):
                    if filename not in by_name:
                        raise WeakDigestError(
                            f"{what}: source package {name!r}: {filename} is listed in Files "
                            "but not in Checksums-Sha256 (weak digests alone are not enough)"
                        )
                    if by_name[filename] != size:
                        raise _ParagraphError(
                            f"size of {filename} differs between Files and Checksums-Sha256"
                        )
        except _ParagraphError as exc:
            raise _paragraph_error(what, exc.reason, data, parts, index, name) from None
        except UnicodeDecodeError:
            raise _paragraph_error(what, "a field we read is not valid UTF-8", data, parts,
                                   index, name) from None
        result.append(
            SourcePackage(
                name=name,
                version=values[b"Version"],
                directory=values[b"Directory"],
                files=tuple(listed),
            )
        )
    return result


# --------------------------------------------------------------------------------------------
# Relations (`with_deps`): read from a kept paragraph only when dependencies are resolved

_RELATION_FIELD_RE = re.compile(rb"\n(depends|pre-depends|provides):([^\n]*)((?:\n[ \t][^\n]*)*)",
                                re.IGNORECASE)
# name[:archqual] [(op version)] [arch restrictions] [<build profiles>]
_RELATION_RE = re.compile(r"([A-Za-z0-9][A-Za-z0-9+.-]*)(?::[A-Za-z0-9-]+)?"
                          r"(?:\s*\(\s*(<<|<=|>=|>>|=|<|>)\s*([^\s()]+)\s*\))?"
                          r"(?:\s*\[[^\]]*\])?(?:\s*<[^>]*>)*")
_RELATION_FIELDS = {"depends": "Depends", "pre-depends": "Pre-Depends", "provides": "Provides"}
# dpkg's operators as the filters write them; the obsolete "<" and ">" mean "<=" and ">="
_RELATION_OPS = {"<<": "<", "<=": "<=", "=": "=", ">=": ">=", ">>": ">", "<": "<=", ">": ">="}


def package_needs(package: BinaryPackage, paragraph: bytes, *, what: str) -> PackageNeeds:
    """What a package offers and needs, from its paragraph: Depends and Pre-Depends (with
    alternatives `a | b` and versions), Provides (versioned or not). An architecture qualifier
    (`python3:any`) is dropped: an index lists one architecture (and `all`)."""
    from mirror.dependencies import PackageNeeds

    requires: list[tuple[Relation, ...]] = []
    provides: list[Relation] = []
    try:
        for key, first, cont in _RELATION_FIELD_RE.findall(b"\n" + paragraph):
            text = (first + cont).decode("utf-8")
            field = _RELATION_FIELDS[key.decode().lower()]
            for clause in text.split(","):
                if not clause.strip():
                    continue
                alternatives = tuple(_relation(alt, field) for alt in clause.split("|"))
                if field == "Provides":
                    if len(alternatives) != 1:
                        raise _ParagraphError(f"Provides: {clause.strip()!r} has alternatives")
                    provides.append(alternatives[0])
                else:
                    requires.append(alternatives)
    except _ParagraphError as exc:
        raise MalformedMetadataError(f"package {package.name} {package.version}: {exc.reason}",
                                     path=what) from None
    except UnicodeDecodeError:
        raise MalformedMetadataError(f"package {package.name} {package.version}: a relation field is "
                                     "not valid UTF-8", path=what) from None
    return PackageNeeds(package.name, package.arch, package.version, tuple(requires), tuple(provides))


@lru_cache(maxsize=1 << 16)
def _relation(text: str, field: str) -> Relation:
    """One relation (an index repeats the same ones a lot: cached)."""
    from mirror.dependencies import Relation

    match = _RELATION_RE.fullmatch(text.strip())
    if match is None:
        raise _ParagraphError(f"{field}: {text.strip()!r} is not a package relation")
    name, op, version = match.groups()
    if op is None:
        return Relation(name)
    if field == "Provides" and op != "=":
        raise _ParagraphError(f"Provides: {text.strip()!r}: only '=' is allowed")
    return Relation(name, _RELATION_OPS[op], version)
