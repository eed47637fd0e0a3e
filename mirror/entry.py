"""The `mirror` command's entry point (pyproject `[project.scripts]`).

It loads the CLI with Python's cyclic garbage collector paused: loading modules allocates many
objects and frees almost none, so the collections it triggers find nothing, and cost 5 to 10 ms
of every command's start here. The methods its dataclasses need come compiled from the previous
runs (`mirror.codecache`: about 25 ms of a sync's start). `mirror.cli.run` does the rest, and
saves what that cache did not have.
"""

from __future__ import annotations

import gc
from typing import NoReturn


def run() -> NoReturn:
    gc.disable()
    try:
        from mirror import codecache

        codecache.install()
        from mirror import cli
    finally:
        gc.enable()
    cli.run()
