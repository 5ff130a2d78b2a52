"""Progress bars and messages on stderr (stdout stays clean for --json)."""
from __future__ import annotations

import contextlib

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, highlight=False, soft_wrap=True)  # logs keep long lines whole


def wide_console(stderr: bool = False) -> Console:
    """A Console for tables: piped or captured, it keeps them whole (140 columns) instead of 80."""
    import sys

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 140)


def say(message: str, quiet: bool = False) -> None:
    if not quiet:
        console.print(message, markup=False)


def _progress(quiet: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, disable=quiet or not console.is_terminal,
                    transient=True)  # bars are for terminals: a log file gets the summary lines only


class _Bar:
    def __init__(self, progress: Progress, task):
        self.progress, self.task = progress, task

    def update(self, done: int, total: int | None = None) -> None:
        self.progress.update(self.task, completed=done, total=total)

    __call__ = update   # a bar is also the plain `progress(done, total)` callback


@contextlib.contextmanager
def progress_bar(description: str, quiet: bool = False, total: int | None = None):
    """`with progress_bar("loading") as bar: ... bar.update(i, n)` (or `bar(i, n)`)."""
    with _progress(quiet) as p:
        yield _Bar(p, p.add_task(description, total=total))


class EpochBar:
    """A bar per epoch for Keras training, plus one summary line per finished epoch."""

    def __init__(self, steps_per_epoch: int, quiet: bool = False):
        self.steps, self.quiet = steps_per_epoch, quiet
        self.progress = _progress(quiet)
        self.task = None

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def start_epoch(self, phase: str, epoch: int) -> None:
        self.start_task(f"{phase} epoch {epoch + 1}", self.steps)

    def start_task(self, description: str, total: int) -> None:
        """A bar for other long work inside training (e.g. the backbone pass over every photo)."""
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(description, total=total)

    def step(self) -> None:
        self.progress.update(self.task, advance=1)

    def advance(self, logs: dict) -> None:
        desc = self.progress.tasks[-1].description.split(" loss")[0]
        if "loss" in logs:
            desc += f" loss {logs['loss']:.3f} acc {logs.get('accuracy', 0):.3f}"
        self.progress.update(self.task, advance=1, description=desc)

    def end_epoch(self, row: dict) -> None:
        if not self.quiet:
            self.progress.console.print(
                f"{row['phase']:>8} epoch {row['epoch']:>2}: loss {row.get('loss', 0):.3f} acc {row.get('accuracy', 0):.3f}"
                f"  val_loss {row.get('val_loss', 0):.3f} val_acc {row.get('val_accuracy', 0):.3f}  ({row['seconds']:.0f}s)",
                markup=False)
