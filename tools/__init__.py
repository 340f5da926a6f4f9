"""ParaEdge's host side, installed as `paraedge_tools` (the folder keeps its name in the repository):

- `compiler/`: model dir -> TVM bundle per board (schedules, INT8 intrinsics, CUDA, tuning);
- `recipe/`: the demo model's corpus, training, evaluation and release;
- `emu/`: the emulated aarch64 board (qemu-user root, instruction counts, ARM profile);
- `deploy.py`: the deploy kit for one board.
Needs the `host` extra (torch, TVM compiler, onnx); the device package never imports it.
"""

from __future__ import annotations

import os

_HERE = os.path.dirname(os.path.abspath(__file__))
# the repository root when this runs from a checkout (editable install): kernels/ and setup.py are there
CHECKOUT = os.path.dirname(_HERE) if os.path.isfile(os.path.join(os.path.dirname(_HERE), "setup.py")) else None


def out_dir(*parts: str) -> str:
    """Scratch and cache space for host tools: $PARAEDGE_OUT, else the checkout's out/, else ~/.cache/paraedge."""
    base = os.environ.get("PARAEDGE_OUT") or (os.path.join(CHECKOUT, "out") if CHECKOUT
                                              else os.path.join(os.path.expanduser("~"), ".cache", "paraedge"))
    return os.path.join(base, *parts)


def run_main(main, errors: tuple = ()) -> None:
    """The `python -m paraedge_tools...` entry points: a ParaEdgeError (or one of `errors`) is one line
    and exit status 2, as in `paraedge` itself."""
    import sys

    from edge.errors import ParaEdgeError

    try:
        sys.exit(main())
    except (ParaEdgeError, *errors) as exc:
        print(f"paraedge: error: {exc}", file=sys.stderr)
        sys.exit(2)
