"""`paraedge compile`: a model dir -> a TVM artifact bundle for one board (host side).

Needs torch (to trace the graphs), onnx, onnxruntime (constant folding) and apache-tvm (the
compiler). Pipeline per static shape: torch -> ONNX (opset 17, static shapes) -> onnxruntime
basic optimisation (folds the shape arithmetic TVM's ONNX importer cannot take) ->
`tvm.relax.frontend.onnx.from_onnx` (weights kept as function inputs, so every shape shares one
params.npz) -> one IRModule with every function -> `tvm.compile(mod, board target)` ->
`export_library` with the board's cross compiler.

The seam's three graphs, each at static shapes (padding + masks make a bucket exact):
- `enc_T{t}`: prepared input [1,t,560] + frame mask [1,t] -> enc [1,t,d], alphas [1,t];
- `dec_T{t}_N{n}`: enc, mask, acoustic embeds [1,n,d], token mask -> log-probs [1,n,V]
  (offline: no caches, centred FSMN);
- `sdec_T{t}_N{n}` (streaming models): the same with FSMN caches [1,d,k-1] in; it returns the
  caches' whole windows [1,d,k-1+n] so the runtime keeps the last k-1 *valid* columns.
Streaming windows follow the model's chunk_size (15 LFR frames for [0,10,5]); offline lengths pad up to the
smallest bucket (default up to 512 frames, 30.7 s).

The bundle (a device model dir): model.so, params.npz, config.yaml, am.mvn, tokens.json,
manifest.json (board, target, TVM version, functions + input shapes, model hash, sha256 of every
file); CUDA boards also get cubins/*.cubin (compiled on the host with NVRTC, see tools/compiler/cuda.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import types
import warnings

import numpy as np

from edge.asr.modeldir import MODEL_FILES, ModelDir, model_hash
from edge.backends.tvm import BUNDLE_FORMAT
from edge.boards import Board, load_board
from edge.errors import ParaEdgeError
from paraedge_tools.output import OutputDir, digests

# Offline lengths in LFR frames (60 ms). Padding is real compute, so commands (1-7.7 s) get buckets
# 8-16 frames apart (at most 1/6 of a bucket is padding), longer audio at most 1/4.
DEFAULT_BUCKETS = (16, 24, 32, 40, 48, 56, 64, 72, 80, 96, 112, 128, 160, 192, 256, 320, 384, 512)


def stream_buckets(chunk_size) -> tuple[int, int]:
    """The streaming window (left + chunk + right frames: 15 for [0,10,5]) and a larger one for the
    final chunk, which also carries the audio left over and the frontend's flushed frames."""
    left, chunk, right = chunk_size
    return left + chunk + right, left + 2 * chunk + right + 7


TOKEN_DIVS = (8, 4, 2)


def token_buckets(t: int, divs=TOKEN_DIVS) -> list[int]:
    """Decoder token-count buckets for an encoder bucket of t frames (count <= t: alphas <= 1).
    Speech runs ~0.25 tokens per 60 ms frame, so small buckets (t/8, t/4, t/2) carry the common
    case; `divs=()` keeps only the always-sufficient t+1 (fewer functions, quicker compiles).
    Counts round up to a multiple of 4: the matmul schedules tile rows by a divisor of the count
    (a prime count such as 7 or 43 would leave them one row at a time)."""
    return sorted({-(-min(t + 1, max(4, t // d)) // 4) * 4 for d in divs} | {-(-(t + 1) // 4) * 4})


# -- graphs ---------------------------------------------------------------------------------
PANEL = 16  # packed weight panel width (2 AVX2 / 4 NEON float32 vectors)


def packed_matmul(x, w, panel: int = PANEL):
    """x [..., K] @ w [K, N] as a batched matmul over contiguous weight panels [N/panel, K, panel]
    (folded into the exported initializer); columns past the last whole panel stay plain."""
    import torch

    k, n = w.shape
    whole = n - n % panel
    if whole == 0:
        return x @ w
    if whole != n:  # the vocabulary: whole panels packed, the remaining columns plain
        return torch.cat([packed_matmul(x, w[:, :whole], panel), x @ w[:, whole:]], dim=-1)
    wp = w.reshape(k, n // panel, panel).permute(1, 0, 2)
    y = torch.matmul(x.reshape(1, -1, k), wp)  # [N/panel, rows, panel]
    return y.permute(1, 0, 2).reshape(*x.shape[:-1], n)


def pack_linears(model, panel: int = PANEL) -> int:
    """Every Linear (but the 1-wide CIF output) computes x @ W as a batched matmul over weight
    panels [N/panel, K, panel] (contiguous, as MLAS packs B): the exported weight is the packed
    one (folded at export), so the matmul streams it without 4 KB strides."""
    import torch

    def forward(self, x):
        y = packed_matmul(x, self.weight.t(), panel)
        return y + self.bias if self.bias is not None else y

    count = 0
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and m.out_features >= panel and m.in_features >= panel:
            m.forward = types.MethodType(forward, m)
            count += 1
    return count


def _wrappers(model, streaming: bool, packed: bool = False):
    import torch

    class Enc(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.predictor = model.encoder, model.predictor
            self.packed = packed

        def forward(self, x, mask):
            enc = self.encoder(x, mask)
            # the CIF conv sees the next frame: zero the padding so the last real alpha is exact
            return enc, self.alphas(enc * mask[:, :, None], mask)

        def alphas(self, hidden, mask):
            """CifPredictorV2.alphas with its Conv1d as one matmul over k shifted copies
            (im2col): the same sums, and TVM's matmul schedule instead of a naive conv loop."""
            p = self.predictor
            t = hidden.shape[1]
            left, right = p.pad
            h = torch.nn.functional.pad(hidden, (0, 0, left, right))
            k = left + right + 1
            cols = torch.cat([h[:, i : i + t] for i in range(k)], dim=-1)  # [B, T, k*d]
            w = p.cif_conv1d.weight.permute(2, 1, 0).reshape(k * hidden.shape[2], -1)  # [k*d_in, d_out]
            h = torch.relu((packed_matmul(cols, w) if self.packed else cols @ w) + p.cif_conv1d.bias)
            a = torch.sigmoid(p.cif_output(h))[:, :, 0]
            return torch.relu(a * p.smooth_factor - p.noise_threshold) * mask

    class Dec(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.decoder = model.decoder

        def forward(self, enc, mask, embeds, tmask):
            logits, _ = self.decoder(enc, mask, embeds * tmask[:, :, None], tmask)
            return torch.log_softmax(logits, dim=-1)

    def full_window(self, x, cache):  # forward_cached, returning the whole window
        window = torch.cat([cache, x.transpose(1, 2)], dim=2)
        return self.fsmn_block(window).transpose(1, 2) + x, window

    class StreamDec(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.decoder = model.decoder
            for layer in model.decoder.fsmn_layers(streaming=True):
                layer.self_attn.forward_cached = types.MethodType(full_window, layer.self_attn)

        def forward(self, enc, mask, embeds, tmask, *caches):
            logits, windows = self.decoder(enc, mask, embeds * tmask[:, :, None], tmask, list(caches))
            return (torch.log_softmax(logits, dim=-1), *windows)

    return Enc().eval(), Dec().eval(), (StreamDec().eval() if streaming else None)


def _to_onnx(module, args, names_in, names_out, path: str) -> None:
    """torch -> static-shape ONNX -> onnxruntime basic optimisation (constant folding) in place."""
    import onnxruntime as ort
    import torch

    raw = path + ".raw.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, raw, input_names=names_in, output_names=names_out,
                          opset_version=17, dynamo=False)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = path
    opts.log_severity_level = 3
    ort.InferenceSession(raw, opts, providers=["CPUExecutionProvider"])
    os.remove(raw)
    _sanitize_names(path)


def _sanitize_names(path: str) -> None:
    """Tensor names as C identifiers: TVM's CUDA codegen names kernel parameters after them."""
    import re

    import onnx

    m = onnx.load(path)
    g = m.graph
    keep = {v.name for v in list(g.input) + list(g.output)}
    names = {}

    def fix(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in names:
            base = re.sub(r"[^0-9A-Za-z_]", "_", name).strip("_") or "t"
            base = "t_" + base if base[0].isdigit() else base
            cand, i = base, 1
            while cand in names.values() or cand in keep:
                cand, i = f"{base}_{i}", i + 1
            names[name] = cand
        return names[name]

    for t in g.initializer:
        t.name = fix(t.name)
    for node in g.node:
        node.input[:] = [fix(n) for n in node.input]
        node.output[:] = [fix(n) for n in node.output]
    for v in g.value_info:
        v.name = fix(v.name)
    onnx.save(m, path)


def plan(md: ModelDir, buckets=DEFAULT_BUCKETS, streaming: bool | None = None, token_divs=TOKEN_DIVS) -> list[dict]:
    """Every function the bundle will hold: name, kind, static shapes."""
    cfg = md.config
    streaming = cfg.streaming if streaming is None else streaming
    if streaming and not cfg.streaming:
        raise ParaEdgeError(f"{md.path} is an offline model ({cfg.model}); --streaming needs ParaformerStreaming")
    d, din = cfg.d_model, cfg.input_size
    stream_t = stream_buckets(cfg.chunk_size) if streaming else ()
    enc_t = sorted(set(buckets) | set(stream_t))
    fns = []
    for t in enc_t:
        fns.append({"name": f"enc_T{t}", "kind": "encoder", "T": t, "inputs": {"x": [1, t, din], "mask": [1, t]}})
        for n in token_buckets(t, token_divs):
            ins = {"enc": [1, t, d], "mask": [1, t], "embeds": [1, n, d], "tmask": [1, n]}
            fns.append({"name": f"dec_T{t}_N{n}", "kind": "decoder", "T": t, "N": n, "inputs": ins})
    if streaming:
        k = int(cfg.decoder_conf.get("kernel_size", 21))
        n_caches = _stream_cache_count(md)
        for t in stream_t:
            for n in token_buckets(t, token_divs):
                ins = {"enc": [1, t, d], "mask": [1, t], "embeds": [1, n, d], "tmask": [1, n]}
                ins.update({f"cache{i}": [1, d, k - 1] for i in range(n_caches)})
                fns.append({"name": f"sdec_T{t}_N{n}", "kind": "stream_decoder", "T": t, "N": n, "inputs": ins,
                            "kernel": k, "caches": n_caches})
    return fns


def _stream_cache_count(md: ModelDir) -> int:
    dec = md.config.decoder_conf
    att = int(dec.get("att_layer_num", 6))
    extra = int(dec.get("num_blocks", 6)) - att
    return att + (extra if extra > 1 else 0)


# -- compile --------------------------------------------------------------------------------
def _merge(mods: dict):
    """{function name: IRModule from from_onnx} -> one IRModule; helper TIR functions renamed."""
    import tvm  # noqa: F401
    from tvm import relax

    @relax.expr_functor.mutator
    class Rename(relax.PyExprMutator):
        def __init__(self, mapping):
            super().__init__()
            self.mapping = mapping

        def visit_global_var_(self, op):
            return self.mapping.get(op.name_hint, op)

    bb = relax.BlockBuilder()
    for name, mod in mods.items():
        mapping = {}
        for gv, f in mod.functions_items():
            if gv.name_hint != "main":
                new = f"{gv.name_hint}__{name}"
                mapping[gv.name_hint] = bb.add_func(f.with_attr("global_symbol", new), new)
        main = Rename(mapping).visit_expr(mod["main"]).without_attr("params")
        bb.add_func(main.with_attr("global_symbol", name), name)
    return bb.get()


def tvm_target(board: Board):
    import tvm

    if board.cuda:
        return tvm.target.Target(board.target, host=board.host)
    return tvm.target.Target(board.target)


def _progress(total: int, desc: str):
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, leave=False,
                    disable=not sys.stderr.isatty() and os.environ.get("PARAEDGE_PROGRESS") != "1")
    except ImportError:  # tqdm is a host extra; compile still works without a bar
        class _Quiet:
            def update(self, n=1):
                pass

            def set_postfix_str(self, s):
                pass

            def close(self):
                pass

        return _Quiet()


def build_irmodule(model, board: Board, buckets, streaming: bool | None, int8: bool, bar=None,
                   token_divs=TOKEN_DIVS):
    """Every planned function traced, imported and merged: (IRModule, params by key, functions)."""
    import onnx
    import torch
    from tvm.relax.frontend.onnx import from_onnx

    from paraedge_models.export import load_torch_model

    md = model if isinstance(model, ModelDir) else ModelDir(model)
    streaming = md.config.streaming if streaming is None else streaming
    fns = plan(md, buckets, streaming, token_divs)
    torch_model = load_torch_model(md)
    if not board.cuda:
        pack_linears(torch_model)
    enc_m, dec_m, sdec_m = _wrappers(torch_model, streaming, packed=not board.cuda)
    mods, params = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for fn in fns:
            if bar is not None:
                bar.set_postfix_str(fn["name"])
            shapes = fn["inputs"]
            args = tuple(torch.ones(s) if k.endswith("mask") else torch.zeros(s) for k, s in shapes.items())
            module = {"encoder": enc_m, "decoder": dec_m, "stream_decoder": sdec_m}[fn["kind"]]
            outs = ["enc", "alphas"] if fn["kind"] == "encoder" else ["log_probs"]
            if fn["kind"] == "stream_decoder":
                outs += [f"window{i}" for i in range(fn["caches"])]
            path = os.path.join(tmp, fn["name"] + ".onnx")
            _to_onnx(module, args, list(shapes), outs, path)
            if int8:
                from paraedge_tools.compiler.cpu import int8_kernel
                from paraedge_tools.compiler.int8 import int8_matmul_import, quantize_onnx

                quantize_onnx(path)
                with int8_matmul_import(int8_kernel(tvm_target(board))):  # "plain" on CUDA boards
                    mod = from_onnx(onnx.load(path), keep_params_in_input=True)
            else:
                mod = from_onnx(onnx.load(path), keep_params_in_input=True)
            main = mod["main"]
            n_in = int(main.attrs["num_input"])
            keys = []
            for var, value in zip(main.params[n_in:], main.attrs["params"]):
                key, arr = var.name, value.numpy()
                old = params.get(key)
                if old is not None and (old.shape != arr.shape or old.dtype != arr.dtype or not np.array_equal(old, arr)):
                    key = f"{fn['name']}/{key}"  # a shape-specific constant (folded reshape target etc.)
                params[key] = arr
                keys.append(key)
            fn["params"] = keys
            mods[fn["name"]] = mod
            if bar is not None:
                bar.update()
    return _merge(mods), params, fns


def compile_bundle(model: str, board: str | Board, out: str, buckets=DEFAULT_BUCKETS, streaming: bool | None = None,
                   int8: bool = False, tuning_db: str | None = None, log=None, token_divs=TOKEN_DIVS) -> dict:
    """Compile `model` for `board` into the bundle dir `out`; returns the manifest."""
    board = board if isinstance(board, Board) else load_board(board)  # bad profiles fail before heavy imports
    md = ModelDir(model)
    output = OutputDir(out, "manifest.json", BUNDLE_FORMAT, "TVM bundle")  # refuses a folder that is not ours
    try:  # the host toolchain, checked before any work
        import onnx  # noqa: F401
        import torch  # noqa: F401
        import tvm
        from tvm.relax.frontend.onnx import from_onnx  # noqa: F401
    except ImportError as exc:
        if "tvm" in sys.modules and os.environ.get("TVM_USE_RUNTIME_LIB") == "1":
            raise ParaEdgeError("compile needs the TVM compiler, but this process loaded the TVM runtime only "
                                "(TVM_USE_RUNTIME_LIB=1): compile in a separate process") from None
        raise ParaEdgeError(f"compile runs on the host and needs torch, onnx and apache-tvm ({exc.name} is missing: "
                            f"{exc}): pip install 'paraedge[host]'") from None
    log = log or (lambda msg: print(msg, file=sys.stderr))
    cfg = md.config
    streaming = cfg.streaming if streaming is None else streaming
    if int8 and board.cuda:
        raise ParaEdgeError(f"--int8 is for CPU boards; {board.name} is a CUDA board (compile it fp32)")
    bar = _progress(len(plan(md, buckets, streaming, token_divs)) + 3, f"compile {board.name}")
    irmod, params, fns = build_irmodule(md, board, buckets, streaming, int8, bar, token_divs)
    bar.set_postfix_str(f"tvm.compile {tvm_target(board).kind.name}")
    target = tvm_target(board)
    if tuning_db:
        irmod = apply_tuning_db(irmod, target, tuning_db)
    from paraedge_tools.compiler.pipeline import relax_pipeline

    with tvm.transform.PassContext(opt_level=3):
        ex = tvm.compile(irmod, target, relax_pipeline=relax_pipeline(board, target))
    bar.update()
    with output as tmp:
        bar.set_postfix_str("export_library")
        so = os.path.join(tmp, "model.so")
        extra = {}
        if board.cuda:
            from paraedge_tools.compiler.cuda import export_with_cubins

            fcompile = tvm.support.cc.cross_compiler(board.cc) if board.arch == "aarch64" else None
            extra = export_with_cubins(ex, so, board, tmp, fcompile)
        elif board.arch == "aarch64":
            ex.export_library(so, fcompile=tvm.support.cc.cross_compiler(board.cc))
        else:
            ex.export_library(so)
        bar.update()
        np.savez(os.path.join(tmp, "params.npz"), **params)
        for name in MODEL_FILES:
            if md.has(name):  # am.mvn is optional (FunASR applies no CMVN without one)
                shutil.copy(md.file(name), os.path.join(tmp, name))
        bar.update()
        bar.close()
        manifest = {
            "format": BUNDLE_FORMAT,
            "board": {"name": board.name, "arch": board.arch, "features": board.features, "cc": board.cc},
            "target": board.target,
            "host": board.host,
            "tvm_version": tvm.__version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model": {"type": cfg.model, "streaming": streaming, "int8": bool(int8), "hash": model_hash(md),
                      "source": os.path.abspath(md.path), "d_model": cfg.d_model, "vocab_size": cfg.vocab_size},
            "tuning_db": os.path.basename(tuning_db) if tuning_db else None,
            "functions": fns,
            **extra,
        }
        manifest["files"] = digests(tmp, skip="manifest.json")
        with open(os.path.join(tmp, "manifest.json"), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
        size_mb = sum(os.path.getsize(os.path.join(tmp, f)) for f in manifest["files"]) / 1e6
    log(f"wrote {out} ({board.name}, {len(fns)} functions, {size_mb:.1f} MB)")
    return manifest


def apply_tuning_db(irmod, target, db_dir: str):
    """Apply a MetaSchedule database (`paraedge tune`'s database_workload.json +
    database_tuning_record.json) to the module; kernels without a record keep tools/compiler/cpu.py's."""
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    if not os.path.isdir(db_dir):
        raise ParaEdgeError(f"{db_dir}: tuning database not found")
    with target:
        irmod = relax.get_pipeline("zero")(irmod)
    from paraedge_tools.compiler.tune import DB_FILES

    paths = [os.path.join(db_dir, f) for f in DB_FILES]
    for path in paths:
        if not os.path.isfile(path):
            raise ParaEdgeError(f"{path}: missing (a tuning database has {' and '.join(DB_FILES)})")
    db = ms.database.JSONDatabase(*paths, allow_missing=False)
    with target, db:
        return relax.transform.MetaScheduleApplyDatabase()(irmod)


def parse_buckets(text: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        raise ParaEdgeError(f"--buckets: expected comma-separated frame counts, got '{text}'") from None
    if not values or min(values) < 1:
        raise ParaEdgeError("--buckets: need at least one positive frame count")
    return values


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="paraedge compile", description=__doc__.split("\n\n")[0])
    add_args(ap)
    args = ap.parse_args(argv)
    return run(args)


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--board", required=True, help="board profile name (see `paraedge boards`) or a .toml path")
    ap.add_argument("--model", "-m", required=True, help="model dir (FunASR layout)")
    ap.add_argument("-o", "--output", required=True, help="bundle dir to write")
    ap.add_argument("--int8", action="store_true", help="INT8 weights and activations for the matmuls")
    ap.add_argument("--streaming", action="store_true", help="add the streaming chunk shapes (default for ParaformerStreaming)")
    ap.add_argument("--buckets", type=parse_buckets, default=DEFAULT_BUCKETS,
                    help="offline lengths in 60 ms LFR frames to compile (default "
                         + ",".join(map(str, DEFAULT_BUCKETS)) + ")")
    ap.add_argument("--tuning-db", help="a MetaSchedule database dir from `paraedge tune` to apply")


def run(args) -> int:
    compile_bundle(args.model, args.board, args.output, buckets=args.buckets, streaming=args.streaming or None,
                   int8=args.int8, tuning_db=args.tuning_db)
    return 0


if __name__ == "__main__":
    from paraedge_tools import run_main

    run_main(main)
