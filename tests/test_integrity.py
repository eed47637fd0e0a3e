"""HOSTILE.md 58 (pool corruption) and `mirror verify [REPO] [--repair]`: a flipped byte and a
missing file are found, reported with the snapshots and paths that use them, and repaired from
upstream through the same checks a sync applies; a replacement that does not hash right is
refused; the result is in the metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from fixtures.apt_repo import AptRepo, DebPackage
from fixtures.keys import SigningKey
from fixtures.upstream import Fault, UpstreamServer
from mirror.integrity import verify_pool
from mirror.metrics import StateCollector
from mirror.pool import Pool
from tests.helpers import Mirror, write_config
from tests.invariants import pool_problems, temp_files


@dataclass
class Setup:
    upstream: AptRepo
    server: UpstreamServer
    mirror: Mirror
    snapshot: str
    tree: dict[str, bytes]

    @property
    def pool(self) -> Pool:
        return Pool(self.mirror.settings.storage.root)

    def blob(self, path: str) -> Path:
        store = self.mirror.store()
        try:
            entry = store.manifest_entry("repo", self.snapshot, path)
        finally:
            store.close()
        assert entry is not None
        return self.pool.path_for(entry.sha256)


@pytest.fixture
def setup(tmp_path: Path, archive_key: SigningKey) -> Iterator[Setup]:
    upstream = AptRepo(tmp_path / "upstream", archive_key)
    upstream.add(DebPackage("hello", "1.0-1", payload_size=5000), DebPackage("world", "1.0-1"))
    upstream.publish(date=datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1),
                     keep_plain_on_disk=False)
    keyring = archive_key.write_public(tmp_path / "keys" / "archive.asc")
    with UpstreamServer(upstream.root) as server:
        mirror = write_config(tmp_path / "mirror", server.url, keyring)
        result = mirror.sync_one()
        assert result.ok and result.snapshot, result.error
        yield Setup(upstream, server, mirror, result.snapshot, mirror.served_tree())


def flip_a_byte(path: Path, at: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def metrics(s: Setup) -> str:
    store = s.mirror.store()
    try:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StateCollector(store, ["repo"]))
        return generate_latest(registry).decode()
    finally:
        store.close()


def test_a_flipped_byte_is_found_reported_with_its_users_and_repaired(setup: Setup) -> None:
    s = setup
    deb = s.upstream.url_path_of("hello")
    blob = s.blob(deb)
    assert s.mirror.cli("verify").returncode == 0
    flip_a_byte(blob)

    found = s.mirror.cli("verify", "repo")
    assert found.returncode == 1, found.stdout + found.stderr
    assert f"damaged: {blob.name}" in found.stdout and "content hashes to" in found.stdout
    assert f"repo/{s.snapshot}/{deb}" in found.stdout  # the snapshot and path that use it
    assert "1 damaged" in found.stdout
    assert 'mirror_verify_damaged_objects{repo="repo"} 1.0' in metrics(s)
    assert 'mirror_tier_degraded{repo="repo",tier="dev"} 1.0' in metrics(s)

    fixed = s.mirror.cli("verify", "--repair")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert f"repaired: fetched from {s.server.url}/{deb}" in fixed.stdout
    assert "1 damaged, 1 repaired" in fixed.stdout
    assert s.mirror.served_tree() == s.tree  # the served bytes are right again
    assert s.mirror.cli("verify").returncode == 0
    text = metrics(s)
    assert 'mirror_verify_damaged_objects{repo="repo"} 0.0' in text
    assert 'mirror_tier_degraded{repo="repo",tier="dev"} 0.0' in text
    assert "mirror_verify_last_timestamp_seconds" in text
    assert pool_problems(s.mirror.settings.storage.root) == []
    assert temp_files(s.mirror.settings.storage.root) == []


def test_a_missing_index_file_is_found_and_repaired(setup: Setup) -> None:
    s = setup
    path = "dists/stable/main/binary-amd64/Packages.xz"
    blob = s.blob(path)
    blob.unlink()
    found = s.mirror.cli("verify", "--json")
    assert found.returncode == 1
    report = json.loads(found.stdout)
    (damage,) = report["damaged"]
    assert damage["sha256"] == blob.name and damage["problem"] == "missing from the pool"
    paths = {r["path"] for r in damage["references"]}
    assert path in paths and any("/by-hash/SHA256/" in p for p in paths)  # every path that uses it

    fixed = s.mirror.cli("verify", "--repair", "--json")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert json.loads(fixed.stdout)["damaged"][0]["repaired"] is True
    assert s.mirror.served_tree() == s.tree
    assert s.mirror.cli("verify").returncode == 0


def test_a_replacement_that_does_not_hash_right_is_refused_and_the_object_quarantined(setup: Setup) -> None:
    s = setup
    deb = s.upstream.url_path_of("hello")
    blob = s.blob(deb)
    digest = blob.name
    flip_a_byte(blob)
    evil = bytearray(s.upstream.deb_path("hello").read_bytes())
    evil[200] ^= 0xFF
    s.server.faults[deb] = Fault(body=bytes(evil))

    refused = s.mirror.cli("verify", "--repair")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "not repaired" in refused.stdout and "does not match" in refused.stdout
    # the damaged bytes are never served again: moved out of the pool, the blob forgotten
    assert not blob.exists()
    root = s.mirror.settings.storage.root
    assert [p.name.split(".")[0] for p in (root / "quarantine").iterdir()] == [digest]
    store = s.mirror.store()
    try:
        assert store.recorded_blobs([digest]) == set()
        assert [d.sha256 for d in store.verify_damage("repo")] == [digest]
    finally:
        store.close()
    assert s.mirror.cli("verify").returncode == 1  # still damaged: missing
    assert temp_files(root) == [] and pool_problems(root) == []

    s.server.clear()  # upstream serves the right bytes again
    fixed = s.mirror.cli("verify", "--repair")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert s.mirror.served_tree() == s.tree


def test_verify_reports_progress_and_counts(setup: Setup) -> None:
    s = setup
    calls: list[tuple[int, int, int, int]] = []
    store = s.mirror.store()
    try:
        report = verify_pool(s.mirror.settings, store, "repo", progress=lambda *a: calls.append(a))
    finally:
        store.close()
    unique = {hash(v) for v in s.tree.values()}
    assert report.checked == len(unique) and not report.damaged
    assert calls[0][:2] == (0, 0) and calls[-1][0] == calls[-1][2] == report.checked
    assert calls[-1][1] == calls[-1][3] == report.bytes
