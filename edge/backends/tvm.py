"""TVM backend: runs a bundle that `paraedge compile` wrote, with the TVM runtime only.

A bundle is a device model dir (config.yaml, am.mvn, tokens.json) plus model.so, params.npz and
manifest.json. Before anything runs, the manifest is checked: every listed file present with its
sha256, nothing unlisted that matters, the board's arch and CPU features present on this machine.
The import sets TVM_USE_RUNTIME_LIB=1 so a device needs libtvm_runtime + libtvm_ffi only.

Symbolic lengths: one function per graph serves every length. The runtime pads the frames to a
multiple of the function's "lengths" T (8) and the tokens to one of N (4), with masks (padding
is exact), and passes those multiples as the leading shape argument. The streaming decoder
returns each FSMN cache's whole window, and the cache kept is the last kernel-1 columns that
belong to real tokens.
"""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np

from edge.asr.modeldir import MODEL_FILES, load_npz, sha256_file
from edge.backends.base import Backend
from edge.boards import BoardError, check_runs_here, parse_board
from edge.errors import BackendUnavailable, ModelError

F32 = np.float32
ALIGN = 64  # bytes: TVM's CPU kernels use aligned vector loads
BUNDLE_FORMAT = "paraedge-tvm-bundle/2"  # /1: shape buckets (ParaEdge <= 0.x), refused with "recompile"


def aligned_zeros(shape) -> np.ndarray:
    """float32 zeros whose data starts on an ALIGN-byte boundary."""
    n = math.prod(shape)  # (np.prod: 3 of the 5.6 us a call took)
    raw = np.zeros(n + ALIGN // 4, F32)
    start = (-raw.ctypes.data % ALIGN) // 4
    return raw[start:start + n].reshape(shape)


def aligned_copy(a: np.ndarray) -> np.ndarray:
    out = aligned_zeros(a.shape)
    out[...] = a
    return out


def import_tvm_runtime(threads: int | None = None):
    """The TVM runtime without the compiler library (unless the host already imported it)."""
    if "tvm" not in sys.modules:
        os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
        if threads:
            os.environ.setdefault("TVM_NUM_THREADS", str(int(threads)))
    try:
        import tvm
        from tvm.runtime.vm import VirtualMachine  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailable(f"backend tvm needs the TVM runtime ({exc}); pip install apache-tvm") from None
    return tvm



def load_cuda_runtime(tvm, bundle: str) -> None:
    """TVM's CUDA device API lives in libtvm_runtime_cuda.so beside libtvm_runtime.so; TVM loads
    it with its compiler, not with the runtime alone (TVM_USE_RUNTIME_LIB=1), so it is loaded here."""
    if tvm.runtime.enabled("cuda"):
        return
    import ctypes

    lib = os.path.join(os.path.dirname(tvm.base._LOADED_LIBS["tvm_runtime"]._name), "libtvm_runtime_cuda.so")
    try:
        ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        raise BackendUnavailable(f"{bundle}: a CUDA bundle, and TVM's CUDA runtime does not load ({exc}); "
                                 "install apache-tvm with CUDA and put the CUDA runtime's lib folder on "
                                 "LD_LIBRARY_PATH") from None


def read_manifest(bundle: str) -> dict:
    """manifest.json, verified: format, every file present and unmodified. Raises ModelError."""
    path = os.path.join(bundle, "manifest.json")
    if not os.path.isfile(path):
        raise BackendUnavailable(f"{bundle}: no manifest.json, not a TVM bundle; "
                                 f"run `paraedge compile --board BOARD --model {bundle} -o OUT` on the host")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: [[[[... nested 100k deep
        raise ModelError(f"{path}: not valid JSON ({str(exc)[:100] or type(exc).__name__})") from None
    if isinstance(manifest, dict) and manifest.get("format") == "paraedge-tvm-bundle/1":
        raise ModelError(f"{path}: a shape-bucket bundle from an older ParaEdge; recompile it with "
                         "`paraedge compile` (bundles now hold one function per graph for every length)")
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise ModelError(f"{path}: not a {BUNDLE_FORMAT} manifest")
    for key, kind in (("board", dict), ("model", dict), ("functions", list), ("files", dict), ("target", dict)):
        if not isinstance(manifest.get(key), kind):
            raise ModelError(f"{path}: '{key}' must be a {kind.__name__}; recompile the bundle with `paraedge compile`")
    files = manifest["files"]
    # every file the loader reads must be listed, so none is parsed unverified
    must = ["model.so", "params.npz"] + [f for f in MODEL_FILES if os.path.exists(os.path.join(bundle, f))]
    missing = [f for f in must if f not in files]
    if missing:
        raise ModelError(f"{path}: does not list {', '.join(missing)}; recompile the bundle with `paraedge compile`")
    # relative, no "..", printable: "/etc/passwd" or "/proc/self/mem" would be read (and hashed) outside
    # it, and a name is quoted in one-line errors
    if not all(isinstance(k, str) and isinstance(v, str) and k.isprintable() and not os.path.isabs(k)
               and ".." not in k.replace("\\", "/").split("/") for k, v in files.items()):
        raise ModelError(f"{path}: 'files' must map names inside the bundle to sha256 digests")
    for f in manifest["functions"]:
        if not _function_ok(f):
            raise ModelError(f"{path}: 'functions' entry {json.dumps(f)[:80]} is malformed (each needs a name, params, "
                             f"a kind in {', '.join(FUNCTION_KINDS)} and its length multiples); recompile the bundle")
    m = manifest["model"]
    for key, kind in (("d_model", int), ("vocab_size", int), ("int8", bool), ("streaming", bool)):
        if key in m and (not isinstance(m[key], kind) or kind is int and isinstance(m[key], bool)):
            raise ModelError(f"{path}: model.{key} must be {'an integer' if kind is int else 'true or false'}, "
                             f"got {json.dumps(m[key])[:40]}; recompile the bundle")
    for name, digest in files.items():
        full = os.path.join(bundle, name)
        if not os.path.isfile(full):
            raise ModelError(f"{full}: missing (listed in manifest.json)")
        try:
            actual = sha256_file(full)
        except OSError as exc:
            raise ModelError(f"{full}: cannot be read ({exc.strerror or type(exc).__name__})") from None
        if actual != digest:
            raise ModelError(f"{full}: sha256 does not match manifest.json (modified or corrupt bundle)")
    return manifest


FUNCTION_KINDS = ("encoder", "decoder", "stream_decoder")


def _function_ok(f) -> bool:
    """A 'functions' entry as `paraedge compile` writes it: the loader indexes every one of these keys."""
    if not isinstance(f, dict):
        return False

    def count(key, lo=1):
        return isinstance(f.get(key), int) and not isinstance(f.get(key), bool) and f[key] >= lo

    names_ok = isinstance(f.get("name"), str) and isinstance(f.get("params"), list) and all(
        isinstance(n, str) and n.isprintable() for n in [f["name"], *f["params"]])  # quoted in one-line errors
    lengths = f.get("lengths")
    if not (names_ok and f.get("kind") in FUNCTION_KINDS and isinstance(lengths, dict)):
        return False
    if not all(isinstance(lengths.get(k), int) and not isinstance(lengths[k], bool) and 1 <= lengths[k] <= 64
               for k in (("T",) if f["kind"] == "encoder" else ("T", "N"))):
        return False
    if any(k in f and not count(k) for k in ("graph_frames", "max_frames")):
        return False
    return f["kind"] != "stream_decoder" or (count("kernel") and count("caches", lo=0))


def pick_function(functions, kind: str, rows: int, bundle: str) -> dict:
    """The bundle's function of `kind` for `rows` frames or tokens: the one with the smallest bound
    that the rows fit, else the unbounded one. Bounds: on CUDA, the functions captured in CUDA
    graphs (`graph_frames`; the uncaptured `<name>_long` takes longer inputs); on boards with int8
    attention, the encoder with float16 scores (`max_frames`; `encoder_long` past it)."""
    def bound(f):
        return min(f.get("graph_frames", 1 << 30), f.get("max_frames", 1 << 30))

    fns = [f for f in functions if f["kind"] == kind]
    fits = [f for f in fns if rows <= bound(f)]
    if fits:
        return min(fits, key=bound)
    if fns:
        raise ModelError(f"{bundle}: {rows} frames is more than the bundle's {kind} takes "
                         f"({max(bound(f) for f in fns)}); recompile it with `paraedge compile`")
    raise ModelError(f"{bundle}: the bundle has no {kind} function; recompile it with `paraedge compile`")


def bundle_board(manifest: dict, where: str):
    b = manifest.get("board") or {}
    profile = {"name": b.get("name"), "cpu": {"arch": b.get("arch"), "features": b.get("features", [])},
               "tvm": {"target": manifest.get("target"), "host": manifest.get("host"), "cc": b.get("cc", "")},
               "runtime": {"threads": 1, "memory_mb": 1}}
    try:
        return parse_board(profile, where)
    except BoardError as exc:
        raise ModelError(f"{where}: bad board entry ({exc})") from None


class TvmBackend(Backend):
    name = "tvm"

    def __init__(self, model_dir, threads: int | None = None, int8: bool = False, device: str | None = None,
                 manifest: dict | None = None):
        super().__init__(model_dir, threads)
        bundle = model_dir.path
        self.manifest = manifest or read_manifest(bundle)  # the Recognizer verifies it before parsing config.yaml
        where = os.path.join(bundle, "manifest.json")
        self.board = bundle_board(self.manifest, where)
        check_runs_here(self.board)
        m = self.manifest["model"]
        if int8 and not m.get("int8"):
            raise BackendUnavailable(f"{bundle}: this bundle is fp32; compile with --int8 for an INT8 bundle")
        if int(m.get("d_model", -1)) != self.config.d_model or int(m.get("vocab_size", -1)) != self.config.vocab_size:
            raise ModelError(f"{where}: compiled for another model (d_model/vocab differ from config.yaml)")
        self.int8 = bool(m.get("int8"))
        tvm = import_tvm_runtime(threads)
        from tvm.runtime.vm import VirtualMachine

        self.tvm = tvm
        if self.board.cuda:
            load_cuda_runtime(tvm, bundle)
        self.dev = tvm.cuda(0) if self.board.cuda else tvm.cpu(0)
        if self.board.cuda and not self.dev.exist:
            raise BackendUnavailable(f"{bundle}: a CUDA bundle ({self.board.name}) and no CUDA GPU here")
        try:
            lib = tvm.runtime.load_module(os.path.join(bundle, "model.so"))
        except Exception as exc:  # the runtime raises its own error types for foreign/corrupt objects
            raise ModelError(f"{bundle}/model.so: the TVM runtime cannot load it ({str(exc).splitlines()[0]})") from None
        self.vm = VirtualMachine(lib, self.dev)
        params = load_npz(os.path.join(bundle, "params.npz"))  # header claims checked before allocating
        self.functions = {f["name"]: f for f in self.manifest["functions"]}
        unknown = sorted({p for f in self.functions.values() for p in f["params"]} - set(params))
        if unknown:
            raise ModelError(f"{where}: functions take params {', '.join(unknown)[:120]} that params.npz lacks; "
                             "recompile the bundle")
        self.params = {k: tvm.runtime.tensor(v, self.dev) for k, v in params.items()}
        self.streaming = bool(m.get("streaming"))
        self._calls = {}  # function name -> (VM function, its weights): looked up once, not per call

    def describe(self) -> str:
        return f"tvm {self.board.name}{' int8' if self.int8 else ''}"

    # -- lengths ------------------------------------------------------------------------------
    def _function(self, kind: str, rows: int) -> dict:
        return pick_function(self.functions.values(), kind, rows, self.model_dir.path)

    def _tensor(self, a: np.ndarray):
        """An input for the VM. On the CPU an aligned float32 array is shared, not copied (DLPack):
        a streaming chunk's 5-8 inputs and 4 outputs copied through tvm.runtime.tensor / .numpy()
        cost ~18 + 7 us each on x86, ~5 % of a streaming decode; TVM's kernels need 64-byte
        alignment (from_dlpack checks it), so anything else is copied."""
        a = np.ascontiguousarray(a, dtype=F32)
        if not self.board.cuda and a.ctypes.data % ALIGN == 0:
            return self.tvm.runtime.from_dlpack(a)
        return self.tvm.runtime.tensor(a, self.dev)

    def _run(self, fn: dict, arrays: list[np.ndarray], lengths: list[int]):
        args = [self._tensor(a) for a in arrays]
        shape = self.tvm.runtime.ShapeTuple(lengths)
        call = self._calls.get(fn["name"])
        if call is None:  # (each lookup built a new function object: ~12 us on x86, and the weight list)
            call = self._calls[fn["name"]] = (self.vm[fn["name"]], [self.params[p] for p in fn["params"]])
        out = call[0](shape, *args, *call[1])
        outs = out if isinstance(out, (list, tuple)) or not hasattr(out, "numpy") else [out]
        # CPU results are fresh buffers of the VM: shared read-only (DLPack keeps them alive)
        return [o.numpy() if self.board.cuda else np.from_dlpack(o) for o in outs]

    @staticmethod
    def _pad(x: np.ndarray, multiple: int) -> tuple[np.ndarray, np.ndarray]:
        """x [rows, ..] -> (x [1, rows padded up to a multiple, ..], mask [1, padded rows]), both
        64-byte aligned (shared with the VM as they are)."""
        rows = max(1, -(-x.shape[0] // multiple)) * multiple
        padded = aligned_zeros((1, rows) + x.shape[1:])
        padded[0, : x.shape[0]] = x
        mask = aligned_zeros((1, rows))
        mask[0, : x.shape[0]] = 1.0
        return padded, mask

    # -- the seam -----------------------------------------------------------------------------
    def encode(self, x: np.ndarray):
        t = x.shape[0]
        fn = self._function("encoder", t)
        g = fn["lengths"]["T"]
        xp, mask = self._pad(x, g)
        enc, alphas = self._run(fn, [xp, mask], [xp.shape[1] // g])
        return enc[0, :t], alphas[0, :t]

    def decode(self, enc, embeds, caches=None, streaming: bool = False):
        n = embeds.shape[0]
        if streaming and not self.streaming:
            raise ModelError(f"{self.model_dir.path}: this bundle has no streaming decoder (compile a streaming model)")
        fn = self._function("stream_decoder" if streaming else "decoder", max(enc.shape[0], n))
        gt, gn = fn["lengths"]["T"], fn["lengths"]["N"]
        ep, mask = self._pad(enc, gt)
        bp, tmask = self._pad(embeds, gn)
        lengths = [ep.shape[1] // gt, bp.shape[1] // gn]
        if not streaming:
            (lp,) = self._run(fn, [ep, mask, bp, tmask], lengths)
            return lp[0, :n], caches
        k = fn["kernel"]
        if caches is None:
            caches = [aligned_zeros((1, self.config.d_model, k - 1)) for _ in range(fn["caches"])]
        out = self._run(fn, [ep, mask, bp, tmask, *caches], lengths)
        # window = [cache | tokens (padded)]: the new cache is the last k-1 columns of real ones
        new = [aligned_copy(w[:, :, n : n + k - 1]) for w in out[1:]]
        return out[0][0, :n], new
