"""RPM repodata the mirror regenerates for a filtered snapshot, signed with the mirror's key.

The filters (mirror.filters; with `with_deps`, mirror.dependencies over the dependencies the
verified primary lists) choose the kept entries before any package is fetched. From the verified
upstream primary, filelists and other (createrepo_c's iterator, which skips a
package the filter dropped without parsing it) the kept packages' records are written anew with
createrepo_c; updateinfo keeps the advisories that name a kept package; comps (`group`,
`group_gz`, ...) and modules.yaml (`modules`) are reduced to the kept packages when they name a
dropped one (mirror.formats.comps, mirror.formats.modulemd: rewritten with the compression the
upstream used, their zchunk variants left out), otherwise kept byte for byte; every other record
is kept as the upstream wrote it. Package-list records that would list dropped packages (the
sqlite databases, zchunk variants) are left out. A new repomd.xml lists them all and
`repomd.xml.asc` is the mirror key's detached signature of it.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from mirror.dependencies import PackageNeeds
from mirror.diff import Advisory
from mirror.errors import MalformedMetadataError, MirrorError
from mirror.filters import AdvisoryFilter, PackageFilter, report_unresolved
from mirror.formats.compression import decompress_to_file, split_variant
from mirror.formats.rpm import Repomd, RepomdRecord, RpmPackageEntry, decompress_record, parse_primary_needs
from mirror.repopath import contained
from mirror.sync import SyncContext, Wanted

#: Records about packages: regenerated (the first three, updateinfo) or dropped (their variants).
PACKAGE_RECORD_PREFIXES = ("primary", "filelists", "other", "updateinfo", "prestodelta", "deltainfo")
REGENERATED = ("primary", "filelists", "other")
#: Records reduced to the kept packages when they name a dropped one: family -> plain file name.
REDUCED = {"group": "comps.xml", "modules": "modules.yaml"}


def reduced_family(record_type: str) -> str | None:
    """"group" for `group`, `group_gz`, `group_xz`, ...; "modules" likewise; None otherwise."""
    return next((f for f in REDUCED if record_type == f or record_type.startswith(f + "_")), None)


def lists_packages(record_type: str) -> bool:
    return record_type.startswith(PACKAGE_RECORD_PREFIXES)


@dataclass(frozen=True)
class UpstreamRecord:
    record: RepomdRecord
    file: Path  # the verified upstream file (pool blob)


def kept_advisories(advisories: Sequence[Advisory], kept: Collection[RpmPackageEntry]) -> list[Advisory]:
    """The advisories naming at least one kept package (name, version, release, arch)."""
    have = {(p.name, p.version, p.release, p.arch) for p in kept}
    return [a for a in advisories if any((p.name, p.version, p.release, p.arch) in have for p in a.packages)]


async def regenerate(ctx: SyncContext, repomd: Repomd, digests: dict[str, str],
                     entries: list[RpmPackageEntry], root_files: dict[str, bytes],
                     ) -> tuple[list[RpmPackageEntry], list[Wanted]]:
    """Filter the verified entries and write the snapshot's repodata (replacing the upstream's
    root files in `root_files`); the kept entries and the regenerated metadata files, ingested."""
    from mirror.regenerate import ingest_generated, repo_filter, signer_for

    repo = ctx.repo
    advisory_filter = AdvisoryFilter(repo.advisory_types, repo.advisory_severities,
                                     repo.advisory_issued_before, repo.unadvised)
    allowed = advisory_filter.allowed(ctx.advisories) if advisory_filter.active else None
    scratch = Path(await asyncio.to_thread(tempfile.mkdtemp, dir=ctx.tmp))
    try:
        records: dict[str, UpstreamRecord] = {}
        for record in repomd.records:
            link = scratch / "upstream" / record.type / Path(contained(record.href)).name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(ctx.pool.path_for(digests[record.type]))
            records[record.type] = UpstreamRecord(record, link)
        for kind in ("filelists", "other"):  # primary was decompressed under a cap already
            if kind in records:
                try:
                    records[kind] = await asyncio.to_thread(
                        _decompressed, records[kind], scratch / "plain", ctx.settings.sync.max_index_size)
                except MirrorError as exc:
                    raise exc.with_context(repo=ctx.repo.name) from None
        notes: list[str] = []
        try:
            kept = await asyncio.to_thread(select_entries, repo_filter(ctx), entries, allowed,
                                           records.get("primary"), notes)
        except MirrorError as exc:
            raise exc.with_context(repo=ctx.repo.name) from None
        ctx.notes.extend(notes)
        advisory_ids = None
        if "updateinfo" in digests:
            ctx.advisories = kept_advisories(ctx.advisories, kept)
            advisory_ids = [a.id for a in ctx.advisories]
        try:
            files = await asyncio.to_thread(write_repodata, scratch / "out", kept=kept, listed=entries,
                                            records=records,
                                            advisory_ids=advisory_ids, revision=repomd.revision, tmp=scratch)
        except MirrorError as exc:
            raise exc.with_context(repo=ctx.repo.name) from None
    finally:
        await asyncio.to_thread(shutil.rmtree, scratch, True)
    repomd_xml = files.pop("repodata/repomd.xml")
    wanted = [await ingest_generated(ctx, path, data, by_hash=False) for path, data in files.items()]
    signer = await asyncio.to_thread(signer_for, ctx)
    signature = await asyncio.to_thread(signer.detach_sign, repomd_xml)
    root_files.clear()
    root_files["repodata/repomd.xml"] = repomd_xml
    root_files["repodata/repomd.xml.asc"] = signature
    return kept, wanted


def _decompressed(upstream: UpstreamRecord, scratch: Path, max_size: int) -> UpstreamRecord:
    """Blocking: the record's content decompressed into `scratch`, at most its open-size and
    `max_size` bytes, and exactly its open-size when repomd gives one: createrepo_c, given the
    compressed file, would decompress it without any cap (HOSTILE 39: a decompression bomb)."""
    what = contained(upstream.record.href)
    if split_variant(what)[1] == "plain":
        return upstream
    scratch.mkdir(parents=True, exist_ok=True)
    plain = scratch / f"{upstream.record.type}.xml"
    decompress_record(upstream.file, upstream.record, plain, max_size=max_size, what=what)
    return UpstreamRecord(upstream.record, plain)


def select_entries(flt: PackageFilter, entries: list[RpmPackageEntry],
                   allowed: Callable[[str, str, str], bool] | None,
                   primary: UpstreamRecord | None, notes: list[str] | None = None) -> list[RpmPackageEntry]:
    """Blocking: the entries the filters keep; with `with_deps`, plus what they need, read from the
    verified primary (Requires, Provides, files) and resolved by libsolv. Needs nothing in the repo
    provides are logged by name (see mirror.dependencies)."""
    def ident(e: RpmPackageEntry) -> tuple[str, str, str]:
        return e.name, e.arch, e.evr

    if not flt.with_deps:
        return flt.select(entries, ident, allowed)
    if primary is None:
        raise MalformedMetadataError("repomd lists no primary record", path="repodata/repomd.xml")
    what = primary.record.href
    found = parse_primary_needs(primary.file, what=what)

    def needs(e: RpmPackageEntry) -> PackageNeeds:
        try:
            return found[e.checksum]
        except KeyError:
            raise MalformedMetadataError(f"package {e.name} {e.evr} {e.arch} vanished between two reads",
                                         path=what) from None

    selection = flt.select_with_deps(entries, ident, needs, allowed)
    report_unresolved(flt, selection.unresolved, what=what, notes=notes)
    return selection.kept


def write_repodata(out: Path, *, kept: Collection[RpmPackageEntry], records: dict[str, UpstreamRecord],
                   advisory_ids: Collection[str] | None, revision: str | None,
                   tmp: Path, listed: Collection[RpmPackageEntry] | None = None) -> dict[str, bytes]:
    """Blocking: write the regenerated repodata; {repo-relative path: bytes}, repomd.xml last.
    `listed`: every package of the upstream primary (comps and modules.yaml keep what names a
    package the upstream repo never had); None: they keep only what names a kept package."""
    import createrepo_c as cr

    repodata = out / "repodata"
    repodata.mkdir(parents=True, exist_ok=True)
    wanted_ids = {p.checksum for p in kept}
    warnings: list[str] = []

    def newpkgcb(pkg_id: str, name: str, arch: str) -> cr.Package | None:
        return cr.Package() if (pkg_id or "").lower() in wanted_ids else None

    def warningcb(kind: int, message: str) -> bool:
        warnings.append(message)
        return True

    for kind in REGENERATED:
        if kind not in records:
            raise MalformedMetadataError(f"repomd lists no {kind} record: the filtered repodata needs it",
                                         path="repodata/repomd.xml")
    files = {kind: repodata / f"{kind}.xml.gz" for kind in REGENERATED}
    writers = (cr.PrimaryXmlFile(str(files["primary"]), cr.GZ_COMPRESSION),
               cr.FilelistsXmlFile(str(files["filelists"]), cr.GZ_COMPRESSION),
               cr.OtherXmlFile(str(files["other"]), cr.GZ_COMPRESSION))
    packages = []
    try:
        iterator = cr.PackageIterator(str(records["primary"].file), str(records["filelists"].file),
                                      str(records["other"].file), newpkgcb=newpkgcb, warningcb=warningcb)
        for pkg in iterator:
            pkg.location_base = None
            packages.append(pkg)
    except Exception as exc:  # createrepo_c raises its own error type for malformed XML
        raise MalformedMetadataError(f"cannot read the verified upstream repodata: {exc}",
                                     path="repodata") from None
    if warnings:
        raise MalformedMetadataError(f"parser warnings: {'; '.join(warnings[:3])}", path="repodata")
    for writer in writers:
        writer.set_num_of_pkgs(len(packages))
    for pkg in packages:
        for writer in writers:
            writer.add_pkg(pkg)
    for writer in writers:
        writer.close()

    repomd = cr.Repomd()
    if revision:
        repomd.set_revision(revision)
    result: dict[str, bytes] = {}

    def add(kind: str, path: Path, href: str | None = None, compression: int | None = None) -> None:
        rec = cr.RepomdRecord(kind, str(path))
        if compression is None:
            rec.fill(cr.SHA256)
        else:  # `path` is plain: its compressed copy (with open-checksum) is the record
            rec = rec.compress_and_fill(cr.SHA256, compression)
            rec.type = kind
        if href is None:
            rec.rename_file()
            final = Path(rec.location_real)
            href = f"repodata/{final.name}"
        else:
            final = path
        rec.location_href = href
        repomd.set_record(rec)
        result[href] = final.read_bytes()

    for kind, path in files.items():
        add(kind, path)
    if "updateinfo" in records and advisory_ids is not None:
        add("updateinfo", _reduced_updateinfo(records["updateinfo"].file, set(advisory_ids), repodata))
    rewritten = _reduced_records(records, kept, listed, tmp)
    for kind, upstream in records.items():
        if lists_packages(kind):
            continue
        family = reduced_family(kind)
        if family in rewritten:
            if kind.endswith("_zck") or not rewritten[family]:  # a zchunk variant of the upstream's
                continue  # content, or a modules.yaml with no document left: left out
            with tempfile.TemporaryDirectory(dir=tmp) as scratch:
                plain = Path(scratch) / REDUCED[family]
                plain.write_bytes(rewritten[family])
                compression = _CR_COMPRESSION[split_variant(upstream.record.href)[1]]
                add(kind, plain, compression=getattr(cr, compression) if compression else None)
            continue
        # As upstream: the same bytes under the same name (checksums recomputed over them).
        with tempfile.TemporaryDirectory(dir=tmp) as scratch:
            copy = Path(scratch) / Path(upstream.record.href).name
            shutil.copyfile(upstream.file, copy)
            add(kind, copy, upstream.record.href)
    repomd.sort_records()
    result["repodata/repomd.xml"] = repomd.xml_dump().encode("utf-8")
    return result


def _reduced_updateinfo(source: Path, keep: set[str], repodata: Path) -> Path:
    import createrepo_c as cr

    full = cr.UpdateInfo()
    try:
        cr.xml_parse_updateinfo(str(source), full)
    except Exception as exc:  # createrepo_c raises its own error type for malformed XML
        raise MalformedMetadataError(f"cannot read the verified upstream updateinfo: {exc}",
                                     path="repodata") from None
    reduced = cr.UpdateInfo()
    for update in full.updates:
        if update.id in keep:
            reduced.append(update)
    path = repodata / "updateinfo.xml.gz"
    out = cr.CrFile(str(path), cr.MODE_WRITE, cr.GZ_COMPRESSION)
    try:
        out.write(reduced.xml_dump())
    finally:
        out.close()
    return path


#: How a reduced record is written back, by the upstream file's compression (createrepo_c's
#: constant; it writes no LZMA-alone: xz instead).
_CR_COMPRESSION = {"plain": None, "gz": "GZ_COMPRESSION", "xz": "XZ_COMPRESSION", "lzma": "XZ_COMPRESSION",
                   "bz2": "BZ2_COMPRESSION", "zst": "ZSTD_COMPRESSION"}


def _reduced_records(records: dict[str, UpstreamRecord], kept: Collection[RpmPackageEntry],
                     listed: Collection[RpmPackageEntry] | None, tmp: Path) -> dict[str, bytes]:
    """Blocking: {family: new plain content} for the comps and modules records that name a
    dropped package (parsed only here, in a filtered snapshot; see mirror.formats.comps and
    mirror.formats.modulemd for the limits on what they may contain)."""
    from mirror.formats.comps import MAX_COMPS_SIZE, reduce_comps
    from mirror.formats.modulemd import MAX_MODULES_SIZE, nevra, reduce_modules

    out: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(dir=tmp) as scratch:
        comps = _plain_source(records, "group", Path(scratch), cap=MAX_COMPS_SIZE)
        if comps is not None:
            path, what = comps
            names = {p.name for p in kept}
            listed_names = None if listed is None else {p.name for p in listed}
            reduced = reduce_comps(path.read_bytes(), names, what=what, listed=listed_names)
            if reduced is not None:
                out["group"] = reduced
        modules = _plain_source(records, "modules", Path(scratch), cap=MAX_MODULES_SIZE)
        if modules is not None:
            path, what = modules
            nevras = [nevra(p.name, p.epoch, p.version, p.release, p.arch) for p in kept]
            listed_nevras = None if listed is None else [
                nevra(p.name, p.epoch, p.version, p.release, p.arch) for p in listed]
            reduced = reduce_modules(path, nevras, what=what, listed=listed_nevras)
            if reduced is not None:
                out["modules"] = reduced
    return out


def _plain_source(records: dict[str, UpstreamRecord], family: str, scratch: Path,
                  *, cap: int) -> tuple[Path, str] | None:
    """The family's content decompressed (at most `cap` bytes) from its plain record if the
    upstream has one, else from a compressed one; with the upstream path, for messages."""
    members = [r for kind, r in records.items()
               if reduced_family(kind) == family and not kind.endswith("_zck")]
    if not members:
        return None
    upstream = min(members, key=lambda r: split_variant(r.record.href)[1] != "plain")
    what = contained(upstream.record.href)
    kind = split_variant(what)[1]
    plain = scratch / REDUCED[family]
    decompress_to_file(upstream.file, kind, plain, cap=cap, what=what)
    return plain, what
