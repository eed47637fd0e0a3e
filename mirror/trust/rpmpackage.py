"""An RPM package's header signature and digests, checked in this process: the fast path before
`rpmkeys` (mirror.trust.rpmsig).

`rpmkeys --checksig` costs about 1 ms of CPU per package (libgcrypt's EdDSA and digests); a
sync of thousands of packages spent most of its time there. This check does the same work
with Sequoia-PGP (`pysequoia`) for the OpenPGP signature and hashlib for the digests, about ten
times cheaper, for the packages every current rpmbuild/rpmsign makes:

- a v3 lead with a header-style signature, then the signature header, then the main header;
- exactly one header-only OpenPGP signature (RPMSIGTAG_RSA or RPMSIGTAG_DSA, the tag rpm uses
  for EdDSA and ECDSA too), binary, made by a key of the repo's pinned certificates that
  Sequoia's standard policy holds valid at the signature's time (not revoked, bound, alive,
  strong algorithms);
- the main header's payload digest (RPMTAG_PAYLOADDIGEST, SHA-256/384/512) over the payload;
- every other digest the signature header carries, as rpm checks them: the header's SHA-256 and
  SHA-1, the MD5 and the size of header and payload.

It only ever *accepts*. Anything it does not know or that does not check out (a legacy
header+payload signature, an unknown signature-header tag, an older package without a payload
digest, a bad digest, a signature it cannot verify) is left to `rpmkeys`, which gives the
verdict and the error message as before. So a package is accepted here only if rpm would accept
it too, and a bad one is always reported by rpm's own words.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

LEAD_SIZE = 96
_LEAD_MAGIC = b"\xed\xab\xee\xdb"
_HEADER_MAGIC = b"\x8e\xad\xe8\x01\x00\x00\x00\x00"
_SIGTYPE_HEADERSIG = 5
_ENTRY = struct.Struct(">iiii")
_INTRO = struct.Struct(">II")
MAX_SIG_ENTRIES = 64
MAX_SIG_STORE = 64 * 1024
MAX_ENTRIES = 65536  # rpm's own header limits
MAX_STORE = 256 * 1024 * 1024
FIRST_READ = 256 * 1024  # lead, signature header and most main headers
MAX_HEADERS = 32 * 1024 * 1024  # bigger headers (rare) are left to rpmkeys: memory stays bounded
PAYLOAD_READ = 1024 * 1024

# rpm tag types
_INT32, _INT64, _STRING, _BIN, _STRING_ARRAY = 4, 5, 6, 7, 8

# signature header tags
_SIG_REGION = 62  # RPMTAG_HEADERSIGNATURES
_SIG_SIZE = 1000
_SIG_PGP, _SIG_MD5, _SIG_GPG = 1002, 1004, 1005
_SIG_PAYLOADSIZE, _SIG_RESERVED = 1007, 1008
_SIG_DSA, _SIG_RSA, _SIG_SHA1, _SIG_LONGSIZE, _SIG_LONGARCHIVESIZE, _SIG_SHA256 = 267, 268, 269, 270, 271, 273

# main header tags
_PAYLOADDIGEST, _PAYLOADDIGESTALGO = 5092, 5093
_PAYLOAD_HASHES = {8: "sha256", 9: "sha384", 10: "sha512"}  # rpm's PGPHASHALGO_* numbers
_SIG_HASHES = {2: "sha1", 8: "sha256", 9: "sha384", 10: "sha512", 11: "sha224"}  # OpenPGP's


class _Declined(Exception):
    """Not accepted here: rpmkeys decides (the message says why, for tests and the debug log)."""


class InProcessCheck:
    """The in-process check for one key set: `check(path)` is None when the package verified,
    else why it is left to rpmkeys."""

    def __init__(self, certificates: bytes, pinned: Iterable[str]) -> None:
        # Sequoia's errors (anyhow) capture a backtrace each when RUST_BACKTRACE is set, as on
        # developers' machines; verifying makes and drops several per package, and nothing here
        # ever shows them: 20 µs of a 360 µs check. Panics keep theirs (RUST_BACKTRACE).
        os.environ.setdefault("RUST_LIB_BACKTRACE", "0")
        import pysequoia
        from pysequoia.packet import SignatureType

        self._sq = pysequoia
        self._binary = SignatureType.Binary
        wanted = {fp.lower() for fp in pinned}
        self._certs = [c for c in pysequoia.Cert.split_bytes(certificates) if c.fingerprint.lower() in wanted]
        self._fingerprints = frozenset(c.fingerprint.lower() for c in self._certs)

    @property
    def usable(self) -> bool:
        return bool(self._certs)

    def check(self, path: Path) -> str | None:
        try:
            with path.open("rb") as file:
                return self._verdict(file)
        except OSError as exc:
            return f"cannot read: {exc}"

    def check_data(self, data: bytes) -> str | None:
        """`check` of a package's bytes in memory: as a download lands, before they are read again."""
        return self._verdict(io.BytesIO(data))

    def _verdict(self, file: BinaryIO) -> str | None:
        try:
            self._check(file)
        except _Declined as why:
            return str(why)
        except OSError as exc:
            return f"cannot read: {exc}"
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # whatever Sequoia (a Rust panic too) or a parse raised
            text = str(exc).splitlines()
            return f"{type(exc).__name__}: {text[0] if text else ''}"
        return None

    def _check(self, file: BinaryIO) -> None:
        """Raises _Declined unless the package verifies; reads the headers whole (at most
        MAX_HEADERS bytes), the payload in chunks."""
        data = file.read(FIRST_READ)
        if len(data) < LEAD_SIZE or data[:4] != _LEAD_MAGIC or data[4] != 3:
            raise _Declined("not an RPM v3 lead")
        if struct.unpack_from(">h", data, 78)[0] != _SIGTYPE_HEADERSIG:
            raise _Declined("not a header-style signature")
        sig_entries, sig_store, sig_end = _header(data, LEAD_SIZE, MAX_SIG_ENTRIES, MAX_SIG_STORE)
        _check_signature_layout(data, LEAD_SIZE, sig_store, sig_end)
        start = (sig_end + 7) & ~7
        if len(data) < start + 16:
            raise _Declined("truncated after the signature header")
        if data[sig_end:start].strip(b"\0"):
            raise _Declined("bytes in the signature header's padding")
        count, size = _INTRO.unpack_from(data, start + 8)
        if start + 16 + 16 * count + size > MAX_HEADERS:
            raise _Declined("headers larger than this check reads")
        if start + 16 + 16 * count + size > len(data):
            data += file.read(start + 16 + 16 * count + size - len(data))
        entries, store, end = _header(data, start, MAX_ENTRIES, MAX_STORE)
        header = memoryview(data)[start:end]

        sig_tags = [t for t in (_SIG_RSA, _SIG_DSA) if t in sig_entries]
        if len(sig_tags) != 1:
            raise _Declined("not exactly one header signature")
        signature = bytes(_binary(data, sig_store, sig_entries[sig_tags[0]]))

        # digests, as rpm checks every one present
        algo = _int32(data, store, entries.get(_PAYLOADDIGESTALGO))
        hashname = _PAYLOAD_HASHES.get(algo if algo is not None else -1)
        if hashname is None or _PAYLOADDIGEST not in entries:
            raise _Declined("no payload digest this check knows")
        declared = _first_string(data, store, entries[_PAYLOADDIGEST])
        if _SIG_SHA256 in sig_entries and \
                hashlib.sha256(header).hexdigest() != _string(data, sig_store, sig_entries[_SIG_SHA256]):
            raise _Declined("header SHA-256 does not match")
        if _SIG_SHA1 in sig_entries and \
                hashlib.sha1(header, usedforsecurity=False).hexdigest() != \
                _string(data, sig_store, sig_entries[_SIG_SHA1]):
            raise _Declined("header SHA-1 does not match")
        payload_hash = hashlib.new(hashname)
        md5 = hashlib.md5(header, usedforsecurity=False) if _SIG_MD5 in sig_entries else None
        total = len(header)
        chunk: bytes | memoryview = memoryview(data)[end:]
        while chunk:
            payload_hash.update(chunk)
            if md5 is not None:
                md5.update(chunk)
            total += len(chunk)
            chunk = file.read(PAYLOAD_READ)
        if payload_hash.hexdigest() != declared:
            raise _Declined("payload digest does not match")
        if _SIG_SIZE in sig_entries and _int32(data, sig_store, sig_entries[_SIG_SIZE]) != total:
            raise _Declined("size does not match")
        if _SIG_LONGSIZE in sig_entries and _int64(data, sig_store, sig_entries[_SIG_LONGSIZE]) != total:
            raise _Declined("size does not match")
        if md5 is not None and md5.digest() != bytes(_binary(data, sig_store, sig_entries[_SIG_MD5])):
            raise _Declined("MD5 does not match")

        self._verify(bytes(header), signature)

    def _verify(self, header: bytes, signature: bytes) -> None:
        ids, fingerprints = _check_hash_prefix(header, signature)  # rpm checks the prefix; Sequoia not
        sq = self._sq
        sig = sq.Sig.from_bytes(signature)
        if sig.signature_type != self._binary or sig.version != 4:
            raise _Declined("not a v4 binary-document signature")
        certs = self._certs
        lookup: Callable[[Any], list[Any]] = lambda _ids: certs  # noqa: E731 (Sequoia's store callback)
        result = sq.verify(bytes=header, store=lookup, signature=sig)
        for valid in result.valid_sigs:
            key = str(valid.signing_key).lower()
            # rpm finds the key by an Issuer key ID (hashed or not): every one the signature carries,
            # and every Issuer Fingerprint, must name the key that verified
            if str(valid.certificate).lower() in self._fingerprints and ids \
                    and all(key.endswith(i) for i in ids) and all(f == key for f in fingerprints):
                return
        raise _Declined("no valid signature by a pinned key under the key ID it names")


_Entries = dict[int, tuple[int, int, int]]

#: the signature-header tags this check knows, with the one type rpmsign writes for each
_SIG_TYPES = {_SIG_REGION: _BIN, _SIG_SIZE: _INT32, _SIG_MD5: _BIN, _SIG_PAYLOADSIZE: _INT32,
              _SIG_RESERVED: _BIN, _SIG_DSA: _BIN, _SIG_RSA: _BIN, _SIG_SHA1: _STRING,
              _SIG_LONGSIZE: _INT64, _SIG_LONGARCHIVESIZE: _INT64, _SIG_SHA256: _STRING}
_ALIGN = {_INT32: 4, _INT64: 8}
_SIZES = {_INT32: 4, _INT64: 8}


def _check_signature_layout(data: bytes, offset: int, store: int, end: int) -> None:
    """The signature header laid out exactly as rpm's own parser wants it (hdrblobVerifyInfo,
    hdrblobVerifyRegion): the region tag first, its trailer at the end of the store naming every
    entry; then known tags in increasing order, each of its type, aligned, its data inside the
    store before the trailer and after the previous entry's. rpm refuses a header that is not;
    nothing covers these bytes, so this check must refuse it too."""
    count = (store - offset - 16) // 16
    size = end - store
    raw = list(_ENTRY.iter_unpack(memoryview(data)[offset + 16:store]))
    if not raw or raw[0] != (_SIG_REGION, _BIN, size - 16, 16):
        raise _Declined("signature header region tag not first or not at the end of the store")
    if _ENTRY.unpack_from(data, store + size - 16) != (_SIG_REGION, _BIN, -16 * count, 16):
        raise _Declined("signature header region trailer does not cover the header")
    previous_tag, previous_end = _SIG_REGION, 0
    for tag, kind, where, n in raw[1:]:
        if tag <= previous_tag or _SIG_TYPES.get(tag) != kind:
            raise _Declined(f"signature header tag {tag} unknown, out of order or of another type")
        if where < previous_end or where % _ALIGN.get(kind, 1):
            raise _Declined(f"signature header tag {tag}: overlapping or misaligned data")
        if kind in _SIZES:
            length = _SIZES[kind] * n
        elif kind == _STRING:
            if n != 1:
                raise _Declined(f"signature header tag {tag}: not one string")
            nul = data.find(b"\0", store + where, store + size - 16)
            if nul < 0:
                raise _Declined(f"signature header tag {tag}: unterminated string")
            length = nul + 1 - (store + where)
        else:
            length = n
        if n < 1 or where + length > size - 16:
            raise _Declined(f"signature header tag {tag}: data outside the store or over the trailer")
        previous_tag, previous_end = tag, where + length


def _check_one_packet(signature: bytes) -> int:
    """The signature value is one OpenPGP signature packet, exactly (rpm parses no more): where
    its body starts."""
    if not signature or not signature[0] & 0x80:
        raise _Declined("not an OpenPGP packet")
    first = signature[0]
    if first & 0x40:  # new format
        tag = first & 0x3F
        if len(signature) < 2:
            raise _Declined("truncated packet")
        o = signature[1]
        if o < 192:
            head, length = 2, o
        elif o < 224 and len(signature) >= 3:
            head, length = 3, ((o - 192) << 8) + signature[2] + 192
        elif o == 255 and len(signature) >= 6:
            head, length = 6, int.from_bytes(signature[2:6], "big")
        else:
            raise _Declined("partial or truncated packet length")
    else:
        tag, kind = (first >> 2) & 0x0F, first & 0x03
        if kind == 3:
            raise _Declined("indeterminate packet length")
        head = 1 + (1, 2, 4)[kind]
        if len(signature) < head:
            raise _Declined("truncated packet")
        length = int.from_bytes(signature[1:head], "big")
    if tag != 2 or head + length != len(signature):
        raise _Declined("the signature value is not exactly one signature packet")
    return head


def _check_hash_prefix(header: bytes, signature: bytes) -> tuple[set[str], set[str]]:
    """A v4 signature's two-byte digest prefix matches the signed data, as rpm checks it; the
    key IDs and fingerprints its Issuer subpackets (hashed and unhashed) name."""
    body = signature[_check_one_packet(signature):]
    if len(body) < 6 or body[0] != 4:
        raise _Declined("not a v4 signature")
    hashname = _SIG_HASHES.get(body[3])
    if hashname is None:
        raise _Declined("signature hash algorithm this check does not know")
    hashed = 6 + int.from_bytes(body[4:6], "big")
    if len(body) < hashed + 2:
        raise _Declined("truncated signature")
    unhashed = hashed + 2 + int.from_bytes(body[hashed:hashed + 2], "big")
    if len(body) < unhashed + 2:
        raise _Declined("truncated signature")
    digest = hashlib.new(hashname, header, usedforsecurity=False)
    digest.update(body[:hashed])
    digest.update(b"\x04\xff" + hashed.to_bytes(4, "big"))
    if digest.digest()[:2] != body[unhashed:unhashed + 2]:
        raise _Declined("signature digest prefix does not match")
    ids: set[str] = set()
    fingerprints: set[str] = set()
    for area in (body[6:hashed], body[hashed + 2:unhashed]):
        for kind, value in _subpackets(area):
            if kind == 16:  # Issuer
                ids.add(value.hex())
            elif kind == 33 and value[:1] == b"\x04":  # Issuer Fingerprint, v4 key
                fingerprints.add(value[1:].hex())
    return ids, fingerprints


def _subpackets(area: bytes) -> list[tuple[int, bytes]]:
    """(type without the critical bit, value) of each subpacket of a v4 signature's area."""
    found = []
    i = 0
    while i < len(area):
        first = area[i]
        if first < 192:
            length, i = first, i + 1
        elif first < 255:
            if i + 1 >= len(area):
                raise _Declined("truncated subpacket")
            length, i = ((first - 192) << 8) + area[i + 1] + 192, i + 2
        else:
            if i + 5 > len(area):
                raise _Declined("truncated subpacket")
            length, i = int.from_bytes(area[i + 1:i + 5], "big"), i + 5
        if length < 1 or i + length > len(area):
            raise _Declined("subpacket outside its area")
        found.append((area[i] & 0x7F, area[i + 1:i + length]))
        i += length
    return found


def _header(data: bytes, offset: int, max_entries: int, max_store: int) -> tuple[_Entries, int, int]:
    """(tag -> (type, offset, count), where its data store starts, where the header ends)."""
    if data[offset:offset + 8] != _HEADER_MAGIC:
        raise _Declined(f"no header magic at {offset}")
    if len(data) < offset + 16:
        raise _Declined("truncated header")
    count, size = _INTRO.unpack_from(data, offset + 8)
    if count > max_entries or size > max_store:
        raise _Declined("header over rpm's limits")
    store = offset + 16 + 16 * count
    end = store + size
    if end > len(data):
        raise _Declined("header longer than the file")
    entries: _Entries = {}
    for tag, kind, where, n in _ENTRY.iter_unpack(memoryview(data)[offset + 16:store]):
        if where < 0 or n < 1 or where > size or tag in entries:
            raise _Declined(f"bad index entry for tag {tag}")
        entries[tag] = (kind, where, n)
    return entries, store, end


def _binary(data: bytes, store: int, entry: tuple[int, int, int]) -> memoryview:
    kind, where, n = entry
    if kind != _BIN or store + where + n > len(data):
        raise _Declined("bad binary entry")
    return memoryview(data)[store + where:store + where + n]


def _string(data: bytes, store: int, entry: tuple[int, int, int]) -> str:
    kind, where, n = entry
    if kind != _STRING or n != 1:
        raise _Declined("bad string entry")
    return _first_string(data, store, (_STRING_ARRAY, where, 1))


def _first_string(data: bytes, store: int, entry: tuple[int, int, int]) -> str:
    kind, where, _n = entry
    if kind not in (_STRING, _STRING_ARRAY):
        raise _Declined("bad string entry")
    end = data.find(b"\0", store + where)
    if end < 0:
        raise _Declined("unterminated string")
    return data[store + where:end].decode("ascii", errors="replace")


def _int32(data: bytes, store: int, entry: tuple[int, int, int] | None) -> int | None:
    if entry is None:
        return None
    kind, where, n = entry
    if kind != _INT32 or n != 1 or where % 4:
        raise _Declined("bad int32 entry")
    return int(struct.unpack_from(">I", data, store + where)[0])


def _int64(data: bytes, store: int, entry: tuple[int, int, int]) -> int:
    kind, where, n = entry
    if kind != _INT64 or n != 1 or where % 8:
        raise _Declined("bad int64 entry")
    return int(struct.unpack_from(">Q", data, store + where)[0])
