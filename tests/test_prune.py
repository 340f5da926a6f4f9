"""`paraedge prune`: structured L1 pruning of the FFN channels (tools/prune.py).

Unit tests on the numpy pruning, bad input, the FunASR oracle on pruned FunASR-made dirs, and the
pruned demo model on the shipped samples.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT
from tests.oracle import (funasr_offline, funasr_streaming, funasr_with_our_fbank, load_funasr,
                          shown_by_funasr_streaming)

DEMO = os.path.join(ROOT, "models", "demo")


def _weights(path):
    from edge.asr.modeldir import ModelDir

    md = ModelDir(path)
    return {k: v.copy() for k, v in md.weights.items()}, dict(md.config.raw)


def test_pruned_shapes_and_config(funasr_offline_b):
    from paraedge_tools.prune import ffn_blocks, prune_weights

    w, conf = _weights(funasr_offline_b)  # encoder FFN 96, decoder 80; decoders (2), decoders2 (1), decoders3
    pw, pconf = prune_weights(w, conf, 0.25, multiple=1)  # the exact ratio
    assert pconf["encoder_conf"]["linear_units"] == 72 and pconf["decoder_conf"]["linear_units"] == 60
    assert conf["encoder_conf"]["linear_units"] == 96  # the input is not modified
    dec = ffn_blocks(w, "decoder")
    assert {p.split(".")[1] for p in dec} == {"decoders", "decoders2", "decoders3"}
    assert len(ffn_blocks(w, "encoder")) == 4
    for p in ffn_blocks(w, "encoder"):
        assert pw[f"{p}.w_1.weight"].shape == (72, 48) and pw[f"{p}.w_1.bias"].shape == (72,)
        assert pw[f"{p}.w_2.weight"].shape == (48, 72) and pw[f"{p}.w_2.bias"].shape == (48,)
    for p in dec:
        assert pw[f"{p}.w_1.weight"].shape == (60, 48) and pw[f"{p}.norm.weight"].shape == (60,)
        assert pw[f"{p}.norm.bias"].shape == (60,) and pw[f"{p}.w_2.weight"].shape == (48, 60)
    changed = {k for k in w if pw[k].shape != w[k].shape}
    assert changed and all(".feed_forward." in k for k in changed)
    assert all(np.array_equal(pw[k], w[k]) for k in w if k not in changed)


def test_kept_widths_are_multiples_of_16():
    """TVM's INT8 kernels take 16-column panels: by default every kept width is a multiple of 16."""
    from paraedge_tools.prune import kept_units

    assert [kept_units(1024, r) for r in (0.1, 0.2, 0.25, 0.3, 0.5, 0.999)] == [928, 816, 768, 720, 512, 16]
    assert [kept_units(1024, r, multiple=1) for r in (0.1, 0.2, 0.3)] == [922, 819, 717]
    assert kept_units(96, 0.25) == 80 and kept_units(80, 0.25) == 64  # 72 and 60 rounded half up
    assert kept_units(12, 0.5) == 12  # narrower than one panel: kept as it is


def test_ratio_keeping_every_channel_changes_nothing(funasr_offline_a):
    from paraedge_tools.prune import prune_weights

    w, conf = _weights(funasr_offline_a)  # FFN 128: round(0.999 * 128) == 128
    pw, pconf = prune_weights(w, conf, 0.001)
    assert pconf["encoder_conf"]["linear_units"] == 128 and pconf["decoder_conf"]["linear_units"] == 128
    assert all(np.array_equal(pw[k], w[k]) for k in w)


def test_keeps_the_top_l1_channels(funasr_offline_a):
    from paraedge_tools.prune import ffn_blocks, importance, prune_weights

    w, conf = _weights(funasr_offline_a)
    pw, _ = prune_weights(w, conf, 0.5)
    for p in ffn_blocks(w, "encoder") + ffn_blocks(w, "decoder"):
        s = importance(w, p)
        w1 = w[f"{p}.w_1.weight"]
        kept = [int(np.flatnonzero((w1 == row).all(1))[0]) for row in pw[f"{p}.w_1.weight"]]
        assert kept == sorted(kept), p  # channel order is kept
        assert len(kept) == 64 and s[kept].min() >= np.delete(s, kept).max(), p
        # the importance is the documented product, by hand for one channel
        j = kept[0]
        expect = (np.abs(w1[j]).sum() + abs(w[f"{p}.w_1.bias"][j])) * np.abs(w[f"{p}.w_2.weight"][:, j]).sum()
        if f"{p}.norm.weight" in w:
            expect *= abs(w[f"{p}.norm.weight"][j]) + abs(w[f"{p}.norm.bias"][j])
        assert s[j] == pytest.approx(expect, rel=1e-6)
    # blocks choose their own channels
    enc = ffn_blocks(w, "encoder")
    assert len({tuple(np.argsort(-importance(w, p))[:64]) for p in enc}) == len(enc)


def test_dead_channels_go_first_and_the_encoder_is_unchanged(tmp_path, funasr_offline_a, speech):
    """Channels whose w_1 row, bias and w_2 column are zero contribute nothing: pruning exactly
    those leaves the encoder output (numpy reference backend) unchanged to float rounding."""
    from edge.asr.recognizer import Recognizer
    from paraedge_tools.prune import ffn_blocks, plan, prune_weights, write_model_dir

    w, conf = _weights(funasr_offline_a)
    rng = np.random.default_rng(0)
    dead = {}
    for p in ffn_blocks(w, "encoder") + ffn_blocks(w, "decoder"):
        d = np.sort(rng.choice(128, 32, replace=False))
        dead[p] = d
        w[f"{p}.w_1.weight"][d] = 0
        w[f"{p}.w_1.bias"][d] = 0
        w[f"{p}.w_2.weight"][:, d] = 0
    kept = plan(w, conf, 0.25)  # 96 of 128 kept: exactly the 32 dead ones go
    for p, d in dead.items():
        assert sorted(set(range(128)) - set(kept[p].tolist())) == d.tolist(), p
    full, pruned = str(tmp_path / "full"), str(tmp_path / "pruned")
    write_model_dir(full, w, conf, funasr_offline_a, export=False)
    write_model_dir(pruned, *prune_weights(w, conf, 0.25), funasr_offline_a, export=False)
    a, b = Recognizer(full), Recognizer(pruned)
    x = a.prepare(a.frontend(speech["zh"]))
    enc_a, alphas_a = a.backend.encode(x)
    enc_b, alphas_b = b.backend.encode(x)
    assert b.config.encoder_conf["linear_units"] == 96
    np.testing.assert_allclose(enc_b, enc_a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(alphas_b, alphas_a, rtol=1e-5, atol=1e-6)


def prune_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "edge", "prune", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("ratio", ["0", "1.5", "nan", "1", "-0.2", "inf", "abc", "0.2,1"])
def test_bad_ratio_is_one_line(tmp_path, ratio):
    p = prune_cli("--model", DEMO, "--ratio", ratio, "-o", str(tmp_path / "out"))
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("paraedge: error: --ratio") and "(0, 1)" in lines[0], p.stderr
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("case", ["model", "corpus", "finetune", "not-ours"])
def test_bad_input_is_one_line(tmp_path, case):
    out = tmp_path / "out"
    args = {"model": ("--model", str(tmp_path / "nope"), "--ratio", "0.25", "-o", str(out)),
            "corpus": ("--model", DEMO, "--ratio", "0.25", "-o", str(out), "--eval-corpus", str(tmp_path)),
            "finetune": ("--model", DEMO, "--ratio", "0.25", "-o", str(out), "--finetune-steps", "10"),
            "not-ours": ("--model", DEMO, "--ratio", "0.25", "-o", ROOT)}[case]
    p = prune_cli(*args)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("paraedge: error: "), p.stderr
    assert {"model": "not found", "corpus": "test_clean.jsonl", "finetune": "--corpus",
            "not-ours": "nothing was deleted"}[case] in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("which", ["offline_b", "streaming_a"])
def test_pruned_funasr_model_matches_funasr(which, request, tmp_path, monkeypatch, speech, speech_dir):
    """The oracle: a pruned FunASR-made dir loads in FunASR (its own classes from config.yaml +
    model.pt, and AutoModel) and in ParaEdge, and the two decode it identically."""
    from funasr import AutoModel

    from edge.asr.audio import load_audio
    from edge.asr.recognizer import Recognizer
    from paraedge_tools.prune import prune_dir

    funasr_with_our_fbank(monkeypatch)
    src = request.getfixturevalue(f"funasr_{which}")
    out = str(tmp_path / "pruned")
    rep = prune_dir(src, 0.25, out, log=lambda *_: None)
    assert json.load(open(os.path.join(out, "prune.json")))["ratio"] == 0.25
    assert rep["linear_units"]["after"] == {"offline_b": "80/64", "streaming_a": "96/96"}[which]
    files = ["config.yaml", "model.pt", "am.mvn", "tokens.json", "model.npz", "model.onnx", "model_quant.onnx"]
    for f in files + (["decoder.onnx", "decoder_quant.onnx"] if which.startswith("streaming") else []):
        assert os.path.isfile(os.path.join(out, f)), f
    model, frontend, conf = load_funasr(out)  # FunASR's classes, strict load_state_dict
    rec = Recognizer(out)
    if which.startswith("offline"):
        for x in (speech["zh"], speech["en"]):
            ids_ref, logp_ref, count_ref, _ = funasr_offline(model, frontend, x)
            ids, logp = rec.decode_features(rec.frontend(x))
            assert len(logp) == count_ref and ids == ids_ref
            if count_ref:
                np.testing.assert_allclose(logp, logp_ref, atol=1e-3)
        wav = str(speech_dir / "zh.wav")
        am = AutoModel(model=out, disable_update=True, device="cpu", disable_pbar=True, disable_log=True)
        text = am.generate(input=wav)[0]["text"]
        assert text == rec.transcribe(load_audio(wav)[0]).text
    else:
        x = speech["zh"]
        expected = funasr_streaming(model, frontend, conf, x)
        stream = rec.stream()
        for i in range(0, len(x), 1600):
            stream.accept(x[i : i + 1600])
        stream.finish()
        assert shown_by_funasr_streaming(stream.result().token_ids, out) == expected
        am = AutoModel(model=out, disable_update=True, device="cpu", disable_pbar=True, disable_log=True)
        assert am.model.encoder.encoders[0].feed_forward.w_1.out_features == 96


@pytest.fixture(scope="module")
def demo_pruned(tmp_path_factory):
    from paraedge_tools.prune import prune_dir

    out = str(tmp_path_factory.mktemp("demo") / "p25")
    prune_dir(DEMO, 0.25, out, log=lambda *_: None)
    return out


@pytest.mark.parametrize("backend,int8", [("ref", False), ("onnxruntime", True)])
def test_pruned_demo_decodes_the_samples(demo_pruned, backend, int8):
    """Measured: at 0.25 (FFN 1024 -> 768, 8.21 M -> 6.89 M parameters) without any fine-tune, all
    5 shipped samples still decode exactly, fp32 and INT8."""
    from edge.asr.audio import load_audio
    from edge.asr.recognizer import Recognizer

    rec = Recognizer(demo_pruned, backend, int8=int8, threads=1)
    assert rec.config.encoder_conf["linear_units"] == 768 and rec.config.decoder_conf["linear_units"] == 768
    samples = json.load(open(os.path.join(DEMO, "samples", "samples.json"), encoding="utf-8"))
    texts = []
    for s in samples:
        x, _ = load_audio(os.path.join(DEMO, "samples", s["file"]))
        texts.append(rec.transcribe(x[int(s["command_start_s"] * 16000):]).text)
    assert texts == [s["command"] for s in samples]


def test_pruned_demo_matches_funasr(demo_pruned, monkeypatch):
    """FunASR's own ParaformerStreaming, built from the pruned demo's config.yaml and model.pt
    (strict load), streams the shipped Mandarin samples (the oracle helper maps FunASR's text back
    to ids character by character) to the same tokens as ParaEdge: the commands."""
    from edge.asr.audio import load_audio
    from edge.asr.recognizer import Recognizer

    funasr_with_our_fbank(monkeypatch)
    model, frontend, conf = load_funasr(demo_pruned)
    assert model.encoder.encoders[0].feed_forward.w_1.out_features == 768
    rec = Recognizer(demo_pruned)
    samples = json.load(open(os.path.join(DEMO, "samples", "samples.json"), encoding="utf-8"))
    zh = [s for s in samples if s["lang"] == "zh"]
    assert len(zh) == 3
    for s in zh:
        x, _ = load_audio(os.path.join(DEMO, "samples", s["file"]))
        x = x[int(s["command_start_s"] * 16000):]
        expected = funasr_streaming(model, frontend, conf, x, step=9600, chunk_size=(10, 10, 5))
        stream = rec.stream(chunk_size=(10, 10, 5))  # the demo's default, trained for
        for i in range(0, len(x), 1600):
            stream.accept(x[i : i + 1600])
        stream.finish()
        result = stream.result()
        assert result.token_ids == expected and result.text == s["command"], s["file"]


def test_pruned_demo_is_smaller(demo_pruned):
    from paraedge_tools.prune import n_params

    quant = ("model_quant.onnx", "decoder_quant.onnx")
    before = sum(os.path.getsize(os.path.join(DEMO, f)) for f in quant)
    after = sum(os.path.getsize(os.path.join(demo_pruned, f)) for f in quant)
    assert after < 0.9 * before
    assert n_params(_weights(demo_pruned)[0]) < 0.85 * n_params(_weights(DEMO)[0])


@pytest.mark.slow
def test_prune_finetune_measures_every_step(tmp_path):
    """The whole command with a recovery fine-tune, on a small corpus (40 commands, 1 training
    voice, held-out voice m2): accuracy measured at every step, recorded in prune.json, and the
    fine-tune does not wreck the model (within 2 of 40 utterances of the unpruned one).

    The >= 97 % proof is not this test: on the full held-out sets (776 utterances each, 8 voices)
    `paraedge prune --ratio 0.25 --finetune-steps 60` measured 99.6 % / 99.4 % / 99.4 % clean
    (unpruned / pruned / fine-tuned; fp32 and INT8 alike) and 100 / 100 / 99.1 % at 10 dB, with
    2.1 min of fine-tuning. A test-sized set cannot show it: with voice m2 alone (97 utterances)
    the unpruned model scores 99.0 %, pruned 96.9 %, 6 fine-tune steps 97.9 % fp32 / 96.9 % INT8,
    and that took 2.5 min; with 10 commands one error is 10 points."""
    from paraedge_tools.recipe.corpus import build, read_phrases

    ph = read_phrases()
    zh, en = [p for p in ph if p[0] == "zh"], [p for p in ph if p[0] == "en"]
    corpus = str(tmp_path / "corpus")
    build(corpus, per_voice=1, workers=2, phrases=zh[::3][:20] + en[::1][:20], train_voices=[""],
          held_out_voices=["m2"])
    out, work = tmp_path / "p25", tmp_path / "work"
    p = prune_cli("--model", DEMO, "--ratio", "0.25", "-o", str(out), "--corpus", corpus, "--finetune-steps", "4",
                  "--work", str(work))
    assert p.returncode == 0, p.stderr[-2000:]
    assert "pruned 0.25 + 4 steps" in p.stdout and "unpruned" in p.stdout
    rep = json.load(open(out / "prune.json"))
    assert [s["step"] for s in rep["steps"]] == ["unpruned", "pruned 0.25", "pruned 0.25 + 4 steps"]
    assert rep["steps"][2]["finetune"]["steps"] == 4 and (work / "finetune" / "log.csv").exists()
    base, tuned = (rep["steps"][i]["accuracy"]["test_clean"] for i in (0, 2))
    assert tuned["n"] == 40
    for prec in ("fp32", "int8"):
        assert tuned[prec] >= base[prec] - 0.05, rep["steps"]
    # the fine-tune moved the weights, and the output is what prune.json describes
    a, b = _weights(str(work / "pruned"))[0], _weights(str(out))[0]
    assert a.keys() == b.keys() and any(not np.array_equal(a[k], b[k]) for k in a)
    from paraedge_tools.output import files_in

    assert set(files_in(str(out))) == set(rep["files"]) | {"prune.json"}
