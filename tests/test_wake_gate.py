"""The wake gate as bench/wake.py tuned it: the refractory period, the per-keyword cutoffs and who
overrides them, detection latency on the shipped samples, and everyday talk that must not wake it.
Real microWakeWord models, no mocks; latency here is a position in the audio, not wall time."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import warnings
from math import gcd

import numpy as np
import pytest

from edge.asr.audio import load_audio
from edge.daemon import wake as W
from edge.daemon.wake import WakeError, WakeGate, WakeModel, manifest_values, resolve_manifest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(ROOT, "models", "demo", "samples")
META = json.load(open(os.path.join(SAMPLES, "samples.json"), encoding="utf-8"))
BLOCK = 320  # the daemon's 20 ms block
# bench/wake.py measured P99 latency (end of the wake word -> end of the block that fired) at 371 ms
# (okay_nabu) and 292 ms (alexa), with their verifiers, on 300 noisy renders each by seven synthesizer
# families (P50 74 / 130 ms); the clean shipped samples must stay within that
LATENCY_BOUND_S = 0.45


def _detections(gate: WakeGate, x: np.ndarray) -> list[tuple[str, int]]:
    """(model, end of the 20 ms block that fired) for every detection, streaming as the daemon does."""
    gate.reset()
    out = []
    for i in range(0, len(x), BLOCK):
        d = gate.process(x[i : i + BLOCK])
        if d is not None:
            out.append((d.name, min(len(x), i + BLOCK)))
    return out


def _wake_end(x: np.ndarray, command_start_s: float) -> int:
    """End of the wake word: the last 10 ms frame before the command within 30 dB of the loudest
    (bench/wake.py's definition)."""
    y = x[: int(command_start_s * 16000)]
    n = len(y) // 160
    rms = np.sqrt(np.mean(y[: n * 160].reshape(n, 160) ** 2, axis=1))
    return int((np.flatnonzero(rms > rms.max() * 10 ** (-30 / 20))[-1] + 1) * 160)


@pytest.fixture(scope="module")
def gate():
    return WakeGate(["okay_nabu", "alexa"])


@pytest.fixture(scope="module")
def alexa_x():
    x, _ = load_audio(os.path.join(SAMPLES, "02_alexa_en.wav"))
    return x


def _repeated(alexa_x: np.ndarray, n: int, pause_s: float = 0.0) -> np.ndarray:
    """The shipped sample's "alexa" (0.81 s) said n times, pause_s apart."""
    wake, pause = alexa_x[3000:16000], np.zeros(int(pause_s * 16000), np.float32)
    return np.concatenate([alexa_x[:3000]] + [wake, pause] * n + [np.zeros(8000, np.float32)])


def test_refractory_one_utterance_wakes_once(alexa_x):
    # "alexa alexa alexa" in one breath: without a refractory period each repetition wakes the gate
    x = _repeated(alexa_x, 3)
    assert len(_detections(WakeGate(["alexa"], 0.9, 5, refractory_s=0.0), x)) == 3
    assert len(_detections(WakeGate(["alexa"], 0.9, 5, refractory_s=1.0), x)) == 1
    assert len(_detections(WakeGate(["alexa"]), x)) == 1  # as shipped
    # the second "alexa" is still above the cutoff when a 1 s refractory period ends: what was held
    # back must not fire late, on its tail (the model re-arms only once its probability has dipped)
    assert len(_detections(WakeGate(["alexa"], 0.9, 5, refractory_s=1.0), _repeated(alexa_x, 2))) == 1
    # a wake word after a pause longer than the refractory period wakes it again
    assert len(_detections(WakeGate(["alexa"]), _repeated(alexa_x, 2, W.REFRACTORY_S + 0.3))) == 2
    with pytest.raises(WakeError, match="refractory"):
        WakeGate(["alexa"], refractory_s=-1)


def test_refractory_spans_process_calls(alexa_x):
    # counted in audio from the detection, whatever the block size
    x = _repeated(alexa_x, 3)
    for block in (160, 320, 4800):
        g = WakeGate(["alexa"], 0.9, 5, refractory_s=1.0)
        hits = [g.process(x[i : i + block]) for i in range(0, len(x), block)]
        assert sum(h is not None for h in hits) == 1, block


def test_tuned_cutoffs_apply_and_the_user_overrides_them(tmp_path):
    assert {"okay_nabu", "alexa"} <= set(W.TUNED)
    for name, (cutoff, window) in W.TUNED.items():
        m = WakeModel(name, verify=False)
        assert (m.cutoff, m.window) == (cutoff, window)
        assert 0 < cutoff < 1 and window >= 1
    for name, (cutoff, window) in W.VERIFIED.items():  # with the verifier the package ships for it
        m = WakeModel(name)
        assert m.verifier is not None and (m.cutoff, m.window) == (cutoff, window)
    g = WakeGate(["okay_nabu", "alexa"], cutoff=0.7, window=3)  # the user's wake.cutoff / wake.window
    assert [(m.cutoff, m.window) for m in g.models] == [(0.7, 3), (0.7, 3)]
    assert "cutoff 0.7, window 3" in g.describe()
    # a model the table does not list keeps its manifest's values
    assert "hey_jarvis" not in W.TUNED
    assert (WakeModel("hey_jarvis").cutoff, WakeModel("hey_jarvis").window) == manifest_values("hey_jarvis")
    # the table is for the wheel's models: a user's copy under the same name is another model
    src = resolve_manifest("alexa")
    own = tmp_path / "alexa.json"
    shutil.copy(src, own)
    shutil.copy(src.with_suffix(".tflite"), tmp_path / "alexa.tflite")
    assert (WakeModel(str(own)).cutoff, WakeModel(str(own)).window) == manifest_values("alexa")


@pytest.mark.parametrize("meta", META, ids=[m["file"] for m in META])
def test_detection_latency_on_the_shipped_samples(gate, meta):
    x, _ = load_audio(os.path.join(SAMPLES, meta["file"]))
    hits = _detections(gate, x)
    assert [h[0] for h in hits] == [meta["wake_word"]]
    end = _wake_end(x, meta["command_start_s"])
    latency = (hits[0][1] - end) / 16000
    assert 0 < latency <= LATENCY_BOUND_S, latency
    assert hits[0][1] < meta["command_start_s"] * 16000  # the command is not cut


NEGATIVES = [
    ("en-us", "Alexander said the election results would be out tomorrow morning."),
    ("en-us+f3", "Okay, let's stop for coffee at the next service station, I'm starving."),
    ("en-gb+m2", "Did you remember to lock the front door before we left?"),
    ("cmn", "今天天气真不错，我们晚上去吃火锅吧。"),
    ("cmn+f3", "孩子明天要考试，早点回家。"),
]


def test_everyday_talk_in_car_noise_does_not_wake_it(gate):
    from paraedge_tools.recipe.augment import car_noise
    from paraedge_tools.recipe.corpus import trim

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    rng = np.random.default_rng(0)
    parts = []
    for voice, text in NEGATIVES:
        wav = subprocess.run(["espeak-ng", "-v", voice, "--stdout", text], check=True, capture_output=True).stdout
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # espeak's streaming header has no length
            rate, y = wavfile.read(io.BytesIO(wav))
        g = gcd(rate, 16000)
        y = resample_poly(y.astype(np.float32) / 32768.0, 16000 // g, rate // g).astype(np.float32)
        parts += [trim(y) * 0.5, np.zeros(8000, np.float32)]
    x = np.concatenate(parts)
    p = np.mean(x[np.abs(x) > 1e-3] ** 2)
    for snr in (None, 10):
        y = x if snr is None else x + car_noise(len(x), rng) * np.sqrt(p / 10 ** (snr / 10))
        assert _detections(gate, y.astype(np.float32)) == [], snr
