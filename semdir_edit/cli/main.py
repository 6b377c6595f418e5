"""`semdir-edit` entry point. Each command parses options and calls one Python function.

A :class:`~semdir_edit.errors.UserError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from semdir_edit.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="GAN inversion and real-image editing along global and class-specific directions.")
train_app = typer.Typer(no_args_is_help=True, help="Train the project's networks.")
app.add_typer(train_app, name="train")

DEFAULT_CONFIG = "configs/fashion_mnist.yaml"
DEFAULT_WEIGHTS = "weights/fashion_mnist"


def command_line() -> str:
    return "semdir-edit " + " ".join(shlex.quote(a) for a in sys.argv[1:])


ConfigOpt = typer.Option(DEFAULT_CONFIG, "--config", "-c", help="YAML config file.")
DeviceOpt = typer.Option("auto", "--device", help="auto | cpu | cuda[:N].")
DataDirOpt = typer.Option(None, "--data-dir", help="Folder with the dataset (overrides data.path).")


@train_app.command("gan")
def train_gan_cmd(
    config: Path = ConfigOpt,
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default runs/<name>-gan)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Weights folder to register G and D in "
                                           "when training completes (default weights/<name>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run folder's last checkpoint."),
    device: str = DeviceOpt,
    data_dir: Optional[Path] = DataDirOpt,
    time_limit: float = typer.Option(0.0, "--time-limit", help="Stop (with a checkpoint) after N minutes; 0 = none."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Override train_gan.steps."),
) -> None:
    """Train the StyleGAN2-style generator and discriminator."""
    from semdir_edit.config import load_config
    from semdir_edit.device import resolve_device
    from semdir_edit.training.gan import train_gan

    cfg = load_config(config)
    if steps is not None:
        cfg.train_gan.steps = steps
    result = train_gan(cfg, out or Path("runs") / f"{cfg.name}-gan", resolve_device(device), resume=resume,
                       data_dir=str(data_dir) if data_dir else None, weights_dir=weights or Path("weights") / cfg.name,
                       command=command_line(), time_limit_min=time_limit)
    typer.echo(f"step {result['step']}: {'finished' if result['finished'] else 'stopped; continue with --resume'}")


def main() -> None:
    """Console-script entry: run the app, turning user errors into one line and exit code 2."""
    try:
        app()
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
