"""The cache of compiled dataclass methods (mirror.codecache), each case in a fresh interpreter:
the classes it makes behave exactly as without it, a second run compiles nothing, and a cache
file that is damaged or cannot be written changes nothing but the time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Dataclasses of every kind mirror uses, and what their generated methods do.
PROGRAM = """
import dataclasses, json, sys
from pathlib import Path
if sys.argv[1] != "-":
    from mirror import codecache
    codecache.install(Path(sys.argv[1]))
from dataclasses import dataclass, field

@dataclass(frozen=True, slots=True)
class Key:
    name: str
    arch: str = "all"
    version: str = field(default="1", compare=False)

@dataclass(order=True)
class Row:
    a: int
    b: list[int] = field(default_factory=list)

@dataclass(frozen=True)
class Holder:
    key: Key
    rows: tuple[Row, ...] = ()

out = {}
k = Key("a", "amd64", "2")
out["repr"] = [repr(k), repr(Row(1, [2])), repr(Holder(k))]
out["eq"] = [k == Key("a", "amd64", "9"), k == Key("b", "amd64"), Row(1) == Row(1, [])]
out["hash"] = hash(k) == hash(Key("a", "amd64", "3"))
out["order"] = [Row(1) < Row(2), Row(2, [1]) > Row(2, [])]
try:
    object.__getattribute__(k, "__setattr__")("name", "x")
    out["frozen"] = "no error"
except dataclasses.FrozenInstanceError as exc:
    out["frozen"] = type(exc).__name__
try:
    Key()
    out["init"] = "no error"
except TypeError as exc:
    out["init"] = str(exc)
out["replace"] = repr(dataclasses.replace(k, arch="arm64"))
if sys.argv[1] != "-":
    out["stats"] = list(codecache.stats())
    codecache.save()
print(json.dumps(out))
"""


def _run(cache: Path | None) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-c", PROGRAM, str(cache) if cache else "-"], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def _behaviour(result: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in result.items() if k != "stats"}


def test_cached_methods_behave_as_compiled_ones_and_a_second_run_compiles_nothing(tmp_path: Path) -> None:
    cache = tmp_path / "methods.marshal"
    plain = _run(None)
    first = _run(cache)
    assert cache.is_file()
    second = _run(cache)
    assert _behaviour(first) == _behaviour(second) == _behaviour(plain)
    assert first["stats"][0] > 10  # type: ignore[index]  # every method compiled, then saved
    assert second["stats"] == [0, first["stats"][1]]  # type: ignore[index]  # none compiled again


@pytest.mark.parametrize("content", [b"", b"not marshal", b"\xfb\x00\x00", b"\xe9\x01\x00\x00\x00\xe9"],
                         ids=["empty", "garbage", "truncated", "not-a-dict"])
def test_a_damaged_cache_file_is_ignored_and_rewritten(tmp_path: Path, content: bytes) -> None:
    cache = tmp_path / "methods.marshal"
    cache.write_bytes(content)
    result = _run(cache)
    assert _behaviour(result) == _behaviour(_run(None))
    assert _run(cache)["stats"][0] == 0  # type: ignore[index]  # rewritten whole


def test_a_cache_that_cannot_be_written_changes_nothing_else(tmp_path: Path) -> None:
    """(Under a file, where even root cannot make the folder.)"""
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder\n")
    result = _run(blocker / "sub" / "methods.marshal")
    assert _behaviour(result) == _behaviour(_run(None))


def test_the_mirror_command_installs_the_cache_and_tests_do_not() -> None:
    import dataclasses

    assert getattr(dataclasses, "exec", None) is None  # this process: untouched
    proc = subprocess.run([sys.executable, "-c", "import dataclasses, sys; from mirror import entry\n"
                           "sys.argv = ['mirror', '--help']\n"
                           "import mirror.cli\n"
                           "mirror.cli.run = lambda: print(dataclasses.exec.__module__)\n"
                           "entry.run()"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "mirror.codecache"
