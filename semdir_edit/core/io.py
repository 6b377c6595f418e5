"""File I/O every layer may use: atomic writes (bytes, JSON, safetensors), sha256, and the file suffixes.

Imports nothing of the project, so writing a file never loads a network.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import itertools
import json
import os
import stat
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

# Image files the tools read (``batch`` folder walks, folder data sets); compared lower-case.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# An inverted code written by ``invert``, ``batch`` and the browser editor: ``<stem>.latent.safetensors``.
LATENT_SUFFIX = ".latent.safetensors"

_TEMP_SERIAL = itertools.count()
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def atomic_write_bytes(path: str | Path, data: bytes, sync: bool = True) -> None:
    """Write via a temp file in the same folder + fsync + rename, so a killed process leaves no half file.

    sync=False: no fsync (a killed process still leaves no half file; a power cut might), for writers that make
    many files durable at once with :func:`sync_folder` before they record them (``batch``: before each chunk's
    manifest lines, so an input whose line survived a power cut has its outputs on disk).

    The temp file is ``.<name>.<pid>x<n>.tmp`` (same file system, so the rename is atomic), created with mode 0666
    less the umask like any other output: a process serial rather than mkstemp's random name and chmod, because
    batch runs write thousands of these from a thread that must hold the GIL as little as it can. Its name is known
    before it exists, so a Ctrl-C at any point (even right after the open) leaves no temp file behind.
    """
    path = Path(path)
    # A long name (up to the file system's 255) would give a temp name over it: keep its start and its end (the
    # suffix that _STALE_TEMP patterns match); the pid and serial keep it unique.
    name = path.name if len(os.fsencode(path.name)) <= 200 else f"{path.name[:100]}~{path.name[-60:]}"
    tmp, made = "", False
    try:
        while True:
            tmp = str(path.parent / f".{name}.{os.getpid()}x{next(_TEMP_SERIAL)}.tmp")
            try:
                fd = os.open(tmp, _CREATE, 0o666)
                break
            except FileExistsError:  # Left by a killed process that had the same pid: take the next number.
                tmp = ""
            except FileNotFoundError:  # Its folder is new (made here, not before every file: syscalls add up).
                tmp = ""
                if made:
                    raise
                path.parent.mkdir(parents=True, exist_ok=True)
                made = True
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        _check_replaceable(path)  # Checked last, right before the rename: whatever is there by then.
        os.replace(tmp, path)
    except BaseException:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise


def sync_folder(folder: str | Path) -> None:
    """Make every file written so far on ``folder``'s file system durable: one syncfs (Linux), else one sync."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        os.sync()
        return
    try:
        if _syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _syncfs(fd: int) -> int:
    """syncfs(2) where libc has it (0 on success), else -1."""
    try:
        return int(ctypes.CDLL(None, use_errno=True).syncfs(fd))
    except (OSError, AttributeError):
        return -1


def _check_replaceable(path: Path) -> None:
    """Outputs replace only regular files: a device node, FIFO, socket, link or folder at ``path`` is refused (the
    rename would replace it: ``-o /dev/null`` as root would destroy /dev/null)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise OSError(errno.ENOTDIR, "a part of the path is a file, not a folder", str(path)) from None
    if not stat.S_ISREG(info.st_mode):
        kind = ("a folder" if stat.S_ISDIR(info.st_mode) else "a symbolic link" if stat.S_ISLNK(info.st_mode)
                else "a device, FIFO or socket")
        raise OSError(errno.EEXIST, f"{kind} is there, not a regular file: refusing to replace it", str(path))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()



def atomic_save_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors file via a temp file + rename (never a half-written file).

    Serialised in memory first: safetensors' own file writer reports a full disk as a SafetensorError, which
    callers would not recognise as the OSError it is.
    """
    atomic_write_bytes(path, save(tensors, metadata=metadata))
