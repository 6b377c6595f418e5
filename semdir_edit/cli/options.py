"""Options the CLI's commands share."""

from __future__ import annotations

from pathlib import Path

import typer

from semdir_edit.config import find_weights


def _weights(value: Path | None) -> Path:
    """--weights, else $SEMDIR_WEIGHTS, else the checkout's weights/fashion_mnist (:func:`config.find_weights`)."""
    return find_weights(value)


WeightsOpt = typer.Option(None, "--weights", "-w", callback=_weights, show_default="$SEMDIR_WEIGHTS or "
                          "weights/fashion_mnist", help="Weights folder (with manifest.json).")

# Bars are drawn only when stderr is a terminal (semdir_edit.core.progress); --quiet turns them off there too.
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bar (bars go to stderr, only when it is a "
                        "terminal; errors and warnings are still printed).")
