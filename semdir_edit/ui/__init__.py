"""The browser editor (`semdir-edit ui`): a local FastAPI server and one static page.

FastAPI and uvicorn are an optional extra (``pip install -e '.[ui]'``), so nothing here imports them at module
level: :func:`require_ui_packages` turns their absence into a one-line :class:`~semdir_edit.core.errors.UserError`.
The server lives in :mod:`semdir_edit.ui.server`, the per-tab state in :mod:`semdir_edit.ui.sessions`.
"""

from __future__ import annotations

import importlib

from semdir_edit.core.errors import UserError

INSTALL_HINT = "pip install -e '.[ui]'"


def require_ui_packages() -> None:
    """Raise a one-line UserError naming the install command when FastAPI or uvicorn is missing."""
    missing = []
    for name in ("fastapi", "uvicorn"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UserError(f"the browser editor needs {' and '.join(missing)}: install with {INSTALL_HINT}")
