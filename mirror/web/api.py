"""The management API (the api port): JSON under /api/v1, plus /metrics and /healthz.

Thin handlers over `mirror.tiers.Tiers` and the state database; every store call runs in a
thread, so the event loop never waits on the database lock. Errors are always
`{"error": {"code", "message"}}` with the `MirrorError`'s status and stable code, unknown routes
and methods included.

Safety (HOSTILE.md 71-74): a mutating call (any method but GET/HEAD) needs
`Authorization: Bearer TOKEN` (tokens from `[server] token_file`, compared in constant time; the
token's name is the actor in the history; its scope must cover the call: `read` tokens never
mutate, `promote` tokens may promote and roll back only (into their `tiers`, when listed),
`admin` tokens everything; an expired token is unknown) and a JSON body (`Content-Type:
application/json`, so a cross-site form post cannot promote); GET never changes state; no CORS
headers are sent. Reads are open unless `[server] read_auth = true`; `/healthz` is always open.
A client address with too many failed authentications within a minute gets 429 for a while.
Every refused call (401, 403, 429) is audited: a WARNING on the `mirror.audit` logger (token
name if known, client, method, path, reason) and `mirror_api_refusals_total{status, reason}`.
Repo, tier and snapshot names are checked (`mirror.names`) before anything looks them up:
malformed is 400, unknown 404. Every response carries the security headers
(`mirror.web.repo.SECURITY_HEADERS`) and no CORS header.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from aiohttp import hdrs, web

from mirror import __version__
from mirror.config import Settings
from mirror.errors import (
    ForbiddenError,
    InvalidRequestError,
    MirrorError,
    RateLimitedError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
)
from mirror.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from mirror.metrics import Metrics
from mirror.model import utcnow
from mirror.names import MAX_NAME_LENGTH, check_repo, check_snapshot, check_tier, name_problem
from mirror.releases import ReleaseIssuer
from mirror.store import SnapshotDeletion, Store, SyncRunRecord, TierMove
from mirror.tiers import UNSET, MoveResult, Tiers, TierView, Unset, parse_moment
from mirror.tokens import ADMIN, PROMOTE, READ, Token, TokenRing
from mirror.web.guard import MAX_HEADERS, MAX_LINE
from mirror.web.openapi import openapi_document
from mirror.web.repo import add_security_headers
from mirror.web.syncs import BackgroundSyncs

log = logging.getLogger(__name__)
audit = logging.getLogger("mirror.audit")

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
TIERS = web.AppKey("tiers", Tiers)
TOKENS = web.AppKey("tokens", TokenRing)
METRICS = web.AppKey("metrics", Metrics)
SYNCS = web.AppKey("syncs", BackgroundSyncs)
RELEASES = web.AppKey("releases", ReleaseIssuer)
ACTOR = web.RequestKey("actor", str)
TOKEN = web.RequestKey("token", Token)

MAX_BODY = 64 * 1024
MAX_TRACKED_CLIENTS = 10_000
PUBLIC_PATHS = frozenset({"/healthz"})
_BEARER_RE = re.compile(r"^Bearer +([\x21-\x7e]+) *$", re.IGNORECASE)
_STATUS_CODES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 413: "request_too_large", 415: "unsupported_media_type",
                 429: "rate_limited"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AuthLimiter:
    """Failed authentications per client address in a sliding window (HOSTILE 74)."""

    def __init__(self, max_failures: int = 60, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window = window
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, client: str) -> deque[float]:
        now = self.clock()
        failures = self._failures.setdefault(client, deque())
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[client]
            return deque()
        return failures

    def check(self, client: str) -> None:
        failures = self._recent(client)
        if len(failures) >= self.max_failures:
            retry = max(1, int(failures[0] + self.window - self.clock()) + 1)
            raise RateLimitedError(f"too many failed authentications from {client}; retry in {retry} s")

    def failed(self, client: str) -> None:
        if len(self._failures) >= MAX_TRACKED_CLIENTS:  # many addresses: forget the expired ones
            for other in list(self._failures):
                self._recent(other)
        self._recent(client)
        self._failures.setdefault(client, deque()).append(self.clock())


LIMITER = web.AppKey("limiter", AuthLimiter)


# -- JSON shapes ------------------------------------------------------------------------------


def _time(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def tier_state_json(view: TierView) -> dict[str, Any]:
    return {"snapshot": view.snapshot, "since": _time(view.since)}


def move_json(move: TierMove) -> dict[str, Any]:
    return {"id": move.id, "repo": move.repo, "tier": move.tier, "at": _time(move.at),
            "from": move.from_snapshot, "to": move.to_snapshot, "actor": move.actor, "reason": move.reason,
            "forced": move.forced, "action": move.action}


def move_result_json(result: MoveResult) -> dict[str, Any]:
    return {"repo": result.repo, "tier": result.tier, "snapshot": result.snapshot, "changed": result.changed,
            "move": move_json(result.move) if result.move is not None else None}


def sync_run_json(run: SyncRunRecord) -> dict[str, Any]:
    return {"id": run.id, "repo": run.repo, "started": _time(run.started), "finished": _time(run.finished),
            "outcome": run.outcome, "snapshot": run.snapshot, "error_code": run.error_code,
            "message": run.message, "files": run.files, "bytes": run.bytes, "actor": run.actor}


def public_url(url: str) -> str:
    """An upstream URL without any user:password part."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def error_response(status: int, code: str, message: str) -> web.Response:
    response = web.json_response({"error": {"code": code, "message": message}}, status=status)
    response.headers[hdrs.CACHE_CONTROL] = "no-store"
    return response


def _json(data: Any, status: int = 200, *, ascii_only: bool = False) -> web.Response:
    """`ascii_only` for documents carrying upstream strings (diffs, advisories): every non-ASCII
    character (C1 controls, U+202E and the like included) as a \\u escape (HOSTILE 45, 75)."""
    response = web.json_response(data, status=status,
                                 dumps=lambda v: json.dumps(v, ensure_ascii=ascii_only))
    response.headers[hdrs.CACHE_CONTROL] = "no-store"
    return response


# -- middlewares ------------------------------------------------------------------------------


@web.middleware
async def head_limits_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The request-head limits both ports keep (mirror.web.guard), answered as the API's JSON
    errors: aiohttp lets heads up to MAX_HEAD through (its own refusal is a text/plain 400)."""
    if len(request.raw_path) > MAX_LINE:
        return error_response(414, "uri_too_long", f"request target over {MAX_LINE} bytes")
    fields = request.raw_headers
    if len(fields) > MAX_HEADERS:
        return error_response(431, "header_fields_too_large", f"more than {MAX_HEADERS} header fields")
    if any(len(name) > MAX_LINE or len(value) > MAX_LINE for name, value in fields):
        return error_response(431, "header_fields_too_large", f"a header field over {MAX_LINE} bytes")
    return await handler(request)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except MirrorError as exc:
        if request.method not in ("GET", "HEAD") and exc.http_status in (409, 422):
            audit.warning("refused %s %r by %s: %d %s: %s", request.method, request.path[:300],
                          request.get(ACTOR, "-"), exc.http_status, exc.code, exc)
        response = error_response(exc.http_status, exc.code, str(exc))
        if isinstance(exc, UnauthorizedError):
            response.headers[hdrs.WWW_AUTHENTICATE] = 'Bearer realm="mirror"'
        elif isinstance(exc, RateLimitedError):
            response.headers[hdrs.RETRY_AFTER] = "60"
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _STATUS_CODES.get(exc.status, "http_error")
        message = {404: "no such endpoint", 405: f"method {request.method} not allowed here"}.get(
            exc.status, exc.reason)
        response = error_response(exc.status, code, message)
        if hdrs.ALLOW in exc.headers:
            response.headers[hdrs.ALLOW] = exc.headers[hdrs.ALLOW]
        return response
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("API error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal error (see the server log)")


def _client(request: web.Request) -> str:
    return request.remote or "unknown"


def refuse(request: web.Request, status: int, reason: str, message: str, token: str | None = None) -> None:
    """Audit a refused call (HOSTILE 71): one WARNING line on the `mirror.audit` logger with the
    token's name (when known), the client address, method and path, and the
    `mirror_api_refusals{status, reason}` counter."""
    request.app[METRICS].api_refusals.labels(str(status), reason).inc()
    audit.warning("refused %s %r from %s (token %s): %d %s: %s", request.method, request.path[:300],
                  _client(request), token or "-", status, reason, message)


def _authenticate(request: web.Request) -> Token:
    """The presented token, or raise UnauthorizedError / RateLimitedError (audited, and a 401
    counts as a failure for the rate limit)."""
    app = request.app
    limiter = app[LIMITER]
    client = _client(request)
    try:
        limiter.check(client)
    except RateLimitedError as exc:
        refuse(request, 429, "rate_limited", str(exc))
        raise
    values = request.headers.getall(hdrs.AUTHORIZATION, [])
    token: Token | None = None
    refused_name: str | None = None  # an expired token's name
    reason, problem = "missing", "missing Authorization: Bearer TOKEN header"
    if len(values) > 1:
        reason, problem = "malformed", "more than one Authorization header"
    elif values:
        match = _BEARER_RE.match(values[0])
        if match is None:
            reason, problem = "malformed", "malformed Authorization header (expected: Bearer TOKEN)"
        else:
            token = app[TOKENS].find(match.group(1))
            reason, problem = "unknown", "unknown token"
            if token is None and not app[TOKENS].configured:
                reason, problem = "no_tokens", "no API tokens are configured (server.token_file)"
            elif token is not None and token.expired(utcnow()):
                assert token.expires is not None
                reason, problem = "expired", f"token expired at {token.expires.isoformat()}"
                refused_name, token = token.name, None
    if token is None:
        limiter.failed(client)
        app[METRICS].auth_failures.inc()
        refuse(request, 401, reason, problem, refused_name)
        raise UnauthorizedError(problem)
    return token


def _needed_scope(request: web.Request) -> str:
    """What the matched route needs: `read` for GET/HEAD, else its entry in NEEDS (admin if none)."""
    if request.method in (hdrs.METH_GET, hdrs.METH_HEAD):
        return READ
    handler = request.match_info.handler
    return NEEDS.get(handler, ADMIN)


def check_tier_allowed(request: web.Request, tier: str) -> None:
    """403 unless the call's token may move `tier` (tier-scoped tokens, HOSTILE 71)."""
    token = request.get(TOKEN)
    if token is not None and not token.allows_tier(tier):
        allowed = ", ".join(sorted(token.tiers or ()))
        message = f"token {token.name} may move only the tiers {allowed}, not {tier}"
        refuse(request, 403, "tier", message, token.name)
        raise ForbiddenError(message)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.match_info.http_exception is not None:  # unknown route or method: 404/405
        return await handler(request)
    mutating = request.method not in (hdrs.METH_GET, hdrs.METH_HEAD)
    if mutating or (request.app[SETTINGS].server.read_auth and request.path not in PUBLIC_PATHS):
        token = _authenticate(request)
        needed = _needed_scope(request)
        if not token.allows(needed):
            message = f"token {token.name} has scope {token.scope}; this call needs {needed}"
            refuse(request, 403, "scope", message, token.name)
            raise ForbiddenError(message)
        request[TOKEN] = token
        request[ACTOR] = token.name
    if mutating and request.content_type != "application/json":
        raise UnsupportedMediaTypeError("a mutating call needs a JSON body (Content-Type: application/json)")
    return await handler(request)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every API response: nosniff, no framing, no referrer, a CSP allowing nothing, no caching
    unless the handler chose otherwise, no server version; and never any CORS header."""
    add_security_headers(response, cache="no-store")
    for name in [n for n in response.headers if n.lower().startswith("access-control-")]:
        del response.headers[name]


# -- request helpers --------------------------------------------------------------------------


async def _body(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip() and allow_empty:
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequestError("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("the body must be a JSON object")
    return data


class _Fields:
    """Typed access to a JSON object's fields; unknown fields are refused (typos must not pass)."""

    def __init__(self, data: dict[str, Any], allowed: set[str]) -> None:
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise InvalidRequestError(f"unknown field {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
        self.data = data

    def text(self, key: str, *, required: bool = False, max_length: int = 2000) -> str | None:
        value = self.data.get(key)
        if value is None:
            if required:
                raise InvalidRequestError(f"field {key!r} is required")
            if key in self.data:
                raise InvalidRequestError(f"field {key!r} must be a string, not null")
            return None
        if not isinstance(value, str):
            raise InvalidRequestError(f"field {key!r} must be a string")
        if len(value) > max_length:
            raise InvalidRequestError(f"field {key!r} is longer than {max_length} characters")
        return value

    def flag(self, key: str) -> bool:
        value = self.data.get(key, False)
        if not isinstance(value, bool):
            raise InvalidRequestError(f"field {key!r} must be true or false")
        return value

    def expected(self) -> str | Unset | None:
        if "expected" not in self.data:
            return UNSET
        value = self.data["expected"]
        if value is not None and not isinstance(value, str):
            raise InvalidRequestError("field 'expected' must be a snapshot id or null")
        return None if value is None else check_snapshot(value)

    def name(self, key: str, kind: str, *, required: bool = False) -> str | None:
        """A repo, tier or snapshot name: 400 unless well-formed (mirror.names)."""
        value = self.text(key, required=required, max_length=MAX_NAME_LENGTH)
        if value is None:
            return None
        problem = name_problem(kind, value)
        if problem is not None:
            raise InvalidRequestError(f"field {key!r}: {problem}")
        return value


def _repo(request: web.Request) -> str:
    name = check_repo(request.match_info["repo"])
    request.app[SETTINGS].repo(name)  # NotFoundError for an unconfigured repo
    return name


def _query_moment(request: web.Request) -> datetime | None:
    value = request.query.get("at")
    return parse_moment(value) if value is not None else None


def _query_limit(request: web.Request, default: int) -> int:
    value = request.query.get("limit")
    if value is None:
        return default
    if not value.isdigit() or not 1 <= int(value) <= 10000:
        raise InvalidRequestError("limit must be an integer from 1 to 10000")
    return int(value)


def _tier_map(views: dict[str, TierView]) -> dict[str, Any]:
    return {tier: tier_state_json(view) for tier, view in views.items()}


# -- handlers ---------------------------------------------------------------------------------


async def list_repos(request: web.Request) -> web.Response:
    settings, store, tiers = request.app[SETTINGS], request.app[STORE], request.app[TIERS]

    def collect() -> list[dict[str, Any]]:
        out = []
        for repo in settings.repos:
            out.append({"name": repo.name, "type": repo.type, "url": public_url(repo.url),
                        "tiers": _tier_map(tiers.current(repo.name)),
                        "snapshots": len(store.snapshots(repo.name)),
                        "latest_snapshot": store.latest_snapshot(repo.name)})
        return out

    return _json(await asyncio.to_thread(collect))


async def list_snapshots(request: web.Request) -> web.Response:
    repo = _repo(request)
    snapshots = await asyncio.to_thread(request.app[STORE].snapshots, repo)
    return _json([s.as_json() for s in snapshots])


def tiers_document(settings: Settings, tiers: Tiers, moment: datetime | None) -> dict[str, Any]:
    """`{"REPO": {"TIER": {"snapshot", "since"}}}`: now, or what each tier served at `moment`."""
    return {repo.name: _tier_map(tiers.current(repo.name) if moment is None else tiers.at(repo.name, moment))
            for repo in settings.repos}


async def list_tiers(request: web.Request) -> web.Response:
    moment = _query_moment(request)
    return _json(await asyncio.to_thread(tiers_document, request.app[SETTINGS], request.app[TIERS], moment))


async def promote(request: web.Request) -> web.Response:
    repo = _repo(request)
    fields = _Fields(await _body(request), {"to", "from", "snapshot", "reason", "force", "expected"})
    to = fields.name("to", "tier", required=True)
    assert to is not None
    check_tier_allowed(request, to)
    result = await asyncio.to_thread(
        request.app[TIERS].promote, repo, to, from_tier=fields.name("from", "tier"),
        snapshot=fields.name("snapshot", "snapshot"),
        actor=request[ACTOR], reason=fields.text("reason"), force=fields.flag("force"),
        expected=fields.expected())
    _log_move(result)
    await _issue_releases(request, result)
    return _json(move_result_json(result))


async def _issue_releases(request: web.Request, result: MoveResult) -> None:
    """tier_signing "mirror": re-issue the moved tier's Release files before answering, so the
    repo port serves the move's own fresh ones at once (the background refresher retries failures)."""
    issuer = request.app.get(RELEASES)
    if issuer is None or not result.changed or not issuer.signs(result.repo):
        return
    try:
        await asyncio.to_thread(issuer.issue, result.repo, result.tier)
    except MirrorError as exc:
        log.error("%s %s: Release files not re-issued after the move: %s", result.repo, result.tier, exc)


async def rollback(request: web.Request) -> web.Response:
    repo = _repo(request)
    fields = _Fields(await _body(request), {"tier", "reason", "force", "expected"})
    tier = fields.name("tier", "tier", required=True)
    assert tier is not None
    check_tier_allowed(request, tier)
    result = await asyncio.to_thread(
        request.app[TIERS].rollback, repo, tier, actor=request[ACTOR], reason=fields.text("reason"),
        force=fields.flag("force"), expected=fields.expected())
    _log_move(result)
    await _issue_releases(request, result)
    return _json(move_result_json(result))


def _log_move(result: MoveResult) -> None:
    move = result.move
    if move is not None:
        log.info("%s: %s %s %s -> %s by %s%s", move.repo, move.action, move.tier, move.from_snapshot,
                 move.to_snapshot, move.actor, " (forced)" if move.forced else "")


def history_document(tiers: Tiers, repo: str, *, tier: str | None = None, moment: datetime | None = None,
                     limit: int | None = None) -> dict[str, Any]:
    """Moves newest first (made at or before `moment`, if given) and what each tier served then."""
    moves = tiers.history(repo, tier=tier, until=moment, limit=limit)
    views = tiers.current(repo) if moment is None else tiers.at(repo, moment)
    deletions = tiers.store.snapshot_deletions(repo, until=moment, limit=limit)
    return {"repo": repo, "tier": tier, "at": _time(moment), "tiers": _tier_map(views),
            "moves": [move_json(m) for m in moves], "deletions": [deletion_json(d) for d in deletions]}


async def history(request: web.Request) -> web.Response:
    repo = _repo(request)
    tier = request.query.get("tier")
    if tier is not None:
        check_tier(tier)
    moment = _query_moment(request)
    limit = _query_limit(request, 1000)
    return _json(await asyncio.to_thread(history_document, request.app[TIERS], repo, tier=tier, moment=moment,
                                         limit=limit))


def _query_text(request: web.Request, key: str, *, required: bool = False) -> str | None:
    values = request.query.getall(key, [])
    if len(values) > 1:
        raise InvalidRequestError(f"query parameter {key!r} given more than once")
    if not values:
        if required:
            raise InvalidRequestError(f"query parameter {key!r} is required")
        return None
    if not values[0] or len(values[0]) > 200:
        raise InvalidRequestError(f"query parameter {key!r} must be 1 to 200 characters")
    return values[0]


async def diff(request: web.Request) -> web.StreamResponse:
    """`?from=&to=` (tier, snapshot id or TIER@TIME) -> the CONTRACT's diff: whole, or one page at
    a time with `limit` (at most 10000) and then `cursor` (from the previous page's
    `page.next_cursor`, also in `page.next` and a `Link: rel="next"` header; a cursor without a
    limit pages by 1000); `&format=csv`: the same as CSV."""
    from mirror.diff import diff_to_csv
    from mirror.diffs import DEFAULT_PAGE, diff_page

    repo = _repo(request)
    from_ref = _query_text(request, "from", required=True)
    to_ref = _query_text(request, "to", required=True)
    fmt = _query_text(request, "format") or "json"
    if fmt not in ("json", "csv"):
        raise InvalidRequestError("format must be json or csv")
    if len(request.query.getall("limit", [])) > 1:
        raise InvalidRequestError("query parameter 'limit' given more than once")
    values = request.query.getall("cursor", [])
    if len(values) > 1:
        raise InvalidRequestError("query parameter 'cursor' given more than once")
    cursor = values[0] if values else None
    # Neither limit nor cursor: the whole diff, as `mirror diff --json` (CONTRACT.md).
    limit = _query_limit(request, DEFAULT_PAGE) if "limit" in request.query or cursor else None
    assert from_ref is not None and to_ref is not None
    page = await asyncio.to_thread(diff_page, request.app[STORE], request.app[SETTINGS], repo, from_ref,
                                   to_ref, limit=limit, cursor=cursor)
    following = None
    if page.next_cursor is not None:
        following = str(request.rel_url.update_query(cursor=page.next_cursor))
    headers = {hdrs.CACHE_CONTROL: "no-store"}
    if following is not None:
        headers[hdrs.LINK] = f'<{following}>; rel="next"'
    if fmt == "csv":
        text = await asyncio.to_thread(diff_to_csv, page.result.diff)
        return web.Response(text=text, content_type="text/csv", charset="utf-8", headers=headers)
    doc = await asyncio.to_thread(page.as_json)
    doc["page"]["next"] = following
    response = _json(doc, ascii_only=True)
    response.headers.update(headers)
    return response


async def cve(request: web.Request) -> web.Response:
    """Per repo and tier: whether it carries the fix of a CVE, and which snapshot first did."""
    from mirror.diffs import check_cve, cve_report

    ident = check_cve(request.match_info["cve"])
    report = await asyncio.to_thread(cve_report, request.app[STORE], request.app[SETTINGS], ident)
    return _json(report.as_json(), ascii_only=True)


async def advisories(request: web.Request) -> web.Response:
    """`?in=TIER[&not_in=TIER][&type=security]`: advisories IN lists and NOT_IN does not."""
    from mirror.diffs import pending_advisories

    repo = _repo(request)
    in_ref = _query_text(request, "in", required=True)
    assert in_ref is not None
    not_in = _query_text(request, "not_in")
    kind = _query_text(request, "type")
    return _json(await asyncio.to_thread(pending_advisories, request.app[STORE], request.app[SETTINGS], repo,
                                         in_ref, not_in, kind), ascii_only=True)


def deletion_json(d: SnapshotDeletion) -> dict[str, Any]:
    return {"id": d.id, "repo": d.repo, "snapshot": d.snapshot, "at": _time(d.at), "actor": d.actor,
            "reason": d.reason, "created": _time(d.created), "packages": d.packages, "bytes": d.bytes}


async def delete_snapshot(request: web.Request) -> web.Response:
    """`{"reason"?}` -> the deletion record; 409 while a tier needs the snapshot (mirror.snapshot_delete)."""
    from mirror.snapshot_delete import delete_snapshot as delete

    repo = _repo(request)
    snapshot = check_snapshot(request.match_info["snapshot"])
    fields = _Fields(await _body(request, allow_empty=True), {"reason"})
    record = await asyncio.to_thread(delete, request.app[STORE], request.app[SETTINGS], repo, snapshot,
                                     actor=request[ACTOR], reason=fields.text("reason"))
    return _json(deletion_json(record))


async def start_sync(request: web.Request) -> web.Response:
    repo = _repo(request)
    fields = _Fields(await _body(request, allow_empty=True), {"allow_rollback"})
    request.app[SYNCS].start(repo, actor=request[ACTOR], allow_rollback=fields.flag("allow_rollback"))
    response = _json({"repo": repo, "status": "started"}, status=202)
    response.headers[hdrs.LOCATION] = f"/api/v1/syncs?repo={repo}"
    return response


async def run_gc(request: web.Request) -> web.Response:
    """`mirror gc` in the server: `{"repo"?, "dry_run"?}` -> the report (409 while a sync runs)."""
    from mirror.gc import collect_garbage

    settings = request.app[SETTINGS]
    fields = _Fields(await _body(request, allow_empty=True), {"repo", "dry_run"})
    repo = fields.text("repo", max_length=200)
    if repo is not None:
        check_repo(repo)
        settings.repo(repo)
    dry_run = fields.flag("dry_run")
    actor = request[ACTOR]

    def run() -> dict[str, Any]:
        store = Store(settings.storage.root / "state.db", actor=actor)
        try:
            return collect_garbage(settings, store, [repo] if repo else None, dry_run=dry_run).as_json()
        finally:
            store.close()

    report = await asyncio.to_thread(run)
    log.info("gc by %s%s: %s snapshots, %s pool files removed", actor, " (dry run)" if dry_run else "",
             report["snapshots_removed"], report["pool"]["files"])
    return _json(report)


async def list_syncs(request: web.Request) -> web.Response:
    repo = request.query.get("repo")
    if repo is not None:
        check_repo(repo)
        request.app[SETTINGS].repo(repo)
    limit = _query_limit(request, 100)
    runs = await asyncio.to_thread(request.app[STORE].sync_runs, repo, limit)
    return _json([sync_run_json(r) for r in runs])


async def openapi(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    return _json(openapi_document(settings.tiers, settings.repo_names, read_auth=settings.server.read_auth))


async def serve_metrics(request: web.Request) -> web.Response:
    body = await asyncio.to_thread(request.app[METRICS].render)
    return web.Response(body=body, headers={hdrs.CONTENT_TYPE: METRICS_CONTENT_TYPE,
                                            hdrs.CACHE_CONTROL: "no-store"})


async def healthz(request: web.Request) -> web.Response:
    store = request.app[STORE]
    problems: list[str] = []
    schema = 0
    try:
        await asyncio.to_thread(store.ping)
        schema = await asyncio.to_thread(store.schema_version)
    except Exception as exc:  # health reports every failure, never raises
        problems.append(f"state database: {exc}")
    body: dict[str, Any] = {"status": "failing" if problems else "ok", "version": __version__,
                            "schema_version": schema, "time": _time(utcnow())}
    if problems:
        body["problems"] = problems
    return _json(body, status=503 if problems else 200)


#: the scope a mutating route needs beyond `read` (any other mutating route needs `admin`)
NEEDS: dict[Any, str] = {promote: PROMOTE, rollback: PROMOTE, delete_snapshot: ADMIN, start_sync: ADMIN,
                         run_gc: ADMIN}


def make_api_app(settings: Settings, store: Store, *, tokens: TokenRing | None = None,
                 metrics: Metrics | None = None, syncs: BackgroundSyncs | None = None,
                 limiter: AuthLimiter | None = None,
                 releases: ReleaseIssuer | None = None) -> web.Application:
    """The api-port application. `store` is this app's own connection to the state database."""
    app = web.Application(middlewares=[head_limits_middleware, error_middleware, auth_middleware],
                          client_max_size=MAX_BODY)
    app.on_response_prepare.append(_security_headers)
    app[SETTINGS] = settings
    app[STORE] = store
    app[TIERS] = Tiers.for_settings(store, settings)
    if releases is not None:
        app[RELEASES] = releases
    app[TOKENS] = tokens if tokens is not None else TokenRing(settings.server.token_file)
    app[TOKENS].check_tiers(settings.tiers)  # a warning per token naming a tier that does not exist
    app[METRICS] = metrics if metrics is not None else Metrics()
    app[SYNCS] = syncs if syncs is not None else BackgroundSyncs(settings)
    app[LIMITER] = limiter if limiter is not None else AuthLimiter()
    if metrics is None:  # a server passes one shared with the repo port, state collector included
        app[METRICS].add_state(store, settings.repo_names)
    app[METRICS].count_responses(app, "api")
    router = app.router
    router.add_get("/api/v1/repos", list_repos)
    router.add_get("/api/v1/repos/{repo}/snapshots", list_snapshots)
    router.add_post("/api/v1/repos/{repo}/snapshots/{snapshot}/delete", delete_snapshot)
    router.add_get("/api/v1/tiers", list_tiers)
    router.add_post("/api/v1/repos/{repo}/promote", promote)
    router.add_post("/api/v1/repos/{repo}/rollback", rollback)
    router.add_get("/api/v1/repos/{repo}/history", history)
    router.add_get("/api/v1/repos/{repo}/diff", diff)
    router.add_get("/api/v1/repos/{repo}/advisories", advisories)
    router.add_get("/api/v1/cves/{cve}", cve)
    router.add_post("/api/v1/repos/{repo}/sync", start_sync)
    router.add_get("/api/v1/syncs", list_syncs)
    router.add_post("/api/v1/gc", run_gc)
    router.add_get("/api/v1/openapi.json", openapi)
    router.add_get("/metrics", serve_metrics)
    router.add_get("/healthz", healthz)

    async def stop_syncs(app: web.Application) -> None:
        await app[SYNCS].close()

    app.on_shutdown.append(stop_syncs)
    return app
