"""`apply` over many latent files in one process: read, edit on the device in batches, write one PNG per file.

    >>> from semdir_edit import Editor                                   # doctest: +SKIP
    >>> from semdir_edit.editing.apply import apply_files
    >>> ed = Editor.from_pretrained("weights/fashion_mnist")
    >>> apply_files(ed, sorted(Path("out").glob("*.latent.safetensors")), Path("edited"), "global:0", eps=2.0)

On a CPU the chunks are split over one-thread processes, one per torch thread (:mod:`semdir_edit.core.parallel`):
each process edits its chunks and writes their PNGs, so no core waits while another encodes and writes (on 2 cores
the generator alone is 1.5x faster with two threads than with one, where two one-thread processes are 2x). Within a
process the PNGs are written on helper threads (WRITE_THREADS, in no set order) while the networks edit the next
chunk. Latent files are read inline: at ~0.1 ms each they cost less than a reader thread's contention did.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from semdir_edit.core.images import eps_labels, save_grid, to_uint8
from semdir_edit.core.io import LATENT_SUFFIX, sync_folder
from semdir_edit.core.parallel import cpu_processes, fork_map
from semdir_edit.core.writer import BackgroundWriter
from semdir_edit.editor import Editor
from semdir_edit.ops.shift_codes import DirectionSpec, edit_groups, parse_direction

WRITE_THREADS = 4  # One thread writing file after file was what limited apply (see BackgroundWriter).


def output_name(path: Path) -> str:
    """``a.latent.safetensors`` -> ``a.png`` (any other name: its stem + ``.png``)."""
    name = path.name
    return (name[:-len(LATENT_SUFFIX)] if name.endswith(LATENT_SUFFIX) else path.stem) + ".png"


def apply_files(editor: Editor, paths: list[Path], out_dir: Path, direction: str | DirectionSpec,
                eps: float | list[float] = 2.0, batch_size: int = 64, scale: int = 4,
                layers: str | range | None = None, keep_class: bool | None = None,
                processes: int | None = None, keep_global: bool = False, labels: bool = False) -> list[Path]:
    """Edit the code of every latent file along ``direction`` and write ``out_dir/<name>.png`` for each.

    What `semdir-edit apply FILE` does per file (the class stored in the file picks class directions; a list of
    eps writes a traversal strip, a class direction is class-locked unless ``keep_class`` is False), but batched
    on the device. A bad file raises UserError before anything of its chunk is edited. keep_global: as
    :meth:`Editor.apply`. labels: name a strip's columns (eps) and row (direction), as `apply` does (a single
    edited image is never labelled). processes: how many one-thread processes share the chunks (None: one per
    torch thread on a CPU, see :func:`~semdir_edit.core.parallel.cpu_processes`; 1: this process, with its
    threads). Returns the written paths, in input order.
    """
    spec = parse_direction(direction) if isinstance(direction, str) else direction
    eps_list = [float(eps)] if isinstance(eps, (int, float)) else [float(e) for e in eps]
    chunks = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    count = cpu_processes(editor.device, len(chunks)) if processes is None else max(1, processes)

    def edit_share(share: list[list[Path]]) -> None:
        _edit_chunks(editor, share, out_dir, spec, eps_list, scale, layers, keep_class, keep_global,
                     labels and len(eps_list) > 1)

    fork_map(edit_share, [chunks[i::count] for i in range(count)])
    return [out_dir / output_name(path) for path in paths]


def _edit_chunks(editor: Editor, chunks: list[list[Path]], out_dir: Path, spec: DirectionSpec, eps_list: list[float],
                 scale: int, layers: str | range | None, keep_class: bool | None, keep_global: bool,
                 labels: bool) -> None:
    """:func:`apply_files` of some chunks in this process."""
    cols = eps_labels(eps_list) if labels else None
    # Several writer threads: the PNGs are independent, and each atomic write waits on its own fsync.
    with BackgroundWriter(max_pending=2 * max(map(len, chunks), default=1), workers=WRITE_THREADS) as writer:
        for chunk in chunks:
            loaded = [editor.load_latent(p) for p in chunk]
            classes = [meta.get("class_index") for _, meta in loaded]
            images: list[np.ndarray | None] = [None] * len(chunk)
            rows: list[list[str] | None] = [None] * len(chunk)
            for class_index, members in edit_groups(classes, spec, keep_class):
                ws = torch.stack([loaded[i][0] for i in members])
                edited = editor.apply(ws, spec, eps_list, class_index=class_index, layers=layers,
                                      keep_global=keep_global, keep_class=keep_class)
                edited = to_uint8(edited).cpu().numpy()  # Here, in one op: the writer thread then needs no torch.
                # A group shares its direction, hence its label (class sets are grouped by class).
                row = [editor.direction_label(spec, classes[members[0]])] if labels else None
                for j, i in enumerate(members):
                    images[i], rows[i] = edited[j], row
            for path, strip, row in zip(chunk, images, rows, strict=True):
                writer.submit(save_grid, out_dir / output_name(path), strip, nrow=len(eps_list), scale=scale,
                              pad=2 if len(eps_list) > 1 else 0, cols=cols, rows=row, sync=False)
    # Each file is complete once renamed (a killed run leaves no half file); one sync makes them all durable.
    sync_folder(out_dir)
