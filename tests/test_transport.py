"""The hand-written HTTP/1.1 client (`mirror.transport`) against scripted servers on 127.0.0.1.

Every server here is a real socket (`asyncio.start_server` on port 0, inside the test's own event
loop) that answers with exact bytes each test scripts, so framing, keep-alive, timeouts and
failures are checked byte for byte, without mocks. A few checks look inside the client
(`Response._conn`, the connection's buffered byte count): they say so where they do.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import random
import re
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import pytest

from mirror.errors import FetchError, NotFoundUpstreamError, RedirectError
from mirror.fetch import Fetcher, FetchPolicy, HTTPStatusError
from mirror.transport import HIGH_WATER, MAX_HEAD, Client, Response, target

Handler = Callable[["Peer"], Awaitable[None]]
UA = "transport-test/1.0"
READ_SIZE = 256 * 1024  # the most one asyncio socket read hands over


# -- scripted servers -------------------------------------------------------------------------


class Peer:
    """The server side of one accepted connection."""

    def __init__(self, server: Server, index: int, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.index = index  # 0 for the first connection the server accepted
        self.reader = reader
        self.writer = writer

    async def request(self) -> bytes:
        """The next request head (through the blank line); recorded on the server."""
        head = await self.reader.readuntil(b"\r\n\r\n")
        self.server.requests.append(head)
        return head

    async def send(self, *pieces: bytes, pause: float = 0.0) -> None:
        """Each piece in its own write, `pause` seconds apart."""
        for number, piece in enumerate(pieces):
            if number and pause:
                await asyncio.sleep(pause)
            self.writer.write(piece)
            await self.writer.drain()

    def reset(self) -> None:
        """Close with SO_LINGER 0: the client gets a TCP RST, not a FIN."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


class Server:
    """Runs `handler` for every accepted connection; counts connections and records requests."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._peers: list[Peer] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for peer in self._peers:
            peer.writer.transport.abort()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def url(self, path: str = "/file") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(self, self.connections, reader, writer)
        self.connections += 1
        self._peers.append(peer)
        self._tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await self._handler(peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: some tests are about exactly that
        except asyncio.CancelledError:
            pass  # the test is over (returning keeps asyncio's streams from logging the cancel)
        finally:
            writer.transport.abort() if writer.transport.is_closing() else writer.close()


def ok(body: bytes, *extra: str) -> bytes:
    """A 200 with Content-Length and the given extra header lines."""
    head = ["HTTP/1.1 200 OK", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def chunked(*pieces: bytes) -> bytes:
    """`pieces` in chunked framing, with the terminating zero chunk."""
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


def answer_each(response: bytes) -> Handler:
    """A keep-alive server: every request on a connection gets `response`."""
    async def handler(peer: Peer) -> None:
        while True:
            await peer.request()
            await peer.send(response)
    return handler


def client(read_timeout: float = 2.0, connect_timeout: float = 2.0) -> Client:
    return Client(connect_timeout=connect_timeout, read_timeout=read_timeout, user_agent=UA)


async def read_all(response: Response) -> bytes:
    parts = []
    while chunk := await response.chunks():
        parts.append(chunk)
    return b"".join(parts)


async def get_body(http: Client, url: str) -> bytes:
    response = await http.get(url)
    try:
        return await read_all(response)
    finally:
        response.release()


def assert_get_fails(handler: Handler, pattern: str, *, head_only: bool = False) -> None:
    """One GET against `handler` (its head only, or its whole body) fails with a FetchError whose
    message matches `pattern`, where "{url}" stands for the URL asked for."""
    async def main() -> None:
        async with Server(handler) as server:
            http = client()
            url = server.url()
            with pytest.raises(FetchError, match=pattern.replace("{url}", re.escape(url))):
                await (http.get(url) if head_only else get_body(http, url))
            http.close()

    asyncio.run(main())


def body_of(size: int) -> bytes:
    """`size` pseudo-random bytes (the same each run), so a reordering or a gap shows."""
    return random.Random(size).randbytes(size)


class LoopErrors:
    """Collects whatever reaches the event loop's exception handler (unhandled callback errors)."""

    def __init__(self) -> None:
        self.contexts: list[dict[str, Any]] = []

    def __enter__(self) -> LoopErrors:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: self.contexts.append(ctx))
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        asyncio.get_running_loop().set_exception_handler(None)


# -- 1-3: bodies delimited three ways ---------------------------------------------------------


def test_content_length_body_is_returned_exactly() -> None:
    body = body_of(300_000)

    async def main() -> None:
        async with Server(answer_each(ok(body))) as server:
            http = client()
            response = await http.get(server.url())
            assert (response.status, response.content_length) == (200, len(body))
            assert await read_all(response) == body
            response.release()
            response = await http.get(server.url())
            assert await response.collect(len(body) + 10) == (body, len(body))
            response.release()
            http.close()

    asyncio.run(main())


def test_chunked_body_is_reassembled() -> None:
    pieces = [b"first ", b"", b"x" * 70_000, b"\r\n0\r\n not a terminator", b"end"]
    pieces = [piece for piece in pieces if piece]  # an empty chunk would end the body
    wire = chunked(*pieces)

    async def handler(peer: Peer) -> None:
        while True:
            await peer.request()
            head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            # split everywhere awkward: inside a size line, inside a chunk, inside the CRLF
            cuts = [3, 40, 41, 9_000, len(wire) - 4, len(wire) - 1]
            parts = [head + wire[:cuts[0]]] + [wire[a:b] for a, b in zip(cuts, [*cuts[1:], len(wire)],
                                                                          strict=True)]
            await peer.send(*parts, pause=0.01)

    async def main() -> None:
        async with Server(handler) as server:
            http = client()
            response = await http.get(server.url())
            assert response.content_length is None
            assert await read_all(response) == b"".join(pieces)
            response.release()
            response = await http.get(server.url())  # same connection: the framing ended exactly
            assert await response.collect(1 << 20) == (b"".join(pieces), len(b"".join(pieces)))
            response.release()
            assert server.connections == 1
            http.close()

    asyncio.run(main())


def test_close_delimited_body_is_complete_on_clean_eof() -> None:
    body = body_of(100_000)

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: x/y\r\n\r\n" + body[:5000], body[5000:],
                        pause=0.02)
        await peer.close()

    async def main() -> None:
        async with Server(handler) as server:
            http = client()
            assert await get_body(http, server.url()) == body
            response = await http.get(server.url())  # not reused: a new connection
            assert await response.collect(len(body)) == (body, len(body))
            response.release()
            assert server.connections == 2
            http.close()

    asyncio.run(main())


# -- 4-6: bodies that end early ---------------------------------------------------------------


def test_truncated_content_length_body_is_an_error() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"a" * 400)
        await peer.close()

    async def main() -> None:
        async with Server(handler) as server:
            http = client()
            response = await http.get(server.url())
            received = b""
            with pytest.raises(FetchError) as caught:
                while chunk := await response.chunks():
                    received += chunk
            response.release()
            assert received == b"a" * 400
            message = str(caught.value)
            assert f"transfer from {server.url()}" in message
            assert "after 400 of 1000 bytes" in message
            response = await http.get(server.url())
            with pytest.raises(FetchError, match="after 400 of 1000 bytes"):
                await response.collect(10_000)
            response.release()
            http.close()

    asyncio.run(main())


@pytest.mark.parametrize("wire", [
    pytest.param(chunked(b"abc", b"defg")[:-5], id="before-terminator"),
    pytest.param(b"5\r\nab", id="inside-chunk"),
    pytest.param(b"3\r\nabc\r\n", id="between-chunks"),
    pytest.param(b"", id="no-chunk-at-all"),
])
def test_truncated_chunked_body_is_an_error(wire: bytes) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + wire)
        await asyncio.sleep(0.05)
        await peer.close()

    assert_get_fails(handler, "transfer from {url} failed")


def test_connection_reset_mid_body_is_an_error() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"a" * 1000)
        await asyncio.sleep(0.05)
        peer.reset()

    assert_get_fails(handler, "transfer from {url} failed")


def test_connection_reset_ends_a_close_delimited_body_with_an_error() -> None:
    """A reset is not the clean end a close-delimited body needs."""
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\n\r\n" + b"a" * 1000)
        await asyncio.sleep(0.05)
        peer.reset()

    assert_get_fails(handler, "transfer from {url} failed")


# -- 7-10: connections kept alive or not ------------------------------------------------------


@pytest.mark.parametrize(("response", "body"), [
    pytest.param(ok(b"hello"), b"hello", id="content-length"),
    pytest.param(ok(b""), b"", id="empty"),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"hel", b"lo"),
                 b"hello", id="chunked"),
    pytest.param(b"HTTP/1.1 204 No Content\r\n\r\n", b"", id="204"),
    pytest.param(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n", b"", id="304"),
    pytest.param(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhello",
                 b"hello", id="http-1.0-keep-alive"),
])
def test_keep_alive_reuses_one_connection(response: bytes, body: bytes) -> None:
    async def main() -> None:
        async with Server(answer_each(response)) as server:
            http = client()
            for _ in range(3):
                assert await get_body(http, server.url()) == body
                response_ = await http.get(server.url())
                assert await response_.collect(100) == (body, len(body))
                response_.release()
            assert (server.connections, len(server.requests)) == (1, 6)
            http.close()

    asyncio.run(main())


def test_concurrent_requests_use_separate_connections() -> None:
    bodies = {f"/f{n}": body_of(10_000 + n) for n in range(4)}

    async def handler(peer: Peer) -> None:
        while True:
            head = await peer.request()
            await asyncio.sleep(0.02)  # all four are in flight at once
            await peer.send(ok(bodies[head.split(b" ")[1].decode()]))

    async def main() -> None:
        async with Server(handler) as server:
            http = client()
            for _ in range(2):
                got = await asyncio.gather(*[get_body(http, server.url(path)) for path in bodies])
                assert got == list(bodies.values())
            assert server.connections == 4  # the second round reused the first round's four
            http.close()

    asyncio.run(main())


def test_release_before_the_body_ends_drops_the_connection() -> None:
    big = body_of(200_000)

    async def handler(peer: Peer) -> None:
        while True:
            head = await peer.request()
            await peer.send(*([ok(big)[:1000], ok(big)[1000:]] if b"/big" in head else [ok(b"small")]),
                            pause=0.05)

    async def main() -> None:
        async with Server(handler) as server:
            http = client()
            response = await http.get(server.url("/big"))
            response.release()  # most of the body is still to come: that connection is done
            assert await get_body(http, server.url()) == b"small"
            response = await http.get(server.url())
            await asyncio.sleep(0.02)  # the whole (small) body is in, unread: reusable
            response.release()
            assert await get_body(http, server.url()) == b"small"  # and nothing stale leaks in
            assert server.connections == 2
            http.close()

    asyncio.run(main())


def test_bytes_on_an_idle_connection_make_it_unusable() -> None:
    async def handler(peer: Peer) -> None:
        if peer.index > 0:
            return await answer_each(ok(b"fresh"))(peer)
        await peer.request()
        await peer.send(ok(b"first"))
        await asyncio.sleep(0.02)
        await peer.send(ok(b"unasked"))  # nobody asked: a desynchronised connection
        await peer.request()  # recorded, if the client (wrongly) sends one more on it
        await asyncio.sleep(5)

    async def main() -> None:
        async with Server(handler) as server:
            http = client()
            assert await get_body(http, server.url()) == b"first"
            await asyncio.sleep(0.1)
            assert await get_body(http, server.url()) == b"fresh"
            assert server.connections == 2
            assert len(server.requests) == 2  # none went to the desynchronised connection
            http.close()

    asyncio.run(main())


@pytest.mark.parametrize("when", ["same-write", "later-write"])
def test_bytes_beyond_content_length_are_never_handed_over(when: str) -> None:
    """What follows a complete body is no part of it. (Refusing the response is acceptable
    too: the client does that when the excess arrives with the head.)"""
    async def handler(peer: Peer) -> None:
        if peer.index > 0:
            return await answer_each(ok(b"fresh"))(peer)
        await peer.request()
        response = ok(b"abc") + b"def garbage"
        await peer.send(*([response] if when == "same-write" else [response[:-11], response[-11:]]),
                        pause=0.05)
        await asyncio.sleep(5)

    async def main() -> None:
        async with Server(handler) as server:
            http = client()
            try:
                response = await http.get(server.url())
            except FetchError as exc:
                assert f"cannot fetch {server.url()}" in str(exc)
            else:
                await asyncio.sleep(0.1)
                assert await read_all(response) == b"abc"
                response.release()
            assert await get_body(http, server.url()) == b"fresh"
            assert server.connections == 2
            http.close()

    asyncio.run(main())


@pytest.mark.parametrize("how", ["fin-while-idle", "fin-while-idle-unnoticed", "fin-after-request",
                                 "reset-after-request"])
def test_stale_keep_alive_connection_is_replaced_transparently(how: str) -> None:
    """The server ends the kept-alive connection before answering the next request: the client
    sends it again on a new connection, and the caller never sees the stale one."""
    async def handler(peer: Peer) -> None:
        if peer.index > 0:
            return await answer_each(ok(b"second"))(peer)
        await peer.request()
        await peer.send(ok(b"first"))  # says keep-alive (HTTP/1.1, no Connection: close)
        if how.startswith("fin-while-idle"):
            await peer.close()
            return
        await peer.request()
        peer.reset() if how == "reset-after-request" else await peer.close()

    async def main() -> None:
        async with Server(handler) as server:
            http = client()
            assert await get_body(http, server.url()) == b"first"
            if how == "fin-while-idle":
                await asyncio.sleep(0.05)
            assert await get_body(http, server.url()) == b"second"
            assert server.connections == 2
            http.close()

    asyncio.run(main())


@pytest.mark.parametrize(("response", "close"), [
    pytest.param(ok(b"bye", "Connection: close"), False, id="connection-close"),
    pytest.param(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nbye", False, id="http-1.0"),
    pytest.param(b"HTTP/1.0 200 OK\r\n\r\nbye", True, id="http-1.0-close-delimited"),
    pytest.param(b"HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
                 + chunked(b"by", b"e"), False, id="connection-close-chunked"),
])
def test_connection_close_response_is_not_reused(response: bytes, close: bool) -> None:
    async def handler(peer: Peer) -> None:
        # unless `close`, the server would happily go on: the client must not, having been told
        await peer.request()
        await peer.send(response)
        if close:
            await peer.close()
            return
        await answer_each(ok(b"wrong: should have been a new connection"))(peer)

    async def main() -> None:
        async with Server(handler) as server:
            http = client()
            assert await get_body(http, server.url()) == b"bye"
            response_ = await http.get(server.url())
            assert await response_.collect(10) == (b"bye", 3)
            response_.release()
            assert server.connections == 2
            http.close()

    asyncio.run(main())


@pytest.mark.parametrize("split", [False, True], ids=["one-write", "separate-writes"])
def test_interim_100_continue_is_skipped(split: bool) -> None:
    interim = b"HTTP/1.1 100 Continue\r\nX-Interim: yes\r\n\r\n"
    final = ok(b"real body", "X-Final: yes")

    async def handler(peer: Peer) -> None:
        while True:
            await peer.request()
            await (peer.send(interim, final, pause=0.02) if split else peer.send(interim + final))

    async def main() -> None:
        async with Server(handler) as server:
            http = client()
            for _ in range(2):
                response = await http.get(server.url())
                assert response.status == 200
                assert response.headers.get("x-final") == "yes"
                assert "x-interim" not in response.headers
                assert await read_all(response) == b"real body"
                response.release()
            assert server.connections == 1
            http.close()

    asyncio.run(main())


# -- 11-12: heads the client refuses -----------------------------------------------------------


def test_more_than_128_header_fields_is_an_error() -> None:
    def head(fields: int) -> bytes:
        lines = [f"X-Field-{n}: {n}" for n in range(fields - 1)]
        return ok(b"ok", *lines)

    async def main() -> None:
        async with Server(answer_each(head(128))) as server:  # exactly at the limit: fine
            http = client()
            assert await get_body(http, server.url()) == b"ok"
            http.close()
        async with Server(answer_each(head(129))) as server:
            http = client()
            with pytest.raises(FetchError) as caught:
                await http.get(server.url())
            assert f"cannot fetch {server.url()}" in str(caught.value)
            http.close()

    asyncio.run(main())


def test_too_many_header_fields_error_says_why() -> None:
    assert_get_fails(answer_each(ok(b"ok", *[f"X-{n}: {n}" for n in range(200)])),
                     "more than 128 header fields", head_only=True)


def test_head_longer_than_64k_is_an_error_and_not_buffered() -> None:
    total = 4 * 1024 * 1024
    sent = 0

    async def handler(peer: Peer) -> None:
        nonlocal sent
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nX-Huge: ")
        piece = b"v" * 8192
        while sent < total:  # slowly: each piece is its own read on the client
            await peer.send(piece)
            sent += len(piece)
            await asyncio.sleep(0.002)

    async def main() -> None:
        async with Server(handler) as server:
            http = client()
            started = time.monotonic()
            with pytest.raises(FetchError, match=f"cannot fetch {server.url()}.*head longer than"):
                await http.get(server.url())
            assert time.monotonic() - started < 3
            await asyncio.sleep(0.1)  # the server sees the connection gone
            assert sent < MAX_HEAD + 256 * 1024  # given up soon after the limit, not at the end
            http.close()

    asyncio.run(main())


def test_head_longer_than_64k_in_one_read_is_an_error() -> None:
    """White-box: the bytes are handed to the connection as one read (a loopback socket may or
    may not deliver 100 KiB at once; asyncio hands over up to 256 KiB per read)."""
    async def handler(peer: Peer) -> None:
        await peer.request()
        await asyncio.sleep(5)

    async def main() -> None:
        async with Server(handler) as server:
            http = client()
            where = target(server.url(), UA)
            conn = await http._connect(server.url(), where.key)
            conn.start(server.url(), where.request)
            conn.data_received(ok(b"", "X-Huge: " + "v" * 100_000))
            assert conn.failure is not None
            conn.close()
            http.close()

    asyncio.run(main())


@pytest.mark.parametrize("garbage", [
    pytest.param(b"HTTP/1.1 abc OK\r\n\r\n", id="status-not-a-number"),
    pytest.param(b"HTTX/1.1 200 OK\r\n\r\n", id="not-http"),
    pytest.param(b"\x00\x01\x02\xff garbage\r\n\r\n", id="binary"),
    pytest.param(b"HTTP/1.1 200 OK\r\nBad Header Name: x\r\n\r\n", id="space-in-field-name"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
                 id="two-content-lengths"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"3\r\nabc\r\n0\r\n\r\n", id="length-and-chunked"),
])
def test_malformed_response_is_an_error(garbage: bytes) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(garbage)
        await asyncio.sleep(1)

    assert_get_fails(handler, "cannot fetch {url}.*malformed", head_only=True)


def test_switching_protocols_is_an_error_without_loop_errors() -> None:
    """A 101 makes httptools raise HttpParserUpgrade (not an HttpParserError)."""
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n")
        await asyncio.sleep(1)

    async def main() -> None:
        async with Server(handler) as server:
            http = client()
            with LoopErrors() as errors:
                with pytest.raises(FetchError, match=f"cannot fetch {server.url()}"):
                    await http.get(server.url())
                await asyncio.sleep(0)
            http.close()
        assert errors.contexts == []

    asyncio.run(main())


# -- 13-14: timeouts and refused connections ---------------------------------------------------


@pytest.mark.parametrize("phase", ["head", "body"])
def test_silent_server_times_out_after_read_timeout(phase: str) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        if phase == "body":
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await asyncio.sleep(5)

    async def main() -> None:
        async with Server(handler) as server:
            http = client(read_timeout=0.3)
            started = time.monotonic()
            with pytest.raises(FetchError, match="timed out") as caught:
                await get_body(http, server.url())
            elapsed = time.monotonic() - started
            assert 0.25 < elapsed < 1.0
            assert server.url() in str(caught.value)
            http.close()

    asyncio.run(main())


@pytest.mark.parametrize("what", ["head", "body-chunks", "body-collect"])
def test_trickling_server_does_not_time_out(what: str) -> None:
    """The read timeout is per read, not for the whole response: a byte every 0.1 s for about a
    second, with a 0.3 s read timeout."""
    body = b"0123456789"
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"

    async def handler(peer: Peer) -> None:
        await peer.request()
        if what == "head":
            await peer.send(*[head[n:n + 4] for n in range(0, len(head), 4)], body, pause=0.1)
        else:
            await peer.send(head, *[body[n:n + 1] for n in range(len(body))], pause=0.1)

    async def main() -> None:
        async with Server(handler) as server:
            http = client(read_timeout=0.3)
            started = time.monotonic()
            response = await http.get(server.url())
            if what == "body-collect":
                assert await response.collect(100) == (body, 10)
            else:
                assert await read_all(response) == body
            response.release()
            assert time.monotonic() - started > 0.9
            http.close()

    asyncio.run(main())


def test_refused_connection_is_an_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused

        async def main() -> None:
            http = client(connect_timeout=1.0)
            url = f"http://127.0.0.1:{port}/file"
            started = time.monotonic()
            with pytest.raises(FetchError, match=f"cannot fetch {url}: ConnectionRefusedError"):
                await http.get(url)
            assert time.monotonic() - started < 1.0
            http.close()

        asyncio.run(main())


def test_connect_timeout_is_an_error() -> None:
    """A listener whose accept queue is full drops SYNs (Linux): the connect hangs, and the
    connect timeout (not the much longer read timeout) ends it."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(3):  # fill the accept queue; whichever of these hangs is fine
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.05)

        async def main() -> None:
            http = client(connect_timeout=0.3, read_timeout=30)
            url = f"http://127.0.0.1:{port}/file"
            started = time.monotonic()
            with pytest.raises(FetchError, match=f"cannot fetch {url}: timed out"):
                await http.get(url)
            assert time.monotonic() - started < 2
            http.close()

        try:
            asyncio.run(main())
        finally:
            for filler in fillers:
                filler.close()


# -- 15-16: caps and flow control --------------------------------------------------------------


def test_collect_over_cap_keeps_at_most_cap_and_drops_the_connection() -> None:
    body = body_of(50_000)

    async def handler(peer: Peer) -> None:
        while True:
            head = await peer.request()
            if b"/whole" in head:  # all of it in one write
                await peer.send(ok(body))
                continue
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 50000\r\n\r\n" + body[:1000],
                            *[body[n:n + 7000] for n in range(1000, len(body), 7000)], pause=0.01)

    async def main() -> None:
        async with Server(handler) as server:
            http = client()
            cases = [("/file", 500), ("/file", 20_000), ("/whole", 500), ("/whole", 49_999)]
            for path, cap in cases:  # over with the head's read, over later, over with it all
                response = await http.get(server.url(path))
                kept, received = await response.collect(cap)
                response.release()
                assert len(kept) <= cap < received
                assert body.startswith(kept)
            assert server.connections == len(cases)  # no connection was kept
            for path in ("/file", "/whole"):
                response = await http.get(server.url(path))
                assert await response.collect(len(body)) == (body, len(body))  # exactly the cap
                response.release()
            assert server.connections == len(cases) + 1  # and those were kept
            http.close()

    asyncio.run(main())


def test_slowly_read_large_body_is_intact_and_buffering_bounded() -> None:
    """White-box: `Response._conn.buffered` is what the client holds unread."""
    body = body_of(5 * 1000 * 1000)

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(ok(body))

    async def main() -> None:
        async with Server(handler) as server:
            http = client()
            response = await http.get(server.url())
            parts = []
            most = 0
            while True:
                await asyncio.sleep(0.02)  # a slow consumer: the server is far ahead
                most = max(most, response._conn.buffered)
                assert response._conn.buffered <= 2 * 1024 * 1024 + READ_SIZE
                chunk = await response.chunks()
                if not chunk:
                    break
                parts.append(chunk)
            response.release()
            assert b"".join(parts) == body
            assert most > HIGH_WATER  # the bound was reached, so it was tested
            http.close()

    asyncio.run(main())


def test_collect_after_the_buffer_filled_completes() -> None:
    body = body_of(3 * 1024 * 1024)

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(ok(body))
        await asyncio.sleep(5)

    async def main() -> None:
        async with Server(handler) as server:
            http = client(read_timeout=0.5)
            response = await http.get(server.url())
            await asyncio.sleep(0.3)  # more than HIGH_WATER arrives; reading pauses
            try:
                assert await response.collect(len(body)) == (body, len(body))
            finally:
                response.release()
                http.close()

    asyncio.run(main())


# -- 17-18: what is sent, what is handed over --------------------------------------------------


@pytest.mark.parametrize(("path", "sent"), [
    ("/a b/c", "/a%20b/c"),
    ("/pool/ünï/ça.deb", "/pool/%C3%BCn%C3%AF/%C3%A7a.deb"),
    ("/keep%2Fslash/%41%7e", "/keep%2Fslash/%41%7e"),
    ("/x+y/a:b@c;d=e,f!$&'()*", "/x+y/a:b@c;d=e,f!$&'()*"),
    ("/q?a b=ü&c=%2F?d", "/q?a%20b=%C3%BC&c=%2F?d"),
    ("/ctl\x01\x7f", "/ctl%01%7F"),
    ("/frag#not sent", "/frag"),
    ("", "/"),
])
def test_request_head_is_encoded(path: str, sent: str) -> None:
    async def main() -> None:
        async with Server(answer_each(ok(b"x"))) as server:
            http = client()
            assert await get_body(http, server.url(path)) == b"x"
            http.close()
        lines = server.requests[0].decode("ascii").split("\r\n")
        assert lines[0] == f"GET {sent} HTTP/1.1"
        fields = dict(line.split(": ", 1) for line in lines[1:] if line)
        assert fields["Host"] == f"127.0.0.1:{server.port}"
        assert fields["Accept-Encoding"] == "identity"
        assert fields["User-Agent"] == UA
        assert "Authorization" not in fields

    asyncio.run(main())


@pytest.mark.parametrize(("userinfo", "credentials"), [
    ("user:pa ss@", "user:pa ss"),
    ("us%40er:p%3Ass@", "us@er:p:ss"),
    ("üser:pässword@", "üser:pässword"),
    ("user@", "user:"),
    ("user:@", "user:"),
])
def test_userinfo_is_sent_as_basic_authorization(userinfo: str, credentials: str) -> None:
    async def main() -> None:
        async with Server(answer_each(ok(b"x"))) as server:
            http = client()
            url = f"http://{userinfo}127.0.0.1:{server.port}/file"
            assert await get_body(http, url) == b"x"
            http.close()
        lines = server.requests[0].decode("ascii").split("\r\n")
        fields = dict(line.split(": ", 1) for line in lines[1:] if line)
        assert fields["Authorization"] == "Basic " + base64.b64encode(credentials.encode()).decode()
        assert fields["Host"] == f"127.0.0.1:{server.port}"  # never the userinfo

    asyncio.run(main())


@pytest.mark.parametrize("host", ["127.0.0.1\x00", "127.0.0.1 ", "127.0.0.1\x7f", "127.0.0.1\x1b"])
def test_host_with_control_characters_is_refused_before_connecting(host: str) -> None:
    async def main() -> None:
        async with Server(answer_each(ok(b"x"))) as server:
            http = client()
            with pytest.raises(FetchError, match="control characters in the host"):
                await http.get(f"http://{host}:{server.port}/file")
            await asyncio.sleep(0.05)
            assert server.connections == 0
            http.close()

    asyncio.run(main())


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_gzip_content_encoding_is_handed_over_as_sent(framing: str) -> None:
    raw = gzip.compress(body_of(20_000))
    assert len(raw) > 999

    async def handler(peer: Peer) -> None:
        await peer.request()
        if framing == "chunked":
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
                            + chunked(raw[:999], raw[999:]))
        else:
            await peer.send(ok(raw, "Content-Encoding: gzip"))

    async def main() -> None:
        async with Server(handler) as server:
            http = client()
            response = await http.get(server.url())
            assert response.headers["content-encoding"] == "gzip"
            assert await read_all(response) == raw
            response.release()
            http.close()

    asyncio.run(main())


# -- framing corner cases where the client and llhttp disagree ----------------------------------


def test_extra_response_in_the_same_read_is_not_appended() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(ok(b"abc") + ok(b"INJECTED"))
        await asyncio.sleep(1)

    async def main() -> None:
        async with Server(handler) as server:
            http = client()
            try:
                response = await http.get(server.url())
            except FetchError:
                pass  # refusing it is fine, as for any bytes after a response in the head's read
            else:
                try:
                    assert await read_all(response) == b"abc"
                finally:
                    response.release()
            http.close()

    asyncio.run(main())


def test_truncated_chunked_body_with_two_transfer_encoding_fields_is_an_error() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"3\r\nabc\r\n")
        await asyncio.sleep(0.05)
        await peer.close()

    async def main() -> None:
        async with Server(handler) as server:
            http = client()
            with pytest.raises(FetchError):
                await get_body(http, server.url())
            http.close()

    asyncio.run(main())


def test_transfer_coding_not_ending_in_chunked_is_close_delimited() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nabcdef")
        await asyncio.sleep(0.05)
        await peer.close()

    async def main() -> None:
        async with Server(handler) as server:
            http = client()
            assert await get_body(http, server.url()) == b"abcdef"
            http.close()

    asyncio.run(main())


def test_read_timeout_on_a_reused_connection_is_not_retried() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        if peer.index == 0:
            await peer.send(ok(b"first"))
            await peer.request()
        await asyncio.sleep(5)

    async def main() -> None:
        async with Server(handler) as server:
            http = client(read_timeout=0.3)
            assert await get_body(http, server.url()) == b"first"
            started = time.monotonic()
            with pytest.raises(FetchError, match="timed out"):
                await http.get(server.url())
            elapsed = time.monotonic() - started
            http.close()
            assert (server.connections, len(server.requests)) == (1, 2)
            assert elapsed < 0.5

    asyncio.run(main())


# -- 19: through mirror.fetch.Fetcher ----------------------------------------------------------


def route(table: dict[str, bytes]) -> Handler:
    """A keep-alive server answering each request path from `table`."""
    async def handler(peer: Peer) -> None:
        while True:
            head = await peer.request()
            path = head.split(b" ", 2)[1].decode()
            await peer.send(table[path])
    return handler


def redirect(status: int, location: str) -> bytes:
    return (f"HTTP/1.1 {status} Moved\r\nLocation: {location}\r\nContent-Length: 5\r\n\r\nmoved"
            .encode())


POLICY = FetchPolicy(connect_timeout=2, read_timeout=2, retries=0)


def test_fetcher_follows_relative_redirect() -> None:
    table = {
        "/dir/old": redirect(301, "new?x=1"),
        "/dir/new?x=1": redirect(302, "/elsewhere/final"),
        "/elsewhere/final": ok(b"the body"),
    }

    async def main() -> None:
        async with Server(route(table)) as server, Fetcher(POLICY) as fetcher:
            assert await fetcher.fetch_capped(server.url("/dir/old"), 100) == (b"the body", 8)
            async with fetcher.open_stream(server.url("/dir/old")) as (length, chunks):
                assert length == 8
                assert b"".join([chunk async for chunk in chunks]) == b"the body"

    asyncio.run(main())


@pytest.mark.parametrize("location", ["ftp://127.0.0.1/file", "file:///etc/passwd", "gopher://x/"])
def test_fetcher_refuses_redirect_to_another_scheme(location: str) -> None:
    async def main() -> None:
        async with Server(route({"/file": redirect(302, location)})) as server, \
                Fetcher(POLICY) as fetcher:
            with pytest.raises(RedirectError, match="another scheme"):
                await fetcher.fetch_capped(server.url(), 100)

    asyncio.run(main())


@pytest.mark.parametrize("status", [404, 410])
def test_fetcher_not_found_is_not_found_upstream(status: int) -> None:
    response = f"HTTP/1.1 {status} Gone\r\nContent-Length: 4\r\n\r\nnope".encode()

    async def main() -> None:
        async with Server(route({"/file": response})) as server, Fetcher(POLICY) as fetcher:
            with pytest.raises(NotFoundUpstreamError, match=f"HTTP {status}"):
                await fetcher.fetch_capped(server.url(), 100)
            with pytest.raises(NotFoundUpstreamError):
                async with fetcher.open_stream(server.url()):
                    pass

    asyncio.run(main())


def test_fetcher_503_carries_retry_after() -> None:
    response = b"HTTP/1.1 503 Busy\r\nRetry-After: 2\r\nContent-Length: 4\r\n\r\nbusy"

    async def main() -> None:
        async with Server(route({"/file": response})) as server, Fetcher(POLICY) as fetcher:
            with pytest.raises(HTTPStatusError) as caught:
                await fetcher.fetch_capped(server.url(), 100)
            assert (caught.value.status, caught.value.retry_after) == (503, 2.0)
            assert caught.value.retryable

    asyncio.run(main())
