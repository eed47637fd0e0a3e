"""One error tree for the whole mirror.

Every error has a stable snake_case ``code`` (used in the CLI, the sync-run records, the API and
the metrics), an HTTP status for the API, and ``retryable``: whether the one retry policy
(:func:`mirror.fetch.is_retryable`) may try the operation again.  Lower layers raise with context
(repo, file, what did not verify); only the CLI prints and exits.
"""

from __future__ import annotations


class MirrorError(Exception):
    code: str = "mirror_error"
    http_status: int = 500
    retryable: bool = False

    def __init__(self, message: str, *, repo: str | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.repo = repo
        self.path = path
        #: the failures that came with this one (a sync reports every failed file, this first)
        self.others: list[MirrorError] = []

    def __str__(self) -> str:
        where = " ".join(
            part for part in ((self.repo and f"{self.repo}:"), (self.path and f"{self.path}:")) if part
        )
        return f"{where} {self.message}" if where else self.message

    def within(self, repo: str) -> str:
        """The error as said on a line already headed by `repo` (`REPO: error: WHAT`): without
        the repo again when it is that one."""
        if self.repo not in (None, repo):
            return str(self)
        return f"{self.path}: {self.message}" if self.path else self.message

    def __reduce__(self) -> tuple[object, ...]:
        """Pickled whole (subclass, message, context, any attribute a subclass adds): errors come
        back from download helper processes (mirror.downloads) as they were raised."""
        return _rebuild, (type(self), self.args, self.__dict__)

    def with_context(self, *, repo: str | None = None, path: str | None = None) -> MirrorError:
        """Fill in the repo and file this error concerns, when the raiser did not know them."""
        if self.repo is None:
            self.repo = repo
        if self.path is None:
            self.path = path
        return self


def _rebuild(cls: type[MirrorError], args: tuple[object, ...], state: dict[str, object]) -> MirrorError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class ConfigError(MirrorError):
    """The configuration is invalid; the message names the file and the key path."""

    code = "config_invalid"
    http_status = 400


class UpstreamError(MirrorError):
    """The upstream served something untrustworthy. Reported, never silently retried."""

    code = "upstream_untrusted"
    http_status = 502


class SignatureError(UpstreamError):
    code = "signature_invalid"


class RollbackError(UpstreamError):
    code = "metadata_rollback"


class ExpiredMetadataError(UpstreamError):
    code = "metadata_expired"


class FutureMetadataError(UpstreamError):
    """Signed metadata dated further ahead than clock skew explains (a fast-forward attempt)."""

    code = "metadata_future"


class MalformedMetadataError(UpstreamError):
    code = "metadata_malformed"


class UnsafePathError(UpstreamError):
    code = "unsafe_path"


class WeakDigestError(UpstreamError):
    code = "weak_digest"


class ChecksumMismatchError(UpstreamError):
    """Bytes do not match the digest from verified metadata (one retry: could be corruption)."""

    code = "checksum_mismatch"
    retryable = True


class SizeMismatchError(UpstreamError):
    code = "size_mismatch"
    retryable = True


class TooLargeError(UpstreamError):
    """An unverified root file or a decompressed index exceeded its cap."""

    code = "too_large"


class FetchError(MirrorError):
    """The network failed (timeouts, resets, 429, 5xx): retried with backoff."""

    code = "fetch_failed"
    http_status = 502
    retryable = True


class NotFoundUpstreamError(FetchError):
    """The upstream answered 404/410 for a file verified metadata says exists. Not retried."""

    code = "upstream_not_found"
    retryable = False


class RedirectError(FetchError):
    """A redirect to another scheme (or a downgrade from https) was refused."""

    code = "redirect_refused"
    retryable = False


class StorageError(MirrorError):
    code = "storage_error"


class NoSpaceError(StorageError):
    code = "no_space"


class LockedError(MirrorError):
    """Another process holds this repo's lock (a sync is running)."""

    code = "repo_locked"
    http_status = 409


class ConflictError(MirrorError):
    code = "conflict"
    http_status = 409


class NotFoundError(MirrorError):
    """Unknown repo, snapshot or tier."""

    code = "not_found"
    http_status = 404


class InvalidRequestError(MirrorError):
    """A request (CLI arguments or an API call) is malformed: a bad time, a missing field."""

    code = "invalid_request"
    http_status = 400


class UnauthorizedError(MirrorError):
    """No valid API token: missing, malformed or unknown (never says which token was close)."""

    code = "unauthorized"
    http_status = 401


class RateLimitedError(MirrorError):
    """Too many failed authentication attempts from one client address."""

    code = "rate_limited"
    http_status = 429


class UnsupportedMediaTypeError(MirrorError):
    """A mutating API call without a JSON body (a cross-site form post cannot send one)."""

    code = "unsupported_media_type"
    http_status = 415


class MethodNotAllowedError(MirrorError):
    code = "method_not_allowed"
    http_status = 405


class NotImplementedYetError(MirrorError):
    """An endpoint the contract names that this version does not provide yet."""

    code = "not_implemented"
    http_status = 501


class TierChangedError(ConflictError):
    """Compare-and-swap failed: the tier no longer serves the snapshot the caller expected."""

    code = "tier_changed"


class NothingToRollBackError(ConflictError):
    """The tier served nothing before its last move (or never moved)."""

    code = "nothing_to_roll_back"


class SnapshotNotVerifiedError(ConflictError):
    """Only a complete, verified snapshot can be served by a tier."""

    code = "snapshot_not_verified"


class PolicyError(MirrorError):
    """A move the tier policy refuses unless forced; the message says why and how to force."""

    code = "policy_refused"
    http_status = 422


class DependencyError(MirrorError):
    """`with_deps`: the solver found no installable set for the kept packages (a need that nothing
    in the repo provides is reported, not an error: see mirror.dependencies)."""

    code = "dependencies_unsolvable"
    http_status = 422


class ForbiddenError(MirrorError):
    """A valid API token whose scope or tiers do not cover the call (HOSTILE 71)."""

    code = "forbidden"
    http_status = 403


class SnapshotInUseError(ConflictError):
    """A snapshot delete refused: a tier serves it, may roll back to it, served it within the
    grace window, or it is the repo's newest (HOSTILE 73). The message says which."""

    code = "snapshot_in_use"


class IdentityChangeError(UpstreamError):
    """A validly signed Release whose Origin, Label, Suite or Codename differs from the last
    accepted snapshot's (apt asks for `--allow-releaseinfo-change`; we for
    `mirror sync --accept-identity-change`)."""

    code = "release_identity_changed"
