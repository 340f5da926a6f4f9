"""Deterministic CPU schedules for ParaEdge's TVM bundles (host side, no tuning).

Untuned TVM code runs every matmul as a naive scalar triple loop (~60x slower than onnxruntime
on the demo model). MetaSchedule would take hours on 2 cores, so these rules write the schedule
directly, the way dlight does for GPUs:

- `Matmul`: any fused function whose main block is C[b.., i, j] += A[b.., i, k] * B[b.., k, j]
  (Linear layers, attention scores/context). Register-blocked micro-kernel: i split by a divisor
  mi <= 6 of M, j by nj = 16 (when it divides N), loop order
  (b, jo, io, k, ii, ji) so a K x nj panel of B stays in cache across the M rows; ii unrolled, ji
  vectorised; the accumulator tile is a small cache buffer in "global" scope inside the tile
  loop: TVM gives those a stack slot that LLVM keeps in registers (a "local" one costs a
  workspace allocation and free per loop iteration: a quarter of the INT8 decode's
  instructions on the A76); the epilogue chain (bias, ReLU, residual, mask, dequant) is
  computed at the tile; outer loops parallel. On aarch64 each (rows x nj x 4 k) step is one
  tensor intrinsic of lane-indexed `fmla`s (fmla_intrin) where the shapes allow; float16 products
  (the attention of INT8 bundles on `+fullfp16` boards, graphs.matmul_f16_op) take 8 k a step.
- `Elementwise`: spatial functions (transposes, adds, masks): chains of blocks inlined into the
  last one (no intermediate buffers), innermost loop vectorised when its extent allows, outer
  loops fused and parallel.
- `QuantizeRows`: the INT8 activation quantizer of tools/compiler/int8.py, vectorised.
- `MatmulS8`: the INT8 panel matmul of tools/compiler/int8.py (block `matmul_s8`, C[p, m, j] over
  weights [P, K/4, 16, 4]): the same register blocking, one 16-column panel row per output row;
  on dotprod targets each (rows x 16 columns x 16 k) step is tensorized into indexed `sdot`s
  (paraedge_tools.compiler.int8.sdot_intrin); on x86 AVX2 the k-pair-split compute (panels_s8_pairs_te) is
  tensorized into `vpmaddwd`s (_matmul_s8_pairs); elsewhere 4 k are unrolled over a 16-lane
  int32 vector.
- `RowNorm`: softmax, log-softmax and layer norm, each row's reductions as 16 vectorised
  partials; dlight's CPU `Reduction` stays the fallback for other reductions.
- exp is lowered to vector arithmetic (_exp_f32) instead of one libm call per lane.
"""

from __future__ import annotations

import functools


def simd_lanes(target) -> int:
    """float32 lanes per vector op the schedules use: 4 on ARM, 8 on x86 even with AVX-512 (16-lane
    softmax and row quantizers measured about 2x slower on this host's EPYC; the VNNI matmul
    tiles use zmm registers by their own intrinsic)."""
    triple = str(target.attrs.get("mtriple", ""))
    if triple.startswith("aarch64") or triple.startswith("arm"):
        return 4
    return 8  # AVX2 (haswell and later)


def _is_aarch64(target) -> bool:
    return str(target.attrs.get("mtriple", "")).startswith("aarch64")


def has_dotprod(target) -> bool:
    """aarch64 with the ARMv8.2 dot-product extension (`sdot`) enabled in the target."""
    return _is_aarch64(target) and "+dotprod" in [str(a) for a in (target.attrs.get("mattr") or [])]


_AVX2_CPUS = ("haswell", "broadwell", "skylake", "skylake-avx512", "cascadelake", "icelake-client",
              "icelake-server", "sapphirerapids", "alderlake", "znver1", "znver2", "znver3", "znver4",
              "x86-64-v3", "x86-64-v4")


_VNNI_CPUS = ("cascadelake", "cooperlake", "icelake-client", "icelake-server", "tigerlake", "sapphirerapids",
              "emeraldrapids", "graniterapids", "znver4", "znver5")


def has_fp16(target) -> bool:
    """aarch64 with half-precision vector arithmetic (`+fullfp16`: Cortex-A76/A77/A78 and later)."""
    return _is_aarch64(target) and "+fullfp16" in [str(a) for a in (target.attrs.get("mattr") or [])]


def int8_kernel(target) -> str:
    """The instruction the INT8 panel matmul is built on for an llvm target: "sdot" (aarch64 with
    the dot-product extension), "vnni" (x86 with AVX-512 VNNI: `vpdpbusd`), "pmaddwd" (x86 with
    AVX2) or "plain" (vectorised int32 multiply-adds)."""
    if has_dotprod(target):
        return "sdot"
    attrs = " ".join(str(a) for a in (target.attrs.get("mattr") or []))
    if str(target.attrs.get("mtriple", "")).startswith("x86_64") and (
            "+avx512vnni" in attrs or str(target.attrs.get("mcpu", "")) in _VNNI_CPUS):
        return "vnni"
    if str(target.attrs.get("mtriple", "")).startswith("x86_64") and (
            "+avx2" in attrs or str(target.attrs.get("mcpu", "")) in _AVX2_CPUS):
        return "pmaddwd"
    return "plain"


def fmla_k(dtype: str) -> int:
    """k values per 16-byte load of a row (= lanes of a vector) in an fmla tile of `dtype`."""
    return {"float32": 4, "float16": 8}[dtype]


@functools.lru_cache(maxsize=None)
def fmla_intrin(rows: int, cols: int, dtype: str = "float32") -> str:
    """Register (once) and name the aarch64 tensor intrinsic of one register tile:
    C[rows, cols] += A[rows, kl k] . B[kl k, cols], kl = 4 for float32, 8 for float16. Each row's
    kl k are one 16-byte load feeding `fmla v.4s, b.4s, a.s[k]` (float16: `v.8h`, `a.h[k]`; the
    lane-indexed form), where the plain schedule loaded every A value alone: 16 A loads per 64
    fmla of a 4 x 16 tile become 4 (the fp32 decode on the A76: -13 % instructions in its
    matmuls). C is a small "global" buffer, kept in registers (see
    paraedge_tools.compiler.int8.sdot_intrin)."""
    from tvm import s_tir
    from tvm.script import tirx as T

    kl = fmla_k(dtype)
    vec = f"{dtype}x{kl}"

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa, sb, sc = T.int64(), T.int64(), T.int64()
        A = T.match_buffer(a, (rows, kl), dtype, offset_factor=1, strides=[sa, 1])
        B = T.match_buffer(b, (kl, cols), dtype, offset_factor=1, strides=[sb, 1])
        C = T.match_buffer(c, (rows, cols), dtype, offset_factor=1, strides=[sc, 1])
        with T.sblock("root"):
            T.reads(C[0:rows, 0:cols], A[0:rows, 0:kl], B[0:kl, 0:cols])
            T.writes(C[0:rows, 0:cols])
            for r, k, j in T.grid(rows, kl, cols):
                with T.sblock("update"):
                    vr, vj, vk = T.axis.remap("SSR", [r, j, k])
                    C[vr, vj] = C[vr, vj] + A[vr, vk] * B[vk, vj]

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa, sb, sc = T.int64(), T.int64(), T.int64()
        A = T.match_buffer(a, (rows, kl), dtype, offset_factor=1, strides=[sa, 1])
        B = T.match_buffer(b, (kl, cols), dtype, offset_factor=1, strides=[sb, 1])
        C = T.match_buffer(c, (rows, cols), dtype, offset_factor=1, strides=[sc, 1])
        with T.sblock("root"):
            T.reads(C[0:rows, 0:cols], A[0:rows, 0:kl], B[0:kl, 0:cols])
            T.writes(C[0:rows, 0:cols])
            for k in T.unroll(kl):
                for q in T.unroll(cols // kl):
                    for r in T.unroll(rows):
                        C[r, T.ramp(q * kl, 1, kl)] = C.vload([r, q * kl], vec) + B.vload(
                            [k, q * kl], vec) * T.Shuffle([A.vload([r, 0], vec)], [k] * kl)

    name = f"paraedge_fmla_{rows}x{cols}x{kl}_{dtype}"
    s_tir.TensorIntrin.register(name, desc, impl, override=True)
    return name


def _const(extent):
    """A loop extent as an int, or None when it is symbolic (a bundle's lengths: `8 * q`)."""
    from tvm import tirx

    return int(extent.value) if isinstance(extent, tirx.IntImm) else int(extent) if isinstance(extent, int) else None


def _divides(extent, c: int) -> bool:
    """c divides the extent: symbolic extents are multiples of the graphs' granules (8 * q)."""
    from tvm import tirx
    from tvm.sym.analyzer import Analyzer

    n = _const(extent)
    if n is not None:
        return c <= n and n % c == 0
    return Analyzer().can_prove_equal(tirx.floormod(extent, c), 0)


def _divisor(n, candidates) -> int:
    """The first candidate that divides the extent n (an int or a symbolic extent), else 1."""
    for c in candidates:
        if _divides(n, c):
            return c
    return 1


def _more_than_one(extent) -> bool:
    n = _const(extent)
    return n is None or n > 1


def _same(a, b) -> bool:
    from tvm.sym.analyzer import Analyzer

    return Analyzer().can_prove_equal(a, b)


def rules(parallel: bool = True):
    """The schedule rules; `parallel` False: no parallel loops (a single-core board, see cpu_pipeline)."""
    from tvm import s_tir, tirx
    from tvm.s_tir import dlight as dl

    class Matmul(dl.ScheduleRule):
        def apply(self, func, target, tunable):
            if _is_aarch64(target):  # lane-indexed fmla tiles where the shapes allow, else plain
                try:
                    return self.schedule(func, target, fmla=True)
                except s_tir.ScheduleError:
                    pass
            return self.schedule(func, target, fmla=False)

        @staticmethod
        def schedule(func, target, fmla: bool):
            found = _llvm_schedule(func, target, "matmul")
            if found is None:
                return None
            sch, (block,) = found
            _inline_side_inputs(sch, block)
            stmt = sch.get(block)
            kinds = [iv.iter_type for iv in stmt.iter_vars]
            if kinds.count(tirx.IterVar.CommReduce) != 1 or kinds[-1] != tirx.IterVar.CommReduce or len(kinds) < 3:
                return None
            loops = sch.get_loops(block)
            if len(loops) != len(kinds):
                return None
            extents = [sch.get(lp).extent for lp in loops]
            m, n = extents[-3], extents[-2]
            # 16 columns: 2 AVX2 or 4 NEON vectors; x mi rows = 12 (of 16 ymm) / 24 (of 32 q) accumulators
            nj = _divisor(n, (16, 8, 4, 2))
            # fmla tiles also hold each row's 4 k in a register: at 16 float32 columns 6 rows would
            # spill; 16 float16 columns are 2 registers a row, so 8 rows fit (16 accumulators, 8 A,
            # B): each B load then feeds 16 fmla, not 8 (the A76 anchor's attention products: 93 ->
            # 75 instructions per 64 fmla)
            dtype = str(stmt.writes[0].source.dtype)
            if fmla and nj == 16:
                mi = _divisor(m, (8, 6, 5, 4, 3, 2) if dtype == "float16" else (5, 4, 6, 3, 2))
            else:
                mi = _divisor(m, (8, 6, 5, 4, 3, 2) if nj == 8 else (6, 5, 4, 3, 2))
            batch, (i, j, k) = loops[:-3], loops[-3:]
            io, ii = sch.split(i, [None, mi])
            jo, ji = sch.split(j, [None, nj])
            # aarch64: 4 k steps per iteration (-14 % instructions on an A76: loop overhead, A loads);
            # on x86 the same unroll measured slower, so k stays rolled there
            kl = fmla_k(dtype)
            kd = _divisor(sch.get(k).extent, (kl, 4, 2)) if simd_lanes(target) == 4 else 1
            if fmla and (kd != kl or nj < kl or mi < 2):
                raise s_tir.ScheduleError("no fmla tile for this shape")
            ko, ki = sch.split(k, [None, kd])
            if fmla:
                sch.reorder(*batch, jo, io, ko, ii, ki, ji)
            else:
                sch.reorder(*batch, jo, io, ko, ki, ii, ji)
            local = sch.cache_write(block, 0, "global")
            sch.reverse_compute_at(local, io, preserve_unit_loops=True)
            _inline_epilogue(sch, local)  # at the tile: bias, ReLU, residual, mask
            outer = sch.fuse(*batch, jo) if batch else jo
            if _more_than_one(sch.get(outer).extent):
                _parallel(sch, outer, parallel)
            if not fmla:
                if kd > 1:
                    sch.unroll(ki)
                sch.unroll(ii)
                sch.vectorize(ji)
            if nj > 1:
                sch.vectorize(sch.get_loops(local)[-1])
            init = sch.decompose_reduction(block, ko)
            sch.vectorize(sch.get_loops(init)[-1])
            if fmla:  # after the init is split off: the intrinsic accumulates into C
                sch.tensorize(ii, fmla_intrin(mi, nj, dtype))
            return sch

    class MatmulS8(dl.ScheduleRule):
        def apply(self, func, target, tunable):
            found = _llvm_schedule(func, target, "matmul_s8")
            if found is None:
                return None
            sch, (block,) = found
            if len(sch.get_loops(block)) == 6:
                return _matmul_s8_pairs(sch, block, parallel)
            if any(sch.get(b).name_hint == "matmul_s8_tail" for b in sch.get_child_blocks(sch.get_sblock("root"))):
                return _matmul_s8_rows(sch, block, parallel)
            from paraedge_tools.compiler.int8 import SDOT_K, sdot_intrin, sdot_k, vnni_intrin

            vnni = int8_kernel(target) == "vnni"
            _inline_side_inputs(sch, block)
            b, m, n, k = sch.get_loops(block)
            p, j = sch.split(n, [None, 16])  # the weight panels: 16 columns each
            # VNNI: one zmm accumulator a row, 32 registers; NEON sdot: 4 a row, 32 registers
            mi = _divisor(sch.get(m).extent, (8, 6, 4, 5, 3, 2) if vnni else (6, 5, 4, 3, 2))
            io, ii = sch.split(m, [None, mi])
            # (a 1-row tile: its unit loop vanishes before tensorize can match; bundles' row counts
            # are multiples of 4 or 8, so only odd static shapes take the plain path)
            dot = ((has_dotprod(target) or vnni) and mi > 1 and _divides(sch.get(k).extent, SDOT_K)
                   and _const(sch.get(j).extent) == 16)
            step = (SDOT_K if vnni else sdot_k(mi, sch.get(k).extent)) if dot else 4
            ko, kv = sch.split(k, [None, step])
            ko, pair = _k_pairs(sch, ko) if dot and not vnni else (ko, [])
            if dot:
                sch.reorder(b, p, io, ko, *pair, ii, j, kv)
            else:
                sch.reorder(b, p, io, ko, kv, ii, j)
            local = sch.cache_write(block, 0, "global")
            sch.reverse_compute_at(local, io, preserve_unit_loops=True)
            # the dequant (cast, * s_x, * s_w; VNNI: the column-sum offset first) at the tile. (The
            # column sums are an input: computed in this function, they were a second producer of
            # the offset block, which reverse inlining refuses, and the chain ran as scalar passes
            # of its own: half of the kernel's time)
            _inline_epilogue(sch, local)
            outer = sch.fuse(b, p, io)
            if _more_than_one(sch.get(outer).extent):
                _parallel(sch, outer, parallel)
            if not dot:
                sch.unroll(ii)
                sch.unroll(kv)
                sch.vectorize(j)
            init = sch.decompose_reduction(block, ko)
            sch.vectorize(sch.get_loops(init)[-1])
            if dot:  # after the init is split off: the intrinsic accumulates into C
                sch.tensorize(ii, vnni_intrin(mi) if vnni else sdot_intrin(mi, step))
                for loop in pair:
                    sch.unroll(loop)
            sch.vectorize(sch.get_loops(local)[-1])
            return sch

    class MatmulS8Keys(dl.ScheduleRule):
        """The int8 attention scores (paraedge_tools.compiler.int8.keys_s8_te, block
        `matmul_s8_keys`): per head, tiles of 8 (else 4) query rows x 8 keys, each 16-k step one
        sdot_keys_intrin, the dequant (x row scale x key scale x dk^-0.5) and the key mask at the
        tile. Query rows that no tile divides (a streaming chunk's tokens, any count) run as plain
        vector loops over the keys."""

        def apply(self, func, target, tunable):
            found = _llvm_schedule(func, target, "matmul_s8_keys")
            context = found is None
            if context:  # the int8 context (int8.ctx_s8_te): loops (b, query, head, channel, key)
                found = _llvm_schedule(func, target, "matmul_s8_ctx")
            if found is None:
                return None
            from paraedge_tools.compiler.int8 import SDOT_K, sdot_keys_intrin

            sch, (block,) = found
            # (the context's row normaliser stays a block: read inlined, each output's region of
            # the sums spanned its channel and the ones channel, which tensorize refuses)
            _inline_side_inputs(sch, block, *([sch.get_sblock("ctx_norm")] if context else []))
            if context:
                b, m, h, n, k = sch.get_loops(block)
            else:
                b, h, m, n, k = sch.get_loops(block)
            mi = _divisor(sch.get(m).extent, (8, 4))
            # k per step: the keys' 64 dims by 16; the context's keys by 8 (its weights' blocks,
            # graphs.context_s8)
            step = 8 if context else SDOT_K
            dot = (has_dotprod(target) and mi > 1 and _divides(sch.get(n).extent, 8)
                   and _divides(sch.get(k).extent, step))
            jo, ji = sch.split(n, [None, 8 if dot else 4]) if _divides(sch.get(n).extent, 4) else (n, None)
            if dot:
                io, ii = sch.split(m, [None, mi])
                ko, kv = sch.split(k, [None, step])
                sch.reorder(b, h, io, jo, ko, ii, ji, kv)
            else:
                io = m
                sch.reorder(b, h, m, jo, k, *([ji] if ji is not None else []))
            if context:  # the dequant reads each row's ones channel: after the row's last tile
                local = sch.get_sblock("ctx_out")
                sch.reverse_compute_at(sch.get_sblock("ctx_norm"), io, preserve_unit_loops=True)
                sch.reverse_compute_at(local, io, preserve_unit_loops=True)
            else:
                local = sch.cache_write(block, 0, "global")
                sch.reverse_compute_at(local, jo, preserve_unit_loops=True)
                _inline_epilogue(sch, local)
            outer = sch.fuse(b, h, io)
            if _more_than_one(sch.get(outer).extent):
                _parallel(sch, outer, parallel)
            if dot:
                init = sch.decompose_reduction(block, ko)
                sch.vectorize(sch.get_loops(init)[-1])
                sch.tensorize(ii, sdot_keys_intrin(mi, context))
            elif ji is not None:
                sch.vectorize(ji)  # (before the init is split off: after it, TVM refuses the loop)
                init = sch.decompose_reduction(block, k)
                sch.vectorize(sch.get_loops(init)[-1])
            if ji is not None:
                _, li = sch.split(sch.get_loops(local)[-1], [None, 4])
                sch.vectorize(li)
            return sch

    class Elementwise(dl.ScheduleRule):
        def apply(self, func, target, tunable):
            found = _llvm_schedule(func, target, "root")
            if found is None:
                return None
            sch, _ = found
            blocks = _inline_spatial(sch)
            if len(blocks) != 1:
                return None
            block = blocks[0]
            stmt = sch.get(block)
            if any(iv.iter_type != tirx.IterVar.DataPar for iv in stmt.iter_vars):
                return None
            loops = sch.get_loops(block)
            if not loops:
                return None
            lanes = simd_lanes(target)
            if _divides(sch.get(loops[-1]).extent, lanes):
                lo, li = sch.split(loops[-1], [None, lanes])
                sch.vectorize(li)
                loops = sch.get_loops(block)[:-1]
            if len(loops) > 1:
                outer = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
                if _more_than_one(sch.get(outer).extent):
                    _parallel(sch, outer, parallel)
            return sch

    class QuantizeRows(dl.ScheduleRule):
        """paraedge_tools.compiler.int8.quantize_rows_te, row by row: the row's maximum as vector
        partial maxima, then its 1/scale, the quantized row (vectorised) and the scale, all in one
        loop over rows (the row stays in L1). Each block follows the maxima's row loop (reverse
        compute-at: every block after the maxima has them as its only computed input). With the
        maxima as a pass of their own over every row, the rfactored partials lived in a [lanes,
        rows] buffer, stored and reloaded lane by lane each step: 6 aarch64 instructions an element,
        the INT8 anchor's fifth-largest kernel."""

        def apply(self, func, target, tunable):
            found = _llvm_schedule(func, target, "q8_quant", "q8_amax", "q8_inv", "q8_scale")
            if found is None:
                return None
            sch, (quant, amax, inv, scale) = found
            lanes = simd_lanes(target)
            first, width = amax, None
            if _divides(sch.get(sch.get_loops(quant)[-1]).extent, lanes):
                _, ai = sch.split(sch.get_loops(amax)[-1], [None, lanes])
                first = sch.rfactor(ai, 0)  # loops (rows.., k chunk, lane): partials [lane, rows..]
                width = lanes
            loops = sch.get_loops(first)  # (rows.., k) or, rfactored, (rows.., k chunk, lane)
            rows = loops[:-2] if width else loops[:-1]
            row = sch.fuse(*rows) if len(rows) > 1 else rows[0]
            for b in (amax, inv, quant, scale) if width else (inv, quant, scale):
                sch.reverse_compute_at(b, row, preserve_unit_loops=True)
            if _more_than_one(sch.get(row).extent):
                _parallel(sch, row, parallel)
            if width:
                sch.vectorize(sch.get_loops(first)[-1])
                init = sch.decompose_reduction(first, sch.get_loops(first)[-2])  # (not a branch per step)
                sch.vectorize(sch.get_loops(init)[-1])
                _, ki = sch.split(sch.get_loops(quant)[-1], [None, width])
                sch.vectorize(ki)
            return sch

    class QuantizeCols(dl.ScheduleRule):
        """paraedge_tools.compiler.int8.quantize_cols_te, the int8 values of the attention context:
        per head, the channels' maxima over the keys as vector maxima (keys outer, the head's
        channels in lanes), the scales, then the packed words 4 channels a vector."""

        def apply(self, func, target, tunable):
            found = _llvm_schedule(func, target, "qc_pack", "qc_amax", "qc_inv", "qc_scale")
            if found is None:
                return None
            sch, (pack, amax, inv, scale) = found
            b, h, d, t = sch.get_loops(amax)
            sch.reorder(t, d)
            sch.vectorize(d)  # (before the init is split off: after it, TVM refuses the loop)
            init = sch.decompose_reduction(amax, t)
            sch.vectorize(sch.get_loops(init)[-1])
            for blk in (inv, scale):
                sch.vectorize(sch.get_loops(blk)[-1])
            # the words 4 channels at a time, the chunks unrolled: each chunk is wholly values or
            # wholly the sum channels, so the select and the clamped index fold away (vectorised
            # across both, they became gathers)
            do, di = sch.split(sch.get_loops(pack)[-1], [None, 4])
            sch.unroll(do)
            sch.vectorize(di)
            return sch

    class ByteBlocks(dl.ScheduleRule):
        """Moves of int8 blocks: graphs.key_blocks_te (the int8 context's weights in blocks of 8
        keys) and the transposes of int8 blocks of 4 (the int8 scores' packed keys): a block (the
        last axis) a vector, 4 of the next axis an iteration, the loops unfused (Elementwise's fused
        loop divided its index back each step: 1.5 A76 instructions a byte for the key blocks)."""

        def apply(self, func, target, tunable):
            found = _llvm_schedule(func, target, "key_blocks")
            if found is None:
                found = _llvm_schedule(func, target, "T_transpose")
                if found is None or str(found[0].get(found[1][0]).writes[0].source.dtype) != "int8":
                    return None
            sch, (block,) = found
            *_, m, i = sch.get_loops(block)
            if _const(sch.get(i).extent) not in (4, 8, 16):
                return None
            if _divides(sch.get(m).extent, 4):
                _, mi = sch.split(m, [None, 4])
                sch.unroll(mi)
            sch.vectorize(i)
            return sch

    class RowNorm(dl.ScheduleRule):
        """Softmax, log-softmax, layer norm: reductions over the last axis of each row and
        elementwise blocks. As dlight's CPU `Reduction` (which these rules used before), every
        block is computed at the row (parallel rows, intermediates row-sized), elementwise
        blocks vectorised; but each reduction is rfactored first into 16 partial sums (or
        maxima), so it runs as vector operations on 16-lane chunks instead of one scalar
        dependency chain. x86, 72 rows of 256: layer norm 44.6 -> 8.5 us, softmax 38.7 -> 18.6,
        log-softmax 76.9 -> 15.4."""

        def apply(self, func, target, tunable):
            found = _llvm_schedule(func, target)
            if found is None:
                return None
            sch, _ = found

            def kind_of(b):
                return "".join({tirx.IterVar.DataPar: "S", tirx.IterVar.CommReduce: "R"}.get(iv.iter_type, "?")
                               for iv in sch.get(b).iter_vars)

            blocks = sch.get_child_blocks(sch.get_sblock("root"))
            # an elementwise block feeding only the last one is computed inside it (softmax's
            # normalisation inside the cast to float16: one pass over the row, not two)
            for b in blocks[:-1]:
                if "R" not in kind_of(b) and [sch.get(c) for c in sch.get_consumers(b)] == [sch.get(blocks[-1])]:
                    try:
                        sch.compute_inline(b)
                    except s_tir.ScheduleError:
                        pass
            blocks = sch.get_child_blocks(sch.get_sblock("root"))
            kinds = [kind_of(b) for b in blocks]
            rows = len(kinds[-1]) - 1
            if (len(blocks) < 2 or rows < 1 or "R" not in "".join(kinds) or kinds[-1] != "S" * (rows + 1)
                    or any(k not in ("S" * rows, "S" * (rows + 1), "S" * rows + "R") for k in kinds)
                    or any(len(sch.get_loops(b)) != len(k) for b, k in zip(blocks, kinds))):
                return None
            row_extents = [sch.get(lp).extent for lp in sch.get_loops(blocks[-1])[:rows]]
            if any(not all(_same(sch.get(lp).extent, e) for lp, e in zip(sch.get_loops(b)[:rows], row_extents))
                   for b in blocks):
                return None
            lanes = simd_lanes(target)
            partial = []  # rfactor before compute_at: it needs each block alone in its loop nest
            for b, kind in zip(blocks, kinds):
                width = _divisor(sch.get(sch.get_loops(b)[-1]).extent, (16, 8, 4))
                if kind.endswith("R") and width >= lanes:
                    _, ki = sch.split(sch.get_loops(b)[-1], [None, width])
                    partial.append(sch.rfactor(ki, rows))  # partials in a [.., width] buffer
            row = sch.fuse(*sch.get_loops(blocks[-1])[:rows]) if rows > 1 else sch.get_loops(blocks[-1])[0]
            if _more_than_one(sch.get(row).extent):
                _parallel(sch, row, parallel)
            for b in reversed(sch.get_child_blocks(sch.get_sblock("root"))[:-1]):
                sch.compute_at(b, row, preserve_unit_loops=True)
            for p in partial:  # compute_at made its loops (partial index, unit row loops.., k chunk)
                loops = sch.get_loops(p)
                sch.reorder(loops[-1], loops[1])
                sch.vectorize(sch.get_loops(p)[-1])
            for b, kind in zip(blocks, kinds):
                # float16 (and int8) blocks that read no float32 rows (graphs.softmax_f16_te,
                # softmax_s8_te) in 8 lanes on aarch64, a full float16 vector (a block mixing the
                # widths LLVM re-vectorised into shuffles)
                stmt = sch.get(b)
                f16 = _is_aarch64(target) and str(stmt.writes[0].source.dtype) in ("float16", "int8") and not any(
                    str(r.source.dtype) == "float32" and len(r.region) == len(stmt.writes[0].region) for r in stmt.reads)
                width = 2 * lanes if f16 else lanes
                if kind == "S" * (rows + 1) and _divides(sch.get(sch.get_loops(b)[-1]).extent, width):
                    sch.vectorize(sch.split(sch.get_loops(b)[-1], [None, width])[1])
            return sch

    class FsmnRows(dl.ScheduleRule):
        """paraedge_tools.compiler.graphs.fsmn_rows_te, the FSMN memory in rows [T, D]: a vector of
        channels at a time, the K taps unrolled around it, channel chunks outermost so that the
        chunk's taps stay in registers over every frame; the residual and mask after it at the
        frame."""

        def apply(self, func, target, tunable):
            found = _llvm_schedule(func, target, "fsmn_rows")
            if found is None:
                return None
            sch, (block,) = found
            loops = sch.get_loops(block)
            lanes = simd_lanes(target)
            if len(loops) != 4 or not _divides(sch.get(loops[2]).extent, lanes):
                return None
            # the padded rows stay a block (inlined, every tap would test the bounds); the masked
            # input before them is inlined, read in place by the pad and by the residual after
            _inline_spatial_but(sch, {sch.get(b).name_hint for b in (block, *sch.get_producers(block))})
            b, t, c, i = loops
            co, ci = sch.split(c, [None, lanes])
            # 4 frames a step where the rows allow: the unrolled frames read overlapping rows, each
            # loaded once (K + 3 loads for 4K fmla instead of 4K): the A76 anchor's FSMN kernels
            # 0.60 -> 0.39 M instructions per audio second
            frames = 4 if _divides(sch.get(t).extent, 4) else 1
            to, ti = sch.split(t, [None, frames])
            sch.reorder(b, co, to, ti, i, ci)
            _parallel(sch, sch.fuse(b, co), parallel)
            sch.unroll(i)
            sch.vectorize(ci)  # (before the init is split off: after it, TVM refuses the loop)
            init = sch.decompose_reduction(block, i)
            sch.vectorize(sch.get_loops(init)[-1])
            _epilogue_at(sch, block, ti)
            sch.unroll(ti)
            return sch

    class DepthwiseConv(dl.ScheduleRule):
        """Depthwise Conv1d over [1, d, T + k - 1] (block group_conv1d_ncw): the streaming decoder's
        cached FSMN window (the other FSMN blocks run in rows, FsmnRows). Each channel's row of
        outputs in vectors along T, the k taps unrolled around them, the padding read in place.
        dlight's Reduction ran them as scalar loops once T is symbolic: 29 of the anchor encoder's
        97 ms at 168 frames on x86, when every FSMN block was a Conv1d."""

        def apply(self, func, target, tunable):
            found = _llvm_schedule(func, target, "group_conv1d_ncw")
            if found is None:
                return None
            sch, (block,) = found
            for producer in sch.get_producers(block):
                try:
                    sch.compute_inline(producer)
                except Exception:  # noqa: BLE001 (the weight or input itself)
                    pass
            loops = sch.get_loops(block)
            if len(loops) != 5 or sch.get_consumers(block):
                return None
            n, c, t, rc, rk = loops
            # (no vector width divides a count of tokens that is not a multiple of 4 (graphs.stream_granule_n):
            # then scalar, the taps unrolled; dlight's fallback took 32 M instructions per audio second)
            width = _divisor(sch.get(t).extent, (16, 8, 4))
            to, ti = sch.split(t, [None, width])
            sch.reorder(n, c, to, rc, rk, ti)
            _parallel(sch, sch.fuse(n, c), parallel)
            sch.unroll(rk)
            if width > 1:
                sch.vectorize(ti)  # (before the init is split off: after it, TVM refuses the loop)
            init = sch.decompose_reduction(block, rc)
            if width > 1:
                sch.vectorize(sch.get_loops(init)[-1])
            return sch

    return [Matmul(), MatmulS8(), MatmulS8Keys(), QuantizeRows(), QuantizeCols(), ByteBlocks(), RowNorm(), FsmnRows(), DepthwiseConv(), dl.cpu.GEMV(), dl.cpu.Reduction(),
            Elementwise()]


def _matmul_s8_pairs(sch, block, parallel: bool = True):
    """paraedge_tools.compiler.int8.panels_s8_pairs_te (x86 AVX2): C2[0, m, n, h] tiles of mi rows x 8 columns
    x 2 pairs (2 mi ymm accumulators) in a stack buffer, each (mi x 8 x 16 k) step one
    `vpmaddwd` intrinsic (any row count: mi = 1 when nothing else divides M); the fold to C and
    the dequant epilogue follow at the tile."""
    from paraedge_tools.compiler.int8 import pmaddwd_intrin

    _inline_side_inputs(sch, block)
    fold = sch.get_consumers(block)[0]
    b, m, n, h, kg, kk = sch.get_loops(block)
    p, j = sch.split(n, [None, 16])  # the weight panels
    mi = _divisor(sch.get(m).extent, (4, 3, 5, 2, 6))
    io, ii = sch.split(m, [None, mi])
    jo, ji = sch.split(j, [None, 8])
    tensor = _divides(sch.get(kg).extent, 4)
    kgo, kgi = sch.split(kg, [None, 4 if tensor else 1])
    sch.reorder(b, p, jo, io, kgo, ii, kgi, ji, h, kk)
    sch.reverse_compute_at(fold, io, preserve_unit_loops=True)
    _epilogue_at(sch, fold, io)
    _parallel(sch, sch.fuse(b, p, jo, io), parallel)
    if not tensor:  # K % 16 != 0: (j, h) as one 16-lane int32 vector
        sch.reorder(kk, ji, h)
        sch.unroll(kk)
        sch.vectorize(sch.fuse(ji, h))
    init = sch.decompose_reduction(block, kgo)
    sch.vectorize(sch.get_loops(init)[-1])
    if tensor:  # after the init is split off: the intrinsic accumulates into C2
        sch.tensorize(ii if mi > 1 else kgi, pmaddwd_intrin(mi))
    *_, fj, fh = sch.get_loops(fold)
    sch.reorder(fh, fj)
    sch.unroll(fh)
    sch.vectorize(fj)
    return sch


def _matmul_s8_rows(sch, body, parallel: bool = True):
    """paraedge_tools.compiler.int8.panels_s8_rows_te on dotprod targets: the 4-row `sdot` tiles over
    the first 4 * (M // 4) rows, 1-row `sdot` tiles over the rest, each into a buffer of its own
    (the tiles' accumulators in registers); the epilogue (the dequant, bias, ReLU, residual) then
    runs over the joined rows as one vectorised pass."""
    from paraedge_tools.compiler.int8 import sdot_intrin, sdot_k

    tail = sch.get_sblock("matmul_s8_tail")
    _inline_side_inputs(sch, body, tail)  # the joined rows and the epilogue: one elementwise block, the last
    last = sch.get_child_blocks(sch.get_sblock("root"))[-1]
    for block, rows in ((body, 4), (tail, 1)):
        b, m, n, k = sch.get_loops(block)
        p, j = sch.split(n, [None, 16])  # the weight panels
        step = sdot_k(rows, sch.get(k).extent)
        ko, kv = sch.split(k, [None, step])
        ko, pair = _k_pairs(sch, ko)
        if rows > 1:
            io, ii = sch.split(m, [None, rows])
            sch.reorder(b, p, io, ko, *pair, ii, j, kv)
        else:
            io, ii = m, j
            sch.reorder(b, p, m, ko, *pair, j, kv)
        local = sch.cache_write(block, 0, "global")
        sch.reverse_compute_at(local, io, preserve_unit_loops=True)
        outer = sch.fuse(b, p, io)
        if _more_than_one(sch.get(outer).extent):
            _parallel(sch, outer, parallel)
        init = sch.decompose_reduction(block, ko)
        sch.vectorize(sch.get_loops(init)[-1])
        sch.tensorize(ii, sdot_intrin(rows, step))
        for loop in pair:
            sch.unroll(loop)
        sch.vectorize(sch.get_loops(local)[-1])
    _, li = sch.split(sch.get_loops(last)[-1], [None, 4])
    sch.vectorize(li)
    outer = sch.fuse(*sch.get_loops(last)[:-2])
    if _more_than_one(sch.get(outer).extent):
        _parallel(sch, outer, parallel)
    return sch


def _k_pairs(sch, ko):
    """(the outer loop, [the inner one to unroll] or []): a tensorized tile's k-step loop split
    into pairs where 2 divides it: two `sdot` steps a loop iteration, the address arithmetic and the branch paid once per 256
    `sdot`s. Measured on the emulated A76 (anchor, 10 s): offline 28.53 -> 28.28 M instructions
    per audio second, streaming 45.9 -> 45.5; four steps an iteration took 28.99 (LLVM split its
    paired loads of B into single ones)."""
    if not _divides(sch.get(ko).extent, 2):
        return ko, []
    outer, inner = sch.split(ko, [None, 2])
    return outer, [inner]


def _parallel(sch, loop, on: bool) -> None:
    """Mark `loop` parallel, unless the bundle is for one thread: with one thread TVM still enters
    its thread pool for every parallel loop (TVMBackendParallelLaunch, an environment lookup each
    time); the anchor model's streaming decode on the emulated A76 spent 1.2 of its 52.6 M
    instructions per audio second there."""
    if on:
        sch.parallel(loop)


def _epilogue_at(sch, block, loop) -> None:
    """Compute the chain of elementwise consumers after the reduction `block` at `loop`, inlined
    into the last of them (a reduction block cannot take them in, as _inline_epilogue does)."""
    chain, b = [], block
    while len(consumers := sch.get_consumers(b)) == 1:
        chain.append(b := consumers[0])
    for c in chain[:-1]:
        try:
            sch.compute_inline(c)
        except Exception:  # noqa: BLE001 (a broadcast read, ...): stop the chain here
            chain = chain[:chain.index(c) + 1]
            break
    if chain:
        last = chain[-1]
        sch.reverse_compute_at(last, loop, preserve_unit_loops=True)
        sch.vectorize(sch.get_loops(last)[-1])


def _inline_side_inputs(sch, *blocks) -> None:
    """Inline the spatial blocks around the matmul `blocks` into their consumers, all but the
    matmuls' own inputs: the epilogue's side inputs (the attention mask's expand_dims -> equal, the
    -10000 `full`; the FSMN memory added after an INT8 Linear) are then read in place and the chain
    can join the tile. Left as blocks, they blocked _inline_epilogue, so the scores went to memory
    and came back through scalar passes over [heads, T, T] (the masked attention scores of the
    anchor encoder: 4.44 M instructions per audio second on the A76 against 2.70 for the context
    product of the same size)."""
    inputs, todo = set(), list(blocks)
    while todo:
        b = todo.pop()
        if sch.get(b).name_hint not in inputs:
            inputs.add(sch.get(b).name_hint)
            todo += sch.get_producers(b)
    _inline_spatial_but(sch, inputs)


def _inline_spatial_but(sch, keep: set) -> None:
    """compute_inline every spatial block of the function but the last and those named in `keep`
    (where TVM refuses, the block stays)."""
    from tvm import tirx

    for b in sch.get_child_blocks(sch.get_sblock("root"))[:-1]:
        if sch.get(b).name_hint in keep or any(iv.iter_type != tirx.IterVar.DataPar for iv in sch.get(b).iter_vars):
            continue
        try:
            sch.compute_inline(b)
        except Exception:  # noqa: BLE001 (read by more than the epilogue, ...): leave it a block
            pass


def _inline_epilogue(sch, block) -> None:
    """Pull the chain of elementwise consumers after `block` into it (each a sole consumer)."""
    while True:
        consumers = sch.get_consumers(block)
        if len(consumers) != 1:
            return
        try:
            sch.reverse_compute_inline(consumers[0])
        except Exception:  # noqa: BLE001 (not inlinable: a reduction, a broadcast read, ...)
            return


def _inline_spatial(sch) -> list:
    """Inline every spatial block of a fused function into its consumers (transpose -> reshape ->
    add chains), so intermediates are neither stored nor allocated per call; the blocks left."""
    from tvm import tirx

    root = sch.get_sblock("root")
    progress = True
    while progress:
        progress = False
        blocks = sch.get_child_blocks(root)
        for b in blocks[:-1]:
            if any(iv.iter_type != tirx.IterVar.DataPar for iv in sch.get(b).iter_vars):
                continue
            try:
                sch.compute_inline(b)
                progress = True
                break
            except Exception:  # noqa: BLE001
                continue
    return sch.get_child_blocks(root)


def _llvm_schedule(func, target, *blocks):
    """(schedule of `func`, its named blocks), or None when `func` is not a PrimFunc for an llvm
    target holding all of them: how each rule tells the functions it schedules."""
    from tvm import s_tir, tirx

    if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
        return None
    sch = s_tir.Schedule(func)
    try:
        return sch, [sch.get_sblock(b) for b in blocks]
    except Exception:  # noqa: BLE001 (no such block)
        return None


_exp_registered = False
# exp(x) is computed for x in [_EXP_LO, _EXP_HI] (0 below, the clamp above): 2^n (n = round(x /
# ln2) in -125..128) times exp(r) in [0.70, 1.42] then stays a normal float32 (up to 2.4e38)
_EXP_HI, _EXP_LO = 88.3762626647949, -86.6
# exp(r) = 1 + r + r^2 p(r) on |r| <= ln2/2: p of degree 3, fitted for the least maximum relative
# error (Lawson's iteration on Chebyshev nodes): 1.6e-7 evaluated in float32, where Cephes' degree 5
# gave 8e-8, for two multiply-adds and two vector constants less a lane
_EXP_P = (0.4999923, 0.16667114, 0.04189011, 0.00831253)


def _exp_f32(call):
    """float32 exp(x) (scalar or vector) as TIR arithmetic, in place of LLVM's `llvm.exp`, which
    both targets lower to one scalar libm `expf` call per lane: softmax, sigmoid and log-softmax
    stay vectorised. As Cephes' expf: x = n ln2 + r (n = round(x / ln2), ln2 in two parts),
    exp(r) = 1 + r + r^2 p(r) on |r| <= ln2/2 (p: _EXP_P); then 2^n is added into the result's
    exponent bits (an integer add: no 2^n to build and multiply). Measured against float64 numpy:
    relative error <= 2e-7 up to the clamp at 88.38 (2.4e38); below -86.6 it returns 0 (float32
    exp is below 2.2e-38 there). The A76 anchor's attention softmax: its exp loop 34 -> 31 (no
    lower clamp, no 2^n multiply) -> 27 instructions per 4 lanes (p of degree 3, not 5)."""
    from tvm import tirx

    from edge.backends.ops import LN2_HI, LN2_LO, LOG2E

    x = call.args[0]
    dtype = str(call.ty.dtype)
    if not dtype.startswith("float32"):
        return call
    lanes = int(dtype.split("x")[1]) if "x" in dtype else 1
    int_t = "int32" if lanes == 1 else f"int32x{lanes}"

    def c(v, t="float32"):
        k = tirx.const(v, t)
        return k if lanes == 1 else tirx.Broadcast(k, lanes)

    xc = tirx.Min(x, c(_EXP_HI))
    n = tirx.nearbyint(xc * c(LOG2E))
    r = xc - n * c(LN2_HI) + n * c(LN2_LO)
    p = c(_EXP_P[-1])
    for k in _EXP_P[-2::-1]:
        p = p * r + c(k)
    p = p * (r * r) + r + c(1.0)
    bits = tirx.reinterpret(int_t, p) + tirx.shift_left(tirx.Cast(int_t, n), c(23, "int32"))
    return tirx.Select(x < c(_EXP_LO), c(0.0), tirx.reinterpret(dtype, bits))


def cpu_pipeline(target, parallel: bool = True):
    """TVM's CPU pipeline with the schedules above applied after operator fusion, and exp
    lowered to vector arithmetic (_exp_f32; registered for every llvm target of this process,
    which compiles ParaEdge bundles only). Before fusion, identical calls are computed once
    (EliminateCommonSubexpr: every decoder layer quantized the same encoder output for its
    keys and values). `parallel` False (a board that runs one thread): no parallel loops."""
    import tvm
    from tvm import relax, tirx
    from tvm.relax.backend.cpu_generic import pipeline as cpu
    from tvm.s_tir import dlight as dl

    global _exp_registered
    if not _exp_registered:  # (a second registration at the same level is an error)
        tirx.register_intrin_lowering("tirx.exp", target="llvm", f=_exp_f32, level=99)
        _exp_registered = True

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod, _ctx):
        with target:
            seq = tvm.transform.Sequential([relax.transform.EliminateCommonSubexpr()]
                                           + cpu.library_dispatch_passes(target) + cpu.legalize_passes(target)
                                           + [dl.ApplyDefaultSchedule(*rules(parallel))]
                                           + cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target))
            return seq(mod)

    return _pipeline
