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
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass

from mirror.errors import (
    ChecksumMismatchError,
    IdentityChangeError,
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
from mirror.sync import SyncContext, VerifiedRoot, Wanted, in_order
from mirror.trust.gpg import clearsigned_payload

log = logging.getLogger(__name__)
BY_HASH_DIRS = {"sha256": "SHA256", "sha512": "SHA512", "sha1": "SHA1", "md5": "MD5Sum"}
#: Release fields that say which archive and release this is (apt's `VerifyVendor` and
#: `--allow-releaseinfo-change` set; Version changes with every point release and is not here).
IDENTITY_FIELDS = ("Origin", "Label", "Suite", "Codename")


@dataclass(frozen=True)
class AptRoot(VerifiedRoot):
    suite: str = ""
    release: Release | None = None
    signed: bytes = b""  # the verified payload of the root file (InRelease's signed text)


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
        await _check_identity(ctx, suite, release, what)
        record = RootRecord(name=suite, sha256=digest, date=release.date, valid_until=release.valid_until)
        return AptRoot(record=record, files=files, suite=suite, release=release, signed=verified.payload)

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
            # Release + Release.gpg are checked while the indices are planned (gpg runs apart)
            if f"dists/{root.suite}/InRelease" in root.files:
                ctx.meanwhile(_add_detached_release(ctx, root))
            wanted.extend(await self._plan_suite(ctx, root.suite, root.release))
        await ctx.settle()  # the detached Release files join root.files before the sync stores them
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

        filtered: dict[int, tuple[str, bytes]] = {}  # a filtered repo's indices, filtered together below

        async def packages(base: str, required: bool, slot: int) -> list[Wanted]:
            found: list[Wanted] = []
            data = await _fetch_index(ctx, suite, release, groups.get(base), base,
                                      [] if repo.filtered else found, required=required)
            if data is not None and repo.filtered:
                filtered[slot] = (f"dists/{suite}/{base}", data)
            elif data is not None:
                found.extend(await asyncio.to_thread(_packages, data, f"dists/{suite}/{base}"))
            return found

        async def translation(base: str) -> list[Wanted]:
            found: list[Wanted] = []
            await _fetch_index(ctx, suite, release, groups.get(base), base, found, required=False,
                               parse=False)
            return found

        async def sources(base: str) -> list[Wanted]:
            found: list[Wanted] = []
            data = await _fetch_index(ctx, suite, release, groups.get(base), base, found, required=True)
            assert data is not None
            found.extend(await asyncio.to_thread(_sources, data, f"dists/{suite}/{base}"))
            return found

        jobs: list[Awaitable[list[Wanted]]] = []  # every index of the suite at once
        for comp in repo.components:
            jobs.extend(packages(f"{comp}/binary-{arch}/Packages", arch != "all", len(jobs) + i)
                        for i, arch in enumerate(archs))
            jobs.extend(translation(f"{comp}/i18n/Translation-{lang}") for lang in repo.languages)
            if repo.sources:
                jobs.append(sources(f"{comp}/source/Sources"))
        wanted = [w for found in await in_order(jobs) for w in found]
        if filtered:
            wanted.extend(await _filtered_packages(ctx, suite, [filtered[k] for k in sorted(filtered)]))
        return wanted


def identity(release: Release) -> dict[str, str | None]:
    """The identity fields of a Release (None: absent), values stripped."""
    return {f: (release.fields[f].strip() if f in release.fields else None) for f in IDENTITY_FIELDS}


def _accepted_identity(ctx: SyncContext, suite: str) -> tuple[str, dict[str, str | None]] | None:
    """The identity of `suite` in the last accepted snapshot (the one the freshness checks compare
    against), read from its verified root file in the pool; None when there is none. Blocking."""
    name = ctx.repo.name
    latest = ctx.store.latest_snapshot(name)
    if latest is None:
        return None
    for path in (f"dists/{suite}/Release", f"dists/{suite}/InRelease"):
        entry = ctx.store.manifest_entry(name, latest, path)
        if entry is None or entry.kind is not EntryKind.ROOT:
            continue
        try:
            data = ctx.pool.path_for(entry.sha256).read_bytes()
            if hashlib.sha256(data).hexdigest() != entry.sha256:
                raise ValueError("it does not match its recorded digest")
            payload = clearsigned_payload(data, what=path) if path.endswith("/InRelease") else data
            return latest, identity(parse_release(payload, what=path))
        except (OSError, ValueError, MirrorError) as exc:
            # Not an upstream's doing (the pool is ours): say so and go on; `mirror verify` finds it.
            note = (f"{path}: identity of snapshot {latest} unreadable ({exc}): Origin/Label/Suite/"
                    "Codename not compared")
            log.warning("%s: %s", name, note)
            ctx.notes.append(note)
            return None
    return None


async def _check_identity(ctx: SyncContext, suite: str, release: Release, what: str) -> None:
    """HOSTILE 35: a validly signed Release for another archive or release than the last accepted
    one (Origin, Label, Suite or Codename changed) is refused unless the operator accepts the
    change for this run (`mirror sync --accept-identity-change`, recorded in the run)."""
    accepted = await asyncio.to_thread(_accepted_identity, ctx, suite)
    if accepted is None:
        return
    snapshot, before = accepted
    now = identity(release)
    changes = [f"{f} changed from {before[f]!r} to {now[f]!r}" for f in IDENTITY_FIELDS
               if before[f] is not None and now[f] != before[f]]
    if not changes:
        return
    text = "; ".join(changes)
    if not ctx.accept_identity_change:
        raise IdentityChangeError(
            f"release identity changed since the last accepted snapshot {snapshot}: {text} "
            f"(if expected, accept it once with `mirror sync --accept-identity-change {ctx.repo.name}`)",
            repo=ctx.repo.name, path=what)
    note = f"{what}: identity change accepted (--accept-identity-change): {text}"
    log.warning("%s: %s", ctx.repo.name, note)
    ctx.notes.append(note)


async def _add_detached_release(ctx: SyncContext, root: AptRoot) -> None:
    """Mirror Release + Release.gpg beside InRelease when they verify and say the same thing."""
    what = f"dists/{root.suite}/Release"
    cap = ctx.settings.sync.max_root_file_size
    try:
        raw, sig = await asyncio.gather(ctx.fetcher.fetch_bytes(ctx.url(what), cap=cap, what=what),
                                        ctx.fetcher.fetch_bytes(ctx.url(f"{what}.gpg"), cap=cap,
                                                                what=f"{what}.gpg"))
        verified = await asyncio.to_thread(ctx.keyring.verify_detached, raw, sig, what=f"{what}.gpg")
    except MirrorError as exc:
        log.warning("%s: %s: not mirrored (InRelease is enough for apt): %s", ctx.repo.name, what, exc)
        return
    if verified.payload.rstrip(b"\n") != root.signed.rstrip(b"\n"):
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
    # the compressed variants are fetched at once; then each is taken in order of preference
    compressed = [k for k in PREFERENCE if k in items and k != "plain"]
    fetched = dict(zip(compressed, await asyncio.gather(
        *(_ingest_index(ctx, items[k]) for k in compressed), return_exceptions=True), strict=True))
    for kind in (k for k in PREFERENCE if k in items):
        if kind in done:
            continue
        item = items[kind]
        try:
            if kind == "plain":
                await _ingest_index(ctx, item)
            elif isinstance(failure := fetched[kind], BaseException):
                raise failure
        except NotFoundUpstreamError as exc:
            log.info("%s: %s", ctx.repo.name, exc)
            continue
        wanted.append(item)
        done.add(kind)
        if content is None and (parse or plain is not None):
            content = await _decompress(ctx, item, kind, plain)
            if plain is not None and kind != "plain":
                # The uncompressed index is verified by the Release's own digest: serve it too.
                # Not rewritten when recorded: a fresh, unflushed file renamed over an object a
                # tier serves could leave that name empty after a power loss (HOSTILE 57).
                if not await _recorded(ctx, plain.expected.sha256):
                    await asyncio.to_thread(ctx.pool.ingest_bytes, content, plain.expected.sha256, ctx.tmp,
                                            what=plain.expected.path)
                wanted.append(plain)
                done.add("plain")
    if not done:
        raise NotFoundUpstreamError("no variant the signed Release lists could be fetched",
                                    repo=ctx.repo.name, path=where)
    return content


async def _recorded(ctx: SyncContext, digest: str) -> bool:
    """Whether the database records `digest` (its pool file was flushed before that commit)."""
    if digest in ctx.recorded:
        return True
    if ctx.recorded_loaded:
        return False
    return bool(await asyncio.to_thread(ctx.store.recorded_blobs, (digest,)))


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


async def _filtered_packages(ctx: SyncContext, suite: str, indices: list[tuple[str, bytes]]) -> list[Wanted]:
    """A filtered repo: the kept packages of a suite's verified indices (with `with_deps`, resolved
    across them: mirror.regenerate.filter_suite), and their regenerated Packages files."""
    from mirror.regenerate import filter_suite, generated_packages, repo_filter

    try:
        notes: list[str] = []
        results = await asyncio.to_thread(filter_suite, repo_filter(ctx), indices, suite=suite, notes=notes)
        ctx.notes.extend(notes)
    except MirrorError as exc:
        raise exc.with_context(repo=ctx.repo.name, path=f"dists/{suite}/Release") from None
    out: list[Wanted] = []
    for (what, _), (kept, text) in zip(indices, results, strict=True):
        out.extend(_wanted_packages(kept, what))
        out.extend(await generated_packages(ctx, what, text))
    return out


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
