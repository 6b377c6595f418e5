"""Finding a batch's inputs: the folder walk (suffixes, symlink and recursion rules) and the output names."""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from semdir_edit.core.errors import UserError
from semdir_edit.core.io import IMAGE_SUFFIXES
from semdir_edit.core.progress import say
from semdir_edit.core.validate import one_line


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
            say(f"warning: skipping folder {folder}: {exc.strerror or exc}")
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
                        say(f"warning: not following {one_line(rel)}: a link out of the input folder "
                            "(--follow-symlinks follows it)")
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

