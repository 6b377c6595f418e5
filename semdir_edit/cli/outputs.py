"""What the CLI writes for one inverted image; every file is written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from semdir_edit.core.errors import UserError
from semdir_edit.core.images import save_grid, to_float
from semdir_edit.core.io import LATENT_SUFFIX, atomic_write_json
from semdir_edit.core.types import Inverted
from semdir_edit.latents import latent_meta, save_latent


def unique_stem(name: str, used: set[str]) -> str:
    """The file stem of ``name``, made unique among ``used`` (two inputs may share a stem)."""
    stem = Path(name).stem or "image"
    candidate, i = stem, 1
    while candidate in used:
        i += 1
        candidate = f"{stem}-{i}"
    used.add(candidate)
    return candidate


def write_inversion(out: Path, res: Inverted, weights_id: str, used: set[str]) -> dict[str, Any]:
    """Write ``<stem>.domain.png``, ``.recon.png``, ``.side.png`` (x4), ``.latent.safetensors`` and ``.json``."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {out}: {exc.strerror or exc}") from None
    stem = unique_stem(res.name, used)
    domain = to_float(res.domain)[None]
    recon = res.reconstruction[None]
    save_grid(out / f"{stem}.domain.png", domain, nrow=1, pad=0)
    save_grid(out / f"{stem}.recon.png", recon, nrow=1, pad=0)
    save_grid(out / f"{stem}.side.png", torch.cat([domain, recon]), nrow=2, scale=4,
              cols=["domain image", "reconstruction"])
    summary = {**res.summary(), "weights_id": weights_id, "source": res.name}
    save_latent(out / (stem + LATENT_SUFFIX), res.ws, latent_meta(res, weights_id))
    files = {kind: str(out / f"{stem}.{kind}") for kind in ("domain.png", "recon.png", "side.png",
                                                             "latent.safetensors")}
    summary["files"] = files
    try:
        atomic_write_json(out / f"{stem}.json", summary)
    except OSError as exc:
        raise UserError(f"cannot write {out / stem}.json: {exc.strerror or exc}") from None
    return summary
