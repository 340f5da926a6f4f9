"""Deterministic CPU schedules for ParaEdge's TVM bundles (host side, no tuning).

Untuned TVM code runs every matmul as a naive scalar triple loop (~60x slower than onnxruntime
on the demo model). MetaSchedule would take hours on 2 cores, so these rules write the schedule
directly, the way dlight does for GPUs:

- `Matmul`: any fused function whose main block is C[b.., i, j] += A[b.., i, k] * B[b.., k, j]
  (Linear layers, attention scores/context). Register-blocked micro-kernel: i split by a divisor
  mi <= 6 of M, j by nj = 16 (when it divides N), loop order
  (b, jo, io, k, ii, ji) so a K x nj panel of B stays in cache across the M rows; ii unrolled, ji
  vectorised; the accumulator tile is a `local` cache so LLVM keeps it in registers; the
  epilogue (bias, ReLU, residual, mask) is computed at the tile; outer loops parallel.
- `Elementwise`: spatial-only functions (transposes, adds, masks): innermost loop vectorised
  when its extent allows, outer loops fused and parallel.
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


def _divisor(n: int, candidates) -> int:
    for c in candidates:
        if c <= n and n % c == 0:
            return c
    return 1


def rules():
    from tvm import s_tir, tirx
    from tvm.s_tir import dlight as dl

    class Matmul(dl.ScheduleRule):
        def apply(self, func, target, tunable):
            if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
                return None
            sch = s_tir.Schedule(func)
            try:
                block = sch.get_sblock("matmul")
            except Exception:  # noqa: BLE001 (no such block: not a matmul)
                return None
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
            local = sch.cache_write(block, 0, "local")
            sch.reverse_compute_at(local, io, preserve_unit_loops=True)
            for c in sch.get_consumers(local):  # epilogue at the tile: bias, ReLU, residual, mask
                try:
                    sch.reverse_compute_inline(c)
                except Exception:  # noqa: BLE001
                    pass
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

    class Elementwise(dl.ScheduleRule):
        def apply(self, func, target, tunable):
            if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
                return None
            sch = s_tir.Schedule(func)
            blocks = sch.get_child_blocks(sch.get_sblock("root")) if _has_root(sch) else []
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

    return [Matmul(), dl.cpu.GEMV(), dl.cpu.Reduction(), Elementwise()]


def _has_root(sch) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except Exception:  # noqa: BLE001
        return False


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
