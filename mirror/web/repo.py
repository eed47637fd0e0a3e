"""The read-only repository server (the repo port).

Published URLs (CONTRACT.md, "Published layout")::

    /<tier>/<repo>/<path>                     revalidated on every use: a promotion changes them
    /snapshots/<repo>/<snapshot-id>/<path>    immutable
    /keys/mirror.asc                          the mirror's public signing key, when there is one

Nothing is looked up on disk by name.  Every request is resolved through a :class:`Catalog` to a
manifest entry (exact path match), and the bytes come from the content-addressed pool file named
by the entry's sha256.  The request path is taken raw (``request.raw_path``), split on ``/`` and
each segment percent-decoded exactly once; empty, ``.`` and ``..`` segments, decoded ``/`` or
``\\``, control characters, malformed escapes and non-UTF-8 are refused before any lookup.

Bytes go out without any thread-pool hop: the pool file is opened here (``O_NOFOLLOW``: a
symlink in the pool is never followed) and checked with ``fstat`` (a regular file of the
manifest's size, else 500); files up to :data:`SMALL_FILE_MAX` are read with one ``pread`` and
sent from memory, bigger ones with ``loop.sendfile`` (:class:`_PoolFileResponse`).  Conditional
requests are evaluated against the content's strong ETag ``"<sha256>"``, and Range (one range:
206 + Content-Range; unsatisfiable, malformed or multi-range: 416 with ``bytes */N``; If-Range
that does not match: the full 200) is done here, with the rules of aiohttp's FileResponse.  No
``Accept-Encoding`` handling at all, so no ``<pool file>.gz``/``.br`` sibling is ever looked at
(CVE-2024-42367 class).  Blocking ``open``/``pread`` in the event loop is what nginx does with
``sendfile on`` and no ``aio``: cheap while metadata and small files are in the page cache.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import hashlib
import logging
import os
import re
import signal
import stat
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from email.utils import formatdate
from pathlib import Path
from typing import Any, BinaryIO, Final, Protocol
from urllib.parse import unquote_to_bytes, urlsplit

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter

from mirror.model import REPO_NAME_RE, SHA256_RE, SNAPSHOT_ID_RE, ManifestEntry
from mirror.web.guard import DEFAULT_IDLE_TIMEOUT, ConnectionGuard, GuardPolicy, start_guarded_server
from mirror.web.workers import RepoWorkers

__all__ = [
    "DEFAULT_KEEPALIVE_TIMEOUT",
    "SECURITY_HEADERS",
    "Catalog",
    "add_security_headers",
    "content_type_for",
    "make_repo_app",
    "run_servers",
    "split_request_path",
]

log = logging.getLogger(__name__)

# Same rule as mirror.config.TIER_NAME_RE; the reserved names never reach the tier branch.
_TIER_RE: Final = re.compile(r"^[a-z0-9][a-z0-9_-]*$")

CACHE_IMMUTABLE: Final = "public, max-age=31536000, immutable"
CACHE_REVALIDATE: Final = "no-cache"
CACHE_ERROR: Final = "no-store"

# aiohttp's own default keep-alive is 3630 s; an idle connection is closed after this long.
DEFAULT_KEEPALIVE_TIMEOUT: Final = DEFAULT_IDLE_TIMEOUT

_TEXT: Final = "text/plain; charset=utf-8"
_DEB: Final = "application/vnd.debian.binary-package"
_PGP_SIGNATURE: Final = "application/pgp-signature"
_PGP_KEYS: Final = "application/pgp-keys"
_OCTET: Final = "application/octet-stream"
_ETAG: Final = "ETag"  # aiohttp spells hdrs.ETAG "Etag"; header names are case-insensitive anyway

_BY_NAME: Final[dict[str, str]] = {
    "InRelease": _TEXT,  # a clearsigned text message
    "Release": _TEXT,
    "Release.gpg": _PGP_SIGNATURE,
    "Packages": _TEXT,
    "Sources": _TEXT,
    "Index": _TEXT,
    "SHA256SUMS": _TEXT,
    "MD5SUMS": _TEXT,
    "mirror.asc": _PGP_KEYS,
}
_TEXT_PREFIX_RE: Final = re.compile(r"^(?:Contents|Translation|Commands|Components)-[^.]+$")
_BY_SUFFIX: Final[dict[str, str]] = {
    ".deb": _DEB,
    ".udeb": _DEB,
    ".ddeb": _DEB,
    ".rpm": "application/x-rpm",
    ".xz": "application/x-xz",
    ".gz": "application/gzip",
    ".bz2": "application/x-bzip2",
    ".zst": "application/zstd",
    ".lzma": "application/x-lzma",
    ".xml": "application/xml",
    ".asc": _PGP_SIGNATURE,  # repomd.xml.asc, *.dsc.asc: detached signatures
    ".gpg": _PGP_SIGNATURE,
    ".sig": _PGP_SIGNATURE,
    ".key": _PGP_KEYS,  # repomd.xml.key
    ".dsc": _TEXT,
    ".changes": _TEXT,
    ".txt": _TEXT,
    ".json": "application/json",
    ".sqlite": "application/vnd.sqlite3",
    ".tar": "application/x-tar",
}


def content_type_for(name: str) -> str:
    """Content-Type for a requested file name (the last URL segment, decoded).

    Never text/html or anything a browser would render as active content; unknown names are
    application/octet-stream.
    """
    if (known := _BY_NAME.get(name)) is not None:
        return known
    if _TEXT_PREFIX_RE.match(name):
        return _TEXT
    dot = name.rfind(".")
    if dot > 0:
        return _BY_SUFFIX.get(name[dot:].lower(), _OCTET)
    return _OCTET


class Catalog(Protocol):
    """What the server needs from the state database (cheap, in-memory, synchronous)."""

    def lookup_tier(self, tier: str, repo: str, path: str,
                    client: str | None = None) -> ManifestEntry | None: ...

    def lookup_snapshot(self, repo: str, snapshot: str, path: str) -> ManifestEntry | None: ...

    def pool_path(self, sha256: str) -> Path: ...

    def public_key_path(self) -> Path | None: ...


class PathRejected(Exception):
    """The request target is refused before any lookup (404 or 400)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


_BAD_PERCENT_RE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")


_CONTROL_RE: Final = re.compile("[\x00-\x1f\x7f-\x9f]")


def _has_control(text: str) -> bool:
    return _CONTROL_RE.search(text) is not None


def split_request_path(raw: str) -> list[str]:
    """Split a raw request target into decoded path segments, or raise :class:`PathRejected`.

    ``raw`` is ``request.raw_path`` (origin-form ``/a/b?q`` or absolute-form
    ``http://host/a/b``); the query and fragment are ignored.  Each segment is percent-decoded
    exactly once, so ``%252e`` stays the literal three characters ``%2e``.
    """
    if raw.startswith("/"):
        path = raw.split("?", 1)[0].split("#", 1)[0]
    else:
        parts = urlsplit(raw)
        if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            raise PathRejected(400, "unsupported request target")
        path = parts.path
        if not path.startswith("/"):
            raise PathRejected(404, "no path")
    if _BAD_PERCENT_RE.search(path):
        raise PathRejected(400, "malformed percent-encoding")
    if _has_control(path):
        raise PathRejected(400, "control character in path")
    segments: list[str] = []
    for encoded in path[1:].split("/"):
        if not encoded:
            raise PathRejected(404, "empty path segment")
        if "%" in encoded or not encoded.isascii():
            try:
                segment = unquote_to_bytes(encoded).decode("utf-8")  # strict: no overlong forms
            except UnicodeError:
                raise PathRejected(400, "path is not UTF-8") from None
            if "/" in segment or _has_control(segment):
                raise PathRejected(400, "encoded separator or control character in path segment")
        else:  # plain ASCII, nothing to decode (and the whole path has no control character)
            segment = encoded
        if segment in (".", ".."):
            raise PathRejected(404, "dot segment")
        if "\\" in segment:
            raise PathRejected(400, "backslash in path segment")
        segments.append(segment)
    return segments


def _plain(status: int, text: str, *, cache: str = CACHE_ERROR) -> web.Response:
    return web.Response(
        status=status,
        text=text if text.endswith("\n") else text + "\n",
        headers={hdrs.CACHE_CONTROL: cache},
    )


def _not_found() -> web.Response:
    return _plain(404, "not found")


SMALL_FILE_MAX: Final = 256 * 1024  # bytes: read into memory and sent with the headers


class _PoolFileResponse(web.StreamResponse):
    """`count` bytes of `fobj` from `offset`, by sendfile; every header is set by the handler.

    The file object is closed once the response is sent (or failed); HEAD sends no body.
    """

    def __init__(self, fobj: BinaryIO, offset: int, count: int, *, status: int,
                 headers: dict[str, str]) -> None:
        super().__init__(status=status, headers=headers)
        self._fobj = fobj
        self._offset = offset
        self._count = count
        self.content_length = count

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:  # sent (or being sent) already
            return await super().prepare(request)
        try:
            writer = await super().prepare(request)  # headers go out now (StreamResponse)
            if writer is None or self._count == 0 or request.method == hdrs.METH_HEAD:
                return writer
            transport = request.transport
            if transport is None:
                raise ConnectionResetError("connection lost")
            loop = asyncio.get_running_loop()
            try:
                await loop.sendfile(transport, self._fobj, self._offset, self._count)
            except NotImplementedError:  # a transport without sendfile (e.g. TLS): copy
                self._fobj.seek(self._offset)
                left = self._count
                while left > 0:
                    chunk = self._fobj.read(min(left, 1 << 18))
                    if not chunk:
                        raise ConnectionResetError("pool file shrank while being sent") from None
                    await writer.write(chunk)
                    left -= len(chunk)
            await super().write_eof()
            return writer
        finally:
            self._fobj.close()


def _byte_range(request: web.BaseRequest, size: int) -> tuple[int, int] | None:
    """(offset, count) of the requested range, or None for the whole file; ValueError: 416.

    The rules of aiohttp's FileResponse: one range only (a multi-range or malformed header is
    416), a suffix range larger than the file is the whole file, an end past the file is cut."""
    rng = request.http_range  # ValueError when malformed or multi-range
    start, end = rng.start, rng.stop
    if start is None:
        return None
    if start < 0 and end is None:  # bytes=-N: the last N bytes
        start = max(0, start + size)
        count = size - start
    else:
        count = min(end if end is not None else size, size) - start
    if start >= size:
        raise ValueError("range starts past the end")
    return start, count


# On every response of both ports (the API adds its own, stricter, set on top).
SECURITY_HEADERS: Final[dict[str, str]] = {
    hdrs.X_CONTENT_TYPE_OPTIONS: "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    hdrs.SERVER: "mirror",  # aiohttp's default names itself and its version
}


def add_security_headers(response: web.StreamResponse, *, cache: str = CACHE_ERROR) -> None:
    """The security headers, and `cache` as Cache-Control unless the response has one."""
    headers = response.headers
    headers.update(SECURITY_HEADERS)
    if hdrs.CACHE_CONTROL not in headers:
        headers[hdrs.CACHE_CONTROL] = cache


async def _on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    add_security_headers(response)


def _http_seconds(moment: datetime) -> int:
    return int(moment.timestamp())


class _Preconditions:
    """RFC 9110 §13.2.2, evaluated against the strong ETag and Last-Modified (whole seconds)."""

    def __init__(self, request: web.BaseRequest, sha256: str, modified: int, *, exact: bool):
        self.request = request
        self.sha256 = sha256
        self.modified = modified
        # Tier URLs change content on promotion and rollback, possibly to an *older* pool file:
        # there, If-Modified-Since only matches the exact Last-Modified it was given (as nginx's
        # `if_modified_since exact`), so a rolled-back tier is not answered 304.
        self.exact = exact

    def status(self) -> int | None:
        """412, 304, or None to serve the representation."""
        request = self.request
        if_match = request.if_match
        if if_match is not None:
            if not any(
                tag.value == "*" or (not tag.is_weak and tag.value == self.sha256)
                for tag in if_match
            ):
                return 412
        else:
            since = request.if_unmodified_since
            if since is not None and self.modified > _http_seconds(since):
                return 412
        if_none_match = request.if_none_match
        if if_none_match is not None:
            if any(tag.value in ("*", self.sha256) for tag in if_none_match):  # weak comparison
                return 304
        elif (since := request.if_modified_since) is not None:
            since_s = _http_seconds(since)
            if self.modified == since_s or (not self.exact and self.modified < since_s):
                return 304
        return None

    def range_applies(self) -> bool:
        """If-Range: honour Range only for the exact same representation."""
        value = self.request.headers.get(hdrs.IF_RANGE)
        if value is None:
            return True
        value = value.strip()
        if value.startswith(('"', "W/")):
            return value == f'"{self.sha256}"'  # strong comparison; weak never matches
        date = self.request.if_range
        return date is not None and _http_seconds(date) == self.modified


@functools.lru_cache(maxsize=4096)
def _http_date(seconds: int) -> str:
    return formatdate(seconds, usegmt=True)


def _ceil_seconds(st: os.stat_result) -> int:
    # aiohttp rounds Last-Modified up; do the same so our value and its value agree.
    return -(-st.st_mtime_ns // 1_000_000_000)


class _RepoHandler:
    POOL_PATHS_CACHED: Final = 8192

    def __init__(self, catalog: Catalog, on_response: Callable[[int], None] | None = None) -> None:
        self.catalog = catalog
        self.on_response = on_response
        self._pool_paths: dict[str, Path] = {}  # sha256 -> pool file (pure function of the digest)

    def _pool_path(self, sha256: str) -> Path:
        path = self._pool_paths.get(sha256)
        if path is None:
            if len(self._pool_paths) >= self.POOL_PATHS_CACHED:
                self._pool_paths.clear()
            path = self._pool_paths[sha256] = self.catalog.pool_path(sha256)
        return path

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Every response of the repo port: security headers on, counted (`on_response`)."""
        response = await self._answer(request)
        add_security_headers(response)
        if self.on_response is not None:
            self.on_response(response.status)
        return response

    async def _answer(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD):
            response = _plain(405, "method not allowed")
            response.headers[hdrs.ALLOW] = "GET,HEAD"
            return response
        try:
            segments = split_request_path(request.raw_path)
        except PathRejected as exc:
            log.debug("refused %r: %s", request.raw_path, exc.reason)
            return _plain(exc.status, "bad request" if exc.status == 400 else "not found")
        try:
            return await self._dispatch(request, segments)
        except Exception:
            log.exception("error serving %r", request.raw_path)
            return _plain(500, "internal error")

    async def _dispatch(self, request: web.BaseRequest, segments: list[str]) -> web.StreamResponse:
        head = segments[0]
        if head == "keys":
            if segments != ["keys", "mirror.asc"]:
                return _not_found()
            return self._serve_key(request)
        if head == "snapshots":
            if len(segments) < 4:
                return _not_found()
            repo, snapshot = segments[1], segments[2]
            if not REPO_NAME_RE.match(repo) or not SNAPSHOT_ID_RE.match(snapshot):
                return _not_found()
            entry = self.catalog.lookup_snapshot(repo, snapshot, "/".join(segments[3:]))
            immutable = True
        else:
            if len(segments) < 3 or not _TIER_RE.match(head) or not REPO_NAME_RE.match(segments[1]):
                return _not_found()
            entry = self.catalog.lookup_tier(head, segments[1], "/".join(segments[2:]), request.remote)
            immutable = False
        if entry is None:
            return _not_found()
        return await self._serve_entry(request, entry, segments[-1], immutable=immutable)

    def _serve_key(self, request: web.BaseRequest) -> web.StreamResponse:
        """The mirror's public key: small, not content-addressed; its ETag is its SHA-256."""
        key = self.catalog.public_key_path()
        if key is None:
            return _not_found()
        try:
            fd = os.open(key, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return _not_found()
        except OSError as exc:
            log.error("the public key %s cannot be read: %s", key, exc)
            return _plain(503, "key unavailable")
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > SMALL_FILE_MAX:
                log.error("the public key %s is not a regular file of at most %d bytes", key, SMALL_FILE_MAX)
                return _plain(500, "key invalid")
            data = os.pread(fd, st.st_size, 0)
        finally:
            os.close(fd)
        digest = hashlib.sha256(data).hexdigest()
        return self._respond(request, None, data, st, digest, "mirror.asc", cache=CACHE_REVALIDATE,
                             exact=True, content_type=_PGP_KEYS)

    async def _serve_entry(
        self, request: web.BaseRequest, entry: ManifestEntry, name: str, *, immutable: bool
    ) -> web.StreamResponse:
        if not SHA256_RE.match(entry.sha256):
            log.error("manifest entry %r has an invalid sha256 %r", entry.path, entry.sha256)
            return _plain(500, "internal error")
        pool_file = self._pool_path(entry.sha256)
        try:
            fd = os.open(pool_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            log.error("pool object %s for %r is missing (%s)", entry.sha256, entry.path, pool_file)
            return _plain(503, "stored file unavailable")
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a symlink where the object should be
                log.error("pool object %s for %r is not a regular file (%s)",
                          entry.sha256, entry.path, pool_file)
                return _plain(500, "stored file invalid")
            log.error("pool object %s for %r cannot be read: %s", entry.sha256, entry.path, exc)
            return _plain(503, "stored file unavailable")
        try:
            st = os.fstat(fd)
            problem = None
            if not stat.S_ISREG(st.st_mode):
                problem = "is not a regular file"
            elif st.st_size != entry.size:
                problem = f"has {st.st_size} bytes, the manifest says {entry.size}"
        except BaseException:
            os.close(fd)
            raise
        if problem is not None:
            os.close(fd)
            log.error("pool object %s for %r %s (%s)", entry.sha256, entry.path, problem, pool_file)
            return _plain(500, "stored file invalid")
        fobj = open(fd, "rb", buffering=0)  # noqa: SIM115 (closed here or by the response)
        try:
            response = self._respond(request, fobj, None, st, entry.sha256, name,
                                     cache=CACHE_IMMUTABLE if immutable else CACHE_REVALIDATE,
                                     exact=not immutable)
        except BaseException:
            fobj.close()
            raise
        if not isinstance(response, _PoolFileResponse):
            fobj.close()
        return response

    def _respond(self, request: web.BaseRequest, fobj: BinaryIO | None, data: bytes | None,
                 st: os.stat_result, sha256: str, name: str, *, cache: str, exact: bool,
                 content_type: str | None = None) -> web.StreamResponse:
        """Conditionals, Range, HEAD for one stored file (`fobj`, or its bytes `data`)."""
        size = st.st_size
        modified = _ceil_seconds(st)
        headers: dict[str, str] = {
            _ETAG: f'"{sha256}"',
            hdrs.LAST_MODIFIED: _http_date(modified),
            hdrs.CACHE_CONTROL: cache,
        }
        conditions = _Preconditions(request, sha256, modified, exact=exact)
        status = conditions.status()
        if status is not None:
            return web.Response(status=status, headers=headers)
        headers[hdrs.CONTENT_TYPE] = content_type or content_type_for(name)
        headers[hdrs.ACCEPT_RANGES] = "bytes"
        status, offset, count = 200, 0, size
        if hdrs.RANGE in request.headers and conditions.range_applies():
            try:
                byte_range = _byte_range(request, size)
            except ValueError:
                headers[hdrs.CONTENT_RANGE] = f"bytes */{size}"
                return web.Response(status=416, headers=headers)
            if byte_range is not None:
                status, (offset, count) = 206, byte_range
                headers[hdrs.CONTENT_RANGE] = f"bytes {offset}-{offset + count - 1}/{size}"
        if request.method == hdrs.METH_HEAD:  # GET's headers, Content-Length included; no body
            head = web.StreamResponse(status=status, headers=headers)
            head.content_length = count
            return head
        if data is not None:
            return web.Response(status=status, body=data[offset:offset + count], headers=headers)
        assert fobj is not None
        if count > SMALL_FILE_MAX:
            return _PoolFileResponse(fobj, offset, count, status=status, headers=headers)
        body = os.pread(fobj.fileno(), count, offset)
        if len(body) != count:
            log.error("pool object %s shrank while being read (%d of %d bytes)", sha256, len(body), count)
            return _plain(500, "stored file invalid")
        return web.Response(status=status, body=body, headers=headers)


RepoHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def repo_handler(catalog: Catalog, *, on_response: Callable[[int], None] | None = None) -> RepoHandler:
    """The repo port's request handler, for aiohttp's low-level server (`run_servers` takes it in
    place of an application): no router, middlewares or signals per request (about a fifth of
    aiohttp's time per small response); it answers 405 to other methods, sets the security
    headers, and calls `on_response(status)` for every response (the metrics)."""
    return _RepoHandler(catalog, on_response).handle


def make_repo_app(catalog: Catalog) -> web.Application:
    """The repo port as an application (tests, benchmarks): one catch-all GET/HEAD route to the
    same handler; other methods get the router's 405."""
    app = web.Application(client_max_size=64 * 1024)
    # [\s\S]: the router matches the *decoded* path, which may hold a newline; such requests
    # must still reach the handler (and be refused there) rather than the router's own 404.
    app.router.add_get(r"/{tail:[\s\S]*}", _RepoHandler(catalog).handle, allow_head=True)
    app.on_response_prepare.append(_on_response_prepare)
    return app


async def run_servers(
    apps: Sequence[tuple[web.Application | RepoHandler, str, int]],
    *,
    shutdown_timeout: float = 10,
    keepalive_timeout: float | None = None,
    policy: GuardPolicy | None = None,
    guards: Sequence[ConnectionGuard] | None = None,
    ready: Callable[[list[tuple[str, int]]], Any] | None = None,
    workers: RepoWorkers | None = None,
) -> None:
    """Serve every ``(app, host, port)`` until SIGTERM or SIGINT, then stop gracefully. An app is
    an aiohttp application or a request handler (`repo_handler`: aiohttp's low-level server).

    With ``workers`` (:class:`mirror.web.workers.RepoWorkers`), the first app's port is served by
    the worker processes: this process only accepts its connections and hands them over.

    On the signal the listening sockets close first, in-flight requests get up to
    ``shutdown_timeout`` seconds to finish, idle keep-alive connections are closed, and the
    apps' cleanup hooks run.  ``ready``, if given, is called with the bound (host, port)
    addresses once every site listens (useful with port 0).

    Every port is behind a :class:`mirror.web.guard.ConnectionGuard` (``guards``, one per app,
    or made from ``policy``): request-head timeout, idle keep-alive timeout (aiohttp's
    ``keepalive_timeout`` = ``policy.idle_timeout``; ``keepalive_timeout`` overrides it) and
    connections per client address (HOSTILE B12, case 68).  aiohttp itself bounds request line
    and header sizes (8190 bytes per line/field, 128 headers).
    """
    policy = policy or GuardPolicy()
    if guards is None:
        guards = [ConnectionGuard(policy) for _ in apps]
    if len(guards) != len(apps):
        raise ValueError("one guard per app")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed: list[signal.Signals] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
        installed.append(signum)
    runners: list[web.BaseRunner] = []
    listeners: list[asyncio.Server | RepoWorkers] = []
    try:
        bound: list[tuple[str, int]] = []
        for (app, host, port), guard in zip(apps, guards, strict=True):
            idle = keepalive_timeout if keepalive_timeout is not None else guard.policy.idle_timeout
            runner: web.BaseRunner
            if isinstance(app, web.Application):
                runner = web.AppRunner(app, handle_signals=False, access_log=None,
                                       shutdown_timeout=shutdown_timeout, keepalive_timeout=idle)
            else:
                runner = web.ServerRunner(web.Server(app, access_log=None, keepalive_timeout=idle),
                                          handle_signals=False, shutdown_timeout=shutdown_timeout)
            await runner.setup()
            runners.append(runner)
            listener: asyncio.Server | RepoWorkers
            if workers is not None and not listeners:
                await workers.start(host, port)
                listener = workers
            else:
                listener = await start_guarded_server(runner, guard, host, port)
            listeners.append(listener)
            bound.extend((str(s.getsockname()[0]), int(s.getsockname()[1])) for s in listener.sockets)
        log.info("serving on %s", ", ".join(f"{h}:{p}" for h, p in bound))
        if ready is not None:
            ready(bound)
        await stop.wait()
        log.info("shutting down (waiting up to %gs for in-flight requests)", shutdown_timeout)
    finally:
        for listener in listeners:  # stop accepting first
            listener.close()
        if workers is not None:
            await workers.stop()
        results = await asyncio.gather(
            *(runner.cleanup() for runner in runners), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                log.error("error during shutdown: %r", result)
        for signum in installed:
            loop.remove_signal_handler(signum)
    log.info("stopped")
