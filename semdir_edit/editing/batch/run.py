"""The batch run: find the inputs, check the options, take ``OUT_DIR``, then edit chunk by chunk.

On a CPU the inputs are split over one-thread processes, one per torch thread (:mod:`semdir_edit.core.parallel`):
each edits every N-th input into its own part of the manifest (as torchrun's ranks do), and the parts are merged
when they stop, or by the next run after a kill. The pipeline of one process (:class:`ShardRun`), in three stages
that overlap:

1. reader thread: DataLoader (decode + convert, optionally in worker processes) and the classifier, one chunk ahead;
2. main thread: inversion and edit of a chunk on the device (:meth:`Editor.invert_and_edit`);
3. writer thread: per input, its outputs (each atomic), then its manifest line; lines go in once per chunk with
   one fsync (:meth:`ShardRun.commit`), always after their outputs, so a killed run redoes at most one chunk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from semdir_edit.core import distributed
from semdir_edit.core.errors import UserError
from semdir_edit.core.images import eps_labels, save_grid, to_uint8
from semdir_edit.core.io import IMAGE_SUFFIXES, LATENT_SUFFIX, sync_folder
from semdir_edit.core.parallel import cpu_processes, fork_map
from semdir_edit.core.progress import bar as progress_bar
from semdir_edit.core.progress import say as progress_say
from semdir_edit.core.types import Failed, Inverted
from semdir_edit.core.validate import PATH_ERRNOS
from semdir_edit.core.writer import BackgroundWriter, read_ahead
from semdir_edit.editing.batch.discovery import find_images, output_stems
from semdir_edit.editing.batch.journal import (
    MANIFEST,
    Manifest,
    done_inputs,
    drop_lock_copies,
    failed_inputs,
    manifest_part,
    manifest_record,
    merge_manifest_parts,
    release_lock,
    remove_stale_temps,
    take_lock,
)
from semdir_edit.editing.batch.loading import ImageFolder, LoadResult, classified, collate_records, worker_init
from semdir_edit.editing.batch.options import BatchOptions, resolve_options
from semdir_edit.editor import Editor
from semdir_edit.latents import latent_meta, save_latent
from semdir_edit.ops.shift_codes import DirectionSpec

Failures = dict[str, tuple[str | None, str | None]]  # Relative path -> (sha256, error) of its last error line.


def run_batch(editor: Editor, in_dir: str | Path, out_dir: str | Path, direction: str | DirectionSpec,
              eps: str | float | list[float] = 2.0, method: str = "indomain", steps: int | None = None,
              layers: str | range | None = None, recursive: bool = False, batch_size: int = 16,
              workers: int | None = None, progress: bool = True,
              log: Callable[[str], None] | None = None, keep_class: bool | None = None,
              follow_symlinks: bool = False, scale: int = 1, labels: bool = False,
              processes: int | None = None) -> dict[str, Any]:
    """Edit every image under ``in_dir`` into ``out_dir`` (layout mirrored) and log each in ``manifest.jsonl``.

    Inputs already done with the same bytes and options (ok in the manifest, outputs present) are skipped. A bad
    input is logged (``log``, default stderr) and recorded as an error; the run goes on. Raises UserError for what
    stops everything: a missing input folder, bad options, no images, another run holding ``out_dir``.
    workers: DataLoader processes that decode and convert images (None = 0 on CPU, up to 4 on a GPU).
    keep_class: class-locked edits (None = on for ``class:k`` directions; see :meth:`Editor.apply`).
    follow_symlinks: with ``recursive``, also descend folder links that lead out of ``in_dir``.
    scale: enlarge every tile of the edited PNGs this many times. labels: name a strip's columns (eps) and row
    (direction), as ``apply`` does; a single edited image is never labelled.
    progress: a bar on stderr, when it is a terminal (:mod:`semdir_edit.core.progress`).
    processes: one-thread processes that share the inputs (None: one per torch thread on a CPU, see
    :func:`~semdir_edit.core.parallel.cpu_processes`; 1: this process, with its threads; always 1 under torchrun).
    Under torchrun (see :mod:`semdir_edit.core.distributed`), call it on every rank: each edits its share of the inputs.
    Returns a summary: inputs, ok, errors, skipped (over all ranks), options (hash), manifest (path), seconds.
    """
    t0 = time.perf_counter()
    say = log or progress_say
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    if workers is not None and workers < 0:
        raise UserError("--workers must be >= 0")
    if processes is not None and processes < 1:
        raise UserError("--processes must be >= 1")
    if out_dir.exists() and out_dir.resolve() == in_dir.resolve():
        raise UserError("the output folder must differ from the input folder")
    rels = find_images(in_dir, recursive, exclude=out_dir, follow_symlinks=follow_symlinks)
    if not rels:
        raise UserError(f"no images found in {in_dir} ({', '.join(sorted(e[1:] for e in IMAGE_SUFFIXES))}"
                        f"{'' if recursive else '; use --recursive for sub-folders'})")
    opts = resolve_options(editor, direction, eps, method, steps, layers, keep_class, scale, labels)
    plan = RunPlan(in_dir, out_dir, opts, opts.key(), output_stems(rels), batch_size, workers,
                   progress and distributed.is_main())

    world = distributed.world_size()
    held: list[int] = []  # The lock's file descriptor, on the process that took it.
    try:
        done, failed = distributed.main_first(functools.partial(_open_out_dir, out_dir, plan.key, held))
        # Under torchrun each rank edits every world-th input into its own part of the manifest.
        mine = distributed.shard(rels)
        count = 1 if world > 1 else processes or cpu_processes(editor.device, math.ceil(len(mine) / batch_size))
        if count > 1:
            counts = _run_in_processes(editor, plan, done, failed, say, mine, count)
        else:
            manifest = Manifest(out_dir / (MANIFEST if world == 1 else manifest_part(distributed.rank())))
            try:
                counts = ShardRun(editor, plan, manifest, done, failed, say).run(mine)
            finally:
                manifest.close()
        if world > 1:
            distributed.barrier()  # Every part is complete.
            if distributed.is_main():
                merge_manifest_parts(out_dir)
            counts = {k: sum(c[k] for c in distributed.all_gather_object(counts)) for k in counts}
    finally:
        for fd in held:
            release_lock(fd)
    return {"inputs": len(rels), **counts, "options": plan.key, "manifest": str(out_dir / MANIFEST),
            "seconds": time.perf_counter() - t0}


def _run_in_processes(editor: Editor, plan: RunPlan, done: dict[str, str], failed: Failures,
                      say: Callable[[str], None], rels: list[str], count: int) -> dict[str, int]:
    """``rels`` split over ``count`` forked one-thread processes, each a :class:`ShardRun` of every count-th input
    into its own manifest part; the parts are merged when they stop (finished, failed or interrupted)."""
    Manifest(plan.out_dir / MANIFEST).close()   # There from the start, as a single process's run makes it.
    tally = multiprocessing.get_context("fork").Array("q", 3 * count)  # Each process's ok / errors / skipped.
    bar = progress_bar(total=len(rels), unit="img", desc="batch", progress=plan.progress)
    quiet = dataclasses.replace(plan, progress=False)

    def run_share(index: int) -> dict[str, int]:
        manifest = Manifest(plan.out_dir / manifest_part(index))
        try:
            return ShardRun(editor, quiet, manifest, done, failed, say, tally, index).run(rels[index::count])
        finally:
            manifest.close()

    def show() -> None:
        totals = [sum(tally[k::3]) for k in range(3)]
        bar.n = sum(totals)
        bar.set_postfix(errors=totals[1], skipped=totals[2], refresh=False)
        bar.refresh()

    try:
        shares = fork_map(run_share, list(range(count)), here=False, poll=show, init=drop_lock_copies)
    except BaseException:
        with contextlib.suppress(UserError):  # A full disk: the parts stay, and the next run merges them first.
            merge_manifest_parts(plan.out_dir)
        raise
    finally:
        show()
        bar.close()
    merge_manifest_parts(plan.out_dir)
    return {k: sum(share[k] for share in shares) for k in shares[0]}


def _open_out_dir(out_dir: Path, key: str, held: list[int]) -> tuple[dict[str, str], Failures]:
    """The only process, or rank 0 for all: take the lock (into ``held``), clean up after a killed run, and read
    what is done (and what failed) with options ``key``."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {out_dir}: {exc.strerror or exc}") from None
    held.append(take_lock(out_dir))
    remove_stale_temps(out_dir)
    merge_manifest_parts(out_dir)  # Parts of a killed distributed run: their inputs are done.
    return done_inputs(out_dir, key), failed_inputs(out_dir, key)


@dataclass(frozen=True)
class RunPlan:
    """Everything a run's processes share, fixed before the first image: where, what, and how."""

    in_dir: Path
    out_dir: Path
    opts: BatchOptions
    key: str                  # opts.key(): the manifest's ``options``.
    stems: dict[str, str]     # Input relative path -> output stem (:func:`output_stems`).
    batch_size: int
    workers: int | None       # DataLoader processes (None = 0 on CPU, up to 4 on a GPU).
    progress: bool            # Draw the progress bar (the CLI's choice; rank 0 only).

    @property
    def suffix(self) -> str:
        """The edited output's suffix: one image, or a strip of every eps."""
        return "strip.png" if self.opts.strip else "edited.png"


def edit_chunk(editor: Editor, items: list[LoadResult], opts: BatchOptions
               ) -> Iterator[tuple[LoadResult, Inverted | None, torch.Tensor | None, str | None]]:
    """Invert, classify and edit loaded inputs on the device -> (item, inversion, edited (E, C, R, R), error)."""
    labels = [it.label for it in items]
    classes = None
    if all(label is not None for label in labels):
        classes = (torch.tensor([label[0] for label in labels]), torch.tensor([label[1] for label in labels]),
                   torch.tensor([it.ood for it in items]))
    out = editor.invert_and_edit(torch.stack([it.image for it in items]), opts.direction, opts.eps,
                                 method=opts.method, steps=opts.steps, names=[it.rel for it in items],
                                 layers=opts.layers, keep_class=opts.keep_class, classes=classes)
    for item, (res, images, edit_error) in zip(items, out, strict=True):
        if isinstance(res, Failed):
            yield item, None, None, res.message
        else:  # An edit error: e.g. to:<class> on an image already of that class.
            yield item, res, images, f"{item.rel}: cannot edit ({edit_error})" if edit_error else None


class ShardRun:
    """One process's share of a run: its inputs edited in order, each ending in outputs and a manifest line.

    Methods named ``on_*`` and :meth:`commit` run on the writer thread only (in submission order), so the counts,
    the pending lines and the progress bar need no lock.
    """

    def __init__(self, editor: Editor, plan: RunPlan, manifest: Manifest, done: dict[str, str], failed: Failures,
                 say: Callable[[str], None], tally: Any | None = None, slot: int = 0) -> None:
        self.editor, self.plan, self.manifest, self.done, self.say = editor, plan, manifest, done, say
        # tally: counts shared with the parent of forked workers (ok, errors, skipped at 3 * slot), for its bar.
        self.tally, self.slot = tally, slot
        self.failed = failed or {}
        self.counts = {"ok": 0, "errors": 0, "skipped": 0}
        # Lines wait here until `commit` appends a chunk's with one fsync: a line is still written only after its
        # outputs, so a killed run redoes at most the last chunk and skips nothing unfinished.
        self.finished: list[dict[str, Any]] = []
        self.bar: tqdm | None = None  # Made by run(): a disabled bar when there is nothing to draw on.

    def run(self, rels: list[str]) -> dict[str, int]:
        """Edit ``rels``; returns the counts ok / errors / skipped. Raises what stops the run (a full disk)."""
        plan = self.plan
        loader = self.loader(rels)
        self.bar = progress_bar(total=len(rels), unit="img", desc="batch", progress=plan.progress)
        # Every per-input ending (outputs, manifest line, counts, progress) runs on one writer thread, in input
        # order, while the device works on the next chunk.
        writer = BackgroundWriter(max_pending=2 * plan.batch_size)
        pending: list[LoadResult] = []
        try:
            with writer:
                try:
                    # Reading, decoding and classifying the next chunk run on a reader thread while this one is
                    # edited.
                    for records in read_ahead(classified(loader, self.editor)):
                        for item in records:
                            if item.skipped:
                                writer.submit(self.on_skipped)
                            elif item.error is not None:
                                writer.submit(self.on_finished, self.record(item, error=item.error))
                            else:
                                pending.append(item)
                        while len(pending) >= plan.batch_size:
                            self.edit(writer, pending[:plan.batch_size])
                            pending = pending[plan.batch_size:]
                        writer.submit(self.commit)
                    if pending:
                        self.edit(writer, pending)
                except BaseException:
                    # Interrupted or failed: what is finished still gets its lines. The exception being raised is
                    # the one to report (a writer failure here is that one again, or follows from it).
                    with contextlib.suppress(Exception):
                        writer.submit(self.commit)
                    raise
                writer.submit(self.commit)  # A failure of the last writes is raised here, never lost.
        finally:
            self.bar.close()
        return self.counts

    def loader(self, rels: list[str]) -> DataLoader:
        """Chunks of :class:`LoadResult` for ``rels``, read and converted in ``plan.workers`` processes."""
        workers = self.plan.workers
        if workers is None:
            workers = 0 if self.editor.device.type == "cpu" else min(4, max(1, (os.cpu_count() or 2) - 1))
        dataset = ImageFolder(self.plan.in_dir, rels, self.editor.G.cfg.resolution, self.done)
        return DataLoader(dataset, batch_size=self.plan.batch_size, shuffle=False, num_workers=workers,
                          collate_fn=collate_records, worker_init_fn=worker_init if workers else None)

    def record(self, item: LoadResult, **kwargs: Any) -> dict[str, Any]:
        """``item``'s manifest line (see :func:`manifest_record`)."""
        return manifest_record(item.rel, item.sha256, self.plan.key, **kwargs)

    def edit(self, writer: BackgroundWriter, chunk: list[LoadResult]) -> None:
        """Edit a chunk on the device (this thread); its outputs and lines go to the writer."""
        for item, res, images, error in edit_chunk(self.editor, chunk, self.plan.opts):
            if error is not None or res is None or images is None:
                writer.submit(self.on_finished, self.record(item, error=error or f"{item.rel}: not edited", res=res))
                continue
            res.notes = item.notes + res.notes
            # uint8 and the row's label made here: the writer thread then needs neither torch nor the editor.
            row = self.editor.direction_label(self.plan.opts.direction, res.class_index) if self.plan.opts.labelled \
                else None
            writer.submit(self.on_edited, item, res, to_uint8(images).numpy(), row)

    # ------------------------------------------------------------------------------------ writer thread only

    def on_edited(self, item: LoadResult, res: Inverted, images: np.ndarray, row: str | None = None) -> None:
        """Write an edited input's outputs (each atomic), then queue its line: a line means complete outputs.
        ``row``: the strip's row label (None: no labels)."""
        out_dir, opts = self.plan.out_dir, self.plan.opts
        stem = self.plan.stems[item.rel]
        edited_rel, latent_rel = f"{stem}.{self.plan.suffix}", stem + LATENT_SUFFIX
        try:
            # Not synced one by one: commit() makes the chunk's outputs durable at once, before their lines.
            save_grid(out_dir / edited_rel, images, nrow=len(opts.eps), scale=opts.scale, pad=2 if opts.strip else 0,
                      cols=eps_labels(opts.eps) if row else None, rows=[row] if row else None, sync=False)
            save_latent(out_dir / latent_rel, res.ws, latent_meta(res, opts.weights_id), sync=False)
        except UserError as exc:
            # A problem of this input's output paths (a name too long for the file system, a folder or a device
            # where a file goes) fails this input only; anything else (a full disk) stops the run.
            cause = exc.__context__
            if not (isinstance(cause, OSError) and cause.errno in PATH_ERRNOS):
                raise
            for rel in (edited_rel, latent_rel):  # Neither output without the other.
                with contextlib.suppress(OSError):
                    if (out_dir / rel).is_file() and not (out_dir / rel).is_symlink():
                        (out_dir / rel).unlink()
            self.on_finished(self.record(item, error=f"{item.rel}: {exc}", res=res))
            return
        self.on_finished(self.record(item, res=res, outputs=[edited_rel, latent_rel]))

    def on_finished(self, record: dict[str, Any]) -> None:
        """Queue an input's line for the next :meth:`commit`."""
        self.finished.append(record)

    def on_skipped(self) -> None:
        """An input done before with the same bytes and options."""
        self.counts["skipped"] += 1
        self.tick()

    def commit(self) -> None:
        """Append the queued lines (one write, one fsync), then count and report them."""
        if not self.finished:
            return
        # An input that failed before in the same way (same bytes, options, reason) keeps its one line.
        new = [r for r in self.finished
               if r["status"] == "ok" or self.failed.get(r["path"]) != (r["sha256"], r["error"])]
        if any(r["outputs"] for r in new):
            sync_folder(self.plan.out_dir)  # The outputs on disk before the lines that say they are there.
        if new:
            self.manifest.append(*new)
        for record in self.finished:
            self.counts["ok" if record["status"] == "ok" else "errors"] += 1
            if record["status"] != "ok":
                self.say(f"error: {record['error']}")
            self.tick()
        self.finished.clear()

    def tick(self) -> None:
        """One more input on the progress bar."""
        assert self.bar is not None
        self.bar.set_postfix(errors=self.counts["errors"], skipped=self.counts["skipped"], refresh=False)
        self.bar.update(1)
        if self.tally is not None:
            self.tally[3 * self.slot:3 * self.slot + 3] = [self.counts[k] for k in ("ok", "errors", "skipped")]
