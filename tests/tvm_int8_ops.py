"""The INT8 ops of TVM bundles (tools/compiler/int8.py), the FSMN rows op and the float16
attention products, as standalone modules, op by op against the numpy reference
(edge/backends/ops.py): the row quantizer and the panel matmul, built from the same TE computes
`paraedge compile --int8` uses and scheduled by the same CPU rules (tensorized `sdot` on dotprod
boards). The rows are static, or symbolic as in a bundle (`8 * q` frames, or any count of tokens,
passed as a leading shape). Shared by the x86 test and the emulated-board test."""

from __future__ import annotations

import numpy as np

M, K, P = 14, 96, 3  # rows not a multiple of 4 or 6, 3 panels of 16 columns


def inputs(seed: int = 0, shape=(M, K)):
    m, k = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, m, k)).astype(np.float32) * np.linspace(0.01, 30, m, dtype=np.float32)[None, :, None]
    x[0, min(3, m - 1)] = 0.0  # an all-zero row
    x[0, min(5, m - 1), :4] = [0.5, -0.5, 1.5, 127.0]  # exact halves after scaling: round half to even
    w_nk = rng.integers(-127, 128, (P * 16, k), dtype=np.int8)  # torch layout [N, K]
    return x, w_nk


def panels(w_nk: np.ndarray) -> np.ndarray:
    """[N, K] -> the panel layout the compiler packs: [N/16, K, 16] -> [N/16, K/4, 16, 4]."""
    from paraedge_tools.compiler.int8 import pack_panels_s8

    n, k = w_nk.shape
    return pack_panels_s8(np.ascontiguousarray(w_nk.T.reshape(k, n // 16, 16).transpose(1, 0, 2)))


def _lengths(rows, symbolic: bool, granule: int = 8):
    """(main's leading parameters, the row count): symbolic, R.Shape([q]) and rows = granule * q,
    as bundles bind their lengths (frames 8 * q; a streaming chunk's tokens any count on dotprod
    boards, granule 1); static, none and `rows`."""
    from tvm import relax, tirx

    if not symbolic:
        return [], rows
    q = tirx.Var("q", "int64")
    return [relax.Var("lengths", relax.ShapeType([q]))], q * granule if granule > 1 else q


def _main_input(rows, cols: int, symbolic: bool, granule: int = 8):
    """main's parameters (_lengths), then x [1, rows, cols]."""
    from tvm import relax

    params, rows = _lengths(rows, symbolic, granule)
    return params, relax.Var("x", relax.TensorType([1, rows, cols], "float32"))


def _export(mod, board, path: str) -> None:
    """Compile `mod` with the board's CPU pipeline (what `paraedge compile` uses) and export it."""
    import tvm

    from paraedge_tools.compiler.compile import tvm_target
    from paraedge_tools.compiler.pipeline import relax_pipeline

    target = tvm_target(board)
    with tvm.transform.PassContext(opt_level=3):
        ex = tvm.compile(mod, target, relax_pipeline=relax_pipeline(board, target))
    if board.arch == "aarch64":
        ex.export_library(path, fcompile=tvm.support.cc.cross_compiler(board.cc))
    else:
        ex.export_library(path)


def build(board: str, path: str, shape=(M, K), symbolic: bool = False, granule: int = 8) -> None:
    """Compile the two-op module of x [1, M, K] for `board` and export it to `path`; symbolic:
    M is `granule * q` (8: a multiple of 8; 1: any count), q given by a leading R.Shape([q])."""
    from tvm import relax

    from edge.boards import load_board
    from paraedge_tools.compiler.compile import tvm_target
    from paraedge_tools.compiler.cpu import int8_kernel
    from paraedge_tools.compiler.graphs import int8_computes
    from paraedge_tools.compiler.int8 import column_sums

    m, k = shape
    _, w_nk = inputs(shape=shape)
    b = load_board(board)
    kernel = int8_kernel(tvm_target(b))
    te = int8_computes(kernel)
    params, x = _main_input(m, k, symbolic, granule)
    bb = relax.BlockBuilder()
    with bb.function("main", [*params, x]):
        with bb.dataflow():
            fn, extra = te["quantize_rows_s8"]
            quant = bb.emit_te(fn, x, *extra, primfunc_name_hint="quantize_rows_s8")
            xq, sx = bb.emit(relax.TupleGetItem(quant, 0)), bb.emit(relax.TupleGetItem(quant, 1))
            w4 = panels(w_nk)
            if kernel == "vnni":  # its column sums: a weight of their own
                fn, _ = te["matmul_u8s8_panels"]
                acc = bb.emit_te(fn, xq, relax.const(w4), relax.const(column_sums(w4)), primfunc_name_hint="matmul_s8_panels")
            else:
                fn, extra = te["matmul_s8_panels"]
                acc = bb.emit_te(fn, xq, relax.const(w4), *extra, primfunc_name_hint="matmul_s8_panels")
            out = bb.emit_output(relax.Tuple([xq, sx, acc]))
        bb.emit_func_output(out)
    _export(bb.get(), b, path)


def fsmn_rows(frames: int, d: int = 32) -> np.ndarray:
    """FSMN input rows x [1, frames, d]."""
    return np.random.default_rng(1).standard_normal((1, frames, d)).astype(np.float32)


def fsmn_taps(d: int = 32, k: int = 11) -> np.ndarray:
    """FSMN taps [k, d] (k odd: FunASR's symmetric padding), baked into the module as a constant."""
    return np.random.default_rng(2).standard_normal((k, d)).astype(np.float32) * np.float32(0.3)


def build_fsmn(board: str, path: str, frames: int, symbolic: bool = False, d: int = 32) -> None:
    """The FSMN memory in rows (paraedge_tools.compiler.graphs.fsmn_rows_te after the zero
    padding along T, as the CPU graphs call it) as a module for `board`, scheduled by the CPU rules;
    symbolic: frames = 8 * q, q given by a leading R.Shape([q])."""
    from tvm import relax, topi

    from edge.boards import load_board
    from paraedge_tools.compiler.graphs import fsmn_rows_te

    taps = fsmn_taps(d)
    left = (taps.shape[0] - 1) // 2
    params, x = _main_input(frames, d, symbolic)
    bb = relax.BlockBuilder()
    with bb.function("main", [*params, x]):
        with bb.dataflow():
            xp = bb.emit_te(topi.nn.pad, x, [0, left, 0], [0, left, 0], primfunc_name_hint="pad")
            y = bb.emit_te(fsmn_rows_te, xp, relax.const(taps), primfunc_name_hint="fsmn_rows")
            out = bb.emit_output(relax.Tuple([y]))
        bb.emit_func_output(out)
    _export(bb.get(), load_board(board), path)


def check_fsmn(out, frames: int, d: int = 32) -> None:
    """fsmn_rows against edge/backends/ops.py's depthwise conv over the zero-padded rows (float32
    sums; TVM's fused multiply-adds round once where numpy rounds twice)."""
    from edge.backends import ops

    x, taps = fsmn_rows(frames, d), fsmn_taps(d)
    left = (taps.shape[0] - 1) // 2
    ref = ops.depthwise_conv1d(np.pad(x[0], ((left, left), (0, 0))), taps, frames)
    np.testing.assert_allclose(out["arr_0"][0], ref, rtol=1e-5, atol=1e-5)


def f16_operands(frames: int, d: int = 32, heads: int = 2) -> dict:
    """The two attention products' operands in float16, shaped as attend() passes them: queries
    [1, h, T, d] and keys transposed [1, h, d, T] (scores), probabilities [1, h, T, T] (rows
    summing to 1) and values [1, h, T, d] (context)."""
    rng = np.random.default_rng(3)
    p = rng.random((1, heads, frames, frames)) ** 4
    x = {"a_q": rng.standard_normal((1, heads, frames, d)), "b_kt": rng.standard_normal((1, heads, d, frames)) * 2,
         "c_p": p / p.sum(-1, keepdims=True), "d_v": rng.standard_normal((1, heads, frames, d)) * 3}
    return {k: v.astype(np.float16) for k, v in x.items()}


def build_matmul_f16(board: str, path: str, frames: int, symbolic: bool = False, d: int = 32, heads: int = 2) -> None:
    """The float16 attention products (paraedge_tools.compiler.graphs.matmul_f16_te) as a module for
    `board`: main(q, kT, p, v) -> (q @ kT, p @ v), scheduled by the CPU rules; symbolic: frames =
    8 * q, q given by a leading R.Shape([q])."""
    from tvm import relax

    from edge.boards import load_board
    from paraedge_tools.compiler.graphs import matmul_f16_te

    params, frames = _lengths(frames, symbolic)
    shapes = {"a_q": [1, heads, frames, d], "b_kt": [1, heads, d, frames], "c_p": [1, heads, frames, frames],
              "d_v": [1, heads, frames, d]}
    args = {k: relax.Var(k, relax.TensorType(v, "float16")) for k, v in shapes.items()}
    bb = relax.BlockBuilder()
    with bb.function("main", [*params, *args.values()]):
        with bb.dataflow():
            scores = bb.emit_te(matmul_f16_te, args["a_q"], args["b_kt"], primfunc_name_hint="matmul_f16")
            context = bb.emit_te(matmul_f16_te, args["c_p"], args["d_v"], primfunc_name_hint="matmul_f16")
            out = bb.emit_output(relax.Tuple([scores, context]))
        bb.emit_func_output(out)
    _export(bb.get(), load_board(board), path)


def check_matmul_f16(out, frames: int) -> None:
    """Both products bit-exact against edge/backends/ops.py's matmul_f16 (float16 sums, k in order,
    one rounding a step: the tiles' fused multiply-adds), and within float16's precision of the
    float64 product."""
    from edge.backends import ops

    x = f16_operands(frames)
    for i, (a, b) in enumerate((("a_q", "b_kt"), ("c_p", "d_v"))):
        got, ref = out[f"arr_{i}"], ops.matmul_f16(x[a], x[b])
        assert got.dtype == np.float16
        np.testing.assert_array_equal(got, ref)
        exact = np.matmul(x[a].astype(np.float64), x[b].astype(np.float64))
        np.testing.assert_allclose(got, exact, rtol=2e-2, atol=2e-2 * np.abs(exact).max())


def dynamic_symbols(so: str) -> str:
    """The dynamic symbol table of a shared object (binutils' objdump reads any arch), as text."""
    import subprocess

    return subprocess.run(["objdump", "-T", so], capture_output=True, text=True, check=True).stdout


# run.py MODULE IN.npz OUT.npz: main() of a module on the npz's arrays (in name order; an int64
# array named "0_lengths" is passed as a shape), runtime only; its outputs saved as arr_0, arr_1,
# ... (also used by the emulated board's fp32 op test)
RUN = """
import os, sys
os.environ["TVM_USE_RUNTIME_LIB"] = "1"
import numpy as np, tvm
from tvm.runtime.vm import VirtualMachine
vm = VirtualMachine(tvm.runtime.load_module(sys.argv[1]), tvm.cpu())
ins = np.load(sys.argv[2])
args = [tvm.runtime.ShapeTuple([int(v) for v in ins[k]]) if k == "0_lengths" else tvm.runtime.tensor(ins[k])
        for k in sorted(ins.files)]
outs = vm["main"](*args)
np.savez(sys.argv[3], *[o.numpy() for o in outs])
"""


def check(out, shape=(M, K)) -> None:
    """TVM's results against edge/backends/ops.py: int8 rows and int32 products exact."""
    from edge.backends import ops
    from paraedge_tools.compiler.int8 import EPS, panels_s8_reference

    x, w_nk = inputs(shape=shape)
    xq, sx, acc = out["arr_0"], out["arr_1"], out["arr_2"]
    if xq.dtype == np.uint8:  # the VNNI operand: q + 128
        xq = (xq.astype(np.int16) - 128).astype(np.int8)
    q_ref, s_ref = ops.quantize_rows_s8(x[0])
    np.testing.assert_array_equal(xq[0], q_ref)
    np.testing.assert_allclose(sx[0, :, 0], np.maximum(s_ref, np.float32(EPS / 127)), rtol=1e-7)
    acc_ref = ops.gemm_s8s32(xq[0], w_nk)  # [M, N]
    np.testing.assert_array_equal(acc[0], acc_ref)
    np.testing.assert_array_equal(acc, panels_s8_reference(xq, panels(w_nk)))


def scores_operands(t1: int, t2: int, d: int = 64) -> dict:
    """Queries [1, t1, d] and keys [1, t2, d] for the int8 scores: rows of very different scales,
    an all-zero key row."""
    rng = np.random.default_rng(3)
    q = rng.standard_normal((1, t1, d)).astype(np.float32) * np.linspace(0.05, 9, t1, dtype=np.float32)[None, :, None]
    k = rng.standard_normal((1, t2, d)).astype(np.float32) * np.linspace(3, 0.02, t2, dtype=np.float32)[None, :, None]
    k[0, min(2, t2 - 1)] = 0.0
    return {"a_q": q, "b_k": k}


def build_scores_s8(board: str, path: str, t1: int, t2: int, heads: int = 2, any_rows: bool = False) -> None:
    """The int8 attention scores (paraedge_tools.compiler.graphs.scores_s8) traced from torch and
    imported as a bundle's graphs are (ModuleBuilder: the quantizers, the key packing, the `sdot`
    product and its dequant fused by TVM), for `board`: main(R.Shape([t2 / 8, t1 / g]), q, k) ->
    (scores,), g = 1 with `any_rows` (the streaming decoder's tokens: the plain schedule), else 4."""
    import torch

    from edge.boards import load_board
    from paraedge_tools.compiler import graphs

    class Scores(torch.nn.Module):
        def forward(self, q, k):
            return (graphs.scores_s8(q, k, heads),)

    x = scores_operands(t1, t2)
    builder = graphs.ModuleBuilder("sdot")
    builder.add("main", Scores(), {k: list(v.shape) for k, v in x.items()}, {"a_q": {1: "N"}, "b_k": {1: "T"}},
                granules={"N": 1 if any_rows else graphs.GRANULE_N})
    _export(builder.get(), load_board(board), path)


def check_scores_s8(out, t1: int, t2: int, heads: int = 2) -> None:
    """The scores bit-exact against edge/backends/ops.py's scores_s8."""
    from edge.backends import ops

    x = scores_operands(t1, t2)
    np.testing.assert_array_equal(out["arr_0"][0], ops.scores_s8(x["a_q"][0], x["b_k"][0], heads))


def context_operands(t1: int, t2: int, d: int = 64, valid: int | None = None) -> dict:
    """Attention scores [1, 2, t1, t2] (softmax_scores' rows: mixed scales, the keys from `valid`
    masked), values [1, t2, d] of per-channel scales from 0.01 to 30 (a padded key's row large: the
    mask keeps it out of the channel scales) and the key mask [1, t2]."""
    rng = np.random.default_rng(7)
    valid = t2 - 3 if valid is None else valid
    scores = softmax_scores(t1, t2)
    scores[..., valid:] = -1e4
    v = rng.standard_normal((1, t2, d)).astype(np.float32) * np.geomspace(0.01, 30, d, dtype=np.float32)
    v[0, valid:] = 1e3
    mask = np.zeros((1, t2), np.float32)
    mask[0, :valid] = 1
    return {"a_scores": scores, "b_v": v, "c_mask": mask}


def build_context_s8(board: str, path: str, t1: int, t2: int, heads: int = 2) -> None:
    """The int8 attention softmax and context (paraedge_tools.compiler.graphs.context_s8) traced
    from torch and imported as a bundle's encoder is (ModuleBuilder): main(R.Shape([t2 / 8,
    t1 / 8]), scores, v, mask) -> (context,)."""
    import torch

    from edge.boards import load_board
    from paraedge_tools.compiler import graphs

    class Context(torch.nn.Module):
        def forward(self, scores, v, mask):
            return (graphs.context_s8(scores, v, heads, mask),)

    x = context_operands(t1, t2)
    builder = graphs.ModuleBuilder("sdot")
    builder.add("main", Context(), {k: list(v.shape) for k, v in x.items()},
                {"a_scores": {2: "N", 3: "T"}, "b_v": {1: "T"}, "c_mask": {1: "T"}}, granules={"N": graphs.GRANULE_T})
    _export(builder.get(), load_board(board), path)


def check_context_s8(out, t1: int, t2: int, heads: int = 2) -> None:
    """The context against edge/backends/ops.py's context_s8: mostly bit-exact, and within 0.2 % of
    a channel's largest output where the kernels' fused multiply-adds round an exp to another int8
    weight (measured: all equal, or 97 % equal and 0.09 % off); within 5 % of float32 attention."""
    from edge.backends import ops

    x = context_operands(t1, t2)
    got = out["arr_0"][0]
    ref = ops.context_s8(x["a_scores"][0], x["b_v"][0], heads, x["c_mask"][0])
    assert got.shape == ref.shape == (t1, x["b_v"].shape[-1])
    worst = (np.abs(got - ref) / np.abs(ref).max(axis=0)).max()
    assert worst <= 2e-3, f"int8 context: {worst:.4f} of a channel's largest output off the reference"
    assert np.mean(got == ref) >= 0.9
    p = ops.softmax(x["a_scores"][0])
    exact = (p @ x["b_v"][0].reshape(t2, heads, -1).transpose(1, 0, 2)).transpose(1, 0, 2).reshape(t1, -1)
    worst = (np.abs(got - exact) / np.abs(exact).max(axis=0)).max()
    assert worst <= 5e-2, f"int8 context: {worst:.4f} of a channel's largest output off float32 attention"


def softmax_scores(rows: int, keys: int) -> np.ndarray:
    """Attention scores [1, 2, rows, keys] as the softmax sees them: mixed scales, the last keys
    masked (-1e4), one row constant."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 2, rows, keys)).astype(np.float32) * np.linspace(0.1, 12, rows, dtype=np.float32)[:, None]
    x[..., keys - 3:] = -1e4
    x[0, 0, 1] = 0.5
    return x


def build_softmax_f16(board: str, path: str, rows: int, keys: int) -> None:
    """The float16 softmax (paraedge_tools.compiler.graphs.softmax_f16_te) as a module for `board`,
    scheduled by the CPU rules, keys symbolic (8 * q) as bundles compile them."""
    from tvm import relax

    from edge.boards import load_board
    from paraedge_tools.compiler.graphs import softmax_f16_te

    params, keys = _lengths(keys, True)
    x = relax.Var("x", relax.TensorType([1, 2, rows, keys], "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [*params, x]):
        with bb.dataflow():
            out = bb.emit_output(relax.Tuple([bb.emit_te(softmax_f16_te, x, primfunc_name_hint="softmax_f16")]))
        bb.emit_func_output(out)
    _export(bb.get(), load_board(board), path)


def check_softmax_f16(got: np.ndarray, x: np.ndarray) -> None:
    """Against edge/backends/ops.py's softmax_f16: within 2 float16 units in the last place (the
    kernels fuse multiply-adds the reference rounds twice), the same zeros; rows sum to 1."""
    from edge.backends import ops

    ref = ops.softmax_f16(x)
    assert got.dtype == np.float16 and got.shape == ref.shape
    np.testing.assert_array_equal(got == 0, ref == 0)
    ulp = np.spacing(np.abs(ref).astype(np.float16)).astype(np.float32)
    assert np.all(np.abs(got.astype(np.float32) - ref.astype(np.float32)) <= 2 * ulp)
    np.testing.assert_allclose(got.astype(np.float32).sum(-1), 1.0, atol=5e-3)
