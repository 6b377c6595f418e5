"""`evaluate` jobs: each loads shipped weights, measures one model as docs/EVALUATION.md says,
and returns one flat dict of figures (also written into the weights manifest by the CLI).

Distribution figures use the project's classifier features, not Inception: compare them within
this project only.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from semdir_edit.checkpoint import load_model, read_manifest, unit_gains
from semdir_edit.config import DataConfig, InversionConfig
from semdir_edit.core.device import eval_mode
from semdir_edit.core.errors import UserError
from semdir_edit.core.images import to_float
from semdir_edit.core.io import atomic_write_bytes
from semdir_edit.core.progress import Stages, bar, step_callback
from semdir_edit.core.types import Inverted
from semdir_edit.core.validate import UNIT_MAX_GAIN, UNIT_TARGET
from semdir_edit.data import ImageSet, load_split
from semdir_edit.directions.baselines import sample_by_class
from semdir_edit.editor import Editor
from semdir_edit.evaluation import directions as ed
from semdir_edit.evaluation.metrics import (
    ClassTypicality,
    accuracy,
    class_histogram,
    classifier_features,
    code_features,
    domain_distance,
    fid_from_features,
    generate_batches,
    linear_separability,
    min_class_share_ratio,
    perceptual_path_length,
    precision_recall,
    same_label_pairs,
)
from semdir_edit.evaluation.photolike import photo_like_jpegs
from semdir_edit.inversion.invert import invert
from semdir_edit.models import Classifier, ClassifierEnsemble, Generator
from semdir_edit.models.shift_predictor import ShiftPredictor
from semdir_edit.ops.perceptual import PerceptualLoss
from semdir_edit.ops.shift_codes import DirectionSpec, keeps_class
from semdir_edit.training.classifier import predict


def _image_batches(data: ImageSet, n: int, device: torch.device, batch_size: int = 500):
    for start in range(0, min(n, len(data)), batch_size):
        yield data.batch(torch.arange(start, min(start + batch_size, n, len(data))), device)[0]


def evaluate_classifier(weights_dir: str | Path, data_cfg: DataConfig, device: torch.device,
                        data_dir: str | None = None, progress: bool = False) -> dict[str, Any]:
    """Top-1 accuracy on the whole test split, overall and per class (``progress``: a bar, see core.progress)."""
    C = load_model(weights_dir, "classifier", device)
    test = load_split(data_cfg, "test", data_dir)
    preds = predict(C, test, device, progress=progress)
    figures: dict[str, Any] = {"accuracy": accuracy(preds, test.labels), "test_images": len(test)}
    for k in range(len(test.class_names)):
        mask = test.labels == k
        figures[f"accuracy_class_{k}"] = accuracy(preds[mask], test.labels[mask]) if mask.any() else float("nan")
    return figures


NOISE_REFERENCE_SIGMA = 0.02  # Gaussian noise of the FID reference (``fid_noise_reference``), on [-1, 1] images.


def evaluate_generator(weights_dir: str | Path, data_cfg: DataConfig, device: torch.device,
                       data_dir: str | None = None, n: int = 10_000, ppl_samples: int = 5_000,
                       seed: int = 0, batch_size: int = 250, progress: bool = False,
                       log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """FID (and its floor), precision/recall, class histogram, PPL in W and linear separability of W.

    progress / log: a bar over the five stages, each named with ``log`` as it starts (see core.progress).

    Besides the floor (train vs test), ``fid_noise_reference`` is the FID of the training images with faint Gaussian
    noise (sigma ``fid_noise_sigma`` = 0.02) against the test images: how far an invisible change moves FID in
    the classifier's feature space, to read ``fid`` against.
    """
    stage = Stages(5, "evaluate generator", log, progress)
    stage("features of the real images")
    G = load_model(weights_dir, "generator", device)
    C = load_model(weights_dir, "classifier", device)
    train, test = load_split(data_cfg, "train", data_dir), load_split(data_cfg, "test", data_dir)
    n_test = min(n, len(test))
    test_feats, _ = classifier_features(C, _image_batches(test, n_test, device), device)
    train_feats, _ = classifier_features(C, _image_batches(train, n_test, device), device)
    # How sensitive this feature space is: the same training images with faint noise (NOISE_REFERENCE_SIGMA of
    # [-1, 1], ~2.5 grey levels of 255, invisible to a person) against the test images.
    noise = torch.Generator().manual_seed(seed)
    noisy = ((x + NOISE_REFERENCE_SIGMA * torch.randn(x.shape, generator=noise).to(x.device)).clamp(-1, 1)
             for x in _image_batches(train, n_test, device))
    noisy_feats, _ = classifier_features(C, noisy, device)

    stage(f"{n} generated samples")
    ws, images = [], []
    for w, img in generate_batches(G, n, batch_size, device, seed):
        ws.append(w.cpu())
        images.append(img)
    fake_feats, fake_labels = classifier_features(C, images, device)
    ws_all = torch.cat(ws)

    num_classes = len(test.class_names)
    hist = class_histogram(fake_labels, num_classes)
    stage("precision / recall")
    pr = precision_recall(test_feats, fake_feats, k=3)
    stage("linear separability of W")
    sep = linear_separability(ws_all, fake_labels, num_classes, seed=seed)
    stage(f"PPL ({ppl_samples} paths)")
    figures: dict[str, Any] = {
        "fid": fid_from_features(fake_feats, test_feats),
        "fid_floor": fid_from_features(train_feats, test_feats),
        "fid_noise_reference": fid_from_features(noisy_feats, test_feats),
        "fid_noise_sigma": NOISE_REFERENCE_SIGMA,
        "precision": pr["precision"],
        "recall": pr["recall"],
        "min_class_share_ratio": min_class_share_ratio(hist),
        "ppl_w": perceptual_path_length(G, C, ppl_samples, device, seed, batch_size=batch_size),
        "separability_accuracy": sep["accuracy"],
        "separability_entropy_bits": sep["conditional_entropy"],
        "samples": n,
    }
    stage.close()
    figures["fid_over_floor"] = figures["fid"] / max(figures["fid_floor"], 1e-12)
    for k, share in enumerate(hist):
        figures[f"class_share_{k}"] = share
    return figures


def evaluate_inversion(weights_dir: str | Path, data_cfg: DataConfig, device: torch.device,
                       data_dir: str | None = None, n: int = 1000, methods: tuple[str, ...] = ("indomain", "encoder",
                                                                                              "optimize"),
                       steps: int = 100, photo_like: bool = False, seed: int = 0,
                       batch_size: int = 256, inversion: InversionConfig | None = None, progress: bool = False
                       ) -> dict[str, Any]:
    """Reconstruction and in-domain figures of each inversion method on the first ``n`` test images.

    ``inversion``: the optimisation settings (lr, lambdas, perceptual network); None = the defaults.
    ``progress``: a bar per method over its optimisation steps (see core.progress).

    Keys ``<method>_<figure>``:

    - psnr, ssim, perceptual (means), class_preserved (share where the classifier's label of the reconstruction
      equals that of the original), class_accuracy (share where it equals the true test label),
      seconds_per_image, failed;
    - in-domain-ness (Zhu et al., "In-Domain GAN Inversion for Real Image Editing", ECCV 2020), from the method's
      W+ codes w of the images it inverted:
      ``domain_distance``: mean over images of ||w - E(G(w))|| (L2 over the whole code; E = the domain-guided
      encoder; only when the weights have one);
      ``interp_fid``: FID in the classifier's feature space of G((w_a + w_b) / 2) for disjoint pairs of consecutive
      images with the same true label (:func:`~semdir_edit.evaluation.metrics.same_label_pairs`) against the real
      images evaluated (all ``n``); only with >= 2 pairs (``interp_pairs`` counts them among all ``n`` images;
      a method whose inversions failed pairs only the rest);
      ``edit_fid``: FID of the edited reconstructions G(w + 2 * spread(d) * d) (``Editor.apply``; d = global:0,
      or pca:0 without deformators; named by ``edit_direction``) against the same real features; only when the
      weights have a direction bank.
    - ``photo_like=True`` adds photo_class_accuracy: the same methods run on photo-like versions of the same test
      images (:mod:`~semdir_edit.evaluation.photolike`, seeded by ``seed``: enlarged, dark-on-light, tinted,
      off-centre on a light 320x320 background, noise, JPEG 80) after the real photo conversion, scored against
      the true labels.

    Reference keys: ``interp_fid_floor`` (the same FID between the even- and odd-indexed halves of the real images:
    the noise floor at this sample size), and with ``photo_like`` ``photo_domain_accuracy`` (the classifier on the
    converted photo-like images themselves) and ``photo_failed`` (photo-like images the conversion refused).
    Generated images use constant noise and are clamped to [-1, 1]; every network runs in eval mode without
    gradients, ``batch_size`` images at a time, on ``device``.
    """
    editor = Editor.from_pretrained(weights_dir, device, inversion)
    device = editor.device
    models = editor.manifest.get("models", {})
    test = load_split(data_cfg, "test", data_dir)
    images, labels = test.images[:n], test.labels[:n]
    figures: dict[str, Any] = {"images": len(images), "steps": steps}
    G, C = editor.G, editor.C
    E = editor.model("encoder") if "encoder" in models else None
    real_feats, _ = classifier_features(C, _image_batches(test, len(images), device, batch_size), device)
    if len(real_feats) >= 4:
        figures["interp_fid_floor"] = fid_from_features(real_feats[0::2], real_feats[1::2])
    figures["interp_pairs"] = len(same_label_pairs(labels))
    edit = None
    if "direction_bank" in models:
        edit = "global:0" if "deformators" in models else "pca:0"
        figures["edit_direction"] = edit

    photo_domains, photo_labels = None, None
    if photo_like:

        domains, keep = [], []
        for i, jpeg in enumerate(photo_like_jpegs(images, seed)):
            try:
                domains.append(editor.load(jpeg, name=f"photo-like test image {i}")[0])
            except UserError:
                continue
            keep.append(i)
        figures["photo_failed"] = len(images) - len(keep)
        if keep:
            photo_domains, photo_labels = torch.stack(domains), labels[keep]
            _, preds = classifier_features(C, (to_float(b) for b in photo_domains.split(batch_size)), device)
            figures["photo_domain_accuracy"] = accuracy(preds, photo_labels)

    for method in methods:
        with bar(desc=f"invert ({method})", unit="step", progress=progress) as method_bar:
            results = editor.invert(images, method=method, steps=steps, on_step=step_callback(method_bar))
        index = [i for i, r in enumerate(results) if isinstance(r, Inverted)]
        done = [results[i] for i in index]
        if not done:
            figures[f"{method}_failed"] = len(results)
            continue
        true = labels[index]
        _, recon_class = classifier_features(C, torch.stack([r.reconstruction for r in done]).split(batch_size),
                                             device)
        figures.update({
            f"{method}_psnr": sum(r.psnr for r in done) / len(done),
            f"{method}_ssim": sum(r.ssim for r in done) / len(done),
            f"{method}_perceptual": sum(r.perceptual for r in done) / len(done),
            f"{method}_class_preserved": sum(int(c) == r.class_index for c, r in zip(recon_class, done,
                                                                                   strict=True)) / len(done),
            f"{method}_class_accuracy": accuracy(recon_class, true),
            f"{method}_seconds_per_image": done[0].seconds,
            f"{method}_failed": len(results) - len(done),
        })
        ws = torch.stack([r.ws for r in done])                                  # (N, num_ws, w_dim)
        if E is not None:
            figures[f"{method}_domain_distance"] = float(domain_distance(G, E, ws, device, batch_size).mean())
        pairs = same_label_pairs(true)
        if len(pairs) >= 2:
            mid = (ws[pairs[:, 0]] + ws[pairs[:, 1]]) / 2
            figures[f"{method}_interp_fid"] = fid_from_features(code_features(G, C, mid, device, batch_size)[0],
                                                                real_feats)
        if edit is not None and len(ws) >= 2:
            with eval_mode(G, C):  # Editor.apply runs under no_grad, with constant noise, clamped.
                edited = [editor.apply(chunk, edit, 2.0)[:, 0] for chunk in ws.split(batch_size)]
            figures[f"{method}_edit_fid"] = fid_from_features(classifier_features(C, edited, device)[0], real_feats)
        if photo_domains is not None:
            with bar(desc=f"invert photo-like ({method})", unit="step", progress=progress) as method_bar:
                photo = editor.invert(photo_domains, method=method, steps=steps, perceptual=False,
                                      on_step=step_callback(method_bar))
            keep = [i for i, r in enumerate(photo) if isinstance(r, Inverted)]
            if keep:
                _, photo_class = classifier_features(
                    C, torch.stack([photo[i].reconstruction for i in keep]).split(batch_size), device)
                figures[f"{method}_photo_class_accuracy"] = accuracy(photo_class, photo_labels[keep])
            figures[f"{method}_photo_failed"] = len(photo) - len(keep)
    return figures


def direction_sources(weights_dir: str | Path, device: torch.device) -> dict[str, torch.Tensor]:
    """Every direction source the weights hold, each as (S, w_dim, K) sets: ``ours`` (global + N class sets),
    ``voynov`` (global-only, when trained), ``pca``, ``sefa``, ``random``."""

    models = read_manifest(weights_dir).get("models", {})
    bank = load_model(weights_dir, "direction_bank", device)
    sources = {"ours": load_model(weights_dir, "deformators", device).all_directions().detach().cpu()}
    if "deformators_voynov" in models:
        voynov = load_model(weights_dir, "deformators_voynov", device)
        sources["voynov"] = voynov.global_directions().detach().cpu()[None]
    for name in ("pca", "sefa", "random"):
        sources[name] = bank.source(name).detach().cpu()[None]
    sources["cpca"] = bank.cpca.detach().cpu()                                   # (N, w_dim, K): one set per class.
    return sources


def ours_gains(weights_dir: str | Path, ours: torch.Tensor) -> torch.Tensor:
    """(N+1, K): how much longer than W's spread the eps unit of each of our directions is, as ``apply`` walks it
    (``directions calibrate``; ones without a record). The shift predictor is trained and its RCA measured in
    spreads; what a person sees is measured in ``apply``'s unit."""
    return unit_gains(read_manifest(weights_dir), ours.shape[0], ours.shape[2])


def rca_figures(G: Generator, predictor: ShiftPredictor, ours: torch.Tensor, spreads: torch.Tensor, w: torch.Tensor,
                labels: torch.Tensor, eps_range: tuple[float, float], seed: int) -> dict[str, float]:
    """The trained shift predictor's RCA on our sets (N+1, w_dim, K): ``rca_global``, ``rca_class_<c>`` (each
    sample moved along its class's set) and their median ``rca_class_median``; and where its errors lie:
    ``rca_<global|class>_right_set`` (it named a direction of the set that moved the sample) and
    ``rca_<global|class>_within_set`` (the right direction among that set's K alone)."""
    K = ours.shape[2]
    figures: dict[str, float] = {}
    for name, set_index, at in (("global", torch.zeros_like(labels), seed), ("class", labels + 1, seed + 1)):
        logits, target = ed.reconstructor_logits(G, predictor, ours, spreads, w, set_index, eps_range, at)
        named = logits.argmax(1)
        correct = named == target
        own_set = logits.view(len(target), -1, K)[torch.arange(len(target)), target // K]
        figures[f"rca_{name}_right_set"] = (named // K == target // K).float().mean().item()
        figures[f"rca_{name}_within_set"] = (own_set.argmax(1) == target % K).float().mean().item()
        if name == "global":
            figures["rca_global"] = correct.float().mean().item()
        else:
            per_class = {c: correct[labels == c].float().mean().item() for c in labels.unique().tolist()}
            figures.update({f"rca_class_{c}": value for c, value in per_class.items()})
            figures["rca_class_median"] = float(torch.tensor(list(per_class.values())).median())
    return figures


def evaluate_directions(weights_dir: str | Path, device: torch.device, class_names: list[str], per_class: int = 100,
                        fresh_steps: int = 1000, eps_range: tuple[float, float] = (0.5, 6.0), seed: int = 0,
                        describe_samples: int = 32, visible_per_class: int = 20,
                        class_fresh_steps: int = 200, log=print, progress: bool = False,
                        data_cfg: DataConfig | None = None, data_dir: str | None = None
                        ) -> tuple[dict[str, Any], dict[str, Any]]:
    """RCA, class preservation, edit strength, specificity and orthogonality of every direction source,
    plus a measured description of every direction. Returns (figures, descriptions).

    data_cfg: the dataset whose real images judge whether edits stay typical of their class (``<source>_typical``,
    :func:`fit_typicality`); None: not measured. The weights' ``classifier_judge``, when they have one, judges
    whether edits keep their class (``<source>_judged``, :func:`load_judge`).

    log: names each stage as it starts. progress: bars over the stages and their long loops (see core.progress).
    """

    G = load_model(weights_dir, "generator", device)
    C = load_model(weights_dir, "classifier", device)
    F = PerceptualLoss(C).to(device)
    w_cov = load_model(weights_dir, "direction_bank", device).w_cov.cpu()
    sources = direction_sources(weights_dir, device)
    # First: a missing dataset is said at once, not after the long stages.
    typicality = None if data_cfg is None else fit_typicality(C, data_cfg, data_dir, seed)
    judge = load_judge(weights_dir, device)
    lock_by = load_lock_classifier(weights_dir, C, device)
    samples = sample_by_class(G, C, per_class, seed)
    w, labels = samples.w, samples.labels
    num_classes = C.cfg.num_classes
    figures: dict[str, Any] = {"samples": len(w), "fresh_steps": fresh_steps,
                               "min_class_samples": int(torch.bincount(labels, minlength=num_classes).min())}

    ours = sources["ours"]
    spreads = ed.spreads_of(ours, w_cov)         # The shift predictor's unit (its RCA).
    gains = ours_gains(weights_dir, ours)
    units = spreads * gains                      # apply's unit (every edit below).
    figures["max_cos"] = ed.max_abs_cos(ours[0], ours[1:])
    baselines = {"global": ours[:1], **{k: v for k, v in sources.items() if k not in ("ours", "cpca")}}
    # One stage per log line below: 6 fixed, one per baseline, one for the class sets' fresh predictors.
    stage = Stages(6 + len(baselines) + ("cpca" in sources), "evaluate directions", log, progress)
    stage("RCA of the jointly trained predictor")
    predictor = load_model(weights_dir, "shift_predictor", device)
    figures.update(rca_figures(G, predictor, ours, spreads, w, labels, eps_range, seed))
    zeros = torch.zeros_like(labels)

    stage("edits along our global and class directions")
    g = ed.edit_effects(G, C, F, ours, units, w, labels, zeros, seed)
    c = ed.edit_effects(G, C, F, ours, units, w, labels, labels + 1, seed)
    stage("edits along our class directions, class-locked (as apply makes them)")
    locked = ed.edit_effects(G, C, F, ours, units, w, labels, labels + 1, seed, class_lock=True, lock_by=lock_by)
    for key, value in ed.summarize_effects(g, "global_").items():
        figures[key.replace("global_edit_strength", "edit_strength_global")] = value
    # class_preserved / edit_strength_class: the class-locked edits `apply` makes; *_linear: the plain edits.
    for key, value in ed.summarize_effects(locked, "").items():
        figures[key.replace("edit_strength", "edit_strength_class")] = value
    for key, value in ed.summarize_effects(c, "").items():
        figures[key.replace("edit_strength", "edit_strength_class") + "_linear"] = value
    # Specificity: class c's directions applied to samples of another class.
    other = (labels + torch.randint(1, num_classes, labels.shape, generator=torch.Generator().manual_seed(seed))
             ) % num_classes
    o = ed.edit_effects(G, C, F, ours, units, w, labels, other + 1, seed)
    figures["class_preserved_other"] = o["kept"].float().mean().item()
    figures["edit_strength_class_on_other"] = o["change"].mean().item()
    figures["specificity_change_ratio"] = c["change"].mean().item() / max(o["change"].mean().item(), 1e-12)

    stage(f"what a person sees at |eps| = {VISIBLE_EPS:g}, every source as apply edits it by default")
    figures.update(visible_figures(G, C, sources, w_cov, w, labels, visible_per_class, seed, typicality, judge,
                                   lock_by, gains))
    stage(f"to:<class> at eps +{VISIBLE_EPS:g}")
    subset = _per_class_subset(labels, visible_per_class)
    bank = load_model(weights_dir, "direction_bank", device)
    figures.update(ed.target_reached(G, C, w[subset], labels[subset], bank, seed, eps=VISIBLE_EPS))

    if "voynov" in sources:
        own = load_model(weights_dir, "shift_predictor_voynov", device)
        figures["voynov_rca_own"] = ed.reconstructor_accuracy(G, own, sources["voynov"], ed.spreads_of(
            sources["voynov"], w_cov), w, zeros, eps_range, seed).float().mean().item()
    for name, sets in baselines.items():
        stage(f"fresh shift predictor on the frozen '{name}' directions ({fresh_steps} steps)")
        s = ed.spreads_of(sets, w_cov)
        fresh = ed.train_fresh_predictor(G, C, sets[0], w_cov, fresh_steps, seed, eps_range=eps_range,
                                         progress=progress)
        prefix = "global_fresh" if name == "global" else name
        figures[f"{prefix}_rca"] = ed.reconstructor_accuracy(G, fresh, sets, s, w, zeros, eps_range,
                                                             seed).float().mean().item()
        if name != "global":
            effects = ed.summarize_effects(ed.edit_effects(G, C, F, sets, s, w, labels, zeros, seed), f"{name}_")
            figures.update({k.replace(f"{name}_", f"{name}_linear_", 1): v for k, v in effects.items()
                            if "_eps" not in k})
    if "cpca" in sources:
        stage(f"fresh shift predictors on each class's set and its per-class PCA ({class_fresh_steps} steps each)")
        figures.update(class_set_fresh_rca(G, C, sources["ours"][1:], sources["cpca"], w_cov, w, labels,
                                           class_fresh_steps, eps_range, seed, progress))

    stage("describing every direction")
    descriptions = describe_sources(G, C, sources, w_cov, w, labels, class_names, seed, describe_samples, progress,
                                    lock_by, gains)
    stage.close()
    figures.update(label_shares(descriptions, class_names))
    return figures, descriptions


def label_shares(descriptions: dict[str, Any], class_names: list[str]) -> dict[str, float]:
    """The largest share of one set's directions described by the same attribute, per source (``<source>_same_
    label_share``) and the worst class set (``class_same_label_share_max``)."""
    figures = {f"{name}_same_label_share": ed.same_label_share(descriptions, f"{name}:")
               for name in ("global", "voynov", "pca", "sefa", "random")}
    shares = [ed.same_label_share({k: v for k, v in descriptions.items() if k.endswith(f"@{n}")}, "class:")
              for n in class_names]
    figures["class_same_label_share_max"] = max(shares)
    return figures


def describe_sources(G: Generator, C: Classifier, sources: dict[str, torch.Tensor], w_cov: torch.Tensor,
                     w: torch.Tensor, labels: torch.Tensor, class_names: list[str], seed: int = 0,
                     describe_samples: int = 32, progress: bool = False, lock_by: torch.nn.Module | None = None,
                     gains: torch.Tensor | None = None) -> dict[str, Any]:
    """A measured description of every direction of every source (:func:`describe_direction`), keyed by its
    ``--direction`` spec; each edited as ``apply`` edits it by default (ours class-locked, holding ``lock_by``, in
    units lengthened by ``gains`` (:func:`ours_gains`); the baselines linear).
    Class sets are described on samples of their class, the others on a mix of every class."""
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(w), generator=gen)[:describe_samples]
    descriptions: dict[str, Any] = {}
    described = bar(total=sum(sets.shape[0] * sets.shape[2] for sets in sources.values()), desc="describe",
                    unit="direction", progress=progress, leave=False)
    for name, sets in sources.items():
        s = ed.spreads_of(sets, w_cov)
        if name == "ours" and gains is not None:
            s = s * gains
        for set_i in range(sets.shape[0]):
            if (name == "ours" and set_i > 0) or name == "cpca":
                cls = set_i - 1 if name == "ours" else set_i
                in_class = labels == cls
                pool, pool_labels = w[in_class][:describe_samples], labels[in_class][:describe_samples]
                if len(pool) == 0:
                    described.update(sets.shape[2])
                    continue
                prefix = f"{'class' if name == 'ours' else 'cpca'}:{{k}}@{class_names[cls]}"
            else:
                pool, pool_labels = w[pick], labels[pick]
                prefix = f"{'global' if name == 'ours' else name}:{{k}}"
            for k in range(sets.shape[2]):
                descriptions[prefix.format(k=k)] = ed.describe_direction(
                    G, C, sets[set_i, :, k], float(s[set_i, k]), pool, class_names,
                    lock=pool_labels if name == "ours" else None, lock_by=lock_by)
                described.update(1)
    described.close()
    return descriptions


def describe_directions(weights_dir: str | Path, device: torch.device, class_names: list[str],
                        per_class: int = 100, seed: int = 0, describe_samples: int = 32, progress: bool = False
                        ) -> tuple[dict[str, Any], dict[str, float]]:
    """Only the descriptions of :func:`evaluate_directions` (same samples for the same ``per_class`` and ``seed``)
    and their same-label shares: (descriptions, figures)."""
    G = load_model(weights_dir, "generator", device)
    C = load_model(weights_dir, "classifier", device)
    w_cov = load_model(weights_dir, "direction_bank", device).w_cov.cpu()
    sources = direction_sources(weights_dir, device)
    samples = sample_by_class(G, C, per_class, seed)
    descriptions = describe_sources(G, C, sources, w_cov, samples.w, samples.labels, class_names, seed,
                                    describe_samples, progress, load_lock_classifier(weights_dir, C, device),
                                    ours_gains(weights_dir, sources["ours"]))
    return descriptions, label_shares(descriptions, class_names)


VISIBLE_EPS = 3.0


def calibrate_units(weights_dir: str | Path, device: torch.device, per_class: int = 8, seed: int = 1,
                    target: float = UNIT_TARGET, max_gain: float = UNIT_MAX_GAIN, progress: bool = False
                    ) -> dict[str, Any]:
    """The eps unit of our directions (:func:`~semdir_edit.evaluation.directions.calibrate_gains`) on ``per_class``
    generated samples per class (seed 1 by default: not the samples `evaluate directions` measures on), as the
    manifest's ``direction_units``."""
    G = load_model(weights_dir, "generator", device)
    C = load_model(weights_dir, "classifier", device)
    w_cov = load_model(weights_dir, "direction_bank", device).w_cov.cpu()
    ours = direction_sources(weights_dir, device)["ours"]
    samples = sample_by_class(G, C, per_class, seed)
    gains = ed.calibrate_gains(G, C, ours, ed.spreads_of(ours, w_cov), samples.w, samples.labels, target, max_gain,
                               VISIBLE_EPS, load_lock_classifier(weights_dir, C, device), progress)
    return {"gains": [[round(float(g), 3) for g in row] for row in gains], "target": target, "max_gain": max_gain,
            "eps": VISIBLE_EPS, "samples_per_class": per_class, "seed": seed}


def _per_class_subset(labels: torch.Tensor, per_class: int) -> torch.Tensor:
    """Indices of the first ``per_class`` samples of every class."""
    return torch.cat([(labels == c).nonzero()[:per_class, 0] for c in labels.unique()])


def load_lock_classifier(weights_dir: str | Path, C: Classifier, device: torch.device | str) -> torch.nn.Module:
    """What ``apply``'s class lock holds (:attr:`Editor.lock_classifier <semdir_edit.editor.Editor.lock_classifier>`):
    ``C`` with the weights' ``classifier_lock`` as one :class:`~semdir_edit.models.ClassifierEnsemble`, or ``C``
    alone when the weights have no second classifier."""
    if "classifier_lock" not in read_manifest(weights_dir).get("models", {}):
        return C
    return ClassifierEnsemble([C, load_model(weights_dir, "classifier_lock", device).eval()])


def load_judge(weights_dir: str | Path, device: torch.device | str) -> Classifier | None:
    """The judge of edits (``classifier_judge``, trained by ``train classifier --role judge``) in eval mode, or None
    when the weights have none."""
    if "classifier_judge" not in read_manifest(weights_dir).get("models", {}):
        return None
    return load_model(weights_dir, "classifier_judge", device).eval()


def fit_typicality(C: Classifier, data_cfg: DataConfig, data_dir: str | None = None, seed: int = 0,
                   n: int = 10_000) -> ClassTypicality:
    """The class-typicality judge of edited images: class means and covariance from ``n`` training images (drawn
    with ``seed``), each class's limit the 99th percentile of its test images' distances."""
    device = next(C.parameters()).device
    train, test = load_split(data_cfg, "train", data_dir), load_split(data_cfg, "test", data_dir)
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]
    x, y = train.batch(pick, device)
    xt, yt = test.batch(torch.arange(len(test)), device)
    return ClassTypicality.fit(C, x, y.cpu(), xt, yt.cpu())


def visible_figures(G: Generator, C: Classifier, sources: dict[str, torch.Tensor], w_cov: torch.Tensor,
                    w: torch.Tensor, labels: torch.Tensor, per_class: int, seed: int,
                    typicality: ClassTypicality | None = None, judge: Classifier | None = None,
                    lock_by: torch.nn.Module | None = None, gains: torch.Tensor | None = None) -> dict[str, float]:
    """``<source>_visible``, ``_outline``, ``_distinct``, ``_class_preserved`` (and with ``typicality``,
    ``_typical``; with ``judge``, ``_judged`` and ``unedited_judged``, the judge's agreement with ``C`` on the
    samples themselves) at |eps| = 3 for every source, each edited as ``apply`` edits it by default (class-locked
    where its default is, holding ``lock_by``: :func:`load_lock_classifier`; ours in units lengthened by ``gains``,
    :func:`ours_gains`), on ``per_class`` samples per class.

    Sources: ``global`` and ``class`` (ours: each sample along its class's set), ``voynov``, ``pca``, ``sefa``,
    ``random``, and ``cpca`` (each sample along its class's per-class PCA).
    """
    subset = _per_class_subset(labels, per_class)
    w, labels = w[subset], labels[subset]
    zeros = torch.zeros_like(labels)
    plan = {"global": (sources["ours"], zeros, "global"), "class": (sources["ours"], labels + 1, "class")}
    plan.update({name: (sets, zeros, name) for name, sets in sources.items() if name not in ("ours", "cpca")})
    if "cpca" in sources:
        plan["cpca"] = (sources["cpca"], labels, "cpca")
    figures: dict[str, float] = {"visible_samples": len(w)}
    if judge is not None:
        with torch.no_grad():
            named = torch.cat([judge(G.render(G.broadcast(chunk.to(G.mapping.w_avg.device)))).argmax(1).cpu()
                               for chunk in w.split(100)])
        figures["unedited_judged"] = (named == labels).float().mean().item()
    for name, (sets, set_index, kind) in plan.items():
        lock = keeps_class(DirectionSpec(kind, 0), None)
        units = ed.spreads_of(sets, w_cov)
        if kind in ("global", "class") and gains is not None:
            units = units * gains
        effects = ed.visible_effects(G, C, sets, units, w, labels, set_index,
                                     eps=VISIBLE_EPS, class_lock=lock, typicality=typicality, judge=judge,
                                     lock_by=lock_by)
        figures.update({f"{name}_{key}": value for key, value in effects.items()})
    return figures


def class_set_fresh_rca(G: Generator, C: Classifier, ours: torch.Tensor, cpca: torch.Tensor, w_cov: torch.Tensor,
                        w: torch.Tensor, labels: torch.Tensor, steps: int, eps_range: tuple[float, float],
                        seed: int, progress: bool = False) -> dict[str, float]:
    """Fresh-predictor RCA of each class's set against that class's per-class PCA at equal K, on the class's own
    samples (Voynov's protocol, one predictor per set): ``class_fresh_rca_median``, ``cpca_fresh_rca_median``."""

    out: dict[str, list[float]] = {"class": [], "cpca": []}
    for c in labels.unique().tolist():
        members = w[labels == c]
        for name, sets in (("class", ours[c]), ("cpca", cpca[c])):
            if sets.abs().sum() == 0:
                continue
            fresh = ed.train_fresh_predictor(G, C, sets, w_cov, steps, seed, eps_range=eps_range, progress=progress)
            zeros = torch.zeros(len(members), dtype=torch.long)
            out[name].append(ed.reconstructor_accuracy(G, fresh, sets[None], ed.spreads_of(sets[None], w_cov),
                                                       members, zeros, eps_range, seed).float().mean().item())
    return {f"{name}_fresh_rca_median": float(torch.tensor(v).median()) for name, v in out.items() if v}


def inversion_curves(weights_dir: str | Path, data_cfg: DataConfig, device: torch.device, data_dir: str | None = None,
                     n: int = 64, optimize_steps: int = 500, indomain_steps: int = 200,
                     inversion: InversionConfig | None = None) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Mean PSNR after each optimisation step: plain optimisation (from the mean code) vs in-domain (from E(x)).

    The paper's claim: starting from the domain-guided encoder, in-domain inversion reaches plain optimisation's
    500-step PSNR in far fewer steps. Returns figures (``indomain_steps_to_match_optimize500``; -1 = never within
    ``indomain_steps``) and the two curves (index = number of updates).
    """
    editor = Editor.from_pretrained(weights_dir, device, inversion)
    test = load_split(data_cfg, "test", data_dir)
    x = test.batch(torch.arange(min(n, len(test))), editor.device)[0]
    inv = editor.inversion
    common = {"F": editor.perceptual(), "lr": inv.lr, "lambda_perceptual": inv.lambda_perceptual}
    opt = invert("optimize", editor.G, x, steps=optimize_steps, **common)
    dom = invert("indomain", editor.G, x, E=editor.model("encoder"), steps=indomain_steps,
                 lambda_dom=inv.lambda_dom, **common)
    curves = {"optimize": opt.psnr_curve().nanmean(1).tolist(), "indomain": dom.psnr_curve().nanmean(1).tolist()}
    target = curves["optimize"][-1]
    reached = [i for i, p in enumerate(curves["indomain"]) if p >= target]
    figures = {"curve_images": len(x), f"optimize_psnr_at_{optimize_steps}": target,
               f"indomain_psnr_at_{indomain_steps}": curves["indomain"][-1],
               f"indomain_steps_to_match_optimize{optimize_steps}": reached[0] if reached else -1}
    return figures, curves


def plot_curves(curves: dict[str, list[float]], path: str | Path, title: str) -> None:
    """PSNR-vs-steps PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    labels = {"optimize": "plain optimisation (from mean w)", "indomain": "in-domain (from encoder)"}
    for name, values in curves.items():
        ax.plot(range(len(values)), values, label=labels.get(name, name))
    if "optimize" in curves:
        ax.axhline(curves["optimize"][-1], color="gray", linestyle=":", linewidth=1,
                   label=f"optimisation after {len(curves['optimize']) - 1} steps")
    ax.set_xlabel("optimisation steps")
    ax.set_ylabel("mean PSNR (dB)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
