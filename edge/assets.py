"""Where ParaEdge's data lives: the board profiles, the shipped demo model and the resources.

Installed from a wheel, they are package data under `edge/_assets/` (setup.py copies the
repository's `boards/` and `models/demo/` there) and are read through importlib.resources.
In a checkout (editable install, PYTHONPATH) there is no `_assets`, and they are the repository's
own folders. Every module asks here, so no module guesses a path relative to its own file.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent  # the repository root when edge/ runs from one


def _asset(name: str, in_checkout: str) -> Path:
    installed = Path(str(resources.files("edge").joinpath("_assets", name)))
    return installed if installed.is_dir() else CHECKOUT / in_checkout


def boards_dir() -> Path:
    """The board profiles (`boards/*.toml`); PARAEDGE_BOARDS points elsewhere."""
    return Path(os.environ.get("PARAEDGE_BOARDS") or _asset("boards", "boards"))


def demo_model_dir() -> Path:
    """The shipped demo model (`models/demo` in the repository)."""
    return _asset("demo", os.path.join("models", "demo"))


def resource(name: str) -> Path:
    """A file of `edge/resources/` (the edge.toml template, the systemd unit)."""
    return Path(str(resources.files("edge").joinpath("resources", name)))
