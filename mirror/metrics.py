"""Prometheus metrics: HTTP requests by status on both ports, and repo/tier gauges read from the
state database at scrape time (so the `mirror sync` CLI process never has to push anything).

Per repo: last successful sync time, last sync duration, files and bytes fetched, failed syncs by
error code, syncs running, snapshot count; per tier: the age of the served snapshot, since when it
serves it, and the earliest upstream `Valid-Until` of its roots (alert before clients refuse it).
Staleness as `mirror status` judges it (`mirror.status`): seconds since the last successful sync,
seconds of upstream validity left per tier, and the stale / expiring flags for the configured
thresholds. The last `mirror verify` per repo: when, objects checked, still damaged, repaired, and
per tier whether the served snapshot uses a damaged object (degraded).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mirror.model import utcnow
from mirror.store import Store

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class StateCollector(Collector):
    """Reads the state database on every scrape."""

    def __init__(self, store: Store, repos: Sequence[str], clock: Callable[[], datetime] = utcnow, *,
                 stale_after: float | None = None, expiry_warning: float | None = None) -> None:
        from mirror.config import SyncSettings

        self.store = store
        self.repos = tuple(repos)
        self.clock = clock
        self.stale_after = stale_after if stale_after is not None else SyncSettings.stale_after
        self.expiry_warning = expiry_warning if expiry_warning is not None else SyncSettings.expiry_warning

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        configured = set(self.repos)
        last_success = GaugeMetricFamily(
            "mirror_sync_last_success_timestamp_seconds",
            "When the last successful sync of the repo finished (Unix time)", labels=["repo"])
        duration = GaugeMetricFamily(
            "mirror_sync_last_duration_seconds", "How long the last finished sync of the repo took",
            labels=["repo"])
        files = CounterMetricFamily("mirror_sync_fetched_files", "Files fetched by syncs of the repo",
                                    labels=["repo"])
        size = CounterMetricFamily("mirror_sync_fetched_bytes", "Bytes fetched by syncs of the repo",
                                   labels=["repo"])
        failures = CounterMetricFamily("mirror_sync_failures", "Failed syncs of the repo, by error code",
                                       labels=["repo", "code"])
        running = GaugeMetricFamily("mirror_sync_running", "Syncs of the repo running now", labels=["repo"])
        for stats in self.store.sync_stats():
            if stats.repo not in configured:
                continue
            if stats.last_success is not None:
                last_success.add_metric([stats.repo], stats.last_success.timestamp())
            if stats.last_duration is not None:
                duration.add_metric([stats.repo], stats.last_duration)
            files.add_metric([stats.repo], stats.files)
            size.add_metric([stats.repo], stats.bytes)
            running.add_metric([stats.repo], stats.running)
            for code, count in sorted(stats.failures.items()):
                failures.add_metric([stats.repo, code], count)
        snapshots = GaugeMetricFamily("mirror_snapshots", "Snapshots kept for the repo", labels=["repo"])
        for repo in self.repos:
            snapshots.add_metric([repo], len(self.store.snapshots(repo)))
        age = GaugeMetricFamily("mirror_tier_snapshot_age_seconds",
                                "Age of the snapshot the tier serves (since it was made)",
                                labels=["repo", "tier"])
        info = GaugeMetricFamily("mirror_tier_snapshot_info", "The snapshot the tier serves (value 1)",
                                 labels=["repo", "tier", "snapshot"])
        since = GaugeMetricFamily("mirror_tier_since_timestamp_seconds",
                                  "When the tier was last moved (Unix time)", labels=["repo", "tier"])
        valid = GaugeMetricFamily("mirror_tier_valid_until_timestamp_seconds",
                                  "Earliest upstream Valid-Until of the served snapshot's roots (Unix time)",
                                  labels=["repo", "tier"])
        for served in self.store.served_snapshots():
            if served.repo not in configured:
                continue
            age.add_metric([served.repo, served.tier], max(0.0, (now - served.created).total_seconds()))
            info.add_metric([served.repo, served.tier, served.snapshot], 1)
            since.add_metric([served.repo, served.tier], served.since.timestamp())
            if served.valid_until is not None:
                valid.add_metric([served.repo, served.tier], served.valid_until.timestamp())
        yield from (last_success, duration, files, size, failures, running, snapshots, age, info, since,
                      valid)
        yield from self._staleness(now)
        yield from self._verify()

    def _staleness(self, now: datetime) -> Iterator[Metric]:
        from mirror.status import repo_statuses

        since = GaugeMetricFamily("mirror_sync_last_success_age_seconds",
                                  "Seconds since the last successful sync of the repo", labels=["repo"])
        stale = GaugeMetricFamily("mirror_repo_stale",
                                  "1 when no sync of the repo succeeded within [sync] stale_after",
                                  labels=["repo"])
        expiring = GaugeMetricFamily("mirror_repo_expiring",
                                     "1 when a tier serves upstream metadata expiring within "
                                     "[sync] expiry_warning (or expired)", labels=["repo"])
        remaining = GaugeMetricFamily("mirror_tier_valid_until_remaining_seconds",
                                      "Seconds until the served snapshot's upstream Valid-Until "
                                      "(negative: expired)", labels=["repo", "tier"])
        for st in repo_statuses(self.store, self.repos, stale_after=self.stale_after,
                                expiry_warning=self.expiry_warning, now=now):
            if st.since_success is not None:
                since.add_metric([st.repo], st.since_success)
            stale.add_metric([st.repo], int(st.stale))
            expiring.add_metric([st.repo], int(st.expiring))
            for t in st.tiers:
                if t.remaining is not None:
                    remaining.add_metric([st.repo, t.tier], t.remaining)
        yield from (since, stale, expiring, remaining)

    def _verify(self) -> Iterator[Metric]:
        when = GaugeMetricFamily("mirror_verify_last_timestamp_seconds",
                                 "When the last `mirror verify` covering the repo finished (Unix time)",
                                 labels=["repo"])
        checked = GaugeMetricFamily("mirror_verify_checked_objects",
                                    "Pool objects the last verify of the repo re-hashed", labels=["repo"])
        damaged = GaugeMetricFamily("mirror_verify_damaged_objects",
                                    "Objects the last verify of the repo found damaged and left so",
                                    labels=["repo"])
        repaired = GaugeMetricFamily("mirror_verify_repaired_objects",
                                     "Objects the last verify of the repo repaired from upstream",
                                     labels=["repo"])
        degraded = GaugeMetricFamily("mirror_tier_degraded",
                                     "1 when the tier serves a snapshot using an object the last verify "
                                     "left damaged", labels=["repo", "tier"])
        configured = set(self.repos)
        for result in self.store.verify_results():
            if result.repo not in configured:
                continue
            when.add_metric([result.repo], result.finished.timestamp())
            checked.add_metric([result.repo], result.files)
            damaged.add_metric([result.repo], result.damaged)
            repaired.add_metric([result.repo], result.repaired)
        broken = {(d.repo, d.snapshot) for d in self.store.verify_damage()}
        for (repo, tier), snapshot in sorted(self.store.all_tier_pointers().items()):
            if repo in configured:
                degraded.add_metric([repo, tier], int((repo, snapshot) in broken))
        yield from (when, checked, damaged, repaired, degraded)


class Metrics:
    """One registry per server process: request counters for both ports plus the state collector."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter("mirror_http_requests", "HTTP responses sent, by port and status",
                                ["server", "status"], registry=self.registry)
        self.auth_failures = Counter("mirror_api_auth_failures",
                                     "API calls refused for want of a valid token", registry=self.registry)
        self.api_refusals = Counter("mirror_api_refusals",
                                    "API calls refused by authentication or authorisation (401, 403, 429), "
                                    "by status and reason", ["status", "reason"], registry=self.registry)

    def add_state(self, store: Store, repos: Sequence[str], *, stale_after: float | None = None,
                  expiry_warning: float | None = None) -> None:
        self.registry.register(StateCollector(store, repos, stale_after=stale_after,
                                              expiry_warning=expiry_warning))

    def count_responses(self, app: web.Application, server: str) -> None:
        """Count every response `app` sends, by status, as `server` ("repo" or "api")."""

        async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
            self.requests.labels(server, str(response.status)).inc()

        app.on_response_prepare.append(on_prepare)

    def render(self) -> bytes:
        return generate_latest(self.registry)
