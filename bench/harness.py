"""Shared machinery of the sync benchmarks (`bench/sync_bench.py`, `bench/rpm_sync_bench.py`).

Tools on PATH (and in the sbin directories), timed subprocesses (wall and CPU of the children),
a per-workdir lock, nginx on a free loopback port (always stopped), phase directories that are
only ever deleted when this code made them, the raw limit (one ``curl --parallel`` process, then
SHA-256 of every file), peak RSS of a command, and the rotation of phases across rounds; and
the frame both benchmarks' main() share: their options, tools, phase rounds, figures table,
the JSON results' header and the exit statuses (`bench_main`).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

CHECKOUT = Path(__file__).resolve().parent.parent
MB = 1_000_000
#: Where the optional nginx request counter is served (see `nginx_serving(status=True)`).
STATUS_PATH = "/.bench-nginx-status"


class BenchError(Exception):
    """A failure that ends the benchmark with a one-line message (exit status 2)."""


def say(text: str) -> None:
    print(text, flush=True)


def raise_on_sigterm() -> None:
    """SIGTERM unwinds like SystemExit, through the finally blocks (nginx is stopped)."""

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)


# --------------------------------------------------------------------------------------------
# Tools and processes
# --------------------------------------------------------------------------------------------


def byte_compile(package: Path) -> None:
    """Byte-compile `package` (as pip does on install), so that a measured CLI start does not
    include compiling it: a shell with PYTHONDONTWRITEBYTECODE=1 would otherwise compile every
    module at every start (about 45 ms of each `mirror` run here)."""
    import compileall

    if not compileall.compile_dir(str(package), quiet=1):
        raise BenchError(f"cannot byte-compile {package}")


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


def gnu_time() -> str | None:
    """GNU time, for peak RSS (None: `run_with_rss` falls back to os.wait4)."""
    return "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


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


_MAXRSS_RE = re.compile(r"Maximum resident set size \(kbytes\):\s*(\d+)")


def run_with_rss(time_tool: str | None, cmd: list[str], *, what: str) -> tuple[float, float, float, str]:
    """(wall seconds, CPU seconds, peak RSS in MB, stdout) of `cmd` run to completion in the
    checkout, without MIRROR_CONFIG. `time_tool` is GNU time (`gnu_time()`), else os.wait4 is
    used. Either way the peak is that of the largest single process of the tree (the kernel's
    ru_maxrss of the child, which covers its waited-for children), not a sum."""
    env = {k: v for k, v in os.environ.items() if k != "MIRROR_CONFIG"}
    if time_tool is not None:
        with tempfile.NamedTemporaryFile("r", prefix="time.", suffix=".txt") as report:
            wall, cpu, proc = timed([time_tool, "-v", "-o", report.name, *cmd], what=what, env=env,
                                    cwd=CHECKOUT)
            match = _MAXRSS_RE.search(Path(report.name).read_text())
        if match is None:
            raise BenchError(f"{time_tool} -v printed no maximum resident set size")
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


@contextlib.contextmanager
def workdir_lock(workdir: Path, name: str) -> Iterator[None]:
    """One benchmark at a time per workdir (each phase deletes the others' outputs)."""
    with (workdir / ".lock").open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BenchError(f"another {name} run is using {workdir}; wait for it or pass "
                             f"--workdir") from None
        yield


def kill_agent(home: Path) -> None:
    """Stop the gpg-agent that signing started for this throwaway home."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
                       capture_output=True, check=False, timeout=10)


# --------------------------------------------------------------------------------------------
# nginx
# --------------------------------------------------------------------------------------------


NGINX_CONF = """\
# written by {writer}
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
{extra}    }}
}}
"""

_STATUS_LOCATION = f"        location = {STATUS_PATH} {{ stub_status; }}\n"


@contextlib.contextmanager
def nginx_serving(nginx: str, workdir: Path, root: Path, *, writer: str = "bench/sync_bench.py",
                  status: bool = False) -> Iterator[str]:
    """nginx serving `root` on a free loopback port; yields the base URL; always stopped.
    `status`: also serve nginx's request counter at STATUS_PATH (see `nginx_requests`)."""
    ndir = workdir / "nginx"
    (ndir / "tmp").mkdir(parents=True, exist_ok=True)
    last_error = ""
    for _ in range(3):  # the free port may be taken between our probe and nginx's bind
        port = free_port()
        conf = ndir / "nginx.conf"
        # As root, nginx's workers would switch to "nobody", who may not be able to read the tree.
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf.write_text(NGINX_CONF.format(writer=writer, user=user, dir=ndir, port=port, root=root,
                                          extra=_STATUS_LOCATION if status else ""))
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


_REQUESTS_RE = re.compile(r"^\s*\d+\s+\d+\s+(\d+)\s*$", re.M)


def nginx_requests(url: str) -> int:
    """Requests nginx has served so far, this one included (stub_status; needs status=True).
    Requests made between two calls: second - first - 1."""
    with urllib.request.urlopen(f"{url}{STATUS_PATH}", timeout=10) as resp:
        text = resp.read().decode()
    match = _REQUESTS_RE.search(text)
    if match is None:
        raise BenchError(f"unexpected nginx stub_status output: {text!r}")
    return int(match.group(1))


# --------------------------------------------------------------------------------------------
# Phase directories. Every timed phase starts the same way: the outputs of the phase before are
# deleted and everything is flushed (on a VM, freshly freed page-cache memory is much cheaper
# to reuse than memory never touched, so a phase must not inherit a different state).
# --------------------------------------------------------------------------------------------


class PhaseDirs:
    """`work`/<phase> for each phase name, marked with `marker` when made here; only marked
    directories are ever deleted."""

    def __init__(self, work: Path, phases: Sequence[str], *, marker: str, writer: str) -> None:
        self.work = work
        self.phases = tuple(phases)
        self.marker = marker
        self.writer = writer

    def path(self, phase: str) -> Path:
        return self.work / phase

    def make(self, d: Path) -> Path:
        """Create a phase directory, marked as ours (only marked directories are ever deleted)."""
        d.mkdir(parents=True)
        (d / self.marker).write_text(f"made by {self.writer}; deleted at its next run\n")
        return d

    @property
    def trash(self) -> Path:
        return self.work / "trash"

    def reset(self) -> None:
        """Move what any phase left aside (into `trash`), then flush: the common starting point
        of every phase. Not deleted here: ext4 without a journal (this VM's root) skips, and
        checks one by one, the inodes freed in the last minute whenever it creates a file, so
        deleting one phase's thousands of files would charge the next phase for them, and most
        the phase that creates the most files. `empty_trash` deletes them after the rounds."""
        for d in map(self.path, self.phases):
            if d.exists():
                if not (d / self.marker).exists():
                    raise BenchError(f"{d} exists but was not made by this script; move it away or "
                                     f"choose another --workdir")
                self.trash.mkdir(exist_ok=True)
                d.rename(self.trash / f"{d.name}.{time.monotonic_ns()}")
        os.sync()

    def empty_trash(self) -> None:
        """Delete what `reset` moved aside (after the measurements; also a killed run's)."""
        if self.trash.is_dir():
            shutil.rmtree(self.trash)


def rotation(phases: Sequence[str], round_index: int) -> tuple[str, ...]:
    """The phase order of round `round_index` (0-based): rotated by one each round, so every
    phase runs in every position equally often when the rounds are a multiple of len(phases)."""
    k = round_index % len(phases)
    return tuple(phases[k:]) + tuple(phases[:k])


# --------------------------------------------------------------------------------------------
# Raw limit
# --------------------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def warm_up(root: Path, packages: Sequence[tuple[str, int, str]], index: str) -> None:
    """Read (and check) every upstream package ((path under `root`, size, sha256), as `index`
    lists them) once, so no phase pays for a cold page cache."""
    bad = [name for name, _size, sha in packages if file_sha256(root / name) != sha]
    if bad:
        raise BenchError(f"the cached upstream is damaged ({len(bad)} packages differ from {index}, e.g. "
                         f"{bad[0]}); delete {root.parent} to rebuild it")


def cached_upstream(base: Path, params: dict[str, Any], build: Callable[[Path], str], *,
                    what: str) -> dict[str, Any]:
    """The generated upstream under `base`, built by `build(base)` (it returns the throwaway
    key's fingerprint) unless `base/complete.json` says one with these `params` is there; its
    metadata (`fingerprint`, `params`, `built`)."""
    marker = base / "complete.json"
    meta: dict[str, Any] | None = None
    if marker.is_file():
        with contextlib.suppress(ValueError, OSError):
            meta = json.loads(marker.read_text())
    if meta is not None and meta.get("params") == params:
        say(f"upstream: reusing {base}")
        return meta
    if base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True)
    say(f"building upstream: {what} under {base} (cached for next runs)")
    start = time.perf_counter()
    fingerprint = build(base)
    meta = {"params": params, "fingerprint": fingerprint,
            "built": datetime.now(UTC).isoformat(timespec="seconds")}
    marker.write_text(json.dumps(meta, indent=2) + "\n")
    say(f"  built in {time.perf_counter() - start:.1f} s")
    return meta


LIMIT_HASH = "Python hashlib.file_digest(sha256), one thread, each checked against the index"


def measure_limit(curl: str, limit_dir: Path, url: str, packages: Sequence[tuple[str, str]],
                  parallel: int) -> dict[str, Any]:
    """One curl --parallel process fetching every package (`packages`: (path under `url`,
    SHA-256)) into `limit_dir`/files, then sha256 of every file; total wall."""
    out = limit_dir / "files"
    out.mkdir()
    config = limit_dir / "curl.config"
    targets: list[tuple[Path, str]] = []
    lines: list[str] = []
    for filename, sha in packages:
        dest = out / Path(filename).name
        lines.append(f'url = "{url}/{filename}"\noutput = "{dest}"\n')
        targets.append((dest, sha))
    config.write_text("".join(lines))
    cmd = [curl, "--parallel", "--parallel-max", str(parallel), "--fail", "--silent",
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


def fmt_all(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


# --------------------------------------------------------------------------------------------
# The frame of a sync benchmark: options, tools, phase rounds, figures, main()
# --------------------------------------------------------------------------------------------


def sync_bench_args(doc: str, argv: Sequence[str] | None, *, packages: str, workdir: Path, phases: str,
                    mirror_cli: bool = False) -> argparse.Namespace:
    """The command line of a sync benchmark: --packages (help: "number of `packages`"), --size,
    --workdir (default `workdir`), --rounds (of the `phases` initial-sync measurements) and, with
    `mirror_cli`, --mirror-cli; all counts positive. `doc`: the module docstring."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--packages", type=int, default=2000, help=f"number of {packages} (default 2000)")
    parser.add_argument("--size", type=int, default=100_000,
                        help="payload bytes per package (default 100000)")
    parser.add_argument("--workdir", type=Path, default=workdir,
                        help=f"cache and scratch directory (default {workdir.relative_to(CHECKOUT)}/)")
    parser.add_argument("--rounds", type=int, default=3,
                        help=f"rounds of the {phases} initial-sync measurements, order rotated; medians "
                             "are reported (default 3)")
    if mirror_cli:
        parser.add_argument("--mirror-cli", metavar="COMMAND",
                            help="the mirror command line to benchmark, e.g. to compare a branch "
                                 "(default: this venv's `mirror`, else `python -m mirror.cli`)")
    args = parser.parse_args(argv)
    if args.packages < 1 or args.size < 1 or args.rounds < 1:
        parser.error("--packages, --size and --rounds must be positive")
    return args


@dataclass(frozen=True)
class Tools:
    """What every sync benchmark runs; each adds its baseline's tools."""

    nginx: str
    curl: str
    mirror: list[str]  # argv prefix of the mirror CLI
    time: str | None  # GNU time, for peak RSS (None: os.wait4)


def require_tools(names: Sequence[str], install: str) -> dict[str, str]:
    """The path of each tool (`find_tool`); BenchError naming the missing ones, then `install`."""
    found = {name: find_tool(name) for name in names}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise BenchError(f"missing tools: {', '.join(missing)}. {install}")
    return {name: str(path) for name, path in found.items()}


def mirror_command(mirror_cli: str | None = None) -> list[str]:
    """The mirror CLI to benchmark: `mirror_cli` (--mirror-cli), else this venv's `mirror`, else
    `python -m mirror.cli`."""
    if mirror_cli:
        return shlex.split(mirror_cli)
    cli = Path(sys.executable).parent / "mirror"
    return [str(cli)] if cli.is_file() else [sys.executable, "-m", "mirror.cli"]


def run_rounds(dirs: PhaseDirs, rounds: int,
               measure: Callable[[str, int], dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """`rounds` rounds of `dirs.phases`, the order rotated each round (`rotation`), each phase
    (`measure(phase, round_index)`) starting from the same state (`dirs.reset`); the results of
    each phase, in round order. The trash is emptied after the last round."""
    per_round: dict[str, list[dict[str, Any]]] = {p: [] for p in dirs.phases}
    for r in range(rounds):
        order = rotation(dirs.phases, r)
        say(f"round {r + 1}/{rounds}: {', '.join(order)}")
        for phase in order:
            dirs.reset()
            per_round[phase].append(measure(phase, r))
    dirs.empty_trash()
    return per_round


def limit_results(limit: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The JSON of the raw limit's rounds (`measure_limit` results)."""
    return {"command": limit[0]["command"], "hash": LIMIT_HASH,
            "total_s": [x["total_s"] for x in limit], "fetch_s": [x["fetch_s"] for x in limit],
            "hash_s": [x["hash_s"] for x in limit], "cpu_s": [x["cpu_s"] for x in limit]}


#: A figure of the report: name, value, unit ("" for a count), target, met (None: no target).
Figure = tuple[str, float, str, str, bool | None]


def figure_dicts(rows: Sequence[Figure]) -> list[dict[str, Any]]:
    """The JSON of the figures."""
    return [{"figure": f, "value": round(v, 4), "unit": u, "target": t, "ok": ok} for f, v, u, t, ok in rows]


def print_figures(rows: Sequence[dict[str, Any]]) -> int:
    """The FIGURE/VALUE/TARGET/RESULT table of `figure_dicts` rows; the width of its first column."""
    width = max(len(f["figure"]) for f in rows)
    say(f"{'FIGURE':<{width}}  {'VALUE':>8}  {'TARGET':<8}  RESULT")
    for f in rows:
        if f["unit"] == "MB":
            value = f"{f['value']:.0f} MB"
        elif f["unit"]:
            value = f"{f['value']:.2f} {f['unit']}"
        else:
            value = f"{f['value']:.0f}"
        result = "-" if f["ok"] is None else "pass" if f["ok"] else "FAIL"
        say(f"{f['figure']:<{width}}  {value:>8}  {f['target']:<8}  {result}")
    return width


class Run:
    """One run of a sync benchmark, for the `bench` callable of `bench_main`."""

    def __init__(self, command: str, load: float, stack: contextlib.ExitStack) -> None:
        self.command = command
        self.load = load  # the load average at start
        self._stack = stack
        self.workdir: Path | None = None

    def lock(self, workdir: Path, name: str) -> Path:
        """Create `workdir` and hold its lock (`workdir_lock`) until the run ends; resolved."""
        self.workdir = workdir.resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._stack.enter_context(workdir_lock(self.workdir, name))
        return self.workdir

    def results(self, upstream: dict[str, Any], rounds: int, parallel: int) -> dict[str, Any]:
        """The first fields of the JSON results; the date is now."""
        return {
            "command": self.command,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "load_average_at_start": self.load,
            "upstream": upstream,
            "rounds": rounds,
            "parallel": parallel,
        }


def announce() -> tuple[str, float]:
    """Say the benchmark's command line, and that figures will be noisy on a busy machine: (the
    command line, the load average now)."""
    command = shlex.join([sys.executable, *sys.argv])
    say(f"command: {command}")
    load = os.getloadavg()[0]
    if load > 0.5:
        say(f"note: load average {load:.2f}: something else is using the CPUs; figures will be noisy")
    return command, load


def bench_main(name: str, bench: Callable[[Run], dict[str, Any]],
               figures: Callable[[dict[str, Any]], list[dict[str, Any]]],
               report: Callable[[dict[str, Any]], None]) -> int:
    """The main() of a sync benchmark `name`: SIGTERM unwinds through the finally blocks (nginx is
    stopped), the command line and a busy machine are noted, `bench(run)` measures (it calls
    `run.lock` and `run.results`); then `figures` and `report` of the results, written as JSON to
    <workdir>/<name>.json. Exit status 0 (a missed target is reported, not an exit status), 2 on
    a BenchError, 130 on Ctrl-C."""
    raise_on_sigterm()
    command, load = announce()
    with contextlib.ExitStack() as stack:
        try:
            run = Run(command, load, stack)
            results = bench(run)
            assert run.workdir is not None, "bench() must call run.lock()"
            results["load_average_at_end"] = os.getloadavg()[0]
            results["figures"] = figures(results)
            report(results)
            out = run.workdir / f"{name}.json"
            out.write_text(json.dumps(results, indent=2) + "\n")
            say(f"\nfigures written to {out}")
            return 0
        except BenchError as exc:
            print(f"{name}: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"{name}: interrupted", file=sys.stderr)
            return 130
