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

The modules, by role: :mod:`.discovery` (which files), :mod:`.loading` (reading and converting them),
:mod:`.journal` (manifest, lock, clean-up), :mod:`.options` (checked options and their hash), :mod:`.run` (the run).
"""

from semdir_edit.editing.batch.discovery import find_images, output_stems
from semdir_edit.editing.batch.journal import (
    LOCK,
    MANIFEST,
    Manifest,
    manifest_part,
    merge_manifest_parts,
    read_manifest_lines,
)
from semdir_edit.editing.batch.journal import take_lock as _lock  # noqa: F401 — the old private name (tests).
from semdir_edit.editing.batch.loading import (
    MAX_FILE_BYTES,
    ImageFolder,
    LoadResult,
    classified,
    collate_records,
)
from semdir_edit.editing.batch.loading import worker_init as _worker_init  # noqa: F401 — the old private name.
from semdir_edit.editing.batch.options import BatchOptions, resolve_options
from semdir_edit.editing.batch.run import RunPlan, ShardRun, run_batch

__all__ = [
    "LOCK",
    "MANIFEST",
    "MAX_FILE_BYTES",
    "BatchOptions",
    "ImageFolder",
    "LoadResult",
    "Manifest",
    "RunPlan",
    "ShardRun",
    "classified",
    "collate_records",
    "find_images",
    "manifest_part",
    "merge_manifest_parts",
    "output_stems",
    "read_manifest_lines",
    "resolve_options",
    "run_batch",
]
