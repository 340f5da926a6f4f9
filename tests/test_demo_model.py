"""The shipped demo model: sizes, exact transcripts of the shipped samples, and a recipe that still runs."""

import json
import os

import numpy as np
import pytest

from tests.conftest import ROOT

DEMO = os.path.join(ROOT, "models", "demo")
SAMPLES = os.path.join(DEMO, "samples")


def samples():
    with open(os.path.join(SAMPLES, "samples.json"), encoding="utf-8") as f:
        return json.load(f)


def test_shipped_sizes():
    quant = [os.path.join(DEMO, f) for f in ("model_quant.onnx", "decoder_quant.onnx")]
    int8_mb = sum(os.path.getsize(f) for f in quant) / 2**20
    assert int8_mb <= 15.0, int8_mb
    total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(DEMO) for f in fs) / 2**20
    assert total <= 40.0, total


def test_demo_dir_is_a_complete_funasr_dir():
    from edge.modeldir import ModelDir

    md = ModelDir(DEMO)
    assert md.config.streaming and md.tokens[:3] == ["<blank>", "<s>", "</s>"]
    assert 7e6 < sum(v.size for v in md.weights.values()) < 16e6


@pytest.mark.parametrize("backend,int8", [("ref", False), ("onnxruntime", True)])
@pytest.mark.parametrize("mode", ["offline", "streaming"])
def test_samples_decode_exactly(backend, int8, mode):
    from edge.audio import load_audio
    from edge.recognizer import Recognizer

    rec = Recognizer(DEMO, backend, int8=int8, threads=1)
    for s in samples():
        x, _ = load_audio(os.path.join(SAMPLES, s["file"]))
        command = x[int(s["command_start_s"] * 16000):]  # the daemon's wake gate cuts here
        if mode == "offline":
            text = rec.transcribe(command).text
        else:
            stream = rec.stream()
            for i in range(0, len(command), 1600):
                stream.accept(command[i : i + 1600])
            stream.finish()
            text = stream.result().text
        assert text == s["command"], (s["file"], text)


def test_recipe_runs_and_resumes(tmp_path):
    """A few steps of the real recipe on a tiny corpus: features, losses, checkpoint, resume, logs."""
    import csv

    from tools.corpus import build, read_phrases
    from tools.train import train

    ph = read_phrases()
    corpus = str(tmp_path / "corpus")
    counts = build(corpus, per_voice=1, workers=1, phrases=ph[:3] + ph[-2:], train_voices=["", "m1"],
                   held_out_voices=["m2"])
    assert counts["train"] == 10 and counts["test_clean"] == 5 and counts["test_snr10"] == 5
    rows = [json.loads(l) for l in open(os.path.join(corpus, "test_snr10.jsonl"), encoding="utf-8")]
    assert {r["voice"] for r in rows} == {"m2"} and all(r["snr"] == 10 for r in rows)
    out = str(tmp_path / "train")
    train(corpus, out, steps=4, preset="tiny", batch=4, eval_every=2, log=lambda *_: None)
    log = list(csv.DictReader(open(os.path.join(out, "log.csv"))))
    assert [int(r["step"]) for r in log] == [2, 4] and all(np.isfinite(float(r["loss"])) for r in log)
    assert os.path.exists(os.path.join(out, "curve.png")) and os.path.exists(os.path.join(out, "best.pt"))
    train(corpus, out, steps=6, preset="tiny", batch=4, eval_every=2, log=lambda *_: None)  # resumes at 4
    log = list(csv.DictReader(open(os.path.join(out, "log.csv"))))
    assert [int(r["step"]) for r in log] == [2, 4, 6]
