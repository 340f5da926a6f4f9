"""`paraedge transcribe` as a user runs it: any WAV format works and says so; bad input gives one
line and exit code 2, never a traceback; other files in the same run are still decoded."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml
from scipy.io import wavfile

from tests.conftest import ROOT, render


def run(*args):
    p = subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, text=True, cwd=ROOT)
    return p.returncode, p.stdout, p.stderr


def assert_clean_error(rc, err, *words):
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.startswith("paraedge: error:")]
    assert lines, err
    for w in words:
        assert w.lower() in err.lower(), (w, err)


@pytest.fixture(scope="module")
def formats(tmp_path_factory, speech_dir):
    """The same utterance in many WAV encodings."""
    d = tmp_path_factory.mktemp("fmt")
    pcm16 = render("打开空调", "cmn-latn-pinyin", str(d / "pcm16.wav"))
    out = {"pcm16": pcm16}
    # widening conversions of the very same samples (exact), then lossy ones
    for name, opts in {"pcm24": ["-b", "24"], "float32": ["-e", "floating-point", "-b", "32"],
                       "pcm8": ["-e", "unsigned-integer", "-b", "8"], "8k": ["-r", "8000"],
                       "48k_stereo": ["-r", "48000", "-c", "2"]}.items():
        out[name] = str(d / f"{name}.wav")
        subprocess.run(["sox", pcm16, *opts, out[name]], check=True, capture_output=True)
    return out


def test_transcribe_text_and_json(exported_offline, speech_dir):
    wav = str(speech_dir / "zh.wav")
    rc, out, err = run("transcribe", wav, "--model", exported_offline)
    assert rc == 0, err
    text = out.strip()
    assert text
    rc, out, err = run("transcribe", wav, "--model", exported_offline, "--json", "--backend", "onnxruntime")
    assert rc == 0, err
    obj = json.loads(out)
    assert obj["text"] == text and obj["mode"] == "offline"
    assert len(obj["tokens"]) == len(obj["token_ids"]) > 0
    assert obj["timings"]["rtf"] > 0 and obj["input"]["sample_rate"] == 16000


def test_transcribe_streaming(exported_streaming, speech_dir):
    wav = str(speech_dir / "zh.wav")
    outs = []
    for backend in ("ref", "onnxruntime"):
        rc, out, err = run("transcribe", wav, "--model", exported_streaming, "--streaming", "--json", "-b", backend)
        assert rc == 0, err
        outs.append(json.loads(out))
    assert outs[0]["token_ids"] == outs[1]["token_ids"] and outs[0]["mode"] == "streaming"


def test_streaming_on_offline_model_is_refused(exported_offline, speech_dir):
    rc, _, err = run("transcribe", str(speech_dir / "zh.wav"), "--model", exported_offline, "--streaming")
    assert_clean_error(rc, err, "offline model")


def test_every_wav_format_decodes(exported_offline, formats):
    from edge.asr.audio import load_audio
    from edge.asr.recognizer import Recognizer

    rec = Recognizer(exported_offline)
    base = rec.transcribe(load_audio(formats["pcm16"])[0]).token_ids
    # same samples, other containers: identical tokens
    for name in ("pcm24", "float32"):
        assert rec.transcribe(load_audio(formats[name])[0]).token_ids == base, name
    for name in ("pcm8", "8k", "48k_stereo"):
        rc, out, err = run("transcribe", formats[name], "--model", exported_offline)
        assert rc == 0 and out.strip(), err
    rc, out, err = run("transcribe", formats["48k_stereo"], "--model", exported_offline)
    assert "downmixed 2 channels" in err and "resampled 48000 Hz" in err
    rc, out, err = run("transcribe", formats["8k"], "--model", exported_offline)
    assert "resampled 8000 Hz" in err


def test_bad_audio_one_line_errors(tmp_path, exported_offline, speech_dir):
    empty = tmp_path / "empty.wav"
    wavfile.write(empty, 16000, np.zeros(0, np.int16))
    notwav = tmp_path / "notwav.wav"
    notwav.write_bytes(b"this is not a RIFF file at all" * 10)
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes((speech_dir / "zh.wav").read_bytes()[:30])
    nan = tmp_path / "nan.wav"
    x = np.zeros(16000, np.float32)
    x[100:200] = np.nan
    wavfile.write(nan, 16000, x)
    cases = {empty: "no audio", notwav: "not a readable WAV", truncated: "not a readable WAV", nan: "NaN",
             tmp_path / "missing.wav": "no such file"}
    for path, words in cases.items():
        rc, out, err = run("transcribe", str(path), "--model", exported_offline)
        assert_clean_error(rc, err, words)
        assert str(path) in err


def test_one_bad_file_loses_nothing(tmp_path, exported_offline, speech_dir):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"garbage")
    good = str(speech_dir / "zh.wav")
    rc, out, err = run("transcribe", good, str(bad), good, "--model", exported_offline)
    assert rc == 2 and out.count(good) == 2 and "bad.wav" in err and "Traceback" not in err


def test_bad_model_dirs(tmp_path, funasr_offline_a, speech_dir):
    wav = str(speech_dir / "zh.wav")
    no_mvn = tmp_path / "no_mvn"  # config.yaml names the CMVN file that is missing (without, FunASR runs no CMVN)
    shutil.copytree(funasr_offline_a, no_mvn)
    os.remove(no_mvn / "am.mvn")
    conf = yaml.safe_load((no_mvn / "config.yaml").read_text())
    conf.setdefault("frontend_conf", {})["cmvn_file"] = "am.mvn"
    (no_mvn / "config.yaml").write_text(yaml.safe_dump(conf))
    rc, _, err = run("transcribe", wav, "--model", str(no_mvn))
    assert_clean_error(rc, err, "am.mvn")

    trunc = tmp_path / "trunc"
    shutil.copytree(funasr_offline_a, trunc)
    data = (trunc / "model.pt").read_bytes()
    (trunc / "model.pt").write_bytes(data[: len(data) // 2])
    rc, _, err = run("transcribe", wav, "--model", str(trunc))
    assert_clean_error(rc, err, "model.pt")

    rc, _, err = run("transcribe", wav, "--model", str(tmp_path / "nowhere"))
    assert_clean_error(rc, err, "not found")

    bad_yaml = tmp_path / "bad_yaml"
    shutil.copytree(funasr_offline_a, bad_yaml)
    (bad_yaml / "config.yaml").write_text("model: Transformer\n")
    rc, _, err = run("transcribe", wav, "--model", str(bad_yaml))
    assert_clean_error(rc, err, "not supported")

    rc, _, err = run("transcribe", wav, "--model", funasr_offline_a, "--backend", "onnxruntime")
    assert_clean_error(rc, err, "paraedge export")


def test_truncated_npz_and_onnx(tmp_path, exported_offline, speech_dir):
    wav = str(speech_dir / "zh.wav")
    d = tmp_path / "m"
    shutil.copytree(exported_offline, d)
    for name, backend in (("model.npz", "ref"), ("model.onnx", "onnxruntime")):
        data = (d / name).read_bytes()
        (d / name).write_bytes(data[: len(data) // 3])
        rc, _, err = run("transcribe", wav, "--model", str(d), "--backend", backend)
        assert_clean_error(rc, err, name)


def test_info(exported_streaming):
    rc, out, err = run("info", exported_streaming)
    assert rc == 0, err
    info = json.loads(out)
    assert info["streaming"] is True and info["parameters"] > 0 and "decoder.onnx" in info["files"]
    assert info["cmvn"] == "am.mvn"


def test_info_says_when_there_is_no_cmvn(tmp_path, exported_streaming):
    """FunASR decodes a dir without am.mvn un-normalised (test_bad_models): nothing said so before."""
    d = tmp_path / "m"
    shutil.copytree(exported_streaming, d)
    os.remove(d / "am.mvn")
    rc, out, err = run("info", str(d))
    assert rc == 0 and json.loads(out)["cmvn"].startswith("none: no am.mvn"), err


def test_a_reader_that_leaves_is_not_a_traceback(exported_streaming):
    """`paraedge info m | head -1`: a pipe whose reader has gone raised BrokenPipeError with a traceback."""
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the first write: deterministic, not a race
    p = subprocess.run([sys.executable, "-m", "edge", "info", exported_streaming], stdout=w, stderr=subprocess.PIPE,
                       text=True, cwd=ROOT, timeout=120)
    os.close(w)
    assert p.returncode == 141 and "Traceback" not in p.stderr, p.stderr
