"""modules.yaml (the `modules` record: modulemd streams, defaults, obsoletes, ...) reduced to the
packages a filtered snapshot keeps.

Only a filtered snapshot parses modules.yaml; an unfiltered one mirrors it as an opaque, verified
blob. Before loading, the whole file is scanned (libyaml's event parser, constant memory) and a
file with any anchor or alias is refused (:class:`MalformedMetadataError`): modulemd files have
none, and aliases are how a YAML "billion laughs" is built. The caller caps the decompressed size
(:data:`MAX_MODULES_SIZE`). Documents are then loaded with PyYAML's safe loader (no tags beyond
plain YAML) and written back with its safe dumper.

Reduction (:func:`reduce_modules`): in every ``document: modulemd`` (v2; any version with
``data.artifacts``) ``artifacts.rpms`` (and ``artifacts.rpm-map``) keep only the NEVRAs
(``name-epoch:version-release.arch``) the snapshot keeps, except, when the caller says which
packages the upstream repo listed, those naming a package it never had (source RPMs in a binary
repo, packages of a sibling repo: the filter did not drop them); a stream the reduction changed
and left without any binary artifact (only source RPMs, or nothing) is dropped, and when no
stream of a module remains, that module's ``modulemd-defaults`` and ``modulemd-obsoletes``
documents are dropped too. Every other document (translations, streams that list no artifact
upstream, ...) is kept. Nothing to drop: ``None`` (the caller keeps the upstream bytes as they
are); no document left: ``b""`` (the caller leaves the record out: a repo without modules has
no `modules` record).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from mirror.errors import MalformedMetadataError

__all__ = ["MAX_MODULES_SIZE", "check_no_aliases", "nevra", "reduce_modules"]

#: Decompressed size a modules.yaml may have to be parsed (PyYAML holds it whole as objects:
#: ~10 times its size; the largest real ones, RHEL/CentOS AppStream, are a few MB).
MAX_MODULES_SIZE = 64 * 1024 * 1024

_Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper: type[Any] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
#: Documents tied to one module, dropped when none of its streams remains.
_PER_MODULE = ("modulemd-defaults", "modulemd-obsoletes")


def nevra(name: str, epoch: str | int | None, version: str, release: str, arch: str) -> str:
    """``name-epoch:version-release.arch`` as modulemd artifacts write it (epoch 0 spelled out)."""
    return f"{name}-{epoch or 0}:{version}-{release}.{arch}"


def _normal(artifact: object) -> str:
    """An artifact NEVRA with its epoch spelled out (``n-1.0-1.x86_64`` -> ``n-0:1.0-1.x86_64``)."""
    text = str(artifact)
    head, dot, arch = text.rpartition(".")
    rest, dash, release = head.rpartition("-")
    name, dash2, version = rest.rpartition("-")
    if not (dot and dash and dash2) or ":" in version:
        return text
    return f"{name}-0:{version}-{release}.{arch}"


def check_no_aliases(path: Path, *, what: str) -> None:
    """Refuse a YAML stream with any anchor or alias (an event scan: constant memory, nothing
    constructed)."""
    try:
        with path.open("rb") as f:
            for event in yaml.parse(f, Loader=_Loader):
                if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                    line = event.start_mark.line + 1 if event.start_mark is not None else "?"
                    raise MalformedMetadataError(
                        f"uses a YAML anchor or alias (line {line}): refused, nothing expanded", path=what)
    except yaml.YAMLError as exc:
        raise MalformedMetadataError(f"is not valid YAML: {str(exc)[:300]}", path=what) from None


def _load(path: Path, *, what: str) -> list[object]:
    check_no_aliases(path, what=what)
    try:
        with path.open("rb") as f:
            return [doc for doc in yaml.load_all(f, Loader=_Loader) if doc is not None]
    except yaml.YAMLError as exc:
        raise MalformedMetadataError(f"is not valid YAML: {str(exc)[:300]}", path=what) from None


def _data(doc: object) -> dict[str, Any] | None:
    data = doc.get("data") if isinstance(doc, dict) else None
    return data if isinstance(data, dict) else None


def _reduce_artifacts(data: dict[str, Any], dropped: Callable[[str], bool]) -> tuple[bool, bool]:
    """(anything dropped, the stream lost artifacts and has no binary one left)."""
    artifacts = data.get("artifacts")
    if not isinstance(artifacts, dict):
        return False, False
    changed = False
    emptied = False
    rpms = artifacts.get("rpms")
    if isinstance(rpms, list):
        left = [a for a in rpms if not dropped(_normal(a))]
        if len(left) != len(rpms):
            artifacts["rpms"] = left
            changed = True
            emptied = all(str(a).endswith((".src", ".nosrc")) for a in left)
    rpm_map = artifacts.get("rpm-map")
    if isinstance(rpm_map, dict):
        for digest, entries in list(rpm_map.items()):
            if not isinstance(entries, dict):
                continue
            for checksum, info in list(entries.items()):
                if isinstance(info, dict) and "nevra" in info and dropped(_normal(info["nevra"])):
                    del entries[checksum]
                    changed = True
            if not entries:
                del rpm_map[digest]
        if not rpm_map:
            del artifacts["rpm-map"]
    return changed, emptied


def reduce_modules(path: Path, keep: Iterable[str], *, what: str,
                   listed: Iterable[str] | None = None) -> bytes | None:
    """The modules.yaml at `path` (uncompressed, at most MAX_MODULES_SIZE bytes) reduced to the
    NEVRAs in `keep`, those not in `listed` (the upstream repo's, if given) excepted, as
    described in the module documentation; None when nothing is dropped."""
    wanted = {_normal(n) for n in keep}
    upstream = None if listed is None else {_normal(n) for n in listed}

    def dropped(artifact: str) -> bool:
        return artifact not in wanted and (upstream is None or artifact in upstream)

    docs = _load(path, what=what)
    changed = False
    present: set[str] = set()
    remaining: set[str] = set()
    out: list[object] = []
    for doc in docs:
        data = _data(doc)
        if data is None or not isinstance(doc, dict) or doc.get("document") != "modulemd":
            out.append(doc)
            continue
        name = str(data.get("name"))
        present.add(name)
        lost, emptied = _reduce_artifacts(data, dropped)
        changed = changed or lost
        if emptied:
            continue
        remaining.add(name)
        out.append(doc)
    gone = present - remaining
    if gone:
        before = len(out)
        out = [doc for doc in out
               if not (isinstance(doc, dict) and doc.get("document") in _PER_MODULE
                       and (data := _data(doc)) is not None and str(data.get("module")) in gone)]
        changed = changed or len(out) != before
    if not changed:
        return None
    if not out:
        return b""
    text: str = yaml.dump_all(out, Dumper=_Dumper, sort_keys=False, explicit_start=True, explicit_end=True,
                              allow_unicode=True, default_flow_style=False)
    return text.encode("utf-8")
