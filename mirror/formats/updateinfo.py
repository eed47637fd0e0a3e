"""Parsing an RPM repo's updateinfo.xml into advisories (:class:`mirror.diff.Advisory`).

Input is an *uncompressed* file whose bytes were already verified (the repomd record's checksum
and open-checksum). The caller decompresses with :func:`mirror.formats.compression.decompress_to_file`
(bounded by a size cap) or uses :func:`load_updateinfo`, which does both; a compressed file given
to :func:`parse_updateinfo` is refused, because createrepo_c would decompress it without a cap.

Before createrepo_c's streaming parser (libxml2) sees the file, the XML prolog is checked: a
document type declaration (and so any entity declaration: billion laughs, external entities) is
refused, as is anything but UTF-8/ASCII. Parser errors become :class:`MalformedMetadataError`;
parser warnings about unknown elements are tolerated (vendors add their own, e.g.
``<reboot_suggested>``), a document that is not ``<updates>`` is refused.

Dates: createrepo_c's own date getter only knows two formats and silently truncates others
(``2024-01-02T03:04:05Z`` becomes midnight), so each record's raw ``date`` attributes are read
from the record as createrepo_c re-serialises it and parsed here: ``2024-01-02 03:04:05``,
``2024-01-02``, ISO 8601 with ``T``, an offset or ``Z``, a trailing `` UTC``, or epoch seconds;
times without an offset are UTC. An unparseable date is ``None`` (``strict=True``: an error).
"""

from __future__ import annotations

import html
import logging
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mirror.diff import Advisory, AdvisoryPackage, Reference
from mirror.errors import MalformedMetadataError
from mirror.formats.compression import decompress_to_file
from mirror.formats.rpm import check_prolog, check_text_runs

__all__ = ["Advisory", "AdvisoryPackage", "Reference", "load_updateinfo", "parse_date", "parse_updateinfo"]

log = logging.getLogger(__name__)

_CVE = re.compile(r"CVE-\d{4}-\d{4,}", re.IGNORECASE)
_DATE_ATTR = {
    "issued": re.compile(r'<issued\s+date="([^"]*)"'),
    "updated": re.compile(r'<updated\s+date="([^"]*)"'),
}
# createrepo_c warning types: 0 unknown tag, 1 missing attribute, 2 unknown value, 3 bad attribute
# value, 4 missing value, 5 bad metadata type (the document is not what was asked for).
_FATAL_WARNINGS = {5}


def parse_date(value: str | None) -> datetime | None:
    """An advisory date as real repos write it, in UTC; None when empty. ValueError if unreadable."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return datetime.fromtimestamp(int(text), UTC)
    if text.upper().endswith(" UTC"):
        text = text[:-4].rstrip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)  # "2024-01-02", "2024-01-02 03:04:05", "...T...+01:00"
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _str(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def parse_updateinfo(path: Path, *, what: str, strict: bool = False) -> list[Advisory]:
    """Blocking: parse an uncompressed, verified updateinfo.xml into advisories, in document order.

    An advisory id appearing twice (some repos repeat records) is kept once: the record with the
    latest ``updated`` date, or the first. ``strict``: every parser warning and every unreadable
    date is an error, instead of only malformed XML, a wrong document type and a missing id."""
    import createrepo_c as cr

    check_prolog(path, what=what, hint="or use load_updateinfo")
    check_text_runs(path, what=what)  # one huge text node would be held whole (HOSTILE 41)
    warnings: list[tuple[int, str]] = []

    def warningcb(kind: int, message: str) -> bool:
        warnings.append((kind, message))
        return True

    info = cr.UpdateInfo()
    try:
        cr.xml_parse_updateinfo(str(path), info, warningcb)
    except Exception as exc:  # createrepo_c raises its own error type for malformed XML
        raise MalformedMetadataError(f"cannot parse: {str(exc).strip()}", path=what) from None
    fatal = [m for k, m in warnings if strict or k in _FATAL_WARNINGS]
    if fatal:
        raise MalformedMetadataError(f"parser warnings: {'; '.join(fatal[:3])}", path=what)
    for _, message in warnings:
        log.info("%s: %s", what, message)

    out: dict[str, Advisory] = {}
    for record in info.updates:
        advisory = _advisory(cr, record, what=what, strict=strict)
        seen = out.get(advisory.id)
        if seen is None:
            out[advisory.id] = advisory
        elif advisory.updated and (seen.updated is None or advisory.updated > seen.updated):
            out[advisory.id] = advisory  # a later revision replaces it, in the first one's place
    return list(out.values())


def _advisory(cr: Any, record: Any, *, what: str, strict: bool) -> Advisory:
    ident = _str(record.id)
    if not ident:
        raise MalformedMetadataError("an <update> has no <id>", path=what)
    dumped = cr.xml_dump_updaterecord(record)
    dates: dict[str, datetime | None] = {}
    for field, pattern in _DATE_ATTR.items():
        m = pattern.search(dumped)
        raw = html.unescape(m.group(1)) if m else None
        try:
            dates[field] = parse_date(raw)
        except (ValueError, OverflowError, OSError):
            if strict:
                raise MalformedMetadataError(f"advisory {ident}: unreadable {field} date {raw!r}",
                                             path=what) from None
            log.warning("%s: advisory %s: unreadable %s date %r", what, ident, field, raw)
            dates[field] = None

    cves: list[str] = []
    refs: list[Reference] = []
    for ref in record.references:
        kind = _str(ref.type).lower()
        if kind == "cve":
            found = _str(ref.id) or next(iter(_CVE.findall(f"{_str(ref.title)} {_str(ref.href)}")), "")
            if found and found not in cves:
                cves.append(found)
        else:
            refs.append(Reference(type=kind, id=_str(ref.id), href=_str(ref.href), title=_str(ref.title)))

    packages: dict[tuple[str, str, str, str, str], AdvisoryPackage] = {}
    for collection in record.collections:
        for p in collection.packages:  # the binding gives str or None
            name, version, arch = (p.name or "").strip(), (p.version or "").strip(), (p.arch or "").strip()
            if not (name and version and arch):
                if strict:
                    raise MalformedMetadataError(f"advisory {ident}: a package lacks name, version or arch",
                                                 path=what)
                log.warning("%s: advisory %s: skipped a package without name, version or arch", what, ident)
                continue
            pkg = AdvisoryPackage(name=name, epoch=(p.epoch or "").strip() or "0", version=version,
                                  release=(p.release or "").strip(), arch=arch, filename=p.filename or "")
            packages.setdefault((pkg.name, pkg.epoch, pkg.version, pkg.release, pkg.arch), pkg)

    return Advisory(
        id=ident,
        type=_str(record.type) or "unknown",
        severity=_str(record.severity),
        title=_str(record.title),
        issued=dates["issued"],
        updated=dates["updated"],
        cves=tuple(cves),
        references=tuple(refs),
        packages=tuple(packages.values()),
        source="updateinfo",
        status=_str(record.status),
        description=_str(record.description),
    )


def load_updateinfo(src: Path, kind: str, *, cap: int, what: str, tmp_dir: Path | None = None,
                    strict: bool = False) -> list[Advisory]:
    """Blocking: decompress ``src`` (``kind`` as :func:`mirror.formats.compression.split_variant`
    names it: "gz", "xz", "zst", "bz2", "plain"), at most ``cap`` bytes, and parse it.

    The caller checks the compressed file against repomd first; the open-checksum can be checked
    on the decompressed file by parsing with :func:`parse_updateinfo` instead."""
    with tempfile.TemporaryDirectory(dir=tmp_dir, prefix="updateinfo-") as tmp:
        plain = Path(tmp) / "updateinfo.xml"
        decompress_to_file(src, kind, plain, cap=cap, what=what)
        return parse_updateinfo(plain, what=what, strict=strict)
