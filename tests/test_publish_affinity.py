"""A client that read a tier's root file keeps getting the files of that snapshot for a while,
even if the tier moves in between (dnf reads repomd.xml, then repomd.xml.asc and the records in
separate requests: a move in between must not pair one snapshot's file with another's
signature). Root files themselves always come from the current snapshot, so a looping client is
never held back."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from mirror.affinity import MemoryPins, Pins, SharedPins, pins_path
from mirror.pool import Pool
from mirror.publish import StoreCatalog
from mirror.store import Store
from mirror.tiers import Tiers
from tests.helpers import seed_snapshot

INDEX = "dists/stable/main/binary-amd64/Packages"


def _dev_serves_old(tmp_path: Path) -> tuple[Pool, Tiers, str]:
    """Two snapshots (InRelease and INDEX "old"/"new"); dev serves the old one. Returns the new."""
    store = Store(tmp_path / "state.db")
    pool = Pool(tmp_path)
    old = seed_snapshot(store, pool, "repo", {"dists/stable/InRelease": b"old", INDEX: b"old index"})
    new = seed_snapshot(store, pool, "repo", {"dists/stable/InRelease": b"new", INDEX: b"new index"})
    tiers = Tiers(Store(tmp_path / "state.db"), ("dev", "prod"))
    tiers.promote("repo", "dev", snapshot=old, actor="t")
    return pool, tiers, new


def _pins(kind: str, root: Path) -> Pins:
    return MemoryPins() if kind == "memory" else SharedPins(pins_path(root))


@pytest.mark.parametrize("kind", ["memory", "shared"])
def test_client_keeps_the_snapshot_of_the_root_file_it_read(tmp_path: Path, kind: str) -> None:
    pool, tiers, new = _dev_serves_old(tmp_path)
    catalog = StoreCatalog(Store(tmp_path / "state.db"), pool, grace=timedelta(hours=1),
                           pins=_pins(kind, tmp_path))

    def read(path: str, client: str | None) -> bytes:
        entry = catalog.lookup_tier("dev", "repo", path, client)
        assert entry is not None
        return pool.path_for(entry.sha256).read_bytes()

    assert read("dists/stable/InRelease", "10.0.0.1") == b"old"
    tiers.promote("repo", "dev", snapshot=new, actor="t")
    assert read(INDEX, "10.0.0.1") == b"old index"  # pinned to what it read the root file from
    assert read(INDEX, "10.0.0.2") == b"new index"  # another client: the current snapshot
    assert read(INDEX, None) == b"new index"
    assert read("dists/stable/InRelease", "10.0.0.1") == b"new"  # root files: always current
    assert read(INDEX, "10.0.0.1") == b"new index"


def test_pin_ends_when_the_grace_window_no_longer_covers_the_snapshot(tmp_path: Path) -> None:
    pool, tiers, new = _dev_serves_old(tmp_path)
    catalog = StoreCatalog(Store(tmp_path / "state.db"), pool, grace=timedelta(0))
    entry = catalog.lookup_tier("dev", "repo", "dists/stable/InRelease", "10.0.0.1")
    assert entry is not None
    tiers.promote("repo", "dev", snapshot=new, actor="t")
    index = catalog.lookup_tier("dev", "repo", INDEX, "10.0.0.1")
    assert index is not None and pool.path_for(index.sha256).read_bytes() == b"new index"


def test_pins_are_shared_between_processes_serving_the_repo_port(tmp_path: Path) -> None:
    """With repo_workers, one client's requests may reach different processes: a pin taken in
    one catalog (process) holds in another."""
    pool, tiers, new = _dev_serves_old(tmp_path)
    first = StoreCatalog(Store(tmp_path / "state.db"), pool, grace=timedelta(hours=1),
                         pins=SharedPins(pins_path(tmp_path), create=True))
    second = StoreCatalog(Store(tmp_path / "state.db"), pool, grace=timedelta(hours=1),
                          pins=SharedPins(pins_path(tmp_path)))
    assert first.lookup_tier("dev", "repo", "dists/stable/InRelease", "10.0.0.1") is not None
    tiers.promote("repo", "dev", snapshot=new, actor="t")
    index = second.lookup_tier("dev", "repo", INDEX, "10.0.0.1")
    assert index is not None and pool.path_for(index.sha256).read_bytes() == b"old index"
    other = second.lookup_tier("dev", "repo", INDEX, "10.0.0.2")
    assert other is not None and pool.path_for(other.sha256).read_bytes() == b"new index"


def test_shared_pins_start_afresh_and_expire(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mirror.affinity as affinity

    pins = SharedPins(pins_path(tmp_path), create=True)
    pins.pin("10.0.0.1", "repo", "dev", "20260101T000000Z")
    assert pins.get("10.0.0.1", "repo", "dev") == "20260101T000000Z"
    assert pins.get("10.0.0.1", "repo", "prod") is None
    later = affinity.time.monotonic() + affinity.AFFINITY_SECONDS + 1
    monkeypatch.setattr(affinity.time, "monotonic", lambda: later)
    assert pins.get("10.0.0.1", "repo", "dev") is None
    pins.close()
    assert SharedPins(pins_path(tmp_path), create=True).get("10.0.0.1", "repo", "dev") is None


def test_change_hint_moves_with_every_commit_of_any_connection(tmp_path: Path) -> None:
    """The catalog skips the SQL look at the data version while the WAL-index header is unchanged:
    every commit (of another connection or its own) must change it, and a pure read must not."""
    pool, tiers, new = _dev_serves_old(tmp_path)
    reader = Store(tmp_path / "state.db")
    catalog = StoreCatalog(reader, pool, grace=timedelta(hours=1))
    first = reader.change_hint()
    assert first is not None and len(first) == 48
    catalog.lookup_tier("dev", "repo", INDEX)
    assert reader.change_hint() == first  # reading changes nothing
    tiers.promote("repo", "dev", snapshot=new, actor="t")  # another connection commits
    assert reader.change_hint() != first
    entry = catalog.lookup_tier("dev", "repo", INDEX)
    assert entry is not None and pool.path_for(entry.sha256).read_bytes() == b"new index"
    second = reader.change_hint()
    with reader.transaction() as db:  # its own connection commits
        db.execute("CREATE TABLE IF NOT EXISTS scratch (x INTEGER)")
    assert reader.change_hint() != second
    reader.close()


_HINT_READER = """
import sys
from pathlib import Path
from mirror.store import Store
store = Store(Path(sys.argv[1]))
assert store.change_hint() is not None
print("ready", flush=True)
sys.stdin.readline()
store.close()
"""

_DMS_PROBE = """
import fcntl, os, struct, sys
fd = os.open(sys.argv[1] + "-shm", os.O_RDWR)
# SQLite's "dead man switch": byte 128 of -shm, read-locked by every process with a connection
probe = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 128, 1, 0)
print("held" if struct.unpack("hhqqi", fcntl.fcntl(fd, fcntl.F_GETLK, probe))[0] != fcntl.F_UNLCK
      else "free")
"""


def test_change_hint_keeps_the_sqlite_locks_of_its_process(tmp_path: Path) -> None:
    """Closing any descriptor of `-shm` drops every POSIX lock the process holds on it, SQLite's
    own included: another process opening the database would then truncate the file under the
    mapping (SIGBUS on the next change_hint; a crash of `mirror serve` under load). The reader's
    lock on SQLite's dead-man-switch byte must survive change_hint."""
    import subprocess
    import sys

    from tests.helpers import CHECKOUT

    db = str(tmp_path / "state.db")  # made by the reader: this process holds no lock on it
    reader = subprocess.Popen([sys.executable, "-c", _HINT_READER, db], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=CHECKOUT)
    assert reader.stdout is not None
    try:
        assert reader.stdout.readline().strip() == "ready"
        probe = subprocess.run([sys.executable, "-c", _DMS_PROBE, db], capture_output=True, text=True)
        assert probe.stdout.strip() == "held", probe
    finally:
        reader.communicate("done\n", timeout=30)
    assert reader.returncode == 0
