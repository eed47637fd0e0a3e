"""Upstream-supplied paths (`Filename:`, `location href`, Release entries) made safe.

A path from metadata is normalised and must stay inside the repo: no absolute paths, no `..`
that climbs out, no backslashes, NUL or control characters, no empty result. Anything else is an
`UnsafePathError` naming the path.
"""

from __future__ import annotations

import posixpath
import re
from urllib.parse import unquote

from mirror.errors import UnsafePathError

_CONTROL_OR_BACKSLASH = re.compile(r"[\x00-\x1f\x7f\\]")  # one C scan (a plan checks every Filename)
#: A relative path already in normal form that cannot leave the repo: segments of letters, digits
#: and `_+~-.`, none empty or starting with a dot (so no `.` or `..`), no `:` or `%`. What almost
#: every Filename and location href is; it is its own normalised form (tests: same answers).
_PLAIN = re.compile(r"[A-Za-z0-9_+~-][A-Za-z0-9_+.~-]*(?:/[A-Za-z0-9_+~-][A-Za-z0-9_+.~-]*)*")
MAX_PATH = 4096


def contained(raw: str, *, what: str | None = None) -> str:
    """The normalised relative form of `raw`, or UnsafePathError if it could leave the repo."""
    if len(raw) <= MAX_PATH and _PLAIN.fullmatch(raw):
        return raw
    return _contained(raw, what)


def _contained(raw: str, what: str | None) -> str:
    if not raw or len(raw) > MAX_PATH:
        raise UnsafePathError(f"empty or overlong path {raw[:80]!r}", path=what)
    if _CONTROL_OR_BACKSLASH.search(raw):
        raise UnsafePathError(f"path {raw!r} contains control characters or backslashes", path=what)
    if raw.startswith("/"):
        raise UnsafePathError(f"absolute path {raw!r} is not allowed", path=what)
    parts = raw.split("/")
    if ":" in parts[0]:  # RFC 3986 4.2: a relative path's first segment has no colon; this is a URL
        raise UnsafePathError(f"path {raw!r} is a URL, not a path inside the repo", path=what)
    if ".." in parts:
        raise UnsafePathError(f"path {raw!r} contains '..'", path=what)
    norm = posixpath.normpath(raw)
    if norm in (".", "") or norm.startswith("../") or norm == "..":
        raise UnsafePathError(f"path {raw!r} does not name a file inside the repo", path=what)
    if "%" in raw and (decoded := unquote(raw)) != raw:
        # The path also becomes a URL: `%2e%2e`, `..%2f`, `%00` would climb out or cut it upstream.
        try:
            contained(decoded, what=what)
        except UnsafePathError:
            raise UnsafePathError(f"path {raw!r} is unsafe once percent-decoded", path=what) from None
    return norm


def join(base: str, name: str, *, what: str | None = None) -> str:
    """`base/name`, both contained (a file name from an index must not climb out of its directory)."""
    if "/" in name:
        raise UnsafePathError(f"file name {name!r} must not contain '/'", path=what)
    return contained(f"{base}/{name}" if base else name, what=what)
