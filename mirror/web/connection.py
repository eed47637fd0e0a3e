"""The repo port's HTTP/1.1 connections: httptools parses, :class:`RepoResponder` answers.

Why not aiohttp here (the API port keeps it): a 100 KB package through aiohttp's server cost
about three times nginx's time per request (bench/serve_bench.py), mostly in its request and
response objects and in copying the body twice (``pread`` into memory, then joined with the
headers).  This protocol answers a request in the parser's callback, synchronously, and sends a
pool file's bytes with ``sendfile(2)`` straight from the page cache: small files at once when the
socket takes them (what nginx's ``sendfile on`` does), bigger ones from a task
(``loop.sendfile``) while reading from the client pauses.  Parsing is the well-kept llhttp
parser through ``httptools`` (uvicorn's); only framing the response is ours.

What one connection enforces (the connection guard's policy, :class:`GuardPolicy`):

* a request head must be complete within ``header_timeout`` seconds of its first byte (the first
  one: of the accept); a request body must keep arriving (no gap over ``header_timeout``);
  otherwise the connection is aborted without a response (:class:`ConnectionGuard` counts it);
* an idle keep-alive connection (no request in progress, no partial head) is closed after
  ``idle_timeout`` seconds, and aborted if its client has not read the last answers by then
  (nginx's ``send_timeout``; a file sent by the sendfile task has no such limit);
* ``max_connections_per_client``: through ``guard.admit`` at ``connection_made`` (in the repo
  workers the main process counts, and the worker's guard admits everything);
* a request line over 8190 bytes is answered 414, a header field over 8190 bytes, more than 128
  of them or a head over 64 KiB 431, a request body over 64 KiB 413 (GET and HEAD need none),
  a malformed request 400; each closes the connection;
* pipelined requests are answered in order, at most :data:`MAX_PIPELINED` waiting (reading
  pauses beyond that), and nothing is answered while the transport's write buffer is over its
  high-water mark (a client that does not read stops being read).

:class:`RepoServer` owns the connections of one port (or of one repo worker): it accepts or is
handed sockets, and on shutdown closes idle connections at once, lets in-flight responses finish
for up to ``shutdown_timeout`` seconds, then aborts what is left.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from email.utils import formatdate
from http import HTTPStatus
from typing import Final, cast

import httptools

from mirror.web.guard import MAX_HEAD, MAX_HEADERS, MAX_LINE, ConnectionGuard, Deadline
from mirror.web.repo import SECURITY_HEADERS, SMALL_FILE_MAX, Reply, RepoRequest, RepoResponder

__all__ = ["MAX_PIPELINED", "RepoConnection", "RepoServer"]

log = logging.getLogger(__name__)

MAX_BODY: Final = 64 * 1024
MAX_PIPELINED: Final = 32  # parsed requests waiting for their turn before reading pauses

_STATIC: Final = "".join(f"{name}: {value}\r\n" for name, value in SECURITY_HEADERS.items())
_REASONS: Final = {int(s): s.phrase for s in HTTPStatus}

_IDLE, _HEAD, _BODY = range(3)  # where the parser is between two reads


class _Dates:
    """The Date header, formatted once a second."""

    second = -1
    value = ""

    @classmethod
    def now(cls) -> str:
        second = int(time.time())
        if second != cls.second:
            cls.second, cls.value = second, formatdate(second, usegmt=True)
        return cls.value


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class RepoConnection(asyncio.Protocol):
    """One client connection of the repo port (see the module's docstring)."""

    __slots__ = (
        "_body_size",
        "_busy",
        "_deadline",
        "_fields",
        "_fields_size",
        "_head_size",
        "_headers",
        "_queue",
        "_reading",
        "_state",
        "_url",
        "_write_paused",
        "admitted",
        "client",
        "closing",
        "loop",
        "parser",
        "server",
        "sock",
        "transport",
    )

    def __init__(self, server: RepoServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.sock: int = -1
        self.client = "local"
        self.admitted = False
        self.closing = False  # answer what was asked, then close
        self.parser = httptools.HttpRequestParser(self)
        self._state = _HEAD  # the first request head is due from the accept on
        self._url = b""
        self._headers: dict[str, str] = {}
        self._fields = 0
        self._fields_size = 0  # bytes of the request line and fields so far (MAX_HEAD)
        self._head_size = 0
        self._body_size = 0
        # (request, or a refusal to send, and whether the connection stays open after it)
        self._queue: deque[tuple[RepoRequest | Reply, bool]] = deque()
        self._busy = False  # a sendfile task owns the transport
        self._write_paused = False
        self._reading = True
        self._deadline = Deadline(self.loop, self._on_timer)

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        guard = self.server.guard
        client = guard.admit_connection(transport)
        if client is None:
            return
        self.client = client
        self.admitted = True
        self.transport = transport
        sock = transport.get_extra_info("socket")
        self.sock = sock.fileno() if sock is not None else -1
        self.server.connections.add(self)
        self._arm(self.loop.time() + guard.policy.header_timeout)  # the first head is due

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.closing:
            return
        now = self.loop.time()
        timeout = self.server.guard.policy.header_timeout
        if self._state == _IDLE:  # the first byte of a head (even a leading empty line) starts its clock
            self._state = _HEAD
            self._head_size = 0
            self._arm(now + timeout)
        if self._state == _HEAD:
            self._head_size += len(data)
        elif self._state == _BODY:
            self._arm(now + timeout)
        try:
            self.parser.feed_data(data)
            if self._state == _HEAD and self._head_size > MAX_HEAD:
                raise _Refused(431, "request head too large")
        except _Refused as exc:
            self._refuse(exc.status, str(exc))
            return
        except httptools.HttpParserUpgrade:
            self.closing = True  # the request before the upgrade is answered; nothing after it
        except httptools.HttpParserError as exc:
            # A callback's exception reaches us as the context of httptools' own error.
            cause = exc.__context__
            if isinstance(cause, _Refused):
                self._refuse(cause.status, str(cause))
            else:
                self._refuse(400, f"malformed request: {exc}")
            return
        self._process()

    def eof_received(self) -> bool | None:
        self.closing = True
        self._process()
        return True  # keep our half open until the answers are out

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.admitted:
            return
        self.admitted = False
        self._deadline.cancel()
        self.server.connections.discard(self)
        self.server.guard.release(self.client)
        self.transport = None
        self._queue.clear()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._process()

    # -- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._state != _HEAD:  # a pipelined head, in the same read as the request before it
            self._state = _HEAD
            self._head_size = 0
            self._arm(self.loop.time() + self.server.guard.policy.header_timeout)
        self._url = b""
        self._headers = {}
        self._fields = 0
        self._fields_size = 0
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._fields_size += len(url)
        if len(self._url) > MAX_LINE:
            raise _Refused(414, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        if self._fields > MAX_HEADERS:
            raise _Refused(431, "too many header fields")
        size = len(name) + len(value)
        if size > MAX_LINE:
            raise _Refused(431, "header field too long")
        self._fields_size += size + 4
        if self._fields_size > MAX_HEAD:
            raise _Refused(431, "request head too large")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        old = self._headers.get(key)
        self._headers[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self) -> None:
        self._state = _BODY
        self._head_size = 0
        self._arm(self.loop.time() + self.server.guard.policy.header_timeout)  # a body must keep coming

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > MAX_BODY:
            raise _Refused(413, "request body too large")

    def on_message_complete(self) -> None:
        parser = self.parser
        request = RepoRequest(parser.get_method().decode("ascii", "replace"),
                              self._url.decode("latin-1"), self._headers, self.client)
        self._queue.append((request, parser.should_keep_alive()))
        self._state = _IDLE
        self._deadline.arm(None)  # answering now; the idle clock starts when the answers are out
        if len(self._queue) > MAX_PIPELINED and self.transport is not None:
            self._reading = False
            self.transport.pause_reading()  # (loop.sendfile resumes reading when it is done)

    # -- answering ---------------------------------------------------------------------------

    def _process(self) -> None:
        """Answer queued requests in order, as far as the transport lets us."""
        transport = self.transport
        if transport is None:
            return
        responder = self.server.responder
        while self._queue and not self._busy and not self._write_paused:
            request, keep_alive = self._queue.popleft()
            if not keep_alive:  # the last answer on this connection: says so, and nothing follows
                self.closing = True
                self._queue.clear()
                transport.pause_reading()
            if isinstance(request, Reply):
                self._send(request, head_only=False)
            else:
                try:
                    reply = responder.answer(request)
                except Exception:  # answer() logs and answers 500 itself; this is a last resort
                    log.exception("error answering %r", request.target)
                    reply = Reply(500, [("Content-Type", "text/plain; charset=utf-8")], b"internal error\n")
                self._send(reply, head_only=request.method == "HEAD")
            if self.transport is None:
                return
        if not self._reading and len(self._queue) <= MAX_PIPELINED // 2 and not self.closing:
            self._reading = True
            transport.resume_reading()
        if self._busy:
            return
        if self._queue:  # the client does not read its answers: it has idle_timeout to start again
            self._arm(self.loop.time() + self.server.guard.policy.idle_timeout)
        elif self.closing:
            self._close()
        elif self._state == _IDLE:
            self._arm(self.loop.time() + self.server.guard.policy.idle_timeout)

    def _head(self, reply: Reply) -> bytes:
        lines = [f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Unknown')}\r\n"]
        lines.extend(f"{name}: {value}\r\n" for name, value in reply.headers)
        if reply.length is not None:
            lines.append(f"Content-Length: {reply.length}\r\n")
        lines.append(f"Date: {_Dates.now()}\r\n")
        lines.append(_STATIC)
        if self.closing:
            lines.append("Connection: close\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("latin-1")

    def _send(self, reply: Reply, *, head_only: bool) -> None:
        transport = self.transport
        assert transport is not None
        on_response = self.server.responder.on_response
        if on_response is not None:
            on_response(reply.status)
        fd = reply.fd
        if fd is None or head_only:
            if fd is not None:
                os.close(fd)
            transport.write(self._head(reply) if head_only else self._head(reply) + reply.body)
            return
        if reply.count > SMALL_FILE_MAX:
            transport.write(self._head(reply))
            self._busy = True
            task = self.loop.create_task(self._send_big(fd, reply.offset, reply.count))
            self.server.tasks.add(task)
            task.add_done_callback(self.server.tasks.discard)
            return
        try:
            self._send_small(transport, reply, fd)
        finally:
            os.close(fd)

    def _send_small(self, transport: asyncio.Transport, reply: Reply, fd: int) -> None:
        """Headers, then the file by sendfile(2) while the socket takes it; what it does not take
        (or everything, when the transport still holds unsent bytes) is copied behind them."""
        offset, left = reply.offset, reply.count
        transport.write(self._head(reply))
        if self.sock >= 0 and not transport.get_write_buffer_size():
            try:
                while left:
                    sent = os.sendfile(self.sock, fd, offset, left)
                    if not sent:
                        break  # the file shrank: the short read below says so
                    offset += sent
                    left -= sent
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:  # the client went away
                log.debug("sendfile to %s failed: %s", self.client, exc)
                transport.abort()
                return
        if left:
            try:
                data = os.pread(fd, left, offset)
            except OSError as exc:
                log.error("a pool file cannot be read to send it to %s: %s", self.client, exc)
                transport.abort()
                return
            if len(data) != left:
                log.error("a pool file shrank while being sent to %s (%d of %d bytes)",
                          self.client, reply.count - left + len(data), reply.count)
                transport.abort()
                return
            transport.write(data)

    async def _send_big(self, fd: int, offset: int, count: int) -> None:
        transport = self.transport
        try:
            if transport is None:
                return
            with open(fd, "rb", buffering=0, closefd=False) as fobj:
                try:
                    await self.loop.sendfile(transport, fobj, offset, count)
                except (ConnectionError, OSError) as exc:
                    log.debug("sending a file to %s failed: %s", self.client, exc)
                    transport.abort()
                    return
        except asyncio.CancelledError:
            if transport is not None:
                transport.abort()
            raise
        finally:
            os.close(fd)
            self._busy = False
        self._process()

    def _refuse(self, status: int, reason: str) -> None:
        """Answer a request this connection cannot go on from (400, 413, 414, 431), then close."""
        log.debug("%s: %s from %s", self.server.guard.name, reason, self.client)
        self.parser = httptools.HttpRequestParser(self)  # nothing more is parsed
        self._state = _IDLE
        self._deadline.arm(None)
        if self.transport is not None:
            self.transport.pause_reading()
        # What was asked before the bad request still gets its answer, in order.
        self._queue.append((Reply(status, [("Content-Type", "text/plain; charset=utf-8"),
                                           ("Cache-Control", "no-store")],
                                  f"{_REASONS.get(status, 'error').lower()}\n".encode()), False))
        self.closing = True
        self._process()

    def _close(self) -> None:
        self._deadline.arm(None)
        if self.transport is not None:
            self.transport.close()  # after what is buffered is sent

    # -- the deadline ------------------------------------------------------------------------

    def _arm(self, deadline: float | None) -> None:
        self._deadline.arm(deadline)

    def _on_timer(self) -> None:
        transport = self.transport
        if transport is None:
            return
        guard = self.server.guard
        if self._state == _IDLE and self._busy:
            return
        if self._state == _IDLE:
            if self._queue or transport.get_write_buffer_size():  # answers left unread all that time
                log.debug("%s: aborting the connection from %s: it does not read", guard.name, self.client)
                transport.abort()
                return
            log.debug("%s: closing the idle connection from %s", guard.name, self.client)
            self._close()
            return
        why = "body" if self._state == _BODY else "header"
        log.debug("%s: closing the connection from %s: %s", guard.name, self.client,
                  "request body stalled" if why == "body" else "no complete request head in time")
        guard._event(why)
        self._deadline.cancel()
        transport.abort()

    def close_if_idle(self) -> bool:
        """Shutdown: close now if nothing is being asked or answered; else close after it."""
        self.closing = True
        if self.transport is None:
            return True
        fresh = self._state == _HEAD and not self._head_size  # nothing of a next request yet
        if (self._state == _IDLE or fresh) and not self._queue and not self._busy:
            self._close()
            return True
        return False


class RepoServer:
    """The connections of one repo port (or of one repo worker) and their shutdown."""

    def __init__(self, responder: RepoResponder, guard: ConnectionGuard) -> None:
        self.responder = responder
        self.guard = guard
        self.loop = asyncio.get_running_loop()
        self.connections: set[RepoConnection] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    def __call__(self) -> RepoConnection:
        """A protocol factory, for ``loop.create_server`` and ``loop.connect_accepted_socket``."""
        return RepoConnection(self)

    async def listen(self, host: str | None, port: int, *, backlog: int = 1024) -> asyncio.Server:
        return await self.loop.create_server(self, host, port, backlog=backlog)

    async def shutdown(self, timeout: float) -> None:
        """Close idle connections now; give the others up to `timeout` seconds; abort the rest."""
        for conn in list(self.connections):
            conn.close_if_idle()
        deadline = self.loop.time() + timeout
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
            for conn in list(self.connections):
                conn.close_if_idle()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.sleep(0)  # connection_lost callbacks run
