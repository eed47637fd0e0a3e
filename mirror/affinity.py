"""Per-client snapshot pins: which snapshot of a tier a client read its root metadata from.

A client reads a root file (InRelease, repomd.xml) and then, in separate requests, the files it
names; if the tier moves in between, those must still come from the snapshot the root file came
from (see :meth:`mirror.publish.StoreCatalog.lookup_tier`).  A pin lasts
:data:`AFFINITY_SECONDS`.

Two stores: :class:`MemoryPins` when one process serves the repo port, :class:`SharedPins`
when several do (``[server] repo_workers``; one client's connections may land in different
processes): a scratch SQLite file under the storage root, written on each root-file request,
read only while a tier has moved within the last :data:`AFFINITY_SECONDS` (otherwise every pin
equals the current pointer and is not needed).  Nothing in it is durable or precious: it is
created afresh by ``mirror serve`` and lost pins only mean the current snapshot is served.
Times are ``time.monotonic()`` (CLOCK_MONOTONIC: one clock for every process of the machine).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Protocol

__all__ = ["AFFINITY_SECONDS", "MemoryPins", "Pins", "SharedPins", "pins_path"]

AFFINITY_SECONDS = 60.0  # how long a client keeps the snapshot of the root file it read
MEMORY_MAX = 100_000  # remembered (client, repo, tier) pins; expired ones are pruned past this
PRUNE_EVERY = 1000  # SharedPins: delete expired rows every this many writes


def pins_path(storage_root: Path) -> Path:
    return storage_root / "run" / "pins.db"


class Pins(Protocol):
    def pin(self, client: str, repo: str, tier: str, snapshot: str) -> None: ...

    def get(self, client: str, repo: str, tier: str) -> str | None: ...


class MemoryPins:
    """The pins of one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pins: dict[tuple[str, str, str], tuple[str, float]] = {}

    def pin(self, client: str, repo: str, tier: str, snapshot: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._pins) > MEMORY_MAX:
                self._pins = {k: v for k, v in self._pins.items() if v[1] >= now}
                if len(self._pins) > MEMORY_MAX:
                    self._pins.clear()
            self._pins[(client, repo, tier)] = (snapshot, now + AFFINITY_SECONDS)

    def get(self, client: str, repo: str, tier: str) -> str | None:
        with self._lock:
            pin = self._pins.get((client, repo, tier))
        if pin is None or pin[1] < time.monotonic():
            return None
        return pin[0]


class SharedPins:
    """The pins of every process serving the repo port, in one scratch SQLite file."""

    def __init__(self, path: Path, *, create: bool = False) -> None:
        """`create`: start afresh (the main process, before any worker opens it)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        if create:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        self._lock = threading.Lock()
        self._writes = 0
        self.db = sqlite3.connect(path, timeout=5, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=OFF")  # scratch data: a lost pin is harmless
        self.db.execute("CREATE TABLE IF NOT EXISTS pins (client TEXT NOT NULL, repo TEXT NOT NULL, "
                        "tier TEXT NOT NULL, snapshot TEXT NOT NULL, until REAL NOT NULL, "
                        "PRIMARY KEY (client, repo, tier))")

    def pin(self, client: str, repo: str, tier: str, snapshot: str) -> None:
        now = time.monotonic()
        with self._lock:
            self.db.execute("INSERT OR REPLACE INTO pins VALUES (?, ?, ?, ?, ?)",
                            (client, repo, tier, snapshot, now + AFFINITY_SECONDS))
            self._writes += 1
            if self._writes % PRUNE_EVERY == 0:
                self.db.execute("DELETE FROM pins WHERE until < ?", (now,))

    def get(self, client: str, repo: str, tier: str) -> str | None:
        with self._lock:
            row = self.db.execute("SELECT snapshot FROM pins WHERE client = ? AND repo = ? AND tier = ? "
                                  "AND until >= ?", (client, repo, tier, time.monotonic())).fetchone()
        return str(row[0]) if row is not None else None

    def close(self) -> None:
        self.db.close()
