"""HOSTILE.md 56 (disk full): the storage on a 4 MiB tmpfs; a sync larger than the free space, and
a state database that cannot grow at commit time.

Required: the sync fails loudly ("no space left", error code `no_space`, exit status 1), leaves no
truncated or zero-length pool object and no temp file, records the failed run, and the last
snapshot keeps serving byte for byte; once there is room again the next sync completes.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fixtures.apt_repo import AptRepo, DebPackage
from fixtures.keys import SigningKey
from fixtures.upstream import UpstreamServer
from mirror.pool import Pool
from tests.helpers import Mirror, write_config
from tests.invariants import check_storage, pool_problems, temp_files

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="mounting a small tmpfs needs root (CI runs as root)")

SMALL = [DebPackage("tiny", "1.0", payload_size=2000), DebPackage("tiny-doc", "1.0", arch="all")]


@dataclass
class Setup:
    upstream: AptRepo
    mirror: Mirror
    root: Path  # the storage root: a 4 MiB tmpfs


def _mount(where: Path, size: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)], check=True,
                   capture_output=True)


@pytest.fixture
def setup(tmp_path: Path, archive_key: SigningKey) -> Iterator[Setup]:
    upstream = AptRepo(tmp_path / "upstream", archive_key, architectures=("amd64", "all"))
    upstream.add(*SMALL)
    upstream.publish(date=datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2),
                     keep_plain_on_disk=False)
    keyring = archive_key.write_public(tmp_path / "keys" / "archive.asc")
    with UpstreamServer(upstream.root) as server:
        mirror = write_config(tmp_path / "mirror", server.url, keyring)
        root = mirror.settings.storage.root
        _mount(root, "4m")
        try:
            yield Setup(upstream, mirror, root)
        finally:
            subprocess.run(["gpgconf", "--homedir", str(root / "keyrings" / "repo"), "--kill", "all"],
                           check=False, capture_output=True)
            subprocess.run(["umount", "-l", str(root)], check=False, capture_output=True)


def _first_sync(s: Setup) -> dict[str, bytes]:
    done = s.mirror.cli("sync", "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr
    return s.mirror.served_tree()


def _last_run(s: Setup) -> tuple[str, str | None, str | None]:
    store = s.mirror.store()
    try:
        run = store.sync_runs("repo", limit=1)[0]
        return run.outcome, run.error_code, run.message
    finally:
        store.close()


def test_sync_larger_than_the_free_space_fails_loudly_and_the_last_snapshot_keeps_serving(
        setup: Setup) -> None:
    s = setup
    before = _first_sync(s)
    snapshots = s.mirror.snapshots()
    s.upstream.add(DebPackage("huge", "1.0", payload_size=6 * 1024 * 1024))  # incompressible: > 4 MiB
    s.upstream.publish(keep_plain_on_disk=False)

    done = s.mirror.cli("sync", "--no-progress")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "no space left" in done.stdout, done.stdout
    assert "huge_1.0_amd64.deb" in done.stdout  # which file
    outcome, code, message = _last_run(s)
    assert (outcome, code) == ("failed", "no_space") and message and "no space left" in message
    assert s.mirror.snapshots() == snapshots
    assert s.mirror.served_tree() == before
    assert pool_problems(s.root) == []  # no truncated or zero-length object under a final name
    assert temp_files(s.root) == []
    assert check_storage(s.root, {("repo", "dev"): [before]}) == []

    # room again: the next sync completes (and serves the big package)
    subprocess.run(["mount", "-o", "remount,size=32m", str(s.root)], check=True, capture_output=True)
    done = s.mirror.cli("sync", "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr
    tree = s.mirror.served_tree()
    assert tree[s.upstream.url_path_of("huge")] == s.upstream.deb_path("huge").read_bytes()
    assert pool_problems(s.root) == [] and temp_files(s.root) == []


def _fill(directory: Path) -> Path:
    """Take every free byte of the filesystem `directory` is on."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for block in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
            try:
                while True:
                    os.write(fd, b"\0" * block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


def test_no_space_for_the_state_database_at_commit_fails_loudly_and_changes_nothing(
        setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    s = setup
    before = _first_sync(s)
    snapshots = s.mirror.snapshots()
    s.upstream.add(DebPackage("newer", "1.0", payload_size=3000))
    s.upstream.publish(keep_plain_on_disk=False)
    # every blob is in the pool and durable; then the disk fills up just before the snapshot commits
    durable = Pool.make_durable
    filled: list[Path] = []

    def then_fill(pool: Pool) -> None:
        durable(pool)
        filled.append(_fill(s.root))

    monkeypatch.setattr(Pool, "make_durable", then_fill)
    result = s.mirror.sync_one()
    assert filled, "the sync never reached its commit"
    assert result.error is not None, "the commit succeeded on a full disk?"
    assert result.error.code == "no_space", result.error
    assert "no space left" in str(result.error)
    assert s.mirror.snapshots() == snapshots
    assert s.mirror.served_tree() == before
    assert pool_problems(s.root) == [] and temp_files(s.root) == []
    assert check_storage(s.root, {("repo", "dev"): [before]}) == []

    # room again: the failed run is closed, the next sync completes
    filled[0].unlink()
    monkeypatch.setattr(Pool, "make_durable", durable)
    result = s.mirror.sync_one()
    assert result.ok and result.snapshot, result.error
    newer = s.upstream.url_path_of("newer")
    assert s.mirror.served_tree()[newer] == s.upstream.deb_path("newer").read_bytes()
    store = s.mirror.store()
    try:
        runs = store.sync_runs("repo")
    finally:
        store.close()
    assert [r.outcome for r in runs][:2] == ["snapshot", "failed"]
    assert runs[1].error_code in ("no_space", "interrupted")


def test_a_sync_on_a_full_disk_fails_loudly_before_it_starts(setup: Setup) -> None:
    s = setup
    before = _first_sync(s)
    s.upstream.add(DebPackage("newer", "1.0", payload_size=3000))
    s.upstream.publish(keep_plain_on_disk=False)
    filler = _fill(s.root)
    done = s.mirror.cli("sync", "--no-progress")
    # the state database cannot even be opened: `mirror: error: ...`, exit status 2
    assert done.returncode != 0, done.stdout + done.stderr
    assert "no space left" in done.stdout + done.stderr, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    filler.unlink()
    assert s.mirror.served_tree() == before
    assert pool_problems(s.root) == [] and temp_files(s.root) == []
    assert check_storage(s.root, {("repo", "dev"): [before]}) == []
