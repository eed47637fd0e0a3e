"""The command line: the only place that prints for humans and exits."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from mirror import __version__
from mirror.config import Settings, config_path, load
from mirror.errors import MirrorError

log = logging.getLogger("mirror")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mirror", description="Verifying APT/RPM repository mirror.")
    parser.add_argument("-c", "--config", help="configuration file (default: $MIRROR_CONFIG, then "
                                               "/etc/mirror/mirror.toml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"mirror {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("sync", help="sync repos (all if none named) into new snapshots")
    p.add_argument("repos", nargs="*", metavar="REPO")
    p.add_argument("--allow-rollback", action="store_true",
                   help="accept upstream metadata older than the last accepted (this run only)")
    p.add_argument("--no-progress", action="store_true", help="plain log lines even on a terminal")

    p = sub.add_parser("snapshots", help="a repo's snapshots, newest first")
    p.add_argument("repo", metavar="REPO")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("tiers", help="which snapshot each tier serves, per repo")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("verify", help="re-hash every stored file against its recorded digest")
    p.add_argument("repo", nargs="?", metavar="REPO")

    sub.add_parser("serve", help="serve the repositories on repo_port")
    sub.add_parser("check-config", help="validate the configuration and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        settings = load(config_path(args.config))
        handler = COMMANDS[args.command]
        return handler(settings, args)
    except MirrorError as exc:
        print(f"mirror: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mirror: interrupted", file=sys.stderr)
        return 130


def _store(settings: Settings) -> Any:
    from mirror.store import Store

    return Store(settings.storage.root / "state.db")


def cmd_sync(settings: Settings, args: argparse.Namespace) -> int:
    from mirror.sync import Progress, sync_repos

    for name in args.repos:
        settings.repo(name)
    store = _store(settings)
    names = args.repos or list(settings.repo_names)
    show = sys.stderr.isatty() and not args.no_progress
    progresses = {n: Progress(repo=n) for n in names}
    if show:
        from mirror.progress import live_progress

        with live_progress(progresses.values()):
            results = asyncio.run(sync_repos(settings, names, store, progresses.__getitem__,
                                             allow_rollback=args.allow_rollback))
    else:
        results = asyncio.run(sync_repos(settings, names, store, progresses.__getitem__,
                                         allow_rollback=args.allow_rollback))
    for r in results:
        if r.error is not None:
            print(f"{r.repo}: error: {r.error}")
        else:
            print(f"{r.repo}: {r.snapshot or 'unchanged'}")
    return 0 if all(r.ok for r in results) else 1


def cmd_snapshots(settings: Settings, args: argparse.Namespace) -> int:
    settings.repo(args.repo)
    snaps = _store(settings).snapshots(args.repo)
    if args.json:
        print(json.dumps([{"id": s.id, "created": s.created.isoformat(), "packages": s.packages,
                           "bytes": s.bytes, "tiers": list(s.tiers), "signed_by": s.signed_by}
                          for s in snaps], indent=2))
        return 0
    print(f"{'SNAPSHOT':<18} {'PACKAGES':>8} {'SIZE':>10}  {'SIGNED BY':<9}  TIERS")
    for s in snaps:
        print(f"{s.id:<18} {s.packages:>8} {_size(s.bytes):>10}  {s.signed_by:<9}  {','.join(s.tiers)}")
    return 0


def cmd_tiers(settings: Settings, args: argparse.Namespace) -> int:
    store = _store(settings)
    out: dict[str, dict[str, dict[str, str | None]]] = {}
    for repo in settings.repos:
        states = store.tiers(repo.name)
        out[repo.name] = {}
        for tier in settings.tiers:
            st = states.get(tier)
            out[repo.name][tier] = {"snapshot": st.snapshot if st else None,
                                    "since": st.since.isoformat() if st else None}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{'REPO':<20} {'TIER':<8} {'SNAPSHOT':<18} SINCE")
    for repo_name, tiers in out.items():
        for tier, st in tiers.items():
            print(f"{repo_name:<20} {tier:<8} {st['snapshot'] or '-':<18} {st['since'] or '-'}")
    return 0


def cmd_verify(settings: Settings, args: argparse.Namespace) -> int:
    from mirror.integrity import verify_pool

    if args.repo:
        settings.repo(args.repo)
    report = verify_pool(settings, _store(settings), args.repo)
    for damage in report.damaged:
        users = ", ".join(f"{r}/{s}/{p}" for r, s, p in damage.references[:5])
        more = f" (+{len(damage.references) - 5} more)" if len(damage.references) > 5 else ""
        print(f"damaged: {damage.sha256}: {damage.problem}; used by {users}{more}")
    print(f"verified {report.checked} files, {_size(report.bytes)}: {len(report.damaged)} damaged")
    return 1 if report.damaged else 0


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from mirror.server import serve

    asyncio.run(serve(settings))
    return 0


def cmd_check_config(settings: Settings, args: argparse.Namespace) -> int:
    print(f"{settings.source}: ok ({len(settings.repos)} repos, tiers {', '.join(settings.tiers)})")
    return 0


COMMANDS = {"sync": cmd_sync, "snapshots": cmd_snapshots, "tiers": cmd_tiers, "verify": cmd_verify,
            "serve": cmd_serve, "check-config": cmd_check_config}


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


if __name__ == "__main__":
    sys.exit(main())
