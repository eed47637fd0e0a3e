"""HOSTILE.md 55 (kill -9 anywhere) and 60 (a dead lock holder): SIGKILL the mirror at 50+ seeded
points across sync, promotion (and gc when it exists), restart it, check one set of invariants.

How: a zygote process (`tests/crash_child.py`) imports the mirror once and forks a fresh process
for every `mirror sync` / `mirror promote`, so a kill lands in the mirror's own work and not in
Python's start-up. The upstream is slowed (`Fault(rate=...)`) so that a sync lasts about a second.
Most kills come after a seeded uniformly random delay over a run's length; a few are sent by the
child to itself at a named point (a window too narrow for a delay: between the pool write and
its rename, inside the snapshot transaction, right after a commit...). Every kill is followed by
the invariant check (tests/invariants.py), then by a restart: the next sync (or promotion) must
complete and serve the complete new state, and leave no temp file.

Each storage starts from the same state S0 (repo synced from upstream v0, dev and test serving
it); a sync against upstream v1 moves dev to T1, a promotion then moves test to T1. So after any
kill each tier serves exactly its tree from before the killed operation, or the one after it.

`MIRROR_CRASH_SEED` and `MIRROR_CRASH_KILLS` override the seed and the number of kills.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fixtures.apt_repo import AptRepo, DebPackage
from fixtures.keys import SigningKey
from fixtures.upstream import Fault, UpstreamServer
from tests.helpers import CHECKOUT, Mirror, write_config
from tests.invariants import Tree, check_storage, running_sync_runs, temp_files

SEED = int(os.environ.get("MIRROR_CRASH_SEED", "55"))
KILLS = int(os.environ.get("MIRROR_CRASH_KILLS", "56"))
LANES = 3
BUDGET = 75.0  # seconds: a safety stop; the kills normally take about 20 s
REPO = "repo"

VZ = [DebPackage("crash0", "0.9", payload_size=12000), DebPackage("crashz", "1.0", payload_size=12000)]
V0 = [DebPackage(f"crash{i}", "1.0", payload_size=12000) for i in range(4)]
V1 = [DebPackage("crash0", "1.1", payload_size=12000),
      *[DebPackage(f"crash{i}", "1.0", payload_size=12000) for i in range(1, 10)]]

SYNC_POINTS = ["replace:1", "replace:5", "replaced:3", "decompress:1", "decompress:2", "durable",
               "durable-done", "commit-txn", "committed"]
PROMOTE_POINTS = ["promote-txn", "promoted"]
GC_POINTS = ["gc-txn", "gc:1", "gc:2"]


def has_gc() -> bool:
    return (CHECKOUT / "mirror" / "gc.py").exists()


# -- the zygote -----------------------------------------------------------------------------------


class Zygote:
    """Forks a fresh mirror process per command (see tests/crash_child.py)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.crash_child"], cwd=CHECKOUT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def _ask(self, command: dict[str, object]) -> dict[str, int]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the crash zygote died")
        reply: dict[str, int] = json.loads(line)
        return reply

    def start(self, argv: list[str], log: Path, kill: str | None = None) -> int:
        return self._ask({"argv": argv, "log": str(log), "kill": kill})["pid"]

    def wait(self, pid: int) -> int:
        return self._ask({"wait": pid})["status"]

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass
class Run:
    """One mirror process: how it ended and the marks it logged (the phases it went through)."""

    killed: bool
    code: int | None
    marks: list[str]
    log: str
    seconds: float

    @property
    def phase(self) -> str:
        """Where it was when it died: the last phase mark before the kill."""
        return self.marks[-1] if self.marks else "start"


def run_once(zygote: Zygote, argv: list[str], log: Path, *, delay: float | None = None,
             point: str | None = None) -> Run:
    log.write_text("")
    started = time.monotonic()
    pid = zygote.start(argv, log, point)
    if delay is not None:
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)  # a zombie (it ended first) ignores it
    status = zygote.wait(pid)
    seconds = time.monotonic() - started
    text = log.read_text(errors="replace")
    marks = [line.split()[1] for line in text.splitlines() if line.startswith("@mark ")]
    at = [m.split(":", 1)[1] for m in marks if m.startswith("killed-at-point:")]
    marks = [m for m in marks if not m.startswith("killed-at-point") and m != "start"] + at
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    return Run(killed, code, marks, text, seconds)


# -- the fixture: two upstream versions, the start state S0 and the expected trees ----------------


@dataclass
class World:
    v1_url: str
    keyring: Path
    template: Path  # storage root of S0
    t0: Tree
    t1: Tree
    tmp: Path
    config_extra: dict[str, str]


def _upstream(root: Path, key: SigningKey, pkgs: list[DebPackage], date: datetime) -> AptRepo:
    repo = AptRepo(root, key)
    repo.add(*pkgs)
    repo.publish(date=date, keep_plain_on_disk=False)
    return repo


def _slow(server: UpstreamServer) -> None:
    # about 0.4 s of packages and 0.3 s of index files per sync (four downloads at a time)
    server.faults["pool/*"] = Fault(rate=40_000)
    server.faults["dists/stable/main/*"] = Fault(rate=12_000)
    server.faults["dists/stable/InRelease"] = Fault(delay=0.05)


def _config(root: Path, url: str, keyring: Path, extra: dict[str, str]) -> Mirror:
    return write_config(root, url, keyring, name=REPO, **extra)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, archive_key: SigningKey) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("crash")
    now = datetime.now(UTC).replace(microsecond=0)
    _upstream(tmp / "upz", archive_key, VZ, now - timedelta(hours=3))
    _upstream(tmp / "up0", archive_key, V0, now - timedelta(hours=2))
    up1 = _upstream(tmp / "up1", archive_key, V1, now - timedelta(hours=1))
    keyring = archive_key.write_public(tmp / "keys" / "archive.asc")
    # gc (when it exists) may then remove snapshot Z once dev and test have both moved on from A
    extra = ({"extra_top": "[retention]\nkeep_last = 0\nkeep_days = 0\n", "extra_server": "grace_period = 0"}
             if has_gc() else {})
    with (UpstreamServer(tmp / "upz") as sz, UpstreamServer(tmp / "up0") as s0,
          UpstreamServer(tmp / "up1") as s1):
        _slow(s1)
        # S0: Z synced, then v0 (A); dev and test serve A
        for url in (sz.url, s0.url):
            base = _config(tmp / "template", url, keyring, extra)
            result = base.sync_one(REPO)
            assert result.ok and result.snapshot, result.error
        done = base.cli("promote", REPO, "--to", "test", "--from", "dev")
        assert done.returncode == 0, done.stderr
        t0 = base.served_tree(REPO, "dev")
        assert base.served_tree(REPO, "test") == t0
        template = base.settings.storage.root
        # T1: what an uninterrupted sync of v1 from S0 serves (checked against upstream's files)
        reference = _config(tmp / "reference", s1.url, keyring, extra)
        reset_storage(template, reference.settings.storage.root)
        result = reference.sync_one(REPO)
        assert result.ok and result.snapshot, result.error
        t1 = reference.served_tree(REPO, "dev")
        assert reference.served_tree(REPO, "test") == t0 != t1
        for path, data in t1.items():
            if (up1.root / path).is_file():
                assert (up1.root / path).read_bytes() == data, path
        assert t1[up1.url_path_of("crash9")] == up1.deb_path("crash9").read_bytes()
        yield World(s1.url, keyring, template, t0, t1, tmp, extra)
    for home in tmp.rglob("keyrings/*"):
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False,
                       capture_output=True)


def reset_storage(template: Path, root: Path) -> None:
    """Back to S0: the template's database and pool (a killed run's WAL must go too)."""
    root.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        (root / f"state.db{suffix}").unlink(missing_ok=True)
        source = template / f"state.db{suffix}"
        if source.exists():
            shutil.copy2(source, root / f"state.db{suffix}")
    shutil.rmtree(root / "pool", ignore_errors=True)
    shutil.copytree(template / "pool", root / "pool")
    if not (root / "keyrings").exists():
        shutil.copytree(template / "keyrings", root / "keyrings",
                        ignore=shutil.ignore_patterns("S.*", "*.lock"))


# -- the kill plan --------------------------------------------------------------------------------

Kill = str | float  # a named point, or a delay as a fraction of the operation's measured length


@dataclass
class Plan:
    """What is left to do, shared by the lanes (each lane takes one item at a time)."""

    rng: random.Random
    syncs: list[list[Kill]]  # per item: the kills of consecutive syncs before the restart completes
    promotes: list[Kill]
    gcs: list[Kill]
    lock: threading.Lock = field(default_factory=threading.Lock)
    kills: Counter[str] = field(default_factory=Counter)  # where the kills landed
    misses: int = 0  # runs that ended before their delay was up (a fresh delay is queued instead)
    problems: list[str] = field(default_factory=list)
    total: int = 0

    def take_sync(self) -> list[Kill] | None:
        with self.lock:
            return self.syncs.pop(0) if self.syncs else None

    def take(self, items: list[Kill]) -> Kill | None:
        with self.lock:
            return items.pop(0) if items else None

    def record(self, what: str, run: Run, kill: Kill) -> None:
        with self.lock:
            if run.killed:
                self.total += 1
                self.kills[f"{what}:{run.phase}"] += 1
                return
            self.misses += 1
            if isinstance(kill, str):
                self.problems.append(f"{what} never reached its kill point {kill}:\n{run.log}")
            elif what == "sync":
                self.syncs.append([self.rng.random()])
            else:
                (self.promotes if what == "promote" else self.gcs).append(self.rng.random())

    def fail(self, problem: str) -> None:
        with self.lock:
            self.problems.append(problem)

    def left(self) -> int:
        with self.lock:
            return len(self.syncs) + len(self.promotes) + len(self.gcs)


def make_plan(rng: random.Random, kills: int) -> Plan:
    gc_points = GC_POINTS if has_gc() else []
    promote_random = 6
    gc_random = 3 if gc_points else 0
    points = len(SYNC_POINTS) + len(PROMOTE_POINTS) + len(gc_points)
    sync_random = max(0, kills - points - promote_random - gc_random)
    singles: list[Kill] = [*SYNC_POINTS, *(rng.random() for _ in range(sync_random))]
    rng.shuffle(singles)
    syncs: list[list[Kill]] = []
    while singles:  # about one item in four kills two syncs in a row before the restart completes
        take = 2 if len(singles) > 1 and rng.random() < 0.25 else 1
        syncs.append(singles[:take])
        del singles[:take]
    promotes: list[Kill] = [*PROMOTE_POINTS, *(rng.random() for _ in range(promote_random))]
    gcs: list[Kill] = [*gc_points, *(rng.random() for _ in range(gc_random))]
    rng.shuffle(promotes)
    rng.shuffle(gcs)
    return Plan(rng, syncs, promotes, gcs)


# -- one lane: its own storage and zygote ----------------------------------------------------------

Allowed = dict[tuple[str, str], list[Tree]]


class Lane:
    def __init__(self, world: World, plan: Plan, number: int, deadline: float) -> None:
        self.world, self.plan, self.number, self.deadline = world, plan, number, deadline
        self.mirror = _config(world.tmp / f"lane{number}", world.v1_url, world.keyring, world.config_extra)
        self.root = self.mirror.settings.storage.root
        self.log = world.tmp / f"lane{number}.log"
        self.zygote = Zygote()
        self.seconds = {"sync": 1.0, "promote": 0.05, "gc": 0.1}
        self.cli = ["-c", str(self.mirror.config)]

    def check(self, when: str, allowed: Allowed) -> bool:
        problems = check_storage(self.root, allowed)
        for p in problems:
            self.plan.fail(f"lane {self.number}, {when}: {p}")
        return not problems

    def run(self, what: str, argv: list[str], kill: Kill | None) -> Run:
        if isinstance(kill, float):
            run = run_once(self.zygote, self.cli + argv, self.log, delay=kill * self.seconds[what])
        else:
            run = run_once(self.zygote, self.cli + argv, self.log, point=kill)
        if kill is not None:
            self.plan.record(what, run, kill)
        return run

    def complete(self, what: str, argv: list[str], allowed: Allowed, when: str) -> bool:
        """Run to the end: exit 0, every invariant, no temp file and no run left "running"."""
        run = self.run(what, argv, None)
        self.seconds[what] = run.seconds
        if run.code != 0:
            self.plan.fail(f"lane {self.number}: the {when} did not complete (exit {run.code}):\n{run.log}")
            return False
        ok = self.check(when, allowed)
        leftovers = temp_files(self.root)
        if leftovers:
            self.plan.fail(f"lane {self.number}, {when}: temp files left: {leftovers[:3]}")
        running = running_sync_runs(self.root)
        if running:
            self.plan.fail(f"lane {self.number}, {when}: sync runs still 'running': {running}")
        return ok and not leftovers and not running

    def work(self) -> None:
        w = self.world
        before = {(REPO, "dev"): [w.t0, w.t1], (REPO, "test"): [w.t0]}
        synced = {(REPO, "dev"): [w.t1], (REPO, "test"): [w.t0]}
        # calibration: how long each operation takes here and now (delays are fractions of it)
        reset_storage(w.template, self.root)
        if not (self.complete("sync", ["sync", REPO], synced, "first sync")
                and self.promotion(None) and self.garbage_collection(None)):
            return
        while time.monotonic() < self.deadline and not self.plan.problems:
            item = self.plan.take_sync()
            if item is None:
                if self.plan.left() == 0:
                    return
                item = []  # promotions or gc runs left: they need a completed sync first
            reset_storage(w.template, self.root)
            for kill in item:
                run = self.run("sync", ["sync", REPO], kill)
                if not self.check(f"after a kill of sync at {kill} ({run.phase})", before):
                    return
            if not self.complete("sync", ["sync", REPO], synced, f"sync after kills at {item}"):
                return
            kill = self.plan.take(self.plan.promotes)
            if kill is not None and self.promotion(kill) and has_gc():
                kill = self.plan.take(self.plan.gcs)
                if kill is not None:
                    self.garbage_collection(kill)

    def promotion(self, kill: Kill | None) -> bool:
        w = self.world
        promote = ["promote", REPO, "--to", "test", "--from", "dev"]
        if kill is not None:
            run = self.run("promote", promote, kill)
            allowed = {(REPO, "dev"): [w.t1], (REPO, "test"): [w.t0, w.t1]}
            if not self.check(f"after a kill of promote at {kill} ({run.phase})", allowed):
                return False
        promoted = {(REPO, "dev"): [w.t1], (REPO, "test"): [w.t1]}
        return self.complete("promote", promote, promoted, f"promotion after a kill at {kill}")

    def garbage_collection(self, kill: Kill | None) -> bool:
        if not has_gc():
            return True
        w = self.world
        promoted = {(REPO, "dev"): [w.t1], (REPO, "test"): [w.t1]}
        if kill is not None:
            run = self.run("gc", ["gc"], kill)
            if not self.check(f"after a kill of gc at {kill} ({run.phase})", promoted):
                return False
        if not self.complete("gc", ["gc"], promoted, f"gc after a kill at {kill}"):
            return False
        left = self.mirror.snapshots(REPO)
        if len(left) != 2:  # Z went, A (the rollback target) and B stay
            self.plan.fail(f"lane {self.number}: gc after a kill at {kill} left snapshots {left}")
            return False
        return True

    def close(self) -> None:
        self.zygote.close()


def test_sigkill_at_50_seeded_points_never_breaks_a_served_tree(world: World) -> None:
    rng = random.Random(SEED)
    plan = make_plan(rng, KILLS)
    deadline = time.monotonic() + BUDGET
    lanes = [Lane(world, plan, n, deadline) for n in range(LANES)]
    errors: list[BaseException] = []

    def go(lane: Lane) -> None:
        try:
            lane.work()
        except BaseException as exc:  # reported below, with the lane's log
            errors.append(exc)
            plan.fail(f"lane {lane.number} crashed: {exc!r}\n{lane.log.read_text(errors='replace')[-2000:]}")

    threads = [threading.Thread(target=go, args=(lane,)) for lane in lanes]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for lane in lanes:
            lane.close()
    summary = (f"{plan.total} kills ({plan.misses} runs ended before their kill): "
               f"{dict(sorted(plan.kills.items()))}")
    print(summary)
    assert not plan.problems, "\n".join(plan.problems[:10]) + "\n" + summary
    assert plan.left() == 0, f"out of time with work left; {summary}"
    assert plan.total >= 50, summary
    # the named points all hit, and the random delays spread over the sync's phases
    landed = {k.split(":", 1)[1] for k in plan.kills}
    marks = ["pool-insert", "decompress", "durable", "tier-pointer", "db-committed", "promote-txn",
             "promote-committed"]
    for mark in marks + (["gc-txn", "pool-unlink"] if has_gc() else []):
        assert any(mark in k for k in landed), f"no kill at {mark}; {summary}"
    assert len({k for k in plan.kills if k.startswith("sync:")}) >= 5, summary


# -- inside the database write: strace kills at the Nth write or flush of SQLite ----------------------


def _strace_ok() -> bool:
    if shutil.which("strace") is None:
        return False
    probe = subprocess.run(["strace", "-f", "-qq", "-o", os.devnull, "-e", "trace=getpid",
                            sys.executable, "-c", "import os; os.getpid()"], capture_output=True, check=False)
    return probe.returncode == 0


def _traced(argv: list[str], *, trace: str, inject: str | None = None, out: str = os.devnull
            ) -> subprocess.CompletedProcess[str]:
    cmd = ["strace", "-f", "-qq", "-o", out, "-e", f"trace={trace}"]
    if inject is not None:
        cmd += ["-e", f"inject={inject}"]
    return subprocess.run([*cmd, sys.executable, "-m", "tests.crash_child", "--run", *argv], cwd=CHECKOUT,
                          capture_output=True, text=True, timeout=120, check=False)


def test_sigkill_inside_the_database_commit_leaves_before_or_after(world: World) -> None:
    """SQLite's part: a kill before any one of its writes (pwrite64) or flushes (fdatasync) after the
    pool's syncfs, i.e. inside the snapshot's commit, the sync-run record or the WAL checkpoint."""
    if not _strace_ok():
        pytest.skip("needs strace (apt-get install strace) and ptrace")
    w = world
    rng = random.Random(SEED + 1)
    mirror = _config(w.tmp / "strace", w.v1_url, w.keyring, w.config_extra)
    root = mirror.settings.storage.root
    argv = ["-c", str(mirror.config), "sync", REPO]
    reset_storage(w.template, root)
    trace = w.tmp / "strace.txt"
    done = _traced(argv, trace="pwrite64,fdatasync,syncfs", out=str(trace))
    assert done.returncode == 0, done.stderr
    # strace counts `when=N` per thread: the commit's database calls all run on one worker thread,
    # the first to write the database once the pool's syncfs began (the flush, make_durable, runs on
    # a thread of its own meanwhile: mirror.sync.commit); count that thread's calls from there on
    calls = [(line.split()[0], line.split(None, 1)[1].split("(", 1)[0])
             for line in trace.read_text().splitlines() if "(" in line and "+++" not in line]
    at = next(i for i, (_, call) in enumerate(calls) if call == "syncfs")
    worker = next(tid for tid, call in calls[at:] if call == "pwrite64")
    kills: list[tuple[str, int]] = []
    for call, how_many in (("pwrite64", 2), ("fdatasync", 1)):
        done_before = sum(1 for tid, c in calls[:at] if tid == worker and c == call)
        # another thread (the main one, opening the database) must not reach the Nth call first
        others = Counter(tid for tid, c in calls[:at] if tid != worker and c == call)
        first = max(done_before, *others.values(), 0) + 1
        last = sum(1 for tid, c in calls if tid == worker and c == call)
        assert last >= first, (call, calls)
        picked = rng.sample(range(first, last + 1), min(how_many, last - first + 1))
        kills += [(call, n) for n in sorted(picked)]
    before = {(REPO, "dev"): [w.t0, w.t1], (REPO, "test"): [w.t0]}
    synced = {(REPO, "dev"): [w.t1], (REPO, "test"): [w.t0]}
    outcomes = []
    for call, n in kills:
        reset_storage(w.template, root)
        killed = _traced(argv, trace=call, inject=f"{call}:signal=KILL:when={n}")
        assert killed.returncode == -signal.SIGKILL, (call, n, killed.returncode, killed.stderr)
        assert check_storage(root, before) == [], (call, n)
        outcomes.append(f"{call}#{n}: dev {'T1' if mirror.served_tree(REPO, 'dev') == w.t1 else 'T0'}")
        again = mirror.cli(*argv[2:])
        assert again.returncode == 0, (call, n, again.stdout, again.stderr)
        assert check_storage(root, synced) == [], (call, n)
        assert temp_files(root) == [] and running_sync_runs(root) == [], (call, n)
    print("; ".join(outcomes))


def test_a_second_sync_is_refused_and_a_killed_lock_holder_frees_the_lock(world: World) -> None:
    """HOSTILE.md 60: two syncs of one repo, the second started while the first holds the lock,
    is refused (`repo_locked`); the first is SIGKILLed holding it; the kernel frees the lock, the
    next sync completes and closes the dead run as `interrupted`."""
    w = world
    mirror = _config(w.tmp / "locked", w.v1_url, w.keyring, w.config_extra)
    root = mirror.settings.storage.root
    reset_storage(w.template, root)
    argv = ["-c", str(mirror.config), "sync", REPO]
    zygote = Zygote()
    try:
        first_log, second_log = w.tmp / "locked-1.log", w.tmp / "locked-2.log"
        first_log.write_text("")
        first = zygote.start(argv, first_log)
        deadline = time.monotonic() + 20
        while "@mark verifying" not in first_log.read_text():  # it holds the lock from here on
            assert time.monotonic() < deadline, first_log.read_text()
            time.sleep(0.005)
        second = run_once(zygote, argv, second_log)
        assert second.code == 1 and "another sync of repo is running" in second.log, second.log
        os.kill(first, signal.SIGKILL)
        status = zygote.wait(first)
        assert os.WIFSIGNALED(status), "the first sync ended before it was killed"
        third = run_once(zygote, argv, w.tmp / "locked-3.log")
        assert third.code == 0, third.log
    finally:
        zygote.close()
    assert check_storage(root, {(REPO, "dev"): [w.t1], (REPO, "test"): [w.t0]}) == []
    assert temp_files(root) == [] and running_sync_runs(root) == []
    store = mirror.store()
    try:
        runs = store.sync_runs(REPO, limit=3)
    finally:
        store.close()
    # newest first: the completed run, then the killed one (the refused sync never started a run)
    assert [(r.outcome, r.error_code) for r in runs[:2]] == [("snapshot", None), ("failed", "interrupted")]
