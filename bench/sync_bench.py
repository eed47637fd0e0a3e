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
the same state (the previous phase's files deleted, then ``sync``); medians are reported.

Targets: limit/mirror >= 0.8; mirror/aptly < 1.0; no-op resync <= 0.5 s; peak RSS <= 150 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import lzma
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))

#: Bump when the generated upstream changes shape, to rebuild cached ones.
UPSTREAM_FORMAT = 1
SUITE = "stable"
PARALLEL = 10
NOOP_RUNS = 5
MB = 1_000_000
MARKER = ".sync_bench"

TARGET_LIMIT_RATIO = 0.8  # limit_time / mirror_time >= this
TARGET_APTLY_RATIO = 1.0  # mirror_time / aptly_time < this
TARGET_NOOP_S = 0.5  # no-op resync wall (median and max) <= this
TARGET_RSS_MB = 150.0  # peak RSS of the initial sync <= this


class BenchError(Exception):
    """A failure that ends the benchmark with a one-line message (exit status 2)."""


# --------------------------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------------------------


def find_tool(name: str) -> str | None:
    """`name` on PATH, or in the sbin directories (nginx lives in /usr/sbin, often off PATH)."""
    found = shutil.which(name)
    if found:
        return found
    for d in ("/usr/sbin", "/sbin", "/usr/local/sbin"):
        candidate = Path(d) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


@dataclass(frozen=True)
class Tools:
    nginx: str
    aptly: str
    curl: str
    mirror: list[str]  # argv prefix of the mirror CLI
    time: str | None  # GNU time, for peak RSS (None: os.wait4)


def find_tools(mirror_cli: str | None = None) -> Tools:
    found = {name: find_tool(name) for name in ("nginx", "aptly", "curl", "gpg", "gpgv", "dpkg-deb")}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise BenchError(
            f"missing tools: {', '.join(missing)}. `make bench` installs them (nginx, aptly; the rest "
            f"with `make install`), or: apt-get install -y nginx aptly curl gpg gpgv dpkg-dev")
    cli = Path(sys.executable).parent / "mirror"
    mirror = [str(cli)] if cli.is_file() else [sys.executable, "-m", "mirror.cli"]
    if mirror_cli:
        mirror = shlex.split(mirror_cli)
    gnu_time = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
    return Tools(nginx=str(found["nginx"]), aptly=str(found["aptly"]), curl=str(found["curl"]),
                 mirror=mirror, time=gnu_time)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(cmd: Sequence[str], *, what: str, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `cmd` to completion; a non-zero exit is a BenchError with the tail of its output."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, env=env, cwd=cwd, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise BenchError(f"{what} failed (exit {proc.returncode}): {shlex.join(cmd)}\n{tail}")
    return proc


def children_cpu() -> float:
    """User + system CPU seconds of all waited-for children (and theirs) so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmd: Sequence[str], *, what: str, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """(wall seconds, CPU seconds of the command and its children, the finished process)."""
    cpu = children_cpu()
    start = time.perf_counter()
    proc = run(cmd, what=what, env=env, cwd=cwd)
    return time.perf_counter() - start, children_cpu() - cpu, proc


@contextlib.contextmanager
def workdir_lock(workdir: Path) -> Iterator[None]:
    """One benchmark at a time per workdir (each phase deletes the others' outputs)."""
    with (workdir / ".lock").open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BenchError(f"another sync_bench run is using {workdir}; wait for it or pass "
                             f"--workdir") from None
        yield


def say(text: str) -> None:
    print(text, flush=True)


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


def kill_agent(home: Path) -> None:
    """Stop the gpg-agent that signing started for this throwaway home."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
                       capture_output=True, check=False, timeout=10)


def build_upstream(workdir: Path, packages: int, size: int) -> Upstream:
    from fixtures.apt_repo import AptRepo, DebPackage
    from fixtures.keys import make_key

    base = workdir / "upstream" / f"{packages}x{size}"
    marker = base / "complete.json"
    params = {"format": UPSTREAM_FORMAT, "packages": packages, "size": size}
    meta: dict[str, Any] | None = None
    if marker.is_file():
        with contextlib.suppress(ValueError, OSError):
            meta = json.loads(marker.read_text())
    if meta is None or meta.get("params") != params:
        if base.exists():
            shutil.rmtree(base)
        base.mkdir(parents=True)
        say(f"building upstream: {packages} packages x {size} bytes under {base} (cached for next runs)")
        start = time.perf_counter()
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
        meta = {"params": params, "fingerprint": key.fingerprint,
                "built": datetime.now(UTC).isoformat(timespec="seconds")}
        marker.write_text(json.dumps(meta, indent=2) + "\n")
        say(f"  built in {time.perf_counter() - start:.1f} s")
    else:
        say(f"upstream: reusing {base}")
    root = base / "www"
    return Upstream(root=root, keyring_armored=base / "keyring.asc", keyring_binary=base / "keyring.gpg",
                    fingerprint=str(meta["fingerprint"]), packages=read_packages_index(root))


# --------------------------------------------------------------------------------------------
# nginx
# --------------------------------------------------------------------------------------------


NGINX_CONF = """\
# written by bench/sync_bench.py
daemon off;
master_process on;
worker_processes 2;
{user}pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    default_type application/octet-stream;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        autoindex off;
    }}
}}
"""


@contextlib.contextmanager
def nginx_serving(nginx: str, workdir: Path, root: Path) -> Iterator[str]:
    """nginx serving `root` on a free loopback port; yields the base URL; always stopped."""
    ndir = workdir / "nginx"
    (ndir / "tmp").mkdir(parents=True, exist_ok=True)
    last_error = ""
    for _ in range(3):  # the free port may be taken between our probe and nginx's bind
        port = free_port()
        conf = ndir / "nginx.conf"
        # As root, nginx's workers would switch to "nobody", who may not be able to read the tree.
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf.write_text(NGINX_CONF.format(user=user, dir=ndir, port=port, root=root))
        with (ndir / "stderr.log").open("w") as stderr:  # startup errors, before error_log opens
            proc = subprocess.Popen([nginx, "-c", str(conf), "-p", f"{ndir}/"],
                                    stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            deadline = time.monotonic() + 10
            while proc.poll() is None and time.monotonic() < deadline:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.05)
            else:
                last_error = (ndir / "stderr.log").read_text() if proc.poll() is not None else "timeout"
                continue
            say(f"nginx: serving {root} on http://127.0.0.1:{port}/ (pid {proc.pid})")
            yield f"http://127.0.0.1:{port}"
            return
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGQUIT)  # graceful: workers finish, then exit
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    raise BenchError(f"nginx did not start (see {ndir}/error.log): {last_error.strip()}")


# --------------------------------------------------------------------------------------------
# Measurements. Every timed phase starts the same way: the outputs of the phase before are
# deleted and everything is flushed (on a VM, freshly freed page-cache memory is much cheaper
# to reuse than memory never touched, so a phase must not inherit a different state).
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dirs:
    work: Path

    @property
    def limit(self) -> Path:
        return self.work / "limit"

    @property
    def aptly(self) -> Path:
        return self.work / "aptly"

    @property
    def mirror(self) -> Path:
        return self.work / "mirror"

    def make(self, d: Path) -> Path:
        """Create a phase directory, marked as ours (only marked directories are ever deleted)."""
        d.mkdir(parents=True)
        (d / MARKER).write_text("made by bench/sync_bench.py; deleted at its next run\n")
        return d

    def reset(self) -> None:
        """Delete what any phase left, then flush: the common starting point of every phase."""
        for d in (self.limit, self.aptly, self.mirror):
            if d.exists():
                if not (d / MARKER).exists():
                    raise BenchError(f"{d} exists but was not made by this script; move it away or "
                                     f"choose another --workdir")
                shutil.rmtree(d)
        os.sync()


def warm_up(up: Upstream) -> None:
    """Read (and check) every upstream package once, so no phase pays for a cold page cache."""
    bad = [name for name, _size, sha in up.packages
           if file_sha256(up.root / name) != sha]
    if bad:
        raise BenchError(f"the cached upstream is damaged ({len(bad)} packages differ from its index, e.g. "
                         f"{bad[0]}); delete {up.root.parent} to rebuild it")


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def measure_limit(tools: Tools, dirs: Dirs, url: str, up: Upstream) -> dict[str, Any]:
    """One curl --parallel process fetching every package, then sha256 of every file; total wall."""
    out = dirs.make(dirs.limit) / "files"
    out.mkdir()
    config = dirs.limit / "curl.config"
    targets: list[tuple[Path, str]] = []
    lines: list[str] = []
    for filename, _size, sha in up.packages:
        dest = out / Path(filename).name
        lines.append(f'url = "{url}/{filename}"\noutput = "{dest}"\n')
        targets.append((dest, sha))
    config.write_text("".join(lines))
    cmd = [tools.curl, "--parallel", "--parallel-max", str(PARALLEL), "--fail", "--silent",
           "--show-error", "--config", str(config)]
    fetch_s, fetch_cpu, _ = timed(cmd, what="curl (raw limit)")
    cpu = time.process_time()
    start = time.perf_counter()
    bad = sum(1 for dest, sha in targets if file_sha256(dest) != sha)
    hash_s = time.perf_counter() - start
    hash_cpu = time.process_time() - cpu
    if bad:
        raise BenchError(f"raw limit: {bad} downloaded files do not match their SHA256")
    return {"command": shlex.join(cmd), "fetch_s": fetch_s, "hash_s": hash_s, "total_s": fetch_s + hash_s,
            "cpu_s": fetch_cpu + hash_cpu}


def measure_aptly(tools: Tools, dirs: Dirs, url: str, up: Upstream) -> dict[str, Any]:
    """`aptly mirror create` (untimed), `mirror update` (timed), then its no-op second update."""
    adir = dirs.make(dirs.aptly)
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

_MAXRSS_RE = re.compile(r"Maximum resident set size \(kbytes\):\s*(\d+)")


def run_with_rss(tools: Tools, cmd: list[str], *, what: str) -> tuple[float, float, float, str]:
    """(wall seconds, CPU seconds, peak RSS in MB, stdout) of `cmd` run to completion."""
    env = {k: v for k, v in os.environ.items() if k != "MIRROR_CONFIG"}
    if tools.time is not None:
        with tempfile.NamedTemporaryFile("r", prefix="time.", suffix=".txt") as report:
            wall, cpu, proc = timed([tools.time, "-v", "-o", report.name, *cmd], what=what, env=env,
                                    cwd=CHECKOUT)
            match = _MAXRSS_RE.search(Path(report.name).read_text())
        if match is None:
            raise BenchError(f"{tools.time} -v printed no maximum resident set size")
        return wall, cpu, int(match.group(1)) * 1024 / MB, proc.stdout
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=CHECKOUT)
    try:
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage (ru_maxrss in KiB)
    except BaseException:
        child.kill()
        child.wait()
        raise
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    stdout = child.stdout.read().decode() if child.stdout else ""
    stderr = child.stderr.read().decode() if child.stderr else ""
    if child.returncode != 0:
        raise BenchError(f"{what} failed (exit {child.returncode}): {shlex.join(cmd)}\n{stdout}{stderr}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024 / MB, stdout


def measure_mirror(tools: Tools, dirs: Dirs, url: str, up: Upstream, *, noop_runs: int) -> dict[str, Any]:
    """`mirror sync` into a fresh storage root, then `noop_runs` no-op resyncs."""
    config = dirs.make(dirs.mirror) / "mirror.toml"
    config.write_text(MIRROR_CONF.format(root=dirs.mirror / "var", parallel=PARALLEL, url=url, suite=SUITE,
                                         keyring=up.keyring_armored, fingerprint=up.fingerprint))
    cmd = [*tools.mirror, "-c", str(config), "sync", "--no-progress"]
    wall, cpu, rss, out = run_with_rss(tools, cmd, what="mirror sync")
    if not re.fullmatch(r"bench: \d{8}T\d{6}Z\s*", out):
        raise BenchError(f"mirror sync did not make a snapshot: {out.strip()!r}")
    if noop_runs:
        os.sync()
    noops: list[float] = []
    for _ in range(noop_runs):
        t, _cpu, _rss, out = run_with_rss(tools, cmd, what="mirror sync (no-op)")
        if out.strip() != "bench: unchanged":
            raise BenchError(f"mirror resync was not a no-op: {out.strip()!r}")
        noops.append(t)
    return {"command": shlex.join(cmd), "sync_s": wall, "cpu_s": cpu, "peak_rss_mb": rss, "noop_s": noops}


PHASES = ("limit", "aptly", "mirror")


def measure(tools: Tools, workdir: Path, url: str, up: Upstream, rounds: int) -> dict[str, Any]:
    """`rounds` rounds of the three phases, the order rotated each round (every phase runs first,
    second and third equally often when rounds is a multiple of 3); the no-op resyncs run once,
    after the last round's mirror sync."""
    dirs = Dirs(workdir)
    per_round: dict[str, list[dict[str, Any]]] = {p: [] for p in PHASES}
    for r in range(rounds):
        order = PHASES[r % 3:] + PHASES[:r % 3]
        say(f"round {r + 1}/{rounds}: {', '.join(order)}")
        for phase in order:
            dirs.reset()
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
                noop = f", no-op {', '.join(f'{t:.2f}' for t in res['noop_s'])} s" if res["noop_s"] else ""
                say(f"  mirror  {res['sync_s']:6.2f} s  (CPU {res['cpu_s']:.2f} s; peak RSS "
                    f"{res['peak_rss_mb']:.0f} MB{noop})")
            per_round[phase].append(res)
    limit, aptly, mirror = per_round["limit"], per_round["aptly"], per_round["mirror"]
    noops = [t for m in mirror for t in m["noop_s"]]
    return {
        "limit": {"command": limit[0]["command"],
                  "hash": "Python hashlib.file_digest(sha256), one thread, each checked against the index",
                  "total_s": [x["total_s"] for x in limit], "fetch_s": [x["fetch_s"] for x in limit],
                  "hash_s": [x["hash_s"] for x in limit], "cpu_s": [x["cpu_s"] for x in limit]},
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


def fmt_all(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def figures(results: dict[str, Any]) -> list[dict[str, Any]]:
    med = statistics.median
    limit_s, aptly_s = med(results["limit"]["total_s"]), med(results["aptly"]["update_s"])
    mirror_s = med(results["mirror"]["sync_s"])
    noops = results["mirror"]["noop_s"]
    rss = max(results["mirror"]["peak_rss_mb"])
    rows: list[tuple[str, float, str, str, bool]] = [
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
    return [{"figure": f, "value": round(v, 4), "unit": u, "target": t, "ok": ok} for f, v, u, t, ok in rows]


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
    rows = results["figures"]
    width = max(len(f["figure"]) for f in rows)
    say(f"{'FIGURE':<{width}}  {'VALUE':>8}  {'TARGET':<8}  RESULT")
    for f in rows:
        value = f"{f['value']:.0f} MB" if f["unit"] == "MB" else f"{f['value']:.2f} {f['unit']}"
        say(f"{f['figure']:<{width}}  {value:>8}  {f['target']:<8}  {'pass' if f['ok'] else 'FAIL'}")
    say(f"{'  (aptly no-op update, median)':<{width}}  {med(aptly['noop_s']):>6.2f} s  reference")
    say("")
    say("commands:")
    say(f"  benchmark: {results['command']}")
    say(f"  limit:     {limit['command']}  (then sha256: {limit['hash']})")
    say(f"  aptly:     {aptly['command']}  (signature {aptly['signature'].split(':')[0]})")
    say(f"  mirror:    {mirror['command']}  (peak RSS from {mirror['rss_source']})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packages", type=int, default=2000, help="number of packages (default 2000)")
    parser.add_argument("--size", type=int, default=100_000,
                        help="payload bytes per package (default 100000)")
    parser.add_argument("--workdir", type=Path, default=CHECKOUT / "bench" / "out",
                        help="cache and scratch directory (default bench/out/)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of the three initial-sync measurements, order rotated; medians "
                             "are reported (default 3)")
    parser.add_argument("--mirror-cli", metavar="COMMAND",
                        help="the mirror command line to benchmark, e.g. to compare a branch "
                             "(default: this venv's `mirror`, else `python -m mirror.cli`)")
    args = parser.parse_args(argv)
    if args.packages < 1 or args.size < 1 or args.rounds < 1:
        parser.error("--packages, --size and --rounds must be positive")

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally blocks: nginx is stopped

    signal.signal(signal.SIGTERM, on_term)
    command = shlex.join([sys.executable, *sys.argv])
    say(f"command: {command}")
    load = os.getloadavg()[0]
    if load > 0.5:
        say(f"note: load average {load:.2f}: something else is using the CPUs; figures will be noisy")
    workdir: Path = args.workdir.resolve()
    stack = contextlib.ExitStack()
    try:
        tools = find_tools(args.mirror_cli)
        workdir.mkdir(parents=True, exist_ok=True)
        stack.enter_context(workdir_lock(workdir))
        up = build_upstream(workdir, args.packages, args.size)
        warm_up(up)
        results: dict[str, Any] = {
            "command": command,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "load_average_at_start": load,
            "upstream": {"packages": len(up.packages), "bytes": up.total_bytes, "path": str(up.root)},
            "rounds": args.rounds,
            "parallel": PARALLEL,
        }
        with nginx_serving(tools.nginx, workdir, up.root) as url:
            results["nginx"] = {"url": url, "workers": 2}
            results.update(measure(tools, workdir, url, up, args.rounds))
        results["load_average_at_end"] = os.getloadavg()[0]
        results["figures"] = figures(results)
        report(results)
        out = workdir / "sync_bench.json"
        out.write_text(json.dumps(results, indent=2) + "\n")
        say(f"\nfigures written to {out}")
        return 0  # a measurement, not a test: missed targets are reported, not an exit status
    except BenchError as exc:
        print(f"sync_bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sync_bench: interrupted", file=sys.stderr)
        return 130
    finally:
        stack.close()


if __name__ == "__main__":
    sys.exit(main())
