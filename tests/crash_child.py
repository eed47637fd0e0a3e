"""A zygote for tests/test_crash.py: imports the mirror once, then forks one fresh process per
command, so that a SIGKILL lands in the mirror's own work rather than in Python's start-up.

Run as ``python -m tests.crash_child``. Protocol, one JSON object per line:

- stdin ``{"argv": [...], "log": PATH, "kill": POINT or null}`` -> stdout ``{"pid": N}``: a forked
  child runs ``mirror.cli.main(argv)`` with stdout and stderr appended to PATH;
- stdin ``{"wait": N}`` -> stdout ``{"status": S}`` (the raw wait status of child N).

``python -m tests.crash_child --run ARGV...`` runs one command in this process instead, with every
`asyncio.to_thread` call on one worker thread, so that under ``strace -f`` the Nth write of the
state database is the same call in every run (strace counts its `when=N` per thread).

The child is the real CLI. Test-only instrumentation, applied in the child only (the mirror has no
hooks for it): a line ``@mark NAME`` is written to the log when the run enters a phase, so the test
knows where a SIGKILL landed; and with ``kill``, the child sends itself SIGKILL at a named point, to
hit windows too narrow for a random delay:

- ``replace:N`` / ``replaced:N``: just before / after the Nth rename into the pool (pool insert)
- ``decompress:N``: as the Nth index decompression starts
- ``durable`` / ``durable-done``: before / after the syncfs that precedes the commit
- ``commit-txn``: inside the snapshot transaction (blobs, snapshot, roots, manifest inserted), just
  before the tier pointer update; ``committed``: right after that transaction committed
- ``promote-txn``: inside the promotion transaction, before the pointer update and history row;
  ``promoted``: right after it committed
- ``gc-txn``: inside gc's transaction, as it forgets the unreferenced blobs; ``gc:N``: before the
  Nth file removal under the pool (only when `mirror gc` exists)
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import mirror.cli
import mirror.formats.compression
import mirror.pool
import mirror.store
import mirror.sync
import mirror.tiers
import mirror.trust.apt

with contextlib.suppress(ImportError):  # preload `mirror gc` when it is there
    import mirror.gc


def _mark(name: str) -> None:
    os.write(2, f"@mark {name} {time.monotonic():.6f}\n".encode())


def _die(phase: str | None) -> None:
    """Killed at a named point; `phase`: the mark of the call it is in (other threads of the
    sync, e.g. the pool's flush beside the database commit, may log marks after that one)."""
    _mark(f"killed-at-point:{phase}" if phase else "killed-at-point")
    os.kill(os.getpid(), signal.SIGKILL)


def _instrument(kill: str | None) -> None:
    point, _, nth = (kill or "").partition(":")
    target = int(nth) if nth else 1
    counts: dict[str, int] = {}

    def hit(name: str) -> bool:
        counts[name] = counts.get(name, 0) + 1
        return point == name and counts[name] == target

    def around(owner: Any, attr: str, before: str | None, after: str | None, marker: str | None = None,
               only: Callable[..., bool] | None = None, done: str | None = None) -> None:
        original = getattr(owner, attr)

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if only is not None and not only(*args, **kwargs):
                return original(*args, **kwargs)
            if marker is not None:
                _mark(marker)
            if before is not None and hit(before):
                _die(marker)
            result = original(*args, **kwargs)
            if done is not None:
                _mark(done)
            if after is not None and hit(after):
                _die(done or marker)
            return result

        setattr(owner, attr, wrapper)

    progress_update = mirror.sync.Progress.update

    def update(self: mirror.sync.Progress, *, phase: str | None = None, files: int = 0,
               size: int = 0) -> None:
        if phase is not None and phase != self.phase:
            _mark(phase)
        progress_update(self, phase=phase, files=files, size=size)

    mirror.sync.Progress.update = update  # type: ignore[method-assign]

    def into_pool(src: Any, dst: Any, *a: Any, **k: Any) -> bool:
        return "/pool/sha256/" in str(dst)

    around(os, "replace", "replace", "replaced", "pool-insert", only=into_pool)
    around(mirror.trust.apt, "decompress_file", "decompress", None, "decompress")
    around(mirror.pool.Pool, "make_durable", "durable", "durable-done", "durable")
    around(mirror.store.Store, "_move_tier", "commit-txn", None, "tier-pointer")
    around(mirror.store.Store, "commit_snapshot", None, "committed", "db-commit", done="db-committed")
    around(mirror.store.Store, "record_move", "promote-txn", None, "promote-txn")
    around(mirror.tiers.Tiers, "promote", None, "promoted", "promote", done="promote-committed")
    if hasattr(mirror.store.Store, "delete_blobs"):
        around(mirror.store.Store, "delete_blobs", "gc-txn", None, "gc-txn")

    def in_pool(path: Any, *a: Any, **k: Any) -> bool:
        return "/pool/sha256/" in str(path)

    around(os, "unlink", "gc", None, "pool-unlink", only=in_pool)


def _child(command: dict[str, Any]) -> None:
    fd = os.open(command["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _instrument(command.get("kill"))
    _mark("start")
    code = mirror.cli.main(command["argv"])
    _mark(f"exit {code}")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _run_on_one_thread(argv: list[str]) -> None:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    original = asyncio.run

    def run(main: Any, **kwargs: Any) -> Any:
        async def on_one_thread() -> Any:
            asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(1))
            return await main

        return original(on_one_thread(), **kwargs)

    asyncio.run = run  # type: ignore[assignment]
    sys.exit(mirror.cli.main(argv))


def main() -> None:
    if sys.argv[1:2] == ["--run"]:
        _run_on_one_thread(sys.argv[2:])
    for line in sys.stdin:
        command = json.loads(line)
        if "wait" in command:
            _, status = os.waitpid(int(command["wait"]), 0)
            reply: dict[str, int] = {"status": status}
        else:
            pid = os.fork()
            if pid == 0:
                try:
                    _child(command)
                finally:
                    os._exit(70)
            reply = {"pid": pid}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
