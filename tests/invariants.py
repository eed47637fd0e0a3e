"""The storage invariants a crash, a full disk or bit rot must never break, checked from outside.

One checker (`check_storage`) reads the state database and the pool directly, the way the server
resolves a request (tier pointer -> manifest -> pool file), and returns every broken invariant as a
sentence, so that a test can assert the list is empty and print it otherwise.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path

from mirror.model import SHA256_RE
from mirror.pool import Pool
from mirror.store import Store

Tree = dict[str, bytes]


def pool_problems(root: Path) -> list[str]:
    """Every file under the pool must be named by the sha256 of its bytes, in its fan-out folder."""
    problems: list[str] = []
    base = root / "pool" / "sha256"
    if not base.exists():
        return problems
    for path in sorted(base.rglob("*")):
        if path.is_dir():
            continue
        rel = path.relative_to(base).parts
        name = path.name
        if not SHA256_RE.match(name) or rel != (name[:2], name):
            problems.append(f"pool: stray file {path.relative_to(root)}")
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != name:
            problems.append(f"pool: {name} hashes to {digest} ({path.stat().st_size} bytes)")
    return problems


def temp_files(root: Path) -> list[Path]:
    """Files left under the storage's temp folder (a finished sync must leave none)."""
    tmp = root / "tmp"
    return sorted(p for p in tmp.rglob("*") if not p.is_dir()) if tmp.exists() else []


def served_trees(store: Store, pool: Pool) -> dict[tuple[str, str], Tree]:
    """(repo, tier) -> path -> bytes of every tier pointer, read through manifest and pool."""
    trees: dict[tuple[str, str], Tree] = {}
    for (repo, tier), snapshot in sorted(store.all_tier_pointers().items()):
        manifest = store.manifest(repo, snapshot)
        trees[repo, tier] = {p: pool.path_for(e.sha256).read_bytes() for p, e in manifest.items()}
    return trees


def state_problems(store: Store, pool: Pool) -> list[str]:
    """The database agrees with itself and with the pool."""
    problems: list[str] = []
    db = store.db
    recorded = {r[0]: r[1] for r in db.execute("SELECT sha256, size FROM blobs")}
    for digest, size in recorded.items():
        path = pool.path_for(digest)
        if not path.is_file():
            problems.append(f"blob {digest} is recorded but not in the pool")
        elif path.stat().st_size != size:
            problems.append(f"blob {digest} is recorded with {size} bytes, the pool file has "
                            f"{path.stat().st_size}")
    for repo, snapshot, path, digest in db.execute(
            "SELECT repo, snapshot, path, sha256 FROM manifest_entries"):
        if digest not in recorded:
            problems.append(f"{repo}/{snapshot}/{path}: blob {digest} is not recorded")
    for repo, snapshot in db.execute("SELECT repo, id FROM snapshots"):
        if db.execute("SELECT COUNT(*) FROM manifest_entries WHERE repo = ? AND snapshot = ?",
                      (repo, snapshot)).fetchone()[0] == 0:
            problems.append(f"snapshot {repo}/{snapshot} has no manifest")
        if db.execute("SELECT COUNT(*) FROM snapshot_roots WHERE repo = ? AND snapshot = ?",
                      (repo, snapshot)).fetchone()[0] == 0:
            problems.append(f"snapshot {repo}/{snapshot} has no roots")
    for repo, tier, snapshot in db.execute("SELECT repo, tier, snapshot FROM tiers"):
        if snapshot is not None and store.snapshot_state(repo, snapshot) != "verified":
            problems.append(f"tier {repo}/{tier} points at {snapshot}, which is not a verified snapshot")
        moves = list(reversed(store.moves(repo, tier=tier)))
        if not moves or moves[-1].to_snapshot != snapshot:
            last = moves[-1].to_snapshot if moves else "no history"
            problems.append(f"tier {repo}/{tier} points at {snapshot}, its last history row at {last}")
        for before, after in itertools.pairwise(moves):
            if after.from_snapshot != before.to_snapshot:
                problems.append(f"tier {repo}/{tier} history is broken between moves {before.id} and "
                                f"{after.id}: {before.to_snapshot} then from {after.from_snapshot}")
    for (repo, tier) in {(m[0], m[1]) for m in db.execute("SELECT repo, tier FROM tier_moves")}:
        if store.tier_snapshot(repo, tier) is None:
            problems.append(f"tier {repo}/{tier} has history but no pointer")
    return problems


def check_storage(root: Path, allowed: Mapping[tuple[str, str], Sequence[Tree]]) -> list[str]:
    """Every invariant at once. `allowed`: per (repo, tier), the trees it may serve (before the
    interrupted operation, or after it if it committed); a tier not named must serve nothing."""
    problems = pool_problems(root)
    pool = Pool(root)
    store = Store(root / "state.db")
    try:
        problems += state_problems(store, pool)
        try:
            trees = served_trees(store, pool)
        except OSError as exc:
            return [*problems, f"a served file cannot be read: {exc}"]
    finally:
        store.close()
    for key in sorted(set(trees) | set(allowed)):
        tree = trees.get(key)
        options = allowed.get(key, ())
        if tree is None:
            if options:
                problems.append(f"tier {key[0]}/{key[1]} serves nothing")
        elif not any(tree == option for option in options):
            closest = min(options, key=lambda o: len(set(o.items()) ^ set(tree.items())), default={})
            diff = sorted(p for p in set(tree) | set(closest) if tree.get(p) != closest.get(p))
            problems.append(f"tier {key[0]}/{key[1]} serves a tree that is neither before nor after; "
                            f"differs in {diff[:5]}")
    return problems


def running_sync_runs(root: Path) -> list[tuple[int, str]]:
    store = Store(root / "state.db")
    try:
        return [(r.id, r.repo) for r in store.sync_runs() if r.outcome == "running"]
    finally:
        store.close()
