"""The test fixtures themselves: a real signed APT repo, the hostile upstream server and the
isolated apt-get oracle (run against the upstream server directly)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import lzma
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from fixtures.apt_client import AptClient, describe, ok, problems
from fixtures.apt_repo import AptRepo, DebPackage, build_deb, read_control
from fixtures.keys import SigningKey, make_key
from fixtures.upstream import Fault, UpstreamServer

PKGS = [
    DebPackage("hello", "1.0", payload_size=2048),
    DebPackage("libfoo", "1:2.0-1", depends="hello (>= 1.0)", description="Foo library\nLong."),
    DebPackage("data", "3", arch="all", payload_size=10_000),
]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[SigningKey, SigningKey]:
    d = tmp_path_factory.mktemp("keys")
    return make_key(d / "good"), make_key(d / "other", "Other Archive <other@example.org>")


@pytest.fixture(scope="module")
def www(tmp_path_factory: pytest.TempPathFactory, keys: tuple[SigningKey, SigningKey]) -> Path:
    www = tmp_path_factory.mktemp("www")
    repo = AptRepo(www / "dev" / "repo", keys[0])
    repo.add(*PKGS)
    repo.publish()
    return www


@pytest.fixture(scope="module")
def repo(www: Path, keys: tuple[SigningKey, SigningKey]) -> AptRepo:
    r = AptRepo(www / "dev" / "repo", keys[0])
    r.add(*PKGS)  # same bytes (deterministic build), same indices
    return r


@pytest.fixture(scope="module")
def server(www: Path) -> Iterator[UpstreamServer]:
    with UpstreamServer(www) as up:
        yield up


@pytest.fixture()
def up(server: UpstreamServer) -> Iterator[UpstreamServer]:
    server.clear()
    yield server
    server.clear()


@pytest.fixture(scope="module")
def pubkeys(tmp_path_factory: pytest.TempPathFactory,
            keys: tuple[SigningKey, SigningKey]) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("pub")
    return keys[0].write_public(d / "good.asc"), keys[1].write_public(d / "other.asc")


def _source(up: UpstreamServer) -> str:
    return f"{up.url}/dev/repo stable main"


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


# ---- repository builder -----------------------------------------------------------------------


def test_build_deb_is_real_and_deterministic(tmp_path: Path) -> None:
    pkg = DebPackage("zed", "0.1-2", payload_size=5000, depends="libc6")
    a = build_deb(pkg, tmp_path / "a")
    b = build_deb(pkg, tmp_path / "b")
    assert a.name == "zed_0.1-2_amd64.deb"
    assert a.read_bytes() == b.read_bytes()
    fields = subprocess.run(["dpkg-deb", "-f", str(a)], capture_output=True, text=True,
                            check=True).stdout
    assert "Package: zed\n" in fields and "Depends: libc6\n" in fields
    assert read_control(a) == fields  # the in-process reader agrees with dpkg-deb -f
    contents = subprocess.run(["dpkg-deb", "-c", str(a)], capture_output=True, text=True,
                              check=True).stdout
    assert "root/root" in contents and "./usr/share/zed/payload.bin" in contents


def test_release_lists_what_is_on_disk(repo: AptRepo) -> None:
    text = repo.release_path.read_text()
    fields = repo.release_fields()
    assert fields["Suite"] == "stable" and fields["Acquire-By-Hash"] == "yes"
    assert "Valid-Until" not in fields
    sha = text.split("SHA256:\n", 1)[1]
    rows = [line.split() for line in sha.splitlines() if line.startswith(" ")]
    names = {r[2] for r in rows}
    assert {"main/binary-amd64/Packages", "main/binary-amd64/Packages.xz",
            "main/binary-amd64/Packages.gz", "main/i18n/Translation-en.xz"} <= names
    for hexd, size, rel in rows:
        p = repo.dists_path / rel
        assert hashlib.sha256(p.read_bytes()).hexdigest() == hexd
        assert p.stat().st_size == int(size)
        if rel.endswith((".xz", ".gz")):
            assert (p.parent / "by-hash" / "SHA256" / hexd).read_bytes() == p.read_bytes()
    # Debian layout: ' <hash> <size right-aligned in 16> <path>'
    line = next(x for x in sha.splitlines() if x.endswith("main/binary-amd64/Packages"))
    assert line[0] == " " and len(line.split(" ", 2)[2].split("main/")[0]) == 17
    plain = repo.packages_path().read_bytes()
    assert lzma.decompress(repo.packages_path(ext="xz").read_bytes()) == plain
    assert gzip.decompress(repo.packages_path(ext=".gz").read_bytes()) == plain


def test_packages_entries_match_debs(repo: AptRepo) -> None:
    text = repo.packages_path().read_text()
    assert "Package: data\n" in text  # Architecture: all lands in binary-amd64
    deb = repo.deb_path("libfoo")
    assert repo.url_path_of("libfoo") == "pool/main/libf/libfoo/libfoo_2.0-1_amd64.deb"
    stanza = next(s for s in text.split("\n\n") if s.startswith("Package: libfoo\n"))
    assert f"Size: {deb.stat().st_size}\n" in stanza
    assert f"SHA256: {hashlib.sha256(deb.read_bytes()).hexdigest()}" in stanza
    assert f"MD5sum: {hashlib.md5(deb.read_bytes()).hexdigest()}" in stanza
    assert "Depends: hello (>= 1.0)\n" in stanza and "Version: 1:2.0-1\n" in stanza


def test_signatures_verify_with_gpgv(repo: AptRepo, pubkeys: tuple[Path, Path],
                                     tmp_path: Path) -> None:
    kr = tmp_path / "kr.gpg"
    subprocess.run(["gpg", "--batch", "--dearmor", "-o", str(kr), str(pubkeys[0])], check=True)
    for args in ([str(repo.inrelease_path)],
                 [str(repo.release_gpg_path), str(repo.release_path)]):
        res = subprocess.run(["gpgv", "--keyring", str(kr), *args], capture_output=True)
        assert res.returncode == 0, res.stderr


def test_publish_options(tmp_path: Path, keys: tuple[SigningKey, SigningKey]) -> None:
    from datetime import UTC, datetime, timedelta

    r = AptRepo(tmp_path / "r", keys[0], suite="testing", codename="trixie",
                components=("main", "contrib"), architectures=("amd64", "arm64"))
    r.add(DebPackage("a", "1"), DebPackage("b", "1", arch="arm64"))
    r.add(DebPackage("c", "1"), component="contrib")
    r.override("a", {"Size": None, "X-Test": "yes"})
    date = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    r.publish(date=date, valid_until=timedelta(days=7), by_hash=False, compressions=("xz",),
              keep_plain_on_disk=False, hashes=("SHA256", "SHA512"), inrelease=False,
              translations={}, extra_release_fields={"Origin": "Other", "Signed-By": "ABC"})
    f = r.release_fields()
    assert f["Date"] == "Tue, 02 Jan 2024 03:04:05 UTC"
    assert f["Valid-Until"] == "Tue, 09 Jan 2024 03:04:05 UTC"
    assert f["Origin"] == "Other" and f["Signed-By"] == "ABC" and f["Codename"] == "trixie"
    assert "Acquire-By-Hash" not in f and "MD5Sum" not in f and "SHA512" in f
    assert not r.inrelease_path.exists() and r.release_gpg_path.exists()
    assert not r.packages_path("main", "amd64").exists()  # listed, but not on disk
    assert "main/binary-amd64/Packages\n" in r.release_path.read_text()
    assert not (r.dists_path / "main" / "binary-amd64" / "by-hash").exists()
    amd = lzma.decompress(r.packages_path("main", "amd64", "xz").read_bytes()).decode()
    assert "Package: a\n" in amd and "\nSize:" not in amd and "X-Test: yes" in amd
    assert "Package: b" in lzma.decompress(r.packages_path("main", "arm64", "xz").read_bytes()
                                           ).decode()
    assert "Package: c" in lzma.decompress(r.packages_path("contrib", "amd64", "xz").read_bytes()
                                           ).decode()
    r.remove("a")
    assert not (r.root / "pool/main/a/a/a_1_amd64.deb").exists()


# ---- upstream server --------------------------------------------------------------------------


def test_serves_files_head_range_404(up: UpstreamServer, repo: AptRepo) -> None:
    rel = "dev/repo/" + repo.url_path_of("data")
    body = (up.root / rel).read_bytes()
    status, got, _ = _get(f"{up.url}/{rel}")
    assert (status, got) == (200, body)
    req = urllib.request.Request(f"{up.url}/{rel}", method="HEAD")
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.headers["Content-Length"] == str(len(body)) and r.read() == b""
    status, got, headers = _get(f"{up.url}/{rel}", {"Range": "bytes=10-19"})
    assert (status, got, headers["Content-Range"]) == (206, body[10:20], f"bytes 10-19/{len(body)}")
    assert _get(f"{up.url}/dev/repo/nope")[0] == 404
    assert up.requests[-1] == ("GET", "dev/repo/nope", 404)


def test_no_traversal_or_symlink_escape(up: UpstreamServer, www: Path) -> None:
    link = www / "escape"
    if not link.exists():
        link.symlink_to("/etc")
    for path in (b"/../../etc/passwd", b"/dev/%2e%2e/%2e%2e/etc/passwd", b"/escape/passwd",
                 b"/dev/..%2f..%2fetc/passwd"):
        resp = _raw(up.port, b"GET " + path + b" HTTP/1.0\r\n\r\n")
        assert resp.startswith(b"HTTP/1.0 404"), (path, resp[:100])


def test_fault_statuses_then_normal(up: UpstreamServer) -> None:
    path = "dev/repo/dists/stable/InRelease"
    up.faults[path] = Fault(statuses=[500, 200], headers={"Retry-After": "5"})
    s1, _, h1 = _get(f"{up.url}/{path}")
    s2, b2, _ = _get(f"{up.url}/{path}")
    s3, _, _ = _get(f"{up.url}/{path}")
    assert (s1, s2, s3) == (500, 200, 200) and h1["Retry-After"] == "5"
    assert b2.startswith(b"-----BEGIN PGP SIGNED MESSAGE-----")
    assert up.count(path) == 3 and [st for _, _, st in up.requests] == [500, 200, 200]


def test_fault_glob_body_append_redirect_times(up: UpstreamServer) -> None:
    up.faults["dev/repo/pool/*"] = Fault(body=b"<html>captive portal</html>", times=1)
    status, body, _ = _get(f"{up.url}/dev/repo/pool/main/h/hello/hello_1.0_amd64.deb")
    assert (status, body) == (200, b"<html>captive portal</html>")
    assert _get(f"{up.url}/dev/repo/pool/main/h/hello/hello_1.0_amd64.deb")[1].startswith(b"!<arch>")
    assert up.count("dev/repo/pool/*") == 2
    up.faults["a"] = Fault(body=b"abc", append=b"JUNK")
    assert _get(f"{up.url}/a")[1] == b"abcJUNK"
    up.faults["r"] = Fault(redirect_to="file:///etc/passwd")
    assert _raw(up.port, b"GET /r HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 302")


def test_fault_truncate_gives_payload_error(up: UpstreamServer, repo: AptRepo) -> None:
    rel = "dev/repo/" + repo.url_path_of("data")
    up.faults[rel] = Fault(truncate_after=100)

    async def fetch() -> None:
        async with aiohttp.ClientSession() as s, s.get(f"{up.url}/{rel}") as r:
            assert r.content_length == (up.root / rel).stat().st_size
            await r.read()

    with pytest.raises(aiohttp.ClientPayloadError):
        asyncio.run(fetch())


def test_fault_gzip_encode(up: UpstreamServer, repo: AptRepo) -> None:
    rel = "dev/repo/dists/stable/main/binary-amd64/Packages.gz"
    up.faults[rel] = Fault(gzip_encode=True)

    async def fetch() -> tuple[str | None, bytes]:
        async with aiohttp.ClientSession(auto_decompress=False) as s, \
                s.get(f"{up.url}/{rel}") as r:
            return r.headers.get("Content-Encoding"), await r.read()

    enc, body = asyncio.run(fetch())
    assert enc == "gzip"
    assert gzip.decompress(body) == (up.root / rel).read_bytes()


def test_fault_endless_and_rate(up: UpstreamServer) -> None:
    up.faults["endless"] = Fault(endless=True, body=b"x")
    up.faults["slow"] = Fault(body=b"y" * 400, rate=2000)

    async def fetch() -> int:
        n = 0
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{up.url}/endless") as r:
                assert r.content_length is None
                async for chunk in r.content.iter_chunked(65536):
                    n += len(chunk)
                    if n > 1_000_000:
                        break
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            async with s.get(f"{up.url}/slow") as r:
                assert len(await r.read()) == 400
            assert loop.time() - t0 >= 0.15
        return n

    assert asyncio.run(fetch()) > 1_000_000


# ---- apt-get oracle ---------------------------------------------------------------------------


def test_apt_update_and_download_with_right_key(up: UpstreamServer, repo: AptRepo,
                                                pubkeys: tuple[Path, Path],
                                                tmp_path: Path) -> None:
    apt = AptClient(tmp_path / "apt")
    apt.configure(_source(up), pubkeys[0])
    res = apt.update()
    assert ok(res), describe(res)
    assert up.count("dev/repo/dists/stable/InRelease") == 1
    assert up.count("dev/repo/dists/stable/main/binary-amd64/by-hash/SHA256/*") == 1
    assert apt.versions("libfoo") == ["1:2.0-1"]

    res = apt.download("hello")
    assert ok(res), describe(res)
    (deb,) = apt.downloaded()
    assert deb.read_bytes() == repo.deb_path("hello").read_bytes()

    res = apt.install_download_only("libfoo")  # pulls in its dependency
    assert ok(res), describe(res)
    assert {p.name.split("_")[0] for p in apt.archives.glob("*.deb")} == {"hello", "libfoo"}
    # Isolation: nothing read from or written to the host's apt state.
    conf = apt.run("apt-config", "dump").stdout
    assert "/var/lib/apt" not in conf and "NeverAutoRemove" not in conf


def test_apt_update_fails_with_wrong_key(up: UpstreamServer, pubkeys: tuple[Path, Path],
                                         tmp_path: Path) -> None:
    apt = AptClient(tmp_path / "apt")
    apt.configure(_source(up), pubkeys[1])
    res = apt.update(error_on_any=False)
    # Fresh state: hard error even without --error-on=any.
    assert res.returncode == 100 and not ok(res)
    assert any("NO_PUBKEY" in line for line in problems(res)), describe(res)
    assert any(line.startswith("E:") and "is not signed" in line for line in problems(res))


def test_apt_keeps_old_lists_and_exits_0_unless_error_on_any(
        up: UpstreamServer, pubkeys: tuple[Path, Path], tmp_path: Path) -> None:
    apt = AptClient(tmp_path / "apt")
    apt.configure(_source(up), pubkeys[0])
    assert ok(apt.update())
    apt.configure(_source(up), pubkeys[1])
    lenient = apt.update(error_on_any=False)
    assert lenient.returncode == 0 and not ok(lenient)  # only W: lines, old lists kept
    assert apt.versions("hello") == ["1.0"]
    strict = apt.update()
    assert strict.returncode == 100


def test_apt_rejects_tampered_release(tmp_path: Path, keys: tuple[SigningKey, SigningKey],
                                      pubkeys: tuple[Path, Path]) -> None:
    r = AptRepo(tmp_path / "www" / "repo", keys[0])
    r.add(DebPackage("hello", "1.0"))
    r.publish()
    text = r.inrelease_path.read_text().replace("Origin: Test", "Origin: Evil")
    r.inrelease_path.write_text(text)
    r.release_gpg_path.unlink()
    with UpstreamServer(tmp_path / "www") as up:
        apt = AptClient(tmp_path / "apt")
        apt.configure(f"{up.url}/repo stable main", pubkeys[0])
        res = apt.update()
        assert res.returncode != 0 and not ok(res)
        # Re-signing the edited Release makes it acceptable again.
        r.edit_release(lambda t: t.replace("Origin: Test", "Origin: Evil"))
        res = apt.update()
        assert ok(res), describe(res)
        # An index served with the wrong bytes is a hard failure.
        up.faults["repo/dists/stable/main/binary-amd64/by-hash/SHA256/*"] = Fault(
            body=lzma.compress(b"Package: evil\n"))
        apt.clean_lists()
        res = apt.update()
        assert res.returncode != 0 and any("Hash Sum mismatch" in p or "File has unexpected size"
                                           in p for p in problems(res)), describe(res)
