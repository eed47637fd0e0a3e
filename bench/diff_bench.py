"""Benchmark of the pure package diff (mirror.diff): two snapshots of N packages, a share changed.

    .venv/bin/python bench/diff_bench.py                 # 60,000 packages, 5% and 0.1% changed
    .venv/bin/python bench/diff_bench.py --packages 120000 --changes 0.05 0.01 0.001 --json out.json

Snapshots look like a big RPM repo: names of real shapes, x86_64/noarch/i686 arches, EVRs like
``1:3.0.7-25.el9_3``, about 3% of (name, arch) pairs with several builds kept. A change is an
upgrade (70%), a downgrade (5%), an added (10%) or removed (10%) package, or an extra build kept
next to the old one (5%). Every snapshot's strings are distinct objects, as two store queries
give them. Measured, best of --repeat runs, each with cold version caches:

- ``rows``: two lists of (name, arch, version) tuples (what a store query returns) -> Diff;
- ``blob``: two PackageSet blobs (what the store keeps per snapshot) -> from_blob -> Diff:
  what ``GET /diff`` costs on a server that has not seen either snapshot before;
- ``warm``: two PackageSets already in memory (a server's per-snapshot cache) -> Diff;
- ``json``: diff_to_json of the result and json.dumps (the API's serialisation);
- ``sql-rows``: what a naive API would do: both snapshots' package rows out of SQLite (the
  manifest_entries table as mirror.store has it), diff, JSON;
- ``sql-blob``: what the proposed API does: both snapshots' blobs out of SQLite, diff, JSON;
- ``build``: PackageSet of one snapshot from rows, sorted, and its blob (once, at sync time).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mirror import versions
from mirror.diff import PackageSet, Row, diff_rows, diff_to_json

ARCHES = ("x86_64", "x86_64", "x86_64", "noarch", "noarch", "i686")
PREFIXES = ("python3-", "perl-", "lib", "golang-", "rust-", "texlive-", "", "", "", "")
SUFFIXES = ("", "", "", "-devel", "-libs", "-doc", "-common", "-tools")


def _evr(rng: random.Random) -> str:
    epoch = rng.choice(("", "", "", "", "1:", "2:"))
    version = ".".join(str(rng.randint(0, 30)) for _ in range(rng.randint(1, 4)))
    if rng.random() < 0.05:
        version += rng.choice(("~rc1", "^git20240102", "p1", "a"))
    release = f"{rng.randint(1, 400)}.el9" + (f"_{rng.randint(1, 6)}" if rng.random() < 0.4 else "")
    return f"{epoch}{version}-{release}"


def _bump(rng: random.Random, evr: str) -> str:
    head, _, release = evr.rpartition("-")
    number, _, rest = release.partition(".")
    return f"{head}-{int(number) + rng.randint(1, 3)}.{rest}"


def snapshot(n: int, seed: int) -> list[Row]:
    rng = random.Random(seed)
    rows: list[Row] = []
    i = 0
    while len(rows) < n:
        name = f"{rng.choice(PREFIXES)}pkg{i:06d}{rng.choice(SUFFIXES)}"
        i += 1
        arch = rng.choice(ARCHES)
        evr = _evr(rng)
        rows.append((name, arch, evr))
        if rng.random() < 0.03 and len(rows) < n:  # an older build kept
            rows.append((name, arch, _bump(rng, evr)))
    return rows[:n]


def change(rows: list[Row], share: float, seed: int) -> list[Row]:
    rng = random.Random(seed)
    out = list(rows)
    count = max(1, round(len(rows) * share))
    picked = sorted(rng.sample(range(len(out)), count), reverse=True)
    extra: list[Row] = []
    for k, idx in enumerate(picked):
        name, arch, evr = out[idx]
        roll = rng.random()
        if roll < 0.70:
            out[idx] = (name, arch, _bump(rng, evr))
        elif roll < 0.75:
            head, _, release = evr.rpartition("-")
            out[idx] = (name, arch, f"{head}-0.{release}")  # a lower release
        elif roll < 0.85:
            extra.append((f"newpkg{seed}-{k}", rng.choice(ARCHES), _evr(rng)))
        elif roll < 0.95:
            del out[idx]
        else:
            extra.append((name, arch, _bump(rng, evr)))  # new build, old one kept
    return out + extra


def fresh(rows: list[Row]) -> list[Row]:
    """The same rows made of new string objects (no identity shared with another snapshot)."""
    return [(n.encode().decode(), a.encode().decode(), v.encode().decode()) for n, a, v in rows]


def _clear_caches() -> None:
    for f in (versions.rpmvercmp_key, versions.rpm_evr_key, versions.deb_key, versions._verrev_key,
              versions._deb_run, versions._rpm_tokens, versions._deb_pairs):
        f.cache_clear()


def measure(fn: Callable[[], Any], repeat: int) -> tuple[float, list[float], float]:
    """(best wall ms, every wall ms, best CPU ms of this process: less sensitive to a busy host)."""
    walls, cpus = [], []
    for _ in range(repeat):
        _clear_caches()
        gc.collect()
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append((time.perf_counter() - start) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
    return min(walls), walls, min(cpus)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packages", type=int, default=60_000)
    ap.add_argument("--changes", type=float, nargs="+", default=[0.05, 0.001])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    base = snapshot(args.packages, 1)
    before = fresh(base)
    results: dict[str, Any] = {"packages": args.packages, "python": sys.version.split()[0], "runs": []}

    def build() -> bytes:
        return PackageSet(before).to_blob()

    build_ms, _, build_cpu = measure(build, args.repeat)
    blob_before = build()
    print(f"{args.packages} packages; PackageSet from rows + blob: {build_ms:.1f} ms (cpu {build_cpu:.1f}; "
          f"once per snapshot, at sync time); blob {len(blob_before) / 1024:.0f} KiB")
    tmp = tempfile.TemporaryDirectory(prefix="diff-bench-")
    db = sqlite3.connect(Path(tmp.name) / "state.db")
    db.execute("CREATE TABLE manifest_entries (repo TEXT NOT NULL, snapshot TEXT NOT NULL, "
               "path TEXT NOT NULL, sha256 TEXT NOT NULL, size BIGINT NOT NULL, kind TEXT NOT NULL, "
               "pkg_name TEXT, pkg_arch TEXT, pkg_version TEXT, PRIMARY KEY (repo, snapshot, path))")
    db.execute("CREATE TABLE snapshot_packages (repo TEXT NOT NULL, snapshot TEXT NOT NULL, "
               "packages BLOB NOT NULL, PRIMARY KEY (repo, snapshot))")

    def store(snapshot: str, rows: list[Row]) -> None:
        db.executemany(
            "INSERT INTO manifest_entries VALUES (?, ?, ?, ?, ?, 'package', ?, ?, ?)",
            [("bench", snapshot, f"Packages/{n[0]}/{n}-{v}.{a}.rpm#{i}", f"{i:064x}", 1000, n, a, v)
             for i, (n, a, v) in enumerate(rows)])
        db.execute("INSERT INTO snapshot_packages VALUES ('bench', ?, ?)",
                   (snapshot, PackageSet(rows).to_blob()))
        db.commit()

    def sql_rows(snapshot: str) -> list[Row]:
        return db.execute("SELECT pkg_name, pkg_arch, pkg_version FROM manifest_entries WHERE repo = 'bench' "
                          "AND snapshot = ? AND pkg_name IS NOT NULL", (snapshot,)).fetchall()

    def sql_blob(snapshot: str) -> PackageSet:
        (blob,) = db.execute("SELECT packages FROM snapshot_packages WHERE repo = 'bench' AND snapshot = ?",
                             (snapshot,)).fetchone()
        return PackageSet.from_blob(blob)

    def as_json(d: Any) -> str:
        return json.dumps(diff_to_json(d, "bench", ("prod", "A"), ("uat", "B")))

    store("A", before)
    for share in args.changes:
        after = fresh(change(base, share, 2))
        snap = f"B{share}"
        store(snap, after)
        blob_after = PackageSet(after).to_blob()
        ps_before, ps_after = PackageSet.from_blob(blob_before), PackageSet.from_blob(blob_after)
        diff = diff_rows("rpm", before, after)
        s = diff.summary()
        runs = {
            "rows": lambda a=after: diff_rows("rpm", before, a),
            "blob": lambda a=blob_after: diff_rows("rpm", PackageSet.from_blob(blob_before),
                                                   PackageSet.from_blob(a)),
            "warm": lambda a=ps_after, b=ps_before: diff_rows("rpm", b, a),
            "json": lambda d=diff: as_json(d),
            "sql-rows": lambda b=snap: as_json(diff_rows("rpm", sql_rows("A"), sql_rows(b))),
            "sql-blob": lambda b=snap: as_json(diff_rows("rpm", sql_blob("A"), sql_blob(b))),
        }
        print(f"{share:.3%} changed ({s['upgraded']} up, {s['downgraded']} down, {s['added']} added, "
              f"{s['removed']} removed):")
        run: dict[str, Any] = {"share": share, "summary": s}
        for label, fn in runs.items():
            best, walls, cpu = measure(fn, args.repeat)
            print(f"  {label:8} {best:6.1f} ms  (median {statistics.median(walls):6.1f}, cpu {cpu:6.1f})")
            run[label] = {"best_ms": round(best, 2), "median_ms": round(statistics.median(walls), 2),
                          "cpu_ms": round(cpu, 2)}
        results["runs"].append(run)
    db.close()
    tmp.cleanup()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
