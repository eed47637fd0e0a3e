"""Connection guard for both ports: a request-head timeout and a per-client connection cap.

aiohttp (3.14) bounds header *sizes* but not the *time* a client may take to send them, nor how
many connections one address may hold (HOSTILE.md row B12, case 68): a client dribbling one
header byte a second kept a connection, and a handler task, for as long as it liked.  This
module closes that gap without touching aiohttp's request handling:

* **Request-head timeout** (``header_timeout``): a connection must deliver a complete request
  head (request line + headers + the empty line) within ``header_timeout`` seconds of being
  accepted, and every later request head within ``header_timeout`` seconds of its first byte.
  A request body must keep arriving: no gap longer than ``header_timeout`` between two reads.
  Otherwise the connection is aborted (no response: the client has not finished asking).
* **Idle keep-alive timeout** (``idle_timeout``): a connection with no request in progress and
  no partial request head is closed after ``idle_timeout`` seconds.  This is aiohttp's own
  ``keepalive_timeout`` (the public ``AppRunner``/``RequestHandler`` argument); the request-head
  timeout above also covers a fresh connection that never sends anything.
* **Connections per client address** (``max_connections_per_client``): beyond the cap, a new
  connection from the same address is closed as soon as it is accepted, before any byte is read.
  IPv4-mapped IPv6 addresses count as their IPv4 address.  The cap is per port.

How it plugs in: ``AppRunner.server`` (public, after ``setup()``) is aiohttp's low-level
:class:`aiohttp.web.Server`, a protocol factory: calling it returns a fresh ``RequestHandler``
(an :class:`asyncio.Protocol`) for one connection.  :func:`start_guarded_server` gives
``loop.create_server`` a factory that wraps each of those in a :class:`GuardedConnection`, which
forwards every protocol callback to the handler unchanged and only *watches* the bytes coming in
(a small scanner that knows where a request head ends and how long its body is:
``Content-Length`` or ``chunked``; pipelined requests are followed).  No aiohttp site object is
used, so ``runner.addresses`` stays empty: the caller takes the bound addresses from the returned
:class:`asyncio.Server`, and must close it before ``runner.cleanup()``.

What this relies on in aiohttp (pinned by ``tests/test_serve_guard.py::test_aiohttp_contract``,
which fails loudly if any of it changes):

1. ``AppRunner(app, keepalive_timeout=...).server`` is, after ``setup()``, callable with no
   arguments and returns an ``asyncio.Protocol`` whose ``connection_made`` /
   ``data_received`` / ``eof_received`` / ``connection_lost`` / ``pause_writing`` /
   ``resume_writing`` are all it needs (aiohttp's own ``TCPSite`` passes it to
   ``loop.create_server`` the same way).
2. The handler never needs ``transport.get_protocol()`` to be itself (sendfile included).
3. ``runner.cleanup()`` closes idle connections and waits for in-flight requests of connections
   accepted outside any aiohttp site (the ``web.Server`` tracks them in ``connection_made``).
4. ``keepalive_timeout`` closes a connection idle between requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, cast

from aiohttp import web

__all__ = [
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS_PER_CLIENT",
    "MAX_HEAD",
    "MAX_HEADERS",
    "MAX_LINE",
    "ConnectionGuard",
    "Deadline",
    "GuardPolicy",
    "GuardedConnection",
    "RequestFramer",
    "start_guarded_server",
]

log = logging.getLogger(__name__)

DEFAULT_HEADER_TIMEOUT: Final = 10.0
DEFAULT_IDLE_TIMEOUT: Final = 75.0
DEFAULT_MAX_CONNECTIONS_PER_CLIENT: Final = 64

# The limits of one request head on both ports (nginx's and aiohttp's defaults): the request target
# (MAX_LINE bytes: 414), a header field's name or value (MAX_LINE: 431), the number of fields
# (MAX_HEADERS: 431), the whole head (MAX_HEAD: 431). The repo port's connection enforces them as
# it parses; the API lets aiohttp read heads up to MAX_HEAD and answers them in its own JSON
# errors (mirror.web.api.head_limits_middleware).
MAX_LINE: Final = 8190
MAX_HEADERS: Final = 128
MAX_HEAD: Final = 64 * 1024

# only a backstop for the scanner's own buffer (aiohttp refuses longer lines itself)
MAX_HEAD_BYTES: Final = 1024 * 1024 + 65536
MAX_CHUNK_LINE: Final = 4096


@dataclass(frozen=True)
class GuardPolicy:
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_connections_per_client: int = DEFAULT_MAX_CONNECTIONS_PER_CLIENT

    def __post_init__(self) -> None:
        if not self.header_timeout > 0 or not self.idle_timeout > 0:
            raise ValueError("header_timeout and idle_timeout must be positive")
        if self.max_connections_per_client < 1:
            raise ValueError("max_connections_per_client must be at least 1")


# -- the request framer ----------------------------------------------------------------------

_HEAD, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _OPAQUE = range(7)


def _head_end(buf: bytes | bytearray, start: int) -> int:
    """Index just past the empty line that ends a request head in `buf` (lines end in CRLF or a
    bare LF), searching from `start`; -1 if it has not arrived yet."""
    crlf = buf.find(b"\n\r\n", start)
    lf = buf.find(b"\n\n", start, crlf + 2 if crlf >= 0 else len(buf))
    if lf >= 0:
        return lf + 2
    return crlf + 3 if crlf >= 0 else -1


class RequestFramer:
    """Follows the request stream of one HTTP/1.x connection: where each head ends, how long its
    body is.  It only watches (aiohttp parses for real); on framing it cannot follow (a malformed
    or conflicting Content-Length, a transfer coding other than chunked) it gives up (``opaque``),
    and aiohttp answers such a request 400 and closes the connection anyway.

    ``heads`` counts the complete request heads seen; ``head_started`` is true while part of the
    next head (even only leading empty lines) has arrived; ``in_body`` while a body is pending.
    """

    __slots__ = (
        "_head",
        "_line",
        "_remaining",
        "_scanned",
        "_state",
        "_trailer",
        "head_started",
        "heads",
        "oversized",
    )

    def __init__(self) -> None:
        self.heads = 0
        self.head_started = False
        self.oversized = False
        self._state = _HEAD
        self._head = bytearray()
        self._scanned = 0
        self._remaining = 0
        self._line = bytearray()
        self._trailer = 0

    @property
    def in_head(self) -> bool:
        return self._state == _HEAD

    @property
    def in_body(self) -> bool:
        return _BODY <= self._state <= _TRAILER

    @property
    def opaque(self) -> bool:
        return self._state == _OPAQUE

    def feed(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end:
            state = self._state
            if state == _HEAD:
                pos = self._feed_head(data, pos)
            elif state == _BODY:
                take = min(self._remaining, end - pos)
                self._remaining -= take
                pos += take
                if self._remaining == 0:
                    self._state = _HEAD
            elif state == _CHUNK_DATA:
                take = min(self._remaining, end - pos)
                self._remaining -= take
                pos += take
                if self._remaining == 0:
                    self._state = _CHUNK_END
            elif state == _OPAQUE:
                return
            else:  # a line-oriented chunked state
                pos = self._feed_line(data, pos)

    def _feed_head(self, data: bytes, pos: int) -> int:
        end = len(data)
        if not self._head:
            # RFC 9112 2.2: empty lines before the request line are ignored (but start the clock).
            start = pos
            while pos < end and data[pos] in (0x0D, 0x0A):
                pos += 1
            if pos > start:
                self.head_started = True
            if pos == end:
                return pos
            stop = _head_end(data, pos)
            if stop >= 0:  # the common case: a whole head in one read
                self._complete_head(data[pos:stop])
                return stop
        self.head_started = True
        head = self._head
        head += memoryview(data)[pos:]
        stop = _head_end(head, max(0, self._scanned - 2))
        if stop < 0:
            self._scanned = len(head)
            if len(head) > MAX_HEAD_BYTES:
                self.oversized = True
                self._state = _OPAQUE
            return end
        used = stop - (len(head) - (end - pos))  # bytes of this feed that belong to the head
        self._complete_head(bytes(head[:stop]))
        return pos + used

    def _complete_head(self, head: bytes) -> None:
        self.heads += 1
        self.head_started = False
        self._head = bytearray()
        self._scanned = 0
        self._state = _HEAD
        lower = head.lower()
        if b"content-length" not in lower and b"transfer-encoding" not in lower:
            return
        lengths: list[bytes] = []
        codings: list[bytes] = []
        for line in lower.split(b"\n")[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                continue
            name = name.strip()
            if name == b"content-length":
                lengths.append(value.strip())
            elif name == b"transfer-encoding":
                codings.extend(c.strip() for c in value.split(b","))
        if codings:
            if codings[-1] == b"chunked" and not lengths:
                self._state = _CHUNK_SIZE
                self._line = bytearray()
            else:
                self._state = _OPAQUE
            return
        if len(set(lengths)) != 1 or not lengths[0].isdigit() or len(lengths[0]) > 18:
            self._state = _OPAQUE
            return
        length = int(lengths[0])
        if length:
            self._state = _BODY
            self._remaining = length

    def _feed_line(self, data: bytes, pos: int) -> int:
        newline = data.find(b"\n", pos)
        if newline < 0:
            self._line += data[pos:]
            if len(self._line) > MAX_CHUNK_LINE:
                self._state = _OPAQUE
            return len(data)
        self._line += data[pos:newline]
        line = bytes(self._line).rstrip(b"\r")
        self._line = bytearray()
        state = self._state
        if state == _CHUNK_SIZE:
            size = line.split(b";", 1)[0].strip()
            if not size or len(size) > 16 or any(c not in b"0123456789abcdefABCDEF" for c in size):
                self._state = _OPAQUE
            elif int(size, 16) == 0:
                self._state = _TRAILER
                self._trailer = 0
            else:
                self._state = _CHUNK_DATA
                self._remaining = int(size, 16)
        elif state == _CHUNK_END:
            self._state = _CHUNK_SIZE if not line else _OPAQUE
        else:  # _TRAILER: fields until an empty line
            self._trailer += len(line)
            if not line:
                self._state = _HEAD
            elif self._trailer > MAX_HEAD_BYTES:
                self._state = _OPAQUE
        return newline + 1


# -- the guard -------------------------------------------------------------------------------


def client_key(peername: object) -> str:
    """The address a connection counts against: the host part of the peer address."""
    if isinstance(peername, tuple) and peername:
        host = str(peername[0])
        if host.startswith("::ffff:") and "." in host:
            return host[7:]
        return host
    return "local"


class ConnectionGuard:
    """One per listening port: the policy, the open connections per client address, counters."""

    def __init__(self, policy: GuardPolicy | None = None, *, name: str = "http") -> None:
        self.policy = policy or GuardPolicy()
        self.name = name
        self.open: dict[str, int] = {}
        self.refused = 0  # connections closed at once: over the per-client cap
        self.header_timeouts = 0  # aborted: no complete request head in time
        self.body_timeouts = 0  # aborted: the request body stalled

    @property
    def connections(self) -> int:
        return sum(self.open.values())

    def admit(self, client: str) -> bool:
        count = self.open.get(client, 0)
        if count >= self.policy.max_connections_per_client:
            self._event("refused")
            return False
        self.open[client] = count + 1
        return True

    def admit_connection(self, transport: asyncio.Transport) -> str | None:
        """The client key of a new connection, admitted; None if it is over the per-client cap,
        in which case it has been reset (not closed: nothing lingers in TIME_WAIT on our side)."""
        client = client_key(transport.get_extra_info("peername"))
        if self.admit(client):
            return client
        log.debug("%s: refused a connection from %s: %d open (max_connections_per_client)",
                  self.name, client, self.open.get(client, 0))
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        return None

    def release(self, client: str) -> None:
        count = self.open.get(client, 0) - 1
        if count > 0:
            self.open[client] = count
        else:
            self.open.pop(client, None)

    def _event(self, what: str) -> None:
        if what == "refused":
            self.refused += 1
        elif what == "header":
            self.header_timeouts += 1
        else:
            self.body_timeouts += 1

    def protocol_factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        loop = asyncio.get_running_loop()
        return lambda: GuardedConnection(self, inner(), loop)


class Deadline:
    """One timer per connection, moved lazily: a later deadline does not reschedule it (it fires,
    sees the deadline moved, and re-arms), so the per-read cost of moving it is an assignment.
    `on_expiry` runs once the current deadline has passed; `when` is None while none is set."""

    __slots__ = ("_loop", "_on_expiry", "_timer", "when")

    def __init__(self, loop: asyncio.AbstractEventLoop, on_expiry: Callable[[], None]) -> None:
        self._loop = loop
        self._on_expiry = on_expiry
        self._timer: asyncio.TimerHandle | None = None
        self.when: float | None = None

    def arm(self, when: float | None) -> None:
        self.when = when
        if when is None:
            return
        timer = self._timer
        if timer is not None and timer.when() <= when:
            return
        if timer is not None:
            timer.cancel()
        self._timer = self._loop.call_at(when, self._fire)

    def cancel(self) -> None:
        self.when = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        when = self.when
        if when is None:
            return
        if self._loop.time() < when:
            self._timer = self._loop.call_at(when, self._fire)
            return
        self._on_expiry()


class GuardedConnection(asyncio.Protocol):
    """Wraps aiohttp's per-connection protocol: forwards everything, enforces the guard."""

    __slots__ = (
        "_deadline",
        "_head_since",
        "admitted",
        "client",
        "framer",
        "guard",
        "inner",
        "loop",
        "transport",
    )

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.guard = guard
        self.inner = inner
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.client = "local"
        self.admitted = False
        self.framer = RequestFramer()
        self._head_since: float | None = None
        self._deadline = Deadline(loop, self._on_timer)

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        client = self.guard.admit_connection(transport)
        if client is None:
            return
        self.client = client
        self.admitted = True
        self.transport = transport
        now = self.loop.time()
        self._head_since = now  # the first request head is due header_timeout after accept
        self._arm(now + self.guard.policy.header_timeout)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.admitted:
            return
        framer = self.framer
        heads = framer.heads
        framer.feed(data)
        if framer.oversized:
            self._abort("header")
            return
        now = self.loop.time()
        timeout = self.guard.policy.header_timeout
        if framer.heads != heads:
            self._head_since = None
        if framer.in_head:
            if framer.head_started:
                if self._head_since is None:
                    self._head_since = now
                self._arm(self._head_since + timeout)
            else:
                self._arm(None)  # between requests: aiohttp's keep-alive timeout applies
        elif framer.in_body or self._deadline.when is None:
            self._arm(now + timeout)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        if not self.admitted:
            return None
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.admitted:
            return
        self.admitted = False
        self._deadline.cancel()
        self.guard.release(self.client)
        self.transport = None
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    # -- the deadline ----------------------------------------------------------------------

    def _arm(self, deadline: float | None) -> None:
        self._deadline.arm(deadline)

    def _on_timer(self) -> None:
        if self.transport is not None:
            self._abort("body" if self.framer.in_body else "header")

    def _abort(self, why: str) -> None:
        transport = self.transport
        if transport is None:
            return
        log.debug("%s: closing the connection from %s: %s", self.guard.name, self.client,
                  "request body stalled" if why == "body" else "no complete request head in time")
        self.guard._event(why)
        self._deadline.cancel()
        transport.abort()


async def start_guarded_server(runner: web.BaseRunner, guard: ConnectionGuard, host: str | None, port: int,
                               *, backlog: int = 1024) -> asyncio.Server:
    """Listen on (host, port) for `runner`'s application behind `guard`; `runner` must be set up.

    Close the returned server (stop accepting) before ``runner.cleanup()``."""
    handler_factory = runner.server
    if handler_factory is None:
        raise RuntimeError("call runner.setup() first")
    loop = asyncio.get_running_loop()
    return await loop.create_server(guard.protocol_factory(handler_factory), host, port, backlog=backlog)
