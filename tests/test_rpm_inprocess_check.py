"""The in-process RPM signature check (`mirror.trust.rpmpackage.InProcessCheck`) against `rpmkeys`.

The in-process check is only a fast path: it must never accept a package that
`rpmkeys --checksig` (with `_pkgverify_level signature` and only the pinned keys, as
`PackageVerifier._check_batch` runs it) would reject. Every test here is differential: it
builds real packages (rpmbuild + rpmsign), damages them in one precise way, and asks both.

- a table of damaged packages, each of which must be declined in-process and rejected by rpmkeys;
- signatures whose verdict may legitimately differ (expired key, SHA-1): only the invariant
  "accepted in-process => accepted by rpmkeys" is asserted;
- property tests (hypothesis, deterministic) mutating random bytes of a good package.

FOUND_CASES are the packages the first version of the check accepted although rpmkeys rejected
them (this module found them; each reason says what rpm checks there); the check now declines
them, and the property test over the whole signature header holds.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from fixtures.keys import SigningKey
from fixtures.rpm_repo import RpmPackage, build_rpms, sign_rpms
from mirror.trust.gpg import Keyring
from mirror.trust.rpmpackage import InProcessCheck
from mirror.trust.rpmsig import PackageCheck, PackageVerifier

# -- the package format, parsed here independently of mirror.trust.rpmpackage ----------------------

LEAD = 96
HEADER_MAGIC = b"\x8e\xad\xe8\x01\x00\x00\x00\x00"
# signature-header tags
REGION, SIZE, MD5, PAYLOADSIZE, RESERVED = 62, 1000, 1004, 1007, 1008
DSA, RSA, SHA1, SHA256 = 267, 268, 269, 273
# main-header tags
NAME = 1000


@dataclass(frozen=True)
class Entry:
    tag: int
    type: int
    offset: int  # in the data store
    count: int
    at: int  # where its 16-byte index entry starts in the file


@dataclass(frozen=True)
class Header:
    start: int  # the magic
    entries: dict[int, Entry]
    store: int  # where the data store starts in the file
    end: int  # one past the data store

    @property
    def index(self) -> tuple[int, int]:
        return self.start + 16, self.store

    def data_at(self, tag: int) -> int:
        """The file offset of `tag`'s value."""
        return self.store + self.entries[tag].offset


def parse_header(data: bytes, start: int) -> Header:
    assert data[start:start + 8] == HEADER_MAGIC, f"no header magic at {start}"
    count, size = struct.unpack_from(">II", data, start + 8)
    entries = {}
    for i in range(count):
        at = start + 16 + 16 * i
        tag, kind, offset, n = struct.unpack_from(">iiii", data, at)
        entries[tag] = Entry(tag, kind, offset, n, at)
    store = start + 16 + 16 * count
    return Header(start, entries, store, store + size)


@dataclass(frozen=True)
class Layout:
    sig: Header
    main: Header

    @property
    def padding(self) -> tuple[int, int]:
        return self.sig.end, self.main.start

    @property
    def payload(self) -> int:
        return self.main.end

    @property
    def sig_tag(self) -> int:
        return RSA if RSA in self.sig.entries else DSA

    @property
    def signature(self) -> tuple[int, int]:
        """File span of the OpenPGP signature packet (the RSA/DSA header tag's value)."""
        start = self.sig.data_at(self.sig_tag)
        return start, start + self.sig.entries[self.sig_tag].count

    @property
    def region_trailer(self) -> tuple[int, int]:
        start = self.sig.data_at(REGION)
        return start, start + 16

    @property
    def reserved(self) -> tuple[int, int]:
        start = self.sig.data_at(RESERVED)
        return start, start + self.sig.entries[RESERVED].count


def layout(data: bytes) -> Layout:
    sig = parse_header(data, LEAD)
    return Layout(sig, parse_header(data, sig.end + (-sig.end % 8)))


@dataclass(frozen=True)
class SignaturePacket:
    """Where the interesting parts of a v4 OpenPGP signature packet are, as file offsets."""

    issuer_key_id: int  # the unhashed Issuer subpacket's 8 bytes (what rpm looks the key up by)
    hash_prefix: int  # the 2 "left 16 bits of the hash" bytes


def signature_packet(data: bytes, lay: Layout) -> SignaturePacket:
    start, _end = lay.signature
    ctb = data[start]
    if ctb & 0x40:  # new format
        first = data[start + 1]
        head = 2 if first < 192 else 3 if first < 224 else 6
    else:
        head = {0: 2, 1: 3, 2: 5}[ctb & 0x03]
    body = start + head
    assert data[body] == 4, "not a v4 signature"
    hashed_len = int.from_bytes(data[body + 4:body + 6], "big")
    unhashed = body + 6 + hashed_len
    unhashed_len = int.from_bytes(data[unhashed:unhashed + 2], "big")
    issuer = None
    i = unhashed + 2
    while i < unhashed + 2 + unhashed_len:
        first = data[i]
        if first < 192:
            sub_head, length = 1, first
        elif first < 255:
            sub_head, length = 2, ((first - 192) << 8) + data[i + 1] + 192
        else:
            sub_head, length = 5, int.from_bytes(data[i + 1:i + 5], "big")
        if data[i + sub_head] & 0x7F == 16:  # Issuer
            issuer = i + sub_head + 1
        i += sub_head + length
    assert issuer is not None, "no unhashed Issuer subpacket"
    return SignaturePacket(issuer, unhashed + 2 + unhashed_len)


# -- byte surgery ---------------------------------------------------------------------------------


def flipped(data: bytes, at: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[at] ^= mask
    return bytes(out)


def replaced(data: bytes, at: int, new: bytes) -> bytes:
    return data[:at] + new + data[at + len(new):]


def other_hex_digit(data: bytes, at: int) -> bytes:
    """Keep a hex digest a well-formed hex string, one digit different."""
    return replaced(data, at, b"0" if data[at:at + 1] != b"0" else b"1")


def set_int32(data: bytes, at: int, value: int) -> bytes:
    return replaced(data, at, struct.pack(">i", value))


# -- the packages -----------------------------------------------------------------------------------


@dataclass(repr=False)
class World:
    root: Path
    verifier: PackageVerifier  # pins archive_key
    expired_verifier: PackageVerifier  # pins expired_key
    good: bytes  # hello-1.0, signed by archive_key (sha256)
    donor: bytes  # world-2.0, signed by archive_key: a signature to transplant
    unsigned: bytes
    by_other_key: bytes
    by_expired_key: bytes
    sha1_digest: bytes  # signed by archive_key with a SHA-1 digest
    _n: int = 0

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(f"<World {self.root}>")  # hypothesis would print every package's bytes

    @property
    def fast(self) -> InProcessCheck:
        assert self.verifier.fast is not None, "the in-process check could not be set up"
        return self.verifier.fast

    def file(self, data: bytes, name: str = "pkg") -> Path:
        self._n += 1
        path = self.root / "cases" / f"{self._n:05d}-{name}.rpm"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        return path

    def rpmkeys(self, path: Path, verifier: PackageVerifier | None = None) -> list[str]:
        """rpmkeys' problems with the file (empty: it verified)."""
        return (verifier or self.verifier)._check_batch([PackageCheck(path.name, path)])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, archive_key: SigningKey, other_key: SigningKey,
          expired_key: SigningKey) -> World:
    root = tmp_path_factory.mktemp("inprocess")
    hello, world_pkg = RpmPackage("hello", "1.0", payload_size=2048), RpmPackage("world", "2.0")
    unsigned, good, donor, sha1, other, expired = (
        build_rpms([pkg], root / name)[0] for name, pkg in
        [("unsigned", hello), ("good", hello), ("donor", world_pkg), ("sha1", hello), ("other", hello),
         ("expired", hello)])
    sign_rpms([good, donor], archive_key)
    sign_rpms([sha1], archive_key, digest="sha1")
    sign_rpms([other], other_key)
    sign_rpms([expired], expired_key)

    def verifier(key: SigningKey, name: str) -> PackageVerifier:
        ring = Keyring([key.write_public(root / f"{name}.asc")], [key.fingerprint], root / f"{name}-ring")
        return PackageVerifier(ring, root / "rpmdb")

    return World(root, verifier(archive_key, "archive"), verifier(expired_key, "expired"),
                 good.read_bytes(), donor.read_bytes(), unsigned.read_bytes(), other.read_bytes(),
                 expired.read_bytes(), sha1.read_bytes())


# -- 1. the good package ----------------------------------------------------------------------------


def test_a_good_package_is_accepted_in_process(world: World) -> None:
    path = world.file(world.good, "good")
    assert world.fast.check(path) is None
    assert world.rpmkeys(path) == []
    donor = world.file(world.donor, "donor")
    assert world.fast.check(donor) is None
    assert world.rpmkeys(donor) == []


# -- 2. damaged packages: declined here, rejected by rpmkeys ------------------------------------------


def _transplant(w: World) -> bytes:
    """world-2.0's whole signature header (same key) on hello-1.0's main header and payload."""
    mine, theirs = layout(w.good), layout(w.donor)
    return w.good[:LEAD] + w.donor[LEAD:theirs.main.start] + w.good[mine.main.start:]


def _sig(w: World) -> Layout:
    return layout(w.good)


CASES: dict[str, Callable[[World], bytes]] = {
    "unsigned": lambda w: w.unsigned,
    "signed_by_a_key_not_pinned": lambda w: w.by_other_key,
    "main_header_name_byte_flipped": lambda w: flipped(w.good, _sig(w).main.data_at(NAME), 0x20),
    "payload_byte_flipped": lambda w: flipped(w.good, _sig(w).payload + 100),
    "payload_last_byte_flipped": lambda w: flipped(w.good, len(w.good) - 1),
    "header_sha256_altered": lambda w: other_hex_digit(w.good, _sig(w).sig.data_at(SHA256)),
    "header_sha1_altered": lambda w: other_hex_digit(w.good, _sig(w).sig.data_at(SHA1) + 39),
    "md5_altered": lambda w: flipped(w.good, _sig(w).sig.data_at(MD5) + 7),
    "bytes_appended": lambda w: w.good + b"trailing junk\n",
    "truncated_by_10_bytes": lambda w: w.good[:-10],
    "lead_magic_broken": lambda w: flipped(w.good, 0, 0xFF),
    "signature_value_byte_flipped": lambda w: flipped(w.good, _sig(w).signature[1] - 10),
    "signature_hashed_area_byte_flipped": lambda w: flipped(w.good, _sig(w).signature[0] + 12),
    "signature_of_another_package_transplanted": _transplant,
}

#: Packages rpm 4.18's rpmkeys accepts but the in-process check declines (it is stricter, which is
#: allowed: rpmkeys then decides). Only "declined" is asserted.
STRICTER_CASES: dict[str, Callable[[World], bytes]] = {
    # rpm does not compare RPMSIGTAG_SIZE with the file
    "size_altered": lambda w: set_int32(w.good, _sig(w).sig.data_at(SIZE),
                                        struct.unpack_from(">i", w.good, _sig(w).sig.data_at(SIZE))[0] + 1),
    # rpm skips the signature header's padding unread
    "signature_header_padding_not_zero": lambda w: flipped(w.good, _sig(w).padding[1] - 1),
}


#: Packages the first in-process check accepted although rpmkeys rejected them; why rpm rejects.
FOUND_CASES: list[tuple[str, Callable[[World], bytes], str]] = [
    ("signature_header_region_trailer_damaged",
     lambda w: flipped(w.good, _sig(w).region_trailer[0] + 7),
     "the RPMTAG_HEADERSIGNATURES (62) region trailer's value is never checked"),
    ("signature_header_region_entry_damaged",
     lambda w: flipped(w.good, _sig(w).sig.entries[REGION].at + 7),
     "the index entry of tag 62 (type/offset/count) is never checked"),
    ("signature_entry_count_covers_trailing_junk",
     lambda w: set_int32(w.good, _sig(w).sig.entries[_sig(w).sig_tag].at + 12,
                         _sig(w).sig.entries[_sig(w).sig_tag].count + 256),
     "the OpenPGP signature tag's count overlaps the next entries; Sequoia ignores what follows the packet"),
    ("reserved_space_entry_overlaps_the_region_trailer",
     lambda w: set_int32(w.good, _sig(w).sig.entries[RESERVED].at + 12,
                         _sig(w).sig.entries[RESERVED].count + 1),
     "entries of tags the check skips (1007/1008) are not checked for overlap, type, alignment"),
    ("payloadsize_entry_overlaps_the_reserved_space",
     lambda w: set_int32(w.good, _sig(w).sig.entries[PAYLOADSIZE].at + 12, 2),
     "entries of tags the check skips (1007/1008) are not checked for overlap, type, alignment"),
    ("signature_issuer_key_id_altered",
     lambda w: flipped(w.good, signature_packet(w.good, _sig(w)).issuer_key_id + 7),
     "rpm finds the key by the unhashed Issuer key ID (NOKEY); Sequoia tries every pinned cert"),
    ("signature_hash_prefix_altered",
     lambda w: flipped(w.good, signature_packet(w.good, _sig(w)).hash_prefix),
     "rpm checks the signature's left-16-bits hash prefix (BAD); Sequoia does not"),
]


@pytest.mark.parametrize(
    "make",
    [pytest.param(make, id=name) for name, make in CASES.items()]
    + [pytest.param(make, id=name) for name, make, _reason in FOUND_CASES])
def test_tampered_package_is_left_to_rpmkeys_and_rejected(world: World,
                                                          make: Callable[[World], bytes]) -> None:
    data = make(world)
    assert data != world.good
    path = world.file(data, "tampered")
    problems = world.rpmkeys(path)
    assert problems, "rpmkeys accepted the tampered package: the case does not test what it says"
    why = world.fast.check(path)
    assert why is not None, f"accepted in process, but rpmkeys says: {problems}"


@pytest.mark.parametrize("make", [pytest.param(make, id=name) for name, make in STRICTER_CASES.items()])
def test_stricter_than_rpmkeys_is_declined(world: World, make: Callable[[World], bytes]) -> None:
    path = world.file(make(world), "stricter")
    assert world.fast.check(path) is not None


def test_a_signature_by_an_expired_pinned_key_is_accepted_only_if_rpmkeys_accepts_it(world: World) -> None:
    # rpm 4.18 and Sequoia both accept it (the key was alive when it signed, in 2020): only the
    # invariant is asserted, so a stricter rpm or a stricter policy here stays correct.
    path = world.file(world.by_expired_key, "expired")
    fast = world.expired_verifier.fast
    assert fast is not None
    if fast.check(path) is None:
        assert world.rpmkeys(path, world.expired_verifier) == []
    assert fast.check(world.file(world.good, "good")) is not None  # not a key of this key set


def test_a_sha1_signature_is_accepted_only_if_rpmkeys_accepts_it(world: World) -> None:
    # rpm 4.18 accepts it; Sequoia's standard policy rejects SHA-1 signatures, so it is declined
    # here and rpmkeys decides. Only the invariant is asserted.
    path = world.file(world.sha1_digest, "sha1")
    if world.fast.check(path) is None:
        assert world.rpmkeys(path) == []


# -- 3. the invariant, for random mutations ----------------------------------------------------------


NO_EXPLAIN = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink]


def _regions(lay: Layout, size: int, *, include_found: bool) -> dict[str, tuple[int, int]]:
    """Named file spans to mutate; without `include_found`, none of the bytes of FOUND_CASES' kinds
    (the signature header's index, its region trailer, the OpenPGP signature packet)."""
    regions = {
        "lead": (0, LEAD),
        "signature_intro": (LEAD, LEAD + 16),
        "signature_digests": (lay.signature[1], lay.reserved[0]),
        "reserved": lay.reserved,
        "padding_and_main_intro": (lay.sig.end, lay.main.start + 16),
        "main_index": lay.main.index,
        "main_store": (lay.main.store, lay.main.end),
        "payload": (lay.payload, size),
    }
    if include_found:
        regions |= {"first_8k": (0, min(size, 8192)), "signature_index": lay.sig.index,
                    "signature_packet": lay.signature, "region_trailer": lay.region_trailer}
    return {name: span for name, span in regions.items() if span[1] > span[0]}


def _mutated(world: World, data: st.DataObject, include_found: bool) -> tuple[str, bytes]:
    good = world.good
    regions = _regions(layout(good), len(good), include_found=include_found)
    name = data.draw(st.sampled_from(sorted(regions)), label="region")
    start, end = regions[name]
    at = data.draw(st.integers(start, end - 1), label="offset")
    if data.draw(st.booleans(), label="single byte"):
        new = bytes([good[at] ^ data.draw(st.integers(1, 255), label="xor")])
    else:
        new = data.draw(st.binary(min_size=2, max_size=16), label="bytes")
    new = new[:end - at]  # within the region: never spilling over into a known-bug area
    return name, replaced(good, at, new)


def _accepted_only_what_rpmkeys_accepts(world: World, data: st.DataObject, include_found: bool) -> None:
    region, mutated = _mutated(world, data, include_found)
    with tempfile.NamedTemporaryFile(dir=world.root, suffix=".rpm") as f:
        path = Path(f.name)
        path.write_bytes(mutated)
        verdict = world.fast.check(path)
        assert (world.fast.check_data(mutated) is None) == (verdict is None)  # as a download lands
        if verdict is not None:
            event("declined in process")
            return
        if mutated == world.good:
            event("unchanged bytes, accepted")
            return
        event(f"accepted in process a mutation in {region}")  # --hypothesis-show-statistics
        problems = world.rpmkeys(path)
        assert problems == [], f"accepted in process a mutation in {region} that rpmkeys rejects: {problems}"


_PROPERTY = settings(max_examples=150, deadline=None, derandomize=True, database=None, phases=NO_EXPLAIN,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@_PROPERTY
@given(data=st.data())
def test_in_process_acceptance_implies_rpmkeys_acceptance(world: World, data: st.DataObject) -> None:
    """Mutations anywhere but in the known-bug areas (FOUND_CASES): never accepted unless rpmkeys
    accepts them too (accepted ones are the lead, the reserved space and PAYLOADSIZE's value,
    which rpm does not check either)."""
    _accepted_only_what_rpmkeys_accepts(world, data, include_found=False)


@_PROPERTY
@given(data=st.data())
def test_in_process_acceptance_implies_rpmkeys_acceptance_everywhere(world: World,
                                                                     data: st.DataObject) -> None:
    _accepted_only_what_rpmkeys_accepts(world, data, include_found=True)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_signed_or_digested_bytes_mutated_are_always_declined(world: World, data: st.DataObject) -> None:
    """The main header and the payload are covered by the signature and the digests: any change
    is declined (no rpmkeys needed to know it must be)."""
    good = world.good
    lay = layout(good)
    at = data.draw(st.one_of(st.integers(lay.main.start, lay.main.end - 1),
                             st.integers(lay.payload, len(good) - 1)), label="offset")
    mutated = flipped(good, at, data.draw(st.integers(1, 255), label="xor"))
    with tempfile.NamedTemporaryFile(dir=world.root, suffix=".rpm") as f:
        path = Path(f.name)
        path.write_bytes(mutated)
        assert world.fast.check(path) is not None
        assert world.fast.check_data(mutated) is not None


# -- 4. keys ------------------------------------------------------------------------------------------


def test_certificates_without_a_pinned_fingerprint_are_not_usable(archive_key: SigningKey,
                                                                   other_key: SigningKey) -> None:
    assert not InProcessCheck(other_key.public_armored(), [archive_key.fingerprint]).usable
    assert not InProcessCheck(archive_key.public_armored(), []).usable
    assert not InProcessCheck(archive_key.public_armored(), [other_key.fingerprint]).usable
    both = archive_key.public_armored() + other_key.public_armored()
    assert InProcessCheck(both, [archive_key.fingerprint.lower()]).usable


def test_a_package_signed_by_an_unpinned_cert_in_the_bundle_is_declined(world: World, archive_key: SigningKey,
                                                                        other_key: SigningKey) -> None:
    """Certificates in the bundle that are not pinned are not used."""
    bundle = archive_key.public_armored() + other_key.public_armored()
    check = InProcessCheck(bundle, [archive_key.fingerprint])
    assert check.check(world.file(world.by_other_key, "other")) is not None
    assert check.check(world.file(world.good, "good")) is None


# -- 5. the batch --------------------------------------------------------------------------------------


def test_leave_to_rpmkeys_passes_on_only_the_declined(world: World) -> None:
    batch = [
        PackageCheck("good", world.file(world.good, "good")),
        PackageCheck("unsigned", world.file(world.unsigned, "unsigned")),
        PackageCheck("donor", world.file(world.donor, "donor")),
        PackageCheck("other", world.file(world.by_other_key, "other")),
        PackageCheck("payload", world.file(CASES["payload_byte_flipped"](world), "payload")),
        PackageCheck("missing", world.root / "no-such.rpm"),
    ]
    left = world.verifier.leave_to_rpmkeys(batch)
    assert [p.label for p in left] == ["unsigned", "other", "payload", "missing"]
    problems = world.verifier._check_batch(left)
    assert [p.split(":")[0] for p in problems] == ["unsigned", "other", "payload", "missing"]
    assert world.verifier._check_batch(batch[:3:2]) == []
