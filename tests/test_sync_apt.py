"""APT sync end to end against a real signed fixture upstream served over HTTP with faults.

Every hostile case starts from a repo with one good snapshot in `dev`, changes the upstream (so a
clean sync would make a new snapshot), injects one attack or fault, and asserts: the error names
the repo, the file and the check; no snapshot was made; `dev` still serves the same bytes; no
temp file is left behind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fixtures.apt_repo import AptRepo, DebPackage
from fixtures.keys import SigningKey
from fixtures.upstream import Fault, UpstreamServer
from tests.helpers import Mirror, write_config

BASE = [DebPackage("hello", "1.0-1"), DebPackage("libfoo1", "2.0-1", payload_size=4000),
        DebPackage("foo-doc", "2.0-1", arch="all")]


@dataclass
class Setup:
    upstream: AptRepo
    server: UpstreamServer
    mirror: Mirror
    keys: dict[str, SigningKey]


@pytest.fixture
def setup(tmp_path: Path, archive_key: SigningKey, other_key: SigningKey,
          expired_key: SigningKey) -> Iterator[Setup]:
    upstream = AptRepo(tmp_path / "upstream", archive_key, architectures=("amd64", "all"))
    upstream.add(*BASE)
    upstream.publish(date=datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1),
                     keep_plain_on_disk=False)
    keyring = archive_key.write_public(tmp_path / "keys" / "archive.asc")
    with UpstreamServer(upstream.root) as server:
        mirror = write_config(tmp_path / "mirror", server.url, keyring)
        yield Setup(upstream, server, mirror,
                    {"archive": archive_key, "other": other_key, "expired": expired_key})


def test_first_sync_makes_a_snapshot_in_the_first_tier(setup: Setup) -> None:
    result = setup.mirror.sync_one()
    assert result.ok, result.error
    assert result.snapshot is not None
    assert setup.mirror.snapshots() == [result.snapshot]
    assert setup.mirror.tier() == result.snapshot
    tree = setup.mirror.served_tree()
    up = setup.upstream
    assert tree["dists/stable/InRelease"] == up.inrelease_path.read_bytes()
    assert tree["dists/stable/Release"] == up.release_path.read_bytes()
    assert tree["dists/stable/Release.gpg"] == up.release_gpg_path.read_bytes()
    for pkg in ("hello", "libfoo1", "foo-doc"):
        assert tree[up.url_path_of(pkg)] == up.deb_path(pkg).read_bytes()
    # every variant and the by-hash names are served; plain Packages too (verified by the Release)
    for ext in ("", ".xz", ".gz"):
        assert f"dists/stable/main/binary-amd64/Packages{ext}" in tree
        assert f"dists/stable/main/binary-all/Packages{ext}" in tree
        assert f"dists/stable/main/i18n/Translation-en{ext}" in tree
    xz = tree["dists/stable/main/binary-amd64/Packages.xz"]
    assert up.packages_path(ext=".xz").read_bytes() == xz
    import hashlib
    assert tree[f"dists/stable/main/binary-amd64/by-hash/SHA256/{hashlib.sha256(xz).hexdigest()}"] == xz
    assert setup.mirror.temp_files() == []


def test_unchanged_upstream_gives_unchanged_in_one_request(setup: Setup) -> None:
    first = setup.mirror.sync_one()
    assert first.ok
    setup.server.clear()
    again = setup.mirror.sync_one()
    assert again.ok and again.snapshot is None
    assert setup.server.count("*") == 1
    assert setup.mirror.snapshots() == [first.snapshot]


def test_changed_upstream_makes_a_new_snapshot_fetching_only_new_packages(setup: Setup) -> None:
    first = setup.mirror.sync_one()
    setup.upstream.add(DebPackage("newpkg", "1.0-1"))
    setup.upstream.publish(keep_plain_on_disk=False)
    setup.server.clear()
    second = setup.mirror.sync_one()
    assert second.ok and second.snapshot and second.snapshot > str(first.snapshot)
    assert setup.server.count("pool/*") == 1
    assert setup.mirror.tier() == second.snapshot
    assert setup.mirror.snapshots() == [second.snapshot, first.snapshot]


def test_two_signatures_with_the_trusted_one_second_is_accepted(setup: Setup) -> None:
    up = setup.upstream
    up.add(DebPackage("newpkg", "1.0-1"))
    up.publish(inrelease=False, keep_plain_on_disk=False)
    data = up.release_path.read_bytes()
    up.release_gpg_path.write_bytes(setup.keys["other"].detach_sign(data, armor=False)
                                    + setup.keys["archive"].detach_sign(data, armor=False))
    result = setup.mirror.sync_one()
    assert result.ok, result.error
    assert result.snapshot


def test_release_and_release_gpg_are_used_when_there_is_no_inrelease(setup: Setup) -> None:
    setup.upstream.publish(inrelease=False, keep_plain_on_disk=False)
    result = setup.mirror.sync_one()
    assert result.ok, result.error
    tree = setup.mirror.served_tree()
    assert "dists/stable/InRelease" not in tree
    assert tree["dists/stable/Release.gpg"] == setup.upstream.release_gpg_path.read_bytes()


def test_upstream_500_then_200_is_retried_and_succeeds(setup: Setup) -> None:
    setup.upstream.add(DebPackage("newpkg", "1.0-1"))
    setup.upstream.publish(keep_plain_on_disk=False)
    setup.server.faults[setup.upstream.url_path_of("newpkg")] = Fault(statuses=[500])
    result = setup.mirror.sync_one()
    assert result.ok, result.error
    assert setup.server.count(setup.upstream.url_path_of("newpkg")) == 2


def test_gzip_content_encoding_on_a_gz_index_still_verifies(setup: Setup) -> None:
    # the common web-server misconfiguration: the stored .gz sent as is, labelled Content-Encoding: gzip
    setup.server.faults["dists/stable/main/*"] = Fault(headers={"Content-Encoding": "gzip"})
    result = setup.mirror.sync_one()
    assert result.ok, result.error


def test_file_upstream_is_mirrored(setup: Setup, tmp_path: Path, archive_key: SigningKey) -> None:
    mirror = write_config(tmp_path / "filemirror", f"file://{setup.upstream.root}",
                          archive_key.write_public(tmp_path / "k.asc"))
    result = mirror.sync_one()
    assert result.ok, result.error
    assert mirror.served_tree()[setup.upstream.url_path_of("hello")] == \
        setup.upstream.deb_path("hello").read_bytes()


# -- hostile upstreams -----------------------------------------------------------------------

def _new_version(s: Setup, **publish: object) -> None:
    s.upstream.add(DebPackage("hello", "1.1-1"))
    s.upstream.publish(keep_plain_on_disk=False, **publish)  # type: ignore[arg-type]


def bad_signature(s: Setup) -> None:
    _new_version(s)
    p = s.upstream.inrelease_path
    p.write_bytes(p.read_bytes().replace(b"Origin: Test", b"Origin: Tesx"))


def unknown_key(s: Setup) -> None:
    _new_version(s, signer=s.keys["other"])


def expired_key(s: Setup) -> None:
    # the expired key is in the repo's keyring and pinned: only its expiry may reject it
    keyring = s.mirror.settings.repo("repo").keyring
    keyring.write_bytes(s.keys["archive"].public_armored() + s.keys["expired"].public_armored())
    _new_version(s, signer=s.keys["expired"])


def unsigned_text_before(s: Setup) -> None:
    _new_version(s)
    p = s.upstream.inrelease_path
    p.write_bytes(b"Origin: Evil\nSHA256:\n " + b"0" * 64 + b" 0 main/binary-amd64/Packages\n\n"
                  + p.read_bytes())


def two_signed_blocks(s: Setup) -> None:
    _new_version(s)
    evil = s.keys["archive"].clearsign(b"Origin: Evil\nSuite: stable\n")
    p = s.upstream.inrelease_path
    p.write_bytes(p.read_bytes() + evil)


def sha1_signature(s: Setup) -> None:
    _new_version(s, digest="SHA1")


def valid_until_past(s: Setup) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    _new_version(s, date=now, valid_until=now - timedelta(minutes=5))


def date_older(s: Setup) -> None:
    _new_version(s, date=datetime.now(UTC).replace(microsecond=0) - timedelta(days=3))


def packages_hash_mismatch(s: Setup) -> None:
    _new_version(s)
    original = s.upstream.packages_path(ext=".xz").read_bytes()
    evil = original[:100] + bytes([original[100] ^ 0xFF]) + original[101:]
    s.server.faults["dists/stable/main/binary-amd64/Packages.xz"] = Fault(body=evil)
    s.server.faults["dists/stable/main/binary-amd64/by-hash/SHA256/*"] = Fault(body=evil)


def package_hash_mismatch(s: Setup) -> None:
    _new_version(s)
    p = s.upstream.deb_path("hello", "1.1-1")
    data = bytearray(p.read_bytes())
    data[-10] ^= 0xFF
    p.write_bytes(bytes(data))


def package_longer(s: Setup) -> None:
    _new_version(s)
    s.server.faults[s.upstream.url_path_of("hello", "1.1-1")] = Fault(append=b"X" * 5000)


def filename_escapes(s: Setup) -> None:
    s.upstream.add(DebPackage("evil", "1.0-1"))
    s.upstream.override("evil", {"Filename": "../../../etc/passwd"})
    s.upstream.publish(keep_plain_on_disk=False)


def release_only_md5(s: Setup) -> None:
    _new_version(s, hashes=("MD5Sum",))


def package_404(s: Setup) -> None:
    _new_version(s)
    s.upstream.deb_path("hello", "1.1-1").unlink()


def connection_cut(s: Setup) -> None:
    _new_version(s)
    s.server.faults[s.upstream.url_path_of("hello", "1.1-1")] = Fault(truncate_after=100)


def wrong_suite(s: Setup) -> None:
    _new_version(s, extra_release_fields={"Suite": "unstable", "Codename": "sid"})


def stored_package_listed_with_a_wrong_size(s: Setup) -> None:
    # the right sha256 of a package the mirror stored before, with a wrong Size: nothing is fetched
    s.upstream.override("libfoo1", {"Size": "4001"})
    _new_version(s)


def second_path_for_stored_content_with_a_wrong_size(s: Setup) -> None:
    # another stanza naming a stored package's content under a second path, with a wrong Size
    entry = next(e for e in s.upstream.entries if e.pkg.name == "libfoo1")
    s.upstream.add_raw_stanza({"Package": "twin", "Version": "1.0", "Architecture": "amd64",
                               "Filename": "pool/main/t/twin/twin_1.0_amd64.deb", "Size": str(entry.size + 1),
                               "SHA256": entry.hashes["sha256"], "Description": "same bytes, wrong size"})
    _new_version(s)


HOSTILE: list[tuple[str, Callable[[Setup], None], str, str, str]] = [
    # (case, attack, error code, file named, words of the check)
    ("bad_signature", bad_signature, "signature_invalid", "dists/stable/InRelease", "bad signature"),
    ("signed_only_by_unknown_key", unknown_key, "signature_invalid", "dists/stable/InRelease", "key"),
    ("signed_by_expired_key", expired_key, "signature_invalid", "dists/stable/InRelease", "expired"),
    ("unsigned_text_before_signed_block", unsigned_text_before, "signature_invalid",
     "dists/stable/InRelease", "outside the signed message"),
    ("two_signed_blocks", two_signed_blocks, "signature_invalid", "dists/stable/InRelease", ""),
    ("sha1_digest_signature", sha1_signature, "", "dists/stable/InRelease", "SHA1"),
    ("valid_until_past", valid_until_past, "metadata_expired", "dists/stable/InRelease", "Valid-Until"),
    ("date_older_than_last_snapshot", date_older, "metadata_rollback", "dists/stable/InRelease",
     "older than"),
    ("packages_hash_mismatch", packages_hash_mismatch, "checksum_mismatch",
     "dists/stable/main/binary-amd64/Packages.xz", "sha256"),
    ("package_hash_mismatch", package_hash_mismatch, "checksum_mismatch",
     "pool/main/h/hello/hello_1.1-1_amd64.deb", "sha256"),
    ("package_longer_than_declared", package_longer, "size_mismatch",
     "pool/main/h/hello/hello_1.1-1_amd64.deb", "longer than"),
    ("filename_with_dotdot", filename_escapes, "unsafe_path", "main/binary-amd64/Packages", "'..'"),
    ("release_with_only_md5", release_only_md5, "weak_digest", "dists/stable/main/binary-amd64/Packages",
     "SHA256"),
    ("package_404", package_404, "upstream_not_found", "pool/main/h/hello/hello_1.1-1_amd64.deb", "404"),
    ("connection_cut_mid_file", connection_cut, "fetch_failed", "pool/main/h/hello/hello_1.1-1_amd64.deb",
     ""),
    ("wrong_suite", wrong_suite, "metadata_malformed", "dists/stable/InRelease", "wrong suite"),
    ("stored_package_listed_with_a_wrong_size", stored_package_listed_with_a_wrong_size, "size_mismatch",
     "pool/main/libf/libfoo1/libfoo1_2.0-1_amd64.deb", "listed as 4001 bytes"),
    ("second_path_for_stored_content_with_a_wrong_size", second_path_for_stored_content_with_a_wrong_size,
     "size_mismatch", "pool/main/t/twin/twin_1.0_amd64.deb", "as stored before"),
]


@pytest.mark.parametrize(("case", "attack", "code", "file", "words"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_upstream_is_rejected_and_last_snapshot_keeps_serving(
        setup: Setup, case: str, attack: Callable[[Setup], None], code: str, file: str, words: str) -> None:
    first = setup.mirror.sync_one()
    assert first.ok, first.error
    before = setup.mirror.served_tree()
    attack(setup)
    result = setup.mirror.sync_one()
    assert result.error is not None, f"{case}: the sync succeeded"
    message = str(result.error)
    if code:
        assert result.error.code == code, message
    assert message.startswith("repo:"), message
    assert file in message, message
    assert words in message, message
    assert setup.mirror.snapshots() == [first.snapshot]
    assert setup.mirror.tier() == first.snapshot
    assert setup.mirror.served_tree() == before
    assert setup.mirror.temp_files() == []
    store = setup.mirror.store()
    run = store.sync_runs("repo", limit=1)[0]
    store.close()
    assert run.outcome == "failed" and run.error_code == result.error.code


def test_sync_cli_prints_one_line_per_repo_and_exit_status(setup: Setup) -> None:
    ok = setup.mirror.cli("sync")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().startswith("repo: 2")
    again = setup.mirror.cli("sync")
    assert again.stdout.strip() == "repo: unchanged"
    unknown_key(setup)
    bad = setup.mirror.cli("sync")
    assert bad.returncode == 1
    assert bad.stdout.startswith("repo: error: dists/stable/InRelease: "), bad.stdout  # the repo once
    snaps = setup.mirror.cli("snapshots", "repo", "--json")
    import json
    (snap,) = json.loads(snaps.stdout)
    assert snap["tiers"] == ["dev"] and snap["signed_by"] == "upstream" and snap["packages"] == 3
    tiers = json.loads(setup.mirror.cli("tiers", "--json").stdout)
    assert tiers["repo"]["dev"]["snapshot"] == snap["id"] and tiers["repo"]["prod"]["snapshot"] is None


def test_verify_finds_a_flipped_byte_in_the_pool(setup: Setup) -> None:
    assert setup.mirror.sync_one().ok
    assert setup.mirror.cli("verify").returncode == 0
    store = setup.mirror.store()
    snap = store.latest_snapshot("repo")
    assert snap
    entry = store.manifest("repo", snap)[setup.upstream.url_path_of("hello")]
    store.close()
    from mirror.pool import Pool
    path = Pool(setup.mirror.settings.storage.root).path_for(entry.sha256)
    data = bytearray(path.read_bytes())
    data[5] ^= 1
    path.write_bytes(bytes(data))
    out = setup.mirror.cli("verify")
    assert out.returncode == 1
    assert entry.sha256 in out.stdout and setup.upstream.url_path_of("hello") in out.stdout


# -- index variants, by-hash, sources --------------------------------------------------------

def test_indices_are_fetched_by_hash_when_the_release_says_so(setup: Setup) -> None:
    assert setup.mirror.sync_one().ok
    assert setup.server.count("dists/stable/main/binary-amd64/by-hash/SHA256/*") >= 2
    assert setup.server.count("dists/stable/main/binary-amd64/Packages.xz") == 0


def test_missing_best_variant_falls_back_to_the_next_listed_one(setup: Setup) -> None:
    up = setup.upstream
    xz = up.packages_path(ext=".xz")
    import hashlib
    digest = hashlib.sha256(xz.read_bytes()).hexdigest()
    xz.unlink()
    (xz.parent / "by-hash" / "SHA256" / digest).unlink()
    result = setup.mirror.sync_one()
    assert result.ok, result.error
    tree = setup.mirror.served_tree()
    assert "dists/stable/main/binary-amd64/Packages.xz" not in tree
    assert tree["dists/stable/main/binary-amd64/Packages.gz"] == up.packages_path(ext=".gz").read_bytes()
    assert up.url_path_of("hello") in tree


def test_sources_and_source_packages_are_mirrored_when_asked(setup: Setup, tmp_path: Path,
                                                             archive_key: SigningKey) -> None:
    import hashlib
    up = setup.upstream
    files = {"hello_1.0-1.dsc": b"Format: 3.0 (quilt)\nSource: hello\n", "hello_1.0.orig.tar.gz": b"x" * 999}
    directory = "pool/main/h/hello"
    for name, data in files.items():
        (up.root / directory / name).write_bytes(data)
    sums = "".join(f" {hashlib.sha256(d).hexdigest()} {len(d)} {n}\n" for n, d in files.items())
    sources = f"Package: hello\nVersion: 1.0-1\nDirectory: {directory}\nChecksums-Sha256:\n{sums}\n"
    up.publish(keep_plain_on_disk=False, extra_indices={"main/source/Sources": sources.encode()})
    mirror = write_config(tmp_path / "srcmirror", setup.server.url,
                          archive_key.write_public(tmp_path / "k.asc"), extra_repo="sources = true")
    result = mirror.sync_one()
    assert result.ok, result.error
    tree = mirror.served_tree()
    for name, data in files.items():
        assert tree[f"{directory}/{name}"] == data
    assert "dists/stable/main/source/Sources.xz" in tree


def test_source_file_name_with_a_slash_is_rejected(setup: Setup, tmp_path: Path,
                                                   archive_key: SigningKey) -> None:
    sources = ("Package: hello\nVersion: 1.0-1\nDirectory: pool/main/h/hello\nChecksums-Sha256:\n "
               + "0" * 64 + " 3 ../../../../etc/passwd\n\n")
    setup.upstream.publish(keep_plain_on_disk=False, extra_indices={"main/source/Sources": sources.encode()})
    mirror = write_config(tmp_path / "srcmirror", setup.server.url,
                          archive_key.write_public(tmp_path / "k.asc"), extra_repo="sources = true")
    result = mirror.sync_one()
    assert result.error is not None and result.error.code == "unsafe_path", result.error
    assert "main/source/Sources" in str(result.error)


# -- transport ------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/InRelease",
                                    "data:text/plain,Origin:%20Evil"])
def test_redirect_to_another_scheme_is_refused(setup: Setup, target: str) -> None:
    setup.server.faults["dists/stable/InRelease"] = Fault(redirect_to=target)
    result = setup.mirror.sync_one()
    assert result.error is not None and result.error.code == "redirect_refused", result.error
    assert "dists/stable/InRelease" in str(result.error)
    assert setup.mirror.snapshots() == []


def test_redirect_within_http_is_followed(setup: Setup) -> None:
    setup.server.faults["dists/stable/InRelease"] = Fault(redirect_to="/dists/stable/InRelease?x=1",
                                                           times=1)
    result = setup.mirror.sync_one()
    assert result.ok, result.error


def test_endless_inrelease_is_capped(setup: Setup) -> None:
    setup.server.faults["dists/stable/InRelease"] = Fault(endless=True)
    result = setup.mirror.sync_one()
    assert result.error is not None and result.error.code == "too_large", result.error
    assert "dists/stable/InRelease" in str(result.error)


def test_second_concurrent_sync_of_a_repo_is_refused(setup: Setup) -> None:
    from mirror.sync import repo_lock
    with repo_lock(setup.mirror.settings.storage.root, "repo"):
        result = setup.mirror.sync_one()
    assert result.error is not None and result.error.code == "repo_locked"
    assert setup.mirror.sync_one().ok


def test_one_failing_repo_does_not_stop_the_others(setup: Setup, tmp_path: Path,
                                                   archive_key: SigningKey) -> None:
    keyring = archive_key.write_public(tmp_path / "k.asc")
    mirror = write_config(tmp_path / "two", setup.server.url, keyring, extra_repo=f"""
[[repos]]
name = "broken"
type = "deb"
url = "{setup.server.url}/nothing-here"
suites = ["stable"]
keyring = "{keyring}"
""")
    good, bad = mirror.sync("repo", "broken")
    assert good.ok and good.snapshot
    assert bad.error is not None and bad.error.code == "upstream_not_found"
    out = mirror.cli("sync")
    assert out.returncode == 1
    assert "repo: unchanged" in out.stdout and "broken: error:" in out.stdout


def test_a_failed_sync_keeps_what_it_verified_and_the_next_run_fetches_only_the_rest(setup: Setup) -> None:
    """Files a failed sync verified go into the pool (flushed before they are named), unrecorded:
    the next run re-hashes them instead of fetching them again."""
    up = setup.upstream
    failing = up.url_path_of("libfoo1")
    setup.server.faults[failing] = Fault(statuses=[404])
    first = setup.mirror.sync_one()
    assert not first.ok and first.error is not None and failing in str(first.error)
    assert setup.mirror.snapshots() == []
    assert setup.mirror.temp_files() == []
    hello = up.url_path_of("hello")
    assert setup.server.count(hello) == 1
    del setup.server.faults[failing]
    again = setup.mirror.sync_one()
    assert again.ok and again.snapshot, again.error
    assert setup.server.count(hello) == 1  # adopted from the pool, not fetched again
    assert setup.server.count(failing) == 2
    assert setup.mirror.served_tree()[hello] == up.deb_path("hello").read_bytes()


def test_every_failed_file_is_in_the_report(setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    """A sync reports every failure, not only the first: the error says how many more, the run
    record lists each file and why, and the log has a line for each."""
    up = setup.upstream
    broken = sorted(up.url_path_of(name) for name in ("hello", "libfoo1", "foo-doc"))
    for path in broken:
        setup.server.faults[path] = Fault(statuses=[404])
    with caplog.at_level("ERROR", logger="mirror.sync"):
        result = setup.mirror.sync_one()
    assert result.error is not None and "(and 2 more failed files)" in str(result.error)
    assert len(result.error.others) == 2
    store = setup.mirror.store()
    try:
        (run,) = store.sync_runs("repo", limit=1)
    finally:
        store.close()
    assert run.outcome == "failed" and run.message is not None
    for path in broken:
        assert f"{path}: " in run.message, run.message
        assert any(path in r.getMessage() for r in caplog.records), caplog.text


@pytest.mark.parametrize("how", ["in_process", "cli_with_download_helpers"])
def test_downloads_from_an_upstream_stay_within_max_parallel_downloads(setup: Setup, how: str) -> None:
    """ARCHITECTURE: bounded concurrency per upstream. With max_parallel_downloads = 4 and slow
    packages, the upstream never sees more than 4 requests at once, helpers included."""
    setup.upstream.add(*(DebPackage(f"pkg{i:02d}", "1.0-1") for i in range(16)))
    setup.upstream.publish(keep_plain_on_disk=False)
    setup.server.faults["pool/*"] = Fault(delay=0.15)
    setup.server.max_in_flight = 0
    if how == "in_process":
        result = setup.mirror.sync_one()
        assert result.ok, result.error
    else:
        out = setup.mirror.cli("sync")
        assert out.returncode == 0, out.stdout + out.stderr
    assert 2 <= setup.server.max_in_flight <= 4, setup.server.max_in_flight
