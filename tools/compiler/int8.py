"""INT8 for TVM bundles (host side): real int8 x int8 -> int32 matmuls, not fake-quant.

TVM's ONNX importer turns QDQ graphs into float fake-quant and has no ConvInteger/QLinear*, so
the INT8 graph is arranged here, on the static-shape ONNX of each function, for every MatMul
whose B is a weight:
- weights: symmetric per output channel, int8 initializers (a quarter of the fp32 bytes);
- activations: symmetric per row (dynamic: amax of each row / 127), rounded half-to-even to int8
  by one `ai.paraedge.QuantizeRowsS8` node (the arithmetic of edge.backends.ops.quantize_rows_s8; TVM's own
  lowering of ONNX Div/Round/Clip/Cast took half as many instructions as the INT8 matmuls it fed);
- the int8 product -> int32, then `* s_x * s_w` back to float (bias etc. stay float).

The packed Linears (weight panels [N/16, K, 16], see tools/compiler/compile.py) become one
`ai.paraedge.MatMulS8Panels` node whose int8 weight is stored [N/16, K/4, 16, 4]: for 16 output
columns, 4 consecutive k of each column are 4 adjacent bytes. That is the operand layout of the
aarch64 dot-product instruction (`sdot`: 4 int32 lanes += 4 x 4 int8 products), so one 16-byte
load of weights feeds one `sdot` per row of the tile. `int8_matmul_import()`
teaches the importer that node (a TE compute, block `matmul_s8`, scheduled by tools/compiler/cpu.py
and tensorized with `sdot_intrin()` on dotprod boards; on x86 AVX2, which has no int8 dot
product, a k-pair-split compute tensorized with `pmaddwd_intrin()` on int16 activation rows) and
maps the other, zero-point-free MatMulIntegers (the few unpacked weights) to one
matmul(int8, int8, out_dtype=int32).
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np

DOMAIN = "ai.paraedge"
PANELS_OP = "MatMulS8Panels"
QUANT_OP = "QuantizeRowsS8"  # x -> (int8 rows, per-row scale [.., 1]): edge.backends.ops.quantize_rows_s8
EPS = 1e-12  # an all-zero row: scale EPS / 127 and zeros, where the numpy reference has scale 0
PANEL_K = 4  # k values per sdot lane


def pack_panels_s8(wq: np.ndarray) -> np.ndarray:
    """int8 panels [P, K, 16] -> [P, K/4, 16, 4] (4 consecutive k of a column adjacent)."""
    p, k, j = wq.shape
    return np.ascontiguousarray(wq.reshape(p, k // PANEL_K, PANEL_K, j).transpose(0, 1, 3, 2))


def panels_s8_reference(xq: np.ndarray, w4: np.ndarray) -> np.ndarray:
    """What MatMulS8Panels computes: int8 x [1, M, K] and w [P, K/4, 16, 4] -> exact int32 [P, M, 16]."""
    p, kb, j, kv = w4.shape
    w = w4.transpose(0, 1, 3, 2).reshape(p, kb * kv, j).astype(np.int32)  # back to [P, K, 16]
    return np.matmul(xq[0].astype(np.int32)[None], w)


def quantize_onnx(path: str) -> int:
    """Rewrite `path` in place; returns the number of quantized MatMuls."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load(path)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    nodes, count = [], 0
    for node in g.node:
        w = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if w is None or w.data_type != TensorProto.FLOAT or len(w.dims) not in (2, 3):
            nodes.append(node)
            continue
        wf = numpy_helper.to_array(w).astype(np.float32)
        # the K axis is the second-to-last: [K, N] or packed panels [N/16, K, 16]
        sw = np.maximum(np.abs(wf).max(axis=-2, keepdims=True), 1e-12) / 127.0
        wq = np.clip(np.round(wf / sw), -127, 127).astype(np.int8)
        panels = wq.ndim == 3 and wq.shape[1] % PANEL_K == 0
        p = f"q8_{w.name}"  # named after the weight: every shape's function shares the int8 copy
        g.initializer.extend([numpy_helper.from_array(pack_panels_s8(wq) if panels else wq, p + "_w"),
                              numpy_helper.from_array(sw.astype(np.float32), p + "_sw")])
        x, y = node.input[0], node.output[0]
        matmul = (helper.make_node(PANELS_OP, [p + "_xq", p + "_w"], [p + "_acc"], domain=DOMAIN) if panels
                  else helper.make_node("MatMulInteger", [p + "_xq", p + "_w"], [p + "_acc"]))
        nodes += [
            helper.make_node(QUANT_OP, [x], [p + "_xq", p + "_sx"], domain=DOMAIN),
            matmul,
            helper.make_node("Cast", [p + "_acc"], [p + "_accf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [p + "_accf", p + "_sx"], [p + "_y1"]),
            helper.make_node("Mul", [p + "_y1", p + "_sw"], [y]),
        ]
        count += 1
    used = {i for n in nodes for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    del g.node[:]
    g.node.extend(nodes)
    if not any(o.domain == DOMAIN for o in m.opset_import):
        m.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    onnx.save(m, path)
    return count


def panels_s8_te(x, w):
    """TE compute of MatMulS8Panels: C[p, m, j] = sum_k x[0, m, k] * w[p, k/4, j, k%4] (int32)."""
    from tvm import te

    kk = te.reduce_axis((0, int(x.shape[-1])), name="k")
    p, _, j, _ = (int(s) for s in w.shape)
    return te.compute((p, int(x.shape[-2]), j),
                      lambda pi, m, ji: te.sum(x[0, m, kk].astype("int32")
                                               * w[pi, kk // PANEL_K, ji, kk % PANEL_K].astype("int32"), axis=kk),
                      name="matmul_s8")


def panels_s8_pairs_te(x, w):
    """MatMulS8Panels for x86 AVX2 (no int8 dot product): the same sum, split by k pairs.

    `vpmaddwd` multiplies 16 int16 pairs and adds each pair into an int32 lane: fed 4 columns x
    4 k of a panel (16 bytes, sign-extended) and a row's 4 k broadcast, lane 2c+h holds column c's
    k pair h. So the accumulator is C2[p, m, j, h] (pair h = k % 4 // 2) and a fold
    C[p, m, j] = C2[.., 0] + C2[.., 1] ends each tile. Products of int8 values in int16 lanes are
    exact, as are their pair sums (2 * 127 * 127 < 2^31)."""
    from tvm import te

    kg = te.reduce_axis((0, int(x.shape[-1]) // PANEL_K), name="kg")
    kk = te.reduce_axis((0, 2), name="kk")
    p, _, j, _ = (int(s) for s in w.shape)
    pairs = te.compute((p, int(x.shape[-2]), j, 2),
                       lambda pi, m, ji, h: te.sum(x[0, m, kg * PANEL_K + h * 2 + kk].astype("int32")
                                                   * w[pi, kg, ji, h * 2 + kk].astype("int32"), axis=[kg, kk]),
                       name="matmul_s8")
    rh = te.reduce_axis((0, 2), name="h")
    return te.compute((p, int(x.shape[-2]), j), lambda pi, m, ji: te.sum(pairs[pi, m, ji, rh], axis=rh),
                      name="matmul_s8_fold")


def quantize_rows_te(x, dtype: str = "int8"):
    """TE compute of QuantizeRowsS8: per row amax, inv = 127 / amax, q = int8(clamp(rint(x * inv))).
    `dtype` int16 stores the same values widened, the operand `vpmaddwd` multiplies."""
    from tvm import te, tirx

    rows, k = x.shape[:-1], int(x.shape[-1])
    kk = te.reduce_axis((0, k), name="k")
    amax = te.compute(rows, lambda *i: te.max(te.abs(x[(*i, kk)]), axis=kk), name="q8_amax")
    inv = te.compute(rows, lambda *i: tirx.const(127.0, "float32") / te.max(amax[i], tirx.const(EPS, "float32")),
                     name="q8_inv")
    q = te.compute(x.shape, lambda *i: te.min(te.max(tirx.nearbyint(x[i] * inv[i[:-1]]), tirx.const(-127.0, "float32")),
                                              tirx.const(127.0, "float32")).astype(dtype), name="q8_quant")
    scale = te.compute((*rows, 1), lambda *i: te.max(amax[i[:-1]], tirx.const(EPS, "float32")) / tirx.const(127.0, "float32"),
                       name="q8_scale")
    return [q, scale]


@contextlib.contextmanager
def int8_matmul_import(kernel: str = "plain"):
    """While active, the Relax ONNX importer maps QuantizeRowsS8 and MatMulS8Panels to the TE
    computes above and zero-point-free MatMulInteger to a single int8 x int8 -> int32 matmul.
    `kernel` is the target's int8 matmul (paraedge_tools.compiler.cpu.int8_kernel): "pmaddwd" imports the
    pairs compute, fed int16 activation rows."""
    import warnings

    from tvm import relax
    from tvm.relax.frontend.onnx import onnx_frontend as fe

    original = fe.MatMulInteger._impl_v10
    original_map = fe._get_convert_map

    def impl(cls, bb, inputs, attr, params):
        if len(inputs) > 2 and any(i is not None for i in inputs[2:]):
            return original.__func__(cls, bb, inputs, attr, params)
        x = bb.normalize(inputs[0])
        if x.ty.dtype == "int16":  # a pmaddwd target's activations: the same values
            x = relax.op.astype(x, "int8")
        return relax.op.matmul(x, inputs[1], out_dtype="int32")

    class MatMulS8Panels(fe.OnnxOpConverter):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            x, w = (bb.normalize(i) for i in inputs)
            shape = x.ty.shape
            if len(shape) != 3 or int(shape[0]) != 1:
                raise ValueError(f"{PANELS_OP}: x must be [1, M, K], got {shape}")
            te_fn = panels_s8_pairs_te if kernel == "pmaddwd" else panels_s8_te
            return bb.emit_te(te_fn, x, w, primfunc_name_hint="matmul_s8_panels")

    class QuantizeRowsS8(fe.OnnxOpConverter):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            return bb.emit_te(quantize_rows_te, bb.normalize(inputs[0]), "int16" if kernel == "pmaddwd" else "int8",
                              primfunc_name_hint="quantize_rows_s8")

    fe.MatMulInteger._impl_v10 = classmethod(impl)
    fe._get_convert_map = lambda: {**original_map(), PANELS_OP: MatMulS8Panels, QUANT_OP: QuantizeRowsS8}
    try:
        with warnings.catch_warnings():  # onnx.checker does not know the ai.paraedge domain
            warnings.filterwarnings("ignore", message=".*ai.paraedge.*")
            warnings.filterwarnings("ignore", message=f".*({PANELS_OP}|{QUANT_OP}).*")
            yield
    finally:
        fe.MatMulInteger._impl_v10 = original
        fe._get_convert_map = original_map


SDOT_K = 16  # k per tensorized step: 4 groups of 4, one 16-byte load of A per row


@functools.lru_cache(maxsize=None)
def sdot_intrin(rows: int) -> str:
    """Register (once) and name the tensor intrinsic of one register tile:
    C[rows, 16] (int32) += A[rows, 16 k] (int8) . B[4 groups, 16 columns, 4 k] (int8).

    Per 4-k group, 4 loads of B (16 bytes: 4 columns x 4 k) feed `rows` x 4 `sdot`s in their
    indexed form (`sdot v.4s, b.16b, a.4b[group]`), so each row's A is one 16-byte load per
    16 k. Accumulators (rows x 4 registers), A (rows) and B (4) fit the 32 NEON registers up to
    6 rows. TVM's own ARM_DOT_4x4 covers 4 columns x 4 k and broadcasts A for every step: 28
    instructions per 256 multiply-adds in the demo's matmuls, against 80 per 1024 here.
    C is a small "global" buffer inside the tile loop: TVM puts those on the stack (LLVM then keeps
    them in registers), where "local" ones become a workspace allocation per loop iteration."""
    from tvm import s_tir
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa, sc = T.int64(), T.int64()
        A = T.match_buffer(a, (rows, 16), "int8", offset_factor=1, strides=[sa, 1])
        B = T.match_buffer(b, (4, 16, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (rows, 16), "int32", offset_factor=1, strides=[sc, 1])
        with T.sblock("root"):
            T.reads(C[0:rows, 0:16], A[0:rows, 0:16], B[0:4, 0:16, 0:4])
            T.writes(C[0:rows, 0:16])
            for r, j, k in T.grid(rows, 16, 16):
                with T.sblock("update"):
                    vr, vj, vk = T.axis.remap("SSR", [r, j, k])
                    C[vr, vj] = C[vr, vj] + T.cast(A[vr, vk], "int32") * T.cast(B[vk // 4, vj, vk % 4], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa, sc = T.int64(), T.int64()
        A = T.match_buffer(a, (rows, 16), "int8", offset_factor=1, strides=[sa, 1])
        B = T.match_buffer(b, (4, 16, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (rows, 16), "int32", offset_factor=1, strides=[sc, 1])
        with T.sblock("root"):
            T.reads(C[0:rows, 0:16], A[0:rows, 0:16], B[0:4, 0:16, 0:4])
            T.writes(C[0:rows, 0:16])
            # no named temporaries (TIRx would make them workspace buffers); LLVM loads each A once
            for grp in T.unroll(4):
                for q in T.unroll(4):
                    for r in T.unroll(rows):
                        C[r, T.ramp(q * 4, 1, 4)] = T.call_llvm_pure_intrin(
                            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
                            C.vload([r, q * 4], "int32x4"),
                            B.vload([grp, q * 4, 0], "int8x16"),
                            T.reinterpret(T.Shuffle([T.reinterpret(A.vload([r, 0], "int8x16"), dtype="int32x4")],
                                                    [grp, grp, grp, grp]), dtype="int8x16"),
                            dtype="int32x4")

    name = f"paraedge_sdot_{rows}x16x16"
    s_tir.TensorIntrin.register(name, desc, impl, override=True)
    return name


@functools.lru_cache(maxsize=None)
def pmaddwd_intrin(rows: int) -> str:
    """Register (once) and name the x86 AVX2 tensor intrinsic of one register tile of
    panels_s8_pairs_te: C2[rows, 8, 2] (int32) += A[rows, 16 k] (int16) . B[4, 8, 4] (int8),
    half a weight panel (B's rows are 64 bytes apart).

    Per 4-k group, each 16 bytes of B (4 columns x 4 k) are sign-extended once (`vpmovsxbw`) and
    feed `rows` `vpmaddwd`s against the row's 4 k broadcast from memory (`vpbroadcastq`): 8 int32
    lanes = 4 columns x 2 k pairs, added into C2. Up to 6 rows the 2 x rows accumulators fit
    AVX2's 16 registers. Measured on this host (M 96, K 256, N 1024, one thread): 130-138 G
    int-ops/s for 2-5 rows, against 110 with int8 activations widened in the kernel and
    onnxruntime's u8 x s8 176 (whose `vpmaddubsw` saturates).
    rows == 1: the tile's row loop is gone (a unit loop), so the description has none and the
    intrinsic is tensorized one loop further in (tools/compiler/cpu.py)."""
    from tvm import s_tir
    from tvm.script import tirx as T

    if rows == 1:
        @T.prim_func(s_tir=True)
        def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
            sa, sb, sc = T.int64(), T.int64(), T.int64()
            A = T.match_buffer(a, (1, 16), "int16", offset_factor=1, strides=[sa, 1])
            B = T.match_buffer(b, (4, 8, 4), "int8", offset_factor=1, strides=[sb, 4, 1])
            C = T.match_buffer(c, (1, 8, 2), "int32", offset_factor=1, strides=[sc, 2, 1])
            with T.sblock("root"):
                T.reads(C[0, 0:8, 0:2], A[0, 0:16], B[0:4, 0:8, 0:4])
                T.writes(C[0, 0:8, 0:2])
                for g, j, h, kk in T.grid(4, 8, 2, 2):
                    with T.sblock("update"):
                        vj, vh, vg, vk = T.axis.remap("SSRR", [j, h, g, kk])
                        C[0, vj, vh] = C[0, vj, vh] + T.cast(A[0, vg * 4 + vh * 2 + vk], "int32") * T.cast(
                            B[vg, vj, vh * 2 + vk], "int32")
    else:
        @T.prim_func(s_tir=True)
        def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
            sa, sb, sc = T.int64(), T.int64(), T.int64()
            A = T.match_buffer(a, (rows, 16), "int16", offset_factor=1, strides=[sa, 1])
            B = T.match_buffer(b, (4, 8, 4), "int8", offset_factor=1, strides=[sb, 4, 1])
            C = T.match_buffer(c, (rows, 8, 2), "int32", offset_factor=1, strides=[sc, 2, 1])
            with T.sblock("root"):
                T.reads(C[0:rows, 0:8, 0:2], A[0:rows, 0:16], B[0:4, 0:8, 0:4])
                T.writes(C[0:rows, 0:8, 0:2])
                for r, g, j, h, kk in T.grid(rows, 4, 8, 2, 2):
                    with T.sblock("update"):
                        vr, vj, vh, vg, vk = T.axis.remap("SSSRR", [r, j, h, g, kk])
                        C[vr, vj, vh] = C[vr, vj, vh] + T.cast(A[vr, vg * 4 + vh * 2 + vk], "int32") * T.cast(
                            B[vg, vj, vh * 2 + vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa, sb, sc = T.int64(), T.int64(), T.int64()
        A = T.match_buffer(a, (rows, 16), "int16", offset_factor=1, strides=[sa, 1])
        B = T.match_buffer(b, (4, 8, 4), "int8", offset_factor=1, strides=[sb, 4, 1])
        C = T.match_buffer(c, (rows, 8, 2), "int32", offset_factor=1, strides=[sc, 2, 1])
        with T.sblock("root"):
            T.reads(C[0:rows, 0:8, 0:2], A[0:rows, 0:16], B[0:4, 0:8, 0:4])
            T.writes(C[0:rows, 0:8, 0:2])
            for g in T.unroll(4):
                for q in T.unroll(2):
                    for r in T.unroll(rows):
                        C.vstore([r, q * 4, 0], C.vload([r, q * 4, 0], "int32x8") + T.call_llvm_pure_intrin(
                            "int32x8", "llvm.x86.avx2.pmadd.wd",
                            T.reinterpret("int16x16", T.Broadcast(T.reinterpret("int64", A.vload([r, g * 4], "int16x4")), 4)),
                            T.Cast("int16x16", B.vload([g, q * 4, 0], "int8x16"))))

    name = f"paraedge_pmaddwd_{rows}x8x16"
    s_tir.TensorIntrin.register(name, desc, impl, override=True)
    return name
