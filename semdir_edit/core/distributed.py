"""Running under ``torchrun``: process-group set-up, rank helpers and the few collectives the project uses.

``torchrun --nproc_per_node=N -m semdir_edit batch|train ...`` starts N copies of the command with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` in their environment. :func:`session` joins them into one process group (gloo on
CPU, nccl on CUDA, where each process takes ``cuda:LOCAL_RANK``). Outside torchrun (or with one process) every
helper here is a no-op or gives the single-process answer, so callers use them unconditionally.

Every collective (:func:`barrier`, :func:`main_first`, :func:`all_gather_object`, :func:`any_true`,
:func:`mean`, DDP's forward and backward) must be reached by *every* rank the same number of times: decide
anything that differs per process (a clock, a random draw) on one rank and share it.
"""

from __future__ import annotations

import datetime
import inspect
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from semdir_edit.core.device import resolve_device
from semdir_edit.core.errors import UserError

T = TypeVar("T")
# A shard of a batch run can take much longer than another (different image sizes, resumed inputs): the ranks
# that finish first wait at a barrier, so the collectives' timeout is generous. A crashed rank does not make the
# others wait for it: torchrun stops the whole group when one process fails.
TIMEOUT = datetime.timedelta(hours=6)
_DDP_OPTIONS = inspect.signature(nn.parallel.DistributedDataParallel).parameters


def launched() -> bool:
    """True when this process is one of several started by torchrun (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_initialized() -> bool:
    """True once the process group is up (see :func:`session`)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 outside torchrun)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes in the group (1 outside torchrun)."""
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """True on rank 0: the process that writes shared files (checkpoints, logs, weights, the merged manifest)."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here."""
    if is_initialized():
        dist.barrier()


@contextmanager
def session(device: str | torch.device = "auto") -> Iterator[torch.device]:
    """Join torchrun's process group for the duration of a command; yields this process's device.

    ``device`` as for :func:`~semdir_edit.core.device.resolve_device`; under torchrun a CUDA device becomes
    ``cuda:LOCAL_RANK`` (one GPU per process, whatever index was asked for). Outside torchrun this only resolves
    the device. A group that is already up (set up by the caller) is used and left up.
    """
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    if not launched() or is_initialized():
        yield dev
        return
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=TIMEOUT)
    try:
        yield dev
    finally:
        dist.destroy_process_group()


def shard(items: Sequence[T], rank_: int | None = None, world_size_: int | None = None) -> list[T]:
    """This rank's share of ``items``: every ``world_size``-th item from index ``rank``.

    Given the same (sorted) list, the split is the same on every rerun; striding (rather than contiguous blocks)
    spreads inputs that a killed run already finished evenly over the ranks.
    """
    r = rank() if rank_ is None else rank_
    n = world_size() if world_size_ is None else world_size_
    return list(items[r::n])


def main_first(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and hand its result to every rank (a collective).

    A :class:`UserError` raised by ``fn`` is raised on every rank, so they all stop with the same one-line
    message instead of the others waiting for rank 0 forever. The result must be picklable.
    """
    if world_size() == 1:
        return fn()
    payload: list[Any] = [None]
    if is_main():
        try:
            payload = [("ok", fn())]
        except UserError as exc:
            payload = [("error", str(exc))]
    dist.broadcast_object_list(payload, src=0)
    status, value = payload[0]
    if status == "error":
        raise UserError(value)
    return value


def all_gather_object(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order (a collective); ``[obj]`` in a single process."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def _collective_device() -> torch.device:
    # nccl reduces CUDA tensors only; gloo CPU ones.
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def any_true(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank (a collective)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean(values: dict[str, float]) -> dict[str, float]:
    """The mean over ranks of each value (a collective; every rank passes the same keys in the same order)."""
    if world_size() == 1 or not values:
        return dict(values)
    t = torch.tensor([float(v) for v in values.values()], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return {k: v / world_size() for k, v in zip(values, t.tolist(), strict=True)}


def ddp(module: nn.Module, device: torch.device, broadcast_buffers: bool = False) -> nn.Module:
    """``module`` wrapped in DistributedDataParallel when several processes train, else ``module`` itself.

    Gradients are averaged over the ranks during ``backward`` of a loss computed through the wrapper's forward,
    so every forward whose gradients train ``module`` must go through the wrapper, the same number of times on
    every rank, and reach every parameter (a parameter without a gradient makes DDP wait for it). Forwards of a
    frozen network can use the bare module. ``broadcast_buffers``: copy rank 0's buffers to the others before
    each forward (running statistics that every rank updates from its own batch).
    """
    if world_size() == 1:
        return module
    # A (1, N) weight's gradient comes out with other (equally valid) strides than DDP's bucket: only slower.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    # torch 2.13 renamed the option (buffers are synced at construction either way).
    sync = "forward_sync_buffers" if "forward_sync_buffers" in _DDP_OPTIONS else "broadcast_buffers"
    return nn.parallel.DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None, **{sync: broadcast_buffers})


def per_rank_batch(batch_size: int, what: str) -> int:
    """The share of a global batch of ``batch_size`` that each rank trains on; ``what`` names it in the error."""
    n = world_size()
    if batch_size % n:
        raise UserError(f"{what} = {batch_size} is the global batch and must be a multiple of the number of "
                        f"processes ({n})")
    return batch_size // n
