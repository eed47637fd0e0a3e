"""Config validation: every mistake refused before anything runs, naming file, key path, reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.keys import SigningKey
from mirror.config import load
from mirror.errors import ConfigError

GOOD_REPO = """
[[repos]]
name = "bookworm"
type = "deb"
url = "http://deb.example.org/debian"
suites = ["bookworm"]
keyring = "keys/archive.asc"
"""


@pytest.fixture
def confdir(tmp_path: Path, archive_key: SigningKey) -> Path:
    archive_key.write_public(tmp_path / "keys" / "archive.asc")
    (tmp_path / "keys" / "empty.asc").write_bytes(b"")
    (tmp_path / "keys" / "garbage.asc").write_bytes(b"not a key\n")
    return tmp_path


def write(confdir: Path, text: str) -> Path:
    path = confdir / "mirror.toml"
    path.write_text(text)
    return path


def test_valid_config_loads_with_defaults_and_relative_paths(confdir: Path) -> None:
    settings = load(write(confdir, '[storage]\nroot = "var"\n' + GOOD_REPO))
    assert settings.tiers == ("dev", "test", "uat", "prod")
    assert settings.storage.root == (confdir / "var").resolve()
    repo = settings.repo("bookworm")
    assert repo.url == "http://deb.example.org/debian/"
    assert repo.keyring == (confdir / "keys" / "archive.asc").resolve()
    assert repo.components == ("main",) and repo.architectures == ("amd64",)
    assert repo.languages == ("en",)
    assert settings.sync.max_parallel_downloads == 10


@pytest.mark.parametrize(("text", "key_path", "reason"), [
    ("colour = 1\n" + GOOD_REPO, "colour", "unknown key"),
    ("[sync]\nmax_parallel_downloads = \"ten\"\n" + GOOD_REPO, "sync.max_parallel_downloads",
     "must be an integer"),
    ("[sync]\nmax_parallel_downloads = 0\n" + GOOD_REPO, "sync.max_parallel_downloads", "at least 1"),
    ("[server]\nrepo_port = 70000\n" + GOOD_REPO, "server.repo_port", "not a TCP port"),
    (GOOD_REPO.replace('keyring = "keys/archive.asc"\n', ""), "repos[0].keyring", "is required"),
    (GOOD_REPO.replace("archive.asc", "missing.asc"), "repos[0].keyring", "no such file"),
    (GOOD_REPO.replace("archive.asc", "empty.asc"), "repos[0].keyring", "empty"),
    (GOOD_REPO.replace("archive.asc", "garbage.asc"), "repos[0].keyring", ""),
    (GOOD_REPO + GOOD_REPO, "repos[1].name", "duplicate repo name"),
    (GOOD_REPO.replace("http://", "ftp://"), "repos[0].url", "scheme must be http, https or file"),
    (GOOD_REPO.replace('"bookworm"\ntype', '"Bad Name"\ntype'), "repos[0].name", "must match"),
    (GOOD_REPO.replace('type = "deb"', 'type = "zip"'), "repos[0].type", "must be"),
    (GOOD_REPO.replace('suites = ["bookworm"]\n', ""), "repos[0].suites", "is required"),
    (GOOD_REPO + 'bogus = true\n', "repos[0].bogus", "unknown key"),
    ('tiers = ["dev", "dev"]\n' + GOOD_REPO, "tiers", "duplicates"),
    ('tiers = ["dev", "snapshots"]\n' + GOOD_REPO, "tiers", "not a valid tier name"),
    ('tiers = []\n' + GOOD_REPO, "tiers", "must not be empty"),
    (GOOD_REPO + 'fingerprints = ["ABCD"]\n', "repos[0].fingerprints", "not a valid fingerprint"),
    (GOOD_REPO + 'fingerprints = ["' + "A" * 40 + '"]\n', "repos[0].fingerprints", "not a primary key"),
    (GOOD_REPO + 'tier_signing = "vendor"\n', "repos[0].tier_signing", "must be"),
    ("[signing]\nkey = \"x\"\n" + GOOD_REPO, "signing.gnupghome", "is required"),
    ("tiers = [\n", "", "not valid TOML"),
    ('[server]\ngrace_period = "1 fortnight"\n' + GOOD_REPO, "server.grace_period", "not a duration"),
    ("[server]\ngrace_period = -1\n" + GOOD_REPO, "server.grace_period", "must not be negative"),
    ("[server]\ngrace_period = true\n" + GOOD_REPO, "server.grace_period", "number of seconds"),
    ('[server]\nread_auth = "yes"\n' + GOOD_REPO, "server.read_auth", "true or false"),
])
def test_config_mistake_is_refused_with_key_path(confdir: Path, text: str, key_path: str,
                                                 reason: str) -> None:
    path = write(confdir, text)
    with pytest.raises(ConfigError) as err:
        load(path)
    message = str(err.value)
    assert str(path) in message
    assert key_path in message
    assert reason in message


def test_missing_config_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load(tmp_path / "nope.toml")


def test_pinned_fingerprint_must_be_in_keyring(confdir: Path, archive_key: SigningKey) -> None:
    settings = load(write(confdir, GOOD_REPO + f'fingerprints = ["{archive_key.fingerprint.lower()}"]\n'))
    assert settings.repo("bookworm").fingerprints == (archive_key.fingerprint,)


@pytest.mark.parametrize(("value", "seconds"), [
    ('"1h"', 3600.0), ('"30m"', 1800.0), ('"90s"', 90.0), ('"2d"', 172800.0), ("600", 600.0), ("0", 0.0),
    ("2.5", 2.5), ('"45"', 45.0),
])
def test_grace_period_takes_seconds_or_a_duration(confdir: Path, value: str, seconds: float) -> None:
    settings = load(write(confdir, f"[server]\ngrace_period = {value}\nread_auth = true\n" + GOOD_REPO))
    assert settings.server.grace_period == seconds
    assert settings.server.read_auth is True


def test_server_defaults_keep_a_one_hour_grace_and_open_reads(confdir: Path) -> None:
    settings = load(write(confdir, GOOD_REPO))
    assert settings.server.grace_period == 3600.0 and settings.server.read_auth is False
