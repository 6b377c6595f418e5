"""What every training loop shares: the run folder, its options and stats files, the time budget."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semdir_edit.checkpoint import atomic_write_json


class RunFolder:
    """One folder per run: ``options.json`` written before training, ``stats.jsonl`` appended to,
    ``training-state.pt`` (resume) and ``samples/``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "samples").mkdir(exist_ok=True)
        # A killed run can leave the temp file of an unfinished atomic write; the real file is intact.
        for stale in [*self.path.glob(".*.tmp"), *(self.path / "samples").glob(".*.tmp")]:
            stale.unlink(missing_ok=True)

    @property
    def state_path(self) -> Path:
        return self.path / "training-state.pt"

    def write_options(self, options: dict[str, Any]) -> None:
        atomic_write_json(self.path / "options.json", options)

    def append_stats(self, stats: dict[str, Any]) -> None:
        with open(self.path / "stats.jsonl", "a") as f:
            f.write(json.dumps(stats) + "\n")


class TimeBudget:
    """Stops a loop after ``minutes`` (0 = no limit) so a long run can end cleanly and resume later."""

    def __init__(self, minutes: float) -> None:
        self.deadline = time.monotonic() + minutes * 60 if minutes > 0 else None

    def exceeded(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
