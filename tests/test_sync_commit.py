"""`mirror.sync.commit`: the snapshot's rows are written while the pool flushes, and the database
commits only once the flush is done (HOSTILE 57); if the flush fails, nothing is recorded. And
the flush started ahead of it while a sync still fetches (`_WriteAhead`)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Collection
from pathlib import Path

import pytest

from mirror.errors import NoSpaceError
from mirror.model import EntryKind, ExpectedFile, ManifestEntry, RootRecord, utcnow
from mirror.pool import Pool
from mirror.store import NewSnapshot, Store
from mirror.sync import WRITE_AHEAD_MAX, WRITE_AHEAD_MIN, _WriteAhead, commit

MB = 1_000_000


def _staged_snapshot(tmp_path: Path) -> tuple[Pool, Store, NewSnapshot, str]:
    pool, store = Pool(tmp_path / "storage"), Store(tmp_path / "storage" / "state.db")
    data = b"package bytes\n" * 100
    digest = hashlib.sha256(data).hexdigest()
    tmp = pool.temp_dir("repo")
    pool.store_whole(data, ExpectedFile("pool/p.deb", len(data), digest), str(tmp), "pool/p.deb")
    root = RootRecord(name="stable", sha256="0" * 64, date=utcnow(), valid_until=None)
    new = NewSnapshot(repo="repo", signed_by="upstream", plan_key="k", roots=[root],
                      entries=[ManifestEntry("pool/p.deb", digest, len(data), EntryKind.INDEX)])
    return pool, store, new, digest


def _snapshots_seen_by_another_connection(db: Path) -> int:
    with sqlite3.connect(db) as other:
        return int(other.execute("SELECT COUNT(*) FROM snapshots").fetchone()[0])


def test_the_commit_waits_for_the_pool_flush_and_follows_it(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    pool, store, new, digest = _staged_snapshot(tmp_path)
    seen: list[tuple[str, object]] = []
    flush = Pool.make_durable

    def make_durable(self: Pool) -> None:
        flush(self)
        # the flush is done: the name is in the pool, the rows are not yet visible to anyone
        seen.append(("flushed", (self.path_for(digest).is_file(),
                                 _snapshots_seen_by_another_connection(store.path))))

    monkeypatch.setattr(Pool, "make_durable", make_durable)
    snapshot = commit(pool, store, new, "dev")
    assert seen == [("flushed", (True, 0))]
    assert store.latest_snapshot("repo") == snapshot
    assert _snapshots_seen_by_another_connection(store.path) == 1
    assert pool.staged == 0


def test_a_commit_loads_the_package_set_module_not_the_diff_module(tmp_path: Path) -> None:
    """The commit stores the snapshot's PackageSet: mirror.packageset (and zstandard), not
    mirror.diff and its dataclasses (about 10 ms of an APT sync's commit)."""
    script = "\n".join([
        "import sys", "from pathlib import Path", "from tests.test_sync_commit import _staged_snapshot",
        "from mirror.sync import commit", f"pool, store, new, _ = _staged_snapshot(Path({str(tmp_path)!r}))",
        "commit(pool, store, new, 'dev')",
        "print('mirror.diff' in sys.modules, 'mirror.packageset' in sys.modules)"])
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.split() == ["False", "True"], out.stderr


def test_a_failed_pool_flush_records_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pool, store, new, _ = _staged_snapshot(tmp_path)

    def make_durable(self: Pool) -> None:
        raise NoSpaceError("no space left on device", path=str(self.root))

    monkeypatch.setattr(Pool, "make_durable", make_durable)
    with pytest.raises(NoSpaceError):
        commit(pool, store, new, "dev")
    assert store.latest_snapshot("repo") is None
    assert _snapshots_seen_by_another_connection(store.path) == 0
    assert store.tier_snapshot("repo", "dev") is None


# -- writing ahead: the pool is flushed in the background while a sync still fetches -----------


class _Ctx:
    """What `_WriteAhead` uses of a SyncContext."""

    def __init__(self, pool: object, *, reads_packages: bool = False) -> None:
        self.pool = pool
        self.background: list[object] = []
        self.reads_packages = reads_packages

    def meanwhile(self, work: object) -> None:
        self.background.append(work)


class _Pool:
    def __init__(self) -> None:
        self.flushes = 0
        self.release = threading.Event()
        self.named: list[set[str]] = []

    def write_ahead(self, name: Collection[str] = ()) -> None:
        self.flushes += 1
        self.named.append(set(name))
        self.release.wait(10)


@pytest.mark.parametrize("reads_packages", [False, True])
def test_write_ahead_names_the_files_fetched_before_it_unless_the_format_reads_them(
        reads_packages: bool) -> None:
    async def go() -> list[set[str]]:
        pool = _Pool()
        pool.release.set()
        ahead = _WriteAhead(_Ctx(pool, reads_packages=reads_packages), 200 * MB)  # type: ignore[arg-type]
        for i in range(200):
            ahead.fetched(MB, f"{i:064x}")
            await asyncio.sleep(0)
        return pool.named

    named = asyncio.run(go())
    assert named == [set() if reads_packages else {f"{i:064x}" for i in range(140)}]


def test_write_ahead_flushes_once_a_share_of_the_fetch_is_staged() -> None:
    async def go() -> tuple[int, int, int]:
        pool = _Pool()
        pool.release.set()
        ctx = _Ctx(pool)
        ahead = _WriteAhead(ctx, 200 * MB)  # type: ignore[arg-type]
        for _ in range(139):
            ahead.fetched(MB)
        before = pool.flushes
        ahead.fetched(MB)  # 140 MB: 70%
        await asyncio.gather(*ctx.background)  # type: ignore[arg-type]
        for _ in range(60):
            ahead.fetched(MB)
        await asyncio.gather(*ctx.background)  # type: ignore[arg-type]
        return before, pool.flushes, len(ctx.background)

    assert asyncio.run(go()) == (0, 1, 1)


def test_write_ahead_leaves_a_small_fetch_to_the_commit() -> None:
    ctx = _Ctx(_Pool())
    ahead = _WriteAhead(ctx, WRITE_AHEAD_MIN - 1)  # type: ignore[arg-type]
    for _ in range(100):
        ahead.fetched(WRITE_AHEAD_MIN)
    assert ctx.background == []


def test_write_ahead_runs_one_flush_at_a_time_in_steps_of_at_most_the_maximum() -> None:
    async def go() -> list[int]:
        pool = _Pool()
        ctx = _Ctx(pool)
        ahead = _WriteAhead(ctx, 100 * WRITE_AHEAD_MAX)  # type: ignore[arg-type]
        assert ahead.step == WRITE_AHEAD_MAX
        seen = []
        ahead.fetched(WRITE_AHEAD_MAX)  # a first flush starts, and hangs
        await asyncio.sleep(0.05)
        ahead.fetched(WRITE_AHEAD_MAX)  # a step more while it runs: none more yet
        seen.append(len(ctx.background))
        pool.release.set()
        await asyncio.gather(*ctx.background)  # type: ignore[arg-type]
        ahead.fetched(1)  # the next step starts once the first is over
        await asyncio.gather(*ctx.background)  # type: ignore[arg-type]
        seen += [len(ctx.background), pool.flushes]
        return seen

    assert asyncio.run(go()) == [1, 2, 2]


def test_a_failed_write_ahead_is_only_logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    pool = Pool(tmp_path / "storage")

    def broken(self: Pool) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(Pool, "_flush", broken)
    pool.write_ahead()
    assert "writing ahead failed" in caplog.text


def test_a_write_ahead_told_to_stop_naming_leaves_the_rest_to_the_commit(tmp_path: Path) -> None:
    """At the end of the downloads the sync stops a write-ahead still renaming (it would make
    the commit wait); the files it flushed and did not name are named by the commit."""
    pool = Pool(tmp_path / "storage")
    tmp = pool.temp_dir("repo")
    digests = []
    for data in (b"A" * 5000, b"B" * 7000):
        digest = hashlib.sha256(data).hexdigest()
        pool.store_whole(data, ExpectedFile(f"{digest}.deb", len(data), digest), str(tmp), "x")
        digests.append(digest)
    pool.stop_naming_ahead()
    pool.write_ahead(set(digests))
    assert pool.staged == 2 and all(pool.path_for(d).parent == tmp for d in digests)
    pool.make_durable()
    assert pool.staged == 0
    for digest in digests:
        assert pool.path_for(digest) == pool.root / digest[:2] / digest
        assert hashlib.sha256(pool.path_for(digest).read_bytes()).hexdigest() == digest


def test_a_failed_rename_ahead_is_only_logged_and_left_to_the_commit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    pool = Pool(tmp_path / "storage")
    tmp = pool.temp_dir("repo")
    data = b"A" * 5000
    digest = hashlib.sha256(data).hexdigest()
    pool.store_whole(data, ExpectedFile("a.deb", len(data), digest), str(tmp), "a.deb")
    replace = os.replace

    def broken(src: str, dst: str) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", broken)
    pool.write_ahead({digest})
    assert "naming files ahead failed" in caplog.text
    assert pool.staged == 1 and pool.path_for(digest).parent == tmp
    monkeypatch.setattr(os, "replace", replace)
    pool.make_durable()
    assert pool.staged == 0 and pool.path_for(digest).read_bytes() == data


def _events_of_make_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, ahead_fails: bool,
                            name_early: bool = False) -> tuple[list[tuple[str, str]], str, str, Pool]:
    """Stage A, write ahead (naming A at once if `name_early`), stage B, make durable: flushes
    (start/end) and renames in order."""
    pool = Pool(tmp_path / "storage")
    tmp = pool.temp_dir("repo")
    events: list[tuple[str, str]] = []
    lock = threading.Lock()
    flush = Pool._flush
    failing = [ahead_fails]

    def recorded_flush(self: Pool) -> None:
        with lock:
            events.append(("flush-start", ""))
        if failing[0]:
            failing[0] = False
            raise OSError(5, "Input/output error")
        flush(self)
        with lock:
            events.append(("flush-end", ""))

    replace = os.replace

    def recorded_replace(src: str, dst: str) -> None:
        replace(src, dst)
        if "/pool/sha256/" in str(dst):
            with lock:
                events.append(("rename", Path(dst).name))

    monkeypatch.setattr(Pool, "_flush", recorded_flush)
    monkeypatch.setattr(os, "replace", recorded_replace)
    digests = []
    for data in (b"A" * 5000, b"B" * 7000):
        digest = hashlib.sha256(data).hexdigest()
        pool.store_whole(data, ExpectedFile(f"{digest}.deb", len(data), digest), str(tmp), "x")
        digests.append(digest)
        if len(digests) == 1:
            pool.write_ahead({digest} if name_early else ())
            if name_early and not ahead_fails:
                assert pool.path_for(digest) == pool.root / digest[:2] / digest  # renamed already
                assert pool.path_for(digest).read_bytes() == data
    pool.make_durable()
    return events, digests[0], digests[1], pool


@pytest.mark.parametrize("name_early", [False, True], ids=["named-at-commit", "named-by-write-ahead"])
@pytest.mark.parametrize("ahead_fails", [False, True], ids=["write-ahead-done", "write-ahead-failed"])
def test_every_file_is_named_only_after_a_flush_that_began_after_it_was_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ahead_fails: bool, name_early: bool) -> None:
    """HOSTILE 57 with writing ahead: A (staged before the write-ahead) may be named once the
    write-ahead's flush is over (by the write-ahead itself, or while the commit's first flush
    runs) only if that flush completed; B (staged after) only once the commit's first flush is
    over; a flush follows the last rename."""
    events, a, b, pool = _events_of_make_durable(tmp_path, monkeypatch, ahead_fails=ahead_fails,
                                                 name_early=name_early)
    kinds = [k for k, _ in events]
    renamed_at = {name: i for i, (k, name) in enumerate(events) if k == "rename"}
    assert set(renamed_at) == {a, b}
    ends = [i for i, k in enumerate(kinds) if k == "flush-end"]
    starts = [i for i, k in enumerate(kinds) if k == "flush-start"]
    # the make_durable flush is the second start; B waits for its end
    commit_flush_end = next(i for i in ends if i > starts[1])
    assert renamed_at[b] > commit_flush_end
    if ahead_fails:
        assert renamed_at[a] > commit_flush_end  # not flushed ahead: waits like B
    else:
        assert renamed_at[a] > ends[0] and ends[0] < starts[1]  # after the write-ahead's end
        if name_early:
            assert renamed_at[a] < starts[1]  # before the commit's flush even began
    assert kinds[-1] == "flush-end" and starts[-1] > max(renamed_at.values())
    assert pool.staged == 0
    for digest in (a, b):
        assert hashlib.sha256(pool.path_for(digest).read_bytes()).hexdigest() == digest
