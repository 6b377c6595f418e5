"""`semdir-edit bench`: throughput of each stage on real weights, against its compute *floor*.

For every task the project's own code path (``achieved``) is timed next to the same work done as bare network calls
on ready-made tensors (``floor``): no files, no PNG encoding, no per-image Python, no bookkeeping. The ratio
``achieved throughput / floor throughput`` says how much the project's code around the networks costs (1 = nothing).

====================  ======================================================  ======================================
task                  achieved                                                floor
====================  ======================================================  ======================================
generator             ``generation.sample_images`` (seeded z, mapping +       ``G(z)`` on a ready batch
                      synthesis, no grad), batch by batch
encoder               uint8 domain images -> floats -> ``E`` (no grad)        ``E(x)`` on a ready float batch
invert                ``Editor.invert(method="indomain", steps)``: E start,   ``steps`` x forward + backward of
                      Adam, checks, PSNR / SSIM / perceptual, classification  G, E and F on the batch (the target's
                                                                              F features once, they never change)
apply                 ``editing.apply.apply_files``: latent files ->          ``G.synthesis`` on the edited codes
                      ``Editor.apply`` -> one PNG per file
batch                 ``run_batch(method="encoder")`` on a folder of PNGs     ``C`` (the input's class goes into the
                      (decode, hash, invert, classify, edit, PNG + latent +   manifest) + ``E`` + ``G.synthesis``
                      manifest line per image)                                of the reconstruction (its PSNR / SSIM
                                                                              go into the manifest) and of the edit
====================  ======================================================  ======================================

Each measurement alternates achieved and floor runs (after warm-up runs) and keeps the median of each, so that a
load change on a shared machine hits both sides alike. Targets (issue 6): apply >= 0.8 of its floor, batch >= 0.7,
inversion time <= 1.3 x its floor (ratio >= 1 / 1.3). On a CPU, ``apply`` and ``batch`` split their work over one
one-thread process per torch thread (:mod:`semdir_edit.core.parallel`); the floors run in this process with its
threads.

Beside the tasks: the same in-domain inversion run one image per call (as IDInvert's released code inverts) against
the batched ``Editor.invert`` (``invert_single_per_s``, ``invert_batch_speedup``: batched / one by one).
"""

from __future__ import annotations

import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import torch

from semdir_edit.core.device import autocast, resolve_device, torch_threads
from semdir_edit.core.images import png_bytes, to_float, to_uint8
from semdir_edit.editing.apply import apply_files
from semdir_edit.editing.batch import run_batch
from semdir_edit.editor import Editor
from semdir_edit.generation import sample_images
from semdir_edit.latents import save_latent
from semdir_edit.ops.shift_codes import match_class, parse_direction

TASKS = ("generator", "encoder", "invert", "apply", "batch")
# Minimum floor ratio per task (issue 6); the others have no target.
TARGETS = {"invert": 1 / 1.3, "apply": 0.8, "batch": 0.7}
APPLY_EPS = 2.0


@dataclass(frozen=True)
class BenchSizes:
    """How much work each measurement does."""

    images: int         # Images per run of generator, encoder, apply and batch.
    batch_size: int     # Their batch size.
    invert_images: int  # Images inverted together (one batch).
    steps: int          # In-domain inversion steps.
    repeats: int        # Timed runs per side; the median counts.
    warmup: int         # Untimed runs per side first.


# CPU: the CLI's default batch size; 16 chunks, so the last chunk's writes (which nothing can overlap) weigh little.
FULL_CPU = BenchSizes(images=256, batch_size=16, invert_images=8, steps=100, repeats=3, warmup=1)
FULL_CUDA = BenchSizes(images=2048, batch_size=256, invert_images=256, steps=100, repeats=5, warmup=2)
QUICK = BenchSizes(images=16, batch_size=8, invert_images=4, steps=3, repeats=1, warmup=1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _paired(achieved: Callable[[], Any], floor: Callable[[], Any], device: torch.device, sizes: BenchSizes,
            warmup: Callable[[], Any] | None = None) -> tuple[float, float]:
    """Median seconds of ``achieved`` and of ``floor``, run alternately after warm-up runs.

    warmup: a cheaper stand-in for both warm-up runs (the inversion warms up on a few steps, not a hundred).
    """
    for _ in range(sizes.warmup):
        if warmup is not None:
            warmup()
        else:
            achieved()
            floor()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(sizes.repeats):
        for fn, out in ((achieved, times[0]), (floor, times[1])):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            out.append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def default_direction(editor: Editor) -> str:
    """The learned global direction 0 when the weights have deformators, else the PCA direction 0."""
    return "global:0" if "deformators" in editor.manifest.get("models", {}) else "pca:0"


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kilobytes.


# Torch threads of the slider timing: the browser editor's server runs every network call with one (ui.server's
# TORCH_THREADS), so the figure is the page's.
SLIDER_THREADS = 1


def slider_edit_ms(editor: Editor, repeats: int = 50, warmup: int = 5, keep_class: bool = False) -> float:
    """Median milliseconds of one browser-editor slider step: :meth:`Editor.apply_shifts` (what the server runs per
    move) plus the PNG it answers with, on a generated sample, the default direction dragged from -3 to 3 over and
    over so that every step computes a new image. keep_class: the page's default, a class-locked walk; the editor's
    remembered walks are forgotten before every drag, so each is a first drag (every step walks on from the last)."""
    spec = default_direction(editor)
    with torch_threads(SLIDER_THREADS):
        ws = editor.sample_code(None, 0).to(editor.device)
        class_index = editor.apply_shifts(ws, {}).class_index
        times = []
        for i in range(warmup + repeats):
            eps = ((i % 13) - 6) / 2  # -3 .. 3 in steps of 0.5, as a dragged slider.
            if i % 13 == 0:
                editor.forget_walks()
            t0 = time.perf_counter()
            png_bytes(editor.apply_shifts(ws, {spec: eps}, class_index, keep_class=keep_class).image)
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _ui_edit_ms(editor: Editor, repeats: int, keep_class: bool = False) -> tuple[float | None, str]:
    """The browser editor's median slider-edit time (:func:`slider_edit_ms`); None and why when it failed."""
    try:
        return float(slider_edit_ms(editor, repeats=repeats, keep_class=keep_class)), "measured"
    except Exception as exc:  # noqa: BLE001 — an optional figure must not cost the other figures.
        return None, f"failed ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"


def run_bench(weights_dir: str | Path, device: str | torch.device = "auto", quick: bool = False,
              direction: str | None = None, amp: bool = False, threads: int | None = None,
              sizes: BenchSizes | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure every task on ``weights_dir`` and return flat JSON-able figures.

    Keys: ``<task>_per_s`` (images/s) and ``<task>_floor_ratio`` (achieved / floor throughput) for each of
    :data:`TASKS`, ``<task>_floor_per_s``, ``invert_s_per_image``, ``device``, ``peak_mem_mb`` (CPU: the process's
    peak resident set; CUDA: peak allocated), ``torch_version``, ``threads``, the sizes used,
    ``invert_single_per_s``, ``invert_single_s_per_image`` and ``invert_batch_speedup`` (the same inversion one image
    per call), and ``ui_edit_ms`` and ``ui_edit_locked_ms`` (a browser-editor slider step, :func:`slider_edit_ms`;
    class-locked) unless they failed.

    quick: tiny sizes (a smoke test, not a measurement). direction: the edit of apply and batch (default
    :func:`default_direction`). amp: bfloat16 autocast on both sides (CUDA only; ignored on CPU). threads: torch's
    CPU threads for the run (None = leave as is; on a busy machine 1 thread avoids oversubscribed cores).
    """
    say = log or (lambda _message: None)
    if threads is not None:
        torch.set_num_threads(threads)
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    sizes = sizes or (QUICK if quick else FULL_CUDA if dev.type == "cuda" else FULL_CPU)
    editor = Editor.from_pretrained(weights_dir, dev)
    G, E = editor.G, editor.model("encoder")
    F = editor.perceptual()
    spec = parse_direction(direction or default_direction(editor))
    # Fail now, not after minutes, when the weights lack the direction (a class-relative one with a stand-in class).
    if spec.kind == "to":
        match_class(spec.class_name or "", editor.class_names)
        editor.model("direction_bank")
    else:
        editor.direction(spec, class_index=0)
    amp_ctx = (lambda: autocast(dev)) if amp and dev.type == "cuda" else nullcontext
    figures: dict[str, Any] = {"device": str(dev), "quick": quick, "torch_version": torch.__version__,
                               "threads": torch.get_num_threads(), "direction": str(spec),
                               "amp": bool(amp and dev.type == "cuda"), **asdict(sizes)}
    n, bs = sizes.images, sizes.batch_size
    batches = _chunks(n, bs)

    # The images every task starts from: generated samples (their classes spread like the data's).
    images = torch.cat([sample_images(G, s.stop - s.start, seed=1000 + k) for k, s in enumerate(batches)])
    domains = to_uint8(images).cpu()                                       # (N, 1, R, R) uint8, as loaded.
    x = to_float(domains[:bs]).to(dev)                                     # One ready float batch.
    z = torch.randn(bs, G.z_dim, generator=torch.Generator().manual_seed(0)).to(dev)
    with torch.no_grad():
        ws_batch = E(x)                                                    # Ready codes for the G floors.
        shifted = ws_batch + 0.1                                           # Same shape as an edited batch.

    def record(task: str, achieved_s: float, floor_s: float, count: int) -> None:
        figures[f"{task}_per_s"] = count / achieved_s
        figures[f"{task}_floor_per_s"] = count / floor_s
        figures[f"{task}_floor_ratio"] = floor_s / achieved_s
        say(f"{task}: {count / achieved_s:.1f} images/s, floor {count / floor_s:.1f} images/s")

    # --- generator and encoder: the project's call against the bare forward.
    def generator_achieved() -> None:
        with amp_ctx():
            for k, s in enumerate(batches):
                sample_images(G, s.stop - s.start, seed=k)

    @torch.inference_mode()
    def generator_floor() -> None:
        with amp_ctx():
            for _ in batches:
                G(z, noise_mode="const")

    record("generator", *_paired(generator_achieved, generator_floor, dev, sizes), n)

    @torch.no_grad()
    def encoder_achieved() -> None:
        with amp_ctx():
            for s in batches:
                E(to_float(domains[s].to(dev)))

    @torch.inference_mode()
    def encoder_floor() -> None:
        with amp_ctx():
            for _ in batches:
                E(x)

    record("encoder", *_paired(encoder_achieved, encoder_floor, dev, sizes), n)

    # --- in-domain inversion: Editor.invert against steps x (forward + backward of G, E, F).
    inv_domains = domains[:sizes.invert_images]
    inv_x = to_float(inv_domains).to(dev)
    inv = editor.inversion

    def invert_achieved(steps: int = sizes.steps) -> None:
        with amp_ctx():
            results = editor.invert(inv_domains, method="indomain", steps=steps)
        if not all(r.ok for r in results):
            raise RuntimeError("inversion failed during the benchmark")

    def invert_floor(steps: int = sizes.steps) -> None:
        with amp_ctx():
            with torch.no_grad():
                start = E(inv_x)
                target = F.target(inv_x)  # The target's features: once per inversion, not once per step.
            ws = start.clone().requires_grad_(True)
            for _ in range(steps):
                rec = G.synthesis(ws, noise_mode="const")
                loss = ((rec - inv_x).square().mean(dim=(1, 2, 3)) + inv.lambda_perceptual * F.distance(target, rec)
                        + inv.lambda_dom * (ws - E(rec)).square().mean(dim=(1, 2)))
                (grad,) = torch.autograd.grad(loss.sum(), ws)
                with torch.no_grad():
                    ws -= inv.lr * grad  # Plain gradient step: the floor is the networks, not Adam.

    def invert_warmup() -> None:
        invert_achieved(2)
        invert_floor(2)

    achieved_s, floor_s = _paired(invert_achieved, invert_floor, dev, sizes, warmup=invert_warmup)
    record("invert", achieved_s, floor_s, sizes.invert_images)
    figures["invert_s_per_image"] = achieved_s / sizes.invert_images

    # --- the same inversion one image per call, as IDInvert's released code runs it, against our batched call:
    # same generator, encoder, steps and images, so the ratio is what batching the images buys.
    def invert_one_by_one(steps: int = sizes.steps) -> None:
        with amp_ctx():
            for i in range(sizes.invert_images):
                if not all(r.ok for r in editor.invert(inv_domains[i:i + 1], method="indomain", steps=steps)):
                    raise RuntimeError("inversion failed during the benchmark")

    def single_warmup() -> None:
        invert_one_by_one(2)
        invert_achieved(2)

    single_s, batched_s = _paired(invert_one_by_one, invert_achieved, dev, sizes, warmup=single_warmup)
    figures["invert_single_per_s"] = sizes.invert_images / single_s
    figures["invert_single_s_per_image"] = single_s / sizes.invert_images
    figures["invert_batch_speedup"] = single_s / batched_s
    say(f"invert one image per call: {sizes.invert_images / single_s:.2f} images/s; "
        f"batched {single_s / batched_s:.2f}x faster")

    with tempfile.TemporaryDirectory(prefix="semdir-bench-") as tmp_name:
        tmp = Path(tmp_name)
        # --- apply: latent files (as `invert` writes them) -> edited PNGs.
        class_index, _ = editor.classify(to_float(domains))
        with torch.no_grad():
            codes = torch.cat([E(to_float(domains[s]).to(dev)) for s in batches]).cpu()
        latent_paths = []
        for i in range(n):
            c = int(class_index[i])
            path = tmp / "latents" / f"img{i:05d}.latent.safetensors"
            save_latent(path, codes[i], {"weights_id": editor.weights_id, "method": "encoder", "steps": 0,
                                         "class_index": c, "class_name": editor.class_names[c],
                                         "confidence": 1.0, "source": path.name})
            latent_paths.append(path)

        def apply_achieved() -> None:
            with amp_ctx():
                # Linear edits (--keep none), the work the floor measures; the class-locked walk, the default for
                # global:K and class:K, is timed on its own as the locked slider step below.
                apply_files(editor, latent_paths, tmp / "applied", spec, eps=APPLY_EPS, batch_size=bs,
                            keep_class=False)

        @torch.inference_mode()
        def apply_floor() -> None:
            with amp_ctx():
                for _ in batches:
                    G.synthesis(shifted, noise_mode="const")

        record("apply", *_paired(apply_achieved, apply_floor, dev, sizes), n)

        # --- batch: a folder of PNGs -> run_batch with the encoder (a fresh output folder per run).
        in_dir = tmp / "pngs"
        in_dir.mkdir()
        for i in range(n):
            cv2.imwrite(str(in_dir / f"img{i:05d}.png"), domains[i, 0].numpy())
        runs = iter(range(1_000_000))

        def batch_achieved() -> None:
            with amp_ctx():
                summary = run_batch(editor, in_dir, tmp / f"batch{next(runs)}", spec, eps=APPLY_EPS,
                                    method="encoder", batch_size=bs, progress=False, log=lambda _m: None,
                                    keep_class=False if spec.kind != "to" else None)
            # to:<class> refuses images already of that class (an error line each); nothing else may fail.
            if summary["ok"] + summary["errors"] != n or (summary["errors"] and spec.kind != "to"):
                raise RuntimeError(f"batch run edited {summary['ok']} of {n} images")

        @torch.inference_mode()
        def batch_floor() -> None:
            with amp_ctx():
                for _ in batches:
                    editor.C(x)                                      # The class of every input (the manifest's).
                    codes = E(x)
                    G.synthesis(codes, noise_mode="const")           # The reconstruction.
                    G.synthesis(codes + 0.1, noise_mode="const")     # The edit.

        record("batch", *_paired(batch_achieved, batch_floor, dev, sizes), n)

    ui_ms, ui_status = _ui_edit_ms(editor, repeats=3 if quick else 50)
    if ui_ms is not None:
        figures["ui_edit_ms"] = ui_ms
        locked_ms, _ = _ui_edit_ms(editor, repeats=3 if quick else 50, keep_class=True)
        if locked_ms is not None:
            figures["ui_edit_locked_ms"] = locked_ms
    figures["ui"] = ui_status
    figures["peak_mem_mb"] = _peak_mem_mb(dev)
    return figures


def targets_met(figures: dict[str, Any]) -> dict[str, bool]:
    """Task -> whether its floor ratio reaches :data:`TARGETS` (only the tasks that have a target)."""
    return {task: figures[f"{task}_floor_ratio"] >= target for task, target in TARGETS.items()
            if f"{task}_floor_ratio" in figures}


def format_table(figures: dict[str, Any]) -> str:
    """The figures of :func:`run_bench` as a plain-text table, one row per task, targets marked met / NOT MET."""
    met = targets_met(figures)
    rows = [("task", "achieved", "floor", "ratio", "target")]
    for task in TASKS:
        if f"{task}_per_s" not in figures:
            continue
        achieved = f"{figures[task + '_per_s']:.1f} img/s"
        if task == "invert":
            achieved = f"{figures['invert_per_s']:.2f} img/s ({figures['invert_s_per_image']:.2f} s/img)"
        target = "-"
        if figures.get("quick"):    # Tiny sizes time start-up, not throughput: no verdict on the targets.
            target = "(--quick: not measured)"
        elif task in met:
            target = f">= {TARGETS[task]:.2f}: {'met' if met[task] else 'NOT MET'}"
        floor = figures[f"{task}_floor_per_s"]
        rows.append((task, achieved, f"{floor:.2f} img/s" if task == "invert" else f"{floor:.1f} img/s",
                     f"{figures[task + '_floor_ratio']:.2f}", target))
    if "invert_single_per_s" in figures:   # Not a task with a floor: the batched inversion's speed-up over it.
        rows.append(("invert 1 by 1", f"{figures['invert_single_per_s']:.2f} img/s "
                     f"({figures['invert_single_s_per_image']:.2f} s/img)",
                     f"batched {figures['invert_per_s']:.2f} img/s",
                     f"{figures['invert_batch_speedup']:.2f}x", "(batched / one image per call, as IDInvert)"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    ui = f"{figures['ui_edit_ms']:.1f} ms" if "ui_edit_ms" in figures else figures.get("ui", "not installed")
    if "ui_edit_locked_ms" in figures:
        ui += f" ({figures['ui_edit_locked_ms']:.1f} ms class-locked)"
    lines.append(f"device {figures['device']}, {figures['threads']} thread(s), torch {figures['torch_version']}, "
                 f"peak memory {figures['peak_mem_mb']:.0f} MB; invert: {figures['invert_images']} images x "
                 f"{figures['steps']} steps; apply / batch: {figures['images']} images, batch {figures['batch_size']}, "
                 f"{figures['direction']}; ui edit: {ui}")
    return "\n".join(lines)
