"""Metadata the mirror regenerates for a filtered APT snapshot, signed with the mirror's key.

A filtered repo (mirror.filters; with `with_deps`, plus what the kept packages need from the same
suite, mirror.dependencies) cannot serve the upstream's signed files: they
list packages the snapshot does not have. For each suite the mirror writes instead:

- per component and architecture, a `Packages` (plain, gz, xz) holding exactly the kept
  paragraphs as the upstream wrote them, taken from the verified index;
- the verified Translation files, unchanged;
- a `Release` with the upstream's Origin, Label, Suite, Codename (and Description, Version), the
  mirrored Architectures and Components, a fresh Date, `Acquire-By-Hash: yes` and the SHA256 of
  every index above; `InRelease` and `Release.gpg` signed with the key in `[signing]`.

Everything goes into the pool and the manifest like any file (by-hash aliases included); the
snapshot is recorded `signed_by = "mirror"`.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import lzma
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from mirror.dependencies import PackageNeeds
from mirror.errors import ConfigError
from mirror.filters import PackageFilter, report_unresolved
from mirror.formats.deb import BinaryPackage, Release, package_needs, packages_paragraphs
from mirror.model import EntryKind, ExpectedFile
from mirror.releases import release_date
from mirror.signing import MirrorSigner
from mirror.sync import SyncContext, Wanted

_KEPT_FIELDS = ("Origin", "Label", "Suite", "Version", "Codename", "Changelogs", "Description")


def repo_filter(ctx: SyncContext) -> PackageFilter:
    repo = ctx.repo
    return PackageFilter(repo.type, repo.include, repo.exclude, repo.keep_newest, repo.package_architectures,
                         repo.versions, repo.with_deps, repo=repo.name)


def signer_for(ctx: SyncContext) -> MirrorSigner:
    signing = ctx.settings.signing
    if signing is None:
        raise ConfigError("package filters need [signing]: the filtered metadata is signed by the mirror",
                          repo=ctx.repo.name)
    return MirrorSigner.load(signing.gnupghome, signing.key)


def filter_suite(flt: PackageFilter, indices: Sequence[tuple[str, bytes]], *, suite: str,
                 notes: list[str] | None = None) -> list[tuple[list[BinaryPackage], bytes]]:
    """Blocking: `filter_packages` for every Packages index of a suite (`indices`: path and verified
    content, `.../binary-<arch>/Packages`), in order. With `with_deps`, what the kept packages
    need is resolved across the whole suite, one architecture at a time: a package in one
    component may need one in another (contrib on main), and `Architecture: all` packages (the
    `binary-all` index) count for every architecture."""
    if not flt.with_deps:
        return [filter_packages(flt, data, what=what, notes=notes) for what, data in indices]
    parsed = [(what, packages_paragraphs(data, what=what)) for what, data in indices]
    arch_of = [what.rsplit("/binary-", 1)[-1].split("/", 1)[0] for what, _ in parsed]
    archs = sorted({a for a in arch_of if a != "all"}) or ["all"]
    kept: list[set[int]] = [set() for _ in parsed]
    for arch in archs:
        members = [(n, i) for n, (_, pairs) in enumerate(parsed) if arch_of[n] in (arch, "all")
                   for i in range(len(pairs))]

        def pair(member: tuple[int, int]) -> tuple[BinaryPackage, bytes]:
            return parsed[member[0]][1][member[1]]

        def ident(member: tuple[int, int]) -> tuple[str, str, str]:
            p = pair(member)[0]
            return p.name, p.arch, p.version

        def needs(member: tuple[int, int]) -> PackageNeeds:
            p, text = pair(member)
            return package_needs(p, text, what=parsed[member[0]][0])

        selection = flt.select_with_deps(members, ident, needs)
        report_unresolved(flt, selection.unresolved, what=f"dists/{suite} ({arch})", notes=notes)
        for n, i in selection.kept:
            kept[n].add(i)
    out: list[tuple[list[BinaryPackage], bytes]] = []
    for (_, pairs), chosen in zip(parsed, kept, strict=True):
        rows = [pairs[i] for i in sorted(chosen)]
        text = b"\n\n".join(t for _, t in rows) + (b"\n" if rows else b"")
        out.append(([p for p, _ in rows], text))
    return out


def filter_packages(flt: PackageFilter, data: bytes, *, what: str,
                    notes: list[str] | None = None) -> tuple[list[BinaryPackage], bytes]:
    """Blocking: the kept packages of a verified Packages index and the new index text (their
    paragraphs). With `with_deps`, plus what they need from the same index (Depends, Pre-Depends,
    Provides; resolved by libsolv); needs nothing there provides are logged by name."""
    pairs = packages_paragraphs(data, what=what)

    def ident(pair: tuple[BinaryPackage, bytes]) -> tuple[str, str, str]:
        return pair[0].name, pair[0].arch, pair[0].version

    def needs(pair: tuple[BinaryPackage, bytes]) -> PackageNeeds:
        return package_needs(pair[0], pair[1], what=what)

    selection = flt.select_with_deps(pairs, ident, needs)
    report_unresolved(flt, selection.unresolved, what=what, notes=notes)
    kept = selection.kept
    text = b"\n\n".join(t for _, t in kept) + (b"\n" if kept else b"")
    return [p for p, _ in kept], text


def compressed_variants(text: bytes) -> dict[str, bytes]:
    """"" (plain), ".gz" and ".xz" of an index; gzip without a timestamp, so equal input, equal bytes."""
    return {"": text, ".gz": gzip.compress(text, compresslevel=9, mtime=0),
            ".xz": lzma.compress(text, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64)}


def release_text(upstream: Release, *, architectures: Sequence[str], components: Sequence[str],
                 files: Sequence[tuple[str, int, str]], date: datetime) -> bytes:
    """A Release for the regenerated suite; `files` are (path relative to the suite, size, sha256)."""
    lines = [f"{name}: {upstream.fields[name].strip()}" for name in _KEPT_FIELDS
             if name in upstream.fields and "\n" not in upstream.fields[name].strip()]
    lines += [f"Date: {release_date(date)}", "Acquire-By-Hash: yes",
              f"Architectures: {' '.join(architectures)}", f"Components: {' '.join(components)}", "SHA256:"]
    width = max((len(str(size)) for _, size, _ in files), default=1)
    lines += [f" {sha256} {size:>{width}} {path}" for path, size, sha256 in sorted(files)]
    return ("\n".join(lines) + "\n").encode("utf-8")


def _by_hash(path: str, sha256: str) -> str:
    directory = path.rsplit("/", 1)[0]
    return f"{directory}/by-hash/SHA256/{sha256}"


async def ingest_generated(ctx: SyncContext, path: str, data: bytes, *, by_hash: bool = True) -> Wanted:
    """Put a generated index into the pool; the Wanted naming it (with its APT by-hash alias)."""
    digest = hashlib.sha256(data).hexdigest()
    await asyncio.to_thread(ctx.pool.ingest_bytes, data, digest, ctx.tmp, what=path)
    aliases = (_by_hash(path, digest),) if by_hash else ()
    return Wanted(ExpectedFile(path, len(data), digest, EntryKind.INDEX), aliases=aliases)


async def generated_packages(ctx: SyncContext, path: str, text: bytes) -> list[Wanted]:
    """The Packages variants of one component/architecture, ingested."""
    variants = await asyncio.to_thread(compressed_variants, text)
    return [await ingest_generated(ctx, path + suffix, data) for suffix, data in variants.items()]


async def regenerate_suite(ctx: SyncContext, suite: str, release: Release, architectures: Sequence[str],
                           wanted: list[Wanted], root_files: dict[str, bytes]) -> list[Wanted]:
    """Write the suite's Release, InRelease and Release.gpg over the index files in `wanted`
    (replacing the upstream's root files in `root_files`); `wanted` with every index given its
    SHA256 by-hash alias (the new Release says Acquire-By-Hash)."""
    prefix = f"dists/{suite}/"
    files: list[tuple[str, int, str]] = []
    out: list[Wanted] = []
    for w in wanted:
        e = w.expected
        if e.kind is EntryKind.INDEX and e.path.startswith(prefix):
            files.append((e.path[len(prefix):], e.size, e.sha256))
            alias = _by_hash(e.path, e.sha256)
            if alias not in w.aliases:
                w = replace(w, aliases=(*w.aliases, alias))
        out.append(w)
    text = release_text(release, architectures=architectures, components=ctx.repo.components,
                        files=files, date=ctx.now)
    signer = await asyncio.to_thread(signer_for, ctx)
    inrelease, detached = await asyncio.gather(asyncio.to_thread(signer.clearsign, text),
                                               asyncio.to_thread(signer.detach_sign, text))
    root_files.clear()
    root_files[f"{prefix}Release"] = text
    root_files[f"{prefix}InRelease"] = inrelease
    root_files[f"{prefix}Release.gpg"] = detached
    return out
