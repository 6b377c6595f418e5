"""Datasets (IDX or class folders) as in-memory tensors."""

from semdir_edit.data.datasets import ImageSet, load_split
from semdir_edit.data.idx import read_idx

__all__ = ["ImageSet", "load_split", "read_idx"]
