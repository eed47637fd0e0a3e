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

Answers are computed synchronously by :class:`RepoResponder` (no thread-pool hop): the pool
file is opened here (``O_NOFOLLOW``: a symlink in the pool is never followed) and checked with
``fstat`` (a regular file of the manifest's size, else 500), and the open file goes into the
:class:`Reply`; :mod:`mirror.web.connection` sends it with ``sendfile(2)``.  Conditional
requests are evaluated against the content's strong ETag ``"<sha256>"``, and Range (one range:
206 + Content-Range; unsatisfiable, malformed or multi-range: 416 with ``bytes */N``; If-Range
that does not match: the full 200) is done here, with the rules of aiohttp's FileResponse (which
served this port before).  No ``Accept-Encoding`` handling at all, so no ``<pool file>.gz``/``.br``
sibling is ever looked at (CVE-2024-42367 class).  Blocking ``open``/``fstat`` in the event loop
is what nginx does with ``sendfile on`` and no ``aio``: cheap while metadata is in the page cache.
"""

from __future__ import annotations

import asyncio
import calendar
import dataclasses
import errno
import functools
import hashlib
import logging
import os
import re
import signal
import stat
from collections.abc import Callable, Sequence
from datetime import datetime
from email.utils import formatdate, parsedate
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import unquote_to_bytes, urlsplit

from aiohttp import web

from mirror.model import REPO_NAME_RE, SHA256_RE, SNAPSHOT_ID_RE, ManifestEntry
from mirror.web.guard import (
    DEFAULT_IDLE_TIMEOUT,
    MAX_HEAD,
    ConnectionGuard,
    GuardPolicy,
    start_guarded_server,
)
from mirror.web.workers import RepoWorkers

__all__ = [
    "DEFAULT_KEEPALIVE_TIMEOUT",
    "SECURITY_HEADERS",
    "Catalog",
    "Reply",
    "RepoRequest",
    "RepoResponder",
    "add_security_headers",
    "content_type_for",
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
_ETAG: Final = "ETag"
CONTENT_TYPE: Final = "Content-Type"
CACHE_CONTROL: Final = "Cache-Control"
LAST_MODIFIED: Final = "Last-Modified"

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


class Reply:
    """One response of the repo port, before it is written (:mod:`mirror.web.connection`).

    `headers` are the response's own (the connection adds Date, Server, the security headers,
    Content-Length and Connection).  The body is `body`, or `count` bytes of the pool file `fd`
    from `offset` (the sender closes `fd`); `length` is the Content-Length to announce (HEAD:
    the GET's; None: no body and no Content-Length, as 304)."""

    __slots__ = ("body", "count", "fd", "headers", "length", "offset", "status")

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes = b"", *,
                 fd: int | None = None, offset: int = 0, count: int = 0,
                 length: int | None = -1) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.fd = fd
        self.offset = offset
        self.count = count
        self.length = (count if fd is not None else len(body)) if length == -1 else length


class RepoRequest:
    """A parsed request head: method, the raw request target, header fields by lower-case name
    (repeated fields joined with ", "), and the client's address (per-client snapshot pins)."""

    __slots__ = ("client", "headers", "method", "target")

    def __init__(self, method: str, target: str, headers: dict[str, str], client: str = "local") -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.client = client


def _plain(status: int, text: str, *, cache: str = CACHE_ERROR) -> Reply:
    return Reply(status, [(CONTENT_TYPE, _TEXT), (CACHE_CONTROL, cache)],
                 (text if text.endswith("\n") else text + "\n").encode())


def _not_found() -> Reply:
    return _plain(404, "not found")


SMALL_FILE_MAX: Final = 256 * 1024  # bytes: sent inline; bigger files by a sendfile task


_BYTES_RANGE_RE: Final = re.compile(r"^bytes=(\d*)-(\d*)$", re.ASCII | re.IGNORECASE)


def _byte_range(value: str, size: int) -> tuple[int, int] | None:
    """(offset, count) of the Range header `value`, or None for the whole file; ValueError: 416.

    The rules of aiohttp's FileResponse (which this server used before): one range only (a
    multi-range or malformed header is 416), a suffix range larger than the file is the whole
    file, an end past the file is cut."""
    match = _BYTES_RANGE_RE.match(value)
    if match is None:
        raise ValueError("range not in acceptable format")
    first, last = match.group(1), match.group(2)
    if not first and not last:
        raise ValueError("no start or end of range specified")
    if not first:  # bytes=-N: the last N bytes
        start = max(0, size - int(last))
        count = size - start
    else:
        start = int(first)
        if last:
            end = int(last) + 1
            if start >= end:
                raise ValueError("start cannot be after end")
            count = min(end, size) - start
        else:
            count = size - start
    if start >= size:
        raise ValueError("range starts past the end")
    return start, count


# On every response of both ports (the API adds its own, stricter, set on top).
SECURITY_HEADERS: Final[dict[str, str]] = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Server": "mirror",  # aiohttp's default names itself and its version
}


def add_security_headers(response: web.StreamResponse, *, cache: str = CACHE_ERROR) -> None:
    """The security headers, and `cache` as Cache-Control unless the response has one (the API
    port's aiohttp responses; the repo port writes them itself)."""
    headers = response.headers
    headers.update(SECURITY_HEADERS)
    if CACHE_CONTROL not in headers:
        headers[CACHE_CONTROL] = cache


_ETAG_ANY: Final = "*"
# RFC 9110 entity-tag list, as aiohttp parses it: a garbage character ends the list.
_ETAG_LIST_RE: Final = re.compile(r'((W/)?"([!\x23-\x7E\x80-\xff]+)")(?:\s*,\s*|$)|(.)')


def _etags(value: str | None) -> list[tuple[bool, str]] | None:
    """(weak, opaque-tag) of each entity-tag in an If-Match/If-None-Match value; None if absent."""
    if not value:
        return None
    if value == _ETAG_ANY:
        return [(False, _ETAG_ANY)]
    tags: list[tuple[bool, str]] = []
    for match in _ETAG_LIST_RE.finditer(value):
        if match.group(4):
            break
        tags.append((bool(match.group(2)), match.group(3)))
    return tags


def _http_date_seconds(value: str | None) -> int | None:
    """An HTTP date as whole seconds since the epoch (UTC); None if absent or unparsable."""
    if value is None:
        return None
    parsed = parsedate(value)
    if parsed is None:
        return None
    try:
        return calendar.timegm(datetime(*parsed[:6]).timetuple())
    except (ValueError, OverflowError):
        return None


class _Preconditions:
    """RFC 9110 §13.2.2, evaluated against the strong ETag and Last-Modified (whole seconds)."""

    def __init__(self, headers: dict[str, str], sha256: str, modified: int, *, exact: bool):
        self.headers = headers
        self.sha256 = sha256
        self.modified = modified
        # Tier URLs change content on promotion and rollback, possibly to an *older* pool file:
        # there, If-Modified-Since only matches the exact Last-Modified it was given (as nginx's
        # `if_modified_since exact`), so a rolled-back tier is not answered 304.
        self.exact = exact

    def status(self) -> int | None:
        """412, 304, or None to serve the representation."""
        headers = self.headers
        if_match = _etags(headers.get("if-match"))
        if if_match is not None:
            if not any(value == _ETAG_ANY or (not weak and value == self.sha256) for weak, value in if_match):
                return 412
        else:
            since = _http_date_seconds(headers.get("if-unmodified-since"))
            if since is not None and self.modified > since:
                return 412
        if_none_match = _etags(headers.get("if-none-match"))
        if if_none_match is not None:
            if any(value in (_ETAG_ANY, self.sha256) for _weak, value in if_none_match):  # weak comparison
                return 304
        elif (since := _http_date_seconds(headers.get("if-modified-since"))) is not None \
                and (self.modified == since or (not self.exact and self.modified < since)):
            return 304
        return None

    def range_applies(self) -> bool:
        """If-Range: honour Range only for the exact same representation."""
        value = self.headers.get("if-range")
        if value is None:
            return True
        value = value.strip()
        if value.startswith(('"', "W/")):
            return value == f'"{self.sha256}"'  # strong comparison; weak never matches
        date = _http_date_seconds(value)
        return date is not None and date == self.modified


@functools.lru_cache(maxsize=4096)
def _http_date(seconds: int) -> str:
    return formatdate(seconds, usegmt=True)


def _ceil_seconds(st: os.stat_result) -> int:
    # aiohttp rounded Last-Modified up; so do we (clients keep the values they were given).
    return -(-st.st_mtime_ns // 1_000_000_000)


class RepoResponder:
    """Every answer of the repo port, synchronously: `answer` turns a request into a :class:`Reply`
    (no I/O but the catalog lookup and the pool file's open/fstat, and for a small file a pread
    when the connection cannot sendfile); :mod:`mirror.web.connection` writes it and calls
    `on_response(status)` (the metrics)."""

    POOL_PATHS_CACHED: Final = 8192

    def __init__(self, catalog: Catalog, on_response: Callable[[int], None] | None = None) -> None:
        self.catalog = catalog
        self.on_response = on_response
        self._pool_paths: dict[str, str] = {}  # sha256 -> pool file (pure function of the digest)

    def _pool_path(self, sha256: str) -> str:
        path = self._pool_paths.get(sha256)
        if path is None:
            if len(self._pool_paths) >= self.POOL_PATHS_CACHED:
                self._pool_paths.clear()
            path = self._pool_paths[sha256] = str(self.catalog.pool_path(sha256))
        return path

    def answer(self, request: RepoRequest) -> Reply:
        if request.method not in ("GET", "HEAD"):
            reply = _plain(405, "method not allowed")
            reply.headers.append(("Allow", "GET,HEAD"))
            return reply
        try:
            segments = split_request_path(request.target)
        except PathRejected as exc:
            log.debug("refused %r: %s", request.target, exc.reason)
            return _plain(exc.status, "bad request" if exc.status == 400 else "not found")
        try:
            return self._dispatch(request, segments)
        except Exception:
            log.exception("error serving %r", request.target)
            return _plain(500, "internal error")

    def _dispatch(self, request: RepoRequest, segments: list[str]) -> Reply:
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
            entry = self.catalog.lookup_tier(head, segments[1], "/".join(segments[2:]), request.client)
            immutable = False
        if entry is None:
            return _not_found()
        return self._serve_entry(request, entry, segments[-1], immutable=immutable)

    def _serve_key(self, request: RepoRequest) -> Reply:
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

    def _serve_entry(self, request: RepoRequest, entry: ManifestEntry, name: str, *,
                     immutable: bool) -> Reply:
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
        reply: Reply | None = None
        try:
            st = os.fstat(fd)
            problem = None
            if not stat.S_ISREG(st.st_mode):
                problem = "is not a regular file"
            elif st.st_size != entry.size:
                problem = f"has {st.st_size} bytes, the manifest says {entry.size}"
            if problem is not None:
                log.error("pool object %s for %r %s (%s)", entry.sha256, entry.path, problem, pool_file)
                return _plain(500, "stored file invalid")
            reply = self._respond(request, fd, None, st, entry.sha256, name,
                                  cache=CACHE_IMMUTABLE if immutable else CACHE_REVALIDATE,
                                  exact=not immutable)
            return reply
        finally:
            if reply is None or reply.fd != fd:
                os.close(fd)

    def _respond(self, request: RepoRequest, fd: int | None, data: bytes | None,
                 st: os.stat_result, sha256: str, name: str, *, cache: str, exact: bool,
                 content_type: str | None = None) -> Reply:
        """Conditionals, Range, HEAD for one stored file (the open pool file `fd`, or its bytes
        `data`); a GET of a pool file is answered with the file itself (the reply owns `fd`)."""
        size = st.st_size
        modified = _ceil_seconds(st)
        headers = [(_ETAG, f'"{sha256}"'), (LAST_MODIFIED, _http_date(modified)), (CACHE_CONTROL, cache)]
        conditions = _Preconditions(request.headers, sha256, modified, exact=exact)
        status = conditions.status()
        if status is not None:
            return Reply(status, headers, length=None if status == 304 else 0)
        headers.append((CONTENT_TYPE, content_type or content_type_for(name)))
        headers.append(("Accept-Ranges", "bytes"))
        status, offset, count = 200, 0, size
        range_value = request.headers.get("range")
        if range_value is not None and conditions.range_applies():
            try:
                byte_range = _byte_range(range_value, size)
            except ValueError:
                headers.append(("Content-Range", f"bytes */{size}"))
                return Reply(416, headers)
            if byte_range is not None:
                status, (offset, count) = 206, byte_range
                headers.append(("Content-Range", f"bytes {offset}-{offset + count - 1}/{size}"))
        if request.method == "HEAD":  # GET's headers, Content-Length included; no body
            return Reply(status, headers, length=count)
        if data is not None:
            return Reply(status, headers, data[offset:offset + count])
        assert fd is not None
        return Reply(status, headers, fd=fd, offset=offset, count=count)


async def run_servers(
    apps: Sequence[tuple[web.Application | RepoResponder, str, int]],
    *,
    shutdown_timeout: float = 10,
    keepalive_timeout: float | None = None,
    policy: GuardPolicy | None = None,
    guards: Sequence[ConnectionGuard] | None = None,
    ready: Callable[[list[tuple[str, int]]], Any] | None = None,
    workers: RepoWorkers | None = None,
) -> None:
    """Serve every ``(app, host, port)`` until SIGTERM or SIGINT, then stop gracefully. An app is
    an aiohttp application (the API port) or a :class:`RepoResponder` (the repo port, served by
    :class:`mirror.web.connection.RepoServer`).

    With ``workers`` (:class:`mirror.web.workers.RepoWorkers`), the first app's port is served by
    the worker processes: this process only accepts its connections and hands them over.

    On the signal the listening sockets close first, in-flight requests get up to
    ``shutdown_timeout`` seconds to finish, idle keep-alive connections are closed, and the
    apps' cleanup hooks run.  ``ready``, if given, is called with the bound (host, port)
    addresses once every site listens (useful with port 0).

    Every port is behind a :class:`mirror.web.guard.ConnectionGuard` (``guards``, one per app,
    or made from ``policy``): request-head timeout, idle keep-alive timeout (``policy.idle_timeout``;
    ``keepalive_timeout`` overrides it) and connections per client address (HOSTILE B12, case
    68).  Request line and header sizes are bounded (8190 bytes per line/field, 128 headers).
    """
    from mirror.web.connection import RepoServer

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
    repo_servers: list[RepoServer] = []
    listeners: list[asyncio.Server | RepoWorkers] = []
    try:
        bound: list[tuple[str, int]] = []
        for (app, host, port), guard in zip(apps, guards, strict=True):
            if keepalive_timeout is not None:
                guard.policy = dataclasses.replace(guard.policy, idle_timeout=keepalive_timeout)
            listener: asyncio.Server | RepoWorkers
            if workers is not None and not listeners:
                await workers.start(host, port)
                listener = workers
            elif isinstance(app, RepoResponder):
                repo_server = RepoServer(app, guard)
                repo_servers.append(repo_server)
                listener = await repo_server.listen(host, port)
            else:
                # heads up to MAX_HEAD reach the application, which answers the limits on a line,
                # a field and their number in its own terms (the API: JSON errors it documents)
                runner = web.AppRunner(app, handle_signals=False, access_log=None,
                                       shutdown_timeout=shutdown_timeout,
                                       keepalive_timeout=guard.policy.idle_timeout,
                                       max_line_size=MAX_HEAD, max_field_size=MAX_HEAD,
                                       max_headers=MAX_HEAD // 64)
                await runner.setup()
                runners.append(runner)
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
            *(runner.cleanup() for runner in runners),
            *(server.shutdown(shutdown_timeout) for server in repo_servers),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                log.error("error during shutdown: %r", result)
        for signum in installed:
            loop.remove_signal_handler(signum)
    log.info("stopped")
