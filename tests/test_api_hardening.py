"""API hardening (HOSTILE.md 71, 72, 74; issue 7 part 6) against a real `mirror serve`.

* Names of repos, tiers and snapshots are validated wherever they enter: API path parameters,
  query strings and JSON bodies, and CLI arguments (no `..`, separators, control characters).
* State changes only by POST with a bearer token and a JSON body: a browser-style cross-origin
  post (text/plain, a form, a cookie) cannot promote, and CORS preflights allow no origin.
* Repeated failed authentication gets 429, while reads and the repo port keep working.
* Every response of both ports carries the security headers and no server version.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from fixtures.keys import SigningKey
from mirror.cli import main as cli_main
from mirror.names import name_problem
from mirror.pool import Pool
from tests.helpers import Mirror, Served, http, seed_snapshot, serve_both, write_config, write_tokens
from tests.test_serve_guard import connect, read_response

TOKEN = "hardening-token-0123456789abcdef"


@dataclass
class Env:
    mirror: Mirror
    served: Served
    a: str
    b: str

    @property
    def api(self) -> str:
        return f"{self.served.api_url}/api/v1"

    def moves(self) -> int:
        store = self.mirror.store()
        try:
            return len(store.moves("repo"))
        finally:
            store.close()


def _mirror(root: Path, keyring: Path) -> tuple[Mirror, str, str]:
    tokens = write_tokens(root / "tokens", {"admin": TOKEN})
    mirror = write_config(root, "http://127.0.0.1:9/", keyring, extra_server=f'token_file = "{tokens}"')
    store = mirror.store()
    try:
        pool = Pool(mirror.settings.storage.root)
        a = seed_snapshot(store, pool, "repo", {"dists/stable/InRelease": b"A", "pool/a_1_all.deb": b"a"})
        b = seed_snapshot(store, pool, "repo", {"dists/stable/InRelease": b"B", "pool/a_2_all.deb": b"b"})
    finally:
        store.close()
    return mirror, a, b


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, archive_key: SigningKey) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("hardening")
    mirror, a, b = _mirror(root / "mirror", archive_key.write_public(root / "archive.asc"))
    with serve_both(mirror) as served:
        yield Env(mirror, served, a, b)


# -- names ------------------------------------------------------------------------------------

BAD_NAMES = ["..", "../prod", "dev/../prod", "a/b", "dev\\x", "dev\x00", "dev\n", "dev\r\nX-Injected: 1",
             "%2e%2e", "\u0501ev", "x" * 300, "", " dev", "dev\x7f", "dev\u0085", "Dev", "-dev"]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_name_problem_refuses(bad: str) -> None:
    for kind in ("repo", "tier", "snapshot"):
        assert name_problem(kind, bad) is not None, (kind, bad)
    assert name_problem("repo", "repo.v2_x-1") is None and name_problem("tier", "prod") is None
    assert name_problem("snapshot", "20260101T000000Z") is None
    assert name_problem("repo", "repo..x") is not None
    assert name_problem("snapshot", "20260101T000000Z\n") is not None


def _body_cases(env: Env, bad: str) -> list[tuple[str, dict[str, object]]]:
    return [
        ("/repos/repo/promote", {"to": bad, "from": "dev"}),
        ("/repos/repo/promote", {"to": "test", "from": bad}),
        ("/repos/repo/promote", {"to": "test", "snapshot": bad}),
        ("/repos/repo/promote", {"to": "test", "snapshot": env.a, "expected": bad}),
        ("/repos/repo/rollback", {"tier": bad}),
        ("/gc", {"repo": bad, "dry_run": True}),
    ]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_names_in_bodies_and_queries_are_400(env: Env, bad: str) -> None:
    before = env.moves()
    for path, body in _body_cases(env, bad):
        reply = http("POST", env.api + path, body=body, token=TOKEN)
        assert reply.status == 400, (path, body, reply.body)
        error = reply.json()["error"]
        assert error["code"] == "invalid_request" and error["message"]
        assert "\n" not in error["message"] and "\x00" not in error["message"]
    for path in (f"/repos/repo/history?tier={quote(bad, safe='')}", f"/syncs?repo={quote(bad, safe='')}"):
        reply = http("GET", env.api + path)
        assert reply.status == 400, (path, reply.body)
        assert reply.json()["error"]["code"] == "invalid_request"
    q = quote(bad, safe="")
    for path in (f"/repos/repo/diff?from={q}&to=dev", f"/repos/repo/diff?from=dev&to={q}",
                 f"/repos/repo/advisories?in={q}", f"/repos/repo/advisories?in=dev&not_in={q}"):
        reply = http("GET", env.api + path)  # tier, snapshot or TIER@TIME refs (mirror.diffs)
        assert reply.status in (400, 404), (path, reply.body)
        assert reply.json()["error"]["code"] in ("invalid_request", "not_found")
    assert env.moves() == before


@pytest.mark.parametrize("raw", ["..%2Fetc", "%2e%2e", "..", "repo%00", "repo%0A", "r%C3%A9po", "a%5Cb",
                                 "repo%2F..%2F..", "%252e%252e", "REPO", "repo..x"])
def test_bad_repo_path_parameter_is_400_or_404(env: Env, raw: str) -> None:
    before = env.moves()
    for method, path, body in (("GET", f"/repos/{raw}/snapshots", None),
                               ("GET", f"/repos/{raw}/history", None),
                               ("POST", f"/repos/{raw}/promote", {"to": "test", "from": "dev"}),
                               ("POST", f"/repos/{raw}/rollback", {"tier": "dev"}),
                               ("POST", f"/repos/{raw}/sync", {})):
        reply = http(method, env.api + path, body=body, token=TOKEN if method == "POST" else None)
        assert reply.status in (400, 404), (method, path, reply.status, reply.body)
        assert reply.headers["content-type"].startswith("application/json")
        assert reply.json()["error"]["code"] in ("invalid_request", "not_found")
    assert env.moves() == before


@pytest.mark.parametrize("argv", [
    ["promote", "../x", "--to", "test", "--from", "dev"],
    ["promote", "repo", "--to", "../prod", "--from", "dev"],
    ["promote", "repo", "--to", "test", "--from", "dev/.."],
    ["promote", "repo", "--to", "test", "--snapshot", "../../20260101T000000Z"],
    ["promote", "repo", "--to", "test", "--from", "dev", "--expect", "a/b"],
    ["rollback", "repo", "dev\n"],
    ["rollback", "a\\b", "dev"],
    ["history", "repo", "--tier", "\x1b[31mred"],
    ["snapshots", "a/b"],
    ["verify", ".."],
    ["gc", "--dry-run", "../repo"],
    ["sync", "repo", "../../etc"],
])
def test_bad_names_on_the_command_line_exit_2(env: Env, argv: list[str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    before = env.moves()
    assert cli_main(["-c", str(env.mirror.config), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mirror: error: ") and "name" in err, err
    assert "\x1b" not in err and err.count("\n") == 1, err
    assert env.moves() == before


# -- method safety, CSRF and CORS -------------------------------------------------------------


def test_browser_cross_origin_posts_cannot_promote(env: Env) -> None:
    status = http("POST", f"{env.api}/repos/repo/promote", token=TOKEN,
                  body={"to": "dev", "snapshot": env.b, "force": True}).status
    assert status == 200
    before = env.moves()
    browser = {"Origin": "http://evil.example", "Cookie": f"session={TOKEN}; token={TOKEN}",
               "Referer": "http://evil.example/page", "Sec-Fetch-Site": "cross-site"}
    json_body = json.dumps({"to": "dev", "snapshot": env.a, "force": True}).encode()
    form = f"to=dev&snapshot={env.a}&force=true".encode()
    multipart = b'--x\r\nContent-Disposition: form-data; name="to"\r\n\r\ndev\r\n--x--\r\n'
    for content_type, raw in (("text/plain", json_body),
                              ("text/plain;charset=UTF-8", json_body),
                              ("application/x-www-form-urlencoded", form),
                              ("multipart/form-data; boundary=x", multipart),
                              # (a browser cannot send this cross-origin without a preflight)
                              ("application/json", json_body)):
        reply = http("POST", f"{env.api}/repos/repo/promote", raw=raw,
                     headers={**browser, "Content-Type": content_type})
        assert reply.status == 401, (content_type, reply.body)  # a cookie is no credential here
        assert not any(h.startswith("access-control-") for h in reply.headers), reply.headers
    # GET and HEAD never change state, whatever the query says.
    for method in ("GET", "HEAD"):
        reply = http(method, f"{env.api}/repos/repo/promote?to=dev&snapshot={env.a}&force=true", token=TOKEN,
                     headers=browser)
        assert reply.status == 405
    assert env.moves() == before
    assert env.mirror.tier("repo", "dev") == env.b


def test_cors_preflight_allows_no_origin(env: Env) -> None:
    for origin in ("http://evil.example", "null", env.served.api_url):
        for path in ("/repos/repo/promote", "/repos/repo/rollback", "/repos"):
            reply = http("OPTIONS", env.api + path, headers={
                "Origin": origin, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type"})
            assert reply.status in (403, 404, 405), (origin, path, reply.status)
            assert not any(h.startswith("access-control-") for h in reply.headers), reply.headers
        reply = http("GET", f"{env.api}/repos", headers={"Origin": origin})
        assert reply.status == 200
        assert not any(h.startswith("access-control-") for h in reply.headers), reply.headers


# -- security headers on every response of both ports -----------------------------------------


def _check_security_headers(what: str, headers: dict[str, str], *, api: bool) -> None:
    assert headers.get("x-content-type-options") == "nosniff", what
    assert headers.get("referrer-policy") == "no-referrer", what
    assert headers.get("x-frame-options") == "DENY", what
    csp = headers.get("content-security-policy", "")
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp, what
    assert headers.get("cache-control"), what
    if api:
        assert headers["cache-control"] == "no-store", what
    server = headers.get("server", "")
    assert "aiohttp" not in server.lower() and "python" not in server.lower(), (what, server)


def test_every_response_has_security_headers(env: Env) -> None:
    repo, snap = env.served.repo_url, f"/snapshots/repo/{env.a}/pool/a_1_all.deb"
    etag = http("GET", repo + snap).headers["etag"]
    cases = [
        ("GET", repo + snap, {}, 200), ("HEAD", repo + snap, {}, 200),
        ("GET", repo + snap, {"Range": "bytes=0-0"}, 206), ("GET", repo + snap, {"Range": "bytes=9-"}, 416),
        ("GET", repo + snap, {"If-None-Match": etag}, 304), ("GET", repo + "/dev/repo/nope", {}, 404),
        ("GET", repo + "/dev/repo/%zz", {}, 400), ("POST", repo + snap, {}, 405),
        ("GET", repo + "/keys/mirror.asc", {}, 404),
    ]
    for method, url, headers, status in cases:
        reply = http(method, url, headers=headers)
        assert reply.status == status, (method, url, reply.status)
        _check_security_headers(f"{method} {url} {headers}", reply.headers, api=False)
    api = env.served.api_url
    cases = [
        ("GET", api + "/api/v1/repos", None, None, 200), ("GET", api + "/healthz", None, None, 200),
        ("GET", api + "/metrics", None, None, 200), ("GET", api + "/api/v1/openapi.json", None, None, 200),
        ("GET", api + "/nope", None, None, 404), ("DELETE", api + "/api/v1/repos", None, None, 405),
        ("POST", api + "/api/v1/repos/repo/rollback", {"tier": "dev"}, None, 401),
        ("POST", api + "/api/v1/repos/repo/rollback", None, TOKEN, 415),
        ("POST", api + "/api/v1/repos/repo/rollback", {"tier": ".."}, TOKEN, 400),
        ("HEAD", api + "/api/v1/tiers", None, None, 200),
    ]
    for method, url, body, token, status in cases:
        reply = http(method, url, body=body, token=token)
        assert reply.status == status, (method, url, reply.status, reply.body)
        _check_security_headers(f"{method} {url}", reply.headers, api=True)
    metrics = http("GET", api + "/metrics").body.decode()
    for needle in ('mirror_http_connections{server="repo"}',
                   'mirror_http_connections_refused_total{server="api"}',
                   'mirror_http_connection_timeouts_total{reason="header",server="repo"}'):
        assert needle in metrics, needle


# -- request-head limits ----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "head", "status", "code"), [
    ("request_target_over_8190_bytes",
     b"GET /api/v1/repos/repo/advisories?not_in=" + b"%C3%BF" * 1400 + b" HTTP/1.1\r\nHost: x\r\n", 414,
     "uri_too_long"),
    ("header_field_over_8190_bytes",
     b"GET /api/v1/repos HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 8200 + b"\r\n", 431,
     "header_fields_too_large"),
    ("more_than_128_header_fields",
     b"GET /api/v1/repos HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(130)), 431,
     "header_fields_too_large"),
    ("within_the_limits", b"GET /api/v1/repos?x=" + b"a" * 8100 + b" HTTP/1.1\r\nHost: x\r\nX-Big: "
     + b"b" * 8000 + b"\r\n", 200, None),
])
def test_request_head_over_the_limits_is_a_documented_json_error(
        env: Env, name: str, head: bytes, status: int, code: str | None) -> None:
    """The repo port's head limits, answered in the API's own JSON error (documented for every
    operation), never aiohttp's text/plain 400 (schemathesis found one: ST105)."""
    sock = connect(int(env.served.api_url.rsplit(":", 1)[1]))
    try:
        sock.sendall(head + b"\r\n")
        got, headers, body = read_response(sock)
    finally:
        sock.close()
    assert got == status, (name, body[:200])
    assert headers["content-type"].startswith("application/json"), name
    if code is not None:
        assert json.loads(body)["error"]["code"] == code, name
        _check_security_headers(name, headers, api=True)
    document = json.loads(http("GET", env.served.api_url + "/api/v1/openapi.json").body)
    for item in document["paths"].values():
        for operation in item.values():
            assert {"414", "431"} <= operation["responses"].keys(), operation["operationId"]


# -- rate limiting ----------------------------------------------------------------------------


def test_failed_authentication_is_slowed_down_and_serving_is_not(tmp_path: Path,
                                                                  archive_key: SigningKey) -> None:
    """HOSTILE 74 against the real server and its default limit (60 failures a minute)."""
    mirror, a, _b = _mirror(tmp_path / "mirror", archive_key.write_public(tmp_path / "archive.asc"))
    with serve_both(mirror) as served:
        url = f"{served.api_url}/api/v1/repos/repo/promote"
        body = {"to": "dev", "snapshot": a, "force": True}
        statuses = [http("POST", url, body=body, token=f"guess-{i:04d}-0123456789abcdef").status
                    for i in range(60)]
        assert statuses == [401] * 60
        limited = http("POST", url, body=body, token=TOKEN)  # even the right token, for a while
        assert limited.status == 429 and limited.json()["error"]["code"] == "rate_limited"
        assert int(limited.headers["retry-after"]) > 0
        assert http("POST", url, body=body, token="guess").status == 429
        # Reads and the repo port are unaffected.
        assert http("GET", f"{served.api_url}/api/v1/tiers").status == 200
        reply = http("GET", f"{served.repo_url}/snapshots/repo/{a}/pool/a_1_all.deb")
        assert (reply.status, reply.body) == (200, b"a")
        metrics = http("GET", f"{served.api_url}/metrics").body.decode()
        assert "mirror_api_auth_failures_total 60.0" in metrics
