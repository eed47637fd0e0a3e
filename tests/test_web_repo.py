"""The read-only repository server against a real socket (HOSTILE.md cases 64-67, rows B11/B12).

Requests go over raw sockets, so that nothing (no client library) normalises `..`, `//` or
percent-escapes on the way; each request uses `Connection: close` and is read to EOF.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path

import pytest

from mirror.model import EntryKind, ManifestEntry
from mirror.web.repo import (
    PathRejected,
    RepoResponder,
    content_type_for,
    split_request_path,
)
from tests.helpers import serve_in_thread

REPO_ROOT = Path(__file__).resolve().parents[1]
SNAP = "20260101T000000Z"
SNAP_OLD = "20251201T000000Z"
DEB_PATH = "pool/main/f/foo/foo_1.0-1_amd64.deb"
SECRET = b"SECRET-TARGET-BYTES root:x:0:0:root:/root:/bin/bash\n"
T_OLD = 1_700_000_000  # pool mtimes, whole seconds
T_NEW = 1_750_000_000


# --- a tiny in-test catalog over a real pool -------------------------------------------------


@dataclass
class FakeCatalog:
    root: Path
    tiers: dict[tuple[str, str], dict[str, ManifestEntry]] = field(default_factory=dict)
    snapshots: dict[tuple[str, str], dict[str, ManifestEntry]] = field(default_factory=dict)
    key: Path | None = None
    lookups: list[str] = field(default_factory=list)

    def store(self, data: bytes, mtime: int = T_NEW) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self.pool_path(sha)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (mtime, mtime))
        return sha

    def add(self, where: dict[str, ManifestEntry], path: str, data: bytes, mtime: int = T_NEW) -> str:
        sha = self.store(data, mtime)
        where[path] = ManifestEntry(path=path, sha256=sha, size=len(data), kind=EntryKind.PACKAGE)
        return sha

    def lookup_tier(self, tier: str, repo: str, path: str,
                    client: str | None = None) -> ManifestEntry | None:
        self.lookups.append(path)
        return self.tiers.get((tier, repo), {}).get(path)

    def lookup_snapshot(self, repo: str, snapshot: str, path: str) -> ManifestEntry | None:
        self.lookups.append(path)
        return self.snapshots.get((repo, snapshot), {}).get(path)

    def pool_path(self, sha256: str) -> Path:
        return self.root / "pool" / "sha256" / sha256[:2] / sha256

    def public_key_path(self) -> Path | None:
        return self.key


DEB = bytes(range(256)) * 3 + b"x" * 232  # 1000 bytes
assert len(DEB) == 1000
INRELEASE_OLD = b"-----BEGIN PGP SIGNED MESSAGE-----\nSuite: old\n"
INRELEASE_NEW = b"-----BEGIN PGP SIGNED MESSAGE-----\nSuite: new, promoted\n"
KEY = b"-----BEGIN PGP PUBLIC KEY BLOCK-----\nmirror\n-----END PGP PUBLIC KEY BLOCK-----\n"


def build_catalog(root: Path) -> FakeCatalog:
    cat = FakeCatalog(root)
    dev = cat.tiers.setdefault(("dev", "repo"), {})
    prod = cat.tiers.setdefault(("prod", "repo"), {})
    snap = cat.snapshots.setdefault(("repo", SNAP), {})
    old = cat.snapshots.setdefault(("repo", SNAP_OLD), {})
    for where in (dev, snap):
        cat.add(where, DEB_PATH, DEB)
        cat.add(where, "dists/stable/InRelease", INRELEASE_NEW, T_NEW)
    cat.add(old, "dists/stable/InRelease", INRELEASE_OLD, T_OLD)
    cat.add(prod, "dists/stable/InRelease", INRELEASE_OLD, T_OLD)
    # Entries a lax server would reach after normalising a hostile path: none may be served.
    cat.add(dev, "x.deb", SECRET)  # /dev/repo/x%00.deb with the NUL dropped
    cat.add(dev, "etc/passwd", SECRET)  # /dev/repo/../../etc/passwd resolved wrongly
    cat.add(cat.tiers.setdefault(("dev", "etc"), {}), "passwd", SECRET)  # /dev//etc/passwd collapsed
    cat.add(dev, "x", SECRET)
    cat.add(cat.tiers.setdefault(("dev", "x"), {}), "x", SECRET)
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_bytes(SECRET)
    cat.key = root / "mirror.asc"
    cat.key.write_bytes(KEY)
    return cat


# --- a real server in a background thread ----------------------------------------------------


@dataclass
class Server:
    port: int
    catalog: FakeCatalog


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    catalog = build_catalog(tmp_path)
    with serve_in_thread(RepoResponder(catalog)) as (port, _guard):
        yield Server(port, catalog)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    raw: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def raw_request(port: int, target: bytes | str, *, method: str = "GET",
                headers: dict[str, str] | None = None) -> Reply:
    if isinstance(target, str):
        target = target.encode("ascii")
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: mirror", b"Connection: close"]
    lines += [f"{k}: {v}".encode("latin-1") for k, v in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return Reply(int(status_line.split()[1]), parsed, body, raw)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- tests -----------------------------------------------------------------------------------


def test_tier_and_snapshot_paths_resolve(server: Server) -> None:
    tier = raw_request(server.port, f"/dev/repo/{DEB_PATH}")
    assert tier.status == 200
    assert tier.body == DEB
    assert tier.header("Content-Length") == "1000"
    assert tier.header("ETag") == f'"{sha(DEB)}"'
    assert tier.header("Cache-Control") == "no-cache"
    assert tier.header("X-Content-Type-Options") == "nosniff"
    assert tier.header("Accept-Ranges") == "bytes"
    assert tier.header("Last-Modified") == formatdate(T_NEW, usegmt=True)
    assert tier.header("Content-Encoding") is None

    snap = raw_request(server.port, f"/snapshots/repo/{SNAP}/{DEB_PATH}")
    assert snap.status == 200
    assert snap.body == DEB
    assert snap.header("ETag") == f'"{sha(DEB)}"'
    assert snap.header("Cache-Control") == "public, max-age=31536000, immutable"

    # Each URL resolves through its own manifest: same path, different content.
    assert raw_request(server.port, "/prod/repo/dists/stable/InRelease").body == INRELEASE_OLD
    assert raw_request(server.port, "/dev/repo/dists/stable/InRelease").body == INRELEASE_NEW
    assert raw_request(server.port, f"/snapshots/repo/{SNAP_OLD}/dists/stable/InRelease").body \
        == INRELEASE_OLD
    # A query string is ignored; percent-encoded names are decoded once (apt sends %2b, %7e, %3a).
    assert raw_request(server.port, f"/dev/repo/{DEB_PATH}?x=1").body == DEB
    encoded = DEB_PATH.replace("foo_1.0-1", "foo_1%2e0-1").replace("/", "/")
    assert raw_request(server.port, f"/dev/repo/{encoded}").body == DEB
    # The absolute form of the request target works too.
    assert raw_request(server.port, f"http://mirror/dev/repo/{DEB_PATH}").body == DEB

    key = raw_request(server.port, "/keys/mirror.asc")
    assert key.status == 200
    assert key.body == KEY
    assert key.header("Content-Type") == "application/pgp-keys"
    assert key.header("Cache-Control") == "no-cache"


def test_keep_alive_connection_serves_several_files(server: Server) -> None:
    # The file responses are prepared against a clone of the request: the connection must
    # still be reusable afterwards, whatever the outcome of each request.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for _ in range(2):
            for target, headers, status, body in (
                (f"/dev/repo/{DEB_PATH}", {}, 200, DEB),
                (f"/dev/repo/{DEB_PATH}", {"Range": "bytes=5-9"}, 206, DEB[5:10]),
                (f"/dev/repo/{DEB_PATH}", {"If-None-Match": f'"{sha(DEB)}"'}, 304, b""),
                (f"/dev/repo/{DEB_PATH}", {"Range": "bytes=5000-"}, 416, b""),
                ("/dev/repo/nope", {}, 404, b"not found\n"),
                ("/keys/mirror.asc", {}, 200, KEY),
            ):
                conn.request("GET", target, headers=headers)
                reply = conn.getresponse()
                assert (reply.status, reply.read()) == (status, body), target
                assert not reply.will_close
    finally:
        conn.close()


def test_head_matches_get_headers_without_body(server: Server) -> None:
    for target in (f"/dev/repo/{DEB_PATH}", f"/snapshots/repo/{SNAP}/{DEB_PATH}",
                   "/keys/mirror.asc"):
        get = raw_request(server.port, target)
        head = raw_request(server.port, target, method="HEAD")
        assert head.status == get.status == 200
        assert head.body == b""
        get.headers.pop("date", None)
        head.headers.pop("date", None)
        assert head.headers == get.headers, target
    head = raw_request(server.port, f"/dev/repo/{DEB_PATH}", method="HEAD",
                       headers={"Range": "bytes=0-9"})
    assert (head.status, head.header("Content-Range"), head.body) == (206, "bytes 0-9/1000", b"")
    missing = raw_request(server.port, "/dev/repo/nope", method="HEAD")
    assert (missing.status, missing.body) == (404, b"")


def test_range_request_returns_206_with_content_range(server: Server) -> None:
    url = f"/dev/repo/{DEB_PATH}"
    first = raw_request(server.port, url, headers={"Range": "bytes=0-9"})
    assert first.status == 206
    assert first.header("Content-Range") == "bytes 0-9/1000"
    assert first.header("Content-Length") == "10"
    assert first.body == DEB[:10]
    assert first.header("ETag") == f'"{sha(DEB)}"'

    tail = raw_request(server.port, url, headers={"Range": "bytes=990-"})
    assert (tail.status, tail.header("Content-Range"), tail.body) == (206, "bytes 990-999/1000",
                                                                      DEB[990:])
    suffix = raw_request(server.port, url, headers={"Range": "bytes=-5"})
    assert (suffix.status, suffix.body) == (206, DEB[-5:])

    # If-Range: same representation -> 206; anything else -> the full 200 (apt's resume check).
    last_modified = formatdate(T_NEW, usegmt=True)
    for if_range, status in ((f'"{sha(DEB)}"', 206), (last_modified, 206),
                             (f'"{sha(b"other")}"', 200), (f'W/"{sha(DEB)}"', 200),
                             (formatdate(T_NEW - 3600, usegmt=True), 200),
                             (formatdate(T_NEW + 3600, usegmt=True), 200), ("garbage", 200)):
        reply = raw_request(server.port, url, headers={"Range": "bytes=0-9", "If-Range": if_range})
        assert reply.status == status, if_range
        assert reply.body == (DEB[:10] if status == 206 else DEB), if_range


def test_range_past_end_returns_416(server: Server) -> None:
    url = f"/dev/repo/{DEB_PATH}"
    past = raw_request(server.port, url, headers={"Range": "bytes=1000-"})
    assert past.status == 416
    assert past.header("Content-Range") == "bytes */1000"
    assert DEB[:16] not in past.body
    # Multi-range: aiohttp does not do multipart/byteranges; 416 (or a full 200) but never
    # a wrong slice.
    multi = raw_request(server.port, url, headers={"Range": "bytes=0-1,5-6"})
    assert multi.status in (200, 416)
    if multi.status == 200:
        assert multi.body == DEB


def test_if_none_match_returns_304(server: Server) -> None:
    url = f"/dev/repo/{DEB_PATH}"
    etag = f'"{sha(DEB)}"'
    for value in (etag, f"W/{etag}", "*", f'"{sha(b"x")}", {etag}'):
        reply = raw_request(server.port, url, headers={"If-None-Match": value})
        assert reply.status == 304, value
        assert reply.body == b""
        assert reply.header("ETag") == etag
        assert reply.header("Cache-Control") == "no-cache"
    # A stale tag (e.g. the content before a promotion) gets the new content, even when the
    # date would say "not modified": If-None-Match takes precedence.
    stale = raw_request(server.port, url, headers={
        "If-None-Match": f'"{sha(b"old")}"',
        "If-Modified-Since": formatdate(T_NEW, usegmt=True),
    })
    assert (stale.status, stale.body) == (200, DEB)
    # FileResponse's own "<mtime>-<size>" tag must mean nothing here.
    st = server.catalog.pool_path(sha(DEB)).stat()
    own = raw_request(server.port, url,
                      headers={"If-None-Match": f'"{st.st_mtime_ns:x}-{st.st_size:x}"'})
    assert own.status == 200
    # If-Match: our tag passes (FileResponse would have answered 412 against its own tag).
    assert raw_request(server.port, url, headers={"If-Match": etag}).status == 200
    assert raw_request(server.port, url, headers={"If-Match": f'"{sha(b"x")}"'}).status == 412
    snap = raw_request(server.port, f"/snapshots/repo/{SNAP}/{DEB_PATH}",
                       headers={"If-None-Match": etag})
    assert snap.status == 304
    assert snap.header("Cache-Control") == "public, max-age=31536000, immutable"


def test_if_modified_since_returns_304(server: Server) -> None:
    snap = f"/snapshots/repo/{SNAP}/{DEB_PATH}"
    same = raw_request(server.port, snap, headers={"If-Modified-Since": formatdate(T_NEW, usegmt=True)})
    assert (same.status, same.body) == (304, b"")
    assert same.header("Last-Modified") == formatdate(T_NEW, usegmt=True)
    later = raw_request(server.port, snap,
                        headers={"If-Modified-Since": formatdate(T_NEW + 60, usegmt=True)})
    assert later.status == 304
    earlier = raw_request(server.port, snap,
                          headers={"If-Modified-Since": formatdate(T_NEW - 60, usegmt=True)})
    assert (earlier.status, earlier.body) == (200, DEB)

    # Tier URLs: only the exact Last-Modified is "not modified".  After a rollback the tier
    # serves an older pool file, and a client holding the newer one must get it replaced.
    tier = "/prod/repo/dists/stable/InRelease"  # pool mtime T_OLD
    exact = raw_request(server.port, tier, headers={"If-Modified-Since": formatdate(T_OLD, usegmt=True)})
    assert exact.status == 304
    rolled_back = raw_request(server.port, tier,
                              headers={"If-Modified-Since": formatdate(T_NEW, usegmt=True)})
    assert (rolled_back.status, rolled_back.body) == (200, INRELEASE_OLD)

    # A sub-second mtime: Last-Modified is rounded up (as aiohttp does), consistently on the
    # 200 and in the comparison, so the value a client got back is "not modified" again.
    path = server.catalog.pool_path(sha(INRELEASE_OLD))
    os.utime(path, ns=(T_OLD * 10**9 + 1, T_OLD * 10**9 + 1))
    first = raw_request(server.port, tier)
    assert first.header("Last-Modified") == formatdate(T_OLD + 1, usegmt=True)
    again = raw_request(server.port, tier,
                        headers={"If-Modified-Since": first.header("Last-Modified") or ""})
    assert again.status == 304


def test_content_type_is_from_requested_name(server: Server) -> None:
    cases = {
        "pool/main/f/foo/foo_1.0_amd64.deb": "application/vnd.debian.binary-package",
        "pool/main/f/foo/foo-udeb_1.0_amd64.udeb": "application/vnd.debian.binary-package",
        "Packages/foo-1.0-1.el9.x86_64.rpm": "application/x-rpm",
        "dists/stable/main/binary-amd64/Packages.xz": "application/x-xz",
        "dists/stable/main/binary-amd64/Packages.gz": "application/gzip",
        "dists/stable/main/binary-amd64/Packages.bz2": "application/x-bzip2",
        "repodata/abc-primary.xml.zst": "application/zstd",
        "repodata/repomd.xml": "application/xml",
        "repodata/repomd.xml.asc": "application/pgp-signature",
        "dists/stable/Release.gpg": "application/pgp-signature",
        "dists/stable/InRelease": "text/plain; charset=utf-8",
        "dists/stable/Release": "text/plain; charset=utf-8",
        "dists/stable/main/binary-amd64/Packages": "text/plain; charset=utf-8",
        "dists/stable/main/i18n/Translation-en": "text/plain; charset=utf-8",
        "dists/stable/main/binary-amd64/by-hash/SHA256/" + "ab" * 32: "application/octet-stream",
        "README.html": "application/octet-stream",
        "noextension": "application/octet-stream",
    }
    blob = b"same bytes for every name"
    dev = server.catalog.tiers[("dev", "repo")]
    for path in cases:
        server.catalog.add(dev, path, blob)
    # A compressed sibling planted next to the pool file must never be picked up
    # (FileResponse looks for "<file>.gz"/".br" when the client accepts gzip/br).
    pool_file = server.catalog.pool_path(sha(blob))
    pool_file.with_name(pool_file.name + ".gz").write_bytes(SECRET)
    pool_file.with_name(pool_file.name + ".br").write_bytes(SECRET)
    for path, expected in cases.items():
        reply = raw_request(server.port, f"/dev/repo/{path}",
                            headers={"Accept-Encoding": "gzip, br"})
        assert reply.status == 200, path
        assert reply.header("Content-Type") == expected, path
        assert reply.header("Content-Encoding") is None, path
        assert reply.body == blob, path
    assert content_type_for("foo.DEB") == "application/vnd.debian.binary-package"
    assert content_type_for(".deb") == "application/octet-stream"


def test_unknown_paths_are_404(server: Server) -> None:
    targets = [
        "/", "/dev", "/dev/repo", "/dev/nosuchrepo/" + DEB_PATH, "/nosuchtier/repo/" + DEB_PATH,
        "/dev/repo/pool/main/f/foo/nosuch.deb", "/dev/repo/" + DEB_PATH.upper(),
        "/snapshots", "/snapshots/repo", f"/snapshots/repo/{SNAP}",
        "/snapshots/repo/20990101T000000Z/" + DEB_PATH, "/snapshots/repo/latest/" + DEB_PATH,
        "/snapshots/nosuchrepo/" + SNAP + "/" + DEB_PATH, "/keys", "/keys/other.asc",
        "/keys/mirror.asc/x", "/Dev/repo/" + DEB_PATH, "/dev/Repo/" + DEB_PATH,
        "/api/v1/repos", "/metrics", "/pool/sha256/" + sha(DEB)[:2],
    ]
    for target in targets:
        reply = raw_request(server.port, target)
        assert reply.status == 404, target
        assert reply.header("Content-Type", ) == "text/plain; charset=utf-8", target
        assert len(reply.body) < 64, target
        assert reply.header("X-Content-Type-Options") == "nosniff", target
    server.catalog.key = None
    assert raw_request(server.port, "/keys/mirror.asc").status == 404


def test_no_directory_listing(server: Server) -> None:
    for target in ("/dev/", "/dev/repo/", "/dev/repo/pool/", "/dev/repo/pool/main/",
                   "/dev/repo/pool/main/f/foo/", "/dev/repo/dists/stable/", "/prod/",
                   f"/snapshots/repo/{SNAP}/", f"/snapshots/repo/{SNAP}/pool/", "/snapshots/",
                   "/snapshots/repo/", "/keys/", "/pool/", "/.pool/", "/pool/sha256/",
                   "/dev/repo/pool", "/dev/repo/dists"):
        reply = raw_request(server.port, target)
        assert reply.status == 404, target
        assert b"foo" not in reply.body and b"Index of" not in reply.body, target
        assert len(reply.body) < 64, target


TRAVERSALS = [
    "/dev/repo/../../etc/passwd",
    "/dev/%2e%2e/x",
    "/dev/repo/..%2f..%2fetc/passwd",
    "/dev/repo/%252e%252e/x",
    "/dev/repo/..%5c..%5cx",
    "/dev/repo/%c0%ae%c0%ae/x",
    "/dev//etc/passwd",
    "/dev/repo/x%00.deb",
    "/snapshots/repo/../../x",
    "/dev/repo/./x",
    "/dev/repo/%2e/x",
    "/dev/repo/..",
    "/dev/repo/x/..",
    "/dev/repo/etc%2fpasswd",
    "/dev/repo/x%0a.deb",
    "/dev/repo/x%7f.deb",
    "/dev/repo/x%c2%85.deb",
    "/dev/repo/x%ff.deb",
    "/dev/repo/x%ed%a0%80.deb",
    "/dev/repo/x%zz.deb",
    "/dev/repo/x%2",
    "/dev/repo/x\\..\\x",
    "/dev/repo/etc/passwd/",
    "/../../../../etc/passwd",
    "/keys/../etc/passwd",
    "/keys/%2e%2e/etc/passwd",
    "/prod/../../keys/signing.gpg",
    f"/snapshots/repo/{SNAP}/../../../etc/passwd",
    f"/snapshots/repo/{SNAP}/%2e%2e/{DEB_PATH}",
]


@pytest.mark.parametrize("target", TRAVERSALS)
def test_path_traversal_is_refused(server: Server, target: str) -> None:
    for method in ("GET", "HEAD"):
        reply = raw_request(server.port, target, method=method)
        assert reply.status in (400, 404), (target, reply.raw[:200])
        assert SECRET not in reply.raw
        assert b"root:x:0:0" not in reply.raw
        assert DEB[:64] not in reply.raw
    # Nothing that would need normalising ever reached the catalog.
    for path in server.catalog.lookups:
        segments = path.split("/")
        assert all(s not in ("", ".", "..") for s in segments), path
        assert "\\" not in path and not any(ord(c) < 0x20 for c in path), path


def test_split_request_path_unit() -> None:
    assert split_request_path("/dev/repo/a%2bb%7e1%3a2.deb?x=/../#y") == ["dev", "repo", "a+b~1:2.deb"]
    assert split_request_path("/dev/repo/%252e%252e") == ["dev", "repo", "%2e%2e"]
    assert split_request_path("/dev/repo/caf%C3%A9") == ["dev", "repo", "café"]
    assert split_request_path("https://h:1/a/b") == ["a", "b"]
    for bad, status in (("/a//b", 404), ("/a/", 404), ("/a/%2e%2e", 404), ("/a/%2F", 400),
                        ("/a/%5C", 400), ("/a/%00", 400), ("/a/%C0%AE", 400), ("/a/%", 400),
                        ("ftp://h/a", 400), ("a/b", 400)):
        with pytest.raises(PathRejected) as info:
            split_request_path(bad)
        assert info.value.status == status, bad


def test_missing_pool_file_is_not_served_as_wrong_bytes(server: Server, tmp_path: Path) -> None:
    cat = server.catalog
    dev = cat.tiers[("dev", "repo")]
    # Missing object.
    sha_missing = cat.add(dev, "gone.deb", b"will vanish")
    cat.pool_path(sha_missing).unlink()
    reply = raw_request(server.port, "/dev/repo/gone.deb")
    assert reply.status == 503
    assert len(reply.body) < 64
    # Object of the wrong size (truncated / replaced): never served.
    sha_short = cat.add(dev, "short.deb", b"0123456789" * 10)
    cat.pool_path(sha_short).write_bytes(SECRET)
    for headers in ({}, {"Range": "bytes=0-3"}, {"If-None-Match": '"x"'}):
        reply = raw_request(server.port, "/dev/repo/short.deb", headers=headers)
        assert reply.status == 500, headers
        assert SECRET[:16] not in reply.raw
    # A symlink in the pool (e.g. to a file outside it) is not followed.
    sha_link = cat.add(dev, "link.deb", SECRET)
    outside = tmp_path / "outside"
    outside.write_bytes(SECRET)
    cat.pool_path(sha_link).unlink()
    cat.pool_path(sha_link).symlink_to(outside)
    reply = raw_request(server.port, "/dev/repo/link.deb")
    assert reply.status == 500
    assert SECRET not in reply.raw
    # A directory where the object should be.
    sha_dir = cat.add(dev, "dir.deb", b"dir")
    cat.pool_path(sha_dir).unlink()
    cat.pool_path(sha_dir).mkdir()
    assert raw_request(server.port, "/dev/repo/dir.deb").status == 500
    # Everything else still works.
    assert raw_request(server.port, f"/dev/repo/{DEB_PATH}").body == DEB


def test_post_is_405(server: Server) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        reply = raw_request(server.port, f"/dev/repo/{DEB_PATH}", method=method,
                            headers={"Content-Length": "0"})
        assert reply.status == 405, method
        assert DEB[:64] not in reply.body
        assert set(reply.header("Allow").split(",")) == {"GET", "HEAD"}  # type: ignore[union-attr]


SERVER_SCRIPT = textwrap.dedent("""
    import asyncio, hashlib, sys
    from pathlib import Path
    from aiohttp import web
    from mirror.model import EntryKind, ManifestEntry
    from mirror.web.repo import RepoResponder, run_servers

    root = Path(sys.argv[1])
    data = b"served bytes"
    sha = hashlib.sha256(data).hexdigest()
    pool = root / sha
    pool.write_bytes(data)

    class Catalog:
        def lookup_tier(self, tier, repo, path, client=None):
            if (tier, repo, path) == ("dev", "repo", "f.deb"):
                return ManifestEntry(path, sha, len(data), EntryKind.PACKAGE)
            return None
        def lookup_snapshot(self, repo, snapshot, path):
            return None
        def pool_path(self, sha256):
            return root / sha256
        def public_key_path(self):
            return None

    async def slow(request):
        print("slow-started", flush=True)
        await asyncio.sleep(1.5)
        return web.Response(text="slow-done")

    other = web.Application()
    other.router.add_get("/slow", slow)

    def ready(addresses):
        print("ready " + " ".join(str(port) for _, port in addresses), flush=True)

    asyncio.run(run_servers([(RepoResponder(Catalog()), "127.0.0.1", 0), (other, "127.0.0.1", 0)],
                            shutdown_timeout=5, ready=ready))
    print("exited-cleanly", flush=True)
""")


def test_sigterm_shutdown_is_graceful(tmp_path: Path) -> None:
    script = tmp_path / "serve.py"
    script.write_text(SERVER_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("ready "), (line, proc.stderr.read() if proc.stderr else "")
        repo_port, other_port = (int(p) for p in line.split()[1:])
        assert raw_request(repo_port, "/dev/repo/f.deb").body == b"served bytes"

        # An in-flight request when SIGTERM arrives still gets its full answer.
        sock = socket.create_connection(("127.0.0.1", other_port), timeout=10)
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert proc.stdout.readline().strip() == "slow-started"
        # An idle keep-alive connection must not hold the shutdown up.
        idle = socket.create_connection(("127.0.0.1", repo_port), timeout=10)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        sock.close()
        answer = b"".join(chunks)
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert answer.endswith(b"slow-done")
        assert proc.wait(timeout=8) == 0
        assert time.monotonic() - started < 8
        assert "exited-cleanly" in proc.stdout.read()
        assert idle.recv(1) == b""  # closed by the server
        idle.close()
        # The ports are closed now.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", repo_port), timeout=2).close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
