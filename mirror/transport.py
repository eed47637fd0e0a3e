"""HTTP/1.1 GET to upstreams over asyncio, responses parsed by llhttp (through httptools).

Why not aiohttp's client: a sync is thousands of small GETs on a few keep-alive connections, and
aiohttp spends about 120 µs of Python per request (its request, response, stream-reader and
timer objects) and 100 ms importing; on a 2,000-package sync that was a third of the wall time.
This module does only what a mirror needs: GET, keep-alive connections per (scheme, host, port),
connect and per-read timeouts, TLS with the system's trust store, bodies handed over as they
arrive (flow-controlled) or collected whole up to a cap. Parsing, the part that has to be exact
(chunked framing, Content-Length, header syntax), is llhttp's, the parser Node.js uses.

Bodies are never decoded: `Accept-Encoding: identity` is asked for, and whatever a server sends
anyway is handed over as stored, so checksums are over the upstream's bytes. Redirects are not
followed here (`mirror.fetch` decides which ones are allowed). Every failure is a `FetchError`
naming the URL: "cannot fetch URL: ..." before a response head, "transfer from URL failed: ..."
during the body.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections import deque
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

import httptools

from mirror.errors import FetchError

MAX_HEAD = 64 * 1024  # status line and header fields, in bytes
MAX_FIELDS = 128
HIGH_WATER = 1024 * 1024  # stop reading the socket while this much body waits unread
READ_BUFFER = 256 * 1024
_SAFE_PATH = "/:@!$&'()*+,;=-._~%"
_SAFE_QUERY = _SAFE_PATH + "?"


@dataclass(frozen=True)
class Target:
    """Where a URL's request goes and what it says."""

    key: tuple[str, str, int]  # (scheme, host, port): connections are shared per key
    request: bytes


def target(url: str, user_agent: str) -> Target:
    """The connection key and request bytes of a GET of `url` (http or https)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise FetchError(f"cannot fetch {url}: not an http or https URL")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise FetchError(f"cannot fetch {url}: {exc}") from None
    if not host:
        raise FetchError(f"cannot fetch {url}: no host")
    port = port or (443 if scheme == "https" else 80)
    authority = parts.netloc.rpartition("@")[2]
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in authority):
        raise FetchError(f"cannot fetch {url!r}: control characters in the host")
    path = quote(parts.path or "/", safe=_SAFE_PATH)
    if parts.query:
        path += "?" + quote(parts.query, safe=_SAFE_QUERY)
    lines = [f"GET {path} HTTP/1.1", f"Host: {authority}", f"User-Agent: {user_agent}",
             "Accept: */*", "Accept-Encoding: identity"]
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        lines.append("Authorization: Basic " + base64.b64encode(credentials.encode()).decode())
    head = "\r\n".join(lines) + "\r\n\r\n"
    return Target((scheme, host, port), head.encode("utf-8"))


class _Connection(asyncio.BufferedProtocol):
    """One TCP (or TLS) connection; one request at a time. The socket is read into one buffer
    that lives as long as the connection (no allocation per read)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout: float) -> None:
        self._buffer = memoryview(bytearray(READ_BUFFER))
        self._loop = loop
        self._read_timeout = read_timeout
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last = 0.0
        self.closed = False
        self.url = ""
        self._new_message()

    def _new_message(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self._fields = 0
        self._head = 0
        self._head_fields = 0
        self._interim = False
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.failure: BaseException | None = None
        self.received = 0  # body bytes
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.cap: int | None = None  # collect mode: stop once more than this arrived
        self.over = False
        self._paused = False
        self.got_bytes = False

    def start(self, url: str, request: bytes) -> None:
        assert self._transport is not None
        self._new_message()
        self.url = url
        self._transport.write(request)

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._buffer[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        self.got_bytes = True
        self._last = self._loop.time()
        if self.failure is not None or self.over:
            return
        if not self.url or self.complete:  # bytes nobody asked for: the connection is unusable
            self._fail(ConnectionError("unexpected bytes from the server"))
            return
        if not self.head_done:
            self._head += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            self._fail(exc.__cause__ or exc.__context__ or exc)
            return
        except httptools.HttpParserUpgrade:
            self._fail(ConnectionError(f"the server switched protocols (HTTP {self.status})"))
            return
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"malformed HTTP response: {exc}"))
            return
        if not self.head_done and self._head > MAX_HEAD:
            self._fail(ConnectionError(f"response head longer than {MAX_HEAD} bytes"))
            return
        if self.buffered > HIGH_WATER and self.cap is None and not self._paused \
                and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.complete or self.failure is not None or not self.url:
            self._wake()
            return
        if exc is None and self.head_done and self._until_close():
            self.complete = True  # a body delimited by the end of the connection
            self.keep_alive = False
        else:
            detail = f"{type(exc).__name__}: {exc}" if exc else "the server closed the connection"
            if self.head_done:
                length = self.content_length
                detail += f" after {self.received} of {length if length is not None else '?'} bytes"
            self.failure = ConnectionError(detail)
        self._wake()

    # -- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:  # a second response to one request: never appended to the first
            raise ConnectionError("unexpected bytes after the response")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        if self._fields > MAX_FIELDS:
            raise ConnectionError(f"more than {MAX_FIELDS} header fields")
        self._head_fields += len(name) + len(value) + 4
        if self._head_fields > MAX_HEAD:
            raise ConnectionError(f"response head longer than {MAX_HEAD} bytes")
        key, text = name.decode("latin-1").lower(), value.decode("latin-1").strip()
        if key == "transfer-encoding" and key in self.headers:  # repeated: one list of codings
            self.headers[key] += ", " + text
        else:
            self.headers.setdefault(key, text)

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if 100 <= self.status < 200:  # an interim answer: the real one follows
            self._interim = True
            return
        self.head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.received += len(body)
        if self.cap is not None and self.received > self.cap:
            self.over = True  # cut at once: the caller knows it is too long
            self._wake()
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.cap is None:
            self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self.headers, self._fields, self._interim, self._head, self._head_fields = {}, 0, False, 0, 0
            return
        self.complete = True
        self.keep_alive = self._parser.should_keep_alive()
        self._wake()

    # -- for the client ----------------------------------------------------------------------

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        return int(value) if value is not None and value.isdigit() else None

    def _until_close(self) -> bool:
        """Is the body delimited by the end of the connection (RFC 9112 6.3): no Content-Length,
        and no Transfer-Encoding whose last coding is chunked."""
        codings = self.headers.get("transfer-encoding", "").lower().split(",")
        return "content-length" not in self.headers and codings[-1].strip() != "chunked"

    def _fail(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
        self.close()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_timer(self) -> None:
        idle = self._loop.time() - self._last
        if idle >= self._read_timeout:
            self._timer = None
            self._fail(TimeoutError())
        else:
            self._timer = self._loop.call_later(self._read_timeout - idle, self._on_timer)

    async def wait(self) -> None:
        """Until something happens: head, body bytes, the end, a failure (not raised here)."""
        self._waiter = self._loop.create_future()
        self._last = self._loop.time()
        self._timer = self._loop.call_later(self._read_timeout, self._on_timer)
        try:
            await self._waiter
        finally:
            self._waiter = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def take(self) -> bytes:
        """Every body byte that waits, as one piece (reading resumes)."""
        chunks = self.chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        self.resume()
        return data

    def resume(self) -> None:
        if self._paused and self._transport is not None and not self.closed:
            self._paused = False
            self._transport.resume_reading()

    def reusable(self) -> bool:
        return (self.complete and self.keep_alive and not self.closed and self.failure is None
                and not self.over)

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.abort()


class Response:
    """A response head; its body is read with `chunks` or `collect`; `release` always follows."""

    def __init__(self, client: Client, key: tuple[str, str, int], conn: _Connection) -> None:
        self._client = client
        self._key = key
        self._conn = conn
        self.status = conn.status
        self.headers = conn.headers
        self.url = conn.url
        self.content_length = conn.content_length
        self._released = False

    def _raise_failure(self) -> None:
        failure = self._conn.failure
        if failure is not None and not self._conn.complete:
            raise FetchError(f"transfer from {self.url} failed: {describe(failure)}") from failure

    async def chunks(self) -> bytes:
        """The next body bytes that arrived; b"" at the end."""
        conn = self._conn
        while True:
            if conn.chunks:
                return conn.take()
            self._raise_failure()
            if conn.complete:
                return b""
            await conn.wait()

    async def collect(self, cap: int) -> tuple[bytes, int]:
        """The whole body, or, as soon as more than `cap` bytes arrived, what came before the
        piece that went over: (bytes kept, bytes received)."""
        conn = self._conn
        conn.cap = cap
        conn.resume()  # collecting is never paused (the cap bounds it)
        if conn.received > cap:  # more came with the head: keep the pieces before the one over
            kept: deque[bytes] = deque()
            total = 0
            for chunk in conn.chunks:
                if total + len(chunk) > cap:
                    break
                kept.append(chunk)
                total += len(chunk)
            conn.chunks, conn.buffered, conn.over = kept, total, True
        while not (conn.complete or conn.over):
            self._raise_failure()
            await conn.wait()
        if not conn.over:
            self._raise_failure()
        data = conn.take() if conn.chunks else b""
        return data, conn.received

    def release(self) -> None:
        conn, self._conn.cap = self._conn, None
        if self._released:
            return
        self._released = True
        if conn.reusable():
            conn.url = ""
            self._client.put_back(self._key, conn)
        else:
            conn.close()


class Client:
    """Keep-alive connections per (scheme, host, port); as many as there are requests at once."""

    def __init__(self, *, connect_timeout: float, read_timeout: float, user_agent: str) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._user_agent = user_agent
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._tls: ssl.SSLContext | None = None

    async def get(self, url: str) -> Response:
        """The response head of a GET of `url`: any status; the caller releases it."""
        where = target(url, self._user_agent)
        while True:
            conn, reused = self._idle_connection(where.key), True
            if conn is None:
                conn, reused = await self._connect(url, where.key), False
            conn.start(url, where.request)
            while not conn.head_done and conn.failure is None and not conn.closed:
                await conn.wait()
            if conn.head_done and not conn.failure:
                return Response(self, where.key, conn)
            conn.close()
            if reused and not conn.got_bytes and not isinstance(conn.failure, TimeoutError):
                continue  # a kept-alive connection the server had closed: once more, on a new one
            failure = conn.failure or ConnectionError("the server closed the connection")
            raise FetchError(f"cannot fetch {url}: {describe(failure)}") from failure

    def _idle_connection(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    def put_back(self, key: tuple[str, str, int], conn: _Connection) -> None:
        self._idle.setdefault(key, []).append(conn)

    async def _connect(self, url: str, key: tuple[str, str, int]) -> _Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        tls = None
        if scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop, self._read_timeout), host, port, ssl=tls,
                    server_hostname=host if tls else None)
        except (OSError, TimeoutError) as exc:
            raise FetchError(f"cannot fetch {url}: {describe(exc)}") from exc
        return conn

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


def describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text
