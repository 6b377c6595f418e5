"""Classifier training: AdamW with a one-cycle schedule, label smoothing, random shifts and flips.

The classifier labels generated images for the direction-discovery objective and supplies the
feature space of every distribution figure, so it is trained once and then frozen.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from semdir_edit.checkpoint import git_commit, load_training_state, register_model, save_training_state
from semdir_edit.config import Config, to_dict
from semdir_edit.core.device import autocast
from semdir_edit.core.progress import bar
from semdir_edit.data import ImageSet, load_split
from semdir_edit.models import Classifier
from semdir_edit.training.common import RunFolder, TimeBudget, rng_state, seed_everything, set_rng_state


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


def train_classifier(cfg: Config, run_dir: str | Path, device: torch.device, *, resume: bool = False,
                     data_dir: str | None = None, weights_dir: str | Path | None = None, command: str = "",
                     time_limit_min: float = 0.0, progress: bool = True) -> dict[str, Any]:
    """Train the classifier; checkpoint every epoch; on completion register it in ``weights_dir``."""
    tc = cfg.train_classifier
    run = RunFolder(run_dir)
    seed_everything(tc.seed)
    train, test = load_split(cfg.data, "train", data_dir), load_split(cfg.data, "test", data_dir)
    model = Classifier(cfg.classifier).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    steps_per_epoch = len(train) // tc.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tc.lr, total_steps=tc.epochs * steps_per_epoch)
    epoch, seconds = 0, 0.0
    if resume and run.state_path.exists():
        state = load_training_state(run.state_path, device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        epoch, seconds = int(state["epoch"]), float(state["seconds"])
        set_rng_state(state["rng"])
    commit = git_commit()
    run.write_options({"config": to_dict(cfg), "command": command, "git_commit": commit, "device": str(device),
                       "resumed_at": epoch})
    budget = TimeBudget(time_limit_min)
    stats: dict[str, Any] = {}
    while epoch < tc.epochs and not budget.exceeded():
        t0 = time.monotonic()
        model.train()
        order = torch.randperm(len(train))
        bar = tqdm(range(steps_per_epoch), disable=not progress, desc=f"classifier epoch {epoch + 1}/{tc.epochs}",
                   dynamic_ncols=True)
        for i in bar:
            x, y = train.batch(order[i * tc.batch_size:(i + 1) * tc.batch_size], device)
            if tc.augment:
                x = random_shift_flip(x)
            with autocast(device):
                loss = F.cross_entropy(model(x).float(), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if i % 20 == 0:
                bar.set_postfix(loss=round(loss.item(), 4))
        epoch += 1
        seconds += time.monotonic() - t0
        acc = (predict(model, test, device) == test.labels).float().mean().item()
        stats = {"epoch": epoch, "loss": round(loss.item(), 4), "test_accuracy": round(acc, 4),
                 "seconds": round(seconds, 1)}
        run.append_stats(stats)
        tqdm.write(str(stats)) if progress else None
        save_training_state(run.state_path, {"model": model.state_dict(), "opt": opt.state_dict(),
                                             "sched": sched.state_dict(), "epoch": epoch,
                                             "seconds": seconds, "rng": rng_state()})
    if epoch >= tc.epochs and weights_dir is not None:
        register_model(weights_dir, "classifier", model.eval(), command=command,
                       extra={"epochs": epoch, "train_seconds": round(seconds), "device": str(device),
                              "class_names": list(train.class_names)}, commit=commit)
    return {**stats, "epoch": epoch, "finished": epoch >= tc.epochs}
