"""TOML configuration -> validated, frozen settings.

Every mistake is refused before anything runs, with the file, the key path and the reason.
Relative paths are relative to the configuration file's own folder.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from mirror.errors import ConfigError
from mirror.model import REPO_NAME_RE

DEFAULT_CONFIG = Path("/etc/mirror/mirror.toml")
TIER_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
RESERVED_TIERS = frozenset({"snapshots", "keys", "api", "metrics", "healthz", "by-hash"})
FINGERPRINT_RE = re.compile(r"^[0-9A-F]{40}$|^[0-9A-F]{64}$")
DEB_TOKEN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~/-]*$")


@dataclass(frozen=True)
class StorageSettings:
    root: Path


@dataclass(frozen=True)
class ServerSettings:
    bind: str = "0.0.0.0"
    repo_port: int = 80
    api_port: int = 81
    token_file: Path | None = None
    read_auth: bool = False  # true: read calls of the API need a token too
    grace_period: float = 3600.0  # seconds a tier keeps answering for the snapshots it served before
    header_timeout: float = 10.0  # seconds to deliver a complete request head (mirror.web.guard)
    idle_timeout: float = 75.0  # seconds an idle keep-alive connection stays open
    max_connections_per_client: int = 64  # open connections per client address, per port
    repo_workers: int = 1  # processes serving the repo port (mirror.web.workers); "auto": one per CPU


@dataclass(frozen=True)
class SyncSettings:
    max_parallel_downloads: int = 10
    #: helper processes `mirror sync` downloads with (mirror.downloads); None: "auto"
    download_processes: int | None = None
    connect_timeout: float = 30.0
    read_timeout: float = 60.0
    retries: int = 4
    max_root_file_size: int = 10 * 1024 * 1024
    max_index_size: int = 2 * 1024 * 1024 * 1024
    stale_after: float = 2 * 86400.0  # seconds without a successful sync before a repo is stale
    expiry_warning: float = 86400.0  # seconds before a served snapshot's Valid-Until to warn


@dataclass(frozen=True)
class SigningSettings:
    gnupghome: Path
    key: str
    valid_for: float = 7 * 86400.0  # seconds: Valid-Until of the Release files the mirror re-issues


@dataclass(frozen=True)
class RetentionSettings:
    """What `mirror gc` keeps besides what tiers, rollbacks and grace windows need (0 = off)."""

    keep_last: int = 10  # the newest N snapshots of a repo
    keep_days: int = 30  # snapshots younger than D days


@dataclass(frozen=True)
class RepoSettings:
    name: str
    type: str  # "deb" | "rpm"
    url: str  # always ends with "/"
    keyring: Path
    fingerprints: tuple[str, ...] | None = None
    suites: tuple[str, ...] = ()
    components: tuple[str, ...] = ("main",)
    architectures: tuple[str, ...] = ("amd64",)
    languages: tuple[str, ...] = ("en",)
    sources: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    keep_newest: int | None = None  # the newest N versions of each (name, arch); None: all
    #: (name pattern, ((operator, version), ...)): a matching package must meet every constraint
    versions: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    with_deps: bool = False  # add what the selected packages need (mirror.dependencies)
    # RPM advisory filters (see mirror.filters.AdvisoryFilter)
    advisory_types: tuple[str, ...] = ()
    advisory_severities: tuple[str, ...] = ()
    advisory_issued_before: datetime | None = None
    unadvised: str = "drop"  # packages no advisory names, when advisory filters apply: "keep" | "drop"
    # "upstream" | "mirror"; resolved at load: APT "mirror" when [signing] exists, else "upstream"
    tier_signing: str = "upstream"
    package_signatures: str = "require"  # RPM: "require" | "ignore"
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    #: Seconds: signed metadata whose Date is older is refused even without (or before) Valid-Until.
    max_age: float | None = None

    @property
    def filtered(self) -> bool:
        """Package filters apply: snapshots carry metadata the mirror regenerates and signs."""
        return bool(self.include or self.exclude or self.keep_newest or self.advisory_filtered
                    or self.versions or self.with_deps or self.package_architectures)

    @property
    def package_architectures(self) -> tuple[str, ...]:
        """RPM: the architectures a filter keeps (empty: all). APT: () (`architectures` chooses
        the indices, it is no filter)."""
        return self.architectures if self.type == "rpm" else ()

    def filter_shape(self) -> dict[str, object]:
        """The package filters as the snapshot's plan key includes them (mirror.filters)."""
        from mirror.filters import PackageFilter

        return PackageFilter(self.type, self.include, self.exclude, self.keep_newest,
                             self.package_architectures, self.versions, self.with_deps).shape()

    @property
    def advisory_filtered(self) -> bool:
        return bool(self.advisory_types or self.advisory_severities or self.advisory_issued_before)


@dataclass(frozen=True)
class Settings:
    source: Path
    tiers: tuple[str, ...]
    storage: StorageSettings
    server: ServerSettings = field(default_factory=ServerSettings)
    sync: SyncSettings = field(default_factory=SyncSettings)
    signing: SigningSettings | None = None
    repos: tuple[RepoSettings, ...] = ()
    retention: RetentionSettings = field(default_factory=RetentionSettings)

    def repo(self, name: str) -> RepoSettings:
        for repo in self.repos:
            if repo.name == name:
                return repo
        from mirror.errors import NotFoundError

        raise NotFoundError(f"unknown repo {name!r} (configured: {', '.join(self.repo_names)})")

    @property
    def repo_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.repos)


def config_path(cli_value: str | None) -> Path:
    if cli_value:
        return Path(cli_value)
    env = os.environ.get("MIRROR_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG


T = TypeVar("T")


class _Reader:
    """Reads one TOML table, remembering the key path for error messages."""

    def __init__(self, file: Path, data: Mapping[str, Any], path: str) -> None:
        self.file = file
        self.data = data
        self.path = path
        self.seen: set[str] = set()

    def fail(self, key: str | None, reason: str) -> ConfigError:
        where = f"{self.path}.{key}" if self.path and key else (key or self.path or "(top level)")
        return ConfigError(f"{self.file}: {where}: {reason}")

    def get(self, key: str, kind: type[T], default: T | None = None, *, required: bool = False) -> T:
        self.seen.add(key)
        if key not in self.data:
            if required:
                raise self.fail(key, "is required")
            return default  # type: ignore[return-value]
        value = self.data[key]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise self.fail(key, f"must be {_kind_name(kind)}, not {_kind_name(type(value))}")
        return value  # type: ignore[no-any-return]

    def strings(
        self, key: str, default: tuple[str, ...] = (), *, check: Callable[[str], bool] | None = None,
        what: str = "value", required: bool = False, nonempty: bool = False,
    ) -> tuple[str, ...]:
        raw = self.get(key, list, None, required=required)
        if raw is None:
            return default
        if not all(isinstance(v, str) for v in raw):
            raise self.fail(key, "must be a list of strings")
        if nonempty and not raw:
            raise self.fail(key, "must not be empty")
        for v in raw:
            if check is not None and not check(v):
                raise self.fail(key, f"{v!r} is not a valid {what}")
        if len(set(raw)) != len(raw):
            raise self.fail(key, "has duplicates")
        return tuple(raw)

    def table(self, key: str) -> _Reader | None:
        raw = self.get(key, dict, None)
        if raw is None:
            return None
        return _Reader(self.file, raw, f"{self.path}.{key}" if self.path else key)

    def path_value(self, key: str, default: Path | None = None, *, required: bool = False) -> Path | None:
        raw = self.get(key, str, None, required=required)
        if raw is None:
            return default
        if not raw:
            raise self.fail(key, "must not be empty")
        return (self.file.parent / raw).resolve() if not os.path.isabs(raw) else Path(raw)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise self.fail(unknown[0], "unknown key")


def _kind_name(kind: type) -> str:
    return {str: "a string", int: "an integer", bool: "true or false", float: "a number",
            list: "a list", dict: "a table"}.get(kind, kind.__name__)


def load(path: Path, *, check_keys: bool = True) -> Settings:
    """Read and validate the configuration file at `path`."""
    path = path.absolute()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse(raw, path, check_keys=check_keys)


MAX_REPO_WORKERS = 64


def _workers(r: _Reader, key: str, default: int) -> int:
    """A process count: a positive integer, or "auto" (one per CPU)."""
    r.seen.add(key)
    if key not in r.data:
        return default
    value = r.data[key]
    if value == "auto":
        return max(1, min(os.cpu_count() or 1, MAX_REPO_WORKERS))
    if isinstance(value, bool) or not isinstance(value, int):
        raise r.fail(key, f"must be a positive integer or \"auto\", not {value!r}")
    if not 1 <= value <= MAX_REPO_WORKERS:
        raise r.fail(key, f"must be between 1 and {MAX_REPO_WORKERS}, not {value}")
    return value


MAX_DOWNLOAD_PROCESSES = 3


def _helpers(r: _Reader, key: str) -> int | None:
    """Download helper processes: 0 to MAX_DOWNLOAD_PROCESSES, or "auto" (None)."""
    r.seen.add(key)
    value = r.data.get(key, "auto")
    if value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise r.fail(key, f"must be an integer or \"auto\", not {value!r}")
    if not 0 <= value <= MAX_DOWNLOAD_PROCESSES:
        raise r.fail(key, f"must be between 0 and {MAX_DOWNLOAD_PROCESSES}, not {value}")
    return value


def parse(raw: Mapping[str, Any], path: Path, *, check_keys: bool = True) -> Settings:
    top = _Reader(path, raw, "")
    tiers = top.strings("tiers", ("dev", "test", "uat", "prod"), check=_valid_tier, what="tier name",
                        nonempty=True)

    storage_t = top.table("storage")
    root = storage_t.path_value("root") if storage_t else None
    if storage_t:
        storage_t.finish()
    storage = StorageSettings(root=root or Path("/var/lib/mirror"))

    server = ServerSettings()
    if (srv := top.table("server")) is not None:
        server = ServerSettings(
            bind=srv.get("bind", str, server.bind),
            repo_port=_port(srv, "repo_port", server.repo_port),
            api_port=_port(srv, "api_port", server.api_port),
            token_file=srv.path_value("token_file"),
            read_auth=srv.get("read_auth", bool, server.read_auth),
            grace_period=_duration(srv, "grace_period", server.grace_period),
            header_timeout=_timeout(srv, "header_timeout", server.header_timeout),
            idle_timeout=_timeout(srv, "idle_timeout", server.idle_timeout),
            max_connections_per_client=_positive(srv, "max_connections_per_client",
                                                 server.max_connections_per_client),
            repo_workers=_workers(srv, "repo_workers", server.repo_workers),
        )
        srv.finish()

    sync = SyncSettings()
    if (syn := top.table("sync")) is not None:
        sync = SyncSettings(
            max_parallel_downloads=_positive(syn, "max_parallel_downloads", sync.max_parallel_downloads),
            download_processes=_helpers(syn, "download_processes"),
            connect_timeout=_positive_f(syn, "connect_timeout", sync.connect_timeout),
            read_timeout=_positive_f(syn, "read_timeout", sync.read_timeout),
            retries=_positive(syn, "retries", sync.retries, minimum=0),
            max_root_file_size=_positive(syn, "max_root_file_size", sync.max_root_file_size),
            max_index_size=_positive(syn, "max_index_size", sync.max_index_size),
            stale_after=_positive_duration(syn, "stale_after", sync.stale_after),
            expiry_warning=_duration(syn, "expiry_warning", sync.expiry_warning),
        )
        syn.finish()

    signing = None
    if (sig := top.table("signing")) is not None:
        home = sig.path_value("gnupghome", required=True)
        assert home is not None
        key = sig.get("key", str, required=True)
        if not key.strip():
            raise sig.fail("key", "must not be empty")
        valid_for = _duration(sig, "valid_for", SigningSettings.valid_for)
        if valid_for < 3600:
            raise sig.fail("valid_for", "must be at least 1 hour (\"1h\"): it is refreshed at half")
        sig.finish()
        if check_keys:
            _check_signing_key(sig, home, key)
        signing = SigningSettings(gnupghome=home, key=key, valid_for=valid_for)

    retention = RetentionSettings()
    if (ret := top.table("retention")) is not None:
        retention = _retention(ret, retention)

    repos_raw = top.get("repos", list, [])
    repos: list[RepoSettings] = []
    names: set[str] = set()
    for i, item in enumerate(repos_raw):
        if not isinstance(item, dict):
            raise top.fail(f"repos[{i}]", "must be a table ([[repos]])")
        repo = _repo(_Reader(path, item, f"repos[{i}]"), check_keys=check_keys, signing=signing is not None,
                     retention=retention)
        if repo.name in names:
            raise top.fail(f"repos[{i}].name", f"duplicate repo name {repo.name!r}")
        names.add(repo.name)
        repos.append(repo)
    top.finish()
    return Settings(source=path, tiers=tiers, storage=storage, server=server, sync=sync,
                    signing=signing, repos=tuple(repos), retention=retention)


def _valid_tier(name: str) -> bool:
    return bool(TIER_NAME_RE.fullmatch(name)) and name not in RESERVED_TIERS


def _port(r: _Reader, key: str, default: int) -> int:
    value = r.get(key, int, default)
    if not 0 <= value <= 65535:
        raise r.fail(key, f"{value} is not a TCP port")
    return value


def _positive(r: _Reader, key: str, default: int, *, minimum: int = 1) -> int:
    value = r.get(key, int, default)
    if value < minimum:
        raise r.fail(key, f"must be at least {minimum}")
    return value


_DURATION_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(s|m|h|d)?\s*$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(r: _Reader, key: str, default: float) -> float:
    """Seconds, given as a number of seconds or a string like "90s", "30m", "1h", "7d"."""
    r.seen.add(key)
    if key not in r.data:
        return default
    value = r.data[key]
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise r.fail(key, "must be a number of seconds or a duration like \"1h\"")
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match is None:
            raise r.fail(key, f"{value!r} is not a duration (e.g. \"90s\", \"30m\", \"1h\", \"7d\")")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
    else:
        seconds = float(value)
    if seconds < 0:
        raise r.fail(key, "must not be negative")
    return seconds


def _positive_duration(r: _Reader, key: str, default: float) -> float:
    seconds = _duration(r, key, default)
    if seconds <= 0:
        raise r.fail(key, "must be longer than zero")
    return seconds


def _timeout(r: _Reader, key: str, default: float) -> float:
    """A duration of more than 0 and at most a day (a unit typo such as "10d" is refused)."""
    value = _duration(r, key, default)
    if not 0 < value <= 86400:
        raise r.fail(key, "must be more than 0 and at most 1 day")
    return value


def _positive_f(r: _Reader, key: str, default: float) -> float:
    value = r.get(key, float, default)
    if value <= 0:
        raise r.fail(key, "must be positive")
    return value


def _retention(r: _Reader, base: RetentionSettings) -> RetentionSettings:
    """`[retention]` or a repo's `retention = {...}`: keys left out keep `base`'s values."""
    value = RetentionSettings(keep_last=_positive(r, "keep_last", base.keep_last, minimum=0),
                              keep_days=_positive(r, "keep_days", base.keep_days, minimum=0))
    r.finish()
    return value


def _check_signing_key(r: _Reader, home: Path, key: str) -> None:
    from mirror.signing import SigningKeyError, check_signing_key

    try:
        check_signing_key(home, key)
    except SigningKeyError as exc:
        raise r.fail("key", f"{key!r} in gnupghome {home}: {exc}") from None


def _repo(r: _Reader, *, check_keys: bool, signing: bool = False,
          retention: RetentionSettings | None = None) -> RepoSettings:
    name = r.get("name", str, required=True)
    if not REPO_NAME_RE.fullmatch(name) or ".." in name:
        raise r.fail("name", f"{name!r} must match [a-z0-9][a-z0-9._-]* without '..'")
    kind = r.get("type", str, required=True)
    if kind not in ("deb", "rpm"):
        raise r.fail("type", f"{kind!r} must be \"deb\" or \"rpm\"")
    url = r.get("url", str, required=True)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "file"):
        raise r.fail("url", f"{url!r}: scheme must be http, https or file")
    if parts.scheme != "file" and not parts.hostname:
        raise r.fail("url", f"{url!r} has no host")
    if parts.query or parts.fragment:
        raise r.fail("url", f"{url!r} must not have a query or fragment")
    if not url.endswith("/"):
        url += "/"
    keyring = r.path_value("keyring")
    if keyring is None:
        raise r.fail("keyring", "is required: every repo must name the keys it trusts")
    fingerprints_raw = r.strings("fingerprints", (), check=lambda v: bool(
        FINGERPRINT_RE.match(v.replace(" ", "").upper())), what="fingerprint (40 or 64 hex digits)")
    fingerprints = tuple(v.replace(" ", "").upper() for v in fingerprints_raw) or None
    if check_keys:
        _check_keyring(r, keyring, fingerprints)

    suites = r.strings("suites", (), check=DEB_TOKEN_RE.match, what="suite")  # type: ignore[arg-type]
    components = r.strings("components", ("main",), check=DEB_TOKEN_RE.match,  # type: ignore[arg-type]
                           what="component", nonempty=True)
    # deb: the indices mirrored; rpm: a package filter (left out: every architecture)
    architectures = r.strings("architectures", ("amd64",) if kind == "deb" else (),
                              check=DEB_TOKEN_RE.match,  # type: ignore[arg-type]
                              what="architecture", nonempty=True)
    if kind == "rpm":
        for arch in architectures:
            if arch in _DEB_ARCHES:
                raise r.fail("architectures", f"{arch!r} is a Debian name: RPM calls it "
                                              f"{_DEB_ARCHES[arch]!r}")
    languages = r.strings("languages", ("en",), check=DEB_TOKEN_RE.match,  # type: ignore[arg-type]
                          what="language")
    sources = r.get("sources", bool, False)
    include = r.strings("include", ())
    exclude = r.strings("exclude", ())
    for key, patterns in (("include", include), ("exclude", exclude)):
        _check_patterns(r, key, patterns)
    keep_newest = _positive(r, "keep_newest", 1) if "keep_newest" in r.data else None
    versions = _versions(r, "versions")
    with_deps = r.get("with_deps", bool, False)
    advisory_types = r.strings("advisory_types", ())
    advisory_severities = r.strings("advisory_severities", ())
    issued_before = _moment(r, "advisory_issued_before")
    unadvised = r.get("unadvised", str, "drop")
    if unadvised not in ("keep", "drop"):
        raise r.fail("unadvised", f"{unadvised!r} must be \"keep\" or \"drop\"")
    advisory_keys = [k for k in ("advisory_types", "advisory_severities", "advisory_issued_before",
                                 "unadvised") if k in r.data]
    if advisory_keys and kind != "rpm":
        raise r.fail(advisory_keys[0], "advisory filters apply to rpm repos only")
    if "unadvised" in r.data and not (advisory_types or advisory_severities or issued_before):
        raise r.fail("unadvised", "applies only with advisory_types, advisory_severities or "
                                  "advisory_issued_before")
    filter_keys = [k for k in ("include", "exclude", "keep_newest", "advisory_types", "advisory_severities",
                               "advisory_issued_before", "versions", "with_deps") if r.data.get(k)]
    if kind == "rpm" and architectures:
        filter_keys.append("architectures")
    if with_deps and not (include or keep_newest or advisory_types or advisory_severities or issued_before):
        raise r.fail("with_deps", "adds what the selected packages need: it applies only with include, "
                                  "keep_newest or advisory filters")
    tier_signing = r.get("tier_signing", str, None)
    if tier_signing is not None and tier_signing not in ("upstream", "mirror"):
        raise r.fail("tier_signing", f"{tier_signing!r} must be \"upstream\" or \"mirror\"")
    if kind == "deb" and not suites:
        raise r.fail("suites", "is required for a deb repo (e.g. [\"bookworm\"])")
    if kind == "rpm" and "suites" in r.data:
        raise r.fail("suites", "applies to deb repos only")
    if filter_keys and sources:
        raise r.fail("sources", "package filters do not apply to Sources indices yet: use sources = false")
    if filter_keys and not signing:
        raise r.fail(filter_keys[0], "package filters need the mirror's own key (the filtered metadata is "
                                     "regenerated and signed by it): configure a usable [signing] key")
    if tier_signing == "mirror" and kind == "rpm":
        raise r.fail("tier_signing", "\"mirror\" applies to deb repos only (RPM clients neither refuse "
                                     "an older repomd.xml nor one past a validity date)")
    if tier_signing == "mirror" and not signing:
        raise r.fail("tier_signing", "\"mirror\" needs the mirror's own key: configure [signing]")
    if tier_signing is None:
        tier_signing = "mirror" if kind == "deb" and signing else "upstream"
    repo_retention = retention or RetentionSettings()
    if (ret := r.table("retention")) is not None:
        repo_retention = _retention(ret, repo_retention)
    package_signatures = r.get("package_signatures", str, "require")
    if package_signatures not in ("require", "ignore"):
        raise r.fail("package_signatures", f"{package_signatures!r} must be \"require\" or \"ignore\"")
    if kind == "deb" and "package_signatures" in r.data:
        raise r.fail("package_signatures", "applies to rpm repos only (APT packages are not signed)")
    max_age = _positive_duration(r, "max_age", 1.0) if "max_age" in r.data else None
    r.finish()
    return RepoSettings(
        name=name, type=kind, url=url, keyring=keyring, fingerprints=fingerprints, suites=suites,
        components=components, architectures=architectures, languages=languages, sources=sources,
        include=include, exclude=exclude, keep_newest=keep_newest, versions=versions, with_deps=with_deps,
        advisory_types=advisory_types,
        advisory_severities=advisory_severities, advisory_issued_before=issued_before, unadvised=unadvised,
        tier_signing=tier_signing,
        package_signatures=package_signatures,
        retention=repo_retention, max_age=max_age,
    )


def _moment(r: _Reader, key: str) -> datetime | None:
    """A TOML date or datetime, or an ISO 8601 string ("2026-11-01", "2026-11-01T12:00:00Z"); UTC
    when no zone is given."""
    r.seen.add(key)
    if key not in r.data:
        return None
    value = r.data[key]
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise r.fail(key, f"{value!r} is not a date or time (e.g. \"2026-11-01\")") from None
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    raise r.fail(key, "must be a date or time (e.g. 2026-11-01)")


_DEB_ARCHES = {"amd64": "x86_64", "arm64": "aarch64", "all": "noarch", "ppc64el": "ppc64le"}


def _versions(r: _Reader, key: str) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    """`versions = { "openssl*" = ">= 3.0, < 3.2", "/^kernel/" = "< 6.0" }`: name pattern ->
    comma-separated constraints (operators <, <=, =, >=, >, !=)."""
    raw = r.get(key, dict, None)
    if raw is None:
        return ()
    import json

    from mirror.filters import parse_constraints

    out: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    for pattern, text in raw.items():
        where = f"{key}.{json.dumps(pattern)}"
        if not isinstance(text, str):
            raise r.fail(where, f"must be {_kind_name(str)} of constraints (e.g. \">= 3.0, < 3.2\"), "
                                f"not {_kind_name(type(text))}")
        _check_patterns(r, key, (pattern,))
        try:
            out.append((pattern, parse_constraints(text)))
        except ValueError as exc:
            raise r.fail(where, str(exc)) from None
    return tuple(out)


def _check_patterns(r: _Reader, key: str, patterns: tuple[str, ...]) -> None:
    if not patterns:  # the usual case: no need to load mirror.filters
        return
    import re as regex

    from mirror.filters import compile_pattern

    for pattern in patterns:
        if not pattern:
            raise r.fail(key, "patterns must not be empty")
        try:
            compile_pattern(pattern)
        except regex.error as exc:
            raise r.fail(key, f"{pattern!r} is not a valid regular expression: {exc}") from None


def _check_keyring(r: _Reader, keyring: Path, fingerprints: tuple[str, ...] | None) -> None:
    from mirror.trust.gpg import key_fingerprints

    try:
        if not keyring.is_file():
            raise ValueError("no such file")
        if keyring.stat().st_size == 0:
            raise ValueError("file is empty")
        found = key_fingerprints(keyring)
    except (OSError, ValueError) as exc:
        raise r.fail("keyring", f"{keyring}: {exc}") from None
    for fpr in fingerprints or ():
        if fpr not in found:
            raise r.fail("fingerprints", f"{fpr} is not a primary key in {keyring}")
