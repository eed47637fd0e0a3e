"""Version order exactly as the package managers define it: rpm's ``rpmvercmp`` and dpkg's.

Each order comes in two forms: comparison functions (:func:`rpmvercmp`, :func:`compare_rpm_evr`,
:func:`compare_deb`, :func:`compare`) that stop at the first segment that differs, which is what
a diff needs, and sort keys (:func:`rpmvercmp_key`, :func:`rpm_evr_key`, :func:`deb_key`,
:func:`sort_key`) whose plain Python ordering is the same order, for sorting many versions. A
property test checks that both forms agree, and the tests check them against the real tools on
the machine (rpm's lua ``rpm.vercmp`` and ``dpkg --compare-versions``) on thousands of pairs.

RPM (rpm 4.18 ``rpmio/rpmvercmp.c`` and ``rpmio/rpmver.c``):

- ``rpmvercmp(a, b)`` splits each string into maximal ASCII digit runs and ASCII letter runs;
  every other character is a separator and only separates, except ``~`` and ``^``. At each step
  the kinds order as ``~`` < end of string < ``^`` < letters < digits; two letter runs compare
  by byte order (``strcmp``), two digit runs numerically (leading zeros dropped, so any length
  works). ``1.0`` == ``1_0`` == ``1.0.`` and ``1a`` == ``1.a``; ``1.0~rc1`` < ``1.0`` < ``1.0^git1``
  < ``1.0.1``. Non-ASCII characters are separators (rpm's ``risalpha`` is ASCII only).
- An EVR string ``[epoch:]version[-release]`` splits like rpm's ``parseEVR``: the epoch is a
  leading run of digits followed by ``:`` (an empty one means 0; none means 0); the release is
  what follows the *last* ``-`` after it. Epochs, then versions, then releases compare with
  ``rpmvercmp``; a missing release sorts before any release (``1.0`` < ``1.0-1``), as
  ``rpmverCmp`` does (that is what ``rpm.vercmp`` in rpm's lua answers).

Debian (dpkg 1.21 ``lib/dpkg/version.c``):

- ``[epoch:]upstream[-revision]``: the epoch is the number before the first ``:`` (0 when there
  is none), the revision what follows the last ``-`` (empty when there is none).
- Upstream and revision compare with ``verrevcmp``: alternately a non-digit run, compared
  character by character with ``~`` first (even before the end of the run), then the end of the
  run, then letters, then every other character (``1.0~rc1`` < ``1.0`` < ``1.0a`` < ``1.0+b1``),
  and a digit run compared numerically, an empty one counting as 0 (``1.0`` == ``1.00`` and
  ``1.`` == ``1.0``, but ``1.0`` < ``1.0.``).
- A version dpkg would reject outright (a non-numeric epoch) is compared here as if the whole
  string were the upstream version with epoch 0, rather than failing a whole diff.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from itertools import zip_longest
from typing import Any, Literal

__all__ = [
    "VersionKind",
    "compare",
    "compare_deb",
    "compare_rpm_evr",
    "deb_key",
    "rpm_evr_key",
    "rpmvercmp",
    "rpmvercmp_key",
    "sort_key",
    "split_deb",
    "split_rpm_evr",
]

VersionKind = Literal["rpm", "deb"]

# -- rpm ----------------------------------------------------------------------------------------

# rpmvercmp token kinds, in their order. END is appended to every key: "~" sorts before the end
# of the other string, everything else after it.
_TILDE = (0,)
_END = (1,)
_CARET = (2,)
_ALPHA = 3
_DIGIT = 4
_RPM_TOKEN = re.compile(r"([0-9]+)|([A-Za-z]+)|(~)|(\^)")

RpmSegKey = tuple[tuple[int, ...] | tuple[int, str] | tuple[int, int, str], ...]


@lru_cache(maxsize=1 << 16)
def rpmvercmp_key(value: str) -> RpmSegKey:
    """Sort key of one version or release string under ``rpmvercmp``."""
    out: list[tuple[int, ...] | tuple[int, str] | tuple[int, int, str]] = []
    for digits, alpha, tilde, _caret in _RPM_TOKEN.findall(value):
        if digits:
            stripped = digits.lstrip("0")
            out.append((_DIGIT, len(stripped), stripped))
        elif alpha:
            out.append((_ALPHA, alpha))
        elif tilde:
            out.append(_TILDE)
        else:
            out.append(_CARET)
    out.append(_END)
    return tuple(out)


_RPM_TOKENS = re.compile(r"[0-9]+|[A-Za-z]+|~|\^")


# Cached (release and version strings repeat a lot across a repo: "1.el9", "2.3.4"); the cache
# wraps the C method directly, so a miss costs no Python frame. The lists are never modified.
_rpm_tokens: Callable[[str], list[str]] = lru_cache(maxsize=1 << 14)(_RPM_TOKENS.findall)


def _rpm_token_cmp(x: str, y: str) -> int:
    """Two different tokens at the same position (neither side has ended)."""
    if x == "~" or y == "~":
        return 1 if y == "~" and x != "~" else -1  # (both "~" cannot differ)
    if x == "^":
        return -1  # "^" sorts before any letter or digit run
    if y == "^":
        return 1
    xd, yd = x[0] <= "9", y[0] <= "9"  # tokens start with a digit or a letter here
    if xd != yd:
        return 1 if xd else -1  # numeric beats alpha
    if xd:
        x, y = x.lstrip("0"), y.lstrip("0")
        if len(x) != len(y):
            return 1 if len(x) > len(y) else -1
    return (x > y) - (x < y)


def rpmvercmp(a: str, b: str) -> int:
    """rpm's segment comparison of two version (or release) strings: -1, 0 or 1.

    Same answers as comparing :func:`rpmvercmp_key` values, without building the keys: tokens
    are compared until the first pair that differs, which is what a diff needs (a pair of
    versions that mostly share their tokens)."""
    if a == b:
        return 0
    ta, tb = _rpm_tokens(a), _rpm_tokens(b)
    for x, y in zip(ta, tb, strict=False):
        if x != y:
            c = _rpm_token_cmp(x, y)
            if c:
                return c
    la, lb = len(ta), len(tb)
    if la == lb:
        return 0
    # One side has ended: it sorts after a "~" and before anything else.
    if la > lb:
        return -1 if ta[lb] == "~" else 1
    return 1 if tb[la] == "~" else -1


def split_rpm_evr(evr: str) -> tuple[str, str, str | None]:
    """``[epoch:]version[-release]`` -> (epoch, version, release or None) as rpm's parseEVR.

    The epoch is the run of digits before a ``:`` that ends it ("0" when empty or absent); the
    release follows the last ``-`` (which cannot be inside that run of digits)."""
    head, dash, release = evr.rpartition("-")
    if not dash:
        head, release_or_none = evr, None
    else:
        release_or_none = release
    colon = head.find(":")
    if colon >= 0:
        epoch = head[:colon]
        if not epoch:
            return "0", head[1:], release_or_none
        if epoch.isdigit() and epoch.isascii():
            return epoch, head[colon + 1:], release_or_none
    return "0", head, release_or_none


RpmEvrKey = tuple[RpmSegKey, RpmSegKey, tuple[()] | tuple[RpmSegKey]]


@lru_cache(maxsize=1 << 16)
def rpm_evr_key(evr: str) -> RpmEvrKey:
    """Sort key of an ``[epoch:]version[-release]`` string (``rpmverCmp`` order)."""
    epoch, version, release = split_rpm_evr(evr)
    # A missing release sorts before any release: () < (key,).
    rel: tuple[()] | tuple[RpmSegKey] = () if release is None else (rpmvercmp_key(release),)
    return rpmvercmp_key(epoch), rpmvercmp_key(version), rel


def compare_rpm_evr(a: str, b: str) -> int:
    """Compare two ``[epoch:]version[-release]`` strings as ``rpm.vercmp``: -1, 0 or 1."""
    if a == b:
        return 0
    head_a, dash_a, rel_a = a.rpartition("-")
    head_b, dash_b, rel_b = b.rpartition("-")
    if dash_a and dash_b and head_a == head_b:
        return rpmvercmp(rel_a, rel_b)  # same [epoch:]version: the common case in a diff
    ea, va, ra = split_rpm_evr(a)
    eb, vb, rb = split_rpm_evr(b)
    if ea != eb:
        c = rpmvercmp(ea, eb)
        if c:
            return c
    if va != vb:
        c = rpmvercmp(va, vb)
        if c:
            return c
    if ra is None or rb is None:
        return (ra is not None) - (rb is not None)  # a missing release sorts first
    return rpmvercmp(ra, rb)


# -- dpkg ---------------------------------------------------------------------------------------

_DEB_RUN = re.compile(r"([^0-9]*)([0-9]*)")
_DEB_END = (0,)  # an exhausted string: an empty non-digit run, forever


def _deb_order(c: str) -> int:
    if "A" <= c <= "Z" or "a" <= c <= "z":
        return ord(c)
    if c == "~":
        return -1
    return ord(c) + 256


# Cache the per-character orders of non-digit runs (".", "-", "~", "+", ".dfsg", ...).
@lru_cache(maxsize=4096)
def _deb_run(run: str) -> tuple[int, ...]:
    return (*(_deb_order(c) for c in run), 0)


DebPartKey = tuple[tuple[int, ...] | tuple[int, str], ...]


@lru_cache(maxsize=1 << 16)
def _verrev_key(value: str) -> DebPartKey:
    """Sort key of an upstream version or revision under dpkg's ``verrevcmp``.

    Alternating [non-digit run, number, non-digit run, number, ...]: each non-digit run is its
    characters' orders followed by 0 (the end of a run and a digit both weigh 0 in verrevcmp),
    each number (length without leading zeros, digits), which orders numerically at any length
    (an empty digit run is 0). The key ends with an empty run, so a string that is exhausted
    compares like verrevcmp's end of string against a longer one ("~" < end < anything else).
    """
    out: list[tuple[int, ...] | tuple[int, str]] = []
    pos = 0
    n = len(value)
    while pos < n:
        m = _DEB_RUN.match(value, pos)
        assert m is not None  # the pattern matches the empty string
        nondigits, digits = m.group(1), m.group(2)
        out.append(_deb_run(nondigits))
        stripped = digits.lstrip("0")
        out.append((len(stripped), stripped))  # numeric order for any length
        pos = m.end()
    if not out:
        out += [_deb_run(""), (0, "")]
    out.append(_DEB_END)
    return tuple(out)


DebKey = tuple[int, DebPartKey, DebPartKey]


def split_deb(version: str) -> tuple[int, str, str]:
    """``[epoch:]upstream[-revision]`` -> (epoch, upstream, revision) as dpkg's parseversion."""
    epoch = 0
    rest = version
    colon = version.find(":")
    if colon >= 0:
        head = version[:colon]
        if head.isascii() and head.isdigit() and len(head) <= 18:  # dpkg: at most INT_MAX
            epoch = int(head)
            rest = version[colon + 1:]
    hyphen = rest.rfind("-")
    if hyphen >= 0:
        return epoch, rest[:hyphen], rest[hyphen + 1:]
    return epoch, rest, ""


@lru_cache(maxsize=1 << 16)
def deb_key(version: str) -> DebKey:
    """Sort key of a Debian version string (dpkg order)."""
    epoch, upstream, revision = split_deb(version.strip())
    return epoch, _verrev_key(upstream), _verrev_key(revision)


_DEB_PAIRS = re.compile(r"([^0-9]*)([0-9]*)")


# (non-digit run, digit run) pairs, ending with an empty match (harmless); never modified.
_deb_pairs: Callable[[str], list[tuple[str, str]]] = lru_cache(maxsize=1 << 14)(_DEB_PAIRS.findall)


def _verrevcmp(a: str, b: str) -> int:
    """dpkg's verrevcmp, run over (non-digit run, digit run) pairs until the first difference."""
    if a == b:
        return 0
    # The shorter list is padded with empty pairs: the end of a string weighs like an empty
    # non-digit run and the number 0.
    for (xs, xd), (ys, yd) in zip_longest(_deb_pairs(a), _deb_pairs(b), fillvalue=("", "")):
        if xs != ys:
            ox, oy = _deb_run(xs), _deb_run(ys)
            if ox != oy:
                return 1 if ox > oy else -1
        if xd != yd:
            xd, yd = xd.lstrip("0"), yd.lstrip("0")
            if len(xd) != len(yd):
                return 1 if len(xd) > len(yd) else -1
            if xd != yd:
                return 1 if xd > yd else -1
    return 0


def compare_deb(a: str, b: str) -> int:
    """Compare two Debian versions as ``dpkg --compare-versions``: -1, 0 or 1.

    Same answers as comparing :func:`deb_key` values, without building the keys."""
    if a == b:
        return 0
    ea, ua, ra = split_deb(a.strip())
    eb, ub, rb = split_deb(b.strip())
    if ea != eb:
        return 1 if ea > eb else -1
    return _verrevcmp(ua, ub) or _verrevcmp(ra, rb)


# -- both ---------------------------------------------------------------------------------------


def sort_key(kind: str) -> Callable[[str], Any]:
    """The sort key function for a repo type: ``sorted(versions, key=sort_key("rpm"))``."""
    if kind == "rpm":
        return rpm_evr_key
    if kind == "deb":
        return deb_key
    raise ValueError(f"unknown version kind {kind!r} (expected 'rpm' or 'deb')")


def compare(kind: str, a: str, b: str) -> int:
    """Compare two full version strings of a repo type ("rpm" or "deb"): -1, 0 or 1."""
    if kind == "rpm":
        return compare_rpm_evr(a, b)
    if kind == "deb":
        return compare_deb(a, b)
    raise ValueError(f"unknown version kind {kind!r} (expected 'rpm' or 'deb')")
