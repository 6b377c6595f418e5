"""Per-tab state of the browser editor: one inverted image (its W+ code and figures) per session id.

Each upload (or random pick) creates a session; the page keeps its id and sends it with every slider move, so
several tabs edit different images at once. Sessions live in memory only: the store keeps at most
``max_sessions`` and forgets one that was not used for ``ttl_s`` seconds (least recently used goes first).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


class SessionNotFound(LookupError):
    """The session id is unknown or its state expired (the server answers 404)."""


@dataclass
class Session:
    """One image being edited: its code, class and reconstruction figures, and its images as PNG bytes."""

    name: str                  # File-name stem for downloads (sanitised; never a path).
    source: str                # "upload", "test" (a dataset test image) or "sample" (a generated code).
    ws: torch.Tensor           # (num_ws, w_dim) W+ code on the editor's device.
    class_index: int
    class_name: str
    confidence: float
    psnr: float | None         # None for a generated sample: its code is exact.
    ssim: float | None
    method: str
    steps: int
    seconds: float
    notes: list[str]
    domain_png: bytes
    reconstruction_png: bytes
    latent_meta: dict[str, Any]  # Metadata for the downloadable latent file (semdir_edit.latents.save_latent).
    id: str = field(default_factory=lambda: secrets.token_urlsafe(16))


class SessionStore:
    """A bounded, expiring, thread-safe map from session id to :class:`Session`."""

    def __init__(self, max_sessions: int = 32, ttl_s: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be >= 1")
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self._clock = clock
        self._items: OrderedDict[str, tuple[Session, float]] = OrderedDict()  # Oldest use first.
        self._lock = threading.Lock()

    def add(self, session: Session) -> Session:
        """Store a new session, evicting expired ones and then the least recently used beyond the bound."""
        with self._lock:
            self._expire()
            self._items[session.id] = (session, self._clock())
            while len(self._items) > self.max_sessions:
                self._items.popitem(last=False)
        return session

    def get(self, session_id: str) -> Session:
        """The session with this id (and mark it used); raises SessionNotFound when unknown or expired."""
        with self._lock:
            self._expire()
            item = self._items.get(session_id)
            if item is None:
                raise SessionNotFound("unknown or expired session: load the image again")
            self._items[session_id] = (item[0], self._clock())
            self._items.move_to_end(session_id)
            return item[0]

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._items)

    def _expire(self) -> None:
        now = self._clock()
        while self._items:
            oldest_id, (_, used) = next(iter(self._items.items()))
            if now - used <= self.ttl_s:
                break
            del self._items[oldest_id]
