"""Config validation: every mistake refused before anything runs, naming file, key path, reason."""

from __future__ import annotations

import os
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


def test_contract_defaults_apply_when_the_tables_are_left_out(confdir: Path) -> None:
    """CONTRACT: storage root /var/lib/mirror, bind 0.0.0.0, repo port 80, API port 81."""
    settings = load(write(confdir, GOOD_REPO))
    assert settings.storage.root == Path("/var/lib/mirror")
    assert (settings.server.bind, settings.server.repo_port, settings.server.api_port) == ("0.0.0.0", 80, 81)


@pytest.mark.parametrize(("cli", "env", "expected"), [
    ("given.toml", "env.toml", "given.toml"),
    (None, "env.toml", "env.toml"),
    (None, None, "/etc/mirror/mirror.toml"),
    (None, "", "/etc/mirror/mirror.toml"),
])
def test_config_file_is_the_option_then_mirror_config_then_etc(
        monkeypatch: pytest.MonkeyPatch, cli: str | None, env: str | None, expected: str) -> None:
    from mirror.config import config_path

    if env is None:
        monkeypatch.delenv("MIRROR_CONFIG", raising=False)
    else:
        monkeypatch.setenv("MIRROR_CONFIG", env)
    assert config_path(cli) == Path(expected)


def test_mirror_command_reads_mirror_config_and_names_the_file_it_lacks(confdir: Path) -> None:
    import subprocess
    import sys

    path = write(confdir, GOOD_REPO)
    env = {**os.environ, "MIRROR_CONFIG": str(path)}
    ok = subprocess.run([sys.executable, "-m", "mirror.cli", "check-config"], env=env, capture_output=True,
                        text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    env["MIRROR_CONFIG"] = str(confdir / "nope.toml")
    bad = subprocess.run([sys.executable, "-m", "mirror.cli", "check-config"], env=env, capture_output=True,
                         text=True, check=False)
    assert bad.returncode == 2 and str(confdir / "nope.toml") in bad.stderr, bad


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


# -- [signing], tier_signing, [retention] ------------------------------------------------------

RPM_REPO = """
[[repos]]
name = "baseos"
type = "rpm"
url = "http://rpm.example.org/9/BaseOS/"
keyring = "keys/archive.asc"
"""


@pytest.fixture(scope="module")
def signing_key(keys_dir: Path) -> SigningKey:
    from fixtures.keys import make_key

    return make_key(keys_dir / "config-signing", "Config Mirror <config-mirror@example.org>")


def signing(key: SigningKey, extra: str = "", *, name: str | None = None) -> str:
    return f'[signing]\ngnupghome = "{key.home}"\nkey = "{name or key.fingerprint}"\n{extra}\n'


def test_signing_key_is_checked_and_tier_signing_defaults_follow_it(confdir: Path,
                                                                    signing_key: SigningKey) -> None:
    by_uid = signing(signing_key, name="config-mirror@example.org")
    settings = load(write(confdir, by_uid + GOOD_REPO + RPM_REPO))
    assert settings.signing is not None and settings.signing.valid_for == 7 * 86400
    assert settings.repo("bookworm").tier_signing == "mirror"  # APT default with [signing]
    assert settings.repo("baseos").tier_signing == "upstream"  # RPM default
    unsigned = load(write(confdir, GOOD_REPO + 'tier_signing = "upstream"\n'))
    assert unsigned.signing is None and unsigned.repo("bookworm").tier_signing == "upstream"
    assert load(write(confdir, GOOD_REPO)).repo("bookworm").tier_signing == "upstream"
    chosen = load(write(confdir, signing(signing_key, 'valid_for = "2d"') + GOOD_REPO
                        + 'tier_signing = "upstream"\n'))
    assert chosen.repo("bookworm").tier_signing == "upstream"
    assert chosen.signing is not None and chosen.signing.valid_for == 2 * 86400


@pytest.mark.parametrize(("extra", "repo_extra", "key_path", "reason"), [
    ('valid_for = "30m"', "", "signing.valid_for", "at least 1 hour"),
    ('valid_for = "a week"', "", "signing.valid_for", "not a duration"),
    ("valid_for = -5", "", "signing.valid_for", "must not be negative"),
    ("colour = 1", "", "signing.colour", "unknown key"),
    ("", 'tier_signing = "sometimes"\n', "repos[0].tier_signing", "must be"),
])
def test_signing_mistakes_are_refused(confdir: Path, signing_key: SigningKey, extra: str, repo_extra: str,
                                      key_path: str, reason: str) -> None:
    path = write(confdir, signing(signing_key, extra) + GOOD_REPO + repo_extra)
    with pytest.raises(ConfigError) as err:
        load(path)
    assert str(path) in str(err.value) and key_path in str(err.value) and reason in str(err.value)


def test_mirror_tier_signing_needs_signing_and_a_deb_repo(confdir: Path, signing_key: SigningKey) -> None:
    with pytest.raises(ConfigError, match=r"repos\[0\]\.tier_signing: .*configure \[signing\]"):
        load(write(confdir, GOOD_REPO + 'tier_signing = "mirror"\n'))
    with pytest.raises(ConfigError, match=r"repos\[0\]\.tier_signing: .*deb repos only"):
        load(write(confdir, signing(signing_key) + RPM_REPO + 'tier_signing = "mirror"\n'))


def test_unusable_signing_key_is_refused_naming_the_key_and_home(confdir: Path, signing_key: SigningKey,
                                                                 keys_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"signing\.key: 'nobody@example\.org' in gnupghome .*no secret"):
        load(write(confdir, signing(signing_key, name="nobody@example.org") + GOOD_REPO))
    with pytest.raises(ConfigError, match=r"signing\.key: .*gnupghome is not a directory"):
        load(write(confdir, f'[signing]\ngnupghome = "{confdir / "nope"}"\nkey = "x"\n' + GOOD_REPO))
    # a key with a passphrase and no agent holding it: refused, never a prompt
    import subprocess

    home = keys_dir / "config-passphrase"
    home.mkdir(mode=0o700)
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", "--passphrase",
                    "s3cret", "--quick-gen-key", "Locked <locked@example.org>", "ed25519", "sign", "0"],
                   check=True, capture_output=True)
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False,
                   capture_output=True)
    with pytest.raises(ConfigError, match=r"signing\.key: .*no passphrase"):
        load(write(confdir, f'[signing]\ngnupghome = "{home}"\nkey = "locked@example.org"\n' + GOOD_REPO))
    # without key checks (tools that only read the file) nothing is signed
    assert load(write(confdir, signing(signing_key, name="nobody@example.org") + GOOD_REPO),
                check_keys=False).signing is not None


def test_retention_defaults_globals_and_per_repo_overrides(confdir: Path) -> None:
    settings = load(write(confdir, GOOD_REPO))
    assert (settings.retention.keep_last, settings.retention.keep_days) == (10, 30)
    settings = load(write(confdir, "[retention]\nkeep_last = 3\n" + GOOD_REPO + RPM_REPO
                          + "retention = { keep_days = 0 }\n"))
    assert (settings.retention.keep_last, settings.retention.keep_days) == (3, 30)
    deb, rpm = settings.repo("bookworm").retention, settings.repo("baseos").retention
    assert (deb.keep_last, deb.keep_days) == (3, 30)
    assert (rpm.keep_last, rpm.keep_days) == (3, 0)


@pytest.mark.parametrize(("text", "key_path", "reason"), [
    ("[retention]\nkeep_last = -1\n" + GOOD_REPO, "retention.keep_last", "at least 0"),
    ('[retention]\nkeep_days = "30d"\n' + GOOD_REPO, "retention.keep_days", "must be an integer"),
    ("[retention]\nkeep_weeks = 2\n" + GOOD_REPO, "retention.keep_weeks", "unknown key"),
    ("retention = 5\n" + GOOD_REPO, "retention", "must be a table"),
    (GOOD_REPO + "retention = { keep_last = 1.5 }\n", "repos[0].retention.keep_last", "must be an integer"),
    (GOOD_REPO + "retention = { forever = true }\n", "repos[0].retention.forever", "unknown key"),
])
def test_retention_mistakes_are_refused(confdir: Path, text: str, key_path: str, reason: str) -> None:
    path = write(confdir, text)
    with pytest.raises(ConfigError) as err:
        load(path)
    assert str(path) in str(err.value) and key_path in str(err.value) and reason in str(err.value)


@pytest.mark.parametrize(("text", "stale", "warning"), [
    ("", 2 * 86400.0, 86400.0),
    ('[sync]\nstale_after = "6h"\nexpiry_warning = "3d"\n', 6 * 3600.0, 3 * 86400.0),
    ("[sync]\nstale_after = 900\nexpiry_warning = 0\n", 900.0, 0.0),
])
def test_staleness_thresholds_take_durations(confdir: Path, text: str, stale: float, warning: float) -> None:
    settings = load(write(confdir, text + GOOD_REPO))
    assert (settings.sync.stale_after, settings.sync.expiry_warning) == (stale, warning)


@pytest.mark.parametrize(("text", "key_path", "reason"), [
    ('[sync]\nstale_after = "2 days"\n', "sync.stale_after", "not a duration"),
    ("[sync]\nstale_after = 0\n", "sync.stale_after", "longer than zero"),
    ('[sync]\nexpiry_warning = "-1d"\n', "sync.expiry_warning", "not a duration"),
    ("[sync]\nexpiry_warning = -5\n", "sync.expiry_warning", "must not be negative"),
    ("[sync]\nstale_after = false\n", "sync.stale_after", "number of seconds"),
])
def test_staleness_threshold_mistakes_are_refused(confdir: Path, text: str, key_path: str,
                                                  reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(write(confdir, text + GOOD_REPO))
    assert key_path in str(err.value) and reason in str(err.value)


# -- [server] connection guard: header_timeout, idle_timeout, max_connections_per_client -------


def test_server_guard_defaults(confdir: Path) -> None:
    server = load(write(confdir, GOOD_REPO)).server
    assert (server.header_timeout, server.idle_timeout, server.max_connections_per_client) == (10.0, 75.0, 64)


def test_server_guard_values(confdir: Path) -> None:
    server = load(write(confdir, '[server]\nheader_timeout = "5s"\nidle_timeout = "2m"\n'
                                 "max_connections_per_client = 8\n" + GOOD_REPO)).server
    assert (server.header_timeout, server.idle_timeout, server.max_connections_per_client) == (5.0, 120.0, 8)
    assert load(write(confdir, "[server]\nheader_timeout = 0.5\n" + GOOD_REPO)).server.header_timeout == 0.5


def test_repo_workers_default_number_and_auto(confdir: Path) -> None:
    assert load(write(confdir, GOOD_REPO)).server.repo_workers == 1
    assert load(write(confdir, "[server]\nrepo_workers = 3\n" + GOOD_REPO)).server.repo_workers == 3
    auto = load(write(confdir, '[server]\nrepo_workers = "auto"\n' + GOOD_REPO)).server.repo_workers
    assert auto == min(os.cpu_count() or 1, 64)


@pytest.mark.parametrize(("line", "key", "reason"), [
    ("header_timeout = 0", "server.header_timeout", "more than 0"),
    ("header_timeout = -1", "server.header_timeout", "must not be negative"),
    ('header_timeout = "10d"', "server.header_timeout", "at most 1 day"),
    ('header_timeout = "soon"', "server.header_timeout", "not a duration"),
    ("header_timeout = true", "server.header_timeout", "number of seconds"),
    ("idle_timeout = 0", "server.idle_timeout", "more than 0"),
    ('idle_timeout = "2d"', "server.idle_timeout", "at most 1 day"),
    ("max_connections_per_client = 0", "server.max_connections_per_client", "at least 1"),
    ("max_connections_per_client = 1.5", "server.max_connections_per_client", "must be an integer"),
    ('max_connections_per_client = "64"', "server.max_connections_per_client", "must be an integer"),
    ("max_connections_per_client = true", "server.max_connections_per_client", "must be an integer"),
    ("repo_workers = 0", "server.repo_workers", "between 1 and 64"),
    ("repo_workers = 65", "server.repo_workers", "between 1 and 64"),
    ('repo_workers = "many"', "server.repo_workers", 'positive integer or "auto"'),
    ("repo_workers = 2.0", "server.repo_workers", 'positive integer or "auto"'),
    ("repo_workers = true", "server.repo_workers", 'positive integer or "auto"'),
])
def test_server_guard_mistakes_are_refused(confdir: Path, line: str, key: str, reason: str) -> None:
    path = write(confdir, f"[server]\n{line}\n" + GOOD_REPO)
    with pytest.raises(ConfigError) as err:
        load(path)
    assert key in str(err.value) and reason in str(err.value)


@pytest.mark.parametrize("name", ["a..b", "repo\\n", "a/b"])
def test_repo_names_with_dots_or_separators_are_refused(confdir: Path, name: str) -> None:
    path = write(confdir, GOOD_REPO.replace('"bookworm"\ntype', f'"{name}"\ntype'))
    with pytest.raises(ConfigError, match="must match"):
        load(path)
