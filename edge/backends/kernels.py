"""The NEON C kernels from Python: load the optional cffi extension, pick a GEMM path for this CPU,
and wrap each kernel with shape/dtype checks (numpy in, numpy out).

The extension (`edge._kernels`, built from kernels/ by `pip install -e .` or
`python -m kernels.build`) is optional: `available()` says whether it loaded and
`describe()` says which paths are active, or why none is. Paths: `dot` (ARMv8.2 sdot, chosen
when the CPU reports asimddp), `neon` (ARMv8.0 smull/sadalp), `scalar` (the C reference).
`PARAEDGE_KERNEL_PATH=scalar|neon|dot` overrides the choice; `PARAEDGE_KERNELS=off` hides the
extension. On x86 the extension is the same code through SIMDe: correct, not fast.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from edge.backends import ops
from edge.asr.cif import CifConfig, token_count
from edge.errors import BackendUnavailable, ParaEdgeError
from edge.platform import cpu_features, is_arm, machine  # noqa: F401  (is_arm: part of this provider's API)

F32 = np.float32
PATHS = {"scalar": 0, "neon": 1, "dot": 2}

_lib = _ffi = None
_reason: str | None = None


def _load():
    global _lib, _ffi, _reason
    if _lib is not None or _reason is not None:
        return _lib
    if os.environ.get("PARAEDGE_KERNELS", "").lower() in ("0", "off", "no"):
        _reason = "disabled by PARAEDGE_KERNELS=off"
        return None
    try:
        from edge import _kernels
    except ImportError as exc:
        _reason = f"extension not built ({exc}); run `python -m kernels.build` or `pip install -e .` with a C compiler"
        return None
    _lib, _ffi = _kernels.lib, _kernels.ffi
    return _lib


def available() -> bool:
    return _load() is not None


def unavailable_reason() -> str | None:
    _load()
    return _reason


def require():
    """The loaded library, or BackendUnavailable naming why it is missing."""
    lib = _load()
    if lib is None:
        raise BackendUnavailable(f"backend neon needs the NEON kernels: {_reason}")
    return lib


def _mask_names(mask: int) -> list[str]:
    return [name for name, bit in PATHS.items() if mask >> bit & 1]


def best_path() -> str:
    """dot when the CPU has sdot, else neon; PARAEDGE_KERNEL_PATH overrides (if runnable)."""
    lib = require()
    runnable = _mask_names(lib.pe_paths_runnable())
    want = os.environ.get("PARAEDGE_KERNEL_PATH")
    if want:
        if want not in PATHS:
            raise ParaEdgeError(f"PARAEDGE_KERNEL_PATH={want}: choose one of {', '.join(PATHS)}")
        if want not in runnable:
            raise ParaEdgeError(f"PARAEDGE_KERNEL_PATH={want}: this CPU cannot run it (runnable: {', '.join(runnable)})")
        return want
    return "dot" if "dot" in runnable else "neon"


def describe() -> dict:
    """What `paraedge doctor` reports: build, compiled and runnable paths, the active GEMM path."""
    info = {"machine": machine(), "built": available(),
            "cpu_dotprod": "asimddp" in cpu_features()}
    if not available():
        info["reason"] = _reason
        return info
    info.update(build=_ffi.string(_lib.pe_build_info()).decode(),
                compiled=_mask_names(_lib.pe_paths_compiled()), runnable=_mask_names(_lib.pe_paths_runnable()))
    try:
        info["active"] = best_path()
    except ParaEdgeError as exc:
        info["active"], info["reason"] = None, str(exc)
    info["kernels"] = ["gemm_s8", "quantize", "dequant", "requant", "fsmn", "cif", "layernorm", "attention"]
    return info


def describe_line() -> str:
    d = describe()
    if not d["built"]:
        return f"NEON kernels: not available ({d['reason']})"
    return (f"NEON kernels: {d['build']}; GEMM path {d['active']} (runnable: {', '.join(d['runnable'])}; "
            f"compiled: {', '.join(d['compiled'])})")


# -- helpers ----------------------------------------------------------------------------------
def _c(x, dtype, ndim: int, what: str) -> np.ndarray:
    a = np.ascontiguousarray(x, dtype=dtype)
    if a.ndim != ndim:
        raise ValueError(f"{what}: expected {ndim}-D, got shape {a.shape}")
    return a


def _p(a: np.ndarray | None, ctype: str):
    return _ffi.NULL if a is None else _ffi.cast(ctype + " *", _ffi.from_buffer(a))


def _path_id(path: str | None) -> int:
    path = path or best_path()
    if path not in PATHS:
        raise ValueError(f"unknown kernel path {path!r}")
    return PATHS[path]


# -- INT8 GEMM --------------------------------------------------------------------------------
class PackedWeights:
    """int8 weights [N, K] (one row per output channel) packed once for one GEMM path."""

    def __init__(self, w_nk: np.ndarray, path: str | None = None):
        lib = require()
        w = _c(w_nk, np.int8, 2, "weights")
        self.n, self.k = w.shape
        self.path = path or best_path()
        pid = _path_id(self.path)
        self.data = np.empty(lib.pe_gemm_s8_packed_size(pid, self.k, self.n), np.int8)
        lib.pe_gemm_s8_pack(pid, _p(w, "int8_t"), self.k, self.n, _p(self.data, "int8_t"))


def gemm_s8s32(a: np.ndarray, w: PackedWeights) -> np.ndarray:
    """int8 [M, K] x packed int8 [N, K] -> int32 [M, N], exact."""
    lib = require()
    a = _c(a, np.int8, 2, "a")
    if a.shape[1] != w.k:
        raise ValueError(f"gemm: a has K={a.shape[1]}, weights K={w.k}")
    c = np.empty((a.shape[0], w.n), np.int32)
    lib.pe_gemm_s8s32(PATHS[w.path], _p(a, "int8_t"), _p(w.data, "int8_t"), a.shape[0], w.k, w.n, _p(c, "int32_t"))
    return c


def quantize_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dynamic symmetric per-row int8 quantization (see ops.quantize_rows_s8)."""
    lib = require()
    x = _c(x, F32, 2, "x")
    q = np.empty(x.shape, np.int8)
    s = np.empty(x.shape[0], F32)
    lib.pe_quantize_rows_s8(_p(x, "float"), x.shape[0], x.shape[1], _p(q, "int8_t"), _p(s, "float"))
    return q, s


def dequant(c: np.ndarray, a_scale: np.ndarray, w_scale: np.ndarray, bias: np.ndarray | None = None,
            relu: bool = False) -> np.ndarray:
    lib = require()
    c = _c(c, np.int32, 2, "c")
    m, n = c.shape
    a_scale, w_scale = _c(a_scale, F32, 1, "a_scale"), _c(w_scale, F32, 1, "w_scale")
    bias = None if bias is None else _c(bias, F32, 1, "bias")
    if a_scale.size != m or w_scale.size != n or (bias is not None and bias.size != n):
        raise ValueError("dequant: scale/bias sizes do not match c")
    y = np.empty((m, n), F32)
    lib.pe_dequant_s32_f32(_p(c, "int32_t"), m, n, _p(a_scale, "float"), _p(w_scale, "float"), _p(bias, "float"),
                           int(relu), _p(y, "float"))
    return y


def requant(c: np.ndarray, mult: np.ndarray) -> np.ndarray:
    lib = require()
    c = _c(c, np.int32, 2, "c")
    mult = _c(mult, F32, 1, "mult")
    if mult.size != c.shape[1]:
        raise ValueError("requant: one multiplier per output channel")
    y = np.empty(c.shape, np.int8)
    lib.pe_requant_s32_s8(_p(c, "int32_t"), c.shape[0], c.shape[1], _p(mult, "float"), _p(y, "int8_t"))
    return y


class Linear:
    """torch Linear quantized to int8 per output channel at load time; activations are quantized
    per row on every call (dynamic quantization, as onnxruntime's): one C call per layer."""

    def __init__(self, w_t: np.ndarray, bias: np.ndarray | None = None, path: str | None = None):
        q, self.w_scale = ops.quantize_rows_s8(np.ascontiguousarray(np.asarray(w_t, F32).T))
        self.weights = PackedWeights(q, path)
        self.bias = None if bias is None else _c(bias, F32, 1, "bias")
        self.n, self.k = q.shape

    def __call__(self, x: np.ndarray, relu: bool = False) -> np.ndarray:
        lib = require()
        x = _c(x, F32, 2, "x")
        m = x.shape[0]
        if x.shape[1] != self.k:
            raise ValueError(f"linear: x has {x.shape[1]} features, layer expects {self.k}")
        y = np.empty((m, self.n), F32)
        q = np.empty((m, self.k), np.int8)
        c = np.empty((m, self.n), np.int32)
        s = np.empty(m, F32)
        lib.pe_linear_s8(PATHS[self.weights.path], _p(x, "float"), m, self.k, _p(self.weights.data, "int8_t"), self.n,
                         _p(self.w_scale, "float"), _p(self.bias, "float"), int(relu), _p(y, "float"),
                         _p(q, "int8_t"), _p(c, "int32_t"), _p(s, "float"))
        return y


# -- float kernels ----------------------------------------------------------------------------
def fsmn(x: np.ndarray, w_kd: np.ndarray, left: int, hist: np.ndarray | None = None) -> np.ndarray:
    """SAN-M FSMN memory: x + depthwise conv over [hist | x] zero-padded; bit-exact with
    ops.fsmn_memory (hist None) and with the decoder's cached window (hist = its last k-1 rows)."""
    lib = require()
    x = _c(x, F32, 2, "x")
    w = _c(w_kd, F32, 2, "w")
    t, d = x.shape
    if w.shape[1] != d:
        raise ValueError(f"fsmn: weights are for {w.shape[1]} channels, x has {d}")
    h = None if hist is None else _c(hist, F32, 2, "hist")
    if h is not None and h.shape[1] != d:
        raise ValueError("fsmn: hist and x differ in width")
    y = np.empty_like(x)
    lib.pe_fsmn_f32(_p(x, "float"), t, d, _p(h, "float"), 0 if h is None else h.shape[0], _p(w, "float"), w.shape[0],
                    int(left), _p(y, "float"))
    return y


@functools.lru_cache(maxsize=8)
def _fft_tables(padded: int):
    """fbank.c's FFT tables for a `padded`-point real FFT: the bit reversal of the padded/2-point
    complex FFT, its stages' twiddles (stage `half` at half - 1: exp(-2 pi i j / (2 half)),
    j < half) and the real split's exp(-2 pi i k / padded)."""
    m = padded // 2
    bits = m.bit_length() - 1
    bitrev = np.array([int(format(k, f"0{bits}b")[::-1], 2) if bits else 0 for k in range(m)], np.intc)
    tw = np.ones(max(m, 1), np.complex128)
    half = 2
    while half < m:
        tw[half - 1 : 2 * half - 1] = np.exp(-2j * np.pi * np.arange(half) / (2 * half))
        half *= 2
    split = np.exp(-2j * np.pi * np.arange(m) / padded)
    return bitrev, tw.real.copy(), tw.imag.copy(), split.real.copy(), split.imag.copy()


def fbank(x: np.ndarray, length: int, shift: int, padded: int, window: np.ndarray, band_start: np.ndarray,
          band_len: np.ndarray, band_w: np.ndarray, eps: float) -> np.ndarray:
    """Kaldi log-mel fbank of float32 samples (int16 range) in C (kernels/fbank.c): the frames
    edge.asr.frontend.KaldiFbank computes in numpy, to float64 round-off (equal float32 output
    on every signal tested). Mel band b: bins band_start[b] .. + band_len[b], weights
    consecutive in band_w."""
    lib = require()
    x = _c(x, F32, 1, "samples")
    frames = 1 + (x.size - length) // shift if x.size >= length else 0
    n_mels = band_start.size
    out = np.empty((frames, n_mels), F32)
    if frames == 0:
        return out
    bitrev, tw_re, tw_im, sp_re, sp_im = _fft_tables(padded)
    start, count = _c(band_start, np.intc, 1, "band_start"), _c(band_len, np.intc, 1, "band_len")
    w, win = _c(band_w, np.float64, 1, "band_w"), _c(window, np.float64, 1, "window")
    if count.size != n_mels or int(count.sum()) != w.size or (count.size and int((start + count).max()) > padded // 2):
        raise ValueError("fbank: mel bands do not match their weights or the FFT size")
    scratch = np.empty(padded * 5 // 2, np.float64)
    n = lib.pe_fbank_f64(_p(x, "float"), x.size, int(length), int(shift), int(padded), _p(win, "double"),
                         _p(bitrev, "int"), _p(tw_re, "double"), _p(tw_im, "double"), _p(sp_re, "double"),
                         _p(sp_im, "double"), n_mels, _p(start, "int"), _p(count, "int"), _p(w, "double"),
                         float(eps), _p(scratch, "double"), _p(out, "float"))
    if n != frames:
        raise ValueError(f"fbank: sizes the kernel refuses (length {length}, shift {shift}, FFT {padded})")
    return out


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    lib = require()
    x = _c(x, F32, 2, "x")
    g, b = _c(gamma, F32, 1, "gamma"), _c(beta, F32, 1, "beta")
    if g.size != x.shape[1] or b.size != x.shape[1]:
        raise ValueError("layer_norm: gamma/beta do not match x")
    y = np.empty_like(x)
    lib.pe_layernorm_f32(_p(x, "float"), x.shape[0], x.shape[1], _p(g, "float"), _p(b, "float"), float(eps), _p(y, "float"))
    return y


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, heads: int) -> np.ndarray:
    """ops.attention (no mask, batch 1) fused in C: one call for all heads; float32-close."""
    lib = require()
    q, k, v = _c(q, F32, 2, "q"), _c(k, F32, 2, "k"), _c(v, F32, 2, "v")
    (t1, d), t2 = q.shape, k.shape[0]
    if k.shape[1] != d or v.shape != k.shape or d % heads:
        raise ValueError(f"attention: q {q.shape}, k {k.shape}, v {v.shape} with {heads} heads do not fit")
    dk = d // heads
    y = np.empty_like(q)
    scratch = np.empty(dk + t2 + 4, F32)
    lib.pe_attention_f32(_p(q, "float"), t1, _p(k, "float"), _p(v, "float"), t2, d, int(heads), float(F32(dk**-0.5)),
                         _p(y, "float"), _p(scratch, "float"))
    return y


def cif_offline(hidden: np.ndarray, alphas: np.ndarray, cfg: CifConfig) -> np.ndarray:
    """edge.asr.cif.cif_offline in C (bit-exact); the token count stays numpy's float32 sum."""
    lib = require()
    hidden = _c(hidden, F32, 2, "hidden")
    alphas = _c(alphas, F32, 1, "alphas")
    t, d = hidden.shape
    if alphas.size != t:
        raise ValueError("cif: one alpha per frame")
    tail = F32(cfg.tail_threshold)
    full = np.concatenate([alphas, [tail]]).astype(F32) if cfg.tail_threshold > 0 else alphas
    max_len = int(np.round(full.sum(dtype=F32)))
    n_out = min(token_count(full, cfg), max_len) if cfg.tail_threshold > 0 else max_len
    out = np.empty((max(n_out, 0), d), F32)
    scratch = np.empty(3 * d, F32)
    lib.pe_cif_offline_f32(_p(hidden, "float"), _p(alphas, "float"), t, d, float(tail) if cfg.tail_threshold > 0 else 0.0,
                           max(n_out, 0), _p(out, "float"), _p(scratch, "float"))
    return out


class CifStream:
    """edge.asr.cif.CifStream in C (bit-exact): same constructor, same step()."""

    def __init__(self, cfg: CifConfig, dim: int):
        require()
        self.cfg, self.dim = cfg, dim
        self.alpha = np.zeros(1, F32)
        self.hidden = np.zeros(dim, F32)

    def step(self, hidden: np.ndarray, alphas: np.ndarray, final: bool) -> np.ndarray:
        hidden = _c(hidden, F32, 2, "hidden")
        alphas = _c(alphas, F32, 1, "alphas")
        t = hidden.shape[0]
        if alphas.size != t or hidden.shape[1] != self.dim:
            raise ValueError("cif stream: hidden/alphas shapes disagree")
        out = np.empty((t + 3, self.dim), F32)
        n = _lib.pe_cif_stream_f32(_p(hidden, "float"), _p(alphas, "float"), t, self.dim, float(self.cfg.threshold),
                                   int(final), float(self.cfg.tail_threshold), _p(self.alpha, "float"),
                                   _p(self.hidden, "float"), _p(out, "float"))
        return out[:n].copy()
