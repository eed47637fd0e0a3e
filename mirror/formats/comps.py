"""comps.xml (the `group` records: package groups, environments, categories) reduced to the
packages a filtered snapshot keeps.

Only a filtered snapshot parses comps; an unfiltered one mirrors it as an opaque, verified blob.
The parser is defusedxml's ElementTree: real comps files carry a DOCTYPE (allowed), but an
entity declaration (billion laughs, quadratic blowup) or an external reference is refused as
soon as the parser meets it (:class:`MalformedMetadataError`), before anything is expanded.

Reduction (:func:`reduce_comps`): every ``<packagereq>`` naming a package the snapshot does not
keep is dropped, except, when the caller says which packages the upstream repo listed, those
naming a package it never had (real comps files name packages of sibling repos: AppStream's
groups list BaseOS packages, which a filter on AppStream did not drop); a group the reduction
leaves without any ``<packagereq>`` is dropped, and the
``<groupid>`` references to it in environments (``<grouplist>``, ``<optionlist>``) and categories
are removed. Everything else (names, translations, langpacks, environments and categories that
still exist) is kept. Nothing to drop: ``None`` (the caller keeps the upstream bytes as they are).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Collection

import defusedxml
import defusedxml.ElementTree as DET

from mirror.errors import MalformedMetadataError

__all__ = ["COMPS_HEADER", "MAX_COMPS_SIZE", "reduce_comps"]

#: Decompressed size a comps file may have to be parsed (Fedora's, the largest known, is ~10 MB).
MAX_COMPS_SIZE = 64 * 1024 * 1024
COMPS_HEADER = ('<?xml version="1.0" encoding="UTF-8"?>\n'
                '<!DOCTYPE comps PUBLIC "-//Red Hat, Inc.//DTD Comps info//EN" "comps.dtd">\n')


def parse_comps(data: bytes, *, what: str) -> ET.Element:
    """The `<comps>` root of `data`; a DOCTYPE is allowed, entities and external references not."""
    try:
        root = DET.fromstring(data, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except defusedxml.EntitiesForbidden as exc:
        raise MalformedMetadataError(f"declares an XML entity ({exc.name!r}): refused, nothing expanded",
                                     path=what) from None
    except defusedxml.DefusedXmlException as exc:
        raise MalformedMetadataError(f"refused: {exc}", path=what) from None
    except ET.ParseError as exc:
        raise MalformedMetadataError(f"is not well-formed XML: {exc}", path=what) from None
    if root.tag != "comps":
        raise MalformedMetadataError(f"is not a comps document (root element <{root.tag[:100]}>)", path=what)
    return root


def _text(element: ET.Element | None) -> str:
    return (element.text or "").strip() if element is not None else ""


def _remove(parent: ET.Element, child: ET.Element) -> None:
    """Remove `child`, keeping the indentation of what follows it."""
    kids = list(parent)
    index = kids.index(child)
    if index == len(kids) - 1:
        if index > 0:
            kids[index - 1].tail = child.tail
        else:
            parent.text = child.tail
    parent.remove(child)


def reduce_comps(data: bytes, keep: Collection[str], *, what: str,
                 listed: Collection[str] | None = None) -> bytes | None:
    """`data` (a comps.xml) with the packages not in `keep` (names) dropped, those not in
    `listed` (the upstream repo's names, if given) excepted, as described in the module
    documentation; None when it names no dropped package."""
    root = parse_comps(data, what=what)

    def dropped(name: str) -> bool:
        return name not in keep and (listed is None or name in listed)

    changed = False
    dropped_groups: set[str] = set()
    for group in root.findall("group"):
        reqs = [req for lst in group.findall("packagelist") for req in lst.findall("packagereq")]
        gone = [req for req in reqs if dropped(_text(req))]
        if not gone:
            continue
        changed = True
        if len(gone) == len(reqs):
            dropped_groups.add(_text(group.find("id")))
            _remove(root, group)
            continue
        gone_ids = {id(req) for req in gone}
        for lst in group.findall("packagelist"):
            for req in lst.findall("packagereq"):
                if id(req) in gone_ids:
                    _remove(lst, req)
    if dropped_groups:
        for holder in (*root.findall("environment"), *root.findall("category")):
            for lst in (*holder.findall("grouplist"), *holder.findall("optionlist")):
                for ref in lst.findall("groupid"):
                    if _text(ref) in dropped_groups:
                        _remove(lst, ref)
    if not changed:
        return None
    return (COMPS_HEADER + ET.tostring(root, encoding="unicode") + "\n").encode("utf-8")
