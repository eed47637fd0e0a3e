"""No broken client during a move, with the real apt-get: clients loop `apt-get update && apt-get
install --download-only` against /dev/repo while the tier is promoted back and forth (through the
API) between two snapshots with different index files and package versions, at least 50 times.
Every apt run must succeed: no 404, no hash-sum mismatch, no warning."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fixtures.apt_client import AptClient, describe, ok
from fixtures.apt_repo import AptRepo, DebPackage
from fixtures.keys import SigningKey
from fixtures.upstream import UpstreamServer
from tests.helpers import http, serve_both, write_config, write_tokens

TOKEN = "switch-token-0123456789abcdef"
CLIENTS = 4
MIN_MOVES = 60
MIN_RUNS = 30
TIME_CAP = 45.0


def test_apt_clients_never_break_while_the_tier_flips(tmp_path: Path, archive_key: SigningKey) -> None:
    upstream = AptRepo(tmp_path / "upstream", archive_key, suite="stable", codename="demo",
                       architectures=("amd64", "all"))
    upstream.add(DebPackage("hello", "1.0-1"), DebPackage("libfoo1", "1.0-1"),
                 DebPackage("foo-tools", "1.0-1", depends="libfoo1 (>= 1.0)"))
    now = datetime.now(UTC).replace(microsecond=0)
    upstream.publish(date=now - timedelta(hours=2), keep_plain_on_disk=False)
    keyring = archive_key.write_public(tmp_path / "keys" / "archive.asc")
    tokens = write_tokens(tmp_path / "mirror" / "tokens", {"flipper": TOKEN})
    with UpstreamServer(upstream.root) as server:
        mirror = write_config(tmp_path / "mirror", server.url, keyring,
                              extra_server=f'token_file = "{tokens}"\ngrace_period = "1h"')
        first = mirror.sync_one()
        assert first.ok and first.snapshot, first.error
        upstream.remove("hello")
        upstream.remove("libfoo1")
        upstream.remove("foo-tools")
        upstream.add(DebPackage("hello", "2.0-1"), DebPackage("libfoo1", "2.0-1"),
                     DebPackage("foo-tools", "2.0-1", depends="libfoo1 (>= 2.0)"),
                     DebPackage("newcomer", "1.0-1", arch="all"))
        upstream.publish(date=now - timedelta(hours=1), keep_plain_on_disk=False)
        second = mirror.sync_one()
        assert second.ok and second.snapshot, second.error
    snapshots = (first.snapshot, second.snapshot)
    key = archive_key.write_public(tmp_path / "apt-key.asc")

    with serve_both(mirror) as served:
        stop = threading.Event()
        failures: list[str] = []
        runs = [0] * CLIENTS

        def client(n: int) -> None:
            apt = AptClient(tmp_path / f"apt{n}", timeout=10)
            apt.configure(f"{served.repo_url}/dev/repo stable main", key)
            while not stop.is_set():
                apt.clean_lists()  # a fresh client each round: it reads whatever InRelease is current
                for deb in apt.downloaded():
                    deb.unlink()
                update = apt.update()
                if not ok(update):
                    failures.append(describe(update))
                    continue
                install = apt.install_download_only("hello", "foo-tools")
                if not ok(install) or len(apt.downloaded()) != 3:
                    failures.append(describe(install))
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
                target = snapshots[moves % 2]
                # force: half the flips go to the older upstream Date, which tier_signing "upstream"
                # refuses (these fresh clients would follow, a client keeping its lists would not)
                reply = http("POST", f"{served.api_url}/api/v1/repos/repo/promote",
                             body={"to": "dev", "snapshot": target, "reason": f"flip {moves}", "force": True},
                             token=TOKEN)
                assert reply.status == 200, reply.body
                moves += 1
                time.sleep(0.05)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert not failures, f"{len(failures)} apt failures after {moves} moves; first:\n{failures[0]}"
        assert moves >= MIN_MOVES, moves
        assert sum(runs) >= MIN_RUNS, runs
        history = http("GET", f"{served.api_url}/api/v1/repos/repo/history?tier=dev&limit=1000").json()
        flips = [m for m in history["moves"] if m["actor"] == "flipper"]
        assert len(flips) == moves
