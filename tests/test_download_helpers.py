"""Download helper processes (mirror.downloads): package files fetched by forked copies of the
sync, staged by the sync's own Pool; what a helper verified and what went wrong come back whole.

The helpers are forked before the upstream's server thread starts (a fork copies only the calling
thread; `Helpers.fork` refuses while other threads exist)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fixtures.apt_repo import AptRepo, DebPackage
from fixtures.keys import SigningKey
from fixtures.rpm_repo import RpmPackage, RpmRepo
from fixtures.upstream import Fault, UpstreamServer
from mirror import errors
from mirror.config import ConfigError, load
from mirror.downloads import Helpers, fetch_policy
from mirror.fetch import FetchPolicy, HTTPStatusError
from mirror.model import ExpectedFile
from mirror.pool import Pool
from mirror.store import Store
from mirror.sync import SyncResult, sync_repos
from tests.helpers import Mirror, process_alive, write_config

PACKAGES = 24


@dataclass
class Setup:
    upstream: AptRepo
    mirror: Mirror
    keyring: Path
    root: Path


@pytest.fixture
def setup(tmp_path: Path, archive_key: SigningKey) -> Setup:
    upstream = AptRepo(tmp_path / "upstream", archive_key)
    upstream.add(*(DebPackage(f"pkg{i:02d}", "1.0-1", payload_size=3000 + i) for i in range(PACKAGES)))
    upstream.publish(keep_plain_on_disk=False)
    keyring = archive_key.write_public(tmp_path / "keys" / "archive.asc")
    return Setup(upstream, Mirror(tmp_path / "mirror", tmp_path / "mirror" / "mirror.toml"), keyring,
                 tmp_path)


@pytest.fixture
def helpers(setup: Setup) -> Iterator[Helpers]:
    """One helper, forked now (before any server thread); reaped at the end."""
    assert threading.active_count() == 1, "threads left by an earlier test: cannot fork helpers"
    write_config(setup.mirror.root, "http://127.0.0.1:9/", setup.keyring)  # the policy only
    forked = Helpers.fork(1, fetch_policy(load(setup.mirror.config)), parallel=4)
    assert forked is not None
    yield forked
    forked.stop()


def _sync(mirror: Mirror, helpers: Helpers) -> SyncResult:
    store = Store(mirror.settings.storage.root / "state.db")

    async def run() -> list[SyncResult]:
        try:
            return await sync_repos(mirror.settings, ["repo"], store, helpers=helpers)
        finally:
            await helpers.close()

    try:
        (result,) = asyncio.run(run())
    finally:
        store.close()
    return result


def test_helpers_fetch_part_of_a_sync_and_the_snapshot_is_whole(setup: Setup, helpers: Helpers) -> None:
    with UpstreamServer(setup.upstream.root) as server:
        server.faults["pool/*"] = Fault(delay=0.02)  # every file takes a while: both sides get some
        mirror = write_config(setup.mirror.root, server.url, setup.keyring)
        result = _sync(mirror, helpers)
    assert result.ok, result.error
    assert 0 < helpers.done < PACKAGES
    tree = mirror.served_tree()
    for i in range(PACKAGES):
        name = f"pkg{i:02d}"
        assert tree[setup.upstream.url_path_of(name)] == setup.upstream.deb_path(name).read_bytes()
    assert mirror.temp_files() == []


def test_helpers_stop_once_the_syncs_are_done_with_them_before_close(setup: Setup, helpers: Helpers) -> None:
    """Each repo's sync releases the helpers after its downloads and checks (Helpers.hold and
    release): they are stopped beside the commits, and `close` only waits for that."""
    with UpstreamServer(setup.upstream.root) as server:
        mirror = write_config(setup.mirror.root, server.url, setup.keyring)
        store = Store(mirror.settings.storage.root / "state.db")

        async def run() -> tuple[list[SyncResult], bool]:
            results = await sync_repos(mirror.settings, ["repo"], store, helpers=helpers)
            await asyncio.sleep(0)
            stopping = helpers._closing is not None
            await helpers.close()
            await helpers.close()  # once only
            return results, stopping

        try:
            (result,), stopping = asyncio.run(run())
        finally:
            store.close()
    assert result.ok, result.error
    assert stopping, "the helpers were still held after the sync ended"
    for pid in helpers.pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reaped


def test_a_file_a_helper_fetched_wrong_fails_the_sync_naming_it(setup: Setup, helpers: Helpers) -> None:
    with UpstreamServer(setup.upstream.root) as server:
        server.faults["pool/*"] = Fault(append=b"X")  # every package: one byte longer than declared
        mirror = write_config(setup.mirror.root, server.url, setup.keyring, retries=0)
        result = _sync(mirror, helpers)
    assert not result.ok and result.snapshot is None
    assert isinstance(result.error, errors.SizeMismatchError)
    assert result.error.repo == "repo" and (result.error.path or "").endswith(".deb")
    assert "longer than the" in str(result.error)
    assert helpers.done == 0
    assert mirror.snapshots() == [] and mirror.temp_files() == []


def test_files_of_a_helper_that_died_are_fetched_by_the_sync_itself(setup: Setup, helpers: Helpers) -> None:
    with UpstreamServer(setup.upstream.root) as server:
        server.faults["pool/*"] = Fault(delay=0.05)
        mirror = write_config(setup.mirror.root, server.url, setup.keyring)
        pid = helpers.pids[0]
        killer = threading.Timer(0.15, os.kill, (pid, signal.SIGKILL))
        killer.start()
        try:
            result = _sync(mirror, helpers)
        finally:
            killer.cancel()
    assert result.ok, result.error
    assert helpers.done < PACKAGES
    tree = mirror.served_tree()
    for i in range(PACKAGES):
        name = f"pkg{i:02d}"
        assert tree[setup.upstream.url_path_of(name)] == setup.upstream.deb_path(name).read_bytes()


def test_helpers_exit_when_the_sync_is_killed(setup: Setup) -> None:
    with UpstreamServer(setup.upstream.root) as server:
        server.faults["pool/*"] = Fault(delay=5)
        mirror = write_config(setup.mirror.root, server.url, setup.keyring, retries=0)
        text = mirror.config.read_text().replace("[sync]\n", "[sync]\ndownload_processes = 1\n")
        mirror.config.write_text(text)
        proc = subprocess.Popen([sys.executable, "-m", "mirror.cli", "-c", str(mirror.config), "sync",
                                 "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            children: list[int] = []
            deadline = time.monotonic() + 20
            while not children and time.monotonic() < deadline:
                if server.count("pool/*"):
                    children = _children(proc.pid)
                time.sleep(0.05)
            assert children, "the sync forked no download helper"
        finally:
            proc.kill()
            proc.wait()
        deadline = time.monotonic() + 10
        while any(process_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(process_alive(pid) for pid in children)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with open(task / "children") as f:
            found += [int(p) for p in f.read().split()]
    return found


@pytest.mark.parametrize("error", [
    errors.ChecksumMismatchError("sha256 differs", repo="r", path="pool/a.deb"),
    errors.SizeMismatchError("longer than declared", path="pool/b.deb"),
    errors.NotFoundUpstreamError("HTTP 404: not found at http://example.org/x"),
    HTTPStatusError(503, "http://example.org/y", retry_after=2.0),
    errors.NoSpaceError("no space left on device", path="/var/x"),
])
def test_errors_cross_processes_whole(error: errors.MirrorError) -> None:
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error)
    assert (str(back), back.code, back.repo, back.path, back.retryable, back.args) == \
        (str(error), error.code, error.repo, error.path, error.retryable, error.args)
    assert getattr(back, "retry_after", None) == getattr(error, "retry_after", None)


@pytest.mark.parametrize(("value", "expected"), [
    ('"auto"', None), ("0", 0), ("2", 2), ("3", 3),
    ("4", "between 0 and 3"), ("-1", "between 0 and 3"), ('"two"', "integer"), ("true", "integer"),
])
def test_download_processes_setting(tmp_path: Path, archive_key: SigningKey, value: str,
                                    expected: int | str | None) -> None:
    keyring = archive_key.write_public(tmp_path / "k.asc")
    mirror = write_config(tmp_path / "m", "http://example.org/debian/", keyring)
    mirror.config.write_text(mirror.config.read_text().replace(
        "[sync]\n", f"[sync]\ndownload_processes = {value}\n"))
    if isinstance(expected, str):
        with pytest.raises(ConfigError, match=f"download_processes.*{expected}"):
            load(mirror.config)
    else:
        assert load(mirror.config).sync.download_processes == expected


def test_no_helpers_are_forked_while_other_threads_run() -> None:
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert Helpers.fork(1, FetchPolicy(), parallel=4) is None
    finally:
        stop.set()
        other.join()



# -- the handover of a staged file between two Pools (helper -> sync) -----------------------------


def _staged_in(pool: Pool, data: bytes, tmp: Path) -> str:
    expected = ExpectedFile("pool/main/x.deb", len(data), hashlib.sha256(data).hexdigest())
    return pool.store_received(data, len(data), expected, tmp, what=expected.path)


def test_a_staged_file_handed_over_is_staged_by_the_receiving_pool(tmp_path: Path) -> None:
    helper, sync = Pool(tmp_path), Pool(tmp_path)
    tmp = sync.temp_dir("repo")
    digest = _staged_in(helper, b"package bytes", tmp)
    name = helper.unstage(digest)
    assert helper.staged == 0 and Path(name).parent == tmp
    sync.adopt_staged(digest, name)
    assert sync.staged == 1 and sync.path_for(digest) == Path(name)
    sync.make_durable()
    assert (tmp_path / "pool" / "sha256" / digest[:2] / digest).read_bytes() == b"package bytes"
    assert not Path(name).exists()


def test_a_second_copy_handed_over_is_removed_and_the_first_kept(tmp_path: Path) -> None:
    helper, sync = Pool(tmp_path), Pool(tmp_path)
    tmp = sync.temp_dir("repo")
    digest = _staged_in(sync, b"same bytes", tmp)
    first = sync.path_for(digest)
    copy = _staged_in(helper, b"same bytes", tmp)  # named by digest is taken: a .part name
    name = helper.unstage(copy)
    assert Path(name) != first
    sync.adopt_staged(digest, name)
    assert not Path(name).exists() and first.read_bytes() == b"same bytes"
    sync.adopt_staged(digest, str(first))  # the very file already staged: kept
    assert first.exists() and sync.path_for(digest) == first


# -- RPM package signatures checked by the helpers (mirror.trust.rpmsig) --------------------------


@pytest.fixture
def rpm_upstream(tmp_path: Path, archive_key: SigningKey, other_key: SigningKey) -> tuple[RpmRepo, Path]:
    upstream = RpmRepo(tmp_path / "rpm-upstream", archive_key)
    upstream.add(*(RpmPackage(f"pkg{i}", "1.0") for i in range(6)))
    upstream.add(RpmPackage("intruder", "1.0"), sign=other_key)  # signed, by a key not pinned
    upstream.publish(revision="1001", timestamp=1_700_001_001)
    return upstream, archive_key.write_public(tmp_path / "keys" / "archive.asc")


def _rpm_helpers(root: Path, keyring: Path) -> Helpers:
    assert threading.active_count() == 1, "threads left by an earlier test: cannot fork helpers"
    write_config(root, "http://127.0.0.1:9/", keyring, kind="rpm")
    forked = Helpers.fork(1, fetch_policy(load(root / "mirror.toml")), parallel=4)
    assert forked is not None
    return forked


def _rpm_sync_with_helpers(root: Path, upstream: RpmRepo, keyring: Path, *,
                           delay_packages: float = 0.0) -> tuple[SyncResult, Helpers, Mirror]:
    helpers = _rpm_helpers(root, keyring)
    try:
        with UpstreamServer(upstream.root) as server:
            if delay_packages:
                server.faults["*.rpm"] = Fault(delay=delay_packages)
            mirror = write_config(root, server.url, keyring, kind="rpm")
            return _sync(mirror, helpers), helpers, mirror
    finally:
        helpers.stop()


def _signature_counts(caplog: pytest.LogCaptureFixture) -> tuple[int, int]:
    """(accepted as they landed, checked after) from the sync's debug line."""
    (line,) = [r.getMessage() for r in caplog.records if "accepted as they landed" in r.getMessage()]
    found = re.search(r"(\d+) accepted as they landed, (\d+) checked after", line)
    assert found is not None, line
    return int(found[1]), int(found[2])


@pytest.mark.parametrize("landing", [False, True], ids=["rpmdb-being-built", "packages-land-later"])
def test_helpers_check_rpm_signatures_and_rpmkeys_names_the_bad_one(
        tmp_path: Path, rpm_upstream: tuple[RpmRepo, Path], caplog: pytest.LogCaptureFixture,
        landing: bool) -> None:
    """Each package is checked once in process: as it lands (in the process that fetched it)
    once the verifier is ready, else in a helper's batch; rpmkeys judges the one declined."""
    caplog.set_level(logging.DEBUG, logger="mirror.trust.rpm")
    result, helpers, mirror = _rpm_sync_with_helpers(tmp_path / "mirror", *rpm_upstream,
                                                     delay_packages=1.0 if landing else 0.0)
    assert not result.ok and isinstance(result.error, errors.SignatureError)
    assert "intruder" in str(result.error) and "not one of this repo's keys" in str(result.error)
    landed, after = _signature_counts(caplog)
    assert landed + after == 7 and helpers.checked == after
    if landing:  # the verifier was ready before any package landed: only the intruder is left
        assert (landed, after) == (6, 1) and helpers.landed >= 1
    assert mirror.snapshots() == []


def test_helpers_checked_signatures_make_a_snapshot_and_are_remembered(
        tmp_path: Path, rpm_upstream: tuple[RpmRepo, Path], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="mirror.trust.rpm")
    upstream, keyring = rpm_upstream
    upstream.remove("intruder")
    upstream.publish(revision="1002", timestamp=1_700_001_002)
    result, helpers, mirror = _rpm_sync_with_helpers(tmp_path / "mirror", upstream, keyring)
    assert result.ok, result.error
    landed, after = _signature_counts(caplog)
    assert landed + after == 6 and helpers.checked == after
    (proven,) = (mirror.settings.storage.root / "rpmdb").glob("*/verified-packages")
    assert len(proven.read_text().split()) == 6


def test_a_helper_that_does_not_exit_is_killed_after_the_grace(
        setup: Setup, helpers: Helpers, monkeypatch: pytest.MonkeyPatch) -> None:
    import mirror.downloads

    monkeypatch.setattr(mirror.downloads, "STOP_GRACE", 0.3)
    (pid,) = helpers.pids
    os.kill(pid, signal.SIGSTOP)  # cannot see its socket close, nor exit
    started = time.monotonic()
    helpers.stop()
    assert time.monotonic() - started < 5
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped
