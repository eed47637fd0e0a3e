"""Package filters (`include`, `exclude`, `keep_newest`): applied to the verified indices before any
package is fetched; the filtered snapshot carries metadata the mirror regenerates and signs with
its own key, which real apt-get and dnf accept with only that key and refuse with the upstream's."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fixtures.apt_client import AptClient, describe, ok
from fixtures.apt_repo import AptRepo, DebPackage
from fixtures.keys import SigningKey, make_key
from fixtures.upstream import UpstreamServer
from mirror.config import load
from mirror.errors import ConfigError
from mirror.filters import PackageFilter
from mirror.formats.deb import packages_paragraphs, parse_packages, parse_release
from mirror.sync import plan_key
from tests.helpers import Mirror, http, serve_both, write_config


@pytest.fixture(scope="module")
def mirror_key(keys_dir: Path) -> SigningKey:
    return make_key(keys_dir / "filter-mirror", "Filter Mirror <mirror@example.org>")


def signing_toml(key: SigningKey) -> str:
    return f'[signing]\ngnupghome = "{key.home}"\nkey = "{key.fingerprint}"\n'


def gpgv(keyring: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["gpgv", "--keyring", str(keyring), *map(str, files)], capture_output=True,
                          text=True, check=False)


# -- the filter itself ---------------------------------------------------------------------------


def test_filter_globs_regex_and_keep_newest() -> None:
    items = [("openssl", "amd64", "3.0-1"), ("openssl", "amd64", "3.0-2"), ("openssl", "amd64", "3.0-10"),
             ("openssl-doc", "all", "1"), ("kernel", "amd64", "6.1"), ("kernel-core", "amd64", "6.1"),
             ("kernel-tools", "amd64", "6.1"), ("telnet", "amd64", "1"), ("telnetd", "amd64", "1")]
    f = PackageFilter("deb", include=("openssl*", "/^kernel(-core)?$/", "telnet*"), exclude=("telnetd",))
    assert [i[0] for i in f.select(items, lambda i: i)] == [
        "openssl", "openssl", "openssl", "openssl-doc", "kernel", "kernel-core", "telnet"]
    newest = PackageFilter("deb", include=("openssl",), keep_newest=2)
    assert [i[2] for i in newest.select(items, lambda i: i)] == ["3.0-2", "3.0-10"]
    assert not PackageFilter("rpm").active


def test_paragraphs_align_with_the_parser() -> None:
    data = (b"\n\nPackage: a\nVersion: 1\nArchitecture: amd64\nFilename: pool/a.deb\nSize: 1\n"
            b"Description: x\n more\n .\n\n\n\nPackage: b\nVersion: 2\nArchitecture: all\n"
            b"Filename: pool/b.deb\nSize: 2\n\n")
    pairs = packages_paragraphs(data, what="Packages")
    assert [p.name for p, _ in pairs] == ["a", "b"]
    assert pairs[0][1] == (b"Package: a\nVersion: 1\nArchitecture: amd64\nFilename: pool/a.deb\nSize: 1\n"
                           b"Description: x\n more\n .")
    assert parse_packages(b"\n\n".join(t for _, t in pairs) + b"\n", what="x") == [p for p, _ in pairs]


# -- configuration -------------------------------------------------------------------------------


def _config(tmp_path: Path, archive_key: SigningKey, repo_extra: str, top: str = "") -> Path:
    keyring = archive_key.write_public(tmp_path / "archive.asc")
    path = tmp_path / "mirror.toml"
    path.write_text(f'{top}\n[storage]\nroot = "var"\n[[repos]]\nname = "r"\ntype = "deb"\n'
                    f'url = "http://example.org/"\nsuites = ["stable"]\nkeyring = "{keyring}"\n'
                    f'{repo_extra}\n')
    return path


@pytest.mark.parametrize(("extra", "message"), [
    ('include = ["a*"]', "repos[0].include: package filters need the mirror's own key"),
    ('exclude = ["a*"]', "repos[0].exclude: package filters need the mirror's own key"),
    ("keep_newest = 2", "repos[0].keep_newest: package filters need the mirror's own key"),
])
def test_filters_without_signing_key_are_refused(tmp_path: Path, archive_key: SigningKey, extra: str,
                                                 message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(_config(tmp_path, archive_key, extra))


@pytest.mark.parametrize(("extra", "message"), [
    ('include = ["/[unclosed/"]', "repos[0].include: '/[unclosed/' is not a valid regular expression"),
    ('exclude = [""]', "repos[0].exclude: patterns must not be empty"),
    ("keep_newest = 0", "repos[0].keep_newest: must be at least 1"),
    ('include = ["a"]\nsources = true', "repos[0].sources: package filters do not apply to Sources"),
])
def test_bad_filters_are_refused(tmp_path: Path, archive_key: SigningKey, mirror_key: SigningKey,
                                 extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(_config(tmp_path, archive_key, extra, signing_toml(mirror_key)))


def test_unusable_signing_key_is_refused(tmp_path: Path, archive_key: SigningKey) -> None:
    (tmp_path / "empty-home").mkdir(mode=0o700)
    top = f'[signing]\ngnupghome = "{tmp_path / "empty-home"}"\nkey = "nobody@example.org"\n'
    with pytest.raises(ConfigError, match=r"signing\.key"):
        load(_config(tmp_path, archive_key, 'include = ["a*"]', top))


def test_plan_key_changes_with_filters_only_when_filtered(tmp_path: Path, archive_key: SigningKey,
                                                          mirror_key: SigningKey) -> None:
    plain = load(_config(tmp_path, archive_key, "", signing_toml(mirror_key))).repo("r")
    filtered = load(_config(tmp_path, archive_key, 'exclude = ["x"]', signing_toml(mirror_key))).repo("r")
    other = load(_config(tmp_path, archive_key, 'exclude = ["y"]', signing_toml(mirror_key))).repo("r")
    assert len({plan_key(plain), plan_key(filtered), plan_key(other)}) == 3


# -- APT end to end ------------------------------------------------------------------------------


def _snapshots(mirror: Mirror, repo: str) -> list[dict[str, object]]:
    import json

    out = subprocess.run([sys.executable, "-m", "mirror.cli", "-c", str(mirror.config), "snapshots", repo,
                          "--json"], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    result: list[dict[str, object]] = json.loads(out.stdout)
    return result


def test_filtered_apt_snapshot(tmp_path: Path, archive_key: SigningKey, mirror_key: SigningKey) -> None:
    upstream = AptRepo(tmp_path / "upstream", archive_key, suite="stable", codename="demo")
    for pkg in (DebPackage("hello", "1.0-1"), DebPackage("hello", "1.1-1"), DebPackage("hello", "1.2-1"),
                DebPackage("banned", "1.0-1"), DebPackage("tool", "2.0-1", depends="hello")):
        upstream.add(pkg)
    upstream.publish(date=datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1))
    keyring = archive_key.write_public(tmp_path / "keys" / "archive.asc")
    with UpstreamServer(upstream.root) as server:
        mirror = write_config(tmp_path / "mirror", server.url, keyring, name="deb",
                              extra_top=signing_toml(mirror_key),
                              extra_repo='exclude = ["banned"]\nkeep_newest = 2')
        (first,) = mirror.sync("deb")
        assert first.ok and first.snapshot, first.error
        assert server.count("pool/main/b/banned/*") == 0  # never requested upstream
        assert server.count(upstream.url_path_of("hello", "1.0-1")) == 0  # not among the newest 2
        assert server.count(upstream.url_path_of("hello", "1.2-1")) == 1

        # nothing changed: no new snapshot; a filter change: a new one without an upstream change
        (same,) = mirror.sync("deb")
        assert same.ok and same.snapshot is None
        config = mirror.config.read_text().replace("keep_newest = 2", "keep_newest = 1")
        mirror.config.write_text(config)
        (changed,) = mirror.sync("deb")
        assert changed.ok and changed.snapshot and changed.snapshot != first.snapshot, changed.error
        assert server.count("pool/main/b/banned/*") == 0

    snaps = _snapshots(mirror, "deb")
    assert [s["signed_by"] for s in snaps] == ["mirror", "mirror"]
    store = mirror.store()
    try:
        manifest = store.manifest("deb", changed.snapshot)
    finally:
        store.close()
    names = sorted((e.package.name, e.package.version) for e in manifest.values() if e.package)
    assert names == [("hello", "1.2-1"), ("tool", "2.0-1")]

    with serve_both(mirror) as served:
        base = f"{served.repo_url}/snapshots/deb/{changed.snapshot}"
        files = tmp_path / "files"
        files.mkdir()
        for name in ("InRelease", "Release", "Release.gpg"):
            reply = http("GET", f"{base}/dists/stable/{name}")
            assert reply.status == 200, name
            (files / name).write_bytes(reply.body)
        mirror_pub = mirror_key.write_public(tmp_path / "mirror.gpg", armor=False)
        archive_pub = archive_key.write_public(tmp_path / "archive.gpg", armor=False)
        assert gpgv(mirror_pub, files / "InRelease").returncode == 0
        assert gpgv(mirror_pub, files / "Release.gpg", files / "Release").returncode == 0
        assert gpgv(archive_pub, files / "InRelease").returncode != 0
        release = parse_release((files / "Release").read_bytes(), what="Release")
        assert release.suite == "stable" and release.codename == "demo" and release.acquire_by_hash
        packages = http("GET", f"{base}/dists/stable/main/binary-amd64/Packages").body
        listed = release.files["main/binary-amd64/Packages"]
        import hashlib

        assert listed.sha256 == hashlib.sha256(packages).hexdigest() and listed.size == len(packages)
        kept = parse_packages(packages, what="Packages")
        assert sorted((p.name, p.version) for p in kept) == [("hello", "1.2-1"), ("tool", "2.0-1")]
        # Translation files as upstream, listed in the new Release and served by hash too
        translation = upstream.translation_path().read_bytes()
        entry = release.files["main/i18n/Translation-en"]
        assert entry.sha256 == hashlib.sha256(translation).hexdigest()
        assert http("GET", f"{base}/dists/stable/main/i18n/Translation-en").body == translation
        assert http("GET", f"{base}/dists/stable/main/i18n/by-hash/SHA256/{entry.sha256}").body == translation
        # each paragraph exactly as upstream wrote it
        upstream_text = upstream.packages_path().read_bytes()
        for _, text in packages_paragraphs(packages, what="Packages"):
            assert text in upstream_text

        for tier_or_snapshot in (f"snapshots/deb/{changed.snapshot}", "dev/deb"):
            url = f"{served.repo_url}/{tier_or_snapshot}"
            if tier_or_snapshot.startswith("dev"):
                _wait(f"{url}/dists/stable/InRelease")
            # apt-get with only the mirror's key: update and install work
            apt = AptClient(tmp_path / f"apt-{tier_or_snapshot.replace('/', '-')}")
            apt.configure(f"{url} stable main", mirror_key.write_public(tmp_path / "mirror.asc"))
            update = apt.update()
            assert ok(update), describe(update)
            assert apt.versions("hello") == ["1.2-1"]
            assert apt.versions("banned") == []
            install = apt.install_download_only("tool")
            assert ok(install), describe(install)
            assert sorted(p.name for p in apt.downloaded()) == [
                "hello_1.2-1_amd64.deb", "tool_2.0-1_amd64.deb"]
            # only the upstream's key: refused
            refused = AptClient(tmp_path / f"apt-up-{tier_or_snapshot.replace('/', '-')}")
            refused.configure(f"{url} stable main", keyring)
            update = refused.update()
            assert not ok(update)
            said = update.stdout + update.stderr
            assert "NO_PUBKEY" in said or "not signed" in said, said


def _wait(url: str, timeout: float = 15) -> None:
    import time

    deadline = time.monotonic() + timeout
    while http("GET", url).status != 200:
        assert time.monotonic() < deadline, url
        time.sleep(0.1)


# -- RPM end to end ------------------------------------------------------------------------------


def test_filtered_rpm_snapshot(tmp_path: Path, archive_key: SigningKey, mirror_key: SigningKey) -> None:
    import createrepo_c as cr

    from fixtures.dnf_client import DnfClient
    from fixtures.dnf_client import describe as dnf_describe
    from fixtures.rpm_repo import (
        Advisory,
        RpmPackage,
        RpmRepo,
        export_key,
        sample_comps_xml,
        sample_modules_yaml,
    )
    from tests.test_sync_rpm import write_rpm_config

    upstream = RpmRepo(tmp_path / "upstream", archive_key)
    upstream.add(RpmPackage("hello", "1.0"), RpmPackage("hello", "1.1"), RpmPackage("telnet", "1.0"),
                 RpmPackage("tool", "2.0", requires=["hello >= 1.1"]))
    old = Advisory("TEST-2026:0001", packages=[("hello", 0, "1.0", "1", "x86_64")])
    new = Advisory("TEST-2026:0002", cves=["CVE-2026-0002"], packages=[("hello", 0, "1.1", "1", "x86_64")])
    banned = Advisory("TEST-2026:0003", packages=[("telnet", 0, "1.0", "1", "x86_64")])
    upstream.publish(revision="1001", timestamp=1_700_001_001, updateinfo=[old, new, banned],
                     modules_yaml=sample_modules_yaml(), comps_xml=sample_comps_xml(["hello", "tool"]))
    keyring = archive_key.write_public(tmp_path / "keys" / "archive.asc")
    with UpstreamServer(upstream.root) as server:
        mirror = write_rpm_config(tmp_path / "mirror", server.url, keyring, name="rpm",
                                  extra_repo='exclude = ["/^telnet/"]\nkeep_newest = 1')
        mirror.config.write_text(signing_toml(mirror_key) + mirror.config.read_text())
        (result,) = mirror.sync("rpm")
        assert result.ok and result.snapshot, result.error
        assert server.count(upstream.url_path_of("telnet")) == 0  # never requested upstream
        assert server.count(upstream.url_path_of("hello", "1.0")) == 0
        assert server.count(upstream.url_path_of("hello", "1.1")) == 1
        (same,) = mirror.sync("rpm")
        assert same.ok and same.snapshot is None, same.error
    assert [s["signed_by"] for s in _snapshots(mirror, "rpm")] == ["mirror"]

    mirror_pub = mirror_key.write_public(tmp_path / "mirror.gpg", armor=False)
    archive_pub = archive_key.write_public(tmp_path / "archive.gpg", armor=False)
    with serve_both(mirror) as served:
        base = f"{served.repo_url}/snapshots/rpm/{result.snapshot}"
        repodata = tmp_path / "repodata"
        repodata.mkdir()
        for name in ("repomd.xml", "repomd.xml.asc"):
            reply = http("GET", f"{base}/repodata/{name}")
            assert reply.status == 200, name
            (repodata / name).write_bytes(reply.body)
        assert gpgv(mirror_pub, repodata / "repomd.xml.asc", repodata / "repomd.xml").returncode == 0
        assert gpgv(archive_pub, repodata / "repomd.xml.asc", repodata / "repomd.xml").returncode != 0
        repomd = cr.Repomd(str(repodata / "repomd.xml"))
        records = {r.type: r for r in repomd.records}
        assert {"primary", "filelists", "other", "updateinfo", "modules", "group"} <= set(records)
        for rec in repomd.records:
            local = tmp_path / rec.location_href
            local.parent.mkdir(parents=True, exist_ok=True)
            reply = http("GET", f"{base}/{rec.location_href}")
            assert reply.status == 200, rec.location_href
            local.write_bytes(reply.body)
            import hashlib

            assert hashlib.sha256(reply.body).hexdigest() == rec.checksum and len(reply.body) == rec.size
        names: list[str] = []
        cr.xml_parse_primary(str(tmp_path / records["primary"].location_href),
                             pkgcb=lambda p: names.append(f"{p.name}-{p.version}") or True, do_files=False)
        assert sorted(names) == ["hello-1.1", "tool-2.0"]
        info = cr.UpdateInfo()
        cr.xml_parse_updateinfo(str(tmp_path / records["updateinfo"].location_href), info)
        assert [u.id for u in info.updates] == ["TEST-2026:0002"]
        assert (tmp_path / records["modules"].location_href).read_bytes() \
            == upstream.record_path("modules").read_bytes()

        url = f"{served.repo_url}/dev/rpm/"
        mirror_asc = export_key(mirror_key, tmp_path / "mirror.asc")
        archive_asc = export_key(archive_key, tmp_path / "archive-key.asc")
        # metadata trusted by the mirror's key only (package signatures were checked at sync)
        dnf = DnfClient(tmp_path / "dnf")
        dnf.configure("mirror", url, mirror_asc, gpgcheck=False)
        assert (r := dnf.makecache()).returncode == 0, dnf_describe(r)
        assert (r := dnf.download("tool")).returncode == 0, dnf_describe(r)
        assert sorted(p.name for p in dnf.downloaded()) == ["hello-1.1-1.x86_64.rpm", "tool-2.0-1.x86_64.rpm"]
        assert dnf.download("telnet").returncode != 0
        assert "testmod" in dnf.run("module", "list").stdout
        # the mirror's key for the metadata and the vendor's for the packages: full checks
        both = DnfClient(tmp_path / "dnf-both")
        keys = f"{mirror_asc.resolve().as_uri()} {archive_asc.resolve().as_uri()}"
        both.configure("mirror", url, mirror_asc, options={"gpgkey": keys})
        assert (r := both.download("hello")).returncode == 0, dnf_describe(r)
        # the upstream's key alone: the mirror-signed repomd.xml is refused
        refused = DnfClient(tmp_path / "dnf-upstream")
        refused.configure("mirror", url, archive_asc)
        assert refused.makecache().returncode != 0


X86 = "x86_64"


def test_security_only_rpm_snapshot_known_answer(tmp_path: Path, archive_key: SigningKey,
                                                 mirror_key: SigningKey) -> None:
    from fixtures.rpm_repo import Advisory, RpmPackage, RpmRepo
    from tests.test_sync_rpm import write_rpm_config

    upstream = RpmRepo(tmp_path / "upstream", archive_key)
    upstream.add(RpmPackage("hello", "1.0"), RpmPackage("hello", "1.1"), RpmPackage("hello", "1.2"),
                 RpmPackage("libfoo", "2.0"), RpmPackage("tool", "3.0"), RpmPackage("base", "1.0"))

    def on(month: int) -> datetime:
        return datetime(2026, month, 1, tzinfo=UTC)

    upstream.publish(revision="1", timestamp=1_700_000_001, updateinfo=[
        Advisory("SEC-1", "security", "Important", issued=on(1), packages=[("hello", 0, "1.1", "1", X86)]),
        Advisory("SEC-2", "security", "Important", issued=on(6), packages=[("hello", 0, "1.2", "1", X86)]),
        Advisory("BUG-1", "bugfix", "", issued=on(2), packages=[("libfoo", 0, "2.0", "1", X86)]),
        Advisory("SEC-3", "security", "Low", issued=on(2), packages=[("tool", 0, "3.0", "1", X86)]),
    ])
    keyring = archive_key.write_public(tmp_path / "keys" / "archive.asc")
    with UpstreamServer(upstream.root) as server:
        mirror = write_rpm_config(tmp_path / "mirror", server.url, keyring, name="sec",
                                  extra_repo='advisory_types = ["security"]\nkeep_newest = 1')
        mirror.config.write_text(signing_toml(mirror_key) + mirror.config.read_text())
        (first,) = mirror.sync("sec")
        assert first.ok and first.snapshot, first.error
        for name, version in (("hello", "1.0"), ("hello", "1.1"), ("libfoo", "2.0"), ("base", "1.0")):
            assert server.count(upstream.url_path_of(name, version)) == 0, name
        config = mirror.config.read_text().replace(
            'advisory_types = ["security"]\nkeep_newest = 1',
            'advisory_severities = ["important"]\nadvisory_issued_before = 2026-03-01\nunadvised = "keep"')
        mirror.config.write_text(config)
        (second,) = mirror.sync("sec")
        assert second.ok and second.snapshot and second.snapshot != first.snapshot, second.error

    store = mirror.store()
    try:
        def packages(snapshot: str) -> list[str]:
            return sorted(f"{e.package.name}-{e.package.version}"
                          for e in store.manifest("sec", snapshot).values() if e.package)

        assert packages(first.snapshot) == ["hello-1.2-1", "tool-3.0-1"]
        # hello 1.0 and base are named by no advisory (kept: unadvised = "keep"); hello 1.2 by one
        # issued too late, libfoo and tool by ones of another severity
        assert packages(second.snapshot) == ["base-1.0-1", "hello-1.0-1", "hello-1.1-1"]
    finally:
        store.close()


@pytest.mark.parametrize(("repo_type", "extra", "message"), [
    ("deb", 'advisory_types = ["security"]', "repos[0].advisory_types: advisory filters apply to rpm repos"),
    ("rpm", 'unadvised = "keep"', "repos[0].unadvised: applies only with advisory_types"),
    ("rpm", 'advisory_types = ["security"]\nunadvised = "maybe"', "repos[0].unadvised: 'maybe' must be"),
    ("rpm", 'advisory_issued_before = "soon"', "repos[0].advisory_issued_before: 'soon' is not a date"),
])
def test_bad_advisory_filters_are_refused(tmp_path: Path, archive_key: SigningKey, mirror_key: SigningKey,
                                          repo_type: str, extra: str, message: str) -> None:
    path = _config(tmp_path, archive_key, extra, signing_toml(mirror_key))
    if repo_type == "rpm":
        text = path.read_text().replace('type = "deb"', 'type = "rpm"')
        path.write_text(text.replace('suites = ["stable"]\n', ""))
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(path)
