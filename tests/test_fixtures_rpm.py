"""The RPM fixtures themselves: a real signed yum/dnf repo (rpmbuild, rpmsign, createrepo_c),
served by the hostile upstream server, checked with the real, isolated dnf and rpmkeys."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import createrepo_c as cr
import pytest

from fixtures.dnf_client import DnfClient, describe
from fixtures.keys import SigningKey
from fixtures.rpm_repo import (
    Advisory,
    RpmPackage,
    RpmRepo,
    build_rpm,
    checksig,
    export_key,
    rpm_defines,
    rpm_env,
    sample_comps_xml,
    sample_modules_yaml,
    signature_key_id,
)
from fixtures.upstream import UpstreamServer

PKGS = [
    RpmPackage("hello", "1.0", payload_size=2048),
    RpmPackage("libfoo", "2.0", epoch=3, requires=["hello >= 1.0"], provides=["foo-api = 2"],
               summary="Foo library"),
    RpmPackage("data", "3", arch="noarch", payload_size=10_000),
]
UNSIGNED = RpmPackage("unsigned", "1.0")
FOREIGN = RpmPackage("foreign", "1.0")  # signed, but by another key
ADVISORY = Advisory("TEST-2024:0001", cves=["CVE-2024-0001"], title="hello security update",
                    packages=[("hello", 0, "1.0", "1", "x86_64")])
RECORDS = {"primary", "filelists", "other", "updateinfo", "modules", "group", "group_gz"}
HOME_RPMDB = Path.home() / ".rpmdb"




@pytest.fixture(scope="module")
def home_rpmdb_existed() -> bool:
    return HOME_RPMDB.exists()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, archive_key: SigningKey, other_key: SigningKey,
         home_rpmdb_existed: bool) -> RpmRepo:
    r = RpmRepo(tmp_path_factory.mktemp("www") / "dev" / "el9", archive_key)
    r.add(*PKGS)
    r.add(UNSIGNED, sign=False)
    r.add(FOREIGN, sign=other_key)
    r.publish(revision="42", updateinfo=[ADVISORY], modules_yaml=sample_modules_yaml(),
              comps_xml=sample_comps_xml(["hello", "data"]), zck=True)
    return r


@pytest.fixture(scope="module")
def server(repo: RpmRepo) -> Iterator[UpstreamServer]:
    with UpstreamServer(repo.root.parent.parent) as up:
        yield up


@pytest.fixture()
def up(server: UpstreamServer) -> Iterator[UpstreamServer]:
    server.clear()
    yield server
    server.clear()


@pytest.fixture(scope="module")
def pubkeys(tmp_path_factory: pytest.TempPathFactory, archive_key: SigningKey,
            other_key: SigningKey) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("pub")
    return export_key(archive_key, d / "good.asc"), export_key(other_key, d / "other.asc")


def _baseurl(up: UpstreamServer) -> str:
    return f"{up.url}/dev/el9/"


def _out(res: subprocess.CompletedProcess[str]) -> str:
    return res.stdout + res.stderr


# ---- packages -------------------------------------------------------------------------------


def _qf(rpm: Path, fmt: str) -> str:
    return subprocess.run(["rpm", *rpm_defines(), "-qp", "--qf", fmt, str(rpm)], capture_output=True,
                          text=True, check=True, env=rpm_env()).stdout


def test_build_rpm_is_real_and_deterministic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = RpmPackage("zed", "0.1", release="2", epoch=7, payload_size=5000, requires=["hello"],
                     provides=["zedlib = 0.1"])
    monkeypatch.setenv("MIRROR_FIXTURE_RPM_CACHE", str(tmp_path / "cache1"))
    a = build_rpm(pkg, tmp_path / "a")
    monkeypatch.setenv("MIRROR_FIXTURE_RPM_CACHE", str(tmp_path / "cache2"))
    b = build_rpm(pkg, tmp_path / "b")  # built again from scratch: the same bytes
    assert a.name == "zed-0.1-2.x86_64.rpm" and a.read_bytes() == b.read_bytes()
    monkeypatch.delenv("MIRROR_FIXTURE_RPM_CACHE")
    assert _qf(a, "%{NAME}|%{EPOCH}|%{VERSION}|%{RELEASE}|%{ARCH}|%{SIZE}|%{SIGPGP:pgpsig}") == (
        "zed|7|0.1|2|x86_64|5000|(none)")
    requires = _qf(a, "[%{REQUIRENAME}\n]").split()  # no automatic dependencies
    assert [r for r in requires if not r.startswith("rpmlib(")] == ["hello"]
    assert "zedlib" in _qf(a, "[%{PROVIDENAME}\n]").split()
    assert _qf(a, "[%{FILENAMES} %{FILEUSERNAME}\n]").splitlines() == [
        "/usr/share/zed root", "/usr/share/zed/payload.bin root"]
    noarch = build_rpm(RpmPackage("zdata", "1", arch="noarch"), tmp_path)
    assert noarch.name == "zdata-1-1.noarch.rpm" and _qf(noarch, "%{ARCH}") == "noarch"


def test_packages_are_signed_as_asked(repo: RpmRepo, archive_key: SigningKey,
                                      other_key: SigningKey) -> None:
    assert repo.url_path_of("libfoo") == "Packages/l/libfoo-2.0-1.x86_64.rpm"
    assert signature_key_id(repo.rpm_path("hello")) == archive_key.fingerprint[-16:].lower()
    assert signature_key_id(repo.rpm_path("data")) == archive_key.fingerprint[-16:].lower()
    assert signature_key_id(repo.rpm_path("foreign")) == other_key.fingerprint[-16:].lower()
    assert signature_key_id(repo.rpm_path("unsigned")) is None
    # ed25519 keys: an EdDSA header signature (kept in the DSAHEADER tag), sha256 digest.
    assert _qf(repo.rpm_path("hello"), "%{DSAHEADER:pgpsig}").startswith("EdDSA/SHA256, ")


def test_rpmkeys_checksig(repo: RpmRepo, pubkeys: tuple[Path, Path], tmp_path: Path) -> None:
    good, other = pubkeys
    signed = [repo.rpm_path(p.name) for p in PKGS]
    res = checksig(signed, [good], tmp_path / "k1")
    assert res.returncode == 0, describe(res)
    assert res.stdout.count("Signature, key ID") == 3 and "NOKEY" not in res.stdout
    res = checksig([repo.rpm_path("unsigned")], [good], tmp_path / "k2")
    assert res.returncode != 0 and "signature: NOTFOUND" in res.stdout, describe(res)
    res = checksig([repo.rpm_path("foreign")], [good], tmp_path / "k3")
    assert res.returncode != 0 and "NOKEY" in res.stdout, describe(res)
    assert checksig([repo.rpm_path("foreign")], [other], tmp_path / "k4").returncode == 0


# ---- repodata -------------------------------------------------------------------------------


def test_repomd_lists_every_record_with_sha256(repo: RpmRepo, pubkeys: tuple[Path, Path],
                                               tmp_path: Path) -> None:
    text = repo.repomd_path.read_text()
    assert "<revision>42</revision>" in text
    recs = repo.records()
    assert RECORDS | {"primary_zck", "filelists_zck", "other_zck", "updateinfo_zck"} == set(recs)
    for r in recs.values():
        path = repo.root / r.href
        data = path.read_bytes()
        assert r.href.startswith("repodata/") and path.name.startswith(r.checksum + "-")
        assert r.checksum_type == "sha256" and hashlib.sha256(data).hexdigest() == r.checksum
        assert len(data) == r.size
        if r.open_checksum is not None:
            raw = repo.read_record(r.type)
            assert hashlib.sha256(raw).hexdigest() == r.open_checksum and len(raw) == r.open_size
    assert repo.read_record("primary_zck") == repo.read_record("primary")
    assert '<header-checksum type="sha256">' in text and "<header-size>" in text
    assert gzip.decompress((repo.root / recs["group_gz"].href).read_bytes()) == repo.read_record("group")
    # repomd.xml.asc: armored detached signature by the archive key.
    assert repo.repomd_asc_path.read_text().startswith("-----BEGIN PGP SIGNATURE-----")
    kr = tmp_path / "kr.gpg"
    subprocess.run(["gpg", "--batch", "--dearmor", "-o", str(kr), str(pubkeys[0])], check=True)
    res = subprocess.run(["gpgv", "--keyring", str(kr), str(repo.repomd_asc_path),
                          str(repo.repomd_path)], capture_output=True)
    assert res.returncode == 0, res.stderr


def test_createrepo_parser_reads_primary_and_updateinfo(repo: RpmRepo) -> None:
    pkgs: list[cr.Package] = []
    warnings: list[str] = []

    def warningcb(kind: int, msg: str) -> None:
        warnings.append(msg)

    cr.xml_parse_primary(str(repo.primary_path()), pkgcb=pkgs.append, warningcb=warningcb,
                         do_files=False)
    assert not warnings
    got = {p.name: p for p in pkgs}
    assert set(got) == {"hello", "libfoo", "data", "unsigned", "foreign"}
    assert (got["libfoo"].epoch, got["libfoo"].version, got["libfoo"].arch) == ("3", "2.0", "x86_64")
    assert got["data"].arch == "noarch"
    assert ("hello", "GE", "0", "1.0", None, False) in got["libfoo"].requires
    for p in pkgs:
        data = (repo.root / p.location_href).read_bytes()
        assert p.checksum_type == "sha256" and p.pkgId == hashlib.sha256(data).hexdigest()
        assert p.size_package == len(data) and p.location_base is None
    ui = cr.UpdateInfo(str(repo.record_path("updateinfo")))
    (upd,) = ui.updates
    assert (upd.id, upd.type, upd.severity) == ("TEST-2024:0001", "security", "Important")
    assert [(r.type, r.id) for r in upd.references] == [("cve", "CVE-2024-0001")]
    assert [p.name for c in upd.collections for p in c.packages] == ["hello"]
    assert b"document: modulemd" in repo.read_record("modules")


def test_publish_options_md5_remove_and_edit(tmp_path: Path, archive_key: SigningKey) -> None:
    r = RpmRepo(tmp_path / "r", archive_key)
    r.add(RpmPackage("a", "1"), RpmPackage("b", "1"), sign=False)
    r.publish(checksum="md5", compression="xz", timestamp=1_700_000_000, sign_repomd=False)
    recs = r.records()
    assert set(recs) == {"primary", "filelists", "other"} and not r.repomd_asc_path.exists()
    for rec in recs.values():
        data = (r.root / rec.href).read_bytes()
        assert rec.checksum_type == "md5" and rec.checksum == hashlib.md5(data).hexdigest()
        assert rec.href.endswith(".xml.xz")
    assert '<checksum type="md5" pkgid="YES">' in r.read_record("primary").decode()
    assert "<timestamp>1700000000</timestamp>" in r.repomd_path.read_text()
    old_primary = r.primary_path()
    r.remove("b")
    assert not (r.root / "Packages/b/b-1-1.x86_64.rpm").exists()
    r.publish(checksum="sha512")
    assert not old_primary.exists()  # previous repodata is gone
    assert r.records()["primary"].checksum_type == "sha512"
    assert "<name>b</name>" not in r.read_record("primary").decode()
    # edit_metadata keeps repomd consistent and signed.
    r.edit_metadata("primary", lambda x: x.replace('href="Packages/a/', 'href="../../'))
    rec = r.records()["primary"]
    assert rec.checksum_type == "sha512"
    assert hashlib.sha512((r.root / rec.href).read_bytes()).hexdigest() == rec.checksum
    assert 'href="../../a-1-1.x86_64.rpm"' in r.read_record("primary").decode()
    assert r.repomd_asc_path.exists()


# ---- dnf oracle -----------------------------------------------------------------------------


def test_dnf_makecache_and_download_with_right_key(up: UpstreamServer, repo: RpmRepo,
                                                   pubkeys: tuple[Path, Path], tmp_path: Path,
                                                   home_rpmdb_existed: bool) -> None:
    dnf = DnfClient(tmp_path / "dnf")
    dnf.configure("el9", _baseurl(up), pubkeys[0])
    res = dnf.makecache()
    assert res.returncode == 0, describe(res)
    assert up.count("dev/el9/repodata/repomd.xml.asc") >= 1
    assert up.count("dev/el9/repodata/*-primary.xml.gz") == 1
    assert up.count("dev/el9/repodata/*_zck*") == 0  # Debian's librepo has no zchunk

    res = dnf.download("libfoo", "data")  # pulls in hello
    assert res.returncode == 0, describe(res)
    got = {p.name: p for p in dnf.downloaded()}
    assert set(got) == {"hello-1.0-1.x86_64.rpm", "libfoo-2.0-1.x86_64.rpm", "data-3-1.noarch.rpm"}
    for name in ("hello", "libfoo", "data"):
        path = repo.rpm_path(name)
        assert got[path.name].read_bytes() == path.read_bytes()

    # dnf read updateinfo (with its CVE), modules.yaml and comps.
    assert dnf.run("repoquery", "--cve=CVE-2024-0001").stdout.split() == ["hello-0:1.0-1.x86_64"]
    assert "testmod" in dnf.run("module", "list").stdout
    assert "Test tools" in dnf.run("group", "list", "--hidden").stdout
    # Isolation: the package key went into the installroot's rpmdb, nothing into the host's.
    keys = subprocess.run(["rpm", "--dbpath", str(dnf.installroot / "root" / ".rpmdb"), "-qa",
                           "gpg-pubkey"], capture_output=True, text=True, env=rpm_env()).stdout
    assert keys.strip().startswith("gpg-pubkey-")
    assert HOME_RPMDB.exists() == home_rpmdb_existed
    assert "/etc/dnf/dnf.conf" not in dnf.log()


def test_dnf_fails_with_wrong_key(up: UpstreamServer, pubkeys: tuple[Path, Path],
                                  tmp_path: Path) -> None:
    dnf = DnfClient(tmp_path / "dnf")
    dnf.configure("el9", _baseurl(up), pubkeys[1])
    res = dnf.makecache()
    assert res.returncode != 0, describe(res)
    assert "repomd.xml GPG signature verification error: Bad GPG signature" in _out(res)
    assert up.count("dev/el9/repodata/*-primary.xml.gz") == 0
    res = dnf.download("hello")
    assert res.returncode != 0 and not dnf.downloaded(), describe(res)


def test_dnf_rejects_unsigned_and_foreign_packages(up: UpstreamServer, pubkeys: tuple[Path, Path],
                                                   tmp_path: Path) -> None:
    dnf = DnfClient(tmp_path / "dnf")
    dnf.configure("el9", _baseurl(up), pubkeys[0])
    res = dnf.download("unsigned")
    assert res.returncode != 0, describe(res)
    assert "Package unsigned-1.0-1.x86_64.rpm is not signed" in _out(res)
    assert "GPG check FAILED" in _out(res)
    res = dnf.download("foreign")
    assert res.returncode != 0 and "GPG check FAILED" in _out(res), describe(res)
    assert "Public key for foreign-1.0-1.x86_64.rpm is not installed" in _out(res)
    # Downloaded first, checked afterwards (see the dnf_client module doc).
    assert {p.name for p in dnf.downloaded()} == {"unsigned-1.0-1.x86_64.rpm",
                                                  "foreign-1.0-1.x86_64.rpm"}


def test_dnf_rejects_repomd_tampered_after_signing(tmp_path: Path, archive_key: SigningKey,
                                                   pubkeys: tuple[Path, Path]) -> None:
    r = RpmRepo(tmp_path / "www" / "el9", archive_key)
    r.add(PKGS[0])
    r.publish(revision="1")
    r.edit_repomd(lambda t: t.replace("<revision>1</revision>", "<revision>2</revision>"),
                  resign=False)
    with UpstreamServer(tmp_path / "www") as up:
        dnf = DnfClient(tmp_path / "dnf")
        dnf.configure("el9", f"{up.url}/el9/", pubkeys[0])
        res = dnf.makecache()
        assert res.returncode != 0 and "Bad GPG signature" in _out(res), describe(res)
        r.resign()  # the same edit, signed, is fine
        res = dnf.makecache()
        assert res.returncode == 0, describe(res)
        # primary no longer matching its repomd checksum: dnf refuses it.
        r.edit_metadata("primary", lambda x: x.replace("test package", "evil package"),
                        update_repomd=False)
        shutil.rmtree(dnf.cachedir)
        res = dnf.makecache()
        assert res.returncode != 0 and "primary.xml.gz - Cannot download" in _out(res), describe(res)
        assert "Downloading successful, but checksum doesn't match" in dnf.log()  # only in the log
