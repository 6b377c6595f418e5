"""Batch editing: invert, classify and edit every image of a folder, resumably.

``OUT_DIR`` mirrors ``IN_DIR``: input ``a/b.png`` gives ``a/b.edited.png`` (one eps) or ``a/b.strip.png`` (a
traversal), and ``a/b.latent.safetensors``. ``OUT_DIR/manifest.jsonl`` holds one line per processed input (its
sha256, status, class, PSNR / SSIM, outputs, and a hash of the options that shape the outputs). A rerun skips the
inputs whose last line says ok for the same bytes and options, so an interrupted run just continues.

Crash safety: every output is written to a temp file and renamed; a manifest line is appended (one write, then
fsync) only after its outputs exist; a torn last line is ignored and cut off by the next run, which also removes
temp files a killed run left behind. A lock file (``flock``) keeps a second run away from the same ``OUT_DIR``.

Under torchrun (``torchrun --nproc_per_node=N -m semdir_edit batch ...``) rank 0 takes the lock and reads the
manifest; each rank edits its share of the sorted inputs (every N-th) and appends to its own part,
``manifest.rank<R>.jsonl``; after the last rank is done, rank 0 folds the parts into ``manifest.jsonl`` (in input
order) and deletes them. Parts left by a killed run are folded in when the next run starts, so it resumes as usual.
``OUT_DIR`` must be on a file system that every rank sees.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from semdir_edit.core import distributed
from semdir_edit.core.errors import UserError
from semdir_edit.core.images import save_grid, to_float, to_uint8
from semdir_edit.core.io import IMAGE_SUFFIXES, LATENT_SUFFIX, atomic_write_bytes
from semdir_edit.core.types import Failed, Inverted
from semdir_edit.core.validate import PATH_ERRNOS, check_eps, one_line
from semdir_edit.core.writer import BackgroundWriter, read_ahead
from semdir_edit.data.photo import check_regular_file, load_domain_photo
from semdir_edit.editor import Editor
from semdir_edit.inversion.invert import METHODS
from semdir_edit.latents import latent_meta, save_latent
from semdir_edit.ops.shift_codes import (
    DirectionSpec,
    keeps_class,
    match_class,
    parse_direction,
    parse_eps,
    parse_layers,
)

MANIFEST = "manifest.jsonl"
_PART = re.compile(r"^manifest\.rank(\d+)\.jsonl$")  # One rank's part of the manifest (torchrun).
LOCK = ".semdir-batch.lock"
MAX_FILE_BYTES = 1 << 30  # Inputs are read whole (hash and decode the same bytes); refuse absurd ones up front.
# Temp files of checkpoint.atomic_write_bytes for our outputs (".<name>.<pid>x<n>.tmp"): what a SIGKILL leaves.
_STALE_TEMP = re.compile(r"^\..+\.(edited\.png|strip\.png|latent\.safetensors)\.[^./]+\.tmp$|"
                         r"^\.manifest\.jsonl\.[^./]+\.tmp$")


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


# ----------------------------------------------------------------------------------------------- finding inputs

def find_images(in_dir: str | Path, recursive: bool = False, exclude: str | Path | None = None,
                follow_symlinks: bool = False) -> list[str]:
    """Image files under ``in_dir`` (by extension, any case) as sorted POSIX paths relative to it.

    ``recursive`` descends sub-folders, following folder symlinks but visiting each folder once (no symlink loops);
    folders reachable without a symlink are visited first, so a linked folder is listed under its real path.
    A folder symlink that leads out of ``in_dir`` is skipped (with a warning) unless ``follow_symlinks``: a link
    to / must not turn a batch into a walk over the whole file system.
    ``exclude``: a folder to leave out (the output folder, when it lies inside the input folder).
    """
    root = Path(in_dir)
    try:
        root_stat = root.stat()
    except FileNotFoundError:
        raise UserError(f"input folder not found: {root}") from None
    except OSError as exc:
        raise UserError(f"cannot read input folder {root}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(root_stat.st_mode):
        raise UserError(f"{root} is not a folder")
    skip: set[tuple[int, int]] = set()
    if exclude is not None:
        try:
            ex = os.stat(exclude)
            skip.add((ex.st_dev, ex.st_ino))
        except OSError:
            pass  # Does not exist yet: nothing to leave out.
    seen: set[tuple[int, int]] = set()
    found: list[str] = []
    real_root = os.path.realpath(root)
    # Folders to visit, (relative path, (device, inode)): reached through real folders only, or through a link.
    real: list[tuple[PurePosixPath, tuple[int, int]]] = [(PurePosixPath(), (root_stat.st_dev, root_stat.st_ino))]
    linked: list[tuple[PurePosixPath, tuple[int, int]]] = []
    while real or linked:
        rel_dir, key = real.pop() if real else linked.pop()
        if key in seen:  # A symlink loop, or a folder reached twice.
            continue
        seen.add(key)
        folder = root / rel_dir
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            if rel_dir == PurePosixPath():
                raise UserError(f"cannot read input folder {root}: {exc.strerror or exc}") from None
            tqdm.write(f"warning: skipping folder {folder}: {exc.strerror or exc}", file=sys.stderr)
            continue
        for entry in entries:
            rel = rel_dir / entry.name
            try:
                is_dir = entry.is_dir()  # Follows symlinks.
            except OSError:
                is_dir = False
            if is_dir:
                if not recursive:
                    continue
                try:
                    st = entry.stat()
                except OSError:
                    continue
                sub = (st.st_dev, st.st_ino)
                if sub in seen or sub in skip:  # The output folder is left out.
                    continue
                if entry.is_symlink() and not follow_symlinks:
                    target = os.path.realpath(entry.path)
                    if os.path.commonpath([real_root, target]) != real_root:
                        tqdm.write(f"warning: not following {one_line(rel)}: a link out of the input folder "
                                   "(--follow-symlinks follows it)", file=sys.stderr)
                        continue
                (linked if entry.is_symlink() else real).append((rel, sub))
            elif Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                # Broken links, FIFOs etc. are kept: the loader reports them as bad files instead of hiding them.
                found.append(str(rel))
    return sorted(found)


def output_stems(rels: list[str]) -> dict[str, str]:
    """Input relative path -> output stem (relative, no suffix): ``a/b.png`` -> ``a/b``.

    Inputs that share a stem (``b.png`` and ``b.jpg``) keep their extension (``b.png``, ``b.jpg``) so that no two
    inputs write the same file; the choice depends only on the listing, so a rerun picks the same names.
    """
    counts: dict[str, int] = {}
    for rel in rels:
        stem = str(PurePosixPath(rel).with_suffix(""))
        counts[stem] = counts.get(stem, 0) + 1
    used: set[str] = set()
    stems: dict[str, str] = {}
    for rel in sorted(rels):
        stem = str(PurePosixPath(rel).with_suffix(""))
        candidate = stem if counts[stem] == 1 else rel
        while candidate in used or (candidate != stem and candidate in counts):
            candidate += "~"
        used.add(candidate)
        stems[rel] = candidate
    return stems


# ----------------------------------------------------------------------------------------------- loading

def _read_input(path: Path, label: str) -> bytes:
    """The bytes of one input file; every failure is a one-line UserError naming it (a FIFO is never opened)."""
    try:
        info = check_regular_file(path, label)
        if info.st_size > MAX_FILE_BYTES:
            raise UserError(f"{label}: the file is {info.st_size:,} bytes, more than the limit of {MAX_FILE_BYTES:,}")
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise UserError(f"{label}: file not found (or a broken link)") from None
    except PermissionError:
        raise UserError(f"{label}: permission denied") from None
    except OSError as exc:
        raise UserError(f"{label}: cannot read the file ({exc.strerror or exc})") from None


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

    ``run_batch`` runs this on its reader thread (:func:`~semdir_edit.core.writer.read_ahead`), so the classifier of
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


def _worker_init(_: int) -> None:
    for fd in list(_LOCK_FDS):  # The run's lock belongs to the run, not to its loaders (see _LOCK_FDS).
        with contextlib.suppress(OSError):
            os.close(fd)
    # Each worker converts one image at a time: thread pools per worker would only fight over the cores.
    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass


# ----------------------------------------------------------------------------------------------- manifest and lock

def _finite(value: float | None) -> float | None:
    """JSON has no NaN / Infinity: store them as null."""
    return value if value is None or math.isfinite(value) else None


def read_manifest_lines(path: str | Path) -> list[dict[str, Any]]:
    """Every complete, valid record of a manifest; a torn last line (a killed run) and junk lines are ignored."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    records = []
    for line in data.split(b"\n")[:-1]:  # The piece after the last newline is a torn line (or empty).
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            continue
        if isinstance(record, dict) and isinstance(record.get("path"), str):
            records.append(record)
    return records


class Manifest:
    """``manifest.jsonl`` opened for appending: records go in as complete lines, written and fsync'ed together."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
            self._cut_torn_tail()
        except OSError as exc:
            raise UserError(f"cannot open {path}: {exc.strerror or exc}") from None

    def _cut_torn_tail(self) -> None:
        # A run killed mid-write may leave a line without its newline; the next append would glue onto it.
        size = os.fstat(self.fd).st_size
        if size == 0:
            return
        chunk, end = 4096, size
        while end > 0:
            start = max(0, end - chunk)
            block = os.pread(self.fd, end - start, start)
            cut = block.rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            end = start
        else:
            keep = 0
        if keep != size:
            os.ftruncate(self.fd, keep)
            os.fsync(self.fd)

    def append(self, *records: dict[str, Any]) -> None:
        """Append records in one write and one fsync; raises UserError when the disk refuses (the run cannot go on
        without its log)."""
        line = b"".join(_line(record) for record in records)
        try:
            view = memoryview(line)
            while view:
                written = os.write(self.fd, view)
                view = view[written:]
            os.fsync(self.fd)
        except OSError as exc:
            raise UserError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        """Close the file (every line is already on disk)."""
        os.close(self.fd)


def manifest_part(rank: int) -> str:
    """File name of rank ``rank``'s part of the manifest in a distributed run."""
    return f"manifest.rank{rank}.jsonl"


def merge_manifest_parts(out_dir: str | Path) -> int:
    """Fold the ranks' parts of the manifest (``manifest.rank<R>.jsonl``) into ``manifest.jsonl``; delete them.

    Their records are appended sorted by input path (then rank, then line), which is the order in which a single
    process would have written them; torn and junk lines are dropped. The manifest is rewritten atomically (temp
    file + rename) before the parts are deleted: a kill in between leaves the parts to be merged again, which
    only repeats identical lines (the last line of a path counts). Returns the number of records merged.
    Call it with the lock held.
    """
    out_dir = Path(out_dir)
    try:
        parts = sorted((int(m.group(1)), entry.path) for entry in os.scandir(out_dir)
                       if (m := _PART.match(entry.name)) and entry.is_file())
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise UserError(f"cannot read {out_dir}: {exc.strerror or exc}") from None
    if not parts:
        return 0
    records = [(rec["path"], r, i, rec) for r, part in parts for i, rec in enumerate(read_manifest_lines(part))]
    records.sort(key=lambda t: t[:3])
    path = out_dir / MANIFEST
    try:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            data = b""
        data = data[:data.rfind(b"\n") + 1]  # A torn last line (a killed single-process run) is cut off.
        if records:
            atomic_write_bytes(path, data + b"".join(_line(rec) for *_, rec in records))
        for _, part in parts:
            os.unlink(part)
    except OSError as exc:
        raise UserError(f"cannot merge the manifest parts into {path}: {exc.strerror or exc}") from None
    return len(records)


def _line(record: dict[str, Any]) -> bytes:
    """One manifest line (the same bytes whether written by :class:`Manifest` or by a merge)."""
    return (json.dumps(record, sort_keys=False) + "\n").encode()


def _done_inputs(out_dir: Path, key: str) -> dict[str, str]:
    """Relative path -> sha256 of the inputs the manifest says are done with options ``key`` (outputs present)."""
    done: dict[str, str] = {}
    for rec in read_manifest_lines(out_dir / MANIFEST):  # Later lines win: the last attempt counts.
        ok = (rec.get("status") == "ok" and rec.get("options") == key and isinstance(rec.get("sha256"), str)
              and all((out_dir / o).is_file() for o in rec.get("outputs") or []))
        if ok:
            done[rec["path"]] = rec["sha256"]
        else:
            done.pop(rec["path"], None)
    return done


def _failed_inputs(out_dir: Path, key: str) -> dict[str, tuple[str | None, str | None]]:
    """Relative path -> (sha256, error) of the inputs whose last manifest line is an error with options ``key``: the
    same failure again is reported but gets no new line (a rerun must not grow the manifest by its bad files)."""
    failed: dict[str, tuple[str | None, str | None]] = {}
    for rec in read_manifest_lines(out_dir / MANIFEST):
        if rec.get("status") == "error" and rec.get("options") == key:
            failed[rec["path"]] = (rec.get("sha256"), rec.get("error"))
        else:
            failed.pop(rec["path"], None)
    return failed


# Lock files this process holds: loader processes forked by the DataLoader close their copies (_worker_init), else
# after a kill -9 of the run they would hold the lock until they notice their parent is gone, seconds later.
_LOCK_FDS: set[int] = set()


def _lock(out_dir: Path) -> int:
    """Take ``OUT_DIR``'s lock without waiting; another run holding it is a user error."""
    path = out_dir / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise UserError(f"cannot create the lock file {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise UserError(f"{out_dir} is in use by another batch run (lock {path}); wait for it to finish") from None
        raise UserError(f"cannot lock {path}: {exc.strerror or exc}") from None
    _LOCK_FDS.add(fd)
    return fd


def _remove_stale_temps(out_dir: Path) -> int:
    """Delete temp files our writers left when a run was killed (only ours: we hold the lock)."""
    removed = 0
    for folder, _, files in os.walk(out_dir):
        for name in files:
            if _STALE_TEMP.match(name):
                try:
                    os.unlink(os.path.join(folder, name))
                    removed += 1
                except OSError:
                    pass
    return removed


# ----------------------------------------------------------------------------------------------- options

@dataclass
class BatchOptions:
    """The resolved options; ``key()`` is the hash of those that shape the outputs."""

    direction: DirectionSpec
    eps: list[float]
    method: str
    steps: int
    layers: range
    weights_id: str
    inversion: dict[str, Any]  # Inversion hyper-parameters other than steps (from the Editor's config).
    keep_class: bool = False   # Class-locked edits (see semdir_edit.ops.class_lock).

    def figures(self) -> dict[str, Any]:
        """The options as JSON-able values (what the hash covers)."""
        figures = {"direction": str(self.direction), "eps": self.eps, "method": self.method, "steps": self.steps,
                   "layers": [self.layers.start, self.layers.stop - 1], "weights_id": self.weights_id,
                   "inversion": self.inversion}
        if self.keep_class:  # Only when on: runs of unlocked edits keep the hash they had before the lock existed.
            figures["keep_class"] = True
        return figures

    def key(self) -> str:
        """Short hash of :meth:`figures`: the manifest's ``options``."""
        return hashlib.sha256(json.dumps(self.figures(), sort_keys=True).encode()).hexdigest()[:16]


def resolve_options(editor: Editor, direction: str | DirectionSpec, eps: str | float | list[float], method: str,
                    steps: int | None, layers: str | range | None, keep_class: bool | None = None) -> BatchOptions:
    """Parse and check every option against the weights before any image is touched (UserError on a bad one)."""
    spec = parse_direction(direction) if isinstance(direction, str) else direction
    if isinstance(eps, str):
        eps_list = parse_eps(eps)
    else:
        eps_list = [float(eps)] if isinstance(eps, (int, float)) else [float(e) for e in eps]
    if not eps_list or not all(math.isfinite(e) for e in eps_list):
        raise UserError("--eps must be finite numbers")
    check_eps(eps_list)  # The bound apply and the browser editor share: a class-locked walk of 1e9 never ends.
    if method not in METHODS:
        raise UserError(f"unknown method '{method}' (use {', '.join(METHODS)})")
    steps = editor.inversion.steps if steps is None else steps
    if steps < 0:
        raise UserError("--steps must be >= 0")
    if method not in ("indomain", "optimize"):
        steps = 0  # The encoders take no steps: --steps must not change the options' hash.
    # Load what the run needs now, so a missing network stops it before the first image.
    G = editor.G
    editor.C  # noqa: B018 — loads the classifier.
    if method in ("indomain", "encoder"):
        editor.model("encoder")
    elif method == "conventional":
        editor.model("encoder_conventional")
    layer_range = layers if isinstance(layers, range) else parse_layers(layers, G.num_ws)
    # Check the direction (index range, class names, its networks); class-relative ones with a stand-in class.
    if spec.kind == "to":
        match_class(spec.class_name or "", editor.class_names)
        editor.model("direction_bank")
    elif spec.kind == "class" and spec.class_name is None:
        editor.direction(spec, class_index=0)
    else:
        editor.direction(spec)
    inv = editor.inversion
    inversion = {"lr": inv.lr, "lambda_perceptual": inv.lambda_perceptual, "lambda_dom": inv.lambda_dom,
                 "perceptual": inv.perceptual} if method in ("indomain", "optimize") else {}
    return BatchOptions(spec, eps_list, method, steps, layer_range, editor.weights_id, inversion,
                        keeps_class(spec, keep_class))


# ----------------------------------------------------------------------------------------------- the run

def _record(rel: str, sha: str | None, options_key: str, *, error: str | None = None,
            res: Inverted | None = None, outputs: list[str] | None = None) -> dict[str, Any]:
    return {
        "path": rel,
        "sha256": sha,
        "status": "error" if error else "ok",
        "error": " ".join(error.split()) if error else None,  # One line, whatever the source of the message.
        "class_index": res.class_index if res else None,
        "class_name": res.class_name if res else None,
        "confidence": _finite(res.confidence) if res else None,
        "ood_score": res.ood_score if res else None,  # Photos with a photo classifier; None for domain images.
        "psnr": _finite(res.psnr) if res else None,
        "ssim": _finite(res.ssim) if res else None,
        "outputs": outputs or [],
        "options": options_key,
        "notes": res.notes if res else [],
    }


def _edit_chunk(editor: Editor, items: list[LoadResult], opts: BatchOptions
                ) -> Iterator[tuple[LoadResult, Inverted | None, torch.Tensor | None, str | None]]:
    """Invert, classify and edit loaded inputs on the device -> (item, inversion, edited (E, C, R, R), error)."""
    labels = [it.label for it in items]
    classes = None
    if all(label is not None for label in labels):
        classes = (torch.tensor([label[0] for label in labels]), torch.tensor([label[1] for label in labels]),
                   torch.tensor([it.ood for it in items]))
    out = editor.invert_and_edit(torch.stack([it.image for it in items]), opts.direction, opts.eps,
                                 method=opts.method, steps=opts.steps, names=[it.rel for it in items],
                                 layers=opts.layers, keep_class=opts.keep_class, classes=classes)
    for item, (res, images, edit_error) in zip(items, out, strict=True):
        if isinstance(res, Failed):
            yield item, None, None, res.message
        else:  # An edit error: e.g. to:<class> on an image already of that class.
            yield item, res, images, f"{item.rel}: cannot edit ({edit_error})" if edit_error else None


def run_batch(editor: Editor, in_dir: str | Path, out_dir: str | Path, direction: str | DirectionSpec,
              eps: str | float | list[float] = 2.0, method: str = "indomain", steps: int | None = None,
              layers: str | range | None = None, recursive: bool = False, batch_size: int = 16,
              workers: int | None = None, progress: bool = True,
              log: Callable[[str], None] | None = None, keep_class: bool | None = None,
              follow_symlinks: bool = False) -> dict[str, Any]:
    """Edit every image under ``in_dir`` into ``out_dir`` (layout mirrored) and log each in ``manifest.jsonl``.

    Inputs already done with the same bytes and options (ok in the manifest, outputs present) are skipped. A bad
    input is logged (``log``, default stderr) and recorded as an error; the run goes on. Raises UserError for what
    stops everything: a missing input folder, bad options, no images, another run holding ``out_dir``.
    workers: DataLoader processes that decode and convert images (None = 0 on CPU, up to 4 on a GPU).
    keep_class: class-locked edits (None = on for ``class:k`` directions; see :meth:`Editor.apply`).
    follow_symlinks: with ``recursive``, also descend folder links that lead out of ``in_dir``.
    Under torchrun (see :mod:`semdir_edit.core.distributed`), call it on every rank: each edits its share of the inputs.
    Returns a summary: inputs, ok, errors, skipped (over all ranks), options (hash), manifest (path), seconds.
    """
    t0 = time.perf_counter()
    say = log or (lambda message: tqdm.write(message, file=sys.stderr))
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    if workers is not None and workers < 0:
        raise UserError("--workers must be >= 0")
    if out_dir.exists() and out_dir.resolve() == in_dir.resolve():
        raise UserError("the output folder must differ from the input folder")
    rels = find_images(in_dir, recursive, exclude=out_dir, follow_symlinks=follow_symlinks)
    if not rels:
        raise UserError(f"no images found in {in_dir} ({', '.join(sorted(e[1:] for e in IMAGE_SUFFIXES))}"
                        f"{'' if recursive else '; use --recursive for sub-folders'})")
    opts = resolve_options(editor, direction, eps, method, steps, layers, keep_class)
    key = opts.key()
    stems = output_stems(rels)
    suffix = "edited.png" if len(opts.eps) == 1 else "strip.png"

    lock_fd: int | None = None

    def prepare() -> tuple[dict[str, str], dict[str, tuple[str | None, str | None]]]:
        # The only process, or rank 0 for all: take the lock, clean up after a killed run, read what is done.
        nonlocal lock_fd
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create output folder {out_dir}: {exc.strerror or exc}") from None
        lock_fd = _lock(out_dir)
        _remove_stale_temps(out_dir)
        merge_manifest_parts(out_dir)  # Parts of a killed distributed run: their inputs are done.
        return _done_inputs(out_dir, key), _failed_inputs(out_dir, key)

    world = distributed.world_size()
    try:
        done, failed = distributed.main_first(prepare)
        # Under torchrun each rank edits every world-th input into its own part of the manifest.
        mine = distributed.shard(rels)
        manifest = Manifest(out_dir / (MANIFEST if world == 1 else manifest_part(distributed.rank())))
        try:
            counts = _run(editor, in_dir, out_dir, mine, stems, suffix, opts, key, done, manifest, batch_size,
                          workers, progress and distributed.is_main(), say, failed)
        finally:
            manifest.close()
        if world > 1:
            distributed.barrier()  # Every part is complete.
            if distributed.is_main():
                merge_manifest_parts(out_dir)
            counts = {k: sum(c[k] for c in distributed.all_gather_object(counts)) for k in counts}
    finally:
        if lock_fd is not None:
            _LOCK_FDS.discard(lock_fd)
            os.close(lock_fd)  # Closing releases the flock.
    return {"inputs": len(rels), **counts, "options": key, "manifest": str(out_dir / MANIFEST),
            "seconds": time.perf_counter() - t0}


def _run(editor: Editor, in_dir: Path, out_dir: Path, rels: list[str], stems: dict[str, str], suffix: str,
         opts: BatchOptions, key: str, done: dict[str, str], manifest: Manifest, batch_size: int,
         workers: int | None, progress: bool, say: Callable[[str], None],
         failed: dict[str, tuple[str | None, str | None]] | None = None) -> dict[str, int]:
    counts = {"ok": 0, "errors": 0, "skipped": 0}
    failed = failed or {}
    if workers is None:
        workers = 0 if editor.device.type == "cpu" else min(4, max(1, (os.cpu_count() or 2) - 1))
    dataset = ImageFolder(in_dir, rels, editor.G.cfg.resolution, done)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate_records, worker_init_fn=_worker_init if workers else None)
    bar = tqdm(total=len(rels), unit="img", desc="batch", disable=not progress, file=sys.stderr, dynamic_ncols=True)

    def tick() -> None:
        bar.set_postfix(errors=counts["errors"], skipped=counts["skipped"], refresh=False)
        bar.update(1)

    # Records wait here (writer thread only) until `commit` appends a chunk's lines with one fsync: a line is still
    # written only after its outputs, so a killed run redoes at most the last chunk and skips nothing unfinished.
    finished: list[dict[str, Any]] = []

    def finish(record: dict[str, Any]) -> None:
        finished.append(record)

    def commit() -> None:
        if not finished:
            return
        # An input that failed before in the same way (same bytes, options, reason) keeps its one line.
        new = [r for r in finished if r["status"] == "ok" or failed.get(r["path"]) != (r["sha256"], r["error"])]
        if new:
            manifest.append(*new)
        for record in finished:
            counts["ok" if record["status"] == "ok" else "errors"] += 1
            if record["status"] != "ok":
                say(f"error: {record['error']}")
            tick()
        finished.clear()

    def skip() -> None:
        counts["skipped"] += 1
        tick()

    def write(item: LoadResult, res: Inverted, images: np.ndarray) -> None:
        stem = stems[item.rel]
        # Outputs first (each atomic), the manifest line last: a line on disk means its outputs are complete.
        edited_rel, latent_rel = f"{stem}.{suffix}", stem + LATENT_SUFFIX
        try:
            save_grid(out_dir / edited_rel, images, nrow=len(opts.eps), pad=2 if len(opts.eps) > 1 else 0)
            save_latent(out_dir / latent_rel, res.ws, latent_meta(res, opts.weights_id))
        except UserError as exc:
            # A problem of this input's output paths (a name too long for the file system, a folder or a device
            # where a file goes) fails this input only; anything else (a full disk) stops the run.
            cause = exc.__context__
            if not (isinstance(cause, OSError) and cause.errno in PATH_ERRNOS):
                raise
            for rel in (edited_rel, latent_rel):  # Neither output without the other.
                with contextlib.suppress(OSError):
                    if (out_dir / rel).is_file() and not (out_dir / rel).is_symlink():
                        (out_dir / rel).unlink()
            finish(_record(item.rel, item.sha256, key, error=f"{item.rel}: {exc}", res=res))
            return
        finish(_record(item.rel, item.sha256, key, res=res, outputs=[edited_rel, latent_rel]))

    # Every per-input ending (outputs, manifest line, counts, progress) runs on one writer thread, in input order,
    # while the device works on the next chunk.
    writer = BackgroundWriter(max_pending=2 * batch_size)

    def flush(chunk: list[LoadResult]) -> None:
        for item, res, images, error in _edit_chunk(editor, chunk, opts):
            if error is not None or res is None or images is None:
                writer.submit(finish, _record(item.rel, item.sha256, key, error=error or f"{item.rel}: not edited",
                                              res=res))
                continue
            res.notes = item.notes + res.notes
            writer.submit(write, item, res, to_uint8(images).numpy())  # uint8 here: the writer then needs no torch.

    pending: list[LoadResult] = []
    try:
        with writer:
            try:
                # Reading, decoding and classifying the next chunk run on a reader thread while this one is edited.
                for records in read_ahead(classified(loader, editor)):
                    for item in records:
                        if item.skipped:
                            writer.submit(skip)
                        elif item.error is not None:
                            writer.submit(finish, _record(item.rel, item.sha256, key, error=item.error))
                        else:
                            pending.append(item)
                    while len(pending) >= batch_size:
                        flush(pending[:batch_size])
                        pending = pending[batch_size:]
                    writer.submit(commit)
                if pending:
                    flush(pending)
            except BaseException:
                # Interrupted or failed: what is finished still gets its lines. The exception being raised is the
                # one to report (a writer failure here is that one again, or follows from it).
                with contextlib.suppress(Exception):
                    writer.submit(commit)
                raise
            writer.submit(commit)  # A failure of the last writes is raised here, never lost.
    finally:
        bar.close()
    return counts
