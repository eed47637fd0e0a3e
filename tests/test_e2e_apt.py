"""End to end with the real apt-get: sync from a fixture upstream, `mirror serve`, apt update and
install --download-only against http://127.0.0.1:PORT/dev/<repo>, signature checks on."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fixtures.apt_client import AptClient, describe, ok
from fixtures.apt_repo import AptRepo, DebPackage
from fixtures.keys import SigningKey
from fixtures.upstream import UpstreamServer
from tests.helpers import Mirror, write_config


@pytest.fixture
def served(tmp_path: Path, archive_key: SigningKey) -> Iterator[tuple[AptRepo, Mirror, str]]:
    upstream = AptRepo(tmp_path / "upstream", archive_key, suite="stable", codename="demo",
                       architectures=("amd64", "all"))
    upstream.add(DebPackage("hello", "1.0-1"),
                 DebPackage("libfoo1", "1:2.0-1", payload_size=30_000),
                 DebPackage("foo-tools", "2.0-1", depends="libfoo1 (>= 1:2.0)"),
                 DebPackage("foo-doc", "2.0-1", arch="all"))
    upstream.publish(date=datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5),
                     keep_plain_on_disk=False)
    keyring = archive_key.write_public(tmp_path / "keys" / "archive.asc")
    with UpstreamServer(upstream.root) as server:
        mirror = write_config(tmp_path / "mirror", server.url, keyring, extra_repo="")
        result = mirror.sync_one()
        assert result.ok, result.error
    # the upstream is gone now: everything apt gets comes from the mirror
    with mirror.serving() as url:
        yield upstream, mirror, url


def test_apt_update_and_install_from_the_mirror(served: tuple[AptRepo, Mirror, str], tmp_path: Path,
                                                 archive_key: SigningKey) -> None:
    upstream, _mirror, url = served
    apt = AptClient(tmp_path / "apt")
    apt.configure(f"{url}/dev/repo stable main", archive_key.write_public(tmp_path / "apt-key.asc"))
    update = apt.update()
    assert ok(update), describe(update)
    install = apt.install_download_only("foo-tools", "foo-doc")
    assert ok(install), describe(install)
    names = sorted(p.name for p in apt.downloaded())
    assert names == ["foo-doc_2.0-1_all.deb", "foo-tools_2.0-1_amd64.deb", "libfoo1_1%3a2.0-1_amd64.deb"]
    got = {p.name: p.read_bytes() for p in apt.downloaded()}
    assert got["foo-tools_2.0-1_amd64.deb"] == upstream.deb_path("foo-tools").read_bytes()
    assert apt.versions("libfoo1") == ["1:2.0-1"]


def test_apt_with_the_wrong_key_fails(served: tuple[AptRepo, Mirror, str], tmp_path: Path,
                                      other_key: SigningKey) -> None:
    _upstream, _mirror, url = served
    apt = AptClient(tmp_path / "apt")
    apt.configure(f"{url}/dev/repo stable main", other_key.write_public(tmp_path / "wrong.asc"))
    update = apt.update()
    assert update.returncode != 0, describe(update)
    assert "NO_PUBKEY" in update.stdout + update.stderr


def test_snapshot_path_serves_the_same_signed_tree(served: tuple[AptRepo, Mirror, str], tmp_path: Path,
                                                   archive_key: SigningKey) -> None:
    upstream, mirror, url = served
    (snapshot,) = mirror.snapshots()
    apt = AptClient(tmp_path / "apt")
    apt.configure(f"{url}/snapshots/repo/{snapshot} stable main",
                  archive_key.write_public(tmp_path / "k.asc"))
    assert ok(update := apt.update()), describe(update)
    with urllib.request.urlopen(f"{url}/dev/repo/dists/stable/InRelease") as r:
        assert r.read() == upstream.inrelease_path.read_bytes()
        assert r.headers["ETag"]


def test_an_upstream_signed_rollback_is_refused_because_apt_ignores_the_older_release(
        tmp_path: Path, archive_key: SigningKey) -> None:
    """With tier_signing "upstream" a tier serves the vendor's InRelease as it is, and apt silently
    keeps a newer InRelease it has over an older one (no message, exit 0): a rollback would not
    reach the clients that saw the newer release, so the mirror refuses it unless forced. Here the
    forced one is shown not to reach apt."""
    upstream = AptRepo(tmp_path / "upstream", archive_key, suite="stable")
    now = datetime.now(UTC).replace(microsecond=0)
    upstream.add(DebPackage("hello", "1.0-1"))
    upstream.publish(date=now - timedelta(days=2), keep_plain_on_disk=False)
    older_inrelease = upstream.inrelease_path.read_bytes()
    keyring = archive_key.write_public(tmp_path / "keys" / "archive.asc")
    with UpstreamServer(upstream.root) as server:
        mirror = write_config(tmp_path / "mirror", server.url, keyring, extra_repo="")
        older = mirror.sync_one()
        assert older.ok, older.error
        upstream.remove("hello", "1.0-1", delete_file=False)  # the older snapshot still has it
        upstream.add(DebPackage("hello", "2.0-1"))
        upstream.publish(date=now - timedelta(days=1), keep_plain_on_disk=False)
        newer = mirror.sync_one()
        assert newer.ok and newer.snapshot != older.snapshot, newer.error
    with mirror.serving() as url:
        apt = AptClient(tmp_path / "apt")
        apt.configure(f"{url}/dev/repo stable main", archive_key.write_public(tmp_path / "apt-key.asc"))
        assert ok(update := apt.update()), describe(update)
        assert apt.versions("hello") == ["2.0-1"]

        refused = mirror.cli("rollback", "repo", "dev")
        assert refused.returncode == 2, refused
        assert "apt ignores an older Date" in refused.stdout + refused.stderr, refused
        assert mirror.tier() == newer.snapshot

        forced = mirror.cli("rollback", "repo", "dev", "--force", "--reason", "shown not to reach apt")
        assert forced.returncode == 0, forced
        with urllib.request.urlopen(f"{url}/dev/repo/dists/stable/InRelease") as r:
            assert r.read() == older_inrelease  # the tier serves the older release now...
        update = apt.update()
        assert ok(update), describe(update)  # ...and apt says nothing about it
        assert apt.versions("hello") == ["2.0-1"]  # but keeps the newer one
