"""No broken client during a move, with the real dnf: clients loop `dnf makecache && dnf install
--downloadonly` against /dev/repo/ while the tier is promoted back and forth (through the API)
between two snapshots with different repodata and package versions, at least 50 times."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from fixtures.keys import SigningKey
from fixtures.upstream import UpstreamServer
from tests.helpers import Mirror, free_port, http, serve_both, write_tokens

pytestmark = pytest.mark.skipif(shutil.which("dnf") is None, reason="dnf is not installed")

TOKEN = "switch-token-0123456789abcdef"
CLIENTS = 3
MIN_MOVES = 50
MIN_RUNS = 12
TIME_CAP = 50.0


def rpm_mirror(root: Path, url: str, keyring: Path, tokens: Path) -> Mirror:
    root.mkdir(parents=True, exist_ok=True)
    config = root / "mirror.toml"
    config.write_text(f"""
[storage]
root = "var"

[server]
bind = "127.0.0.1"
repo_port = {free_port()}
api_port = {free_port()}
token_file = "{tokens}"
grace_period = "1h"

[[repos]]
name = "repo"
type = "rpm"
url = "{url}"
keyring = "{keyring}"
""")
    os.environ.pop("MIRROR_CONFIG", None)
    return Mirror(root=root, config=config)


def test_dnf_clients_never_break_while_the_tier_flips(tmp_path: Path, archive_key: SigningKey) -> None:
    from fixtures.dnf_client import DnfClient, describe
    from fixtures.rpm_repo import RpmPackage, RpmRepo, export_key

    upstream = RpmRepo(tmp_path / "upstream", archive_key)
    upstream.add(RpmPackage("hello", "1.0"), RpmPackage("foo-doc", "1.0", arch="noarch"))
    upstream.publish(revision="1001", timestamp=1_700_001_001)
    keyring = archive_key.write_public(tmp_path / "keys" / "archive.asc")
    tokens = write_tokens(tmp_path / "mirror" / "tokens", {"flipper": TOKEN})
    with UpstreamServer(upstream.root) as server:
        mirror = rpm_mirror(tmp_path / "mirror", server.url, keyring, tokens)
        first = mirror.sync_one()
        assert first.ok and first.snapshot, first.error
        upstream.remove("hello")
        upstream.remove("foo-doc")
        upstream.add(RpmPackage("hello", "2.0"), RpmPackage("foo-doc", "2.0", arch="noarch"))
        upstream.publish(revision="1002", timestamp=1_700_001_002)
        second = mirror.sync_one()
        assert second.ok and second.snapshot, second.error
    snapshots = (first.snapshot, second.snapshot)
    key = export_key(archive_key, tmp_path / "key.asc")

    with serve_both(mirror) as served:
        stop = threading.Event()
        failures: list[str] = []
        runs = [0] * CLIENTS

        def client(n: int) -> None:
            dnf = DnfClient(tmp_path / f"dnf{n}")
            dnf.configure("mirror", f"{served.repo_url}/dev/repo/", key)
            while not stop.is_set():
                dnf.clean()  # a fresh client each round: it reads whatever repomd.xml is current
                cache = dnf.makecache()
                if cache.returncode != 0:
                    failures.append(describe(cache))
                    continue
                download = dnf.download("hello", "foo-doc")
                if download.returncode != 0 or len(dnf.downloaded()) != 2:
                    failures.append(describe(download))
                    continue
                runs[n] += 1

        threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(CLIENTS)]
        for t in threads:
            t.start()
        moves = 0
        deadline = time.monotonic() + TIME_CAP
        try:
            while ((moves < MIN_MOVES or sum(runs) < MIN_RUNS) and time.monotonic() < deadline
                   and not failures):
                reply = http("POST", f"{served.api_url}/api/v1/repos/repo/promote",
                             body={"to": "dev", "snapshot": snapshots[moves % 2]}, token=TOKEN)
                assert reply.status == 200, reply.body
                moves += 1
                time.sleep(0.05)
        finally:
            stop.set()
            for t in threads:
                t.join(120)
        assert not failures, f"{len(failures)} dnf failures after {moves} moves; first:\n{failures[0]}"
        assert moves >= MIN_MOVES and sum(runs) >= MIN_RUNS, (moves, runs)
