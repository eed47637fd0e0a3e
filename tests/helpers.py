"""Test helpers: a mirror configured against a fixture upstream, run in-process or as the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mirror.config import Settings, load
from mirror.pool import Pool
from mirror.store import Store
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
                 extra_repo: str = "", extra_top: str = "", retries: int = 2) -> Mirror:
    root.mkdir(parents=True, exist_ok=True)
    config = root / "mirror.toml"
    config.write_text(f"""
{extra_top}
[storage]
root = "var"

[server]
bind = "127.0.0.1"
repo_port = {free_port()}
api_port = {free_port()}

[sync]
max_parallel_downloads = 4
retries = {retries}
read_timeout = 10
connect_timeout = 5

[[repos]]
name = "{name}"
type = "deb"
url = "{url}"
suites = {suites}
components = ["main"]
architectures = ["amd64"]
keyring = "{keyring}"
{extra_repo}
""")
    os.environ.pop("MIRROR_CONFIG", None)
    return Mirror(root=root, config=config)
