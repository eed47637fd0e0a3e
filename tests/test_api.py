"""The management API over real HTTP (`mirror serve` as a subprocess, both ports), and the CLI's
promote / rollback / history / tiers --at against the same state."""

from __future__ import annotations

import getpass
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fixtures.keys import SigningKey
from fixtures.upstream import Fault, UpstreamServer
from mirror.model import utcnow
from mirror.pool import Pool
from mirror.store import Store
from mirror.web.api import AuthLimiter, make_api_app
from tests.helpers import (
    CHECKOUT,
    Mirror,
    Served,
    app_in_thread,
    http,
    seed_snapshot,
    serve_both,
    write_config,
    write_tokens,
)

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdef"


@dataclass
class Env:
    mirror: Mirror
    served: Served
    a: str  # older snapshot
    b: str  # newer snapshot (dev serves it after seeding)
    upstream: UpstreamServer
    seeded: int = 0

    @property
    def api(self) -> str:
        return f"{self.served.api_url}/api/v1"

    def post(self, path: str, body: object, token: str | None = ALICE) -> tuple[int, dict]:  # type: ignore[type-arg]
        reply = http("POST", f"{self.api}{path}", body=body, token=token)
        return reply.status, reply.json()

    def get(self, path: str, token: str | None = None) -> tuple[int, object]:
        reply = http("GET", f"{self.api}{path}", token=token)
        return reply.status, reply.json()

    def fresh(self) -> str:
        """A new snapshot of "repo" (dev points at it, no other tier ever served it)."""
        store = self.mirror.store()
        try:
            self.seeded += 1
            return seed_snapshot(store, Pool(self.mirror.settings.storage.root), "repo",
                                 {"dists/stable/InRelease": f"fresh {self.seeded}".encode()})
        finally:
            store.close()

    def force(self, tier: str, snapshot: str) -> None:
        status, body = self.post("/repos/repo/promote", {"to": tier, "snapshot": snapshot, "force": True})
        assert status == 200, body


def _seed(mirror: Mirror) -> tuple[str, str]:
    store = mirror.store()
    try:
        pool = Pool(mirror.settings.storage.root)
        a = seed_snapshot(store, pool, "repo", {"dists/stable/InRelease": b"A", "pool/a_1_all.deb": b"a"})
        b = seed_snapshot(store, pool, "repo", {"dists/stable/InRelease": b"B", "pool/a_2_all.deb": b"b"})
        seed_snapshot(store, pool, "other", {"dists/stable/InRelease": b"O"})
        return a, b
    finally:
        store.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, archive_key: SigningKey) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("api")
    keyring = archive_key.write_public(root / "keys" / "archive.asc")
    (root / "www").mkdir()
    with UpstreamServer(root / "www") as upstream:
        # a slow upstream that has nothing: a sync runs for a while, then fails with a clear code
        upstream.faults["dists/*"] = Fault(delay=1.5)
        tokens = write_tokens(root / "mirror" / "tokens", {"alice": ALICE, "bob": BOB})
        mirror = write_config(root / "mirror", upstream.url, keyring, retries=0,
                              extra_server=f'token_file = "{tokens}"\ngrace_period = "1h"',
                              extra_repo=f'\n[[repos]]\nname = "other"\ntype = "deb"\n'
                                         f'url = "{upstream.url}"\nsuites = ["stable"]\n'
                                         f'keyring = "{keyring}"\n')
        a, b = _seed(mirror)
        with serve_both(mirror) as served:
            yield Env(mirror, served, a, b, upstream)


# -- reads ------------------------------------------------------------------------------------


def test_healthz_and_openapi(env: Env) -> None:
    reply = http("GET", f"{env.served.api_url}/healthz")
    assert reply.status == 200 and reply.json()["status"] == "ok"
    status, doc = env.get("/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")  # type: ignore[index]
    assert "/api/v1/repos/{repo}/promote" in doc["paths"]  # type: ignore[index]


def test_repos_snapshots_and_tiers(env: Env) -> None:
    env.force("dev", env.b)
    status, repos = env.get("/repos")
    assert status == 200
    by_name = {r["name"]: r for r in repos}  # type: ignore[union-attr]
    assert set(by_name) == {"repo", "other"}
    assert by_name["repo"]["tiers"]["dev"]["snapshot"] == env.b
    status, snaps = env.get("/repos/repo/snapshots")
    assert status == 200 and [s["id"] for s in snaps][-2:] == [env.b, env.a]  # type: ignore[union-attr]
    assert by_name["repo"]["latest_snapshot"] == snaps[0]["id"]  # type: ignore[index]
    assert by_name["repo"]["snapshots"] == len(snaps)  # type: ignore[arg-type]
    newer = snaps[-2]  # type: ignore[index]
    assert set(newer) == {"id", "created", "packages", "bytes", "tiers", "signed_by"}
    assert "dev" in newer["tiers"] and newer["packages"] == 1
    cli = env.mirror.cli("snapshots", "repo", "--json")  # the contract: "as mirror ... --json"
    assert cli.returncode == 0 and json.loads(cli.stdout) == snaps, cli.stdout
    status, tiers = env.get("/tiers")
    assert status == 200 and tiers["repo"]["dev"]["snapshot"] == env.b  # type: ignore[index]
    assert list(tiers["repo"]) == ["dev", "test", "uat", "prod"]  # type: ignore[index]


# -- moves ------------------------------------------------------------------------------------


def test_promote_and_rollback_record_the_token_name(env: Env) -> None:
    env.force("dev", env.b)
    env.force("test", env.a)
    status, body = env.post("/repos/repo/promote", {"to": "test", "from": "dev", "reason": "QA passed"},
                            token=BOB)
    assert status == 200, body
    assert body["changed"] and body["snapshot"] == env.b
    move = body["move"]
    assert (move["actor"], move["from"], move["to"], move["reason"], move["forced"], move["action"]) == \
        ("bob", env.a, env.b, "QA passed", False, "promote")
    # (force: a's seeded Release Date may be a second older than b's, which "upstream" refuses)
    status, body = env.post("/repos/repo/rollback", {"tier": "test", "reason": "regression", "force": True})
    assert status == 200 and body["snapshot"] == env.a and body["move"]["action"] == "rollback"
    assert body["move"]["actor"] == "alice"
    # the repo port follows at once
    assert http("GET", f"{env.served.repo_url}/test/repo/dists/stable/InRelease").body == b"A"
    # promoting what the tier serves changes nothing and writes no history
    status, body = env.post("/repos/repo/promote", {"to": "test", "snapshot": env.a})
    assert status == 200 and body == {"repo": "repo", "tier": "test", "snapshot": env.a, "changed": False,
                                      "move": None}


def test_forced_promotion_is_needed_and_recorded(env: Env) -> None:
    fresh = env.fresh()
    status, body = env.post("/repos/repo/promote", {"to": "prod", "snapshot": fresh, "reason": "skip"})
    assert status == 422 and body["error"]["code"] == "policy_refused"
    assert "uat" in body["error"]["message"] and "force" in body["error"]["message"]
    status, body = env.post("/repos/repo/promote", {"to": "prod", "snapshot": fresh, "force": True,
                                                    "reason": "hotfix"})
    assert status == 200 and body["move"]["forced"] is True
    _, history = env.get("/repos/repo/history?tier=prod&limit=1")
    assert history["moves"][0]["forced"] is True and history["moves"][0]["reason"] == "hotfix"  # type: ignore[index]


def test_compare_and_swap_conflict_is_409(env: Env) -> None:
    env.force("dev", env.b)
    status, body = env.post("/repos/repo/promote", {"to": "dev", "snapshot": env.a, "expected": env.a})
    assert status == 409 and body["error"]["code"] == "tier_changed"


def test_rollback_with_nothing_before_is_refused(env: Env) -> None:
    status, body = env.post("/repos/other/rollback", {"tier": "prod"})
    assert status == 409 and body["error"]["code"] == "nothing_to_roll_back"
    assert "nothing" in body["error"]["message"]


def test_history_and_time_travel(env: Env) -> None:
    env.force("uat", env.a)
    time.sleep(0.01)
    between = utcnow()
    time.sleep(0.01)
    env.force("uat", env.b)
    status, history = env.get("/repos/repo/history?tier=uat")
    assert status == 200
    moves = history["moves"]  # type: ignore[index]
    assert moves[0]["to"] == env.b and moves[0]["from"] == env.a and history["tier"] == "uat"  # type: ignore[index]
    assert all(m["tier"] == "uat" for m in moves)
    assert [m["id"] for m in moves] == sorted((m["id"] for m in moves), reverse=True)
    at = between.isoformat().replace("+00:00", "Z")
    status, then = env.get(f"/repos/repo/history?at={at}")
    assert status == 200 and then["tiers"]["uat"]["snapshot"] == env.a  # type: ignore[index]
    assert all(m["at"] <= between.isoformat() for m in then["moves"])  # type: ignore[index]
    status, tiers = env.get(f"/tiers?at={at}")
    assert status == 200 and tiers["repo"]["uat"]["snapshot"] == env.a  # type: ignore[index]
    status, tiers = env.get("/tiers?at=20000101T000000Z")
    assert tiers["repo"]["dev"] == {"snapshot": None, "since": None}  # type: ignore[index]
    status, body = env.get("/tiers?at=yesterday")
    assert status == 400 and body["error"]["code"] == "invalid_request"  # type: ignore[index]


# -- auth and method safety --------------------------------------------------------------------


@pytest.mark.parametrize("authorization", [
    None, "Bearer wrong-token-0123456789abcdef", "Token " + ALICE, "Bearer", ALICE, "Bearer  ",
    "Basic YWxpY2U6YWxpY2U=", "Bearer " + ALICE[:-1],
])
def test_mutating_calls_without_a_valid_token_are_401(env: Env, authorization: str | None) -> None:
    env.force("dev", env.b)
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    for path, body in (("/repos/repo/promote", {"to": "dev", "snapshot": env.a, "force": True}),
                       ("/repos/repo/rollback", {"tier": "dev"}),
                       ("/repos/repo/sync", {})):
        reply = http("POST", f"{env.api}{path}", raw=json.dumps(body).encode(), headers=headers)
        assert reply.status == 401, (path, reply.body)
        assert reply.json()["error"]["code"] == "unauthorized"
        assert reply.headers["www-authenticate"].startswith("Bearer")
        assert ALICE not in reply.body.decode()
    assert env.mirror.tier("repo", "dev") == env.b  # nothing changed


def test_get_cannot_mutate(env: Env) -> None:
    env.force("dev", env.b)
    for url in (f"{env.api}/repos/repo/promote?to=dev&snapshot={env.a}&force=true",
                f"{env.api}/repos/repo/rollback?tier=dev"):
        reply = http("GET", url, token=ALICE)
        assert reply.status == 405 and reply.json()["error"]["code"] == "method_not_allowed"
        assert "POST" in reply.headers["allow"]
    assert env.mirror.tier("repo", "dev") == env.b


def test_cross_site_form_post_is_refused(env: Env) -> None:
    env.force("dev", env.b)
    form = f"to=dev&snapshot={env.a}&force=true".encode()
    for content_type in ("application/x-www-form-urlencoded", "text/plain",
                         "multipart/form-data; boundary=x"):
        reply = http("POST", f"{env.api}/repos/repo/promote", raw=form,
                     headers={"Content-Type": content_type})
        assert reply.status == 401  # no token: a browser cannot add one cross-site
        reply = http("POST", f"{env.api}/repos/repo/promote", raw=form, token=ALICE,
                     headers={"Content-Type": content_type})
        assert reply.status == 415 and reply.json()["error"]["code"] == "unsupported_media_type"
    assert env.mirror.tier("repo", "dev") == env.b
    assert "access-control-allow-origin" not in http("GET", f"{env.api}/repos", headers={
        "Origin": "http://evil.example"}).headers


@pytest.mark.parametrize(("method", "path", "raw", "status", "code"), [
    ("GET", "/nope", None, 404, "not_found"),
    ("GET", "/repos/nope/snapshots", None, 404, "not_found"),
    ("GET", "/repos/repo/history?tier=qa", None, 404, "not_found"),
    ("GET", "/repos/repo/history?limit=0", None, 400, "invalid_request"),
    ("GET", "/repos/repo/diff?from=dev", None, 400, "invalid_request"),
    ("GET", "/repos/repo/diff?from=dev&to=20000101T000000Z", None, 404, "not_found"),
    ("GET", "/repos/repo/diff?from=dev&to=Dev", None, 400, "invalid_request"),
    ("GET", "/syncs?repo=nope", None, 404, "not_found"),
    ("POST", "/repos/repo/promote", b"{not json", 400, "invalid_request"),
    ("POST", "/repos/repo/promote", b"[1]", 400, "invalid_request"),
    ("POST", "/repos/repo/promote", b'{"to": "dev", "from": "test", "froce": true}', 400, "invalid_request"),
    ("POST", "/repos/repo/promote", b'{"to": "qa", "from": "dev"}', 404, "not_found"),
    ("POST", "/repos/repo/promote", b'{"to": "test"}', 400, "invalid_request"),
    ("POST", "/repos/repo/promote", b'{"to": "test", "snapshot": "20000101T000000Z"}', 404, "not_found"),
    ("POST", "/repos/repo/promote", b'{"to": "test", "from": "dev", "force": "yes"}', 400, "invalid_request"),
    ("POST", "/repos/nope/promote", b'{"to": "test", "from": "dev"}', 404, "not_found"),
    ("POST", "/repos/repo/rollback", b'{}', 400, "invalid_request"),
    ("POST", "/repos/repo/promote", b'{"to": "test", "from": "dev", "reason": "' + b"x" * 70_000 + b'"}',
     413, "request_too_large"),
    ("DELETE", "/repos/repo/snapshots", None, 405, "method_not_allowed"),
])
def test_errors_are_json_with_a_stable_code(env: Env, method: str, path: str, raw: bytes | None, status: int,
                                            code: str) -> None:
    headers = {"Content-Type": "application/json"} if raw is not None else {}
    reply = http(method, f"{env.api}{path}", raw=raw, token=ALICE, headers=headers)
    assert reply.status == status, reply.body
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code and body["error"]["message"]


# -- syncs, metrics ---------------------------------------------------------------------------


def test_sync_runs_in_the_background_one_at_a_time(env: Env) -> None:
    status, body = env.post("/repos/other/sync", {})
    assert status == 202 and body == {"repo": "other", "status": "started"}
    status, body = env.post("/repos/other/sync", {})
    assert status == 409 and body["error"]["code"] == "repo_locked"
    deadline = time.monotonic() + 30
    while True:
        _, runs = env.get("/syncs?repo=other")
        if runs and runs[0]["outcome"] != "running":  # type: ignore[index]
            break
        assert time.monotonic() < deadline, runs
        time.sleep(0.2)
    run = runs[0]  # type: ignore[index]
    assert run["outcome"] == "failed" and run["actor"] == "alice" and run["error_code"]
    assert run["finished"] and run["message"]
    metrics = http("GET", f"{env.served.api_url}/metrics").body.decode()
    assert f'mirror_sync_failures_total{{code="{run["error_code"]}",repo="other"}} 1.0' in metrics


def test_metrics_cover_both_ports_and_the_tiers(env: Env) -> None:
    env.force("dev", env.b)
    assert http("GET", f"{env.served.repo_url}/dev/repo/dists/stable/InRelease").status == 200
    assert http("GET", f"{env.served.repo_url}/dev/repo/missing").status == 404
    reply = http("GET", f"{env.served.api_url}/metrics")
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain")
    text = reply.body.decode()
    for needle in ('mirror_http_requests_total{server="repo",status="200"}',
                   'mirror_http_requests_total{server="repo",status="404"}',
                   'mirror_http_requests_total{server="api",status="200"}',
                   'mirror_tier_snapshot_age_seconds{repo="repo",tier="dev"}',
                   f'mirror_tier_snapshot_info{{repo="repo",snapshot="{env.b}",tier="dev"}} 1.0',
                   'mirror_tier_since_timestamp_seconds{repo="repo",tier="dev"}',
                   'mirror_snapshots{repo="repo"}',
                   "mirror_sync_fetched_bytes_total", "mirror_sync_fetched_files_total",
                   "mirror_sync_last_duration_seconds", "mirror_api_auth_failures_total"):
        assert needle in text, needle


# -- the CLI against the same state ------------------------------------------------------------


def cli(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return env.mirror.cli(*args)


def test_cli_promote_rollback_history_and_tiers_at(env: Env) -> None:
    env.force("dev", env.b)
    env.force("test", env.a)
    user = getpass.getuser()
    out = cli(env, "promote", "repo", "--to", "test", "--from", "dev", "--reason", "cli test")
    assert out.returncode == 0, out.stderr
    assert f"repo test: {env.a} -> {env.b}" in out.stdout
    between = utcnow()
    time.sleep(0.01)
    out = cli(env, "rollback", "repo", "test", "--reason", "oops", "--force")
    assert out.returncode == 0 and f"{env.b} -> {env.a}" in out.stdout
    out = cli(env, "history", "repo", "--tier", "test", "--json")
    moves = json.loads(out.stdout)["moves"]
    assert (moves[0]["action"], moves[0]["actor"], moves[0]["reason"]) == ("rollback", user, "oops")
    assert (moves[1]["action"], moves[1]["actor"], moves[1]["to"]) == ("promote", user, env.b)
    text = cli(env, "history", "repo", "--tier", "test").stdout
    assert "rollback" in text and "oops" in text and user in text
    stamp = between.strftime("%Y%m%dT%H%M%S") + "Z"
    out = cli(env, "tiers", "--json", "--at", between.isoformat())
    assert json.loads(out.stdout)["repo"]["test"]["snapshot"] == env.b
    assert cli(env, "tiers", "--at", stamp).returncode == 0
    out = cli(env, "tiers", "--json")
    assert json.loads(out.stdout)["repo"]["test"]["snapshot"] == env.a


def test_cli_refusals_are_clear(env: Env) -> None:
    out = cli(env, "rollback", "other", "uat")
    assert out.returncode == 2 and "nothing to roll back" in out.stderr
    fresh = env.fresh()
    out = cli(env, "promote", "repo", "--to", "prod", "--snapshot", fresh)
    assert out.returncode == 2 and "force" in out.stderr and "never served" in out.stderr
    out = cli(env, "promote", "repo", "--to", "prod", "--snapshot", fresh, "--force", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["move"]["forced"] is True
    out = cli(env, "tiers", "--at", "last tuesday")
    assert out.returncode == 2 and "not a time" in out.stderr


def test_twenty_racing_cli_promotions(env: Env) -> None:
    """Separate processes racing on one tier: a clean chain whose last row is the pointer."""
    env.force("uat", env.a)
    procs = [subprocess.Popen(
        [sys.executable, "-m", "mirror.cli", "-c", str(env.mirror.config), "promote", "repo", "--to", "uat",
         "--snapshot", (env.a, env.b)[i % 2], "--force", "--reason", f"racer {i}"],
        cwd=CHECKOUT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(20)]
    for p in procs:
        _out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    store = Store(env.mirror.settings.storage.root / "state.db")
    try:
        moves = list(reversed(store.moves("repo", tier="uat")))
        for before, after in itertools.pairwise(moves):
            assert after.from_snapshot == before.to_snapshot
        assert store.tier_snapshot("repo", "uat") == moves[-1].to_snapshot
    finally:
        store.close()


# -- configuration: read auth, tokens, rate limit ----------------------------------------------


def test_read_auth_closes_reads_but_not_health(tmp_path: Path, archive_key: SigningKey) -> None:
    keyring = archive_key.write_public(tmp_path / "k.asc")
    tokens = write_tokens(tmp_path / "m" / "tokens", {"reader": ALICE})
    mirror = write_config(tmp_path / "m", "http://127.0.0.1:9/", keyring,
                          extra_server=f'token_file = "{tokens}"\nread_auth = true')
    with serve_both(mirror) as served:
        for path in ("/api/v1/repos", "/api/v1/tiers", "/metrics", "/api/v1/openapi.json"):
            assert http("GET", served.api_url + path).status == 401, path
            assert http("GET", served.api_url + path, token=ALICE).status == 200, path
        assert http("GET", served.api_url + "/healthz").status == 200


def test_world_readable_or_malformed_token_file_is_refused(tmp_path: Path, archive_key: SigningKey) -> None:
    keyring = archive_key.write_public(tmp_path / "k.asc")
    tokens = write_tokens(tmp_path / "m" / "tokens", {"alice": ALICE})
    mirror = write_config(tmp_path / "m", "http://127.0.0.1:9/", keyring,
                          extra_server=f'token_file = "{tokens}"')
    assert mirror.cli("check-config").returncode == 0
    tokens.chmod(0o644)
    out = mirror.cli("serve", timeout=20)
    assert out.returncode == 2 and "readable or writable by others" in out.stderr
    tokens.write_text(f"# admins\nalice:{ALICE}\nbob {BOB}\n")
    tokens.chmod(0o600)
    out = mirror.cli("check-config")
    assert out.returncode == 2 and "line 3" in out.stderr and "NAME:TOKEN" in out.stderr
    assert BOB not in out.stderr


def test_failed_authentications_are_rate_limited(tmp_path: Path, archive_key: SigningKey) -> None:
    keyring = archive_key.write_public(tmp_path / "k.asc")
    tokens = write_tokens(tmp_path / "m" / "tokens", {"alice": ALICE})
    mirror = write_config(tmp_path / "m", "http://127.0.0.1:9/", keyring,
                          extra_server=f'token_file = "{tokens}"')
    store = Store(mirror.settings.storage.root / "state.db")
    app = make_api_app(mirror.settings, store, limiter=AuthLimiter(max_failures=3, window=60))
    with app_in_thread(app) as url:
        for _ in range(3):
            assert http("POST", f"{url}/api/v1/repos/repo/rollback", body={"tier": "dev"},
                        token="guess-0123456789abcdef").status == 401
        reply = http("POST", f"{url}/api/v1/repos/repo/rollback", body={"tier": "dev"}, token=ALICE)
        assert reply.status == 429 and reply.json()["error"]["code"] == "rate_limited"
        assert reply.headers["retry-after"]
        assert http("GET", f"{url}/api/v1/repos").status == 200  # reads stay open
    store.close()
