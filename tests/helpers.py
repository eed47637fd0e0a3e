"""Test helpers: a mirror configured against a fixture upstream, run in-process or as the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from mirror.config import Settings, load
from mirror.model import EntryKind, ManifestEntry, PackageKey, RootRecord, utcnow
from mirror.pool import Pool
from mirror.store import NewSnapshot, Store
from mirror.sync import SyncResult, sync_repos

CHECKOUT = Path(__file__).resolve().parent.parent


@dataclass
class Mirror:
    """A mirror under `root` with one config file; syncs in-process, serves as a subprocess."""

    root: Path
    config: Path

    @property
    def settings(self) -> Settings:
        return load(self.config)

    def store(self) -> Store:
        return Store(self.settings.storage.root / "state.db")

    def sync(self, *names: str, allow_rollback: bool = False) -> list[SyncResult]:
        store = self.store()
        try:
            return asyncio.run(sync_repos(self.settings, list(names), store, allow_rollback=allow_rollback))
        finally:
            store.close()

    def sync_one(self, name: str = "repo", **kw: bool) -> SyncResult:
        (result,) = self.sync(name, **kw)
        return result

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mirror.cli", "-c", str(self.config), *args],
                              capture_output=True, text=True, timeout=timeout, cwd=CHECKOUT, check=False)

    def snapshots(self, repo: str = "repo") -> list[str]:
        store = self.store()
        try:
            return [s.id for s in store.snapshots(repo)]
        finally:
            store.close()

    def tier(self, repo: str = "repo", tier: str = "dev") -> str | None:
        store = self.store()
        try:
            state = store.tiers(repo).get(tier)
            return state.snapshot if state else None
        finally:
            store.close()

    def served_tree(self, repo: str = "repo", tier: str = "dev") -> dict[str, bytes]:
        """path -> bytes of everything the tier serves (read through the pool, as the server does)."""
        store = self.store()
        try:
            snapshot = store.tiers(repo)[tier].snapshot
            assert snapshot is not None
            pool = Pool(self.settings.storage.root)
            manifest = store.manifest(repo, snapshot)
            return {p: pool.path_for(e.sha256).read_bytes() for p, e in manifest.items()}
        finally:
            store.close()

    def temp_files(self) -> list[Path]:
        tmp = self.settings.storage.root / "tmp"
        return [p for p in tmp.rglob("*")] if tmp.exists() else []

    @contextlib.contextmanager
    def serving(self) -> Iterator[str]:
        """`mirror serve` as a real subprocess; yields its base URL."""
        port = int(self.settings.server.repo_port)
        proc = subprocess.Popen([sys.executable, "-m", "mirror.cli", "-c", str(self.config), "serve"],
                                cwd=CHECKOUT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    urllib.request.urlopen(f"{url}/healthz-probe", timeout=1)
                except urllib.error.HTTPError:
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        out = proc.stdout.read() if proc.stdout else ""
                        raise RuntimeError(f"mirror serve did not start: {out}") from None
                    time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(root: Path, url: str, keyring: Path, *, name: str = "repo", suites: str = '["stable"]',
                 extra_repo: str = "", extra_top: str = "", retries: int = 2,
                 extra_server: str = "", kind: str = "deb") -> Mirror:
    """A config with one repo (`kind` "deb" or "rpm") and fast, test-sized sync settings."""
    root.mkdir(parents=True, exist_ok=True)
    shape = (f'suites = {suites}\ncomponents = ["main"]\narchitectures = ["amd64"]\n'
             if kind == "deb" else "")
    config = root / "mirror.toml"
    config.write_text(f"""
{extra_top}
[storage]
root = "var"

[server]
bind = "127.0.0.1"
repo_port = {free_port()}
api_port = {free_port()}
{extra_server}

[sync]
max_parallel_downloads = 4
retries = {retries}
read_timeout = 10
connect_timeout = 5

[[repos]]
name = "{name}"
type = "{kind}"
url = "{url}"
{shape}keyring = "{keyring}"
{extra_repo}
""")
    os.environ.pop("MIRROR_CONFIG", None)
    return Mirror(root=root, config=config)


# -- tiers, API and serving both ports ----------------------------------------------------------


@dataclass
class Served:
    """A running `mirror serve`: both ports."""

    repo_url: str
    api_url: str
    proc: subprocess.Popen[str]


@contextlib.contextmanager
def serve_both(mirror: Mirror, *, timeout: float = 20) -> Iterator[Served]:
    """`mirror serve` as a real subprocess, both ports up (the API's /healthz answers 200)."""
    settings = mirror.settings
    repo_url = f"http://127.0.0.1:{settings.server.repo_port}"
    api_url = f"http://127.0.0.1:{settings.server.api_port}"
    proc = subprocess.Popen([sys.executable, "-m", "mirror.cli", "-c", str(mirror.config), "serve"],
                            cwd=CHECKOUT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{api_url}/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                out = proc.stdout.read() if proc.stdout else ""
                raise RuntimeError(f"mirror serve did not start: {out}")
            time.sleep(0.1)
        yield Served(repo_url, api_url, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(method: str, url: str, *, body: Any = None, token: str | None = None, raw: bytes | None = None,
         headers: dict[str, str] | None = None, timeout: float = 30) -> Reply:
    """One HTTP request with urllib; never raises for an HTTP status. `body` is sent as JSON."""
    sent = dict(headers or {})
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        sent.setdefault("Content-Type", "application/json")
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return Reply(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read())
    except urllib.error.HTTPError as err:
        with err:
            return Reply(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


def write_tokens(path: Path, tokens: dict[str, str]) -> Path:
    """A token file (NAME:TOKEN lines) with mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{name}:{token}\n" for name, token in tokens.items()))
    path.chmod(0o600)
    return path


def seed_snapshot(store: Store, pool: Pool, repo: str, files: dict[str, bytes], *, first_tier: str = "dev",
                  valid_until: datetime | None = None, date: datetime | None = None) -> str:
    """A synthetic verified snapshot of `files` (path -> bytes; *.deb count as packages), its blobs
    written into the pool, committed like a sync does (the first tier points at it). `date`: the
    root's Release Date (default now)."""
    entries = []
    for path, data in sorted(files.items()):
        digest = hashlib.sha256(data).hexdigest()
        blob = pool.path_for(digest)
        if not blob.exists():
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
        if path.endswith(".deb"):
            name, version, arch = Path(path).stem.split("_")
            entries.append(ManifestEntry(path, digest, len(data), EntryKind.PACKAGE,
                                         PackageKey(name, arch, version)))
        else:
            kind = EntryKind.ROOT if path.endswith("InRelease") else EntryKind.INDEX
            entries.append(ManifestEntry(path, digest, len(data), kind))
    inrelease = files.get("dists/stable/InRelease", b"")
    root = RootRecord(name="stable", sha256=hashlib.sha256(inrelease).hexdigest(), date=date or utcnow(),
                      valid_until=valid_until)
    new = NewSnapshot(repo=repo, signed_by="upstream", plan_key="seed", roots=[root], entries=entries)
    return store.commit_snapshot(new, first_tier)


@contextlib.contextmanager
def app_in_thread(app: Any) -> Iterator[str]:
    """Serve an aiohttp application, or a repo-port `RepoResponder` (through the repo port's own
    `RepoServer`), on 127.0.0.1 (ephemeral port) from a background thread; yields the base URL."""
    with serve_in_thread(app) as (port, _guard):
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def serve_in_thread(app: Any, policy: Any = None, host: str = "127.0.0.1") -> Iterator[tuple[int, Any]]:
    """`app` (an aiohttp application, or a `mirror.web.repo.RepoResponder`) behind a
    `ConnectionGuard` of `policy` on (host, ephemeral port), from a background thread; yields the
    port and the guard. On exit the server shuts down as `mirror serve` does."""
    import threading

    from aiohttp import web

    from mirror.web.connection import RepoServer
    from mirror.web.guard import ConnectionGuard, GuardPolicy, start_guarded_server
    from mirror.web.repo import RepoResponder

    policy = policy or GuardPolicy()
    guard = ConnectionGuard(policy, name="test")
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict[str, Any] = {}

    async def start() -> None:
        if isinstance(app, RepoResponder):
            repo = RepoServer(app, guard)
            server = await repo.listen(host, 0)

            async def stop() -> None:
                server.close()
                await repo.shutdown(10)
        else:
            runner = web.AppRunner(app, access_log=None, keepalive_timeout=policy.idle_timeout)
            await runner.setup()
            server = await start_guarded_server(runner, guard, host, 0)

            async def stop() -> None:
                server.close()
                await runner.cleanup()
        box["stop"] = stop
        box["port"] = int(server.sockets[0].getsockname()[1])

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        started.set()
        loop.run_forever()
        loop.run_until_complete(box["stop"]())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("app did not start")
    try:
        yield box["port"], guard
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(20)


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
