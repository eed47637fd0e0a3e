"""tier_signing: "mirror" re-issues each tier's Release files (fresh Date and Valid-Until, the same
verified hash lists, signed with the mirror's key); "upstream" serves the upstream's bytes and
refuses moves apt would not follow. The end-to-end test runs the real apt-get against `mirror
serve`; the others run in-process with a clock under the test's control."""

from __future__ import annotations

import hashlib
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fixtures.apt_client import AptClient, describe, ok
from fixtures.apt_repo import AptRepo, DebPackage
from fixtures.keys import SigningKey, make_key
from fixtures.upstream import UpstreamServer
from mirror.errors import PolicyError
from mirror.formats.deb import parse_release
from mirror.model import utcnow
from mirror.pool import Pool
from mirror.publish import StoreCatalog
from mirror.releases import ReleaseIssuer, clearsigned_payload, reissue_release, release_date
from mirror.signing import MirrorSigner
from mirror.store import Store
from mirror.tiers import Tiers
from mirror.trust.gpg import key_fingerprints
from tests.helpers import Mirror, http, seed_snapshot, serve_both, write_config, write_tokens

TOKEN = "signing-token-0123456789abcdef"
ORDER = ("dev", "test", "uat", "prod")


@pytest.fixture(scope="module")
def mirror_key(keys_dir: Path) -> SigningKey:
    """The mirror's own key (not the archive's)."""
    return make_key(keys_dir / "mirror-signing", "Mirror Signing <mirror@example.org>")


def signing_toml(key: SigningKey, extra: str = "") -> str:
    return f'[signing]\ngnupghome = "{key.home}"\nkey = "{key.fingerprint}"\n{extra}\n'


def hash_sections(release: bytes) -> list[str]:
    """The Release's lines from the first hash list on (what re-issuing must keep byte for byte)."""
    lines = release.decode().splitlines()
    start = next(i for i, line in enumerate(lines) if line in ("MD5Sum:", "SHA256:", "SHA1:", "SHA512:"))
    return lines[start:]


def gpgv(keyring: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["gpgv", "--keyring", str(keyring), *map(str, files)], capture_output=True,
                          text=True, check=False)


def wait_for(url: str, timeout: float = 15) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        reply = http("GET", url)
        if reply.status == 200:
            return reply.body
        assert time.monotonic() < deadline, f"{url}: {reply.status}"
        time.sleep(0.1)


# -- the real apt-get against `mirror serve` ---------------------------------------------------


def test_tier_signing_with_real_apt(tmp_path: Path, archive_key: SigningKey, mirror_key: SigningKey) -> None:
    upstream = AptRepo(tmp_path / "upstream", archive_key, suite="stable", codename="demo")
    upstream.add(DebPackage("hello", "1.0-1"))
    upstream.publish(date=datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2))
    keyring = archive_key.write_public(tmp_path / "keys" / "archive.asc")
    tokens = write_tokens(tmp_path / "mirror" / "tokens", {"ops": TOKEN})
    with UpstreamServer(upstream.root) as server:
        plain = (f'\n[[repos]]\nname = "plain"\ntype = "deb"\nurl = "{server.url}"\nsuites = ["stable"]\n'
                 f'keyring = "{keyring}"\ntier_signing = "upstream"\n')
        mirror = write_config(tmp_path / "mirror", server.url, keyring, name="signed",
                              extra_top=signing_toml(mirror_key), extra_repo=plain,
                              extra_server=f'token_file = "{tokens}"')
        assert mirror.settings.repo("signed").tier_signing == "mirror"  # the default for APT with [signing]
        first = {r.repo: r.snapshot for r in mirror.sync("signed", "plain")}
        assert all(first.values()), first
        upstream.remove("hello")
        upstream.add(DebPackage("hello", "2.0-1"))
        published = datetime.now(UTC).replace(microsecond=0)
        upstream.publish(date=published, valid_until=timedelta(seconds=6))  # expires during the test
        second = {r.repo: r.snapshot for r in mirror.sync("signed", "plain")}
        assert all(second.values()) and second != first, second
    upstream_inrelease = upstream.inrelease_path.read_bytes()
    upstream_release = upstream.release_path.read_bytes()
    expires = published + timedelta(seconds=6)

    with serve_both(mirror) as served:
        repo_url, api = served.repo_url, f"{served.api_url}/api/v1"
        key_file = tmp_path / "mirror-key.asc"
        key_file.write_bytes(http("GET", f"{repo_url}/keys/mirror.asc").body)
        assert key_fingerprints(key_file) == [mirror_key.fingerprint]
        tier = f"{repo_url}/dev/signed/dists/stable"
        inrelease = wait_for(f"{tier}/InRelease")  # issued by the server's background refresher

        # apt trusting only the mirror's key: update and download work
        apt = AptClient(tmp_path / "apt")
        apt.configure(f"{repo_url}/dev/signed stable main", key_file)
        update = apt.update()
        assert ok(update), describe(update)
        assert apt.versions("hello") == ["2.0-1"]
        download = apt.download("hello")
        assert ok(download), describe(download)
        assert [p.name for p in apt.downloaded()] == ["hello_2.0-1_amd64.deb"]

        # the re-issued files: gpgv-valid with the mirror's key, fresh dates, the upstream's hash lists
        files = tmp_path / "issued"
        files.mkdir()
        (files / "InRelease").write_bytes(inrelease)
        release = http("GET", f"{tier}/Release").body
        (files / "Release").write_bytes(release)
        (files / "Release.gpg").write_bytes(http("GET", f"{tier}/Release.gpg").body)
        binary_key = mirror_key.write_public(tmp_path / "mirror-key.gpg", armor=False)
        for args in ((files / "InRelease",), (files / "Release.gpg", files / "Release")):
            check = gpgv(binary_key, *args)
            assert check.returncode == 0, check.stderr
        assert gpgv(archive_key.write_public(tmp_path / "archive.gpg", armor=False),
                    files / "InRelease").returncode != 0
        parsed = parse_release(release, what="Release")
        assert parsed.date is not None and parsed.valid_until is not None
        assert parsed.date >= published and parsed.valid_until - parsed.date == timedelta(days=7)
        assert hash_sections(release) == hash_sections(upstream_release)
        assert clearsigned_payload(inrelease, what="InRelease") == release

        # /snapshots/ keeps the upstream's bytes; the upstream key alone fails on the tier
        assert http("GET", f"{repo_url}/snapshots/signed/{second['signed']}/dists/stable/InRelease").body \
            == upstream_inrelease
        vendor = AptClient(tmp_path / "apt-vendor")
        vendor.configure(f"{repo_url}/dev/signed stable main", keyring)
        assert not ok(vendor.update())
        assert http("GET", f"{repo_url}/dev/plain/dists/stable/InRelease").body == upstream_inrelease

        # the upstream's Valid-Until passes: "mirror" still updates, "upstream" refuses the move
        time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 1.0)
        update = apt.update()
        assert ok(update), describe(update)
        plain_client = AptClient(tmp_path / "apt-plain")
        plain_client.configure(f"{repo_url}/dev/plain stable main", keyring)
        expired = plain_client.update()
        assert "expired" in (expired.stdout + expired.stderr).lower(), describe(expired)
        reply = http("POST", f"{api}/repos/plain/promote", body={"to": "test", "from": "dev"}, token=TOKEN)
        assert reply.status == 422 and "Valid-Until" in reply.json()["error"]["message"], reply.body
        reply = http("POST", f"{api}/repos/plain/promote", body={"to": "test", "from": "dev", "force": True},
                     token=TOKEN)
        assert reply.status == 200 and reply.json()["move"]["forced"] is True
        reply = http("POST", f"{api}/repos/signed/promote", body={"to": "test", "from": "dev"}, token=TOKEN)
        assert reply.status == 200 and reply.json()["move"]["forced"] is False
        tested = AptClient(tmp_path / "apt-test")  # issued before the API answered: no waiting
        tested.configure(f"{repo_url}/test/signed stable main", key_file)
        update = tested.update()
        assert ok(update) and tested.versions("hello") == ["2.0-1"], describe(update)

        # a rollback reaches the client that saw the newer snapshot (the re-issued Date is newer)
        reply = http("POST", f"{api}/repos/signed/rollback", body={"tier": "dev"}, token=TOKEN)
        assert reply.status == 200 and reply.json()["snapshot"] == first["signed"], reply.body
        update = apt.update()
        assert ok(update), describe(update)
        assert apt.versions("hello") == ["1.0-1"]
        # under "upstream", the same rollback would not reach it: refused unless forced
        reply = http("POST", f"{api}/repos/plain/rollback", body={"tier": "dev"}, token=TOKEN)
        assert reply.status == 422 and "older" in reply.json()["error"]["message"], reply.body

    # the CLI re-issues after its own moves too (no server needed)
    out = mirror.cli("promote", "signed", "--to", "uat", "--from", "test")
    assert out.returncode == 0 and not out.stderr.count("warning"), out.stdout + out.stderr
    store = mirror.store()
    try:
        issued = [r for r in store.tier_releases("signed") if r.tier == "uat"]
        assert [r.snapshot for r in issued] == [second["signed"]]
        assert issued[0].valid_until - issued[0].issued > timedelta(days=6)
    finally:
        store.close()


# -- the Release text ----------------------------------------------------------------------------


def test_reissued_release_keeps_every_line_but_date_valid_until_and_signed_by(
        tmp_path: Path, archive_key: SigningKey) -> None:
    upstream = AptRepo(tmp_path / "up", archive_key, suite="stable")
    upstream.add(DebPackage("hello", "1.0-1"))
    upstream.publish(date=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), valid_until=timedelta(days=1),
                     extra_release_fields={"Signed-By": "0123456789ABCDEF0123456789ABCDEF01234567"})
    original = upstream.release_path.read_bytes()
    # the payload cut out of the clearsigned InRelease is the signed Release text
    assert clearsigned_payload(upstream.inrelease_path.read_bytes(), what="InRelease") == original
    date = datetime(2027, 5, 6, 7, 8, 9, tzinfo=UTC)
    text = reissue_release(original, date=date, valid_until=date + timedelta(days=7))
    assert release_date(date) == "Thu, 06 May 2027 07:08:09 UTC"
    new_lines, old_lines = text.decode().splitlines(), original.decode().splitlines()
    assert "Date: Thu, 06 May 2027 07:08:09 UTC" in new_lines
    assert "Valid-Until: Thu, 13 May 2027 07:08:09 UTC" in new_lines
    assert not any(line.startswith("Signed-By") for line in new_lines)
    kept = [line for line in old_lines if not line.startswith(("Date:", "Valid-Until:", "Signed-By:"))]
    assert [line for line in new_lines if not line.startswith(("Date:", "Valid-Until:"))] == kept
    assert new_lines.index("Date: Thu, 06 May 2027 07:08:09 UTC") == \
        next(i for i, line in enumerate(old_lines) if line.startswith("Date:"))
    old, new = parse_release(original, what="old"), parse_release(text, what="new")
    assert dict(new.files) == dict(old.files) and (new.suite, new.codename) == (old.suite, old.codename)


# -- issuing, refreshing, serving, in-process ----------------------------------------------------


class Clock:
    """Real time plus an offset the test (and the issuer's sleep) can only move forward."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return utcnow() + self.offset

    def sleep(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


def real_inrelease(key: SigningKey, index: bytes, label: str) -> bytes:
    text = (f"Origin: Test\nLabel: {label}\nSuite: stable\nCodename: stable\n"
            f"Date: {release_date(utcnow() - timedelta(days=30))}\n"
            f"Valid-Until: {release_date(utcnow() - timedelta(days=20))}\nSHA256:\n"
            f" {hashlib.sha256(index).hexdigest()} {len(index)} main/binary-amd64/Packages\n")
    return key.clearsign(text.encode())


Signed = tuple[Mirror, Store, ReleaseIssuer, StoreCatalog, Clock, list[str]]


@pytest.fixture
def signed(tmp_path: Path, archive_key: SigningKey, mirror_key: SigningKey) -> Iterator[Signed]:
    keyring = archive_key.write_public(tmp_path / "keys" / "archive.asc")
    mirror = write_config(tmp_path / "mirror", "http://127.0.0.1:9/", keyring,
                          extra_top=signing_toml(mirror_key, 'valid_for = "2h"'))
    settings = mirror.settings
    store = Store(settings.storage.root / "state.db")
    pool = Pool(settings.storage.root)
    snaps = []
    for label in ("old", "new"):
        index = f"Package: hello-{label}\n".encode()
        snaps.append(seed_snapshot(store, pool, "repo", {
            "dists/stable/InRelease": real_inrelease(archive_key, index, label),
            "dists/stable/main/binary-amd64/Packages": index}))
    clock = Clock()
    signer = MirrorSigner.load(mirror_key.home, mirror_key.fingerprint)
    issuer = ReleaseIssuer(settings, Store(settings.storage.root / "state.db"), signer, clock=clock,
                           sleep=clock.sleep)
    catalog = StoreCatalog(Store(settings.storage.root / "state.db"), pool, clock=clock,
                           mirror_signed={"repo"})
    yield mirror, store, issuer, catalog, clock, snaps
    store.close()


def served_release(catalog: StoreCatalog, tier: str) -> bytes | None:
    entry = catalog.lookup_tier(tier, "repo", "dists/stable/Release")
    return catalog.pool_path(entry.sha256).read_bytes() if entry is not None else None


def test_issue_refresh_move_and_rollback_are_served_in_order(signed: Signed) -> None:
    _mirror, store, issuer, catalog, clock, (_old, new) = signed
    upstream = catalog.lookup_snapshot("repo", new, "dists/stable/InRelease")
    assert upstream is not None
    # nothing issued yet: the tier never falls back to the upstream's (expired) root files
    assert catalog.lookup_tier("dev", "repo", "dists/stable/InRelease") is None
    assert catalog.lookup_tier("dev", "repo", "dists/stable/main/binary-amd64/Packages") is not None
    assert issuer.due() == [("repo", "dev")]
    issued, failed = issuer.issue_due()
    assert issued == [("repo", "dev")] and not failed and issuer.due() == []
    first = served_release(catalog, "dev")
    assert first is not None and b"Label: new" in first
    entry = catalog.lookup_tier("dev", "repo", "dists/stable/InRelease")
    assert entry is not None and entry.sha256 != upstream.sha256
    assert catalog.lookup_snapshot("repo", new, "dists/stable/InRelease") == upstream  # /snapshots/

    def date_of(release: bytes | None) -> datetime:
        assert release is not None
        parsed = parse_release(release, what="Release")
        assert parsed.date is not None
        return parsed.date

    # a rollback: until it is issued, the grace window keeps the last issue; then a newer Date
    Tiers(store, ORDER).rollback("repo", "dev", actor="t")
    assert served_release(catalog, "dev") == first
    assert issuer.due() == [("repo", "dev")]
    issuer.issue_due()
    rolled = served_release(catalog, "dev")
    assert rolled is not None and b"Label: old" in rolled and date_of(rolled) > date_of(first)
    # back again: the snapshot issued before is issued anew (its old Date would be ignored)
    Tiers(store, ORDER).promote("repo", "dev", snapshot=new, actor="t")
    assert issuer.due() == [("repo", "dev")]
    issuer.issue_due()
    again = served_release(catalog, "dev")
    assert again is not None and b"Label: new" in again and date_of(again) > date_of(rolled)
    # refreshed once less than half the validity (2 h) is left
    clock.offset += timedelta(minutes=59)
    assert issuer.due() == []
    clock.offset += timedelta(minutes=2)
    assert issuer.due() == [("repo", "dev")]
    issuer.issue_due()
    refreshed = served_release(catalog, "dev")
    assert refreshed is not None and date_of(refreshed) > date_of(again)
    assert hash_sections(refreshed) == hash_sections(again)
    # what the tier's clients see expire (for metrics and status), beside the upstream's own date
    (served,) = [s for s in store.served_snapshots() if s.tier == "dev"]
    assert served.issued_valid_until == parse_release(refreshed, what="Release").valid_until


def test_upstream_tier_signing_refuses_expired_and_older_releases(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    pool = Pool(tmp_path)
    now = utcnow()
    def seed(body: bytes, date: datetime, valid_until: datetime | None = None) -> str:
        return seed_snapshot(store, pool, "repo", {"dists/stable/InRelease": body}, date=date,
                             valid_until=valid_until)

    older = seed(b"A", now - timedelta(days=2))
    expired = seed(b"B", now - timedelta(days=1), now - timedelta(hours=1))
    newest = seed(b"C", now)
    tiers = Tiers(store, ORDER, date_checked={"repo"})
    assert tiers.promote("repo", "test", from_tier="dev", actor="t").snapshot == newest
    with pytest.raises(PolicyError, match=r"older than .* apt ignores an older Date"):
        tiers.promote("repo", "dev", snapshot=older, actor="t")
    with pytest.raises(PolicyError, match=r"expired at .*Valid-Until"):
        tiers.promote("repo", "dev", snapshot=expired, actor="t")
    forced = tiers.promote("repo", "dev", snapshot=older, actor="t", force=True)
    assert forced.move is not None and forced.move.forced
    # rollback to the newer one is fine; rolling back again to the older one is not
    assert tiers.rollback("repo", "dev", actor="t").snapshot == newest
    with pytest.raises(PolicyError, match="older"):
        tiers.rollback("repo", "dev", actor="t")
    # tier_signing "mirror" (not date-checked): the mirror re-issues, nothing to refuse
    assert Tiers(store, ORDER).promote("repo", "dev", snapshot=expired, actor="t").changed
