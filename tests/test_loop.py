"""The one training loop, on a toy job: resumes bit-exactly, checkpoints and closes its bar on Ctrl-C, stops at the
time limit, registers only when the planned steps are reached (or when asked to at the limit)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from semdir_edit.checkpoint import load_training_state
from semdir_edit.core.errors import UserError
from semdir_edit.training import loop
from semdir_edit.training.common import RunFolder, seed_everything
from semdir_edit.training.loop import Losses, Schedule, TrainingJob, train


class ToyJob(TrainingJob):
    """Least squares on batches drawn from the global random stream (so resuming must restore it)."""

    desc = "toy"
    postfix = {"loss": "loss"}

    def __init__(self, interrupt_at: int | None = None, tag: str = "toy") -> None:
        seed_everything(0)
        self.net = torch.nn.Linear(4, 1)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=0.01)
        self.interrupt_at, self.tag = interrupt_at, tag
        self.registered: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        return {"tag": self.tag, "net": self.net.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["tag"] != self.tag:
            raise UserError(f"a '{state['tag']}' run, not a '{self.tag}' run")
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])

    def step(self, step: int) -> Losses:
        if step == self.interrupt_at:
            raise KeyboardInterrupt
        x = torch.randn(8, 4)
        loss = (self.net(x).squeeze(1) - x.sum(1)).square().mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": loss.detach()}

    def stats(self) -> dict[str, Any]:
        return {"lr": self.opt.param_groups[0]["lr"]}

    def sample(self) -> torch.Tensor:
        return torch.zeros(2, 1, 4, 4)

    def register(self, info: dict[str, Any], command: str, commit: str | None) -> None:
        self.registered.append(info)


def run_toy(path, job: ToyJob, **kw: Any) -> dict[str, Any]:
    schedule = Schedule(steps=10, checkpoint_every=4, seed=0, sample_every=5, batch_size=8, log_every=3)
    return train(job, RunFolder(path), torch.device("cpu"), schedule, options={"what": "toy"}, progress=False, **kw)


def test_a_resumed_run_ends_where_a_straight_one_does(tmp_path):
    straight = ToyJob()
    result = run_toy(tmp_path / "a", straight)
    assert result["finished"] and result["step"] == 10 and result["kimg"] == 0.08 and "lr" in result
    part = ToyJob()
    assert not run_toy(tmp_path / "b", part, max_steps=6)["finished"] and not part.registered
    resumed = ToyJob()
    run_toy(tmp_path / "b", resumed, resume=True)
    assert all(torch.equal(a, b) for a, b in zip(straight.net.parameters(), resumed.net.parameters(), strict=True))
    info = resumed.registered[0]
    assert (info["planned_steps"], info["steps"], info["kimg"], info["processes"]) == (10, 10, 0.08, 1)
    stats = [json.loads(line) for line in (tmp_path / "b" / "stats.jsonl").read_text().splitlines()]
    assert [s["step"] for s in stats] == [3, 6, 9, 10]
    assert list(stats[0])[:3] == ["step", "kimg", "seconds"]
    assert sorted(p.name for p in (tmp_path / "b" / "samples").iterdir()) == [
        "step-0000005.png", "step-0000006.png", "step-0000010.png"]  # 6: where the first part stopped.
    options = json.loads((tmp_path / "b" / "options.json").read_text())
    assert options["what"] == "toy" and options["resumed_at"] == 6


def test_ctrl_c_checkpoints_and_closes_the_bar(tmp_path, monkeypatch):
    closed = []

    real_bar = loop.progress_bar

    def bar(**kwargs):
        made = real_bar(**kwargs)
        close = made.close
        made.close = lambda: (closed.append(True), close())
        return made

    monkeypatch.setattr(loop, "progress_bar", bar)
    job = ToyJob(interrupt_at=3)
    with pytest.raises(KeyboardInterrupt):
        run_toy(tmp_path, job)
    assert closed and load_training_state(tmp_path / "training-state.pt")["step"] == 3 and not job.registered


def test_time_limit_stops_with_a_checkpoint_and_registers_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(loop.TimeBudget, "exceeded", lambda self: True)
    job = ToyJob()
    result = run_toy(tmp_path / "a", job, time_limit_min=1)
    assert result["step"] == 0 and not job.registered  # Nothing trained: nothing to register.
    checks = iter(range(100))
    monkeypatch.setattr(loop.TimeBudget, "exceeded", lambda self: next(checks) >= 2)  # After two steps.
    job = ToyJob()
    result = run_toy(tmp_path / "b", job, time_limit_min=1, register_at_limit=True)
    assert result["step"] == 2 and not result["finished"] and job.registered[0]["steps"] == 2
    assert load_training_state(tmp_path / "b" / "training-state.pt")["step"] == 2


def test_a_checkpoint_of_another_training_is_refused(tmp_path):
    run_toy(tmp_path, ToyJob(), max_steps=2)
    with pytest.raises(UserError, match="training-state.pt: a 'toy' run, not a 'other' run"):
        run_toy(tmp_path, ToyJob(tag="other"), resume=True)
