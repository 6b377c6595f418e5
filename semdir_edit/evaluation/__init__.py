"""Evaluation figures (see /work/shared/EVALUATION.md): pure metric functions, no I/O."""

from semdir_edit.evaluation.metrics import (
    accuracy,
    class_histogram,
    classifier_features,
    fid_from_features,
    generate_batches,
    generate_images,
    linear_separability,
    min_class_share_ratio,
    perceptual_distance,
    perceptual_path_length,
    precision_recall,
)

__all__ = [
    "accuracy",
    "class_histogram",
    "classifier_features",
    "fid_from_features",
    "generate_batches",
    "generate_images",
    "linear_separability",
    "min_class_share_ratio",
    "perceptual_distance",
    "perceptual_path_length",
    "precision_recall",
]
