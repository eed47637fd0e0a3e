"""HOSTILE.md cases 71 (token kinds, refused attempts audited), 73 (deleting a snapshot a tier
needs) and 75 (diff API pages over two 300,000-package snapshots, bounded time and memory)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
import tracemalloc
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fixtures.keys import SigningKey
from mirror.diff import PackageSet
from mirror.diffs import clear_cache
from mirror.errors import ConfigError, NotFoundError, SnapshotInUseError
from mirror.metrics import Metrics
from mirror.model import utcnow
from mirror.pool import Pool
from mirror.snapshot_delete import delete_snapshot
from mirror.store import Store, package_set_digest
from mirror.tiers import Tiers
from mirror.tokens import parse_token_file
from mirror.web.api import AuthLimiter, make_api_app
from tests.helpers import Mirror, app_in_thread, http, seed_snapshot, serve_both, write_config

ADMIN = "admin-token-0123456789abcdef"
READER = "reader-token-0123456789abcdef"
DEV_ONLY = "devonly-token-0123456789abcdef"
PROMOTER = "promoter-token-0123456789abcdef"
EXPIRED = "expired-token-0123456789abcdef"
LATER = "later-token-0123456789abcdef"

TOKEN_FILE = f"""# the original format: an admin token that never expires
admin:{ADMIN}
reader:{READER} scope=read
devonly:{DEV_ONLY} tiers=dev
promoter:{PROMOTER} scope=promote
expired:{EXPIRED} expires=2020-01-01T00:00:00Z
later:{LATER} scope=promote tiers=dev,test expires=2999-01-01T00:00:00+02:00
"""


def _write_token_file(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)
    return path


def _refusals(metrics: Metrics) -> dict[tuple[str, str], float]:
    """(status, reason) -> count of mirror_api_refusals_total."""
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        if family.name == "mirror_api_refusals":
            for sample in family.samples:
                if sample.name == "mirror_api_refusals_total":
                    out[(sample.labels["status"], sample.labels["reason"])] = sample.value
    return out


# -- case 71: token kinds -----------------------------------------------------------------------


@dataclass
class Api:
    mirror: Mirror
    url: str
    metrics: Metrics
    a: str
    b: str

    def state(self) -> dict[str, Any]:
        """Everything a mutating call could change."""
        store = self.mirror.store()
        try:
            return {"tiers": store.tiers("repo"), "moves": store.moves("repo"),
                    "snapshots": [s.id for s in store.snapshots("repo")],
                    "deletions": store.snapshot_deletions("repo"), "runs": store.sync_runs()}
        finally:
            store.close()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, archive_key: SigningKey) -> Iterator[Api]:
    root = tmp_path_factory.mktemp("case71")
    keyring = archive_key.write_public(root / "k.asc")
    tokens = _write_token_file(root / "m" / "tokens", TOKEN_FILE)
    mirror = write_config(root / "m", "http://127.0.0.1:9/", keyring,
                          extra_server=f'token_file = "{tokens}"\nread_auth = true\ngrace_period = 0')
    store = mirror.store()
    pool = Pool(mirror.settings.storage.root)
    # One Release Date for both: moving dev back to `a` must not meet the older-Date policy.
    dated = utcnow().replace(microsecond=0)
    a = seed_snapshot(store, pool, "repo", {"dists/stable/InRelease": b"A", "pool/a_1_all.deb": b"a"},
                      date=dated)
    b = seed_snapshot(store, pool, "repo", {"dists/stable/InRelease": b"B", "pool/a_2_all.deb": b"b"},
                      date=dated)
    tiers = Tiers.for_settings(store, mirror.settings)
    for tier in ("test", "uat", "prod"):
        tiers.promote("repo", tier, snapshot=a, actor="setup", force=True)
    metrics = Metrics()
    app = make_api_app(mirror.settings, store, metrics=metrics, limiter=AuthLimiter(max_failures=10_000))
    with app_in_thread(app) as url:
        yield Api(mirror, url, metrics, a, b)
    store.close()


def _mutations(api: Api) -> list[tuple[str, dict[str, Any]]]:
    """Every mutating endpoint, each with a body that would change something (prod, where a
    tier is named)."""
    return [("/api/v1/repos/repo/promote", {"to": "prod", "snapshot": api.b, "force": True}),
            ("/api/v1/repos/repo/rollback", {"tier": "prod"}),
            ("/api/v1/repos/repo/sync", {}),
            ("/api/v1/gc", {"dry_run": False}),
            (f"/api/v1/repos/repo/snapshots/{api.a}/delete", {"reason": "attempt"})]


CASES = [
    # name, Authorization header, expected status, audit reason, token name in the audit line
    ("no credentials", None, 401, "missing", None),
    ("malformed header", "Bearer", 401, "malformed", None),
    ("malformed scheme", f"Basic {ADMIN}", 401, "malformed", None),
    ("unknown token", "Bearer wrong-token-0123456789abcdef", 401, "unknown", None),
    ("expired token", f"Bearer {EXPIRED}", 401, "expired", "expired"),
    ("read-only token", f"Bearer {READER}", 403, "scope", "reader"),
    ("dev-only token against prod", f"Bearer {DEV_ONLY}", 403, None, "devonly"),
]


@pytest.mark.parametrize(("case", "authorization", "status", "reason", "name"), CASES,
                         ids=[c[0] for c in CASES])
def test_case71_every_mutating_endpoint_refuses_and_audits(api: Api, caplog: pytest.LogCaptureFixture,
                                                          case: str, authorization: str | None, status: int,
                                                          reason: str | None, name: str | None) -> None:
    before = api.state()
    counts = _refusals(api.metrics)
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    for path, body in _mutations(api):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mirror.audit"):
            reply = http("POST", api.url + path, raw=json.dumps(body).encode(), headers=headers)
        assert reply.status == status, (case, path, reply.body)
        error = reply.json()["error"]
        assert error["code"] == ("unauthorized" if status == 401 else "forbidden")
        for secret in (ADMIN, READER, DEV_ONLY, EXPIRED):
            assert secret not in reply.body.decode()
        if status == 401:
            assert reply.headers["www-authenticate"].startswith("Bearer")
        # the dev-only token: promote/rollback of prod are refused for the tier, the rest for scope
        want = reason or ("tier" if path.endswith(("/promote", "/rollback")) else "scope")
        audited = [r for r in caplog.records if r.name == "mirror.audit"]
        assert len(audited) == 1, (case, path, [r.getMessage() for r in audited])
        line = audited[0].getMessage()
        assert audited[0].levelno == logging.WARNING
        assert f"POST '{path}'" in line and "from 127.0.0.1" in line, line
        assert f"{status} {want}" in line, line
        assert f"(token {name or '-'})" in line, line
        for secret in (ADMIN, READER, DEV_ONLY, EXPIRED):
            assert secret not in line
        after = _refusals(api.metrics)
        key = (str(status), want)
        assert after.get(key, 0) == counts.get(key, 0) + 1, (case, path, key)
        counts = after
    assert api.state() == before  # nothing changed: tier pointers, history, snapshots, runs


def test_case71_token_kinds_allow_what_their_scope_and_tiers_say(api: Api) -> None:
    base = api.url + "/api/v1"
    # read_auth is on: every valid token reads, an expired or missing one does not
    for token in (ADMIN, READER, DEV_ONLY, PROMOTER, LATER):
        assert http("GET", f"{base}/tiers", token=token).status == 200
    assert http("GET", f"{base}/tiers", token=EXPIRED).status == 401
    assert http("GET", f"{base}/tiers").status == 401
    assert http("GET", api.url + "/healthz").status == 200
    # a dev-only token moves dev (and only dev); a tier-limited token moves its tiers
    reply = http("POST", f"{base}/repos/repo/promote", body={"to": "dev", "snapshot": api.a}, token=DEV_ONLY)
    assert reply.status == 200 and reply.json()["move"]["actor"] == "devonly", reply.body
    reply = http("POST", f"{base}/repos/repo/rollback", body={"tier": "dev"}, token=DEV_ONLY)
    assert reply.status == 200 and reply.json()["snapshot"] == api.b
    assert http("POST", f"{base}/repos/repo/promote", body={"to": "test", "from": "dev", "force": True},
                token=DEV_ONLY).status == 403
    reply = http("POST", f"{base}/repos/repo/promote", body={"to": "test", "from": "dev"}, token=LATER)
    assert reply.status == 200, reply.body
    assert http("POST", f"{base}/repos/repo/promote", body={"to": "uat", "from": "test"},
                token=LATER).status == 403
    # a promote token moves any tier, but may not sync, gc or delete
    reply = http("POST", f"{base}/repos/repo/promote", body={"to": "uat", "from": "test"}, token=PROMOTER)
    assert reply.status == 200 and reply.json()["move"]["actor"] == "promoter"
    for path, body in (("/repos/repo/sync", {}), ("/gc", {"dry_run": True}),
                       (f"/repos/repo/snapshots/{api.a}/delete", {})):
        reply = http("POST", base + path, body=body, token=PROMOTER)
        assert reply.status == 403 and "scope promote" in reply.json()["error"]["message"], reply.body
    # the admin token (the old format) may do everything
    reply = http("POST", f"{base}/gc", body={"dry_run": True}, token=ADMIN)
    assert reply.status == 200, reply.body
    # put things back for the other tests
    for tier in ("test", "uat"):
        http("POST", f"{base}/repos/repo/promote", body={"to": tier, "snapshot": api.a, "force": True},
             token=ADMIN)


def test_case71_token_file_fields_are_parsed_and_checked(tmp_path: Path) -> None:
    tokens = {t.name: t for t in parse_token_file(_write_token_file(tmp_path / "tokens", TOKEN_FILE))}
    admin = tokens["admin"]
    assert admin.scope == "admin" and admin.tiers is None and admin.expires is None
    assert tokens["reader"].scope == "read"
    assert tokens["devonly"].scope == "promote" and tokens["devonly"].tiers == {"dev"}
    assert tokens["expired"].expired(utcnow()) and not tokens["later"].expired(utcnow())
    assert tokens["later"].tiers == {"dev", "test"}
    assert ADMIN not in repr(tokens["admin"])
    for line, words in (
            (f"x:{ADMIN} scope=root", "scope must be one of"),
            (f"x:{ADMIN} scope=admin tiers=dev", "scope=promote only"),
            (f"x:{ADMIN} scope=read tiers=dev", "scope=promote only"),
            (f"x:{ADMIN} tiers=dev,../prod", "tier names"),
            (f"x:{ADMIN} expires=2027-01-01T00:00:00", "RFC 3339"),
            (f"x:{ADMIN} expires=tomorrow", "RFC 3339"),
            (f"x:{ADMIN} expires=2027-13-01T00:00:00Z", "not a valid time"),
            (f"x:{ADMIN} owner=bob", "unknown field"),
            (f"x:{ADMIN} scope=read scope=admin", "given twice"),
            (f"x:{ADMIN} scope", "KEY=VALUE")):
        path = _write_token_file(tmp_path / "bad", f"# comment\n{line}\n")
        with pytest.raises(ConfigError) as caught:
            parse_token_file(path)
        assert "line 2" in str(caught.value) and words in str(caught.value), (line, str(caught.value))
        assert ADMIN not in str(caught.value)


def test_case71_an_expired_token_is_refused_with_its_name_and_counted(api: Api,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mirror.audit"):
        reply = http("POST", f"{api.url}/api/v1/repos/repo/promote", body={"to": "dev", "snapshot": api.a},
                     token=EXPIRED)
    assert reply.status == 401 and "expired" in reply.json()["error"]["message"]
    assert any("token expired" in r.getMessage() and "(token expired)" in r.getMessage()
               for r in caplog.records if r.name == "mirror.audit")
    assert _refusals(api.metrics)[("401", "expired")] >= 1
    metrics = api.metrics.render().decode()
    assert "mirror_api_auth_failures_total" in metrics


# -- case 73: deleting a snapshot ---------------------------------------------------------------


@dataclass
class Deletable:
    mirror: Mirror
    snaps: list[str]  # oldest first


def _seed_four(mirror: Mirror) -> list[str]:
    store = mirror.store()
    try:
        pool = Pool(mirror.settings.storage.root)
        snaps = [seed_snapshot(store, pool, "repo", {"dists/stable/InRelease": f"S{i}".encode(),
                                                     f"pool/p{i}_1_all.deb": f"only in {i}".encode()})
                 for i in range(4)]
        Tiers.for_settings(store, mirror.settings).promote("repo", "prod", snapshot=snaps[1], actor="setup",
                                                           force=True)
        return snaps
    finally:
        store.close()


def test_case73_delete_is_refused_while_needed_then_deletes_audits_and_404s(
        tmp_path: Path, archive_key: SigningKey) -> None:
    keyring = archive_key.write_public(tmp_path / "k.asc")
    tokens = _write_token_file(tmp_path / "m" / "tokens", TOKEN_FILE)
    mirror = write_config(tmp_path / "m", "http://127.0.0.1:9/", keyring,
                          extra_server=f'token_file = "{tokens}"\ngrace_period = 0')
    s0, s1, s2, s3 = _seed_four(mirror)  # dev: s3 (rollback target s2), prod: s1
    with serve_both(mirror) as served:
        api = f"{served.api_url}/api/v1/repos/repo/snapshots"
        before = mirror.snapshots()
        for snap, words in ((s3, ["tier dev serves it", "newest snapshot"]),
                            (s2, ["rollback of tier dev would point it back"]),
                            (s1, ["tier prod serves it"])):
            reply = http("POST", f"{api}/{snap}/delete", body={"reason": "cleanup"}, token=ADMIN)
            assert reply.status == 409, reply.body
            error = reply.json()["error"]
            assert error["code"] == "snapshot_in_use"
            for word in words:
                assert word in error["message"], error["message"]
        assert mirror.snapshots() == before
        assert http("GET", f"{served.repo_url}/snapshots/repo/{s0}/pool/p0_1_all.deb").status == 200
        # malformed and unknown ids
        assert http("POST", f"{api}/2026/delete", body={}, token=ADMIN).status == 400
        assert http("POST", f"{api}/20000101T000000Z/delete", body={}, token=ADMIN).status == 404
        assert http("POST", f"{served.api_url}/api/v1/repos/nope/snapshots/{s0}/delete", body={},
                    token=ADMIN).status == 404
        # s0: nothing needs it
        reply = http("POST", f"{api}/{s0}/delete", body={"reason": "bad upstream state"}, token=ADMIN)
        assert reply.status == 200, reply.body
        record = reply.json()
        assert (record["snapshot"], record["actor"], record["reason"]) == (s0, "admin", "bad upstream state")
        assert record["packages"] == 1 and record["at"]
        assert s0 not in mirror.snapshots() and mirror.snapshots() == [s for s in before if s != s0]
        listed = http("GET", f"{served.api_url}/api/v1/repos/repo/snapshots").json()
        assert s0 not in [s["id"] for s in listed]
        for path in (f"/snapshots/repo/{s0}/pool/p0_1_all.deb",
                     f"/snapshots/repo/{s0}/dists/stable/InRelease"):
            assert http("GET", served.repo_url + path).status == 404, path
        assert http("GET", f"{served.repo_url}/snapshots/repo/{s1}/pool/p1_1_all.deb").status == 200
        # the audit: in the history, with actor, reason and time
        history = http("GET", f"{served.api_url}/api/v1/repos/repo/history").json()
        assert [(d["snapshot"], d["actor"], d["reason"]) for d in history["deletions"]] == [
            (s0, "admin", "bad upstream state")]
        # deleting it again: 404
        assert http("POST", f"{api}/{s0}/delete", body={}, token=ADMIN).status == 404
        # the diff and promote APIs no longer know it
        assert http("GET", f"{served.api_url}/api/v1/repos/repo/diff?from={s0}&to=dev").status == 404
        reply = http("POST", f"{served.api_url}/api/v1/repos/repo/promote",
                     body={"to": "test", "snapshot": s0, "force": True}, token=ADMIN)
        assert reply.status == 404
    # gc reclaims the pool file only s0 used
    pool = Pool(mirror.settings.storage.root)
    only_s0 = pool.path_for(hashlib.sha256(b"only in 0").hexdigest())
    assert only_s0.exists()
    out = mirror.cli("gc")
    assert out.returncode == 0, out.stderr
    assert not only_s0.exists()
    assert pool.path_for(hashlib.sha256(b"only in 1").hexdigest()).exists()
    # a later snapshot never re-uses the deleted id, and the history keeps the deletion
    store = mirror.store()
    try:
        assert [d.snapshot for d in store.snapshot_deletions("repo")] == [s0]
    finally:
        store.close()


def test_case73_cli_snapshots_delete(tmp_path: Path, archive_key: SigningKey) -> None:
    keyring = archive_key.write_public(tmp_path / "k.asc")
    mirror = write_config(tmp_path / "m", "http://127.0.0.1:9/", keyring, extra_server="grace_period = 0")
    s0, s1, _s2, s3 = _seed_four(mirror)
    out = mirror.cli("snapshots", "delete", "repo", s1)
    assert out.returncode == 2 and "tier prod serves it" in out.stderr, out
    out = mirror.cli("snapshots", "delete", "repo", s3, "--reason", "x")
    assert out.returncode == 2 and "newest snapshot" in out.stderr
    out = mirror.cli("snapshots", "delete", "repo", s0, "--reason", "leaked package", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["snapshot"] == s0 and doc["reason"] == "leaked package" and doc["actor"]
    listing = mirror.cli("snapshots", "repo")
    assert listing.returncode == 0 and s0 not in listing.stdout and s1 in listing.stdout
    assert s0 not in [s["id"] for s in json.loads(mirror.cli("snapshots", "repo", "--json").stdout)]
    history = json.loads(mirror.cli("history", "repo", "--json").stdout)
    assert history["deletions"][0]["snapshot"] == s0
    assert mirror.cli("snapshots", "delete", "repo", s0).returncode == 2  # no such snapshot now
    assert mirror.cli("snapshots", "delete", "repo", "../x").returncode == 2
    bad = mirror.cli("snapshots", "delete", "repo")
    assert bad.returncode == 2 and "expected REPO, or delete REPO ID" in bad.stderr
    assert mirror.cli("snapshots", "repo", "--reason", "x").returncode == 2


def test_case73_a_snapshot_served_within_the_grace_window_is_kept(tmp_path: Path,
                                                                   archive_key: SigningKey) -> None:
    keyring = archive_key.write_public(tmp_path / "k.asc")
    mirror = write_config(tmp_path / "m", "http://127.0.0.1:9/", keyring, extra_server='grace_period = "1h"')
    s0, s1, s2, _s3 = _seed_four(mirror)  # prod: s1
    settings = mirror.settings
    store = mirror.store()
    try:
        tiers = Tiers.for_settings(store, settings)
        tiers.promote("repo", "prod", snapshot=s2, actor="setup", force=True)  # prod served s1 until now
        tiers.promote("repo", "prod", snapshot=s0, actor="setup", force=True)  # rollback target: s2
        tiers.promote("repo", "prod", snapshot=s2, actor="setup", force=True)  # rollback target: s0
        now = utcnow()
        with pytest.raises(SnapshotInUseError) as caught:
            delete_snapshot(store, settings, "repo", s1, actor="t", now=now)
        assert "grace window" in str(caught.value) and "tier prod served it" in str(caught.value)
        later = now + timedelta(hours=2)
        record = delete_snapshot(store, settings, "repo", s1, actor="t", reason="old", now=later)
        assert record.snapshot == s1 and record.at == later
        with pytest.raises(NotFoundError):
            delete_snapshot(store, settings, "repo", s1, actor="t", now=later)
        assert s1 not in [s.id for s in store.snapshots("repo")]
        assert store.moves("repo", tier="prod")[-1].to_snapshot == s1  # the history keeps naming it
    finally:
        store.close()


# -- case 75: diff pages over 300,000 packages ---------------------------------------------------

BIG = 300_000


def _big_rows() -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """Two snapshots of 300,000 packages: 5% upgraded, 1% removed, 3,000 added."""
    before = [(f"pkg-{i:06d}", "x86_64" if i % 3 else "noarch", f"{1 + i % 5}.{i % 11}-{i % 3 + 1}.el9")
              for i in range(BIG)]
    after: list[tuple[str, str, str] | None] = list(before)
    for i in range(0, BIG, 20):
        name, arch, version = before[i]
        after[i] = (name, arch, version + ".1")
    for i in range(7, BIG, 100):
        after[i] = None
    rows = [r for r in after if r is not None]
    rows += [(f"new-{i:05d}", "x86_64", "1.0-1.el9") for i in range(BIG - len(rows))]
    return before, rows


def _store_package_sets(store: Store, repo: str, sets: list[tuple[str, list[tuple[str, str, str]]]]) -> None:
    """Snapshots with only their package sets (all a diff reads), written directly."""
    with store.transaction() as db:
        for snap, rows in sets:
            ps = PackageSet(rows)
            db.execute("INSERT INTO snapshots (repo, id, created, state, signed_by, packages, bytes, "
                       "plan_key) VALUES (?, ?, ?, 'verified', 'upstream', ?, 0, 'bound')",
                       (repo, snap, utcnow().isoformat(), len(rows)))
            db.execute("INSERT INTO snapshot_packages VALUES (?, ?, ?, ?)",
                       (repo, snap, ps.to_blob(), package_set_digest(ps)))


def test_case75_diff_of_two_300k_package_snapshots_pages_in_bounded_time_and_memory(
        tmp_path: Path, archive_key: SigningKey) -> None:
    keyring = archive_key.write_public(tmp_path / "k.asc")
    mirror = write_config(tmp_path / "m", "http://127.0.0.1:9/", keyring, kind="rpm")
    before, after = _big_rows()
    assert len(before) == len(after) == BIG
    a, b = "20260101T000000Z", "20260102T000000Z"
    store = mirror.store()
    _store_package_sets(store, "repo", [(a, before), (b, after)])
    del before, after
    clear_cache()
    app = make_api_app(mirror.settings, store)
    try:
        with app_in_thread(app) as url:
            api = f"{url}/api/v1/repos/repo/diff"
            query = urllib.parse.urlencode({"from": a, "to": b, "limit": 1000})
            # the first page, cold (both package sets read and the diff computed), memory traced
            tracemalloc.start()
            try:
                start = time.perf_counter()
                reply = http("GET", f"{api}?{query}")
                cold = time.perf_counter() - start
                _current, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert reply.status == 200, reply.body[:500]
            doc = reply.json()
            summary = {"added": 3000, "removed": 3000, "upgraded": BIG // 20, "downgraded": 0,
                       "advisories": 0}
            assert doc["summary"] == summary
            page = doc["page"]
            assert page["total"] == sum(summary.values()) and page["limit"] == 1000 and page["offset"] == 0
            assert len(doc["added"]) == 1000 and not doc["removed"] and not doc["upgraded"]
            assert len(reply.body) < 200_000  # a page, not the diff
            print(f"cold first page {cold:.2f} s (traced), peak {peak / 2**20:.0f} MiB")
            assert cold < 8.0, f"first page took {cold:.1f} s (traced)"
            assert peak < 200 * 2**20, f"peak traced memory {peak / 2**20:.0f} MiB"
            # every further page: the diff is computed once; pages are cheap and stable
            seen: set[tuple[str, str, str, str]] = set()
            for kind in ("added", "removed", "upgraded"):
                for e in doc[kind]:
                    seen.add((kind, e["name"], e["arch"], e.get("version", e.get("to", ""))))
            pages, slowest = 1, 0.0
            assert "limit=1000&" in page["next"] or page["next"].endswith("limit=1000")
            # the cursor keeps its place whatever the limit
            next_url = page["next"].replace("limit=1000", "limit=10000")
            while next_url is not None:
                start = time.perf_counter()
                reply = http("GET", url + next_url)
                slowest = max(slowest, time.perf_counter() - start)
                assert reply.status == 200, reply.body[:500]
                doc = reply.json()
                assert doc["summary"] == summary
                for kind in ("added", "removed", "upgraded"):
                    for e in doc[kind]:
                        seen.add((kind, e["name"], e["arch"], e.get("version", e.get("to", ""))))
                next_url = doc["page"]["next"]
                pages += 1
            assert len(seen) == page["total"]  # every entry once, none twice
            assert pages == 1 + 2 and slowest < 2.0, (pages, slowest)  # 1,000, then 2 x 10,000
            # bad ids stay 404/400 on the big store
            assert http("GET", f"{api}?from={a}&to=20000101T000000Z").status == 404
            assert http("GET", f"{api}?from={a}&to=..%2Fx").status == 400
    finally:
        store.close()
        clear_cache()


HOSTILE_NAMES = ["esc\x1b[2Jclear", "bel\x07ring", "rtl\u202egnp.exe", "c1\x9b31mred", "del\x7fx",
                 'quote"<script>alert(1)</script>', "tab\tand\nnewline", "back\\slash"]


def test_case75_hostile_strings_in_api_diff_pages_are_escaped(tmp_path: Path,
                                                              archive_key: SigningKey) -> None:
    """Output escaping per case 45 on the paged API: JSON is valid, all ASCII (control, C1 and
    bidi characters as \\u escapes, round-tripping exactly), CSV escapes them visibly."""
    keyring = archive_key.write_public(tmp_path / "k.asc")
    mirror = write_config(tmp_path / "m", "http://127.0.0.1:9/", keyring)
    a, b = "20260101T000000Z", "20260102T000000Z"
    store = mirror.store()
    hostile = [(n, "amd64", f"1.{i}-1\x1b") for i, n in enumerate(HOSTILE_NAMES)]
    _store_package_sets(store, "repo", [(a, [("base", "amd64", "1.0-1")]),
                                        (b, [("base", "amd64", "1.0-1"), *hostile])])
    clear_cache()
    app = make_api_app(mirror.settings, store)
    try:
        with app_in_thread(app) as url:
            names: list[str] = []
            next_url: str | None = f"/api/v1/repos/repo/diff?from={a}&to={b}&limit=3"
            while next_url is not None:
                reply = http("GET", url + next_url)
                assert reply.status == 200, reply.body
                assert all(byte < 0x7f and (byte >= 0x20 or byte in b"\n") for byte in reply.body), reply.body
                doc = json.loads(reply.body)
                names += [e["name"] for e in doc["added"]]
                assert all(e["version"].endswith("\x1b") for e in doc["added"])
                next_url = doc["page"]["next"]
            assert sorted(names) == sorted(HOSTILE_NAMES)  # exact round trip through JSON
            reply = http("GET", f"{url}/api/v1/repos/repo/diff?from={a}&to={b}&format=csv")
            text = reply.body.decode()
            for raw in ("\x1b", "\x07", "\u202e", "\x9b", "\x7f"):
                assert raw not in text
            assert "esc\\x1b[2Jclear" in text and "rtl\\u202egnp.exe" in text
    finally:
        store.close()
        clear_cache()
