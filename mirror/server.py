"""`mirror serve`: the repo port and the API port in one process, with graceful shutdown.

The two ports use separate state-database connections: the repo port's catalog only reads (and
sees every commit, the API's included, through `Store.change_marker`), so serving never waits
behind a move, a sync commit or an API call holding the other connection.

With `[signing]`, the mirror's public key is exported to `<storage>/keys/mirror.asc` at start.
When some APT repo has `tier_signing = "mirror"`, a background task (on a third connection)
re-issues the Release files of its tiers whenever they are due (`mirror.releases`): it looks
every second whether anyone committed (a promotion by the CLI, a new snapshot from the sync timer)
and at least every minute (validity running out); the API also re-issues right after a move.

Both ports are behind a connection guard (`mirror.web.guard`: request-head timeout, idle
timeout, connections per client address, from `[server]`), whose counters are in the metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any, Protocol

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mirror.affinity import Pins, SharedPins, pins_path
from mirror.config import Settings
from mirror.metrics import Metrics
from mirror.pool import Pool
from mirror.publish import StoreCatalog
from mirror.releases import ReleaseIssuer
from mirror.signing import MirrorSigner
from mirror.store import Store
from mirror.tokens import TokenRing
from mirror.web.api import make_api_app
from mirror.web.guard import ConnectionGuard, GuardPolicy
from mirror.web.repo import RepoResponder, run_servers
from mirror.web.workers import RepoWorkers

log = logging.getLogger(__name__)

CHECK_INTERVAL = 1.0  # seconds between looks at the database's change marker
FULL_CHECK_INTERVAL = 60.0  # seconds between due checks even when nothing changed


async def refresh_releases(issuer: ReleaseIssuer, *, interval: float = CHECK_INTERVAL,
                           full_interval: float = FULL_CHECK_INTERVAL) -> None:
    """Forever: issue the Release files that are due (after any commit, and every `full_interval`)."""
    marker: tuple[int, int] | None = None
    last_full = 0.0
    while True:
        try:
            now_marker = await asyncio.to_thread(issuer.store.change_marker)
            if now_marker != marker or time.monotonic() - last_full >= full_interval:
                # what was read before the round: a commit during it (ours included) means one more
                marker, last_full = now_marker, time.monotonic()
                await asyncio.to_thread(issuer.issue_due)
        except asyncio.CancelledError:
            raise
        except Exception:  # keep refreshing whatever happens to one round
            log.exception("re-issuing Release files failed")
        await asyncio.sleep(interval)


def _release_refresher(issuer: ReleaseIssuer) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(refresh_releases(issuer), name="release refresher")
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    return context


class GuardCounts(Protocol):
    """What the collector reads: a ConnectionGuard, or a repo worker's last report of its own."""

    @property
    def name(self) -> str: ...
    @property
    def connections(self) -> int: ...
    @property
    def refused(self) -> int: ...
    @property
    def header_timeouts(self) -> int: ...
    @property
    def body_timeouts(self) -> int: ...


class GuardCollector(Collector):
    """The connection guards' counters (mirror.web.guard), read at scrape time, summed per port
    over this process's guard and the repo workers' (`workers`, read at each scrape)."""

    def __init__(self, guards: Sequence[GuardCounts],
                 workers: Callable[[], Sequence[GuardCounts]] = lambda: ()) -> None:
        self.guards = tuple(guards)
        self.workers = workers

    def collect(self) -> Iterator[Metric]:
        open_ = GaugeMetricFamily("mirror_http_connections", "Open client connections, by port",
                                  labels=["server"])
        refused = CounterMetricFamily(
            "mirror_http_connections_refused",
            "Connections closed at once: the client address had max_connections_per_client open",
            labels=["server"])
        timeouts = CounterMetricFamily(
            "mirror_http_connection_timeouts",
            "Connections aborted: no complete request head within header_timeout (header) or a "
            "request body stalled for as long (body)", labels=["server", "reason"])
        sums: dict[str, list[int]] = {}
        for guard in (*self.guards, *self.workers()):
            total = sums.setdefault(guard.name, [0, 0, 0, 0])
            for i, value in enumerate((guard.connections, guard.refused, guard.header_timeouts,
                                       guard.body_timeouts)):
                total[i] += value
        for name, (connections, refused_, header, body) in sums.items():
            open_.add_metric([name], connections)
            refused.add_metric([name], refused_)
            timeouts.add_metric([name, "header"], header)
            timeouts.add_metric([name, "body"], body)
        yield from (open_, refused, timeouts)


def guard_policy(settings: Settings) -> GuardPolicy:
    server = settings.server
    return GuardPolicy(header_timeout=server.header_timeout, idle_timeout=server.idle_timeout,
                       max_connections_per_client=server.max_connections_per_client)


def mirror_signed_repos(settings: Settings) -> list[str]:
    """The repos whose tier Release files the mirror re-signs (see mirror.releases)."""
    if settings.signing is None:
        return []
    return [r.name for r in settings.repos if r.type == "deb" and r.tier_signing == "mirror"]


def make_catalog(settings: Settings, store: Store, *, pins: Pins | None = None) -> StoreCatalog:
    """The repo port's catalog: the same in the main process and in every repo worker."""
    root = settings.storage.root
    return StoreCatalog(store, Pool(root), root / "keys" / "mirror.asc",
                        grace=timedelta(seconds=settings.server.grace_period),
                        mirror_signed=mirror_signed_repos(settings), pins=pins)


async def serve(settings: Settings, *, ready: Callable[[list[tuple[str, int]]], Any] | None = None) -> None:
    root = settings.storage.root
    tokens = TokenRing(settings.server.token_file)  # a malformed token file stops the start
    if settings.server.token_file is None:
        log.warning("no server.token_file: every mutating API call will be refused")
    catalog_store = Store(root / "state.db")
    api_store = Store(root / "state.db")
    issuer_store = Store(root / "state.db", actor="release-issuer")
    try:
        issuer: ReleaseIssuer | None = None
        if settings.signing is not None:
            signing = settings.signing
            signer = await asyncio.to_thread(MirrorSigner.load, signing.gnupghome, signing.key)
            try:
                await asyncio.to_thread(signer.export_public, root)
            except OSError as exc:
                log.error("cannot write the mirror's public key to %s: %s", root / "keys" / "mirror.asc", exc)
            issuer = ReleaseIssuer(settings, issuer_store, signer)
            if not issuer.repos:
                issuer = None
        catalog = make_catalog(settings, catalog_store)
        metrics = Metrics()
        metrics.add_state(api_store, settings.repo_names, stale_after=settings.sync.stale_after,
                          expiry_warning=settings.sync.expiry_warning)
        responses = metrics.requests

        def count_response(status: int) -> None:
            responses.labels("repo", str(status)).inc()

        repo_app = RepoResponder(catalog, on_response=count_response)
        api_app = make_api_app(settings, api_store, tokens=tokens, metrics=metrics, releases=issuer)
        if issuer is not None:
            api_app.cleanup_ctx.append(_release_refresher(issuer))
        bind = settings.server.bind
        log.info("serving repositories on http://%s:%d/ and the API on http://%s:%d/",
                 bind, settings.server.repo_port, bind, settings.server.api_port)
        server = settings.server
        policy = guard_policy(settings)
        guards = [ConnectionGuard(policy, name="repo"), ConnectionGuard(policy, name="api")]
        workers = None
        if server.repo_workers > 1:
            def count(status: str, n: int) -> None:
                metrics.requests.labels("repo", status).inc(n)

            SharedPins(pins_path(root), create=True).close()  # afresh, before any worker opens it
            workers = RepoWorkers(settings.source, server.repo_workers, guards[0], on_responses=count)
            log.info("the repo port is served by %d worker processes", server.repo_workers)
        metrics.registry.register(GuardCollector(guards, workers=lambda: workers.guards if workers else ()))
        await run_servers([(repo_app, bind, server.repo_port), (api_app, bind, server.api_port)],
                          guards=guards, ready=ready, workers=workers)
    finally:
        catalog_store.close()
        api_store.close()
        issuer_store.close()
