"""Evaluation figures (the protocol: docs/EVALUATION.md): metric functions, the `evaluate` jobs and the bench."""

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
