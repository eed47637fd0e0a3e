"""The small-file path of a sync: `Fetcher.fetch_capped` (the body in memory, cut as soon as it is
longer than declared) and `Pool.store_received` / `Pool.store_whole` (checked before anything is
created, then written and renamed in one go). The properties are those of `Pool.ingest`."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
from pathlib import Path

import pytest

from fixtures.upstream import Fault, UpstreamServer
from mirror.errors import (
    ChecksumMismatchError,
    NoSpaceError,
    NotFoundUpstreamError,
    RedirectError,
    SizeMismatchError,
    StorageError,
)
from mirror.fetch import Fetcher, FetchPolicy
from mirror.model import ExpectedFile
from mirror.pool import Pool

BODY = b"0123456789" * 1000
URL = "http://up.example/debian/pool/main/x.deb"


def _expected(data: bytes = BODY, alt: tuple[str, str] | None = None) -> ExpectedFile:
    return ExpectedFile("pool/main/x.deb", len(data), hashlib.sha256(data).hexdigest(), alt=alt)


def _files(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file() and p.name != "layout"]


def _fetch(root: Path, path: str, cap: int, faults: dict[str, Fault] | None = None) -> tuple[bytes, int]:
    async def go(url: str) -> tuple[bytes, int]:
        async with Fetcher(FetchPolicy(retries=0)) as fetcher:
            return await fetcher.fetch_capped(f"{url}/{path}", cap)

    with UpstreamServer(root) as server:
        server.faults.update(faults or {})
        return asyncio.run(go(server.url))


# -- Pool.store_received -------------------------------------------------------------------------


def test_store_received_stages_the_bytes_until_make_durable_puts_them_under_their_digest(
        tmp_path: Path) -> None:
    pool = Pool(tmp_path)
    tmp = pool.temp_dir("repo")
    digest = pool.store_received(BODY, len(BODY), _expected(), tmp, what="pool/main/x.deb", url=URL)
    assert digest == hashlib.sha256(BODY).hexdigest()
    staged = pool.path_for(digest)  # this Pool reads it where it waits
    assert staged.parent == tmp and staged.read_bytes() == BODY and pool.exists(digest)
    assert not Pool(tmp_path).path_for(digest).exists()  # no name in the pool before make_durable
    pool.make_durable()
    assert pool.path_for(digest) == Pool(tmp_path).path_for(digest)
    assert pool.path_for(digest).read_bytes() == BODY
    assert _files(tmp) == []


@pytest.mark.parametrize(("sent", "size", "error", "words"), [
    (b"X" + BODY[1:], len(BODY), ChecksumMismatchError,
     ["sha256 mismatch", f"received {hashlib.sha256(b'X' + BODY[1:]).hexdigest()}",
      f"expected {hashlib.sha256(BODY).hexdigest()}"]),
    (BODY[:-1], len(BODY) - 1, SizeMismatchError,
     [f"expected {len(BODY)} bytes", f"received {len(BODY) - 1}"]),
    (BODY, len(BODY) + 1, SizeMismatchError,  # cut by fetch_capped: one byte more arrived
     [f"longer than the {len(BODY)} bytes", f"received at least {len(BODY) + 1} (transfer cut)"]),
])
def test_store_received_refuses_a_mismatch_before_creating_anything(
        tmp_path: Path, sent: bytes, size: int, error: type[Exception], words: list[str]) -> None:
    pool = Pool(tmp_path)
    tmp = pool.temp_dir("repo")
    with pytest.raises(error) as caught:
        pool.store_received(sent, size, _expected(), tmp, what="pool/main/x.deb", url=URL)
    message = str(caught.value)
    for word in [*words, "pool/main/x.deb", f"(from {URL})"]:
        assert word in message, message
    assert _files(tmp_path) == []  # no temp file, nothing in the pool


def test_store_received_checks_the_second_digest_too(tmp_path: Path) -> None:
    pool = Pool(tmp_path)
    tmp = pool.temp_dir("repo")
    wrong = ("sha512", hashlib.sha512(b"other").hexdigest())
    with pytest.raises(ChecksumMismatchError, match="sha512 mismatch"):
        pool.store_received(BODY, len(BODY), _expected(alt=wrong), tmp, what="x")
    only_alt = ExpectedFile("x", len(BODY), "", alt=("sha512", hashlib.sha512(BODY).hexdigest()))
    assert pool.store_received(BODY, len(BODY), only_alt, tmp, what="x") == hashlib.sha256(BODY).hexdigest()
    with pytest.raises(ChecksumMismatchError, match="no digest"):
        pool.store_received(BODY, len(BODY), ExpectedFile("x", len(BODY), ""), tmp, what="x")
    pool.make_durable()
    assert _files(tmp) == []


def test_make_durable_flushes_the_bytes_before_any_name_and_the_names_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HOSTILE 57: no name in the pool ever points at bytes not yet on disk, a new name or the
    replacement of one a tier may serve, without an fsync per file: one flush before the renames,
    one after them."""
    pool = Pool(tmp_path)
    tmp = pool.temp_dir("repo")
    other = b"another file"
    calls: list[str] = []
    real_flush, real_replace = pool._flush, os.replace
    monkeypatch.setattr(pool, "_flush", lambda: (calls.append("flush"), real_flush())[1])
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append("fsync"))
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1])
    pool.store_whole(BODY, _expected(), str(tmp), "x")
    pool.store_whole(other, _expected(other), str(tmp), "y")
    assert calls == []  # nothing is renamed, nor flushed file by file, while a sync fetches
    pool.make_durable()
    assert calls == ["flush", "replace", "replace", "flush"]
    calls.clear()
    pool.store_whole(BODY, _expected(), str(tmp), "x")  # the final name exists now
    pool.make_durable()
    assert calls == ["flush", "replace", "flush"]
    assert pool.path_for(_expected().sha256).read_bytes() == BODY
    assert _files(tmp) == []


def test_store_whole_on_a_full_disk_names_the_file_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = Pool(tmp_path)
    tmp = pool.temp_dir("repo")

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(NoSpaceError) as caught:
        pool.store_whole(BODY, _expected(), str(tmp), "pool/main/x.deb")
    assert "pool/main/x.deb" in str(caught.value) and "no space left" in str(caught.value)
    monkeypatch.undo()
    assert _files(tmp_path) == []


def test_store_whole_goes_on_when_gc_pruned_the_fanout_folder(tmp_path: Path) -> None:
    pool = Pool(tmp_path)
    tmp = pool.temp_dir("repo")
    first = pool.store_whole(BODY, _expected(), str(tmp), "x")
    pool.make_durable()
    pool.path_for(first).unlink()
    pool.path_for(first).parent.rmdir()  # as gc's _prune_empty_dirs does, behind this Pool's back
    assert pool.store_whole(BODY, _expected(), str(tmp), "x") == first
    pool.make_durable()
    assert pool.path_for(first).read_bytes() == BODY


def test_temp_files_are_created_exclusively_and_never_through_a_symlink(tmp_path: Path) -> None:
    from mirror import pool as pool_module

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    target = tmp_path / "elsewhere"
    name = f"{os.getpid()}-{next(pool_module._names) + 1}.part"  # the next name it will try
    (tmp / name).symlink_to(target)
    fd, created = pool_module._temp_file(str(tmp))
    os.close(fd)
    assert Path(created).name != name and Path(created).parent == tmp
    assert not target.exists()


def test_pool_exists_takes_only_a_digest(tmp_path: Path) -> None:
    pool = Pool(tmp_path)
    assert not pool.exists("0" * 64)
    with pytest.raises(StorageError):
        pool.exists("../../etc/passwd")


# -- Fetcher.fetch_capped --------------------------------------------------------------------------


def test_fetch_capped_returns_the_whole_body(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(BODY)
    assert _fetch(tmp_path, "f", len(BODY)) == (BODY, len(BODY))


def test_fetch_capped_cuts_an_endless_body_at_once(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(BODY)
    data, size = _fetch(tmp_path, "f", len(BODY), {"f": Fault(endless=True)})
    assert size > len(BODY) and len(data) <= len(BODY)


def test_fetch_capped_follows_redirects_and_reports_errors_like_open_stream(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(BODY)
    assert _fetch(tmp_path, "g", len(BODY), {"g": Fault(redirect_to="/f")}) == (BODY, len(BODY))
    with pytest.raises(NotFoundUpstreamError, match="not found"):
        _fetch(tmp_path, "missing", 10)
    with pytest.raises(RedirectError, match="another scheme"):
        _fetch(tmp_path, "g", 10, {"g": Fault(redirect_to="ftp://elsewhere/f")})


def test_fetch_capped_reads_file_urls(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(BODY)

    async def go(cap: int) -> tuple[bytes, int]:
        async with Fetcher(FetchPolicy(retries=0)) as fetcher:
            return await fetcher.fetch_capped((tmp_path / "f").as_uri(), cap)

    assert asyncio.run(go(len(BODY))) == (BODY, len(BODY))
    data, size = asyncio.run(go(100))
    assert size > 100 and len(data) <= 100
