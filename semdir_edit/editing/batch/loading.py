"""Loading a batch's inputs: read, hash and convert each file (in DataLoader processes), then classify per chunk.

Nothing here raises for a bad file: it becomes a :class:`LoadResult` with ``error``, which the run records.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from semdir_edit.core.errors import UserError
from semdir_edit.core.images import to_float
from semdir_edit.data.photo import load_domain_photo, read_input_file
from semdir_edit.editing.batch.journal import drop_lock_copies
from semdir_edit.editor import Editor

MAX_FILE_BYTES = 1 << 30  # Inputs are read whole (hash and decode the same bytes); refuse absurd ones up front.


@dataclass
class LoadResult:
    """One input after the loader: a domain image, or why there is none (``error``), or ``skipped`` (done before)."""

    index: int
    rel: str
    sha256: str | None = None
    image: torch.Tensor | None = None  # (1, R, R) uint8
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    skipped: bool = False
    label: tuple[int, float] | None = None  # (class index, confidence) from the classifier, set by the reader.
    photo: bool = False  # Came in as a photo (converted): classified by the photo classifier, with an ood_score.
    ood: float = float("nan")  # The photo classifier's ood_score (NaN for domain images), set by the reader.



def _read_input(path: Path, label: str) -> bytes:
    """The bytes of one input file, at most MAX_FILE_BYTES (see :func:`read_input_file`)."""
    return read_input_file(path, label, MAX_FILE_BYTES)


class ImageFolder(Dataset):
    """Reads, hashes and converts one input per item; never raises, a bad file becomes a record with ``error``.

    ``done`` maps relative paths to the sha256 of inputs already edited with the same options: those are hashed
    but not decoded, and come back ``skipped``.
    """

    def __init__(self, root: str | Path, rels: list[str], resolution: int, done: dict[str, str] | None = None,
                 preprocess: bool = True) -> None:
        self.root = Path(root)
        self.rels = rels
        self.resolution = resolution
        self.done = done or {}
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.rels)

    def __getitem__(self, index: int) -> LoadResult:
        rel = self.rels[index]
        try:
            data = _read_input(self.root / rel, rel)
        except UserError as exc:
            return LoadResult(index, rel, error=str(exc))
        digest = hashlib.sha256(data).hexdigest()
        if self.done.get(rel) == digest:
            return LoadResult(index, rel, digest, skipped=True)
        try:
            image, notes, photo = load_domain_photo(data, self.resolution, preprocess=self.preprocess, name=rel)
        except UserError as exc:
            return LoadResult(index, rel, digest, error=str(exc))
        except Exception as exc:  # noqa: BLE001 — a decoder bug on one file must not end the run.
            reason = " ".join(str(exc).split())[:200]
            return LoadResult(index, rel, digest, error=f"{rel}: cannot load the image ({type(exc).__name__}: "
                                                        f"{reason})")
        return LoadResult(index, rel, digest, image=image, notes=notes, photo=photo)


def classified(batches: Iterable[list[LoadResult]], editor: Editor) -> Iterator[list[LoadResult]]:
    """Each loaded batch with its images classified (``LoadResult.label``), one classifier call per batch.

    The run calls this on its reader thread (:func:`~semdir_edit.core.writer.read_ahead`), so the classifier of
    the next chunk runs while the encoder and generator edit this one.
    """
    for records in batches:
        loaded = [item for item in records if item.image is not None]
        if loaded:
            x = to_float(torch.stack([item.image for item in loaded]))
            idx, conf, ood = editor.classify_photos(x, [item.photo for item in loaded])
            for item, i, c, o in zip(loaded, idx.tolist(), conf.tolist(), ood.tolist(), strict=True):
                item.label = (i, c)
                item.ood = o
        yield records


def collate_records(items: list[LoadResult]) -> list[LoadResult]:
    """Keep every record, failures included (``default_collate`` would fail on a record without an image)."""
    return list(items)


def worker_init(_: int) -> None:
    """DataLoader ``worker_init_fn``: drop the run's lock and keep each loader process to one thread."""
    drop_lock_copies()  # The run's lock belongs to the run, not to its loaders.
    # Each worker converts one image at a time: thread pools per worker would only fight over the cores.
    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass

