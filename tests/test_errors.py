"""The error tree's messages: `REPO: error: WHAT` lines name the repo once."""

from __future__ import annotations

import pytest

from mirror.errors import ChecksumMismatchError, MirrorError


@pytest.mark.parametrize(("error", "line"), [
    (ChecksumMismatchError("sha256 differs", repo="r", path="dists/s/InRelease"),
     "dists/s/InRelease: sha256 differs"),
    (MirrorError("no repomd", repo="r"), "no repomd"),
    (MirrorError("cannot write", path="pool/x"), "pool/x: cannot write"),
    (MirrorError("plain"), "plain"),
    (MirrorError("from elsewhere", repo="other", path="f"), "other: f: from elsewhere"),
])
def test_error_within_its_repo_line_does_not_repeat_the_repo(error: MirrorError, line: str) -> None:
    assert error.within("r") == line
    assert str(error).endswith(line)  # the whole message keeps every part
