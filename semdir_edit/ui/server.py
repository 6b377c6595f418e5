"""The browser editor's server: ``create_app(editor)`` -> a FastAPI app serving one static page and a JSON/PNG API.

Flow: the page sends an image (the raw file as the request body: held in memory, never written, never a path)
or asks for a random test image / generated sample; the server inverts it once and keeps the W+ code in a
session (:mod:`semdir_edit.ui.sessions`). Every slider move then posts the current shifts
``{"global:0": 1.5, "to:Coat": 2, ...}``, and the server answers with the PNG of :meth:`Editor.apply_shifts`
(the sum of the shifts added to the stored code; class-locked with ``"keep_class": true``; ``class:k`` and
``cpca:k`` are those of ``"class_name"``, default the session's predicted class). The routes only parse, call
one Editor method and answer: the editing itself lives in :class:`~semdir_edit.editor.Editor`.

Errors are JSON ``{"error": "<one line>"}``: a UserError (bad image, bad direction, bad eps) is a 400, an unknown
session a 404, a too-large upload or JSON body a 413, a malformed request a 422, a request from another web page
(Origin / Sec-Fetch-Site) a 403, a slider edit that waited EDIT_WAIT_S for a running inversion a 503. The networks
are shared by all sessions, so every use of them holds one lock.

API (all under ``/api``):
    GET  /info                            class names, directions and their descriptions, limits
    POST /sessions/upload?name=&method=&progress=   body = the image file -> session JSON (runs the inversion)
    POST /sessions/random?source=test|sample&seed=&method=&progress=   -> session JSON
    GET  /progress/{progress}             {"done", "total"} steps of the inversion started with that progress id
    GET  /sessions/{id}                   session JSON again
    POST /sessions/{id}/edit              {"shifts": {...}, "layers": "2-5", "scale": 1, "keep_class": false,
                                           "class_name": "Pullover"} -> PNG
    POST /sessions/{id}/strip             same + {"direction": "global:0", "eps_min", "eps_max", "count"} -> PNG
    GET  /sessions/{id}/latent            the inverted code as a .latent.safetensors file
"""

from __future__ import annotations

import base64
import contextlib
import logging
import re
import secrets
import statistics
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import torch
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from semdir_edit.config import DataConfig
from semdir_edit.core.device import torch_threads
from semdir_edit.core.errors import UserError
from semdir_edit.core.images import png_bytes, to_float
from semdir_edit.core.io import LATENT_SUFFIX
from semdir_edit.core.types import Failed, Inverted
from semdir_edit.core.validate import (  # EPS_LIMIT: |eps| per direction, shared with the CLI.
    EPS_LIMIT,
    check_seed,
    one_line,
)
from semdir_edit.data.datasets import ImageSet, load_split
from semdir_edit.editor import Editor
from semdir_edit.inversion.invert import METHODS
from semdir_edit.ops.shift_codes import MAX_STRIP
from semdir_edit.ui.sessions import Session, SessionNotFound, SessionStore

log = logging.getLogger("semdir_edit.ui")

MAX_UPLOAD_BYTES = 20_000_000       # Photos from phones are a few MB; anything bigger is refused with a 413.
# JSON bodies (/edit, /strip): the page sends a few hundred bytes; a 100 MB one would only cost the server memory.
MAX_JSON_BYTES = 64_000
# Seconds a slider edit waits for the networks while an inversion holds them, before a 503 "busy" (the page shows
# it and the next slider move tries again) instead of queueing every move behind a minute-long inversion.
EDIT_WAIT_S = 5.0
MAX_STRIP_COUNT = 21                 # Images in a traversal strip from the page (the CLI allows MAX_STRIP).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# Torch threads for every network call of the server. One 32x32 image is too small to gain from several threads,
# and on a CPU busy with other work extra threads are much slower (measured on the 2-core machine under load:
# a generator step 9 ms with 1 thread vs 250 ms with 2; an in-domain inversion 8.5 s vs 57 s).
TORCH_THREADS = 1
# Progress of running inversions, under ids the page makes up: at most this many at once (the oldest is dropped).
MAX_PROGRESS = 64
PROGRESS_ID = r"^[A-Za-z0-9_-]{8,64}$"


class EditRequest(BaseModel):
    """One slider state: eps per direction spec, the W+ layer range ("2-5", None = all), the PNG scale, whether
    the shifts (but ``to:``) are walked class-locked, and the class to edit the image as (a name or a unique
    prefix; None = the session's predicted class): it picks ``class:k`` / ``cpca:k`` and is the class the lock
    keeps."""

    shifts: dict[str, float] = Field(default_factory=dict)
    layers: str | None = None
    scale: int = Field(1, ge=1, le=16)
    keep_class: bool = False
    class_name: str | None = Field(None, max_length=64)


class StripRequest(EditRequest):
    """A traversal strip along ``direction`` (the other shifts stay as they are) at ``count`` evenly spaced eps."""

    direction: str
    eps_min: float = -3.0
    eps_max: float = 3.0
    count: int = Field(7, ge=2, le=min(MAX_STRIP_COUNT, MAX_STRIP))
    scale: int = Field(4, ge=1, le=16)


def safe_name(name: str | None, default: str = "image") -> str:
    """A client-given file name -> a harmless label for messages: its last path part, odd characters as "_"."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._")[:80]
    return base or default


def safe_stem(name: str | None, default: str = "image") -> str:
    """A client-given file name -> a harmless stem for downloads (as :func:`safe_name`, without the suffix)."""
    return re.sub(r"\.[A-Za-z0-9]{1,5}$", "", safe_name(name, default)).strip("._") or default


class ProgressBoard:
    """Steps done / total of the inversions running now, under ids the page makes up and sends with its upload: the
    upload request answers only when the inversion is done, so the page polls ``GET /api/progress/{id}`` meanwhile.

    Bounded (MAX_PROGRESS; the oldest entry goes first) and forgotten when the inversion ends (the page then has
    its answer). An id reveals only a step count, so it needs no more secrecy than the page's random choice.
    """

    def __init__(self, max_entries: int = MAX_PROGRESS) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def track(self, progress_id: str | None) -> Iterator[Callable[[int, int], None] | None]:
        """While the block runs, ``progress_id`` reads as (0, 0) "waiting", then as the callback sets it; yields
        the callback for :meth:`Editor.invert` (None without an id)."""
        if progress_id is None:
            yield None
            return

        def update(done: int, total: int) -> None:
            with self._lock:
                if progress_id in self._items:
                    self._items[progress_id] = (done, total)

        with self._lock:
            self._items[progress_id] = (0, 0)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)
        try:
            yield update
        finally:
            with self._lock:
                self._items.pop(progress_id, None)

    def get(self, progress_id: str) -> dict[str, int]:
        """{"done", "total"} of a running inversion (total 0: waiting for the networks, or an encoder method that
        takes no steps); a 404 once it is over or for an unknown id."""
        with self._lock:
            if progress_id not in self._items:
                raise HTTPException(404, "no inversion running under this progress id")
            done, total = self._items[progress_id]
        return {"done": done, "total": total}


class EditorService:
    """Everything the routes do, without HTTP: inversion into sessions, edits, strips, latent files.

    All network work goes through :meth:`models`: one lock (the networks are shared by all sessions, and the
    thread count is process-wide) and TORCH_THREADS threads.
    """

    def __init__(self, editor: Editor, method: str | None = None, steps: int | None = None,
                 data_dir: str | Path | None = None, max_sessions: int = 32, session_ttl_s: float = 3600.0,
                 max_upload_bytes: int = MAX_UPLOAD_BYTES) -> None:
        self.editor = editor
        self.max_upload_bytes = max_upload_bytes
        self.method = method or editor.inversion.method
        self.steps = editor.inversion.steps if steps is None else steps
        self.data = DataConfig(path=str(data_dir)) if data_dir else DataConfig()
        self.sessions = SessionStore(max_sessions, session_ttl_s)
        self.progress = ProgressBoard()
        self.lock = threading.Lock()
        self._test_set: ImageSet | None = None
        self._directions: dict[tuple[str, int], tuple[torch.Tensor, float]] = {}
        self._info: dict[str, Any] | None = None

    @contextlib.contextmanager
    def models(self, inference: bool = True, wait_s: float | None = None) -> Iterator[Editor]:
        """Hold the networks: the lock, TORCH_THREADS torch threads, and no autograd unless ``inference`` is False
        (the optimising inversion methods need gradients). Not torch.inference_mode: tensors it creates (also
        those a network caches) could not take part in a later inversion's autograd. wait_s: give up on the lock
        after that long with a 503 (None = wait)."""
        if not self.lock.acquire(timeout=-1 if wait_s is None else wait_s):
            raise HTTPException(503, "busy: an inversion is running; try again when it is done")
        try:
            with torch_threads(TORCH_THREADS), torch.set_grad_enabled(not inference):
                yield self.editor
        finally:
            self.lock.release()

    # ---------------------------------------------------------------------------------------------- info

    def slider_groups(self) -> list[str]:
        """Direction sources the page shows as sliders: the learned global and class sets, or (weights without
        deformators, e.g. test weights) the PCA and per-class PCA directions instead. The class sets (class, cpca)
        are the session image's class's."""
        models = self.editor.manifest.get("models", {})
        if "deformators" in models:
            return ["global", "class"]
        return ["pca", "cpca"] if "direction_bank" in models else []

    def info(self) -> dict[str, Any]:
        """What the page needs to build its controls (computed once)."""
        if self._info is None:
            with self.models() as ed:
                groups = self.slider_groups()
                bank = ed.model("direction_bank") if "cpca" in groups else None
                k = {g: int(bank.cpca.shape[2] if g == "cpca" else ed.direction_set(g, 0).shape[1]) for g in groups}
                # Classes with a per-class PCA set (the page leaves the cpca sliders out for the others).
                cpca_classes = [] if bank is None else [
                    name for name, directions in zip(ed.class_names, bank.cpca, strict=True) if directions.any()]
                self._info = {
                    "weights": str(ed.weights_dir), "class_names": ed.class_names, "num_ws": int(ed.G.num_ws),
                    "groups": groups, "k": k, "cpca_classes": cpca_classes,
                    "boundary": "direction_bank" in ed.manifest.get("models", {}),
                    "descriptions": ed.descriptions(), "method": self.method, "steps": self.steps,
                    "methods": list(METHODS), "max_upload_bytes": self.max_upload_bytes, "eps_limit": EPS_LIMIT,
                    "strip_max": MAX_STRIP_COUNT, "latent_suffix": LATENT_SUFFIX,
                }
        return self._info

    # ------------------------------------------------------------------------------------------ sessions

    def invert_upload(self, data: bytes, name: str | None, method: str | None, steps: int | None,
                      progress_id: str | None = None) -> Session:
        """Invert uploaded bytes with the CLI's loader (its UserErrors are the messages) -> a new session.
        progress_id: report the steps under it (:class:`ProgressBoard`)."""
        with self.progress.track(progress_id) as progress, self.models(inference=False) as ed:
            (res,) = ed.invert([data], method=method or self.method, steps=self.steps if steps is None else steps,
                               names=[safe_name(name, "upload")], on_step=progress)
        return self._add_inverted(res, safe_stem(name, "upload"), "upload")

    def invert_test_image(self, seed: int | None, method: str | None, steps: int | None,
                          progress_id: str | None = None) -> Session:
        """Invert a random Fashion-MNIST test image (seeded when ``seed`` is given) -> a new session."""
        with self.progress.track(progress_id) as progress, self.models(inference=False) as ed:
            if self._test_set is None:
                self._test_set = load_split(self.data, "test")  # UserError with the install hint when missing.
            images = self._test_set
            index = (check_seed(seed) if seed is not None else secrets.randbelow(1 << 30)) % len(images)
            label = images.class_names[int(images.labels[index])]
            stem = f"test-{index}"
            (res,) = ed.invert(images.images[index:index + 1], method=method or self.method,
                               steps=self.steps if steps is None else steps, preprocess=False, names=[stem],
                               on_step=progress)
        session = self._add_inverted(res, stem, "test")
        session.notes.append(f"Fashion-MNIST test image #{index}, labelled {label}")
        return session

    def new_sample(self, seed: int | None) -> Session:
        """A random generated code (exact, nothing to invert) -> a new session."""
        seed = check_seed(seed) if seed is not None else secrets.randbelow(1 << 30)
        with self.models() as ed:
            ws = ed.sample_code(None, seed).to(ed.device)
            sample = ed.apply_shifts(ws, {})  # No shift: the code's image and its class.
        png = png_bytes(sample.image)
        return self.sessions.add(Session(
            name=f"sample-{seed}", source="sample", ws=ws, class_index=sample.class_index,
            class_name=sample.class_name, confidence=sample.confidence, psnr=None, ssim=None,
            method="sample", steps=0, seconds=0.0, notes=[f"generated sample, seed {seed}"], domain_png=png,
            reconstruction_png=png, latent_meta=ed.sample_meta(sample.class_index, sample.confidence, seed)))

    def _add_inverted(self, res: Inverted | Failed, stem: str, source: str) -> Session:
        if isinstance(res, Failed):
            raise UserError(res.message)
        return self.sessions.add(Session(
            name=stem, source=source, ws=res.ws.to(self.editor.device), class_index=res.class_index,
            class_name=res.class_name, confidence=res.confidence, psnr=res.psnr, ssim=res.ssim, method=res.method,
            steps=res.steps, seconds=res.seconds, notes=list(res.notes) + (
                [f"may be none of the classes: ood_score {res.ood_score:.2f}, the class is a guess"]
                if res.out_of_domain else []),
            domain_png=png_bytes(to_float(res.domain)[None]), reconstruction_png=png_bytes(res.reconstruction[None]),
            latent_meta=self.editor.latent_meta(res)))

    @staticmethod
    def describe(session: Session) -> dict[str, Any]:
        """The session as JSON for the page (images as data URLs: they are a few hundred bytes)."""
        def data_url(png: bytes) -> str:
            return "data:image/png;base64," + base64.b64encode(png).decode("ascii")

        return {"session": session.id, "name": session.name, "source": session.source,
                "class_index": session.class_index, "class_name": session.class_name,
                "confidence": session.confidence, "psnr": session.psnr, "ssim": session.ssim,
                "method": session.method, "steps": session.steps, "seconds": session.seconds,
                "notes": session.notes, "latent_name": session.name + LATENT_SUFFIX,
                "ood_score": session.latent_meta.get("ood_score"),
                "domain": data_url(session.domain_png), "reconstruction": data_url(session.reconstruction_png)}

    # ------------------------------------------------------------------------------------------- editing
    # The edits themselves are the Editor's (apply_shifts, shift_strip, latent_bytes); these only unpack the
    # request and hold the networks.

    def edit_png(self, session_id: str, request: EditRequest) -> tuple[bytes, str, float]:
        """One slider step: :meth:`Editor.apply_shifts` -> PNG (only the generator and the classifier run, unless
        class-locked), with the class the classifier gives the edited image and its confidence (the page shows
        both live)."""
        session = self.sessions.get(session_id)
        with self.models(wait_s=EDIT_WAIT_S) as ed:
            edited = ed.apply_shifts(session.ws, request.shifts, session.class_index, class_name=request.class_name,
                                     layers=request.layers, keep_class=request.keep_class)
        return png_bytes(edited.image, scale=request.scale), edited.class_name, edited.confidence

    def strip_png(self, session_id: str, request: StripRequest) -> bytes:
        """A traversal strip along one direction, on top of the other shifts (as ``apply --eps a:b:n`` does)."""
        session = self.sessions.get(session_id)
        n = request.count
        eps = [request.eps_min + (request.eps_max - request.eps_min) * i / (n - 1) for i in range(n)]
        with self.models(wait_s=EDIT_WAIT_S) as ed:
            images = ed.shift_strip(session.ws, request.shifts, request.direction, eps, session.class_index,
                                    class_name=request.class_name, layers=request.layers,
                                    keep_class=request.keep_class)
        return png_bytes(images, nrow=n, scale=request.scale, pad=2)

    def latent_bytes(self, session_id: str) -> tuple[bytes, str]:
        """The session's (unedited) code as a latent file for ``semdir-edit apply`` -> (bytes, file name): the file
        ``invert`` writes, serialised in memory."""
        session = self.sessions.get(session_id)
        return self.editor.latent_bytes(session.ws, session.latent_meta), session.name + LATENT_SUFFIX


# ------------------------------------------------------------------------------------------------------ app


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _static(name: str) -> str:
    return (resources.files("semdir_edit.ui") / "static" / name).read_text(encoding="utf-8")


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


async def _read_body(request: Request, limit: int, what: str = "the file") -> bytes:
    """The request body, refused with a 413 as soon as it passes ``limit`` bytes (never buffered beyond it)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"{what} is too large ({_size(int(declared))}; the limit is {_size(limit)})")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"{what} is too large (the limit is {_size(limit)})")
    return bytes(body)


async def _read_json(request: Request, model: type[BaseModel]) -> Any:
    """A JSON body (at most MAX_JSON_BYTES, Content-Type application/json) validated as ``model``; 413 / 415 / 422.

    Read by hand rather than as a FastAPI body parameter, which would take a body of any size into memory first.
    Requiring application/json also means a cross-origin page cannot send it without a CORS preflight.
    """
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise HTTPException(415, "send the request as application/json")
    body = await _read_body(request, MAX_JSON_BYTES, "the request")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def cross_origin(request: Request) -> str | None:
    """Why a state-changing request comes from another web page (None: it does not).

    A browser marks every request a page makes: ``Sec-Fetch-Site`` (same-origin for the editor's own page, none
    for a typed address) and ``Origin`` (the page's scheme://host:port, which must be the one the request is sent
    to). Without this any page the user visits could post to the local editor (a text/plain form post needs no
    CORS preflight). Clients that are not browsers send neither header and are let through: they could reach the
    server anyway.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None and site.lower() not in ("same-origin", "none"):
        return f"Sec-Fetch-Site {site[:20]}"
    origin = request.headers.get("origin")
    if origin is None:
        return None
    host = request.headers.get("host", "")
    if origin.lower().rstrip("/") not in {f"{scheme}://{host.lower()}" for scheme in ("http", "https")}:
        return f"Origin {origin[:60]}"
    return None


def create_app(editor: Editor, *, method: str | None = None, steps: int | None = None,
               data_dir: str | Path | None = None, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               max_sessions: int = 32, session_ttl_s: float = 3600.0,
               allowed_hosts: list[str] | None = None) -> FastAPI:
    """The browser editor as a FastAPI app around one :class:`Editor` (see the module docstring for the API).

    method / steps: inversion defaults (the editor's inversion config otherwise). data_dir: Fashion-MNIST for
    "random test image". allowed_hosts: Host headers to accept (the CLI passes the loopback names when it binds
    to loopback, so that a web page cannot reach the editor through DNS rebinding); None = any.
    """
    service = EditorService(editor, method, steps, data_dir, max_sessions, session_ttl_s, max_upload_bytes)
    app = FastAPI(title="semdir-edit", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    page, script = _static("index.html"), _static("app.js")

    @app.middleware("http")
    async def same_origin_only(request: Request, call_next: Any) -> Response:
        if request.method not in SAFE_METHODS and (why := cross_origin(request)):
            return _error(403, f"cross-origin request refused ({one_line(why)}): use the editor's own page")
        return await call_next(request)

    @app.exception_handler(UserError)
    async def user_error(_: Request, exc: UserError) -> JSONResponse:
        return _error(400, " ".join(str(exc).split()))

    @app.exception_handler(SessionNotFound)
    async def no_session(_: Request, exc: SessionNotFound) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        return _error(422, f"invalid request: {where + ': ' if where else ''}{first.get('msg', 'malformed')}")

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")  # The traceback goes to the server's log, never to the page.
        return _error(500, f"internal error ({type(exc).__name__}); see the server's log")

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/app.js")
    def app_js() -> Response:
        return Response(script, media_type="text/javascript")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return service.info()

    @app.post("/api/sessions/upload")
    async def upload(request: Request, name: str | None = Query(None, max_length=512),
                     method: str | None = Query(None), steps: int | None = Query(None, ge=0, le=1000),
                     progress: str | None = Query(None, pattern=PROGRESS_ID)) -> dict[str, Any]:
        if request.headers.get("content-type", "").startswith("multipart/"):
            raise HTTPException(415, "send the image file itself as the request body, not a form")
        data = await _read_body(request, service.max_upload_bytes)
        session = await run_in_threadpool(service.invert_upload, data, name, method, steps, progress)
        return service.describe(session)

    @app.post("/api/sessions/random")
    def random_image(source: str = Query("test", pattern="^(test|sample)$"), seed: int | None = Query(None),
                     method: str | None = Query(None), steps: int | None = Query(None, ge=0, le=1000),
                     progress: str | None = Query(None, pattern=PROGRESS_ID)) -> dict[str, Any]:
        session = (service.new_sample(seed) if source == "sample"
                   else service.invert_test_image(seed, method, steps, progress))
        return service.describe(session)

    @app.get("/api/progress/{progress_id}")
    def inversion_progress(progress_id: str = PathParam(..., pattern=PROGRESS_ID)) -> dict[str, int]:
        return service.progress.get(progress_id)

    @app.get("/api/sessions/{session_id}")
    def get_session(session_id: str) -> dict[str, Any]:
        return service.describe(service.sessions.get(session_id))

    @app.post("/api/sessions/{session_id}/edit")
    async def edit(session_id: str, request: Request) -> Response:
        body = await _read_json(request, EditRequest)
        png, class_name, confidence = await run_in_threadpool(service.edit_png, session_id, body)
        return Response(png, media_type="image/png", headers={
            "Cache-Control": "no-store", "X-Edited-Class": quote(class_name),
            "X-Edited-Confidence": f"{confidence:.4f}"})

    @app.post("/api/sessions/{session_id}/strip")
    async def strip(session_id: str, request: Request) -> Response:
        body = await _read_json(request, StripRequest)
        return Response(await run_in_threadpool(service.strip_png, session_id, body), media_type="image/png",
                        headers={"Cache-Control": "no-store"})

    @app.get("/api/sessions/{session_id}/latent")
    def latent(session_id: str) -> Response:
        data, filename = service.latent_bytes(session_id)
        return Response(data, media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})

    return app


def measure_edit_ms(editor: Editor, repeats: int = 50, warmup: int = 5, keep_class: bool = False) -> float:
    """Median milliseconds of one slider step through the app: POST edit request -> PNG bytes received.

    Runs in-process with FastAPI's TestClient on a generated sample (no inversion), moving the first slider
    back and forth so that every request computes a new image; ``keep_class``: the page's default, a class-locked
    walk. ``semdir-edit bench`` reports the part without HTTP (``evaluation.bench.slider_edit_ms``).
    """
    import warnings

    with warnings.catch_warnings():  # Newer Starlette warns that its TestClient's httpx backend is deprecated.
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    app = create_app(editor)
    with TestClient(app) as client:
        response = client.post("/api/sessions/random", params={"source": "sample", "seed": 0})
        response.raise_for_status()
        session = response.json()["session"]
        groups = app.state.service.slider_groups()
        if not groups:
            raise UserError(f"{editor.weights_dir} has no directions to edit along")
        spec = f"{groups[0]}:0"
        times = []
        for i in range(warmup + repeats):
            eps = ((i % 13) - 6) / 2  # -3 .. 3 in steps of 0.5, as a dragged slider.
            t0 = time.perf_counter()
            response = client.post(f"/api/sessions/{session}/edit",
                                   json={"shifts": {spec: eps}, "keep_class": keep_class})
            content = response.content
            elapsed = (time.perf_counter() - t0) * 1000
            if response.status_code != 200 or not content.startswith(b"\x89PNG"):
                raise RuntimeError(f"edit request failed: {response.status_code} {response.text[:200]}")
            if i >= warmup:
                times.append(elapsed)
    return statistics.median(times)


def serve(weights_dir: str | Path, host: str = "127.0.0.1", port: int = 7860, device: str = "auto",
          method: str | None = None, steps: int | None = None, data_dir: str | Path | None = None) -> None:
    """Load the networks, print the address and run uvicorn until Ctrl+C (what ``semdir-edit ui`` does)."""
    import socket

    import uvicorn

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:  # A one-line error now rather than uvicorn's log after the networks have loaded.
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port") from None
    editor = Editor.from_pretrained(weights_dir, device)
    if method is not None and method not in METHODS:
        raise UserError(f"unknown method '{method}' (use {', '.join(METHODS)})")
    loopback = host in LOOPBACK_HOSTS
    # Host-header check against DNS rebinding (Starlette's check cannot parse "[::1]:port", so not for ::1).
    hosts = ["127.0.0.1", "localhost"] if host in ("127.0.0.1", "localhost") else None
    app = create_app(editor, method=method, steps=steps, data_dir=data_dir, allowed_hosts=hosts)
    app.state.service.info()  # Loads G, C and the directions now, so the first request is quick.
    editor.C  # noqa: B018 — loaded now for the same reason.
    if not loopback:
        print(f"warning: listening on {host}: anyone who can reach this machine on port {port} can use the editor "
              "(there is no authentication)", flush=True)
    # A wildcard address is not one to open: show this machine's loopback address instead.
    shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host else host)
    print(f"semdir-edit ui: open http://{shown}:{port}/ in a browser (Ctrl+C to stop)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
