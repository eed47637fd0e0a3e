"""Pool ingest and path containment: properties (Hypothesis) and the named failure cases."""

from __future__ import annotations

import asyncio
import hashlib
import posixpath
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mirror.errors import ChecksumMismatchError, SizeMismatchError, UnsafePathError
from mirror.model import ExpectedFile
from mirror.pool import Pool
from mirror.repopath import _contained, contained


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), max(1, size)):
        yield data[i:i + max(1, size)]


def _ingest(pool: Pool, data: bytes, expected: ExpectedFile, chunk: int = 7) -> None:
    """Ingest, then make durable (as a sync does before its commit): the file is in the pool."""
    tmp = pool.temp_dir("t")
    try:
        asyncio.run(pool.ingest(_chunks(data, chunk), expected, tmp, what=expected.path))
    finally:
        pool.make_durable()


def _leftovers(pool: Pool) -> list[Path]:
    return [p for p in pool.tmp.rglob("*") if p.is_file()]


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=4096), chunk=st.integers(1, 5000), tamper=st.sampled_from(
    ["none", "flip", "longer", "shorter"]))
def test_pool_ingest_stores_exactly_the_declared_bytes_or_nothing(
        tmp_path_factory: pytest.TempPathFactory, data: bytes, chunk: int, tamper: str) -> None:
    pool = Pool(tmp_path_factory.mktemp("pool"))
    digest = hashlib.sha256(data).hexdigest()
    expected = ExpectedFile("pool/x.deb", len(data), digest)
    sent = data
    if tamper == "flip" and data:
        sent = bytes([data[0] ^ 1]) + data[1:]
    elif tamper == "longer":
        sent = data + b"x"
    elif tamper == "shorter" and data:
        sent = data[:-1]
    if sent == data:
        _ingest(pool, sent, expected, chunk)
        assert pool.path_for(digest).read_bytes() == data
    else:
        with pytest.raises((ChecksumMismatchError, SizeMismatchError)):
            _ingest(pool, sent, expected, chunk)
        assert not pool.path_for(digest).exists()
    assert _leftovers(pool) == []


def test_pool_ingest_aborts_as_soon_as_declared_size_is_exceeded(tmp_path: Path) -> None:
    pool = Pool(tmp_path)
    consumed = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal consumed
        while True:
            consumed += 1
            yield b"\0" * 1024

    expected = ExpectedFile("x", 10 * 1024, "0" * 64)
    with pytest.raises(SizeMismatchError, match="longer than"):
        asyncio.run(pool.ingest(endless(), expected, pool.temp_dir("t"), what="x"))
    assert consumed == 11
    assert _leftovers(pool) == []


def test_pool_ingest_of_present_digest_is_idempotent(tmp_path: Path) -> None:
    pool = Pool(tmp_path)
    data = b"hello"
    expected = ExpectedFile("x", 5, hashlib.sha256(data).hexdigest())
    _ingest(pool, data, expected)
    _ingest(pool, data, expected)
    assert pool.adopt(expected)


def test_pool_adopt_rejects_and_removes_a_corrupt_leftover(tmp_path: Path) -> None:
    pool = Pool(tmp_path)
    data = b"hello world"
    expected = ExpectedFile("x", len(data), hashlib.sha256(data).hexdigest())
    final = pool.path_for(expected.sha256)
    final.parent.mkdir(parents=True)
    final.write_bytes(b"hello worle")
    assert not pool.adopt(expected)
    assert not final.exists()


# -- path containment ----------------------------------------------------------------------

SEGMENT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="/"), min_size=0, max_size=6)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(SEGMENT, st.sampled_from(["..", ".", ""])), min_size=1, max_size=6),
       st.booleans())
def test_contained_path_never_leaves_the_repo(segments: list[str], absolute: bool) -> None:
    raw = ("/" if absolute else "") + "/".join(segments)
    try:
        result = contained(raw)
    except UnsafePathError:
        return
    assert not result.startswith("/")
    assert ".." not in result.split("/")
    assert posixpath.normpath(posixpath.join("/repo", result)).startswith("/repo/")
    assert "\\" not in result and "\x00" not in result


PATHS = st.lists(st.sampled_from([*"ab0_+~-.:/%\\\x00 ", "2e", "2f", "\u00e9", "..", "//"]),
                 max_size=16).map("".join)


@settings(max_examples=2000, deadline=None)
@given(PATHS)
def test_contained_fast_path_answers_as_the_full_check(raw: str) -> None:
    """`contained` returns a plain path (`_PLAIN`) as it is; the full check must agree."""
    try:
        full: str | None = _contained(raw, None)
    except UnsafePathError:
        full = None
    try:
        fast: str | None = contained(raw)
    except UnsafePathError:
        fast = None
    assert fast == full, raw


@pytest.mark.parametrize("raw", [
    "../../etc/passwd", "pool/../../x.deb", "/etc/passwd", "pool/..", "..", ".", "",
    "pool\\..\\x", "pool/x\x00.deb", "pool/x\n.deb", "pool/../pool/x.deb",
])
def test_filename_outside_repo_is_rejected(raw: str) -> None:
    with pytest.raises(UnsafePathError):
        contained(raw, what="main/binary-amd64/Packages")


@pytest.mark.parametrize(("raw", "norm"), [
    ("pool/main/h/hello/hello_1.0_amd64.deb", "pool/main/h/hello/hello_1.0_amd64.deb"),
    ("./pool/main/x.deb", "pool/main/x.deb"),
    ("pool//main/x.deb", "pool/main/x.deb"),
])
def test_filename_inside_repo_is_normalised(raw: str, norm: str) -> None:
    assert contained(raw) == norm


def test_a_pool_in_the_two_level_layout_is_moved_to_one_level_once(tmp_path: Path) -> None:
    """Pools written by earlier versions (ab/cd/<hex>) are moved in place to ab/<hex> the first
    time a Pool opens them; the move is recorded, repeated opens do nothing, strays stay."""
    import hashlib

    from mirror.pool import LAYOUT

    blobs = {hashlib.sha256(str(i).encode()).hexdigest(): str(i).encode() for i in range(40)}
    base = tmp_path / "pool" / "sha256"
    for digest, data in blobs.items():
        old = base / digest[:2] / digest[2:4] / digest
        old.parent.mkdir(parents=True, exist_ok=True)
        old.write_bytes(data)
    first = next(iter(blobs))
    duplicate = base / first[:2] / first  # already moved once (a crash part-way): kept, old removed
    duplicate.write_bytes(blobs[first])
    stray = base / first[:2] / first[2:4] / "notes.txt"
    stray.write_text("not an object")
    pool = Pool(tmp_path)
    assert (tmp_path / "pool" / "layout").read_text() == LAYOUT
    for digest, data in blobs.items():
        assert pool.path_for(digest) == base / digest[:2] / digest
        assert pool.path_for(digest).read_bytes() == data
        assert not (base / digest[:2] / digest[2:4] / digest).exists()
    assert stray.read_text() == "not an object"
    assert sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()) == sorted(
        [f"{d[:2]}/{d}" for d in blobs] + [f"{first[:2]}/{first[2:4]}/notes.txt"])
    Pool(tmp_path)  # recorded: nothing to do, nothing changes
    assert pool.path_for(first).read_bytes() == blobs[first]


def test_a_new_pool_records_its_layout_when_first_prepared(tmp_path: Path) -> None:
    from mirror.pool import LAYOUT

    pool = Pool(tmp_path)
    assert not (tmp_path / "pool" / "layout").exists()
    pool.prepare()
    assert (tmp_path / "pool" / "layout").read_text() == LAYOUT
