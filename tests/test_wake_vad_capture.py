"""Daemon components one by one: the streaming resampler, the wake gate on the shipped samples,
the silero VAD and the endpointer's rules."""

from __future__ import annotations

import json
import os
from math import gcd

import numpy as np
import pytest
from scipy.signal import resample_poly

from edge.asr.audio import StreamingResampler, load_audio
from edge.daemon.capture import EndOfInput, FileSource
from edge.daemon.vad import EndpointConfig, Endpointer, SileroVad
from edge.daemon.wake import WakeError, WakeGate, builtin_models, resolve_manifest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(ROOT, "models", "demo", "samples")
META = json.load(open(os.path.join(SAMPLES, "samples.json"), encoding="utf-8"))


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000, 16000])
def test_streaming_resampler_equals_resample_poly(rate):
    rng = np.random.default_rng(rate)
    x = (rng.standard_normal(rate) * 0.1).astype(np.float32)
    g = gcd(16000, rate)
    ref = resample_poly(x, 16000 // g, rate // g)
    r, out, i = StreamingResampler(rate), [], 0
    while i < len(x):  # ragged blocks, as a capture callback delivers them
        b = int(rng.integers(1, 700))
        out.append(r(x[i : i + b]))
        i += b
    y = np.concatenate(out)
    assert len(ref) - r.half // r.down - 1 <= len(y) <= len(ref)  # only the last half-filter waits for input
    np.testing.assert_allclose(y, ref[: len(y)], atol=1e-6)


@pytest.fixture(scope="module")
def gate():
    return WakeGate(["okay_nabu", "alexa", "hey_mycroft"])


@pytest.mark.parametrize("meta", META, ids=[m["file"] for m in META])
def test_wake_gate_fires_once_on_each_sample(gate, meta):
    x, _ = load_audio(os.path.join(SAMPLES, meta["file"]))
    gate.reset()
    hits = []
    for i in range(0, len(x), 320):
        d = gate.process(x[i : i + 320])
        if d:
            hits.append((d.name, i + d.offset))
    assert [h[0] for h in hits] == [meta["wake_word"]]
    # it fires after the wake word and before the command starts
    assert 0.5 * 16000 < hits[0][1] < meta["command_start_s"] * 16000


def test_wake_gate_ignores_the_command_alone(gate):
    gate.reset()
    for meta in META:
        x, _ = load_audio(os.path.join(SAMPLES, meta["file"]))
        x = x[int(meta["command_start_s"] * 16000) :]
        assert all(gate.process(x[i : i + 480]) is None for i in range(0, len(x), 480))


def test_wake_model_errors_are_clear(tmp_path):
    assert {"okay_nabu", "alexa", "hey_mycroft", "hey_jarvis"} <= set(builtin_models())
    with pytest.raises(WakeError, match="unknown wake word 'okay_google'.*okay_nabu"):
        WakeGate(["okay_google"])
    with pytest.raises(WakeError, match="not found"):
        WakeGate([str(tmp_path / "x.json")])
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": "bad.tflite"}')
    with pytest.raises(WakeError, match="not a microWakeWord manifest"):
        WakeGate([str(bad)])
    # a user's own model: manifest + tflite beside it, loaded by path
    src = resolve_manifest("alexa")
    own = tmp_path / "mine.json"
    own.write_text(src.read_text())
    (tmp_path / "alexa.tflite").write_bytes(src.with_suffix(".tflite").read_bytes()[:1000])
    with pytest.raises(WakeError, match="cannot load"):
        WakeGate([str(own)])


def test_silero_vad_finds_the_speech():
    meta = META[1]
    x, _ = load_audio(os.path.join(SAMPLES, meta["file"]))
    vad = SileroVad()
    probs = np.concatenate([vad.process(x[i : i + 700]) for i in range(0, len(x), 700)])
    assert len(probs) == len(x) // 512
    speech = np.flatnonzero(probs > 0.5) * 512 / 16000
    assert speech[0] < 0.5 and speech[-1] > meta["command_start_s"]
    assert probs[: int(0.2 * 16000 / 512)].max() < 0.5  # leading silence


def test_endpointer_rules():
    cfg = EndpointConfig(trailing_silence_s=0.5, no_speech_timeout_s=1.0, max_utterance_s=3.0)
    w = 512 / 16000
    ep = Endpointer(cfg)
    assert ep.update(np.zeros(int(0.9 / w))) is None
    assert ep.update(np.zeros(5)) == "no_speech"
    ep.reset()
    assert ep.update(np.r_[np.ones(10), np.full(5, 0.4), np.zeros(int(0.4 / w))]) is None  # hysteresis keeps 0.4 as speech
    assert ep.speech_end_s == pytest.approx(15 * w)
    assert ep.update(np.zeros(4)) == "silence"
    ep.reset()
    assert ep.update(np.ones(int(3.0 / w) + 1)) == "max_length"


def test_file_source_paces_and_ends(tmp_path):
    from edge.asr.audio import write_wav

    wav = tmp_path / "a.wav"
    write_wav(str(wav), np.zeros(8000, np.float32), 8000)  # 1 s at 8 kHz: converted on open
    src = FileSource(str(wav), realtime=False, block_s=0.1)
    src.open()
    chunks = []
    with pytest.raises(EndOfInput):
        while True:
            chunks.append(src.read())
    assert sum(len(c.samples) for c in chunks) == 16000 and len(chunks) == 10
