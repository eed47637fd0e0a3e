"""Diffs, advisories and CVE queries between real synced snapshots: the store, `mirror diff` /
`mirror cve` (table, JSON, CSV, exit codes) and the API (`/diff`, `/cves/{id}`, `/advisories`).

RPM: snapshot 1 has hello 1.0, libfoo 1:2.0, foo-doc; snapshot 2 upgrades hello to 1.1 (with an
advisory naming CVE-2026-1234 that the upgrade brings), downgrades libfoo to 1:1.9, removes
foo-doc and adds newpkg. `test` serves snapshot 1, `dev` snapshot 2. APT: the same moves on debs.
"""

from __future__ import annotations

import csv
import io
import json
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fixtures.apt_repo import AptRepo, DebPackage
from fixtures.keys import SigningKey
from fixtures.rpm_repo import Advisory, RpmPackage, RpmRepo
from fixtures.upstream import UpstreamServer
from mirror.diffs import clear_cache, compute_diff, cve_report
from mirror.store import Store
from mirror.tiers import Tiers
from tests.helpers import Mirror, Served, http, serve_both, write_config
from tests.test_sync_rpm import write_rpm_config

OLD_ADVISORY = Advisory("TEST-2026:0001", cves=["CVE-2026-0001"], title="hello security update",
                        packages=[("hello", 0, "1.0", "1", "x86_64")])
NEW_ADVISORY = Advisory("TEST-2026:0002", cves=["CVE-2026-1234"], severity="Critical",
                        title="hello 1.1 security update", packages=[("hello", 0, "1.1", "1", "x86_64")])
BUGFIX = Advisory("TEST-2026:0003", type="bugfix", severity="", title="newpkg bugfix",
                  packages=[("newpkg", 0, "1.0", "1", "x86_64")])


@dataclass
class Synced:
    mirror: Mirror
    first: str
    second: str
    first_moved: datetime  # when dev first pointed at `first`


def _promote(mirror: Mirror, repo: str, to: str, from_tier: str) -> None:
    store = mirror.store()
    try:
        Tiers.for_settings(store, mirror.settings).promote(repo, to, from_tier=from_tier, actor="test")
    finally:
        store.close()


def _first_move(mirror: Mirror, repo: str) -> datetime:
    store = mirror.store()
    try:
        return store.moves(repo, tier="dev")[-1].at
    finally:
        store.close()


@pytest.fixture(scope="module")
def rpm(tmp_path_factory: pytest.TempPathFactory, archive_key: SigningKey) -> Iterator[Synced]:
    tmp = tmp_path_factory.mktemp("diff-rpm")
    upstream = RpmRepo(tmp / "upstream", archive_key)
    upstream.add(RpmPackage("hello", "1.0"), RpmPackage("libfoo", "2.0", epoch=1),
                 RpmPackage("foo-doc", "2.0", arch="noarch"))
    keyring = archive_key.write_public(tmp / "keys" / "archive.asc")
    with UpstreamServer(upstream.root) as server:
        mirror = write_rpm_config(tmp / "mirror", server.url, keyring)
        upstream.publish(updateinfo=[OLD_ADVISORY], revision="1", timestamp=1_700_000_001)
        first = mirror.sync_one()
        assert first.ok and first.snapshot, first.error
        _promote(mirror, "repo", "test", "dev")
        upstream.remove("hello", "1.0")
        upstream.remove("libfoo", "2.0")
        upstream.remove("foo-doc")
        upstream.add(RpmPackage("hello", "1.1"), RpmPackage("libfoo", "1.9", epoch=1),
                     RpmPackage("newpkg", "1.0"))
        upstream.publish(updateinfo=[OLD_ADVISORY, NEW_ADVISORY, BUGFIX], revision="2",
                         timestamp=1_700_000_002)
        second = mirror.sync_one()
        assert second.ok and second.snapshot, second.error
    yield Synced(mirror, first.snapshot, second.snapshot, _first_move(mirror, "repo"))


@pytest.fixture(scope="module")
def apt(tmp_path_factory: pytest.TempPathFactory, archive_key: SigningKey) -> Iterator[Synced]:
    tmp = tmp_path_factory.mktemp("diff-apt")
    upstream = AptRepo(tmp / "upstream", archive_key, architectures=("amd64", "all"))
    upstream.add(DebPackage("hello", "1.0-1"), DebPackage("libfoo1", "2.0-1"),
                 DebPackage("foo-doc", "2.0-1", arch="all"))
    upstream.publish(date=datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2),
                     keep_plain_on_disk=False)
    keyring = archive_key.write_public(tmp / "keys" / "archive.asc")
    with UpstreamServer(upstream.root) as server:
        mirror = write_config(tmp / "mirror", server.url, keyring)
        first = mirror.sync_one()
        assert first.ok and first.snapshot, first.error
        _promote(mirror, "repo", "test", "dev")
        upstream.remove("hello")
        upstream.remove("libfoo1")
        upstream.remove("foo-doc")
        upstream.add(DebPackage("hello", "1:0.9-1"), DebPackage("libfoo1", "2.0~rc1-1"),
                     DebPackage("newpkg", "1.0-1"))
        upstream.publish(date=datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1),
                         keep_plain_on_disk=False)
        second = mirror.sync_one()
        assert second.ok and second.snapshot, second.error
    yield Synced(mirror, first.snapshot, second.snapshot, _first_move(mirror, "repo"))


@pytest.fixture(scope="module")
def served(rpm: Synced) -> Iterator[Served]:
    with serve_both(rpm.mirror) as s:
        yield s


def _diff(synced: Synced, a: str, b: str) -> dict[str, object]:
    store = synced.mirror.store()
    try:
        return compute_diff(store, synced.mirror.settings, "repo", a, b).as_json()
    finally:
        store.close()


# -- the diff itself ----------------------------------------------------------------------------


def test_rpm_diff_between_synced_snapshots_lists_every_move_and_the_advisory_the_upgrade_brings(
        rpm: Synced) -> None:
    doc = _diff(rpm, "test", "dev")
    assert doc["from"] == {"ref": "test", "snapshot": rpm.first}
    assert doc["to"] == {"ref": "dev", "snapshot": rpm.second}
    assert doc["added"] == [{"name": "newpkg", "arch": "x86_64", "version": "1.0-1"}]
    assert doc["removed"] == [{"name": "foo-doc", "arch": "noarch", "version": "2.0-1"}]
    assert doc["upgraded"] == [{"name": "hello", "arch": "x86_64", "from": "1.0-1", "to": "1.1-1",
                                "from_kept": False, "to_was_present": False}]
    assert doc["downgraded"] == [{"name": "libfoo", "arch": "x86_64", "from": "1:2.0-1", "to": "1:1.9-1",
                                  "from_kept": False, "to_was_present": False}]
    advisories = {a["id"]: a for a in doc["advisories"]}  # type: ignore[attr-defined]
    assert set(advisories) == {"TEST-2026:0002", "TEST-2026:0003"}  # 0001 was in FROM already
    assert advisories["TEST-2026:0002"]["cves"] == ["CVE-2026-1234"]
    assert advisories["TEST-2026:0002"]["severity"] == "Critical"
    assert advisories["TEST-2026:0002"]["packages"] == ["hello-1.1-1.x86_64"]
    assert doc["summary"] == {"added": 1, "removed": 1, "upgraded": 1, "downgraded": 1, "advisories": 2}


def test_swapped_refs_swap_the_diff_and_same_snapshot_is_empty(rpm: Synced) -> None:
    back = _diff(rpm, rpm.second, rpm.first)
    assert back["added"] == [{"name": "foo-doc", "arch": "noarch", "version": "2.0-1"}]
    assert [c["name"] for c in back["downgraded"]] == ["hello"]  # type: ignore[attr-defined]
    assert [c["name"] for c in back["upgraded"]] == ["libfoo"]  # type: ignore[attr-defined]
    assert back["advisories"] == []  # FROM (the newer) lists every advisory TO has
    assert _diff(rpm, "dev", rpm.second)["summary"] == dict.fromkeys(
        ("added", "removed", "upgraded", "downgraded", "advisories"), 0)


def test_tier_at_time_resolves_through_the_history(rpm: Synced) -> None:
    doc = _diff(rpm, f"dev@{rpm.first_moved.isoformat()}", "dev")
    assert doc["from"] == {"ref": f"dev@{rpm.first_moved.isoformat()}", "snapshot": rpm.first}
    assert doc["summary"]["upgraded"] == 1  # type: ignore[index]


def test_package_sets_are_stored_at_commit_and_back_filled_for_older_snapshots(rpm: Synced) -> None:
    store = rpm.mirror.store()
    try:
        digest = store.package_set_digest("repo", rpm.first)
        with store.transaction() as db:  # as if committed before the table existed
            db.execute("DELETE FROM snapshot_packages WHERE snapshot = ?", (rpm.first,))
        clear_cache()
        ps = store.package_set("repo", rpm.first)
        assert ("hello", "x86_64", "1.0-1") in ps and len(ps) == 3
        assert store.package_set_digest("repo", rpm.first) == digest
    finally:
        store.close()


def test_apt_diff_gives_exact_version_moves_by_dpkg_order(apt: Synced) -> None:
    doc = _diff(apt, "test", "dev")
    assert doc["added"] == [{"name": "newpkg", "arch": "amd64", "version": "1.0-1"}]
    assert doc["removed"] == [{"name": "foo-doc", "arch": "all", "version": "2.0-1"}]
    assert [(c["name"], c["from"], c["to"]) for c in doc["upgraded"]] == [  # type: ignore[attr-defined]
        ("hello", "1.0-1", "1:0.9-1")]  # the epoch wins
    assert [(c["name"], c["from"], c["to"]) for c in doc["downgraded"]] == [  # type: ignore[attr-defined]
        ("libfoo1", "2.0-1", "2.0~rc1-1")]  # ~ sorts before everything
    assert doc["advisories"] == []


# -- CVEs and pending advisories ----------------------------------------------------------------


def test_cve_report_per_tier_with_the_snapshot_that_first_fixed_it(rpm: Synced, apt: Synced) -> None:
    store = rpm.mirror.store()
    try:
        report = cve_report(store, rpm.mirror.settings, "cve-2026-1234").as_json()
    finally:
        store.close()
    by_tier = {t["tier"]: t for t in report["tiers"]}
    assert report["cve"] == "CVE-2026-1234"
    assert by_tier["dev"]["status"] == "fixed" and by_tier["dev"]["snapshot"] == rpm.second
    assert by_tier["dev"]["first_fixed"] == rpm.second
    assert by_tier["dev"]["packages"] == [{"name": "hello", "arch": "x86_64", "carried": "1.1-1",
                                           "fixed_in": "1.1-1", "fixed": True}]
    assert by_tier["dev"]["advisories"] == ["TEST-2026:0002"]
    assert by_tier["test"]["status"] == "vulnerable"
    assert by_tier["prod"]["status"] == "unknown" and by_tier["prod"]["snapshot"] is None
    store = apt.mirror.store()
    try:  # APT repos have no advisories: unknown
        tiers = cve_report(store, apt.mirror.settings, "CVE-2026-1234").as_json()["tiers"]
        assert {t["status"] for t in tiers} == {"unknown"}
    finally:
        store.close()


def test_gc_drops_package_sets_and_advisories_of_removed_snapshots(rpm: Synced, tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    try:
        src = rpm.mirror.store()
        advisories = src.snapshot_advisories("repo", rpm.second)
        src.close()
        with store.transaction():
            store.record_advisories("r", "20260101T000000Z", advisories)
            store.record_advisories("r", "20260102T000000Z", advisories[:1])
        assert store.db.execute("SELECT COUNT(*) FROM advisories").fetchone()[0] == 3  # shared, stored once
        with store.transaction():
            store.delete_snapshot("r", "20260101T000000Z")
            store.delete_orphan_advisories()
        assert store.db.execute("SELECT COUNT(*) FROM advisories").fetchone()[0] == 1
        assert store.db.execute("SELECT COUNT(*) FROM advisory_packages").fetchone()[0] == 1
        assert store.advisory_ids("r", "20260102T000000Z") == {advisories[0].id}
        assert store.advisories_by_cve(advisories[0].cves[0])["r"][0][0] == advisories[0]
    finally:
        store.close()


# -- CLI ----------------------------------------------------------------------------------------


def test_cli_diff_table_json_csv_and_exit_codes(rpm: Synced) -> None:
    table = rpm.mirror.cli("diff", "repo", "test", "dev")
    assert table.returncode == 1, table.stderr
    assert "upgraded    hello" in table.stdout and "1.0-1" in table.stdout and "1.1-1" in table.stdout
    assert "TEST-2026:0002" in table.stdout and "CVE-2026-1234" in table.stdout
    assert "1 added, 1 removed, 1 upgraded, 1 downgraded, 2 advisories" in table.stdout

    as_json = rpm.mirror.cli("diff", "repo", "test", "dev", "--json")
    assert as_json.returncode == 1, as_json.stderr
    assert json.loads(as_json.stdout) == _diff(rpm, "test", "dev")

    as_csv = rpm.mirror.cli("diff", "repo", "test", "dev", "--csv")
    assert as_csv.returncode == 1
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert {(r["change"], r["name"]) for r in rows} == {
        ("added", "newpkg"), ("removed", "foo-doc"), ("upgraded", "hello"), ("downgraded", "libfoo"),
        ("advisory", "TEST-2026:0002"), ("advisory", "TEST-2026:0003")}

    same = rpm.mirror.cli("diff", "repo", "dev", rpm.second)
    assert same.returncode == 0 and "no changes" in same.stdout
    for bad in (("repo", "dev", "20000101T000000Z"), ("repo", "Dev", "dev"), ("nope", "dev", "test"),
                ("repo", "dev@yesterday", "dev")):
        failed = rpm.mirror.cli("diff", *bad)
        assert failed.returncode == 2 and "error" in failed.stderr, (bad, failed.stdout)


def test_cli_cve(rpm: Synced) -> None:
    out = rpm.mirror.cli("cve", "CVE-2026-1234")
    assert out.returncode == 0, out.stderr
    lines = {line.split()[1]: line for line in out.stdout.splitlines()[1:]}
    assert "fixed" in lines["dev"] and rpm.second in lines["dev"] and "TEST-2026:0002" in lines["dev"]
    assert "vulnerable" in lines["test"]
    doc = json.loads(rpm.mirror.cli("cve", "CVE-2026-1234", "--json").stdout)
    assert {t["tier"]: t["status"] for t in doc["tiers"]}["test"] == "vulnerable"
    assert rpm.mirror.cli("cve", "not-a-cve").returncode == 2


# -- API ----------------------------------------------------------------------------------------


def _q(**params: str) -> str:
    return urllib.parse.urlencode(params)


def test_api_diff_json_csv_and_errors(rpm: Synced, served: Served) -> None:
    api = f"{served.api_url}/api/v1/repos/repo"
    reply = http("GET", f"{api}/diff?{_q(**{'from': 'test', 'to': 'dev'})}")
    assert reply.status == 200, reply.body
    doc = reply.json()
    # no limit and no cursor: the whole diff, as `mirror diff --json` (CONTRACT)
    assert doc.pop("page") == {"offset": 0, "limit": 6, "total": 6, "next_cursor": None, "next": None}
    assert doc == _diff(rpm, "test", "dev")
    assert "link" not in reply.headers
    reply = http("GET", f"{api}/diff?{_q(**{'from': 'test', 'to': 'dev', 'format': 'csv'})}")
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/csv")
    assert reply.body.decode().splitlines()[0] == "change,name,arch,from,to,type,severity,cves,packages"
    at = f"dev@{rpm.first_moved.isoformat()}"
    reply = http("GET", f"{api}/diff?{_q(**{'from': at, 'to': rpm.second})}")
    assert reply.status == 200 and reply.json()["from"]["snapshot"] == rpm.first
    for params, status in (({"from": "test", "to": "20000101T000000Z"}, 404),
                           ({"from": "prod", "to": "dev"}, 404),  # prod serves nothing
                           ({"from": "test"}, 400), ({"from": "../x", "to": "dev"}, 400),
                           ({"from": "dev@not-a-time", "to": "dev"}, 400),
                           ({"from": "test", "to": "dev", "format": "xml"}, 400)):
        reply = http("GET", f"{api}/diff?{_q(**params)}")
        assert reply.status == status, (params, reply.body)
        assert set(reply.json()["error"]) == {"code", "message"}


def test_case75_api_diff_pages_concatenate_to_the_whole_diff(rpm: Synced, served: Served) -> None:
    """limit=2 over the 6 entries (1 added, 1 removed, 1 upgraded, 1 downgraded, 2 advisories):
    three pages in a stable order, each naming the next (body and Link header), summary always
    the whole diff's; JSON and CSV pages alike."""
    api = f"{served.api_url}/api/v1/repos/repo"
    whole = _diff(rpm, "test", "dev")
    keys = ("added", "removed", "upgraded", "downgraded", "advisories")
    expected = [(k, e) for k in keys for e in whole[k]]  # type: ignore[attr-defined]
    seen: list[tuple[str, object]] = []
    url: str | None = f"/api/v1/repos/repo/diff?{_q(**{'from': 'test', 'to': 'dev', 'limit': '2'})}"
    offsets = []
    while url is not None:
        reply = http("GET", served.api_url + url)
        assert reply.status == 200, reply.body
        doc = reply.json()
        page = doc["page"]
        offsets.append(page["offset"])
        assert page["limit"] == 2 and page["total"] == 6 and doc["summary"] == whole["summary"]
        entries = [(k, e) for k in keys for e in doc[k]]
        assert len(entries) <= 2
        seen += entries
        if page["next"] is not None:
            assert reply.headers["link"] == f'<{page["next"]}>; rel="next"'
            assert page["next_cursor"] in page["next"]
        url = page["next"]
    assert offsets == [0, 2, 4] and seen == expected
    # CSV: the same pages as rows
    rows: list[str] = []
    url = f"/api/v1/repos/repo/diff?{_q(**{'from': 'test', 'to': 'dev', 'limit': '4', 'format': 'csv'})}"
    while url is not None:
        reply = http("GET", served.api_url + url)
        assert reply.status == 200 and reply.headers["content-type"].startswith("text/csv")
        rows += reply.body.decode().splitlines()[1:]
        link = reply.headers.get("link")
        url = link[1:link.index(">")] if link else None
    full_csv = http("GET", f"{api}/diff?{_q(**{'from': 'test', 'to': 'dev', 'format': 'csv'})}").body.decode()
    assert rows == full_csv.splitlines()[1:] and len(rows) == 6
    # bad limits and cursors: 400, never a 500
    first = http("GET", f"{api}/diff?{_q(**{'from': 'test', 'to': 'dev', 'limit': '2'})}").json()["page"]
    cursor = first["next_cursor"]
    for params in ({"limit": "0"}, {"limit": "10001"}, {"limit": "x"}, {"limit": "-1"},
                   {"cursor": "not a cursor"}, {"cursor": "e30"}, {"cursor": cursor[:-3]},
                   {"cursor": cursor, "from": "dev", "to": "test"}):
        query = {"from": "test", "to": "dev", **params}
        reply = http("GET", f"{api}/diff?{_q(**query)}")
        assert reply.status == 400, (params, reply.body)
        assert reply.json()["error"]["code"] == "invalid_request"


def test_api_cve_and_pending_advisories(rpm: Synced, served: Served) -> None:
    reply = http("GET", f"{served.api_url}/api/v1/cves/CVE-2026-1234")
    assert reply.status == 200, reply.body
    assert {t["tier"]: t["status"] for t in reply.json()["tiers"]} == {
        "dev": "fixed", "test": "vulnerable", "uat": "unknown", "prod": "unknown"}
    assert http("GET", f"{served.api_url}/api/v1/cves/CVE-x").status == 400

    api = f"{served.api_url}/api/v1/repos/repo/advisories"
    reply = http("GET", f"{api}?{_q(**{'in': 'dev', 'not_in': 'test', 'type': 'security'})}")
    assert reply.status == 200, reply.body
    doc = reply.json()
    assert [a["id"] for a in doc["advisories"]] == ["TEST-2026:0002"]
    assert doc["in"]["snapshot"] == rpm.second and doc["not_in"]["snapshot"] == rpm.first
    everything = http("GET", f"{api}?in=dev").json()
    assert [a["id"] for a in everything["advisories"]] == [
        "TEST-2026:0001", "TEST-2026:0002", "TEST-2026:0003"]
    assert http("GET", f"{api}?not_in=dev").status == 400
    assert http("GET", f"{api}?in=prod").status == 404
