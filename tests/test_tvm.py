"""TVM bundles: board profiles, `paraedge compile`, the runtime-only backend against the numpy
reference (identical tokens, log-probs within 1e-3), manifest verification, foreign boards.
Bundles are compiled once per session from the tiny test models (a few seconds each)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tvm.relax", reason="apache-tvm (host extra) is not installed")

from edge.boards import BoardError, all_boards, load_board  # noqa: E402
from edge.platform import cpu_features  # noqa: E402
from edge.errors import ModelError, ParaEdgeError  # noqa: E402
from edge.asr.audio import load_audio  # noqa: E402
from edge.asr.recognizer import Recognizer  # noqa: E402
from tests.conftest import ROOT  # noqa: E402



def _copy(bundle, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(bundle, dst)
    return str(dst)


# -- boards ---------------------------------------------------------------------------------
def test_board_profiles_load():
    boards = {b.name: b for b in all_boards()}
    for name in ("jetson-orin-nano", "jetson-agx-orin", "jetson-agx-xavier", "snapdragon-rb5", "sa8155p",
                 "raspberry-pi-5", "raspberry-pi-4", "qemu-a76", "x86-host"):
        assert name in boards, name
    assert boards["jetson-agx-xavier"].target["arch"] == "sm_72" and boards["jetson-orin-nano"].target["arch"] == "sm_87"
    assert "carmel" not in json.dumps(boards["jetson-orin-nano"].host)  # TVM's tag is wrong there
    assert "+dotprod" in boards["raspberry-pi-5"].target["mattr"] and "+dotprod" not in boards["raspberry-pi-4"].target["mattr"]


def test_bad_board_profiles_are_clear(tmp_path):
    with pytest.raises(BoardError, match="unknown board 'nope' \\(known: .*x86-host"):
        load_board("nope")
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[cpu]\narch = "mips"\n')
    with pytest.raises(BoardError, match="arch 'mips' is not supported"):
        load_board(str(bad))
    bad.write_text("name = \n")
    with pytest.raises(BoardError, match="not valid TOML"):
        load_board(str(bad))
    src = open(os.path.join(ROOT, "boards", "jetson-agx-orin.toml")).read()
    bad.write_text(src.replace("host = {", "hostx = {"))
    with pytest.raises(BoardError, match="CUDA board needs \\[tvm\\] host"):
        load_board(str(bad))


def test_cli_boards_and_bad_board():
    r = subprocess.run([sys.executable, "-m", "edge", "boards"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "raspberry-pi-5" in r.stdout and "sm_87" in r.stdout
    r = subprocess.run([sys.executable, "-m", "edge", "compile", "--board", "pi9", "--model", ".", "-o", "/tmp/x"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown board 'pi9'" in r.stderr


# -- x86 bundles against the reference --------------------------------------------------------
def test_offline_tvm_equals_reference(tvm_offline, exported_offline, speech, long_speech):
    ref, tvm = Recognizer(exported_offline, "ref"), Recognizer(tvm_offline, "tvm")
    for x in (speech["zh"], speech["en"], speech["zh"][:777], long_speech):
        feats = ref.frontend(x)
        ids_r, lp_r = ref.decode_features(feats)
        ids_t, lp_t = tvm.decode_features(feats)
        assert lp_r.shape == lp_t.shape
        np.testing.assert_allclose(lp_t, lp_r, atol=1e-3)
        assert ids_t == ids_r


def test_streaming_tvm_equals_reference(tvm_streaming, exported_streaming, speech):
    ref, tvm = Recognizer(exported_streaming, "ref"), Recognizer(tvm_streaming, "tvm")
    for x in (speech["zh"], speech["en"], speech["zh2"][: 9600 * 3], speech["zh2"][: 9600 * 3 + 500]):
        assert tvm.transcribe_streaming(x).token_ids == ref.transcribe_streaming(x).token_ids
    assert tvm.transcribe(speech["zh"]).token_ids == ref.transcribe(speech["zh"]).token_ids
    # another chunk size than the one compiled for runs in the next larger bucket, still exact
    for x in (speech["zh"], speech["zh2"][: 9600 * 3 + 500]):
        assert tvm.transcribe_streaming(x, chunk_size=(10, 10, 5)).token_ids == \
            ref.transcribe_streaming(x, chunk_size=(10, 10, 5)).token_ids


@pytest.mark.parametrize("t", [1, 7, 167, 513])
def test_graphs_equal_reference_at_any_length(tvm_streaming, exported_streaming, t):
    """One function per graph serves every length: the encoder at 1, 7, 167 and 513 frames, the
    offline and streaming decoders at 1, 3 and 37 tokens over it, against the numpy reference
    (the runtime pads to multiples of 8 frames and 4 tokens, with masks)."""
    from tests.conftest import assert_seam_matches

    ref, tvm = Recognizer(exported_streaming, "ref").backend, Recognizer(tvm_streaming, "tvm").backend
    assert_seam_matches(ref, tvm, t, seed=t)


def test_one_function_per_graph_serves_every_length(exported_streaming):
    from edge.asr.modeldir import ModelDir
    from paraedge_tools.compiler.compile import plan

    fns = {f["name"]: f for f in plan(ModelDir(exported_streaming))}
    assert set(fns) == {"encoder", "decoder", "stream_decoder"}
    assert fns["encoder"]["inputs"]["x"] == [1, "T", 560] and fns["decoder"]["lengths"] == {"T": 8, "N": 4}
    assert [f["name"] for f in plan(ModelDir(exported_streaming), streaming=False)] == ["encoder", "decoder"]


def test_int8_attention_encoder_is_two_functions_picked_by_length(exported_streaming):
    """With int8 attention the encoder is "encoder" (float16 attention) up to 64 frames and
    "encoder_long" (int8 scores, softmax and context) past them; the runtime picks by the frames
    it is given."""
    from edge.asr.modeldir import ModelDir
    from edge.backends.tvm import pick_function
    from paraedge_tools.compiler.compile import plan
    from paraedge_tools.compiler.graphs import INT8_SCORES_MIN_FRAMES

    fns = plan(ModelDir(exported_streaming), attention="int8")
    assert [f["name"] for f in fns] == ["encoder", "encoder_long", "decoder", "stream_decoder"]
    assert fns[0]["max_frames"] == INT8_SCORES_MIN_FRAMES == 64 and "max_frames" not in fns[1]
    assert fns[0]["inputs"] == fns[1]["inputs"] and fns[0]["lengths"] == fns[1]["lengths"]
    for frames, name in ((1, "encoder"), (64, "encoder"), (65, "encoder_long"), (5000, "encoder_long")):
        assert pick_function(fns, "encoder", frames, "b")["name"] == name


def test_manifest_describes_bundle(tvm_offline):
    m = json.load(open(os.path.join(tvm_offline, "manifest.json")))
    assert m["board"]["name"] == "x86-host" and m["tvm_version"].startswith("0.27")
    assert set(m["files"]) >= {"model.so", "params.npz", "config.yaml", "am.mvn", "tokens.json"}
    shapes = {f["name"]: f["inputs"] for f in m["functions"]}
    assert shapes == {"encoder": {"x": [1, "T", 560], "mask": [1, "T"]},
                      "decoder": {"enc": [1, "T", 64], "mask": [1, "T"], "embeds": [1, "N", 64], "tmask": [1, "N"]}}
    assert len(m["model"]["hash"]) == 64


def test_int8_flag_on_fp32_bundle_is_refused(tvm_offline):
    from edge.errors import BackendUnavailable

    with pytest.raises(BackendUnavailable, match="this bundle is fp32; compile with --int8"):
        Recognizer(tvm_offline, "tvm", int8=True)


def test_tampered_bundle_is_refused(tvm_offline, tmp_path):
    b = _copy(tvm_offline, tmp_path)
    with open(os.path.join(b, "params.npz"), "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(ModelError, match="params.npz: sha256 does not match manifest.json"):
        Recognizer(b, "tvm")
    os.remove(os.path.join(b, "params.npz"))
    with pytest.raises(ModelError, match="params.npz: missing"):
        Recognizer(b, "tvm")


def test_foreign_board_bundle_is_refused(tvm_offline, tmp_path):
    b = _copy(tvm_offline, tmp_path)
    path = os.path.join(b, "manifest.json")
    m = json.load(open(path))
    m["board"].update(name="raspberry-pi-5", arch="aarch64", features=["asimd", "asimddp"])
    m["target"] = load_board("raspberry-pi-5").target
    json.dump(m, open(path, "w"))  # the manifest itself is not hashed: the board check must still hold
    with pytest.raises(ParaEdgeError, match="bundle is for board 'raspberry-pi-5' \\(aarch64\\); this machine is x86_64"):
        Recognizer(b, "tvm")
    m["board"].update(name="x86-future", arch="x86_64", features=["avx2", "avx1024"])
    m["target"] = load_board("x86-host").target
    json.dump(m, open(path, "w"))
    with pytest.raises(ParaEdgeError, match="this CPU lacks avx1024"):
        Recognizer(b, "tvm")


def test_old_bucket_bundle_is_refused_with_the_fix(tvm_offline, tmp_path):
    b = _copy(tvm_offline, tmp_path)
    path = os.path.join(b, "manifest.json")
    m = json.load(open(path))
    m["format"] = "paraedge-tvm-bundle/1"
    json.dump(m, open(path, "w"))
    with pytest.raises(ModelError, match="shape-bucket bundle from an older ParaEdge; recompile it with `paraedge compile`"):
        Recognizer(b, "tvm")


def test_cli_transcribe_with_tvm_runtime_only(tvm_offline, speech_dir, exported_offline):
    """The device path: runtime-only TVM (no compiler library mapped), same text as the reference."""
    wav = str(speech_dir / "zh.wav")
    code = ("import sys, runpy; sys.argv = ['paraedge', 'transcribe', %r, '--model', %r, '--backend', 'tvm'];"
            "from edge.cli import main; rc = main();"
            "maps = open('/proc/self/maps').read(); print('COMPILER' if 'libtvm_compiler' in maps else 'RUNTIME-ONLY');"
            "sys.exit(rc)") % (wav, tvm_offline)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    text, mode = r.stdout.strip().splitlines()
    assert mode == "RUNTIME-ONLY"
    assert text == Recognizer(exported_offline, "ref").transcribe(load_audio(wav)[0]).text


def test_profile_runs_on_a_bundle(tvm_offline, speech_dir, exported_offline):
    """`paraedge profile --backend tvm` on a bundle (as the ARM bench runs it on the emulated board)."""
    from edge.diag.profile import profile

    wav = str(speech_dir / "zh.wav")
    rep = profile(tvm_offline, ["tvm"], [wav], runs=1, warmup=0, peers=False, daemon=False)
    e = rep["backends"]["tvm"]
    assert e["rtf"] > 0 and rep["model_cost"]["weights_mb"] is None
    assert e["text"]["zh.wav"] == Recognizer(exported_offline, "ref").transcribe(load_audio(wav)[0]).text


def _int8_ops_run(board: str, tmp_path, shape, symbolic) -> str:
    """The two INT8 ops built for `board` (tests/tvm_int8_ops.py), run at `shape` in a runtime-only
    process and checked exact against numpy; returns the module's disassembly."""
    from tests import tvm_int8_ops

    so = str(tmp_path / "ops.so")
    tvm_int8_ops.build(board, so, shape, symbolic)
    dis = subprocess.run(["objdump", "-d", so], capture_output=True, text=True).stdout
    x, _ = tvm_int8_ops.inputs(shape=shape)
    tvm_int8_ops.check(_run_module(tmp_path, so, x, shape[0] // 8 if symbolic else None), shape)
    return dis


def _run_module(tmp_path, so: str, x: np.ndarray, q: int | None):
    """main(x) of the module `so` (after the lengths R.Shape([q]) when q is given), run in a
    runtime-only process (tests/tvm_int8_ops.py RUN): its outputs, arr_0, arr_1, ..."""
    from tests import tvm_int8_ops

    np.savez(tmp_path / "in.npz", x=x, **({"0_lengths": np.array([q])} if q is not None else {}))
    script = tmp_path / "run.py"
    script.write_text(tvm_int8_ops.RUN)
    r = subprocess.run([sys.executable, str(script), so, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return np.load(tmp_path / "out.npz")


@pytest.mark.parametrize("shape,symbolic", [((14, 96), False), ((7, 96), False), ((6, 40), False), ((8, 96), True),
                                            ((168, 96), True)],
                         ids=["vpmaddwd", "vpmaddwd-1row", "untensorized", "symbolic-8", "symbolic-168"])
def test_int8_ops_equal_numpy_reference(tmp_path, shape, symbolic):
    """The row quantizer + panel matmul, x86 AVX2 schedule: int8 rows and int32 products exact,
    for tiles tensorized into `vpmaddwd` (several rows, one row: a prime M), for K % 16 != 0, and
    with symbolic rows as bundles compile them (8 * q rows, one module run at its length)."""
    dis = _int8_ops_run("x86-host", tmp_path, shape, symbolic)
    assert ("vpmaddwd" in dis) == (shape[1] % 16 == 0)


@pytest.mark.parametrize("frames,symbolic", [(7, False), (1, False), (8, True), (168, True)],
                         ids=["static-7", "static-1", "symbolic-8", "symbolic-168"])
def test_fsmn_rows_equals_numpy_reference(tmp_path, frames, symbolic):
    """The FSMN memory in rows (channel vectors, taps unrolled, x86 schedule) against numpy's depthwise
    conv, at odd static lengths (the padding wider than the clip at 1 frame) and symbolic ones."""
    from tests import tvm_int8_ops

    so = str(tmp_path / "fsmn.so")
    tvm_int8_ops.build_fsmn("x86-host", so, frames, symbolic)
    x = tvm_int8_ops.fsmn_rows(frames)
    tvm_int8_ops.check_fsmn(_run_module(tmp_path, so, x, frames // 8 if symbolic else None), frames)


VNNI = ("avx512f", "avx512bw", "avx512vl", "avx512_vnni")


@pytest.mark.skipif(not set(VNNI) <= cpu_features(), reason="this CPU has no AVX-512 VNNI (x86-avx512 bundles)")
@pytest.mark.parametrize("shape,symbolic", [((14, 96), False), ((7, 96), False), ((6, 40), False), ((168, 96), True)],
                         ids=["vpdpbusd", "1row-untensorized", "k40-untensorized", "symbolic-168"])
def test_int8_ops_vnni_equal_numpy_reference(tmp_path, shape, symbolic):
    """The same ops on the x86-avx512 profile: activations as q + 128 (uint8) into `vpdpbusd`, the
    weights' column sums taken off after; exact wherever the tile is tensorized or not."""
    dis = _int8_ops_run("x86-avx512", tmp_path, shape, symbolic)
    assert ("vpdpbusd" in dis) == (shape[0] % 2 == 0 and shape[1] % 16 == 0)


def test_traced_int8_ops_equal_numpy_reference():
    """The torch custom ops the graphs are traced with (their eager side) compute what the numpy
    reference and the TVM kernels compute: int8 rows, scales, exact int32 panel products."""
    import torch

    from edge.backends import ops
    from paraedge_tools.compiler.graphs import int8_ops
    from paraedge_tools.compiler.int8 import column_sums
    from tests import tvm_int8_ops

    quantize, matmul, matmul_u8 = int8_ops()
    x, w_nk = tvm_int8_ops.inputs()
    q, s = quantize(torch.from_numpy(x))
    q_ref, s_ref = ops.quantize_rows_s8(x[0])
    np.testing.assert_array_equal(q.numpy()[0], q_ref)
    np.testing.assert_allclose(s.numpy()[0, :, 0], np.maximum(s_ref, np.float32(1e-12 / 127)), rtol=1e-6)
    w4 = tvm_int8_ops.panels(w_nk)
    acc = matmul(q, torch.from_numpy(w4)).numpy()
    np.testing.assert_array_equal(acc[0], ops.gemm_s8s32(q_ref, w_nk))
    colsum = torch.from_numpy(column_sums(w4))  # (VNNI's offset term; the eager op needs no offset)
    np.testing.assert_array_equal(matmul_u8(q, torch.from_numpy(w4), colsum).numpy(), acc)
    np.testing.assert_array_equal(colsum.numpy(), w_nk.astype(np.int64).sum(axis=1).reshape(-1, 16))


def test_traced_attention_ops_equal_numpy_reference():
    """The attention products' torch ops (their eager side, which tracing sees) are the numpy
    reference's: float16 products (matmul_f16), int8 scores (scores_s8) and the int8 softmax and
    context (context_s8: the packed words, the key blocks, the ones channel's row sums). Each board gets the
    best its arithmetic allows; asking for more (or on an fp32 bundle) is a one-line error naming
    the board."""
    import torch

    from edge.backends import ops
    from edge.boards import load_board
    from paraedge_tools.compiler.compile import attention_dtype
    from paraedge_tools.compiler.graphs import context_s8, matmul_f16_op, scores_s8, softmax_f16_op
    from tests import tvm_int8_ops

    x = tvm_int8_ops.f16_operands(12)
    got = matmul_f16_op()(torch.from_numpy(x["c_p"]), torch.from_numpy(x["d_v"])).numpy()
    np.testing.assert_array_equal(got, ops.matmul_f16(x["c_p"], x["d_v"]))
    x = tvm_int8_ops.scores_operands(5, 16)
    got = scores_s8(torch.from_numpy(x["a_q"]), torch.from_numpy(x["b_k"]), 2).numpy()
    np.testing.assert_array_equal(got[0], ops.scores_s8(x["a_q"][0], x["b_k"][0], 2))
    x = tvm_int8_ops.context_operands(8, 24)
    got = context_s8(*(torch.from_numpy(x[k]) for k in ("a_scores", "b_v")), 2, torch.from_numpy(x["c_mask"])).numpy()
    np.testing.assert_array_equal(got[0], ops.context_s8(x["a_scores"][0], x["b_v"][0], 2, x["c_mask"][0]))
    x = tvm_int8_ops.softmax_scores(6, 24)
    got = softmax_f16_op()(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got, ops.softmax_f16(x))
    # against float32's softmax: within 0.2 % where a weight is above 1e-3, 0 only below 2e-4
    exact = ops.softmax(x.astype(np.float64))
    big = exact > 1e-3
    assert np.max(np.abs(got[big] - exact[big]) / exact[big]) < 2e-3
    assert np.all(exact[got == 0] < 2e-4)
    a76 = load_board("qemu-a76")
    assert attention_dtype(a76, int8=True) == "int8" and attention_dtype(a76, True, "float16") == "float16"
    assert attention_dtype(a76, True, "float32") == "float32"
    assert attention_dtype(load_board("raspberry-pi-4"), int8=True) == "float32"  # Cortex-A72: no fp16 arithmetic
    for board, int8, ask in (("x86-host", True, "float16"), ("qemu-a76", False, "float16"), ("x86-host", True, "int8")):
        with pytest.raises(ParaEdgeError, match=f"{ask} attention .* {board}"):
            attention_dtype(load_board(board), int8, ask)
    with pytest.raises(ParaEdgeError, match="attention 'int4': choose one of int8, float16, float32"):
        attention_dtype(a76, True, "int4")


@pytest.mark.parametrize("lanes", [1, 8])
def test_exp_lowering_equals_numpy(tmp_path, lanes):
    """The CPU pipeline's exp (paraedge_tools.compiler.cpu._exp_f32, scalar and vectorised) against float64
    numpy: relative error <= 2e-7 up to its clamp, 0 where float32 exp underflows, no libm call."""
    import tvm
    from tvm import s_tir, te

    from paraedge_tools.compiler.cpu import _EXP_HI, _EXP_LO, cpu_pipeline

    target = tvm.target.Target(load_board("x86-host").target)
    cpu_pipeline(target)  # registers the lowering
    n = 4096
    a = te.placeholder((n,), "float32", name="a")
    sch = s_tir.Schedule(te.create_prim_func([a, te.compute((n,), lambda i: te.exp(a[i]), name="e")]))
    if lanes > 1:
        sch.vectorize(sch.split(sch.get_loops(sch.get_sblock("e"))[0], [None, lanes])[1])
    lib = tvm.compile(sch.mod, target)
    so = str(tmp_path / "exp.so")
    lib.export_library(so)
    assert "expf" not in subprocess.run(["objdump", "-d", so], capture_output=True, text=True).stdout
    x = np.concatenate([np.linspace(-100, 88.3, n - 6), [-np.inf, -1e30, 0.0, 1e-8, -1.0, 1.0]]).astype(np.float32)
    out = tvm.runtime.tensor(np.empty(n, np.float32))
    lib["main"](tvm.runtime.tensor(x), out)
    got, ref = out.numpy(), np.exp(x.astype(np.float64))
    live = x >= _EXP_LO
    assert np.all(got[~live] == 0)
    assert np.max(np.abs(got[live] - ref[live]) / ref[live]) <= 2e-7
    assert got[x == 0.0][0] == 1.0 and x.max() < _EXP_HI


@pytest.mark.parametrize("rows,width", [(72, 256), (25, 42)], ids=["vectorised", "odd-width"])
def test_row_ops_equal_numpy_reference(rows, width):
    """Layer norm, softmax, log-softmax and sigmoid as the CPU pipeline compiles them (RowNorm's
    16-lane partial reductions, the polynomial exp) against edge/backends/ops.py, on a row width the
    vector schedule takes and on one it does not."""
    import tvm
    from tvm import relax

    from edge.backends import ops
    from paraedge_tools.compiler.cpu import cpu_pipeline

    rng = np.random.default_rng(1)
    x = (rng.standard_normal((1, rows, width)) * 4).astype(np.float32)
    g, b = rng.standard_normal(width).astype(np.float32), rng.standard_normal(width).astype(np.float32)
    bb = relax.BlockBuilder()
    xv, gv, bv = (relax.Var(n, relax.TensorType(a.shape, "float32")) for n, a in (("x", x), ("g", g), ("b", b)))
    with bb.function("main", [xv, gv, bv]):
        with bb.dataflow():
            outs = [bb.emit(relax.op.nn.layer_norm(xv, gv, bv, axes=[-1], epsilon=1e-12)),
                    bb.emit(relax.op.nn.softmax(xv, axis=-1)), bb.emit(relax.op.nn.log_softmax(xv, axis=-1)),
                    bb.emit(relax.op.sigmoid(xv))]
            out = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(out)
    target = tvm.target.Target(load_board("x86-host").target)
    with tvm.transform.PassContext(opt_level=3):
        ex = tvm.compile(bb.get(), target, relax_pipeline=cpu_pipeline(target))
    got = [o.numpy() for o in relax.VirtualMachine(ex, tvm.cpu())["main"](*(tvm.runtime.tensor(a) for a in (x, g, b)))]
    refs = [ops.layer_norm(x, g, b), ops.softmax(x), ops.log_softmax(x), ops.sigmoid(x)]
    for name, y, ref in zip(("layer_norm", "softmax", "log_softmax", "sigmoid"), got, refs):
        np.testing.assert_allclose(y, ref, rtol=2e-5, atol=2e-6, err_msg=name)


def _agrees_with_reference(bundle: str) -> None:
    """An INT8 demo bundle: >= 99 % of the numpy reference's tokens over the commands of the demo's
    samples, what the daemon decodes once the wake word has fired. The wake word itself is not in the
    model's vocabulary: decoded whole, its guesses are near ties that INT8 may flip (the stage-3
    weights: 2 of 32 tokens, both inside "okay nabu", the commands' 23 tokens all equal)."""
    import difflib

    from edge.asr.audio import SAMPLE_RATE
    from edge.demo import load_samples

    demo = os.path.join(ROOT, "models", "demo")
    ref, q = Recognizer(demo, "ref"), Recognizer(bundle, "tvm", int8=True)
    matched = total = 0
    for s in load_samples(demo):
        x = load_audio(os.path.join(demo, "samples", s["file"]))[0][int(s["command_start_s"] * SAMPLE_RATE):]
        a, b = ref.transcribe(x).token_ids, q.transcribe(x).token_ids
        matched += sum(blk.size for blk in difflib.SequenceMatcher(a=a, b=b).get_matching_blocks())
        total += max(len(a), len(b))
    assert total > 20 and matched / total >= 0.99, (matched, total)


def test_int8_bundle_agrees_with_reference(tvm_demo_int8):
    """Real INT8 (int8 weights and activations, int32 accumulation) on the trained demo model:
    >= 99 % of the reference's tokens over its samples, at a quarter of the weight bytes."""
    out = tvm_demo_int8
    assert json.load(open(os.path.join(out, "manifest.json")))["model"]["int8"]
    with np.load(os.path.join(out, "params.npz")) as z:
        assert sum(z[k].size for k in z.files if z[k].dtype == np.int8) > 0.9 * sum(z[k].size for k in z.files)
    _agrees_with_reference(out)


@pytest.mark.skipif(not set(VNNI) <= cpu_features(), reason="this CPU has no AVX-512 VNNI (x86-avx512 bundles)")
def test_vnni_bundle_agrees_with_reference(tmp_path):
    """The demo's INT8 bundle for x86-avx512 (`vpdpbusd` on q + 128, the column sums stored with the
    weights and taken off in the tile): its matmuls are tensorized and it keeps the reference's
    tokens as the AVX2 one does."""
    from paraedge_tools.compiler.compile import compile_bundle

    out = str(tmp_path / "vnni")
    compile_bundle(os.path.join(ROOT, "models", "demo"), "x86-avx512", out, int8=True)
    assert "vpdpbusd" in subprocess.run(["objdump", "-d", os.path.join(out, "model.so")],
                                        capture_output=True, text=True).stdout
    _agrees_with_reference(out)


MAX_DEMO_BUNDLE_MB = 15.0  # the mission's artefact: a 15 MB INT8 Paraformer, everything in the bundle included


def _bundle_mb(bundle: str) -> float:
    return sum(os.path.getsize(os.path.join(bundle, f)) for f in os.listdir(bundle)) / 1e6


def test_demo_int8_bundles_fit_the_size_budget(tvm_demo_int8, tmp_path):
    """The demo model's INT8 bundle, every file counted, for this host and for a Raspberry Pi 5
    (aarch64, sdot): at most 15 MB. Weights are stored once (params.npz holds each name once and
    the offline and streaming decoders share them). Compile time is printed, not asserted."""
    import time

    from paraedge_tools.compiler.compile import compile_bundle

    out = str(tmp_path / "pi5")
    t0 = time.perf_counter()
    m = compile_bundle(os.path.join(ROOT, "models", "demo"), "raspberry-pi-5", out, int8=True, log=lambda *_: None)
    print(f"raspberry-pi-5 demo INT8 bundle: {time.perf_counter() - t0:.0f} s to compile, {_bundle_mb(out):.1f} MB")
    for bundle in (tvm_demo_int8, out):
        assert _bundle_mb(bundle) <= MAX_DEMO_BUNDLE_MB, (bundle, _bundle_mb(bundle))
    # the A76 has the dot product and half-precision arithmetic: the attention scores run in int8
    # there (and the long encoder's softmax and context); on x86, float32
    assert m["model"]["attention"] == "int8"
    # a board of 4 threads gets parallel loops (the emulated board's bundle, of one thread, none:
    # tests/test_tvm_arm.py)
    from tests.tvm_int8_ops import dynamic_symbols

    assert "TVMBackendParallelLaunch" in dynamic_symbols(os.path.join(out, "model.so"))
    assert json.load(open(os.path.join(tvm_demo_int8, "manifest.json")))["model"]["attention"] == "float32"
    names = [p for f in m["functions"] for p in f["params"]]
    dec = {f["name"]: set(f["params"]) for f in m["functions"]}
    assert dec["decoder"] & dec["stream_decoder"] and len(np.load(os.path.join(out, "params.npz")).files) == len(set(names))
