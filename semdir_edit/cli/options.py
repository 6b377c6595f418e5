"""Options the CLI's commands share."""

from __future__ import annotations

from pathlib import Path

import typer

from semdir_edit.config import FASHION_MNIST_CLASSES, find_weights


def _weights(value: Path | None) -> Path:
    """--weights, else $SEMDIR_WEIGHTS, else the checkout's weights/fashion_mnist (:func:`config.find_weights`)."""
    return find_weights(value)


WeightsOpt = typer.Option(None, "--weights", "-w", callback=_weights, show_default="$SEMDIR_WEIGHTS or "
                          "weights/fashion_mnist", help="Weights folder (with manifest.json).")

# Bars are drawn only when stderr is a terminal (semdir_edit.core.progress); --quiet turns them off there too.
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bar (bars go to stderr, only when it is a "
                        "terminal; errors and warnings are still printed).")

DIRECTION_HELP = ("global:K | class:K | class:K@<class> | voynov:K | pca:K | sefa:K | random:K | cpca:K | "
                  "cpca:K@<class> | to:<class>. K counts from 0; a class by index or name, any case, a unique "
                  "prefix is enough (" + ", ".join(FASHION_MNIST_CLASSES) + ").")
EPS_HELP = ("A step (2) or a traversal start:stop:count (-3:3:7). Unit: one standard deviation of the "
            "generator's codes along the direction (W's spread); |eps| <= 10.")
