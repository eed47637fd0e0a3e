"""Package downloads, in the sync's own process or in download helper processes.

A sync of many small packages is bound by one CPU long before the network is busy: each file is a
request to parse, bytes to hash and a file to write, and Python runs one thread at a time (threads
that hash and write lose more to handing the interpreter lock back and forth than they gain). So
`mirror sync` forks helpers (`Helpers.fork`) before its event loop or any thread exists: copies of
the same program, each with its own event loop and HTTP client, taking jobs over a private
socketpair. A helper does exactly what the sync's own process does for a file
(`fetch_into_pool`): fetches it with the one retry policy, checks its size and digests against
the verified metadata the job carries, writes it to the sync's temp folder, runs the RPM
signature check on its bytes when the job asks for it, and answers with its sha256, temp file
and that check's verdict. The sync's `Pool` stages that file (`Pool.adopt_staged`), so the commit,
its durability and a failed run's salvage are the same whichever process fetched a file. An
error comes back as the `MirrorError` it was (pickled whole), naming the file and the check.

Jobs and answers are length-prefixed pickles between a process and its own fork; nothing from
the network is ever unpickled. A helper exits when its socket closes (the sync ended or died); a
job whose helper died is fetched by the sync's own process instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import pickle
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from mirror.config import MAX_DOWNLOAD_PROCESSES, Settings
from mirror.errors import MirrorError
from mirror.fetch import Fetcher, FetchPolicy, with_retries
from mirror.model import ExpectedFile
from mirror.pool import INLINE_MAX, Pool

log = logging.getLogger(__name__)

_HEAD = struct.Struct("!I")
STOP_GRACE = 10.0  # seconds a helper has to exit once its sync is done


#: A check of a package's bytes as they land (mirror.trust.rpmpackage.InProcessCheck.check_data):
#: None when it accepts them, else why not.
LandingCheck = Callable[[bytes], "str | None"]


async def fetch_into_pool(fetcher: Fetcher, pool: Pool, expected: ExpectedFile, url: str, tmp: Path,
                          slot: asyncio.Semaphore | None = None, *,
                          check: LandingCheck | None = None) -> tuple[str, bool]:
    """Fetch `url` (retried as the policy says), check it against `expected` and stage it in
    `pool`: (its sha256, whether `check` accepted its bytes). `check` runs on a file received
    whole, once it is staged, while its bytes are still in memory (a streamed one is not
    checked here). `slot` bounds the transfers in flight (held per attempt, not while waiting to
    retry)."""
    what = expected.path
    slot = slot or asyncio.Semaphore(1)

    async def attempt() -> tuple[str, bool]:
        if expected.size <= INLINE_MAX:  # most packages: received whole, then stored in one go
            async with slot:
                data, size = await fetcher.fetch_capped(url, expected.size)
            digest = pool.store_received(data, size, expected, tmp, what=what, url=url)
            return digest, check is not None and check(data) is None
        async with slot, fetcher.open_stream(url) as (_length, chunks):
            return await pool.ingest(chunks, expected, tmp, what=what, url=url), False

    return await with_retries(attempt, fetcher.policy)


#: (certificates file, pinned fingerprints) -> this process's InProcessCheck (None: unusable)
_CHECKS: dict[tuple[str, tuple[str, ...]], Any] = {}


def _in_process_check(keys: str, pinned: tuple[str, ...]) -> Any:
    """This process's InProcessCheck for these certificates, made once the file exists (the
    sync's PackageVerifier writes it); None while it does not, or if it is unusable."""
    if (keys, pinned) not in _CHECKS:
        if not os.path.exists(keys):
            return None
        try:
            from mirror.trust.rpmpackage import InProcessCheck

            made = InProcessCheck(Path(keys).read_bytes(), pinned)
            _CHECKS[(keys, pinned)] = made if made.usable else None
        except Exception as exc:  # the certificates unreadable: rpmkeys checks them all
            log.warning("in-process signature check unavailable: %s", exc)
            _CHECKS[(keys, pinned)] = None
    return _CHECKS[(keys, pinned)]


def landing_check(keys: str, pinned: tuple[str, ...]) -> LandingCheck:
    """The in-process RPM signature check of a package's bytes as they land, in whichever process
    fetched them, with the certificates in `keys` if they exist by then."""
    def check(data: bytes) -> str | None:
        made = _in_process_check(keys, pinned)
        if made is None:
            return "the verifier was not ready yet"
        verdict: str | None = made.check_data(data)
        return verdict

    return check


def fetch_policy(settings: Settings) -> FetchPolicy:
    """The retry and timeout policy of a sync's downloads (and its helpers')."""
    return FetchPolicy(connect_timeout=settings.sync.connect_timeout,
                       read_timeout=settings.sync.read_timeout, retries=settings.sync.retries)


def helper_count(configured: int | None) -> int:
    """How many helpers a sync forks: as configured, else one per CPU this process may use beyond
    the first, at most MAX_DOWNLOAD_PROCESSES."""
    if configured is not None:
        return configured
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(0, min(MAX_DOWNLOAD_PROCESSES, cpus - 1))


@dataclass(eq=False)
class _Helper:
    pid: int
    sock: socket.socket
    queued: int = 0  # jobs sent and not yet answered
    alive: bool = True
    outbox: _Outbox | None = None
    jobs: dict[int, tuple[asyncio.Future[tuple[Any, Any, Any] | None], Pool | None]] = \
        field(default_factory=dict)
    reader_task: asyncio.Task[None] | None = None
    attached: asyncio.Task[None] | None = None


class Helpers:
    """The sync's side of its download helpers."""

    def __init__(self, helpers: list[_Helper], slots: int) -> None:
        self._helpers = helpers
        self.slots = slots  # transfers in flight per helper (it enforces them)
        self._queue = 2 * slots  # jobs sent to a helper at most: it never waits for the next one
        self._ids = 0
        self.done = 0  # files helpers fetched (for tests and the log)
        self.checked = 0  # packages whose signatures helpers checked in batches (`check_signatures`)
        self.landed = 0  # packages whose signatures helpers accepted as they landed (`fetch`)
        self._users = 0
        self._closing: asyncio.Future[None] | None = None

    @classmethod
    def fork(cls, count: int, policy: FetchPolicy, parallel: int) -> Helpers | None:
        """`count` helpers, forked now: call before any event loop or thread exists (a fork copies
        only the calling thread). None when there are to be none, or other threads exist."""
        import threading

        count = min(count, parallel - 1)  # each process keeps at least one transfer
        if count < 1:
            return None
        if threading.active_count() > 1:
            log.debug("no download helpers: other threads exist")
            return None
        helpers: list[_Helper] = []
        slots = parallel // (count + 1)  # the sync keeps as many for itself (at least one)
        gc.freeze()  # what exists now is shared with the helpers: no collection writes to its pages
        for _ in range(count):
            ours, theirs = socket.socketpair()
            pid = os.fork()
            if pid == 0:  # the helper
                ours.close()
                for other in helpers:
                    other.sock.close()
                _helper_main(theirs, policy, slots)
            theirs.close()
            helpers.append(_Helper(pid, ours))
        return cls(helpers, slots=slots)

    @property
    def transfers(self) -> int:
        """Transfers in flight in all helpers at most: the sync's own share of
        `max_parallel_downloads` is what is left."""
        return self.slots * len(self._helpers)

    @property
    def queue_capacity(self) -> int:
        """Jobs all helpers hold at most (running or waiting for a transfer slot)."""
        return self._queue * len(self._helpers)

    async def fetch(self, url: str, expected: ExpectedFile, tmp: Path, pool: Pool,
                    check: tuple[str, tuple[str, ...]] | None = None) -> tuple[str, bool] | None:
        """Have a helper with room in its queue fetch `url` into `pool` (staged there), and, with
        `check` (a certificates file and the pinned fingerprints), check its RPM signature in
        process as it lands (`fetch_into_pool`): (its sha256, whether the check accepted it);
        None when no helper has room or the helper died (the caller fetches it itself)."""
        helper = next((h for h in self._helpers if h.alive and h.queued < self._queue), None)
        if helper is None:
            return None
        result = await self._ask(helper, pool, "fetch", url, expected, str(tmp), str(pool.tmp.parent), check)
        if result is None:
            return None
        digest, name, verified = str(result[0]), str(result[1]), bool(result[2])
        pool.adopt_staged(digest, name)
        self.done += 1
        self.landed += verified
        return digest, verified

    async def check_signatures(self, files: Sequence[Path], keys: Path,
                               pinned: Iterable[str]) -> list[int] | None:
        """Have the least busy helper run the in-process RPM signature check
        (mirror.trust.rpmpackage) on `files`, with the certificates in `keys`: the indexes of
        the files it did not accept (rpmkeys decides those); None when no helper is alive (the
        caller checks them itself). In a helper, the check does not compete with the sync's
        event loop for the interpreter lock."""
        alive = [h for h in self._helpers if h.alive]
        if not alive:
            return None
        helper = min(alive, key=lambda h: h.queued)
        result = await self._ask(helper, None, "check", [str(f) for f in files], str(keys),
                                 tuple(sorted(pinned)))
        if result is None:
            return None
        self.checked += len(files)
        return [int(i) for i in result[1]]

    async def _ask(self, helper: _Helper, pool: Pool | None, kind: str,
                   *job: Any) -> tuple[Any, Any, Any] | None:
        """Send `helper` one job and wait for its answer; None when the helper is gone."""
        helper.queued += 1
        try:
            if helper.attached is None:  # on first use, in the running loop; once
                helper.attached = asyncio.get_running_loop().create_task(self._attach(helper))
            await helper.attached
            if not helper.alive or helper.outbox is None:
                return None
            self._ids += 1
            answer: asyncio.Future[tuple[Any, Any, Any] | None] = asyncio.get_running_loop().create_future()
            helper.jobs[self._ids] = (answer, pool)
            helper.outbox.put((kind, self._ids, *job))
            return await answer
        finally:
            helper.queued -= 1

    async def _attach(self, helper: _Helper) -> None:
        reader, writer = await asyncio.open_connection(sock=helper.sock)
        helper.outbox = _Outbox(writer)
        helper.reader_task = asyncio.get_running_loop().create_task(self._read(helper, reader))

    async def _read(self, helper: _Helper, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                for job, digest, outcome, verified in pickle.loads(await _read_frame(reader)):
                    answer, pool = helper.jobs.pop(job)
                    if answer.done():  # its sync stopped waiting: still stage what was verified
                        if pool is not None and digest is not None and outcome is not None:
                            pool.adopt_staged(digest, outcome)
                    elif isinstance(outcome, MirrorError):
                        answer.set_exception(outcome)
                    else:
                        answer.set_result(None if outcome is None else (digest, outcome, verified))
        except (asyncio.IncompleteReadError, OSError, pickle.UnpicklingError, KeyError):
            pass  # it exited (or broke its side of the protocol: treated the same)
        helper.alive = False
        if helper.outbox is not None:
            helper.outbox.close()
        log.warning("download helper %d exited; its files are fetched by the sync itself", helper.pid)
        for answer, _pool in helper.jobs.values():
            if not answer.done():
                answer.set_result(None)
        helper.jobs.clear()

    @property
    def pids(self) -> list[int]:
        return [h.pid for h in self._helpers]

    def hold(self, users: int = 1) -> None:
        """`users` more syncs use the helpers until each calls `release`."""
        self._users += users

    def release(self) -> None:
        """A sync is done with the helpers (its downloads and checks are over); once none is using
        them they are stopped in the background, beside the syncs' commits (`close` waits)."""
        self._users -= 1
        if self._users <= 0 and self._closing is None:
            self._closing = asyncio.ensure_future(self._close())

    async def close(self) -> None:
        """Stop the helpers (they exit when their socket closes) and reap them; once."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await self._closing

    async def _close(self) -> None:
        log.debug("download helpers fetched %d files", self.done)
        for helper in self._helpers:
            helper.alive = False
            if helper.reader_task is not None:
                helper.reader_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await helper.reader_task
            if helper.outbox is not None:
                helper.outbox.close()
        await asyncio.to_thread(self.stop)

    def stop(self) -> None:
        """Blocking: close every helper's socket (each exits when it sees that) and reap them; one
        still there after STOP_GRACE seconds (stuck in a system call) is killed."""
        for helper in self._helpers:
            helper.alive = False
            helper.sock.close()
        deadline = time.monotonic() + STOP_GRACE
        for helper in self._helpers:
            pause = 0.0005  # a helper exits within a millisecond or two: poll soon, then less often
            with contextlib.suppress(ChildProcessError):
                while os.waitpid(helper.pid, os.WNOHANG) == (0, 0):
                    if time.monotonic() > deadline:
                        log.warning("download helper %d did not exit: killed", helper.pid)
                        os.kill(helper.pid, signal.SIGKILL)
                        os.waitpid(helper.pid, 0)
                        break
                    time.sleep(pause)
                    pause = min(pause * 2, 0.01)


class _Outbox:
    """Messages to the other process, sent together once per turn of the event loop (one write,
    one wake-up of the reader, however many jobs or answers a turn produced)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._pending: list[Any] = []

    def put(self, message: Any) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append(message)

    def _flush(self) -> None:
        if self._pending and not self._writer.is_closing():
            self._writer.write(_frame(self._pending))
        self._pending = []

    def close(self) -> None:
        self._writer.close()


def _frame(message: Any) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEAD.pack(len(data)) + data


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = _HEAD.unpack(await reader.readexactly(_HEAD.size))
    return await reader.readexactly(size)


def _helper_main(sock: socket.socket, policy: FetchPolicy, slots: int) -> NoReturn:
    code = 0
    try:
        asyncio.run(_serve(sock, policy, slots))
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        log.exception("download helper %d failed", os.getpid())
        code = 1
    finally:
        os._exit(code)


async def _serve(sock: socket.socket, policy: FetchPolicy, slots: int) -> None:
    reader, writer = await asyncio.open_connection(sock=sock)
    outbox = _Outbox(writer)
    slot = asyncio.Semaphore(slots)  # the sync sends more jobs than that: none waits for the next
    pools: dict[str, Pool] = {}  # one per sync temp folder, as in the sync's process
    tasks: set[asyncio.Task[None]] = set()
    async def run(job: int, url: str, expected: ExpectedFile, tmp: str, root: str,
                  check_with: tuple[str, tuple[str, ...]] | None) -> None:
        answer: tuple[int, str | None, object, bool]
        try:
            pool = pools.get(tmp)
            if pool is None:
                pool = pools[tmp] = Pool(Path(root))
            digest, verified = await fetch_into_pool(fetcher, pool, expected, url, Path(tmp), slot,
                                                     check=landing_check(*check_with) if check_with else None)
            try:
                answer = (job, digest, pool.unstage(digest), verified)
            except KeyError:  # staged by another job of this helper: let the sync fetch it
                answer = (job, None, None, False)
        except MirrorError as exc:
            answer = (job, None, exc, False)
        except Exception as exc:
            answer = (job, None, MirrorError(f"download helper failed: {type(exc).__name__}: {exc}"), False)
        outbox.put(answer)

    def check(job: int, files: list[str], keys: str, pinned: tuple[str, ...]) -> None:
        """Runs on the loop, blocking it (a batch takes milliseconds): no thread to hand the
        interpreter lock to and from."""
        landing = _in_process_check(keys, pinned)
        declined = list(range(len(files))) if landing is None else \
            [i for i, f in enumerate(files) if landing.check(Path(f)) is not None]
        outbox.put((job, None, declined, False))

    done: Callable[[asyncio.Task[None]], None] = tasks.discard
    async with Fetcher(policy) as fetcher:
        try:
            while True:
                for kind, *job in pickle.loads(await _read_frame(reader)):
                    if kind == "check":
                        check(*job)
                        continue
                    task = asyncio.create_task(run(*job))
                    tasks.add(task)
                    task.add_done_callback(done)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the sync closed its end: it ended, or died
        for task in list(tasks):
            task.cancel()  # each removes its temp file
        await asyncio.gather(*tasks, return_exceptions=True)
    # Nothing is left to tidy: leave at once, without the event loop's teardown (the sync waits
    # for this process to exit).
    sys.stderr.flush()
    os._exit(0)
