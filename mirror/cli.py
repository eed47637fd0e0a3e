"""The command line: the only place that prints for humans and exits."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

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
    p.add_argument("--accept-identity-change", action="store_true",
                   help="accept a Release whose Origin/Label/Suite/Codename changed since the last "
                        "accepted snapshot (this run only; recorded in the run)")
    p.add_argument("--no-progress", action="store_true", help="plain log lines even on a terminal")

    p = sub.add_parser("snapshots", help="a repo's snapshots, newest first; `snapshots delete REPO ID` "
                                          "deletes one no tier needs",
                       usage="mirror snapshots [-h] [--json] REPO\n"
                             "       mirror snapshots [-h] [--json] [--reason R] delete REPO ID")
    p.add_argument("words", nargs="+", metavar="REPO | delete REPO ID")
    p.add_argument("--reason", metavar="R", help="delete: why (kept in the audit history)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("tiers", help="which snapshot each tier serves, per repo")
    p.add_argument("--json", action="store_true")
    p.add_argument("--at", metavar="TIME",
                   help="what each tier served at TIME (ISO 8601 or YYYYMMDDTHHMMSSZ)")

    p = sub.add_parser("promote", help="point a tier at what another tier serves, or at a snapshot")
    p.add_argument("repo", metavar="REPO")
    p.add_argument("--to", required=True, metavar="TIER", help="the tier to move")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--from", dest="from_tier", metavar="TIER", help="promote what this tier serves")
    source.add_argument("--snapshot", metavar="ID", help="promote this snapshot")
    p.add_argument("--force", action="store_true",
                   help="override the tier policy (e.g. skipping a tier); recorded as forced")
    p.add_argument("--reason", metavar="R", help="why (kept in the history)")
    p.add_argument("--expect", metavar="ID",
                   help="compare-and-swap: refuse unless TIER serves ID now (\"none\": nothing)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("rollback", help="point a tier back at what it served before its last move")
    p.add_argument("repo", metavar="REPO")
    p.add_argument("tier", metavar="TIER")
    p.add_argument("--force", action="store_true",
                   help="override the tier policy (e.g. an older upstream Date); recorded as forced")
    p.add_argument("--reason", metavar="R", help="why (kept in the history)")
    p.add_argument("--expect", metavar="ID", help="compare-and-swap: refuse unless TIER serves ID now")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("history", help="a repo's tier moves, newest first")
    p.add_argument("repo", metavar="REPO")
    p.add_argument("--tier", metavar="T", help="only this tier's moves")
    p.add_argument("--at", metavar="TIME", help="only moves made at or before TIME")
    p.add_argument("--limit", type=int, metavar="N", help="at most N moves")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("verify", help="re-hash every stored file against its recorded digest")
    p.add_argument("repo", nargs="?", metavar="REPO")
    p.add_argument("--repair", action="store_true",
                   help="fetch a verified replacement of each damaged file from upstream; "
                        "quarantine the rest")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")

    p = sub.add_parser("status", help="per repo: last successful sync, upstream expiry, damage; "
                                      "exit status 1 when a repo is stale or expiring")
    p.add_argument("repos", nargs="*", metavar="REPO")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("gc", help="remove snapshots nothing needs, then pool files nothing references")
    p.add_argument("repo", nargs="?", metavar="REPO", help="only this repo's snapshots (default: all)")
    p.add_argument("--dry-run", action="store_true", help="show what would be removed, remove nothing")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("diff", help="what moving from FROM to TO changes (exit 0: nothing, 1: changes)")
    p.add_argument("repo", metavar="REPO")
    p.add_argument("from_ref", metavar="FROM", help="a tier, a snapshot id or TIER@TIME")
    p.add_argument("to_ref", metavar="TO", help="a tier, a snapshot id or TIER@TIME")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true")
    shape.add_argument("--csv", action="store_true")

    p = sub.add_parser("cve", help="per repo and tier: whether it carries the fix of a CVE")
    p.add_argument("cve_id", metavar="CVE-ID")
    p.add_argument("--json", action="store_true")

    sub.add_parser("serve", help="serve the repositories on repo_port and the API on api_port")
    sub.add_parser("check-config", help="validate the configuration and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "snapshots":
        _snapshot_words(parser, args)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        check_names(args)
        settings = load(config_path(args.config))
        handler = COMMANDS[args.command]
        return handler(settings, args)
    except MirrorError as exc:
        print(f"mirror: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mirror: interrupted", file=sys.stderr)
        return 130


def _snapshot_words(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """`snapshots REPO` lists; `snapshots delete REPO ID` deletes (a repo named "delete" is still
    listed by `snapshots delete`)."""
    words = args.words
    args.delete = len(words) == 3 and words[0] == "delete"
    if args.delete:
        args.repo, args.snapshot = words[1], words[2]
    elif len(words) == 1:
        args.repo = words[0]
        if args.reason is not None:
            parser.error("snapshots: --reason goes with `snapshots delete REPO ID`")
    else:
        parser.error("snapshots: expected REPO, or delete REPO ID")


def check_names(args: argparse.Namespace) -> None:
    """Repo, tier and snapshot names from the command line, before anything looks them up
    (mirror.names: no `..`, separators or control characters; exit 2 with the reason)."""
    from mirror.names import check_repo, check_snapshot, check_tier

    for name in getattr(args, "repos", None) or ():
        check_repo(name)
    checks = (("repo", check_repo), ("to", check_tier), ("from_tier", check_tier), ("tier", check_tier),
              ("snapshot", check_snapshot))
    for attr, check in checks:
        value = getattr(args, attr, None)
        if value is not None:
            check(value)
    expect = getattr(args, "expect", None)
    if expect is not None and expect.lower() != "none":
        check_snapshot(expect)


def _store(settings: Settings) -> Any:
    from mirror.store import Store

    return Store(settings.storage.root / "state.db", actor=_actor())


def cmd_sync(settings: Settings, args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from mirror.downloads import Helpers, fetch_policy, helper_count

    for name in args.repos:
        settings.repo(name)
    names = args.repos or list(settings.repo_names)
    # Forked first, before any thread, event loop or database connection exists: a fork copies
    # only the calling thread, and a database connection must not cross a fork.
    helpers = Helpers.fork(helper_count(settings.sync.download_processes), fetch_policy(settings),
                           settings.sync.max_parallel_downloads)
    # Then, while the rest of a sync's modules load, a thread builds each repo's keyring (gpg,
    # some 10 ms a repo when new; the sync finds it built, or builds it again and reports what
    # failed) and opens the state database (a new one is created: a few ms more).
    with ThreadPoolExecutor(1, thread_name_prefix="mirror-prepare") as prepare:
        opened = prepare.submit(_prepare_sync, settings, names)
        gc.disable()  # as in mirror.entry: loading modules leaves nothing to collect
        try:
            from mirror.sync import Progress, SyncResult, sync_repos
        finally:
            gc.enable()
        store = opened.result()
    show = sys.stderr.isatty() and not args.no_progress
    progresses = {n: Progress(repo=n) for n in names}

    async def run() -> list[SyncResult]:
        try:
            return await sync_repos(settings, names, store, progresses.__getitem__,
                                    allow_rollback=args.allow_rollback,
                                    accept_identity_change=args.accept_identity_change, helpers=helpers)
        finally:
            if helpers is not None:
                await helpers.close()

    if show:
        from mirror.progress import live_progress

        with live_progress(progresses.values()):
            results = asyncio.run(run())
    else:
        results = asyncio.run(run())
    for r in results:
        if r.error is not None:
            print(f"{r.repo}: error: {r.error.within(r.repo)}")
        else:
            print(f"{r.repo}: {r.snapshot or 'unchanged'}")
    _issue_releases(settings, store)
    return 0 if all(r.ok for r in results) else 1


def _prepare_sync(settings: Settings, names: Sequence[str]) -> Any:
    """Blocking: build the repos' keyrings ahead (failures are left to the sync), then open the
    state database: the Store."""
    from mirror.trust.gpg import Keyring, keyring_home

    for name in names:
        repo = settings.repo(name)
        try:
            Keyring([repo.keyring], repo.fingerprints, keyring_home(settings.storage.root, name))
        except Exception as exc:  # the sync builds it again, and fails the repo with the reason
            logging.getLogger(__name__).debug("%s: keyring not built ahead: %s", name, exc)
    return _store(settings)


def _issue_releases(settings: Settings, store: Any, only: tuple[str, str] | None = None) -> None:
    """Re-issue the Release files of tiers with tier_signing "mirror" that a move (or time) made
    due; `mirror serve` does the same in the background. Problems are warnings: the move stands."""
    if settings.signing is None:  # nothing to sign with (ReleaseIssuer.for_settings): not even loaded
        return
    from mirror.releases import ReleaseIssuer

    if only is not None and settings.repo(only[0]).tier_signing != "mirror":
        return
    try:
        issuer = ReleaseIssuer.for_settings(settings, store)
        if issuer is None:
            return
        if only is not None:
            issuer.issue(*only)
            return
        _issued, failed = issuer.issue_due()
    except MirrorError as exc:
        print(f"mirror: warning: Release files not re-issued: {exc}", file=sys.stderr)
        return
    for repo, tier, error in failed:
        print(f"mirror: warning: {repo} {tier}: Release files not re-issued: {error}", file=sys.stderr)


def cmd_snapshots(settings: Settings, args: argparse.Namespace) -> int:
    settings.repo(args.repo)
    if args.delete:
        return cmd_snapshot_delete(settings, args)
    snaps = _store(settings).snapshots(args.repo)
    if args.json:
        print(json.dumps([s.as_json() for s in snaps], indent=2))
        return 0
    print(f"{'SNAPSHOT':<18} {'PACKAGES':>8} {'SIZE':>10}  {'SIGNED BY':<9}  TIERS")
    for s in snaps:
        print(f"{s.id:<18} {s.packages:>8} {_size(s.bytes):>10}  {s.signed_by:<9}  {','.join(s.tiers)}")
    return 0


def cmd_snapshot_delete(settings: Settings, args: argparse.Namespace) -> int:
    """`mirror snapshots delete REPO ID`: refused (exit 2, the reasons) while a tier needs it."""
    from mirror.snapshot_delete import delete_snapshot
    from mirror.web.api import deletion_json

    record = delete_snapshot(_store(settings), settings, args.repo, args.snapshot, actor=_actor(),
                             reason=args.reason)
    if args.json:
        print(json.dumps(deletion_json(record), indent=2))
    else:
        print(f"{record.repo}: deleted {record.snapshot} ({record.packages} packages, "
              f"{_size(record.bytes)}); `mirror gc` reclaims its files")
    return 0


def _tiers(settings: Settings) -> Any:
    from mirror.tiers import Tiers

    return Tiers.for_settings(_store(settings), settings)


def _actor() -> str:
    """Who runs this command (getpass.getuser's answer, without importing getpass)."""
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        if user := os.environ.get(name):
            return user
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # no passwd entry and no $USER
        return f"uid:{os.getuid()}"


def cmd_tiers(settings: Settings, args: argparse.Namespace) -> int:
    from mirror.tiers import parse_moment
    from mirror.web.api import tiers_document

    moment = parse_moment(args.at) if args.at else None
    out: dict[str, dict[str, dict[str, str | None]]] = tiers_document(settings, _tiers(settings), moment)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{'REPO':<20} {'TIER':<8} {'SNAPSHOT':<18} SINCE")
    for repo_name, tiers in out.items():
        for tier, st in tiers.items():
            print(f"{repo_name:<20} {tier:<8} {st['snapshot'] or '-':<18} {st['since'] or '-'}")
    return 0


def _expectation(value: str | None) -> Any:
    from mirror.tiers import UNSET

    if value is None:
        return UNSET
    return None if value.lower() == "none" else value


def _print_move(result: Any, as_json: bool) -> None:
    from mirror.web.api import move_result_json

    if as_json:
        print(json.dumps(move_result_json(result), indent=2))
    elif result.move is None:
        print(f"{result.repo} {result.tier}: already serves {result.snapshot}, unchanged")
    else:
        move = result.move
        forced = " (forced)" if move.forced else ""
        print(f"{move.repo} {move.tier}: {move.from_snapshot or '-'} -> {move.to_snapshot}{forced}")


def cmd_promote(settings: Settings, args: argparse.Namespace) -> int:
    settings.repo(args.repo)
    tiers = _tiers(settings)
    result = tiers.promote(args.repo, args.to, from_tier=args.from_tier, snapshot=args.snapshot,
                           actor=_actor(), reason=args.reason, force=args.force,
                           expected=_expectation(args.expect))
    _print_move(result, args.json)
    if result.changed:
        _issue_releases(settings, tiers.store, (args.repo, args.to))
    return 0


def cmd_rollback(settings: Settings, args: argparse.Namespace) -> int:
    settings.repo(args.repo)
    tiers = _tiers(settings)
    result = tiers.rollback(args.repo, args.tier, actor=_actor(), reason=args.reason, force=args.force,
                            expected=_expectation(args.expect))
    _print_move(result, args.json)
    if result.changed:
        _issue_releases(settings, tiers.store, (args.repo, args.tier))
    return 0


def cmd_history(settings: Settings, args: argparse.Namespace) -> int:
    from mirror.tiers import parse_moment
    from mirror.web.api import history_document

    settings.repo(args.repo)
    tiers = _tiers(settings)
    moment = parse_moment(args.at) if args.at else None
    if args.limit is not None and args.limit < 1:
        from mirror.errors import InvalidRequestError

        raise InvalidRequestError("--limit must be at least 1")
    if args.json:
        print(json.dumps(history_document(tiers, args.repo, tier=args.tier, moment=moment, limit=args.limit),
                         indent=2))
        return 0
    moves = tiers.history(args.repo, tier=args.tier, until=moment, limit=args.limit)
    print(f"{'ID':>5}  {'AT':<20} {'TIER':<8} {'ACTION':<8} {'FROM':<17}    {'TO':<17} {'ACTOR':<12} REASON")
    for m in moves:
        at = m.at.strftime("%Y-%m-%dT%H:%M:%SZ")
        flag = " [forced]" if m.forced else ""
        print(f"{m.id:>5}  {at:<20} {m.tier:<8} {m.action:<8} {m.from_snapshot or '-':<17} -> "
              f"{m.to_snapshot or '-':<17} {m.actor:<12} {m.reason or ''}{flag}")
    return 0


def cmd_verify(settings: Settings, args: argparse.Namespace) -> int:
    """Exit status 0: nothing damaged (or all of it repaired); 1: damage remains."""
    from mirror.integrity import record, repair, verify_pool

    if args.repo:
        settings.repo(args.repo)
    store = _store(settings)
    show = sys.stderr.isatty() and not args.no_progress and not args.json
    with _verify_progress(show) as progress:
        report = verify_pool(settings, store, args.repo, progress=progress)
    try:
        if args.repair and report.damaged:
            asyncio.run(repair(settings, store, report))
    finally:
        record(store, report, repair_tried=args.repair)
    if args.json:
        print(json.dumps({
            "checked": report.checked, "bytes": report.bytes, "remaining": len(report.remaining),
            "damaged": [{"sha256": d.sha256, "size": d.size, "problem": d.problem, "repaired": d.repaired,
                         "repair": d.repair,
                         "references": [{"repo": r, "snapshot": sn, "path": p} for r, sn, p in d.references]}
                        for d in report.damaged]}, indent=2))
        return 1 if report.remaining else 0
    for damage in report.damaged:
        users = ", ".join(f"{r}/{sn}/{p}" for r, sn, p in damage.references[:5])
        more = f" (+{len(damage.references) - 5} more)" if len(damage.references) > 5 else ""
        print(f"damaged: {damage.sha256} ({damage.size} bytes): {damage.problem}; used by {users}{more}")
        if damage.repaired:
            print(f"  repaired: {damage.repair}")
        elif args.repair:
            print(f"  not repaired: {damage.repair}")
    repaired = len(report.damaged) - len(report.remaining)
    print(f"verified {report.checked} files, {_size(report.bytes)}: {len(report.damaged)} damaged"
          + (f", {repaired} repaired" if args.repair else ""))
    return 1 if report.remaining else 0


@contextlib.contextmanager
def _verify_progress(show: bool) -> Iterator[Callable[[int, int, int, int], None] | None]:
    """A progress bar on the terminal for `mirror verify` (files and bytes hashed)."""
    if not show:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    bar = Progress(TextColumn("verify"), BarColumn(), TextColumn("{task.fields[files]}"), DownloadColumn(),
                   TransferSpeedColumn(), transient=True)
    task = bar.add_task("verify", total=None, files="")

    def update(done: int, done_bytes: int, total: int, total_bytes: int) -> None:
        bar.update(task, completed=done_bytes, total=total_bytes or None, files=f"{done}/{total} files")

    with bar:
        yield update


def cmd_gc(settings: Settings, args: argparse.Namespace) -> int:
    from mirror.gc import collect_garbage

    if args.repo:
        settings.repo(args.repo)
    report = collect_garbage(settings, _store(settings), [args.repo] if args.repo else None,
                             dry_run=args.dry_run)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for entry in report.repos:
        ids = f": {', '.join(entry.removed)}" if entry.removed else ""
        print(f"{entry.repo}: {verb} {len(entry.removed)} snapshots, kept {entry.kept}{ids}")
    if report.releases_removed:
        print(f"re-issued Release records: {verb} {report.releases_removed}")
    if report.swept:
        print(f"pool: {verb} {report.files_removed} files, {_size(report.bytes_removed)}"
              f" (+ {report.unrecorded_removed} unrecorded files, {_size(report.unrecorded_bytes)})")
    else:
        print(f"pool: not swept: {report.sweep_skipped}")
    return 0


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    """Exit status 0: every repo fresh; 1: a repo is stale (no successful sync within
    `[sync] stale_after`) or a tier serves upstream metadata expiring within `expiry_warning`."""
    from mirror.status import duration_text, repo_statuses

    for name in args.repos:
        settings.repo(name)
    statuses = repo_statuses(_store(settings), args.repos or settings.repo_names,
                             stale_after=settings.sync.stale_after,
                             expiry_warning=settings.sync.expiry_warning, tier_order=settings.tiers)
    if args.json:
        print(json.dumps({"ok": all(s.ok for s in statuses), "stale_after": settings.sync.stale_after,
                          "expiry_warning": settings.sync.expiry_warning,
                          "repos": [s.as_json() for s in statuses]}, indent=2))
        return 0 if all(s.ok for s in statuses) else 1
    for st in statuses:
        state = ", ".join(w for w, on in (("STALE", st.stale), ("EXPIRING", st.expiring)) if on) or "ok"
        success = st.last_success.strftime("%Y-%m-%dT%H:%M:%SZ") if st.last_success else "never"
        ago = f" ({duration_text(st.since_success)} ago)" if st.since_success is not None else ""
        print(f"{st.repo}: {state}; last successful sync {success}{ago}")
        run = st.last_run
        if run is not None:
            what = (run.snapshot or "") if run.outcome != "failed" else f"{run.error_code}: {run.message}"
            print(f"  last sync: {run.outcome}{' ' + what if what else ''}")
        if st.running:
            print("  a sync is running now")
        for t in st.tiers:
            if t.valid_until is None:
                expiry = "no Valid-Until"
            else:
                left = (f"expired {duration_text(-t.remaining)} ago" if t.remaining is not None
                        and t.remaining < 0 else f"{duration_text(t.remaining)} left")
                expiry = f"valid until {t.valid_until.strftime('%Y-%m-%dT%H:%M:%SZ')} ({left})"
            print(f"  {t.tier:<8} {t.snapshot}  {expiry}{'  EXPIRING' if t.expiring else ''}")
        if st.damaged:
            print(f"  degraded: {st.damaged} damaged objects at the last verify "
                  "(run `mirror verify --repair`)")
        for problem in st.problems:
            print(f"  ! {problem}")
    return 0 if all(s.ok for s in statuses) else 1


def cmd_diff(settings: Settings, args: argparse.Namespace) -> int:
    from mirror.diff import diff_to_csv, diff_to_table
    from mirror.diffs import compute_diff

    result = compute_diff(_store(settings), settings, args.repo, args.from_ref, args.to_ref)
    if args.json:
        print(json.dumps(result.as_json(), indent=2, ensure_ascii=False))
    elif args.csv:
        sys.stdout.write(diff_to_csv(result.diff))
    else:
        print(f"{args.repo}: {result.from_ref.ref} ({result.from_ref.snapshot}) -> "
              f"{result.to_ref.ref} ({result.to_ref.snapshot})")
        sys.stdout.write(diff_to_table(result.diff))
    return 0 if result.diff.is_empty else 1


def cmd_cve(settings: Settings, args: argparse.Namespace) -> int:
    from mirror.diffs import cve_report, cve_to_table

    report = cve_report(_store(settings), settings, args.cve_id)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
        return 0
    sys.stdout.write(cve_to_table(report))
    return 0


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from mirror.server import serve

    asyncio.run(serve(settings))
    return 0


def cmd_check_config(settings: Settings, args: argparse.Namespace) -> int:
    if settings.server.token_file is not None:
        from mirror.tokens import parse_token_file

        parse_token_file(settings.server.token_file)
    print(f"{settings.source}: ok ({len(settings.repos)} repos, tiers {', '.join(settings.tiers)})")
    return 0


COMMANDS = {"sync": cmd_sync, "snapshots": cmd_snapshots, "tiers": cmd_tiers, "promote": cmd_promote,
            "rollback": cmd_rollback, "history": cmd_history, "verify": cmd_verify, "gc": cmd_gc,
            "serve": cmd_serve, "check-config": cmd_check_config, "status": cmd_status, "diff": cmd_diff,
            "cve": cmd_cve}


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def run() -> NoReturn:
    """The `mirror` command: `main`, then leave at once.

    Every change is durable by then (each database commit is fsynced: synchronous=FULL; pool
    files before the commit that records them), so the process ends without the interpreter's
    teardown and without closing its database connection, which would make SQLite checkpoint
    its write-ahead log into the database file on the way out (two more fdatasyncs: about 20 ms
    of every sync here, an eighth of a no-op one). SQLite checkpoints that log itself as it grows
    (wal_autocheckpoint, 1,000 pages), and the next connection reads it as before. Tests and
    embedders call `main`, which returns."""
    code = main()
    from mirror import codecache

    codecache.save()  # a no-op unless some dataclass method was compiled anew (mirror.entry)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    run()
