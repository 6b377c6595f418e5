"""Datasets (IDX or class folders) as in-memory tensors."""

from semdir_edit.data.datasets import ImageSet, load_split, to_float, to_uint8
from semdir_edit.data.idx import read_idx

__all__ = ["ImageSet", "load_split", "read_idx", "to_float", "to_uint8"]
