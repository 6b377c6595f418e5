"""A batch's options: parsed and checked against the weights before any image is touched, and hashed.

The hash (:meth:`BatchOptions.key`) covers what shapes the outputs; a rerun with the same hash skips what is done.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from semdir_edit.core.errors import UserError
from semdir_edit.core.validate import check_eps
from semdir_edit.editor import Editor
from semdir_edit.inversion.invert import ENCODER_KIND, METHODS, OPTIMIZING
from semdir_edit.ops.shift_codes import (
    DirectionSpec,
    keeps_class,
    match_class,
    parse_direction,
    parse_eps,
    parse_layers,
)


def networks_for(method: str) -> list[str]:
    """The networks a run with inversion ``method`` needs (the direction's own are checked with the direction)."""
    return ["generator", "classifier", *([ENCODER_KIND[method]] if method in ENCODER_KIND else [])]


@dataclass
class BatchOptions:
    """The resolved options; ``key()`` is the hash of those that shape the outputs."""

    direction: DirectionSpec
    eps: list[float]
    method: str
    steps: int
    layers: range
    weights_id: str
    inversion: dict[str, Any]  # Inversion hyper-parameters other than steps (from the Editor's config).
    keep_class: bool = False   # Class-locked edits (see semdir_edit.ops.class_lock).
    scale: int = 1             # Every tile of the edited PNG enlarged this many times.
    labels: bool = False       # A strip's columns (eps) and row (direction) named, as `apply` names them.

    @property
    def strip(self) -> bool:
        """A traversal (several eps) rather than one edited image."""
        return len(self.eps) > 1

    @property
    def labelled(self) -> bool:
        """Labels are drawn: on strips only (a single edited image stays a plain picture, as with `apply`)."""
        return self.labels and self.strip

    def figures(self) -> dict[str, Any]:
        """The options as JSON-able values (what the hash covers)."""
        figures = {"direction": str(self.direction), "eps": self.eps, "method": self.method, "steps": self.steps,
                   "layers": [self.layers.start, self.layers.stop - 1], "weights_id": self.weights_id,
                   "inversion": self.inversion}
        if self.keep_class:  # Only when on: runs of unlocked edits keep the hash they had before the lock existed.
            figures["keep_class"] = True
        # Likewise only when they change the PNG: raw outputs keep the hash they had before these options existed.
        if self.scale != 1:
            figures["scale"] = self.scale
        if self.labelled:
            figures["labels"] = True
        return figures

    def key(self) -> str:
        """Short hash of :meth:`figures`: the manifest's ``options``."""
        return hashlib.sha256(json.dumps(self.figures(), sort_keys=True).encode()).hexdigest()[:16]


def resolve_options(editor: Editor, direction: str | DirectionSpec, eps: str | float | list[float], method: str,
                    steps: int | None, layers: str | range | None, keep_class: bool | None = None, scale: int = 1,
                    labels: bool = False) -> BatchOptions:
    """Parse and check every option against the weights before any image is touched (UserError on a bad one)."""
    if not 1 <= scale <= 16:
        raise UserError("--scale must be between 1 and 16")
    spec = parse_direction(direction) if isinstance(direction, str) else direction
    if isinstance(eps, str):
        eps_list = parse_eps(eps)
    else:
        eps_list = [float(eps)] if isinstance(eps, (int, float)) else [float(e) for e in eps]
    if not eps_list or not all(math.isfinite(e) for e in eps_list):
        raise UserError("--eps must be finite numbers")
    check_eps(eps_list)  # The bound apply and the browser editor share: a class-locked walk of 1e9 never ends.
    if method not in METHODS:
        raise UserError(f"unknown method '{method}' (use {', '.join(METHODS)})")
    steps = editor.inversion.steps if steps is None else steps
    if steps < 0:
        raise UserError("--steps must be >= 0")
    if method not in OPTIMIZING:
        steps = 0  # The encoders take no steps: --steps must not change the options' hash.
    # Load what the run needs now, so a missing network stops it before the first image.
    for kind in networks_for(method):
        editor.model(kind)
    layer_range = layers if isinstance(layers, range) else parse_layers(layers, editor.G.num_ws)
    # Check the direction (index range, class names, its networks); class-relative ones with a stand-in class.
    if spec.kind == "to":
        match_class(spec.class_name or "", editor.class_names)
        editor.model("direction_bank")
    elif spec.kind == "class" and spec.class_name is None:
        editor.direction(spec, class_index=0)
    else:
        editor.direction(spec)
    inv = editor.inversion
    inversion = {"lr": inv.lr, "lambda_perceptual": inv.lambda_perceptual, "lambda_dom": inv.lambda_dom,
                 "perceptual": inv.perceptual} if method in OPTIMIZING else {}
    return BatchOptions(spec, eps_list, method, steps, layer_range, editor.weights_id, inversion,
                        keeps_class(spec, keep_class), scale, labels)

