"""The run's journal in ``OUT_DIR``: ``manifest.jsonl`` (what is done, with which options), the lock, and the
clean-up after a killed run.

A manifest line is one complete JSON object per input, appended (one write, then fsync) only after its outputs
exist; a torn last line is ignored and cut off by the next run, which also removes temp files a killed run left.
A lock file (``flock``) keeps a second run away from the same ``OUT_DIR``. Under torchrun each rank appends to its
own part (``manifest.rank<R>.jsonl``), folded into ``manifest.jsonl`` by rank 0.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from semdir_edit.core.errors import UserError
from semdir_edit.core.io import atomic_write_bytes
from semdir_edit.core.types import Inverted

MANIFEST = "manifest.jsonl"
_PART = re.compile(r"^manifest\.rank(\d+)\.jsonl$")  # One rank's part of the manifest (torchrun).
LOCK = ".semdir-batch.lock"
# Temp files of checkpoint.atomic_write_bytes for our outputs (".<name>.<pid>x<n>.tmp"): what a SIGKILL leaves.
_STALE_TEMP = re.compile(r"^\..+\.(edited\.png|strip\.png|latent\.safetensors)\.[^./]+\.tmp$|"
                         r"^\.manifest\.jsonl\.[^./]+\.tmp$")


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


def done_inputs(out_dir: Path, key: str) -> dict[str, str]:
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


def failed_inputs(out_dir: Path, key: str) -> dict[str, tuple[str | None, str | None]]:
    """Relative path -> (sha256, error) of the inputs whose last manifest line is an error with options ``key``: the
    same failure again is reported but gets no new line (a rerun must not grow the manifest by its bad files)."""
    failed: dict[str, tuple[str | None, str | None]] = {}
    for rec in read_manifest_lines(out_dir / MANIFEST):
        if rec.get("status") == "error" and rec.get("options") == key:
            failed[rec["path"]] = (rec.get("sha256"), rec.get("error"))
        else:
            failed.pop(rec["path"], None)
    return failed


# Lock files this process holds: processes forked from it (DataLoader loaders, batch workers) close their copies
# (drop_lock_copies), else after a kill -9 of the run they would hold the lock until they notice their parent is
# gone, seconds later.
LOCK_FDS: set[int] = set()


def take_lock(out_dir: Path) -> int:
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
    LOCK_FDS.add(fd)
    return fd


def drop_lock_copies() -> None:
    """In a forked process (a loader, a worker): close its copies of the run's lock, which belongs to the run's
    own process (see LOCK_FDS)."""
    for fd in list(LOCK_FDS):
        with contextlib.suppress(OSError):
            os.close(fd)
    LOCK_FDS.clear()


def remove_stale_temps(out_dir: Path) -> int:
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



def release_lock(fd: int) -> None:
    """Give back the lock taken by :func:`take_lock` (closing the file releases the flock)."""
    LOCK_FDS.discard(fd)
    os.close(fd)


def manifest_record(rel: str, sha: str | None, options_key: str, *, error: str | None = None,
                    res: Inverted | None = None, outputs: list[str] | None = None) -> dict[str, Any]:
    """One input's manifest line: ok with its outputs and figures, or its one-line error."""
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
