"""`mirror serve`: the repo port and the API port in one process, with graceful shutdown.

The two ports use separate state-database connections: the repo port's catalog only reads (and
sees every commit, the API's included, through `Store.change_marker`), so serving never waits
behind a move, a sync commit or an API call holding the other connection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from mirror.config import Settings
from mirror.metrics import Metrics
from mirror.pool import Pool
from mirror.publish import StoreCatalog
from mirror.store import Store
from mirror.tokens import TokenRing
from mirror.web.api import make_api_app
from mirror.web.repo import make_repo_app, run_servers

log = logging.getLogger(__name__)


async def serve(settings: Settings, *, ready: Callable[[list[tuple[str, int]]], Any] | None = None) -> None:
    root = settings.storage.root
    tokens = TokenRing(settings.server.token_file)  # a malformed token file stops the start
    if settings.server.token_file is None:
        log.warning("no server.token_file: every mutating API call will be refused")
    catalog_store = Store(root / "state.db")
    api_store = Store(root / "state.db")
    try:
        public_key = root / "keys" / "mirror.asc"
        catalog = StoreCatalog(catalog_store, Pool(root), public_key,
                               grace=timedelta(seconds=settings.server.grace_period))
        metrics = Metrics()
        metrics.add_state(api_store, settings.repo_names)
        repo_app = make_repo_app(catalog)
        metrics.count_responses(repo_app, "repo")
        api_app = make_api_app(settings, api_store, tokens=tokens, metrics=metrics)
        bind = settings.server.bind
        log.info("serving repositories on http://%s:%d/ and the API on http://%s:%d/",
                 bind, settings.server.repo_port, bind, settings.server.api_port)
        await run_servers([(repo_app, bind, settings.server.repo_port),
                           (api_app, bind, settings.server.api_port)], ready=ready)
    finally:
        catalog_store.close()
        api_store.close()
