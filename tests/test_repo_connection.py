"""The repo port's own HTTP/1.1 connection (mirror.web.connection): limits, framing, flow control.

Raw sockets against a real `RepoServer` on 127.0.0.1, as `mirror serve` runs it; the behaviour
shared with the guard (timeouts, the per-client cap) is in test_serve_guard.py, the answers
themselves (paths, conditionals, Range) in test_web_repo.py.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirror.web.guard import GuardPolicy
from mirror.web.repo import SMALL_FILE_MAX, RepoResponder
from tests.helpers import serve_in_thread
from tests.test_serve_guard import Guarded, _read_head_only, closed_after, connect, read_response
from tests.test_web_repo import DEB, DEB_PATH, build_catalog

TARGET = f"/dev/repo/{DEB_PATH}"
GET = f"GET {TARGET} HTTP/1.1\r\nHost: mirror\r\n\r\n".encode()


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Guarded]:
    policy = GuardPolicy(header_timeout=1.0, idle_timeout=3.0)
    catalog = build_catalog(tmp_path)
    with serve_in_thread(RepoResponder(catalog), policy) as (port, guard):
        yield Guarded(port, guard, catalog)


def exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes, bool]:
    """Send `request`, read one response; also whether the server then closed the connection."""
    sock = connect(port)
    try:
        sock.sendall(request)
        status, headers, body = read_response(sock)
        closed = closed_after(sock, 3) is not None
    finally:
        sock.close()
    return status, headers, body, closed


@pytest.mark.parametrize(("name", "request_bytes", "status"), [
    ("request_line_over_8190_bytes", b"GET /dev/repo/" + b"a" * 8200 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    ("header_field_over_8190_bytes",
     b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 8200 + b"\r\n\r\n", 431),
    ("more_than_128_header_fields",
     b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(130)) + b"\r\n", 431),
    ("head_over_64_KiB",
     b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"c" * 8000) for i in range(9)) + b"\r\n", 431),
    ("get_body_over_64_KiB",
     b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n" + b"d" * 70000, 413),
    ("malformed_request_line", b"GET\x01 / HTTP/1.1\r\n\r\n", 400),
    ("malformed_content_length", b"GET / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n", 400),
    ("conflicting_length_and_chunked",
     b"GET / HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
])
def test_oversized_or_malformed_request_is_refused_and_closed(
        repo: Guarded, name: str, request_bytes: bytes, status: int) -> None:
    got, headers, _body, closed = exchange(repo.port, request_bytes)
    assert got == status, name
    assert headers.get("connection") == "close", name
    assert headers.get("x-content-type-options") == "nosniff", name
    assert closed, name


def test_get_with_a_small_body_is_answered_and_the_connection_goes_on(repo: Guarded) -> None:
    sock = connect(repo.port)
    try:
        sock.sendall(f"GET {TARGET} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".encode() + GET)
        assert read_response(sock)[2] == DEB
        assert read_response(sock)[2] == DEB
    finally:
        sock.close()


def test_pipelined_requests_are_answered_in_order_and_none_after_connection_close(repo: Guarded) -> None:
    missing = b"GET /dev/repo/nothing.deb HTTP/1.1\r\nHost: x\r\n\r\n"
    head = f"HEAD {TARGET} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    last = f"GET {TARGET} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    sock = connect(repo.port)
    try:
        sock.sendall(GET + missing + head + last + GET)
        assert read_response(sock)[::2] == (200, DEB)
        assert read_response(sock)[0] == 404
        status, headers, body = _read_head_only(sock)
        assert (status, headers["content-length"], body) == (200, str(len(DEB)), b"")
        status, headers, body = read_response(sock)
        assert (status, headers.get("connection"), body) == (200, "close", DEB)
        assert closed_after(sock, 3) is not None  # the request after Connection: close is not answered
    finally:
        sock.close()


@pytest.mark.parametrize(("request_bytes", "keeps_open"), [
    (f"GET {TARGET} HTTP/1.0\r\n\r\n".encode(), False),
    (f"GET {TARGET} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".encode(), True),
    (f"GET {TARGET} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), True),
    (f"GET {TARGET} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(), False),
])
def test_keep_alive_follows_the_http_version_and_connection_header(
        repo: Guarded, request_bytes: bytes, keeps_open: bool) -> None:
    sock = connect(repo.port)
    try:
        sock.sendall(request_bytes)
        status, headers, body = read_response(sock)
        assert (status, body) == (200, DEB)
        assert (headers.get("connection") != "close") == keeps_open
        if keeps_open:
            sock.sendall(GET)
            assert read_response(sock)[2] == DEB
        else:
            assert closed_after(sock, 3) is not None
    finally:
        sock.close()


def test_upgrade_request_is_answered_then_closed(repo: Guarded) -> None:
    request = (f"GET {TARGET} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
               "garbage after the upgrade").encode()
    status, _headers, body, closed = exchange(repo.port, request)
    assert (status, body, closed) == (200, DEB, True)


def test_stalled_request_body_on_the_repo_port_is_cut(repo: Guarded) -> None:
    sock = connect(repo.port)
    try:
        sock.sendall(f"GET {TARGET} HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc".encode())
        after = closed_after(sock, 5)
        assert after is not None and 0.8 <= after <= 2.5, after
    finally:
        sock.close()
    assert (repo.guard.body_timeouts, repo.guard.header_timeouts) == (1, 0)


def test_a_client_that_does_not_read_gets_every_answer_intact_when_it_does(tmp_path: Path) -> None:
    """300 pipelined GETs of small and big files (70 MB of answers) with nobody reading: the
    socket fills, sendfile stops short, answering and reading pause; then the client reads and
    every byte arrives, in order."""
    catalog = build_catalog(tmp_path)
    middle = bytes(range(256)) * (SMALL_FILE_MAX // 256 - 3)  # just under the inline limit
    big = bytes(reversed(range(256))) * (SMALL_FILE_MAX // 128)  # the sendfile-task path
    dev = catalog.tiers[("dev", "repo")]
    catalog.add(dev, "middle.deb", middle)
    catalog.add(dev, "big.deb", big)
    plan = [(DEB_PATH, DEB), ("middle.deb", middle), ("big.deb", big)] * 100
    policy = GuardPolicy(header_timeout=5.0, idle_timeout=30.0)
    with serve_in_thread(RepoResponder(catalog), policy) as (port, _guard):
        sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        try:
            sock.sendall(b"".join(f"GET /dev/repo/{path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                                  for path, _ in plan))
            time.sleep(1.0)  # the server fills the socket and stops
            for path, data in plan:
                status, _headers, body = read_response(sock)
                assert (status, len(body)) == (200, len(data)), path
                assert body == data, path
        finally:
            sock.close()


def test_a_client_that_never_reads_is_aborted_at_the_idle_timeout(tmp_path: Path) -> None:
    """Answers left unread for idle_timeout: the connection is aborted, not kept half-closed
    forever waiting for its buffer to drain (which would hold its slot under the per-client cap)."""
    catalog = build_catalog(tmp_path)
    middle = os.urandom(SMALL_FILE_MAX - 1)
    catalog.add(catalog.tiers[("dev", "repo")], "middle.deb", middle)
    policy = GuardPolicy(header_timeout=1.0, idle_timeout=1.5)
    with serve_in_thread(RepoResponder(catalog), policy) as (port, guard):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            sock.sendall(b"GET /dev/repo/middle.deb HTTP/1.1\r\nHost: x\r\n\r\n" * 20)
            started = time.monotonic()
            while not guard.connections and time.monotonic() < started + 5:  # accepted
                time.sleep(0.01)
            while guard.connections and time.monotonic() < started + 8:
                time.sleep(0.05)
            assert guard.connections == 0, "a connection that does not read was kept"
            assert time.monotonic() - started >= 1.0  # by the idle timeout, not before
        finally:
            sock.close()
