"""`mirror serve`: the repo port (and, later, the API port) with graceful shutdown."""

from __future__ import annotations

import logging

from mirror.config import Settings
from mirror.pool import Pool
from mirror.publish import StoreCatalog
from mirror.store import Store
from mirror.web.repo import make_repo_app, run_servers

log = logging.getLogger(__name__)


async def serve(settings: Settings) -> None:
    root = settings.storage.root
    store = Store(root / "state.db")
    public_key = root / "keys" / "mirror.asc"
    catalog = StoreCatalog(store, Pool(root), public_key)
    app = make_repo_app(catalog)
    log.info("serving repositories on http://%s:%d/", settings.server.bind, settings.server.repo_port)
    try:
        await run_servers([(app, settings.server.bind, settings.server.repo_port)])
    finally:
        store.close()
