"""Progress bars of long commands, decided in one place.

Library code reports progress in one of two ways and never decides whether anything is drawn:

- a ``progress: bool`` flag (default off) for functions that own a loop: they draw with :func:`bar`;
- a :data:`StepCallback` ``on_step(done, total)`` for work whose consumer is not a terminal (the browser editor
  polls an inversion's steps); the CLI turns a bar into one with :func:`step_callback`.

A bar goes to stderr, and only when stderr is a terminal: stdout stays clean for tables and JSON, and a log file
(``2> log``) gets no carriage-return noise. The CLI passes ``progress=not quiet``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")

# Called as work advances: (units done, units in all). ``total`` may grow (a further chunk, a further method).
StepCallback = Callable[[int, int], None]


def shown(progress: bool) -> bool:
    """Whether a bar would be drawn: asked for, and stderr is a terminal."""
    stream = sys.stderr
    try:
        return bool(progress) and stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # A replaced or closed stream.
        return False


def bar(iterable: Iterable[T] | None = None, *, total: float | None = None, desc: str | None = None,
        unit: str = "it", progress: bool = True, leave: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr, or (``progress`` off, or stderr not a terminal) a disabled one, which tqdm makes a
    no-op: iterating it yields ``iterable``, ``update`` / ``set_postfix`` / ``close`` do nothing."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not shown(progress), leave=leave,
                file=sys.stderr, dynamic_ncols=True, **kwargs)


def step_callback(progress_bar: tqdm) -> StepCallback:
    """An ``on_step(done, total)`` that moves ``progress_bar`` to ``done`` of ``total``."""

    def on_step(done: int, total: int) -> None:
        if progress_bar.total != total:
            progress_bar.total = total
        progress_bar.update(done - progress_bar.n)

    return on_step


def say(message: str) -> None:
    """Print a line on stderr without tearing a bar that is being drawn."""
    tqdm.write(message, file=sys.stderr)


class Stages:
    """A bar over a known number of named stages of one long job; each stage's name is logged as it starts.

        stages = Stages(3, "evaluate", log=say, progress=True)
        stages("first part"); ...; stages("second part"); ...; stages.close()
    """

    def __init__(self, total: int, desc: str, log: Callable[[str], None], progress: bool = True) -> None:
        self.bar = bar(total=total, desc=desc, unit="stage", progress=progress)
        self.log = log
        self.started = False

    def __call__(self, message: str) -> None:
        """The previous stage is done; ``message`` names the next."""
        if self.started:
            self.bar.update(1)
        self.started = True
        self.log(message)

    def close(self) -> None:
        """The last stage is done."""
        if self.started:
            self.bar.update(1)
        self.bar.close()
