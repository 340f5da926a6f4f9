"""Facts about the machine this runs on, read in one place: architecture, CPU features and model
(from /proc/cpuinfo), and the compute thread pools.

Board checks (edge/boards.py), the NEON kernel provider, `paraedge doctor` and the profiler all
ask here; before, four /proc/cpuinfo parsers disagreed on the key names (`Features`, `flags`,
`CPU part`, `Hardware`) and on whether the first line or every line counted.
"""

from __future__ import annotations

import os
import platform as _platform
import sys
from functools import lru_cache

CPUINFO = "/proc/cpuinfo"
_ARCH_ALIASES = {"arm64": "aarch64", "amd64": "x86_64"}
# env vars read by the pools when their library loads; later changes need threadpoolctl (see limit_threads)
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TVM_NUM_THREADS")


def machine() -> str:
    """The architecture as board profiles spell it: aarch64 or x86_64."""
    m = _platform.machine().lower()
    return _ARCH_ALIASES.get(m, m)


def is_arm() -> bool:
    return machine() == "aarch64"


@lru_cache(maxsize=1)
def _cpuinfo() -> tuple:
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as f:
            return tuple((k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in f) if k.strip())
    except OSError:
        return ()


def cpu_features() -> frozenset:
    """ISA feature flags as /proc/cpuinfo spells them (`Features` on ARM, `flags` on x86); empty if unknown."""
    feats = set()
    for key, value in _cpuinfo():
        if key in ("flags", "Features"):
            feats.update(value.split())
    return frozenset(feats)


def cpu_model() -> str:
    """A human name for the CPU: x86 `model name`, ARM `Hardware` / `CPU part`, else the arch."""
    info = dict(reversed(_cpuinfo()))  # the first occurrence of each key wins
    for key in ("model name", "Hardware", "Model", "CPU part"):
        if info.get(key):
            return info[key] if key != "CPU part" else f"ARM part {info[key]}"
    return _platform.processor() or machine()


MAX_THREADS = 256  # more than any board has; a typo such as 100000 used to hang thread-pool creation


def check_threads(n, what: str = "threads"):
    """None (the library default) or a whole number 1..MAX_THREADS; anything else is one clear error."""
    from edge.errors import ParaEdgeError

    if n is None:
        return None
    import numbers

    if isinstance(n, bool) or not isinstance(n, numbers.Integral):  # numpy's integers are whole numbers too
        raise ParaEdgeError(f"{what} must be a whole number of threads, got {n!r}")
    n = int(n)
    if not 1 <= n <= MAX_THREADS:
        raise ParaEdgeError(f"{what} = {n}: must be within 1..{MAX_THREADS}")
    return n


def limit_threads(n: int) -> dict:
    """Hold every compute pool of this process to `n` threads; returns what the pools report.

    Environment variables only take effect for libraries not loaded yet, so pools already running
    (numpy's OpenBLAS is loaded by any numpy import) are limited through threadpoolctl. The
    returned {library: threads} is what a report should print, not the number that was asked for.
    """
    n = check_threads(n)
    for var in THREAD_ENV:
        os.environ[var] = str(n)
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        return {"env": n}
    if "numpy" in sys.modules:
        threadpool_limits(limits=n)
    return {info.get("internal_api", "pool"): info.get("num_threads") for info in threadpool_info()} or {"env": n}


def release_freed_memory() -> None:
    """Give memory that Python and the libraries freed back to the OS (glibc keeps it otherwise).

    Called after a hot reload drops the old model. Measured in the soak test (an hour through the
    daemon, a reload every ~35 utterances): without it the resident size climbed 376 -> 438 MB over
    the first ten reloads (freed onnxruntime arenas left as fragmented heap); with it, 355 -> 367 MB.
    """
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        trim = None
    if trim is not None:
        trim(0)
