"""The one training loop: every network's training is a :class:`TrainingJob` that this loop runs.

A job owns its networks, optimisers and loss objects and takes one optimisation step at a time; the loop owns what
surrounds the steps, the same for every network (stylegan3's ``training_loop`` split the same way):

- resume: ``training-state.pt`` holds the job's ``state_dict()`` plus ``step``, ``seconds`` and the random streams
  (:func:`~semdir_edit.training.common.checkpoint_rng`), written atomically every ``checkpoint_every`` steps, on
  Ctrl-C, when the time limit stops the run and at the end; ``resume=True`` continues from it bit-exactly;
- stats: one line of ``stats.jsonl`` every ``log_every`` steps and at the last one - ``step``, ``kimg``, ``seconds``,
  the job's ``stats()`` and its losses averaged over the ranks;
- samples: ``samples/step-NNNNNNN.png`` every ``sample_every`` steps and at the last one;
- registration: the job's ``register`` when the planned steps are reached (with ``register_at_limit`` also when the
  time limit stopped the run), with what the manifest records of every training.

Under torchrun every rank runs the loop (the checkpoints' random streams and the time limit are collectives); only
rank 0 writes the run folder and registers.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from semdir_edit.checkpoint import git_commit, load_training_state, save_training_state
from semdir_edit.core import distributed
from semdir_edit.core.errors import UserError
from semdir_edit.core.images import save_grid
from semdir_edit.core.progress import bar as progress_bar
from semdir_edit.training.common import RunFolder, TimeBudget, checkpoint_rng, rng_state, start_rng

Losses = dict[str, torch.Tensor | float]  # Scalars of one step, read (synchronising with the GPU) only when logged.


class TrainingJob(ABC):
    """One network's training as :func:`train` runs it: its state, one step, a sample grid, its registration."""

    desc: str = "train"                       # Label of the progress bar.
    postfix: dict[str, str] = {}              # Progress bar label -> key of the logged losses shown there.
    digits: int = 4                           # Decimals of the logged losses.
    sample_columns: int = 8                   # Images per row of the sample grids.

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything resuming needs (networks, optimisers, running means), keyed as in ``training-state.pt``."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` from a checkpoint; ``UserError`` when it belongs to another training."""

    @abstractmethod
    def step(self, step: int) -> Losses:
        """Take one optimisation step (``step``: the number taken before it); returns its losses, detached."""

    def sample(self) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] for the sample grid, rows of ``sample_columns`` (rank 0 only)."""
        raise NotImplementedError(f"{type(self).__name__} writes no samples (sample_every = 0)")

    def stats(self) -> dict[str, Any]:
        """Figures of the latest step logged as they are, neither averaged nor rounded (e.g. the learning rate)."""
        return {}

    @abstractmethod
    def register(self, info: dict[str, Any], command: str, commit: str | None) -> None:
        """Register the trained networks; ``info``: what the manifest records of the training (rank 0 only)."""


def descend(loss: torch.Tensor, *optimizers: torch.optim.Optimizer | None) -> None:
    """One gradient step on ``loss`` for each of ``optimizers`` (None: a network that is not trained)."""
    trained = [opt for opt in optimizers if opt is not None]
    for opt in trained:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    for opt in trained:
        opt.step()


@dataclass
class Schedule:
    """When the loop does what, counted in steps."""

    steps: int                     # Planned steps: the job is registered when they are reached.
    checkpoint_every: int          # Write training-state.pt every N steps (also on Ctrl-C, at the limit, at the end).
    seed: int                      # The run's seed: every rank's random stream starts from it (start_rng).
    sample_every: int = 0          # Write a sample grid every N steps and at the last one; 0 = no samples.
    batch_size: int | None = None  # Global batch, to count kimg in the stats and the manifest; None = not counted.
    log_every: int = 50            # Append to stats.jsonl every N steps and at the last one.

    def kimg(self, step: int) -> dict[str, float]:
        return {} if self.batch_size is None else {"kimg": step * self.batch_size / 1000}


def train(job: TrainingJob, run: RunFolder, device: torch.device, schedule: Schedule, *, options: dict[str, Any],
          resume: bool = False, command: str = "", time_limit_min: float = 0.0, register_at_limit: bool = False,
          max_steps: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Run ``job`` in ``run``'s folder until ``schedule.steps`` (or ``max_steps``, or the time limit); returns the last
    logged stats with ``step``, ``seconds`` and ``finished``.

    options: what ``options.json`` records before the loop's own entries (the config, the job's settings).
    resume: continue from ``run``'s checkpoint when it has one (the job must then have been built without a
        starting point of its own: the checkpoint replaces it). ``time_limit_min``: stop, with a checkpoint, after
        that many minutes (0 = no limit). ``max_steps``: stop early (a test's interrupted run; no registration).
    """
    main = distributed.is_main()
    step, seconds, state = 0, 0.0, None
    if run.resumes(resume):
        state = load_training_state(run.state_path, device)
        try:
            job.load_state_dict(state)
        except UserError as exc:
            raise UserError(f"{run.state_path}: {exc}") from None
        step, seconds = int(state["step"]), float(state["seconds"])
    start_rng(schedule.seed, state, step)
    commit = git_commit()
    if main:
        run.write_options({**options, "command": command, "git_commit": commit, "device": str(device),
                           "processes": distributed.world_size(), "resumed_at": step})

    def checkpoint(gather: bool = True) -> None:
        # gather=False (Ctrl-C, when the ranks may be anywhere): rank 0's stream only; the ranks restart theirs.
        rng = checkpoint_rng() if gather else {"rng": rng_state()}
        if main:
            save_training_state(run.state_path, {**job.state_dict(), "step": step, "seconds": seconds, **rng})

    total = schedule.steps if max_steps is None else min(schedule.steps, max_steps)
    budget = TimeBudget(time_limit_min)
    bar = progress_bar(total=total, initial=step, desc=job.desc, unit="step", progress=progress and main)
    stats: dict[str, Any] = {}
    t0 = time.monotonic()
    try:
        while step < total and not budget.exceeded():
            losses = job.step(step)
            step += 1
            bar.update(1)

            # Log the step's losses, averaged over the ranks.
            if step % schedule.log_every == 0 or step == total:
                now = time.monotonic()
                seconds, t0 = seconds + now - t0, now
                mean = distributed.mean({k: float(v) for k, v in losses.items()})
                stats = {"step": step, **schedule.kimg(step), "seconds": round(seconds, 1), **job.stats(),
                         **{k: round(v, job.digits) for k, v in mean.items()}}
                bar.set_postfix({label: stats[key] for label, key in job.postfix.items()})
                if main:
                    run.append_stats(stats)
            if main and schedule.sample_every and (step % schedule.sample_every == 0 or step == total):
                with torch.no_grad():
                    images = job.sample()
                save_grid(run.path / "samples" / f"step-{step:07d}.png", images, nrow=job.sample_columns, scale=2)
            if step % schedule.checkpoint_every == 0:
                checkpoint()
    except KeyboardInterrupt:
        checkpoint(gather=False)
        raise
    finally:
        bar.close()
    seconds += time.monotonic() - t0
    checkpoint()
    if main and (step >= schedule.steps or (register_at_limit and step > 0)):
        job.register({"planned_steps": schedule.steps, "steps": step, **schedule.kimg(step),
                      "train_seconds": round(seconds), "device": str(device), "processes": distributed.world_size()},
                     command, commit)
    return {**stats, "step": step, "seconds": round(seconds, 1), "finished": step >= schedule.steps}
