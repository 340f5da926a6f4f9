"""The bundle's three graphs, traced from the torch model with symbolic lengths (host side).

One function per graph serves every length (no shape buckets):
- `encoder`: prepared input [1, T, 560] + frame mask [1, T] -> enc [1, T, d], alphas [1, T];
- `decoder`: enc, mask, acoustic embeds [1, N, d], token mask [1, N] -> log-probs [1, N, V]
  (offline: no caches, centred FSMN);
- `stream_decoder` (streaming models): the same with FSMN caches [1, d, k-1] in; it returns the
  caches' whole windows [1, d, k-1+N] so the runtime keeps the last k-1 *valid* columns.

torch.export traces each with T and N as symbols; TVM's Relax importer keeps them symbolic. The
runtime pads T to a multiple of GRANULE_T and N to a multiple of GRANULE_N (padding + masks are
exact), and each function takes those multiples as a leading shape argument `R.Shape([T/8, N/4])`:
every kernel then sees extents like `8 * q`, which TVM can prove divisible by the register
tiles (4 or 8 rows, 8 or 16 columns), so the tensorized tiles need no tail. The cost is at most
7 masked frames (0.42 s) and 3 masked tokens. On dotprod boards the streaming decoder takes any
number of tokens (stream_granule_n): its INT8 matmuls have a tail of 1-row tiles.

Every Linear becomes a `PanelLinear`, its weight precomputed once in the layout its kernel reads:
fp32 panels [N/16, K, 16] (CPU), int8 sdot panels [N/16, K/4, 16, 4] with per-column scales
(`--int8`: tools/compiler/int8.py), or the plain transpose [K, N] in float16 (CUDA: the operands
in fp16, the products summed in fp32, everything between the matmuls in fp32). The weights are
parameters of the traced module, so the offline and streaming decoders share them by name.
INT8 bundles for boards with half-precision arithmetic run the attention products in float16
(matmul_f16_op, through the `product` seam of paraedge_models.paraformer's attention modules).
"""

from __future__ import annotations

import contextlib
import functools
import types

import numpy as np

GRANULE_T = 8  # frames: a multiple of the 4-row tiles and of the 8-column attention tiles
GRANULE_N = 4  # tokens: a multiple of the 4-row tiles (the streaming decoder's: stream_granule_n)
PANEL = 16  # packed weight panel width (2 AVX2 / 4 NEON float32 vectors)
# CUDA bundles hold each graph twice: captured in CUDA graphs (one per length pair, replayed on the
# next call at those lengths) up to this many frames and tokens, whose buffers TVM plans statically
# at that bound; and uncaptured ("<name>_long") for longer inputs. 1024 frames = 61 s of audio.
GRAPH_MAX_FRAMES = 1024


def stream_granule_n(kernel: str) -> int:
    """The streaming decoder's multiple of tokens for a board's int8 kernel: any count (1) where
    the panel matmuls take a tail of rows (`sdot`: int8.panels_s8_rows_te), else GRANULE_N. A
    chunk decodes a handful of tokens (the anchor model: mostly 5), which padding made 8; the
    emulated A76's streaming decode went 51.4 -> 49.9 M instructions per audio second. The offline
    decoder keeps GRANULE_N: its padding is a few rows of a hundred, and its attention products
    keep their row tiles."""
    return 1 if kernel == "sdot" else GRANULE_N


def pad_to(n: int, granule: int) -> int:
    return -(-n // granule) * granule


@functools.lru_cache(maxsize=None)
def int8_ops():
    """Register (once) the INT8 ops the traced graphs call, with eager implementations (the
    arithmetic of edge.backends.ops) and shape functions for torch.export; the Relax importer maps
    them to the TE computes of tools/compiler/int8.py."""
    import torch

    from paraedge_tools.compiler.int8 import EPS

    # explicit schemas: this module's annotations are strings (from __future__ import annotations)
    @torch.library.custom_op("paraedge::quantize_rows_s8", mutates_args=(), schema="(Tensor x) -> (Tensor, Tensor)")
    def quantize_rows_s8(x):
        amax = x.abs().amax(dim=-1, keepdim=True).clamp_min(EPS)
        q = torch.round(x * (127.0 / amax)).clamp(-127, 127).to(torch.int8)
        return q, amax / 127.0

    @quantize_rows_s8.register_fake
    def _(x):
        return x.new_empty(x.shape, dtype=torch.int8), x.new_empty((*x.shape[:-1], 1))

    @torch.library.custom_op("paraedge::matmul_s8_panels", mutates_args=(), schema="(Tensor xq, Tensor w4) -> Tensor")
    def matmul_s8_panels(xq, w4):
        p, kb, j, kv = w4.shape
        w = w4.permute(0, 1, 3, 2).reshape(p, kb * kv, j).double()  # float64 sums of int8 products are exact
        acc = torch.matmul(xq[0].double()[None], w).round().to(torch.int32)  # [P, M, 16]
        return acc.permute(1, 0, 2).reshape(1, xq.shape[1], p * j)  # row-major [1, M, N], as the kernel

    @matmul_s8_panels.register_fake
    def _(xq, w4):
        return xq.new_empty((1, xq.shape[1], w4.shape[0] * w4.shape[2]), dtype=torch.int32)

    # the same product for kernels that take the weights' column sums too (VNNI's unsigned operand)
    @torch.library.custom_op("paraedge::matmul_u8s8_panels", mutates_args=(),
                             schema="(Tensor xq, Tensor w4, Tensor colsum) -> Tensor")
    def matmul_u8s8_panels(xq, w4, colsum):
        return matmul_s8_panels(xq, w4)

    @matmul_u8s8_panels.register_fake
    def _(xq, w4, colsum):
        return xq.new_empty((1, xq.shape[1], w4.shape[0] * w4.shape[2]), dtype=torch.int32)

    return (torch.ops.paraedge.quantize_rows_s8, torch.ops.paraedge.matmul_s8_panels,
            torch.ops.paraedge.matmul_u8s8_panels)


@functools.lru_cache(maxsize=None)
def fsmn_rows_op():
    """Register (once) the FSMN memory op the CPU graphs call: the depthwise conv over time of
    x [1, T + K - 1, D] (zero-padded rows) with taps [K, D] -> [1, T, D], rows in and rows out
    (fsmn_rows_te). FunASR's transpose -> pad -> Conv1d -> transpose ran as three kernels around
    the conv, two of them transposes (A76, anchor: 0.9 M instructions per audio second)."""
    import torch

    @torch.library.custom_op("paraedge::fsmn_rows", mutates_args=(), schema="(Tensor x, Tensor taps) -> Tensor")
    def fsmn_rows(x, taps):
        w = taps.t().unsqueeze(1)  # the Conv1d weight [D, 1, K]
        return torch.nn.functional.conv1d(x.transpose(1, 2), w, groups=w.shape[0]).transpose(1, 2).contiguous()

    @fsmn_rows.register_fake
    def _(x, taps):
        return x.new_empty((x.shape[0], x.shape[1] - taps.shape[0] + 1, x.shape[2]))

    return torch.ops.paraedge.fsmn_rows


def fsmn_rows_te(x, taps):
    """TE compute of fsmn_rows: out[0, t, c] = sum_i x[0, t + i, c] * taps[i, c] (the taps in
    order, as the Conv1d sums them); scheduled by tools/compiler/cpu.py (rule FsmnRows)."""
    from tvm import te

    k = int(taps.shape[0])
    i = te.reduce_axis((0, k), name="i")
    return te.compute((x.shape[0], x.shape[1] - (k - 1), x.shape[2]),
                      lambda b, t, c: te.sum(x[b, t + i, c] * taps[i, c], axis=i), name="fsmn_rows")


@functools.lru_cache(maxsize=None)
def matmul_f16_op():
    """Register (once) the attention products of INT8 bundles on aarch64 boards with half-precision
    arithmetic (`+fullfp16`: Cortex-A76 and later): a [.., M, K] x b [.., K, N] in float16, the
    products summed in float16, k in order (matmul_f16_te; tools/compiler/cpu.py tiles it with
    lane-indexed `fmla v.8h`, twice the lanes of float32). TVM's own import of a float16 matmul
    sums in float32, which gains nothing here. The reference is edge.backends.ops.matmul_f16."""
    import torch

    @torch.library.custom_op("paraedge::matmul_f16", mutates_args=(), schema="(Tensor a, Tensor b) -> Tensor")
    def matmul_f16(a, b):
        from edge.backends.ops import matmul_f16 as reference

        return torch.from_numpy(reference(a.numpy(), b.numpy()))

    @matmul_f16.register_fake
    def _(a, b):
        return a.new_empty((*a.shape[:-1], b.shape[-1]))

    return torch.ops.paraedge.matmul_f16


def matmul_f16_te(a, b):
    """TE compute of matmul_f16 (block "matmul", which the CPU Matmul rule schedules)."""
    from tvm import te

    k = te.reduce_axis((0, a.shape[-1]), name="k")
    return te.compute((*a.shape[:-1], b.shape[-1]),
                      lambda *i: te.sum(a[(*i[:-1], k)] * b[(*i[:-2], k, i[-1])], axis=k), name="matmul")


@functools.lru_cache(maxsize=None)
def softmax_f16_op():
    """Register (once) the attention weights of INT8 bundles on boards with half-precision
    arithmetic: softmax over the last axis of float32 scores -> float16 (softmax_f16_te: its exp in
    eight float16 lanes). The reference is edge.backends.ops.softmax_f16."""
    import torch

    @torch.library.custom_op("paraedge::softmax_f16", mutates_args=(), schema="(Tensor x) -> Tensor")
    def softmax_f16(x):
        from edge.backends.ops import softmax_f16 as reference

        return torch.from_numpy(reference(x.numpy()))

    @softmax_f16.register_fake
    def _(x):
        return x.new_empty(x.shape, dtype=torch.float16)

    return torch.ops.paraedge.softmax_f16


def softmax_f16_te(x):
    """TE compute of softmax_f16 (the arithmetic of edge.backends.ops.softmax_f16): the row maximum,
    then per element d = x - max, n and r = d - n ln2 in float32, exp(r) and 2^n in float16
    (blocks of float16 are vectorised 8 lanes wide: tools/compiler/cpu.py RowNorm), the sum in
    float32 and the float16 normalisation. A76 anchor, offline: the encoder's attention softmax
    1.37 -> 1.13 M instructions per audio second (~41 -> ~33 a vector of 4), the decoder's 0.34 ->
    0.29, against the float32 softmax with the float32 exp."""
    from tvm import te, tirx

    from edge.backends.ops import LN2_HI, LN2_LO, LOG2E

    def f32(v):
        return tirx.const(v, "float32")

    rows, width = x.shape[:-1], x.shape[-1]
    k = te.reduce_axis((0, width), name="k")
    mx = te.compute(rows, lambda *i: te.max(x[(*i, k)], axis=k), name="sm_max")

    # in two passes: float32 (4 lanes) to r and n, then float16 (8 lanes) to exp: one pass mixing
    # the widths was re-vectorised by LLVM into shuffles, slower than float32's exp
    def reduce(*i):
        dc = tirx.Max(x[i] - mx[i[:-1]], f32(-10.0))
        n = tirx.nearbyint(dc * f32(LOG2E))
        return [(dc - n * f32(LN2_HI) + n * f32(LN2_LO)).astype("float16"), n.astype("int16")]

    r, n = te.compute(x.shape, reduce, name="sm_rn")
    e = te.compute(x.shape, lambda *i: _exp_f16(r[i], n[i]), name="sm_exp")
    k2 = te.reduce_axis((0, width), name="k2")
    total = te.compute(rows, lambda *i: te.sum(e[(*i, k2)].astype("float32"), axis=k2), name="sm_sum")
    inv = te.compute(rows, lambda *i: (f32(1.0) / total[i]).astype("float16"), name="sm_inv")
    return te.compute(x.shape, lambda *i: e[i] * inv[i[:-1]], name="sm_out")


def softmax_s8_te(x):
    """TE compute of softmax_s8 (edge.backends.ops.softmax_s8) on float16 scores: the row maximum,
    then one float16 pass a vector of 8 keys to the int8 weights. The int8 context's A operand (no
    sum: the context normalises by the int8 weights' own sum, which its `sdot`s compute). Rounding
    half away from zero by truncation and to int8 through int16: LLVM scalarised a float16
    vector's nearbyint (the softmax 1.1 -> 4.3 M A76 instructions per audio second). Against the
    float32 range reduction and the two passes of softmax_f16_te: 1.07 -> 0.59 M."""
    from tvm import te, tirx

    from edge.backends.ops import LN2, LOG2E

    def f16(v):
        return tirx.const(v, "float16")

    rows, width = x.shape[:-1], x.shape[-1]
    k = te.reduce_axis((0, width), name="k")
    mx = te.compute(rows, lambda *i: te.max(x[(*i, k)], axis=k), name="sm_max")

    def q8(*i):
        d = tirx.Max(x[i] - mx[i[:-1]], f16(-10.0))
        n = tirx.const(0, "int16") - (f16(0.5) - d * f16(LOG2E)).astype("int16")
        e = _exp_f16(d - n.astype("float16") * f16(LN2), n)
        return (e * f16(127.0) + f16(0.5)).astype("int16").astype("int8")

    return te.compute(x.shape, q8, name="sm_q8")


def _exp_f16(r, n):
    """ops._exp_f16 as an expression: exp(r) 2^n in float16 (r float16, n int16), the exp of
    softmax_f16_te and softmax_s8_te."""
    from tvm import tirx

    from edge.backends.ops import SOFTMAX_F16_MIN_N, SOFTMAX_F16_P

    def f16(v):
        return tirx.const(v, "float16")

    p = f16(SOFTMAX_F16_P[0]) + r * f16(SOFTMAX_F16_P[1])
    e = r * r * p + r + f16(1.0)
    bits = tirx.reinterpret("int16", e) + tirx.shift_left(n, tirx.const(10, "int16"))
    return tirx.Select(n < tirx.const(SOFTMAX_F16_MIN_N, "int16"), f16(0.0), tirx.reinterpret("float16", bits))


@functools.lru_cache(maxsize=None)
def softmax_s8_op():
    """Register (once) the attention weights of the int8 context (context_s8): float16 scores ->
    int8 weights, the largest of each row 127 (softmax_s8_te). The reference is
    edge.backends.ops.softmax_s8."""
    import torch

    @torch.library.custom_op("paraedge::softmax_s8", mutates_args=(), schema="(Tensor x) -> Tensor")
    def softmax_s8(x):
        from edge.backends.ops import softmax_s8 as reference

        return torch.from_numpy(reference(x.numpy()))

    @softmax_s8.register_fake
    def _(x):
        return x.new_empty(x.shape, dtype=torch.int8)

    return torch.ops.paraedge.softmax_s8


@functools.lru_cache(maxsize=None)
def quantize_cols_s8_op():
    """Register (once) the int8 values of the attention context (context_s8): v [B, T2, H, dk] and
    the key mask [B, T2] -> (v x mask quantized per channel over the keys, packed for `sdot` with
    SUM_CHANNELS more channels, the first of them all ones (its sums are the weights' row sums):
    int32 words [B, H, T2/4, dk + SUM_CHANNELS], 4 keys a word; the channel scales [B, H, dk])
    (int8.quantize_cols_te). The reference is edge.backends.ops.quantize_cols_s8."""
    import torch

    from paraedge_tools.compiler.int8 import SUM_CHANNELS

    @torch.library.custom_op("paraedge::quantize_cols_s8", mutates_args=(), schema="(Tensor v, Tensor mask) -> (Tensor, Tensor)")
    def quantize_cols_s8(v, mask):
        from edge.backends.ops import quantize_cols_s8 as reference

        b, t2, h, dk = v.shape
        packed = np.zeros((b, h, t2 // 4, dk + SUM_CHANNELS, 4), np.int8)  # (viewed as int32 words)
        packed[:, :, :, dk] = 1
        scales = []
        for i, (vb, mb) in enumerate(zip(v.numpy(), mask.numpy())):
            q, sv = reference((vb * mb[:, None, None]).astype(np.float32))
            packed[i, :, :, :dk] = q.reshape(t2 // 4, 4, h, dk).transpose(2, 0, 3, 1)
            scales.append(sv)
        return torch.from_numpy(packed.view(np.int32)[..., 0]), torch.from_numpy(np.stack(scales))

    @quantize_cols_s8.register_fake
    def _(v, mask):
        b, t2, h, dk = v.shape
        return v.new_empty((b, h, t2 // 4, dk + SUM_CHANNELS), dtype=torch.int32), v.new_empty((b, h, dk))

    return torch.ops.paraedge.quantize_cols_s8


@functools.lru_cache(maxsize=None)
def key_blocks_op():
    """Register (once) the int8 context's weights in blocks of 8 keys, each block's query rows
    adjacent: [B, H, T1, T2] -> [B, H x T2/8, T1, 8] (key_blocks_te; heads and blocks one axis, as
    torch.export refuses an axis T2/8 that could be 1): a tile's 8 rows x 8 keys are 64 contiguous
    bytes, two `ldp`s and no address arithmetic a row (with the rows T2 bytes apart, the context's
    tile took 1.7 instructions an `sdot`)."""
    import torch

    @torch.library.custom_op("paraedge::key_blocks", mutates_args=(), schema="(Tensor p) -> Tensor")
    def key_blocks(p):
        b, h, t1, t2 = p.shape
        return p.reshape(b, h, t1, t2 // 8, 8).transpose(2, 3).reshape(b, h * (t2 // 8), t1, 8).contiguous()

    @key_blocks.register_fake
    def _(p):
        b, h, t1, t2 = p.shape
        return p.new_empty((b, h * (t2 // 8), t1, 8))

    return torch.ops.paraedge.key_blocks


def key_blocks_te(p):
    """TE compute of key_blocks_op."""
    from tvm import te

    b, h, t1, t2 = p.shape
    blocks = t2 // 8
    return te.compute((b, h * blocks, t1, 8), lambda bi, hc, m, i: p[bi, hc // blocks, m, hc % blocks * 8 + i],
                      name="key_blocks")


@functools.lru_cache(maxsize=None)
def matmul_s8_ctx_op():
    """Register (once) the int8 product of the attention context (context_s8): the weights in key
    blocks [B, H x T2/8, T1, 8] (key_blocks_op) x the values as packed words [B, H, T2/4, dk +
    SUM_CHANNELS] (quantize_cols_s8_op), and the channel scales [B, H, dk] -> the context float32
    [B, T1, H, dk]: the int32 sums x (1 / the ones channel's sum) x the scale (int8.ctx_s8_te, its
    tiles int8.sdot_keys_intrin's context form, the dequant at the tile's rows; as an op of its
    own after them it took 0.07 M A76 instructions per audio second). Eager: float64 sums of int8
    products, exact, then the dequant in float32."""
    import torch

    from paraedge_tools.compiler.int8 import SUM_CHANNELS

    @torch.library.custom_op("paraedge::matmul_s8_ctx", mutates_args=(), schema="(Tensor p8, Tensor words, Tensor scales) -> Tensor")
    def matmul_s8_ctx(p8, words, scales):
        b, h, g, channels = words.shape
        dk = channels - SUM_CHANNELS
        p = p8.reshape(b, h, g // 2, -1, 8).transpose(2, 3).flatten(-2)  # [B, H, T1, T2]
        vp = torch.from_numpy(words.numpy()[..., None].view(np.int8))  # [B, H, T2/4, channels, 4]
        v = vp.permute(0, 1, 2, 4, 3).reshape(b, h, g * 4, channels).double()  # [B, H, T2, channels]
        acc = torch.matmul(p.double(), v).round().to(torch.int32).permute(0, 2, 1, 3)  # [B, T1, H, channels]
        norm = 1.0 / acc[..., dk:dk + 1].float()  # the ones channel: the row's weight sum
        return ((acc[..., :dk].float() * norm) * scales[:, None]).contiguous()

    @matmul_s8_ctx.register_fake
    def _(p8, words, scales):
        return p8.new_empty((p8.shape[0], p8.shape[2], words.shape[1], words.shape[3] - SUM_CHANNELS))

    return torch.ops.paraedge.matmul_s8_ctx


def context_s8(scores, v, heads: int, key_mask):
    """The softmax and the attention context (paraedge_models.paraformer.attend's `mix` seam) in
    int8 on `sdot` boards: the weights as int8 (softmax_s8_op, the largest of a row 127), the values
    quantized per channel over the valid keys and packed for `sdot` (quantize_cols_s8_op), their
    int32 sums (matmul_s8_ctx_op) x (1 / the row's weight sum, from the ones channel) x the
    channel scale. The reference is edge.backends.ops.context_s8."""
    b, t2, d = v.shape
    dk = d // heads
    vp, sv = quantize_cols_s8_op()(v.reshape(b, t2, heads, dk), key_mask)
    # (the scores in float16: the cast joins the scores' epilogue, the softmax reads half the bytes)
    weights = key_blocks_op()(softmax_s8_op()(scores.half()))
    return matmul_s8_ctx_op()(weights, vp, sv).reshape(b, -1, d)  # [B, T1, H, dk]


def product_f16(a, b):
    """The attention products (paraedge_models.paraformer.attend's seam) in float16, back to float32."""
    import torch

    return matmul_f16_op()(a.to(torch.float16), b.to(torch.float16)).float()


@functools.lru_cache(maxsize=None)
def matmul_s8_keys_op():
    """Register (once) the int8 product of the attention scores (scores_s8): queries q [B, T1, H,
    dk] x keys packed kp [B, H, dk/4, T2, 4] -> int32 [B, H, T1, T2] (int8.keys_s8_te, tiled with
    int8.sdot_keys_intrin). Eager: float64 sums of int8 products, exact."""
    import torch

    @torch.library.custom_op("paraedge::matmul_s8_keys", mutates_args=(), schema="(Tensor q, Tensor kp) -> Tensor")
    def matmul_s8_keys(q, kp):
        b, h, g, t2, r = kp.shape
        k = kp.permute(0, 1, 2, 4, 3).reshape(b, h, g * r, t2).double()  # [B, H, dk, T2]
        return torch.matmul(q.permute(0, 2, 1, 3).double(), k).round().to(torch.int32)

    @matmul_s8_keys.register_fake
    def _(q, kp):
        return q.new_empty((q.shape[0], q.shape[2], q.shape[1], kp.shape[3]), dtype=torch.int32)

    return torch.ops.paraedge.matmul_s8_keys


def scores_s8(q, k, heads: int):
    """The attention scores (paraedge_models.paraformer.attend's `scores` seam) in int8 on `sdot`
    boards: each head's query and key rows quantized per row (int8.quantize_rows_te, as the
    Linear layers' activations), the keys packed for `sdot`, the int32 sums dequantized, x dk^-0.5.
    The reference is edge.backends.ops.scores_s8."""
    quantize, _, _ = int8_ops()
    b, t1, d = q.shape
    dk = d // heads
    qq, sq = quantize(q.reshape(b, t1, heads, dk))
    kq, sk = quantize(k.reshape(b, -1, heads, dk))
    kp = kq.unflatten(-1, (dk // 4, 4)).permute(0, 2, 3, 1, 4)  # [B, H, dk/4, T2, 4]
    acc = matmul_s8_keys_op()(qq, kp)
    return acc.float() * sq.permute(0, 2, 1, 3) * (sk.permute(0, 2, 3, 1) * dk**-0.5)


# Frames from which the encoder computes its attention scores, softmax and context in int8
# (attention "int8": below, the bundle's "encoder" keeps float16 and "encoder_long" takes the
# rest). Quantizing each frame's queries and keys costs ~1,600 A76 instructions a layer, which the cheaper products repay
# only over enough keys: measured on the emulated A76, the anchor model's offline decode of 10 s
# (168 frames) 29.73 -> 28.97 M instructions per audio second, the demo's 3 s (50 frames) alike
# (14.96 against 14.98), and its streaming encoder's chunks 29.02 -> 29.58 when they took int8.
INT8_SCORES_MIN_FRAMES = 64


@contextlib.contextmanager
def float16_scores(module):
    """Within: the attention blocks of `module` compute their scores, softmax and context in
    float16 (`product`, `weights`), not through the int8 seams `scores` and `mix`, which are
    restored after (a trace-time switch)."""
    seams = [(b, name, getattr(b, name)) for b in module.modules() for name in ("scores", "mix")
             if getattr(b, name, None) is not None]
    for b, name, _ in seams:
        setattr(b, name, None)
    try:
        yield
    finally:
        for b, name, seam in seams:
            setattr(b, name, seam)


def fsmn_by_rows(self, xm):
    """The FSMN memory block (paraedge_models.paraformer ... .fsmn) through fsmn_rows: the zero
    padding along T in the rows layout, the conv reading and writing rows."""
    import torch

    return fsmn_rows_op()(torch.nn.functional.pad(xm, (0, 0, *self.pad)), self.fsmn_taps)


def frozen(array: np.ndarray):
    """A weight as a (non-trainable) parameter: the Relax importer keeps parameters as function
    inputs (stored once in params.npz), where it would bake buffers into model.so as constants."""
    import torch

    return torch.nn.Parameter(torch.from_numpy(np.ascontiguousarray(array)), requires_grad=False)


@functools.lru_cache(maxsize=None)
def panel_linear_class():
    import torch

    class PanelLinear(torch.nn.Module):
        """y = x @ w + b with w [K, N] stored as its kernel reads it (mode "fp32", "int8", "int8-vnni"
        (the int8 panels and their column sums) or "fp16").
        Panel modes pad N to a multiple of 16 with zero columns (the vocabulary) and slice them off.
        "fp16" (CUDA) stores w [K, N] in float16 and casts x to it; the product imports as one
        matmul with fp32 output (TVM sums the products in fp32), the bias added in fp32."""

        def __init__(self, w_kn: np.ndarray, bias, mode: str):
            super().__init__()
            k, n = w_kn.shape
            self.k, self.n, self.mode = k, n, mode
            self.in_features, self.out_features = k, n  # as nn.Linear: the model code reads them
            if mode == "fp16":
                self.w = frozen(np.ascontiguousarray(w_kn, np.float16))
            else:
                npad = pad_to(n, PANEL)
                wp = np.zeros((k, npad), np.float32)
                wp[:, :n] = w_kn
                panels = np.ascontiguousarray(wp.reshape(k, npad // PANEL, PANEL).transpose(1, 0, 2))  # [P, K, 16]
                if mode.startswith("int8"):
                    from paraedge_tools.compiler.int8 import column_sums, pack_panels_s8, quantize_weight

                    wq, sw = quantize_weight(panels)  # sw [P, 1, 16]: one scale a column
                    self.w, self.sw = frozen(pack_panels_s8(wq)), frozen(sw.reshape(-1))
                    if mode == "int8-vnni":
                        self.colsum = frozen(column_sums(self.w.numpy()))
                else:
                    self.w = frozen(panels)
            self.bias = None if bias is None else frozen(np.asarray(bias, np.float32))

        def forward(self, x):
            if self.mode == "fp16":
                y = torch.matmul(x.to(torch.float16), self.w).float()
            else:
                # (no reshape where x is [1, M, K] already: Relax runs a reshape as a VM call of its
                # own, which ends the fused kernel before the bias and ReLU)
                flat = x.dim() == 3 and x.shape[0] == 1
                x3 = x if flat else x.reshape(1, -1, self.k)
                if self.mode.startswith("int8"):
                    quantize, matmul, matmul_u8 = int8_ops()
                    xq, sx = quantize(x3)
                    acc = matmul_u8(xq, self.w, self.colsum) if self.mode == "int8-vnni" else matmul(xq, self.w)
                    y = acc.float() * sx * self.sw  # acc: [1, M, N]
                    y = y if flat else y.reshape(*x.shape[:-1], -1)
                else:
                    y = torch.matmul(x3, self.w)  # [P, M, 16]
                    y = y.permute(1, 0, 2).reshape(*x.shape[:-1], -1)
                if y.shape[-1] != self.n:
                    y = y[..., : self.n]
            return y if self.bias is None else y + self.bias

    return PanelLinear


def linear_mode(cuda: bool, int8: bool, kernel: str = "") -> str:
    """PanelLinear's mode for a board: "fp16" (CUDA), "int8" ("int8-vnni": with column sums) or "fp32"."""
    return "fp16" if cuda else ("int8-vnni" if kernel == "vnni" else "int8") if int8 else "fp32"


def replace_linears(model, mode: str) -> int:
    """Every Linear (but the 1-wide CIF output) -> a PanelLinear in `mode`; returns the count."""
    import torch

    PanelLinear = panel_linear_class()
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear) and child.out_features >= PANEL and child.in_features >= PANEL:
                w = child.weight.detach().numpy().T
                b = None if child.bias is None else child.bias.detach()
                setattr(parent, name, PanelLinear(w, b, mode))
                count += 1
    return count


def wrappers(model, streaming: bool, mode: str, attention: str = "float32"):
    """(encoder, decoder, streaming decoder or None) modules over the FunASR torch model;
    `attention` (compile.attention_dtype): "float16", the attention products in float16
    (matmul_f16_op); "int8", the scores in int8 (scores_s8; not the streaming decoder's:
    float16_scores), and the encoder's softmax and context (context_s8)."""
    import torch

    PanelLinear = panel_linear_class()
    replace_linears(model, mode)
    p = model.predictor
    k = p.pad[0] + p.pad[1] + 1
    conv_w = p.cif_conv1d.weight.detach().numpy()  # [d_out, d_in, k]
    # CUDA keeps the CIF Conv1d, in fp32: the alphas' running sum places every token boundary, and
    # the im2col below slices at symbolic offsets, whose shapes TVM writes with an if_then_else
    # that CUDA-graph capture cannot type
    cif = None if mode == "fp16" else PanelLinear(conv_w.transpose(2, 1, 0).reshape(k * conv_w.shape[1], -1),
                                                  p.cif_conv1d.bias.detach(), mode)

    if attention in ("float16", "int8"):
        for block in model.modules():
            if hasattr(block, "product"):
                block.product = product_f16
                block.weights = softmax_f16_op()
                if attention == "int8":
                    block.scores = scores_s8
                    if hasattr(block, "mix"):
                        # the encoder's softmax and context too (measured on the offline decoder's
                        # cross-attention, 4-row tiles of tokens: 6.14 against 6.13 M A76
                        # instructions per audio second, no gain, so it keeps float16)
                        block.mix = context_s8
    if mode != "fp16":  # (CUDA keeps FunASR's Conv1d, as it was checked on the GPU)
        for block in list(model.modules()):
            if hasattr(block, "fsmn_block") and hasattr(block, "fsmn"):
                # the taps as [K, D]: a tap's channels are one vector load (stored instead of the
                # Conv1d weight, which the graph no longer reads)
                block.fsmn_taps = frozen(block.fsmn_block.weight.detach().numpy()[:, 0, :].T)
                block.fsmn = types.MethodType(fsmn_by_rows, block)
                # the streaming decoder's cached window still runs the Conv1d (fused with the
                # window's concat, fsmn_rows' [1, K - 1 + N, D] input fails TVM's FuseTIR shape
                # matching); elsewhere the weight is no longer read, and dropped, as the bundle
                # would store it all the same
                if not hasattr(block, "forward_cached"):
                    block.fsmn_block = None

    class Enc(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.predictor, self.cif = model.encoder, model.predictor, cif

        def forward(self, x, mask):
            enc = self.encoder(x, mask)
            # the CIF conv sees the next frame: zero the padding so the last real alpha is exact
            return enc, self.alphas(enc * mask[:, :, None], mask)

        def alphas(self, hidden, mask):
            """CifPredictorV2.alphas with its Conv1d as one matmul over k shifted copies (im2col):
            the same sums, and the matmul kernel instead of a naive conv loop."""
            t = hidden.shape[1]
            left, right = self.predictor.pad
            if self.cif is None:
                h = torch.nn.functional.pad(hidden.transpose(1, 2), (left, right))
                h = torch.relu(self.predictor.cif_conv1d(h)).transpose(1, 2)
            else:
                h = torch.nn.functional.pad(hidden, (0, 0, left, right))
                cols = torch.cat([h[:, i : i + t] for i in range(left + right + 1)], dim=-1)  # [B, T, k*d]
                h = torch.relu(self.cif(cols))
            a = torch.sigmoid(self.predictor.cif_output(h))[:, :, 0]
            return torch.relu(a * self.predictor.smooth_factor - self.predictor.noise_threshold) * mask

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
            # a chunk's tokens are any count on `sdot` boards (stream_granule_n), which the int8
            # scores' row tiles do not divide: this graph keeps the float16 scores (as plain int8
            # loops they took the anchor's streaming decode 46.4 -> 48.0 M instructions per audio
            # second on the emulated A76)
            with float16_scores(self.decoder):
                logits, windows = self.decoder(enc, mask, embeds * tmask[:, :, None], tmask, list(caches))
            return (torch.log_softmax(logits, dim=-1), *windows)

    return Enc().eval(), Dec().eval(), (StreamDec().eval() if streaming else None)


def int8_computes(kernel: str) -> dict:
    """The INT8 ops' TE computes (tools/compiler/int8.py) for a target's int8 kernel, by op name:
    (compute, extra arguments)."""
    from paraedge_tools.compiler.int8 import (panels_s8_pairs_te, panels_s8_te, panels_s8_tiles_te, panels_u8s8_te,
                                              quantize_rows_te)

    operand = {"pmaddwd": "int16", "vnni": "uint8"}.get(kernel, "int8")
    matmul = {"pmaddwd": panels_s8_pairs_te, "sdot": panels_s8_tiles_te}.get(kernel, panels_s8_te)
    return {"quantize_rows_s8": (quantize_rows_te, (operand,)), "matmul_s8_panels": (matmul, ()),
            "matmul_u8s8_panels": (panels_u8s8_te, ())}


class ModuleBuilder:
    """Traces the graphs one by one into a single IRModule (a Relax function per graph).

    Each graph: torch.export with the axes in `lengths` symbolic ({input: {axis: "T" or "N"}}),
    TVM's Relax importer, then the lengths bound to multiples of the granules, defined by a
    leading parameter `lengths: R.Shape([T / GRANULE_T(, N / GRANULE_N)])`. The INT8 ops enter
    as calls to placeholder PrimFuncs and are traced again against the bound lengths (TVM
    cannot fuse a PrimFunc traced on the unbound symbol with its neighbours)."""

    def __init__(self, kernel: str, decompose: bool = False, max_frames: int = 1 << 16):
        import tvm
        from tvm import relax

        # decompose: torch's decomposition before import. It turns the panel matmuls' batch broadcast
        # ([1, M, K] x [P, K, 16]) into a materialised broadcast_to, P copies of the activations:
        # 17 of the demo fp32 encoder's 78 ms at 168 frames on x86 (28 ms without). The CUDA graphs
        # keep it, as they were checked on the GPU (with fp32 weights and the CIF im2col, they did not
        # import without it: a slice's shape got an if_then_else).
        from paraedge_tools.compiler.int8 import ctx_s8_te, keys_s8_te, quantize_cols_te

        self.te = {**int8_computes(kernel), "fsmn_rows": (fsmn_rows_te, ()), "matmul_f16": (matmul_f16_te, ()),
                   "matmul_s8_keys": (keys_s8_te, ()), "softmax_f16": (softmax_f16_te, ()),
                   "softmax_s8": (softmax_s8_te, ()), "quantize_cols_s8": (quantize_cols_te, ()),
                   "key_blocks": (key_blocks_te, ()), "matmul_s8_ctx": (ctx_s8_te, ())}
        self.max_frames, self.decompose = max_frames, decompose
        te = self.te

        @relax.expr_functor.mutator
        class Retrace(relax.PyExprMutator):
            def visit_call_(self, call):
                call = super().visit_call_(call)
                hint = call.args[0].name_hint if call.op.name == "relax.call_tir" else ""
                # (the importer numbers repeated names: matmul_s8_panels1, ...)
                name = next((k for k in te if hint == k or hint.startswith(k) and hint[len(k):].isdigit()), None)
                if name is None:
                    return call
                fn, extra = te[name]
                # (tensors only: a symbolic length the importer passed alongside, as for the FSMN's
                # padded T + K - 1 rows, is derived again from the bound shapes)
                args = [a for a in call.args[1].fields if isinstance(a.ty, relax.TensorType)]
                return self.builder_.call_te(fn, *args, *extra, primfunc_name_hint=name)

        self.retrace = Retrace(tvm.IRModule({}))

    def add(self, name: str, module, inputs: dict, lengths: dict, graph_frames: int = 0,
            granules: dict | None = None) -> tuple[dict, list]:
        """Trace `module` on zero inputs of the shapes `inputs` ({name: shape}) as the function
        `name`; returns ({param name: array}, the weight names in parameter order). With
        `graph_frames`, `name` is captured in CUDA graphs for up to that many frames and tokens,
        and `<name>_long` is the same graph uncaptured."""
        import torch
        from torch.export import Dim, export
        from tvm import relax, tirx
        from tvm.relax.frontend.torch import from_exported_program

        dims = {"T": Dim("T", min=GRANULE_T, max=self.max_frames),
                "N": Dim("N", min=2, max=self.max_frames + GRANULE_N)}  # (min 1: torch would specialise)
        args = tuple(torch.ones(s) if k.endswith("mask") else torch.zeros(s) for k, s in inputs.items())
        dynamic = [{axis: dims[sym] for axis, sym in lengths.get(k, {}).items()} or None for k in inputs]
        n_fixed = sum(not k.startswith("cache") for k in inputs)  # the caches (last) are forward's *caches: one tuple
        dynamic = dynamic[:n_fixed] + ([tuple(dynamic[n_fixed:])] if n_fixed < len(inputs) else [])
        with torch.no_grad():
            ep = export(module, args, dynamic_shapes=tuple(dynamic))

        def converter(op):
            def convert(node, importer):
                fn, extra = self.te[op]
                return importer.block_builder.emit_te(fn, *[importer.env[a] for a in node.args], *extra,
                                                      primfunc_name_hint=op)
            return convert

        mod = from_exported_program(ep, keep_params_as_input=True, run_ep_decomposition=self.decompose,
                                    custom_convert_map={f"{op}.default": converter(op) for op in self.te})
        main = mod["main"]
        n_in = int(main.attrs["num_input"])
        params = {var.name: value.numpy() for var, value in zip(main.params[n_in:], main.attrs["params"])}
        found = {}
        for var, key in zip(main.params[:n_in], inputs):
            for axis, sym in lengths.get(key, {}).items():
                found[sym] = var.ty.shape[axis]
        units = {sym: tirx.Var(sym.lower(), "int64") for sym in ("T", "N") if sym in found}
        granule = {"T": GRANULE_T, "N": GRANULE_N, **(granules or {})}
        shape = relax.Var("lengths", relax.ShapeType(list(units.values())))
        f = relax.Function([shape, *main.params], main.body, main.ret_ty, main.is_pure)
        f = f.bind_symbolic_vars({found[s]: u * granule[s] for s, u in units.items()})
        f = self.retrace.visit_expr(f).with_attr("num_input", n_in + 1)
        if graph_frames:
            from tvm.relax.utils import copy_with_new_vars

            long = copy_with_new_vars(f).with_attr("global_symbol", f"{name}_long")
            self.retrace.builder_.add_func(long, f"{name}_long")
            # the weights (after num_input) stay put between calls, so kernels reading only them and
            # the statically planned buffers are captured; those reading the inputs run outside
            bound = {u.name: graph_frames // granule[s] for s, u in units.items()}
            f = f.with_attr("relax.rewrite_cuda_graph.capture_symbolic_vars", [u.name for u in units.values()])
            f = f.with_attr("tir_var_upper_bound", bound)
        f = f.with_attr("global_symbol", name)
        self.retrace.builder_.add_func(f, name)
        return params, [v.name for v in main.params[n_in:]]

    def get(self):
        return self.retrace.builder_.get()
