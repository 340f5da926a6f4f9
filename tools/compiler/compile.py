"""`paraedge compile`: a model dir -> a TVM artifact bundle for one board (host side).

Needs torch (to trace the graphs) and apache-tvm (the compiler). Per board:
torch model -> its three graphs traced with symbolic lengths (tools/compiler/graphs.py:
torch.export, TVM's Relax importer, weights kept as function inputs) -> one IRModule ->
`tvm.compile(mod, board target)` with the board's schedules -> `export_library` with the board's
cross compiler. One function per graph serves every length: no shape buckets.

The bundle (a device model dir): model.so, params.npz (every weight once, shared by the
functions), config.yaml, am.mvn, tokens.json, manifest.json (board, target, TVM version,
functions with their inputs and length multiples, model hash, sha256 of every file); CUDA boards
also get cubins/*.cubin (compiled on the host with NVRTC, see tools/compiler/cuda.py).

Measured on this 2-core host (demo model, raspberry-pi-5, INT8; bench/tvm_bench.py): 21 s to
compile, 1.2 MB of code + 9.4 MB of weights (10.6 MB in all), where 107 shape-bucketed functions
took 5 min 48 s and 46.3 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings

import numpy as np

from edge.asr.modeldir import MODEL_FILES, ModelDir, model_hash
from edge.backends.tvm import BUNDLE_FORMAT
from edge.boards import Board, load_board
from edge.errors import ParaEdgeError
from paraedge_tools.output import OutputDir, digests

def plan(md: ModelDir, streaming: bool | None = None, stream_granule_n: int | None = None,
         attention: str = "float32") -> list[dict]:
    """Every function the bundle will hold: name, kind, inputs (shapes over the symbols T, N),
    the multiples the runtime pads T and N to (the streaming decoder's N: graphs.stream_granule_n
    of the board's int8 kernel). With int8 attention the encoder is two functions: "encoder" up
    to graphs.INT8_SCORES_MIN_FRAMES frames (`max_frames`; float16 attention), "encoder_long" past
    them (int8 scores, softmax and context)."""
    from paraedge_tools.compiler.graphs import GRANULE_N, GRANULE_T, INT8_SCORES_MIN_FRAMES

    cfg = md.config
    streaming = cfg.streaming if streaming is None else streaming
    if streaming and not cfg.streaming:
        raise ParaEdgeError(f"{md.path} is an offline model ({cfg.model}); --streaming needs ParaformerStreaming")
    d, din = cfg.d_model, cfg.input_size
    dec_in = {"enc": [1, "T", d], "mask": [1, "T"], "embeds": [1, "N", d], "tmask": [1, "N"]}
    fns = [{"name": "encoder", "kind": "encoder", "inputs": {"x": [1, "T", din], "mask": [1, "T"]},
            "lengths": {"T": GRANULE_T}},
           {"name": "decoder", "kind": "decoder", "inputs": dec_in, "lengths": {"T": GRANULE_T, "N": GRANULE_N}}]
    if streaming:
        k = int(cfg.decoder_conf.get("kernel_size", 21))
        n_caches = _stream_cache_count(md)
        ins = dict(dec_in, **{f"cache{i}": [1, d, k - 1] for i in range(n_caches)})
        fns.append({"name": "stream_decoder", "kind": "stream_decoder", "inputs": ins,
                    "lengths": {"T": GRANULE_T, "N": stream_granule_n or GRANULE_N}, "kernel": k, "caches": n_caches})
    if attention == "int8":
        fns.insert(1, dict(fns[0], name="encoder_long"))
        fns[0]["max_frames"] = INT8_SCORES_MIN_FRAMES
    return fns


def _stream_cache_count(md: ModelDir) -> int:
    dec = md.config.decoder_conf
    att = int(dec.get("att_layer_num", 6))
    extra = int(dec.get("num_blocks", 6)) - att
    return att + (extra if extra > 1 else 0)


# -- compile --------------------------------------------------------------------------------
def tvm_target(board: Board):
    import tvm

    if board.cuda:
        return tvm.target.Target(board.target, host=board.host)
    return tvm.target.Target(board.target)


LOG = logging.getLogger("paraedge.compile")


@contextlib.contextmanager
def toolchain_output():
    """What torch.export and TVM print while a bundle compiles (TVM's C++ warnings go straight to
    file descriptor 2, e.g. 'Fast mode segfaults when there are out-of-bounds indices' for every
    gather; torch's FutureWarnings) is routed to the `paraedge.compile` logger at DEBUG, shown
    with `paraedge compile -v`. Yields the real stderr, for the one progress bar."""
    sys.stderr.flush()
    saved = os.dup(2)
    real = os.fdopen(os.dup(saved), "w")
    with tempfile.TemporaryFile() as captured, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        os.dup2(captured.fileno(), 2)
        try:
            yield real
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            real.close()
            captured.seek(0)
            for line in captured.read().decode("utf-8", "replace").splitlines():
                if line.strip():
                    LOG.debug("toolchain: %s", line)
            for w in caught:
                LOG.debug("toolchain: %s: %s", w.category.__name__, w.message)


def _progress(total: int, desc: str, stream):
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="step", file=stream, leave=False,
                    disable=not stream.isatty() and os.environ.get("PARAEDGE_PROGRESS") != "1")
    except ImportError:  # tqdm is a host extra; compile still works without a bar
        class _Quiet:
            def update(self, n=1):
                pass

            def set_postfix_str(self, s):
                pass

            def close(self):
                pass

        return _Quiet()


ATTENTION = ("int8", "float16", "float32")


def attention_dtype(board: Board, int8: bool, attention: str | None = None) -> str:
    """How an INT8 bundle computes the attention products (`attention`; None: the board's best):
    "int8", the scores from int8 queries and keys (graphs.scores_s8, `sdot`) and the context in
    float16, on boards with both the dot product and half-precision arithmetic; "float16", both
    products in float16 (graphs.matmul_f16_op), on boards with half-precision arithmetic;
    "float32" anywhere (and always without --int8).

    Measured on the emulated A76 (anchor model, 10 s, offline), M instructions per audio second:
    the attention products 7.2 (float32) -> 3.9 (float16); the whole decode 36.4 -> 33.3 with
    float16. On the demo's held-out sets the tokens stay the fp32 reference's
    (bench/arm_int8_agreement.py)."""
    from paraedge_tools.compiler.cpu import has_dotprod, has_fp16

    if attention not in (None, *ATTENTION):
        raise ParaEdgeError(f"attention {attention!r}: choose one of {', '.join(ATTENTION)}")
    target = None if board.cuda else tvm_target(board)
    f16 = int8 and target is not None and has_fp16(target)
    s8 = f16 and has_dotprod(target)
    best = "int8" if s8 else "float16" if f16 else "float32"
    if attention is None:
        return best
    if ATTENTION.index(attention) < ATTENTION.index(best):
        need = "the dot product (+dotprod) and half-precision arithmetic" if attention == "int8" else \
            "half-precision arithmetic (+fullfp16)"
        raise ParaEdgeError(f"{attention} attention is for INT8 bundles on boards with {need}; "
                            f"{board.name}{'' if int8 else ' without --int8'} has {best} at best")
    return attention


def build_irmodule(model, board: Board, streaming: bool | None, int8: bool, bar=None, attention: str = "float32"):
    """Every planned function traced and imported into one IRModule: (IRModule, params by name,
    functions). `attention`: the attention products' dtype (attention_dtype)."""
    from paraedge_models.export import load_torch_model
    from paraedge_tools.compiler import graphs

    md = model if isinstance(model, ModelDir) else ModelDir(model)
    streaming = md.config.streaming if streaming is None else streaming
    kernel = "plain"
    if int8:
        from paraedge_tools.compiler.cpu import int8_kernel

        kernel = int8_kernel(tvm_target(board))
    fns = plan(md, streaming, graphs.stream_granule_n(kernel), attention)
    modules = dict(zip(("encoder", "decoder", "stream_decoder"),
                       graphs.wrappers(load_torch_model(md), streaming, graphs.linear_mode(board.cuda, int8, kernel),
                                       attention)))
    builder = graphs.ModuleBuilder(kernel, decompose=board.cuda)
    params, long_fns = {}, []
    for fn in fns:
        if bar is not None:
            bar.set_postfix_str(f"trace {fn['name']}")
        # trace at lengths that are multiples of the granules, distinct so torch.export keeps T and N apart
        sizes = {"T": 3 * graphs.GRANULE_T, "N": 2 * max(2, fn["lengths"].get("N", graphs.GRANULE_N))}
        shapes = {k: [sizes.get(v, v) for v in s] for k, s in fn["inputs"].items()}
        lengths = {k: {i: v for i, v in enumerate(s) if v in sizes} for k, s in fn["inputs"].items()}
        graph_frames = graphs.GRAPH_MAX_FRAMES if board.cuda else 0
        # short inputs (a streaming chunk, a command) keep float16 scores: traced with the seam off
        short = graphs.float16_scores(modules["encoder"]) if "max_frames" in fn else contextlib.nullcontext()
        with short:
            fn_params, fn["params"] = builder.add(fn["name"], modules[fn["kind"]], shapes, lengths, graph_frames,
                                                  fn["lengths"])
        if graph_frames:
            long_fns.append(dict(fn, name=f"{fn['name']}_long"))
            fn["graph_frames"] = graph_frames
        for key, arr in fn_params.items():
            old = params.get(key)
            if old is not None and (old.shape != arr.shape or old.dtype != arr.dtype or not np.array_equal(old, arr)):
                raise ParaEdgeError(f"compile: two graphs disagree on weight {key}")  # a tracing bug, not user input
            params[key] = arr
        if bar is not None:
            bar.update()
    return builder.get(), params, fns + long_fns


def compile_bundle(model: str, board: str | Board, out: str, streaming: bool | None = None,
                   int8: bool = False, log=None, attention: str | None = None) -> dict:
    """Compile `model` for `board` into the bundle dir `out`; returns the manifest. `attention`:
    see attention_dtype (None: the board's best)."""
    board = board if isinstance(board, Board) else load_board(board)  # bad profiles fail before heavy imports
    md = ModelDir(model)
    output = OutputDir(out, "manifest.json", BUNDLE_FORMAT, "TVM bundle")  # refuses a folder that is not ours
    try:  # the host toolchain, checked before any work
        import torch  # noqa: F401
        import tvm  # noqa: F401
        from tvm.relax.frontend.torch import from_exported_program  # noqa: F401
    except ImportError as exc:
        if "tvm" in sys.modules and os.environ.get("TVM_USE_RUNTIME_LIB") == "1":
            raise ParaEdgeError("compile needs the TVM compiler, but this process loaded the TVM runtime only "
                                "(TVM_USE_RUNTIME_LIB=1): compile in a separate process") from None
        raise ParaEdgeError(f"compile runs on the host and needs torch and apache-tvm ({exc.name} is missing: "
                            f"{exc}): pip install 'paraedge[host]'") from None
    log = log or (lambda msg: print(msg, file=sys.stderr))
    cfg = md.config
    streaming = cfg.streaming if streaming is None else streaming
    if int8 and board.cuda:
        raise ParaEdgeError(f"--int8 is for CPU boards; {board.name} is a CUDA board (compile it fp32)")
    with toolchain_output() as stderr:
        manifest, size_mb = _compile_into(output, md, board, streaming, int8, stderr, attention)
    log(f"wrote {out} ({board.name}, {len(manifest['functions'])} functions, {size_mb:.1f} MB)")
    return manifest


def _compile_into(output: OutputDir, md: ModelDir, board: Board, streaming: bool, int8: bool, stderr,
                  attention: str | None = None):
    """compile_bundle's work, its progress bar on `stderr`: (manifest, bundle MB)."""
    import tvm

    cfg = md.config
    attention = attention_dtype(board, int8, attention)
    bar = _progress(len(plan(md, streaming, attention=attention)) + 3, f"compile {board.name}", stderr)
    irmod, params, fns = build_irmodule(md, board, streaming, int8, bar, attention)
    target = tvm_target(board)
    bar.set_postfix_str(f"tvm.compile {target.kind.name}")
    from paraedge_tools.compiler.pipeline import relax_pipeline

    with tvm.transform.PassContext(opt_level=3, config={"relax.backend.use_cuda_graph": bool(board.cuda)}):
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
            "model": {"type": cfg.model, "streaming": streaming, "int8": bool(int8), "attention": attention,
                      "hash": model_hash(md),
                      "source": os.path.abspath(md.path), "d_model": cfg.d_model, "vocab_size": cfg.vocab_size},
            "functions": fns,
            **extra,
        }
        manifest["files"] = digests(tmp, skip="manifest.json")
        with open(os.path.join(tmp, "manifest.json"), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
        size_mb = sum(os.path.getsize(os.path.join(tmp, f)) for f in manifest["files"]) / 1e6
    return manifest, size_mb


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
    ap.add_argument("--attention", choices=ATTENTION,
                    help="with --int8: how the attention products run (default: the board's best; on a "
                         "Cortex-A76 int8: the scores, and the encoder's softmax and context past 64 frames)")
    ap.add_argument("--fp32-attention", action="store_true", help="the same as --attention float32")
    ap.add_argument("--verbose", "-v", action="store_true", help="show the toolchain's own warnings (torch, TVM)")
    ap.add_argument("--streaming", action="store_true", help="add the streaming decoder (default for ParaformerStreaming)")


def run(args) -> int:
    if args.verbose:  # the toolchain's own warnings (see toolchain_output)
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
        LOG.setLevel(logging.DEBUG)
    compile_bundle(args.model, args.board, args.output, streaming=args.streaming or None,
                   int8=args.int8, attention="float32" if args.fp32_attention else args.attention)
    return 0


if __name__ == "__main__":
    from paraedge_tools import run_main

    run_main(main)
