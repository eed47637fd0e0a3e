"""Is this signed root file (InRelease, Release + Release.gpg, repomd.xml + .asc) trusted for ONE repo?

Three steps, each small enough to audit:

1. Structure, before gpg sees anything.  A clearsigned file must be exactly one signed message
   (apt's ``SplitClearSignedFile``, stricter): the first line is ``-----BEGIN PGP SIGNED
   MESSAGE-----`` (no leading blank lines, no BOM: apt allows nothing either), the armor headers
   are only ``Hash:`` lines, every message line starting with ``-`` is dash-escaped, there is one
   signature block, and after it nothing but whitespace.  No NUL bytes.  An armored detached
   signature may hold one or more ``BEGIN/END PGP SIGNATURE`` blocks with only whitespace around
   them (apt's Release.gpg check); binary ones are left to gpg, whose NODATA lines we refuse.
2. gpg runs against an isolated home that holds only this repo's keys: ``--no-options`` (a planted
   gpg.conf is ignored), ``--no-autostart`` (no agent, no dirmngr, no key retrieval), status lines
   on their own fd (stdout), payload written by gpg to its own ``--output`` file.  The payload we
   return is what gpg verified: gpg's plaintext for clearsigned files, the exact bytes we handed to
   gpg for detached ones.  The raw download is never parsed.
3. :func:`signature_verdict`, a pure function of the status lines and the exit code, decides.

Policy (see :func:`signature_verdict` for the full list):

* Every ``ERROR``, ``FAILURE``, ``NODATA``, ``BADSIG``, ``EXPSIG``, ``EXPKEYSIG``, ``REVKEYSIG``
  line rejects the whole file, whatever else was seen (stricter than apt, which ignores a
  worthless signature next to a good one).
* A signature by a key this keyring does not hold (``ERRSIG`` with code 9 / ``NO_PUBKEY``) is
  ignored, in any position, if at least one good pinned signature exists: apt does the same, and
  archives sign with old and new keys during rotations.  gpg then exits 2; a non-zero exit is
  accepted only in exactly that case.  Any other ``ERRSIG`` rejects.
* A good signature counts only if its *primary* fingerprint (VALIDSIG field 10: a subkey may sign)
  is pinned.  If any counted signature uses MD5, SHA-1 or RIPEMD-160 the file is refused with
  :class:`WeakDigestError` (apt treats those as untrusted).

Blocking: callers wrap these calls in ``asyncio.to_thread``.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mirror.errors import SignatureError, WeakDigestError

log = logging.getLogger(__name__)

GPG = "gpg"
GPG_TIMEOUT = 120.0  # seconds; callers cap root files at ~10 MB, gpg needs well under a second
_MARKER = "mirror-keyring.sha256"  # digest of the key bytes a home was built from
_COMMON = ("--no-options", "--batch", "--no-tty", "--no-autostart")
_VERIFY = (*_COMMON, "--no-random-seed-file", "--trust-model", "always", "--status-fd", "1")

WEAK_DIGESTS = {1: "MD5", 2: "SHA1", 3: "RIPEMD160"}  # RFC 4880 hash ids, as apt's gpgv method
ERRSIG_NO_PUBKEY = "9"  # GPG_ERR_NO_PUBKEY in ERRSIG's rc field
_FATAL = {
    "ERROR": "gpg error {}",
    "FAILURE": "gpg failure {}",
    "NODATA": "not valid OpenPGP signed data (gpg NODATA {})",
}
_BAD = {
    "BADSIG": "bad signature by key {}",
    "EXPSIG": "expired signature by key {}",
    "EXPKEYSIG": "signature by expired key {}",
    "REVKEYSIG": "signature by revoked key {}",
}
_FPR = re.compile(r"[0-9A-F]{40}|[0-9A-F]{64}")


@dataclass(frozen=True, slots=True)
class Verified:
    payload: bytes  # exactly the bytes gpg verified (for clearsigned: gpg's plaintext output)
    fingerprints: tuple[str, ...]  # primary fingerprints (upper hex) of the good, pinned signatures
    digest_algos: tuple[int, ...]  # VALIDSIG hash algo ids of those signatures


@dataclass(frozen=True, slots=True)
class Verdict:
    """What :func:`signature_verdict` found: the good pinned signatures (same order)."""

    fingerprints: tuple[str, ...]
    digest_algos: tuple[int, ...]


# --- 3. the verdict ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Sig:
    results: list[tuple[str, list[str]]] = field(default_factory=list)  # (keyword, args)
    validsig: list[str] | None = None


def signature_verdict(status: str, returncode: int, pinned: frozenset[str], *, what: str) -> Verdict:
    """Decide from gpg's ``[GNUPG:]`` status lines and exit code.  Pure; raises or returns.

    Rejects (SignatureError, or WeakDigestError for a weak digest) when:
    any ERROR/FAILURE/NODATA line; any BADSIG/EXPSIG/EXPKEYSIG/REVKEYSIG; a signature status
    before the first NEWSIG; an ERRSIG other than "no public key"; a signature that is neither
    GOODSIG+VALIDSIG nor ERRSIG-no-pubkey (or has several results); a counted signature with an
    MD5/SHA1/RIPEMD160 digest; no good signature by a pinned primary key; a non-zero exit code
    unless unknown-key signatures explain it.
    """
    sigs: list[_Sig] = []
    fatal: list[str] = []
    for line in status.splitlines():
        if not line.startswith("[GNUPG:] "):
            continue
        words = line[len("[GNUPG:] ") :].split()
        if not words:
            continue
        keyword, args = words[0], words[1:]
        if keyword in _FATAL:
            fatal.append(_FATAL[keyword].format(" ".join(args)))
        elif keyword == "NEWSIG":
            sigs.append(_Sig())
        elif keyword in _BAD or keyword in ("GOODSIG", "ERRSIG", "VALIDSIG"):
            if not sigs:
                raise SignatureError(f"{what}: gpg status {keyword} before any NEWSIG")
            if keyword == "VALIDSIG":
                if sigs[-1].validsig is not None or len(args) < 9 or not args[7].isdigit():
                    raise SignatureError(f"{what}: malformed VALIDSIG status from gpg")
                sigs[-1].validsig = args
            else:
                sigs[-1].results.append((keyword, args))

    # The most precise reason first: a flagged signature, then gpg's own errors.
    for sig in sigs:
        v = sig.validsig
        who = (v[9] if len(v) > 9 else v[0]).upper() if v else None
        for keyword, args in sig.results:
            if keyword in _BAD:
                key = who or (args[0] if args else "?")
                raise SignatureError(f"{what}: {_BAD[keyword].format(key)}")
            if keyword == "ERRSIG" and (len(args) < 6 or args[5] != ERRSIG_NO_PUBKEY):
                algo = _int(args[2]) if len(args) > 2 else None
                if algo in WEAK_DIGESTS:
                    raise WeakDigestError(f"{what}: weak digest algorithm {WEAK_DIGESTS[algo]}")
                code = args[5] if len(args) > 5 else "?"
                raise SignatureError(f"{what}: signature could not be checked (gpg error {code})")
    if fatal:
        raise SignatureError(f"{what}: {fatal[0]}")

    good: list[tuple[str, int]] = []  # (primary fingerprint, digest algo)
    unknown: list[str] = []  # key ids / fingerprints of signatures whose key we do not hold
    for sig in sigs:
        kinds = [keyword for keyword, _ in sig.results]
        v = sig.validsig
        if kinds == ["GOODSIG"] and v is not None:
            good.append(((v[9] if len(v) > 9 else v[0]).upper(), int(v[7])))
        elif kinds == ["ERRSIG"] and v is None:
            args = sig.results[0][1]
            unknown.append(args[6] if len(args) > 6 and args[6] != "-" else args[0])
        else:
            raise SignatureError(f"{what}: gpg gave no clear verdict for a signature ({kinds})")

    counted = [(fpr, algo) for fpr, algo in good if fpr in pinned]
    for fpr, algo in counted:
        if algo in WEAK_DIGESTS:
            raise WeakDigestError(
                f"{what}: weak digest algorithm {WEAK_DIGESTS[algo]} in signature by {fpr}"
            )
    if not counted:
        if good:
            raise SignatureError(
                f"{what}: signed by {good[0][0]}, which is not one of this repo's keys"
            )
        if unknown:
            raise SignatureError(
                f"{what}: signed by unknown key {unknown[0]} (no public key in this repo's keyring)"
            )
        raise SignatureError(f"{what}: no signature found (gpg exit status {returncode})")
    if returncode != 0 and not (returncode == 2 and unknown):  # gpg exits 2 for a missing key
        raise SignatureError(f"{what}: gpg exit status {returncode}")
    return Verdict(tuple(f for f, _ in counted), tuple(a for _, a in counted))


def _int(text: str) -> int:
    return int(text) if text.isdigit() else -1


# --- 1. structure -----------------------------------------------------------------------------

_BEGIN_MSG = b"-----BEGIN PGP SIGNED MESSAGE-----"
_BEGIN_SIG = b"-----BEGIN PGP SIGNATURE-----"
_END_SIG = b"-----END PGP SIGNATURE-----"


def check_clearsigned(data: bytes, *, what: str) -> None:
    """Exactly one clearsigned message and nothing around it, or SignatureError."""

    def fail(reason: str) -> SignatureError:
        return SignatureError(f"{what}: {reason}")

    if b"\0" in data:
        raise fail("NUL byte in signed file")
    lines = [line.rstrip(b" \t\r") for line in data.split(b"\n")]
    if lines[0] != _BEGIN_MSG:
        raise fail("content outside the signed message (file does not start with "
                   "-----BEGIN PGP SIGNED MESSAGE-----)")
    i = 1
    while i < len(lines) and lines[i]:
        if not lines[i].startswith(b"Hash: "):
            raise fail(f"unexpected armor header {lines[i][:40]!r} in signed message")
        i += 1
    i += 1  # the empty line ending the armor headers
    while i < len(lines) and lines[i] != _BEGIN_SIG:
        if lines[i] == _BEGIN_MSG:
            raise fail("more than one signed message")
        if lines[i].startswith(b"-") and not lines[i].startswith(b"- "):
            raise fail(f"line not dash-escaped in signed message: {lines[i][:40]!r}")
        i += 1
    if i >= len(lines):
        raise fail("no signature block after the signed message")
    while i < len(lines) and lines[i] != _END_SIG:
        i += 1
        if i < len(lines) and lines[i] in (_BEGIN_MSG, _BEGIN_SIG):
            raise fail("unterminated signature block")
    if i >= len(lines):
        raise fail("unterminated signature block")
    for line in lines[i + 1 :]:
        if line == _BEGIN_MSG:
            raise fail("more than one signed message")
        if line.strip():
            raise fail("content outside the signed message (after the signature)")


def clearsigned_payload(data: bytes, *, what: str) -> bytes:
    """The signed text of a clearsigned file that has exactly one signed block and nothing around
    it (`check_clearsigned`, as at sync): dash-escaping undone, trailing whitespace dropped."""
    check_clearsigned(data, what=what)
    lines = data.split(b"\n")
    i = 1
    while lines[i].rstrip(b" \t\r"):  # armor headers ("Hash: ...") up to the empty line
        i += 1
    body: list[bytes] = []
    for line in lines[i + 1:]:
        line = line.rstrip(b" \t\r")
        if line == _BEGIN_SIG:
            break
        body.append(line[2:] if line.startswith(b"- ") else line)
    return b"\n".join(body).rstrip(b"\n") + b"\n"


def check_detached(signature: bytes, *, what: str) -> None:
    """An armored detached signature is only signature blocks and whitespace; binary: gpg's job."""
    if not signature.lstrip().startswith(b"-----BEGIN PGP"):
        if not signature or not signature[0] & 0x80:
            raise SignatureError(f"{what}: not an OpenPGP signature")
        return
    if b"\0" in signature:
        raise SignatureError(f"{what}: NUL byte in armored signature")
    inside = False
    for raw in signature.split(b"\n"):
        line = raw.strip()
        if not inside and line == _BEGIN_SIG:
            inside = True
        elif inside and line == _END_SIG:
            inside = False
        elif line.startswith(b"-----") if inside else line:  # another armor line / stray text
            raise SignatureError(f"{what}: detached signature file contains non-signature data")
    if inside:
        raise SignatureError(f"{what}: unterminated signature block")


# --- 2. keys and gpg --------------------------------------------------------------------------


def _primary_fingerprints(colons: str) -> tuple[list[str], bool]:
    """Primary fingerprints from --with-colons output, and whether a secret key was listed."""
    fprs: list[str] = []
    after_primary = has_secret = False
    for line in colons.splitlines():
        rec = line.split(":")
        if rec[0] in ("pub", "sec"):
            after_primary = True
            has_secret = has_secret or rec[0] == "sec"
        elif rec[0] == "fpr" and after_primary and len(rec) > 9:
            fprs.append(rec[9].upper())
            after_primary = False
        elif rec[0] in ("sub", "ssb", "uid"):
            after_primary = False
    return fprs, has_secret


#: Primary fingerprints by the sha256 of a key file's bytes: a sync reads each key file twice
#: (validating the config, then building the repo's keyring), and a long-running server many
#: times; gpg is asked once per content.
_SHOWN: dict[str, list[str]] = {}


def key_fingerprints(key_file: Path) -> list[str]:
    """Primary fingerprints in an armored or binary key file; no keyring is touched."""
    try:
        data = key_file.read_bytes()
    except OSError as exc:
        raise ValueError(f"{key_file}: cannot read key file: {exc.strerror}") from exc
    if not data.strip():
        raise ValueError(f"{key_file}: empty key file")
    digest = hashlib.sha256(data).hexdigest()
    if (known := _SHOWN.get(digest)) is not None:
        return list(known)
    with tempfile.TemporaryDirectory(prefix="mirror-gpg-") as tmp:
        proc = subprocess.run(  # the bytes just read and hashed, on stdin
            [GPG, "--homedir", tmp, *_COMMON, "--with-colons", "--show-keys"],
            input=data, capture_output=True, check=False, timeout=GPG_TIMEOUT,
        )
    fprs, has_secret = _primary_fingerprints(proc.stdout.decode("utf-8", "replace"))
    if has_secret:
        raise ValueError(f"{key_file}: contains a secret key; give the public key only")
    if proc.returncode != 0 or not fprs:
        detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no keys"]
        raise ValueError(f"{key_file}: no usable OpenPGP public key ({detail[0]})")
    _SHOWN[digest] = fprs
    return list(fprs)


def _normalise(fingerprint: str) -> str:
    fpr = "".join(fingerprint.split()).upper()
    if not _FPR.fullmatch(fpr):
        raise ValueError(f"not a full OpenPGP fingerprint: {fingerprint!r}")
    return fpr


def keyring_home(storage_root: Path, repo: str) -> Path:
    """Where a repo's `Keyring` keeps its GnuPG home."""
    return storage_root / "keyrings" / repo


class Keyring:
    """An isolated GnuPG home holding only one repo's keys, and the fingerprints it pins."""

    def __init__(
        self, key_files: Sequence[Path], fingerprints: Sequence[str] | None, home: Path
    ) -> None:
        if not key_files:
            raise ValueError("no key files given")
        available: set[str] = set()
        for key_file in key_files:
            available.update(key_fingerprints(Path(key_file)))
        if fingerprints is None:
            pinned = frozenset(available)
        else:
            pinned = frozenset(_normalise(f) for f in fingerprints)
            if not pinned:
                raise ValueError("empty fingerprint list")
            missing = sorted(pinned - available)
            if missing:
                raise ValueError(f"fingerprint {missing[0]} is not in the key files")
        self._pinned = pinned
        self.home = _build_home(home, [Path(p) for p in key_files], available)

    @property
    def pinned(self) -> frozenset[str]:
        return self._pinned

    def verify_clearsigned(self, data: bytes, *, what: str) -> Verified:
        check_clearsigned(data, what=what)
        with tempfile.TemporaryDirectory(prefix="mirror-verify-") as tmp:
            out = Path(tmp) / "payload"
            status, rc = self._gpg("--output", str(out), "--decrypt", input=data, what=what)
            verdict = signature_verdict(status, rc, self._pinned, what=what)
            if sum(line.startswith("[GNUPG:] PLAINTEXT ") for line in status.splitlines()) != 1:
                raise SignatureError(f"{what}: expected exactly one signed plaintext")
            try:
                payload = out.read_bytes()
            except OSError as exc:
                raise SignatureError(f"{what}: gpg wrote no verified output") from exc
        return Verified(payload, verdict.fingerprints, verdict.digest_algos)

    def verify_detached(self, data: bytes, signature: bytes, *, what: str) -> Verified:
        check_detached(signature, what=what)
        with tempfile.TemporaryDirectory(prefix="mirror-verify-") as tmp:
            sig_file, data_file = Path(tmp) / "sig", Path(tmp) / "data"
            sig_file.write_bytes(signature)
            data_file.write_bytes(data)
            status, rc = self._gpg("--verify", "--", str(sig_file), str(data_file), what=what)
        if any(line.startswith("[GNUPG:] PLAINTEXT") for line in status.splitlines()):
            raise SignatureError(f"{what}: detached signature file contains non-signature data")
        verdict = signature_verdict(status, rc, self._pinned, what=what)
        return Verified(data, verdict.fingerprints, verdict.digest_algos)

    def _gpg(self, *args: str, input: bytes | None = None, what: str) -> tuple[str, int]:
        cmd = [GPG, "--homedir", str(self.home), *_VERIFY, *args]
        try:
            proc = subprocess.run(
                cmd, input=input, stdin=None if input is not None else subprocess.DEVNULL,
                capture_output=True, check=False, timeout=GPG_TIMEOUT,
            )
        except subprocess.TimeoutExpired as exc:
            raise SignatureError(f"{what}: gpg did not finish in {GPG_TIMEOUT:.0f} s") from exc
        log.debug("gpg %s exit %d: %s", args[0], proc.returncode, proc.stderr[-2000:])
        return proc.stdout.decode("utf-8", "replace"), proc.returncode


def _keys_digest(key_files: Sequence[Path]) -> str:
    parts = sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in key_files)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _marker(home: Path) -> str | None:
    try:
        return (home / _MARKER).read_text()
    except OSError:
        return None


def _build_home(home: Path, key_files: Sequence[Path], expected: set[str]) -> Path:
    """Reuse `home` if built from the same key bytes, else build beside it and swap it in."""
    digest = _keys_digest(key_files)
    if _marker(home) == digest:
        return home
    home.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{home.name}.", suffix=".tmp", dir=home.parent))
    try:
        proc = subprocess.run(
            [GPG, "--homedir", str(tmp), *_COMMON, "--import", "--", *map(str, key_files)],
            capture_output=True, check=False, timeout=GPG_TIMEOUT,
        )
        listed = subprocess.run(
            [GPG, "--homedir", str(tmp), *_COMMON, "--with-colons", "--list-keys"],
            capture_output=True, check=False, timeout=GPG_TIMEOUT,
        )
        imported = set(_primary_fingerprints(listed.stdout.decode("utf-8", "replace"))[0])
        if imported != expected:  # gpg exits 2 on import when it cannot reach an agent
            raise ValueError(
                f"gpg could not import the keys (imported {sorted(imported)}, "
                f"expected {sorted(expected)}): {proc.stderr.decode('utf-8', 'replace')[-500:]}"
            )
        (tmp / _MARKER).write_text(digest)
        _swap_in(tmp, home, digest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return home


def _swap_in(tmp: Path, home: Path, digest: str) -> None:
    old: Path | None = None
    if home.exists() and any(home.iterdir()):
        if _marker(home) is None:
            raise ValueError(f"{home} exists and is not a keyring built by mirror; refusing to replace")
        old = Path(tempfile.mkdtemp(prefix=f".{home.name}.", suffix=".old", dir=home.parent))
        os.replace(home, old / "home")  # an old keyring is moved aside whole, then deleted
    try:
        os.replace(tmp, home)
    except OSError as exc:  # a concurrent builder won the race; fine if it built the same keys
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or _marker(home) != digest:
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
