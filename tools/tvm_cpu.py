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
  computed at the tile; outer loops parallel.
- `Elementwise`: spatial functions (transposes, adds, masks): chains of blocks inlined into the
  last one (no intermediate buffers), innermost loop vectorised when its extent allows, outer
  loops fused and parallel.
- `QuantizeRows`: the INT8 activation quantizer of tools/tvm_int8.py, vectorised.
- `MatmulS8`: the INT8 panel matmul of tools/tvm_int8.py (block `matmul_s8`, C[p, m, j] over
  weights [P, K/4, 16, 4]): the same register blocking, one 16-column panel row per output row;
  on dotprod targets each (rows x 16 columns x 16 k) step is tensorized into indexed `sdot`s
  (tools.tvm_int8.sdot_intrin), elsewhere 4 k are unrolled over a 16-lane int32 vector.
- dlight's CPU `Reduction` for layer norm / softmax style reductions.
"""

from __future__ import annotations


def simd_lanes(target) -> int:
    """float32 lanes per vector register for an llvm target."""
    attrs = " ".join(str(a) for a in (target.attrs.get("mattr") or []))
    mcpu = str(target.attrs.get("mcpu", ""))
    if "avx512" in attrs or mcpu in ("skylake-avx512", "icelake-server", "sapphirerapids", "znver4"):
        return 16
    triple = str(target.attrs.get("mtriple", ""))
    if triple.startswith("aarch64") or triple.startswith("arm"):
        return 4
    return 8  # AVX2 (haswell and later)


def has_dotprod(target) -> bool:
    """aarch64 with the ARMv8.2 dot-product extension (`sdot`) enabled in the target."""
    attrs = [str(a) for a in (target.attrs.get("mattr") or [])]
    return str(target.attrs.get("mtriple", "")).startswith("aarch64") and "+dotprod" in attrs


def _divisor(n: int, candidates) -> int:
    for c in candidates:
        if c <= n and n % c == 0:
            return c
    return 1


def rules():
    from tvm import tirx
    from tvm.s_tir import dlight as dl

    class Matmul(dl.ScheduleRule):
        def apply(self, func, target, tunable):
            found = _llvm_schedule(func, target, "matmul")
            if found is None:
                return None
            sch, (block,) = found
            stmt = sch.get(block)
            kinds = [iv.iter_type for iv in stmt.iter_vars]
            if kinds.count(tirx.IterVar.CommReduce) != 1 or kinds[-1] != tirx.IterVar.CommReduce or len(kinds) < 3:
                return None
            loops = sch.get_loops(block)
            if len(loops) != len(kinds):
                return None
            extents = [int(sch.get(lp).extent) for lp in loops]
            m, n = extents[-3], extents[-2]
            mi = _divisor(m, (6, 5, 4, 3, 2))
            # 16 columns: 2 AVX2 or 4 NEON vectors; x mi rows = 12 (of 16 ymm) / 24 (of 32 q) accumulators
            nj = _divisor(n, (16, 8, 4, 2))
            batch, (i, j, k) = loops[:-3], loops[-3:]
            io, ii = sch.split(i, [None, mi])
            jo, ji = sch.split(j, [None, nj])
            # aarch64: 4 k steps per iteration (-14 % instructions on an A76: loop overhead, A loads);
            # on x86 the same unroll measured slower, so k stays rolled there
            kd = _divisor(int(sch.get(k).extent), (4, 2)) if simd_lanes(target) == 4 else 1
            ko, ki = sch.split(k, [None, kd])
            sch.reorder(*batch, jo, io, ko, ki, ii, ji)
            local = sch.cache_write(block, 0, "global")
            sch.reverse_compute_at(local, io, preserve_unit_loops=True)
            _inline_epilogue(sch, local)  # at the tile: bias, ReLU, residual, mask
            outer = sch.fuse(*batch, jo) if batch else jo
            if int(sch.get(outer).extent) > 1:
                sch.parallel(outer)
            if kd > 1:
                sch.unroll(ki)
            sch.unroll(ii)
            sch.vectorize(ji)
            if nj > 1:
                sch.vectorize(sch.get_loops(local)[-1])
            init = sch.decompose_reduction(block, ko)
            sch.vectorize(sch.get_loops(init)[-1])
            return sch

    class MatmulS8(dl.ScheduleRule):
        def apply(self, func, target, tunable):
            found = _llvm_schedule(func, target, "matmul_s8")
            if found is None:
                return None
            sch, (block,) = found
            from tools.tvm_int8 import SDOT_K, sdot_intrin

            p, m, j, k = sch.get_loops(block)
            mi = _divisor(int(sch.get(m).extent), (6, 5, 4, 3, 2))
            io, ii = sch.split(m, [None, mi])
            # (a 1-row tile: its unit loop vanishes before tensorize can match; compile's row counts
            # are multiples of 4, so only odd user buckets take the plain path)
            dot = (has_dotprod(target) and mi > 1 and int(sch.get(k).extent) % SDOT_K == 0
                   and int(sch.get(j).extent) == 16)
            ko, kv = sch.split(k, [None, SDOT_K if dot else 4])
            if dot:
                sch.reorder(p, io, ko, ii, j, kv)
            else:
                sch.reorder(p, io, ko, kv, ii, j)
            local = sch.cache_write(block, 0, "global")
            sch.reverse_compute_at(local, io, preserve_unit_loops=True)
            _inline_epilogue(sch, local)  # the dequant (cast, * s_x, * s_w) at the tile
            outer = sch.fuse(p, io)
            if int(sch.get(outer).extent) > 1:
                sch.parallel(outer)
            if not dot:
                sch.unroll(ii)
                sch.unroll(kv)
                sch.vectorize(j)
            init = sch.decompose_reduction(block, ko)
            sch.vectorize(sch.get_loops(init)[-1])
            if dot:  # after the init is split off: the intrinsic accumulates into C
                sch.tensorize(ii, sdot_intrin(mi))
            sch.vectorize(sch.get_loops(local)[-1])
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
            inner = int(sch.get(loops[-1]).extent)
            lanes = simd_lanes(target)
            if inner % lanes == 0 and inner >= lanes:
                lo, li = sch.split(loops[-1], [None, lanes])
                sch.vectorize(li)
                loops = sch.get_loops(block)[:-1]
            if len(loops) > 1:
                outer = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
                if int(sch.get(outer).extent) > 1:
                    sch.parallel(outer)
            return sch

    class QuantizeRows(dl.ScheduleRule):
        """tools.tvm_int8.quantize_rows_te: the row maxima (vectorised partial maxima), then the
        quantized rows (vectorised); two passes over an x that fits in L1."""

        def apply(self, func, target, tunable):
            found = _llvm_schedule(func, target, "q8_quant", "q8_amax")
            if found is None:
                return None
            sch, (quant, amax) = found
            lanes = simd_lanes(target)
            *rows, k = sch.get_loops(quant)
            row = sch.fuse(*rows) if len(rows) > 1 else rows[0]
            if int(sch.get(k).extent) % lanes == 0:
                _, ki = sch.split(k, [None, lanes])
                sch.vectorize(ki)
                _, ai = sch.split(sch.get_loops(amax)[-1], [None, lanes])
                partial = sch.rfactor(ai, 0)
                sch.vectorize(sch.get_loops(partial)[-1])
            if int(sch.get(row).extent) > 1:
                sch.parallel(row)
            return sch

    return [Matmul(), MatmulS8(), QuantizeRows(), dl.cpu.GEMV(), dl.cpu.Reduction(), Elementwise()]


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


def cpu_pipeline(target):
    """TVM's CPU pipeline with the schedules above applied after operator fusion."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu
    from tvm.s_tir import dlight as dl

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod, _ctx):
        with target:
            seq = tvm.transform.Sequential(cpu.library_dispatch_passes(target) + cpu.legalize_passes(target)
                                           + [dl.ApplyDefaultSchedule(*rules())]
                                           + cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target))
            return seq(mod)

    return _pipeline
