"""Checks for what comes from outside: latent metadata, configs, weights manifests, eps values, seeds.

Each is checked once, where it is read, against one schema (types, ranges, finite numbers), so a tampered or
careless value is refused there with a one-line :class:`UserError` instead of failing deep inside as a TypeError,
an IndexError or an endless walk. Torch-free: the CLI imports it before it needs torch.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import typing
from typing import Any

from semdir_edit.core.errors import UserError

# |eps| of one edit, in apply's unit (W's spread, lengthened for our calibrated directions), for the CLI (apply,
# batch) and the browser editor alike. The sliders span -3..3; beyond ~10 spreads the generator draws noise, and a
# class-locked walk takes |eps| / step passes, so an unbounded eps (1e9) would walk for ever.
EPS_LIMIT = 10.0
# The most a direction's eps unit may be lengthened beyond W's spread along it (`directions calibrate`): a walk of
# |eps| EPS_LIMIT then still ends within reach.
MAX_UNIT_GAIN = 5.0
# `directions calibrate`'s defaults: the change (mean absolute pixel change, images in [0, 1]) each of our directions
# should make at |eps| 3 (2.5 x a faint one's; the global set's strongest make 0.075, the class sets 0.09 on
# average), and the most its unit may grow beyond W's spread (edits at 3 x stayed as typical of their class, and as
# often named their class by the judge, as at 1 x on the global set's faint directions).
UNIT_TARGET = 0.05
UNIT_MAX_GAIN = 3.0
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit seed; larger ones overflow.
# OSError numbers that concern one output's path (a name too long, a folder or device where a file goes), not the
# disk or the machine: batch records that input as failed and goes on.
PATH_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENOTEMPTY})


def one_line(text: object) -> str:
    """Text for a one-line message: newlines and other control characters (e.g. in a file name) escaped."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in str(text))


def _show(value: Any) -> str:
    """A short description of a refused value: its JSON-ish type and (a bit of) the value itself."""
    kind = {type(None): "null", bool: "a boolean", str: "the text", list: "a list", dict: "an object"}.get(
        type(value), f"a {type(value).__name__}")
    if isinstance(value, (list, dict)):
        return kind
    text = one_line(repr(value) if isinstance(value, str) else value)
    return f"{kind} {text[:40]}{'…' if len(text) > 40 else ''}" if value is not None else kind


def is_int(value: Any) -> bool:
    """An integer that is not a bool (JSON and YAML true/false are bools, and bool is an int in Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return (is_int(value) or isinstance(value, float)) and math.isfinite(value)


# ------------------------------------------------------------------------------------------------ eps and seeds

def check_eps(values: list[float], what: str = "--eps") -> list[float]:
    """Every eps finite and within ±EPS_LIMIT (the bound shared by apply, batch and the browser editor)."""
    for value in values:
        if not is_number(value):
            raise UserError(f"invalid {what}: {_show(value)} is not a finite number")
        if abs(value) > EPS_LIMIT:
            raise UserError(f"invalid {what}: {value:g} is out of range (-{EPS_LIMIT:g}..{EPS_LIMIT:g} spreads)")
    return [float(v) for v in values]


def check_seed(seed: int, what: str = "seed") -> int:
    if not is_int(seed) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"invalid {what}: use an integer from 0 to {MAX_SEED}")
    return seed


# ------------------------------------------------------------------------------------------------ latent metadata

# Keys ``latents.latent_meta`` writes (and the browser editor's samples), with their types. None is allowed for each
# (class_index None: the classifier labels the code); other keys are kept as they are.
LATENT_SCHEMA: dict[str, type] = {"weights_id": str, "method": str, "steps": int, "class_index": int,
                                  "class_name": str, "confidence": float, "source": str}


def check_latent_meta(meta: dict[str, Any], where: str, num_classes: int | None = None) -> dict[str, Any]:
    """Refuse latent metadata of the wrong types or ranges: class_index an integer 0..num_classes-1 (or null),
    steps >= 0, confidence in [0, 1]."""
    for key, kind in LATENT_SCHEMA.items():
        value = meta.get(key)
        if value is None:
            continue
        ok = is_int(value) if kind is int else is_number(value) if kind is float else isinstance(value, kind)
        if not ok:
            wanted = {int: "an integer", float: "a number"}.get(kind, "text")
            raise UserError(f"{where}: refused: metadata {key} must be {wanted}, not {_show(value)}")
    ci = meta.get("class_index")
    if ci is not None and not (0 <= ci and (num_classes is None or ci < num_classes)):
        span = f"0..{num_classes - 1}" if num_classes else ">= 0"
        raise UserError(f"{where}: refused: metadata class_index {ci} is out of range ({span})")
    if meta.get("steps") is not None and meta["steps"] < 0:
        raise UserError(f"{where}: refused: metadata steps {meta['steps']} is negative")
    if meta.get("confidence") is not None and not 0 <= meta["confidence"] <= 1:
        raise UserError(f"{where}: refused: metadata confidence {meta['confidence']:g} is not in 0..1")
    return meta


# ------------------------------------------------------------------------------------------------ configs

# Config fields that must be > 0 (the others are >= 0: every number in the configs is a size, count, rate or weight).
POSITIVE_FIELDS = frozenset({"lr", "batch_size", "resolution", "z_dim", "mapping_layers", "mapping_lr_mul",
                             "r1_interval", "pl_interval", "pl_batch_shrink", "sample_every", "checkpoint_every",
                             "epochs", "spread_samples", "init_samples_per_class", "init_rank", "num_classes",
                             "img_channels"})
_ZERO_MEANS_AUTO = frozenset({"num_classes"})  # Deformator/bank fields where 0 = take it from another network.


def _type_error(where: str, value: Any, wanted: str) -> UserError:
    hint = ""
    if isinstance(value, str) and wanted == "a number":
        try:
            float(value)
            hint = " (YAML reads a number like 1e-3 without a dot as text: write 1.0e-3)"
        except ValueError:
            pass
    return UserError(f"config {where} must be {wanted}, not {_show(value)}{hint}")


def _check_value(value: Any, hint: Any, where: str) -> None:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise _type_error(where, value, "true or false")
    elif hint is int:
        if not is_int(value):
            raise _type_error(where, value, "an integer")
    elif hint is float:
        if not is_number(value):
            raise _type_error(where, value, "a number")
    elif hint is str:
        if not isinstance(value, str):
            raise _type_error(where, value, "text")
    elif origin is list:
        if not isinstance(value, list):
            raise _type_error(where, value, "a list")
        for i, item in enumerate(value):
            _check_value(item, args[0], f"{where}[{i}]")
    elif origin is dict:
        if not isinstance(value, dict):
            raise _type_error(where, value, "a mapping")
        for key, item in value.items():
            _check_value(key, args[0], f"{where} key")
            _check_value(item, args[1], f"{where}[{key}]")
    if is_number(value) and not isinstance(value, bool):
        name = where.rsplit(".", 1)[-1].split("[")[0]
        positive = name in POSITIVE_FIELDS and not (name in _ZERO_MEANS_AUTO and value == 0)
        if value < 0 or (positive and value == 0):
            raise UserError(f"config {where} must be {'> 0' if positive else '>= 0'}, not {value:g}")


def check_config_section(section: Any, where: str) -> Any:
    """Every field of a config dataclass of its declared type (int, float, str, bool, list, dict), finite, >= 0."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        _check_value(getattr(section, f.name), hints[f.name], f"{where}.{f.name}")
    return section


# ------------------------------------------------------------------------------------------------ weights manifest

def check_manifest(manifest: Any, where: str) -> dict[str, Any]:
    """A weights folder's manifest.json: an object whose ``models`` map kinds to entries with a plain ``file`` name,
    a ``sha256`` and a ``config`` object (class_names, when present, a list of text); ``figures`` and
    ``descriptions`` objects; ``direction_units.gains`` rows of numbers in (0, MAX_UNIT_GAIN]."""
    def refuse(why: str) -> UserError:
        return UserError(f"{where} refused: {why}")

    if not isinstance(manifest, dict):
        raise refuse(f"the manifest must be a JSON object, not {_show(manifest)}")
    for key in ("models", "figures", "descriptions", "direction_units"):
        if key in manifest and not isinstance(manifest[key], dict):
            raise refuse(f"'{key}' must be an object, not {_show(manifest[key])}")
    gains = manifest.get("direction_units", {}).get("gains", [])
    if not (isinstance(gains, list) and all(isinstance(row, list) and all(
            isinstance(g, (int, float)) and not isinstance(g, bool) and math.isfinite(g) and 0 < g <= MAX_UNIT_GAIN
            for g in row) for row in gains)):
        raise refuse(f"direction_units.gains must be lists of numbers in (0, {MAX_UNIT_GAIN:g}]")
    for kind, entry in manifest.get("models", {}).items():
        if not isinstance(entry, dict):
            raise refuse(f"models.{one_line(kind)} must be an object, not {_show(entry)}")
        file = entry.get("file")
        # A plain name: the manifest must not point the loader at files outside its folder.
        if not isinstance(file, str) or not file or "/" in file or "\\" in file or file in (".", ".."):
            raise refuse(f"models.{one_line(kind)} has no plain 'file' name (got {_show(file)})")
        if not isinstance(entry.get("sha256"), str):
            raise refuse(f"models.{one_line(kind)} has no 'sha256' text (got {_show(entry.get('sha256'))})")
        if not isinstance(entry.get("config"), dict):
            raise refuse(f"models.{one_line(kind)} has no 'config' object (got {_show(entry.get('config'))})")
        names = entry.get("class_names")
        if names is not None and not (isinstance(names, list) and all(isinstance(n, str) and n for n in names)):
            raise refuse(f"models.{one_line(kind)}.class_names must be a list of names")
    return manifest
