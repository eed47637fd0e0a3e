"""`mirror verify`: re-hash stored files against the digests their snapshots recorded."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from mirror.config import Settings
from mirror.pool import Pool, file_sha256
from mirror.store import Store


@dataclass(frozen=True)
class Damage:
    sha256: str
    problem: str
    references: list[tuple[str, str, str]]  # (repo, snapshot, path)


@dataclass
class IntegrityReport:
    checked: int = 0
    bytes: int = 0
    damaged: list[Damage] = field(default_factory=list)


def _check(pool: Pool, digest: str, size: int) -> str | None:
    path = pool.path_for(digest)
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        return "missing from the pool"
    if actual != size:
        return f"size {actual}, expected {size}"
    got = file_sha256(path)
    return None if got == digest else f"content hashes to {got}"


def verify_pool(settings: Settings, store: Store, repo: str | None = None) -> IntegrityReport:
    pool = Pool(settings.storage.root)
    refs = store.all_blob_references(repo)
    sizes = store.blob_sizes()
    report = IntegrityReport()
    workers = max(2, os.cpu_count() or 2)
    with ThreadPoolExecutor(workers) as executor:
        results = executor.map(lambda d: (d, _check(pool, d, sizes.get(d, -1))), sorted(refs))
        for digest, problem in results:
            report.checked += 1
            report.bytes += max(sizes.get(digest, 0), 0)
            if problem is not None:
                report.damaged.append(Damage(digest, problem, refs[digest]))
    return report
