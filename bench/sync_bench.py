"""Benchmark: `mirror sync` of a generated upstream, against baselines measured in the same run.

    .venv/bin/python bench/sync_bench.py [--packages 2000] [--size 100000] [--workdir DIR] [--rounds 3]

This is a measurement, not a test: it prints figures as ratios against the baselines, a
pass/fail per target, and writes everything as JSON to ``<workdir>/sync_bench.json`` (exit 0
even when a target is missed; 2 when it cannot measure). `make bench` installs nginx and aptly.

1. Upstream: ``--packages`` real signed .debs of about ``--size`` bytes each (suite "stable",
   component main, amd64, InRelease + Release.gpg, by-hash, xz/gz indices only), signed with a
   throwaway key; built once and cached under ``<workdir>/upstream/``, checked and read once
   (warm page cache) before measuring.
2. nginx serves it on a free loopback port (2 workers, sendfile, no access log); it is stopped
   at the end, also on errors, Ctrl-C and SIGTERM.
3. Baselines, timed in this run:
   - raw limit: one ``curl --parallel --parallel-max 10`` process fetching every package URL
     (a ``--config`` file of url/output pairs), then SHA-256 of every file with Python's
     ``hashlib.file_digest`` (OpenSSL; one thread), each checked against the Packages index;
     limit time = curl wall + hashing wall;
   - aptly: ``aptly mirror update`` (after an untimed ``mirror create``) with its own config and
     ``downloadConcurrency`` 10, verifying the InRelease signature with gpgv against a keyring
     file holding only the throwaway key (``-keyring``, not ``-ignore-signatures``); then its
     no-op second update.
4. mirror: ``mirror -c CFG sync --no-progress`` as a subprocess into a fresh storage root
   (``max_parallel_downloads = 10``): wall time including interpreter start, peak RSS (from
   ``/usr/bin/time -v``, else ``os.wait4``); after the last round the no-op resync five times.

The three initial syncs run ``--rounds`` times with the order rotated, each phase starting from
the same state (the previous phase's files moved aside, then ``sync``; deleted after the rounds:
see ``harness.PhaseDirs.reset``); medians are reported.

Targets: limit/mirror >= 0.8; mirror/aptly < 1.0; no-op resync <= 0.5 s; peak RSS <= 150 MB.
"""

from __future__ import annotations

import json
import lzma
import os
import re
import shlex
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))

from bench import harness  # noqa: E402 (needs the checkout on sys.path)
from bench.harness import (  # noqa: E402
    MB,
    BenchError,
    Figure,
    PhaseDirs,
    Run,
    bench_main,
    cached_upstream,
    figure_dicts,
    fmt_all,
    gnu_time,
    kill_agent,
    limit_results,
    mirror_command,
    nginx_serving,
    print_figures,
    require_tools,
    run,
    run_rounds,
    run_with_rss,
    say,
    sync_bench_args,
    timed,
)

#: Bump when the generated upstream changes shape, to rebuild cached ones.
UPSTREAM_FORMAT = 1
SUITE = "stable"
PARALLEL = 10
NOOP_RUNS = 5
MARKER = ".sync_bench"

TARGET_LIMIT_RATIO = 0.8  # limit_time / mirror_time >= this
TARGET_APTLY_RATIO = 1.0  # mirror_time / aptly_time < this
TARGET_NOOP_S = 0.5  # no-op resync wall (median and max) <= this
TARGET_RSS_MB = 150.0  # peak RSS of the initial sync <= this


# --------------------------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tools(harness.Tools):
    aptly: str


def find_tools(mirror_cli: str | None = None) -> Tools:
    found = require_tools(("nginx", "aptly", "curl", "gpg", "gpgv", "dpkg-deb"),
                          "`make bench` installs them (nginx, aptly; the rest with `make install`), "
                          "or: apt-get install -y nginx aptly curl gpg gpgv dpkg-dev")
    return Tools(nginx=found["nginx"], curl=found["curl"], mirror=mirror_command(mirror_cli),
                 time=gnu_time(), aptly=found["aptly"])


# --------------------------------------------------------------------------------------------
# Upstream (built once, cached under the workdir)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upstream:
    root: Path  # holds dists/ and pool/
    keyring_armored: Path  # for mirror
    keyring_binary: Path  # for aptly (gpgv --keyring)
    fingerprint: str
    packages: list[tuple[str, int, str]]  # (Filename, Size, SHA256) from the Packages index

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size, _ in self.packages)


def read_packages_index(root: Path) -> list[tuple[str, int, str]]:
    """(Filename, Size, SHA256) of every stanza of the amd64 Packages.xz."""
    index = root / "dists" / SUITE / "main" / "binary-amd64" / "Packages.xz"
    text = lzma.decompress(index.read_bytes()).decode()
    out: list[tuple[str, int, str]] = []
    for stanza in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if line and not line[0].isspace())
        if fields:
            out.append((fields["Filename"], int(fields["Size"]), fields["SHA256"]))
    return out


def build_upstream(workdir: Path, packages: int, size: int) -> Upstream:
    base = workdir / "upstream" / f"{packages}x{size}"

    def build(base: Path) -> str:
        from fixtures.apt_repo import AptRepo, DebPackage
        from fixtures.keys import make_key

        home = base / "gnupg"
        key = make_key(home, "Bench Archive <bench@example.org>")
        try:
            repo = AptRepo(base / "www", key, suite=SUITE)
            repo.add(*(DebPackage(name=f"pkg{i:05d}", version="1.0-1", payload_size=size)
                       for i in range(packages)))
            repo.publish(keep_plain_on_disk=False)
            key.write_public(base / "keyring.asc", armor=True)
            key.write_public(base / "keyring.gpg", armor=False)
        finally:
            kill_agent(home)
        return key.fingerprint

    meta = cached_upstream(base, {"format": UPSTREAM_FORMAT, "packages": packages, "size": size}, build,
                           what=f"{packages} packages x {size} bytes")
    root = base / "www"
    return Upstream(root=root, keyring_armored=base / "keyring.asc", keyring_binary=base / "keyring.gpg",
                    fingerprint=str(meta["fingerprint"]), packages=read_packages_index(root))


# --------------------------------------------------------------------------------------------
# Measurements. Every timed phase starts the same way: the outputs of the phase before are
# deleted and everything is flushed (harness.PhaseDirs.reset).
# --------------------------------------------------------------------------------------------


def warm_up(up: Upstream) -> None:
    harness.warm_up(up.root, up.packages, "its index")


def measure_limit(tools: Tools, dirs: PhaseDirs, url: str, up: Upstream) -> dict[str, Any]:
    """One curl --parallel process fetching every package, then sha256 of every file; total wall."""
    return harness.measure_limit(tools.curl, dirs.make(dirs.path("limit")), url,
                                 [(filename, sha) for filename, _size, sha in up.packages], PARALLEL)


def measure_aptly(tools: Tools, dirs: PhaseDirs, url: str, up: Upstream) -> dict[str, Any]:
    """`aptly mirror create` (untimed), `mirror update` (timed), then its no-op second update."""
    adir = dirs.make(dirs.path("aptly"))
    gnupg = adir / "gnupg"  # an empty GNUPGHOME: gpgv's default trustedkeys.gpg is never the user's
    gnupg.mkdir(parents=True, mode=0o700)
    config = adir / "aptly.conf"
    config.write_text(json.dumps({
        "rootDir": str(adir / "root"),
        "downloadConcurrency": PARALLEL,
        "architectures": ["amd64"],
        "dependencyFollowSuggests": False,
        "dependencyFollowRecommends": False,
        "dependencyFollowAllVariants": False,
        "dependencyFollowSource": False,
        "gpgDisableSign": True,
        "gpgDisableVerify": False,
        "gpgProvider": "gpg",
        "downloadSourcePackages": False,
        "skipLegacyPool": True,
        "FileSystemPublishEndpoints": {},
        "S3PublishEndpoints": {},
        "SwiftPublishEndpoints": {},
    }, indent=2) + "\n")
    env = {**os.environ, "GNUPGHOME": str(gnupg)}
    keyring = f"-keyring={up.keyring_binary}"
    base = [tools.aptly, f"-config={config}"]
    create = [*base, "mirror", "create", keyring, "-architectures=amd64", "bench", f"{url}/", SUITE, "main"]
    run(create, what="aptly mirror create", env=env)
    update = [*base, "mirror", "update", keyring, "bench"]
    os.sync()
    first, cpu, proc = timed(update, what="aptly mirror update", env=env)
    output = proc.stdout + proc.stderr
    (adir / "update.log").write_text(output)
    if "Good signature" not in output:
        raise BenchError(f"aptly did not report a good signature (see {adir / 'update.log'})")
    stored = sum(1 for _ in (adir / "root" / "pool").rglob("*.deb"))
    if stored != len(up.packages):
        raise BenchError(f"aptly stored {stored} packages, expected {len(up.packages)}")
    os.sync()
    noop, _, _ = timed(update, what="aptly mirror update (no-op)", env=env)
    return {"create_command": shlex.join(create), "command": shlex.join(update),
            "update_s": first, "cpu_s": cpu, "noop_s": noop}


MIRROR_CONF = """\
# written by bench/sync_bench.py
tiers = ["dev", "test", "uat", "prod"]

[storage]
root = "{root}"

[sync]
max_parallel_downloads = {parallel}

[[repos]]
name = "bench"
type = "deb"
url = "{url}/"
suites = ["{suite}"]
components = ["main"]
architectures = ["amd64"]
keyring = "{keyring}"
fingerprints = ["{fingerprint}"]
"""

def measure_mirror(tools: Tools, dirs: PhaseDirs, url: str, up: Upstream, *,
                   noop_runs: int) -> dict[str, Any]:
    """`mirror sync` into a fresh storage root, then `noop_runs` no-op resyncs."""
    mdir = dirs.make(dirs.path("mirror"))
    config = mdir / "mirror.toml"
    config.write_text(MIRROR_CONF.format(root=mdir / "var", parallel=PARALLEL, url=url, suite=SUITE,
                                         keyring=up.keyring_armored, fingerprint=up.fingerprint))
    cmd = [*tools.mirror, "-c", str(config), "sync", "--no-progress"]
    wall, cpu, rss, out = run_with_rss(tools.time, cmd, what="mirror sync")
    if not re.fullmatch(r"bench: \d{8}T\d{6}Z\s*", out):
        raise BenchError(f"mirror sync did not make a snapshot: {out.strip()!r}")
    if noop_runs:
        os.sync()
    noops: list[float] = []
    for _ in range(noop_runs):
        t, _cpu, _rss, out = run_with_rss(tools.time, cmd, what="mirror sync (no-op)")
        if out.strip() != "bench: unchanged":
            raise BenchError(f"mirror resync was not a no-op: {out.strip()!r}")
        noops.append(t)
    return {"command": shlex.join(cmd), "sync_s": wall, "cpu_s": cpu, "peak_rss_mb": rss, "noop_s": noops}


PHASES = ("limit", "aptly", "mirror")


def measure(tools: Tools, workdir: Path, url: str, up: Upstream, rounds: int) -> dict[str, Any]:
    """`rounds` rounds of the three phases, the order rotated each round (every phase runs first,
    second and third equally often when rounds is a multiple of 3); the no-op resyncs run once,
    after the last round's mirror sync."""
    dirs = PhaseDirs(workdir, PHASES, marker=MARKER, writer="bench/sync_bench.py")

    def measure_phase(phase: str, r: int) -> dict[str, Any]:
        if phase == "limit":
            res = measure_limit(tools, dirs, url, up)
            say(f"  limit   {res['total_s']:6.2f} s  (curl {res['fetch_s']:.2f} + sha256 "
                f"{res['hash_s']:.2f}; CPU {res['cpu_s']:.2f} s)")
        elif phase == "aptly":
            res = measure_aptly(tools, dirs, url, up)
            say(f"  aptly   {res['update_s']:6.2f} s  (CPU {res['cpu_s']:.2f} s; "
                f"no-op update {res['noop_s']:.2f} s)")
        else:
            res = measure_mirror(tools, dirs, url, up, noop_runs=NOOP_RUNS if r == rounds - 1 else 0)
            noop = f", no-op {fmt_all(res['noop_s'])} s" if res["noop_s"] else ""
            say(f"  mirror  {res['sync_s']:6.2f} s  (CPU {res['cpu_s']:.2f} s; peak RSS "
                f"{res['peak_rss_mb']:.0f} MB{noop})")
        return res

    per_round = run_rounds(dirs, rounds, measure_phase)
    limit, aptly, mirror = per_round["limit"], per_round["aptly"], per_round["mirror"]
    noops = [t for m in mirror for t in m["noop_s"]]
    return {
        "limit": limit_results(limit),
        "aptly": {"create_command": aptly[0]["create_command"], "command": aptly[0]["command"],
                  "signature": "verified: gpgv against a keyring file with only the throwaway key (-keyring)",
                  "download_concurrency": PARALLEL,
                  "update_s": [x["update_s"] for x in aptly], "cpu_s": [x["cpu_s"] for x in aptly],
                  "noop_s": [x["noop_s"] for x in aptly]},
        "mirror": {"command": mirror[0]["command"],
                   "rss_source": "/usr/bin/time -v" if tools.time else "os.wait4 rusage",
                   "sync_s": [x["sync_s"] for x in mirror], "cpu_s": [x["cpu_s"] for x in mirror],
                   "peak_rss_mb": [x["peak_rss_mb"] for x in mirror], "noop_s": noops},
    }


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def figures(results: dict[str, Any]) -> list[dict[str, Any]]:
    med = statistics.median
    limit_s, aptly_s = med(results["limit"]["total_s"]), med(results["aptly"]["update_s"])
    mirror_s = med(results["mirror"]["sync_s"])
    noops = results["mirror"]["noop_s"]
    rss = max(results["mirror"]["peak_rss_mb"])
    rows: list[Figure] = [
        ("initial sync: limit_time / mirror_time", limit_s / mirror_s, "x", f">= {TARGET_LIMIT_RATIO}",
         limit_s / mirror_s >= TARGET_LIMIT_RATIO),
        ("initial sync: mirror_time / aptly_time", mirror_s / aptly_s, "x", f"< {TARGET_APTLY_RATIO}",
         mirror_s / aptly_s < TARGET_APTLY_RATIO),
        (f"no-op resync, median of {len(noops)}", med(noops), "s", f"<= {TARGET_NOOP_S}",
         med(noops) <= TARGET_NOOP_S),
        (f"no-op resync, max of {len(noops)}", max(noops), "s", f"<= {TARGET_NOOP_S}",
         max(noops) <= TARGET_NOOP_S),
        ("peak RSS of the initial sync (max)", rss, "MB", f"<= {TARGET_RSS_MB:.0f}", rss <= TARGET_RSS_MB),
    ]
    return figure_dicts(rows)


def report(results: dict[str, Any]) -> None:
    limit, aptly, mirror = results["limit"], results["aptly"], results["mirror"]
    med = statistics.median
    mb = results["upstream"]["bytes"] / MB
    say("")
    say(f"upstream: {results['upstream']['packages']} packages, {mb:.1f} MB, served by nginx "
        f"({results['nginx']['workers']} workers); {results['machine']}; load average "
        f"{results['load_average_at_start']:.2f} at start, {results['load_average_at_end']:.2f} at end")
    head = f"median of {results['rounds']} rounds"
    say(f"  {head:<21} {'WALL':>7}  {'RATE':>9}  {'CPU':>7}  all walls, s (CPU = user + sys)")
    rows_in = [("raw limit", limit["total_s"], limit["cpu_s"],
                f"curl {fmt_all(limit['fetch_s'])} + sha256 {fmt_all(limit['hash_s'])}"),
               ("aptly", aptly["update_s"], aptly["cpu_s"], "mirror update"),
               ("mirror", mirror["sync_s"], mirror["cpu_s"], "sync, incl. CLI start")]
    for name, walls, cpus, note in rows_in:
        say(f"  {name:<21} {med(walls):6.2f}s  {mb / med(walls):4.0f} MB/s  {med(cpus):6.2f}s  "
            f"{fmt_all(walls)} ({note})")
    say(f"  no-op:     mirror {fmt_all(mirror['noop_s'])} s; "
        f"aptly mirror update {fmt_all(aptly['noop_s'])} s")
    say("")
    width = print_figures(results["figures"])
    say(f"{'  (aptly no-op update, median)':<{width}}  {med(aptly['noop_s']):>6.2f} s  reference")
    say("")
    say("commands:")
    say(f"  benchmark: {results['command']}")
    say(f"  limit:     {limit['command']}  (then sha256: {limit['hash']})")
    say(f"  aptly:     {aptly['command']}  (signature {aptly['signature'].split(':')[0]})")
    say(f"  mirror:    {mirror['command']}  (peak RSS from {mirror['rss_source']})")


def main(argv: Sequence[str] | None = None) -> int:
    args = sync_bench_args(__doc__, argv, packages="packages", workdir=CHECKOUT / "bench" / "out",
                           phases="three", mirror_cli=True)

    def bench(run: Run) -> dict[str, Any]:
        tools = find_tools(args.mirror_cli)
        workdir = run.lock(args.workdir, "sync_bench")
        up = build_upstream(workdir, args.packages, args.size)
        warm_up(up)
        harness.byte_compile(CHECKOUT / "mirror")
        results = run.results({"packages": len(up.packages), "bytes": up.total_bytes, "path": str(up.root)},
                              args.rounds, PARALLEL)
        with nginx_serving(tools.nginx, workdir, up.root) as url:
            results["nginx"] = {"url": url, "workers": 2}
            results.update(measure(tools, workdir, url, up, args.rounds))
        return results

    return bench_main("sync_bench", bench, figures, report)


if __name__ == "__main__":
    sys.exit(main())
