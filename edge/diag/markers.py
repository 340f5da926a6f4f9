"""Stage markers for counting aarch64 instructions under qemu (tools/emu/qemu/insn_count.c).

Emulated wall time is meaningless, but qemu's instruction counts are exact and repeatable. With
PARAEDGE_INSN_MARKERS=1 (set by tools/emu/arm_profile.py) the profiler brackets every stage with a
marker the qemu plugin sees: lseek() on a file descriptor that cannot exist, which fails with
EBADF at the cost of a few instructions. Off (the default) every call is a no-op.
"""

from __future__ import annotations

import os

ENABLED = os.environ.get("PARAEDGE_INSN_MARKERS") == "1"
active = True  # the profiler clears it during warm-up runs
MARK_BASE = -4096
MAX_STAGES = 64
RESET, SNAPSHOT = 2 * MAX_STAGES, 2 * MAX_STAGES + 1


def _mark(code: int) -> None:
    if ENABLED:
        try:
            os.lseek(MARK_BASE - code, 0, os.SEEK_SET)
        except OSError:
            pass


def begin(stage: int) -> None:
    if active:
        _mark(2 * stage)


def end(stage: int) -> None:
    if active:
        _mark(2 * stage + 1)


def reset() -> None:
    """Forget what was counted so far (warm-up runs)."""
    _mark(RESET)


def snapshot() -> None:
    """Write the per-stage counts so far as one block, then start afresh. With
    PARAEDGE_INSN_MAPS=FILE the process's memory map goes to FILE too, so the plugin's hot-block
    addresses can be attributed to the libraries' functions."""
    _mark(SNAPSHOT)
    maps = os.environ.get("PARAEDGE_INSN_MAPS")
    if ENABLED and maps:
        with open("/proc/self/maps", encoding="utf-8") as src, open(maps, "w", encoding="utf-8") as dst:
            dst.write(src.read())
