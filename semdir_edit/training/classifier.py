"""Classifier training: AdamW with a one-cycle schedule, label smoothing, random shifts and flips, run by the one
training loop (:mod:`semdir_edit.training.loop`).

The classifier labels generated images for the direction-discovery objective and supplies the
feature space of every distribution figure, so it is trained once and then frozen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from semdir_edit.checkpoint import register_model
from semdir_edit.config import Config, to_dict
from semdir_edit.core.device import autocast
from semdir_edit.core.errors import UserError
from semdir_edit.core.progress import bar
from semdir_edit.data import ImageSet, load_split
from semdir_edit.models import Classifier
from semdir_edit.training.common import RunFolder, seed_everything
from semdir_edit.training.loop import Losses, Schedule, TrainingJob, descend, train


def random_shift_flip(x: torch.Tensor, max_shift: int = 2) -> torch.Tensor:
    """Batch augmentation: translate each image by up to ``max_shift`` pixels and flip half of them."""
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b), device=x.device)
    rows = (torch.arange(h, device=x.device)[None, :] + dy[:, None])[:, None, :, None]
    x = padded.gather(2, rows.expand(b, x.shape[1], h, w + 2 * max_shift))
    cols = (torch.arange(w, device=x.device)[None, :] + dx[:, None])[:, None, None, :].expand(b, x.shape[1], h, w)
    x = x.gather(3, cols)
    flip = torch.rand(b, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


@torch.no_grad()
def predict(model: Classifier, data: ImageSet, device: torch.device, batch_size: int = 500,
            progress: bool = False) -> torch.Tensor:
    """Predicted labels for a whole image set (``progress``: a bar over the batches, see core.progress)."""
    model.eval()
    preds = []
    for start in bar(range(0, len(data), batch_size), desc="classify", unit="batch", progress=progress):
        x, _ = data.batch(torch.arange(start, min(start + batch_size, len(data))), device)
        with autocast(device):
            preds.append(model(x).argmax(1).cpu())
    return torch.cat(preds)


class ClassifierJob(TrainingJob):
    """The classifier on Fashion-MNIST's training split; one step = one batch, an epoch = one pass in a fresh order
    (seeded by the epoch, so a resumed run sees the same batches); the test accuracy is logged once per epoch."""

    desc = "train classifier"
    postfix = {"loss": "loss", "acc": "test_accuracy"}

    def __init__(self, cfg: Config, device: torch.device, data_dir: str | None = None,
                 weights_dir: str | Path | None = None, kind: str = "classifier") -> None:
        self.tc, self.device, self.weights_dir, self.kind = cfg.train_classifier, device, weights_dir, kind
        self.train_set = load_split(cfg.data, "train", data_dir)
        self.test_set = load_split(cfg.data, "test", data_dir)
        self.model = Classifier(cfg.classifier).to(device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=self.tc.lr, weight_decay=self.tc.weight_decay)
        self.steps_per_epoch = max(1, len(self.train_set) // self.tc.batch_size)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=self.tc.lr,
                                                         total_steps=self.tc.epochs * self.steps_per_epoch)
        self.epoch, self.order = -1, torch.empty(0, dtype=torch.long)
        self.test_accuracy: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "classifier", "model": self.model.state_dict(), "opt": self.opt.state_dict(),
                "sched": self.sched.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "classifier":
            raise UserError("not a classifier run: use another --out")
        for name in ("model", "opt", "sched"):
            getattr(self, name).load_state_dict(state[name])

    def step(self, step: int) -> Losses:
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self.epoch:
            self.epoch = epoch
            self.order = torch.randperm(len(self.train_set),
                                        generator=torch.Generator().manual_seed(self.tc.seed * 100_003 + epoch))
        self.model.train()
        x, y = self.train_set.batch(self.order[i * self.tc.batch_size:(i + 1) * self.tc.batch_size], self.device)
        if self.tc.augment:
            x = random_shift_flip(x)
        with autocast(self.device):
            loss = F.cross_entropy(self.model(x).float(), y, label_smoothing=0.1)
        descend(loss, self.opt)
        self.sched.step()
        if i == self.steps_per_epoch - 1:  # The epoch's last batch: measure it as the epoch's figure.
            acc = (predict(self.model, self.test_set, self.device) == self.test_set.labels).float().mean().item()
            self.test_accuracy = round(acc, 4)
        return {"loss": loss.detach()}

    def stats(self) -> dict[str, Any]:
        return {"epoch": self.epoch + 1, "test_accuracy": self.test_accuracy}

    def register(self, info: dict[str, Any], command: str, commit: str | None) -> None:
        if self.weights_dir is None:
            return
        register_model(self.weights_dir, self.kind, self.model.eval(), command=command, commit=commit,
                       extra={**info, "epochs": self.epoch + 1, "class_names": list(self.train_set.class_names)})


def train_classifier(cfg: Config, run_dir: str | Path, device: torch.device, *, resume: bool = False,
                     data_dir: str | None = None, weights_dir: str | Path | None = None, command: str = "",
                     time_limit_min: float = 0.0, progress: bool = True, kind: str = "classifier") -> dict[str, Any]:
    """Train the classifier on :func:`~semdir_edit.training.loop.train` (a checkpoint and a stats line with the test
    accuracy every epoch); on completion register it in ``weights_dir`` as ``kind`` (``classifier_judge``: the
    judge of edits, :func:`~semdir_edit.evaluation.directions.visible_effects`). Returns the last logged stats
    with ``epoch`` and ``finished``."""
    tc = cfg.train_classifier
    seed_everything(tc.seed)
    job = ClassifierJob(cfg, device, data_dir, weights_dir, kind)
    spe = job.steps_per_epoch
    schedule = Schedule(tc.epochs * spe, checkpoint_every=spe, seed=tc.seed, batch_size=tc.batch_size, log_every=spe)
    result = train(job, RunFolder(run_dir), device, schedule, options={"config": to_dict(cfg)}, resume=resume,
                   command=command, time_limit_min=time_limit_min, progress=progress)
    return {**result, "epoch": result["step"] // spe}
