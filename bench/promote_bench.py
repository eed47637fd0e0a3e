"""Benchmark: a tier move costs the same for 60,000 packages as for 10, and serving does not slow
down while tiers move.

    .venv/bin/python bench/promote_bench.py [--packages 60000] [--moves 300] [--seconds 8] [--workdir DIR]

A measurement, not a test: prints figures and ratios with a pass/fail per target and writes them
as JSON to ``<workdir>/promote_bench.json`` (exit 0 even when a target is missed).

1. A state database with two repos, each with two synthetic snapshots inserted straight into the
   store (``Store.commit_snapshot``): "big" with ``--packages`` package entries (plus indices),
   "small" with 10.
2. Promotion time: ``--moves`` promotions of tier dev, alternating between the repo's two
   snapshots, through ``mirror.tiers.Tiers.promote`` (policy checks, compare-and-swap read, one
   row update + one history row, BEGIN IMMEDIATE, fsync'd commit as configured: WAL, FULL),
   after a WAL checkpoint of the bulk insert and 20 warm-up moves each, in three interleaved
   rounds; median, p95 and max per repo, and the ratio big/small of the medians.
3. Serving under moves: the repo-port app (``RepoResponder`` + ``StoreCatalog``, as ``mirror
   serve`` runs it) in a subprocess; ``wrk`` (Debian package ``wrk``; else a built-in aiohttp
   load generator) fetches a 4 KiB package under ``/dev/big/...`` for ``--seconds``: first with
   no moves, then while another process promotes dev of "big" back and forth every 50 ms;
   the ratio of requests per second (with moves / without).

Targets: both median promotion times <= 50 ms; big/small ratio about 1 (<= 1.5); requests/s
with moves / without >= 0.9.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mirror.model import EntryKind, ManifestEntry, PackageKey, RootRecord, utcnow  # noqa: E402
from mirror.pool import Pool  # noqa: E402
from mirror.store import NewSnapshot, Store  # noqa: E402
from mirror.tiers import Tiers  # noqa: E402

ORDER = ("dev", "test", "uat", "prod")
PACKAGE_PATH = "pool/main/b/bench/bench_1.0_amd64.deb"
PAYLOAD = os.urandom(4096)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _blob(pool: Pool, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    path = pool.path_for(digest)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return digest


def seed(store: Store, pool: Pool, repo: str, packages: int, generation: int) -> str:
    """A synthetic snapshot: `packages` package entries (digests need no pool file, except the one
    package the load test fetches), an InRelease and a Packages index that differ per generation."""
    entries: list[ManifestEntry] = []
    for i in range(packages):
        name = f"pkg{i:06d}"
        digest = hashlib.sha256(f"{repo}/{name}/{generation}".encode()).hexdigest()
        entries.append(ManifestEntry(f"pool/main/p/{name}/{name}_{generation}.0_amd64.deb", digest, 1000,
                                     EntryKind.PACKAGE, PackageKey(name, "amd64", f"{generation}.0")))
    entries.append(ManifestEntry(PACKAGE_PATH, _blob(pool, PAYLOAD), len(PAYLOAD), EntryKind.PACKAGE,
                                 PackageKey("bench", "amd64", "1.0")))
    for path, data in (("dists/stable/InRelease", f"release {repo} {generation}".encode()),
                       ("dists/stable/main/binary-amd64/Packages.xz", f"index {repo} {generation}".encode())):
        entries.append(ManifestEntry(path, _blob(pool, data), len(data),
                                     EntryKind.ROOT if path.endswith("InRelease") else EntryKind.INDEX))
    root = RootRecord(name="stable", sha256="0" * 64, date=utcnow(), valid_until=None)
    new = NewSnapshot(repo=repo, signed_by="upstream", plan_key="bench", roots=[root],
                      entries=sorted(entries, key=lambda e: e.path))
    return store.commit_snapshot(new, ORDER[0])


def time_promotions(db: Path, repo: str, snapshots: tuple[str, str], moves: int) -> list[float]:
    """Seconds per promotion of dev, alternating between the two snapshots."""
    store = Store(db)
    try:
        tiers = Tiers(store, ORDER)
        times: list[float] = []
        current = store.tier_snapshot(repo, "dev")
        for i in range(moves):
            target = snapshots[0] if current == snapshots[1] else snapshots[1]
            start = time.perf_counter()
            tiers.promote(repo, "dev", snapshot=target, actor="bench", reason=f"bench {i}")
            times.append(time.perf_counter() - start)
            current = target
        return times
    finally:
        store.close()


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"median_ms": statistics.median(ordered) * 1000,
            "p95_ms": ordered[int(len(ordered) * 0.95)] * 1000, "max_ms": ordered[-1] * 1000,
            "moves": len(ordered)}


# -- serving ----------------------------------------------------------------------------------


def serve_main(root: Path, port: int) -> None:
    """--serve mode: the repo port as `mirror serve` runs it, until SIGTERM."""
    from mirror.publish import StoreCatalog
    from mirror.web.repo import RepoResponder, run_servers

    catalog = StoreCatalog(Store(root / "state.db"), Pool(root))
    asyncio.run(run_servers([(RepoResponder(catalog), "127.0.0.1", port)]))


def wait_up(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                r.read()
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def run_wrk(url: str, seconds: int) -> float:
    out = subprocess.run(["wrk", "-t2", "-c32", f"-d{seconds}s", "--latency", url], capture_output=True,
                         text=True, check=True).stdout
    match = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"wrk saw {errors.group(1)} error responses:\n{out}")
    if match is None:
        raise RuntimeError(f"cannot read wrk output:\n{out}")
    return float(match.group(1))


async def _aiohttp_load(url: str, seconds: int, concurrency: int = 32) -> float:
    import aiohttp

    done = 0
    failed = 0
    end = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            nonlocal done, failed
            while time.monotonic() < end:
                async with session.get(url) as response:
                    await response.read()
                    if response.status == 200:
                        done += 1
                    else:
                        failed += 1

        start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - start
    if failed:
        raise RuntimeError(f"{failed} error responses")
    return done / elapsed


def requests_per_second(url: str, seconds: int) -> tuple[float, str]:
    if shutil.which("wrk"):
        return run_wrk(url, seconds), "wrk -t2 -c32"
    return asyncio.run(_aiohttp_load(url, seconds)), "aiohttp client, 32 connections"


def promote_loop(db: Path, snapshots: tuple[str, str], stop: threading.Event, counter: list[int]) -> None:
    store = Store(db)
    tiers = Tiers(store, ORDER)
    try:
        while not stop.is_set():
            tiers.promote("big", "dev", snapshot=snapshots[counter[0] % 2], actor="bench")
            counter[0] += 1
            time.sleep(0.05)
    finally:
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packages", type=int, default=60_000)
    parser.add_argument("--moves", type=int, default=300)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--serve", nargs=2, metavar=("ROOT", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_main(Path(args.serve[0]), int(args.serve[1]))
        return 0

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="promote-bench-"))
    root = workdir / "root"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    db = root / "state.db"
    store = Store(db)
    pool = Pool(root)
    start = time.perf_counter()
    big = (seed(store, pool, "big", args.packages, 1), seed(store, pool, "big", args.packages, 2))
    small = (seed(store, pool, "small", 10, 1), seed(store, pool, "small", 10, 2))
    seeded = time.perf_counter() - start
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the bulk insert settles before timing
    store.close()
    print(f"seeded 2 x {args.packages} + 2 x 10 package snapshots in {seeded:.1f} s")

    results: dict[str, Any] = {"packages": args.packages}
    time_promotions(db, "small", small, 20)  # warm-up (page cache, statement cache)
    time_promotions(db, "big", big, 20)
    samples: dict[str, list[float]] = {"small": [], "big": []}
    for _round in range(3):  # interleaved, so drift (fsync, checkpoints) hits both alike
        for name, pair in (("small", small), ("big", big)):
            samples[name] += time_promotions(db, name, pair, args.moves // 3)
    results["small"] = summary(samples["small"])
    results["big"] = summary(samples["big"])
    ratio = results["big"]["median_ms"] / results["small"]["median_ms"]
    results["promotion_ratio_big_small"] = ratio
    for name in ("small", "big"):
        r = results[name]
        print(f"promotion, {name:>5}: median {r['median_ms']:.2f} ms, p95 {r['p95_ms']:.2f} ms, "
              f"max {r['max_ms']:.2f} ms ({r['moves']} moves)")
    print(f"promotion time ratio {args.packages} / 10 packages: {ratio:.2f}")

    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(root), str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/dev/big/{PACKAGE_PATH}"
    try:
        wait_up(url)
        # warm both snapshots' manifests into the catalog (as a serving mirror has them)
        for snapshot in big:
            s = Store(db)
            Tiers(s, ORDER).promote("big", "dev", snapshot=snapshot, actor="bench")
            s.close()
            wait_up(url)
        quiet, tool = requests_per_second(url, args.seconds)
        stop = threading.Event()
        counter = [0]
        mover = threading.Thread(target=promote_loop, args=(db, big, stop, counter))
        mover.start()
        try:
            busy, _ = requests_per_second(url, args.seconds)
        finally:
            stop.set()
            mover.join()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(20)
    serving_ratio = busy / quiet
    results["serving"] = {"tool": tool, "seconds": args.seconds, "rps_no_moves": quiet,
                          "rps_with_moves": busy, "moves_during": counter[0], "ratio": serving_ratio}
    print(f"repo port ({tool}, {args.seconds} s each): {quiet:.0f} req/s without moves, {busy:.0f} req/s "
          f"with {counter[0]} moves ({counter[0] / args.seconds:.0f}/s): ratio {serving_ratio:.2f}")

    targets = {
        "promotion <= 50 ms (both)": max(results["small"]["median_ms"], results["big"]["median_ms"]) <= 50,
        "promotion ratio about 1 (<= 1.5)": ratio <= 1.5,
        "requests/s with moves / without >= 0.9": serving_ratio >= 0.9,
    }
    results["targets"] = targets
    for name, passed in targets.items():
        print(f"{'PASS' if passed else 'MISS'}  {name}")
    (workdir / "promote_bench.json").write_text(json.dumps(results, indent=2))
    print(f"figures: {workdir / 'promote_bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
