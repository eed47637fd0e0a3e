"""The state database: snapshots, manifests, blobs, tier pointers, tier history and sync runs.

SQLite (WAL) is the embedded engine. The SQL stays portable to PostgreSQL: plain TEXT/INTEGER/
BIGINT columns, ISO-8601 UTC text for times, explicit ids instead of AUTOINCREMENT, no
SQLite-only syntax in the schema. The schema is versioned: `MIGRATIONS` is append-only, each
step applied once inside a transaction and recorded in `schema_migrations`.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from mirror.errors import NotFoundError, StorageError
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
)


F = TypeVar("F", bound=Callable[..., Any])


def _locked(method: F) -> F:
    """One connection is shared by the threads a sync uses: one statement sequence at a time."""
    @functools.wraps(method)
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            return method(self, *args, **kwargs)
    return wrapper  # type: ignore[return-value]


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
class NewSnapshot:
    """Everything a verified sync hands to the store, committed in one transaction."""

    repo: str
    signed_by: str
    plan_key: str
    roots: Sequence[RootRecord]
    entries: Sequence[ManifestEntry]
    sync_run: int | None = None


_MOVE_COLUMNS = "id, repo, tier, at, from_snapshot, to_snapshot, actor, reason, forced, action"


def _move(r: Sequence[Any]) -> TierMove:
    return TierMove(id=r[0], repo=r[1], tier=r[2], at=datetime.fromisoformat(r[3]), from_snapshot=r[4],
                    to_snapshot=r[5], actor=r[6], reason=r[7], forced=bool(r[8]), action=r[9])


def _utc_text(moment: datetime) -> str:
    """A time as stored (ISO 8601, UTC): stored times compare as text."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


class Store:
    """The state database. `actor` is who this connection acts for (recorded on sync runs)."""

    def __init__(self, path: Path, *, actor: str | None = None) -> None:
        self.path = path
        self.actor = actor
        self.lock = threading.RLock()
        self._commits = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.migrate()
        except sqlite3.Error as exc:
            raise StorageError(f"state database {path}: {exc}") from exc

    def close(self) -> None:
        self.db.close()

    # -- transactions and schema -----------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: writers are serialised by the database's own lock."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            else:
                self.db.execute("COMMIT")
                self._commits += 1

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

    @_locked
    def ping(self) -> None:
        """A cheap read, for health checks."""
        self.db.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()

    # -- blobs ----------------------------------------------------------------------------

    @_locked
    def recorded_blobs(self, digests: Iterable[str]) -> set[str]:
        wanted = list(set(digests))
        found: set[str] = set()
        for i in range(0, len(wanted), 500):
            part = wanted[i:i + 500]
            marks = ",".join("?" * len(part))
            found.update(r[0] for r in self.db.execute(
                f"SELECT sha256 FROM blobs WHERE sha256 IN ({marks})", part))
        return found

    # -- snapshots ------------------------------------------------------------------------

    def commit_snapshot(self, new: NewSnapshot, first_tier: str, *, now: datetime | None = None) -> str:
        """Record blobs, snapshot, manifest and roots, and point `first_tier` at it: one transaction."""
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
            self._move_tier(new.repo, first_tier, snap_id, actor="sync", reason="new snapshot",
                            action="sync", now=now)
        return snap_id

    def _free_snapshot_id(self, repo: str, now: datetime) -> str:
        latest = self.db.execute("SELECT MAX(id) FROM snapshots WHERE repo = ?", (repo,)).fetchone()[0]
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
        if until is not None:
            query += " AND at <= ?"
            args.append(_utc_text(until))
        query += " ORDER BY id DESC"
        if limit is not None:
            query += " LIMIT ?"
            args.append(limit)
        return [_move(r) for r in self.db.execute(query, args)]

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
            " WHERE r.repo = t.repo AND r.snapshot = t.snapshot) "
            "FROM tiers t JOIN snapshots s ON s.repo = t.repo AND s.id = t.snapshot")
        return [ServedSnapshot(repo=r[0], tier=r[1], snapshot=r[2], since=datetime.fromisoformat(r[3]),
                               created=datetime.fromisoformat(r[4]), valid_until=_dt(r[5])) for r in rows]

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
        with self.transaction() as db:
            db.execute("UPDATE sync_runs SET finished = ?, outcome = ?, snapshot = ?, error_code = ?, "
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
