"""The one place for checkpoint and weights I/O.

Two kinds of files, as in edm:
- *weights* (``<name>.safetensors``): inference weights only, with the model's config in the
  safetensors metadata; shipped in ``weights/<domain>/`` with ``manifest.json`` (config, command,
  git commit, sha256, measured figures). Never pickles.
- *training state* (``training-state.pt``): everything needed to resume (networks, optimisers, step,
  RNG). Written atomically, read with ``torch.load(weights_only=True)`` so loading never runs code.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from semdir_edit.config import (
    ClassifierConfig,
    DeformatorConfig,
    DirectionBankConfig,
    DiscriminatorConfig,
    EncoderConfig,
    GeneratorConfig,
    ShiftPredictorConfig,
    to_dict,
)
from semdir_edit.core.errors import UserError
from semdir_edit.core.io import atomic_save_safetensors, atomic_write_bytes, atomic_write_json, sha256_file
from semdir_edit.core.validate import check_manifest, one_line
from semdir_edit.models import Classifier, Discriminator, Generator
from semdir_edit.models.deformator import Deformators
from semdir_edit.models.direction_bank import DirectionBank
from semdir_edit.models.encoder import Encoder
from semdir_edit.models.shift_predictor import ShiftPredictor

MANIFEST = "manifest.json"
# Model kind -> (network class, config class). Explicit, so grep and type checkers can follow it.
MODEL_KINDS: dict[str, tuple[type[nn.Module], type]] = {
    "generator": (Generator, GeneratorConfig),
    "discriminator": (Discriminator, DiscriminatorConfig),
    "classifier": (Classifier, ClassifierConfig),       # Shared: directions, FID features, class lock, perceptual.
    "photo_classifier": (Classifier, ClassifierConfig),  # Photos only: their class and ood_score (K + 1 outputs).
    "classifier_lock": (Classifier, ClassifierConfig),   # The class lock's second opinion, trained apart.
    "classifier_judge": (Classifier, ClassifierConfig),  # Evaluation only: trained apart, never steered by.
    "encoder": (Encoder, EncoderConfig),                # Domain-guided encoder (in-domain inversion).
    "encoder_conventional": (Encoder, EncoderConfig),   # Baseline encoder trained in latent space.
    "deformators": (Deformators, DeformatorConfig),     # N+1 direction sets (global + per class).
    "shift_predictor": (ShiftPredictor, ShiftPredictorConfig),
    "direction_bank": (DirectionBank, DirectionBankConfig),  # PCA, SeFa, random, class boundaries, W stats.
    "deformators_voynov": (Deformators, DeformatorConfig),   # Baseline: global directions only (Voynov & Babenko).
    "shift_predictor_voynov": (ShiftPredictor, ShiftPredictorConfig),
}


def git_commit() -> str:
    """The current git commit of the source tree ("unknown" outside a checkout), "+dirty" if modified.

    ``SEMDIR_GIT_COMMIT`` names it where the tree travels without its ``.git`` (a copy sent to a training machine).
    """
    if os.environ.get("SEMDIR_GIT_COMMIT"):
        return os.environ["SEMDIR_GIT_COMMIT"]
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha or "unknown") + ("+dirty" if dirty and sha else "")


# ----------------------------------------------------------------------------- weights (safetensors)

def save_weights(model: nn.Module, kind: str, path: str | Path) -> str:
    """Save a network's state (tensors only) with its config in the metadata; returns the sha256."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_save_safetensors(path, state, {"kind": kind, "config": json.dumps(to_dict(model.cfg), sort_keys=True)})
    return sha256_file(path)


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; anything else is refused with a clear error."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path} is not a valid safetensors weights file ({str(exc).splitlines()[0]})") from None


def build_model(kind: str, config: dict[str, Any], state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Rebuild a network from its stored config and (optionally) its tensors."""
    if kind not in MODEL_KINDS:
        raise UserError(f"unknown model kind '{kind}'")
    net_cls, cfg_cls = MODEL_KINDS[kind]
    try:
        model = net_cls(cfg_cls(**config))
    except (TypeError, ValueError, KeyError) as exc:
        raise UserError(f"stored {kind} config is invalid ({exc})") from None
    if state is not None:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise UserError(f"{kind} weights do not match their config ({str(exc).splitlines()[0]})") from None
    return model


def load_model(weights_dir: str | Path, kind: str, device: torch.device | str = "cpu") -> nn.Module:
    """Load a shipped network (eval mode) after checking its sha256 and config against the manifest."""
    weights_dir = Path(weights_dir)
    manifest = read_manifest(weights_dir)
    entry = manifest.get("models", {}).get(kind)
    if entry is None:
        raise UserError(f"{weights_dir}/{MANIFEST} has no '{kind}' entry (train it first)")
    path = weights_dir / entry["file"]
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    digest = sha256_file(path)
    if digest != entry.get("sha256"):
        expected = str(entry.get("sha256"))[:12]
        raise UserError(f"{path}: sha256 {digest[:12]}… does not match the manifest ({expected}…); "
                        "the file was modified or belongs to other weights")
    state, meta = read_weights(path)
    try:
        stored = json.loads(meta.get("config", "null"))
    except json.JSONDecodeError:
        stored = None
    if stored != entry.get("config") or meta.get("kind") != kind:
        raise UserError(f"{path}: config in the file does not match {MANIFEST}; refusing to load")
    return build_model(kind, stored, state).to(device).eval().requires_grad_(False)


def load_into(module: nn.Module, weights_dir: str | Path, kind: str,
              adapt: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None) -> None:
    """Copy a weights folder's ``kind`` into ``module`` (``--init-from``), through ``adapt`` when given (e.g. a stored
    state made to fit a wider model); UserError when the shapes differ."""
    state = load_model(weights_dir, kind).state_dict()
    try:
        module.load_state_dict(adapt(state) if adapt is not None else state)
    except RuntimeError as err:  # Shapes differ: another width, K or class count.
        first = (str(err).splitlines() or ["?"])[-1].strip()
        raise UserError(f"--init-from {weights_dir}: its {kind} does not fit this config ({first})") from None


def init_record(weights_dir: str | Path, kind: str) -> dict[str, Any]:
    """What a model trained on from shipped weights (``--init-from``) started from: that model's manifest entry
    (command, commit, sha256, steps, ...) without its config, plus the folder."""
    entry = dict(read_manifest(weights_dir)["models"][kind])
    entry.pop("config", None)
    return {"weights": str(weights_dir), **entry}


def read_manifest(weights_dir: str | Path) -> dict[str, Any]:
    path = Path(weights_dir) / MANIFEST
    if not path.is_file():
        raise UserError(f"no {MANIFEST} in {weights_dir}: not a weights folder")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} cannot be read ({one_line(exc)})") from None
    except RecursionError:
        raise UserError(f"{path} cannot be read (nested too deeply)") from None
    return check_manifest(manifest, str(path))  # The one place it is read: its structure is checked here.


def weights_id(weights_dir: str | Path) -> str:
    """Short id of a weights folder (sha256 of the generator file): latent files record it."""
    entry = read_manifest(weights_dir).get("models", {}).get("generator", {})
    return str(entry.get("sha256", "none"))[:16]


def _set_in_manifest(weights_dir: Path, keys: tuple[str, ...], value: Any, *, create: bool = False) -> None:
    """``manifest[keys[0]]...[keys[-1]] = value``, read-modify-written atomically under a lock: evaluations and
    trainings may run side by side, and must not lose each other's entries. ``create``: start an empty manifest
    when there is none (else a folder without one is refused)."""
    path = weights_dir / MANIFEST
    if not (create or path.is_file()):
        read_manifest(weights_dir)  # Raises the one-line "not a weights folder" error.
    with open(weights_dir / ".manifest.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            manifest = {"models": {}, "figures": {}} if create and not path.is_file() else read_manifest(weights_dir)
            node = manifest
            for key in keys[:-1]:
                node = node.setdefault(key, {})
            node[keys[-1]] = value
            atomic_write_json(path, manifest)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def register_model(weights_dir: str | Path, kind: str, model: nn.Module, *, command: str,
                   extra: dict[str, Any] | None = None, commit: str | None = None) -> dict[str, Any]:
    """Save ``model`` into ``weights_dir`` and record it in the manifest (file, sha256, config, command, commit).

    commit: the source commit that trained it (training loops read it when they start); None = the current one.
    """
    weights_dir = Path(weights_dir)
    file = f"{kind}.safetensors"
    digest = save_weights(model, kind, weights_dir / file)
    entry = {"file": file, "sha256": digest, "config": to_dict(model.cfg), "command": command,
             "git_commit": commit or git_commit(), **(extra or {})}
    _set_in_manifest(weights_dir, ("models", kind), entry, create=True)
    return entry


def merge_models(dst: str | Path, src: str | Path, kinds: list[str]) -> list[str]:
    """Copy the networks ``kinds`` (files and manifest entries) of weights folder ``src`` into ``dst`` (created
    when missing); returns the kinds ``src`` does not have. Each file is written atomically and checked against
    its recorded sha256, and every entry goes into ``dst``'s manifest under its lock, so jobs that register into
    ``dst`` meanwhile keep their entries."""
    dst, src = Path(dst), Path(src)
    models = read_manifest(src).get("models", {})
    missing = [kind for kind in kinds if kind not in models]
    dst.mkdir(parents=True, exist_ok=True)
    for kind in kinds:
        if kind in missing:
            continue
        entry = models[kind]
        source = src / entry["file"]
        if sha256_file(source) != entry.get("sha256"):
            raise UserError(f"{source}: its sha256 differs from {src / MANIFEST}'s record")
        atomic_write_bytes(dst / entry["file"], source.read_bytes())
        _set_in_manifest(dst, ("models", kind), entry, create=True)
    return missing


def update_figures(weights_dir: str | Path, section: str, figures: dict[str, Any], merge: bool = False) -> None:
    """Record measured figures (from ``evaluate``) under ``manifest['figures'][section]``; ``merge``: replace only
    these keys of the section (a command that re-measures part of it)."""
    if not merge:
        _set_in_manifest(Path(weights_dir), ("figures", section), figures)
        return
    for key, value in figures.items():
        _set_in_manifest(Path(weights_dir), ("figures", section, key), value)


def update_descriptions(weights_dir: str | Path, descriptions: dict[str, Any]) -> None:
    """Record each direction's measured description (``evaluate directions``) in ``manifest["descriptions"]``."""
    _set_in_manifest(Path(weights_dir), ("descriptions",), descriptions)


def update_direction_units(weights_dir: str | Path, units: dict[str, Any]) -> None:
    """Record the eps unit of our directions (``directions calibrate``) in ``manifest["direction_units"]``."""
    _set_in_manifest(Path(weights_dir), ("direction_units",), units)


def unit_gains(manifest: dict[str, Any], num_sets: int, k: int) -> torch.Tensor:
    """(num_sets, k): how much longer than W's spread each of our directions' eps unit is (global set first, then
    one row per class, as ``Deformators.all_directions``); ones when none were recorded."""
    gains = manifest.get("direction_units", {}).get("gains")
    if not gains:
        return torch.ones(num_sets, k)
    table = torch.tensor(gains, dtype=torch.float32)
    if table.shape != (num_sets, k):
        raise UserError(f"direction_units.gains has shape {tuple(table.shape)}, the directions ({num_sets}, {k}): "
                        "re-run `semdir-edit directions calibrate --record`")
    return table


# ----------------------------------------------------------------------------- training state

def save_training_state(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically write a resumable training state (tensors, numbers, strings only)."""
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_training_state(path: str | Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """Read a training state with ``weights_only=True``: a file that needs unpickling code is refused."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"no checkpoint to resume from at {path}") from None
    except Exception as exc:  # noqa: BLE001 — torch raises many types for foreign or corrupt files.
        raise UserError(f"{path}: not a valid training checkpoint ({str(exc).splitlines()[0]})") from None
