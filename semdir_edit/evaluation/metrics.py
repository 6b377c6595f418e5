"""Distribution, smoothness and disentanglement figures of a generator, measured as in docs/EVALUATION.md.

Every figure uses the project's own classifier (its penultimate features, its feature maps, its labels) in place of
ImageNet Inception / VGG networks, which cannot be fetched here; such figures compare within this project only and
are not Inception FID.

- FID: Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium", 2017
  (computed as in pytorch-fid and NVlabs stylegan2-ada ``metrics/frechet_inception_distance.py``).
- Precision / recall: Kynkäänniemi et al., "Improved Precision and Recall Metric for Assessing Generative Models",
  2019 (as in stylegan2-ada ``metrics/precision_recall.py``).
- Perceptual path length and linear separability: Karras, Laine, Aila, "A Style-Based Generator Architecture for
  Generative Adversarial Networks", 2019 (PPL as in stylegan2-ada ``metrics/perceptual_path_length.py``).
- The perceptual distance normalises feature maps as LPIPS does: Zhang et al., "The Unreasonable Effectiveness of
  Deep Features as a Perceptual Metric", 2018.
- Class typicality (is an edited image still a typical article of its class?): the Mahalanobis distance of its
  features to the class's mean with a shared covariance, Lee et al., "A Simple Unified Framework for Detecting
  Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018.
- Domain distance and same-class interpolation of inverted codes: Zhu, Shen, Zhao, Zhou, "In-Domain GAN Inversion
  for Real Image Editing", ECCV 2020 (how far a code is from what the domain-guided encoder reads back from its
  image; how realistic the midpoint of two inverted codes of the same class is).

All functions are pure (no I/O) and return plain Python floats / lists / dicts. Sampling functions draw every random
number from a CPU ``torch.Generator`` seeded with ``seed``, so a fixed (seed, batch size) gives the same figure on
any device.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn

from semdir_edit.core.device import eval_mode
from semdir_edit.models.classifier import Classifier
from semdir_edit.models.generator import Generator
from semdir_edit.ops.linear import fit_linear_classifier
from semdir_edit.ops.perceptual import perceptual_distance

__all__ = [
    "ClassTypicality",
    "accuracy",
    "class_histogram",
    "code_features",
    "domain_distance",
    "fit_linear_classifier",
    "classifier_features",
    "fid_from_features",
    "generate_batches",
    "generate_images",
    "linear_separability",
    "min_class_share_ratio",
    "perceptual_distance",
    "perceptual_path_length",
    "precision_recall",
    "same_label_pairs",
]


def _check_features(feats: torch.Tensor, name: str) -> None:
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"{name} must be (N >= 2, F), got {tuple(feats.shape)}")


# ----------------------------------------------------------------------------------------------------------------------
# Distribution figures.


def fid_from_features(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussian fits of two feature sets (A: (N_a, F), B: (N_b, F)).

    ``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` with unbiased covariances, in float64. The matrix square
    root is ``scipy.linalg.sqrtm``; if it is not finite, both covariances get 1e-6 on the diagonal (pytorch-fid);
    the small imaginary parts left by numerical error are dropped (stylegan2-ada keeps the real part).
    """
    _check_features(feats_a, "feats_a")
    _check_features(feats_b, "feats_b")
    if feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(f"feature sizes differ: {feats_a.shape[1]} vs {feats_b.shape[1]}")
    a = feats_a.detach().cpu().double().numpy()
    b = feats_b.detach().cpu().double().numpy()
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    sigma_a = np.atleast_2d(np.cov(a, rowvar=False))
    sigma_b = np.atleast_2d(np.cov(b, rowvar=False))
    with warnings.catch_warnings():
        # Fewer samples than features make the product singular; the root is still what FID needs, and a raw
        # LinAlgWarning with a source path would only confuse a user.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma_a @ sigma_b)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma_a.shape[0]) * 1e-6
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
            covmean = scipy.linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
    diff = mu_a - mu_b
    fid = diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * np.trace(covmean)
    return float(np.real(fid))


def _kth_neighbour_radii(manifold: torch.Tensor, k: int, batch: int) -> torch.Tensor:
    """(N,) distance of every manifold point to its k-th nearest other manifold point."""
    radii = []
    for rows in manifold.split(batch):
        dist = torch.cdist(rows, manifold)  # (b, N); each row holds its own zero distance.
        radii.append(dist.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def _inside_manifold(probes: torch.Tensor, manifold: torch.Tensor, radii: torch.Tensor, batch: int) -> torch.Tensor:
    """(P,) bool: probe lies inside the k-NN ball of at least one manifold point."""
    inside = []
    for rows in probes.split(batch):
        dist = torch.cdist(rows, manifold)  # (b, N)
        inside.append((dist <= radii[None, :]).any(dim=1))
    return torch.cat(inside)


def precision_recall(real_feats: torch.Tensor, fake_feats: torch.Tensor, k: int = 3,
                     batch: int = 1000) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) from features, real: (N_r, F), fake: (N_f, F).

    Each set's manifold is the union of balls around its points, each ball reaching the point's k-th nearest
    neighbour in the same set (Euclidean). Precision = share of fake points inside the real manifold; recall = share
    of real points inside the fake manifold. Distances are computed ``batch`` rows at a time in float32, so memory
    stays at about ``batch * N * 4`` bytes (40 MB for 10,000 vs 10,000 with the default).
    """
    _check_features(real_feats, "real_feats")
    _check_features(fake_feats, "fake_feats")
    if real_feats.shape[1] != fake_feats.shape[1]:
        raise ValueError(f"feature sizes differ: {real_feats.shape[1]} vs {fake_feats.shape[1]}")
    if not 1 <= k < min(len(real_feats), len(fake_feats)):
        raise ValueError(f"k must be in [1, min(N_real, N_fake) - 1], got {k}")
    real = real_feats.detach().float()
    fake = fake_feats.detach().float()
    results = {}
    for name, manifold, probes in (("precision", real, fake), ("recall", fake, real)):
        radii = _kth_neighbour_radii(manifold, k, batch)
        results[name] = float(_inside_manifold(probes, manifold, radii, batch).double().mean())
    return results


# ----------------------------------------------------------------------------------------------------------------------
# Sampling and classifier read-outs.


@torch.no_grad()
def generate_batches(G: Generator, n: int, batch_size: int, device: torch.device | str, seed: int,
                     truncation_psi: float = 1.0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(w (b, w_dim), image (b, C, R, R))`` for ``n`` fresh samples, ``batch_size`` at a time.

    z ~ N(0, I) from a CPU generator seeded with ``seed`` (the same samples on every device for a fixed batch size),
    w = mapping(z, truncation_psi), image = ``G.render(broadcast(w))`` (constant noise, clamped to [-1, 1]: the
    image as shown, which is what the classifier judges). G is run in eval mode.
    """
    if n < 0 or batch_size < 1:
        raise ValueError(f"need n >= 0 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    gen = torch.Generator().manual_seed(seed)
    with eval_mode(G):
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            z = torch.randn(b, G.z_dim, generator=gen).to(device)
            w = G.mapping(z, truncation_psi)
            yield w, G.render(G.broadcast(w))


def generate_images(G: Generator, n: int, batch_size: int, device: torch.device | str, seed: int,
                    truncation_psi: float = 1.0) -> Iterator[torch.Tensor]:
    """Yield image batches (b, C, R, R) of :func:`generate_batches` (same seed, same images)."""
    for _, img in generate_batches(G, n, batch_size, device, seed, truncation_psi):
        yield img


@torch.no_grad()
def classifier_features(C: Classifier, images: Iterable[torch.Tensor],
                        device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Run C (eval mode) over image batches in [-1, 1].

    Returns ``(features (N, F) float32 on CPU, predicted labels (N,) int64 on CPU)``; features are C's penultimate
    features, labels the argmax of its logits.
    """
    feats, preds = [], []
    with eval_mode(C):
        for x in images:
            f = C.features(x.to(device))
            feats.append(f.float().cpu())
            preds.append(C.fc(f).argmax(dim=1).cpu())  # Same as C(x).argmax(1): dropout is off in eval mode.
    if not feats:
        return torch.zeros(0, C.feature_dim), torch.zeros(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(preds)


@dataclass
class ClassTypicality:
    """Is an image a typical article of a given class, by the classifier's penultimate features?

    Typical = the Mahalanobis distance of its features to the class's mean (covariance shared by the classes) is
    within ``limits[class]``, the ``quantile`` of the distances of real images of that class. It reads the whole
    feature vector, not the one margin the class lock holds, so it flags many edits that keep the classifier's label
    and no longer look like the class; not all (docs/results.md shows what it passes).
    """

    means: torch.Tensor      # (K, F)
    precision: torch.Tensor  # (F, F), the inverse of the shared covariance
    limits: torch.Tensor     # (K,)

    @classmethod
    @torch.no_grad()
    def fit(cls, C: Classifier, images: torch.Tensor, labels: torch.Tensor, held_images: torch.Tensor,
            held_labels: torch.Tensor, quantile: float = 0.99, batch_size: int = 500) -> ClassTypicality:
        """Means and covariance from ``images`` (real, labelled, in [-1, 1]); limits from ``held_images`` (other
        real images): the ``quantile`` of each class's distances (inf for a class with none)."""
        feats = _features(C, images, batch_size)
        k = C.cfg.num_classes
        dim = feats.shape[1]
        means = torch.stack([feats[labels == c].mean(0) if (labels == c).any() else torch.zeros(dim, dtype=feats.dtype)
                             for c in range(k)])
        centred = feats - means[labels]
        cov = centred.T @ centred / max(len(feats), 1) + 1e-6 * torch.eye(dim, dtype=feats.dtype)
        judge = cls(means, torch.linalg.inv(cov), torch.full((k,), float("inf")))
        dist = judge.distance(C, held_images, held_labels, batch_size)
        judge.limits = torch.tensor([torch.quantile(dist[held_labels == c], quantile).item()
                                     if (held_labels == c).any() else float("inf") for c in range(k)])
        return judge

    @torch.no_grad()
    def distance(self, C: Classifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500
                 ) -> torch.Tensor:
        """(N,) squared Mahalanobis distance of each image's features to its ``labels`` class's mean."""
        d = _features(C, images, batch_size) - self.means[labels.cpu()]
        return ((d @ self.precision) * d).sum(1).float()

    def __call__(self, C: Classifier, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N,) bool: the image is typical of its ``labels`` class."""
        return self.distance(C, images, labels) <= self.limits[labels.cpu()]


def _features(C: Classifier, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    with eval_mode(C):
        return torch.cat([C.features(images[i:i + batch_size]).double().cpu()
                          for i in range(0, len(images), batch_size)]
                         or [torch.zeros(0, C.feature_dim, dtype=torch.double)])


@torch.no_grad()
def code_features(G: Generator, C: Classifier, ws: torch.Tensor, device: torch.device | str,
                  batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`classifier_features` of the images of W+ codes (N, num_ws, w_dim): G.synthesis(ws, noise_mode="const")
    clamped to [-1, 1] (as reconstructions are shown and classified), ``batch_size`` codes at a time, G in eval mode.
    """
    def images() -> Iterator[torch.Tensor]:
        for chunk in ws.split(batch_size):
            yield G.render(chunk.to(device))

    with eval_mode(G):
        return classifier_features(C, images(), device)


@torch.no_grad()
def domain_distance(G: Generator, E: nn.Module, ws: torch.Tensor, device: torch.device | str,
                    batch_size: int = 256) -> torch.Tensor:
    """(N,) ``||w - E(G(w))||``: L2 norm over the whole W+ code (num_ws * w_dim values) of each code minus what the
    domain-guided encoder E reads back from its image (Zhu et al. 2020's in-domain regulariser, as a distance rather
    than their per-element mean square). G(w) with ``noise_mode="const"``, unclamped, as in the inversion objective;
    G and E in eval mode, ``batch_size`` codes at a time. Returned as float32 on the CPU."""
    out = []
    with eval_mode(G, E):
        for chunk in ws.split(batch_size):
            w = chunk.to(device).float()
            out.append((w - E(G.synthesis(w, noise_mode="const"))).flatten(1).norm(dim=1).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def same_label_pairs(labels: torch.Tensor) -> torch.Tensor:
    """(P, 2) index pairs of consecutive images with the same label: within each label, in order of appearance,
    the 1st with the 2nd, the 3rd with the 4th, ... (disjoint pairs; a label's last odd image is left out).
    Pairs are sorted by their first index."""
    labels = labels.detach().cpu().long().reshape(-1)
    pairs = []
    for label in labels.unique().tolist():
        index = torch.nonzero(labels == label).flatten()
        m = len(index) // 2 * 2
        pairs.append(index[:m].reshape(-1, 2))
    if not pairs:
        return torch.zeros(0, 2, dtype=torch.long)
    pairs_all = torch.cat(pairs)
    return pairs_all[pairs_all[:, 0].argsort()]


# ----------------------------------------------------------------------------------------------------------------------
# Perceptual path length.


@contextmanager
def _full_precision() -> Iterator[None]:
    """No TF32 in CUDA convolutions and matmuls (PyTorch allows it in cuDNN by default). Images epsilon = 1e-4 apart
    differ by about TF32's rounding: the same weights gave PPL 357 on an H200 and 96 in float32 on the CPU."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@torch.no_grad()
def perceptual_path_length(G: Generator, C: Classifier, n: int, device: torch.device | str, seed: int,
                           epsilon: float = 1e-4, batch_size: int = 100) -> float:
    """Perceptual path length in W, full path sampling (Karras et al. 2019; stylegan2-ada ``ppl_wfull``).

    For each of ``n`` samples: w0, w1 = mapping(z0), mapping(z1) (no truncation), t ~ U(0, 1); the distance
    ``d(G(lerp(w0, w1, t)), G(lerp(w0, w1, t + epsilon))) / epsilon^2`` with d = :func:`perceptual_distance` and
    ``noise_mode="const"``. Returns the mean of the distances between their 1st and 99th percentiles (inclusive,
    percentiles taken as 'lower' / 'higher' sample values). Deterministic for fixed (seed, batch_size).
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"need n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    gen = torch.Generator().manual_seed(seed)
    dists = []
    with eval_mode(G, C), _full_precision():
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            # Sample endpoints in Z and the position t on the path.
            z = torch.randn(2 * b, G.z_dim, generator=gen).to(device)
            t = torch.rand(b, 1, generator=gen).to(device)
            w0, w1 = G.mapping(z).chunk(2)
            # Two nearby points on the W path, epsilon apart.
            wt0 = w0.lerp(w1, t)
            wt1 = w0.lerp(w1, t + epsilon)
            img = G.synthesis(G.broadcast(torch.cat([wt0, wt1])), noise_mode="const")
            img0, img1 = img.chunk(2)
            dists.append((perceptual_distance(C, img0, img1) / epsilon ** 2).double().cpu())
    dist = torch.cat(dists).numpy()
    # Drop outliers: keep the samples between the 1st and 99th percentiles.
    lo = np.percentile(dist, 1, method="lower")
    hi = np.percentile(dist, 99, method="higher")
    return float(dist[(dist >= lo) & (dist <= hi)].mean())


# ----------------------------------------------------------------------------------------------------------------------
# Linear separability.


def linear_separability(ws: torch.Tensor, labels: torch.Tensor, num_classes: int, train_fraction: float = 0.5,
                        weight_decay: float = 1e-3, max_iter: int = 200, seed: int = 0) -> dict[str, float]:
    """How well a linear model in W predicts the classifier's labels of G(w): multi-class linear separability.

    The StyleGAN paper (Karras et al. 2019) fits a linear SVM per binary attribute and reports the conditional
    entropy of the classifier's label given the SVM's side of the plane. Here, with one multi-class label:

    1. Split (ws, labels) at random (``seed``) into a train share ``train_fraction`` and a held-out rest.
    2. Standardise w with the train mean / std and fit a multinomial logistic regression (softmax of ``A w + c``)
       on the train split with full-batch L-BFGS, minimising mean cross-entropy + ``weight_decay * ||A||^2``.
    3. On the held-out split report
       - ``accuracy``: share of points whose argmax prediction equals the label;
       - ``conditional_entropy``: mean of ``-log2 p(y | w)`` over held-out points, the cross-entropy in bits of the
         true label under the model's predicted distribution (an estimate of H(Y | X) from above; 0 = perfectly
         separable, ``log2(num_classes)`` = no information at uniform labels). Lower is more separable.

    ws: (N, w_dim); labels: (N,) ints in [0, num_classes). Runs on ws.device, in float64.
    """
    if ws.ndim != 2 or labels.shape != (ws.shape[0],):
        raise ValueError(f"need ws (N, w_dim) and labels (N,), got {tuple(ws.shape)} and {tuple(labels.shape)}")
    n = ws.shape[0]
    n_train = int(round(n * train_fraction))
    if not 1 <= n_train < n:
        raise ValueError(f"train_fraction={train_fraction} leaves an empty split of {n} points")
    labels = labels.to(ws.device).long()
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes})")
    x = ws.detach().double()
    # Split at random.
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(ws.device)
    train, test = perm[:n_train], perm[n_train:]
    weight, bias = fit_linear_classifier(x[train], labels[train], num_classes, weight_decay, max_iter)
    # Evaluate on the held-out split.
    with torch.no_grad():
        logits = x[test] @ weight.T + bias
        acc = (logits.argmax(dim=1) == labels[test]).double().mean()
        entropy_bits = F.cross_entropy(logits, labels[test]) / np.log(2.0)
    return {"accuracy": float(acc), "conditional_entropy": float(entropy_bits)}


# ----------------------------------------------------------------------------------------------------------------------
# Labels.


def class_histogram(labels: torch.Tensor, num_classes: int) -> list[float]:
    """Share of each class among ``labels`` (N,) ints in [0, num_classes); the shares sum to 1."""
    labels = labels.detach().cpu().long().reshape(-1)
    if labels.numel() == 0:
        raise ValueError("labels is empty")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes})")
    counts = torch.bincount(labels, minlength=num_classes).double()
    return [float(c) for c in counts / counts.sum()]


def min_class_share_ratio(hist: list[float]) -> float:
    """Smallest class share divided by the uniform share 1 / num_classes: 1 = balanced, 0 = a class is missing."""
    if not hist:
        raise ValueError("hist is empty")
    return float(min(hist) * len(hist))


def accuracy(logits_or_preds: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy; takes logits (N, num_classes) or predicted labels (N,)."""
    preds = logits_or_preds.argmax(dim=1) if logits_or_preds.ndim == 2 else logits_or_preds
    if preds.shape != labels.shape or labels.numel() == 0:
        raise ValueError(f"need N > 0 predictions for N labels, got {tuple(preds.shape)} and {tuple(labels.shape)}")
    return float((preds.cpu() == labels.cpu()).double().mean())
