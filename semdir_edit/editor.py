"""The Python API: load shipped weights once, then invert, classify (and later edit) images.

    >>> from semdir_edit import Editor                                   # doctest: +SKIP
    >>> ed = Editor.from_pretrained("weights/fashion_mnist", device="auto")
    >>> results = ed.invert(["photo.png"], method="optimize", steps=100)
    >>> results[0].class_name, round(results[0].psnr, 1)

The CLI commands are thin layers over these methods.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from semdir_edit.checkpoint import load_model, read_manifest, unit_gains, weights_id
from semdir_edit.config import FASHION_MNIST_CLASSES, InversionConfig
from semdir_edit.core.device import for_inference, resolve_device
from semdir_edit.core.errors import UserError
from semdir_edit.core.images import to_float
from semdir_edit.core.progress import StepCallback
from semdir_edit.core.types import Failed, Inverted
from semdir_edit.core.validate import EPS_LIMIT, check_eps
from semdir_edit.data.photo import load_domain_photo
from semdir_edit.inversion.invert import (
    ENCODER_KIND,
    ENCODING,
    METHODS,
    NONFINITE_INPUT,
    OPTIMIZING,
    check_images,
    invert,
)
from semdir_edit.latents import latent_bytes, latent_meta, load_latent, sample_meta
from semdir_edit.models import ClassifierEnsemble
from semdir_edit.ops.class_lock import (
    DEFAULT_STEP,
    TO_SCALE,
    TO_STEP,
    Rendered,
    WalkTrail,
    locked_shift_codes,
    toward_class_codes,
)
from semdir_edit.ops.perceptual import PerceptualLoss
from semdir_edit.ops.reconstruction import psnr, ssim, to_unit_range
from semdir_edit.ops.shift_codes import (
    CLASS_KINDS,
    DirectionSpec,
    edit_groups,
    keeps_class,
    match_class,
    parse_direction,
    parse_layers,
    shift_codes,
    spread_of,
    walks,
)

# Several shifts at once (:meth:`Editor.apply_shifts`): at most this many directions in one edit (the browser editor
# sends at most 2K + 1), and a class-locked walk of at most this many steps per sign. DEFAULT_STEP spreads each (as
# `apply`) up to it, longer walks in proportionally longer steps, so that one slider move stays a fraction of a
# second (~10 ms a step on a CPU).
MAX_SHIFTS = 64
MAX_LOCKED_STEPS = 24
# Class-locked walks of single codes kept (least recently used dropped): a slider move resumes the walk of the last
# one along the same direction (:class:`~semdir_edit.ops.class_lock.WalkTrail`) instead of walking from the image.
# Each is a few kilobytes; a few dozen cover every slider of a handful of open images.
MAX_TRAILS = 64

Shifts = Mapping[str, float] | Iterable[tuple[str | DirectionSpec, float]]


class EditedImage(NamedTuple):
    """One edited image (:meth:`Editor.apply_shifts`) and what the classifier makes of it."""

    image: torch.Tensor   # (1, C, R, R) in [-1, 1]
    class_index: int
    class_name: str
    confidence: float


class Editor:
    """Holds the shipped networks on one device. Networks are loaded when first needed.

    The shared ``classifier`` (:attr:`C`) classifies domain images and serves the class lock, the perceptual loss
    and every figure; the ``photo_classifier`` (when the weights have one) names the class of inputs that came in as
    photos and gives their ``ood_score`` (:meth:`classify_photos`); the ``classifier_lock`` (when the weights have
    one) is the class lock's second opinion (:attr:`lock_classifier`).
    """

    def __init__(self, weights_dir: str | Path, device: str | torch.device = "auto",
                 inversion: InversionConfig | None = None) -> None:
        self.weights_dir = Path(weights_dir)
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.inversion = inversion or InversionConfig()
        self.manifest = read_manifest(self.weights_dir)
        self.weights_id = weights_id(self.weights_dir)
        self._models: dict[str, torch.nn.Module] = {}
        self._perceptual: PerceptualLoss | None = None
        self._lock: torch.nn.Module | None = None
        self._gains: torch.Tensor | None = None
        # Resolved directions of apply_shifts, on the device: (kind, k or target, class) -> (vector, spread).
        self._shift_directions: dict[tuple[str, int | None, int], tuple[torch.Tensor, float]] = {}
        self._trails: OrderedDict[tuple[Any, ...], WalkTrail] = OrderedDict()
        self._last_pass: Rendered | None = None   # A single code's last locked pass (see apply_shifts).

    @classmethod
    def from_pretrained(cls, weights_dir: str | Path, device: str | torch.device = "auto",
                        inversion: InversionConfig | None = None) -> Editor:
        """Open a weights folder (hashes and configs are checked when each network loads)."""
        return cls(weights_dir, device, inversion)

    def model(self, kind: str) -> torch.nn.Module:
        if kind not in self._models:
            self._models[kind] = for_inference(load_model(self.weights_dir, kind, self.device), self.device)
        return self._models[kind]

    @property
    def G(self):  # noqa: N802 — the paper's name.
        return self.model("generator")

    @property
    def C(self):  # noqa: N802
        return self.model("classifier")

    @property
    def lock_classifier(self) -> torch.nn.Module:
        """What the class lock holds: :attr:`C` and, when the weights have one, the lock's second classifier
        (``classifier_lock``, trained apart) as one :class:`~semdir_edit.models.ClassifierEnsemble`, so a locked
        walk cannot end in an image that fools :attr:`C` alone."""
        if self._lock is None:
            has_second = "classifier_lock" in self.manifest.get("models", {})
            self._lock = ClassifierEnsemble([self.C, self.model("classifier_lock")]) if has_second else self.C
        return self._lock

    def unit_gain(self, kind: str, k: int, class_index: int | None = None) -> float:
        """How much longer than W's spread the eps unit of ``global:k`` / ``class:k`` (of ``class_index``) is, as
        ``directions calibrate`` recorded it (1 for every other source, and without a record)."""
        if kind not in ("global", "class"):
            return 1.0
        if self._gains is None:
            deformators = self.model("deformators")
            sets = 1 + deformators.class_directions().shape[0]
            self._gains = unit_gains(self.manifest, sets, deformators.global_directions().shape[1])
        return float(self._gains[0 if kind == "global" else 1 + int(class_index), k])

    @property
    def class_names(self) -> list[str]:
        names = self.manifest.get("models", {}).get("classifier", {}).get("class_names")
        n = self.C.cfg.num_classes
        if names and len(names) == n:
            return list(names)
        return list(FASHION_MNIST_CLASSES) if n == 10 else [str(i) for i in range(n)]

    @property
    def has_photo_classifier(self) -> bool:
        return "photo_classifier" in self.manifest.get("models", {})

    @property
    def ood_threshold(self) -> float:
        """``ood_score`` above this gets a warning: set when the photo classifier was trained (held-out photos)."""
        from semdir_edit.training.photo_classifier import ood_threshold

        return ood_threshold(self.manifest)

    def perceptual(self) -> PerceptualLoss:
        if self._perceptual is None:
            self._perceptual = PerceptualLoss(self.C, backbone=self.inversion.perceptual).to(self.device)
        return self._perceptual

    def load(self, source: str | Path | bytes, preprocess: bool = True, name: str | None = None
             ) -> tuple[torch.Tensor, list[str]]:
        """A photo (path or bytes) -> domain image uint8 (1, R, R) and notes; raises UserError."""
        image, notes, _ = self.load_photo(source, preprocess, name)
        return image, notes

    def load_photo(self, source: str | Path | bytes, preprocess: bool = True, name: str | None = None
                   ) -> tuple[torch.Tensor, list[str], bool]:
        """As :meth:`load`, plus whether the input came in as a photo (True) or as a domain image (passed through)."""
        return load_domain_photo(source, self.G.cfg.resolution, preprocess=preprocess, name=name)

    @torch.no_grad()
    def classify(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 1, R, R) in [-1, 1] -> (class index (B,), confidence (B,))."""
        return self._named(self.C(images.to(self.device)))

    @staticmethod
    def _named(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The shared classifier's logits -> (class index, confidence), on the CPU."""
        conf, idx = logits.float().softmax(1).max(1)
        return idx.cpu(), conf.cpu()

    @torch.no_grad()
    def classify_photos(self, images: torch.Tensor, photo: torch.Tensor | list[bool]
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images (B, 1, R, R) in [-1, 1] and which came in as photos -> (class, confidence, ood_score), all (B,).

        Photos go to the photo classifier when the weights have one (ood_score = its "none of these"
        probability); domain images, or every image without one, to the shared classifier (ood_score NaN).
        """
        idx, conf = self.classify(images)
        ood = torch.full((len(images),), float("nan"))
        photo = torch.as_tensor(photo, dtype=torch.bool)
        if self.has_photo_classifier and photo.any():
            from semdir_edit.training.photo_classifier import photo_scores

            p_idx, p_conf, p_ood = photo_scores(self.model("photo_classifier"), images[photo].to(self.device))
            idx[photo], conf[photo], ood[photo] = p_idx, p_conf, p_ood
        return idx, conf, ood

    def invert(self, sources: list[str | Path | bytes] | torch.Tensor, method: str | None = None,
               steps: int | None = None, preprocess: bool = True,
               names: list[str] | None = None, perceptual: bool = True,
               classes: tuple[torch.Tensor, ...] | None = None, on_step: StepCallback | None = None
               ) -> list[Inverted | Failed]:
        """Invert photos (paths or bytes) or domain images ((B, 1, R, R) uint8) in one batch.

        Inputs that cannot be loaded, or whose optimisation diverges, come back as :class:`Failed`;
        the others as :class:`Inverted`, in input order. ``perceptual=False`` skips the perceptual distance of
        the reconstructions (``Inverted.perceptual`` is then NaN) for callers that do not report it.
        classes: :meth:`classify` (or :meth:`classify_photos`, with the ood_score) of the domain images when the
        caller has it already (a pipeline that classifies the next chunk while this one inverts); only with domain
        images. Files that came in as photos are classified with :meth:`classify_photos`.
        on_step: progress of the optimising methods, ``on_step(done, total)`` after each update, counted over every
        chunk of ``inversion.batch_size`` images (total = steps x chunks); the encoders take no steps.
        """
        method = method or self.inversion.method
        if method not in METHODS:
            raise UserError(f"unknown method '{method}' (use {', '.join(METHODS)})")
        steps = self.inversion.steps if steps is None else steps
        if steps < 0:
            raise UserError("--steps must be >= 0")
        results: list[Inverted | Failed | None] = []
        domains, notes, labels, photo = [], [], [], []
        if isinstance(sources, torch.Tensor):
            for i, img in enumerate(sources):
                domains.append(img)
                notes.append([])
                labels.append(names[i] if names else f"image {i}")
                results.append(None)
        else:
            for i, src in enumerate(sources):
                label = names[i] if names else (str(src) if not isinstance(src, bytes) else f"upload {i}")
                try:
                    img, note, is_photo = self.load_photo(src, preprocess, name=label)
                except UserError as exc:
                    results.append(Failed(label, str(exc)))
                    continue
                photo.append(is_photo)
                domains.append(img)
                notes.append(note)
                labels.append(label)
                results.append(None)
        if not domains:
            return [r for r in results if r is not None]
        if classes is not None and not isinstance(sources, torch.Tensor):
            raise ValueError("classes can only come with domain images (a tensor), not files")
        if any(photo):
            classes = self.classify_photos(to_float(torch.stack(domains)), photo)
        out = self._invert_batch(torch.stack(domains), method, steps, labels, notes, perceptual, classes, on_step)
        it = iter(out)
        return [r if r is not None else next(it) for r in results]

    def _invert_batch(self, domains: torch.Tensor, method: str, steps: int, labels: list[str],
                      notes: list[list[str]], perceptual: bool = True,
                      classes: tuple[torch.Tensor, ...] | None = None, on_step: StepCallback | None = None
                      ) -> list[Inverted | Failed]:
        x = to_float(domains).to(self.device)
        E = self.model(ENCODER_KIND[method]) if method in ENCODER_KIND else None
        t0 = time.perf_counter()
        outputs = []
        bs = max(1, self.inversion.batch_size)
        # Only the optimising methods need F; for the encoders it would only add a term to losses we do not use.
        F = self.perceptual() if method in OPTIMIZING else None
        chunks = range(0, len(x), bs)
        for i, start in enumerate(chunks):
            # One count over every chunk: the caller sees one inversion, however it is split.
            chunk_step = None if on_step is None else (
                lambda done, _, before=i * steps: on_step(before + done, len(chunks) * steps))
            outputs.append(invert(method, self.G, x[start:start + bs], E=E, F=F, steps=steps,
                                  lr=self.inversion.lr, lambda_perceptual=self.inversion.lambda_perceptual,
                                  lambda_dom=self.inversion.lambda_dom, on_step=chunk_step))
        seconds = (time.perf_counter() - t0) / len(x)
        ws = torch.cat([o.ws for o in outputs])
        recon = torch.cat([o.images for o in outputs]).clamp(-1, 1)
        ok = torch.cat([o.ok for o in outputs]).cpu()
        messages = sum((o.messages for o in outputs), [])
        classes = classes if classes is not None else self.classify(x)
        return self._results(domains, x, ws, recon, ok, messages, classes, method, steps, seconds, labels, notes,
                             perceptual)

    def _results(self, domains: torch.Tensor, x: torch.Tensor, ws: torch.Tensor, recon: torch.Tensor,
                 ok: torch.Tensor, messages: list[str], classes: tuple[torch.Tensor, ...], method: str,
                 steps: int, seconds: float, labels: list[str], notes: list[list[str]], perceptual: bool
                 ) -> list[Inverted | Failed]:
        """One :class:`Inverted` (or :class:`Failed`) per image, with its quality figures and class."""
        with torch.no_grad():
            p = psnr(to_unit_range(recon), to_unit_range(x)).cpu()
            s = ssim(to_unit_range(recon), to_unit_range(x)).cpu()
            d = self.perceptual()(recon, x).cpu() if perceptual else torch.full((len(x),), torch.nan)
        idx, conf = classes[:2]
        ood = classes[2] if len(classes) > 2 else torch.full((len(idx),), float("nan"))
        threshold = self.ood_threshold if bool((~ood.isnan()).any()) else float("inf")
        names = self.class_names
        results: list[Inverted | Failed] = []
        for i, label in enumerate(labels):
            if not ok[i]:
                results.append(Failed(label, f"{label}: inversion failed ({messages[i]})"))
                continue
            results.append(Inverted(
                name=label, domain=domains[i].cpu(), ws=ws[i].cpu(), reconstruction=recon[i].cpu(),
                class_index=int(idx[i]), class_name=names[int(idx[i])], confidence=float(conf[i]),
                psnr=float(p[i]), ssim=float(s[i]), perceptual=float(d[i]), method=method,
                steps=steps if method in OPTIMIZING else 0, seconds=seconds, notes=notes[i],
                ood_score=None if ood[i].isnan() else round(float(ood[i]), 4),
                out_of_domain=bool(ood[i] > threshold)))
        return results

    # ------------------------------------------------------------------------------------------- editing

    def load_latent(self, path: str | Path) -> tuple[torch.Tensor, dict[str, Any]]:
        """A latent file written by ``invert`` -> (ws (num_ws, w_dim), metadata); refuses other weights' files."""
        return load_latent(path, self.weights_id, self.G.num_ws, self.G.w_dim, len(self.class_names))

    def direction(self, spec: str | DirectionSpec, class_index: int | None = None,
                  keep_global: bool = False) -> tuple[torch.Tensor, float]:
        """Resolve a direction spec -> (unit vector (w_dim,), eps unit: W's spread along it, for ``global:k`` and
        ``class:k`` times its calibrated gain, :meth:`unit_gain`).

        class_index: the image's class, for ``class:k``, ``cpca:k`` (without ``@<class>``) and ``to:<class>``.
        keep_global: for ``to:<class>``, project out the global directions so that only the class changes.
        """
        spec = parse_direction(spec) if isinstance(spec, str) else spec
        bank = self.model("direction_bank")
        if spec.kind != "to":
            if spec.kind in CLASS_KINDS and spec.class_name:
                class_index = match_class(spec.class_name, self.class_names)
            if spec.kind in CLASS_KINDS and class_index is None:
                raise UserError(f"'{spec}' needs the image's class: give an image or name a class ({spec}@<class>)")
            source = self.direction_set(spec.kind, class_index)
            self._check_k(spec, source.shape[1])
            vector = source[:, spec.k]
            return vector, float(spread_of(vector, bank.w_cov)) * self.unit_gain(spec.kind, spec.k, class_index)
        if class_index is None:
            raise UserError(f"'{spec}' needs the image's class")
        target = match_class(spec.class_name, self.class_names)
        if target == class_index:
            raise UserError(f"the image is already classified as {self.class_names[target]}")
        vector = bank.boundary_normal(class_index, target)
        if vector.norm() < 0.5:
            raise UserError(f"no boundary between {self.class_names[class_index]} and "
                            f"{self.class_names[target]}: the generator's samples never showed these classes")
        if keep_global:
            q, _ = torch.linalg.qr(self.model("deformators").global_directions().detach())
            vector = vector - q @ (q.T @ vector)
            vector = vector / vector.norm().clamp_min(1e-12)
        return vector, float(spread_of(vector, bank.w_cov))

    def direction_set(self, kind: str, class_index: int | None = None) -> torch.Tensor:
        """All K directions (w_dim, K) of one source: global, class or cpca (of ``class_index``), voynov, pca, sefa,
        random."""
        if kind in ("pca", "sefa", "random"):
            return self.model("direction_bank").source(kind).detach()
        if kind == "global":
            return self.model("deformators").global_directions().detach()
        if kind == "voynov":
            return self.model("deformators_voynov").global_directions().detach()
        if kind == "class":
            if class_index is None or not 0 <= class_index < len(self.class_names):
                raise UserError("class directions need a class")
            return self.model("deformators").class_directions().detach()[class_index]
        if kind == "cpca":
            if class_index is None or not 0 <= class_index < len(self.class_names):
                raise UserError("per-class PCA directions (cpca) need a class")
            directions = self.model("direction_bank").source("cpca", class_index).detach()
            if not directions.any():
                raise UserError(f"no per-class PCA for {self.class_names[class_index]}: the generator's samples "
                                "never showed it")
            return directions
        raise UserError(f"unknown direction source '{kind}' (use global, class, voynov, pca, sefa, random, cpca)")

    @torch.no_grad()
    def sample_code(self, class_index: int | None = None, seed: int = 0, draws: int = 1000) -> torch.Tensor:
        """A generated W+ code (num_ws, w_dim): the first of a seeded draw, or — when a class is named — the
        sample the classifier is most sure is of that class among ``draws`` seeded draws."""
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(draws if class_index is not None else 1, self.G.z_dim, generator=gen).to(self.device)
        ws = self.G.broadcast(self.G.mapping(z))
        if class_index is None:
            return ws[0].cpu()
        probs = torch.cat([self.C(self.G.render(ws[i:i + 250])).float().softmax(1)
                           for i in range(0, len(ws), 250)])
        labels = probs.argmax(1)
        score = torch.where(labels == class_index, probs[:, class_index], torch.tensor(-1.0, device=probs.device))
        if score.max() < 0:
            raise UserError(f"the generator drew no {self.class_names[class_index]} in {draws} samples")
        return ws[int(score.argmax())].cpu()

    @torch.no_grad()
    def direction_grid(self, ws: torch.Tensor, kind: str, eps: list[float], class_index: int | None = None,
                       layers: str | range | None = None, keep_class: bool | None = None,
                       image_class: int | None = None, on_step: StepCallback | None = None) -> torch.Tensor:
        """Every direction of one source applied to one code: images (K, E, C, R, R), rows = directions.

        class_index: whose class set (``kind="class"`` or ``"cpca"``). keep_class: class-locked edits, as
        :meth:`apply` (None = on for class sets, not cpca); they keep ``image_class`` (None = ``class_index``, else
        the classifier's label of ``ws``). on_step: progress, ``on_step(rows done, K)`` after each row.
        """
        source = self.direction_set(kind, class_index)
        bank = self.model("direction_bank")
        layer_range = layers if isinstance(layers, range) else parse_layers(layers, self.G.num_ws)
        code = ws.to(self.device)[None]
        lock = keeps_class(DirectionSpec(kind), keep_class)
        if lock:
            keep = image_class if image_class is not None else class_index
            if keep is None:
                keep = int(self.classify(self.G.render(code))[0][0])
            target = torch.tensor([keep])
        rows = []
        for k in range(source.shape[1]):
            vector = source[:, k].to(self.device)
            spread = spread_of(vector, bank.w_cov.to(self.device)) * self.unit_gain(kind, k, class_index)
            if lock:
                shifted = locked_shift_codes(self.G, self.lock_classifier, code, vector, eps, spread, layer_range,
                                             target)[0]
            else:
                shifted = shift_codes(code, vector, eps, spread, layer_range)[0]
            rows.append(self.G.render(shifted))
            if on_step is not None:
                on_step(k + 1, source.shape[1])
        return torch.stack(rows)

    def descriptions(self) -> dict[str, Any]:
        """Measured description of each direction (written by ``evaluate directions``), keyed by spec."""
        return dict(self.manifest.get("descriptions", {}))

    def direction_label(self, spec: str | DirectionSpec, class_index: int | None = None) -> str:
        """What a picture's row says of a direction: ``class:2@Sneaker  width +`` (its measured description,
        when there is one). class_index: the image's class, for class sets named without ``@<class>``."""
        spec = parse_direction(spec) if isinstance(spec, str) else spec
        if spec.kind == "to":
            return str(spec)
        if spec.class_name is not None:
            class_index = match_class(spec.class_name, self.class_names)
        name = f"{spec.kind}:{spec.k}"
        if spec.kind in CLASS_KINDS and class_index is not None:
            name += f"@{self.class_names[class_index]}"
        label = self.descriptions().get(name, {}).get("label")
        return f"{name}  {label}" if label else name

    @staticmethod
    def _check_k(spec: DirectionSpec, k_max: int) -> None:
        if spec.k >= k_max:
            raise UserError(f"direction index {spec.k} is out of range for '{spec.kind}' (0..{k_max - 1})")

    def walk_toward(self, ws: torch.Tensor, target: int, eps: list[float], layers: range,
                    keep_global: bool = False) -> torch.Tensor:
        """``to:<class>``'s walk (:func:`~semdir_edit.ops.class_lock.toward_class_codes`): W+ codes
        (B, num_ws, w_dim) -> (B, E, num_ws, w_dim), each at most TO_SCALE * |eps| spreads towards class ``target``
        (away for eps < 0), stopping where the classifier is sure of it. keep_global: orthogonal to the global
        directions."""
        avoid = torch.linalg.qr(self.direction_set("global").to(self.device))[0] if keep_global else None
        targets = torch.full((len(ws),), target, dtype=torch.long)
        bank = self.model("direction_bank")
        return toward_class_codes(self.G, self.C, ws.to(self.device), [TO_SCALE * e for e in eps], bank.w_cov,
                                  layers, targets, bank.boundary_weight, bank.boundary_bias, step=TO_STEP,
                                  avoid=avoid, centroids=bank.class_mean)

    @torch.no_grad()
    def apply(self, ws: torch.Tensor, direction: str | DirectionSpec, eps: float | list[float],
              class_index: int | None = None, layers: str | range | None = None,
              keep_global: bool = False, keep_class: bool | None = None) -> torch.Tensor:
        """Edit W+ codes: ws (B, num_ws, w_dim) -> images (B, E, C, R, R) in [-1, 1], one per eps.

        ``class_index`` is the images' class (for class and boundary directions and class-locked edits; None = the
        classifier's label of each code's reconstruction, codes of different classes edited class by class).
        keep_class: walk the edit class-locked (:mod:`~semdir_edit.ops.class_lock`): it never takes the
        classifier's margin for the image's class below a floor. None = on for our learned directions
        (``class:k``, ``global:k``), off for the others; ``to:<class>`` refuses it (it exists to change the class).
        """
        spec = parse_direction(direction) if isinstance(direction, str) else direction
        ws = ws.to(self.device)
        if ws.ndim == 2:
            ws = ws[None]
        eps_list = check_eps([eps] if isinstance(eps, (int, float)) else list(eps))  # Bounded: walks must end.
        keep_class = keeps_class(spec, keep_class)
        if class_index is None:
            classes = self.classify(self.G.render(ws))[0].tolist()
            groups = edit_groups(classes, spec, keep_class)
            if len(groups) > 1:
                out: list[torch.Tensor | None] = [None] * len(ws)
                for group_class, members in groups:
                    images = self.apply(ws[members], spec, eps_list, group_class, layers, keep_global, keep_class)
                    for j, i in enumerate(members):
                        out[i] = images[j]
                return torch.stack(out)  # type: ignore[arg-type] — every code is in one group.
            class_index = groups[0][0]
        vector, spread = self.direction(spec, class_index, keep_global)
        layer_range = layers if isinstance(layers, range) else parse_layers(layers, self.G.num_ws)
        if spec.kind == "to":
            shifted = self.walk_toward(ws, match_class(spec.class_name, self.class_names), eps_list, layer_range,
                                       keep_global)
        elif keep_class:
            target = torch.full((len(ws),), class_index, dtype=torch.long)
            shifted = locked_shift_codes(self.G, self.lock_classifier, ws, vector.to(self.device), eps_list, spread,
                                         layer_range, target)
        else:
            shifted = shift_codes(ws, vector.to(self.device), eps_list, spread, layer_range)  # (B, E, num_ws, w_dim)
        b, e = shifted.shape[:2]
        images = self.G.render(shifted.reshape(b * e, *shifted.shape[2:]))
        return images.reshape(b, e, *images.shape[1:])

    def invert_and_edit(self, domains: torch.Tensor, direction: str | DirectionSpec, eps: list[float], *,
                        method: str, steps: int, names: list[str], layers: str | range | None = None,
                        keep_class: bool | None = None, classes: tuple[torch.Tensor, ...] | None = None
                        ) -> list[tuple[Inverted | Failed, torch.Tensor | None, str | None]]:
        """Invert domain images (B, 1, R, R) uint8 and edit each code along ``direction`` — ``batch``'s inner step.

        Returns per image: (inversion, edited images (E, C, R, R) or None, why the edit failed or None), e.g.
        ``to:Coat`` on an image already classified as a coat. With an encoder method and an edit that is not
        class-locked, the reconstructions and the edits come from one generator call of B * (1 + E) codes: on a
        2-core CPU one call of 32 costs ~17 % less per image than two of 16. ``classes``: as in :meth:`invert`.
        """
        spec = parse_direction(direction) if isinstance(direction, str) else direction
        layer_range = layers if isinstance(layers, range) else parse_layers(layers, self.G.num_ws)
        if method in ENCODING and not walks(spec, keep_class):
            return self._encode_and_edit(domains, spec, eps, method, names, layer_range, classes)
        results = self.invert(domains, method=method, steps=steps, names=names, perceptual=False, classes=classes)
        edited: dict[int, torch.Tensor] = {}
        errors: dict[int, str] = {}
        ok = [i for i, res in enumerate(results) if isinstance(res, Inverted)]
        for class_index, positions in edit_groups([results[i].class_index for i in ok], spec, keep_class):
            members = [ok[p] for p in positions]
            ws = torch.stack([results[i].ws for i in members])
            try:
                images = self.apply(ws, spec, eps, class_index=class_index, layers=layer_range,
                                    keep_class=keep_class).cpu()
            except UserError as exc:
                errors.update((i, str(exc)) for i in members)
                continue
            edited.update((i, images[j]) for j, i in enumerate(members))
        return [(res, edited.get(i), errors.get(i)) for i, res in enumerate(results)]

    @torch.no_grad()
    def _encode_and_edit(self, domains: torch.Tensor, spec: DirectionSpec, eps: list[float], method: str,
                         names: list[str], layer_range: range,
                         classes: tuple[torch.Tensor, ...] | None = None
                         ) -> list[tuple[Inverted | Failed, torch.Tensor | None, str | None]]:
        """:meth:`invert_and_edit` for the encoders: E(x), then reconstructions and edits in one G call."""
        x = to_float(domains).to(self.device)
        E = self.model(ENCODER_KIND[method])
        t0 = time.perf_counter()
        x_checked, finite = check_images(self.G, x)
        ws = E(x_checked)
        ok = finite & torch.isfinite(ws).flatten(1).all(dim=1)
        classes = classes if classes is not None else self.classify(x)
        usable = [i for i in range(len(x)) if ok[i]]
        codes, spans, errors = [ws], [], {}
        for class_index, positions in edit_groups([int(classes[0][i]) for i in usable], spec):
            members = [usable[p] for p in positions]
            try:
                vector, spread = self.direction(spec, class_index)
            except UserError as exc:
                errors.update((i, str(exc)) for i in members)
                continue
            codes.append(shift_codes(ws[members], vector.to(self.device), eps, spread, layer_range).flatten(0, 1))
            spans.append(members)
        images = self.G.render(torch.cat(codes))
        recon, edits = images[:len(x)], images[len(x):].cpu()
        messages = ["" if bool(f) else NONFINITE_INPUT for f in finite]
        results = self._results(domains, x, ws, recon, ok.cpu(), messages, classes, method, 0,
                                (time.perf_counter() - t0) / len(x), names, [[] for _ in names], perceptual=False)
        edited: dict[int, torch.Tensor] = {}
        start = 0
        for members in spans:
            block = edits[start:start + len(members) * len(eps)].reshape(len(members), len(eps), *edits.shape[1:])
            edited.update((i, block[j]) for j, i in enumerate(members))
            start += len(members) * len(eps)
        return [(res, edited.get(i), errors.get(i)) for i, res in enumerate(results)]

    def traverse(self, ws: torch.Tensor, direction: str, eps_range: tuple[float, float, int] = (-3, 3, 7),
                 **kwargs: Any) -> torch.Tensor:
        """A traversal strip: :meth:`apply` at ``count`` evenly spaced eps from ``start`` to ``stop``."""
        start, stop, count = eps_range
        eps = [start + (stop - start) * i / max(count - 1, 1) for i in range(count)]
        return self.apply(ws, direction, eps, **kwargs)

    # ------------------------------------------------------------------------------- several shifts at once

    def latent_meta(self, res: Inverted) -> dict[str, Any]:
        """The metadata ``invert`` stores with an inverted code (weights id, method, steps, class, source)."""
        return latent_meta(res, self.weights_id)

    def sample_meta(self, class_index: int, confidence: float, seed: int) -> dict[str, Any]:
        """The metadata of a generated code of ``seed`` (:meth:`sample_code`), classified as ``class_index``."""
        return sample_meta(self.weights_id, class_index, self.class_names[class_index], confidence, seed)

    def latent_bytes(self, ws: torch.Tensor, meta: dict[str, Any]) -> bytes:
        """A code (num_ws, w_dim) and its metadata as a latent file's bytes: the file ``invert`` writes
        (:func:`~semdir_edit.latents.save_latent`), serialised in memory; ``meta`` without a ``weights_id`` gets
        these weights'."""
        return latent_bytes(ws, meta if "weights_id" in meta else {**meta, "weights_id": self.weights_id})

    def resolve_class(self, class_index: int | None = None, class_name: str | None = None) -> int | None:
        """The class an edit works as: ``class_name`` (a name, unique prefix or index; UserError when unknown)
        when given, else ``class_index`` (checked), else None."""
        if class_name is not None:
            return match_class(class_name, self.class_names)
        if class_index is not None and not 0 <= class_index < len(self.class_names):
            raise UserError(f"class index {class_index} is out of range (0..{len(self.class_names) - 1})")
        return class_index

    def _shift_direction(self, spec: DirectionSpec, class_index: int) -> tuple[torch.Tensor, float]:
        """:meth:`direction` on the device, cached under the class it resolves to (so that "class:0@ankle" and
        "class:0@Ankle boot" share an entry and a client cannot grow the cache beyond specs x classes)."""
        if spec.kind == "to":
            key = ("to", match_class(spec.class_name, self.class_names), class_index)
        elif spec.kind in CLASS_KINDS and spec.class_name is not None:
            key = (spec.kind, spec.k, match_class(spec.class_name, self.class_names))
        else:
            key = (spec.kind, spec.k, class_index if spec.kind in CLASS_KINDS else -1)
        if key not in self._shift_directions:
            vector, spread = self.direction(spec, class_index)
            self._shift_directions[key] = (vector.to(self.device), spread)
        return self._shift_directions[key]

    def _locked_walk(self, ws: torch.Tensor, unit: torch.Tensor, eps: list[float], spread: float,
                     layer_range: range, class_index: int) -> torch.Tensor:
        """:func:`locked_shift_codes` of codes of one class, in at most MAX_LOCKED_STEPS steps per sign; a single
        code's walk resumes its earlier walks along the same direction (the same codes, fewer passes)."""
        step = max(DEFAULT_STEP, max(abs(e) for e in eps) / MAX_LOCKED_STEPS)
        target = torch.full((len(ws),), class_index, dtype=torch.long)
        trail = self._trail(ws, unit, spread, layer_range, class_index, step) if len(ws) == 1 else None
        codes = locked_shift_codes(self.G, self.lock_classifier, ws, unit, eps, spread, layer_range, target, step,
                                   trail)
        if trail is not None:
            self._last_pass = trail.last
        return codes

    def forget_walks(self) -> None:
        """Drop the remembered class-locked walks (the next slider move walks from the image)."""
        self._trails.clear()

    def _trail(self, ws: torch.Tensor, unit: torch.Tensor, spread: float, layer_range: range, class_index: int,
               step: float) -> WalkTrail:
        """The :class:`WalkTrail` of one code's walks with these arguments (a new one the first time)."""
        digest = hashlib.blake2b(ws.detach().cpu().numpy().tobytes(), digest_size=16)
        digest.update(unit.detach().cpu().numpy().tobytes())
        key = (digest.digest(), ws.shape, spread, tuple(layer_range), class_index, step)
        trail = self._trails.pop(key, None) or WalkTrail()
        self._trails[key] = trail   # Most recently used last.
        while len(self._trails) > MAX_TRAILS:
            self._trails.popitem(last=False)
        return trail

    @staticmethod
    def _shift_list(shifts: Shifts) -> list[tuple[DirectionSpec, float]]:
        """Shifts as (parsed spec, eps), every eps finite and within ±EPS_LIMIT; at most MAX_SHIFTS of them."""
        items = list(shifts.items()) if isinstance(shifts, Mapping) else list(shifts)
        if len(items) > MAX_SHIFTS:
            raise UserError(f"too many directions in one edit ({len(items)} > {MAX_SHIFTS})")
        out = []
        for spec, eps in items:
            parsed = parse_direction(spec) if isinstance(spec, str) else spec
            if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) \
                    or abs(eps) > EPS_LIMIT:
                raise UserError(f"eps {eps} for '{parsed}' is out of range (-{EPS_LIMIT:g}..{EPS_LIMIT:g})")
            out.append((parsed, float(eps)))
        return out

    @torch.no_grad()
    def shifted_code(self, ws: torch.Tensor, shifts: Shifts, class_index: int | None = None, *,
                     class_name: str | None = None, layers: str | range | None = None,
                     keep_class: bool = False) -> torch.Tensor:
        """One code (num_ws, w_dim) plus the sum of ``eps * spread * direction`` over ``shifts`` -> the edited code.

        shifts: {spec: eps} or [(spec, eps), ...]; zero shifts are skipped. class_index / class_name: the class the
        image is edited as (see :meth:`resolve_class`; None for both = the classifier's label of the code): it
        resolves ``class:k`` / ``cpca:k`` and is the class the lock keeps. The sum is one shift of eps 1 along the
        summed vector, so ``shift_codes`` applies it exactly as :meth:`apply` applies one direction.
        keep_class: the sum of the shifts other than ``to:`` is walked class-locked (one shift alone: the same walk
        as ``apply --keep class``, up to MAX_LOCKED_STEPS steps); each ``to:`` shift is then walked towards its
        class, as :meth:`apply` walks it.
        """
        items = self._shift_list(shifts)
        ws = ws.to(self.device)
        layer_range = layers if isinstance(layers, range) else parse_layers(layers, ws.shape[0])
        chosen = self.resolve_class(class_index, class_name)
        if chosen is None and any(eps != 0 for _, eps in items):  # Only classified when a shift needs it.
            chosen = int(self.classify(self.G.render(ws[None]))[0][0])
        locked = torch.zeros_like(ws[0])
        linear = torch.zeros_like(ws[0])
        towards: list[tuple[int, float]] = []
        walk = 0.0  # Sum of |eps| of the locked shifts: the walk's length in spreads.
        alone: tuple[torch.Tensor, float, float] | None = None   # The locked shift when there is exactly one.
        for spec, eps in items:
            if eps == 0:
                continue
            vector, spread = self._shift_direction(spec, chosen)
            if spec.kind == "to":
                towards.append((match_class(spec.class_name, self.class_names), eps))
            elif keep_class:
                alone = (vector, spread, eps) if walk == 0 else None
                locked = locked + eps * spread * vector
                walk += abs(eps)
            else:
                linear = linear + eps * spread * vector
        code = ws[None]
        if alone is not None:
            # One slider: walked along its own direction, exactly as apply walks it (and as its last move did, so
            # the walk resumes there).
            vector, spread, eps = alone
            code = self._locked_walk(code, vector, [eps], spread, layer_range, chosen)[:, 0]
        elif walk > 0 and locked.norm() > 0:
            code = self._locked_walk(code, locked / locked.norm(), [walk], float(locked.norm()) / walk, layer_range,
                                     chosen)[:, 0]
        code = shift_codes(code, linear, [1.0], 1.0, layer_range)[:, 0]
        for target, eps in towards:   # Walked last, as apply walks to:<class>: towards the class until it is sure.
            code = self.walk_toward(code, target, [eps], layer_range)[:, 0]
        return code[0]

    @torch.no_grad()
    def apply_shifts(self, ws: torch.Tensor, shifts: Shifts, class_index: int | None = None, *,
                     class_name: str | None = None, layers: str | range | None = None,
                     keep_class: bool = False) -> EditedImage:
        """Several direction shifts at once on one code (num_ws, w_dim) -> the edited image and its class.

        The browser editor's slider edit: :meth:`shifted_code` (see there for the arguments), then the generator
        and the classifier. With no shift the image is the code's reconstruction.
        """
        code = self.shifted_code(ws, shifts, class_index, class_name=class_name, layers=layers,
                                 keep_class=keep_class)[None]
        seen = self._last_pass
        if seen is not None and torch.equal(seen.code, code):
            # A locked walk's last pass was at this very code: its image, and the shared classifier's logits on
            # it (the lock's first member), are this edit's (a class-locked slider step then costs one pass).
            image = seen.image
            label, confidence = self._named(seen.logits)
        else:
            image = self.G.render(code)
            label, confidence = self.classify(image)
        return EditedImage(image, int(label[0]), self.class_names[int(label[0])], float(confidence[0]))

    @torch.no_grad()
    def shift_strip(self, ws: torch.Tensor, shifts: Shifts, direction: str | DirectionSpec, eps: list[float],
                    class_index: int | None = None, *, class_name: str | None = None,
                    layers: str | range | None = None, keep_class: bool = False) -> torch.Tensor:
        """A traversal strip along ``direction`` on top of the other ``shifts`` -> images (E, C, R, R), one per eps.

        As ``apply --eps a:b:n`` along ``direction`` from the code :meth:`shifted_code` gives for the other shifts
        (a shift along ``direction`` itself is left out: the strip sets it). Arguments as :meth:`shifted_code`.
        """
        spec = parse_direction(direction) if isinstance(direction, str) else direction
        eps_list = check_eps(list(eps), "strip eps")
        others = [(s, e) for s, e in self._shift_list(shifts) if str(s) != str(spec)]
        chosen = self.resolve_class(class_index, class_name)
        ws = ws.to(self.device)
        if chosen is None:
            chosen = int(self.classify(self.G.render(ws[None]))[0][0])
        layer_range = layers if isinstance(layers, range) else parse_layers(layers, ws.shape[0])
        base = self.shifted_code(ws, others, chosen, layers=layer_range, keep_class=keep_class)[None]
        vector, spread = self._shift_direction(spec, chosen)  # Also refuses to:<its own class>.
        if spec.kind == "to":
            codes = self.walk_toward(base, match_class(spec.class_name, self.class_names), eps_list, layer_range)[0]
        elif keep_class:
            codes = self._locked_walk(base, vector, eps_list, spread, layer_range, chosen)[0]
        else:
            codes = shift_codes(base, vector, eps_list, spread, layer_range)[0]
        return self.G.render(codes)
