"""The connection guard in front of both ports (HOSTILE.md row B12, case 68; mirror.web.guard).

Raw sockets on 127.0.0.1 (other 127.0.0.x addresses stand for other clients): slowloris and idle
connections are cut by the request-head and idle timeouts, a slowloris crowd cannot starve a
normal client, the per-client cap closes the connection over it, and keep-alive, pipelining,
HEAD, Range and request bodies (Content-Length and chunked) work as before.  Timeouts are short
(1-2 s) so the file stays fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import itertools
import os
import select
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from mirror.web.guard import (
    ConnectionGuard,
    GuardedConnection,
    GuardPolicy,
    RequestFramer,
    start_guarded_server,
)
from mirror.web.repo import SMALL_FILE_MAX, RepoResponder
from tests.helpers import serve_in_thread
from tests.test_web_repo import DEB, DEB_PATH, build_catalog

TARGET = f"/dev/repo/{DEB_PATH}"
REQUEST = f"GET {TARGET} HTTP/1.1\r\nHost: mirror\r\n\r\n".encode()


@dataclass
class Guarded:
    port: int
    guard: ConnectionGuard
    catalog: Any = None


@contextlib.contextmanager
def guarded(app: web.Application | RepoResponder, policy: GuardPolicy) -> Iterator[Guarded]:
    """`app` (an aiohttp application: the API port; a RepoResponder: the repo port) behind a
    ConnectionGuard on 0.0.0.0 (any local address), served from a thread."""
    with serve_in_thread(app, policy, host="0.0.0.0") as (port, guard):
        yield Guarded(port, guard)


@pytest.fixture
def repo_server(tmp_path: Path) -> Iterator[Guarded]:
    # idle_timeout well above header_timeout: a cut before it can only be the guard's.
    policy = GuardPolicy(header_timeout=1.0, idle_timeout=3.0, max_connections_per_client=64)
    catalog = build_catalog(tmp_path)
    with guarded(RepoResponder(catalog), policy) as server:
        server.catalog = catalog
        yield server


def connect(port: int, source: str = "127.0.0.1", timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))


def connect_or_refused(port: int, source: str) -> socket.socket | None:
    """A connection, or None when the guard reset it so fast that connect() itself saw the reset
    (with a timeout, connect() is non-blocking and reports an RST that arrived before it returned)."""
    try:
        return connect(port, source)
    except ConnectionResetError:
        return None


_PENDING: weakref.WeakKeyDictionary[socket.socket, bytes] = weakref.WeakKeyDictionary()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response (Content-Length framed) from a keep-alive connection; what arrives after it
    (pipelined responses) is kept for the next call."""
    buf = _PENDING.pop(sock, b"")
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {buf!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("closed in the body")
        rest += chunk
    if len(rest) > length:
        _PENDING[sock] = rest[length:]
    return int(status_line.split()[1]), headers, rest[:length]


def closed_after(sock: socket.socket, limit: float) -> float | None:
    """Seconds until the server closes `sock` (EOF or reset), or None if still open at `limit`."""
    start = time.monotonic()
    sock.settimeout(limit)
    try:
        while True:
            if not sock.recv(65536):
                return time.monotonic() - start
    except (ConnectionResetError, BrokenPipeError):
        return time.monotonic() - start
    except TimeoutError:
        return None


def is_closed(sock: socket.socket) -> bool:
    """Non-blocking: has the server closed `sock`?"""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(65536, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class Slowloris:
    """Connections that each send one byte of a request head every `interval` seconds, from a
    background thread; records when the server closed each."""

    def __init__(self, port: int, count: int, *, interval: float = 0.5, source: str = "127.0.0.1") -> None:
        made = [connect_or_refused(port, source) for _ in range(count)]
        self.opened = time.monotonic()
        self.socks = [sock or socket.socket() for sock in made]
        self.closed_at: dict[int, float] = {i: 0.0 for i, sock in enumerate(made) if sock is None}
        self.interval = interval
        self.payload = b"GET /dev/repo/x HTTP/1.1\r\nHost: mirror\r\nX-Slow: " + b"a" * 10_000
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.closed_at) < len(self.socks):
            byte = self.payload[self.sent:self.sent + 1]
            for i, sock in enumerate(self.socks):
                if i in self.closed_at:
                    continue
                try:
                    if is_closed(sock):
                        raise ConnectionResetError
                    sock.send(byte)
                except OSError:
                    self.closed_at[i] = time.monotonic() - self.opened
            self.sent += 1
            self._stop.wait(self.interval)

    def wait_all_closed(self, limit: float) -> None:
        self._thread.join(limit)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in self.socks:
            sock.close()


# -- the aiohttp contract the guard relies on -------------------------------------------------


def test_aiohttp_contract(tmp_path: Path) -> None:
    """Fails loudly if aiohttp changes what mirror.web.guard relies on (see its docstring)."""
    big = bytes(range(256)) * 16384  # 4 MiB: the sendfile path, with the wrapper as protocol

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(tmp_path / "big")

    (tmp_path / "big").write_bytes(big)

    async def probe() -> None:
        app = web.Application()
        app.router.add_get("/big", handler)
        runner = web.AppRunner(app, keepalive_timeout=1.5)
        await runner.setup()
        factory = runner.server
        assert isinstance(factory, web.Server) and callable(factory)  # 1: a protocol factory
        protocol = factory()
        assert isinstance(protocol, asyncio.Protocol)
        for name in ("connection_made", "data_received", "eof_received", "connection_lost",
                     "pause_writing", "resume_writing"):
            assert callable(getattr(protocol, name)), name
        assert getattr(protocol, "keepalive_timeout", None) == 1.5  # 4: the kwarg reaches it
        guard = ConnectionGuard(GuardPolicy(header_timeout=5, idle_timeout=1.5))
        server = await start_guarded_server(runner, guard, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for headers, body in (("", big), ("Range: bytes=10-19\r\n", big[10:20])):  # 2: sendfile works
            writer.write(f"GET /big HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            assert await reader.readexactly(length) == body
        # 3: aiohttp's Server tracks the connection, so runner.cleanup() will close it ...
        assert len(factory.connections) == 1 and guard.connections == 1
        # 4: ... and keepalive_timeout closes it when idle (here before cleanup does)
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert 1.0 <= time.monotonic() - started <= 3.5
        await asyncio.sleep(0.05)
        assert guard.connections == 0 and guard.header_timeouts == 0
        writer.close()
        server.close()
        await runner.cleanup()

    asyncio.run(probe())


# -- timeouts ---------------------------------------------------------------------------------


def test_slowloris_is_disconnected_after_the_header_timeout(repo_server: Guarded) -> None:
    crowd = Slowloris(repo_server.port, 1, interval=0.5)
    try:
        crowd.wait_all_closed(5)
        assert 0 in crowd.closed_at, "a client dribbling its request head was never cut"
        assert 0.9 <= crowd.closed_at[0] <= 2.0, crowd.closed_at
        assert crowd.sent >= 2
    finally:
        crowd.close()
    assert repo_server.guard.header_timeouts == 1
    # The same after a first, normal request on the connection: the dribbled second head is cut
    # header_timeout after its first byte.
    sock = connect(repo_server.port)
    try:
        sock.sendall(REQUEST)
        assert read_response(sock)[0] == 200
        started = time.monotonic()
        cut = None
        for byte in REQUEST:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                cut = time.monotonic() - started
                break
            if is_closed(sock):
                cut = time.monotonic() - started
                break
            time.sleep(0.25)
        assert cut is not None and 0.9 <= cut <= 2.0, cut
    finally:
        sock.close()
    assert repo_server.guard.header_timeouts == 2


def test_idle_connections_are_closed(repo_server: Guarded) -> None:
    # A connection that never sends anything: the first request head is due 1 s after accept.
    silent = connect(repo_server.port)
    after = closed_after(silent, 5)
    assert after is not None and 0.8 <= after <= 2.5, after
    silent.close()
    # Between requests the clock is the idle timeout (2 s), and a new head's clock starts at its
    # first byte, not at the previous response: a 1.3 s pause (> header_timeout) is fine.
    sock = connect(repo_server.port)
    try:
        sock.sendall(REQUEST)
        assert read_response(sock)[0] == 200
        time.sleep(1.3)
        sock.sendall(REQUEST)
        assert read_response(sock)[2] == DEB
        after = closed_after(sock, 6)
        assert after is not None and 2.5 <= after <= 5.0, after
    finally:
        sock.close()


def test_slowloris_crowd_cannot_starve_a_normal_client(repo_server: Guarded) -> None:
    crowd = Slowloris(repo_server.port, 50, interval=0.5)
    try:
        time.sleep(0.3)
        assert not crowd.closed_at  # all 50 admitted (the cap is 64) and dribbling
        slowest = 0.0
        conn = http.client.HTTPConnection("127.0.0.1", repo_server.port, timeout=5)
        for i in range(30):
            if i % 10 == 0:  # new connections too, not only a warm keep-alive one
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", repo_server.port, timeout=5)
            started = time.monotonic()
            conn.request("GET", TARGET)
            reply = conn.getresponse()
            assert (reply.status, reply.read()) == (200, DEB)
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.05)
        conn.close()
        assert slowest < 0.5, f"a normal request took {slowest:.2f} s next to 50 slowloris connections"
        crowd.wait_all_closed(5)
        assert len(crowd.closed_at) == 50, "slowloris connections still open"
        assert max(crowd.closed_at.values()) <= 2.5, crowd.closed_at
    finally:
        crowd.close()
    assert repo_server.guard.header_timeouts == 50


def test_stalled_request_body_is_cut_but_a_steady_one_is_not() -> None:
    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    app = web.Application()
    app.router.add_post("/echo", echo)
    with guarded(app, GuardPolicy(header_timeout=1.0, idle_timeout=5.0)) as server:
        # A body trickling in, each gap shorter than the timeout, 2.4 s in all: served.
        sock = connect(server.port)
        try:
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n")
            for byte in b"abcd":
                time.sleep(0.6)
                sock.sendall(bytes([byte]))
            assert read_response(sock)[2] == b"abcd"
        finally:
            sock.close()
        # A body that stops: cut after the timeout.
        sock = connect(server.port)
        try:
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
            after = closed_after(sock, 5)
            assert after is not None and 0.8 <= after <= 2.5, after
        finally:
            sock.close()
        assert (server.guard.body_timeouts, server.guard.header_timeouts) == (1, 0)


# -- the per-client cap -----------------------------------------------------------------------


def test_per_client_cap_closes_the_connection_over_it(tmp_path: Path) -> None:
    policy = GuardPolicy(header_timeout=5.0, idle_timeout=10.0, max_connections_per_client=4)
    with guarded(RepoResponder(build_catalog(tmp_path)), policy) as server:
        held = [connect(server.port, "127.0.0.3") for _ in range(4)]
        try:
            for sock in held:  # each one admitted and served
                sock.sendall(REQUEST)
                assert read_response(sock)[0] == 200
            extra = connect_or_refused(server.port, "127.0.0.3")
            if extra is not None:  # else the reset reached connect() itself: refused all the same
                after = closed_after(extra, 3)
                extra.close()
                assert after is not None and after < 0.5, "the 5th connection from one address was kept"
            assert server.guard.refused == 1
            # Other addresses are not affected by that client's connections.
            other = connect(server.port, "127.0.0.1")
            other.sendall(REQUEST)
            assert read_response(other)[2] == DEB
            other.close()
            # The held connections still work; once one closes, the address may connect again.
            held[0].sendall(REQUEST)
            assert read_response(held[0])[0] == 200
            held.pop(0).close()
            deadline = time.monotonic() + 3
            while server.guard.open.get("127.0.0.3", 0) != 3 and time.monotonic() < deadline:
                time.sleep(0.02)
            again = connect(server.port, "127.0.0.3")
            again.sendall(REQUEST)
            assert read_response(again)[2] == DEB
            again.close()
        finally:
            for sock in held:
                sock.close()
        assert server.guard.refused == 1


def test_500_slowloris_and_500_idle_connections_from_one_address(tmp_path: Path) -> None:
    """HOSTILE case 68 at full size: one address opens 500 dribbling and 500 silent connections.
    The default cap admits 64, the rest are reset at once; a client at another address keeps
    getting fast answers; the admitted ones are cut by the header timeout."""
    policy = GuardPolicy(header_timeout=1.5, idle_timeout=30.0)  # default cap: 64
    with guarded(RepoResponder(build_catalog(tmp_path)), policy) as server:
        crowd = Slowloris(server.port, 500, interval=0.5, source="127.0.0.5")
        idle = [sock for _ in range(500) if (sock := connect_or_refused(server.port, "127.0.0.5"))]
        try:
            deadline = time.monotonic() + 5
            while server.guard.refused + server.guard.open.get("127.0.0.5", 0) < 1000 \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
            assert server.guard.open.get("127.0.0.5") == 64
            assert server.guard.refused == 936
            slowest = 0.0
            for _ in range(10):
                started = time.monotonic()
                sock = connect(server.port, "127.0.0.1")
                sock.sendall(REQUEST)
                assert read_response(sock)[2] == DEB
                sock.close()
                slowest = max(slowest, time.monotonic() - started)
            assert slowest < 0.5, slowest
            crowd.wait_all_closed(5)
            assert len(crowd.closed_at) == 500
            deadline = time.monotonic() + 5
            while server.guard.open.get("127.0.0.5") and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "127.0.0.5" not in server.guard.open
            assert server.guard.header_timeouts == 64
        finally:
            crowd.close()
            for sock in idle:
                sock.close()


# -- normal traffic is unaffected -------------------------------------------------------------


def test_keep_alive_pipelining_head_and_range_still_work(repo_server: Guarded) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", repo_server.port, timeout=5)
    try:
        # Several requests on one connection, 2.5 s in all (> header_timeout): the head clock
        # restarts with every request.
        for i in range(10):
            for method, headers, status, body in (("GET", {}, 200, DEB),
                                                  ("HEAD", {}, 200, b""),
                                                  ("GET", {"Range": "bytes=10-19"}, 206, DEB[10:20]),
                                                  ("HEAD", {"Range": "bytes=0-9"}, 206, b"")):
                conn.request(method, TARGET, headers=headers)
                reply = conn.getresponse()
                assert (reply.status, reply.read()) == (status, body), (i, method, headers)
                assert not reply.will_close
                if status == 206:
                    assert reply.headers["Content-Range"].startswith("bytes ")
            time.sleep(0.25)
    finally:
        conn.close()
    # Pipelined: three requests in one write, a head split over two writes.
    sock = connect(repo_server.port)
    try:
        sock.sendall(REQUEST * 2 + f"HEAD {TARGET} HTTP/1.1\r\nHost: mirror\r\n\r\n".encode()
                     + REQUEST[:20])
        assert read_response(sock)[2] == DEB
        assert read_response(sock)[2] == DEB
        status, headers, body = _read_head_only(sock)
        assert (status, body, headers["content-length"]) == (200, b"", str(len(DEB)))
        time.sleep(0.5)
        sock.sendall(REQUEST[20:])
        assert read_response(sock)[2] == DEB
    finally:
        sock.close()
    assert repo_server.guard.header_timeouts == 0


def test_large_files_go_out_by_sendfile_with_range_head_and_keep_alive(repo_server: Guarded) -> None:
    """Files over SMALL_FILE_MAX take the sendfile path (reading is paused meanwhile): full GET,
    ranges, HEAD and If-Range, pipelined, on one guarded keep-alive connection."""
    big = os.urandom(SMALL_FILE_MAX * 4 + 7)
    catalog = repo_server.catalog
    catalog.add(catalog.tiers[("dev", "repo")], "pool/big_1_all.deb", big)
    target = "/dev/repo/pool/big_1_all.deb"
    etag = f'"{hashlib.sha256(big).hexdigest()}"'
    sock = connect(repo_server.port)
    try:
        def ask(extra: str = "", method: str = "GET") -> bytes:
            return f"{method} {target} HTTP/1.1\r\nHost: mirror\r\n{extra}\r\n".encode()

        sock.sendall(ask() + ask("Range: bytes=1000-600000\r\n") + ask("Range: bytes=-70000\r\n"))
        status, headers, body = read_response(sock)
        assert (status, body, headers["etag"]) == (200, big, etag)
        status, headers, body = read_response(sock)
        assert (status, body) == (206, big[1000:600001])
        assert headers["content-range"] == f"bytes 1000-600000/{len(big)}"
        status, headers, body = read_response(sock)
        assert (status, body) == (206, big[-70000:])
        sock.sendall(ask(method="HEAD"))
        status, headers, body = _read_head_only(sock)
        assert (status, headers["content-length"], headers["etag"]) == (200, str(len(big)), etag)
        sock.sendall(ask(f"Range: bytes=0-9\r\nIf-Range: {etag}\r\n"))
        assert read_response(sock)[2] == big[:10]
        sock.sendall(ask('Range: bytes=0-9\r\nIf-Range: "stale"\r\n'))
        assert read_response(sock)[2] == big
        sock.sendall(ask(f"Range: bytes={len(big)}-\r\n"))
        status, headers, _ = read_response(sock)
        assert (status, headers["content-range"]) == (416, f"bytes */{len(big)}")
        sock.sendall(ask(f"If-None-Match: {etag}\r\n"))
        assert read_response(sock)[0] == 304
    finally:
        sock.close()
    assert repo_server.guard.header_timeouts == 0


def _read_head_only(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """A response without a body (to HEAD), whatever its Content-Length says."""
    buf = _PENDING.pop(sock, b"")
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {buf!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    if rest:
        _PENDING[sock] = rest
    status_line, *lines = head.decode("latin-1").split("\r\n")
    return int(status_line.split()[1]), {k.strip().lower(): v.strip() for k, _, v in
                                         (line.partition(":") for line in lines)}, b""


def test_bodies_with_length_and_chunked_are_followed_across_pipelined_requests() -> None:
    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    app = web.Application()
    app.router.add_post("/echo", echo)
    with guarded(app, GuardPolicy(header_timeout=1.0, idle_timeout=5.0)) as server:
        tricky = b"x\r\n\r\nGET / HTTP/1.1\r\n\r\n"  # looks like the end of a head, and a request
        chunked = (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"5;ext=1\r\nhello\r\n" + f"{len(tricky):x}".encode() + b"\r\n" + tricky
                   + b"\r\n0\r\nTrailer-Field: y\r\n\r\n")
        lengthed = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(tricky), tricky)
        sock = connect(server.port)
        try:
            sock.sendall(chunked + lengthed + chunked)
            assert read_response(sock)[2] == b"hello" + tricky
            assert read_response(sock)[2] == tricky
            assert read_response(sock)[2] == b"hello" + tricky
            # After the bodies, the connection is between requests again: no header clock runs.
            time.sleep(1.4)
            sock.sendall(lengthed)
            assert read_response(sock)[2] == tricky
        finally:
            sock.close()
        assert server.guard.header_timeouts == server.guard.body_timeouts == 0


# -- the framer on its own --------------------------------------------------------------------


STREAM = [
    (b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", 0),
    (b"\r\n\r\nGET /b HTTP/1.1\nHost: x\n\n", 0),  # leading empty lines, bare LF
    (b"POST /c HTTP/1.1\r\nContent-Length: 7\r\n\r\n\r\n\r\nabc", 7),
    (b"POST /d HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
     b"3\r\nabc\r\n10;x=y\r\n0123456789abcdef\r\n0\r\nA: b\r\nC: d\r\n\r\n", 0),
    (b"HEAD /e HTTP/1.0\r\ncontent-length: 0\r\n\r\n", 0),
]


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_framer_counts_heads_at_every_split(step: int) -> None:
    data = b"".join(part for part, _ in STREAM)
    framer = RequestFramer()
    seen = []
    for i in range(0, len(data), step):
        framer.feed(data[i:i + step])
        seen.append(framer.heads)
    assert framer.heads == len(STREAM)
    assert framer.in_head and not framer.head_started and not framer.opaque
    assert seen == sorted(seen)


def test_framer_states() -> None:
    framer = RequestFramer()
    assert framer.in_head and not framer.head_started
    framer.feed(b"\r\n")
    assert framer.head_started and framer.heads == 0
    framer.feed(b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert framer.head_started and framer.heads == 0
    framer.feed(b"\r\n")
    assert framer.heads == 1 and not framer.head_started
    framer.feed(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nab")
    assert framer.in_body and framer.heads == 2
    framer.feed(b"cG")
    assert framer.in_head and framer.head_started
    for bad in (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n",
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"):
        framer = RequestFramer()
        framer.feed(bad)
        assert framer.opaque, bad
    framer = RequestFramer()
    framer.feed(b"GET / HTTP/1.1\r\nX: " + b"a" * (2 * 1024 * 1024))
    assert framer.oversized


def test_guard_counts_per_address() -> None:
    guard = ConnectionGuard(GuardPolicy(max_connections_per_client=2))
    assert guard.admit("a") and guard.admit("a") and not guard.admit("a") and guard.admit("b")
    guard.release("a")
    assert guard.admit("a") and guard.open == {"a": 2, "b": 1} and guard.refused == 1
    for _ in itertools.repeat(None, 3):
        guard.release("a")
    assert guard.open == {"b": 1}
    with pytest.raises(ValueError):
        GuardPolicy(header_timeout=0)
    assert GuardedConnection.__slots__  # no per-connection __dict__
