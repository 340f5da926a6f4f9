"""The aarch64 bundle on the emulated board: cross-compiled for qemu-a76, loaded by ParaEdge's
own runtime inside an aarch64 CPython under qemu-aarch64 -cpu cortex-a76 (TVM runtime only),
decoding real speech offline and streaming to the reference's exact tokens (that row of the
conformance matrix: tests/test_conformance.py). Inputs are short: float math is 160-340x slower under qemu."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("tvm.relax", reason="apache-tvm (host extra) is not installed")

from edge.asr.recognizer import Recognizer  # noqa: E402

pytestmark = pytest.mark.arm


def test_arm_bundle_is_aarch64_and_refused_here(arm_bundle):
    with open(os.path.join(arm_bundle, "model.so"), "rb") as f:
        head = f.read(20)
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64
    m = json.load(open(os.path.join(arm_bundle, "manifest.json")))
    assert m["target"]["mcpu"] == "cortex-a76" and "+dotprod" in m["target"]["mattr"]
    # a board of one thread: no parallel loops, so no call into TVM's thread pool per kernel
    from tests.tvm_int8_ops import dynamic_symbols

    assert "TVMBackendParallelLaunch" not in dynamic_symbols(os.path.join(arm_bundle, "model.so"))
    from edge.errors import ParaEdgeError

    with pytest.raises(ParaEdgeError, match="bundle is for board 'qemu-a76' \\(aarch64\\); this machine is x86_64"):
        Recognizer(arm_bundle, "tvm")


def test_fsmn_rows_on_emulated_board_equals_numpy_reference(armroot, tmp_path):
    """The FSMN memory in rows, NEON schedule, symbolic rows (8 * q) as bundles compile them, run on
    the emulated A76 against numpy's depthwise conv."""
    from tests import tvm_int8_ops

    so = str(tmp_path / "fsmn.so")
    tvm_int8_ops.build_fsmn("qemu-a76", so, 56, symbolic=True)
    tvm_int8_ops.check_fsmn(_run_emulated(armroot, tmp_path, so, tvm_int8_ops.fsmn_rows(56), 7), 56)


@pytest.mark.parametrize("frames,symbolic", [(56, True), (7, False)], ids=["symbolic-56", "static-7"])
def test_fp16_attention_products_on_emulated_board_equal_numpy_reference(armroot, tmp_path, frames, symbolic):
    """The float16 attention products of INT8 bundles (half-precision `fmla v.8h` tiles, lane-indexed)
    on the emulated A76 against numpy's float16 reference: symbolic rows (8 * q) as bundles compile
    them, and an odd static shape that the tiles cannot take (the plain schedule)."""
    import subprocess

    from tests import tvm_int8_ops

    so = str(tmp_path / "f16.so")
    tvm_int8_ops.build_matmul_f16("qemu-a76", so, frames, symbolic)
    if symbolic:
        dis = subprocess.run(["aarch64-linux-gnu-objdump", "-d", so], capture_output=True, text=True).stdout
        assert "fmla\tv" in dis and ".8h" in dis and ".h[7]" in dis  # lane-indexed half-precision multiply-adds
    x = tvm_int8_ops.f16_operands(frames)
    tvm_int8_ops.check_matmul_f16(_run_emulated(armroot, tmp_path, so, x, frames // 8 if symbolic else None), frames)


@pytest.mark.parametrize("t1,t2,any_rows", [(24, 40, False), (12, 16, False), (5, 24, True)],
                         ids=["8-row-tiles", "4-row-tiles", "any-rows-plain"])
def test_int8_scores_on_emulated_board_equal_numpy_reference(armroot, tmp_path, t1, t2, any_rows):
    """The int8 attention scores of A76-class bundles (graphs.scores_s8: per-row int8 queries and
    keys, `sdot` tiles of 8 or 4 query rows x 8 keys) on the emulated A76, bit-exact against
    ops.scores_s8: as the encoder (rows 8 * q), the offline decoder (tokens 4 * n) and the
    streaming decoder (any count of tokens: no tile, the plain schedule) compile them."""
    import subprocess

    from tests import tvm_int8_ops

    so = str(tmp_path / "scores.so")
    tvm_int8_ops.build_scores_s8("qemu-a76", so, t1, t2, any_rows=any_rows)
    dis = subprocess.run(["aarch64-linux-gnu-objdump", "-d", so], capture_output=True, text=True).stdout
    assert ("sdot\t" in dis) != any_rows
    x = tvm_int8_ops.scores_operands(t1, t2)
    lengths = np.array([t2 // 8, t1 if any_rows else t1 // 4])
    arrays = {"0_lengths": lengths, **x}
    tvm_int8_ops.check_scores_s8(_run_emulated(armroot, tmp_path, so, arrays, None), t1, t2)


@pytest.mark.parametrize("t1,t2", [(24, 40), (16, 64), (168, 168)], ids=["odd-key-blocks", "even-key-blocks", "10-s-clip"])
def test_int8_context_on_emulated_board_equals_numpy_reference(armroot, tmp_path, t1, t2):
    """The int8 attention softmax and context of A76-class encoders (graphs.context_s8: int8
    weights in 8-key blocks, per-channel int8 values over the valid keys packed four keys a word,
    `sdot` tiles of 8 query rows x 8 channels, the row sums from the ones channel) on the emulated
    A76, against ops.context_s8: an odd and an even number of 8-key blocks, and a 10 s clip's 168
    frames."""
    import subprocess

    from tests import tvm_int8_ops

    so = str(tmp_path / "context.so")
    tvm_int8_ops.build_context_s8("qemu-a76", so, t1, t2)
    dis = subprocess.run(["aarch64-linux-gnu-objdump", "-d", so], capture_output=True, text=True).stdout
    assert "sdot\t" in dis
    arrays = {"0_lengths": np.array([t2 // 8, t1 // 8]), **tvm_int8_ops.context_operands(t1, t2)}
    tvm_int8_ops.check_context_s8(_run_emulated(armroot, tmp_path, so, arrays, None), t1, t2)


def test_fp16_softmax_on_emulated_board_equals_numpy_reference(armroot, tmp_path):
    """The attention softmax of INT8 bundles on half-precision boards (graphs.softmax_f16_te: r and
    n in float32 lanes, the exp in 8 float16 lanes) on the emulated A76, against ops.softmax_f16."""
    import subprocess

    from tests import tvm_int8_ops

    so = str(tmp_path / "softmax.so")
    tvm_int8_ops.build_softmax_f16("qemu-a76", so, 12, 40)
    dis = subprocess.run(["aarch64-linux-gnu-objdump", "-d", so], capture_output=True, text=True).stdout
    assert "fmla\tv" in dis and ".8h" in dis  # the exp's polynomial in eight float16 lanes
    x = tvm_int8_ops.softmax_scores(12, 40)
    tvm_int8_ops.check_softmax_f16(_run_emulated(armroot, tmp_path, so, x, 5)["arr_0"], x)


def _run_emulated(armroot, tmp_path, so: str, x, q: int | None):
    """main(x) of the aarch64 module `so` (after the lengths R.Shape([q]) when q is given; x an
    array, or {name: array} passed in name order), run by the emulated board's runtime-only
    CPython (tests/tvm_int8_ops.py RUN): arr_0, arr_1, ..."""
    from tests import tvm_int8_ops
    from paraedge_tools.emu.armroot import run_python

    arrays = x if isinstance(x, dict) else {"x": x}
    np.savez(tmp_path / "in.npz", **arrays, **({"0_lengths": np.array([q])} if q is not None else {}))
    script = tmp_path / "run.py"
    script.write_text(tvm_int8_ops.RUN)
    r = run_python([str(script), so, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")], root=armroot, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return np.load(tmp_path / "out.npz")


@pytest.mark.parametrize("shape,symbolic,granule", [((14, 96), False, 8), ((168, 96), True, 8), ((3, 96), True, 1),
                                                     ((7, 96), True, 1), ((13, 96), True, 1), ((13, 80), True, 1)],
                         ids=["static-14", "symbolic-168", "any-rows-3", "any-rows-7", "any-rows-13", "k16-rows-13"])
def test_int8_sdot_ops_on_emulated_board_equal_numpy_reference(armroot, tmp_path, shape, symbolic, granule):
    """The dotprod schedule: the panel matmul tensorized into `sdot`, run on the emulated A76,
    exact against the numpy reference (and the instruction really is in the code), with static
    rows, symbolic ones (8 * q) as bundles compile frames, and any count, as the streaming decoder
    takes its tokens (4-row tiles, then 1-row tiles for the last M % 4: int8.panels_s8_rows_te).
    K 96 takes 32-k steps (int8.sdot_k), K 80 the 16-k ones."""
    import subprocess

    from tests import tvm_int8_ops

    so = str(tmp_path / "ops.so")
    tvm_int8_ops.build("qemu-a76", so, shape, symbolic, granule)
    dis = subprocess.run(["aarch64-linux-gnu-objdump", "-d", so], capture_output=True, text=True).stdout
    assert "sdot\t" in dis
    x, _ = tvm_int8_ops.inputs(shape=shape)
    tvm_int8_ops.check(_run_emulated(armroot, tmp_path, so, x, shape[0] // granule if symbolic else None), shape)


def test_fp32_fmla_matmuls_on_emulated_board_equal_numpy(armroot, tmp_path):
    """The aarch64 float32 matmul tiles (paraedge_tools.compiler.cpu.fmla_intrin, lane-indexed `fmla`) on the
    emulated A76 against numpy: a packed Linear (5-row x 16-column tiles), an attention-shaped
    batched matmul (8-column tiles) and a K the tiles cannot take (the plain schedule)."""
    import subprocess

    import tvm
    from tvm import relax

    from edge.boards import load_board
    from tests import tvm_int8_ops
    from paraedge_tools.emu.armroot import run_python
    from paraedge_tools.compiler.compile import tvm_target
    from paraedge_tools.compiler.cpu import cpu_pipeline

    shapes = {"a0": (1, 20, 64), "b0": (3, 64, 16), "a1": (1, 4, 12, 32), "b1": (1, 4, 32, 24),
              "a2": (1, 10, 6), "b2": (2, 6, 16)}
    rng = np.random.default_rng(0)
    ins = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    bb = relax.BlockBuilder()
    args = {k: relax.Var(k, relax.TensorType(s, "float32")) for k, s in shapes.items()}
    with bb.function("main", [args[k] for k in sorted(args)]):
        with bb.dataflow():
            outs = [bb.emit(relax.op.matmul(args[f"a{i}"], args[f"b{i}"])) for i in range(3)]
            out = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(out)
    board = load_board("qemu-a76")
    target = tvm_target(board)
    so = str(tmp_path / "mm.so")
    with tvm.transform.PassContext(opt_level=3):
        ex = tvm.compile(bb.get(), target, relax_pipeline=cpu_pipeline(target))
    ex.export_library(so, fcompile=tvm.support.cc.cross_compiler(board.cc))
    dis = subprocess.run(["aarch64-linux-gnu-objdump", "-d", so], capture_output=True, text=True).stdout
    assert "fmla\tv" in dis and ".s[3]" in dis  # lane-indexed multiply-adds
    np.savez(tmp_path / "in.npz", **ins)
    script = tmp_path / "run.py"
    script.write_text(tvm_int8_ops.RUN)
    r = run_python([str(script), so, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")], root=armroot, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    for i in range(3):
        ref = np.matmul(ins[f"a{i}"].astype(np.float64), ins[f"b{i}"].astype(np.float64))
        np.testing.assert_allclose(got[f"arr_{i}"], ref, rtol=1e-5, atol=1e-5)


DECODE_RUN = """
import sys, numpy as np
from edge.asr.recognizer import Recognizer
backend = Recognizer(sys.argv[1], "tvm", int8=True).backend
z = np.load(sys.argv[2])
out = {}
for n in (1, 3, 5, 37):
    lp, caches = backend.decode(z["enc"], z["embeds"][:n], None, streaming=True)
    lp2, _ = backend.decode(z["enc"], z["embeds"][:n], caches, streaming=True)  # through the kept caches
    out[f"lp{n}"], out[f"again{n}"] = lp, lp2
np.savez(sys.argv[3], **out)
"""


def test_int8_stream_decoder_takes_any_token_count_on_emulated_board(armroot, tvm_demo_int8, tmp_path):
    """The streaming decoder of an A76 INT8 bundle takes its tokens unpadded (4-row `sdot` tiles,
    then 1-row ones: 1, 3, 5 and 37 tokens, fresh and through the FSMN caches it returns) and
    decodes what the x86 INT8 bundle, which pads them to 4, decodes: the same int32 products and
    quantizers (attention kept in float32 here, as on x86), so the log-probabilities agree to float
    rounding and every token is the same."""
    from edge.asr.audio import SAMPLE_RATE, load_audio
    from edge.asr.cif import cif_offline
    from paraedge_tools.compiler.compile import compile_bundle
    from paraedge_tools.emu.armroot import run_python
    from tests.conftest import ROOT

    a76 = str(tmp_path / "a76")
    m = compile_bundle(os.path.join(ROOT, "models", "demo"), "qemu-a76", a76, int8=True, attention="float32",
                       log=lambda *_: None)
    assert {f["name"]: f["lengths"]["N"] for f in m["functions"] if "N" in f["lengths"]} == {"decoder": 4, "stream_decoder": 1}
    x86 = Recognizer(tvm_demo_int8, "tvm", int8=True)
    samples = os.path.join(ROOT, "models", "demo", "samples")
    with open(os.path.join(samples, "samples.json"), encoding="utf-8") as f:
        s = json.load(f)[0]
    x = load_audio(os.path.join(samples, s["file"]))[0][int(s["command_start_s"] * SAMPLE_RATE):]
    feats = x86.frontend(x)
    enc, _ = x86.backend.encode(x86.prepare(feats[:15]))  # a streaming window: 15 frames
    embeds = cif_offline(*x86.backend.encode(x86.prepare(feats)), x86.cif)  # the command's tokens
    embeds = np.concatenate([embeds] * (-(-37 // len(embeds))))[:37]
    np.savez(tmp_path / "in.npz", enc=enc, embeds=embeds)
    (tmp_path / "run.py").write_text(DECODE_RUN)
    r = run_python([str(tmp_path / "run.py"), a76, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")], root=armroot,
                   timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    for n in (1, 3, 5, 37):
        lp, caches = x86.backend.decode(enc, embeds[:n], None, streaming=True)
        lp2, _ = x86.backend.decode(enc, embeds[:n], caches, streaming=True)
        for name, want in ((f"lp{n}", lp), (f"again{n}", lp2)):
            assert got[name].shape == want.shape == (n, x86.config.vocab_size)
            np.testing.assert_allclose(got[name], want, atol=2e-3)
            assert (got[name].argmax(-1) == want.argmax(-1)).all()
