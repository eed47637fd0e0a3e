"""Network only: one HTTP client (`mirror.transport`), bounded concurrency, size caps, one retry policy.

The client hashes bytes exactly as the upstream stores them (`auto_decompress=False`), has
connect and per-read timeouts but no total cap, follows redirects itself so that a redirect to
another scheme (or from https down to http) is refused, and reads `file://` upstreams from disk.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urljoin, urlsplit

from mirror import __version__
from mirror.errors import (
    ChecksumMismatchError,
    FetchError,
    MirrorError,
    NotFoundUpstreamError,
    RedirectError,
    SizeMismatchError,
    TooLargeError,
)
from mirror.transport import Client, Response

USER_AGENT = f"mirror/{__version__} (+https://example.org/mirror)"
CHUNK = 256 * 1024
MAX_REDIRECTS = 10
T = TypeVar("T")


@dataclass(frozen=True)
class FetchPolicy:
    connect_timeout: float = 30.0
    read_timeout: float = 60.0
    retries: int = 4
    backoff_initial: float = 0.5
    backoff_max: float = 30.0


def is_retryable(exc: BaseException, attempt: int) -> bool:
    """The one place that decides what is tried again (`attempt` counts from 1).

    Network failures (timeouts, resets, 429, 5xx) are retried; an integrity failure of a file
    whose digest came from verified metadata gets exactly one more try (it may be transfer
    corruption); everything else an untrustworthy upstream did is reported, not retried.
    """
    if isinstance(exc, ChecksumMismatchError | SizeMismatchError):
        return attempt < 2
    if isinstance(exc, MirrorError):
        return exc.retryable
    return False


def _retry_after(exc: BaseException) -> float | None:
    value = getattr(exc, "retry_after", None)
    return float(value) if isinstance(value, int | float) else None


async def with_retries(op: Callable[[], Awaitable[T]], policy: FetchPolicy) -> T:
    attempt = 1
    while True:
        try:
            return await op()
        except MirrorError as exc:
            if attempt > policy.retries or not is_retryable(exc, attempt):
                raise
            delay = min(policy.backoff_max, policy.backoff_initial * 2 ** (attempt - 1))
            delay = delay / 2 + random.uniform(0, delay / 2)  # jitter
            hint = _retry_after(exc)
            if hint is not None:
                delay = min(max(delay, hint), policy.backoff_max)
            await asyncio.sleep(delay)
            attempt += 1


class HTTPStatusError(FetchError):
    def __init__(self, status: int, url: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status} from {url}")
        self.status = status
        self.retry_after = retry_after
        self.retryable = status == 429 or status >= 500 or status == 408


class Fetcher:
    """One per process; `open_stream` yields the body of one URL as chunks."""

    def __init__(self, policy: FetchPolicy) -> None:
        self.policy = policy
        self._client: Client | None = None

    async def __aenter__(self) -> Fetcher:
        self._client = Client(connect_timeout=self.policy.connect_timeout,
                              read_timeout=self.policy.read_timeout, user_agent=USER_AGENT)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @asynccontextmanager
    async def open_stream(self, url: str) -> AsyncIterator[tuple[int | None, AsyncIterator[bytes]]]:
        """(declared length or None, chunk iterator) for `url`; FetchError subclasses on failure."""
        if not url.startswith(("http://", "https://")) and urlsplit(url).scheme == "file":
            async with self._open_file(url) as result:
                yield result
            return
        response = await self._get(url)
        try:
            yield response.content_length, _iter_body(response)
        finally:
            response.release()

    async def fetch_capped(self, url: str, cap: int) -> tuple[bytes, int]:
        """The body of `url` in memory, read until its end or until more than `cap` bytes arrived
        (then cut at once): (the bytes kept, the count received, which is over `cap` if cut).

        The same requests, redirects and errors as `open_stream`, without its per-chunk layers:
        for the many small files of a sync."""
        if not url.startswith(("http://", "https://")) and urlsplit(url).scheme == "file":
            parts: list[bytes] = []
            size = 0
            async with self._open_file(url) as (_length, chunks):
                async for chunk in chunks:
                    size += len(chunk)
                    if size > cap:
                        break
                    parts.append(chunk)
            return b"".join(parts), size
        response = await self._get(url)
        try:
            return await response.collect(cap)
        finally:
            response.release()

    async def _get(self, url: str) -> Response:
        """The 200 response for `url`, redirects followed as allowed; the caller releases it.
        FetchError subclasses on failure."""
        assert self._client is not None, "Fetcher used outside `async with`"
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            response = await self._client.get(current)
            if response.status == 200:
                return response
            try:
                if response.status in (301, 302, 303, 307, 308):
                    location = response.headers.get("location")
                    if not location:
                        raise FetchError(f"redirect without Location from {current}")
                    current = _check_redirect(current, urljoin(current, location))
                    continue
                if response.status in (404, 410):
                    raise NotFoundUpstreamError(f"HTTP {response.status}: not found at {current}")
                raise HTTPStatusError(response.status, current, _parse_retry_after(
                    response.headers.get("retry-after")))
            finally:
                response.release()
        raise RedirectError(f"more than {MAX_REDIRECTS} redirects from {url}")

    @asynccontextmanager
    async def _open_file(self, url: str) -> AsyncIterator[tuple[int | None, AsyncIterator[bytes]]]:
        import aiofiles  # file:// upstreams only: 1.5 ms of every other sync's start

        path = Path(unquote(urlsplit(url).path))
        try:
            handle = await aiofiles.open(path, "rb")
        except FileNotFoundError:
            raise NotFoundUpstreamError(f"not found: {path}") from None
        except OSError as exc:
            raise FetchError(f"cannot read {path}: {exc}") from exc
        try:
            size = path.stat().st_size

            async def chunks() -> AsyncIterator[bytes]:
                while data := await handle.read(CHUNK):
                    yield data

            yield size, chunks()
        finally:
            await handle.close()

    async def fetch_bytes(self, url: str, *, cap: int, what: str) -> bytes:
        """A whole small file (signed root metadata) into memory, refused beyond `cap` bytes."""
        async def op() -> bytes:
            async with self.open_stream(url) as (length, chunks):
                if length is not None and length > cap:
                    raise TooLargeError(f"{length} bytes is over the {cap}-byte limit for this file",
                                        path=what)
                parts: list[bytes] = []
                total = 0
                async for chunk in chunks:
                    total += len(chunk)
                    if total > cap:
                        raise TooLargeError(f"more than the {cap}-byte limit for this file", path=what)
                    parts.append(chunk)
                return b"".join(parts)

        try:
            return await with_retries(op, self.policy)
        except MirrorError as exc:
            raise exc.with_context(path=what) from None


async def _iter_body(response: Response) -> AsyncIterator[bytes]:
    while chunk := await response.chunks():
        yield chunk


def _check_redirect(source: str, target: str) -> str:
    old, new = urlsplit(source).scheme, urlsplit(target).scheme
    if new not in ("http", "https"):
        raise RedirectError(f"refused redirect from {source} to another scheme: {target[:200]!r}")
    if old == "https" and new == "http":
        raise RedirectError(f"refused redirect from https to http: {target[:200]!r}")
    return target


def _parse_retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
