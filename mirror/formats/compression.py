"""Compressed index variants: names, preference, and bounded, all-or-nothing decompression.

:func:`decompress_file` streams: it never holds more than ``cap`` bytes of output plus one
output chunk, stops with :class:`TooLargeError` as soon as the output exceeds ``cap``, and
returns nothing but a complete, checked stream (:class:`MalformedMetadataError` for a
truncated, corrupt or trailing-garbage input; a partial output is never returned).

Stream boundaries: concatenated gzip members, xz streams, bzip2 streams and zstd frames are all
decoded (``gzip -d``/``xz -d``/``bzip2 -d``/``zstd -d`` do the same); anything after the last
complete member that is not itself a complete member is an error, including zero padding.
``.lzma`` (LZMA-alone) is one stream only.
"""

from __future__ import annotations

import bz2
import io
import lzma
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from mirror.errors import MalformedMetadataError, TooLargeError

__all__ = ["PREFERENCE", "SUFFIXES", "decompress_file", "decompress_to_file", "split_variant"]

SUFFIXES: dict[str, str] = {
    ".xz": "xz",
    ".gz": "gz",
    ".bz2": "bz2",
    ".lzma": "lzma",
    ".zst": "zst",
    "": "plain",
}
PREFERENCE: tuple[str, ...] = ("xz", "zst", "gz", "bz2", "lzma", "plain")  # best first

_READ_SIZE = 64 * 1024  # compressed bytes read at a time
_OUT_CHUNK = 1024 * 1024  # decompressed bytes produced at a time (lzma/bz2/gzip)
_LZMA_MEMLIMIT = 128 * 1024 * 1024  # xz -9e needs ~65 MiB; refuse headers asking for more
_ZSTD_MAX_WINDOW = 1 << 27  # 128 MiB, zstd's default decoder limit, stated explicitly
# zstandard's decompressobj cannot bound one call's output, so we bound its input: a zstd block
# (at most 128 KiB of output) takes at least 4 input bytes (RLE block), so feeding 64 bytes at a
# time yields at most 16 * 128 KiB + 128 KiB = 2.125 MiB per call. Measured cost: ~0.15 s per
# 14 MB of compressed input, against ~0.08 s for unbounded calls.
_ZSTD_FEED = 64


def split_variant(path: str) -> tuple[str, str]:
    """``"main/binary-amd64/Packages.xz"`` -> ``("main/binary-amd64/Packages", "xz")``."""
    name = path.rsplit("/", 1)[-1]
    dot = name.rfind(".")
    if dot > 0:
        suffix = name[dot:]
        kind = SUFFIXES.get(suffix)
        if kind is not None and suffix:
            return path[: len(path) - len(suffix)], kind
    return path, "plain"


class _Member(Protocol):
    """One compressed member (gzip member, xz stream, bz2 stream, zstd frame) being decoded."""

    eof: bool

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Decode ``data`` as far as this member goes, one bounded output chunk at a time.

        The caller counts the output and stops iterating (and fails) once it exceeds the cap.
        """
        ...

    def leftover(self) -> bytes:
        """Input after the end of this member (only meaningful once ``eof``)."""
        ...


class _Bounded:
    """lzma and bz2 decompressors: ``decompress(data, max_length)`` bounds each output chunk."""

    def __init__(self, decompressor: lzma.LZMADecompressor | bz2.BZ2Decompressor) -> None:
        self._d = decompressor
        self.eof = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        d = self._d
        yield d.decompress(data, max_length=_OUT_CHUNK)
        while not d.eof and not d.needs_input:
            yield d.decompress(b"", max_length=_OUT_CHUNK)
        self.eof = d.eof

    def leftover(self) -> bytes:
        return self._d.unused_data


class _Gzip:
    def __init__(self) -> None:
        self._d = zlib.decompressobj(wbits=31)  # gzip wrapper: header, CRC32 and ISIZE checked
        self.eof = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        d = self._d
        while not d.eof:
            piece = d.decompress(data, _OUT_CHUNK)
            data = d.unconsumed_tail
            if not data and not piece:
                break
            yield piece
        self.eof = d.eof

    def leftover(self) -> bytes:
        return self._d.unused_data


class _Zstd:
    """zstandard's decompressobj cannot bound its output, so bound its input instead."""

    def __init__(self) -> None:
        import zstandard  # only for .zst files: its import (and platform's) cost every sync 5 ms

        self._d = zstandard.ZstdDecompressor(max_window_size=_ZSTD_MAX_WINDOW).decompressobj()
        self.eof = False
        self._rest = b""

    def feed(self, data: bytes) -> Iterator[bytes]:
        d = self._d
        for pos in range(0, len(data), _ZSTD_FEED):
            yield d.decompress(data[pos : pos + _ZSTD_FEED])
            if d.eof:
                self.eof = True
                self._rest = d.unused_data + data[pos + _ZSTD_FEED :]
                return

    def leftover(self) -> bytes:
        return self._rest


def _new_member(kind: str) -> _Member:
    if kind == "xz":
        return _Bounded(lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=_LZMA_MEMLIMIT))
    if kind == "lzma":
        return _Bounded(lzma.LZMADecompressor(lzma.FORMAT_ALONE, memlimit=_LZMA_MEMLIMIT))
    if kind == "bz2":
        return _Bounded(bz2.BZ2Decompressor())
    if kind == "gz":
        return _Gzip()
    if kind == "zst":
        return _Zstd()
    raise ValueError(f"unknown compression kind {kind!r}")



_DECODE_ERRORS: tuple[type[BaseException], ...] = (lzma.LZMAError, zlib.error, OSError, EOFError, ValueError)


def _decode_errors(kind: str) -> tuple[type[BaseException], ...]:
    """What decoding `kind` data may raise (zstandard's own error only when it is loaded)."""
    if kind != "zst":
        return _DECODE_ERRORS
    import zstandard

    return (*_DECODE_ERRORS, zstandard.ZstdError)


def decompressed_head(src: Path, kind: str, size: int, *, what: str) -> bytes:
    """The first `size` bytes (or fewer, at its end) of the first member of `src` decompressed:
    enough to look at an XML prolog without decompressing the whole file."""
    member = _new_member(kind)
    out = bytearray()
    try:
        with src.open("rb") as f:
            while len(out) < size and not member.eof and (data := f.read(65536)):
                for chunk in member.feed(data):
                    out += chunk
                    if len(out) >= size:
                        break
    except _decode_errors(kind) as exc:
        raise MalformedMetadataError(f"is not valid {kind} data: {exc}", path=what) from None
    return bytes(out[:size])


def decompress_file(src: Path, kind: str, *, cap: int, what: str) -> bytes:
    """The decompressed content of ``src``, at most ``cap`` bytes, complete and checked."""
    out = io.BytesIO()
    _decompress_into(src, kind, out, cap=cap, what=what)
    return out.getvalue()


def decompress_to_file(src: Path, kind: str, dst: Path, *, cap: int, what: str) -> None:
    """Like `decompress_file`, streaming into ``dst`` (bounded memory for large indices)."""
    with dst.open("wb") as out:
        _decompress_into(src, kind, out, cap=cap, what=what)


def _decompress_into(src: Path, kind: str, out: BinaryIO, *, cap: int, what: str) -> None:
    if kind not in PREFERENCE:
        raise ValueError(f"unknown compression kind {kind!r}")
    total = 0

    def too_large() -> TooLargeError:
        return TooLargeError(f"{what}: decompressed size exceeds the cap of {cap} bytes")

    with src.open("rb") as fh:
        if kind == "plain":
            while chunk := fh.read(_READ_SIZE):
                total += len(chunk)
                if total > cap:
                    raise too_large()
                out.write(chunk)
            return

        member: _Member | None = None
        members = 0
        while chunk := fh.read(_READ_SIZE):
            data = chunk
            while data:
                if member is None:
                    if kind == "lzma" and members:
                        raise MalformedMetadataError(f"{what}: trailing data after the lzma stream")
                    member = _new_member(kind)
                    members += 1
                try:
                    for piece in member.feed(data):
                        total += len(piece)
                        if total > cap:
                            raise too_large()
                        out.write(piece)
                except lzma.LZMAError as exc:
                    if "Memory usage limit" in str(exc):
                        raise TooLargeError(
                            f"{what}: the xz stream needs more than {_LZMA_MEMLIMIT} bytes of "
                            "decoder memory"
                        ) from None
                    raise _corrupt(what, kind, members, exc) from None
                except _decode_errors(kind) as exc:
                    raise _corrupt(what, kind, members, exc) from None
                if member.eof:
                    data = member.leftover()
                    member = None
                else:
                    data = b""
        if member is not None or members == 0:
            raise MalformedMetadataError(
                f"{what}: truncated {kind} data (the compressed stream ends before its end marker)"
            )


def _corrupt(what: str, kind: str, members: int, exc: BaseException) -> MalformedMetadataError:
    where = "trailing data after the compressed stream" if members > 1 else "corrupt data"
    return MalformedMetadataError(f"{what}: {kind}: {where}: {exc}")
