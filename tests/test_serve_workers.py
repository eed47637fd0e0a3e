"""The repo port served by worker processes (`[server] repo_workers`, mirror.web.workers): the
same bytes, the per-client cap counted once for the whole port, metrics from every process,
promotions seen by every worker, a dead worker replaced, no worker outliving `mirror serve`."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fixtures.keys import SigningKey
from mirror.pool import Pool
from mirror.tiers import Tiers
from tests.helpers import Mirror, Served, http, process_alive, seed_snapshot, serve_both, write_config
from tests.test_serve_guard import closed_after, connect, connect_or_refused, read_response

DEB_PATH = "pool/main/f/foo/foo_1.0-1_amd64.deb"
OLD = os.urandom(150_000)
NEW = os.urandom(120_000)


def _mirror(tmp_path: Path, key: SigningKey, *, workers: int = 2, extra: str = "") -> tuple[Mirror, str, str]:
    keyring = key.write_public(tmp_path / "keys" / "archive.asc")
    mirror = write_config(tmp_path / "mirror", "http://127.0.0.1:9/", keyring,
                          extra_server=f"repo_workers = {workers}\ngrace_period = \"1h\"\n{extra}")
    store = mirror.store()
    try:
        pool = Pool(mirror.settings.storage.root)
        old = seed_snapshot(store, pool, "repo", {DEB_PATH: OLD, "dists/stable/InRelease": b"old"})
        time.sleep(1.1)  # snapshot ids have one-second resolution
        new = seed_snapshot(store, pool, "repo", {DEB_PATH: NEW, "dists/stable/InRelease": b"new"})
        Tiers(store, mirror.settings.tiers).promote("repo", "dev", snapshot=old, actor="test", force=True)
    finally:
        store.close()
    return mirror, old, new


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.add(int(entry.name))
    return found


def _workers_of(served: Served, count: int, *, timeout: float = 10) -> set[int]:
    deadline = time.monotonic() + timeout
    while True:
        pids = {p for p in _children(served.proc.pid)
                if b"mirror.web.workers" in Path(f"/proc/{p}/cmdline").read_bytes()}
        if len(pids) == count or time.monotonic() > deadline:
            return pids
        time.sleep(0.05)


def _wait(check: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _get(served: Served, path: str = DEB_PATH) -> bytes:
    reply = http("GET", f"{served.repo_url}/dev/repo/{path}")
    assert reply.status == 200, reply
    return reply.body


def _metric(served: Served, line_start: str) -> float:
    for line in http("GET", f"{served.api_url}/metrics").body.decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def two_workers(tmp_path: Path, archive_key: SigningKey) -> Iterator[tuple[Mirror, Served, str, str]]:
    mirror, old, new = _mirror(tmp_path, archive_key)
    with serve_both(mirror) as served:
        assert len(_workers_of(served, 2)) == 2
        yield mirror, served, old, new


def test_repo_workers_serve_the_same_bytes_and_every_response_is_counted(
        two_workers: tuple[Mirror, Served, str, str]) -> None:
    _, served, _, _ = two_workers
    with ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(lambda _: _get(served), range(200)))
    assert {hashlib.sha256(b).hexdigest() for b in bodies} == {hashlib.sha256(OLD).hexdigest()}
    head = http("HEAD", f"{served.repo_url}/dev/repo/{DEB_PATH}")
    assert head.status == 200 and head.headers["content-length"] == str(len(OLD))
    assert http("GET", f"{served.repo_url}/dev/repo/nothing").status == 404
    counted = 'mirror_http_requests_total{server="repo",status="200"}'
    assert _wait(lambda: _metric(served, counted) == 201), _metric(served, counted)
    assert _wait(lambda: _metric(served, 'mirror_http_requests_total{server="repo",status="404"}') == 1)


def test_a_promotion_is_seen_by_every_worker_at_once(two_workers: tuple[Mirror, Served, str, str]) -> None:
    mirror, served, _, new = two_workers
    # Idle connections held open by another address make the workers' loads differ, so requests
    # from here reach both workers.
    held = [connect(int(served.repo_url.rsplit(":", 1)[1]), "127.0.0.9") for _ in range(3)]
    try:
        assert mirror.cli("promote", "repo", "--to", "dev", "--snapshot", new, "--force").returncode == 0
        with ThreadPoolExecutor(6) as pool:
            bodies = list(pool.map(lambda _: _get(served), range(60)))
        assert all(b == NEW for b in bodies)
    finally:
        for sock in held:
            sock.close()


def test_per_client_cap_is_counted_once_for_the_whole_port(tmp_path: Path, archive_key: SigningKey) -> None:
    mirror, _, _ = _mirror(tmp_path, archive_key, extra="max_connections_per_client = 3")
    with serve_both(mirror) as served:
        assert len(_workers_of(served, 2)) == 2
        _cap_holds(served)


def _cap_holds(served: Served) -> None:
    port = int(served.repo_url.rsplit(":", 1)[1])
    request = f"GET /dev/repo/{DEB_PATH} HTTP/1.1\r\nHost: mirror\r\n\r\n".encode()
    held = [connect(port, "127.0.0.3") for _ in range(3)]  # spread over both workers
    try:
        for sock in held:
            sock.sendall(request)
            assert read_response(sock)[0] == 200
        extra = connect_or_refused(port, "127.0.0.3")
        if extra is not None:
            after = closed_after(extra, 3)
            extra.close()
            assert after is not None and after < 0.5, "a 4th connection from one address was kept"
        assert _metric(served, 'mirror_http_connections_refused_total{server="repo"}') == 1
        other = connect(port, "127.0.0.4")  # another address is not affected
        other.sendall(request)
        assert read_response(other)[0] == 200
        other.close()
        held.pop(0).close()  # the worker reports the close: the address may connect again
        assert _wait(lambda: _metric(served, 'mirror_http_connections{server="repo"}') == 2)
        again = connect(port, "127.0.0.3")
        again.sendall(request)
        assert read_response(again)[0] == 200
        again.close()
    finally:
        for sock in held:
            sock.close()


def test_a_killed_worker_is_replaced_and_serving_goes_on(
        two_workers: tuple[Mirror, Served, str, str]) -> None:
    _, served, _, _ = two_workers
    before = _workers_of(served, 2)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    # (connections handed to it in the instant before it died die with it, as in any server)
    assert _wait(lambda: not process_alive(victim))
    for _ in range(20):  # the other worker takes every connection meanwhile
        assert _get(served) == OLD
    assert _wait(lambda: len(after := _workers_of(served, 2, timeout=0)) == 2 and victim not in after)
    with ThreadPoolExecutor(4) as pool:
        assert all(b == OLD for b in pool.map(lambda _: _get(served), range(40)))


def test_no_worker_outlives_the_main_process(tmp_path: Path, archive_key: SigningKey) -> None:
    mirror, _, _ = _mirror(tmp_path, archive_key, workers=3)
    with serve_both(mirror) as served:
        workers = _workers_of(served, 3)
        assert len(workers) == 3
        assert _get(served) == OLD
        os.kill(served.proc.pid, signal.SIGKILL)  # no chance to stop them: their stdin closes
        assert _wait(lambda: not any(process_alive(p) for p in workers)), workers


def test_sigterm_stops_main_and_workers_gracefully(tmp_path: Path, archive_key: SigningKey) -> None:
    mirror, _, _ = _mirror(tmp_path, archive_key)
    with serve_both(mirror) as served:
        workers = _workers_of(served, 2)
        assert _get(served) == OLD
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=20) == 0
        assert _wait(lambda: not any(Path(f"/proc/{p}").exists() for p in workers))
        with pytest.raises(OSError), socket.create_connection(
                ("127.0.0.1", int(served.repo_url.rsplit(":", 1)[1])), timeout=2):
            pass


@pytest.mark.parametrize("workers", [1, 2])
def test_the_low_level_repo_port_answers_other_methods_405_with_security_headers(
        tmp_path: Path, archive_key: SigningKey, workers: int) -> None:
    """`mirror serve` runs the repo port on aiohttp's low-level server (no router): 405 for other
    methods, the security headers and the metrics on every answer, in one process or in workers."""
    mirror, _, _ = _mirror(tmp_path, archive_key, workers=workers)
    with serve_both(mirror) as served:
        for method in ("POST", "PUT", "DELETE", "OPTIONS"):
            reply = http(method, f"{served.repo_url}/dev/repo/{DEB_PATH}", raw=b"x")
            assert reply.status == 405 and reply.headers["allow"] == "GET,HEAD", (method, reply)
            assert reply.headers["x-content-type-options"] == "nosniff"
        for path, status in ((f"/dev/repo/{DEB_PATH}", 200), ("/dev/repo/missing", 404)):
            reply = http("GET", served.repo_url + path)
            assert reply.status == status, path
            assert reply.headers["x-frame-options"] == "DENY" and reply.headers["server"] == "mirror"
            assert "cache-control" in reply.headers
        assert _wait(lambda: _metric(served, 'mirror_http_requests_total{server="repo",status="405"}') == 4)
