"""The repo port served by several processes.

One Python process serves a few thousand small-file requests a second on one core; nginx uses
every core.  With ``[server] repo_workers = N`` (N >= 2, or ``"auto"``: one per CPU), ``mirror
serve`` serves the repo port from N worker processes, and its own process only accepts and
dispatches (and serves the API port, as always).

How connections are shared: the main process owns the listening socket(s) and accepts every
connection itself (one ``accept`` per connection, not per request).  It applies the per-client
connection cap there (:class:`mirror.web.guard.ConnectionGuard`: one count per client address for
the whole port, exact), then hands the connected socket to the worker with the fewest open
connections over a Unix ``SOCK_SEQPACKET`` socket pair (``SCM_RIGHTS``, :func:`socket.send_fds`).
A worker tells the main process on the same pair when a connection it was given closes.  (A
shared accept socket or ``SO_REUSEPORT``, gunicorn's and nginx's models, would leave no single
place to count a client's connections.)

A worker is ``python -m mirror.web.workers CONFIG FD``: it loads the same configuration, opens its
own read-only connection to the state database and its own catalog (it sees every commit, as a
single-process repo port does) and serves what it is given behind its own request-head and idle
timeouts.  Per-client snapshot pins (:mod:`mirror.affinity`) are shared through
:class:`mirror.affinity.SharedPins`, since one client's connections may reach different workers.
A worker writes its counters (responses by status, guard timeouts) as one JSON line on stdout
every second; the main process adds them to its metrics, so ``/metrics`` covers every process (up
to a second late).  A worker stops gracefully (in-flight requests finish) on SIGTERM or SIGINT,
and when its stdin reaches end of file: the main process went away, even by SIGKILL, so no
worker outlives it.  A worker that dies is restarted after a second; meanwhile the others take
its share.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import struct
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mirror.web.guard import ConnectionGuard, GuardPolicy, client_key

__all__ = ["GuardCounters", "RepoWorkers", "main"]

log = logging.getLogger(__name__)

STATS_INTERVAL = 1.0  # seconds between a worker's counter reports
RESTART_DELAY = 1.0  # seconds before a dead worker is started again
SHUTDOWN_TIMEOUT = 10.0  # seconds a stopping worker gives in-flight requests (as the main process)
UNCAPPED = 2**31  # a worker's own per-client cap: none (the main process counts)
ACCEPTS_PER_WAKEUP = 64  # connections accepted per readiness event before yielding to the loop


@dataclass
class GuardCounters:
    """A worker's connection-guard counters, as last reported (the attributes of a guard)."""

    name: str = "repo"
    connections: int = 0
    refused: int = 0
    header_timeouts: int = 0
    body_timeouts: int = 0


@dataclass
class _Worker:
    index: int
    guard: GuardCounters = field(default_factory=GuardCounters)
    process: asyncio.subprocess.Process | None = None
    channel: socket.socket | None = None  # our end of the socket pair; None while down
    clients: Counter[str] = field(default_factory=Counter)  # open connections handed over, by client
    responses: Counter[str] = field(default_factory=Counter)  # cumulative, as last reported
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def load(self) -> int:
        return self.clients.total()


def _listening_sockets(host: str | None, port: int, backlog: int) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for (host, port): what loop.create_server makes."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen: set[tuple[int, Any]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class RepoWorkers:
    """The main process's side: the listening sockets, the dispatch, the worker processes.

    Duck-types the part of :class:`asyncio.Server` that :func:`mirror.web.repo.run_servers` uses
    (``sockets``, ``close()``); :meth:`stop` ends the workers.  `guard` counts every client's
    open connections (its cap refuses the excess at accept); the workers' own guards report
    their timeouts (:attr:`guards`).
    """

    def __init__(self, config: Path, processes: int, guard: ConnectionGuard, *,
                 on_responses: Callable[[str, int], None] | None = None,
                 shutdown_timeout: float = SHUTDOWN_TIMEOUT) -> None:
        if processes < 1:
            raise ValueError("RepoWorkers needs at least one worker process")
        self.config = config
        self.guard = guard
        self.on_responses = on_responses
        self.shutdown_timeout = shutdown_timeout
        self.workers = [_Worker(i) for i in range(1, processes + 1)]
        self.sockets: list[socket.socket] = []
        self._stopping = False
        self.handed_over = 0  # connections passed to workers
        self.dropped = 0  # connections closed because no worker could take them

    @property
    def guards(self) -> list[GuardCounters]:
        return [w.guard for w in self.workers]

    async def start(self, host: str | None, port: int, *, backlog: int = 1024) -> None:
        """Listen on (host, port) and start the workers."""
        loop = asyncio.get_running_loop()
        self.sockets = _listening_sockets(host, port, backlog)
        if port == 0 and len(self.sockets) > 1:  # one ephemeral port for every address: keep the first
            for extra in self.sockets[1:]:
                extra.close()
            del self.sockets[1:]
        for worker in self.workers:
            await self._spawn(worker)
            worker.tasks.append(loop.create_task(self._supervise(worker), name=f"repo worker {worker.index}"))
        for sock in self.sockets:
            loop.add_reader(sock.fileno(), self._accept, sock)

    def close(self) -> None:
        """Stop accepting (as asyncio.Server.close)."""
        loop = asyncio.get_running_loop()
        for sock in self.sockets:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(sock.fileno())
            sock.close()

    async def stop(self) -> None:
        """End the workers: SIGTERM (they finish in-flight requests), SIGKILL after the timeout."""
        self._stopping = True
        self.close()
        procs = [w.process for w in self.workers if w.process is not None and w.process.returncode is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        if procs:
            waits = [asyncio.ensure_future(p.wait()) for p in procs]
            await asyncio.wait(waits, timeout=self.shutdown_timeout + 2)
            for proc in procs:
                if proc.returncode is None:
                    log.error("repo worker (pid %d) did not stop in time: killing it", proc.pid)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
        for worker in self.workers:
            for task in worker.tasks:
                task.cancel()
            await asyncio.gather(*worker.tasks, return_exceptions=True)
            self._down(worker)

    # -- dispatch -----------------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                conn, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS...: try again on the next wakeup
                log.error("accepting a repo-port connection failed: %s", exc)
                return
            with conn:
                self._dispatch(conn, client_key(address))

    def _dispatch(self, conn: socket.socket, client: str) -> None:
        if not self.guard.admit(client):
            log.debug("repo: refused a connection from %s: %d open (max_connections_per_client)",
                      client, self.guard.open.get(client, 0))
            with contextlib.suppress(OSError):  # a reset, not a FIN: nothing lingers in TIME_WAIT
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        for worker in sorted((w for w in self.workers if w.channel is not None), key=lambda w: w.load):
            assert worker.channel is not None
            try:
                socket.send_fds(worker.channel, [client.encode("utf-8", "surrogateescape")], [conn.fileno()])
            except OSError:  # full (BlockingIOError) or the worker is gone: the next one
                continue
            worker.clients[client] += 1
            self.handed_over += 1
            return
        self.guard.release(client)
        self.dropped += 1
        log.error("repo: no worker could take a connection from %s: closed", client)

    def _closed(self, worker: _Worker) -> None:
        """The worker's notes: one message per handed-over connection that closed (its client)."""
        channel = worker.channel
        while channel is not None:
            try:
                message = channel.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                message = b""
            if not message:  # the worker's end is closed: it is going away
                self._down(worker)
                return
            client = message.decode("utf-8", "surrogateescape")
            if worker.clients[client] > 0:
                worker.clients[client] -= 1
                if not worker.clients[client]:
                    del worker.clients[client]
                self.guard.release(client)

    def _down(self, worker: _Worker) -> None:
        """The worker is gone: so are its connections."""
        if worker.channel is not None:
            with contextlib.suppress(ValueError, OSError, RuntimeError):
                asyncio.get_running_loop().remove_reader(worker.channel.fileno())
            worker.channel.close()
            worker.channel = None
        for client, count in worker.clients.items():
            for _ in range(count):
                self.guard.release(client)
        worker.clients.clear()
        worker.guard.connections = 0

    # -- worker processes ---------------------------------------------------------------------

    async def _spawn(self, worker: _Worker) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            ours.setblocking(False)
            worker.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mirror.web.workers", str(self.config), str(theirs.fileno()),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                pass_fds=(theirs.fileno(),))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        worker.channel = ours
        worker.responses = Counter()
        worker.guard = GuardCounters()
        asyncio.get_running_loop().add_reader(ours.fileno(), self._closed, worker)
        log.info("repo worker %d started (pid %d)", worker.index, worker.process.pid)

    async def _supervise(self, worker: _Worker) -> None:
        """Read the worker's reports; when it dies, start it again (unless we are stopping)."""
        while True:
            proc = worker.process
            assert proc is not None and proc.stdout is not None
            while line := await proc.stdout.readline():
                self._report(worker, line)
            code = await proc.wait()
            self._down(worker)
            if self._stopping:
                return
            log.error("repo worker %d (pid %d) exited with status %s: restarting it in %gs",
                      worker.index, proc.pid, code, RESTART_DELAY)
            await asyncio.sleep(RESTART_DELAY)
            if self._stopping:
                return
            try:
                await self._spawn(worker)
            except OSError as exc:
                log.error("cannot restart repo worker %d: %s", worker.index, exc)
                await asyncio.sleep(RESTART_DELAY)

    def _report(self, worker: _Worker, line: bytes) -> None:
        try:
            report = json.loads(line)
            responses = {str(k): int(v) for k, v in report["responses"].items()}
            guard = report["guard"]
            counters = GuardCounters("repo", 0, 0, int(guard["header_timeouts"]), int(guard["body_timeouts"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.error("repo worker %d sent a malformed report (%s): %r", worker.index, exc, line[:200])
            return
        if self.on_responses is not None:
            for status, total in responses.items():
                delta = total - worker.responses.get(status, 0)
                if delta > 0:
                    self.on_responses(status, delta)
        worker.responses = Counter(responses)
        worker.guard = counters


# -- the worker process ------------------------------------------------------------------------


class _WorkerGuard(ConnectionGuard):
    """A worker's guard: timeouts as usual; the cap is the main process's, so every connection
    is admitted here, and each one that closes is reported back on the socket pair."""

    def __init__(self, policy: GuardPolicy, channel: socket.socket) -> None:
        super().__init__(dataclasses.replace(policy, max_connections_per_client=UNCAPPED), name="repo")
        self.channel = channel

    def release(self, client: str) -> None:
        super().release(client)
        with contextlib.suppress(OSError):  # the main process is gone: we are stopping anyway
            self.channel.send(client.encode("utf-8", "surrogateescape"))


class _Reporter:
    def __init__(self, guard: ConnectionGuard) -> None:
        self.guard = guard
        self.responses: Counter[str] = Counter()

    def count(self, status: int) -> None:
        self.responses[str(status)] += 1

    def write(self) -> None:
        guard = self.guard
        line = json.dumps({
            "responses": dict(self.responses),
            "guard": {"connections": guard.connections, "header_timeouts": guard.header_timeouts,
                      "body_timeouts": guard.body_timeouts},
        }).encode() + b"\n"
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(sys.stdout.fileno(), line)


async def _serve_worker(config: Path, channel: socket.socket) -> None:
    from mirror.affinity import SharedPins, pins_path
    from mirror.config import load
    from mirror.server import guard_policy, make_catalog
    from mirror.store import Store
    from mirror.web.connection import RepoServer
    from mirror.web.repo import RepoResponder

    settings = load(config, check_keys=False)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def parent_gone() -> None:
        try:
            if os.read(sys.stdin.fileno(), 4096):
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        stop.set()

    os.set_blocking(sys.stdin.fileno(), False)
    loop.add_reader(sys.stdin.fileno(), parent_gone)
    channel.setblocking(False)

    store = Store(settings.storage.root / "state.db")
    pins = SharedPins(pins_path(settings.storage.root))
    try:
        guard = _WorkerGuard(guard_policy(settings), channel)
        reporter = _Reporter(guard)
        server = RepoServer(RepoResponder(make_catalog(settings, store, pins=pins),
                                          on_response=reporter.count), guard)
        pending: set[asyncio.Task[Any]] = set()

        async def serve(conn: socket.socket) -> None:
            try:
                await loop.connect_accepted_socket(server, conn)
            except OSError as exc:
                log.debug("a handed-over connection failed at start: %s", exc)
                conn.close()

        def receive() -> None:
            while True:
                try:
                    message, fds, _, _ = socket.recv_fds(channel, 1024, 8)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    log.error("the main process's socket pair failed: %s", exc)
                    stop.set()
                    return
                if not message and not fds:  # the main process closed its end
                    stop.set()
                    return
                for fd in fds:
                    conn = socket.socket(fileno=fd)
                    conn.setblocking(False)
                    task = loop.create_task(serve(conn))
                    pending.add(task)
                    task.add_done_callback(pending.discard)

        loop.add_reader(channel.fileno(), receive)

        async def report() -> None:
            while True:
                reporter.write()
                await asyncio.sleep(STATS_INTERVAL)

        reporting = loop.create_task(report())
        await stop.wait()
        loop.remove_reader(channel.fileno())
        loop.remove_reader(sys.stdin.fileno())
        await server.shutdown(SHUTDOWN_TIMEOUT)  # in-flight requests finish; idle connections close
        reporting.cancel()
        reporter.write()
    finally:
        pins.close()
        store.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m mirror.web.workers CONFIG FD (started by `mirror serve`)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s %(name)s[worker {os.getpid()}]: %(message)s")
    os.set_blocking(sys.stdout.fileno(), False)
    channel = socket.socket(fileno=int(args[1]))
    try:
        asyncio.run(_serve_worker(Path(args[0]), channel))
    except Exception:
        log.exception("repo worker failed")
        return 1
    finally:
        channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
