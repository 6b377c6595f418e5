"""Reader for IDX files (MNIST / Fashion-MNIST format), gzipped or not.

Format (LeCun): 2 zero bytes, a type byte (0x08 = uint8), the number of dimensions n, then n
big-endian uint32 sizes, then the data.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from semdir_edit.core.errors import UserError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or plain) into an array of its declared shape and type."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError.
        raise UserError(f"{path}: cannot read IDX file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise UserError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise UserError(f"{path}: IDX data is {len(raw) - header} bytes, header says {expected} (corrupt file)")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def find_idx_pair(folder: Path, split: str) -> tuple[Path, Path]:
    """Locate ``{split}-images-idx3-ubyte[.gz]`` and labels (split: "train" or "t10k")."""
    found = []
    for kind, rank in (("images", 3), ("labels", 1)):
        stem = f"{split}-{kind}-idx{rank}-ubyte"
        candidates = [folder / stem, folder / f"{stem}.gz", folder / stem.replace("-idx", ".idx")]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise UserError(
                f"dataset file {stem}[.gz] not found in {folder}: install it with "
                "'sudo apt-get install -y dataset-fashion-mnist' or pass --data-dir with the four IDX files")
        found.append(path)
    return found[0], found[1]
