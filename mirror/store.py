"""The state database: snapshots, manifests, blobs, tier pointers, tier history and sync runs.

SQLite (WAL) is the embedded engine. The SQL stays portable to PostgreSQL: plain TEXT/INTEGER/
BIGINT columns, ISO-8601 UTC text for times, explicit ids instead of AUTOINCREMENT, no
SQLite-only syntax in the schema. The schema is versioned: `MIGRATIONS` is append-only, each
step applied once inside a transaction and recorded in `schema_migrations`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import mmap
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence, Set
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mirror.errors import NoSpaceError, NotFoundError, StorageError
from mirror.model import (
    EntryKind,
    ManifestEntry,
    PackageKey,
    RootRecord,
    Snapshot,
    parse_snapshot_id,
    snapshot_id_for,
    utcnow,
)

if TYPE_CHECKING:  # loaded where used: a no-op sync never needs mirror.diff
    from mirror.diff import Advisory
    from mirror.packageset import PackageSet, Row

MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (1, "initial schema", (
        """CREATE TABLE snapshots (
            repo TEXT NOT NULL, id TEXT NOT NULL, created TEXT NOT NULL, state TEXT NOT NULL,
            signed_by TEXT NOT NULL, packages INTEGER NOT NULL, bytes BIGINT NOT NULL,
            plan_key TEXT NOT NULL, sync_run INTEGER,
            PRIMARY KEY (repo, id))""",
        """CREATE TABLE snapshot_roots (
            repo TEXT NOT NULL, snapshot TEXT NOT NULL, name TEXT NOT NULL, sha256 TEXT NOT NULL,
            date TEXT, valid_until TEXT, revision TEXT,
            PRIMARY KEY (repo, snapshot, name))""",
        """CREATE TABLE manifest_entries (
            repo TEXT NOT NULL, snapshot TEXT NOT NULL, path TEXT NOT NULL, sha256 TEXT NOT NULL,
            size BIGINT NOT NULL, kind TEXT NOT NULL,
            pkg_name TEXT, pkg_arch TEXT, pkg_version TEXT,
            PRIMARY KEY (repo, snapshot, path))""",
        """CREATE TABLE blobs (sha256 TEXT PRIMARY KEY, size BIGINT NOT NULL, stored TEXT NOT NULL)""",
        """CREATE TABLE tiers (
            repo TEXT NOT NULL, tier TEXT NOT NULL, snapshot TEXT, since TEXT NOT NULL,
            PRIMARY KEY (repo, tier))""",
        """CREATE TABLE tier_moves (
            id INTEGER PRIMARY KEY, repo TEXT NOT NULL, tier TEXT NOT NULL, at TEXT NOT NULL,
            from_snapshot TEXT, to_snapshot TEXT, actor TEXT NOT NULL, reason TEXT,
            forced INTEGER NOT NULL DEFAULT 0, action TEXT NOT NULL)""",
        "CREATE INDEX tier_moves_repo_tier ON tier_moves (repo, tier, id)",
        """CREATE TABLE sync_runs (
            id INTEGER PRIMARY KEY, repo TEXT NOT NULL, started TEXT NOT NULL, finished TEXT,
            outcome TEXT NOT NULL, snapshot TEXT, error_code TEXT, message TEXT,
            files INTEGER NOT NULL DEFAULT 0, bytes BIGINT NOT NULL DEFAULT 0)""",
    )),
    (2, "tier history by time; who started a sync run", (
        # "what did each tier serve at T" and "what did a tier serve within the grace window"
        "CREATE INDEX tier_moves_repo_at ON tier_moves (repo, at)",
        "CREATE INDEX tier_moves_at ON tier_moves (at)",
        "ALTER TABLE sync_runs ADD COLUMN actor TEXT",
        "CREATE INDEX sync_runs_repo ON sync_runs (repo, id)",
    )),
    (3, "Release files the mirror re-issued and signed for tiers (tier_signing = mirror)", (
        # one row per issue: the three files are pool blobs (also recorded in `blobs`)
        """CREATE TABLE tier_releases (
            id INTEGER PRIMARY KEY, repo TEXT NOT NULL, tier TEXT NOT NULL, suite TEXT NOT NULL,
            snapshot TEXT NOT NULL, issued TEXT NOT NULL, valid_until TEXT NOT NULL,
            inrelease_sha256 TEXT NOT NULL, release_sha256 TEXT NOT NULL, releasegpg_sha256 TEXT NOT NULL)""",
        "CREATE INDEX tier_releases_key ON tier_releases (repo, tier, suite, snapshot, id)",
    )),
    (4, "the last `mirror verify` result per repo, and the damage it found", (
        """CREATE TABLE verify_results (
            repo TEXT NOT NULL PRIMARY KEY, started TEXT NOT NULL, finished TEXT NOT NULL,
            files INTEGER NOT NULL, bytes BIGINT NOT NULL, damaged INTEGER NOT NULL,
            repaired INTEGER NOT NULL, repair_tried INTEGER NOT NULL)""",
        """CREATE TABLE verify_damage (
            repo TEXT NOT NULL, snapshot TEXT NOT NULL, sha256 TEXT NOT NULL, path TEXT NOT NULL,
            problem TEXT NOT NULL, repaired INTEGER NOT NULL,
            PRIMARY KEY (repo, snapshot, sha256))""",
    )),
    (5, "package sets per snapshot (for diffs) and advisories (updateinfo)", (
        # one PackageSet blob per snapshot (mirror.packageset.PackageSet.to_blob) and the sha256 of its
        # sorted lines: equal digests, equal package sets. Snapshots from before: filled lazily.
        """CREATE TABLE snapshot_packages (
            repo TEXT NOT NULL, snapshot TEXT NOT NULL, packages BLOB NOT NULL, digest TEXT NOT NULL,
            PRIMARY KEY (repo, snapshot))""",
        # content-addressed: one row per distinct advisory text, shared by every snapshot listing it
        """CREATE TABLE advisories (
            id INTEGER PRIMARY KEY, digest TEXT NOT NULL UNIQUE, advisory_id TEXT NOT NULL,
            source TEXT NOT NULL, type TEXT NOT NULL, severity TEXT NOT NULL, title TEXT NOT NULL,
            issued TEXT, updated TEXT, status TEXT NOT NULL, description TEXT NOT NULL,
            references_json TEXT NOT NULL)""",
        """CREATE TABLE advisory_cves (
            advisory INTEGER NOT NULL, cve TEXT NOT NULL, PRIMARY KEY (advisory, cve))""",
        "CREATE INDEX advisory_cves_cve ON advisory_cves (cve)",
        """CREATE TABLE advisory_packages (
            advisory INTEGER NOT NULL, name TEXT NOT NULL, arch TEXT NOT NULL, epoch TEXT NOT NULL,
            version TEXT NOT NULL, release TEXT NOT NULL, evr TEXT NOT NULL, filename TEXT NOT NULL,
            PRIMARY KEY (advisory, name, arch, evr))""",
        "CREATE INDEX advisory_packages_name ON advisory_packages (name, arch)",
        """CREATE TABLE snapshot_advisories (
            repo TEXT NOT NULL, snapshot TEXT NOT NULL, advisory INTEGER NOT NULL,
            PRIMARY KEY (repo, snapshot, advisory))""",
        "CREATE INDEX snapshot_advisories_advisory ON snapshot_advisories (advisory)",
    )),
    (6, "deleted snapshots: an append-only audit of `mirror snapshots delete` (HOSTILE 73)", (
        # one row per deletion, never updated nor deleted; the snapshot's other rows are gone
        """CREATE TABLE snapshot_deletions (
            id INTEGER PRIMARY KEY, repo TEXT NOT NULL, snapshot TEXT NOT NULL, at TEXT NOT NULL,
            actor TEXT NOT NULL, reason TEXT, created TEXT NOT NULL, packages INTEGER NOT NULL,
            bytes BIGINT NOT NULL)""",
        "CREATE INDEX snapshot_deletions_repo ON snapshot_deletions (repo, id)",
    )),
)


F = TypeVar("F", bound=Callable[..., Any])


def _locked(method: F) -> F:
    """One connection is shared by the threads a sync uses: one statement sequence at a time."""
    @functools.wraps(method)
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            try:
                return method(self, *args, **kwargs)
            except sqlite3.Error as exc:
                raise database_error(exc, self.path) from exc
    return wrapper  # type: ignore[return-value]


def database_error(exc: sqlite3.Error, path: Path) -> StorageError:
    """A database failure as a MirrorError: `no_space` when the disk is full, else `storage_error`."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL or (code is not None and code & 0xFF == sqlite3.SQLITE_IOERR
                                       and _no_space_left(path)):
        return NoSpaceError(f"no space left on device for the state database {path} ({exc})")
    return StorageError(f"state database {path}: {exc}")


def _no_space_left(path: Path) -> bool:
    """SQLite reports ENOSPC on its WAL index (-shm) as a plain "disk I/O error"."""
    import os

    try:
        return os.statvfs(path.parent).f_bavail == 0
    except OSError:
        return False


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass(frozen=True)
class TierState:
    snapshot: str | None
    since: datetime


@dataclass(frozen=True)
class TierMove:
    """One row of a tier's history: who pointed `tier` of `repo` from what to what, when and why."""

    id: int
    repo: str
    tier: str
    at: datetime
    from_snapshot: str | None
    to_snapshot: str | None
    actor: str
    reason: str | None
    forced: bool
    action: str  # "sync" | "promote" | "rollback"


@dataclass(frozen=True)
class ServedSnapshot:
    """What a tier points at, for the metrics: the snapshot's age and its roots' Valid-Until."""

    repo: str
    tier: str
    snapshot: str
    since: datetime
    created: datetime
    valid_until: datetime | None
    # tier_signing "mirror": the earliest Valid-Until of the Release files re-issued for this tier
    # and snapshot (what its clients see instead of `valid_until`); None when none were issued
    issued_valid_until: datetime | None = None


@dataclass(frozen=True)
class TierRelease:
    """Release, InRelease and Release.gpg of one suite, re-issued for a tier over one snapshot."""

    id: int
    repo: str
    tier: str
    suite: str
    snapshot: str
    issued: datetime  # when it was signed; the Release's Date is this, to the second
    valid_until: datetime
    inrelease: tuple[str, int]  # (sha256, size) of the pool blobs
    release: tuple[str, int]
    release_gpg: tuple[str, int]

    def files(self) -> dict[str, tuple[str, int]]:
        """Repo path -> (sha256, size)."""
        base = f"dists/{self.suite}"
        return {f"{base}/InRelease": self.inrelease, f"{base}/Release": self.release,
                f"{base}/Release.gpg": self.release_gpg}


@dataclass(frozen=True)
class SyncStats:
    """Per repo, aggregated over the recorded sync runs (for the metrics)."""

    repo: str
    last_success: datetime | None
    last_duration: float | None
    files: int
    bytes: int
    failures: dict[str, int]
    running: int


@dataclass(frozen=True)
class SyncRunRecord:
    id: int
    repo: str
    started: datetime
    finished: datetime | None
    outcome: str
    snapshot: str | None
    error_code: str | None
    message: str | None
    files: int
    bytes: int
    actor: str | None = None


@dataclass(frozen=True)
class VerifyResult:
    """The last `mirror verify` of one repo: objects checked, still damaged, repaired."""

    repo: str
    started: datetime
    finished: datetime
    files: int = 0
    bytes: int = 0
    damaged: int = 0  # still damaged when the run ended
    repaired: int = 0
    repair_tried: bool = False


@dataclass(frozen=True)
class VerifyDamageRow:
    """One damaged object as one snapshot of a repo uses it (one of its paths)."""

    repo: str
    snapshot: str
    sha256: str
    path: str
    problem: str
    repaired: bool


@dataclass(frozen=True)
class NewSnapshot:
    """Everything a verified sync hands to the store, committed in one transaction."""

    repo: str
    signed_by: str
    plan_key: str
    roots: Sequence[RootRecord]
    entries: Sequence[ManifestEntry]
    sync_run: int | None = None
    advisories: Sequence[Advisory] = ()  # the snapshot's updateinfo (RPM), parsed
    #: With `sync_run`: the run ends with this snapshot, in the same transaction (outcome
    #: "snapshot"), having fetched this many files and bytes; None leaves the run open.
    run_files: int | None = None
    run_bytes: int = 0
    run_note: str | None = None


_MOVE_COLUMNS = "id, repo, tier, at, from_snapshot, to_snapshot, actor, reason, forced, action"


@dataclass(frozen=True)
class SnapshotDeletion:
    """One `mirror snapshots delete`: who deleted which snapshot, when and why (append-only)."""

    id: int
    repo: str
    snapshot: str
    at: datetime
    actor: str
    reason: str | None
    created: datetime  # the snapshot's own
    packages: int
    bytes: int


_DELETION_COLUMNS = "id, repo, snapshot, at, actor, reason, created, packages, bytes"


def _deletion(r: Sequence[Any]) -> SnapshotDeletion:
    return SnapshotDeletion(id=int(r[0]), repo=r[1], snapshot=r[2], at=datetime.fromisoformat(r[3]),
                            actor=r[4], reason=r[5], created=datetime.fromisoformat(r[6]), packages=int(r[7]),
                            bytes=int(r[8]))


def _move(r: Sequence[Any]) -> TierMove:
    return TierMove(id=r[0], repo=r[1], tier=r[2], at=datetime.fromisoformat(r[3]), from_snapshot=r[4],
                    to_snapshot=r[5], actor=r[6], reason=r[7], forced=bool(r[8]), action=r[9])


def package_set_digest(ps: PackageSet) -> str:
    """sha256 over a package set's sorted lines (``name<TAB>arch<TAB>version``, one a line)."""
    from mirror.packageset import row_line

    h = hashlib.sha256()
    for line in sorted(map(row_line, ps)):
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()


def advisory_digest(a: Advisory) -> str:
    """sha256 of an advisory's canonical JSON: its content address in the store."""
    doc = [a.id, a.source, a.type, a.severity, a.title, _iso(a.issued), _iso(a.updated), a.status,
           a.description, sorted(a.cves), [[r.type, r.id, r.href, r.title] for r in a.references],
           sorted([p.name, p.epoch, p.version, p.release, p.arch, p.filename] for p in a.packages)]
    return hashlib.sha256(json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


def _utc_text(moment: datetime) -> str:
    """A time as stored (ISO 8601, UTC): stored times compare as text."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


#: Bytes of one copy of SQLite's WAL-index header (iVersion, unused, iChange, isInit,
#: bigEndCksum, szPage, mxFrame, nPage, aFrameCksum, aSalt, aCksum).
_WAL_INDEX_HEADER = 48
_SHM_DESCRIPTORS: list[int] = []  # `-shm` descriptors Store.change_hint opened: never closed



def _newest_first(query: str, args: list[object], until: datetime | None,
                  limit: int | None) -> tuple[str, list[object]]:
    """An append-only history query (rows with `at` and `id`): at or before `until`, newest first,
    at most `limit` rows."""
    if until is not None:
        query += " AND at <= ?"
        args.append(_utc_text(until))
    query += " ORDER BY id DESC"
    if limit is not None:
        query += " LIMIT ?"
        args.append(limit)
    return query, args

class Store:
    """The state database. `actor` is who this connection acts for (recorded on sync runs)."""

    def __init__(self, path: Path, *, actor: str | None = None) -> None:
        self.path = path
        self.actor = actor
        self.lock = threading.RLock()
        self._commits = 0
        self._shm: mmap.mmap | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.migrate()
        except sqlite3.Error as exc:
            raise database_error(exc, path) from exc

    def close(self) -> None:
        if self._shm is not None:
            self._shm.close()
            self._shm = None
        self.db.close()

    # -- transactions and schema -----------------------------------------------------------

    @contextmanager
    def transaction(self, *, dry_run: bool = False) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: writers are serialised by the database's own lock. `dry_run`: every
        change is rolled back at the end (what-if runs see their own changes meanwhile)."""
        with self.lock:
            try:
                self.db.execute("BEGIN IMMEDIATE")
                try:
                    yield self.db
                    if dry_run:
                        self.db.execute("ROLLBACK")
                    else:
                        self.db.execute("COMMIT")
                        self._commits += 1
                except BaseException:
                    self._rollback()
                    raise
            except sqlite3.Error as exc:  # a full disk at COMMIT, a corrupt file: a StorageError
                raise database_error(exc, self.path) from exc

    def _rollback(self) -> None:
        """After a failed statement or COMMIT (SQLite may have rolled back already)."""
        if self.db.in_transaction:
            with suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")

    def migrate(self) -> None:
        with self.transaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                       "version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied TEXT NOT NULL)")
            done = {row[0] for row in db.execute("SELECT version FROM schema_migrations")}
            for version, description, statements in MIGRATIONS:
                if version in done:
                    continue
                for statement in statements:
                    db.execute(statement)
                db.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)",
                           (version, description, _iso(utcnow())))

    @_locked
    def schema_version(self) -> int:
        row = self.db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    @_locked
    def data_version(self) -> int:
        """Changes whenever another connection commits: cheap cache invalidation for the server."""
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    @_locked
    def change_marker(self) -> tuple[int, int]:
        """Changes whenever anyone commits: another connection (data_version) or this one."""
        return int(self.db.execute("PRAGMA data_version").fetchone()[0]), self._commits

    def change_hint(self) -> bytes | None:
        """A cheaper look than `change_marker` (no SQL, no lock), for a reader asking on every
        request: the WAL-index header SQLite keeps at the start of `<db>-shm`, whose `iChange`
        counts transactions and `mxFrame` the WAL's frames (the WAL format, walformat.html).
        The same bytes as at the last look: nobody committed since; different bytes (a torn read
        included) only mean "ask `change_marker`". None when the file cannot be mapped (then
        ask every time). SQLite-specific; a PostgreSQL store would answer None."""
        shm = self._shm
        if shm is None:
            shm = self._shm = self._map_shm()
            if shm is None:
                return None
        return shm[:_WAL_INDEX_HEADER]

    def _map_shm(self) -> mmap.mmap | None:
        # The descriptor is deliberately never closed: POSIX record locks belong to the process
        # and the file, so closing *any* descriptor of `-shm` would drop the locks SQLite's own
        # connections hold on it (its "dead man switch"), and the next process to open the
        # database would truncate the file under every mapping (SIGBUS). One descriptor per
        # catalog store; the mapping is only read while this connection is open, and while it
        # is, nobody truncates the file.
        try:
            fd = os.open(f"{self.path}-shm", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            if os.fstat(fd).st_size < 2 * _WAL_INDEX_HEADER:
                return None
            return mmap.mmap(fd, 2 * _WAL_INDEX_HEADER, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            return None
        finally:
            _SHM_DESCRIPTORS.append(fd)  # kept open for the process's lifetime (see above)

    @_locked
    def ping(self) -> None:
        """A cheap read, for health checks."""
        self.db.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()

    # -- blobs ----------------------------------------------------------------------------

    def recorded_blobs(self, digests: Iterable[str]) -> set[str]:
        return set(self.recorded_blob_sizes(digests))

    @_locked
    def recorded_blob_sizes(self, digests: Iterable[str]) -> dict[str, int]:
        """sha256 -> size of those of `digests` the database records (their true sizes)."""
        wanted = list(set(digests))
        found: dict[str, int] = {}
        for i in range(0, len(wanted), 500):
            part = wanted[i:i + 500]
            marks = ",".join("?" * len(part))
            found.update((r[0], int(r[1])) for r in self.db.execute(
                f"SELECT sha256, size FROM blobs WHERE sha256 IN ({marks})", part))
        return found

    # -- snapshots ------------------------------------------------------------------------

    def commit_snapshot(self, new: NewSnapshot, first_tier: str, *, now: datetime | None = None,
                        before_commit: Callable[[], object] | None = None) -> str:
        """Record blobs, snapshot, manifest and roots, and point `first_tier` at it: one transaction.

        `before_commit` is called inside the transaction, after every statement, right before
        COMMIT; if it raises, nothing is recorded. A sync passes the wait for its pool flush
        (mirror.sync.commit): the rows are written while the pool flushes, the commit follows it.
        The database's write lock, and this Store's, are held meanwhile."""
        now = now or utcnow()
        entries = list(new.entries)
        packages = sum(1 for e in entries if e.kind is EntryKind.PACKAGE)
        unique = {e.sha256: e.size for e in entries}
        with self.transaction() as db:
            snap_id = self._free_snapshot_id(new.repo, now)
            db.executemany("INSERT INTO blobs (sha256, size, stored) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                           [(d, s, _iso(now)) for d, s in unique.items()])
            db.execute("INSERT INTO snapshots VALUES (?, ?, ?, 'verified', ?, ?, ?, ?, ?)",
                       (new.repo, snap_id, _iso(now), new.signed_by, packages, sum(unique.values()),
                        new.plan_key, new.sync_run))
            db.executemany(
                "INSERT INTO snapshot_roots VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(new.repo, snap_id, r.name, r.sha256, _iso(r.date), _iso(r.valid_until), r.revision)
                 for r in new.roots])
            db.executemany(
                "INSERT INTO manifest_entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(new.repo, snap_id, e.path, e.sha256, e.size, e.kind.value,
                  e.package.name if e.package else None, e.package.arch if e.package else None,
                  e.package.version if e.package else None) for e in entries])
            rows = [(e.package.name, e.package.arch, e.package.version) for e in entries
                    if e.kind is EntryKind.PACKAGE and e.package is not None]
            self._put_package_set(new.repo, snap_id, rows)
            if new.advisories:
                self.record_advisories(new.repo, snap_id, new.advisories)
            self._move_tier(new.repo, first_tier, snap_id, actor="sync", reason="new snapshot",
                            action="sync", now=now)
            if new.sync_run is not None and new.run_files is not None:  # one fdatasync less
                self._end_sync_run(new.sync_run, "snapshot", snapshot=snap_id, message=new.run_note,
                                   files=new.run_files, size=new.run_bytes)
            if before_commit is not None:
                before_commit()
        return snap_id

    def _free_snapshot_id(self, repo: str, now: datetime) -> str:
        # a deleted snapshot's id is never given again (caches and URLs may still know it)
        latest = self.db.execute(
            "SELECT MAX(id) FROM (SELECT id FROM snapshots WHERE repo = ? "
            "UNION ALL SELECT snapshot FROM snapshot_deletions WHERE repo = ?) AS ids",
            (repo, repo)).fetchone()[0]
        moment = now.replace(microsecond=0)
        if latest is not None:
            moment = max(moment, parse_snapshot_id(latest) + timedelta(seconds=1))
        return snapshot_id_for(moment)

    @_locked
    def latest_snapshot(self, repo: str) -> str | None:
        row = self.db.execute("SELECT MAX(id) FROM snapshots WHERE repo = ?", (repo,)).fetchone()
        return row[0] if row else None

    @_locked
    def snapshot_plan_key(self, repo: str, snapshot: str) -> str | None:
        row = self.db.execute("SELECT plan_key FROM snapshots WHERE repo = ? AND id = ?",
                              (repo, snapshot)).fetchone()
        return row[0] if row else None

    @_locked
    def roots(self, repo: str, snapshot: str) -> dict[str, RootRecord]:
        rows = self.db.execute(
            "SELECT name, sha256, date, valid_until, revision FROM snapshot_roots "
            "WHERE repo = ? AND snapshot = ?", (repo, snapshot))
        return {r[0]: RootRecord(name=r[0], sha256=r[1], date=_dt(r[2]), valid_until=_dt(r[3]),
                                 revision=r[4]) for r in rows}

    @_locked
    def snapshots(self, repo: str) -> list[Snapshot]:
        tiers: dict[str, list[str]] = {}
        for tier, snap in self.db.execute(
                "SELECT tier, snapshot FROM tiers WHERE repo = ? AND snapshot IS NOT NULL", (repo,)):
            tiers.setdefault(snap, []).append(tier)
        rows = self.db.execute(
            "SELECT id, created, packages, bytes, signed_by FROM snapshots WHERE repo = ? ORDER BY id DESC",
            (repo,))
        return [Snapshot(repo=repo, id=r[0], created=datetime.fromisoformat(r[1]), packages=r[2],
                         bytes=r[3], signed_by=r[4], tiers=tuple(tiers.get(r[0], ())))
                for r in rows]

    @_locked
    def snapshot_state(self, repo: str, snapshot: str) -> str | None:
        """"verified" for a complete snapshot; None when there is no such snapshot."""
        row = self.db.execute("SELECT state FROM snapshots WHERE repo = ? AND id = ?",
                              (repo, snapshot)).fetchone()
        return row[0] if row else None

    @_locked
    def has_snapshot(self, repo: str, snapshot: str) -> bool:
        return self.db.execute("SELECT 1 FROM snapshots WHERE repo = ? AND id = ?",
                               (repo, snapshot)).fetchone() is not None

    @_locked
    def manifest(self, repo: str, snapshot: str) -> dict[str, ManifestEntry]:
        rows = self.db.execute(
            "SELECT path, sha256, size, kind, pkg_name, pkg_arch, pkg_version FROM manifest_entries "
            "WHERE repo = ? AND snapshot = ?", (repo, snapshot))
        return {r[0]: ManifestEntry(path=r[0], sha256=r[1], size=r[2], kind=EntryKind(r[3]),
                                    package=PackageKey(r[4], r[5], r[6]) if r[4] is not None else None)
                for r in rows}

    @_locked
    def manifest_entry(self, repo: str, snapshot: str, path: str) -> ManifestEntry | None:
        r = self.db.execute(
            "SELECT path, sha256, size, kind, pkg_name, pkg_arch, pkg_version FROM manifest_entries "
            "WHERE repo = ? AND snapshot = ? AND path = ?", (repo, snapshot, path)).fetchone()
        if r is None:
            return None
        return ManifestEntry(path=r[0], sha256=r[1], size=r[2], kind=EntryKind(r[3]),
                             package=PackageKey(r[4], r[5], r[6]) if r[4] is not None else None)

    @_locked
    def all_blob_references(self, repo: str | None = None) -> dict[str, list[tuple[str, str, str]]]:
        """digest -> [(repo, snapshot, path)] for every manifest entry (for `mirror verify`)."""
        query = "SELECT sha256, repo, snapshot, path FROM manifest_entries"
        args: tuple[str, ...] = ()
        if repo is not None:
            query += " WHERE repo = ?"
            args = (repo,)
        refs: dict[str, list[tuple[str, str, str]]] = {}
        for digest, r, s, p in self.db.execute(query, args):
            refs.setdefault(digest, []).append((r, s, p))
        return refs

    @_locked
    def manifest_objects(self, repo: str | None = None) -> dict[str, tuple[int, list[tuple[str, str, str]]]]:
        """digest -> (size, [(repo, snapshot, path)]) over the manifests of `repo` or of all repos."""
        query = "SELECT sha256, size, repo, snapshot, path FROM manifest_entries"
        args: tuple[str, ...] = ()
        if repo is not None:
            query += " WHERE repo = ?"
            args = (repo,)
        found: dict[str, tuple[int, list[tuple[str, str, str]]]] = {}
        for digest, size, r, s, p in self.db.execute(query, args):
            found.setdefault(digest, (int(size), []))[1].append((r, s, p))
        return found

    def forget_blobs(self, digests: Iterable[str]) -> None:
        """Record blobs as absent (a damaged object moved out of the pool): the next sync that
        needs one fetches it again instead of trusting the pool."""
        wanted = list(digests)
        with self.transaction() as db:
            for i in range(0, len(wanted), 500):
                part = wanted[i:i + 500]
                db.execute(f"DELETE FROM blobs WHERE sha256 IN ({','.join('?' * len(part))})", part)

    @_locked
    def blob_sizes(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.db.execute("SELECT sha256, size FROM blobs")}

    # -- tiers ----------------------------------------------------------------------------

    @_locked
    def tiers(self, repo: str) -> dict[str, TierState]:
        return {r[0]: TierState(snapshot=r[1], since=datetime.fromisoformat(r[2])) for r in self.db.execute(
            "SELECT tier, snapshot, since FROM tiers WHERE repo = ?", (repo,))}

    @_locked
    def all_tier_pointers(self) -> dict[tuple[str, str], str]:
        return {(r[0], r[1]): r[2] for r in self.db.execute(
            "SELECT repo, tier, snapshot FROM tiers WHERE snapshot IS NOT NULL")}

    @_locked
    def tier_snapshot(self, repo: str, tier: str) -> str | None:
        row = self.db.execute("SELECT snapshot FROM tiers WHERE repo = ? AND tier = ?",
                              (repo, tier)).fetchone()
        return row[0] if row else None

    @_locked
    def tier_has_served(self, repo: str, tier: str, snapshot: str) -> bool:
        """Whether `tier` of `repo` ever pointed at `snapshot` (by sync, promotion or rollback)."""
        return self.db.execute(
            "SELECT 1 FROM tier_moves WHERE repo = ? AND tier = ? AND to_snapshot = ? LIMIT 1",
            (repo, tier, snapshot)).fetchone() is not None

    @_locked
    def last_move(self, repo: str, tier: str) -> TierMove | None:
        row = self.db.execute(f"SELECT {_MOVE_COLUMNS} FROM tier_moves WHERE repo = ? AND tier = ? "
                              "ORDER BY id DESC LIMIT 1", (repo, tier)).fetchone()
        return _move(row) if row else None

    @_locked
    def moves(self, repo: str, *, tier: str | None = None, until: datetime | None = None,
              limit: int | None = None) -> list[TierMove]:
        """A repo's tier history, newest first; `until`: only moves made at or before then."""
        query = f"SELECT {_MOVE_COLUMNS} FROM tier_moves WHERE repo = ?"
        args: list[object] = [repo]
        if tier is not None:
            query += " AND tier = ?"
            args.append(tier)
        return [_move(r) for r in self.db.execute(*_newest_first(query, args, until, limit))]

    @_locked
    def tiers_at(self, repo: str, moment: datetime) -> dict[str, TierMove]:
        """tier -> the move that set what it served at `moment` (tiers not yet set are absent)."""
        rows = self.db.execute(
            f"SELECT {_MOVE_COLUMNS} FROM tier_moves WHERE id IN ("
            "SELECT MAX(id) FROM tier_moves WHERE repo = ? AND at <= ? GROUP BY tier)",
            (repo, _utc_text(moment)))
        return {m.tier: m for m in map(_move, rows)}

    @_locked
    def moves_since(self, since: datetime) -> list[TierMove]:
        """Every move made at or after `since`, all repos, newest first.

        A move's `from_snapshot` was served by its tier until the move's `at`: these are the
        snapshots the repo port keeps answering for within the grace window (and that gc must
        keep for as long)."""
        rows = self.db.execute(f"SELECT {_MOVE_COLUMNS} FROM tier_moves WHERE at >= ? ORDER BY id DESC",
                               (_utc_text(since),))
        return [_move(r) for r in rows]

    def record_move(self, repo: str, tier: str, snapshot: str, *, actor: str, reason: str | None,
                    action: str, forced: bool = False, now: datetime | None = None) -> TierMove:
        """Point `tier` at `snapshot` and append the history row. Call inside `transaction()`."""
        if not self.db.in_transaction:
            raise StorageError("record_move outside a transaction")
        moment = now or utcnow()
        move_id = self._move_tier(repo, tier, snapshot, actor=actor, reason=reason, action=action,
                                  now=moment, forced=forced)
        row = self.db.execute(f"SELECT {_MOVE_COLUMNS} FROM tier_moves WHERE id = ?", (move_id,)).fetchone()
        return _move(row)

    @_locked
    def served_snapshots(self) -> list[ServedSnapshot]:
        """Every tier pointer with its snapshot's creation time and earliest root Valid-Until."""
        rows = self.db.execute(
            "SELECT t.repo, t.tier, t.snapshot, t.since, s.created, "
            "(SELECT MIN(r.valid_until) FROM snapshot_roots r "
            " WHERE r.repo = t.repo AND r.snapshot = t.snapshot), "
            "(SELECT MIN(x.valid_until) FROM tier_releases x WHERE x.id IN ("
            " SELECT MAX(y.id) FROM tier_releases y WHERE y.repo = t.repo AND y.tier = t.tier "
            " AND y.snapshot = t.snapshot GROUP BY y.suite)) "
            "FROM tiers t JOIN snapshots s ON s.repo = t.repo AND s.id = t.snapshot")
        return [ServedSnapshot(repo=r[0], tier=r[1], snapshot=r[2], since=datetime.fromisoformat(r[3]),
                               created=datetime.fromisoformat(r[4]), valid_until=_dt(r[5]),
                               issued_valid_until=_dt(r[6])) for r in rows]

    def _move_tier(self, repo: str, tier: str, snapshot: str | None, *, actor: str, reason: str | None,
                   action: str, now: datetime, forced: bool = False) -> int:
        row = self.db.execute("SELECT snapshot FROM tiers WHERE repo = ? AND tier = ?",
                              (repo, tier)).fetchone()
        previous = row[0] if row else None
        if snapshot is not None and not self.has_snapshot(repo, snapshot):
            raise NotFoundError(f"no snapshot {snapshot} in repo {repo}", repo=repo)
        if row is None:
            self.db.execute("INSERT INTO tiers VALUES (?, ?, ?, ?)", (repo, tier, snapshot, _iso(now)))
        else:
            self.db.execute("UPDATE tiers SET snapshot = ?, since = ? WHERE repo = ? AND tier = ?",
                            (snapshot, _iso(now), repo, tier))
        next_id = self.db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM tier_moves").fetchone()[0]
        self.db.execute(f"INSERT INTO tier_moves ({_MOVE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (next_id, repo, tier, _utc_text(now), previous, snapshot, actor, reason, int(forced),
                         action))
        return int(next_id)

    # -- re-issued Release files (tier_signing = "mirror") -----------------------------------

    def record_tier_release(self, repo: str, tier: str, suite: str, snapshot: str, *, issued: datetime,
                            valid_until: datetime, inrelease: tuple[str, int], release: tuple[str, int],
                            release_gpg: tuple[str, int]) -> int:
        """Record one issue (its three files already durable in the pool) and their blobs."""
        with self.transaction() as db:
            db.executemany("INSERT INTO blobs (sha256, size, stored) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                           [(d, n, _iso(issued)) for d, n in (inrelease, release, release_gpg)])
            next_id = int(db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM tier_releases").fetchone()[0])
            db.execute("INSERT INTO tier_releases VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (next_id, repo, tier, suite, snapshot, _utc_text(issued), _utc_text(valid_until),
                        inrelease[0], release[0], release_gpg[0]))
        return next_id

    @_locked
    def tier_releases(self, repo: str | None = None, *, latest: bool = True) -> list[TierRelease]:
        """Issued Release files, newest first; `latest`: only the newest per (repo, tier, suite,
        snapshot), which is all the repo port ever serves."""
        query = ("SELECT r.id, r.repo, r.tier, r.suite, r.snapshot, r.issued, r.valid_until, "
                 "r.inrelease_sha256, a.size, r.release_sha256, b.size, r.releasegpg_sha256, c.size "
                 "FROM tier_releases r LEFT JOIN blobs a ON a.sha256 = r.inrelease_sha256 "
                 "LEFT JOIN blobs b ON b.sha256 = r.release_sha256 "
                 "LEFT JOIN blobs c ON c.sha256 = r.releasegpg_sha256 WHERE 1 = 1")
        args: list[object] = []
        if repo is not None:
            query += " AND r.repo = ?"
            args.append(repo)
        if latest:
            query += (" AND r.id IN (SELECT MAX(id) FROM tier_releases "
                      "GROUP BY repo, tier, suite, snapshot)")
        query += " ORDER BY r.id DESC"
        return [TierRelease(id=r[0], repo=r[1], tier=r[2], suite=r[3], snapshot=r[4],
                            issued=datetime.fromisoformat(r[5]), valid_until=datetime.fromisoformat(r[6]),
                            inrelease=(r[7], int(r[8] if r[8] is not None else -1)),
                            release=(r[9], int(r[10] if r[10] is not None else -1)),
                            release_gpg=(r[11], int(r[12] if r[12] is not None else -1)))
                for r in self.db.execute(query, args)]

    def delete_tier_releases(self, ids: Iterable[int]) -> int:
        """Forget issued Release rows (their blobs stay until gc sweeps the pool). In `transaction()`."""
        if not self.db.in_transaction:
            raise StorageError("delete_tier_releases outside a transaction")
        wanted = list(ids)
        for i in range(0, len(wanted), 500):
            part = wanted[i:i + 500]
            self.db.execute(f"DELETE FROM tier_releases WHERE id IN ({','.join('?' * len(part))})", part)
        return len(wanted)

    # -- garbage collection -----------------------------------------------------------------

    @_locked
    def snapshot_ages(self, repo: str) -> list[tuple[str, datetime]]:
        """(id, created) of the repo's snapshots, newest first."""
        return [(r[0], datetime.fromisoformat(r[1])) for r in self.db.execute(
            "SELECT id, created FROM snapshots WHERE repo = ? ORDER BY id DESC", (repo,))]

    @_locked
    def rollback_targets(self, repo: str) -> dict[str, str]:
        """tier -> the snapshot `rollback` would point it back at (the `from` of its last move)."""
        return {r[0]: r[1] for r in self.db.execute(
            "SELECT tier, from_snapshot FROM tier_moves WHERE id IN ("
            "SELECT MAX(id) FROM tier_moves WHERE repo = ? GROUP BY tier) AND from_snapshot IS NOT NULL",
            (repo,))}

    @_locked
    def snapshot_digests(self, repo: str, snapshot: str) -> dict[str, int]:
        """sha256 -> size of every file of one snapshot."""
        return {r[0]: int(r[1]) for r in self.db.execute(
            "SELECT sha256, size FROM manifest_entries WHERE repo = ? AND snapshot = ?", (repo, snapshot))}

    def delete_snapshot(self, repo: str, snapshot: str) -> None:
        """Forget a snapshot: manifest, roots, issued Releases, the row. In `transaction()`; the
        caller has checked that nothing points at it. History rows keep naming it."""
        if not self.db.in_transaction:
            raise StorageError("delete_snapshot outside a transaction")
        for table, column in (("manifest_entries", "snapshot"), ("snapshot_roots", "snapshot"),
                              ("tier_releases", "snapshot"), ("snapshot_packages", "snapshot"),
                              ("snapshot_advisories", "snapshot"), ("snapshots", "id")):
            self.db.execute(f"DELETE FROM {table} WHERE repo = ? AND {column} = ?", (repo, snapshot))

    def record_snapshot_deletion(self, repo: str, snapshot: str, *, actor: str, reason: str | None,
                                 now: datetime) -> SnapshotDeletion:
        """Append the audit row of deleting `snapshot` (still recorded). In `transaction()`, with
        `delete_snapshot` after it."""
        if not self.db.in_transaction:
            raise StorageError("record_snapshot_deletion outside a transaction")
        row = self.db.execute("SELECT created, packages, bytes FROM snapshots WHERE repo = ? AND id = ?",
                              (repo, snapshot)).fetchone()
        if row is None:
            raise NotFoundError(f"no snapshot {snapshot} in repo {repo}", repo=repo)
        next_id = int(self.db.execute(
            "SELECT COALESCE(MAX(id), 0) + 1 FROM snapshot_deletions").fetchone()[0])
        self.db.execute(f"INSERT INTO snapshot_deletions ({_DELETION_COLUMNS}) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (next_id, repo, snapshot, _utc_text(now), actor, reason, row[0], row[1], row[2]))
        found = self.db.execute(f"SELECT {_DELETION_COLUMNS} FROM snapshot_deletions WHERE id = ?",
                                (next_id,)).fetchone()
        return _deletion(found)

    @_locked
    def snapshot_deletions(self, repo: str, *, until: datetime | None = None,
                           limit: int | None = None) -> list[SnapshotDeletion]:
        """A repo's snapshot deletions, newest first; `until`: only those made at or before then."""
        query = f"SELECT {_DELETION_COLUMNS} FROM snapshot_deletions WHERE repo = ?"
        return [_deletion(r) for r in self.db.execute(*_newest_first(query, [repo], until, limit))]

    @_locked
    def referenced_digests(self) -> set[str]:
        """Every digest a snapshot (any repo) or an issued Release references."""
        found = {r[0] for r in self.db.execute("SELECT DISTINCT sha256 FROM manifest_entries")}
        for row in self.db.execute(
                "SELECT inrelease_sha256, release_sha256, releasegpg_sha256 FROM tier_releases"):
            found.update(row)
        return found

    def delete_blobs(self, digests: Iterable[str]) -> None:
        """Forget blobs (the caller unlinks the files after the commit). In `transaction()`."""
        if not self.db.in_transaction:
            raise StorageError("delete_blobs outside a transaction")
        wanted = list(digests)
        for i in range(0, len(wanted), 500):
            part = wanted[i:i + 500]
            self.db.execute(f"DELETE FROM blobs WHERE sha256 IN ({','.join('?' * len(part))})", part)

    def delete_orphan_advisories(self) -> int:
        """Drop advisories no snapshot lists any more (their CVEs and packages too). In `transaction()`."""
        if not self.db.in_transaction:
            raise StorageError("delete_orphan_advisories outside a transaction")
        orphan = "SELECT id FROM advisories WHERE id NOT IN (SELECT advisory FROM snapshot_advisories)"
        self.db.execute(f"DELETE FROM advisory_cves WHERE advisory IN ({orphan})")
        self.db.execute(f"DELETE FROM advisory_packages WHERE advisory IN ({orphan})")
        return int(self.db.execute(
            "DELETE FROM advisories WHERE id NOT IN (SELECT advisory FROM snapshot_advisories)").rowcount)

    # -- package sets (diffs) ---------------------------------------------------------------

    def _put_package_set(self, repo: str, snapshot: str, rows: Iterable[Row]) -> PackageSet:
        """Store a snapshot's PackageSet blob and digest (inside the caller's transaction)."""
        from mirror.packageset import PackageSet

        ps = PackageSet(list(rows))
        self.db.execute("INSERT INTO snapshot_packages VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                        (repo, snapshot, ps.to_blob(), package_set_digest(ps)))
        return ps

    @_locked
    def package_set(self, repo: str, snapshot: str) -> PackageSet:
        """The snapshot's packages (NotFoundError if there is no such snapshot). A snapshot
        committed before the table existed gets its blob now, from its manifest."""
        from mirror.packageset import PackageSet

        row = self.db.execute("SELECT packages FROM snapshot_packages WHERE repo = ? AND snapshot = ?",
                              (repo, snapshot)).fetchone()
        if row is not None:
            return PackageSet.from_blob(bytes(row[0]))
        if not self.has_snapshot(repo, snapshot):
            raise NotFoundError(f"no snapshot {snapshot} in repo {repo}", repo=repo)
        rows = [(r[0], r[1], r[2]) for r in self.db.execute(
            "SELECT pkg_name, pkg_arch, pkg_version FROM manifest_entries WHERE repo = ? AND snapshot = ? "
            "AND kind = ? AND pkg_name IS NOT NULL", (repo, snapshot, EntryKind.PACKAGE.value))]
        if self.db.in_transaction:
            return self._put_package_set(repo, snapshot, rows)
        with self.transaction():
            return self._put_package_set(repo, snapshot, rows)

    @_locked
    def package_set_digest(self, repo: str, snapshot: str) -> str:
        """sha256 of the snapshot's sorted package lines: equal digests, equal package sets."""
        row = self.db.execute("SELECT digest FROM snapshot_packages WHERE repo = ? AND snapshot = ?",
                              (repo, snapshot)).fetchone()
        if row is None:
            self.package_set(repo, snapshot)
            row = self.db.execute("SELECT digest FROM snapshot_packages WHERE repo = ? AND snapshot = ?",
                                  (repo, snapshot)).fetchone()
        return str(row[0])

    # -- advisories -------------------------------------------------------------------------

    def record_advisories(self, repo: str, snapshot: str, advisories: Iterable[Advisory]) -> int:
        """Record the advisories a snapshot's metadata lists (content-addressed: an advisory
        unchanged since an earlier snapshot is stored once). Inside `transaction()`."""
        if not self.db.in_transaction:
            raise StorageError("record_advisories outside a transaction")
        by_digest = {advisory_digest(a): a for a in advisories}
        known: dict[str, int] = {}
        digests = list(by_digest)
        for i in range(0, len(digests), 500):
            part = digests[i:i + 500]
            known.update((r[0], int(r[1])) for r in self.db.execute(
                f"SELECT digest, id FROM advisories WHERE digest IN ({','.join('?' * len(part))})", part))
        next_id = int(self.db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM advisories").fetchone()[0])
        for digest, a in by_digest.items():
            if digest in known:
                continue
            known[digest] = ident = next_id
            next_id += 1
            self.db.execute(
                "INSERT INTO advisories VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (ident, digest, a.id, a.source, a.type, a.severity, a.title, _iso(a.issued), _iso(a.updated),
                 a.status, a.description,
                 json.dumps([[r.type, r.id, r.href, r.title] for r in a.references])))
            self.db.executemany("INSERT INTO advisory_cves VALUES (?, ?) ON CONFLICT DO NOTHING",
                                [(ident, c.upper()) for c in a.cves])
            self.db.executemany(
                "INSERT INTO advisory_packages VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [(ident, p.name, p.arch, p.epoch, p.version, p.release, p.evr, p.filename)
                 for p in a.packages])
        self.db.executemany("INSERT INTO snapshot_advisories VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                            [(repo, snapshot, known[d]) for d in by_digest])
        return len(by_digest)

    def _advisories(self, ids: Iterable[int]) -> dict[int, Advisory]:
        from mirror.diff import Advisory, AdvisoryPackage, Reference

        wanted = sorted(set(ids))
        heads: dict[int, Sequence[Any]] = {}
        cves: dict[int, list[str]] = {}
        packages: dict[int, list[AdvisoryPackage]] = {}
        for i in range(0, len(wanted), 500):
            part = wanted[i:i + 500]
            marks = ",".join("?" * len(part))
            for r in self.db.execute(
                    "SELECT id, advisory_id, source, type, severity, title, issued, updated, status, "
                    f"description, references_json FROM advisories WHERE id IN ({marks})", part):
                heads[int(r[0])] = r
            for a, cve in self.db.execute(
                    f"SELECT advisory, cve FROM advisory_cves WHERE advisory IN ({marks}) "
                    "ORDER BY advisory, cve", part):
                cves.setdefault(int(a), []).append(cve)
            for r in self.db.execute(
                    "SELECT advisory, name, epoch, version, release, arch, filename FROM advisory_packages "
                    f"WHERE advisory IN ({marks}) ORDER BY advisory, name, arch, evr", part):
                packages.setdefault(int(r[0]), []).append(AdvisoryPackage(r[1], r[2], r[3], r[4], r[5], r[6]))
        return {i: Advisory(id=r[1], source=r[2], type=r[3], severity=r[4], title=r[5], issued=_dt(r[6]),
                            updated=_dt(r[7]), status=r[8], description=r[9],
                            references=tuple(Reference(*x) for x in json.loads(r[10])),
                            cves=tuple(cves.get(i, ())), packages=tuple(packages.get(i, ())))
                for i, r in heads.items()}

    @_locked
    def advisory_ids(self, repo: str, snapshot: str) -> set[str]:
        """The advisory ids (e.g. "RLSA-2026:1234") a snapshot lists."""
        return {r[0] for r in self.db.execute(
            "SELECT a.advisory_id FROM snapshot_advisories s JOIN advisories a ON a.id = s.advisory "
            "WHERE s.repo = ? AND s.snapshot = ?", (repo, snapshot))}

    @_locked
    def snapshot_advisories(self, repo: str, snapshot: str) -> list[Advisory]:
        """Every advisory a snapshot lists, by id."""
        ids = [int(r[0]) for r in self.db.execute(
            "SELECT advisory FROM snapshot_advisories WHERE repo = ? AND snapshot = ?", (repo, snapshot))]
        return sorted(self._advisories(ids).values(), key=lambda a: a.id)

    @_locked
    def advisories_for_diff(self, repo: str, to: str, from_ids: Set[str],
                            names: Iterable[str]) -> list[Advisory]:
        """TO's advisories that can matter to a diff: those whose id is not in `from_ids`, and
        those listing a package named in `names` (the upgraded packages)."""
        chosen = {int(r[0]) for r in self.db.execute(
            "SELECT s.advisory, a.advisory_id FROM snapshot_advisories s "
            "JOIN advisories a ON a.id = s.advisory WHERE s.repo = ? AND s.snapshot = ?",
            (repo, to)) if r[1] not in from_ids}
        wanted = sorted(set(names))
        for i in range(0, len(wanted), 500):
            part = wanted[i:i + 500]
            chosen.update(int(r[0]) for r in self.db.execute(
                "SELECT DISTINCT s.advisory FROM snapshot_advisories s JOIN advisory_packages p "
                f"ON p.advisory = s.advisory WHERE s.repo = ? AND s.snapshot = ? AND p.name IN "
                f"({','.join('?' * len(part))})", (repo, to, *part)))
        return list(self._advisories(chosen).values())

    @_locked
    def advisories_by_cve(self, cve: str) -> dict[str, list[tuple[Advisory, frozenset[str]]]]:
        """repo -> the advisories naming `cve` that any snapshot of the repo lists, each with
        the snapshots listing it."""
        where: dict[int, dict[str, set[str]]] = {}
        for ident, repo, snap in self.db.execute(
                "SELECT c.advisory, s.repo, s.snapshot FROM advisory_cves c JOIN snapshot_advisories s "
                "ON s.advisory = c.advisory WHERE c.cve = ?", (cve.upper(),)):
            where.setdefault(int(ident), {}).setdefault(repo, set()).add(snap)
        loaded = self._advisories(where)
        out: dict[str, list[tuple[Advisory, frozenset[str]]]] = {}
        for ident, repos in sorted(where.items()):
            for repo, snaps in repos.items():
                out.setdefault(repo, []).append((loaded[ident], frozenset(snaps)))
        return out

    # -- verify results ---------------------------------------------------------------------

    def record_verify(self, results: Sequence[VerifyResult], damage: Sequence[VerifyDamageRow]) -> None:
        """Replace the last verify result (and its damage rows) of every repo in `results`."""
        with self.transaction() as db:
            for r in results:
                db.execute("DELETE FROM verify_results WHERE repo = ?", (r.repo,))
                db.execute("DELETE FROM verify_damage WHERE repo = ?", (r.repo,))
                db.execute("INSERT INTO verify_results VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           (r.repo, _utc_text(r.started), _utc_text(r.finished), r.files, r.bytes, r.damaged,
                            r.repaired, int(r.repair_tried)))
            db.executemany("INSERT INTO verify_damage VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                           [(d.repo, d.snapshot, d.sha256, d.path, d.problem, int(d.repaired))
                            for d in damage])

    @_locked
    def verify_results(self) -> list[VerifyResult]:
        rows = self.db.execute("SELECT repo, started, finished, files, bytes, damaged, repaired, "
                               "repair_tried FROM verify_results ORDER BY repo")
        return [VerifyResult(repo=r[0], started=datetime.fromisoformat(r[1]),
                             finished=datetime.fromisoformat(r[2]), files=int(r[3]), bytes=int(r[4]),
                             damaged=int(r[5]), repaired=int(r[6]), repair_tried=bool(r[7])) for r in rows]

    @_locked
    def verify_damage(self, repo: str | None = None, *, remaining: bool = True) -> list[VerifyDamageRow]:
        """Damage the last verify of each repo found; `remaining`: only what it did not repair."""
        query = "SELECT repo, snapshot, sha256, path, problem, repaired FROM verify_damage WHERE 1 = 1"
        args: list[object] = []
        if repo is not None:
            query += " AND repo = ?"
            args.append(repo)
        if remaining:
            query += " AND repaired = 0"
        rows = self.db.execute(query + " ORDER BY repo, snapshot, sha256", args)
        return [VerifyDamageRow(repo=r[0], snapshot=r[1], sha256=r[2], path=r[3], problem=r[4],
                                repaired=bool(r[5])) for r in rows]

    # -- sync runs ------------------------------------------------------------------------

    def start_sync_run(self, repo: str) -> int:
        with self.transaction() as db:
            run_id = int(db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM sync_runs").fetchone()[0])
            db.execute("INSERT INTO sync_runs (id, repo, started, outcome, actor) "
                       "VALUES (?, ?, ?, 'running', ?)", (run_id, repo, _iso(utcnow()), self.actor))
        return run_id

    def finish_sync_run(self, run_id: int, outcome: str, *, snapshot: str | None = None,
                        error_code: str | None = None, message: str | None = None, files: int = 0,
                        size: int = 0) -> None:
        with self.transaction():
            self._end_sync_run(run_id, outcome, snapshot=snapshot, error_code=error_code, message=message,
                               files=files, size=size)

    def _end_sync_run(self, run_id: int, outcome: str, *, snapshot: str | None = None,
                      error_code: str | None = None, message: str | None = None, files: int = 0,
                      size: int = 0) -> None:
        self.db.execute("UPDATE sync_runs SET finished = ?, outcome = ?, snapshot = ?, error_code = ?, "
                        "message = ?, files = ?, bytes = ? WHERE id = ?",
                        (_iso(utcnow()), outcome, snapshot, error_code, message, files, size, run_id))

    def interrupt_running_runs(self, repo: str, message: str) -> int:
        """Close the runs of `repo` left "running" by a sync that was cancelled (server shutdown)."""
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE sync_runs SET finished = ?, outcome = 'failed', error_code = 'interrupted', "
                "message = ? WHERE repo = ? AND outcome = 'running'", (_iso(utcnow()), message, repo))
            return int(cursor.rowcount)

    @_locked
    def sync_stats(self) -> list[SyncStats]:
        """Per repo: last success, last duration, files and bytes fetched, failures by error code."""
        stats: dict[str, dict[str, Any]] = {}
        for repo, files, size, running in self.db.execute(
                "SELECT repo, COALESCE(SUM(files), 0), COALESCE(SUM(bytes), 0), "
                "SUM(CASE WHEN outcome = 'running' THEN 1 ELSE 0 END) FROM sync_runs GROUP BY repo"):
            stats[repo] = {"files": int(files), "bytes": int(size), "running": int(running or 0),
                           "last_success": None, "last_duration": None, "failures": {}}
        for repo, finished in self.db.execute(
                "SELECT repo, MAX(finished) FROM sync_runs WHERE outcome IN ('snapshot', 'unchanged') "
                "GROUP BY repo"):
            stats[repo]["last_success"] = _dt(finished)
        for _id, repo, started, finished in self.db.execute(
                "SELECT id, repo, started, finished FROM sync_runs WHERE id IN ("
                "SELECT MAX(id) FROM sync_runs WHERE finished IS NOT NULL GROUP BY repo)"):
            stats[repo]["last_duration"] = (datetime.fromisoformat(finished)
                                            - datetime.fromisoformat(started)).total_seconds()
        for repo, code, count in self.db.execute(
                "SELECT repo, COALESCE(error_code, 'unknown'), COUNT(*) FROM sync_runs "
                "WHERE outcome = 'failed' GROUP BY repo, COALESCE(error_code, 'unknown')"):
            stats[repo]["failures"][code] = int(count)
        return [SyncStats(repo=repo, **values) for repo, values in sorted(stats.items())]

    @_locked
    def sync_runs(self, repo: str | None = None, limit: int = 100) -> list[SyncRunRecord]:
        query = "SELECT id, repo, started, finished, outcome, snapshot, error_code, message, files, bytes, " \
                "actor FROM sync_runs"
        args: tuple[object, ...] = ()
        if repo is not None:
            query += " WHERE repo = ?"
            args = (repo,)
        query += " ORDER BY id DESC LIMIT ?"
        rows = self.db.execute(query, (*args, limit))
        return [SyncRunRecord(id=r[0], repo=r[1], started=datetime.fromisoformat(r[2]), finished=_dt(r[3]),
                              outcome=r[4], snapshot=r[5], error_code=r[6], message=r[7], files=r[8],
                              bytes=r[9], actor=r[10]) for r in rows]
