"""Work split over forked processes, one torch thread each: the CPU path of ``apply`` and ``batch``.

On a CPU, a network run with two threads is not twice as fast as with one (on the 2-core machine the generator's
batch of 16 takes 2.0 ms an image with one thread, 1.3 with two), and the work around it (reading, PNG encoding,
writing) then has no core of its own. Two processes with one thread each keep both cores on useful work: each runs
its share of the networks and of the file work. The processes are forked, so they share the loaded networks
(copy-on-write) and start in milliseconds; nothing is pickled but results and errors. A worker dies with its
parent (Linux's parent-death signal), so a killed run leaves no process behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait
from typing import Any, TypeVar

import torch

from semdir_edit.core.device import torch_threads

T = TypeVar("T")
R = TypeVar("R")

POLL_S = 0.2         # How often the parent calls ``poll`` while it waits for its workers.
_PR_SET_PDEATHSIG = 1


def can_fork() -> bool:
    """Forked workers are used on Linux only (macOS's system libraries are not fork-safe)."""
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


def cpu_processes(device: torch.device, jobs: int) -> int:
    """How many one-thread processes to split ``jobs`` over: one per torch thread on a CPU where fork works, at
    most one per job; 1 (this process alone) on a GPU."""
    if device.type != "cpu" or not can_fork():
        return 1
    return max(1, min(torch.get_num_threads(), jobs))


def _die_with_parent(parent: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # Not Linux's libc: the worker then ends when its pipe breaks.
        return
    if os.getppid() != parent:  # The parent died before the signal was armed.
        os._exit(1)


def _child(fn: Callable[[T], R], share: T, send: Any, parent: int, init: Callable[[], None] | None) -> None:
    _die_with_parent(parent)
    torch.set_num_threads(1)
    try:
        if init is not None:
            init()
        send.send((True, fn(share)))
    except BaseException as exc:  # noqa: BLE001 — handed to the parent, which raises it.
        try:
            send.send((False, exc))
        except Exception:  # noqa: BLE001 — an exception that cannot be pickled: say what it was.
            send.send((False, RuntimeError(f"{type(exc).__name__}: {exc}")))
    finally:
        send.close()


def fork_map(fn: Callable[[T], R], shares: Sequence[T], *, here: bool = True,
             poll: Callable[[], None] | None = None, init: Callable[[], None] | None = None) -> list[R]:
    """``[fn(share) for share in shares]`` over forked processes with one torch thread each.

    here: the first share runs in this process (also with one thread); False: every share runs in a worker and this
    process waits, calling ``poll`` every POLL_S seconds (e.g. to draw a progress bar). init: run first in every
    worker (e.g. to close files only this process should hold). The first failure, in share order, is raised once
    every worker has stopped; an interrupted parent (Ctrl-C) interrupts its workers and waits for them. A worker that
    dies without an answer raises RuntimeError.
    """
    if here and len(shares) <= 1:
        return [fn(share) for share in shares]
    ctx = multiprocessing.get_context("fork")
    parent = os.getpid()
    workers: list[tuple[Any, Any]] = []
    outcomes: dict[int, tuple[bool, Any]] = {}
    first = 1 if here else 0
    try:
        for share in shares[first:]:
            recv, send = ctx.Pipe(duplex=False)
            process = ctx.Process(target=_child, args=(fn, share, send, parent, init), daemon=True)
            process.start()
            send.close()
            workers.append((process, recv))
        try:
            if here:
                with torch_threads(1):
                    outcomes[0] = (True, fn(shares[0]))
            _collect(workers, outcomes, first, poll)
        except BaseException:
            # Interrupted, or this share failed (the first in share order): the workers stop where they are, as
            # this process did, and are waited for; then this exception is the one raised.
            for process, _ in workers:
                if process.is_alive():
                    os.kill(process.pid, signal.SIGINT)
            with contextlib.suppress(BaseException):
                _collect(workers, outcomes, first, None)
            raise
    finally:
        for process, recv in workers:
            recv.close()
            if process.is_alive():
                process.terminate()
            process.join()
    for index in sorted(outcomes):
        ok, value = outcomes[index]
        if not ok:
            raise value
    return [outcomes[i][1] for i in range(len(shares))]


def _collect(workers: list[tuple[Any, Any]], outcomes: dict[int, tuple[bool, Any]], first: int,
             poll: Callable[[], None] | None) -> None:
    """Wait for every worker's answer (into ``outcomes`` by share index), calling ``poll`` meanwhile."""
    waiting = {recv: (first + i, process) for i, (process, recv) in enumerate(workers)
               if first + i not in outcomes}
    while waiting:
        for recv in wait(list(waiting), timeout=POLL_S):
            index, process = waiting.pop(recv)
            try:
                outcomes[index] = recv.recv()
            except EOFError:
                process.join()
                outcomes[index] = (False, RuntimeError(f"a worker process died (exit code {process.exitcode})"))
        if poll is not None:
            poll()
