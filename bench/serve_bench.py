"""Benchmark: the repo port of `mirror serve` against nginx serving the same files, and `mirror
verify` against `sha256sum` over the same pool files.

    .venv/bin/python bench/serve_bench.py [--seconds 10] [--rounds 2] [--threads 1]
                                          [--small-connections 50] [--big-connections 8]
                                          [--verify-files 200] [--verify-size 5000000]
                                          [--repo-workers auto] [--workdir bench/out/serve]

A measurement, not a test: prints figures and ratios with a pass/fail per target and writes them
as JSON to ``<workdir>/serve_bench.json`` (exit 0 even when a target is missed; 2 when it cannot
measure).

1. A storage root with one snapshot of repo "bench" that tier dev serves: a 100 KB and a 50 MB
   package of random bytes, plus ``--verify-files`` files of ``--verify-size`` bytes for the
   verify run; written into the pool and committed through ``Store.commit_snapshot`` as a sync
   would. A throwaway key makes the configuration loadable.
2. ``mirror -c CFG serve`` as a subprocess (both ports, the connection guard with its defaults,
   ``repo_workers = "auto"``: one repo worker per CPU, as nginx's ``worker_processes auto``; as
   deployed), and nginx (``bench/harness.py``: 2 workers, sendfile, no access log) serving a
   tree of hard links to the same pool files under the same URL paths, so both read the same
   page-cache pages.  Both are checked to serve identical bytes first.
3. ``wrk --latency -t THREADS -c N -d SECONDS`` against each server for each file, alternating
   the order over ``--rounds`` rounds; medians of requests/s and of the p99 latency; errors (non-2xx,
   socket errors) are reported and fail the row.  The mirror process's CPU use during its runs
   is shown too (the main process and its repo workers; nginx has two workers).
4. ``mirror -c CFG verify --json`` (wall time of the whole command, interpreter start included)
   and ``sha256sum`` over the same pool files, warm page cache, alternating over three rounds,
   medians; throughput = bytes / seconds.

Targets: requests/s >= 0.5 x nginx's and p99 <= 2 x nginx's, for both files; verify throughput
>= 0.8 x sha256sum's.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))

from bench.harness import (  # noqa: E402 (needs the checkout on sys.path)
    BenchError,
    announce,
    find_tool,
    free_port,
    kill_agent,
    nginx_serving,
    raise_on_sigterm,
    say,
    workdir_lock,
)

REPO = "bench"
SMALL = ("pool/main/s/small/small_1.0_amd64.deb", 100_000)
BIG = ("pool/main/b/big/big_1.0_amd64.deb", 50_000_000)
MARKER = ".serve_bench"
WRITER = "bench/serve_bench.py"


# --------------------------------------------------------------------------------------------
# The storage root
# --------------------------------------------------------------------------------------------


def _random_file(path: Path, size: int) -> str:
    """`size` random (incompressible) bytes; their SHA-256."""
    digest = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        left = size
        while left:
            piece = os.urandom(min(left, 1 << 20))
            f.write(piece)
            digest.update(piece)
            left -= len(piece)
    return digest.hexdigest()


def build_storage(workdir: Path, verify_files: int, verify_size: int, cap: int,
                  repo_workers: str = "auto") -> dict[str, Any]:
    """Storage root, key, configuration and nginx tree under `workdir`/run (rebuilt each run)."""
    from fixtures.keys import make_key
    from mirror.model import EntryKind, ManifestEntry, PackageKey, RootRecord, utcnow
    from mirror.pool import Pool
    from mirror.store import NewSnapshot, Store

    run = workdir / "run"
    if run.exists():
        if not (run / MARKER).exists():
            raise BenchError(f"{run} exists but was not made by {WRITER}; move it away or use --workdir")
        shutil.rmtree(run)
    run.mkdir(parents=True)
    (run / MARKER).write_text(f"made by {WRITER}; deleted at its next run\n")
    say(f"building the storage root under {run}")
    home = run / "gnupg"
    key = make_key(home, "Bench Archive <bench@example.org>")
    kill_agent(home)
    keyring = key.write_public(run / "keyring.asc")
    storage = run / "storage"
    pool = Pool(storage)
    files: list[tuple[str, int]] = [SMALL, BIG]
    files += [(f"pool/main/v/verify/verify{i:04d}_1.0_amd64.deb", verify_size) for i in range(verify_files)]
    entries = []
    for i, (path, size) in enumerate(files):
        scratch = storage / "tmp" / f"bench-{i}"
        digest = _random_file(scratch, size)
        target = pool.path_for(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(scratch, target)
        name = Path(path).name.split("_")[0]
        entries.append(ManifestEntry(path, digest, size, EntryKind.PACKAGE, PackageKey(name, "amd64", "1.0")))
    release = b"Suite: stable\n"
    release_digest = hashlib.sha256(release).hexdigest()
    blob = pool.path_for(release_digest)
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(release)
    entries.append(ManifestEntry("dists/stable/InRelease", release_digest, len(release), EntryKind.ROOT))
    store = Store(storage / "state.db")
    try:
        root = RootRecord(name="stable", sha256=release_digest, date=utcnow(), valid_until=None)
        new = NewSnapshot(repo=REPO, signed_by="upstream", plan_key="bench", roots=[root],
                          entries=sorted(entries, key=lambda e: e.path))
        snapshot = store.commit_snapshot(new, "dev")
    finally:
        store.close()
    www = run / "www"
    for entry in entries:  # nginx: the same URL paths, hard links to the same pool files
        link = www / "dev" / REPO / entry.path
        link.parent.mkdir(parents=True, exist_ok=True)
        os.link(pool.path_for(entry.sha256), link)
    repo_port, api_port = free_port(), free_port()
    config = run / "mirror.toml"
    config.write_text(f"""# written by {WRITER}
[storage]
root = "storage"

[server]
bind = "127.0.0.1"
repo_port = {repo_port}
api_port = {api_port}
max_connections_per_client = {cap}
repo_workers = {repo_workers if repo_workers == "auto" else int(repo_workers)!r}

[[repos]]
name = "{REPO}"
type = "deb"
url = "http://127.0.0.1:9/"
suites = ["stable"]
keyring = "{keyring}"
""")
    pool_files = [pool.path_for(e.sha256) for e in entries]
    return {"run": run, "config": config, "www": www, "snapshot": snapshot, "repo_port": repo_port,
            "api_port": api_port, "pool_files": pool_files,
            "pool_bytes": sum(size for _, size in files) + len(release),
            "digests": {e.path: e.sha256 for e in entries}}


def mirror_command() -> list[str]:
    exe = CHECKOUT / ".venv" / "bin" / "mirror"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "mirror.cli"]


@contextlib.contextmanager
def mirror_serving(config: Path, repo_port: int,
                   api_port: int) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    log = config.parent / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "MIRROR_CONFIG"}
    with log.open("wb") as out:
        proc = subprocess.Popen([*mirror_command(), "-c", str(config), "serve"], stdout=out,
                                stderr=subprocess.STDOUT, cwd=CHECKOUT, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"mirror serve did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
        url = f"http://127.0.0.1:{repo_port}"
        say(f"mirror: serving on {url}/ (pid {proc.pid})")
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def fetch_sha256(url: str) -> str:
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=60) as r:
        while chunk := r.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# wrk
# --------------------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_RPS_RE = re.compile(r"^Requests/sec:\s+([0-9.]+)", re.M)
_P99_RE = re.compile(r"^\s+99%\s+([0-9.]+)(us|ms|s|m)\s*$", re.M)
_P50_RE = re.compile(r"^\s+50%\s+([0-9.]+)(us|ms|s|m)\s*$", re.M)
_NON2XX_RE = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_RE = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_TRANSFER_RE = re.compile(r"^Transfer/sec:\s+([0-9.]+)([KMG]?B)", re.M)
_TRANSFER_UNITS = {"B": 1e-6, "KB": 1024 / 1e6, "MB": 1024**2 / 1e6, "GB": 1024**3 / 1e6}


def _cpu_seconds(pid: int) -> float:
    """CPU time of `pid` and its running children (the repo workers), in seconds."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def run_wrk(wrk: str, url: str, *, threads: int, connections: int, seconds: float,
            pid: int | None = None) -> dict[str, Any]:
    cmd = [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s", "--timeout", "30s",
           "--latency", url]
    cpu = _cpu_seconds(pid) if pid is not None else 0.0
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchError(f"wrk failed (exit {proc.returncode}): {shlex.join(cmd)}\n"
                         f"{proc.stdout}{proc.stderr}")
    out = proc.stdout
    rps, p99, p50 = _RPS_RE.search(out), _P99_RE.search(out), _P50_RE.search(out)
    if rps is None or p99 is None or p50 is None:
        raise BenchError(f"unexpected wrk output:\n{out}")
    non2xx = int(m.group(1)) if (m := _NON2XX_RE.search(out)) else 0
    sock = [int(v) for v in m.groups()] if (m := _SOCKET_RE.search(out)) else [0, 0, 0, 0]
    transfer = _TRANSFER_RE.search(out)
    result = {"rps": float(rps.group(1)), "p99_ms": float(p99.group(1)) * _UNITS[p99.group(2)],
              "p50_ms": float(p50.group(1)) * _UNITS[p50.group(2)], "non_2xx": non2xx,
              "socket_errors": dict(zip(("connect", "read", "write", "timeout"), sock, strict=True)),
              "mb_per_s": float(transfer.group(1)) * _TRANSFER_UNITS[transfer.group(2)] if transfer else None,
              "command": shlex.join(cmd)}
    if pid is not None:
        result["server_cpu_percent"] = 100 * (_cpu_seconds(pid) - cpu) / wall
    return result


def measure_serving(wrk: str, urls: dict[str, str], pid: int, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, (path, size), connections in (("100KB", SMALL, args.small_connections),
                                              ("50MB", BIG, args.big_connections)):
        runs: dict[str, list[dict[str, Any]]] = {"mirror": [], "nginx": []}
        for r in range(args.rounds):
            order = ("mirror", "nginx") if r % 2 == 0 else ("nginx", "mirror")
            for server in order:
                url = f"{urls[server]}/dev/{REPO}/{path}"
                # a short warm-up (connections, page cache), then the measured run
                run_wrk(wrk, url, threads=args.threads, connections=connections, seconds=1)
                time.sleep(0.5)  # let the warm-up's connections close
                result = run_wrk(wrk, url, threads=args.threads, connections=connections,
                                 seconds=args.seconds, pid=pid if server == "mirror" else None)
                say(f"  {label:>5} {server:<6} round {r + 1}: {result['rps']:9.1f} req/s  "
                    f"p50 {result['p50_ms']:8.2f} ms  p99 {result['p99_ms']:8.2f} ms"
                    + (f"  (mirror CPU {result['server_cpu_percent']:.0f}%)" if server == "mirror" else ""))
                runs[server].append(result)
        row: dict[str, Any] = {"size": size, "connections": connections, "runs": runs}
        for server in runs:
            row[server] = {"rps": statistics.median(x["rps"] for x in runs[server]),
                           "p99_ms": statistics.median(x["p99_ms"] for x in runs[server]),
                           "p50_ms": statistics.median(x["p50_ms"] for x in runs[server]),
                           "errors": sum(x["non_2xx"] + sum(x["socket_errors"].values())
                                         for x in runs[server])}
        row["mirror"]["cpu_percent"] = statistics.median(x["server_cpu_percent"] for x in runs["mirror"])
        row["rps_ratio"] = row["mirror"]["rps"] / row["nginx"]["rps"]
        row["p99_ratio"] = row["mirror"]["p99_ms"] / row["nginx"]["p99_ms"]
        out[label] = row
    return out


# --------------------------------------------------------------------------------------------
# verify
# --------------------------------------------------------------------------------------------


def measure_verify(config: Path, files: Sequence[Path], total: int, sha256sum: str,
                   rounds: int = 3) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "MIRROR_CONFIG"}
    verify_cmd = [*mirror_command(), "-c", str(config), "verify", "--json"]
    sum_cmd = [sha256sum, "--", *map(str, files)]
    subprocess.run(sum_cmd, capture_output=True, check=True)  # warm the page cache
    times: dict[str, list[float]] = {"mirror": [], "sha256sum": []}
    checked = None
    for r in range(rounds):
        for which in (("mirror", "sha256sum") if r % 2 == 0 else ("sha256sum", "mirror")):
            cmd = verify_cmd if which == "mirror" else sum_cmd
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=CHECKOUT, env=env, check=False)
            times[which].append(time.perf_counter() - start)
            if proc.returncode != 0:
                raise BenchError(f"{which} failed (exit {proc.returncode}): {shlex.join(cmd[:6])} ...\n"
                                 f"{proc.stdout[-1500:]}{proc.stderr[-1500:]}")
            if which == "mirror":
                with contextlib.suppress(ValueError):
                    checked = json.loads(proc.stdout).get("checked")
    start = time.perf_counter()
    subprocess.run([*mirror_command(), "--version"], capture_output=True, check=True)
    startup = time.perf_counter() - start
    mirror_s, sum_s = statistics.median(times["mirror"]), statistics.median(times["sha256sum"])
    return {"files": len(files), "bytes": total, "checked": checked, "mirror_s": mirror_s,
            "sha256sum_s": sum_s,
            "mirror_all_s": times["mirror"], "sha256sum_all_s": times["sha256sum"],
            "mirror_mb_per_s": total / mirror_s / 1e6, "sha256sum_mb_per_s": total / sum_s / 1e6,
            "ratio": sum_s / mirror_s, "cli_startup_s": startup,
            "mirror_command": shlex.join(verify_cmd),
            "sha256sum_command": f"{sha256sum} -- <{len(files)} pool files>"}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> None:
    say("\n== serve_bench ==")
    say(f"{results['machine']}; load average {results['load_average_at_start']:.2f} at start, "
        f"{results['load_average_at_end']:.2f} at end")
    say(f"{'file':>6} {'conns':>5} {'mirror req/s':>13} {'nginx req/s':>12} {'ratio':>6} {'target':>7}   "
        f"{'mirror p99':>11} {'nginx p99':>10} {'ratio':>6} {'target':>7}  errors")
    for label in ("100KB", "50MB"):
        row = results["serving"][label]
        m, n = row["mirror"], row["nginx"]
        rps_ok = "ok" if row["rps_ratio"] >= 0.5 else "MISSED"
        p99_ok = "ok" if row["p99_ratio"] <= 2.0 else "MISSED"
        say(f"{label:>6} {row['connections']:>5} {m['rps']:>13.1f} {n['rps']:>12.1f} "
            f"{row['rps_ratio']:>6.2f} {'>=0.5 ' + rps_ok:>7}   {m['p99_ms']:>8.2f} ms "
            f"{n['p99_ms']:>7.2f} ms {row['p99_ratio']:>6.2f} {'<=2 ' + p99_ok:>7}  "
            f"{m['errors']}/{n['errors']}")
        say(f"{'':>6} mirror CPU {m['cpu_percent']:.0f}% (main process and repo workers: "
            f"{results['repo_workers']}); "
            f"p50 mirror {m['p50_ms']:.2f} ms, nginx {n['p50_ms']:.2f} ms")
    v = results["verify"]
    ok = "ok" if v["ratio"] >= 0.8 else "MISSED"
    say(f"verify: {v['files']} files, {v['bytes'] / 1e6:.0f} MB: mirror verify {v['mirror_s']:.2f} s "
        f"({v['mirror_mb_per_s']:.0f} MB/s), sha256sum {v['sha256sum_s']:.2f} s "
        f"({v['sha256sum_mb_per_s']:.0f} MB/s): ratio {v['ratio']:.2f} (target >= 0.8: {ok}); "
        f"`mirror --version` alone takes {v['cli_startup_s']:.2f} s")
    say("commands:")
    for label in ("100KB", "50MB"):
        say(f"  {results['serving'][label]['runs']['mirror'][0]['command']}")
    say(f"  {v['mirror_command']}")
    say(f"  {v['sha256sum_command']}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--rounds", type=int, default=2, help="wrk runs per server and file (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--small-connections", type=int, default=50, help="wrk connections, 100 KB file")
    parser.add_argument("--big-connections", type=int, default=8, help="wrk connections, 50 MB file")
    parser.add_argument("--verify-files", type=int, default=200,
                        help="extra pool files for verify (default 200)")
    parser.add_argument("--verify-size", type=int, default=5_000_000,
                        help="bytes per verify file (default 5 MB)")
    parser.add_argument("--repo-workers", default="auto",
                        help='[server] repo_workers for the mirror: a number or "auto" (default: auto)')
    parser.add_argument("--workdir", type=Path, default=CHECKOUT / "bench" / "out" / "serve",
                        help="scratch directory (default bench/out/serve/)")
    args = parser.parse_args(argv)
    if min(args.seconds, args.rounds, args.threads, args.small_connections, args.big_connections) <= 0:
        parser.error("--seconds, --rounds, --threads and the connection counts must be positive")

    raise_on_sigterm()
    command, load = announce()
    tools = {name: find_tool(name) for name in ("wrk", "nginx", "sha256sum")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        print(f"serve_bench: error: missing {', '.join(missing)} (apt-get install -y wrk nginx coreutils)",
              file=sys.stderr)
        return 2
    wrk, nginx, sha256sum = (str(tools[n]) for n in ("wrk", "nginx", "sha256sum"))
    workdir: Path = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    # the per-client cap stays at its default (64) unless wrk needs more: its connections all come
    # from 127.0.0.1, and a warm-up run's closing connections can overlap the next run's
    cap = max(64, 2 * args.small_connections + 2, 2 * args.big_connections + 2)
    try:
        with workdir_lock(workdir, "serve_bench"):
            built = build_storage(workdir, args.verify_files, args.verify_size, cap, args.repo_workers)
            results: dict[str, Any] = {
                "command": command, "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
                "load_average_at_start": load, "max_connections_per_client": cap,
                "repo_workers": args.repo_workers,
                "wrk": {"threads": args.threads, "seconds": args.seconds, "rounds": args.rounds},
            }
            serving = mirror_serving(built["config"], built["repo_port"], built["api_port"])
            with serving as (mirror_url, proc), \
                    nginx_serving(nginx, built["run"], built["www"], writer=WRITER) as nginx_url:
                urls = {"mirror": mirror_url, "nginx": nginx_url}
                for path, _size in (SMALL, BIG):
                    for server, base in urls.items():
                        got = fetch_sha256(f"{base}/dev/{REPO}/{path}")
                        if got != built["digests"][path]:
                            raise BenchError(f"{server} serves wrong bytes for {path}")
                say(f"wrk: {args.threads} thread(s), {args.seconds:g} s per run, {args.rounds} rounds")
                results["serving"] = measure_serving(wrk, urls, proc.pid, args)
            say("verify: mirror verify vs sha256sum (warm page cache, 3 rounds)")
            results["verify"] = measure_verify(built["config"], built["pool_files"], built["pool_bytes"],
                                               sha256sum)
            results["load_average_at_end"] = os.getloadavg()[0]
            report(results)
            out = workdir / "serve_bench.json"
            out.write_text(json.dumps(results, indent=2, default=str) + "\n")
            say(f"\nfigures written to {out}")
            return 0
    except BenchError as exc:
        print(f"serve_bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("serve_bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
