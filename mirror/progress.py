"""Live progress of running syncs on a terminal (rich), one line per repo."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    TaskID,
    TextColumn,
    TransferSpeedColumn,
)
from rich.progress import (
    Progress as RichProgress,
)

from mirror.sync import Progress


@contextmanager
def live_progress(progresses: Iterable[Progress]) -> Iterator[None]:
    bar = RichProgress(TextColumn("{task.description}"), BarColumn(bar_width=30),
                       TextColumn("{task.fields[files]}"),
                       DownloadColumn(), TransferSpeedColumn(), transient=False)
    tasks: dict[str, TaskID] = {}

    def listener(p: Progress) -> None:
        bar.update(tasks[p.repo], description=escape(f"{p.repo} [{p.phase}]"), completed=p.bytes_done,
                   total=p.bytes_total or None, files=f"{p.files_done}/{p.files_total} files")

    with bar:
        for p in progresses:
            tasks[p.repo] = bar.add_task(escape(f"{p.repo} [starting]"), total=None, files="")
            p.listeners.append(listener)
        yield
