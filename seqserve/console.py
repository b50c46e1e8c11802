"""What the CLI prints: one-line errors, consoles whose tables keep every name whole when piped, and
progress per step.

On a terminal a long step shows a rich progress bar on stderr; when stderr is not a terminal (a log file,
CI, a pipe) each finished step prints one plain line instead, so logs show progress without control codes.
Only the standard library, typer and rich at module top: the serving image imports this too.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer
from rich.console import Console

# Wide enough for any table this project prints; rich would otherwise assume 80 columns off a terminal
# and cut model names to `bms-ls…`.
PIPED_WIDTH = 400


def make_console(stderr: bool = False) -> Console:
    """A console that wraps to the terminal, and never cuts a table when its stream is not a terminal."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else PIPED_WIDTH)


class Steps:
    """Progress of one long job in steps: `advance(label)` after each step."""

    def __init__(self, description: str, total: int) -> None:
        self.description = description
        self.total = total
        self.done = 0
        self._started = time.perf_counter()
        self._bar = None
        self._task = None
        if sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[label]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._task = self._bar.add_task(description, total=total, label="")
            self._bar.start()

    def advance(self, label: str = "") -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(self._task, advance=1, label=label)
            return
        elapsed = time.perf_counter() - self._started
        line = f"{self.description}: {self.done}/{self.total} {label} ({elapsed:.0f} s)"
        print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


@contextmanager
def steps(description: str, total: int, enabled: bool = True) -> Iterator[Steps | None]:
    """`with steps("export", 3) as progress: ... progress.advance("parity")`; None when disabled."""
    if not enabled:
        yield None
        return
    progress = Steps(description, total)
    try:
        yield progress
    finally:
        progress.close()


def advance(progress: Steps | None, label: str = "") -> None:
    """Advance `progress` if there is one: lets library code take an optional progress."""
    if progress is not None:
        progress.advance(label)


def fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr and a non-zero exit: how every bad input ends a command."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)
