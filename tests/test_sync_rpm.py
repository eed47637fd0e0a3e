"""RPM sync end to end: real rpmbuild/rpmsign/createrepo_c upstream over HTTP, hostile cases, real dnf."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fixtures.keys import SigningKey
from fixtures.rpm_repo import Advisory, RpmPackage, RpmRepo, sample_comps_xml, sample_modules_yaml
from fixtures.upstream import Fault, UpstreamServer
from tests.helpers import Mirror, write_config

BASE = [RpmPackage("hello", "1.0"), RpmPackage("libfoo", "2.0", epoch=1, payload_size=4000),
        RpmPackage("foo-doc", "2.0", arch="noarch")]


def write_rpm_config(root: Path, url: str, keyring: Path, *, extra_repo: str = "", name: str = "repo",
                     retries: int = 2) -> Mirror:
    return write_config(root, url, keyring, kind="rpm", extra_repo=extra_repo, name=name, retries=retries)


@dataclass
class Setup:
    upstream: RpmRepo
    server: UpstreamServer
    mirror: Mirror
    keys: dict[str, SigningKey]
    revision: int = 1000

    def publish(self, **kw: object) -> None:
        self.revision += 1
        kw.setdefault("revision", str(self.revision))
        kw.setdefault("timestamp", 1_700_000_000 + self.revision)
        self.upstream.publish(**kw)  # type: ignore[arg-type]


ADVISORY = Advisory("TEST-2026:0001", cves=["CVE-2026-0001"], title="hello security update",
                    packages=[("hello", 0, "1.0", "1", "x86_64")])


@pytest.fixture
def setup(tmp_path: Path, archive_key: SigningKey, other_key: SigningKey) -> Iterator[Setup]:
    upstream = RpmRepo(tmp_path / "upstream", archive_key)
    upstream.add(*BASE)
    keyring = archive_key.write_public(tmp_path / "keys" / "archive.asc")
    with UpstreamServer(upstream.root) as server:
        mirror = write_rpm_config(tmp_path / "mirror", server.url, keyring)
        s = Setup(upstream, server, mirror, {"archive": archive_key, "other": other_key})
        s.publish(updateinfo=[ADVISORY], modules_yaml=sample_modules_yaml(),
                  comps_xml=sample_comps_xml(["hello", "libfoo"]))
        yield s


def test_first_rpm_sync_mirrors_every_record_and_package(setup: Setup) -> None:
    result = setup.mirror.sync_one()
    assert result.ok, result.error
    tree = setup.mirror.served_tree()
    up = setup.upstream
    assert tree["repodata/repomd.xml"] == up.repomd_path.read_bytes()
    assert tree["repodata/repomd.xml.asc"] == up.repomd_asc_path.read_bytes()
    for info in up.records().values():
        assert tree[info.href] == (up.root / info.href).read_bytes()
    assert {"primary", "filelists", "other", "updateinfo", "modules", "group"} <= set(up.records())
    for name in ("hello", "libfoo", "foo-doc"):
        assert tree[up.url_path_of(name)] == up.rpm_path(name).read_bytes()
    store = setup.mirror.store()
    snap = store.latest_snapshot("repo")
    assert snap
    versions = {e.package.name: e.package.version for e in store.manifest("repo", snap).values() if e.package}
    store.close()
    assert versions == {"hello": "1.0-1", "libfoo": "1:2.0-1", "foo-doc": "2.0-1"}


def test_unchanged_repomd_gives_unchanged(setup: Setup) -> None:
    assert setup.mirror.sync_one().ok
    setup.server.clear()
    again = setup.mirror.sync_one()
    assert again.ok and again.snapshot is None
    assert setup.server.count("*") == 2  # repomd.xml and its signature


def test_sha512_checksums_are_accepted(setup: Setup) -> None:
    setup.publish(checksum="sha512")
    result = setup.mirror.sync_one()
    assert result.ok, result.error
    assert setup.mirror.served_tree()[setup.upstream.url_path_of("hello")] == \
        setup.upstream.rpm_path("hello").read_bytes()


def _new_package(s: Setup, **kw: object) -> None:
    s.upstream.add(RpmPackage("hello", "1.1"))
    s.publish(**kw)


def unknown_key(s: Setup) -> None:
    _new_package(s, signer=s.keys["other"])


def tampered_repomd(s: Setup) -> None:
    _new_package(s)
    p = s.upstream.repomd_path
    p.write_bytes(p.read_bytes().replace(b"<revision>", b"<revision>9"))


def revision_rollback(s: Setup) -> None:
    s.revision -= 10
    _new_package(s)


def primary_checksum_mismatch(s: Setup) -> None:
    _new_package(s)
    s.upstream.edit_metadata("primary", lambda x: x.replace("test package", "evil package"),
                             update_repomd=False)


def md5_only_record(s: Setup) -> None:
    _new_package(s, checksum="md5")


def package_checksum_mismatch(s: Setup) -> None:
    _new_package(s)
    p = s.upstream.rpm_path("hello", "1.1")
    data = bytearray(p.read_bytes())
    data[-20] ^= 0xFF
    p.write_bytes(bytes(data))


def href_escapes(s: Setup) -> None:
    _new_package(s)
    href = s.upstream.url_path_of("hello", "1.1")
    s.upstream.edit_metadata("primary", lambda x: x.replace(f'href="{href}"', 'href="../../x.rpm"'))


def xml_base_elsewhere(s: Setup) -> None:
    _new_package(s)
    href = s.upstream.url_path_of("hello", "1.1")
    s.upstream.edit_metadata("primary", lambda x: x.replace(
        f'href="{href}"', f'xml:base="http://evil.example.org/" href="{href}"'))


def billion_laughs(s: Setup) -> None:
    _new_package(s)
    bomb = ('<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
            + "".join(f'<!ENTITY lol{i} "{"&lol{};".format(i - 1 if i > 1 else "") * 10}">'
                      for i in range(1, 9))
            + "]>\n")
    s.upstream.edit_metadata("primary", lambda x: bomb + x.split("?>", 1)[1].replace(
        "test package", "&lol8;", 1))


def billion_laughs_in_updateinfo(s: Setup) -> None:
    _new_package(s, updateinfo=[ADVISORY])
    bomb = ('<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
            + "".join(f'<!ENTITY lol{i} "{"&lol{};".format(i - 1 if i > 1 else "") * 10}">'
                      for i in range(1, 9))
            + "]>\n")
    s.upstream.edit_metadata("updateinfo", lambda x: bomb + x.split("?>", 1)[1].replace(
        "A test advisory.", "&lol8;", 1))


def unsigned_repomd(s: Setup) -> None:
    _new_package(s, sign_repomd=False)
    s.upstream.repomd_asc_path.unlink(missing_ok=True)


HOSTILE: list[tuple[str, Callable[[Setup], None], str, str, str]] = [
    ("repomd_signed_by_unknown_key", unknown_key, "signature_invalid", "repodata/repomd.xml.asc", "key"),
    ("repomd_tampered_after_signing", tampered_repomd, "signature_invalid", "repodata/repomd.xml.asc",
     "bad signature"),
    ("repomd_unsigned", unsigned_repomd, "signature_invalid", "repodata/repomd.xml.asc", "not signed"),
    ("revision_rollback", revision_rollback, "metadata_rollback", "repodata/repomd.xml", "older than"),
    ("primary_checksum_mismatch", primary_checksum_mismatch, "checksum_mismatch|size_mismatch", "primary.xml",
     "verified metadata"),
    ("md5_only_record", md5_only_record, "weak_digest", "repodata/", "md5"),
    ("package_checksum_mismatch", package_checksum_mismatch, "checksum_mismatch", "hello-1.1", "sha256"),
    ("location_href_escapes", href_escapes, "unsafe_path", "hello", "'..'"),
    ("xml_base_to_another_host", xml_base_elsewhere, "unsafe_path", "hello", "xml:base"),
    ("billion_laughs_in_primary", billion_laughs, "metadata_malformed", "primary", "DTD"),
    ("billion_laughs_in_updateinfo", billion_laughs_in_updateinfo, "metadata_malformed", "updateinfo",
     "declaration"),
]


@pytest.mark.parametrize(("case", "attack", "code", "file", "words"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_rpm_upstream_is_rejected_and_last_snapshot_keeps_serving(
        setup: Setup, case: str, attack: Callable[[Setup], None], code: str, file: str, words: str) -> None:
    first = setup.mirror.sync_one()
    assert first.ok, first.error
    before = setup.mirror.served_tree()
    attack(setup)
    result = setup.mirror.sync_one()
    assert result.error is not None, f"{case}: the sync succeeded"
    message = str(result.error)
    assert result.error.code in code.split("|"), message
    assert message.startswith("repo:"), message
    assert file in message, message
    assert words in message, message
    assert setup.mirror.snapshots() == [first.snapshot]
    assert setup.mirror.served_tree() == before
    assert setup.mirror.temp_files() == []


def test_updateinfo_parsed_beside_failed_downloads_leaves_nothing_behind(setup: Setup) -> None:
    """updateinfo is parsed beside the downloads (SyncContext.meanwhile). When a download fails
    first, the sync reports that failure, the parse is dropped and nothing is left behind; when
    only updateinfo is bad, the sync still fails on it (HOSTILE table above)."""
    first = setup.mirror.sync_one()
    assert first.ok, first.error
    before = setup.mirror.served_tree()
    billion_laughs_in_updateinfo(setup)
    setup.server.faults[setup.upstream.url_path_of("hello", "1.1")] = Fault(statuses=[404])
    result = setup.mirror.sync_one()
    assert result.error is not None
    assert result.error.code in ("upstream_not_found", "metadata_malformed"), result.error
    if result.error.code == "upstream_not_found":
        assert "hello-1.1" in str(result.error), result.error
    assert setup.mirror.snapshots() == [first.snapshot]
    assert setup.mirror.served_tree() == before
    assert setup.mirror.temp_files() == []


def test_upstream_503_with_retry_after_is_retried(setup: Setup) -> None:
    _new_package(setup)
    setup.server.faults[setup.upstream.url_path_of("hello", "1.1")] = Fault(
        statuses=[503], headers={"Retry-After": "0"})
    result = setup.mirror.sync_one()
    assert result.ok, result.error


# -- package signatures ------------------------------------------------------------------------

def test_unsigned_rpm_under_require_fails_naming_the_package(setup: Setup) -> None:
    assert setup.mirror.sync_one().ok
    setup.upstream.add(RpmPackage("hello", "1.1"), sign=False)
    setup.publish()
    result = setup.mirror.sync_one()
    assert result.error is not None and result.error.code == "signature_invalid", result.error
    assert "hello-1.1" in str(result.error) and "not signed" in str(result.error)
    assert len(setup.mirror.snapshots()) == 1


def test_every_package_whose_signature_fails_is_in_the_report(setup: Setup) -> None:
    setup.upstream.add(RpmPackage("hello", "1.1"), RpmPackage("world", "2.0"), sign=False)
    setup.publish()
    result = setup.mirror.sync_one()
    assert result.error is not None and "(and 1 more)" in str(result.error), result.error
    reported = " ".join([str(result.error), *(str(o) for o in result.error.others)])
    assert "hello-1.1" in reported and "world-2.0" in reported, reported
    store = setup.mirror.store()
    try:
        (run,) = store.sync_runs("repo", limit=1)
    finally:
        store.close()
    assert run.message is not None and "hello-1.1" in run.message and "world-2.0" in run.message


def test_rpm_signed_by_another_key_under_require_fails_naming_the_key(setup: Setup) -> None:
    setup.upstream.add(RpmPackage("hello", "1.1"), sign=setup.keys["other"])
    setup.publish()
    result = setup.mirror.sync_one()
    assert result.error is not None and result.error.code == "signature_invalid", result.error
    message = str(result.error)
    assert "hello-1.1" in message
    assert setup.keys["other"].fingerprint[-8:].lower() in message
    assert setup.mirror.snapshots() == []


def test_unsigned_rpm_under_ignore_is_mirrored(setup: Setup, tmp_path: Path, archive_key: SigningKey) -> None:
    setup.upstream.add(RpmPackage("hello", "1.1"), sign=False)
    setup.publish()
    keyring = archive_key.write_public(tmp_path / "k.asc")
    mirror = write_rpm_config(tmp_path / "ignore", setup.server.url, keyring,
                              extra_repo='package_signatures = "ignore"')
    assert mirror.sync_one().ok


def test_verified_package_signatures_are_remembered(setup: Setup) -> None:
    assert setup.mirror.sync_one().ok
    root = setup.mirror.settings.storage.root / "rpmdb"
    (proven,) = list(root.glob("*/verified-packages"))
    first = proven.read_text().split()
    assert len(first) == 3
    setup.upstream.add(RpmPackage("newpkg", "1.0"))
    setup.publish()
    assert setup.mirror.sync_one().ok
    assert len(proven.read_text().split()) == 4  # only the new package was checked


# -- real dnf -----------------------------------------------------------------------------------

def test_dnf_makecache_and_install_from_the_mirror(setup: Setup, tmp_path: Path, archive_key: SigningKey,
                                                   other_key: SigningKey) -> None:
    from fixtures.dnf_client import DnfClient, describe
    from fixtures.rpm_repo import export_key

    assert setup.mirror.sync_one().ok
    setup.server.stop()  # everything dnf gets comes from the mirror
    with setup.mirror.serving() as url:
        dnf = DnfClient(tmp_path / "dnf")
        dnf.configure("mirror", f"{url}/dev/repo/", export_key(archive_key, tmp_path / "key.asc"))
        assert (r := dnf.makecache()).returncode == 0, describe(r)
        assert (r := dnf.download("hello", "foo-doc")).returncode == 0, describe(r)
        assert sorted(p.name for p in dnf.downloaded()) == ["foo-doc-2.0-1.noarch.rpm",
                                                            "hello-1.0-1.x86_64.rpm"]
        wrong = DnfClient(tmp_path / "dnf-wrong")
        wrong.configure("mirror", f"{url}/dev/repo/", export_key(other_key, tmp_path / "other.asc"))
        assert wrong.makecache().returncode != 0


def test_mixed_deb_and_rpm_repos_sync_in_parallel_and_fail_independently(
        setup: Setup, tmp_path: Path, archive_key: SigningKey) -> None:
    from fixtures.apt_repo import AptRepo, DebPackage

    apt = AptRepo(tmp_path / "apt-upstream", archive_key)
    apt.add(DebPackage("hello", "1.0-1"))
    apt.publish(keep_plain_on_disk=False)
    keyring = archive_key.write_public(tmp_path / "k.asc")
    with UpstreamServer(apt.root) as apt_server:
        mirror = write_rpm_config(tmp_path / "mixed", setup.server.url, keyring, extra_repo=f"""
[[repos]]
name = "debs"
type = "deb"
url = "{apt_server.url}"
suites = ["stable"]
keyring = "{keyring}"

[[repos]]
name = "broken-rpm"
type = "rpm"
url = "{setup.server.url}/missing/"
keyring = "{keyring}"
""")
        out = mirror.cli("sync")
    lines = sorted(out.stdout.splitlines())
    assert out.returncode == 1, out
    assert lines[0].startswith("broken-rpm: error: repodata/repomd.xml: "), lines[0]  # the repo once
    assert lines[1].startswith("debs: 2") and lines[2].startswith("repo: 2"), lines
