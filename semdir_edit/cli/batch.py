"""`semdir-edit batch`: edit a whole folder (see :mod:`semdir_edit.editing.batch`).

Only typer is imported here: the CLI's start-up must not pay for torch when another command runs.
"""

from __future__ import annotations

from pathlib import Path

import typer

from semdir_edit.cli.options import DIRECTION_HELP, EPS_HELP, QuietOpt, WeightsOpt


def batch_cmd(
    in_dir: Path = typer.Argument(..., help="Folder of photos or domain images (png, jpg, bmp, gif, webp, tiff)."),
    out_dir: Path = typer.Argument(..., help="Output folder: mirrors IN_DIR's layout, plus manifest.jsonl."),
    direction: str = typer.Option(..., "--direction", "-d", help=DIRECTION_HELP),
    eps: str = typer.Option("2", "--eps", help=EPS_HELP),
    method: str = typer.Option("indomain", "--method", "-m", help="indomain | encoder | optimize | conventional."),
    steps: int | None = typer.Option(None, "--steps", min=0, help="Optimisation steps (default 100)."),
    layers: str | None = typer.Option(None, "--layers", help="W+ layer range, e.g. 2-5 (default all)."),
    keep: str | None = typer.Option(None, "--keep", help="'class': class-locked edits (default for class:K "
                                    "and global:K) | 'none': plain linear edits."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Descend into sub-folders (folder links that "
                                   "lead out of IN_DIR are skipped with a warning, unless --follow-symlinks)."),
    follow_symlinks: bool = typer.Option(False, "--follow-symlinks", help="With --recursive, also descend folder "
                                         "links that lead out of IN_DIR."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, max=4096, help="Images inverted together."),
    workers: int | None = typer.Option(None, "--workers", min=0, max=64, help="Loader processes that decode "
                                       "and convert images (default 0 on CPU, up to 4 on a GPU)."),
    processes: int | None = typer.Option(None, "--processes", min=1, max=256, show_default="one per torch thread "
                                         "on a CPU, 1 on a GPU", help="One-thread processes that share the inputs "
                                         "(1: this process alone, with all its threads)."),
    weights: Path = WeightsOpt,
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda[:N]."),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config whose 'invert' section "
                                          "overrides the inversion defaults (lr, lambda_dom, ...)."),
    scale: int | None = typer.Option(None, "--scale", min=1, max=16, show_default="4 for a strip, 1 for one "
                                     "edited image", help="Enlarge every 32 x 32 tile of the edited PNGs this "
                                     "many times."),
    labels: bool = typer.Option(True, "--labels/--no-labels", help="Name the columns (eps) and the row "
                                "(direction) of a strip, as apply does; --no-labels writes the tiles alone."),
    quiet: bool = QuietOpt,
) -> None:
    """Invert, classify and edit every image of a folder; resumable (a rerun skips what is done).

    Writes <name>.edited.png (or <name>.strip.png for an eps range) and <name>.latent.safetensors per input, and
    one line per input in OUT_DIR/manifest.jsonl. A bad file is reported and recorded; the run goes on.
    Under `torchrun --nproc_per_node=N -m semdir_edit batch ...` the N processes share the inputs (one GPU each).
    """
    from semdir_edit.config import InversionConfig, load_config
    from semdir_edit.core import distributed
    from semdir_edit.core.errors import UserError
    from semdir_edit.editing.batch import run_batch
    from semdir_edit.editor import Editor
    from semdir_edit.ops.shift_codes import parse_eps, parse_keep

    keep_global, keep_class = parse_keep(keep)
    if keep_global:
        raise UserError("batch takes --keep class or none")
    if scale is None:
        # Strips are pictures for people (like apply's); one edited image stays at the generator's resolution,
        # an image like the inputs, which keeps the outputs (and options hash) of earlier runs.
        scale = 4 if len(parse_eps(eps)) > 1 else 1
    inversion = load_config(config).invert if config else InversionConfig()
    with distributed.session(device) as dev:
        editor = Editor.from_pretrained(weights, dev, inversion)
        summary = run_batch(editor, in_dir, out_dir, direction, eps=eps, method=method, steps=steps, layers=layers,
                            recursive=recursive, batch_size=batch_size, workers=workers, progress=not quiet,
                            keep_class=keep_class, follow_symlinks=follow_symlinks, scale=scale, labels=labels,
                            processes=processes)
        if distributed.is_main():  # One summary for the whole run.
            skipped = f", {summary['skipped']} skipped (done before)" if summary["skipped"] else ""
            typer.echo(f"{summary['ok']} ok, {summary['errors']} errors{skipped}; manifest {summary['manifest']}")
