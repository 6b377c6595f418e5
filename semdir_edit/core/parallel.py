"""Work split over forked processes, one torch thread each: the CPU path of ``apply`` over many files.

On a CPU, a network run with two threads is not twice as fast as with one (on the 2-core machine the generator's
batch of 16 takes 2.0 ms an image with one thread, 1.3 with two), and the work around it (reading, PNG encoding,
writing) then has no core of its own. Two processes with one thread each keep both cores on useful work: each runs
its share of the networks and of the file work. The processes are forked, so they share the loaded networks
(copy-on-write) and start in milliseconds; nothing is pickled but results and errors.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from semdir_edit.core.device import torch_threads

T = TypeVar("T")
R = TypeVar("R")


def can_fork() -> bool:
    """Forked workers are used on Linux only (macOS's system libraries are not fork-safe)."""
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


def cpu_processes(device: torch.device, jobs: int) -> int:
    """How many one-thread processes to split ``jobs`` over: one per torch thread on a CPU where fork works, at
    most one per job; 1 (this process alone) on a GPU."""
    if device.type != "cpu" or not can_fork():
        return 1
    return max(1, min(torch.get_num_threads(), jobs))


def _child(fn: Callable[[T], R], share: T, send: Any) -> None:
    torch.set_num_threads(1)
    try:
        send.send((True, fn(share)))
    except BaseException as exc:  # noqa: BLE001 — handed to the parent, which raises it.
        try:
            send.send((False, exc))
        except Exception:  # noqa: BLE001 — an exception that cannot be pickled: say what it was.
            send.send((False, RuntimeError(f"{type(exc).__name__}: {exc}")))
    finally:
        send.close()


def fork_map(fn: Callable[[T], R], shares: Sequence[T]) -> list[R]:
    """``[fn(share) for share in shares]``, the first share in this process and each other in a forked one, every
    process with one torch thread. The first failure (in share order) is raised once all have stopped; a worker
    that dies without an answer (killed) raises RuntimeError."""
    if len(shares) <= 1:
        return [fn(share) for share in shares]
    ctx = multiprocessing.get_context("fork")
    workers = []
    try:
        for share in shares[1:]:
            recv, send = ctx.Pipe(duplex=False)
            process = ctx.Process(target=_child, args=(fn, share, send), daemon=True)
            process.start()
            send.close()
            workers.append((process, recv))
        with torch_threads(1):
            outcomes: list[tuple[bool, Any]] = []
            try:
                outcomes.append((True, fn(shares[0])))
            except Exception as exc:  # noqa: BLE001 — raised below, after the workers stopped.
                outcomes.append((False, exc))
        for process, recv in workers:
            try:
                outcomes.append(recv.recv())
            except EOFError:
                process.join()
                outcomes.append((False, RuntimeError(f"a worker process died (exit code {process.exitcode})")))
    finally:
        for process, recv in workers:
            recv.close()
            if process.is_alive():
                process.terminate()
            process.join()
    for ok, value in outcomes:
        if not ok:
            raise value
    return [value for _, value in outcomes]
