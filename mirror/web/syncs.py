"""Syncs started through the API: run in the server process, one at a time per repo.

Each sync gets its own state-database connection opened for the caller (the token's name is
recorded on the sync run as its actor). A repo whose sync is already running here, or whose lock
another process (`mirror sync`, the timer) holds, is refused with `LockedError` (409). On
shutdown running syncs are cancelled and their runs recorded as interrupted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from mirror.config import Settings
from mirror.errors import LockedError
from mirror.store import Store
from mirror.sync import Progress, SyncResult, repo_lock, sync_repos

log = logging.getLogger(__name__)

SyncFunction = Callable[..., Awaitable[Sequence[SyncResult]]]


class BackgroundSyncs:
    def __init__(self, settings: Settings, sync: SyncFunction = sync_repos) -> None:
        self.settings = settings
        self.sync = sync
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.progress: dict[str, Progress] = {}

    def running(self, repo: str) -> bool:
        task = self.tasks.get(repo)
        return task is not None and not task.done()

    def start(self, repo: str, *, actor: str, allow_rollback: bool = False) -> None:
        """Start a sync of `repo` (a configured repo) now, or raise LockedError."""
        if self.running(repo):
            raise LockedError(f"a sync of {repo} is already running", repo=repo)
        with repo_lock(self.settings.storage.root, repo):  # probe: another process syncing?
            pass
        progress = Progress(repo=repo)
        self.progress[repo] = progress
        self.tasks[repo] = asyncio.create_task(self._run(repo, actor, allow_rollback, progress),
                                               name=f"sync {repo}")
        log.info("%s: sync started by %s", repo, actor)

    async def _run(self, repo: str, actor: str, allow_rollback: bool, progress: Progress) -> None:
        store = await asyncio.to_thread(Store, self.settings.storage.root / "state.db", actor=actor)
        try:
            results = await self.sync(self.settings, [repo], store, lambda _name: progress,
                                      allow_rollback=allow_rollback)
            for result in results:
                if result.error is not None:
                    log.warning("%s: sync started by %s failed: %s", repo, actor, result.error)
                else:
                    log.info("%s: sync started by %s: %s", repo, actor, result.snapshot or "unchanged")
        except asyncio.CancelledError:
            await asyncio.shield(asyncio.to_thread(
                store.interrupt_running_runs, repo, "the server stopped during the sync"))
            raise
        except Exception:
            log.exception("%s: sync started by %s crashed", repo, actor)
        finally:
            store.close()

    async def close(self) -> None:
        """Cancel running syncs and wait for them to record that."""
        tasks = [t for t in self.tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
