"""Benchmark: `mirror sync` of a generated RPM repository, against baselines measured in the same run.

    .venv/bin/python bench/rpm_sync_bench.py [--packages 2000] [--size 100000] [--workdir DIR] [--rounds 3]

A measurement, not a test: it prints figures as ratios against the baselines, a pass/fail per
target (or "report" for figures without one), and writes everything as JSON to
``<workdir>/rpm_sync_bench.json`` (exit 0 even when a target is missed; 2 when it cannot measure).

1. Upstream: ``--packages`` real .rpm files built by ``rpmbuild`` and signed by ``rpmsign``
   (``fixtures.rpm_repo``; ``pkg00000-1.0-1.x86_64.rpm``..., ``--size`` bytes of incompressible
   payload each), repodata by createrepo_c (``RpmRepo.publish()``), ``repomd.xml.asc`` by a
   throwaway ed25519 key; built once and cached under ``<workdir>/upstream/``, checked and read
   once (warm page cache) before measuring.
2. nginx serves it on a free loopback port (2 workers, sendfile, no access log, a stub_status
   request counter); stopped at the end, also on errors, Ctrl-C and SIGTERM.
3. Timed in this run, ``--rounds`` rounds with the order rotated, each phase starting from the
   same state (the previous phase's files moved aside, then ``sync``; deleted after the rounds:
   see ``harness.PhaseDirs.reset``); medians are reported:
   - raw limit: one ``curl --parallel --parallel-max 10`` process fetching every package, then
     SHA-256 of every file (``hashlib.file_digest``, one thread) checked against primary.xml;
   - mirror, twice: ``mirror -c CFG sync --no-progress`` as a subprocess into a fresh storage
     root (``max_parallel_downloads = 10``, the repo pinned to the throwaway key), with
     ``package_signatures = "require"`` and with ``"ignore"``; wall time including interpreter
     start, peak RSS;
   - ``dnf reposync --gpgcheck --download-metadata`` (dnf-plugins-core) in an isolated dnf
     (``fixtures.dnf_client.DnfClient``: own dnf.conf, ``reposdir``/``cachedir``/``varsdir``
     set on the command line, an ``--installroot`` whose rpm database holds only the throwaway
     key, imported with ``rpmkeys --root``; ``gpgcheck=1``, ``repo_gpgcheck=1``,
     ``max_parallel_downloads=10``; only the reposync plugin loaded), then its no-op second run
     (same command, same cache and download dir).
4. After the last round, mirror's no-op resync (``"require"`` store) five times: median and max
   wall time and the requests nginx served for each.
5. The CPU the checks cost (``measure_checks``): the in-process signature check of every
   package, one thread, bytes in memory; MD5 and SHA-256 of every file; and from them the best
   limit/mirror ratio a "require" sync could reach here: a no-op resync's work first (nothing is
   known before the signed root), then the rest of an "ignore" sync and the checks spread
   perfectly over the CPUs; again with that rest as cheap as the raw limit's CPU (curl and
   hashing), and again without the MD5 part.

Targets: limit/mirror >= 0.8 with signatures required and ignored; the rest is reported (the
APT benchmark's targets, no-op <= 0.5 s and peak RSS <= 150 MB, are shown for reference).
"""

from __future__ import annotations

import gzip
import os
import re
import shlex
import statistics
import sys
import time
import xml.etree.ElementTree as ET
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
    measure_limit,
    mirror_command,
    nginx_requests,
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

NAME = "rpm_sync_bench"
WRITER = "bench/rpm_sync_bench.py"
MARKER = ".rpm_sync_bench"
#: Bump when the generated upstream changes shape, to rebuild cached ones.
UPSTREAM_FORMAT = 1
REPO = "bench"
PARALLEL = 10
NOOP_RUNS = 5
RELEASEVER = "9"

TARGET_LIMIT_RATIO = 0.8  # limit_time / mirror_time >= this (signatures required and ignored)
APT_TARGET_NOOP_S = 0.5  # reference only: the APT benchmark's no-op target
APT_TARGET_RSS_MB = 150.0  # reference only: the APT benchmark's peak RSS target

PHASES = ("limit", "mirror-require", "mirror-ignore", "reposync")
SIGNATURES = {"mirror-require": "require", "mirror-ignore": "ignore"}

NS = {"repo": "http://linux.duke.edu/metadata/repo", "common": "http://linux.duke.edu/metadata/common"}


# --------------------------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tools(harness.Tools):
    dnf: str
    rpmkeys: str


REPOSYNC_PLUGIN = Path("/usr/lib/python3/dist-packages/dnf-plugins/reposync.py")


def find_tools() -> Tools:
    found = require_tools(("nginx", "curl", "dnf", "rpmkeys", "rpmbuild", "rpmsign", "gpg"),
                          "apt-get install -y nginx curl dnf rpm gpg dnf-plugins-core")
    if not REPOSYNC_PLUGIN.is_file():
        raise BenchError(f"dnf reposync is missing ({REPOSYNC_PLUGIN}): apt-get install -y dnf-plugins-core")
    return Tools(nginx=found["nginx"], curl=found["curl"], mirror=mirror_command(), time=gnu_time(),
                 dnf=found["dnf"], rpmkeys=found["rpmkeys"])


# --------------------------------------------------------------------------------------------
# Upstream (built once, cached under the workdir)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upstream:
    root: Path  # holds repodata/ and Packages/
    keyring: Path  # armored public key (mirror's keyring, dnf's gpgkey=, rpmkeys --import)
    fingerprint: str
    packages: list[tuple[str, int, str]]  # (location href, size, sha256) from primary.xml
    records: int  # <data> records of repomd.xml

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size, _ in self.packages)


def read_primary(root: Path) -> tuple[list[tuple[str, int, str]], int]:
    """(href, size, sha256) of every package of primary.xml, and the number of repomd records."""
    repomd = ET.parse(root / "repodata" / "repomd.xml").getroot()
    data = repomd.findall("repo:data", NS)
    href = next(d.find("repo:location", NS) for d in data if d.get("type") == "primary")
    assert href is not None
    out: list[tuple[str, int, str]] = []
    with gzip.open(root / str(href.get("href"))) as f:
        for _event, elem in ET.iterparse(f):
            if elem.tag != f"{{{NS['common']}}}package":
                continue
            checksum, location, size = (elem.find(f"common:{tag}", NS)
                                        for tag in ("checksum", "location", "size"))
            if checksum is None or location is None or size is None or checksum.get("type") != "sha256":
                raise BenchError("primary.xml: a package without sha256 checksum, location or size")
            out.append((str(location.get("href")), int(str(size.get("package"))), str(checksum.text)))
            elem.clear()
    return out, len(data)


def build_upstream(workdir: Path, packages: int, size: int) -> Upstream:
    base = workdir / "upstream" / f"{packages}x{size}"

    def build(base: Path) -> str:
        from fixtures.keys import make_key
        from fixtures.rpm_repo import RpmPackage, RpmRepo

        home = base / "gnupg"
        key = make_key(home, "Bench RPM Archive <bench-rpm@example.org>")
        try:
            repo = RpmRepo(base / "www", key)
            repo.add(*(RpmPackage(f"pkg{i:05d}", "1.0", payload_size=size) for i in range(packages)))
            repo.publish(revision="1")
            key.write_public(base / "keyring.asc", armor=True)
        finally:
            kill_agent(home)
        return key.fingerprint

    meta = cached_upstream(base, {"format": UPSTREAM_FORMAT, "packages": packages, "size": size}, build,
                           what=f"{packages} RPMs x {size} bytes (unsigned builds are also cached by "
                                "fixtures.rpm_repo)")
    root = base / "www"
    pkgs, records = read_primary(root)
    if len(pkgs) != packages:
        raise BenchError(f"the cached upstream lists {len(pkgs)} packages, expected {packages}; "
                         f"delete {base}")
    return Upstream(root=root, keyring=base / "keyring.asc", fingerprint=str(meta["fingerprint"]),
                    packages=pkgs, records=records)


def warm_up(up: Upstream) -> None:
    harness.warm_up(up.root, up.packages, "primary.xml")


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


class Requests:
    """Requests nginx served during a block (its stub_status counter, outside the timing)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.count = 0

    def __enter__(self) -> Requests:
        self._start = nginx_requests(self.url)
        return self

    def __exit__(self, *exc: object) -> None:
        self.count = nginx_requests(self.url) - self._start - 1


MIRROR_CONF = """\
# written by bench/rpm_sync_bench.py
tiers = ["dev", "test", "uat", "prod"]

[storage]
root = "{root}"

[sync]
max_parallel_downloads = {parallel}

[[repos]]
name = "{repo}"
type = "rpm"
url = "{url}/"
keyring = "{keyring}"
fingerprints = ["{fingerprint}"]
package_signatures = "{signatures}"
"""


def measure_mirror(tools: Tools, dirs: PhaseDirs, phase: str, url: str, up: Upstream, *,
                   noop_runs: int) -> dict[str, Any]:
    """`mirror sync` into a fresh storage root, then `noop_runs` no-op resyncs."""
    mdir = dirs.make(dirs.path(phase))
    config = mdir / "mirror.toml"
    config.write_text(MIRROR_CONF.format(root=mdir / "var", parallel=PARALLEL, repo=REPO, url=url,
                                         keyring=up.keyring, fingerprint=up.fingerprint,
                                         signatures=SIGNATURES[phase]))
    cmd = [*tools.mirror, "-c", str(config), "sync", "--no-progress"]
    with Requests(url) as requests:
        wall, cpu, rss, out = run_with_rss(tools.time, cmd, what=f"mirror sync ({phase})")
    if not re.fullmatch(rf"{REPO}: \d{{8}}T\d{{6}}Z\s*", out):
        raise BenchError(f"mirror sync did not make a snapshot: {out.strip()!r}")
    if noop_runs:
        os.sync()
    noops: list[float] = []
    noop_cpus: list[float] = []
    noop_requests: list[int] = []
    for _ in range(noop_runs):
        with Requests(url) as noop_req:
            t, noop_cpu, _rss, out = run_with_rss(tools.time, cmd, what="mirror sync (no-op)")
        if out.strip() != f"{REPO}: unchanged":
            raise BenchError(f"mirror resync was not a no-op: {out.strip()!r}")
        noops.append(t)
        noop_cpus.append(noop_cpu)
        noop_requests.append(noop_req.count)
    return {"command": shlex.join(cmd), "sync_s": wall, "cpu_s": cpu, "peak_rss_mb": rss,
            "requests": requests.count, "noop_s": noops, "noop_cpu_s": noop_cpus,
            "noop_requests": noop_requests}


def measure_reposync(tools: Tools, dirs: PhaseDirs, url: str, up: Upstream) -> dict[str, Any]:
    """`dnf reposync --gpgcheck` in an isolated dnf (timed), then its no-op second run."""
    from fixtures.dnf_client import DnfClient

    rdir = dirs.make(dirs.path("reposync"))
    # DnfClient's sandbox (own dnf.conf, dirs on the command line, an installroot), with plugins
    # allowed in dnf.conf: reposync is one. Only that plugin is loaded (see `cmd`).
    dnf = DnfClient(rdir / "dnf", releasever=RELEASEVER,
                    options={"plugins": "1", "max_parallel_downloads": str(PARALLEL)})
    dnf.configure(REPO, f"{url}/", up.keyring)  # gpgcheck=1, repo_gpgcheck=1, gpgkey=file://...
    env = dnf.env()
    # reposync --gpgcheck checks with the installroot's rpm database and never imports keys.
    run([tools.rpmkeys, "--root", str(dnf.installroot), "--import", str(up.keyring)],
        what="rpmkeys --import (dnf installroot)", env=env)
    args = [a for a in dnf.base_args() if a not in ("--noplugins", "--disableplugin=*")]
    args[0] = tools.dnf
    cmd = [*args, "--disableplugin=*", "--enableplugin=reposync", "reposync", f"--repoid={REPO}",
           f"--download-path={dnf.downloads}", "--download-metadata", "--gpgcheck"]
    stored = dnf.downloads / REPO

    def check(proc_output: str, what: str) -> None:
        (rdir / f"{what}.log").write_text(proc_output)
        if "Removing" in proc_output:
            raise BenchError(f"dnf reposync removed packages that failed the gpg check (see {rdir})")
        rpms = sum(1 for _ in stored.rglob("*.rpm"))
        if rpms != len(up.packages):
            raise BenchError(f"dnf reposync stored {rpms} packages, expected {len(up.packages)}")

    os.sync()
    try:
        with Requests(url) as requests:
            first, cpu, proc = timed(cmd, what="dnf reposync", env=env, cwd=rdir)
        check(proc.stdout + proc.stderr, "reposync")
        os.sync()
        with Requests(url) as noop_req:
            noop, noop_cpu, proc = timed(cmd, what="dnf reposync (no-op)", env=env, cwd=rdir)
        check(proc.stdout + proc.stderr, "reposync-noop")
    finally:
        # repo_gpgcheck imports the repo key into <cachedir>/<repo>-<hash>/pubring through gpgme,
        # which starts a gpg-agent there; stop it before the directory is deleted.
        for home in dnf.cachedir.glob("*/pubring"):
            kill_agent(home)
    return {"command": shlex.join(cmd), "sync_s": first, "cpu_s": cpu, "requests": requests.count,
            "noop_s": noop, "noop_cpu_s": noop_cpu, "noop_requests": noop_req.count}


def measure_checks(up: Upstream) -> dict[str, Any]:
    """The CPU a "require" sync must add for these packages: the in-process signature check
    (mirror.trust.rpmpackage, what a sync runs on each package's bytes as they land) of every
    package, one thread, the bytes already in memory; and, for its biggest parts, MD5 and SHA-256
    over each whole file (rpm checks an MD5 over header and payload, a SHA-256 over the payload)."""
    import hashlib

    from mirror.trust.rpmpackage import InProcessCheck

    check = InProcessCheck(up.keyring.read_bytes(), [up.fingerprint])
    spent = {"check": 0.0, "md5": 0.0, "sha256": 0.0}
    for href, _size, _sha in up.packages:
        data = (up.root / href).read_bytes()
        start = time.process_time()
        verdict = check.check_data(data)
        spent["check"] += time.process_time() - start
        if verdict is not None:
            raise BenchError(f"the in-process check did not accept {href}: {verdict}")
        for algo in ("md5", "sha256"):
            start = time.process_time()
            hashlib.new(algo, data).digest()
            spent[algo] += time.process_time() - start
    return {"what": "mirror.trust.rpmpackage.InProcessCheck.check_data of every package, one thread, "
                    "bytes in memory; MD5 and SHA-256 of every whole file the same way",
            "check_cpu_s": spent["check"], "md5_cpu_s": spent["md5"], "sha256_cpu_s": spent["sha256"],
            "cpus": len(os.sched_getaffinity(0))}


def measure(tools: Tools, workdir: Path, url: str, up: Upstream, rounds: int) -> dict[str, Any]:
    """`rounds` rounds of the four phases, the order rotated each round; the mirror no-op
    resyncs run once, after the last round's `require` sync."""
    dirs = PhaseDirs(workdir, PHASES, marker=MARKER, writer=WRITER)

    def measure_phase(phase: str, r: int) -> dict[str, Any]:
        if phase == "limit":
            with Requests(url) as requests:
                res = measure_limit(tools.curl, dirs.make(dirs.path("limit")), url,
                                    [(href, sha) for href, _size, sha in up.packages], PARALLEL)
            res["requests"] = requests.count
            say(f"  limit           {res['total_s']:6.2f} s  (curl {res['fetch_s']:.2f} + sha256 "
                f"{res['hash_s']:.2f}; CPU {res['cpu_s']:.2f} s)")
        elif phase == "reposync":
            res = measure_reposync(tools, dirs, url, up)
            say(f"  reposync        {res['sync_s']:6.2f} s  (CPU {res['cpu_s']:.2f} s; "
                f"no-op --gpgcheck {res['noop_s']:.2f} s, CPU {res['noop_cpu_s']:.2f} s)")
        else:
            noop_runs = NOOP_RUNS if r == rounds - 1 and phase == "mirror-require" else 0
            res = measure_mirror(tools, dirs, phase, url, up, noop_runs=noop_runs)
            noop = f", no-op {fmt_all(res['noop_s'])} s" if res["noop_s"] else ""
            say(f"  {phase:<15} {res['sync_s']:6.2f} s  (CPU {res['cpu_s']:.2f} s; peak RSS "
                f"{res['peak_rss_mb']:.0f} MB{noop})")
        return res

    per_round = run_rounds(dirs, rounds, measure_phase)
    limit, reposync = per_round["limit"], per_round["reposync"]
    out: dict[str, Any] = {
        "limit": {**limit_results(limit), "requests": limit[0]["requests"]},
        "reposync": {"command": reposync[0]["command"],
                     "signatures": "--gpgcheck: every package checked by dnf against the installroot's "
                                   "rpmdb (the throwaway key only); repomd.xml.asc by repo_gpgcheck=1",
                     "max_parallel_downloads": PARALLEL,
                     "sync_s": [x["sync_s"] for x in reposync], "cpu_s": [x["cpu_s"] for x in reposync],
                     "requests": reposync[0]["requests"],
                     "noop_s": [x["noop_s"] for x in reposync],
                     "noop_cpu_s": [x["noop_cpu_s"] for x in reposync],
                     "noop_requests": reposync[0]["noop_requests"]},
        "checks": measure_checks(up),
    }
    for phase in SIGNATURES:
        runs = per_round[phase]
        out[phase] = {"command": runs[0]["command"], "package_signatures": SIGNATURES[phase],
                      "rss_source": "/usr/bin/time -v" if tools.time else "os.wait4 rusage",
                      "sync_s": [x["sync_s"] for x in runs], "cpu_s": [x["cpu_s"] for x in runs],
                      "peak_rss_mb": [x["peak_rss_mb"] for x in runs], "requests": runs[0]["requests"],
                      "noop_s": [t for x in runs for t in x["noop_s"]],
                      "noop_cpu_s": [t for x in runs for t in x["noop_cpu_s"]],
                      "noop_requests": [n for x in runs for n in x["noop_requests"]]}
    return out


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def figures(results: dict[str, Any]) -> list[dict[str, Any]]:
    med = statistics.median
    limit_s = med(results["limit"]["total_s"])
    req, ign, rs = results["mirror-require"], results["mirror-ignore"], results["reposync"]
    req_s, ign_s, rs_s = med(req["sync_s"]), med(ign["sync_s"]), med(rs["sync_s"])
    noops = req["noop_s"]
    rss = max(req["peak_rss_mb"] + ign["peak_rss_mb"])
    checks = results["checks"]

    def best(rest_cpu: float, check_cpu: float) -> float:
        """The best limit/mirror a "require" sync could reach here. What a no-op resync does (start,
        fetch and verify the signed root) comes first, alone: no package is known before; then the
        rest of the work (`rest_cpu`) and the checks, spread perfectly over the CPUs."""
        return limit_s / (med(noops) + (rest_cpu + check_cpu) / checks["cpus"])

    rest_cpu = med(ign["cpu_s"]) - med(req["noop_cpu_s"])  # an "ignore" sync's, after that start
    limit_cpu, check_cpu, cpus = med(results["limit"]["cpu_s"]), checks["check_cpu_s"], checks["cpus"]

    rows: list[Figure] = [
        ('limit_time / mirror_time, signatures "require"', limit_s / req_s, "x", f">= {TARGET_LIMIT_RATIO}",
         limit_s / req_s >= TARGET_LIMIT_RATIO),
        ('limit_time / mirror_time, signatures "ignore"', limit_s / ign_s, "x", f">= {TARGET_LIMIT_RATIO}",
         limit_s / ign_s >= TARGET_LIMIT_RATIO),
        ("signature check: require - ignore (median walls)", req_s - ign_s, "s", "report", None),
        ("signature check CPU, every package, one thread", checks["check_cpu_s"], "s", "report", None),
        ("  MD5 of every package (rpm's header+payload MD5)", checks["md5_cpu_s"], "s", "report", None),
        ("  SHA-256 of every package (rpm's payload digest)", checks["sha256_cpu_s"], "s", "report", None),
        (f'best possible limit / mirror, "require", {cpus} CPUs', best(rest_cpu, check_cpu), "x", "report",
         None),
        ("  the same, downloads as cheap as the limit's CPU", best(limit_cpu, check_cpu), "x", "report",
         None),
        ("  the same, MD5 not checked", best(rest_cpu, check_cpu - checks["md5_cpu_s"]), "x", "report", None),
        ("mirror_time (require) / reposync_time (--gpgcheck)", req_s / rs_s, "x", "report", None),
        ("reposync_time / limit_time", rs_s / limit_s, "x", "report", None),
        (f"mirror no-op resync, median of {len(noops)}", med(noops), "s", "report", None),
        (f"mirror no-op resync, max of {len(noops)}", max(noops), "s", "report", None),
        ("mirror no-op resync, HTTP requests (max)", max(req["noop_requests"]), "", "report", None),
        ("reposync no-op --gpgcheck, median", med(rs["noop_s"]), "s", "report", None),
        ("peak RSS of the initial syncs (max)", rss, "MB", "report", None),
    ]
    return figure_dicts(rows)


def report(results: dict[str, Any]) -> None:
    limit, rs = results["limit"], results["reposync"]
    req, ign = results["mirror-require"], results["mirror-ignore"]
    med = statistics.median
    mb = results["upstream"]["bytes"] / MB
    say("")
    say(f"upstream: {results['upstream']['packages']} RPMs, {mb:.1f} MB, {results['upstream']['records']} "
        f"repomd records, served by nginx ({results['nginx']['workers']} workers); {results['machine']}; "
        f"load average {results['load_average_at_start']:.2f} at start, "
        f"{results['load_average_at_end']:.2f} at end")
    head = f"median of {results['rounds']} rounds"
    say(f"  {head:<24} {'WALL':>7}  {'RATE':>9}  {'CPU':>7}  {'REQS':>5}  all walls, s (CPU = user + sys)")
    rows_in = [("raw limit", limit["total_s"], limit["cpu_s"], limit["requests"],
                f"curl {fmt_all(limit['fetch_s'])} + sha256 {fmt_all(limit['hash_s'])}"),
               ('mirror, "require"', req["sync_s"], req["cpu_s"], req["requests"], "sync, incl. CLI start"),
               ('mirror, "ignore"', ign["sync_s"], ign["cpu_s"], ign["requests"], "sync, incl. CLI start"),
               ("dnf reposync --gpgcheck", rs["sync_s"], rs["cpu_s"], rs["requests"], "incl. metadata")]
    for name, walls, cpus, requests, note in rows_in:
        say(f"  {name:<24} {med(walls):6.2f}s  {mb / med(walls):4.0f} MB/s  {med(cpus):6.2f}s  "
            f"{requests:>5}  {fmt_all(walls)} ({note})")
    say(f"  no-op:     mirror {fmt_all(req['noop_s'])} s ({', '.join(map(str, req['noop_requests']))} "
        f"requests); dnf reposync --gpgcheck {fmt_all(rs['noop_s'])} s (CPU {fmt_all(rs['noop_cpu_s'])} s; "
        f"{rs['noop_requests']} requests)")
    say("")
    print_figures(results["figures"])
    say(f"  (for reference, the APT benchmark's targets: no-op resync <= {APT_TARGET_NOOP_S} s, "
        f"peak RSS <= {APT_TARGET_RSS_MB:.0f} MB)")
    say("")
    say("commands:")
    say(f"  benchmark: {results['command']}")
    say(f"  limit:     {limit['command']}  (then sha256: {limit['hash']})")
    say(f"  mirror:    {req['command']}  (package_signatures = \"require\"; peak RSS from "
        f"{req['rss_source']})")
    say(f"             {ign['command']}  (package_signatures = \"ignore\")")
    say(f"  reposync:  {rs['command']}")


def main(argv: Sequence[str] | None = None) -> int:
    args = sync_bench_args(__doc__, argv, packages="RPMs", workdir=CHECKOUT / "bench" / "out" / "rpm",
                           phases="four")

    def bench(run: Run) -> dict[str, Any]:
        tools = find_tools()
        workdir = run.lock(args.workdir, NAME)
        up = build_upstream(workdir, args.packages, args.size)
        warm_up(up)
        harness.byte_compile(CHECKOUT / "mirror")
        results = run.results({"packages": len(up.packages), "bytes": up.total_bytes, "records": up.records,
                               "path": str(up.root)}, args.rounds, PARALLEL)
        with nginx_serving(tools.nginx, workdir, up.root, writer=WRITER, status=True) as url:
            results["nginx"] = {"url": url, "workers": 2}
            results.update(measure(tools, workdir, url, up, args.rounds))
        return results

    return bench_main(NAME, bench, figures, report)


if __name__ == "__main__":
    sys.exit(main())
