"""HOSTILE.md cases 19, 35, 40, 57 and 63, each test named `test_case<NN>_...` after its case.

Sync-level cases use the catalogue's fixtures and `assert_rejected` (REJ naming repo, file and
check; KEEP; NOPART; LOUD), see tests/test_hostile_catalogue.py. tests/HOSTILE_COVERAGE.md maps
every case to its tests.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from fixtures.apt_repo import AptRepo, DebPackage
from fixtures.keys import SigningKey, add_signing_subkey, make_key, with_foreign_subkey
from fixtures.rpm_repo import RpmPackage, RpmRepo, SignatureHeader, tamper_signature_header
from fixtures.upstream import UpstreamServer
from mirror.errors import MirrorError, NotFoundError
from mirror.gc import GcReport, collect_garbage
from mirror.pool import Pool
from mirror.store import Store
from mirror.sync import SyncResult, sync_repos
from mirror.tiers import Tiers
from tests import test_hostile_catalogue as catalogue
from tests.helpers import CHECKOUT, Mirror, seed_snapshot, write_config
from tests.test_hostile_catalogue import (
    INRELEASE,
    Before,
    RpmSetup,
    Setup,
    _new_version,
    _now,
    assert_rejected,
)

setup = catalogue.setup  # the catalogue's fixtures: a repo with one good snapshot in `dev`
synced = catalogue.synced

# -- case 35: wrong suite or identity change ----------------------------------------------------


def _sync(s: Setup, **kw: bool) -> SyncResult:
    store = s.mirror.store()
    try:
        (result,) = asyncio.run(sync_repos(s.mirror.settings, ["repo"], store, **kw))
    finally:
        store.close()
    return result


def _last_run_message(s: Setup) -> str | None:
    store = s.mirror.store()
    try:
        return store.sync_runs("repo", limit=1)[0].message
    finally:
        store.close()


IDENTITY_CHANGES: list[tuple[str, dict[str, str | None], str]] = [
    ("origin", {"Origin": "Evil"}, "Origin changed from 'Test' to 'Evil'"),
    ("label", {"Label": "Other Archive"}, "Label changed from 'Test' to 'Other Archive'"),
    ("label_removed", {"Label": None}, "Label changed from 'Test' to None"),
    # dists/stable now carries the next release: Suite still matches, so `wrong_suite` passes
    ("codename", {"Codename": "trixie"}, "Codename changed from 'stable' to 'trixie'"),
    # asked for by codename (Codename still "stable"), but the Suite moved on
    ("suite", {"Suite": "oldstable", "Codename": "stable"}, "Suite changed from 'stable' to 'oldstable'"),
]


@pytest.mark.parametrize(("variant", "fields", "words"), IDENTITY_CHANGES,
                         ids=[v for v, _, _ in IDENTITY_CHANGES])
def test_case35_identity_change_since_the_last_sync_is_refused_naming_old_and_new(
        setup: Setup, synced: Before, variant: str, fields: dict[str, str | None], words: str) -> None:
    _new_version(setup, extra_release_fields=fields)  # validly signed by the pinned key
    message = assert_rejected(setup, synced, setup.mirror.sync_one(), code="release_identity_changed",
                              file=INRELEASE, words=words)
    assert synced.snapshot in message and "--accept-identity-change" in message


def test_case35_identity_is_read_from_the_inrelease_when_the_snapshot_has_no_release(
        setup: Setup, synced: Before) -> None:
    _new_version(setup, release_gpg=False)  # InRelease only: Release is not mirrored beside it
    only_inrelease = setup.mirror.sync_one()
    assert only_inrelease.ok and only_inrelease.snapshot, only_inrelease.error
    assert "dists/stable/Release" not in setup.mirror.served_tree()
    tree = setup.mirror.served_tree()
    setup.upstream.add(DebPackage("libfoo1", "2.1-1", payload_size=4000))
    setup.upstream.publish(keep_plain_on_disk=False, release_gpg=False,
                           extra_release_fields={"Origin": "Evil"})
    refused = setup.mirror.sync_one()
    assert refused.error is not None and refused.error.code == "release_identity_changed", refused.error
    assert "Origin changed from 'Test' to 'Evil'" in str(refused.error)
    assert setup.mirror.snapshots() == [only_inrelease.snapshot, synced.snapshot]
    assert setup.mirror.tier() == only_inrelease.snapshot and setup.mirror.served_tree() == tree


def test_case35_identity_change_is_accepted_only_with_the_explicit_override_recorded_in_the_run(
        setup: Setup, synced: Before) -> None:
    _new_version(setup, extra_release_fields={"Origin": "Debian", "Label": "Debian"})
    refused = _sync(setup)
    assert refused.error is not None and refused.error.code == "release_identity_changed", refused.error
    accepted = _sync(setup, accept_identity_change=True)
    assert accepted.ok and accepted.snapshot, accepted.error
    assert setup.mirror.tier() == accepted.snapshot
    note = _last_run_message(setup)
    assert note is not None and "identity change accepted" in note, note
    assert "Origin changed from 'Test' to 'Debian'" in note, note
    assert "Label changed from 'Test' to 'Debian'" in note, note
    # the accepted identity is the mark now: the next release under it needs no override
    setup.upstream.add(DebPackage("libfoo1", "2.1-1", payload_size=4000))
    setup.upstream.publish(keep_plain_on_disk=False,
                           extra_release_fields={"Origin": "Debian", "Label": "Debian"})
    again = _sync(setup)
    assert again.ok and again.snapshot, again.error
    assert _last_run_message(setup) is None


def test_case35_unchanged_identity_and_first_sync_need_no_override(setup: Setup, synced: Before) -> None:
    _new_version(setup)  # same Origin/Label/Suite/Codename, new content
    result = setup.mirror.sync_one()
    assert result.ok and result.snapshot, result.error
    assert _last_run_message(setup) is None


def test_case35_cli_refuses_then_accepts_with_the_flag(setup: Setup, synced: Before) -> None:
    _new_version(setup, extra_release_fields={"Label": "Evil"})
    refused = setup.mirror.cli("sync", "--no-progress")
    assert refused.returncode == 1, refused
    assert "release identity changed" in refused.stdout, refused.stdout
    assert "Label changed from 'Test' to 'Evil'" in refused.stdout, refused.stdout
    assert setup.mirror.tier() == synced.snapshot
    accepted = setup.mirror.cli("sync", "--no-progress", "--accept-identity-change")
    assert accepted.returncode == 0, accepted
    assert setup.mirror.tier() != synced.snapshot


# -- case 63: garbage collection vs. promote ----------------------------------------------------

GC_ORDER = ("dev", "test", "uat", "prod")


@dataclass
class GcWorld:
    mirror: Mirror
    old: str  # s1: outside retention, no tier, not a rollback target, not graced: gc removes it
    snapshots: list[str]
    contents: dict[str, dict[str, bytes]]  # snapshot -> path -> bytes


def _gc_world(root: Path, key: SigningKey) -> GcWorld:
    from tests.test_gc import RETENTION, files

    keyring = key.write_public(root / "keys" / "archive.asc")
    mirror = write_config(root / "mirror", "http://127.0.0.1:9/", keyring, extra_top=RETENTION,
                          extra_server="grace_period = 0")
    settings = mirror.settings
    store, pool = Store(settings.storage.root / "state.db"), Pool(settings.storage.root)
    try:
        contents = {}
        snaps = []
        for i in range(1, 6):  # dev: s1 -> ... -> s5; s4 is dev's rollback target
            snap = seed_snapshot(store, pool, "repo", files(i))
            snaps.append(snap)
            contents[snap] = files(i)
    finally:
        store.close()
    return GcWorld(mirror, snaps[0], snaps, contents)


def _promote_old(world: GcWorld) -> BaseException | None:
    """Promote the otherwise unreferenced old snapshot into `test` (dev served it: no force)."""
    store = world.mirror.store()
    try:
        Tiers(store, GC_ORDER).promote("repo", "test", snapshot=world.old, actor="t", reason="case 63")
        return None
    except MirrorError as exc:
        return exc
    finally:
        store.close()


def _gc(world: GcWorld) -> GcReport:
    store = world.mirror.store()
    try:
        return collect_garbage(world.mirror.settings, store)
    finally:
        store.close()


def _assert_consistent(world: GcWorld, promote_error: BaseException | None) -> None:
    """Nothing any snapshot references is gone; the tiers serve complete snapshots; the promotion
    either happened (and `test` serves the old snapshot byte for byte) or failed cleanly."""
    settings = world.mirror.settings
    store, pool = world.mirror.store(), Pool(settings.storage.root)
    try:
        remaining = [s.id for s in store.snapshots("repo")]
        for snap in remaining:
            for path, entry in store.manifest("repo", snap).items():
                blob = pool.path_for(entry.sha256)
                assert blob.is_file(), f"{snap} {path}: pool object {entry.sha256} was deleted"
                assert hashlib.sha256(blob.read_bytes()).hexdigest() == entry.sha256
        for tier, state in store.tiers("repo").items():
            assert state.snapshot is None or state.snapshot in remaining, (tier, state)
        test = store.tiers("repo").get("test")
    finally:
        store.close()
    if promote_error is None:
        assert test is not None and test.snapshot == world.old
        assert world.old in remaining
        assert world.mirror.served_tree(tier="test") == world.contents[world.old]
        again = _gc(world)  # and the next gc keeps it: a tier serves it now
        assert again.swept and world.old not in again.repos[0].removed
        assert world.mirror.served_tree(tier="test") == world.contents[world.old]
    else:
        assert isinstance(promote_error, NotFoundError), promote_error
        assert f"no snapshot {world.old}" in str(promote_error)
        assert test is None or test.snapshot is None
        assert world.old not in remaining
    assert world.mirror.served_tree(tier="dev") == world.contents[world.snapshots[-1]]


def _run_both(world: GcWorld, *, gc_delay: float = 0.0, promote_delay: float = 0.0
              ) -> tuple[BaseException | None, GcReport]:
    results: dict[str, object] = {}
    start = threading.Barrier(2)

    def run_gc() -> None:
        start.wait()
        time.sleep(gc_delay)
        results["gc"] = _gc(world)

    def run_promote() -> None:
        start.wait()
        time.sleep(promote_delay)
        results["promote"] = _promote_old(world)

    threads = [threading.Thread(target=run_gc), threading.Thread(target=run_promote)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert "gc" in results and "promote" in results, results
    report = results["gc"]
    assert isinstance(report, GcReport) and report.swept, report
    error = results["promote"]
    assert error is None or isinstance(error, BaseException)
    return error, report


def test_case63_gc_holding_its_transaction_makes_a_racing_promotion_fail_cleanly(
        tmp_path: Path, archive_key: SigningKey, monkeypatch: pytest.MonkeyPatch) -> None:
    world = _gc_world(tmp_path, archive_key)
    import mirror.gc as gc_module

    inside = threading.Event()
    original = gc_module.kept_snapshots

    def paused(*args: Any, **kw: Any) -> set[str]:
        keep = original(*args, **kw)  # decided inside gc's BEGIN IMMEDIATE transaction
        inside.set()
        time.sleep(0.5)  # the promotion starts now and must wait for the database lock
        return keep

    monkeypatch.setattr(gc_module, "kept_snapshots", paused)
    box: dict[str, BaseException | None] = {}

    def promote_when_gc_is_inside() -> None:
        assert inside.wait(30)
        box["error"] = _promote_old(world)

    thread = threading.Thread(target=promote_when_gc_is_inside)
    thread.start()
    report = _gc(world)
    thread.join(60)
    assert world.old in report.repos[0].removed
    _assert_consistent(world, box["error"])
    assert box["error"] is not None  # gc went first: the snapshot is gone, the promotion refused


def test_case63_promotion_holding_its_transaction_makes_gc_keep_the_snapshot(
        tmp_path: Path, archive_key: SigningKey, monkeypatch: pytest.MonkeyPatch) -> None:
    world = _gc_world(tmp_path, archive_key)
    inside = threading.Event()
    original = Tiers._check_snapshot

    def paused(self: Tiers, repo: str, snapshot: str) -> None:
        original(self, repo, snapshot)  # inside the promotion's BEGIN IMMEDIATE transaction
        inside.set()
        time.sleep(0.5)  # gc starts now and must wait for the database lock

    monkeypatch.setattr(Tiers, "_check_snapshot", paused)
    box: dict[str, GcReport] = {}

    def gc_when_promotion_is_inside() -> None:
        assert inside.wait(30)
        box["report"] = _gc(world)

    thread = threading.Thread(target=gc_when_promotion_is_inside)
    thread.start()
    error = _promote_old(world)
    thread.join(60)
    assert error is None, error
    assert world.old not in box["report"].repos[0].removed
    _assert_consistent(world, None)


@pytest.mark.parametrize("seed", range(3))
def test_case63_gc_and_promotion_racing_in_threads_never_lose_a_referenced_object(
        tmp_path: Path, archive_key: SigningKey, seed: int) -> None:
    # which side wins depends on the delays (gc needs some ms to take its locks first) and the
    # scheduler; each outcome must be consistent, and over the runs both occur
    rng = random.Random(seed)
    outcomes = []
    for i in range(8):
        world = _gc_world(tmp_path / f"run{i}", archive_key)
        gc_delay, promote_delay = rng.uniform(0, 0.005), rng.uniform(0, 0.1)
        error, _report = _run_both(world, gc_delay=gc_delay, promote_delay=promote_delay)
        _assert_consistent(world, error)
        outcomes.append("promoted" if error is None else "collected")
    print(f"seed {seed}: {outcomes}")


def test_case63_gc_and_promote_as_separate_processes(tmp_path: Path, archive_key: SigningKey) -> None:
    rng = random.Random(63)
    for i in range(4):
        world = _gc_world(tmp_path / f"run{i}", archive_key)
        gc = subprocess.Popen([sys.executable, "-m", "mirror.cli", "-c", str(world.mirror.config), "gc"],
                              cwd=CHECKOUT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(rng.uniform(0, 0.8))  # around the time gc's process reaches its transaction
        promote = world.mirror.cli("promote", "repo", "--to", "test", "--snapshot", world.old)
        out, _ = gc.communicate(timeout=60)
        assert gc.returncode == 0, out
        if promote.returncode == 0:
            _assert_consistent(world, None)
        else:
            assert f"no snapshot {world.old}" in promote.stderr + promote.stdout, promote
            _assert_consistent(world, NotFoundError(f"no snapshot {world.old}"))
        print(f"run {i}: {'promoted' if promote.returncode == 0 else 'collected'}")


# -- case 19: tampered RPM signature header (CVE-2021-20271 class) ------------------------------

rpm_setup = catalogue.rpm_setup  # an RPM repo with one good snapshot (package_signatures "require")

TAMPERINGS: list[tuple[str, str]] = [
    ("flip-signature", "BAD"),
    ("flip-signature-hashed", "BAD"),
    ("flip-header-digest", "Header SHA256 digest: BAD"),
    ("transplant", "BAD"),
    ("drop-signature", "rpmkeys could not read"),
]


@pytest.mark.parametrize(("how", "words"), TAMPERINGS, ids=[t for t, _ in TAMPERINGS])
def test_case19_tampered_rpm_signature_header_is_refused_naming_the_package(
        rpm_setup: RpmSetup, how: str, words: str) -> None:
    s = rpm_setup
    first = s.mirror.sync_one()
    assert first.ok and first.snapshot, first.error
    before = Before(first.snapshot, s.mirror.served_tree())
    s.upstream.add(RpmPackage("hello", "1.1"))  # genuinely signed by the pinned key ...
    target = s.upstream.rpm_path("hello", "1.1")
    good = target.read_bytes()
    if how == "drop-signature":  # createrepo_c cannot read that one: publish first, edit primary below
        s.upstream.publish(revision="1001", timestamp=1_700_000_001)
    # ... then its signature header is changed; the donor is another package the same key signed
    tamper_signature_header(target, how, donor=s.upstream.rpm_path("libfoo"))
    bad = target.read_bytes()
    assert SignatureHeader.parse(bad).rest == SignatureHeader.parse(good).rest  # main header, payload
    # repodata over the tampered file: primary's sha256 and size are the tampered file's
    if how == "drop-signature":
        s.upstream.edit_metadata("primary", lambda x: x.replace(
            hashlib.sha256(good).hexdigest(), hashlib.sha256(bad).hexdigest()).replace(
            f'package="{len(good)}"', f'package="{len(bad)}"'))
    else:
        s.upstream.publish(revision="1001", timestamp=1_700_000_001)
    href = s.upstream.url_path_of("hello", "1.1")
    assert hashlib.sha256(target.read_bytes()).hexdigest() in s.upstream.read_record("primary").decode()
    message = assert_rejected(s, before, s.mirror.sync_one(), code="signature_invalid", file=href,
                              words="package signature check failed")
    assert words in message, message


def test_case19_tampered_signature_header_under_ignore_is_mirrored_as_primary_says(
        rpm_setup: RpmSetup, tmp_path: Path, archive_key: SigningKey) -> None:
    # The policy knob: with package_signatures = "ignore" the bytes primary.xml's signed sha256
    # names are mirrored as they are (case 29 still holds: the digest is enforced).
    from tests.test_sync_rpm import write_rpm_config

    s = rpm_setup
    s.upstream.add(RpmPackage("hello", "1.1"))
    tamper_signature_header(s.upstream.rpm_path("hello", "1.1"), "flip-signature")
    s.upstream.publish(revision="1001", timestamp=1_700_000_001)
    keyring = archive_key.write_public(tmp_path / "ignore-keys" / "k.asc")
    mirror = write_rpm_config(tmp_path / "ignore", s.server.url, keyring,
                              extra_repo='package_signatures = "ignore"')
    result = mirror.sync_one()
    assert result.ok, result.error
    href = s.upstream.url_path_of("hello", "1.1")
    assert mirror.served_tree()[href] == s.upstream.rpm_path("hello", "1.1").read_bytes()


# -- case 40: XXE / external DTD: no outbound request, no file read -----------------------------

MARKER = "MARKER-40-3f9a1c-do-not-leak"
_PAD = "<!--" + "x" * 5000 + "-->\n"  # past the 4 KiB prefix that parse_primary scans for a DTD
_PRIMARY_NS = 'xmlns="http://linux.duke.edu/metadata/common"'
_PRIMARY_PKG = ('<package type="rpm"><name>&x;</name><arch>x86_64</arch><version epoch="0" ver="1" rel="1"/>'
                f'<checksum type="sha256" pkgid="YES">{"a" * 64}</checksum><location href="x.rpm"/>'
                '<size package="1"/></package>')
_PARSE_CHILD = """
import sys
from pathlib import Path
kind, path = sys.argv[1], Path(sys.argv[2])
try:
    if kind == "updateinfo":
        from mirror.formats.updateinfo import parse_updateinfo as parse
    elif kind == "primary":
        from mirror.formats.rpm import parse_primary as parse
    else:
        from mirror.formats.rpm import parse_primary_needs as parse
    print("RESULT", repr(parse(path, what="hostile.xml")))
except Exception as exc:
    print("ERROR", type(exc).__name__, exc)
"""


def _xxe_documents(url: str, secret: Path) -> dict[str, tuple[str, str]]:
    """name -> (parser, document): SYSTEM DTDs and external entities pointing at `url` (a local
    listener standing in for http://169.254.169.254/ or an attacker) and at `secret`."""
    file_url = secret.as_uri()
    updates = '<updates><update type="security"><id>&x;</id></update></updates>\n'
    docs = {
        "updateinfo-entity-file": ("updateinfo", '<?xml version="1.0"?>\n'
                                   f'<!DOCTYPE updates [<!ENTITY x SYSTEM "{file_url}">]>\n{updates}'),
        "updateinfo-entity-http": ("updateinfo", '<?xml version="1.0"?>\n'
                                   f'<!DOCTYPE updates [<!ENTITY x SYSTEM "{url}/latest/meta-data/">]>\n'
                                   f'{updates}'),
        "updateinfo-system-dtd": ("updateinfo", f'<!DOCTYPE updates SYSTEM "{url}/x.dtd"><updates/>\n'),
        "updateinfo-dtd-past-comment": ("updateinfo", f'<?xml version="1.0"?>\n{_PAD}'
                                        f'<!DOCTYPE updates SYSTEM "{url}/x.dtd"><updates/>\n'),
    }
    for parser in ("primary", "needs"):
        for where, pad in (("", ""), ("-past-4k", _PAD)):
            docs[f"{parser}-entity-file{where}"] = (parser, (
                f'<?xml version="1.0"?>\n{pad}<!DOCTYPE metadata [<!ENTITY x SYSTEM "{file_url}">]>\n'
                f'<metadata {_PRIMARY_NS} packages="1">{_PRIMARY_PKG}</metadata>\n'))
            docs[f"{parser}-entity-http{where}"] = (parser, (
                f'<?xml version="1.0"?>\n{pad}<!DOCTYPE metadata [<!ENTITY x SYSTEM "{url}/e">]>\n'
                f'<metadata {_PRIMARY_NS} packages="1">{_PRIMARY_PKG}</metadata>\n'))
            docs[f"{parser}-parameter-entity{where}"] = (parser, (
                f'<?xml version="1.0"?>\n{pad}<!DOCTYPE metadata [<!ENTITY % p SYSTEM "{url}/p.dtd"> %p;]>\n'
                f'<metadata {_PRIMARY_NS} packages="0"></metadata>\n'))
            docs[f"{parser}-system-dtd{where}"] = (parser, (
                f'<?xml version="1.0"?>\n{pad}<!DOCTYPE metadata SYSTEM "{url}/x.dtd">\n'
                f'<metadata {_PRIMARY_NS} packages="0"></metadata>\n'))
    return docs


class _Listener:
    """A TCP listener on 127.0.0.1 that counts the connections it receives."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.peers: list[object] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append(peer)
            conn.close()

    def close(self) -> None:
        self.sock.close()


def _strace_usable() -> bool:
    if shutil.which("strace") is None:
        return False
    probe = subprocess.run(["strace", "-f", "-qq", "-o", os.devnull, "-e", "trace=getpid", "true"],
                           capture_output=True, check=False)
    return probe.returncode == 0


def test_case40_xxe_and_external_dtds_make_no_request_and_read_no_file(tmp_path: Path) -> None:
    """Each hostile document is parsed by the mirror's own parser in a child process (traced with
    strace when ptrace is allowed) next to a listener on 127.0.0.1 that every URL in it points at:
    the listener receives no connection, the child makes no connect() to it and never opens the
    file the entities name, and the file's content appears in no result or error."""
    secret = tmp_path / "secret.txt"
    secret.write_text(MARKER + "\n")
    listener = _Listener()
    traced = _strace_usable()
    outcomes: dict[str, str] = {}
    try:
        url = f"http://127.0.0.1:{listener.port}"
        for name, (parser, doc) in _xxe_documents(url, secret).items():
            path = tmp_path / f"{name}.xml"
            path.write_text(doc)
            trace = tmp_path / f"{name}.trace"
            cmd = [sys.executable, "-c", _PARSE_CHILD, parser, str(path)]
            if traced:
                cmd = ["strace", "-f", "-qq", "-o", str(trace), "-e", "trace=connect,open,openat,openat2",
                       *cmd]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=CHECKOUT,
                                  check=False)
            said = proc.stdout + proc.stderr
            assert proc.returncode == 0, (name, said)
            assert MARKER not in said, (name, said)
            if traced:
                calls = trace.read_text()
                assert f"htons({listener.port})" not in calls, (name, calls)
                assert str(secret) not in calls, (name, "the entity's file was opened")
            outcomes[name] = proc.stdout.split(" ", 2)[0] + " " + proc.stdout.split(" ", 2)[1]
    finally:
        time.sleep(0.2)  # a connection the last child made would be accepted by now
        listener.close()
    assert listener.peers == [], listener.peers
    # REJ: every document is refused, wherever its prolog puts the DTD (mirror.formats.rpm.check_prolog)
    accepted = sorted(n for n, o in outcomes.items() if not o.startswith("ERROR MalformedMetadataError"))
    assert accepted == [], \
        outcomes


def test_case40_system_dtd_past_the_first_4k_of_primary_is_refused(tmp_path: Path) -> None:
    from mirror.errors import MalformedMetadataError
    from mirror.formats.rpm import parse_primary

    path = tmp_path / "primary.xml"
    path.write_text(f'<?xml version="1.0"?>\n{_PAD}<!DOCTYPE metadata SYSTEM "http://127.0.0.1:9/x.dtd">\n'
                    f'<metadata {_PRIMARY_NS} packages="0"></metadata>\n')
    with pytest.raises(MalformedMetadataError):
        parse_primary(path, what="repodata/primary.xml")


# -- case 57: fsync/rename ordering and power loss ----------------------------------------------

_SYNC_CHILD = """
import asyncio, os, sys
from pathlib import Path
from mirror.config import load
from mirror.pool import Pool
from mirror.store import Store
from mirror.sync import sync_repos

config, mode = sys.argv[1], sys.argv[2]
durable = Pool.make_durable
def make_durable(self):
    if mode == "power-cut":  # the power goes the moment before anything written was flushed
        os._exit(137)
    durable(self)
Pool.make_durable = make_durable
replace, renamed = os.replace, []
def cut_replace(src, dst, *a, **k):
    if mode == "power-cut-renaming" and "/pool/sha256/" in str(dst) and len(renamed) == 3:
        os._exit(137)  # the power goes while staged files are being named in the pool
    replace(src, dst, *a, **k)
    renamed.append(dst)
os.replace = cut_replace
commit = Store.commit_snapshot
def commit_snapshot(self, *args, before_commit=None, **kw):  # visible in the trace as access() calls
    def ready():  # the rows are written; the database COMMIT follows
        if before_commit is not None:
            before_commit()
        os.access("/nonexistent-case57/commit-begin", os.F_OK)
    try:
        return commit(self, *args, before_commit=ready, **kw)
    finally:
        os.access("/nonexistent-case57/commit-end", os.F_OK)
Store.commit_snapshot = commit_snapshot
settings = load(Path(config))
store = Store(settings.storage.root / "state.db")
(result,) = asyncio.run(sync_repos(settings, ["repo"], store))
print("OK" if result.ok else f"ERROR {result.error}", result.snapshot)
"""
_TRACED = "rename,renameat,renameat2,fsync,fdatasync,syncfs,sync,access,faccessat,faccessat2"
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Call:
    name: str
    args: str

    @property
    def strings(self) -> list[str]:
        return _QUOTED.findall(self.args)

    @property
    def fd_path(self) -> str:
        """The path strace -y prints for the first fd argument (`5</x/y>`)."""
        m = re.match(r"\d+<([^>]*)>", self.args)
        return m.group(1) if m else ""


def _calls(trace: str) -> list[Call]:
    """The traced calls in order of completion, unfinished/resumed halves joined."""
    pending: dict[str, str] = {}
    out: list[Call] = []
    for line in trace.splitlines():
        pid, _, rest = line.partition(" ")
        rest = rest.strip()
        if rest.endswith("<unfinished ...>"):
            pending[pid] = rest.removesuffix("<unfinished ...>")
            continue
        resumed = re.match(r"<\.\.\. (\w+) resumed>(.*)$", rest)
        if resumed:
            rest = pending.pop(pid, resumed.group(1) + "(") + resumed.group(2)
        call = re.match(r"(\w+)\((.*)$", rest)
        if call:
            out.append(Call(call.group(1), call.group(2)))
    return out


@dataclass
class PowerWorld:
    upstream: AptRepo
    server: UpstreamServer
    mirror: Mirror
    before: dict[str, bytes]
    recorded: set[str]  # pool objects the database recorded (synced) before the traced sync


@pytest.fixture
def power_world(tmp_path: Path, archive_key: SigningKey) -> Iterator[PowerWorld]:
    if not _strace_usable():
        pytest.skip("needs strace and ptrace")
    upstream = AptRepo(tmp_path / "upstream", archive_key, architectures=("amd64", "i386"))
    upstream.add(DebPackage("hello", "1.0-1"), DebPackage("libfoo1", "2.0-1", arch="i386", payload_size=4000))
    upstream.publish(date=_now() - timedelta(hours=1), keep_plain_on_disk=False)
    keyring = archive_key.write_public(tmp_path / "keys" / "archive.asc")
    with UpstreamServer(upstream.root) as server:
        mirror = write_config(tmp_path / "mirror", server.url, keyring)
        mirror.config.write_text(mirror.config.read_text().replace(
            'architectures = ["amd64"]', 'architectures = ["amd64", "i386"]'))
        first = mirror.sync_one()
        assert first.ok and first.snapshot, first.error
        store = mirror.store()
        try:
            recorded = set(store.blob_sizes())
        finally:
            store.close()
        yield PowerWorld(upstream, server, mirror, mirror.served_tree(), recorded)


def _traced_sync(w: PowerWorld, mode: str,
                 trace: Path) -> tuple[subprocess.CompletedProcess[str], list[Call]]:
    proc = subprocess.run(["strace", "-f", "-qq", "-y", "-o", str(trace), "-e", f"trace={_TRACED}",
                           sys.executable, "-c", _SYNC_CHILD, str(w.mirror.config), mode],
                          capture_output=True, text=True, timeout=120, cwd=CHECKOUT, check=False)
    return proc, _calls(trace.read_text())


def _pool_renames(calls: list[Call], pool_root: Path) -> list[tuple[int, str]]:
    return [(i, c.strings[-1]) for i, c in enumerate(calls)
            if c.name.startswith("rename") and len(c.strings) >= 2
            and c.strings[-1].startswith(f"{pool_root}/") and c.args.rstrip().endswith("= 0")]


def _paths_of(w: PowerWorld, digests: set[str]) -> list[str]:
    store = w.mirror.store()
    try:
        return sorted(p for p, e in store.manifest("repo", store.snapshots("repo")[-1].id).items()
                      if e.sha256 in digests)
    finally:
        store.close()


def _check_pool_names(pool: Pool) -> None:
    for path in pool.root.rglob("*"):
        if path.is_file():
            assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, f"{path} is not its hash"


def test_case57_every_pool_rename_is_flushed_before_the_commit_that_records_it(
        power_world: PowerWorld, tmp_path: Path) -> None:
    """The order the mirror promises (mirror.pool): blobs wait in a temp folder, one syncfs of
    the pool's filesystem makes their bytes durable, only then are they renamed into the pool,
    a second syncfs makes the names durable, then the database transaction that records them
    commits (SQLite synchronous=FULL: its WAL is fsynced inside the commit; the transaction's rows
    are written meanwhile, mirror.sync.commit, and "commit-begin" marks its COMMIT). So after a
    power loss at any point no name in the pool holds incomplete bytes; and an unrecorded one is
    still re-hashed before use (Pool.adopt) or removed by gc."""
    w = power_world
    w.upstream.add(DebPackage("hello", "1.1-1"), DebPackage("libfoo1", "2.1-1", arch="i386"))
    w.upstream.publish(keep_plain_on_disk=False)
    proc, calls = _traced_sync(w, "sync", tmp_path / "trace.txt")
    assert proc.returncode == 0 and proc.stdout.startswith("OK"), proc.stdout + proc.stderr
    pool_root = Pool(w.mirror.settings.storage.root).root
    renames = _pool_renames(calls, pool_root)
    assert renames, "no rename into the pool traced"
    begin = next(i for i, c in enumerate(calls) if "commit-begin" in c.args)
    end = next(i for i, c in enumerate(calls) if "commit-end" in c.args)
    flushes = [i for i, c in enumerate(calls) if (c.name == "syncfs" and c.fd_path.startswith(str(pool_root)))
               or c.name == "sync"]
    assert flushes, "no syncfs of the pool"
    last_rename = max(i for i, _ in renames)
    assert any(last_rename < i < begin for i in flushes), "a pool rename is not flushed before the commit"
    first_rename = min(i for i, _ in renames)
    assert any(i < first_rename for i in flushes), "a blob was named before its bytes were on disk"
    assert not [p for i, p in renames if begin <= i <= end], "a rename inside the commit"
    db = str(w.mirror.settings.storage.root / "state.db")
    assert any(c.name in ("fsync", "fdatasync") and c.fd_path.startswith(db) for c in calls[begin:end]), \
        "the snapshot's commit is not flushed inside the commit"
    store = w.mirror.store()
    try:
        snapshot = store.latest_snapshot("repo")
        assert snapshot is not None
        referenced = set(store.snapshot_digests("repo", snapshot))
    finally:
        store.close()
    # every object the commit newly records went through one of those renames, before the syncfs
    renamed = {Path(p).name for _, p in renames}
    assert referenced - w.recorded <= renamed, sorted(referenced - w.recorded - renamed)


def _power_cut(w: PowerWorld, tmp_path: Path, mode: str = "power-cut") -> set[str]:
    """Sync until just before the pool is flushed ("power-cut"), or until the third staged file
    is being named in the pool ("power-cut-renaming"), then lose every write not flushed: each
    name a rename made visible keeps only an empty file (the worst an ordered-metadata filesystem
    may leave: the rename is durable, the data is not), unless the renamed file was fsynced, or
    the pool's filesystem synced, between its last write and the rename (this sync writes every
    staged file before its first syncfs). The names damaged."""
    proc, calls = _traced_sync(w, mode, tmp_path / "cut.txt")
    assert proc.returncode == 137, proc.stdout + proc.stderr
    pool_root = Pool(w.mirror.settings.storage.root).root
    damaged = set()
    for i, target in _pool_renames(calls, pool_root):
        source = calls[i].strings[0]
        if any((c.name in ("fsync", "fdatasync") and c.fd_path == source) or c.name in ("syncfs", "sync")
               for c in calls[:i]):
            continue  # its data was flushed before the rename made it visible: it survives
        Path(target).write_bytes(b"")
        damaged.add(Path(target).name)
    tmp = w.mirror.settings.storage.root / "tmp"
    for leftover in (tmp.rglob("*") if tmp.exists() else []):
        if leftover.is_file():
            leftover.write_bytes(b"")
    return damaged


@pytest.mark.parametrize("mode", ["power-cut", "power-cut-renaming"])
def test_case57_power_loss_leaves_only_whole_files_in_the_pool_and_the_next_sync_whole(
        power_world: PowerWorld, tmp_path: Path, mode: str) -> None:
    """A power cut before the flush (nothing named yet) or while the staged files are being named
    (after 3 renames), every unflushed write lost: no name in the pool holds incomplete bytes,
    nothing served changed, and the next sync completes (it removes what was left in the temp
    folder and re-hashes the names made before the cut)."""
    w = power_world
    # every index changes (both architectures get a new package): only new objects are written
    w.upstream.add(DebPackage("hello", "1.1-1"), DebPackage("libfoo1", "2.1-1", arch="i386"))
    w.upstream.publish(keep_plain_on_disk=False)
    damaged = _power_cut(w, tmp_path, mode)
    assert not damaged, _paths_of(w, damaged)  # every name was made after its bytes were flushed
    _check_pool_names(Pool(w.mirror.settings.storage.root))
    assert w.mirror.served_tree() == w.before  # KEEP: nothing served was touched
    again = w.mirror.sync_one()
    assert again.ok and again.snapshot, again.error
    _check_pool_names(Pool(w.mirror.settings.storage.root))
    assert w.mirror.served_tree() != w.before


def test_case57_a_run_killed_before_its_commit_leaves_its_verified_files_to_the_next_one(
        power_world: PowerWorld) -> None:
    """kill -9 just before the flush (no power loss: the bytes are in the page cache): the files
    the run had verified wait in its temp folder, named by their digests; the next run re-hashes
    them there and fetches none of them again, and removes the dead run's folder."""
    w = power_world
    w.upstream.add(DebPackage("hello", "1.1-1"), DebPackage("libfoo1", "2.1-1", arch="i386"))
    w.upstream.publish(keep_plain_on_disk=False)
    proc = subprocess.run([sys.executable, "-c", _SYNC_CHILD, str(w.mirror.config), "power-cut"],
                          capture_output=True, text=True, timeout=120, cwd=CHECKOUT, check=False)
    assert proc.returncode == 137, proc.stdout + proc.stderr
    new = [w.upstream.url_path_of("hello", "1.1-1"), w.upstream.url_path_of("libfoo1", "2.1-1")]
    fetched = {path: w.server.count(path) for path in new}
    assert all(fetched.values()), fetched
    assert w.mirror.temp_files(), "the killed run left nothing to adopt"
    again = w.mirror.sync_one()
    assert again.ok and again.snapshot, again.error
    assert {path: w.server.count(path) for path in new} == fetched  # adopted, not fetched again
    assert w.mirror.temp_files() == []
    _check_pool_names(Pool(w.mirror.settings.storage.root))


def test_case57_power_loss_never_damages_an_object_a_tier_already_serves(
        power_world: PowerWorld, tmp_path: Path) -> None:
    # Found with this test and fixed in mirror/trust/apt.py (_fetch_index): the decompressed
    # index of an unchanged architecture (and the Translation-en of nearly every sync) was written
    # again and renamed, unflushed, over the object the database records and a tier serves.
    w = power_world
    w.upstream.add(DebPackage("hello", "1.1-1"))  # amd64 only: the i386 Packages stays the same
    w.upstream.publish(keep_plain_on_disk=False)
    damaged = _power_cut(w, tmp_path)
    rewritten = sorted(damaged & w.recorded)
    assert not rewritten, f"recorded objects rewritten without a flush: {_paths_of(w, set(rewritten))}"
    assert w.mirror.served_tree() == w.before
    again = w.mirror.sync_one()
    assert again.ok and again.snapshot, again.error
    _check_pool_names(Pool(w.mirror.settings.storage.root))


def test_case57_power_loss_never_damages_the_inrelease_of_an_unchanged_suite(
        tmp_path: Path, archive_key: SigningKey) -> None:
    if not _strace_usable():
        pytest.skip("needs strace and ptrace")
    root = tmp_path / "upstream"
    stable = AptRepo(root, archive_key, suite="stable", architectures=("amd64",))
    testing = AptRepo(root, archive_key, suite="testing", architectures=("amd64",))
    for repo in (stable, testing):
        repo.add(DebPackage("hello", "1.0-1"))
        repo.publish(date=_now() - timedelta(hours=1), keep_plain_on_disk=False)
    keyring = archive_key.write_public(tmp_path / "keys" / "archive.asc")
    with UpstreamServer(root) as server:
        mirror = write_config(tmp_path / "mirror", server.url, keyring, suites='["stable", "testing"]')
        first = mirror.sync_one()
        assert first.ok and first.snapshot, first.error
        store = mirror.store()
        try:
            recorded = set(store.blob_sizes())
        finally:
            store.close()
        w = PowerWorld(stable, server, mirror, mirror.served_tree(), recorded)
        testing.add(DebPackage("hello", "1.1-1"))  # only testing moves on
        testing.publish(keep_plain_on_disk=False)
        damaged = _power_cut(w, tmp_path)
        rewritten = sorted(damaged & w.recorded)
        assert not rewritten, f"recorded objects rewritten without a flush: {_paths_of(w, set(rewritten))}"
        assert w.mirror.served_tree() == w.before


# rpmkeys --checksig -v output (rpm 4.18) for the tamperings above, as the verdict parser sees it
_RPMKEYS_OUTPUT = """/p/ok.rpm:
    Header V4 EdDSA/SHA256 Signature, key ID 97647472: OK
    Header SHA256 digest: OK
    Header SHA1 digest: OK
    Payload SHA256 digest: OK
    MD5 digest: OK
/p/flipped.rpm:
    Header V4 EdDSA/SHA256 Signature, key ID 97647472: BAD
    Header RSA signature: NOTFOUND
    Header SHA256 digest: OK
    Header SHA1 digest: OK
    Payload SHA256 digest: OK
    RSA signature: NOTFOUND
    DSA signature: NOTFOUND
    MD5 digest: OK
/p/digest.rpm:
    Header V4 EdDSA/SHA256 Signature, key ID 97647472: OK
    Header SHA256 digest: BAD (Expected 00bc != f0bc)
    Header SHA1 digest: OK
    Payload SHA256 digest: OK
    MD5 digest: OK
/p/payload.rpm:
    Header V4 EdDSA/SHA256 Signature, key ID 97647472: OK
    Header SHA256 digest: OK
    Payload SHA256 digest: BAD (Expected 7f11 != 326d)
    MD5 digest: BAD (Expected c496 != 5ba2)
/p/unreadable.rpm:
/p/other-key.rpm:
    Header V4 EdDSA/SHA256 Signature, key ID 0badc0de: NOKEY
    Header SHA256 digest: OK
/p/unsigned.rpm:
    Header SHA256 digest: OK
    Header SHA1 digest: OK
    Payload SHA256 digest: OK
    MD5 digest: OK
"""


@pytest.mark.parametrize(("name", "verdict"), [
    ("ok", None),
    ("flipped", "signature by key ID 97647472: BAD"),
    ("digest", "Header SHA256 digest: BAD (Expected 00bc != f0bc)"),
    ("payload", "Payload SHA256 digest: BAD"),
    ("unreadable", "rpmkeys could not read"),
    ("other-key", "not one of this repo's keys"),
    ("unsigned", "not signed"),
])
def test_case19_rpmkeys_verdicts(name: str, verdict: str | None) -> None:
    from mirror.trust.rpmsig import _blocks, _verdict

    blocks = _blocks(_RPMKEYS_OUTPUT)
    got = _verdict(blocks[f"/p/{name}.rpm"])
    if verdict is None:
        assert got is None
    else:
        assert got is not None and verdict in got, got


@pytest.mark.parametrize("binding", [False, True], ids=["no_binding", "bound_to_another_key"])
def test_case19_rpm_signed_by_a_subkey_not_bound_to_the_pinned_key_is_refused(
        tmp_path: Path, archive_key: SigningKey, binding: bool) -> None:
    # CVE-2021-3521: the repo's key file carries the vendor key plus an attacker's subkey that has
    # no binding signature by the vendor key (none, or the attacker key's own); the attacker signs
    # a package with it. gpg drops such a subkey on import, so the rpm database the verifier
    # builds from the pinned keys never holds it, and the package's key is unknown: refused.
    from tests.test_sync_rpm import BASE as RPM_BASE
    from tests.test_sync_rpm import write_rpm_config

    attacker = make_key(tmp_path / "attacker", "Attacker <attacker@example.org>")
    subkey = add_signing_subkey(attacker)
    keyring = tmp_path / "keys" / "vendor-plus-foreign-subkey.gpg"
    keyring.parent.mkdir(parents=True)
    keyring.write_bytes(with_foreign_subkey(archive_key, attacker, binding=binding))
    upstream = RpmRepo(tmp_path / "upstream", archive_key)
    upstream.add(*RPM_BASE)
    upstream.publish(revision="1000", timestamp=1_700_000_000)
    with UpstreamServer(upstream.root) as server:
        mirror = write_rpm_config(tmp_path / "mirror", server.url, keyring)
        first = mirror.sync_one()
        assert first.ok and first.snapshot, first.error
        before = Before(first.snapshot, mirror.served_tree())
        upstream.add(RpmPackage("hello", "1.1"), sign=subkey)
        upstream.publish(revision="1001", timestamp=1_700_000_001)
        message = assert_rejected(RpmSetup(upstream, server, mirror, archive_key), before, mirror.sync_one(),
                                  code="signature_invalid", file=upstream.url_path_of("hello", "1.1"),
                                  words="not one of this repo's keys")
        assert subkey.fingerprint.rstrip("!")[-8:].lower() in message, message
