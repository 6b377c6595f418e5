"""What every training shares: the run folder, its options and stats files, the time budget, the RNG.

Under torchrun (see :mod:`semdir_edit.core.distributed`) the trainers wrap what they train in DistributedDataParallel;
each config's ``batch_size`` is the *global* batch, split evenly over the processes, so a config means the same
training (learning rates, EMA, kimg) whatever the number of processes. Every rank builds the networks from the
same seed, then draws from its own random stream (its own batches); only rank 0 writes the run folder and
registers weights, and every rank resumes from the same checkpoint.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semdir_edit.core import distributed
from semdir_edit.core.io import atomic_write_json


class RunFolder:
    """One folder per run: ``options.json`` written before training, ``stats.jsonl`` appended to,
    ``training-state.pt`` (resume) and ``samples/``.

    ``writer=False`` (default on the ranks other than 0 under torchrun): only the paths, nothing is created or
    cleaned up (that would race with rank 0's writes); such a process reads the checkpoint and writes nothing.
    """

    def __init__(self, path: str | Path, writer: bool | None = None) -> None:
        self.path = Path(path)
        if not (distributed.is_main() if writer is None else writer):
            return
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "samples").mkdir(exist_ok=True)
        # A killed run can leave the temp file of an unfinished atomic write; the real file is intact.
        for stale in [*self.path.glob(".*.tmp"), *(self.path / "samples").glob(".*.tmp")]:
            stale.unlink(missing_ok=True)

    @property
    def state_path(self) -> Path:
        return self.path / "training-state.pt"

    def resumes(self, resume: bool) -> bool:
        """Whether a run asked to ``resume`` continues a checkpoint here (else it starts afresh)."""
        return resume and self.state_path.exists()

    def write_options(self, options: dict[str, Any]) -> None:
        atomic_write_json(self.path / "options.json", options)

    def append_stats(self, stats: dict[str, Any]) -> None:
        with open(self.path / "stats.jsonl", "a") as f:
            f.write(json.dumps(stats) + "\n")


class TimeBudget:
    """Stops a loop after ``minutes`` (0 = no limit) so a long run can end cleanly and resume later.

    Under torchrun the ranks agree (a collective in :meth:`exceeded`, only when there is a limit): one rank
    leaving the loop while the others go on would leave them waiting in DDP's all-reduce.
    """

    def __init__(self, minutes: float) -> None:
        self.deadline = time.monotonic() + minutes * 60 if minutes > 0 else None

    def exceeded(self) -> bool:
        if self.deadline is None:
            return False
        return distributed.any_true(time.monotonic() > self.deadline)


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
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """A reproducible seed for one rank's random stream, different for every (seed, rank, step)."""
    return (seed * 1_000_003 + rank * 7_919 + step) % 2**63


def checkpoint_rng() -> dict[str, Any]:
    """The random-stream entries of a training checkpoint; a collective under torchrun (call it on every rank).

    ``rng``: this process's state (rank 0's under torchrun); ``rng_ranks``, under torchrun only: every rank's.
    """
    state: dict[str, Any] = {"rng": rng_state()}
    if distributed.world_size() > 1:
        state["rng_ranks"] = distributed.all_gather_object(state["rng"])
    return state


def start_rng(seed: int, state: dict[str, Any] | None = None, step: int = 0) -> None:
    """Set this process's random stream once the networks are built (from ``seed_everything(seed)`` on every rank).

    ``state``: the checkpoint resumed from, whose saved stream continues (this rank's, under torchrun). Without
    one, a single process keeps the stream it has; under torchrun every rank starts its own (its own batches),
    from ``rank_seed(seed, rank, step)`` - also when the checkpoint was written by another number of processes.
    """
    n, rank = distributed.world_size(), distributed.rank()
    ranks = (state or {}).get("rng_ranks")
    if state is not None and n == 1:
        set_rng_state(state["rng"])
    elif state is not None and ranks is not None and len(ranks) == n:
        set_rng_state(ranks[rank])
    elif n > 1:
        seed_everything(rank_seed(seed, rank, step))
