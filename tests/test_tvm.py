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


def test_streaming_buckets_follow_the_models_chunk_size(exported_streaming, tmp_path):
    import yaml

    from edge.asr.modeldir import ModelDir
    from paraedge_tools.compiler.compile import plan

    names = {f["name"] for f in plan(ModelDir(exported_streaming), buckets=(64,))}
    assert {"enc_T15", "enc_T32", "sdec_T15_N4", "enc_T64"} <= names  # [0, 10, 5]: 15-frame windows
    d = _copy(exported_streaming, tmp_path)
    conf = yaml.safe_load(open(os.path.join(d, "config.yaml"), encoding="utf-8"))
    conf["chunk_size"] = [10, 10, 5]
    yaml.safe_dump(conf, open(os.path.join(d, "config.yaml"), "w", encoding="utf-8"))
    names = {f["name"] for f in plan(ModelDir(d), buckets=(64,))}
    assert {"enc_T25", "enc_T42", "sdec_T25_N4", "sdec_T42_N8"} <= names and "enc_T15" not in names


def test_manifest_describes_bundle(tvm_offline):
    m = json.load(open(os.path.join(tvm_offline, "manifest.json")))
    assert m["board"]["name"] == "x86-host" and m["tvm_version"].startswith("0.27")
    assert set(m["files"]) >= {"model.so", "params.npz", "config.yaml", "am.mvn", "tokens.json"}
    shapes = {f["name"]: f["inputs"] for f in m["functions"]}
    assert shapes["enc_T64"]["x"] == [1, 64, 560] and "dec_T512_N516" in shapes
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


def test_too_long_input_is_a_clear_error(tvm_streaming, speech):
    rec = Recognizer(tvm_streaming, "tvm")
    feats = rec.frontend(np.tile(speech["zh"], 4))
    with pytest.raises(ModelError, match="exceeds the compiled encoder shapes \\(largest 128 frames\\)"):
        rec.decode_features(feats)


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


@pytest.mark.parametrize("shape", [(14, 96), (7, 96), (6, 40)], ids=["vpmaddwd", "vpmaddwd-1row", "untensorized"])
def test_int8_ops_equal_numpy_reference(tmp_path, shape):
    """QuantizeRowsS8 + MatMulS8Panels, x86 AVX2 schedule: int8 rows and int32 products exact,
    for tiles tensorized into `vpmaddwd` (several rows, one row: a prime M) and for K % 16 != 0."""
    import subprocess
    import sys

    from tests import tvm_int8_ops

    so = str(tmp_path / "ops.so")
    tvm_int8_ops.build("x86-host", so, shape)
    dis = subprocess.run(["objdump", "-d", so], capture_output=True, text=True).stdout
    assert ("vpmaddwd" in dis) == (shape[1] % 16 == 0)
    x, _ = tvm_int8_ops.inputs(shape=shape)
    np.savez(tmp_path / "in.npz", x=x)
    script = tmp_path / "run.py"
    script.write_text(tvm_int8_ops.RUN)
    r = subprocess.run([sys.executable, str(script), so, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    tvm_int8_ops.check(np.load(tmp_path / "out.npz"), shape)


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


def test_int8_bundle_agrees_with_reference(tvm_demo_int8):
    """Real INT8 (int8 weights and activations, int32 accumulation) on the trained demo model:
    >= 99 % of the reference's tokens over its samples, at a quarter of the weight bytes."""
    import difflib
    import glob

    demo, out = os.path.join(ROOT, "models", "demo"), tvm_demo_int8
    assert json.load(open(os.path.join(out, "manifest.json")))["model"]["int8"]
    with np.load(os.path.join(out, "params.npz")) as z:
        assert sum(z[k].size for k in z.files if z[k].dtype == np.int8) > 0.9 * sum(z[k].size for k in z.files)
    ref, q = Recognizer(demo, "ref"), Recognizer(out, "tvm", int8=True)
    matched = total = 0
    for wav in sorted(glob.glob(os.path.join(demo, "samples", "*.wav"))):
        x = load_audio(wav)[0]
        a, b = ref.transcribe(x).token_ids, q.transcribe(x).token_ids
        matched += sum(blk.size for blk in difflib.SequenceMatcher(a=a, b=b).get_matching_blocks())
        total += max(len(a), len(b))
    assert total > 20 and matched / total >= 0.99, (matched, total)


@pytest.mark.slow
def test_tune_writes_a_database_that_compile_applies(tmp_path, exported_streaming, speech):
    """`paraedge tune` on this host measures real candidates (two, to stay quick) into a MetaSchedule
    database; `paraedge compile --tuning-db` applies it and the bundle still decodes exactly."""
    from tvm.s_tir import meta_schedule as ms

    from paraedge_tools.compiler.compile import compile_bundle
    from paraedge_tools.compiler.tune import DB_FILES, tune

    db_dir = tune(exported_streaming, "x86-host", str(tmp_path / "db"), trials=2)
    db = ms.database.JSONDatabase(*(os.path.join(db_dir, f) for f in DB_FILES), allow_missing=False)
    measured = [float(r.run_secs[0]) for r in db.get_all_tuning_records() if r.run_secs]
    assert measured and all(0 < s < 1.0 for s in measured), measured  # built and run, not timed out
    out = str(tmp_path / "tuned")
    compile_bundle(exported_streaming, "x86-host", out, buckets=(128,), token_divs=(), tuning_db=db_dir)
    assert json.load(open(os.path.join(out, "manifest.json")))["tuning_db"] == "db"
    ref, tvm = Recognizer(exported_streaming, "ref"), Recognizer(out, "tvm")
    for x in (speech["zh"], speech["en"]):
        assert tvm.transcribe_streaming(x).token_ids == ref.transcribe_streaming(x).token_ids
