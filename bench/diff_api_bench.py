"""Benchmark: `GET /api/v1/repos/{repo}/diff` between two stored snapshots of 60,000 packages.

    .venv/bin/python bench/diff_api_bench.py [--packages 60000] [--changes 0.05 0.001] [--repeat 15]
                                             [--json out.json]

A measurement, not a test: prints figures with a pass/fail per target (exit 0 either way).

1. A state database with one RPM repo and three snapshots committed through
   ``Store.commit_snapshot`` (which stores each snapshot's PackageSet blob, as a sync does): a
   base of ``--packages`` package rows shaped like a big RPM repo (``bench/diff_bench.py``'s
   generator), and one snapshot per ``--changes`` share changed from it (upgrades, downgrades,
   added, removed, extra builds kept).
2. The management API app (``make_api_app``, as ``mirror serve`` runs it) on a local port in a
   background thread; requests with urllib from the main thread (connection set-up included).
3. Per share: ``cold``: the server's PackageSet cache cleared before each request (both blobs
   read from SQLite and decompressed: the first diff after a sync); ``warm``: the two sets and
   the computed diff in the server's caches (every later page of the same diff); ``csv``: warm,
   ``&format=csv``. The whole diff is one page (``limit=10000``).
   Median and best of ``--repeat`` requests each.

Targets (issue 5): 5% changed, through the API, <= 200 ms; 0.1% changed clearly cheaper.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from diff_bench import change, snapshot  # noqa: E402

from mirror.config import load  # noqa: E402
from mirror.diff import Row  # noqa: E402
from mirror.diffs import clear_cache  # noqa: E402
from mirror.model import EntryKind, ManifestEntry, PackageKey, RootRecord, utcnow  # noqa: E402
from mirror.store import NewSnapshot, Store  # noqa: E402
from mirror.web.api import make_api_app  # noqa: E402
from tests.helpers import app_in_thread  # noqa: E402

TARGET_MS = 200.0


def seed(store: Store, rows: list[Row], tag: str) -> str:
    entries = [ManifestEntry(f"Packages/{i:06d}/{n}-{v}.{a}.rpm",
                             hashlib.sha256(f"{tag}/{n}/{a}/{v}".encode()).hexdigest(), 1000,
                             EntryKind.PACKAGE, PackageKey(n, a, v)) for i, (n, a, v) in enumerate(rows)]
    root = RootRecord(name="repomd", sha256=hashlib.sha256(tag.encode()).hexdigest(), date=utcnow(),
                      valid_until=None)
    return store.commit_snapshot(NewSnapshot(repo="big", signed_by="upstream", plan_key="bench", roots=[root],
                                             entries=entries), "dev")


def timed_get(url: str) -> tuple[float, bytes]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as r:
        body = r.read()
    return (time.perf_counter() - start) * 1000, body


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packages", type=int, default=60_000)
    ap.add_argument("--changes", type=float, nargs="+", default=[0.05, 0.001])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from fixtures.keys import make_key

    work = Path(tempfile.mkdtemp(prefix="diff-api-bench-"))
    key = make_key(work / "gnupg", "Bench <bench@example.org>")
    keyring = key.write_public(work / "archive.asc")
    config = work / "mirror.toml"
    config.write_text(f"""
[storage]
root = "{work / 'var'}"

[[repos]]
name = "big"
type = "rpm"
url = "http://127.0.0.1:1/"
keyring = "{keyring}"
""")
    settings = load(config)
    store = Store(settings.storage.root / "state.db")
    base = snapshot(args.packages, 1)
    start = time.perf_counter()
    base_id = seed(store, base, "base")
    changed = {share: seed(store, change(base, share, 100 + k), f"c{k}")
               for k, share in enumerate(args.changes)}
    took = time.perf_counter() - start
    print(f"seeded {1 + len(changed)} snapshots of ~{args.packages} packages in {took:.1f} s")
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    results: dict[str, Any] = {"packages": args.packages, "python": sys.version.split()[0], "runs": []}
    with app_in_thread(make_api_app(settings, store)) as url:
        api = f"{url}/api/v1/repos/big/diff?limit=10000&from={base_id}&to="  # one page: the whole diff
        for share, snap in changed.items():
            timed_get(api + snap)  # warm-up (imports, statement cache)
            figures: dict[str, Any] = {"share": share}
            kinds = (("cold", "", True), ("warm", "", False), ("csv", "&format=csv", False))
            for label, suffix, cold in kinds:
                samples = []
                for _ in range(args.repeat):
                    if cold:
                        clear_cache()
                    ms, _body = timed_get(api + snap + suffix)
                    samples.append(ms)
                figures[label] = {"median_ms": round(statistics.median(samples), 1),
                                  "best_ms": round(min(samples), 1)}
            doc = json.loads(timed_get(api + snap)[1])
            figures["summary"] = doc["summary"]
            results["runs"].append(figures)
            print(f"{share * 100:g}% changed {doc['summary']}: cold median {figures['cold']['median_ms']} ms "
                  f"(best {figures['cold']['best_ms']}), warm median {figures['warm']['median_ms']} ms "
                  f"(best {figures['warm']['best_ms']}), csv warm median {figures['csv']['median_ms']} ms")
    store.close()

    runs = {r["share"]: r for r in results["runs"]}
    verdicts = []
    if 0.05 in runs:
        ok = runs[0.05]["cold"]["median_ms"] <= TARGET_MS
        verdicts.append(("5% changed, cold, <= 200 ms", ok))
    if 0.05 in runs and 0.001 in runs:
        for label in ("cold", "warm"):
            ratio = runs[0.001][label]["median_ms"] / runs[0.05][label]["median_ms"]
            results[f"ratio_{label}_0.1%_over_5%"] = round(ratio, 3)
            print(f"ratio 0.1% / 5% ({label}): {ratio:.2f}")
        # cold requests also read and decompress both blobs (a fixed cost, once per snapshot pair
        # and server): the cost that follows the size of the change is the warm one
        ratio = results["ratio_warm_0.1%_over_5%"]
        verdicts.append((f"0.1% clearly cheaper than 5% (warm ratio {ratio:.2f} <= 0.5)", ratio <= 0.5))
    for what, ok in verdicts:
        print(f"{'PASS' if ok else 'MISS'}  {what}")
    results["verdicts"] = {w: ok for w, ok in verdicts}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
