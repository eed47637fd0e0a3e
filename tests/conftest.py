"""Shared fixtures: throwaway keys (generated once per session), gpg-agent cleanup."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.keys import SigningKey, make_key


@pytest.fixture(scope="session")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("keys")
    yield root
    for home in root.iterdir():
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False,
                       capture_output=True)


@pytest.fixture(scope="session")
def archive_key(keys_dir: Path) -> SigningKey:
    """The upstream archive's key: the one repos pin."""
    return make_key(keys_dir / "archive", "Test Archive <archive@example.org>")


@pytest.fixture(scope="session")
def other_key(keys_dir: Path) -> SigningKey:
    """Another repo's key: valid, but never trusted for the archive."""
    return make_key(keys_dir / "other", "Other Archive <other@example.org>")


@pytest.fixture(scope="session")
def expired_key(keys_dir: Path) -> SigningKey:
    """Made and signing in 2020 with a one-year life: expired today."""
    return make_key(keys_dir / "expired", "Expired Archive <expired@example.org>", expire="1y",
                    faked_time="20200101T000000")
