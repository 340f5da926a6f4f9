"""INT8 for TVM bundles (host side): real int8 x int8 -> int32 matmuls, not fake-quant.

Every Linear of an `--int8` bundle (tools/compiler/graphs.py: PanelLinear) runs as:
- weights: symmetric per output channel (quantize_weight), int8 (a quarter of the fp32 bytes);
- activations: symmetric per row (dynamic: amax of each row / 127), rounded half-to-even to int8
  by one row quantizer (quantize_rows_te: the arithmetic of edge.backends.ops.quantize_rows_s8;
  TVM's own lowering of the same arithmetic took half as many instructions as the matmuls it fed);
- the int8 product -> int32 (panels_s8_te), then `* s_x * s_w` back to float (bias etc. stay float).

The weight is stored in panels [N/16, K/4, 16, 4]: for 16 output columns, 4 consecutive k of
each column are 4 adjacent bytes. That is the operand layout of the aarch64 dot-product
instruction (`sdot`: 4 int32 lanes += 4 x 4 int8 products), so one 16-byte load of weights feeds
one `sdot` per row of the tile. The computes are scheduled by tools/compiler/cpu.py and
tensorized with `sdot_intrin()` on dotprod boards; on x86 AVX2, which has no int8 dot product, a
k-pair-split compute is tensorized with `pmaddwd_intrin()` on int16 activation rows. The rows
(frames or tokens) may be symbolic: the graphs bind them to multiples of 8 or 4 frames, which
the row tiles divide.
"""

from __future__ import annotations

import functools

import numpy as np

EPS = 1e-12  # an all-zero row: scale EPS / 127 and zeros, where the numpy reference has scale 0
PANEL_K = 4  # k values per sdot lane


def pack_panels_s8(wq: np.ndarray) -> np.ndarray:
    """int8 panels [P, K, 16] -> [P, K/4, 16, 4] (4 consecutive k of a column adjacent)."""
    p, k, j = wq.shape
    return np.ascontiguousarray(wq.reshape(p, k // PANEL_K, PANEL_K, j).transpose(0, 1, 3, 2))


def panels_s8_reference(xq: np.ndarray, w4: np.ndarray) -> np.ndarray:
    """What the panel matmul computes: int8 x [1, M, K] and w [P, K/4, 16, 4] -> exact int32
    [1, M, P * 16] (row-major: column n is panel n // 16, lane n % 16)."""
    p, kb, j, kv = w4.shape
    w = w4.transpose(0, 1, 3, 2).reshape(p, kb * kv, j).astype(np.int32)  # back to [P, K, 16]
    acc = np.matmul(xq[0].astype(np.int32)[None], w)  # [P, M, 16]
    return acc.transpose(1, 0, 2).reshape(1, xq.shape[1], p * j)


def column_sums(w4: np.ndarray) -> np.ndarray:
    """Each panel column's sum of int8 weights: [P, K/4, 16, 4] -> int32 [P, 16], the `vpdpbusd`
    matmul's offset term (panels_u8s8_te), computed once when the weights are packed."""
    return w4.astype(np.int32).sum(axis=(1, 3))


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per output channel: float weights [.., K, N] -> (int8 [.., K, N], scales [.., 1, N])."""
    w = w.astype(np.float32)
    sw = (np.maximum(np.abs(w).max(axis=-2, keepdims=True), 1e-12) / 127.0).astype(np.float32)
    return np.clip(np.round(w / sw), -127, 127).astype(np.int8), sw


def panels_s8_te(x, w):
    """TE compute of the panel matmul: C[0, m, n] = sum_k x[0, m, k] * w[n/16, k/4, n%16, k%4] (int32),
    row-major, so that the bias, ReLU and residual after it fuse into the tile (tools/compiler/cpu.py
    splits n back into panels). With a panel-major [P, M, 16] result, a transpose to [M, N] ended
    the fused kernel, and every Linear's bias / ReLU ran as a kernel of its own after it."""
    from tvm import te

    kk = te.reduce_axis((0, int(x.shape[-1])), name="k")
    p, _, j, _ = w.shape  # int64 extents, as the (symbolic) rows of x
    return te.compute((1, x.shape[-2], p * j), lambda b, m, n: te.sum(_panel_product(x, w, b, m, n, kk), axis=kk),
                      name="matmul_s8")


def _panel_product(x, w, b, m, n, k):
    """x[b, m, k] * w[k, n] in int32, with w in panels [P, K/4, 16, 4]."""
    j = w.shape[2]
    return x[b, m, k].astype("int32") * w[n // j, k // PANEL_K, n % j, k % PANEL_K].astype("int32")


def panels_s8_rows_te(x, w):
    """The panel matmul for rows that are not a multiple of the 4-row tile (a streaming chunk's
    tokens, any count): the first 4 * (M // 4) rows as panels_s8_te, the last M % 4 one at a time
    (1-row `sdot` tiles), and the result row-major [1, M, N] as one. Padding the tokens to a multiple
    of 4 instead computed 8 rows for a chunk's 5 tokens (the anchor model: the streaming decoder's
    matmuls were 5.3 of its 12 M instructions per audio second on the A76)."""
    from tvm import te, tirx

    rows = x.shape[-2]
    body_rows = rows // 4 * 4
    kk = te.reduce_axis((0, int(x.shape[-1])), name="k")
    kt = te.reduce_axis((0, int(x.shape[-1])), name="k")
    p, _, j, _ = w.shape
    body = te.compute((1, body_rows, p * j), lambda b, m, n: te.sum(_panel_product(x, w, b, m, n, kk), axis=kk),
                      name="matmul_s8")
    tail = te.compute((1, rows - body_rows, p * j),
                      lambda b, m, n: te.sum(_panel_product(x, w, b, body_rows + m, n, kt), axis=kt),
                      name="matmul_s8_tail")
    return te.compute((1, rows, p * j), lambda b, m, n: tirx.if_then_else(
        m < body_rows, body[b, te.min(m, body_rows - 1), n], tail[b, te.max(m - body_rows, 0), n]), name="matmul_s8_rows")


def panels_s8_tiles_te(x, w):
    """The panel matmul on dotprod targets: panels_s8_te where the rows are a multiple of the 4-row
    tile (frames, bound to 8 * q), panels_s8_rows_te for any other count (tokens)."""
    from tvm import tirx
    from tvm.sym.analyzer import Analyzer

    rows = x.shape[-2]
    if Analyzer().can_prove_equal(tirx.floormod(rows, 4), 0):
        return panels_s8_te(x, w)
    return panels_s8_rows_te(x, w)


def panels_s8_pairs_te(x, w):
    """The panel matmul for x86 AVX2 (no int8 dot product): the same sum, split by k pairs.

    `vpmaddwd` multiplies 16 int16 pairs and adds each pair into an int32 lane: fed 4 columns x
    4 k of a panel (16 bytes, sign-extended) and a row's 4 k broadcast, lane 2c+h holds column c's
    k pair h. So the accumulator is C2[p, m, j, h] (pair h = k % 4 // 2) and a fold
    C[p, m, j] = C2[.., 0] + C2[.., 1] ends each tile. Products of int8 values in int16 lanes are
    exact, as are their pair sums (2 * 127 * 127 < 2^31)."""
    from tvm import te

    kg = te.reduce_axis((0, int(x.shape[-1]) // PANEL_K), name="kg")
    kk = te.reduce_axis((0, 2), name="kk")
    p, _, j, _ = w.shape  # int64 extents, as the (symbolic) rows of x
    pairs = te.compute((1, x.shape[-2], p * j, 2),
                       lambda b, m, n, h: te.sum(x[b, m, kg * PANEL_K + h * 2 + kk].astype("int32")
                                                 * w[n // j, kg, n % j, h * 2 + kk].astype("int32"), axis=[kg, kk]),
                       name="matmul_s8")
    rh = te.reduce_axis((0, 2), name="h")
    return te.compute((1, x.shape[-2], p * j), lambda b, m, n: te.sum(pairs[b, m, n, rh], axis=rh),
                      name="matmul_s8_fold")


def panels_u8s8_te(x, w, colsum):
    """The panel matmul for x86 AVX-512 VNNI: `vpdpbusd` multiplies unsigned by signed bytes
    (4 products summed into each int32 lane, no int16 stage to saturate), so the activations
    arrive as q + 128 (quantize_rows_te(.., "uint8")) and each column's 128 * sum(w) comes off
    after the sum: exactly panels_s8_te's int32. The sums (`colsum`, column_sums) are a weight of
    their own, stored with the panels: computed in the function, they cost more than the matmul
    at a streaming chunk's 24 rows, and as a second producer of the offset block they kept the
    offset + dequant chain out of the tile (TVM's reverse inlining takes one producer)."""
    from tvm import te, tirx

    acc = panels_s8_te(x, w)
    j = w.shape[2]
    return te.compute(acc.shape, lambda b, m, n: acc[b, m, n] - tirx.const(128, "int32") * colsum[n // j, n % j],
                      name="u8_offset")


def quantize_rows_te(x, dtype: str = "int8"):
    """TE compute of the row quantizer: per row amax, inv = 127 / amax, q = int8(rint(x * inv)).
    `dtype` int16 stores the same values widened, the operand `vpmaddwd` multiplies; uint8 stores
    q + 128, the unsigned operand of `vpdpbusd`. No clamp to [-127, 127] (the reference's clip):
    |x| <= amax, so |x * inv| <= 127 (1 + 2^-23)^2 rounds to 127 at most, and a NaN or infinite
    row (inv 0 or NaN) converts to 0 either way; the clamp's max, compare and select were 3 of 8
    aarch64 instructions a vector in the quantizer (A76 anchor: 1.5 -> 1.1 M per audio second)."""
    from tvm import te, tirx

    rows, k = x.shape[:-1], int(x.shape[-1])
    kk = te.reduce_axis((0, k), name="k")
    # max |x| as the integer maximum of the bits with the sign cleared (non-negative floats order as
    # their bits): an `and` and an `smax` a vector on aarch64, where a float maximum is a compare
    # and a select (fabs, fcmgt, bif); the same value for every finite or infinite row
    magnitude = tirx.const(0x7FFFFFFF, "int32")
    bits = te.compute(rows, lambda *i: te.max(tirx.reinterpret("int32", x[(*i, kk)]) & magnitude, axis=kk),
                      name="q8_amax")

    def amax(i):
        return tirx.reinterpret("float32", bits[i])

    inv = te.compute(rows, lambda *i: tirx.const(127.0, "float32") / te.max(amax(i), tirx.const(EPS, "float32")),
                     name="q8_inv")
    offset = tirx.const(128.0 if dtype == "uint8" else 0.0, "float32")
    q = te.compute(x.shape, lambda *i: (tirx.nearbyint(x[i] * inv[i[:-1]]) + offset).astype(dtype), name="q8_quant")
    scale = te.compute((*rows, 1), lambda *i: te.max(amax(i[:-1]), tirx.const(EPS, "float32")) / tirx.const(127.0, "float32"),
                       name="q8_scale")
    return [q, scale]


SDOT_K = 16  # k per tensorized step: 4 groups of 4, one 16-byte load of A per row


def sdot_k(rows: int, k) -> int:
    """k per `sdot` tile step for a tile of `rows` rows over a reduction of extent `k`: 32 where
    it divides k and the registers allow (accumulators 4 a row, A 2 a row, B 2: up to 4 rows),
    else SDOT_K. A 32-k step loads each row's A with one `ldp` and pays the loop's address
    arithmetic and branch once per 128 `sdot`s instead of 64: the anchor model's FFN kernel went
    from 80 to 76 instructions per 64 `sdot`s on the emulated A76."""
    from tvm import tirx

    if rows <= 4 and isinstance(k, (int, tirx.IntImm)) and int(k) % 32 == 0:
        return 32
    return SDOT_K


def _panel_tile_desc(rows: int, a_dtype: str, k: int = SDOT_K):
    """What a panel tile intrinsic computes: C[rows, 16] (int32) += A[rows, k] (`a_dtype`) .
    B[k / 4 groups, 16 columns, 4 k] (int8): the description sdot and vpdpbusd tiles share. One
    row: the tile's row loop is gone (a unit loop), so the description has none either."""
    from tvm.script import tirx as T

    g = k // 4
    if rows == 1:
        @T.prim_func(s_tir=True)
        def desc1(a: T.handle, b: T.handle, c: T.handle) -> None:
            sa, sc = T.int64(), T.int64()
            A = T.match_buffer(a, (1, k), a_dtype, offset_factor=1, strides=[sa, 1])
            B = T.match_buffer(b, (g, 16, 4), "int8", offset_factor=1)
            C = T.match_buffer(c, (1, 16), "int32", offset_factor=1, strides=[sc, 1])
            with T.sblock("root"):
                T.reads(C[0, 0:16], A[0, 0:k], B[0:g, 0:16, 0:4])
                T.writes(C[0, 0:16])
                for j, kk in T.grid(16, k):
                    with T.sblock("update"):
                        vj, vk = T.axis.remap("SR", [j, kk])
                        C[0, vj] = C[0, vj] + T.cast(A[0, vk], "int32") * T.cast(B[vk // 4, vj, vk % 4], "int32")

        return desc1

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa, sc = T.int64(), T.int64()
        A = T.match_buffer(a, (rows, k), a_dtype, offset_factor=1, strides=[sa, 1])
        B = T.match_buffer(b, (g, 16, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (rows, 16), "int32", offset_factor=1, strides=[sc, 1])
        with T.sblock("root"):
            T.reads(C[0:rows, 0:16], A[0:rows, 0:k], B[0:g, 0:16, 0:4])
            T.writes(C[0:rows, 0:16])
            for r, j, kk in T.grid(rows, 16, k):
                with T.sblock("update"):
                    vr, vj, vk = T.axis.remap("SSR", [r, j, kk])
                    C[vr, vj] = C[vr, vj] + T.cast(A[vr, vk], "int32") * T.cast(B[vk // 4, vj, vk % 4], "int32")

    return desc


@functools.lru_cache(maxsize=None)
def sdot_intrin(rows: int, k: int = SDOT_K) -> str:
    """Register (once) and name the tensor intrinsic of one register tile:
    C[rows, 16] (int32) += A[rows, k] (int8) . B[k / 4 groups, 16 columns, 4 k] (int8), k 16 or
    32 (sdot_k).

    Per 4-k group, 4 loads of B (16 bytes: 4 columns x 4 k) feed `rows` x 4 `sdot`s in their
    indexed form (`sdot v.4s, b.16b, a.4b[group]`), so each row's A is one 16-byte load per
    16 k. Accumulators (rows x 4 registers), A (rows) and B (4) fit the 32 NEON registers up to
    6 rows. TVM's own ARM_DOT_4x4 covers 4 columns x 4 k and broadcasts A for every step: 28
    instructions per 256 multiply-adds in the demo's matmuls, against 80 per 1024 here.
    C is a small "global" buffer inside the tile loop: TVM puts those on the stack (LLVM then keeps
    them in registers), where "local" ones become a workspace allocation per loop iteration."""
    from tvm import s_tir
    from tvm.script import tirx as T

    desc = _panel_tile_desc(rows, "int8", k)
    g = k // 4

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa, sc = T.int64(), T.int64()
        A = T.match_buffer(a, (rows, k), "int8", offset_factor=1, strides=[sa, 1])
        B = T.match_buffer(b, (g, 16, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (rows, 16), "int32", offset_factor=1, strides=[sc, 1])
        with T.sblock("root"):
            T.reads(C[0:rows, 0:16], A[0:rows, 0:k], B[0:g, 0:16, 0:4])
            T.writes(C[0:rows, 0:16])
            # no named temporaries (TIRx would make them workspace buffers); LLVM loads each A once
            for grp in T.unroll(g):
                for q in T.unroll(4):
                    for r in T.unroll(rows):
                        C[r, T.ramp(q * 4, 1, 4)] = T.call_llvm_pure_intrin(
                            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
                            C.vload([r, q * 4], "int32x4"),
                            B.vload([grp, q * 4, 0], "int8x16"),
                            T.reinterpret(T.Shuffle([T.reinterpret(A.vload([r, grp // 4 * 16], "int8x16"),
                                                                   dtype="int32x4")],
                                                    [grp % 4, grp % 4, grp % 4, grp % 4]), dtype="int8x16"),
                            dtype="int32x4")

    name = f"paraedge_sdot_{rows}x16x{k}"
    s_tir.TensorIntrin.register(name, desc, impl, override=True)
    return name


def keys_s8_te(q, kp):
    """TE compute of the attention scores in int8 (graphs.scores_s8): C[b, h, m, n] = sum_k
    q[b, m, h, k] * kp[b, h, k/4, n, k%4] (int32). q is the quantized queries in the projection's
    own layout [B, T1, H, dk] (a row of A is 64 bytes at a constant stride: no transpose), kp the
    quantized keys packed for `sdot` [B, H, dk/4, T2, 4]: 4 dims of 4 keys are one 16-byte load,
    the B operand of sdot_keys_intrin."""
    from tvm import te

    b, t1, h, dk = q.shape
    t2 = kp.shape[3]
    kk = te.reduce_axis((0, int(dk)), name="k")
    return te.compute((b, h, t1, t2), lambda bi, hi, m, n: te.sum(
        q[bi, m, hi, kk].astype("int32") * kp[bi, hi, kk // PANEL_K, n, kk % PANEL_K].astype("int32"), axis=kk),
        name="matmul_s8_keys")


# channels after the values in the int8 context's packed V (quantize_cols_te): the first all ones,
# so that the `sdot` tiles also sum each row's int8 weights (the normaliser) in one more 8-channel
# tile, the rest zero
SUM_CHANNELS = 8


def quantize_cols_te(v, mask):
    """TE compute of the int8 values of the attention context (graphs.quantize_cols_s8_op; the
    arithmetic of edge.backends.ops.quantize_cols_s8): v [B, T2, H, dk] x mask [B, T2], each channel's
    max |.| over the keys (the integer maximum of the sign-cleared bits, as quantize_rows_te), then
    the values packed for `sdot` as int32 words [B, H, T2/4, dk + SUM_CHANNELS] (key 4g + r of a
    channel in byte r of word g: in memory the int8 [.., dk, 4] of sdot_keys_intrin's context form;
    channel dk all ones, the rest zero) and the scales [B, H, dk]."""
    from tvm import te, tirx

    b, t2, h, dk = v.shape
    t = te.reduce_axis((0, t2), name="t")
    magnitude = tirx.const(0x7FFFFFFF, "int32")

    def masked(bi, ti, hi, di):
        return v[bi, ti, hi, di] * mask[bi, ti]

    bits = te.compute((b, h, dk), lambda bi, hi, di: te.max(
        tirx.reinterpret("int32", masked(bi, t, hi, di)) & magnitude, axis=t), name="qc_amax")

    def amax(bi, hi, di):
        return te.max(tirx.reinterpret("float32", bits[bi, hi, di]), tirx.const(EPS, "float32"))

    inv = te.compute((b, h, dk), lambda *i: tirx.const(127.0, "float32") / amax(*i), name="qc_inv")

    def word(bi, hi, g, di):
        # the 4 keys' int8 values of a channel as one int32 (key r in byte r): an int32 vector
        # store a channel, where int8 [.., d, 4 keys] took a byte store an element (LLVM scalarised
        # the whole kernel: 0.9 M A76 instructions per audio second, the anchor model)
        ch = te.min(di, dk - 1)
        packed = None
        for r in range(PANEL_K):
            q = tirx.nearbyint(masked(bi, g * PANEL_K + r, hi, ch) * inv[bi, hi, ch]).astype("int32") & tirx.const(255, "int32")
            q = q if r == 0 else tirx.shift_left(q, tirx.const(8 * r, "int32"))
            packed = q if packed is None else packed | q
        ones = tirx.Select(di == dk, tirx.const(0x01010101, "int32"), tirx.const(0, "int32"))
        return tirx.Select(di < dk, packed, ones)

    packed = te.compute((b, h, t2 // PANEL_K, dk + SUM_CHANNELS), word, name="qc_pack")
    scale = te.compute((b, h, dk), lambda *i: amax(*i) / tirx.const(127.0, "float32"), name="qc_scale")
    return [packed, scale]


def ctx_s8_te(p, words, scales):
    """TE compute of the int8 attention context (graphs.matmul_s8_ctx_op): C[b, m, h, d] = sum_n
    p[b, h x T2/8 + n/8, m, n%8] * byte n%4 of words[b, h, n/4, d] (sign-extended: (w << 24 -
    8 (n%4)) >> 24) (int32) over the dk + SUM_CHANNELS channels, then the context (float(C) x (1 /
    float(C at the ones channel dk))) x scales[b, h, d] for d < dk, written in the heads'
    concatenated layout [B, T1, H, dk] (the output projection's rows: no transpose after)."""
    from tvm import te, tirx

    b, _, t1, _ = p.shape
    _, h, groups, channels = words.shape
    blocks, dk = groups // 2, channels - SUM_CHANNELS
    n = te.reduce_axis((0, groups * PANEL_K), name="n")
    acc = te.compute((b, t1, h, channels), lambda bi, m, hi, di: te.sum(
        p[bi, hi * blocks + n // 8, m, n % 8].astype("int32") * _byte(words[bi, hi, n // PANEL_K, di], n % PANEL_K),
        axis=n), name="matmul_s8_ctx")
    norm = te.compute((b, t1, h), lambda bi, m, hi: tirx.const(1.0, "float32") / acc[bi, m, hi, dk].astype("float32"),
                      name="ctx_norm")
    return te.compute((b, t1, h, dk), lambda bi, m, hi, di: (acc[bi, m, hi, di].astype("float32") * norm[bi, m, hi])
                      * scales[bi, hi, di], name="ctx_out")


def _byte(word, r):
    """Byte r (an int64 index expression) of an int32 word, sign-extended: ctx_s8_te's and its
    tile's (sdot_keys_intrin) expression, the same."""
    from tvm import tirx

    shift = tirx.const(24, "int32") - (r * 8).astype("int32")
    return tirx.shift_right(tirx.shift_left(word, shift), tirx.const(24, "int32"))


@functools.lru_cache(maxsize=None)
def sdot_keys_intrin(rows: int, context: bool = False) -> str:
    """Register (once) and name the tensor intrinsic of one tile of the int8 attention scores
    (keys_s8_te): C[rows, 8 keys] (int32) += A[rows, 16 k] (int8) . B[4 groups, 8 keys, 4 k] (int8),
    B's groups a (symbolic) row of keys apart. Per 4-k group one 32-byte load of B feeds rows x 2
    indexed `sdot`s; 8 rows hold 16 accumulators, 8 A registers and B's 2. Eight keys, not 16: the
    keys are frames, a multiple of 8 (graphs.GRANULE_T). A keeps its head axis (a unit one): the
    queries stay in the projection's layout [T1, H, dk].
    `context`: the same tile of the int8 attention context (ctx_s8_te), 8 keys a step (a block
    of the weights, graphs.key_blocks_op): A the weights [rows, 8 keys], rows 8 bytes apart (no
    head axis), B 8 channels of the packed values' words, C in the heads' concatenated layout
    [rows, 1 head, 8 channels]."""
    from tvm import s_tir
    from tvm.script import tirx as T

    k = 8 if context else SDOT_K
    g = k // 4
    a_shape, c_shape = ((rows, k), (rows, 1, 8)) if context else ((rows, 1, k), (rows, 8))

    def a_at(r, k):  # (TVMScript evaluates these closures on the block's variables)
        return (r, k) if context else (r, 0, k)

    def c_at(r, j):
        return (r, 0, j) if context else (r, j)

    a_reads = (slice(0, rows), slice(0, k)) if context else (slice(0, rows), 0, slice(0, k))

    def lane(A, r, grp):
        """Row r's 4 values of group grp in every 32-bit lane: a lane of a 16-byte load, which LLVM
        folds into the indexed `sdot` (broadcasting each group's 4 bytes instead took an `ld1r`
        and its address arithmetic a row and group, 2.2 instructions an `sdot`)."""
        if context:  # (rows 8 bytes apart: one 16-byte load holds rows r and r + 1)
            pair = T.reinterpret(A.vload([r // 2 * 2, 0], "int8x16"), dtype="int32x4")
            i = r % 2 * 2 + grp
            return T.reinterpret(T.Shuffle([pair], [i, i, i, i]), dtype="int8x16")
        row = T.reinterpret(A.vload(list(a_at(r, 0)), "int8x16"), dtype="int32x4")
        return T.reinterpret(T.Shuffle([row], [grp, grp, grp, grp]), dtype="int8x16")
    c_region = (slice(0, rows), 0, slice(0, 8)) if context else (slice(0, rows), slice(0, 8))

    # B: the keys' int8 [g, 8 keys, 4 dims]; the context's int32 words [g, 8 channels] (4 keys a
    # word, quantize_cols_te), the same bytes in memory
    b_shape = (g, 8) if context else (g, 8, 4)

    def b_at(B, kk, j):
        return _byte(B[kk // 4, j], kk % 4) if context else T.cast(B[kk // 4, j, kk % 4], "int32")

    def b_region():
        return (slice(0, g), slice(0, 8)) if context else (slice(0, g), slice(0, 8), slice(0, 4))

    def b_vector(B, grp, q):
        return T.reinterpret(B.vload([grp, q * 4], "int32x4"), dtype="int8x16") if context else B.vload([grp, q * 4, 0], "int8x16")

    # (the context's tile in int64 variables, as its TE: the byte's shift casts the key index)
    extents = (T.int64(rows), T.int64(8), T.int64(k)) if context else (rows, 8, k)

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa, sh, sb, sc = T.int64(), T.int64(), T.int64(), T.int64()
        A = T.match_buffer(a, a_shape, "int8", offset_factor=1, strides=[8, 1] if context else [sa, sh, 1])
        B = T.match_buffer(b, b_shape, "int32" if context else "int8", offset_factor=1, strides=[sb, 1] if context else [sb, 4, 1])
        C = T.match_buffer(c, c_shape, "int32", offset_factor=1, strides=[sc, sh, 1] if context else [sc, 1])
        with T.sblock("root"):
            T.reads(C[c_region], A[a_reads], B[b_region()])
            T.writes(C[c_region])
            for r, j, kk in T.grid(*extents):
                with T.sblock("update"):
                    vr, vj, vk = T.axis.remap("SSR", [r, j, kk])
                    C[c_at(vr, vj)] = C[c_at(vr, vj)] + T.cast(A[a_at(vr, vk)], "int32") * b_at(B, vk, vj)

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa, sh, sb, sc = T.int64(), T.int64(), T.int64(), T.int64()
        A = T.match_buffer(a, a_shape, "int8", offset_factor=1, strides=[8, 1] if context else [sa, sh, 1])
        B = T.match_buffer(b, b_shape, "int32" if context else "int8", offset_factor=1, strides=[sb, 1] if context else [sb, 4, 1])
        C = T.match_buffer(c, c_shape, "int32", offset_factor=1, strides=[sc, sh, 1] if context else [sc, 1])
        with T.sblock("root"):
            T.reads(C[c_region], A[a_reads], B[b_region()])
            T.writes(C[c_region])
            for grp in T.unroll(g):
                for q in T.unroll(2):
                    for r in T.unroll(rows):
                        C[c_at(r, T.ramp(q * 4, 1, 4))] = T.call_llvm_pure_intrin(
                            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
                            C.vload(list(c_at(r, q * 4)), "int32x4"),
                            b_vector(B, grp, q),
                            lane(A, r, grp),
                            dtype="int32x4")

    name = f"paraedge_sdot_{'ctx' if context else 'keys'}_{rows}x8x{k}"
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


@functools.lru_cache(maxsize=None)
def vnni_intrin(rows: int) -> str:
    """Register (once) and name the x86 AVX-512 VNNI tensor intrinsic of one register tile:
    C[rows, 16] (int32) += A[rows, 16 k] (uint8) . B[4 groups, 16 columns, 4 k] (int8).

    A weight panel's 4-k group is 64 bytes, one zmm: 16 columns x 4 k, the operand layout of
    `vpdpbusd` (16 int32 lanes, each += 4 u8 x s8 products), so per group one load of B feeds
    `rows` `vpdpbusd`s against each row's 4 k broadcast: 64 multiply-adds an instruction, where
    AVX2's `vpmaddwd` does 16 and needs an add. `rows` accumulators + B fit the 32 zmm registers."""
    from tvm import s_tir
    from tvm.script import tirx as T

    desc = _panel_tile_desc(rows, "uint8")

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa, sc = T.int64(), T.int64()
        A = T.match_buffer(a, (rows, 16), "uint8", offset_factor=1, strides=[sa, 1])
        B = T.match_buffer(b, (4, 16, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (rows, 16), "int32", offset_factor=1, strides=[sc, 1])
        with T.sblock("root"):
            T.reads(C[0:rows, 0:16], A[0:rows, 0:16], B[0:4, 0:16, 0:4])
            T.writes(C[0:rows, 0:16])
            for grp in T.unroll(4):
                for r in T.unroll(rows):
                    C[r, T.ramp(0, 1, 16)] = T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                        C.vload([r, 0], "int32x16"),
                        T.reinterpret(T.broadcast(T.reinterpret(A.vload([r, grp * 4], "uint8x4"), dtype="int32"), 16),
                                      dtype="int8x64"),
                        B.vload([grp, 0, 0], "int8x64"),  # (LLVM 20 types the operands as 64 bytes)
                        dtype="int32x16")

    name = f"paraedge_vnni_{rows}x16x16"
    s_tir.TensorIntrin.register(name, desc, impl, override=True)
    return name
