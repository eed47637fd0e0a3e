"""The RPM verification chain: repomd.xml + repomd.xml.asc -> every record -> packages.

repomd.xml is verified against the repo's pinned keys with the same status-line verdict as APT
and only the verified bytes are parsed. Every record repomd lists (primary, filelists, other,
updateinfo, modules, group, their zck variants, and any other type) is fetched against its size
and strong checksum (md5/sha1-only is refused) and served as upstream has it. Packages come from
primary (createrepo_c's streaming parser), each `location href` contained in the repo, and a
`location xml:base` pointing anywhere but the repo itself is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from mirror.errors import (
    ChecksumMismatchError,
    MalformedMetadataError,
    NotFoundUpstreamError,
    SignatureError,
    UnsafePathError,
    WeakDigestError,
)
from mirror.formats.compression import split_variant
from mirror.formats.rpm import (
    STRONG_CHECKSUMS,
    Repomd,
    RepomdRecord,
    RpmPackageEntry,
    decompress_record,
    parse_primary,
    parse_repomd,
)
from mirror.formats.updateinfo import load_updateinfo
from mirror.model import EntryKind, ExpectedFile, PackageKey, RootRecord
from mirror.repopath import contained
from mirror.sync import MAX_FAILURES_BEFORE_ABORT, SyncContext, VerifiedRoot, Wanted, in_order
from mirror.trust.rpmsig import PackageVerifier, SignatureChecks, database_path, keys_path

log = logging.getLogger(__name__)

REPOMD = "repodata/repomd.xml"
PROVEN = "verified-packages"


def _proven(dbpath: Path) -> set[str]:
    """Digests whose signature verified before against this key set (one per line, append-only)."""
    try:
        return set((dbpath / PROVEN).read_text().split())
    except FileNotFoundError:
        return set()


def _remember(dbpath: Path, digests: Sequence[str]) -> None:
    if digests:
        with (dbpath / PROVEN).open("a") as f:
            f.write("".join(f"{d}\n" for d in digests))


@dataclass(frozen=True)
class RpmRoot(VerifiedRoot):
    repomd: Repomd | None = None


class RpmFormat:
    def __init__(self) -> None:
        self._signatures: SignatureChecks | None = None  # with "require", from `plan` on

    async def fetch_roots(self, ctx: SyncContext) -> list[VerifiedRoot]:
        cap = ctx.settings.sync.max_root_file_size
        repomd_raw = await ctx.fetcher.fetch_bytes(ctx.url(REPOMD), cap=cap, what=REPOMD)
        try:
            signature = await ctx.fetcher.fetch_bytes(ctx.url(f"{REPOMD}.asc"), cap=cap, what=f"{REPOMD}.asc")
        except NotFoundUpstreamError:
            raise SignatureError("the repository metadata is not signed (no repomd.xml.asc): refused",
                                 repo=ctx.repo.name, path=f"{REPOMD}.asc") from None
        verified = await asyncio.to_thread(ctx.keyring.verify_detached, repomd_raw, signature,
                                           what=f"{REPOMD}.asc")
        repomd = await asyncio.to_thread(parse_repomd, verified.payload, what=REPOMD)
        newest = repomd.newest_timestamp
        record = RootRecord(
            name="repomd", sha256=hashlib.sha256(repomd_raw + b"\0" + signature).hexdigest(),
            date=datetime.fromtimestamp(newest, UTC) if newest is not None else None, valid_until=None,
            revision=repomd.revision)
        return [RpmRoot(record=record, files={REPOMD: repomd_raw, f"{REPOMD}.asc": signature}, repomd=repomd)]

    async def verify_fetched(self, ctx: SyncContext, wanted: Sequence[Wanted]) -> None:
        """With `package_signatures = "require"`, every package's RPM signature must verify against
        the repo's pinned keys; packages proven before for the same keys are not checked again."""
        if ctx.repo.package_signatures != "require" or not wanted:
            return
        checks = self._signatures or await self._start_signature_checks(ctx)
        # Most were submitted as they landed in the pool (`ctx.on_present`); this catches the rest.
        for w in {w.expected.sha256: w for w in wanted}.values():
            checks.submit(w.expected.path, w.expected.sha256)
        problems = await checks.finish()
        log.debug("%s: package signatures: %d accepted as they landed, %d checked after", ctx.repo.name,
                  checks.landed, len(checks.checked) - checks.landed)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            error = SignatureError(f"package signature check failed: {problems[0]}{more}", repo=ctx.repo.name)
            error.others = [SignatureError(f"package signature check failed: {p}", repo=ctx.repo.name)
                            for p in problems[1:MAX_FAILURES_BEFORE_ABORT]]
            raise error
        await asyncio.to_thread(_remember, (await checks.verifier).dbpath, checks.checked)

    async def _start_signature_checks(self, ctx: SyncContext) -> SignatureChecks:
        """Check package signatures while the packages download: each package the fetch stores
        (or finds in the pool) is queued for `rpmkeys` at once; `verify_fetched` waits for the end."""
        root = ctx.settings.storage.root / "rpmdb"
        proven = await asyncio.to_thread(_proven, database_path(ctx.keyring, root))
        verifier = asyncio.ensure_future(asyncio.to_thread(PackageVerifier, ctx.keyring, root))
        checks = self._signatures = SignatureChecks(verifier, proven, ctx.pool.path_for, helpers=ctx.helpers)
        ctx.on_close.append(checks.aclose)

        # Each package is checked where it lands, while its bytes are in memory (in this process or
        # a download helper), once the verifier has written its certificates file; only what that
        # check did not accept is queued.
        ctx.landing_check_with = (str(keys_path(ctx.keyring, root)), tuple(sorted(ctx.keyring.pinned)))

        def present(expected: ExpectedFile) -> None:
            if expected.kind is EntryKind.PACKAGE:
                checks.submit(expected.path, expected.sha256, landed=expected.sha256 in ctx.landed)

        ctx.on_present = present
        ctx.reads_packages = True  # the checks read them by their staged names
        return checks

    async def plan(self, ctx: SyncContext, roots: Sequence[VerifiedRoot]) -> list[Wanted]:
        (root,) = roots
        assert isinstance(root, RpmRoot) and root.repomd is not None
        wanted: list[Wanted] = []
        primary: tuple[RepomdRecord, str] | None = None
        updateinfo: tuple[RepomdRecord, str] | None = None
        digests: dict[str, str] = {}
        records = root.repomd.records
        expected = [_record_expected(ctx, record) for record in records]
        for record, file, digest in zip(records, expected, await in_order([ctx.ingest(e) for e in expected]),
                                        strict=True):
            digests[record.type] = digest
            wanted.append(Wanted(_with_sha256(file, digest)))
            if record.type == "primary":
                primary = (record, digest)
            elif record.type == "updateinfo":
                updateinfo = (record, digest)
        if primary is None:
            raise MalformedMetadataError("repomd lists no primary record", repo=ctx.repo.name, path=REPOMD)
        if updateinfo is not None:  # parsed beside primary and, unless a filter needs it, the downloads
            ctx.meanwhile(_load_advisories(ctx, *updateinfo))
        entries = await _parse_primary(ctx, *primary)
        if ctx.repo.filtered:  # the mirror's own signed repodata replaces the upstream's
            from mirror.repodata import regenerate

            await ctx.settle()
            entries, wanted = await regenerate(ctx, root.repomd, digests, entries, root.files)
        packages = await _packages(ctx, entries)
        if ctx.repo.package_signatures == "require":
            await self._start_signature_checks(ctx)
        return wanted + packages


def _check_base(ctx: SyncContext, base: str | None, what: str) -> None:
    if base is None:
        return
    if base.rstrip("/") + "/" != ctx.repo.url:
        raise UnsafePathError(f"location xml:base {base[:200]!r} points outside the repo", repo=ctx.repo.name,
                              path=what)


def _digests(checksum_type: str, checksum: str, *, what: str) -> tuple[str, tuple[str, str] | None]:
    if checksum_type == "sha256":
        return checksum, None
    if checksum_type in STRONG_CHECKSUMS:
        return "", (checksum_type, checksum)
    raise WeakDigestError(f"only a {checksum_type or 'missing'} checksum is given; sha256 or sha512 is "
                          "required", path=what)


def _record_expected(ctx: SyncContext, record: RepomdRecord) -> ExpectedFile:
    what = f"{REPOMD} record {record.type!r}"
    _check_base(ctx, record.base, what)
    path = contained(record.href, what=what)
    if record.size is None:
        raise MalformedMetadataError(f"record {record.type!r} has no size", repo=ctx.repo.name, path=REPOMD)
    try:
        sha256, alt = _digests(record.checksum_type, record.checksum, what=path)
    except WeakDigestError as exc:
        raise exc.with_context(repo=ctx.repo.name) from None
    return ExpectedFile(path, record.size, sha256, EntryKind.INDEX, alt=alt)


def _with_sha256(expected: ExpectedFile, digest: str) -> ExpectedFile:
    from dataclasses import replace

    return replace(expected, sha256=digest, alt=None) if expected.sha256 != digest else expected


async def _parse_primary(ctx: SyncContext, record: RepomdRecord, digest: str) -> list[RpmPackageEntry]:
    path = contained(record.href)
    with tempfile.TemporaryDirectory(dir=ctx.tmp) as tmp:
        plain = Path(tmp) / "primary.xml"
        try:
            await asyncio.to_thread(decompress_record, ctx.pool.path_for(digest), record, plain,
                                    max_size=ctx.settings.sync.max_index_size, what=path)
        except MalformedMetadataError as exc:
            raise exc.with_context(repo=ctx.repo.name, path=path) from None
        if record.open_checksum and record.open_checksum_type in STRONG_CHECKSUMS:
            got = await asyncio.to_thread(_file_digest, plain, record.open_checksum_type)
            if got != record.open_checksum:
                raise ChecksumMismatchError("decompressed content does not match the open-checksum "
                                            "repomd gives", repo=ctx.repo.name, path=path)
        try:
            return await asyncio.to_thread(parse_primary, plain, what=path)
        except MalformedMetadataError as exc:
            raise exc.with_context(repo=ctx.repo.name, path=path) from None


async def _load_advisories(ctx: SyncContext, record: RepomdRecord, digest: str) -> None:
    """`ctx.advisories`: those of an updateinfo record whose checksum verified (malformed: the
    sync fails)."""
    path = contained(record.href)
    cap = record.open_cap(ctx.settings.sync.max_index_size)
    try:
        ctx.advisories = await asyncio.to_thread(load_updateinfo, ctx.pool.path_for(digest),
                                                 split_variant(path)[1], cap=cap, what=path, tmp_dir=ctx.tmp)
    except MalformedMetadataError as exc:
        raise exc.with_context(repo=ctx.repo.name, path=path) from None


def _file_digest(path: Path, algo: str) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, algo).hexdigest()


async def _packages(ctx: SyncContext, entries: list[RpmPackageEntry]) -> list[Wanted]:
    out: list[Wanted] = []
    alt_only: list[tuple[ExpectedFile, PackageKey]] = []
    primary = "repodata primary.xml"
    for e in entries:
        what = f"{primary}: package {e.name}-{e.evr}.{e.arch}"
        _check_base(ctx, e.base, what)
        path = contained(e.href, what=what)
        try:
            sha256, alt = _digests(e.checksum_type, e.checksum, what=path)
        except WeakDigestError as exc:
            raise exc.with_context(repo=ctx.repo.name) from None
        key = PackageKey(e.name, e.arch, e.evr)
        expected = ExpectedFile(path, e.size, sha256, alt=alt)
        if sha256:
            out.append(Wanted(expected, key))
        else:
            alt_only.append((expected, key))
    # Packages given only a sha512 (etc.) are fetched now: their pool name is known only afterwards.
    digests = await asyncio.gather(*(ctx.ingest(e) for e, _ in alt_only))
    out.extend(Wanted(_with_sha256(e, d), k) for (e, k), d in zip(alt_only, digests, strict=True))
    return out
