"""Release files the mirror re-issues for tiers of APT repos with `tier_signing = "mirror"`.

apt refuses an InRelease whose `Valid-Until` has passed and silently ignores one whose `Date` is
older than the one it already has. So for every tier and suite, the mirror serves its own
`Release`, `InRelease` and `Release.gpg`: the upstream's verified Release text with a fresh
`Date` and a `Valid-Until` of `[signing] valid_for` from then (an upstream `Signed-By` field is
dropped: it would pin the upstream's key), every other field and every hash list byte for byte, so
the index files and packages are exactly the verified ones. They are signed with the mirror's key
(`mirror.signing`) and stored as pool blobs plus one `tier_releases` row per issue.

The upstream text comes from the snapshot itself: its `Release` when it has one (verified with its
detached signature at sync), else the signed payload of its `InRelease`, cut out of the clearsigned
file exactly as sync verified it (the blob is re-hashed against the manifest first). Nothing
depends on the upstream key still being valid, so an old snapshot can always be served again.

An issue is due when a tier points at a snapshot with no issue since the tier's last move (a
promotion, rollback or a new snapshot landing), or when less than half the validity is left. Each
issue of a tier is dated strictly later than the tier's previous one, so a rollback always
reaches clients that saw the newer snapshot. `mirror serve` issues what is due in the
background (and right after a move through the API); `mirror promote`, `mirror rollback` and
`mirror sync` do it too when they move a tier. Under `/snapshots/` the upstream's own files are
served byte for byte.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mirror.config import RepoSettings, Settings
from mirror.errors import MalformedMetadataError, MirrorError, StorageError
from mirror.formats.deb import Release, parse_release
from mirror.model import EntryKind, utcnow
from mirror.pool import Pool, file_sha256
from mirror.signing import MirrorSigner
from mirror.store import Store, TierRelease
from mirror.trust.gpg import clearsigned_payload as clearsigned_payload  # (re-exported: it was here)

log = logging.getLogger(__name__)

HASH_SECTIONS = frozenset({"md5sum", "sha1", "sha256", "sha512"})
_REPLACED = frozenset({"date", "valid-until", "signed-by"})
_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def release_date(moment: datetime) -> str:
    """RFC 1123 in UTC, as Debian writes it (`Sat, 27 Nov 2026 10:00:00 UTC`), locale-free."""
    m = moment.astimezone(UTC)
    return (f"{_WEEKDAYS[m.weekday()]}, {m.day:02d} {_MONTHS[m.month - 1]} {m.year:04d} "
            f"{m.hour:02d}:{m.minute:02d}:{m.second:02d} UTC")


def reissue_release(payload: bytes, *, date: datetime, valid_until: datetime) -> bytes:
    """The upstream Release text with `Date` and `Valid-Until` set (where `Date` was, else before
    the hash lists) and `Signed-By` dropped; every other line as it was."""
    lines = payload.decode("utf-8").replace("\r\n", "\n").rstrip("\n").split("\n")
    fresh = [f"Date: {release_date(date)}", f"Valid-Until: {release_date(valid_until)}"]
    out: list[str] = []
    placed = skipping = False
    for line in lines:
        if line[:1] in (" ", "\t"):
            if not skipping:
                out.append(line)
            continue
        name = line.split(":", 1)[0].strip().lower()
        skipping = name in _REPLACED
        if not placed and (name == "date" or name in HASH_SECTIONS):
            out.extend(fresh)
            placed = True
        if not skipping:
            out.append(line)
    if not placed:
        out.extend(fresh)
    return ("\n".join(out) + "\n").encode("utf-8")


def _floor(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(microsecond=0)


@contextmanager
def pool_lock(root: Path, *, exclusive: bool, wait: float = 60.0) -> Iterator[bool]:
    """The pool's writers-versus-gc lock: writers that record blobs outside a repo lock (the
    Release issuer) hold it shared; gc's sweep holds it exclusive. Yields whether it was taken
    (False only when `wait` ran out)."""
    import fcntl
    import os

    locks = root / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    fd = os.open(locks / "pool.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                taken = True
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    taken = False
                    break
                time.sleep(0.05)
        yield taken
    finally:
        os.close(fd)


@dataclass(frozen=True)
class _Prepared:
    suite: str
    release: bytes
    inrelease: bytes
    release_gpg: bytes


class ReleaseIssuer:
    """Issues the Release files of the tiers of every repo with `tier_signing = "mirror"`.

    Thread-safe (one issue at a time); blocking (gpg, files, the database): async callers use
    `asyncio.to_thread`. `clock` and `sleep` are injectable for tests."""

    def __init__(self, settings: Settings, store: Store, signer: MirrorSigner, *,
                 clock: Callable[[], datetime] = utcnow, sleep: Callable[[float], None] = time.sleep) -> None:
        if settings.signing is None:
            raise ValueError("re-issuing Release files needs [signing]")
        self.settings = settings
        self.store = store
        self.signer = signer
        self.clock = clock
        self.sleep = sleep
        self.valid_for = timedelta(seconds=settings.signing.valid_for)
        self.repos: tuple[RepoSettings, ...] = tuple(
            r for r in settings.repos if r.type == "deb" and r.tier_signing == "mirror")
        self.pool = Pool(settings.storage.root)
        self._lock = threading.Lock()

    @classmethod
    def for_settings(cls, settings: Settings, store: Store) -> ReleaseIssuer | None:
        """An issuer when some repo has tier_signing "mirror" (the key is checked), else None."""
        if settings.signing is None or not any(
                r.type == "deb" and r.tier_signing == "mirror" for r in settings.repos):
            return None
        return cls(settings, store, MirrorSigner.load(settings.signing.gnupghome, settings.signing.key))

    def signs(self, repo: str) -> bool:
        return any(r.name == repo for r in self.repos)

    # -- what is due ---------------------------------------------------------------------------

    def due(self) -> list[tuple[str, str]]:
        """(repo, tier) pairs whose served Release files are missing, stale or half expired."""
        now = self.clock()
        latest = {(r.repo, r.tier, r.suite, r.snapshot): r for r in self.store.tier_releases()}
        due: list[tuple[str, str]] = []
        for repo in self.repos:
            states = self.store.tiers(repo.name)
            for tier in self.settings.tiers:
                state = states.get(tier)
                if state is None or state.snapshot is None:
                    continue
                for suite in sorted(self.store.roots(repo.name, state.snapshot)):
                    row = latest.get((repo.name, tier, suite, state.snapshot))
                    if row is None or row.issued < state.since or row.valid_until - now < self.valid_for / 2:
                        due.append((repo.name, tier))
                        break
        return due

    def issue_due(self) -> tuple[list[tuple[str, str]], list[tuple[str, str, MirrorError]]]:
        """Issue whatever is due; (issued, failed with the error). Never raises for one tier."""
        issued: list[tuple[str, str]] = []
        failed: list[tuple[str, str, MirrorError]] = []
        for repo, tier in self.due():
            try:
                self.issue(repo, tier)
                issued.append((repo, tier))
            except MirrorError as exc:
                log.error("%s %s: cannot re-issue the Release files: %s", repo, tier, exc)
                failed.append((repo, tier, exc))
            except OSError as exc:
                log.error("%s %s: cannot re-issue the Release files: %s", repo, tier, exc)
                failed.append((repo, tier, StorageError(str(exc), repo=repo)))
        return issued, failed

    # -- issuing -------------------------------------------------------------------------------

    def issue(self, repo: str, tier: str) -> list[TierRelease]:
        """Re-issue every suite of what `tier` of `repo` serves now; the new rows (none if the
        tier serves nothing)."""
        if not self.signs(repo):
            raise MirrorError(f"repo {repo} does not have tier_signing = \"mirror\"", repo=repo)
        with self._lock:
            snapshot = self.store.tier_snapshot(repo, tier)
            if snapshot is None:
                return []
            suites = sorted(self.store.roots(repo, snapshot))
            if not suites:
                raise MalformedMetadataError(f"snapshot {snapshot} records no suite", repo=repo)
            date = self._next_date(repo, tier)
            valid_until = date + self.valid_for
            prepared = [self._prepare(repo, snapshot, suite, date, valid_until) for suite in suites]
            return self._store(repo, tier, snapshot, prepared, issued=self.clock(), date=date,
                               valid_until=valid_until)

    def _next_date(self, repo: str, tier: str) -> datetime:
        """Now, to the second, and strictly after every Date this tier was issued with before."""
        last = max((_floor(r.issued) for r in self.store.tier_releases(repo, latest=False) if r.tier == tier),
                   default=None)
        moment = self.clock()
        if last is not None and _floor(moment) <= last:
            self.sleep(max(0.0, (last + timedelta(seconds=1) - moment).total_seconds()) + 0.001)
            moment = self.clock()
            return max(_floor(moment), last + timedelta(seconds=1))
        return _floor(moment)

    def _read_blob(self, repo: str, snapshot: str, path: str) -> bytes | None:
        entry = self.store.manifest_entry(repo, snapshot, path)
        if entry is None or entry.kind is not EntryKind.ROOT:
            return None
        blob = self.pool.path_for(entry.sha256)
        try:
            data = blob.read_bytes()
        except OSError as exc:
            raise StorageError(f"pool file {blob}: {exc.strerror}", repo=repo, path=path) from None
        if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
            raise StorageError(f"pool file {blob} does not match the digest snapshot {snapshot} recorded",
                               repo=repo, path=path)
        return data

    def upstream_release(self, repo: str, snapshot: str, suite: str) -> tuple[bytes, Release]:
        """The verified upstream Release text of `suite` in `snapshot`, and its parse."""
        base = f"dists/{suite}"
        payload = self._read_blob(repo, snapshot, f"{base}/Release")
        what = f"{base}/Release"
        if payload is None:
            what = f"{base}/InRelease"
            signed = self._read_blob(repo, snapshot, what)
            if signed is None:
                raise MalformedMetadataError(f"snapshot {snapshot} has neither InRelease nor Release",
                                             repo=repo, path=base)
            payload = clearsigned_payload(signed, what=what)
        try:
            release = parse_release(payload, what=what)
        except MirrorError as exc:
            raise exc.with_context(repo=repo, path=what) from None
        if suite not in (release.suite, release.codename):
            raise MalformedMetadataError(f"the Release is for suite {release.suite!r}, not {suite!r}",
                                         repo=repo, path=what)
        return payload, release

    def _prepare(self, repo: str, snapshot: str, suite: str, date: datetime,
                 valid_until: datetime) -> _Prepared:
        payload, upstream = self.upstream_release(repo, snapshot, suite)
        text = reissue_release(payload, date=date, valid_until=valid_until)
        what = f"dists/{suite}/Release (re-issued)"
        ours = parse_release(text, what=what)
        if (ours.date, ours.valid_until) != (date, valid_until) or dict(ours.files) != dict(upstream.files) \
                or (ours.suite, ours.codename) != (upstream.suite, upstream.codename):
            raise MalformedMetadataError("re-issued Release does not say what the upstream one said",
                                         repo=repo, path=what)
        inrelease = self.signer.clearsign(text)
        if clearsigned_payload(inrelease, what=what) != text:
            raise MalformedMetadataError("the signed InRelease does not carry the Release text", repo=repo,
                                         path=what)
        return _Prepared(suite, text, inrelease, self.signer.detach_sign(text))

    def _store(self, repo: str, tier: str, snapshot: str, prepared: list[_Prepared], *, issued: datetime,
               date: datetime, valid_until: datetime) -> list[TierRelease]:
        root = self.settings.storage.root
        self.pool.prepare()
        ids: list[int] = []
        with pool_lock(root, exclusive=False, wait=600.0) as taken:
            if not taken:
                raise StorageError("the pool is locked by a garbage collection", repo=repo)
            with tempfile.TemporaryDirectory(prefix=f"issue-{repo}.", dir=self.pool.tmp) as tmp:
                digests: list[tuple[tuple[str, int], tuple[str, int], tuple[str, int]]] = []
                for item in prepared:
                    files = []
                    for data, name in ((item.inrelease, "InRelease"), (item.release, "Release"),
                                       (item.release_gpg, "Release.gpg")):
                        digest = hashlib.sha256(data).hexdigest()
                        self.pool.ingest_bytes(data, digest, Path(tmp), what=f"dists/{item.suite}/{name}")
                        files.append((digest, len(data)))
                    digests.append((files[0], files[1], files[2]))
                self.pool.make_durable()  # the staged files move from `tmp` into the pool
            for item, (inrel, rel, gpg) in zip(prepared, digests, strict=True):
                if file_sha256(self.pool.path_for(inrel[0])) != inrel[0]:
                    raise StorageError("re-issued InRelease did not reach the pool intact", repo=repo)
                ids.append(self.store.record_tier_release(
                    repo, tier, item.suite, snapshot, issued=max(issued, date), valid_until=valid_until,
                    inrelease=inrel, release=rel, release_gpg=gpg))
        log.info("%s %s: re-issued Release files of %s for %s (Date %s, Valid-Until %s)", repo, tier,
                 ", ".join(p.suite for p in prepared), snapshot, release_date(date),
                 release_date(valid_until))
        rows = {r.id: r for r in self.store.tier_releases(repo, latest=False) if r.id in set(ids)}
        return [rows[i] for i in ids if i in rows]
