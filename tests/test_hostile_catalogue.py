"""HOSTILE.md cases that had no test of their own, each named `test_case<NN>_...` after its case.

Every sync-level case starts, as the catalogue says, from a repo with one good snapshot in `dev`,
changes the upstream so a clean sync would make a new snapshot, injects the attack, and asserts
REJ (the error names the repo, the file and the check), KEEP (`dev` serves the same bytes),
NOPART (no new snapshot, no temp file) and LOUD (the sync run is recorded as failed with the
error's code). tests/HOSTILE_COVERAGE.md maps every case to its tests.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fixtures.apt_repo import AptRepo, DebPackage
from fixtures.keys import SigningKey
from fixtures.rpm_repo import RpmPackage, RpmRepo
from fixtures.upstream import Fault, UpstreamServer
from mirror.errors import RedirectError
from mirror.fetch import _check_redirect
from mirror.sync import SyncResult
from tests.helpers import Mirror, write_config

BASE = [DebPackage("hello", "1.0-1"), DebPackage("libfoo1", "2.0-1", payload_size=4000)]
INRELEASE = "dists/stable/InRelease"
PACKAGES_DIR = "dists/stable/main/binary-amd64"


@dataclass
class Setup:
    upstream: AptRepo
    server: UpstreamServer
    mirror: Mirror
    key: SigningKey
    other: SigningKey


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def setup(tmp_path: Path, archive_key: SigningKey, other_key: SigningKey) -> Iterator[Setup]:
    upstream = AptRepo(tmp_path / "upstream", archive_key, architectures=("amd64",))
    upstream.add(*BASE)
    upstream.publish(date=_now() - timedelta(hours=1), keep_plain_on_disk=False)
    keyring = archive_key.write_public(tmp_path / "keys" / "archive.asc")
    with UpstreamServer(upstream.root) as server:
        mirror = write_config(tmp_path / "mirror", server.url, keyring)
        # short timeouts: slow-retrieval cases must end in seconds, not minutes
        mirror.config.write_text(mirror.config.read_text()
                                 .replace("read_timeout = 10", "read_timeout = 0.5"))
        yield Setup(upstream, server, mirror, archive_key, other_key)


@dataclass
class Before:
    snapshot: str
    tree: dict[str, bytes]


@pytest.fixture
def synced(setup: Setup) -> Before:
    first = setup.mirror.sync_one()
    assert first.ok, first.error
    assert first.snapshot
    setup.server.clear()
    return Before(first.snapshot, setup.mirror.served_tree())


def _new_version(s: Setup, **publish: object) -> None:
    s.upstream.add(DebPackage("hello", "1.1-1"))
    s.upstream.publish(keep_plain_on_disk=False, **publish)  # type: ignore[arg-type]


def _resign(s: Setup, mutate: Callable[[bytes], bytes]) -> None:
    """Rewrite the upstream Release with `mutate` and sign it again (InRelease and Release.gpg)."""
    release = mutate(s.upstream.release_path.read_bytes())
    s.upstream.release_path.write_bytes(release)
    s.upstream.release_gpg_path.write_bytes(s.key.detach_sign(release))
    s.upstream.inrelease_path.write_bytes(s.key.clearsign(release))


def assert_rejected(s: Setup | RpmSetup, before: Before, result: SyncResult, *, code: str | tuple[str, ...],
                    file: str, words: str = "") -> str:
    """REJ + KEEP + NOPART + LOUD; returns the error message."""
    assert result.error is not None, "the sync succeeded"
    message = str(result.error)
    codes = (code,) if isinstance(code, str) else code
    assert result.error.code in codes, message
    assert message.startswith("repo:"), message
    assert file in message, message
    assert words in message, message
    assert s.mirror.snapshots() == [before.snapshot]
    assert s.mirror.tier() == before.snapshot
    assert s.mirror.served_tree() == before.tree
    assert s.mirror.temp_files() == []
    store = s.mirror.store()
    try:
        run = store.sync_runs("repo", limit=1)[0]
    finally:
        store.close()
    assert run.outcome == "failed" and run.error_code == result.error.code
    return message


# -- C1: OpenPGP --------------------------------------------------------------------------------

def _literal_packet(data: bytes) -> bytes:
    body = b"b\x00\x00\x00\x00\x00" + data  # binary, empty file name, date 0
    return bytes([0xAC, len(body)]) + body  # old-format packet, tag 11 (literal data)


RELEASE_GPG_PAYLOADS: list[tuple[str, Callable[[bytes, bytes], bytes]]] = [
    ("garbage_after", lambda sig, other: sig + b"\nOrigin: Evil\n"),
    ("garbage_before", lambda sig, other: b"Origin: Evil\n" + sig),
    ("garbage_between", lambda sig, other: sig + b"Origin: Evil\n" + other),
    ("literal_packet_after", lambda sig, other: sig + _literal_packet(b"Origin: Evil\n")),
    ("literal_packet_before", lambda sig, other: _literal_packet(b"Origin: Evil\n") + sig),
]


@pytest.mark.parametrize(("variant", "make"), RELEASE_GPG_PAYLOADS, ids=[v for v, _ in RELEASE_GPG_PAYLOADS])
def test_case05_release_gpg_with_payload_is_rejected(setup: Setup, synced: Before, variant: str,
                                                     make: Callable[[bytes, bytes], bytes]) -> None:
    _new_version(setup, inrelease=False)
    release = setup.upstream.release_path.read_bytes()
    sig = setup.key.detach_sign(release, armor=False)
    setup.upstream.release_gpg_path.write_bytes(make(sig, setup.key.detach_sign(release, armor=False)))
    assert_rejected(setup, synced, setup.mirror.sync_one(), code="signature_invalid",
                    file="dists/stable/Release.gpg")


def test_case05_release_gpg_with_payload_beside_good_inrelease_is_not_served(setup: Setup,
                                                                             synced: Before) -> None:
    # Policy: the detached pair is only mirrored when it verifies and says what InRelease says.
    _new_version(setup)
    gpg = setup.upstream.release_gpg_path
    gpg.write_bytes(gpg.read_bytes() + b"\nOrigin: Evil\n")
    result = setup.mirror.sync_one()
    assert result.ok, result.error
    tree = setup.mirror.served_tree()
    assert tree[INRELEASE] == setup.upstream.inrelease_path.read_bytes()
    assert "dists/stable/Release.gpg" not in tree


def test_case06_inrelease_with_one_huge_line_is_capped(setup: Setup, synced: Before) -> None:
    setup.server.faults[INRELEASE] = Fault(body=b"Origin: " + b"A" * (11 * 1024 * 1024))
    assert_rejected(setup, synced, setup.mirror.sync_one(), code="too_large", file=INRELEASE, words="limit")


HTML = b"<!DOCTYPE html>\n<html><body><h1>Please log in to the hotel Wi-Fi</h1></body></html>\n"


def test_case12_html_page_instead_of_inrelease_is_rejected(setup: Setup, synced: Before) -> None:
    _new_version(setup)
    setup.server.faults[INRELEASE] = Fault(body=HTML)
    assert_rejected(setup, synced, setup.mirror.sync_one(), code="signature_invalid", file=INRELEASE)


def test_case12_html_page_for_release_and_release_gpg_is_rejected(setup: Setup, synced: Before) -> None:
    _new_version(setup)
    setup.upstream.inrelease_path.unlink()
    setup.server.faults["dists/stable/Release"] = Fault(body=HTML)
    setup.server.faults["dists/stable/Release.gpg"] = Fault(body=HTML)
    assert_rejected(setup, synced, setup.mirror.sync_one(), code="signature_invalid",
                    file="dists/stable/Release.gpg")


def test_case13_304_reply_to_inrelease_is_not_taken_as_verified(setup: Setup, synced: Before) -> None:
    _new_version(setup)
    setup.server.faults[INRELEASE] = Fault(statuses=[304] * 10)
    assert_rejected(setup, synced, setup.mirror.sync_one(), code="fetch_failed", file=INRELEASE, words="304")
    assert setup.server.count(INRELEASE) == 1  # a 304 is an answer, not a transient failure


def test_case13_signed_repository_turning_unsigned_is_rejected(setup: Setup, synced: Before) -> None:
    _new_version(setup)
    setup.upstream.inrelease_path.unlink()
    setup.upstream.release_gpg_path.unlink()
    assert_rejected(setup, synced, setup.mirror.sync_one(), code="upstream_not_found",
                    file="dists/stable/Release.gpg")


# -- C3: freshness ------------------------------------------------------------------------------

def test_case23_release_dated_far_in_the_future_is_refused_and_not_a_high_water_mark(
        setup: Setup, synced: Before) -> None:
    # Fast-forward (T4): a Date more than MAX_FUTURE_SKEW ahead is refused, so it can never
    # become the mark that makes later genuine releases look like rollbacks.
    _new_version(setup, date=_now() + timedelta(days=365))
    assert_rejected(setup, synced, setup.mirror.sync_one(), code="metadata_future", file=INRELEASE,
                    words="in the future")
    setup.upstream.publish(date=_now(), keep_plain_on_disk=False)
    result = setup.mirror.sync_one()
    assert result.ok, result.error
    assert result.snapshot


def test_case23_small_clock_skew_is_tolerated(setup: Setup, synced: Before) -> None:
    _new_version(setup, date=_now() + timedelta(minutes=30))
    result = setup.mirror.sync_one()
    assert result.ok, result.error


# -- C4: integrity ------------------------------------------------------------------------------

def _xz_glob() -> list[str]:
    return [f"{PACKAGES_DIR}/Packages.xz", f"{PACKAGES_DIR}/by-hash/SHA256/*"]


INDEX_SIZE_FAULTS: list[tuple[str, Fault, tuple[str, ...], str]] = [
    ("ten_junk_bytes_appended", Fault(append=b"0123456789"), ("size_mismatch",), "longer than"),
    ("truncated", Fault(truncate_after=40), ("fetch_failed", "size_mismatch"), ""),
    ("truncated_with_reset", Fault(truncate_after=40, reset=True), ("fetch_failed", "size_mismatch"), ""),
]


@pytest.mark.parametrize(("variant", "fault", "codes", "words"), INDEX_SIZE_FAULTS,
                         ids=[v[0] for v in INDEX_SIZE_FAULTS])
def test_case28_index_size_mismatch_is_rejected(setup: Setup, synced: Before, variant: str, fault: Fault,
                                                codes: tuple[str, ...], words: str) -> None:
    _new_version(setup)
    for key in _xz_glob():
        setup.server.faults[key] = fault
    assert_rejected(setup, synced, setup.mirror.sync_one(), code=codes, file=f"{PACKAGES_DIR}/Packages",
                    words=words)


def test_case28_release_size_plus_111_is_rejected(setup: Setup, synced: Before) -> None:
    _new_version(setup)
    data = setup.upstream.packages_path(ext=".xz").read_bytes()
    line = re.compile(rb"( [0-9a-f]+ +)(\d+)( main/binary-amd64/Packages.xz\n)")  # every hash section
    _resign(setup, lambda r: line.sub(lambda m: m[1] + str(int(m[2]) + 111).encode() + m[3], r))
    assert str(len(data) + 111).encode() in setup.upstream.release_path.read_bytes()
    assert_rejected(setup, synced, setup.mirror.sync_one(), code=("size_mismatch", "fetch_failed"),
                    file=f"{PACKAGES_DIR}/Packages")


def test_case30_by_hash_file_with_other_content_is_rejected(setup: Setup, synced: Before) -> None:
    stale = setup.upstream.packages_path(ext=".xz").read_bytes()  # the previous generation's bytes
    _new_version(setup)
    setup.server.faults[f"{PACKAGES_DIR}/by-hash/SHA256/*"] = Fault(body=stale)
    assert_rejected(setup, synced, setup.mirror.sync_one(), code=("checksum_mismatch", "size_mismatch"),
                    file=f"{PACKAGES_DIR}/Packages")


@pytest.mark.parametrize("bad_hash", [b"../../../../etc/passwd", b"0" * 63, b"G" * 64, b"../" * 21 + b"x"])
def test_case30_release_hash_must_be_64_hex_before_it_is_used_in_a_path(
        setup: Setup, synced: Before, bad_hash: bytes) -> None:
    _new_version(setup)
    digest = hashlib.sha256(setup.upstream.packages_path(ext=".xz").read_bytes()).hexdigest().encode()
    _resign(setup, lambda r: r.replace(digest, bad_hash))
    assert_rejected(setup, synced, setup.mirror.sync_one(), code="metadata_malformed", file="dists/stable/")
    assert setup.server.count("*/by-hash/*") == 0
    assert setup.server.count("etc/*") == 0


MISSING_FIELDS: list[tuple[str, dict[str, str | None], dict[str, object], str]] = [
    ("no_size", {"Size": None}, {}, "metadata_malformed"),
    ("only_md5sum", {}, {"package_hashes": ("MD5Sum",)}, "weak_digest"),
]


@pytest.mark.parametrize(("variant", "override", "publish", "code"), MISSING_FIELDS,
                         ids=[m[0] for m in MISSING_FIELDS])
def test_case31_package_entry_without_size_or_strong_hash_is_rejected(
        setup: Setup, synced: Before, variant: str, override: dict[str, str | None],
        publish: dict[str, object], code: str) -> None:
    setup.upstream.add(DebPackage("hello", "1.1-1"))
    if override:
        setup.upstream.override("hello", override)
    setup.upstream.publish(keep_plain_on_disk=False, **publish)  # type: ignore[arg-type]
    assert_rejected(setup, synced, setup.mirror.sync_one(), code=code, file=f"{PACKAGES_DIR}/Packages")
    assert setup.server.count("pool/*") == 0


def test_case34_index_listed_but_missing_upstream_is_rejected(setup: Setup, synced: Before) -> None:
    _new_version(setup)
    directory = setup.upstream.packages_path().parent
    for path in directory.rglob("*"):
        if path.is_file():
            path.unlink()
    assert_rejected(setup, synced, setup.mirror.sync_one(), code="upstream_not_found",
                    file=f"{PACKAGES_DIR}/Packages", words="no variant")


def test_caseT8_same_filename_listed_with_two_digests_is_rejected(setup: Setup, synced: Before) -> None:
    # mix-and-match: one path, two contents (two index generations stitched together)
    _new_version(setup)
    filename = setup.upstream.url_path_of("hello", "1.1-1")
    setup.upstream.add_raw_stanza({"Package": "hello", "Version": "1.1-1+evil", "Architecture": "amd64",
                                   "Filename": filename, "Size": "1234", "SHA256": "ab" * 32})
    setup.upstream.publish(keep_plain_on_disk=False)
    # REJ either way: the bogus digest never verifies, and a path with two verified digests is refused
    assert_rejected(setup, synced, setup.mirror.sync_one(),
                    code=("metadata_malformed", "checksum_mismatch", "size_mismatch"), file=filename)


def test_caseT8_release_with_many_unrelated_entries_syncs_in_bounded_time(setup: Setup,
                                                                           synced: Before) -> None:
    _new_version(setup)
    junk = b"".join(b" %s %d main/binary-x%d/Packages\n" % (hashlib.sha256(b"%d" % i).hexdigest().encode(),
                                                            i, i) for i in range(50_000))
    _resign(setup, lambda r: r.replace(b"SHA256:\n", b"SHA256:\n" + junk, 1))
    start = time.monotonic()
    result = setup.mirror.sync_one()
    assert result.ok, result.error
    assert time.monotonic() - start < 20
    assert setup.server.count("*binary-x*") == 0


# -- C5: paths and strings ----------------------------------------------------------------------

FILENAMES = ["/etc/passwd", "..", "a/../..", "pool/main/h/hello/../../../../../etc/cron.d/x",
             "pool\\..\\..\\x.deb", "pool/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "pool/..%2f..%2f..%2fetc/passwd",
             "pool/main/h/hello/x\x1b]0;pwn\x07.deb"]


@pytest.mark.parametrize("filename", FILENAMES, ids=[repr(f) for f in FILENAMES])
def test_case38_hostile_filename_is_rejected_before_any_request(setup: Setup, synced: Before,
                                                                filename: str) -> None:
    _new_version(setup)
    setup.upstream.override("hello", {"Filename": filename})
    setup.upstream.publish(keep_plain_on_disk=False)
    assert_rejected(setup, synced, setup.mirror.sync_one(), code="unsafe_path",
                    file=f"{PACKAGES_DIR}/Packages")
    assert setup.server.count("pool/*") == 0
    assert not [p for _m, p, _s in setup.server.requests if "etc" in p or "x.deb" in p]


@pytest.mark.parametrize("entry", [b"main/../../x/Packages", b"/etc/Packages",
                                   b"main/binary-amd64/../../../x", b"main/%2e%2e/%2e%2e/x/Packages"])
def test_case38_release_entry_leaving_the_suite_is_rejected(setup: Setup, synced: Before,
                                                            entry: bytes) -> None:
    _new_version(setup)
    _resign(setup, lambda r: r.replace(b"main/binary-amd64/Packages.xz", entry))
    assert_rejected(setup, synced, setup.mirror.sync_one(), code=("unsafe_path", "metadata_malformed"),
                    file="dists/stable/")


HOSTILE_STRINGS = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "\x1b]0;pwn\x07",
                   "a\r\nSet-Cookie: x=1", "\u202egnp.exe"]


def test_case45_hostile_strings_are_escaped_in_diff_json() -> None:
    from mirror.diff import diff_rows, diff_to_json

    rows = [(s, "amd64", "1.0") for s in HOSTILE_STRINGS]
    doc = json.dumps(diff_to_json(diff_rows("deb", [], rows), "repo", ("a", None), ("b", None)))
    assert not any(ord(c) < 0x20 or ord(c) > 0x7e for c in doc)  # control chars, U+202E: all \u-escaped
    assert sorted(a["name"] for a in json.loads(doc)["added"]) == sorted(HOSTILE_STRINGS)


def test_case45_control_characters_from_metadata_never_reach_the_terminal(setup: Setup,
                                                                          synced: Before) -> None:
    _new_version(setup)
    setup.upstream.override("hello", {"Filename": "pool/main/h/hello/\x1b]0;pwn\x07<script>.deb"})
    setup.upstream.publish(keep_plain_on_disk=False)
    out = setup.mirror.cli("sync")
    assert out.returncode == 1
    assert "repo: error:" in out.stdout
    for text in (out.stdout, out.stderr):
        assert "\x1b" not in text and "\x07" not in text, text


def test_case45_hostile_description_is_mirrored_byte_for_byte_and_json_stays_valid(
        setup: Setup, synced: Before) -> None:
    setup.upstream.add(DebPackage("hello", "1.1-1", description="<script>alert(1)</script> \x1b[31mred"))
    setup.upstream.publish(keep_plain_on_disk=False)
    result = setup.mirror.sync_one()
    assert result.ok, result.error
    out = setup.mirror.cli("snapshots", "repo", "--json")
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)) == 2
    assert "\x1b" not in out.stdout


# -- C6: transport ------------------------------------------------------------------------------

@pytest.mark.parametrize(("source", "target"), [
    ("https://up.example/InRelease", "http://up.example/InRelease"),
    ("https://up.example/InRelease", "foo+https://up.example/InRelease"),
    ("http://up.example/InRelease", "file:///etc/passwd"),
    ("http://up.example/InRelease", "data:text/plain,Origin:%20Evil"),
    ("http://up.example/InRelease", "ftp://up.example/InRelease"),
])
def test_case46_redirect_scheme_changes_are_refused(source: str, target: str) -> None:
    with pytest.raises(RedirectError):
        _check_redirect(source, target)


def test_case46_redirect_http_to_https_is_allowed() -> None:
    assert _check_redirect("http://up.example/x", "https://up.example/x") == "https://up.example/x"


def test_case46_redirect_to_a_plus_scheme_is_refused_in_a_sync(setup: Setup, synced: Before) -> None:
    _new_version(setup)
    setup.server.faults[INRELEASE] = Fault(redirect_to="foo+https://127.0.0.1/InRelease")
    assert_rejected(setup, synced, setup.mirror.sync_one(), code="redirect_refused", file=INRELEASE)


SLOW: list[tuple[str, str, Fault]] = [
    ("headers_then_trickle", INRELEASE, Fault(rate=1)),
    ("silence_before_the_response", INRELEASE, Fault(delay=5)),
    ("package_trickles", "pool/main/h/hello/hello_1.1-1_amd64.deb", Fault(rate=1)),
]


@pytest.mark.parametrize(("variant", "path", "fault"), SLOW, ids=[s[0] for s in SLOW])
def test_case49_slow_retrieval_is_aborted_retried_and_loud(setup: Setup, synced: Before, variant: str,
                                                          path: str, fault: Fault) -> None:
    _new_version(setup)
    setup.server.faults[path] = fault
    start = time.monotonic()
    message = assert_rejected(setup, synced, setup.mirror.sync_one(), code="fetch_failed", file=path)
    assert "timed out" in message
    assert time.monotonic() - start < 15
    assert fault.hits == 3  # retries = 2 in the test config


def test_case49_slow_but_steady_transfer_completes(setup: Setup, synced: Before) -> None:
    # counter-test: no total timeout, only a per-read one — a 4 kB/s package still arrives
    setup.upstream.add(DebPackage("libfoo1", "2.1-1", payload_size=4000))
    setup.upstream.publish(keep_plain_on_disk=False)
    setup.server.faults["pool/main/libf/*"] = Fault(rate=4000)
    result = setup.mirror.sync_one()
    assert result.ok, result.error


def test_case50_endless_body_for_a_file_of_known_size_stops_at_size_plus_one(setup: Setup,
                                                                              synced: Before) -> None:
    _new_version(setup)
    path = setup.upstream.url_path_of("hello", "1.1-1")
    setup.server.faults[path] = Fault(endless=True)
    assert_rejected(setup, synced, setup.mirror.sync_one(), code="size_mismatch", file=path,
                    words="longer than")


def test_case51_gzip_bomb_as_content_encoding_on_inrelease_is_bounded(setup: Setup, synced: Before) -> None:
    _new_version(setup)
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)  # ~64 kB on the wire
    setup.server.faults[INRELEASE] = Fault(body=bomb, headers={"Content-Encoding": "gzip"})
    assert_rejected(setup, synced, setup.mirror.sync_one(), code="signature_invalid", file=INRELEASE)


RETRY_EXHAUSTION: list[tuple[str, Fault]] = [
    ("503_retry_after", Fault(statuses=[503] * 20, headers={"Retry-After": "0"})),
    ("429_retry_after", Fault(statuses=[429] * 20, headers={"Retry-After": "0"})),
    ("reset_mid_body", Fault(truncate_after=100, reset=True)),
]


@pytest.mark.parametrize(("variant", "fault"), RETRY_EXHAUSTION, ids=[r[0] for r in RETRY_EXHAUSTION])
def test_case53_retries_are_bounded_then_the_sync_fails_loudly(setup: Setup, synced: Before, variant: str,
                                                               fault: Fault) -> None:
    _new_version(setup)
    path = setup.upstream.url_path_of("hello", "1.1-1")
    setup.server.faults[path] = fault
    assert_rejected(setup, synced, setup.mirror.sync_one(), code="fetch_failed", file=path)
    assert setup.server.count(path) == 3  # retries = 2 in the test config


def test_case53_retry_after_is_honoured(setup: Setup, synced: Before) -> None:
    _new_version(setup)
    path = setup.upstream.url_path_of("hello", "1.1-1")
    setup.server.faults[path] = Fault(statuses=[503], headers={"Retry-After": "2"})
    start = time.monotonic()
    result = setup.mirror.sync_one()
    assert result.ok, result.error
    assert time.monotonic() - start >= 2


# -- cases that need a second key, an admin override or the store --------------------------------

def test_case01_key_in_keyring_but_not_pinned_is_rejected(setup: Setup, synced: Before) -> None:
    # both keys in the repo's keyring file, only the archive key pinned: the other key signs
    keyring = setup.mirror.settings.repo("repo").keyring
    keyring.write_bytes(setup.key.public_armored() + setup.other.public_armored())
    text = setup.mirror.config.read_text()
    pin = f'keyring = "{keyring}"\nfingerprints = ["{setup.key.fingerprint}"]'
    setup.mirror.config.write_text(text.replace(f'keyring = "{keyring}"', pin))
    assert setup.mirror.settings.repo("repo").fingerprints == (setup.key.fingerprint,)
    _new_version(setup, signer=setup.other)
    assert_rejected(setup, synced, setup.mirror.sync_one(), code="signature_invalid", file=INRELEASE,
                    words=setup.other.fingerprint)


def test_case23_fast_forward_recovery_needs_the_explicit_rollback_override(setup: Setup,
                                                                            synced: Before) -> None:
    # A Date inside the skew window was accepted; genuine releases now look older and are refused
    # until an operator runs `mirror sync --allow-rollback` (recorded like any sync run).
    _new_version(setup, date=_now() + timedelta(hours=20))
    ahead = setup.mirror.sync_one()
    assert ahead.ok and ahead.snapshot, ahead.error
    setup.upstream.add(DebPackage("libfoo1", "2.1-1", payload_size=4000))
    setup.upstream.publish(date=_now(), keep_plain_on_disk=False)
    refused = setup.mirror.sync_one()
    assert refused.error is not None and refused.error.code == "metadata_rollback", refused.error
    assert setup.mirror.tier() == ahead.snapshot
    recovered = setup.mirror.sync_one(allow_rollback=True)
    assert recovered.ok and recovered.snapshot, recovered.error
    assert setup.mirror.tier() == recovered.snapshot
    again = setup.mirror.sync_one()  # the mark is the genuine release's Date now
    assert again.ok and again.snapshot is None, again.error


def test_case62_only_verified_snapshots_can_be_promoted(setup: Setup, synced: Before) -> None:
    from mirror.errors import SnapshotNotVerifiedError
    from mirror.tiers import Tiers

    store = setup.mirror.store()
    try:
        store.db.execute("UPDATE snapshots SET state = 'incomplete' WHERE id = ?", (synced.snapshot,))
        store.db.commit()
        with pytest.raises(SnapshotNotVerifiedError, match="not verified"):
            Tiers(store, setup.mirror.settings.tiers).promote("repo", "test", actor="t",
                                                              snapshot=synced.snapshot, force=True)
        state = store.tiers("repo").get("test")
        assert state is None or state.snapshot is None
    finally:
        store.close()


@pytest.mark.parametrize("cn", ["127.0.0.1"])
def test_case48_untrusted_tls_certificate_is_refused(setup: Setup, tmp_path: Path, cn: str) -> None:
    """First sync over https from a self-signed upstream: REJ, nothing stored."""
    import functools
    import http.server
    import ssl
    import subprocess
    import threading

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={cn}",
                    "-addext", f"subjectAltName={'IP' if cn[0].isdigit() else 'DNS'}:{cn}",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(setup.upstream.root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"https://127.0.0.1:{httpd.server_address[1]}"
        mirror = write_config(tmp_path / "tls", url, setup.mirror.settings.repo("repo").keyring)
        result = mirror.sync_one()
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert result.error is not None and result.error.code == "fetch_failed", result.error
    assert "InRelease" in str(result.error) and "certificate" in str(result.error).lower(), result.error
    assert mirror.snapshots() == [] and mirror.temp_files() == []


def test_case48_no_switch_turns_tls_verification_off() -> None:
    source = "\n".join(p.read_text() for p in (Path(__file__).parent.parent / "mirror").rglob("*.py"))
    for needle in ("ssl=False", "verify_ssl", "CERT_NONE", "check_hostname = False",
                   "_create_unverified_context"):
        assert needle not in source, needle


# -- parser-level regression guards ------------------------------------------------------------

@pytest.mark.parametrize("href", ["Packages/%2e%2e/%2e%2e/x.rpm", "%2e%2e/x.rpm", "Packages/..%2f..%2fx.rpm",
                                  "Packages/%252e%252e/x.rpm", "Packages/x%00.rpm", "/etc/passwd",
                                  "../../../etc/passwd"])
def test_case36_href_that_climbs_out_even_when_percent_encoded_is_refused(href: str) -> None:
    from mirror.errors import UnsafePathError
    from mirror.repopath import contained

    with pytest.raises(UnsafePathError):
        contained(href, what="repodata/primary.xml")
    assert contained("Packages/a%2bb-1.0.rpm") == "Packages/a%2bb-1.0.rpm"  # harmless escapes pass


def _billion_laughs(root: str) -> str:
    entities = "".join(f' <!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">\n' for i in range(1, 10))
    return f'<!DOCTYPE {root} [\n <!ENTITY lol0 "lol">\n{entities}]>\n'


XML_BOMBS = {
    "billion_laughs_after_4k_comment": '<?xml version="1.0"?>\n<!--' + "x" * 5000 + "-->\n"
    + _billion_laughs("metadata"),
    "xxe_after_4k_comment": '<?xml version="1.0"?>\n<!--' + "x" * 5000 + "-->\n"
    + '<!DOCTYPE metadata [<!ENTITY lol9 SYSTEM "file:///etc/passwd">]>\n',
}


@pytest.mark.parametrize("name", list(XML_BOMBS))
def test_case39_entity_bomb_in_primary_is_refused_fast_even_past_the_prefix_scan(tmp_path: Path,
                                                                                 name: str) -> None:
    from mirror.errors import MalformedMetadataError
    from mirror.formats.rpm import parse_primary

    doc = XML_BOMBS[name] + ('<metadata xmlns="http://linux.duke.edu/metadata/common" packages="1">'
                             '<package type="rpm"><name>&lol9;</name></package></metadata>\n')
    path = tmp_path / "primary.xml"
    path.write_text(doc)
    start = time.monotonic()
    with pytest.raises(MalformedMetadataError):
        parse_primary(path, what="repodata/primary.xml")
    assert time.monotonic() - start < 1


def test_case39_entity_bomb_in_repomd_is_refused() -> None:
    from mirror.errors import MalformedMetadataError
    from mirror.formats.rpm import parse_repomd

    doc = ('<?xml version="1.0"?>\n' + _billion_laughs("repomd")
           + '<repomd xmlns="http://linux.duke.edu/metadata/repo"><revision>&lol9;</revision></repomd>\n')
    with pytest.raises(MalformedMetadataError, match="DTD"):
        parse_repomd(doc.encode(), what="repodata/repomd.xml")


def test_case06_an_exception_inside_verification_fails_closed(setup: Setup, synced: Before,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from mirror.trust.gpg import Keyring

    def broken(self: Keyring, data: bytes, *, what: str) -> object:
        raise OSError(5, "Input/output error (injected)", what)

    _new_version(setup)
    monkeypatch.setattr(Keyring, "verify_clearsigned", broken)
    result = setup.mirror.sync_one()
    assert result.error is not None, "the sync succeeded"
    assert setup.mirror.snapshots() == [synced.snapshot]
    assert setup.mirror.served_tree() == synced.tree
    assert setup.mirror.temp_files() == []
    store = setup.mirror.store()
    try:
        assert store.sync_runs("repo", limit=1)[0].outcome == "failed"
    finally:
        store.close()


def test_case24_repomd_timestamp_far_in_the_future_is_refused() -> None:
    from types import SimpleNamespace

    from mirror.errors import FutureMetadataError
    from mirror.model import RootRecord
    from mirror.sync import VerifiedRoot, check_freshness

    now = _now()
    ctx = SimpleNamespace(now=now, repo=SimpleNamespace(name="baseos", max_age=None))
    future = RootRecord("repomd", "0" * 64, now + timedelta(days=3650), None, revision="9999999999")
    root = VerifiedRoot(future, {"repodata/repomd.xml": b""})
    with pytest.raises(FutureMetadataError, match="in the future"):
        check_freshness(ctx, [root], {}, allow_rollback=True)  # type: ignore[arg-type]
    skewed = VerifiedRoot(RootRecord("repomd", "0" * 64, now + timedelta(hours=2), None), {})
    check_freshness(ctx, [skewed], {}, allow_rollback=False)  # type: ignore[arg-type]


def test_case16_verifier_never_contacts_a_planted_keyserver(tmp_path: Path, archive_key: SigningKey,
                                                           other_key: SigningKey) -> None:
    import socket

    from mirror.errors import SignatureError
    from mirror.trust.gpg import Keyring

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    try:
        ring = Keyring([archive_key.write_public(tmp_path / "a.asc")], None, tmp_path / "keyring")
        (ring.home / "gpg.conf").write_text(
            f"auto-key-retrieve\nkeyserver hkp://127.0.0.1:{port}\nauto-key-locate keyserver\n"
            "trust-model always\n")
        (ring.home / "dirmngr.conf").write_text(f"keyserver hkp://127.0.0.1:{port}\n")
        with pytest.raises(SignatureError, match="no public key"):
            ring.verify_clearsigned(other_key.clearsign(b"Origin: Test\nSuite: stable\n"), what=INRELEASE)
        with pytest.raises(SignatureError):
            ring.verify_detached(b"Origin: Test\n", other_key.detach_sign(b"Origin: Test\n"),
                                 what="dists/stable/Release.gpg")
        with pytest.raises(TimeoutError):
            listener.accept()  # nobody came: no key lookup, no network
    finally:
        listener.close()


def test_case45_hostile_package_names_are_escaped_by_mirror_diff(setup: Setup, synced: Before) -> None:
    entry = next(e for e in setup.upstream.entries if e.pkg.name == "hello")
    for i, name in enumerate(["<script>alert(1)</script>", "x\x1b]0;pwn\x07", "evil\u202egnp"]):
        filename = f"pool/main/e/evil/evil{i}_1.{i}_amd64.deb"  # a copy: only size and digest matter
        (setup.upstream.root / filename).parent.mkdir(parents=True, exist_ok=True)
        (setup.upstream.root / filename).write_bytes((setup.upstream.root / entry.filename).read_bytes())
        setup.upstream.add_raw_stanza({"Package": name, "Version": f"1.{i}", "Architecture": "amd64",
                                       "Filename": filename, "Size": str(entry.size),
                                       "SHA256": entry.hashes["sha256"]})
    setup.upstream.publish(keep_plain_on_disk=False)
    result = setup.mirror.sync_one()
    if result.error is not None:  # refusing such names outright is as good as escaping them
        assert result.error.code in ("metadata_malformed", "unsafe_path"), result.error
        return
    for args in (("--json",), ("--csv",), ()):
        out = setup.mirror.cli("diff", "repo", synced.snapshot, str(result.snapshot), *args)
        assert out.returncode in (0, 1), out.stderr
        assert "\x1b" not in out.stdout and "\x07" not in out.stdout, (args, out.stdout)
        if args == ("--json",):
            assert not any(ord(c) < 0x20 and c != "\n" for c in out.stdout)
            names = {a["name"] for a in json.loads(out.stdout)["added"]}
            assert "<script>alert(1)</script>" in names


MAX_AGE: list[tuple[str, str, dict[str, object], bool]] = [
    ("no_valid_until_date_2d_old", "1d", {"date_ago": timedelta(days=2)}, False),
    ("valid_until_far_but_max_age_shorter", "1d",
     {"date_ago": timedelta(days=2), "valid_until": timedelta(days=365)}, False),
    ("within_max_age", "1d", {"date_ago": timedelta(minutes=30)}, True),
]


@pytest.mark.parametrize(("variant", "max_age", "release", "accepted"), MAX_AGE, ids=[m[0] for m in MAX_AGE])
def test_case21_max_age_without_or_before_valid_until(setup: Setup, synced: Before, variant: str,
                                                      max_age: str, release: dict[str, timedelta],
                                                      accepted: bool) -> None:
    keyring = setup.mirror.settings.repo("repo").keyring
    text = setup.mirror.config.read_text()
    setup.mirror.config.write_text(text.replace(f'keyring = "{keyring}"',
                                                f'keyring = "{keyring}"\nmax_age = "{max_age}"'))
    date = _now() - release["date_ago"]
    _new_version(setup, date=date, valid_until=release.get("valid_until"))
    result = setup.mirror.sync_one()
    if accepted:
        assert result.ok and result.snapshot, result.error
    else:
        assert_rejected(setup, synced, result, code="metadata_expired", file=INRELEASE, words="max_age")


def _primary(packages_attr: int, bodies: list[str]) -> str:
    return ('<?xml version="1.0"?>\n<metadata xmlns="http://linux.duke.edu/metadata/common" '
            f'xmlns:rpm="http://linux.duke.edu/metadata/rpm" packages="{packages_attr}">' + "".join(bodies)
            + "</metadata>\n")


def _rpm_entry(n: int, extra: str = "") -> str:
    return (f'<package type="rpm"><name>p{n}</name>{extra}<arch>noarch</arch>'
            '<version epoch="0" ver="1" rel="1"/>'
            f'<checksum type="sha256" pkgid="YES">{"a" * 64}</checksum>'
            f'<size package="10" installed="1" archive="1"/><location href="Packages/p{n}.rpm"/></package>')


@pytest.mark.parametrize(("variant", "doc"), [
    ("count_mismatch", _primary(1, [_rpm_entry(i) for i in range(3)])),
    ("deep_nesting", _primary(1, [_rpm_entry(0, "<x>" * 100_000 + "</x>" * 100_000)])),
])
def test_case41_enormous_or_inconsistent_primary_is_refused(tmp_path: Path, variant: str, doc: str) -> None:
    from mirror.errors import MalformedMetadataError
    from mirror.formats.rpm import parse_primary

    path = tmp_path / "primary.xml"
    path.write_text(doc)
    start = time.monotonic()
    with pytest.raises(MalformedMetadataError):
        parse_primary(path, what="repodata/primary.xml")
    assert time.monotonic() - start < 2
    path.write_text(_primary(3, [_rpm_entry(i) for i in range(3)]))
    assert len(parse_primary(path, what="repodata/primary.xml")) == 3


# -- RPM: repomd.xml.asc tricks and a far-future repomd ------------------------------------------

@dataclass
class RpmSetup:
    upstream: RpmRepo
    server: UpstreamServer
    mirror: Mirror
    key: SigningKey


@pytest.fixture
def rpm_setup(tmp_path: Path, archive_key: SigningKey) -> Iterator[RpmSetup]:
    from tests.test_sync_rpm import BASE as RPM_BASE
    from tests.test_sync_rpm import write_rpm_config

    upstream = RpmRepo(tmp_path / "upstream", archive_key)
    upstream.add(*RPM_BASE)
    upstream.publish(revision="1000", timestamp=1_700_000_000)
    keyring = archive_key.write_public(tmp_path / "keys" / "archive.asc")
    with UpstreamServer(upstream.root) as server:
        mirror = write_rpm_config(tmp_path / "mirror", server.url, keyring)
        yield RpmSetup(upstream, server, mirror, archive_key)


ASC_PAYLOADS: list[tuple[str, Callable[[bytes, bytes], bytes]]] = [
    ("garbage_after", lambda sig, other: sig + b"\n<repomd>evil</repomd>\n"),
    ("garbage_before", lambda sig, other: b"<repomd>evil</repomd>\n" + sig),
    ("literal_packet_after", lambda sig, other: sig + _literal_packet(b"<repomd/>")),
    ("html", lambda sig, other: HTML),
]


@pytest.mark.parametrize(("variant", "make"), ASC_PAYLOADS, ids=[v for v, _ in ASC_PAYLOADS])
def test_case05_repomd_asc_with_payload_is_rejected(rpm_setup: RpmSetup, variant: str,
                                                    make: Callable[[bytes, bytes], bytes]) -> None:
    s = rpm_setup
    first = s.mirror.sync_one()
    assert first.ok and first.snapshot, first.error
    before = Before(first.snapshot, s.mirror.served_tree())
    s.upstream.add(RpmPackage("hello", "1.1"))
    s.upstream.publish(revision="1001", timestamp=1_700_000_001)
    repomd = s.upstream.repomd_path.read_bytes()
    sig = s.key.detach_sign(repomd, armor=False)
    s.upstream.repomd_asc_path.write_bytes(make(sig, sig))
    assert_rejected(s, before, s.mirror.sync_one(), code="signature_invalid", file="repodata/repomd.xml.asc")


def test_case24_repomd_timestamp_far_in_the_future_is_refused_in_a_sync(rpm_setup: RpmSetup) -> None:
    s = rpm_setup
    first = s.mirror.sync_one()
    assert first.ok and first.snapshot, first.error
    before = Before(first.snapshot, s.mirror.served_tree())
    s.upstream.add(RpmPackage("hello", "1.1"))
    s.upstream.publish(revision="1001", timestamp=int(time.time()) + 10 * 365 * 86400)
    assert_rejected(s, before, s.mirror.sync_one(), code="metadata_future", file="repodata/repomd.xml",
                    words="in the future")


def _tls_material(d: Path, san: str, *, expired: bool) -> tuple[Path, Path, Path]:
    """(CA cert, leaf cert, leaf key): a test CA and a leaf it signed for `san`, optionally expired."""
    import subprocess

    d.mkdir(parents=True, exist_ok=True)
    (d / "index.txt").write_text("")
    (d / "serial").write_text("1000\n")
    (d / "ca.cnf").write_text(f"""
[ca]
default_ca = own
[own]
dir = {d}
database = {d}/index.txt
new_certs_dir = {d}
serial = {d}/serial
certificate = {d}/ca.pem
private_key = {d}/ca.key
default_md = sha256
policy = any
unique_subject = no
x509_extensions = leaf
[any]
commonName = supplied
[leaf]
basicConstraints = CA:FALSE
subjectAltName = {san}
""")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "3",
        "-subj", "/CN=Mirror Test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "leaf.key", "-out", "leaf.csr",
        "-subj", "/CN=leaf")
    dates = ["-startdate", "200101000000Z", "-enddate", "200201000000Z"] if expired else ["-days", "2"]
    run("ca", "-batch", "-config", "ca.cnf", "-in", "leaf.csr", "-out", "leaf.pem", "-notext", *dates)
    return d / "ca.pem", d / "leaf.pem", d / "leaf.key"


@pytest.mark.parametrize(("variant", "san", "expired", "ok"), [
    ("trusted_ca_valid_leaf", "IP:127.0.0.1", False, True),  # the control: verification can succeed
    ("expired_leaf", "IP:127.0.0.1", True, False),
    ("hostname_mismatch", "DNS:wrong.example", False, False),
])
def test_case48_tls_certificate_checks_with_a_trusted_ca(setup: Setup, tmp_path: Path, variant: str,
                                                         san: str, expired: bool, ok: bool) -> None:
    import functools
    import http.server
    import os
    import ssl
    import subprocess
    import sys
    import threading

    from tests.helpers import CHECKOUT

    ca, cert, key = _tls_material(tmp_path / "pki", san, expired=expired)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(setup.upstream.root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        mirror = write_config(tmp_path / "tls", f"https://127.0.0.1:{httpd.server_address[1]}",
                              setup.mirror.settings.repo("repo").keyring)
        env = {**os.environ, "SSL_CERT_FILE": str(ca)}  # the system trust store, as the operator sets it
        out = subprocess.run([sys.executable, "-m", "mirror.cli", "-c", str(mirror.config), "sync"], env=env,
                             cwd=CHECKOUT, capture_output=True, text=True, timeout=120, check=False)
    finally:
        httpd.shutdown()
        httpd.server_close()
    if ok:
        assert out.returncode == 0, out.stdout + out.stderr
        assert len(mirror.snapshots()) == 1
    else:
        assert out.returncode == 1, out.stdout + out.stderr
        assert "repo: error:" in out.stdout and "InRelease" in out.stdout, out.stdout
        assert "certificate" in out.stdout.lower(), out.stdout
        assert mirror.snapshots() == [] and mirror.temp_files() == []


def _filename_escape(s: Setup) -> None:
    s.upstream.override("hello", {"Filename": "../../x.deb"})
    _new_version(s)


def _slow_inrelease(s: Setup) -> None:
    _new_version(s)
    s.server.faults[INRELEASE] = Fault(delay=3)


LOUD_REPLAYS: list[tuple[str, Callable[[Setup], None], str]] = [
    ("02_unsigned_text_before", lambda s: s.upstream.inrelease_path.write_bytes(
        b"Origin: Evil\n\n" + s.upstream.inrelease_path.read_bytes()), INRELEASE),
    ("07_sha1_signature", lambda s: _new_version(s, digest="SHA1"), INRELEASE),
    ("20_expired", lambda s: _new_version(s, date=_now(), valid_until=_now() - timedelta(minutes=1)),
     INRELEASE),
    ("38_filename_escape", _filename_escape, f"{PACKAGES_DIR}/Packages"),
    ("49_slow", _slow_inrelease, INRELEASE),
]


@pytest.mark.parametrize(("case", "attack", "file"), LOUD_REPLAYS, ids=[r[0] for r in LOUD_REPLAYS])
def test_case76_every_failure_is_in_the_log_and_the_failure_metric(
        setup: Setup, synced: Before, case: str, attack: Callable[[Setup], None], file: str,
        caplog: pytest.LogCaptureFixture) -> None:
    attack(setup)
    with caplog.at_level("ERROR"):
        result = assert_rejected(setup, synced, setup.mirror.sync_one(),
                                 code=("signature_invalid", "weak_digest", "metadata_expired", "unsafe_path",
                                       "fetch_failed"),
                                 file=file)
    assert_logged_and_counted(setup, result, file, caplog)


def assert_logged_and_counted(s: Setup | RpmSetup, message: str, file: str, caplog: pytest.LogCaptureFixture,
                              code: str | None = None) -> None:
    """LOUD beyond the run record: one ERROR log line naming the repo and the file with the whole
    error message, and `mirror_sync_failures{repo, code}` counting it."""
    from prometheus_client import CollectorRegistry, generate_latest

    from mirror.metrics import StateCollector

    logged = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("repo" in m and file in m and message in m for m in logged), logged
    store = s.mirror.store()
    try:
        registry = CollectorRegistry()
        registry.register(StateCollector(store, ["repo"]))
        text = generate_latest(registry).decode()
    finally:
        store.close()
    failures = [line for line in text.splitlines() if line.startswith("mirror_sync_failures")
                and 'repo="repo"' in line and not line.startswith("mirror_sync_failures_created")
                and (code is None or f'code="{code}"' in line)]
    assert failures and any(float(line.rsplit(" ", 1)[1]) >= 1 for line in failures), text


def _expired_key_signs(expired: SigningKey) -> Callable[[Setup], None]:
    def attack(s: Setup) -> None:  # pinned and in the keyring: only its expiry may reject it
        keyring = s.mirror.settings.repo("repo").keyring
        keyring.write_bytes(s.key.public_armored() + expired.public_armored())
        _new_version(s, signer=expired)
    return attack


def _evil_xz(s: Setup) -> tuple[bytes, bytes]:
    """(what the signed Release lists, what the upstream serves instead): Packages.xz, one byte
    flipped (same size)."""
    original = s.upstream.packages_path(ext=".xz").read_bytes()
    return original, original[:100] + bytes([original[100] ^ 0xFF]) + original[101:]


def _index_hash_mismatch(s: Setup) -> None:
    _new_version(s)
    for key in _xz_glob():
        s.server.faults[key] = Fault(body=_evil_xz(s)[1])


def _index_ten_junk_bytes(s: Setup) -> None:
    _new_version(s)
    for key in _xz_glob():
        s.server.faults[key] = Fault(append=b"0123456789")


def _index_truncated(s: Setup) -> None:
    _new_version(s)
    for key in _xz_glob():
        s.server.faults[key] = Fault(truncate_after=40, headers={"Content-Length": "40"})


# (case, attack or None for the expired key, code, file, what the message must also show)
Attack = Callable[[Setup], None]
MORE_LOUD_REPLAYS: list[tuple[str, Attack | None, str, str, Callable[[Setup], list[str]]]] = [
    ("08_expired_key", None, "signature_invalid", INRELEASE, lambda s: ["expired"]),
    ("27_index_hash_mismatch", _index_hash_mismatch, "checksum_mismatch", f"{PACKAGES_DIR}/Packages",
     lambda s: [f"expected {hashlib.sha256(_evil_xz(s)[0]).hexdigest()}",
                f"received {hashlib.sha256(_evil_xz(s)[1]).hexdigest()}"]),
    ("28_ten_junk_bytes", _index_ten_junk_bytes, "size_mismatch", f"{PACKAGES_DIR}/Packages",
     lambda s: [f"expected {len(_evil_xz(s)[0])} bytes, received at least"]),
    ("28_truncated", _index_truncated, "size_mismatch", f"{PACKAGES_DIR}/Packages",
     lambda s: [f"expected {len(_evil_xz(s)[0])} bytes", "received 40"]),
]


@pytest.mark.parametrize(("case", "attack", "code", "file", "shows"), MORE_LOUD_REPLAYS,
                         ids=[r[0] for r in MORE_LOUD_REPLAYS])
def test_case76_more_failures_are_in_the_log_and_the_failure_metric(
        setup: Setup, synced: Before, expired_key: SigningKey, case: str, attack: Attack | None,
        code: str, file: str, shows: Callable[[Setup], list[str]], caplog: pytest.LogCaptureFixture) -> None:
    """Replays of 8, 27, 28 (APT): REJ + KEEP + NOPART + run record (`assert_rejected`), the ERROR
    log line and the failure metric by code; size and digest mismatches say expected and received."""
    (attack or _expired_key_signs(expired_key))(setup)
    with caplog.at_level("ERROR"):
        message = assert_rejected(setup, synced, setup.mirror.sync_one(), code=code, file=file)
    assert_logged_and_counted(setup, message, file, caplog, code)
    for words in shows(setup):
        assert words in message, message


HREFS_OFF_HOST = ["http://evil.example/x.rpm", "https://evil.example/Packages/x.rpm", "file:///etc/shadow",
                  "//evil.example/x.rpm"]


@pytest.mark.parametrize("href", HREFS_OFF_HOST)
def test_case37_off_host_location_is_refused_before_any_request(rpm_setup: RpmSetup, href: str) -> None:
    s = rpm_setup
    first = s.mirror.sync_one()
    assert first.ok and first.snapshot, first.error
    before = Before(first.snapshot, s.mirror.served_tree())
    s.upstream.add(RpmPackage("hello", "1.1"))
    s.upstream.publish(revision="1001", timestamp=1_700_000_001)
    old = s.upstream.url_path_of("hello", "1.1")
    s.upstream.edit_metadata("primary", lambda x: x.replace(f'href="{old}"', f'href="{href}"'))
    s.server.clear()
    assert_rejected(s, before, s.mirror.sync_one(), code="unsafe_path", file="primary")
    assert s.server.count("*evil*") == 0 and s.server.count("*shadow*") == 0


def _rpm_href_escapes(s: RpmSetup) -> None:
    old = s.upstream.url_path_of("hello", "1.1")
    s.upstream.edit_metadata("primary", lambda x: x.replace(f'href="{old}"', 'href="../../../etc/passwd"'))


def _rpm_primary_swapped(s: RpmSetup) -> None:
    s.upstream.edit_metadata("primary", lambda x: x.replace("<packager>", "<packager>evil "),
                             update_repomd=False)


RPM_LOUD_REPLAYS: list[tuple[str, Callable[[RpmSetup], None], tuple[str, ...], str, tuple[str, ...]]] = [
    ("36_href_traversal", _rpm_href_escapes, ("unsafe_path",), "hello", ("'..'",)),
    ("27_primary_does_not_match_repomd", _rpm_primary_swapped, ("checksum_mismatch", "size_mismatch"),
     "primary.xml", ("expected", "received")),
]


@pytest.mark.parametrize(("case", "attack", "codes", "file", "words"), RPM_LOUD_REPLAYS,
                         ids=[r[0] for r in RPM_LOUD_REPLAYS])
def test_case76_rpm_failures_are_in_the_log_and_the_failure_metric(
        rpm_setup: RpmSetup, case: str, attack: Callable[[RpmSetup], None], codes: tuple[str, ...], file: str,
        words: tuple[str, ...], caplog: pytest.LogCaptureFixture) -> None:
    """Replays of 36 and 27 (RPM) with the same artefacts as the APT ones."""
    s = rpm_setup
    first = s.mirror.sync_one()
    assert first.ok and first.snapshot, first.error
    before = Before(first.snapshot, s.mirror.served_tree())
    s.upstream.add(RpmPackage("hello", "1.1"))
    s.upstream.publish(revision="1001", timestamp=1_700_000_001)
    attack(s)
    with caplog.at_level("ERROR"):
        result = s.mirror.sync_one()
        message = assert_rejected(s, before, result, code=codes, file=file)
    assert result.error is not None
    assert_logged_and_counted(s, message, file, caplog, result.error.code)
    for word in words:
        assert word in message, message


def test_case76_mismatch_messages_name_the_upstream_url(setup: Setup, synced: Before) -> None:
    for attack in (_index_hash_mismatch, _index_ten_junk_bytes):
        attack(setup)
        result = setup.mirror.sync_one()
        assert result.error is not None
        assert f"(from {setup.server.url}/{PACKAGES_DIR}/" in str(result.error), result.error
        setup.server.faults.clear()
