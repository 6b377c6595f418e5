"""`semdir-edit` entry point. Each command parses options and calls one Python function.

A :class:`~semdir_edit.core.errors.UserError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from semdir_edit.cli.batch import batch_cmd
from semdir_edit.cli.options import DIRECTION_HELP, EPS_HELP, QuietOpt, WeightsOpt
from semdir_edit.core.errors import UserError
from semdir_edit.core.validate import MAX_UNIT_GAIN, UNIT_MAX_GAIN, UNIT_TARGET, check_seed, one_line

if TYPE_CHECKING:
    import torch

    from semdir_edit.config import Config


try:  # Recent typer parses with its own copy of click; older ones with click itself.
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as click_errors

# Plain click help (rich_markup_mode=None): typer's rich panels print a "<bool>" metavar after every flag with the
# click versions we install, and frame usage errors in a box.
HELP_STYLE = {"rich_markup_mode": None}
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, **HELP_STYLE,
                  help="GAN inversion and real-image editing along global and class-specific directions.")
train_app = typer.Typer(no_args_is_help=True, **HELP_STYLE, help="Train the project's networks. Under `torchrun "
                        "--nproc_per_node=N -m semdir_edit train ...` gan, encoder and directions train with "
                        "DistributedDataParallel; the config's batch_size is then the global batch, split over the "
                        "N processes.")
app.add_typer(train_app, name="train")
evaluate_app = typer.Typer(no_args_is_help=True, **HELP_STYLE, help="Measure shipped weights (--record writes the "
                           "figures into the manifest).")
app.add_typer(evaluate_app, name="evaluate")
directions_app = typer.Typer(no_args_is_help=True, **HELP_STYLE, help="Look at the learned and baseline directions.")
app.add_typer(directions_app, name="directions")
weights_app = typer.Typer(no_args_is_help=True, **HELP_STYLE, help="Manage weights folders.")
app.add_typer(weights_app, name="weights")

DEFAULT_CONFIG = "fashion_mnist"  # The packaged config (config.DEFAULT_CONFIG); kept literal so --help needs no import.


def command_line() -> str:
    return "semdir-edit " + " ".join(shlex.quote(a) for a in sys.argv[1:])


ConfigOpt = typer.Option(DEFAULT_CONFIG, "--config", "-c", help="YAML config file, or the name of a packaged one.")
DeviceOpt = typer.Option("auto", "--device", help="auto | cpu | cuda[:N].")
RegisterAtLimitOpt = typer.Option(False, "--register-at-limit", help="When --time-limit stops the run, register "
                                  "the weights as they are (the manifest records the steps reached).")
DataDirOpt = typer.Option(None, "--data-dir", help="Folder with the dataset (overrides data.path).")
ScaleOpt = typer.Option(4, "--scale", min=1, max=16, help="Enlarge every 32 x 32 tile of the PNG this many times.")
LabelsOpt = typer.Option(True, "--labels/--no-labels", help="Name the columns (eps) and rows (directions) of a "
                         "strip or grid; --no-labels writes the tiles alone.")
ResumeOpt = typer.Option(False, "--resume", help="Continue from the run folder's last checkpoint.")
TimeLimitOpt = typer.Option(0.0, "--time-limit", help="Stop (with a checkpoint) after N minutes; 0 = none.")


def steps_option(section: str) -> Any:
    return typer.Option(None, "--steps", help=f"Override {section}.steps.")


def train_config(config: Path, section: str, steps: int | None) -> Config:
    """The config of a training command, its ``section``'s steps overridden by --steps."""
    from semdir_edit.config import load_config

    cfg = load_config(config)
    if steps is not None:
        getattr(cfg, section).steps = steps
    return cfg


def train_on_every_rank(device: str, train: Callable[[torch.device], dict[str, Any]]) -> None:
    """Run ``train(device)`` on every rank under torchrun (or in this process); rank 0 says where it stopped."""
    from semdir_edit.core import distributed

    with distributed.session(device) as dev:
        result = train(dev)
        if distributed.is_main():
            typer.echo(f"step {result['step']}: "
                       f"{'finished' if result['finished'] else 'stopped; continue with --resume'}")

JsonOpt = typer.Option(None, "--json", help="Also write the figures as one flat JSON object.")
# Off by default: a quick measurement must never replace the recorded figures. --no-record (the old way to say
# so) is still accepted and changes nothing.
RecordOpt = typer.Option(False, "--record/--no-record", help="Write the figures, with this command, into the "
                         "weights manifest.")


def checked_seed(seed: int) -> int:
    """--seed within what torch's generators take (a 64-bit seed overflows into a traceback otherwise)."""
    return check_seed(seed, "--seed")


def print_table(figures: dict, title: str) -> None:
    """Print figures as a two-column table."""
    typer.echo(title)
    width = max(len(k) for k in figures) if figures else 0
    for key, value in figures.items():
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        typer.echo(f"  {key:<{width}}  {text}")


def report(figures: dict, title: str, json_out: Path | None, record: bool, weights: Path, section: str) -> None:
    """Print the figures, write them as JSON (``--json``), and with ``--record`` store them, with the command line
    that measured them, as ``section`` of the weights manifest's figures."""
    print_table(figures, title)
    write_json(json_out, figures)
    if record:
        from semdir_edit.checkpoint import update_figures

        update_figures(weights, section, {**figures, "command": command_line()})


def write_json(path: Path | None, figures: dict) -> None:
    if path is not None:
        from semdir_edit.core.io import atomic_write_json

        try:
            atomic_write_json(path, figures)
        except OSError as exc:
            raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


@app.command("generate")
def generate_cmd(
    out: Path = typer.Option(Path("samples.png"), "--out", "-o", help="PNG file to write."),
    n: int = typer.Option(64, "--n", min=1, max=4096, help="Number of samples (grid of sqrt(n) columns)."),
    seed: int = typer.Option(0, "--seed", callback=checked_seed),
    truncation: float = typer.Option(1.0, "--truncation", help="Truncation psi (1 = none)."),
    mix: bool = typer.Option(False, "--mix", help="Style-mixing grid: coarse layers from the top row, fine from "
                             "the left column."),
    mix_cutoff: int | None = typer.Option(None, "--mix-cutoff", help="First layer taken from the column "
                                             "sources (default num_ws/2)."),
    noise_variation: bool = typer.Option(False, "--noise-variation", help="One code, several noise draws, and the "
                                         "per-pixel standard deviation."),
    scale: int = ScaleOpt,
    weights: Path = WeightsOpt,
    device: str = DeviceOpt,
) -> None:
    """Write a grid of generated images."""
    import math

    from semdir_edit import generation
    from semdir_edit.checkpoint import load_model
    from semdir_edit.core.device import resolve_device
    from semdir_edit.core.images import save_grid

    G = load_model(weights, "generator", resolve_device(device))
    if mix and noise_variation:
        raise UserError("choose one of --mix and --noise-variation")
    if mix:
        cutoff = mix_cutoff if mix_cutoff is not None else G.num_ws // 2
        if not 0 < cutoff < G.num_ws:
            raise UserError(f"--mix-cutoff must be between 1 and {G.num_ws - 1}")
        images, nrow = generation.style_mixing_grid(G, seed, cutoff=cutoff, truncation_psi=truncation)
    elif noise_variation:
        images = generation.noise_variation(G, seed, truncation_psi=truncation)
        nrow = len(images)
    else:
        images = generation.sample_images(G, n, seed, truncation)
        nrow = math.ceil(math.sqrt(n))
    save_grid(out, images, nrow=nrow, scale=scale)
    typer.echo(f"wrote {out}")


@evaluate_app.command("classifier")
def evaluate_classifier_cmd(
    weights: Path = WeightsOpt,
    config: Path = ConfigOpt,
    data_dir: Path | None = DataDirOpt,
    device: str = DeviceOpt,
    json_out: Path | None = JsonOpt,
    record: bool = RecordOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Classifier accuracy on the test split (overall and per class)."""
    from semdir_edit.config import load_config
    from semdir_edit.core.device import resolve_device
    from semdir_edit.evaluation.evaluate import evaluate_classifier

    cfg = load_config(config)
    figures = evaluate_classifier(weights, cfg.data, resolve_device(device), str(data_dir) if data_dir else None,
                                  progress=not quiet)
    report(figures, "classifier", json_out, record, weights, "classifier")


@evaluate_app.command("generator")
def evaluate_generator_cmd(
    weights: Path = WeightsOpt,
    config: Path = ConfigOpt,
    data_dir: Path | None = DataDirOpt,
    device: str = DeviceOpt,
    n: int = typer.Option(10_000, "--n", min=100, help="Generated (and real) images for FID and precision/recall."),
    ppl_samples: int = typer.Option(5_000, "--ppl-samples", min=10),
    seed: int = typer.Option(0, "--seed", callback=checked_seed),
    json_out: Path | None = JsonOpt,
    record: bool = RecordOpt,
    quiet: bool = QuietOpt,
) -> None:
    """FID / floor, precision / recall, class histogram, PPL and linear separability (classifier features)."""
    from semdir_edit.config import load_config
    from semdir_edit.core import progress
    from semdir_edit.core.device import resolve_device
    from semdir_edit.evaluation.evaluate import evaluate_generator

    cfg = load_config(config)
    figures = evaluate_generator(weights, cfg.data, resolve_device(device), str(data_dir) if data_dir else None,
                                 n=n, ppl_samples=ppl_samples, seed=seed, progress=not quiet,
                                 log=progress.say if not quiet else lambda _: None)
    report(figures, "generator (figures in the classifier's feature space, not Inception)", json_out, record, weights,
           "generator")


@train_app.command("gan")
def train_gan_cmd(
    config: Path = ConfigOpt,
    out: Path | None = typer.Option(None, "--out", help="Run folder (default runs/<name>-gan)."),
    weights: Path | None = typer.Option(None, "--weights", help="Weights folder to register G and D in "
                                           "when training completes (default weights/<name>)."),
    resume: bool = ResumeOpt,
    device: str = DeviceOpt,
    data_dir: Path | None = DataDirOpt,
    time_limit: float = TimeLimitOpt,
    register_at_limit: bool = RegisterAtLimitOpt,
    steps: int | None = steps_option("train_gan"),
    init_from: Path | None = typer.Option(None, "--init-from", help="Start G and D from this weights folder's "
                                             "(e.g. weights/fashion_mnist) instead of random: continues a finished "
                                             "training whose run folder is gone (new optimisers, step 0)."),
) -> None:
    """Train the StyleGAN2-style generator and discriminator."""
    from semdir_edit.training.gan import train_gan

    cfg = train_config(config, "train_gan", steps)
    train_on_every_rank(device, lambda dev: train_gan(
        cfg, out or Path("runs") / f"{cfg.name}-gan", dev, resume=resume, data_dir=str(data_dir) if data_dir else None,
        weights_dir=weights or Path("weights") / cfg.name, command=command_line(), time_limit_min=time_limit,
        register_at_limit=register_at_limit, init_from=init_from))


@train_app.command("classifier")
def train_classifier_cmd(
    config: Path = ConfigOpt,
    out: Path | None = typer.Option(None, "--out", help="Run folder (default runs/<name>-classifier)."),
    weights: Path | None = typer.Option(None, "--weights", help="Weights folder to register the classifier "
                                           "in when training completes (default weights/<name>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run folder's last checkpoint."),
    device: str = DeviceOpt,
    data_dir: Path | None = DataDirOpt,
    time_limit: float = typer.Option(0.0, "--time-limit", help="Stop (with a checkpoint) after N minutes; 0 = none."),
    photos: Path | None = typer.Option(None, "--photos", help="Instead: fine-tune the photo classifier (registered "
                                       "as photo_classifier; the shared classifier is not changed) on a folder of "
                                       "labelled photos, one sub-folder per category."),
    class_map: Path | None = typer.Option(None, "--class-map", help="With --photos: JSON {category: [accepted "
                                          "domain classes]}; [] = out of the domain (trains 'none of these')."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="With --photos: fine-tuning epochs "
                                      "(default 12)."),
    balance: float = typer.Option(0.5, "--balance", min=0.0, max=1.0, help="With --photos: draw each category "
                                  "with weight count^-balance per photo (0 = as they come, 1 = all equally often)."),
    soup: int = typer.Option(1, "--soup", min=1, help="With --photos: fine-tune this many heads (seeds 0, 1, ...) "
                             "and average their weights before the blend."),
    domain_weight: float | None = typer.Option(None, "--domain-weight", min=0.0, help="With --photos: weight of "
                                               "the Fashion-MNIST images' loss against the photos' (keeps the "
                                               "domain accuracy; default 2)."),
    role: str = typer.Option("shared", "--role", help="shared: the classifier every part uses | lock: the class "
                             "lock's second classifier (classifier_lock; configs/fashion_mnist-lock.yaml) | judge: "
                             "the classifier `evaluate directions` asks whether an edit kept its class "
                             "(classifier_judge; configs/fashion_mnist-judge.yaml). Each is trained apart."),
) -> None:
    """Train the classifier (its features are the project's feature space), or with --photos the photo classifier,
    or with --role the class lock's second classifier or the judge of edits."""
    from semdir_edit.config import load_config
    from semdir_edit.core.device import resolve_device
    from semdir_edit.training.classifier import train_classifier

    cfg = load_config(config)
    kinds = {"shared": "classifier", "lock": "classifier_lock", "judge": "classifier_judge"}
    if role not in kinds:
        raise UserError(f"--role must be one of {', '.join(kinds)}, got '{role}'")
    if role != "shared" and (photos is not None or class_map is not None):
        raise UserError("--role and --photos train different networks: give one")
    if photos is not None or class_map is not None:
        if photos is None or class_map is None:
            raise UserError("--photos and --class-map go together")
        _train_photo_classifier(cfg, photos, class_map, weights or Path("weights") / cfg.name,
                                out or Path("runs") / f"{cfg.name}-photo-classifier", data_dir, epochs, balance, soup,
                                domain_weight)
        return
    kind = kinds[role]
    result = train_classifier(cfg, out or Path("runs") / f"{cfg.name}-{kind.replace('_', '-')}",
                              resolve_device(device), resume=resume, data_dir=str(data_dir) if data_dir else None,
                              weights_dir=weights or Path("weights") / cfg.name, command=command_line(),
                              time_limit_min=time_limit, kind=kind)
    typer.echo(f"epoch {result['epoch']}: test accuracy {result.get('test_accuracy', float('nan')):.4f}"
               f"{'' if result['finished'] else ' (stopped; continue with --resume)'}")


def _train_photo_classifier(cfg, photos: Path, class_map: Path, weights: Path, out: Path, data_dir: Path | None,
                            epochs: int | None, balance: float = 0.5, soup: int = 1,
                            domain_weight: float | None = None) -> None:
    """``train classifier --photos``: convert the photos (cached in the run folder), fine-tune, register."""
    from semdir_edit.checkpoint import read_manifest
    from semdir_edit.data import load_split
    from semdir_edit.data.labelled_photos import load_labelled_photos, read_class_map
    from semdir_edit.training.photo_classifier import train_photo_classifier

    names = read_manifest(weights).get("models", {}).get("classifier", {}).get("class_names") or cfg.data.class_names
    mapping = read_class_map(class_map, list(names))
    log = lambda m: typer.echo(m, err=True)  # noqa: E731
    labelled = load_labelled_photos(photos, mapping, cfg.data.resolution, cache=out / "photos.npz", log=log)
    for reason in labelled.failed:
        typer.echo(f"skipped: {reason}", err=True)
    data = str(data_dir) if data_dir else None
    domain, test = load_split(cfg.data, "train", data), load_split(cfg.data, "test", data)
    options = {} if domain_weight is None else {"domain_weight": domain_weight}  # None: the library's default.
    _, figures = train_photo_classifier(weights, labelled, domain, test, epochs=epochs or 12,
                                        command=command_line(), balance=balance, soup=soup, log=log, **options)
    print_table(figures, f"photo_classifier registered in {weights}")


@evaluate_app.command("photos")
def evaluate_photos_cmd(
    photos: Path = typer.Argument(..., help="Folder of labelled photos, one sub-folder per category."),
    class_map: Path = typer.Option(..., "--class-map", help="JSON {category: [accepted domain classes]}; "
                                   "[] = out of the domain."),
    weights: Path = WeightsOpt,
    network: str = typer.Option("auto", "--network", help="auto (what invert uses: the photo classifier when the "
                                "weights have one) | photo | shared (the shared classifier, 1 - confidence as "
                                "ood_score)."),
    confusion: Path = typer.Option(Path("photo-confusion.png"), "--confusion", help="Confusion-matrix PNG to write."),
    misses: Path | None = typer.Option(None, "--misses", help="Also write a sheet of the in-domain photos given a "
                                       "wrong class: each photo beside the domain image made of it (PNG)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the figures as one flat JSON object."),
    device: str = DeviceOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Accepted-class accuracy per category, out-of-domain AUROC and warned share of the photo path on labelled
    photos (converted as `invert` converts them)."""
    from semdir_edit.checkpoint import read_manifest
    from semdir_edit.config import FASHION_MNIST_CLASSES
    from semdir_edit.core import progress
    from semdir_edit.core.device import resolve_device
    from semdir_edit.data.labelled_photos import load_labelled_photos, read_class_map
    from semdir_edit.evaluation.photos import classify_photos, photo_figures, plot_confusion, plot_misses

    if network not in ("auto", "photo", "shared"):
        raise UserError("--network must be auto, photo or shared")
    entry = read_manifest(weights).get("models", {}).get("classifier", {})
    names = list(entry.get("class_names") or FASHION_MNIST_CLASSES)
    mapping = read_class_map(class_map, names)
    with progress.bar(desc="convert photos", unit="photo", progress=not quiet) as bar:
        labelled = load_labelled_photos(photos, mapping, on_step=progress.step_callback(bar))
    for reason in labelled.failed:
        typer.echo(f"skipped: {reason}", err=True)
    if len(labelled.category) == 0:
        raise UserError(f"{photos}: no photo could be converted")
    pred, ood, threshold, used = classify_photos(weights, labelled, resolve_device(device), network)
    figures = {"network": used, **photo_figures(labelled, pred, ood, threshold)}
    print_table(figures, f"photos in {photos} ({used})")
    write_json(json_out, figures)
    try:
        plot_confusion(labelled, pred, ood, threshold, names, confusion, f"{photos} - {used}")
    except OSError as exc:
        raise UserError(f"cannot write {confusion}: {exc.strerror or exc}") from None
    if misses is not None:
        missed = plot_misses(labelled, pred, names, misses)
        typer.echo(f"{missed} in-domain photos given a wrong class" + (f": {misses}" if missed else ""))
    typer.echo(f"wrote {confusion}")


@evaluate_app.command("inversion")
def evaluate_inversion_cmd(
    weights: Path = WeightsOpt,
    config: Path = ConfigOpt,
    data_dir: Path | None = DataDirOpt,
    device: str = DeviceOpt,
    n: int = typer.Option(1000, "--n", min=1, help="First N test images."),
    methods: str = typer.Option("indomain,encoder,optimize", "--methods", help="Comma-separated methods."),
    steps: int = typer.Option(100, "--steps", min=0, help="Optimisation steps (indomain, optimize)."),
    json_out: Path | None = JsonOpt,
    record: bool = RecordOpt,
    photo_like: bool = typer.Option(False, "--photo-like", help="Also invert photo-like versions of the same test "
                                    "images (enlarged, dark on a light background, tinted, off-centre, noise, JPEG) "
                                    "through the photo conversion: <method>_photo_class_accuracy and "
                                    "photo_domain_accuracy."),
    quiet: bool = QuietOpt,
) -> None:
    """PSNR / SSIM / perceptual distance / class preserved / class accuracy / time per image of each inversion
    method, and its in-domain figures (Zhu et al. 2020): domain distance ||w - E(G(w))||, FID of same-class
    interpolations (with its floor) and of edited reconstructions, in the classifier's feature space."""
    from semdir_edit.config import load_config
    from semdir_edit.core.device import resolve_device
    from semdir_edit.evaluation.evaluate import evaluate_inversion

    cfg = load_config(config)
    figures = evaluate_inversion(weights, cfg.data, resolve_device(device), str(data_dir) if data_dir else None,
                                 n=n, methods=tuple(m.strip() for m in methods.split(",") if m.strip()), steps=steps,
                                 photo_like=photo_like, inversion=cfg.invert, progress=not quiet)
    report(figures, "inversion (first test images)", json_out, record, weights, "inversion")


@evaluate_app.command("directions")
def evaluate_directions_cmd(
    weights: Path = WeightsOpt,
    config: Path = ConfigOpt,
    device: str = DeviceOpt,
    per_class: int = typer.Option(100, "--per-class", min=4, help="Generated samples per class."),
    fresh_steps: int = typer.Option(1000, "--fresh-steps", min=1, help="Training steps of each fresh predictor."),
    class_fresh_steps: int = typer.Option(200, "--class-fresh-steps", min=1,
                                          help="Steps of the fresh predictor of each class set and its per-class "
                                               "PCA (20 predictors)."),
    visible_per_class: int = typer.Option(20, "--visible-per-class", min=1,
                                          help="Samples per class for the visible / outline / distinct figures."),
    seed: int = typer.Option(0, "--seed", callback=checked_seed),
    json_out: Path | None = JsonOpt,
    record: bool = RecordOpt,
    quiet: bool = QuietOpt,
) -> None:
    """What a person sees (pixel change, outline, distinctness, class kept at |eps| 3), to:<class> arrival, RCA, edit
    strength, specificity, orthogonality; ours against Voynov, PCA, per-class PCA, SeFa, random."""
    from semdir_edit.checkpoint import update_descriptions
    from semdir_edit.config import load_config
    from semdir_edit.core import progress
    from semdir_edit.editor import Editor
    from semdir_edit.evaluation.evaluate import evaluate_directions

    cfg = load_config(config)
    editor = Editor.from_pretrained(weights, device)
    dc = cfg.train_directions
    figures, descriptions = evaluate_directions(weights, editor.device, editor.class_names, per_class=per_class,
                                                fresh_steps=fresh_steps, eps_range=(dc.eps_min, dc.eps_max),
                                                seed=seed, visible_per_class=visible_per_class,
                                                class_fresh_steps=class_fresh_steps, log=progress.say,
                                                progress=not quiet, data_cfg=cfg.data)
    report(figures, "directions (generated samples; eps in units of W's spread)", json_out, record, weights,
           "directions")
    if record:
        update_descriptions(weights, descriptions)


@directions_app.command("describe")
def directions_describe_cmd(
    weights: Path = WeightsOpt,
    device: str = DeviceOpt,
    per_class: int = typer.Option(100, "--per-class", min=4, help="Generated samples per class (as `evaluate "
                                  "directions`: the same samples for the same value and seed)."),
    seed: int = typer.Option(0, "--seed", callback=checked_seed),
    record: bool = RecordOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Measure what every direction changes (the labels of `directions list`, the grids and the browser editor),
    each edited as `apply` edits it by default; --record stores them and their same-label shares in the manifest."""
    from semdir_edit.checkpoint import update_descriptions, update_figures
    from semdir_edit.editor import Editor
    from semdir_edit.evaluation.evaluate import describe_directions

    editor = Editor.from_pretrained(weights, device)
    descriptions, figures = describe_directions(weights, editor.device, editor.class_names, per_class=per_class,
                                                seed=seed, progress=not quiet)
    width = max(len(k) for k in descriptions)
    for spec, d in descriptions.items():
        typer.echo(f"{spec:<{width}}  {d['label']:<34} r={d['r']:+.2f}  change {d['change']:.3f}")
    print_table(figures, "largest share of a set's directions with the same described attribute")
    if record:
        update_descriptions(weights, descriptions)
        update_figures(weights, "directions", {**figures, "descriptions_command": command_line()}, merge=True)
        typer.echo(f"recorded in {weights / 'manifest.json'}")


@directions_app.command("calibrate")
def directions_calibrate_cmd(
    weights: Path = WeightsOpt,
    device: str = DeviceOpt,
    per_class: int = typer.Option(8, "--per-class", min=1, help="Generated samples per class to measure on."),
    seed: int = typer.Option(1, "--seed", callback=checked_seed),
    target: float = typer.Option(UNIT_TARGET, "--target", min=0.001, max=1.0,
                                 help="Mean pixel change (images in [0, 1]) each direction should make at |eps| 3."),
    max_gain: float = typer.Option(UNIT_MAX_GAIN, "--max-gain", min=1.0, max=MAX_UNIT_GAIN,
                                   help="The most a direction's unit may grow beyond W's spread along it."),
    record: bool = RecordOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Lengthen the eps unit of our global and class directions whose spread-sized step barely changes the picture,
    so that |eps| 3 changes it visibly; --record makes apply, batch, the grids and the browser editor use it."""
    from semdir_edit.checkpoint import update_direction_units
    from semdir_edit.core.device import resolve_device
    from semdir_edit.evaluation.evaluate import calibrate_units

    units = calibrate_units(weights, resolve_device(device), per_class=per_class, seed=seed, target=target,
                            max_gain=max_gain, progress=not quiet)
    for s, row in enumerate(units["gains"]):
        typer.echo(f"{'global' if s == 0 else f'class set {s - 1}':<12} " + " ".join(f"{g:5.2f}" for g in row))
    if record:
        update_direction_units(weights, {**units, "command": command_line()})
        typer.echo(f"recorded in {weights / 'manifest.json'}")


@directions_app.command("list")
def directions_list_cmd(weights: Path = WeightsOpt) -> None:
    """Every direction with its measured description (from `evaluate directions`)."""
    from semdir_edit.checkpoint import read_manifest

    descriptions = read_manifest(weights).get("descriptions")
    if not descriptions:
        raise UserError(f"{weights} has no direction descriptions yet: run `semdir-edit evaluate directions`")
    width = max(len(k) for k in descriptions)
    for spec, d in descriptions.items():
        also = ", ".join(f"{t['attribute']} {t['r']:+.2f}" for t in d.get("top", [])[1:])
        change = f"  change {d['change']:.3f}" if "change" in d else ""
        typer.echo(f"{spec:<{width}}  {d['label']:<34} r={d['r']:+.2f}{change}" + (f"  (also {also})" if also else ""))


@directions_app.command("show")
def directions_show_cmd(
    cls: str | None = typer.Option(None, "--class", help="Show this class's class-specific directions (with "
                                   "--source cpca: its per-class PCA directions)."),
    source: str = typer.Option("global", "--source", help="global | voynov | pca | sefa | random (without --class) "
                               "| cpca (per-class PCA of --class, or of the --latent's class)."),
    latent: Path | None = typer.Option(None, "--latent", help="Edit this latent file (default: a generated sample)."),
    eps: str = typer.Option("-3:3:7", "--eps", help="Columns: start:stop:count."),
    layers: str | None = typer.Option(None, "--layers", help="W+ layer range, e.g. 2-5 (default all)."),
    seed: int = typer.Option(0, "--seed", callback=checked_seed, help="Picks the generated sample."),
    keep: str | None = typer.Option(None, "--keep", help="'class': class-locked edits (default for the "
                                    "class and global sets, not for the baselines) | 'none': plain linear edits."),
    out: Path = typer.Option(Path("directions.png"), "--out", "-o", help="PNG to write."),
    scale: int = ScaleOpt,
    labels: bool = LabelsOpt,
    weights: Path = WeightsOpt,
    device: str = DeviceOpt,
    quiet: bool = QuietOpt,
) -> None:
    """A grid: rows = directions of one set, columns = eps (the middle column is the unedited image)."""
    from semdir_edit.core import progress
    from semdir_edit.core.images import eps_labels, save_grid
    from semdir_edit.editor import Editor
    from semdir_edit.ops.shift_codes import DirectionSpec, match_class, parse_eps, parse_keep

    eps_list = parse_eps(eps)
    keep_global, keep_class = parse_keep(keep)
    if keep_global:
        raise UserError("directions show takes --keep class or none")
    editor = Editor.from_pretrained(weights, device)
    class_index = match_class(cls, editor.class_names) if cls else None
    kind = source if source == "cpca" else "class" if cls else source
    image_class = class_index
    if latent is not None:
        ws, meta = editor.load_latent(latent)
        image_class = meta.get("class_index")
        if class_index is None:
            class_index = image_class
    else:
        if kind == "cpca" and class_index is None:
            raise UserError("--source cpca needs a class: give --class <class> or a --latent")
        if kind == "cpca":
            editor.direction_set(kind, class_index)  # A class without a set fails before the sample search.
        ws = editor.sample_code(class_index, seed)
    with progress.bar(desc="directions", unit="direction", progress=not quiet) as bar:
        grid = editor.direction_grid(ws, kind, eps_list, class_index=class_index, layers=layers,
                                     keep_class=keep_class, image_class=image_class,
                                     on_step=progress.step_callback(bar))
    rows = [editor.direction_label(DirectionSpec(kind, k), class_index) for k in range(grid.shape[0])]
    save_grid(out, grid.flatten(0, 1), nrow=len(eps_list), scale=scale,
              cols=eps_labels(eps_list) if labels else None, rows=rows if labels else None)
    named = cls or (kind == "cpca" and class_index is not None)
    typer.echo(f"wrote {out} ({kind}{'@' + editor.class_names[class_index] if named else ''}: "
               f"{grid.shape[0]} directions x {len(eps_list)} eps)")


@evaluate_app.command("inversion-curve")
def evaluate_inversion_curve_cmd(
    weights: Path = WeightsOpt,
    config: Path = ConfigOpt,
    data_dir: Path | None = DataDirOpt,
    device: str = DeviceOpt,
    n: int = typer.Option(64, "--n", min=1, help="First N test images."),
    optimize_steps: int = typer.Option(500, "--optimize-steps", min=1),
    indomain_steps: int = typer.Option(200, "--indomain-steps", min=1),
    out: Path = typer.Option(Path("inversion-curve.png"), "--out", "-o", help="PNG of PSNR against steps."),
    json_out: Path | None = JsonOpt,
    record: bool = RecordOpt,
) -> None:
    """Mean PSNR per step: plain optimisation from the mean code vs in-domain inversion from the encoder."""
    from semdir_edit.config import load_config
    from semdir_edit.core.device import resolve_device
    from semdir_edit.evaluation.evaluate import inversion_curves, plot_curves

    cfg = load_config(config)
    figures, curves = inversion_curves(weights, cfg.data, resolve_device(device), str(data_dir) if data_dir else None,
                                       n=n, optimize_steps=optimize_steps, indomain_steps=indomain_steps,
                                       inversion=cfg.invert)
    plot_curves(curves, out, f"first {n} Fashion-MNIST test images, batched, fixed noise")
    report(figures, "inversion PSNR per step", json_out, record, weights, "inversion_curve")
    typer.echo(f"wrote {out}")


@app.command("invert")
def invert_cmd(
    images: list[Path] = typer.Argument(..., help="Photos or domain images to invert."),
    out: Path = typer.Option(Path("out"), "--out", "-o", help="Output folder."),
    method: str = typer.Option("indomain", "--method", "-m", help="indomain | encoder | optimize | conventional."),
    steps: int | None = typer.Option(None, "--steps", help="Optimisation steps (default from the config: 100)."),
    no_preprocess: bool = typer.Option(False, "--no-preprocess", help="Use the images as they are (no photo "
                                       "conversion): for images already in the domain."),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config whose 'invert' section "
                                          "overrides the defaults."),
    weights: Path = WeightsOpt,
    device: str = DeviceOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Invert photos into the generator's W+ and write, per image: domain image, reconstruction,
    side-by-side PNG, latent file (for `apply`), and a JSON of figures."""
    from semdir_edit.cli.outputs import write_inversion
    from semdir_edit.config import InversionConfig, load_config
    from semdir_edit.core import progress
    from semdir_edit.core.types import Failed
    from semdir_edit.editor import Editor
    from semdir_edit.inversion.invert import OPTIMIZING

    inversion = load_config(config).invert if config else InversionConfig()
    editor = Editor.from_pretrained(weights, device, inversion)
    # A bar for the optimising methods only: the encoders take no steps, so it would only say "0 steps".
    with progress.bar(desc="invert", unit="step", progress=not quiet and method in OPTIMIZING) as bar:
        results = editor.invert([str(p) for p in images], method=method, steps=steps, preprocess=not no_preprocess,
                                on_step=progress.step_callback(bar))
    rows, failures, used = [], 0, set()
    for res in results:
        if isinstance(res, Failed):
            failures += 1
            typer.echo(f"error: {one_line(res.message)}", err=True)
            continue
        for note in res.notes:
            typer.echo(f"note: {one_line(f'{res.name}: {note}')}", err=True)
        if res.out_of_domain:
            typer.echo(f"warning: {one_line(res.name)}: may be none of the classes ({', '.join(editor.class_names)}): "
                       f"ood_score {res.ood_score:.2f}, '{res.class_name}' is a guess", err=True)
        rows.append(write_inversion(out, res, editor.weights_id, used))
    if rows:
        typer.echo(f"{'image':<28} {'class':<12} {'conf':>5} {'PSNR':>6} {'SSIM':>6} {'percep':>7}")
        for r in rows:
            typer.echo(f"{Path(r['name']).name[:28]:<28} {r['class_name'][:12]:<12} {r['confidence']:5.2f} "
                       f"{r['psnr']:6.2f} {r['ssim']:6.3f} {r['perceptual']:7.4f}")
        typer.echo(f"wrote {len(rows)} inversion(s) to {out}/")
    if failures:
        raise typer.Exit(2)


@train_app.command("encoder")
def train_encoder_cmd(
    config: Path = ConfigOpt,
    kind: str = typer.Option("domain_guided", "--kind", help="domain_guided (Eq. 2/3) | conventional (Eq. 1)."),
    weights: Path = WeightsOpt,
    out: Path | None = typer.Option(None, "--out", help="Run folder (default runs/<name>-encoder-<kind>)."),
    resume: bool = ResumeOpt,
    device: str = DeviceOpt,
    data_dir: Path | None = DataDirOpt,
    time_limit: float = TimeLimitOpt,
    register_at_limit: bool = RegisterAtLimitOpt,
    steps: int | None = steps_option("train_encoder"),
    init_from: Path | None = typer.Option(None, "--init-from", help="Start from this weights folder's encoder of "
                                          "this kind (fine-tuning, e.g. for a further-trained generator)."),
) -> None:
    """Train the domain-guided (or the conventional) encoder against the shipped generator."""
    from semdir_edit.training.encoder import train_encoder

    if kind not in ("domain_guided", "conventional"):
        raise UserError("--kind must be domain_guided or conventional")
    cfg = train_config(config, "train_encoder", steps)
    train_on_every_rank(device, lambda dev: train_encoder(
        cfg, weights, out or Path("runs") / f"{cfg.name}-encoder-{kind}", dev, kind=kind, resume=resume,
        data_dir=str(data_dir) if data_dir else None, command=command_line(), time_limit_min=time_limit,
        register_at_limit=register_at_limit, init_from=init_from))


@train_app.command("directions")
def train_directions_cmd(
    config: Path = ConfigOpt,
    weights: Path = WeightsOpt,
    out: Path | None = typer.Option(None, "--out", help="Run folder (default runs/<name>-directions)."),
    resume: bool = ResumeOpt,
    device: str = DeviceOpt,
    time_limit: float = TimeLimitOpt,
    register_at_limit: bool = RegisterAtLimitOpt,
    steps: int | None = steps_option("train_directions"),
    global_only: bool = typer.Option(False, "--global-only", help="Voynov & Babenko's baseline: global set only "
                                     "(registered as deformators_voynov)."),
    init_from: Path | None = typer.Option(None, "--init-from", help="Start from this weights folder's trained "
                                          "deformators and predictor (fine-tuning) instead of a random init."),
    freeze_global: bool = typer.Option(False, "--freeze-global", help="Keep the global directions as they are "
                                       "(with --init-from: fine-tune the class sets only)."),
    freeze_class: bool = typer.Option(False, "--freeze-class", help="Keep the class directions as they are (with "
                                      "--freeze-global too: train only the shift predictor)."),
) -> None:
    """Train the N+1 deformators and the shift predictor against the shipped generator and classifier."""
    from semdir_edit.training.directions import train_directions

    cfg = train_config(config, "train_directions", steps)
    cfg.train_directions.freeze_global = cfg.train_directions.freeze_global or freeze_global
    cfg.train_directions.freeze_class = cfg.train_directions.freeze_class or freeze_class
    default_out = Path("runs") / f"{cfg.name}-directions{'-voynov' if global_only else ''}"
    train_on_every_rank(device, lambda dev: train_directions(
        cfg, weights, out or default_out, dev, resume=resume, command=command_line(), time_limit_min=time_limit,
        global_only=global_only, register_at_limit=register_at_limit, init_from=init_from))


@train_app.command("baselines")
def train_baselines_cmd(
    config: Path = ConfigOpt,
    weights: Path = WeightsOpt,
    n: int = typer.Option(20_000, "--n", min=100, help="Sampled codes for PCA, W statistics and class boundaries."),
    seed: int = typer.Option(0, "--seed", callback=checked_seed),
    device: str = DeviceOpt,
) -> None:
    """Compute the closed-form direction sources (GANSpace PCA, per-class PCA, SeFa, random, class boundaries) and
    register them."""
    from semdir_edit.checkpoint import load_model, register_model
    from semdir_edit.config import load_config
    from semdir_edit.core.device import resolve_device
    from semdir_edit.directions.bank import build_direction_bank

    cfg = load_config(config)
    dev = resolve_device(device)
    G, C = load_model(weights, "generator", dev), load_model(weights, "classifier", dev)
    bank = build_direction_bank(G, C, cfg.deformator.k, n=n, seed=seed)
    register_model(weights, "direction_bank", bank.cpu(), command=command_line(), extra={"samples": n})
    typer.echo(f"registered direction_bank (K={cfg.deformator.k}) in {weights}")


@app.command("apply")
def apply_cmd(
    sources: list[Path] = typer.Argument(..., metavar="SOURCE...", help="A latent file from `invert` "
                                         "(*.latent.safetensors) or an image; or several latent files."),
    direction: str = typer.Option(..., "--direction", "-d", help=DIRECTION_HELP),
    eps: str = typer.Option("2", "--eps", help=EPS_HELP),
    layers: str | None = typer.Option(None, "--layers", help="W+ layer range, e.g. 2-5 (default all)."),
    keep: str | None = typer.Option(None, "--keep", help="'class': class-locked edit, never taking the "
                                    "classifier's margin for the image's class below a floor (default for class:K and "
                                    "global:K) | "
                                    "'none': the plain linear edit | 'global': with to:<class>, keep the global "
                                    "directions fixed so only the class changes."),
    out: Path | None = typer.Option(None, "--out", "-o", show_default="edited.png; edited/ for several inputs",
                                    help="PNG to write; with several inputs, the folder for their PNGs "
                                    "(<name>.png each)."),
    method: str = typer.Option("indomain", "--method", "-m", help="Inversion method when SOURCE is an image."),
    scale: int = ScaleOpt,
    labels: bool = LabelsOpt,
    weights: Path = WeightsOpt,
    device: str = DeviceOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Edit an inverted image along a direction; a range of eps writes a traversal strip (middle = eps 0).
    Several latent files are edited together, in batches (on a CPU over one process per core)."""
    from semdir_edit.core import progress
    from semdir_edit.core.images import eps_labels, save_grid
    from semdir_edit.core.types import Failed
    from semdir_edit.editor import Editor
    from semdir_edit.inversion.invert import OPTIMIZING
    from semdir_edit.ops.shift_codes import CLASS_KINDS, match_class, parse_direction, parse_eps, parse_keep

    spec = parse_direction(direction)
    eps_list = parse_eps(eps)
    keep_global, keep_class = parse_keep(keep)
    if len(sources) > 1:
        _apply_many(sources, out or Path("edited"), spec, eps_list, layers, keep_global, keep_class, scale, labels,
                    weights, device)
        return
    source, out = sources[0], out or Path("edited.png")
    editor = Editor.from_pretrained(weights, device)
    class_index = None
    if source.name.endswith(".safetensors"):
        ws, meta = editor.load_latent(source)
        class_index = meta.get("class_index")
    else:
        with progress.bar(desc="invert", unit="step", progress=not quiet and method in OPTIMIZING) as bar:
            (res,) = editor.invert([str(source)], method=method, on_step=progress.step_callback(bar))
        if isinstance(res, Failed):
            raise UserError(res.message)
        ws, class_index = res.ws, res.class_index
    if spec.kind in CLASS_KINDS and spec.class_name is not None and class_index is not None:
        named = match_class(spec.class_name, editor.class_names)
        if named != class_index:  # Allowed (a set may be tried on any article), but say so.
            typer.echo(f"note: {spec.kind}:{spec.k}@{editor.class_names[named]} is the set of "
                       f"{editor.class_names[named]}; the image is {editor.class_names[class_index]}", err=True)
    images = editor.apply(ws, spec, eps_list, class_index=class_index, layers=layers, keep_global=keep_global,
                           keep_class=keep_class)
    strip = labels and len(eps_list) > 1       # A single edited image stays a plain picture of the article.
    save_grid(out, images[0], nrow=len(eps_list), scale=scale, pad=2 if len(eps_list) > 1 else 0,
              cols=eps_labels(eps_list) if strip else None,
              rows=[editor.direction_label(spec, class_index)] if strip else None)
    typer.echo(f"wrote {out} ({spec}, eps {eps})")


def _apply_many(sources: list[Path], out_dir: Path, spec: Any, eps_list: list[float], layers: str | None,
                keep_global: bool, keep_class: bool | None, scale: int, labels: bool, weights: Path,
                device: str) -> None:
    """`apply` of several latent files: :func:`~semdir_edit.editing.apply.apply_files` into ``out_dir``."""
    from semdir_edit.core.io import LATENT_SUFFIX
    from semdir_edit.editing.apply import apply_files, output_name
    from semdir_edit.editor import Editor

    images = [s for s in sources if not s.name.endswith(LATENT_SUFFIX)]
    if images:
        raise UserError(f"{images[0]}: with several inputs, each must be a latent file from `invert` "
                        f"(*{LATENT_SUFFIX}); for a folder of images use `semdir-edit batch`")
    if out_dir.suffix.lower() == ".png":
        raise UserError(f"-o {out_dir}: with several inputs, -o names a folder (one <name>.png per input)")
    names: dict[str, Path] = {}
    for source in sources:
        name = output_name(source)
        if name in names and names[name] != source:
            raise UserError(f"{names[name]} and {source} would both write {out_dir / name}")
        names[name] = source
    editor = Editor.from_pretrained(weights, device)
    written = apply_files(editor, list(dict.fromkeys(sources)), out_dir, spec, eps_list, scale=scale, layers=layers,
                          keep_class=keep_class, keep_global=keep_global, labels=labels)
    typer.echo(f"wrote {len(written)} PNGs to {out_dir} ({spec}, eps {','.join(f'{e:g}' for e in eps_list)})")


app.command("batch")(batch_cmd)


@weights_app.command("merge")
def weights_merge_cmd(
    dst: Path = typer.Argument(..., help="Weights folder to copy into (created when missing)."),
    src: Path = typer.Argument(..., help="Weights folder to copy from."),
    kinds: list[str] = typer.Argument(..., help="Networks to copy, e.g. encoder deformators shift_predictor."),
) -> None:
    """Copy networks (files and manifest entries) from one weights folder into another, atomically and under the
    manifest's lock (e.g. to gather jobs that each registered into their own copy)."""
    from semdir_edit.checkpoint import merge_models

    missing = merge_models(dst, src, kinds)
    for kind in kinds:
        typer.echo(f"{'not in ' + str(src) if kind in missing else 'merged'}: {kind}")
    if missing:
        raise typer.Exit(1)


@app.command("ui")
def ui_cmd(
    weights: Path = WeightsOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (another than 127.0.0.1 is "
                             "reachable by others: there is no authentication)."),
    port: int = typer.Option(7860, "--port", min=1, max=65535),
    method: str | None = typer.Option(None, "--method", "-m", help="Default inversion method (default indomain)."),
    data_dir: Path | None = DataDirOpt,
    device: str = DeviceOpt,
) -> None:
    """Interactive editor in the browser: upload a photo, move sliders along the directions, download results."""
    from semdir_edit.ui import require_ui_packages

    require_ui_packages()
    from semdir_edit.ui.server import serve

    serve(weights, host=host, port=port, device=device, method=method, data_dir=data_dir)


@app.command("bench")
def bench_cmd(
    weights: Path = WeightsOpt,
    device: str = DeviceOpt,
    json_out: Path | None = JsonOpt,
    quick: bool = typer.Option(False, "--quick", help="Tiny sizes: checks that everything runs, measures nothing."),
    direction: str | None = typer.Option(None, "--direction", "-d", help="Edit of apply and batch "
                                         "(default global:0, or pca:0 without deformators)."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch CPU threads (default: torch's)."),
    amp: bool = typer.Option(False, "--amp", help="bfloat16 autocast on both sides (CUDA only)."),
) -> None:
    """Images/s of generator, encoder, in-domain inversion, apply and batch, each against its compute floor."""
    from semdir_edit.core.device import resolve_device
    from semdir_edit.evaluation.bench import format_table, run_bench

    figures = run_bench(weights, resolve_device(device), quick=quick, direction=direction, amp=amp, threads=threads,
                        log=lambda m: typer.echo(m, err=True))
    typer.echo(format_table(figures))
    if "ui_edit_ms" not in figures:
        typer.echo(f"ui: {figures['ui']}")
    write_json(json_out, figures)


def main() -> None:
    """Console-script entry: run the app, turning user errors into one line and exit code 2."""
    for stream in (sys.stdout, sys.stderr):  # File names that are not UTF-8 must print, not crash.
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        code = app(standalone_mode=False)   # Not standalone: click's errors come here, to be said in one line.
        if isinstance(code, int) and code:  # typer.Exit(n) is returned, not raised, outside standalone mode.
            sys.exit(code)
    except click_errors.NoArgsIsHelpError as exc:   # A bare group: its help, as click would show it.
        exc.show()
        sys.exit(exc.exit_code)
    except click_errors.ClickException as exc:      # A bad option or argument: one line, like every error.
        message = " ".join(exc.format_message().split())
        typer.echo(f"error: {message}" + (f" (see {exc.ctx.command_path} --help)" if getattr(exc, "ctx", None)
                                          else ""), err=True)
        sys.exit(2)
    except typer.Abort:                             # Ctrl-C: click turns KeyboardInterrupt into Abort.
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except UserError as exc:
        typer.echo(f"error: {one_line(exc)}", err=True)  # one_line: a newline in a file name must not split it.
        sys.exit(2)
    except OSError as exc:  # The machine refused (disk full, read-only, permissions) somewhere not wrapped.
        where = f" ({exc.filename})" if exc.filename else ""
        typer.echo(f"error: {one_line(f'{exc.strerror or exc}{where}')}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C outside typer's own handling (e.g. while the app is being built).
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except SystemExit as exc:  # Typer turns Ctrl-C into a silent exit 130: say what happened.
        if exc.code == 130:
            typer.echo("interrupted", err=True)
        raise
