"""The compiled code of the methods `dataclasses` writes, kept between runs of the `mirror` command.

Defining a dataclass makes `dataclasses` write the source of its `__init__`, `__repr__`, `__eq__`,
`__hash__` (and `__setattr__` and `__delattr__` when frozen) and compile it, at every start: the
53 dataclasses a sync loads cost about 25 ms of `compile` on Python 3.11, a third of the time
its imports take. Python keeps a module's bytecode in `__pycache__`; nothing keeps these. This
module does: `install` makes `dataclasses` compile each generated source through a cache keyed
by that exact text (a method whose source changed is compiled again), loaded from one marshal
file beside the package's bytecode (headed by the interpreter's bytecode magic number, as a
`.pyc`) and written back, with what was new, by `save`.

How it hooks in: `dataclasses` runs the source it generates with `exec(text, globals, ns)`, the
builtin looked up through its module's globals; `install` puts a module global `exec` there that
compiles the text as the builtin would (`<string>`, no inherited flags) or takes the code
compiled before, then runs it with the builtin. Only strings are cached; the result is the same
code object `exec` would have compiled, so the classes are the same. Only `mirror.entry` (the
console command) installs it: tests and embedders get `dataclasses` untouched. A cache file that
cannot be read is ignored, one that cannot be written is not written (as `__pycache__`).
"""

from __future__ import annotations

import builtins
import contextlib
import marshal
import os
import sys
from importlib.util import MAGIC_NUMBER
from pathlib import Path
from types import CodeType
from typing import Any

MAX_ENTRIES = 4000  # beyond this (many versions' worth of methods), only what a run used is kept

_codes: dict[str, CodeType] = {}
_used: set[str] = set()
_new = 0
_path: Path | None = None


def default_path() -> Path:
    return Path(__file__).parent / "__pycache__" / f"dataclass-methods.{sys.implementation.cache_tag}.marshal"


def install(path: Path | None = None) -> None:
    """Load the cache at `path` and have `dataclasses` compile through it (once per process)."""
    global _path
    import dataclasses

    if _path is not None or getattr(dataclasses, "exec", None) is _exec:
        return
    _path = path or default_path()
    with contextlib.suppress(OSError, ValueError, EOFError, TypeError):
        data = _path.read_bytes()
        loaded = marshal.loads(data[len(MAGIC_NUMBER):]) if data.startswith(MAGIC_NUMBER) else None
        if isinstance(loaded, dict):
            _codes.update((k, v) for k, v in loaded.items() if isinstance(k, str) and isinstance(v, CodeType))
    dataclasses.exec = _exec  # type: ignore[attr-defined]


def _exec(source: Any, globals: dict[str, Any] | None = None, locals: Any = None) -> None:
    global _new
    if isinstance(source, str):
        code = _codes.get(source)
        if code is None:
            code = _codes[source] = compile(source, "<string>", "exec", dont_inherit=True)
            _new += 1
        _used.add(source)
        source = code
    builtins.exec(source, globals, locals)


def save() -> None:
    """Write the cache back if this run compiled something new (atomically; quietly not at all
    where that is not permitted)."""
    global _new
    if _path is None or not _new:
        return
    codes = _codes if len(_codes) <= MAX_ENTRIES else {k: v for k, v in _codes.items() if k in _used}
    tmp = _path.with_name(f"{_path.name}.{os.getpid()}.tmp")
    try:
        _path.parent.mkdir(exist_ok=True)
        tmp.write_bytes(MAGIC_NUMBER + marshal.dumps(codes))  # the bytecode version, as a .pyc
        os.replace(tmp, _path)
        _new = 0
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def stats() -> tuple[int, int]:
    """(compiled by this process, cached in all): for tests."""
    return _new, len(_codes)
