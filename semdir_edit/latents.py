"""Latent files: one inverted image's W+ code as safetensors, with metadata that ties it to its weights.

``apply`` and ``batch`` take these files later; a file made with other weights is refused by the
weights id recorded in its metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors

from semdir_edit.checkpoint import atomic_save_safetensors
from semdir_edit.errors import UserError

if TYPE_CHECKING:
    from semdir_edit.editor import Inverted

FORMAT = "semdir-edit latent v1"


def latent_meta(res: Inverted, weights_id: str) -> dict[str, Any]:
    """The metadata ``invert`` and ``batch`` store with an inverted code: weights id, method, steps, class, source."""
    return {"weights_id": weights_id, "method": res.method, "steps": res.steps, "class_index": res.class_index,
            "class_name": res.class_name, "confidence": res.confidence, "source": res.name,
            **({"ood_score": res.ood_score} if res.ood_score is not None else {})}


def _text(value: str) -> str:
    """Valid UTF-8 for the metadata: a non-UTF-8 file name (surrogate-escaped by Python) keeps its bytes as escapes."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def save_latent(path: str | Path, ws: torch.Tensor, meta: dict[str, Any]) -> None:
    """Write ``ws`` (num_ws, w_dim) and ``meta`` (must hold ``weights_id``) atomically."""
    if ws.ndim != 2:
        raise ValueError(f"ws must be (num_ws, w_dim), got {tuple(ws.shape)}")
    if "weights_id" not in meta:
        raise ValueError("latent metadata needs a weights_id")
    path = Path(path)
    strings = {"format": FORMAT, **{k: _text(v) if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}}
    try:
        atomic_save_safetensors(path, {"ws": ws.detach().float().cpu().contiguous()}, strings)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


# The first characters a JSON text can start with (Python's json also reads NaN and Infinity).
_JSON_START = frozenset('[{"-0123456789tfnNI')


def _decode_value(value: str) -> Any:
    """A metadata value as ``save_latent`` stored it: JSON for numbers and the like, else the string itself.

    Only text that can be JSON is tried: a failed ``json.loads`` costs ~20 us (its exception), and every file holds
    several plain strings.
    """
    if value.lstrip()[:1] not in _JSON_START:
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def load_latent(path: str | Path, weights_id: str | None = None, num_ws: int | None = None,
                w_dim: int | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Read a latent file -> (ws (num_ws, w_dim), metadata); refuses foreign, corrupt or mismatched files."""
    path = Path(path)
    # One read, then the header by hand and the tensor from memory: a third of safe_open's time on these tiny
    # files, which `apply` and `batch` read by the thousand.
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise UserError(f"{path}: latent file not found") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        size = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
        if not 0 < size <= len(data) - 8:
            raise ValueError("no safetensors header")
        header = json.loads(data[8:8 + size])
        if not isinstance(header, dict):
            raise ValueError("no safetensors header")
    except ValueError as exc:  # Also bad JSON and bad UTF-8.
        raise UserError(f"{path}: not a valid latent file ({(str(exc).splitlines() or ['?'])[0]})") from None
    raw = header.get("__metadata__") or {}
    if not isinstance(raw, dict) or raw.get("format") != FORMAT or "ws" not in header:
        raise UserError(f"{path}: not a semdir-edit latent file")
    try:
        ws = load_tensors(data)["ws"]
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path}: not a valid latent file ({(str(exc).splitlines() or ['?'])[0]})") from None
    meta = {key: _decode_value(value) for key, value in raw.items()}
    if weights_id is not None and meta.get("weights_id") != weights_id:
        raise UserError(f"{path}: made with other weights (weights id {meta.get('weights_id')}, "
                        f"these are {weights_id}); invert the image again")
    if ws.ndim != 2 or (num_ws is not None and ws.shape[0] != num_ws) or (w_dim is not None and ws.shape[1] != w_dim):
        raise UserError(f"{path}: code of shape {tuple(ws.shape)} does not fit this generator")
    if not np.isfinite(ws.numpy()).all():  # numpy: a fifth of torch's time on a tensor this small.
        raise UserError(f"{path}: the code holds NaN or Inf values")
    return ws.float(), meta
