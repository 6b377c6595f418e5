"""Latent files: one inverted image's W+ code as safetensors, with metadata that ties it to its weights.

``apply`` and ``batch`` take these files later; a file made with other weights is refused by the
weights id recorded in its metadata.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from semdir_edit.core.errors import UserError
from semdir_edit.core.io import atomic_write_bytes
from semdir_edit.core.types import Inverted
from semdir_edit.core.validate import LATENT_SCHEMA, check_latent_meta, one_line

FORMAT = "semdir-edit latent v1"
# Metadata key of the sha256 of the code's float32 bytes: a flipped byte in the tensor is refused, not edited.
# Files written before it existed have none and still load.
CHECKSUM = "ws_sha256"
# Float dtypes a code may be stored in (read as float32); anything else (float8, integers) is refused.
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})


def ws_digest(ws: torch.Tensor) -> str:
    """sha256 of a code's float32 bytes (what ``save_latent`` stores)."""
    return hashlib.sha256(ws.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


def latent_meta(res: Inverted, weights_id: str) -> dict[str, Any]:
    """The metadata ``invert`` and ``batch`` store with an inverted code: weights id, method, steps, class, source."""
    return {"weights_id": weights_id, "method": res.method, "steps": res.steps, "class_index": res.class_index,
            "class_name": res.class_name, "confidence": res.confidence, "source": res.name,
            **({"ood_score": res.ood_score} if res.ood_score is not None else {})}


def sample_meta(weights_id: str, class_index: int, class_name: str, confidence: float, seed: int) -> dict[str, Any]:
    """The metadata of a generated code (exact, nothing inverted): as :func:`latent_meta`, method "sample"."""
    return {"weights_id": weights_id, "method": "sample", "steps": 0, "class_index": class_index,
            "class_name": class_name, "confidence": confidence, "source": f"seed {seed}"}


def _text(value: str) -> str:
    """Valid UTF-8 for the metadata: a non-UTF-8 file name (surrogate-escaped by Python) keeps its bytes as escapes."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def latent_bytes(ws: torch.Tensor, meta: dict[str, Any]) -> bytes:
    """``ws`` (num_ws, w_dim) and ``meta`` (must hold ``weights_id``) as a latent file's bytes, serialised in memory
    (what :func:`save_latent` writes; the browser editor serves them without a file)."""
    if ws.ndim != 2:
        raise ValueError(f"ws must be (num_ws, w_dim), got {tuple(ws.shape)}")
    if "weights_id" not in meta:
        raise ValueError("latent metadata needs a weights_id")
    ws = ws.detach().float().cpu().contiguous()
    strings = {"format": FORMAT, **{k: _text(v) if isinstance(v, str) else json.dumps(v) for k, v in meta.items()},
               CHECKSUM: ws_digest(ws)}
    return save_tensors({"ws": ws}, metadata=strings)


def save_latent(path: str | Path, ws: torch.Tensor, meta: dict[str, Any], sync: bool = True) -> None:
    """Write ``ws`` (num_ws, w_dim) and ``meta`` (must hold ``weights_id``) atomically (``sync``: see
    :func:`~semdir_edit.core.io.atomic_write_bytes`)."""
    path = Path(path)
    data = latent_bytes(ws, meta)
    try:
        atomic_write_bytes(path, data, sync)
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
    except (json.JSONDecodeError, RecursionError):  # RecursionError: "[[[[..." nested beyond Python's stack.
        return value


def load_latent(path: str | Path, weights_id: str | None = None, num_ws: int | None = None,
                w_dim: int | None = None, num_classes: int | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Read a latent file -> (ws (num_ws, w_dim), metadata); refuses foreign, corrupt or mismatched files, and
    metadata of the wrong types or ranges (class_index must be 0..num_classes-1 when ``num_classes`` is given)."""
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
        raise UserError(f"{path}: not a valid latent file ({one_line((str(exc).splitlines() or ['?'])[0])})") from None
    except RecursionError:  # A header nested deeper than Python's stack ("[[[[...").
        raise UserError(f"{path}: not a valid latent file (header nested too deeply)") from None
    raw = header.get("__metadata__") or {}
    if not isinstance(raw, dict) or raw.get("format") != FORMAT or "ws" not in header:
        raise UserError(f"{path}: not a semdir-edit latent file")
    if not all(isinstance(v, str) for v in raw.values()):  # safetensors metadata is text only.
        raise UserError(f"{path}: not a valid latent file (metadata values must be text)")
    dtype = header["ws"].get("dtype") if isinstance(header["ws"], dict) else None
    if dtype not in FLOAT_DTYPES:
        raise UserError(f"{path}: refused: the code is stored as {one_line(dtype)[:20]}, not a float type "
                        f"({', '.join(sorted(FLOAT_DTYPES))})")
    try:
        ws = load_tensors(data)["ws"].float()
    except (SafetensorError, ValueError, RuntimeError, TypeError) as exc:
        raise UserError(f"{path}: not a valid latent file ({one_line((str(exc).splitlines() or ['?'])[0])})") from None
    meta = {key: _decode_value(value) for key, value in raw.items()}
    # Text fields are taken as stored: a weights id or a source file named "1234" must not be read as a number.
    for key in (*(k for k, kind in LATENT_SCHEMA.items() if kind is str), CHECKSUM):
        if key in raw:
            meta[key] = raw[key]
    check_latent_meta(meta, str(path), num_classes)
    if weights_id is not None and meta.get("weights_id") != weights_id:
        raise UserError(f"{path}: made with other weights (weights id {one_line(meta.get('weights_id'))[:40]}, "
                        f"these are {weights_id}); invert the image again")
    if ws.ndim != 2 or (num_ws is not None and ws.shape[0] != num_ws) or (w_dim is not None and ws.shape[1] != w_dim):
        raise UserError(f"{path}: code of shape {tuple(ws.shape)} does not fit this generator")
    expected = meta.pop(CHECKSUM, None)
    if expected is not None and expected != ws_digest(ws):
        raise UserError(f"{path}: refused: the code does not match its checksum (the file was modified or damaged)")
    if not np.isfinite(ws.numpy()).all():  # numpy: a fifth of torch's time on a tensor this small.
        raise UserError(f"{path}: the code holds NaN or Inf values")
    return ws, meta
