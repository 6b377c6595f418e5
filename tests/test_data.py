"""IDX reader, dataset loading and their errors."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from semdir_edit.config import Config, DataConfig, load_config, to_dict
from semdir_edit.core.errors import UserError
from semdir_edit.data import load_split, read_idx

from .conftest import requires_dataset


def write_idx(path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def make_idx_dataset(folder, n: int = 12, compress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    sfx = ".gz" if compress else ""
    for split in ("train", "t10k"):
        write_idx(folder / f"{split}-images-idx3-ubyte{sfx}", images, compress)
        write_idx(folder / f"{split}-labels-idx1-ubyte{sfx}", labels, compress)
    return images, labels


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path, compress):
    images, labels = make_idx_dataset(tmp_path, compress=compress)
    sfx = ".gz" if compress else ""
    assert np.array_equal(read_idx(tmp_path / f"train-images-idx3-ubyte{sfx}"), images)
    assert np.array_equal(read_idx(tmp_path / f"train-labels-idx1-ubyte{sfx}"), labels)


def test_load_split_pads_to_32_and_scales(tmp_path):
    images, labels = make_idx_dataset(tmp_path)
    data = load_split(DataConfig(path=str(tmp_path)), "test")
    assert data.images.shape == (12, 1, 32, 32)
    assert np.array_equal(data.images[:, 0, 2:30, 2:30].numpy(), images)
    assert data.images[:, :, :2].sum() == 0  # Padding is black background.
    x, y = data.batch(np.arange(3))
    assert x.min() >= -1 and x.max() <= 1 and y.tolist() == labels[:3].tolist()


@pytest.mark.parametrize("damage", ["truncate", "magic", "garbage_gz"])
def test_corrupt_idx_is_a_user_error(tmp_path, damage):
    make_idx_dataset(tmp_path, compress=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    raw = path.read_bytes()
    path.write_bytes({"truncate": raw[:-5], "magic": b"\x01" + raw[1:], "garbage_gz": b"\x1f\x8b" + raw[2:50]}[damage])
    with pytest.raises(UserError, match="t10k-images"):
        load_split(DataConfig(path=str(tmp_path)), "test")


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(UserError, match="apt-get install -y dataset-fashion-mnist"):
        load_split(DataConfig(path=str(tmp_path / "nowhere")), "train")
    with pytest.raises(UserError, match="apt-get install -y dataset-fashion-mnist"):
        load_split(DataConfig(path=str(tmp_path)), "train")


def test_class_folder_source(tmp_path):
    import cv2

    for split in ("train", "test"):
        for name in ("cat", "dog"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(3):
                cv2.imwrite(str(tmp_path / split / name / f"{i}.png"), np.full((40, 40), 50 * i, np.uint8))
    data = load_split(DataConfig(source="folder", path=str(tmp_path), class_names=[]), "train")
    assert data.class_names == ["cat", "dog"]
    assert data.images.shape == (6, 1, 32, 32) and data.labels.tolist() == [0, 0, 0, 1, 1, 1]


@requires_dataset
def test_fashion_mnist_test_split():
    data = load_split(DataConfig(), "test")
    assert len(data) == 10_000 and data.images.shape[1:] == (1, 32, 32)
    assert data.class_names[7] == "Sneaker"
    assert sorted(set(data.labels.tolist())) == list(range(10))


def test_dataclass_defaults_are_the_shipped_config():
    """One place for the defaults: the dataclasses hold the shipped YAML's values, the packaged file is that YAML."""
    shipped = load_config("fashion_mnist")
    assert to_dict(Config()) == to_dict(shipped)
    assert to_dict(load_config("configs/fashion_mnist.yaml")) == to_dict(shipped)
