"""Export: our PyTorch definition loads FunASR's state_dict by name; ONNX files carry what peers need."""

import os

import numpy as np
import onnx
import pytest
import torch
import yaml

from edge.asr.modeldir import ModelDir, read_tokens


def test_state_dict_names_are_funasrs(funasr_offline_a, funasr_streaming_b):
    from paraedge_models.paraformer import Paraformer

    for path in (funasr_offline_a, funasr_streaming_b):
        md = ModelDir(path)
        ours = Paraformer(md.config.raw, md.config.vocab_size)
        theirs = torch.load(os.path.join(path, "model.pt"))
        assert set(ours.state_dict()) == set(theirs)
        ours.load_state_dict(theirs, strict=True)


def test_funasr_loads_a_model_we_define(tmp_path):
    """The other direction: a dir written from our definition is a FunASR model FunASR can build."""
    from tests.oracle import build_funasr_model
    from paraedge_tools.recipe.make_model import make_model_dir

    path = make_model_dir(str(tmp_path / "m"), "tiny", streaming=True, export=False)
    md = ModelDir(path)
    funasr_model = build_funasr_model(md.config.raw)
    funasr_model.load_state_dict(torch.load(os.path.join(path, "model.pt")), strict=True)


def test_torch_model_equals_reference(exported_offline, speech):
    from edge.asr.recognizer import Recognizer
    from paraedge_models.export import load_torch_model

    rec = Recognizer(exported_offline)
    model = load_torch_model(rec.model)
    feats = rec.frontend(speech["en"])
    ids, lp = rec.decode_features(feats)
    with torch.no_grad():
        lp_t, n = model(torch.from_numpy(feats)[None], torch.tensor([len(feats)], dtype=torch.int32))
    assert int(n[0]) == len(lp)
    np.testing.assert_allclose(lp_t[0, : len(lp)].numpy(), lp, atol=1e-3)


def test_offline_files_and_metadata(exported_offline):
    md = ModelDir(exported_offline)
    for f in ("model.npz", "tokens.txt", "model.onnx", "model_quant.onnx"):
        assert md.has(f), f
    assert read_tokens(exported_offline) == md.tokens
    lines = open(md.file("tokens.txt"), encoding="utf-8").read().splitlines()
    assert lines[0] == "<blank> 0" and len(lines) == len(md.tokens)
    for f in ("model.onnx", "model_quant.onnx"):
        m = onnx.load(md.file(f))
        meta = {p.key: p.value for p in m.metadata_props}
        assert meta["vocab_size"] == str(len(md.tokens))
        assert (meta["lfr_window_size"], meta["lfr_window_shift"]) == ("7", "6")
        np.testing.assert_allclose(np.array(meta["neg_mean"].split(","), float), md.cmvn.shift, rtol=1e-6)
        np.testing.assert_allclose(np.array(meta["inv_stddev"].split(","), float), md.cmvn.scale, rtol=1e-6)
        assert [i.name for i in m.graph.input] == ["speech", "speech_lengths"]
        assert [o.name for o in m.graph.output] == ["logits", "token_num"]
    quant = onnx.load(md.file("model_quant.onnx"))
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in quant.graph.node)
    assert os.path.getsize(md.file("model_quant.onnx")) < os.path.getsize(md.file("model.onnx"))


@pytest.mark.parametrize("which", ["offline", "streaming"])
def test_int8_keeps_the_output_projections_float_as_funasr(which, request):
    """FunASR's export excludes every node named "output" from quantize_dynamic: the decoder's
    output_layer and the predictor's cif_output stay float MatMuls; every other weight MatMul is INT8."""
    d = request.getfixturevalue(f"exported_{which}")
    files = ["model_quant.onnx"] + (["decoder_quant.onnx"] if which == "streaming" else [])
    float_mm, nodes = set(), []
    for f in files:
        g = onnx.load(os.path.join(d, f)).graph
        weights = {i.name for i in g.initializer}
        nodes += g.node
        float_mm |= {n.name.split("/")[-2] for n in g.node if n.op_type == "MatMul" and weights.intersection(n.input)}
    assert float_mm == {"output_layer", "cif_output"}, float_mm
    assert sum(n.op_type == "MatMulInteger" for n in nodes) >= 20


def test_streaming_files_and_metadata(exported_streaming):
    md = ModelDir(exported_streaming)
    dec = onnx.load(md.file("decoder.onnx"))
    meta = {p.key: p.value for p in dec.metadata_props}
    n = int(meta["decoder_num_blocks"])
    assert meta["encoder_output_size"] == str(md.config.d_model)
    assert meta["decoder_kernel_size"] == str(md.config.decoder_conf["kernel_size"])
    names = [i.name for i in dec.graph.input]
    assert names == ["enc", "enc_len", "acoustic_embeds", "acoustic_embeds_len"] + [f"in_cache_{i}" for i in range(n)]
    assert [o.name for o in dec.graph.output][:2] == ["logits", "sample_ids"]
    enc = onnx.load(md.file("model.onnx"))
    assert [o.name for o in enc.graph.output] == ["enc", "enc_len", "alphas"]
    assert md.has("decoder_quant.onnx") and md.has("model_quant.onnx")


def test_export_refuses_mismatched_weights(tmp_path, funasr_offline_a):
    import shutil
    import yaml

    from edge.errors import ModelError
    from paraedge_models.export import export_dir

    d = tmp_path / "m"
    shutil.copytree(funasr_offline_a, d)
    conf = yaml.safe_load(open(d / "config.yaml"))
    conf["encoder_conf"]["num_blocks"] = 5  # config no longer matches the weights
    yaml.safe_dump(conf, open(d / "config.yaml", "w"))
    with pytest.raises(ModelError, match="lack"):
        export_dir(str(d))


def test_bench_scratch_copy_follows_its_source(tmp_path, funasr_streaming_a):
    """The benchmarks' fp32 scratch copy is reused while the model is unchanged and rebuilt when it
    changes, so new weights or a new config.yaml are never measured with a stale copy."""
    import shutil

    import yaml

    from paraedge_models.export import fp32_copy

    src, dst = tmp_path / "src", str(tmp_path / "scratch")
    shutil.copytree(funasr_streaming_a, src)
    fp32_copy(str(src), dst)
    first = os.path.getmtime(os.path.join(dst, "decoder.onnx"))
    fp32_copy(str(src), dst)
    assert os.path.getmtime(os.path.join(dst, "decoder.onnx")) == first  # reused
    conf = yaml.safe_load(open(src / "config.yaml", encoding="utf-8"))
    conf["chunk_size"] = [10, 10, 5]
    yaml.safe_dump(conf, open(src / "config.yaml", "w", encoding="utf-8"))
    fp32_copy(str(src), dst)
    assert yaml.safe_load(open(os.path.join(dst, "config.yaml"), encoding="utf-8"))["chunk_size"] == [10, 10, 5]


def test_anchor_size_model_is_the_benches_shape(tmp_path):
    """`make_model --size anchor` (what the speed benches build): FunASR layout, 15.75 M parameters,
    encoder 12 x 256, decoder 6, 1,000 tokens; seeded, so two builds are the same model."""
    import torch

    from paraedge_tools.recipe.make_model import main

    for d in ("a", "b"):
        assert main([str(tmp_path / d), "--size", "anchor", "--no-export"]) == 0
    a, b = (torch.load(tmp_path / d / "model.pt", weights_only=True) for d in ("a", "b"))
    assert sum(v.numel() for k, v in a.items() if not k.startswith("ctc")) == 15_753_289
    assert all(torch.equal(a[k], b[k]) for k in a)
    conf = yaml.safe_load(open(tmp_path / "a" / "config.yaml", encoding="utf-8"))
    assert (conf["encoder_conf"]["num_blocks"], conf["encoder_conf"]["output_size"], conf["decoder_conf"]["num_blocks"],
            conf["vocab_size"]) == (12, 256, 6, 1000)


@pytest.fixture(scope="module")
def calibration_dir(tmp_path_factory, speech):
    """MIN_CALIBRATION_WAVS distinct utterances: the session's phrases at random gains and white-noise levels."""
    from edge.asr.audio import write_wav
    from paraedge_models.export import MIN_CALIBRATION_WAVS

    d = tmp_path_factory.mktemp("calibration")
    rng, phrases = np.random.default_rng(0), list(speech.values())
    for k in range(MIN_CALIBRATION_WAVS):
        x = phrases[k % len(phrases)]
        noise = rng.standard_normal(len(x)) * np.sqrt(np.mean(x**2) / 10 ** (rng.uniform(5, 30) / 10))
        write_wav(str(d / f"{k:03d}.wav"), np.clip((x + noise) * rng.uniform(0.3, 1.0), -1, 1).astype(np.float32))
    return d


def _quant_bytes(d) -> list[bytes]:
    return [open(os.path.join(d, f), "rb").read() for f in ("model_quant.onnx", "decoder_quant.onnx")]


@pytest.mark.slow
def test_calibrated_export_smooths_the_int8_pair_exactly_in_float(tmp_path, calibration_dir):
    """`paraedge export --calibrate WAV...` measures each INT8 MatMul input's per-channel range on fp32
    decodes, keeps them (int8_ranges.npz) and smooths every LayerNorm -> MatMul pair of the INT8
    files: the float function is unchanged, the INT8 files differ from FunASR's scheme, and a later
    plain export reproduces them byte for byte."""
    import shutil

    import onnxruntime as ort

    from paraedge_models.export import RANGES, export_dir, load_ranges, main, smooth

    d = tmp_path / "m"   # the demo's real weights: its decoder fires on the English phrases
    shutil.copytree(os.path.join(os.path.dirname(os.path.dirname(__file__)), "models", "demo"), d,
                    ignore=shutil.ignore_patterns("samples", "*.md", "*.png", "*.csv"))
    plain = _quant_bytes(d)   # the shipped pair: FunASR's scheme
    assert main([str(d), "--calibrate", str(calibration_dir)]) == 0
    assert (d / RANGES).exists()
    smoothed = _quant_bytes(d)
    assert smoothed[0] != plain[0] and smoothed[1] != plain[1]
    md = ModelDir(str(d))
    ranges = load_ranges(md)
    assert set(ranges) == {"model.onnx", "decoder.onnx"} and all(ranges.values())
    # every encoder layer's two LayerNorm-fed MatMuls (attention input, FFN input) are smoothed
    src, out = md.file("model.onnx"), str(tmp_path / "smoothed.onnx")
    done = smooth(src, out, ranges["model.onnx"])
    layers = md.config.raw["encoder_conf"]["num_blocks"]
    assert len(done) == 2 * layers and all(n.endswith(("linear_q_k_v/MatMul", "w_1/MatMul")) for n in done)
    x = np.random.default_rng(0).standard_normal((1, 40, md.config.input_size)).astype(np.float32)
    feed = {"speech": x, "speech_lengths": np.array([40], np.int32)}
    a, b = (ort.InferenceSession(p, providers=["CPUExecutionProvider"]).run(None, feed) for p in (src, out))
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-4 * float(np.abs(u).max()))
    export_dir(str(d))
    assert _quant_bytes(d) == smoothed   # the kept ranges make the export reproducible


def test_calibration_input_is_checked(tmp_path, funasr_streaming_a, speech_dir, calibration_dir, capsys):
    """Absent or empty --calibrate paths, too few WAVs (the same one named twice counts once),
    --calibrate without INT8 files, an unreadable WAV, an unreadable int8_ranges.npz, ranges from
    another model or not finite: each one line, naming the file and the fix."""
    import shutil

    from edge.errors import AudioError, ModelError
    from paraedge_models.export import RANGES, export_dir, main, save_ranges

    d = tmp_path / "m"
    shutil.copytree(funasr_streaming_a, d)
    few = [str(speech_dir / f) for f in sorted(os.listdir(speech_dir))] * 200
    for argv, says in (([str(d), "--calibrate", str(tmp_path / "nothing")], "no such file"),
                       ([str(d), "--calibrate", str(tmp_path)], "0 distinct .wav files"),
                       ([str(d), "--calibrate", *few], f"{len(os.listdir(speech_dir))} distinct .wav files there; "
                                                       "smoothing needs at least 400"),
                       ([str(d), "--no-quant", "--calibrate", str(speech_dir)], "does not go with --no-quant")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        assert says in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "noise.wav").write_bytes(np.random.default_rng(0).bytes(3000))
    before = sorted(os.listdir(d))
    with pytest.raises(AudioError, match="noise.wav: not a readable WAV"):
        main([str(d), "--calibrate", str(calibration_dir), str(bad)])
    assert sorted(os.listdir(d)) == before   # nothing exported, no ranges written
    (d / RANGES).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ModelError, match=f"{RANGES}: not readable.*--calibrate"):
        export_dir(str(d))
    first_ln = "/encoder/encoders0.0/norm1/LayerNormalization_output_0"
    save_ranges(str(d / RANGES), {"model.onnx": {first_ln: np.ones(7, np.float32)}})
    with pytest.raises(ModelError, match="another model; delete"):
        export_dir(str(d))
    save_ranges(str(d / RANGES), {"model.onnx": {first_ln: np.full(560, np.nan, np.float32)}})
    with pytest.raises(ModelError, match="not finite magnitudes per channel; delete it"):
        export_dir(str(d))
