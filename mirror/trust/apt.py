"""The APT verification chain: InRelease (or Release + Release.gpg) -> index files -> packages.

Only what gpg verified is parsed. Every index file comes with the size and SHA256 the signed
Release gives it (a Release with only MD5/SHA1 is refused); the best compressed variant is
decompressed under a cap and checked against the uncompressed entry when the Release lists one;
every package comes with the size and SHA256 its verified index gives it, at a contained path.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

from mirror.errors import (
    ChecksumMismatchError,
    MalformedMetadataError,
    MirrorError,
    NotFoundUpstreamError,
    SizeMismatchError,
    WeakDigestError,
)
from mirror.formats.compression import PREFERENCE, decompress_file, split_variant
from mirror.formats.deb import (
    BinaryPackage,
    Release,
    ReleaseFileEntry,
    parse_packages,
    parse_release,
    parse_sources,
)
from mirror.model import EntryKind, ExpectedFile, PackageKey, RootRecord
from mirror.repopath import contained, join
from mirror.sync import SyncContext, VerifiedRoot, Wanted

log = logging.getLogger(__name__)
BY_HASH_DIRS = {"sha256": "SHA256", "sha512": "SHA512", "sha1": "SHA1", "md5": "MD5Sum"}


@dataclass(frozen=True)
class AptRoot(VerifiedRoot):
    suite: str = ""
    release: Release | None = None


class AptFormat:
    async def fetch_roots(self, ctx: SyncContext) -> list[VerifiedRoot]:
        return list(await asyncio.gather(*(self._fetch_suite(ctx, s) for s in ctx.repo.suites)))

    async def _fetch_suite(self, ctx: SyncContext, suite: str) -> AptRoot:
        base = f"dists/{suite}"
        cap = ctx.settings.sync.max_root_file_size
        name = ctx.repo.name
        files: dict[str, bytes] = {}
        try:
            inrelease = await ctx.fetcher.fetch_bytes(ctx.url(f"{base}/InRelease"), cap=cap,
                                                      what=f"{base}/InRelease")
        except NotFoundUpstreamError:
            inrelease = None
        if inrelease is not None:
            what = f"{base}/InRelease"
            verified = await asyncio.to_thread(ctx.keyring.verify_clearsigned, inrelease, what=what)
            files[what] = inrelease
            digest = hashlib.sha256(inrelease).hexdigest()
        else:
            what = f"{base}/Release"
            release_raw, signature = await asyncio.gather(
                ctx.fetcher.fetch_bytes(ctx.url(what), cap=cap, what=what),
                ctx.fetcher.fetch_bytes(ctx.url(f"{what}.gpg"), cap=cap, what=f"{what}.gpg"))
            verified = await asyncio.to_thread(ctx.keyring.verify_detached, release_raw, signature,
                                               what=f"{what}.gpg")
            files[what] = release_raw
            files[f"{what}.gpg"] = signature
            digest = hashlib.sha256(release_raw + b"\0" + signature).hexdigest()
        try:
            release = await asyncio.to_thread(parse_release, verified.payload, what=what)
        except MirrorError as exc:
            raise exc.with_context(repo=name, path=what) from None
        if suite not in (release.suite, release.codename):
            raise MalformedMetadataError(
                f"wrong suite: asked for {suite!r}, the signed Release says Suite {release.suite!r}, "
                f"Codename {release.codename!r}", repo=name, path=what)
        record = RootRecord(name=suite, sha256=digest, date=release.date, valid_until=release.valid_until)
        return AptRoot(record=record, files=files, suite=suite, release=release)

    async def verify_fetched(self, ctx: SyncContext, wanted: Sequence[Wanted]) -> None:
        """APT packages carry no signatures of their own: the chain of digests covers them."""

    async def plan(self, ctx: SyncContext, roots: Sequence[VerifiedRoot]) -> list[Wanted]:
        wanted: list[Wanted] = []
        for root in roots:
            assert isinstance(root, AptRoot) and root.release is not None
            if ctx.repo.filtered:  # the mirror's own signed metadata replaces the upstream's root files
                from mirror.regenerate import regenerate_suite

                suite_wanted = await self._plan_suite(ctx, root.suite, root.release)
                wanted.extend(await regenerate_suite(ctx, root.suite, root.release,
                                                     _architectures(ctx, root.release), suite_wanted,
                                                     root.files))
                continue
            if f"dists/{root.suite}/InRelease" in root.files:
                await _add_detached_release(ctx, root)
            wanted.extend(await self._plan_suite(ctx, root.suite, root.release))
        return wanted

    async def _plan_suite(self, ctx: SyncContext, suite: str, release: Release) -> list[Wanted]:
        repo = ctx.repo
        what = f"dists/{suite}/Release"
        for comp in repo.components:
            if release.components and comp not in release.components:
                raise MalformedMetadataError(f"component {comp!r} is not in the signed Release "
                                             f"(it has {', '.join(release.components)})",
                                             repo=repo.name, path=what)
        for arch in repo.architectures:
            if release.architectures and arch not in release.architectures:
                raise MalformedMetadataError(f"architecture {arch!r} is not in the signed Release",
                                             repo=repo.name, path=what)
        archs = _architectures(ctx, release)
        for path in release.files:  # every entry, used or not: a signed Release naming `../x` is hostile
            contained(path, what=what)
        groups: dict[str, list[ReleaseFileEntry]] = {}
        for path, entry in release.files.items():
            groups.setdefault(split_variant(path)[0], []).append(entry)

        wanted: list[Wanted] = []
        for comp in repo.components:
            for arch in archs:
                base = f"{comp}/binary-{arch}/Packages"
                data = await _fetch_index(ctx, suite, release, groups.get(base), base,
                                          [] if repo.filtered else wanted, required=arch != "all")
                if data is not None and repo.filtered:
                    wanted.extend(await _filtered_packages(ctx, data, f"dists/{suite}/{base}"))
                elif data is not None:
                    wanted.extend(await asyncio.to_thread(_packages, data, f"dists/{suite}/{base}"))
            for lang in repo.languages:
                base = f"{comp}/i18n/Translation-{lang}"
                await _fetch_index(ctx, suite, release, groups.get(base), base, wanted, required=False,
                                   parse=False)
            if repo.sources:
                base = f"{comp}/source/Sources"
                data = await _fetch_index(ctx, suite, release, groups.get(base), base, wanted, required=True)
                assert data is not None
                wanted.extend(await asyncio.to_thread(_sources, data, f"dists/{suite}/{base}"))
        return wanted


async def _add_detached_release(ctx: SyncContext, root: AptRoot) -> None:
    """Mirror Release + Release.gpg beside InRelease when they verify and say the same thing."""
    what = f"dists/{root.suite}/Release"
    cap = ctx.settings.sync.max_root_file_size
    try:
        raw, sig = await asyncio.gather(ctx.fetcher.fetch_bytes(ctx.url(what), cap=cap, what=what),
                                        ctx.fetcher.fetch_bytes(ctx.url(f"{what}.gpg"), cap=cap,
                                                                what=f"{what}.gpg"))
        verified = await asyncio.to_thread(ctx.keyring.verify_detached, raw, sig, what=f"{what}.gpg")
        inline = await asyncio.to_thread(ctx.keyring.verify_clearsigned, root.files[f"{what[:-7]}InRelease"],
                                         what=f"{what[:-7]}InRelease")
    except MirrorError as exc:
        log.warning("%s: %s: not mirrored (InRelease is enough for apt): %s", ctx.repo.name, what, exc)
        return
    if verified.payload.rstrip(b"\n") != inline.payload.rstrip(b"\n"):
        log.warning("%s: %s differs from InRelease: not mirrored", ctx.repo.name, what)
        return
    root.files[what] = raw
    root.files[f"{what}.gpg"] = sig


def _expected(ctx: SyncContext, suite: str, release: Release, entry: ReleaseFileEntry) -> Wanted:
    path = f"dists/{suite}/{contained(entry.path, what=f'dists/{suite}/Release')}"
    if entry.sha256 is None:
        raise WeakDigestError("the signed Release gives only MD5/SHA1 for it; SHA256 is required",
                              repo=ctx.repo.name, path=path)
    directory = posixpath.dirname(path)
    aliases = tuple(f"{directory}/by-hash/{BY_HASH_DIRS[algo]}/{value}"
                    for algo in ("sha256", "sha512", "sha1", "md5")
                    if release.acquire_by_hash and (value := getattr(entry, algo)))
    fetch_path = f"{directory}/by-hash/SHA256/{entry.sha256}" if release.acquire_by_hash else None
    return Wanted(ExpectedFile(path, entry.size, entry.sha256, EntryKind.INDEX, fetch_path), aliases=aliases)


async def _fetch_index(ctx: SyncContext, suite: str, release: Release,
                       variants: list[ReleaseFileEntry] | None, base: str, wanted: list[Wanted],
                       *, required: bool, parse: bool = True) -> bytes | None:
    """Fetch every listed variant of one index; return the verified uncompressed content."""
    where = f"dists/{suite}/{base}"
    if not variants:
        if required:
            raise MalformedMetadataError("the signed Release does not list this index",
                                         repo=ctx.repo.name, path=where)
        return None
    by_kind = {split_variant(v.path)[1]: v for v in variants}
    items = {kind: _expected(ctx, suite, release, v) for kind, v in by_kind.items()}
    plain = items.get("plain")
    content: bytes | None = None
    done: set[str] = set()
    for kind in (k for k in PREFERENCE if k in items):
        if kind in done:
            continue
        item = items[kind]
        try:
            await _ingest_index(ctx, item)
        except NotFoundUpstreamError as exc:
            log.info("%s: %s", ctx.repo.name, exc)
            continue
        wanted.append(item)
        done.add(kind)
        if content is None and (parse or plain is not None):
            content = await _decompress(ctx, item, kind, plain)
            if plain is not None and kind != "plain":
                # The uncompressed index is verified by the Release's own digest: serve it too.
                await asyncio.to_thread(ctx.pool.ingest_bytes, content, plain.expected.sha256, ctx.tmp,
                                        what=plain.expected.path)
                wanted.append(plain)
                done.add("plain")
    if not done:
        raise NotFoundUpstreamError("no variant the signed Release lists could be fetched",
                                    repo=ctx.repo.name, path=where)
    return content


async def _ingest_index(ctx: SyncContext, item: Wanted) -> None:
    try:
        await ctx.ingest(item.expected)
    except NotFoundUpstreamError:
        fetch_path = item.expected.fetch_path
        if fetch_path is None:
            raise
        # by-hash missing upstream: the canonical name is checked against the same digest.
        from dataclasses import replace

        await ctx.ingest(replace(item.expected, fetch_path=None))


async def _decompress(ctx: SyncContext, item: Wanted, kind: str, plain: Wanted | None) -> bytes:
    e = item.expected
    cap = plain.expected.size if plain is not None else ctx.settings.sync.max_index_size
    data = await asyncio.to_thread(decompress_file, ctx.pool.path_for(e.sha256), kind, cap=cap, what=e.path)
    if plain is not None:
        p = plain.expected
        if len(data) != p.size:
            raise SizeMismatchError(f"decompresses to {len(data)} bytes, the signed Release says {p.size} "
                                    f"for {p.path}", repo=ctx.repo.name, path=e.path)
        if hashlib.sha256(data).hexdigest() != p.sha256:
            raise ChecksumMismatchError(f"decompressed content does not match the SHA256 the signed "
                                        f"Release gives {p.path}", repo=ctx.repo.name, path=e.path)
    return data


def _architectures(ctx: SyncContext, release: Release) -> list[str]:
    """The configured architectures, plus "all" when the signed Release has it."""
    archs = list(ctx.repo.architectures)
    if "all" in release.architectures and "all" not in archs:
        archs.append("all")
    return archs


async def _filtered_packages(ctx: SyncContext, data: bytes, what: str) -> list[Wanted]:
    """A filtered repo: the kept packages of a verified index, and its regenerated Packages files."""
    from mirror.regenerate import filter_packages, generated_packages, repo_filter

    try:
        kept, text = await asyncio.to_thread(filter_packages, repo_filter(ctx), data, what=what)
    except MirrorError as exc:
        raise exc.with_context(repo=ctx.repo.name, path=what) from None
    return _wanted_packages(kept, what) + await generated_packages(ctx, what, text)


def _packages(data: bytes, what: str) -> list[Wanted]:
    return _wanted_packages(parse_packages(data, what=what), what)


def _wanted_packages(packages: Sequence[BinaryPackage], what: str) -> list[Wanted]:
    out: list[Wanted] = []
    for p in packages:
        path = contained(p.filename, what=what)
        if p.sha256 is None:
            raise WeakDigestError(f"package {p.name} {p.version} has no SHA256 in the index", path=what)
        out.append(Wanted(ExpectedFile(path, p.size, p.sha256), PackageKey(p.name, p.arch, p.version)))
    return out


def _sources(data: bytes, what: str) -> list[Wanted]:
    out: list[Wanted] = []
    for s in parse_sources(data, what=what):
        directory = contained(s.directory, what=what)
        for name, size, sha256 in s.files:
            key = PackageKey(s.name, "source", s.version) if name.endswith(".dsc") else None
            out.append(Wanted(ExpectedFile(join(directory, name, what=what), size, sha256), key))
    return out
