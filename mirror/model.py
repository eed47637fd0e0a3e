"""Value objects shared by every layer."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

SNAPSHOT_ID_FORMAT = "%Y%m%dT%H%M%SZ"
SNAPSHOT_ID_RE = re.compile(r"^[0-9]{8}T[0-9]{6}Z$")
REPO_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class EntryKind(StrEnum):
    """What a manifest entry is, for serving and for counting."""

    ROOT = "root"  # signed root metadata (InRelease, Release, Release.gpg, repomd.xml(.asc))
    INDEX = "index"  # index files named by the root metadata
    PACKAGE = "package"  # package files named by an index


@dataclass(frozen=True, slots=True)
class ExpectedFile:
    """A file we are about to fetch, with what verified metadata says it must be."""

    path: str  # relative to the repo root, already normalised and contained
    size: int
    sha256: str  # "" when verified metadata gives only another strong digest (see `alt`)
    kind: EntryKind = EntryKind.PACKAGE
    # Where to fetch it from, relative to the repo root, when it differs from `path`
    # (APT by-hash: the canonical name is served, the by-hash URL is fetched).
    fetch_path: str | None = None
    # Another strong digest from verified metadata, checked too: ("sha512", hex).
    alt: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class PackageKey:
    """(name, arch) identifies a package; version is its full version string."""

    name: str
    arch: str
    version: str


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    path: str
    sha256: str
    size: int
    kind: EntryKind
    package: PackageKey | None = None


@dataclass(frozen=True, slots=True)
class RootRecord:
    """What the signed root metadata of one suite (or one RPM repo) said, for freshness checks."""

    name: str  # suite name for APT, "repomd" for RPM
    sha256: str  # digest of the root file as fetched
    date: datetime | None
    valid_until: datetime | None
    revision: str | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    repo: str
    id: str
    created: datetime
    packages: int
    bytes: int
    signed_by: str  # "upstream" | "mirror"
    tiers: tuple[str, ...] = field(default=())

    def as_json(self) -> dict[str, object]:
        """As `mirror snapshots --json` and `GET /api/v1/repos/{repo}/snapshots` give it."""
        return {"id": self.id, "created": self.created.isoformat(), "packages": self.packages,
                "bytes": self.bytes, "tiers": list(self.tiers), "signed_by": self.signed_by}


def utcnow() -> datetime:
    return datetime.now(UTC)


def snapshot_id_for(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(SNAPSHOT_ID_FORMAT)


def parse_snapshot_id(value: str) -> datetime:
    return datetime.strptime(value, SNAPSHOT_ID_FORMAT).replace(tzinfo=UTC)
