"""Relax pipelines for ParaEdge bundles (host side).

CUDA: TVM's default CUDA pipeline minus dlight's GEMV rule, which asserts on the CIF alpha
projection's [T,d]x[d,1] shape; Matmul/Reduction/GeneralReduction/Fallback schedule every kernel.
The Matmul rule runs without its tensor-core branch: TVM 0.27's MatmulTensorization fails on the
symbolic row counts of every fp16 matmul here ("The scope ... is not a stage pipeline", either
weight layout), so the fp16 operands go through the SIMT tiles, summed in fp32.
CPU: TVM's default pipeline plus the deterministic schedules of tools/compiler/cpu.py, without
parallel loops for a board profile of one thread (`[runtime] threads = 1`, as the emulated board).
"""

from __future__ import annotations


def simt_matmul():
    """dlight's Matmul rule, scheduled as for a GPU without tensor cores (sm_60); the kernels are
    still compiled for the board's own arch."""
    import tvm
    from tvm.s_tir import dlight as dl

    class SimtMatmul(dl.gpu.Matmul):
        def apply(self, func, target, tunable):
            simt = tvm.target.Target(dict(target.export(), arch="sm_60"), host=target.host)
            return super().apply(func, simt, tunable)

    return SimtMatmul()


def cuda_pipeline(target):
    import tvm
    from tvm import relax
    from tvm.relax.backend.cuda import pipeline as cuda
    from tvm.s_tir import dlight as dl

    legalize = [
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        dl.ApplyDefaultSchedule(simt_matmul(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()),
    ]

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod, _ctx):
        with target:
            seq = tvm.transform.Sequential(cuda.library_dispatch_passes(target) + legalize
                                           + cuda.dataflow_lower_passes(target) + cuda.finalize_passes(target))
            return seq(mod)

    return _pipeline


def relax_pipeline(board, target):
    """The Relax pipeline for a board's target ("default" = TVM's own)."""
    if board.cuda:
        return cuda_pipeline(target)
    from paraedge_tools.compiler.cpu import cpu_pipeline

    return cpu_pipeline(target, parallel=board.threads > 1)
