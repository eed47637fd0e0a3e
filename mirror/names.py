"""Names of repos, tiers and snapshots, checked wherever they come in (API path parameters, query
strings and JSON bodies, CLI arguments) before anything looks them up (HOSTILE.md 71-75, T14/T20).

A name that cannot be a name at all (empty, too long, a `/` or `\\`, a `..`, a control character,
anything outside the configured grammar) is an `InvalidRequestError` (HTTP 400, CLI exit 2); a
well-formed name that is not configured is the caller's `NotFoundError` (404).  The messages
quote the refused value with `repr` (control characters escaped) and cut it short.
"""

from __future__ import annotations

import re
from typing import Final

from mirror.config import TIER_NAME_RE
from mirror.errors import InvalidRequestError
from mirror.model import REPO_NAME_RE, SNAPSHOT_ID_RE

__all__ = ["MAX_NAME_LENGTH", "check_repo", "check_snapshot", "check_tier", "name_problem"]

MAX_NAME_LENGTH: Final = 128

_GRAMMAR: Final[dict[str, tuple[re.Pattern[str], str]]] = {
    "repo": (REPO_NAME_RE, "[a-z0-9][a-z0-9._-]*"),
    "tier": (TIER_NAME_RE, "[a-z0-9][a-z0-9_-]*"),
    "snapshot": (SNAPSHOT_ID_RE, "YYYYMMDDTHHMMSSZ"),
}


def _shown(value: str) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def name_problem(kind: str, value: object) -> str | None:
    """Why `value` cannot be a `kind` ("repo", "tier", "snapshot") name, or None if it can."""
    pattern, grammar = _GRAMMAR[kind]
    if not isinstance(value, str):
        return f"a {kind} name must be a string"
    if not value:
        return f"empty {kind} name"
    if len(value) > MAX_NAME_LENGTH:
        return f"{kind} name longer than {MAX_NAME_LENGTH} characters"
    if any(ch < " " or "\x7f" <= ch <= "\x9f" for ch in value):
        return f"control character in {kind} name {_shown(value)}"
    if "/" in value or "\\" in value:
        return f"path separator in {kind} name {_shown(value)}"
    if ".." in value:
        return f"'..' in {kind} name {_shown(value)}"
    if pattern.fullmatch(value) is None:
        return f"{_shown(value)} is not a valid {kind} name ({grammar})"
    return None


def _check(kind: str, value: object) -> str:
    problem = name_problem(kind, value)
    if problem is not None:
        raise InvalidRequestError(problem)
    assert isinstance(value, str)
    return value


def check_repo(value: object) -> str:
    return _check("repo", value)


def check_tier(value: object) -> str:
    return _check("tier", value)


def check_snapshot(value: object) -> str:
    return _check("snapshot", value)
