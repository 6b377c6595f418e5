"""Direction specs (``global:3``, ``class:2@Sneaker``, ``pca:0``, ``to:Coat`` …), eps ranges, layer ranges,
and applying a direction to W+ codes.

A direction d (unit vector in W) moves a code by ``eps * spread(d) * d``, spread(d) = sqrt(d^T Sigma_W d)
the standard deviation of W along d, so ``--eps 2`` is a comparable step for every source. It is
added to every W+ layer, or to a chosen layer range (GANSpace's layer-wise edits).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from semdir_edit.config import match_class  # noqa: F401 - re-exported: direction specs name classes.
from semdir_edit.core.errors import UserError
from semdir_edit.core.validate import check_eps

KINDS = ("global", "class", "voynov", "pca", "sefa", "random", "cpca", "to")
CLASS_KINDS = ("class", "cpca")  # Kinds whose K directions are per class (``k@<class>``, else the image's class).
MAX_STRIP = 101  # Longest traversal strip.


@dataclass(frozen=True)
class DirectionSpec:
    """A parsed ``--direction``: kind, index k (None for ``to``), and a class name (``class:k@Name``,
    ``cpca:k@Name``, ``to:Name``)."""

    kind: str
    k: int | None = None
    class_name: str | None = None

    @property
    def needs_class(self) -> bool:
        """Whether the vector depends on the edited image's class (``class:k`` or ``cpca:k`` without ``@<class>``,
        ``to:<class>``)."""
        return self.kind == "to" or (self.kind in CLASS_KINDS and self.class_name is None)

    def __str__(self) -> str:
        if self.kind == "to":
            return f"to:{self.class_name}"
        return f"{self.kind}:{self.k}" + (f"@{self.class_name}" if self.class_name else "")


_SPEC = re.compile(r"^(?P<kind>[a-z]+):(?P<arg>[^@]+?)(?:@(?P<cls>.+))?$")


def parse_direction(spec: str) -> DirectionSpec:
    """Parse a direction spec; the k < K and class-name checks happen when it is resolved against weights."""
    m = _SPEC.match(spec.strip())
    if not m or m["kind"] not in KINDS:
        raise UserError(f"invalid --direction '{spec}' (use one of: global:K, class:K, class:K@<class>, voynov:K, "
                        "pca:K, sefa:K, random:K, cpca:K, cpca:K@<class>, to:<class>)")
    kind, arg, cls = m["kind"], m["arg"].strip(), m["cls"]
    if kind == "to":
        if cls:
            raise UserError(f"invalid --direction '{spec}': use to:<class>")
        return DirectionSpec("to", None, arg)
    if not (arg.isascii() and arg.isdigit()):  # str.isdigit() also takes "²", which int() refuses.
        raise UserError(f"invalid --direction '{spec}': the direction index must be a non-negative integer")
    if cls is not None and kind not in CLASS_KINDS:
        raise UserError(f"invalid --direction '{spec}': only class and cpca directions take @<class>")
    if cls is not None and not cls.strip():
        raise UserError(f"invalid --direction '{spec}': name a class after @")
    return DirectionSpec(kind, int(arg), cls.strip() if cls else None)


KEEP_CHOICES = ("global", "class", "none")
LOCKED_KINDS = ("class", "global")   # Walked class-locked unless --keep none.


def parse_keep(value: str | None) -> tuple[bool, bool | None]:
    """``--keep`` -> (keep_global, keep_class): ``global`` (with to:<class>), ``class`` (class-locked edit), ``none``
    (a plain linear edit); None = each at its default (class-locked for ``class:k`` and ``global:k``)."""
    if value is None:
        return False, None
    key = value.strip().lower()
    if key not in KEEP_CHOICES:
        raise UserError(f"--keep takes {', '.join(KEEP_CHOICES)}, not '{value}'")
    return key == "global", {"class": True, "none": False}.get(key)


def keeps_class(spec: DirectionSpec, keep_class: bool | None) -> bool:
    """Whether an edit is class-locked: ``keep_class`` when given, else on for our learned directions (``class:k``
    and ``global:k``: semantics within a class, or shared by all classes, never meant to change the article).
    UserError for ``to:<class>`` with ``keep_class=True`` (that direction exists to change the class)."""
    if keep_class and spec.kind == "to":
        raise UserError(f"'{spec}' changes the class: it cannot keep it (use --keep none)")
    return spec.kind in LOCKED_KINDS if keep_class is None else keep_class


def walks(spec: DirectionSpec, keep_class: bool | None) -> bool:
    """Whether an edit is walked step by step through the networks (class-locked, or ``to:<class>``) rather than
    added in one linear shift."""
    return spec.kind == "to" or keeps_class(spec, keep_class)


def edit_groups(classes: list[int | None], spec: DirectionSpec, keep_class: bool | None = None
                ) -> list[tuple[int | None, list[int]]]:
    """Positions of codes that one ``Editor.apply`` call can edit together, each with the class to pass it.

    Class and boundary directions, and class-locked edits, depend on the image's class: one group per class
    present. Any other edit takes everything at once (its class argument is unused; the first code's is passed).
    """
    if not classes:
        return []
    if not spec.needs_class and not keeps_class(spec, keep_class):
        return [(classes[0], list(range(len(classes))))]
    groups: dict[int | None, list[int]] = {}
    for i, c in enumerate(classes):
        groups.setdefault(c, []).append(i)
    return list(groups.items())


def parse_eps(spec: str) -> list[float]:
    """``"2"`` -> [2.0]; ``"-3:3:13"`` -> 13 values from -3 to 3 inclusive (a traversal strip)."""
    parts = spec.strip().split(":")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise UserError(f"invalid --eps '{spec}' (use a number like 2, or start:stop:count like -3:3:13)") from None
    if not all(math.isfinite(v) for v in values):
        raise UserError(f"invalid --eps '{spec}': values must be finite")
    check_eps(values[:2], f"--eps '{spec}'")
    if len(values) == 1:
        return values
    if len(values) != 3 or values[2] != int(values[2]) or not 2 <= values[2] <= MAX_STRIP:
        raise UserError(f"invalid --eps '{spec}': use start:stop:count with an integer count 2..{MAX_STRIP}")
    start, stop, count = values[0], values[1], int(values[2])
    return [start + (stop - start) * i / (count - 1) for i in range(count)]


def parse_layers(spec: str | None, num_ws: int) -> range:
    """``None`` = all layers; ``"2-5"`` = layers 2..5 inclusive; ``"3"`` = layer 3 only."""
    if spec is None or spec.strip() in ("", "all"):
        return range(num_ws)
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", spec, re.ASCII)
    if not m:
        raise UserError(f"invalid --layers '{spec}' (use a range like 2-5, or one layer like 3)")
    lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
    if not lo <= hi < num_ws:
        raise UserError(f"invalid --layers '{spec}': layers run from 0 to {num_ws - 1}")
    return range(lo, hi + 1)


def spread_of(direction: torch.Tensor, w_cov: torch.Tensor) -> torch.Tensor:
    """sqrt(d^T Sigma d) for a unit direction (w_dim,)."""
    return (direction @ w_cov @ direction).clamp_min(1e-12).sqrt()


def shift_codes(ws: torch.Tensor, direction: torch.Tensor, eps: list[float], spread: float | torch.Tensor,
                layers: range) -> torch.Tensor:
    """W+ codes (B, num_ws, w_dim) shifted by each eps along ``direction`` on ``layers`` -> (B, E, num_ws, w_dim)."""
    mask = torch.zeros(ws.shape[1], 1, device=ws.device, dtype=ws.dtype)
    mask[list(layers)] = 1.0
    steps = torch.tensor(eps, device=ws.device, dtype=ws.dtype)[:, None, None] * spread   # (E, 1, 1)
    return ws[:, None] + steps * mask * direction.to(ws)                                  # (B, E, num_ws, w_dim)
