"""mirror.trust.gpg against real gpg and throwaway keys (HOSTILE.md C1, library rows B1-B8)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fixtures.keys import SigningKey, make_key
from mirror.errors import SignatureError, WeakDigestError
from mirror.trust.gpg import Keyring, Verdict, key_fingerprints, signature_verdict

WHAT = "dists/stable/InRelease"
RELEASE = (
    b"Origin: Test\n"
    b"Suite: stable\n"
    b"-Dashed: this line gets dash-escaped\n"
    b"SHA256:\n"
    b" 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef 123 main/binary-amd64/Packages\n"
)
PAST = "20200101T000000"


def _gpg(home: Path, *args: str, input: bytes | None = None) -> bytes:
    proc = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--yes", "--no-tty", "--quiet", *args],
        input=input, capture_output=True, check=True,
    )
    return proc.stdout


@dataclass
class Keys:
    a: SigningKey  # the pinned key
    b: SigningKey  # another repo's key
    expired: SigningKey  # made in 2020, expired after one year
    old: SigningKey  # made in 2020, never expires (for an expired *signature*)
    revoked: SigningKey
    revoked_signed: bytes  # clearsigned by `revoked` before it was revoked
    sub: SigningKey  # primary with a signing subkey
    sub_fpr: str
    files: Path  # public key files: <dir>/<name>.asc


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    base = tmp_path_factory.mktemp("keys")
    a = make_key(base / "a", "Repo A <a@example.org>")
    b = make_key(base / "b", "Repo B <b@example.org>")
    expired = make_key(base / "exp", "Expired <e@example.org>", expire="1y", faked_time=PAST)
    old = make_key(base / "old", "Old <o@example.org>", faked_time=PAST)
    revoked = make_key(base / "rev", "Revoked <r@example.org>")
    revoked_signed = revoked.clearsign(RELEASE)
    revoked.revoke()
    sub = make_key(base / "sub", "Subkey <s@example.org>")
    _gpg(sub.home, "--passphrase", "", "--quick-add-key", sub.fingerprint, "ed25519", "sign")
    listing = _gpg(sub.home, "--with-colons", "--list-secret-keys", sub.fingerprint).decode()
    fprs = [line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")]
    files = base / "pub"
    for name, key in {"a": a, "b": b, "exp": expired, "old": old, "rev": revoked, "sub": sub}.items():
        key.write_public(files / f"{name}.asc")
    a.write_public(files / "a.gpg", armor=False)
    try:
        yield Keys(a, b, expired, old, revoked, revoked_signed, sub, fprs[1], files)
    finally:
        for key in (a, b, expired, old, revoked, sub):
            subprocess.run(["gpgconf", "--homedir", str(key.home), "--kill", "all"], check=False)


def keyring(keys: Keys, tmp_path: Path, *names: str, pin: list[str] | None = None) -> Keyring:
    return Keyring([keys.files / n for n in names], pin, tmp_path / "keyring")


# --- accepted ---------------------------------------------------------------------------------


def test_good_clearsigned_by_pinned_key_is_accepted(keys: Keys, tmp_path: Path) -> None:
    signed = keys.a.clearsign(RELEASE)
    assert b"\n- -Dashed:" in signed  # gpg escaped it; the payload must come back unescaped
    v = keyring(keys, tmp_path, "a.asc").verify_clearsigned(signed, what=WHAT)
    assert v.payload == RELEASE
    assert v.fingerprints == (keys.a.fingerprint,)
    assert v.digest_algos == (8,)


@pytest.mark.parametrize("armor", [True, False], ids=["armored", "binary"])
def test_good_detached_by_pinned_key_is_accepted(keys: Keys, tmp_path: Path, armor: bool) -> None:
    sig = keys.a.detach_sign(RELEASE, armor=armor)
    v = keyring(keys, tmp_path, "a.asc").verify_detached(RELEASE, sig, what="dists/stable/Release")
    assert (v.payload, v.fingerprints) == (RELEASE, (keys.a.fingerprint,))


@pytest.mark.parametrize("first", ["unknown", "pinned"])
def test_two_armored_signature_blocks_one_by_unknown_key_are_accepted(
    keys: Keys, tmp_path: Path, first: str
) -> None:
    # apt accepts good + NO_PUBKEY in either order; python-gnupg's `valid` depends on it (B7).
    sigs = [keys.b.detach_sign(RELEASE), keys.a.detach_sign(RELEASE)]
    sig = b"".join(sigs if first == "unknown" else sigs[::-1])
    v = keyring(keys, tmp_path, "a.asc").verify_detached(RELEASE, sig, what="Release.gpg")
    assert v.fingerprints == (keys.a.fingerprint,)


def test_two_signatures_trusted_second_is_accepted(keys: Keys, tmp_path: Path) -> None:
    sig = keys.b.detach_sign(RELEASE, armor=False) + keys.a.detach_sign(RELEASE, armor=False)
    v = keyring(keys, tmp_path, "a.asc").verify_detached(RELEASE, sig, what="Release.gpg")
    assert v.fingerprints == (keys.a.fingerprint,)


def test_two_signatures_trusted_first_is_accepted(keys: Keys, tmp_path: Path) -> None:
    sig = keys.a.detach_sign(RELEASE, armor=False) + keys.b.detach_sign(RELEASE, armor=False)
    v = keyring(keys, tmp_path, "a.asc").verify_detached(RELEASE, sig, what="Release.gpg")
    assert v.fingerprints == (keys.a.fingerprint,)


def test_signature_by_subkey_of_pinned_primary_is_accepted(keys: Keys, tmp_path: Path) -> None:
    signed = _gpg(keys.sub.home, "--local-user", f"{keys.sub_fpr}!", "--clearsign", input=RELEASE)
    ring = keyring(keys, tmp_path, "sub.asc", pin=[keys.sub.fingerprint])
    v = ring.verify_clearsigned(signed, what=WHAT)
    assert v.fingerprints == (keys.sub.fingerprint,)  # the primary, not the subkey


@pytest.mark.parametrize("key_file", ["a.asc", "a.gpg"], ids=["armored", "binary"])
def test_binary_and_armored_keyrings_both_work(keys: Keys, tmp_path: Path, key_file: str) -> None:
    assert key_fingerprints(keys.files / key_file) == [keys.a.fingerprint]
    ring = keyring(keys, tmp_path, key_file)
    assert ring.pinned == {keys.a.fingerprint}
    assert ring.verify_clearsigned(keys.a.clearsign(RELEASE), what=WHAT).payload == RELEASE


def test_pinned_fingerprint_is_normalised(keys: Keys, tmp_path: Path) -> None:
    spaced = " ".join(keys.a.fingerprint.lower()[i : i + 4] for i in range(0, 40, 4))
    assert keyring(keys, tmp_path, "a.asc", "b.asc", pin=[spaced]).pinned == {keys.a.fingerprint}


# --- rejected: keys -----------------------------------------------------------------------------


def test_inrelease_signed_only_by_unknown_key_is_rejected(keys: Keys, tmp_path: Path) -> None:
    with pytest.raises(SignatureError, match=f"{WHAT}: signed by unknown key .*{keys.b.fingerprint}"
                       r".*no public key"):
        keyring(keys, tmp_path, "a.asc").verify_clearsigned(keys.b.clearsign(RELEASE), what=WHAT)


def test_signed_by_key_in_keyring_but_not_pinned_is_rejected(keys: Keys, tmp_path: Path) -> None:
    ring = keyring(keys, tmp_path, "a.asc", "b.asc", pin=[keys.a.fingerprint])
    with pytest.raises(SignatureError, match=f"signed by {keys.b.fingerprint}, which is not one"):
        ring.verify_clearsigned(keys.b.clearsign(RELEASE), what=WHAT)


def test_signature_by_expired_key_is_rejected(keys: Keys, tmp_path: Path) -> None:
    signed = keys.expired.clearsign(RELEASE)  # signed in 2020, while the key was valid
    with pytest.raises(SignatureError, match=f"{WHAT}: signature by expired key "
                       f"{keys.expired.fingerprint}"):
        keyring(keys, tmp_path, "exp.asc").verify_clearsigned(signed, what=WHAT)


def test_expired_signature_is_rejected(keys: Keys, tmp_path: Path) -> None:
    signed = _gpg(keys.old.home, "--faked-system-time", PAST, "--default-sig-expire", "1d",
                  "--local-user", keys.old.fingerprint, "--clearsign", input=RELEASE)
    with pytest.raises(SignatureError, match=f"expired signature by key {keys.old.fingerprint}"):
        keyring(keys, tmp_path, "old.asc").verify_clearsigned(signed, what=WHAT)


def test_signature_by_revoked_key_is_rejected(keys: Keys, tmp_path: Path) -> None:
    with pytest.raises(SignatureError, match=f"signature by revoked key {keys.revoked.fingerprint}"):
        keyring(keys, tmp_path, "rev.asc").verify_clearsigned(keys.revoked_signed, what=WHAT)


def test_verifier_ignores_planted_gpg_conf(keys: Keys, tmp_path: Path) -> None:
    ring = keyring(keys, tmp_path, "a.asc")
    (ring.home / "gpg.conf").write_text(
        "auto-key-retrieve\nkeyserver hkp://127.0.0.1:9\ntrust-model always\n"
    )
    with pytest.raises(SignatureError, match="no public key"):
        ring.verify_clearsigned(keys.b.clearsign(RELEASE), what=WHAT)


# --- rejected: signatures -----------------------------------------------------------------------


def test_bad_signature_is_rejected(keys: Keys, tmp_path: Path) -> None:
    signed = keys.a.clearsign(RELEASE).replace(b"Suite: stable", b"Suite: evil__")
    with pytest.raises(SignatureError, match=f"{WHAT}: bad signature"):
        keyring(keys, tmp_path, "a.asc").verify_clearsigned(signed, what=WHAT)


def test_bad_detached_signature_next_to_good_one_is_rejected(keys: Keys, tmp_path: Path) -> None:
    sig = keys.a.detach_sign(RELEASE, armor=False) + keys.b.detach_sign(b"other", armor=False)
    with pytest.raises(SignatureError, match="bad signature"):
        keyring(keys, tmp_path, "a.asc", "b.asc").verify_detached(RELEASE, sig, what="Release.gpg")


@pytest.mark.parametrize("digest", ["SHA1", "RIPEMD160"])
def test_sha1_digest_signature_is_rejected(keys: Keys, tmp_path: Path, digest: str) -> None:
    ring = keyring(keys, tmp_path, "a.asc")
    with pytest.raises(WeakDigestError, match=f"{WHAT}: weak digest algorithm {digest}"):
        ring.verify_clearsigned(keys.a.clearsign(RELEASE, digest=digest), what=WHAT)
    with pytest.raises(WeakDigestError, match=f"weak digest algorithm {digest}"):
        ring.verify_detached(RELEASE, keys.a.detach_sign(RELEASE, digest=digest), what=WHAT)


# --- rejected: content outside the signed message ----------------------------------------------


def test_unsigned_text_before_signed_block_is_rejected(keys: Keys, tmp_path: Path) -> None:
    evil = b"Origin: Evil\nSHA256:\n " + b"0" * 64 + b" 0 main/binary-amd64/Packages\n\n"
    with pytest.raises(SignatureError, match=f"{WHAT}: content outside the signed message"):
        keyring(keys, tmp_path, "a.asc").verify_clearsigned(
            evil + keys.a.clearsign(RELEASE), what=WHAT
        )


@pytest.mark.parametrize("prefix", [b"\n", b" \n", b"\xef\xbb\xbf"], ids=["blank", "space", "bom"])
def test_anything_before_the_begin_line_is_rejected(
    keys: Keys, tmp_path: Path, prefix: bytes
) -> None:
    with pytest.raises(SignatureError, match="content outside the signed message"):
        keyring(keys, tmp_path, "a.asc").verify_clearsigned(
            prefix + keys.a.clearsign(RELEASE), what=WHAT
        )


def test_text_after_signed_block_is_rejected(keys: Keys, tmp_path: Path) -> None:
    ring = keyring(keys, tmp_path, "a.asc")
    signed = keys.a.clearsign(RELEASE)
    assert ring.verify_clearsigned(signed + b"\n  \n", what=WHAT).payload == RELEASE
    with pytest.raises(SignatureError, match="content outside the signed message"):
        ring.verify_clearsigned(signed + b"Origin: Evil\n", what=WHAT)


def test_two_signed_blocks_are_rejected(keys: Keys, tmp_path: Path) -> None:
    second = keys.a.clearsign(b"Origin: Evil\n")
    with pytest.raises(SignatureError, match="more than one signed message"):
        keyring(keys, tmp_path, "a.asc").verify_clearsigned(
            keys.a.clearsign(RELEASE) + second, what=WHAT
        )


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda s: s.replace(b"Hash: SHA256\n", b"Hash: SHA256\nNotDashEscaped: yes\n"),
         "unexpected armor header"),
        (lambda s: s.replace(b"Origin: Test\n", b"Origin: Test\n-Evil: 1\n"), "not dash-escaped"),
        (lambda s: s.replace(b"Origin", b"Ori\0gin"), "NUL byte"),
        (lambda s: s[: s.index(b"-----END")], "unterminated signature block"),
        (lambda s: s[: s.index(b"-----BEGIN PGP SIGNATURE")], "no signature block"),
        (lambda s: b"<html><body>Login required</body></html>\n", "content outside"),
    ],
    ids=["extra-armor-header", "undashed-line", "nul", "no-end", "no-signature", "html"],
)
def test_malformed_clearsigned_file_is_rejected(
    keys: Keys, tmp_path: Path, mutate: object, reason: str
) -> None:
    assert callable(mutate)
    with pytest.raises(SignatureError, match=reason):
        keyring(keys, tmp_path, "a.asc").verify_clearsigned(
            mutate(keys.a.clearsign(RELEASE)), what=WHAT
        )


@pytest.mark.parametrize(
    ("variant", "reason"),
    [("after", "NODATA"), ("before", "not an OpenPGP signature"), ("between", "NODATA"),
     ("armored-after", "non-signature data"), ("literal", "no signature found"),
     ("html", "not an OpenPGP signature")],
)
def test_detached_signature_with_payload_is_rejected(
    keys: Keys, tmp_path: Path, variant: str, reason: str
) -> None:
    # apt's test-cve-2019-3462-Release.gpg-payload, HOSTILE case 5.
    binary = keys.a.detach_sign(RELEASE, armor=False)
    sig = {
        "after": binary + b"Origin: Evil\n",
        "before": b"Origin: Evil\n" + binary,
        "between": binary + b"\0\0garbage" + binary,
        "armored-after": keys.a.detach_sign(RELEASE) + b"Origin: Evil\n",
        "literal": _gpg(keys.a.home, "--local-user", keys.a.fingerprint, "--sign", input=RELEASE),
        "html": b"<html>captive portal</html>\n",
    }[variant]
    with pytest.raises(SignatureError, match=f"^Release.gpg: .*{reason}"):
        keyring(keys, tmp_path, "a.asc").verify_detached(RELEASE, sig, what="Release.gpg")


# --- keys and keyring homes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"", b"  \n", b"this is not a key\n",
     b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nAAAA\n-----END PGP PUBLIC KEY BLOCK-----\n"],
    ids=["empty", "whitespace", "garbage", "bad-armor"],
)
def test_key_fingerprints_rejects_empty_or_garbage_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "key.asc"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=str(path)):
        key_fingerprints(path)
    with pytest.raises(ValueError, match="cannot read"):
        key_fingerprints(tmp_path / "missing.asc")


def test_key_fingerprints_rejects_secret_key(keys: Keys, tmp_path: Path) -> None:
    path = tmp_path / "secret.asc"
    path.write_bytes(_gpg(keys.a.home, "--armor", "--export-secret-keys", keys.a.fingerprint))
    with pytest.raises(ValueError, match="secret key"):
        key_fingerprints(path)


def test_pinned_fingerprint_missing_from_key_files_is_rejected(keys: Keys, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"{keys.b.fingerprint} is not in the key files"):
        keyring(keys, tmp_path, "a.asc", pin=[keys.b.fingerprint])
    with pytest.raises(ValueError, match="not a full OpenPGP fingerprint"):
        keyring(keys, tmp_path, "a.asc", pin=[keys.a.fingerprint[-16:]])


def test_keyring_home_is_reused_or_rebuilt_with_only_the_given_keys(
    keys: Keys, tmp_path: Path
) -> None:
    first = keyring(keys, tmp_path, "a.asc")
    marker = first.home / "mirror-keyring.sha256"
    inode = marker.stat().st_ino
    keyring(keys, tmp_path, "a.asc")  # same bytes: reused as is
    assert marker.stat().st_ino == inode
    ring = keyring(keys, tmp_path, "b.asc")  # other keys: rebuilt, A is gone
    assert ring.verify_clearsigned(keys.b.clearsign(RELEASE), what=WHAT).payload == RELEASE
    with pytest.raises(SignatureError, match="unknown key"):
        ring.verify_clearsigned(keys.a.clearsign(RELEASE), what=WHAT)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keyring"]  # no temp dirs left


def test_keyring_refuses_to_replace_a_foreign_directory(keys: Keys, tmp_path: Path) -> None:
    (tmp_path / "keyring").mkdir()
    (tmp_path / "keyring" / "precious").write_text("x")
    with pytest.raises(ValueError, match="not a keyring built by mirror"):
        keyring(keys, tmp_path, "a.asc")
    assert (tmp_path / "keyring" / "precious").exists()


# --- the verdict, from hand-written status lines ----------------------------------------------

A = "A" * 40
B = "B" * 40
SUB = "5" * 40


def _good(fpr: str, algo: int = 8, primary: str | None = None) -> str:
    return (
        f"[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG {fpr[-16:]} Someone <s@x>\n"
        f"[GNUPG:] VALIDSIG {fpr} 2026-01-01 1767225600 0 4 0 22 {algo} 00 {primary or fpr}\n"
    )


def _unknown(fpr: str) -> str:
    return (
        f"[GNUPG:] NEWSIG\n[GNUPG:] ERRSIG {fpr[-16:]} 22 8 00 1767225600 9 {fpr}\n"
        f"[GNUPG:] NO_PUBKEY {fpr[-16:]}\n"
    )


def _flag(keyword: str, fpr: str) -> str:
    return (
        f"[GNUPG:] NEWSIG\n[GNUPG:] {keyword} {fpr[-16:]} Someone <s@x>\n"
        f"[GNUPG:] VALIDSIG {fpr} 2020-01-01 1577836800 0 4 0 22 8 00 {fpr}\n"
    )


VERDICTS: list[tuple[str, str, int, str | Verdict]] = [
    ("good", _good(A), 0, Verdict((A,), (8,))),
    ("good-subkey", _good(SUB, primary=A), 0, Verdict((A,), (8,))),
    ("unknown-then-good", _unknown(B) + _good(A), 2, Verdict((A,), (8,))),
    ("good-then-unknown", _good(A) + _unknown(B), 2, Verdict((A,), (8,))),
    ("good-plus-unpinned-good", _good(B) + _good(A), 0, Verdict((A,), (8,))),
    ("two-plaintexts", _good(A) + "[GNUPG:] ERROR proc_pkt.plaintext 89_BAD_DATA\n", 2,
     "gpg error proc_pkt.plaintext 89_BAD_DATA"),
    ("rc-2-without-explanation", _good(A), 2, "gpg exit status 2"),
    ("rc-1-with-unknown", _good(A) + _unknown(B), 1, "gpg exit status 1"),
    ("failure", _good(A) + "[GNUPG:] FAILURE gpg-exit 33554433\n", 0, "gpg failure"),
    ("nodata", "[GNUPG:] NODATA 1\n", 2, "not valid OpenPGP signed data \\(gpg NODATA 1\\)"),
    ("expkeysig", _flag("EXPKEYSIG", A), 0, f"signature by expired key {A}"),
    ("revkeysig", _flag("REVKEYSIG", A), 0, f"signature by revoked key {A}"),
    ("expsig", _flag("EXPSIG", A), 1, f"expired signature by key {A}"),
    ("expkeysig-next-to-good", _good(A) + _flag("EXPKEYSIG", B), 0, "expired key"),
    ("badsig-next-to-good", _good(A) + "[GNUPG:] NEWSIG\n[GNUPG:] BADSIG 1234 x\n", 1,
     "bad signature by key 1234"),
    ("sha1", _good(A, algo=2), 0, "weak digest algorithm SHA1"),
    ("md5", _good(A, algo=1), 0, "weak digest algorithm MD5"),
    ("ripemd160", _good(A, algo=3), 0, "weak digest algorithm RIPEMD160"),
    ("errsig-weak-digest", "[GNUPG:] NEWSIG\n[GNUPG:] ERRSIG 1234 22 1 01 0 1 -\n", 2,
     "weak digest algorithm MD5"),
    ("errsig-other", "[GNUPG:] NEWSIG\n[GNUPG:] ERRSIG 1234 99 8 00 0 4 -\n", 2,
     "could not be checked \\(gpg error 4\\)"),
    ("only-unknown", _unknown(B), 2, f"signed by unknown key {B}"),
    ("only-unpinned", _good(B), 0, f"signed by {B}, which is not one of this repo's keys"),
    ("goodsig-before-newsig", _good(A).replace("[GNUPG:] NEWSIG\n", ""), 0, "before any NEWSIG"),
    ("goodsig-without-validsig", "[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG 1234 x\n", 0,
     "no clear verdict"),
    ("validsig-without-goodsig", _good(A).replace("GOODSIG", "TRUST_UNDEFINED"), 0,
     "no clear verdict"),
    ("newsig-without-result", _good(A) + "[GNUPG:] NEWSIG\n", 0, "no clear verdict"),
    ("validsig-bad-algo-field", _good(A).replace(" 22 8 00", " 22 x 00"), 0, "malformed VALIDSIG"),
    ("nothing", "", 0, "no signature found"),
    ("human-lines-ignored", "gpg: [GNUPG:] GOODSIG fake\n" + _good(A), 0, Verdict((A,), (8,))),
]


@pytest.mark.parametrize(("status", "rc", "expected"), [row[1:] for row in VERDICTS],
                         ids=[row[0] for row in VERDICTS])
def test_signature_verdict(status: str, rc: int, expected: str | Verdict) -> None:
    if isinstance(expected, Verdict):
        assert signature_verdict(status, rc, frozenset({A}), what=WHAT) == expected
    else:
        with pytest.raises(SignatureError if "weak" not in expected else WeakDigestError,
                           match=f"^{WHAT}: .*{expected}"):
            signature_verdict(status, rc, frozenset({A}), what=WHAT)


def test_key_fingerprints_follow_the_file_content_not_its_name(keys: Keys, tmp_path: Path) -> None:
    """gpg is asked once per key content (mirror.trust.gpg._SHOWN); a file rewritten with other
    keys is read again, and a copy of known keys elsewhere needs no gpg at all."""
    path = tmp_path / "vendor.asc"
    path.write_bytes((keys.files / "a.asc").read_bytes())
    assert key_fingerprints(path) == [keys.a.fingerprint]
    path.write_bytes((keys.files / "b.asc").read_bytes())
    assert key_fingerprints(path) == [keys.b.fingerprint]
    copy = tmp_path / "copy.asc"
    copy.write_bytes(path.read_bytes())
    assert key_fingerprints(copy) == [keys.b.fingerprint]
    key_fingerprints(copy).append("mutated")  # the cache hands out copies
    assert key_fingerprints(copy) == [keys.b.fingerprint]
