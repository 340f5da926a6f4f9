"""The second-stage wake verifier: numpy inference equals the torch network it was trained as, the
training tool runs end to end (a tiny run), the gate uses a verifier and honours its veto, and a
broken verifier file is a one-line error naming it. Real microWakeWord models throughout."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from edge.asr.audio import load_audio
from edge.daemon import wake as W
from edge.daemon.verify import FRAMES, KERNEL, STRIDE, VerifierError, WakeVerifier
from edge.daemon.wake import WakeError, WakeGate, WakeModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(ROOT, "models", "demo", "samples")
BLOCK = 320


def _weights(c: int = 8, seed: int = 0, bo: float = 0.0) -> dict:
    rng = np.random.default_rng(seed)
    w = {"mu": rng.normal(0, 1, 40), "sd": rng.uniform(0.5, 2, 40), "w0": rng.normal(0, 0.2, (c, 40, KERNEL)),
         "b0": rng.normal(0, 0.1, c), "w1": rng.normal(0, 0.2, (c, c, KERNEL)), "b1": rng.normal(0, 0.1, c),
         "w2": rng.normal(0, 0.2, (c, c, KERNEL)), "b2": rng.normal(0, 0.1, c), "wo": rng.normal(0, 0.3, 2 * c),
         "bo": np.array([bo])}
    return {k: v.astype(np.float32) for k, v in w.items()}


def _save(path, w: dict, **meta) -> str:
    np.savez(path, meta=np.array(json.dumps({"keyword": "alexa", "cutoff": 0.5, **meta})), **w)
    return str(path)


def test_numpy_verifier_equals_the_torch_network(tmp_path):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    w = _weights()
    v = WakeVerifier(_save(tmp_path / "v.npz", w))
    rng = np.random.default_rng(1)
    for n in (FRAMES, 37, 250):  # full, short (zero-padded at the start), long (the last FRAMES used)
        frames = rng.normal(0, 3, (n, 40)).astype(np.float32)
        x = np.zeros((FRAMES, 40), np.float32)
        x[FRAMES - min(n, FRAMES):] = frames[-FRAMES:]
        h = torch.tensor((x - w["mu"]) / w["sd"]).T[None]
        for i in range(3):
            h = F.relu(F.conv1d(h, torch.tensor(w[f"w{i}"]), torch.tensor(w[f"b{i}"]), stride=STRIDE))
        z = torch.cat([h.mean(2), h.amax(2)], 1) @ torch.tensor(w["wo"]) + torch.tensor(w["bo"])
        assert v.score(frames) == pytest.approx(float(torch.sigmoid(z)), abs=1e-5)


@pytest.mark.parametrize("damage", ["truncated", "missing", "shape", "nan", "cutoff"])
def test_a_broken_verifier_is_a_one_line_error_naming_the_file(tmp_path, damage):
    path = tmp_path / "alexa_verifier.npz"
    w = _weights()
    if damage == "truncated":
        _save(path, w)
        path.write_bytes(path.read_bytes()[:300])
    elif damage == "missing":
        del w["w2"]
        _save(path, w)
    elif damage == "shape":
        w["w1"] = w["w1"][:, :, :3]
        _save(path, w)
    elif damage == "nan":
        w["wo"][0] = np.nan
        _save(path, w)
    else:
        _save(path, w, cutoff=1.5)
    with pytest.raises(VerifierError) as e:
        WakeVerifier(path)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg


@pytest.fixture()
def user_alexa(tmp_path):
    """A copy of the wheel's alexa model as a user's model (so a verifier can sit beside it)."""
    src = W.resolve_manifest("alexa")
    manifest = json.loads(src.read_text())
    shutil.copy(src, tmp_path / "alexa.json")
    shutil.copy(src.parent / manifest["model"], tmp_path / manifest["model"])
    return tmp_path / "alexa.json"


def _fires(gate: WakeGate, x: np.ndarray) -> list[str]:
    gate.reset()
    return [d.name for i in range(0, len(x), BLOCK) if (d := gate.process(x[i : i + BLOCK])) is not None]


def test_the_gate_honours_a_veto_and_a_verifier_beside_a_user_model(user_alexa):
    x, _ = load_audio(os.path.join(SAMPLES, "02_alexa_en.wav"))
    assert WakeModel(str(user_alexa)).verifier is None
    assert _fires(WakeGate([str(user_alexa)], cutoff=0.9), x) == ["alexa"]
    _save(user_alexa.with_name("alexa_verifier.npz"), _weights(bo=-100.0))  # rejects everything
    gate = WakeGate([str(user_alexa)], cutoff=0.9)
    assert gate.models[0].verifier is not None and "verifier" in gate.describe()
    assert _fires(gate, x) == [] and gate.vetoed > 0
    assert _fires(WakeGate([str(user_alexa)], cutoff=0.9, verify=False), x) == ["alexa"]
    user_alexa.with_name("alexa_verifier.npz").write_bytes(b"not a zip")
    with pytest.raises(WakeError, match="alexa_verifier.npz"):
        WakeGate([str(user_alexa)])


def test_the_shipped_verifiers_keep_the_shipped_samples():
    for kw in ("okay_nabu", "alexa"):
        m = WakeModel(kw)
        assert m.verifier is not None and m.verifier.keyword == kw, f"edge/resources/{kw}_verifier.npz is shipped"
        assert (m.cutoff, m.window) == W.VERIFIED[kw]
        plain = WakeModel(kw, verify=False)
        assert plain.verifier is None and (plain.cutoff, plain.window) == W.TUNED[kw]
    gate = WakeGate(["okay_nabu", "alexa"])
    for meta in json.load(open(os.path.join(SAMPLES, "samples.json"), encoding="utf-8")):
        x = load_audio(os.path.join(SAMPLES, meta["file"]))[0]
        assert _fires(gate, x) == [meta["wake_word"]], meta["file"]


def test_training_tool_tiny_run(tmp_path):
    pytest.importorskip("torch")
    from paraedge_tools.recipe import wake_verifier

    out = tmp_path / "alexa_verifier.npz"
    rc = wake_verifier.main(["--keyword", "alexa", "-o", str(out), "--families", "espeak,sam", "--positives", "6",
                             "--espeak-minutes", "1", "--family-minutes", "0", "--near-per-phrase", "2",
                             "--epochs", "2", "--channels", "8", "--jobs", "1"])
    assert rc == 0
    v = WakeVerifier(out)
    assert v.keyword == "alexa" and v.meta["positives"] > 0 and v.meta["negatives"] > 0
    assert v.meta["families"] == ["espeak", "sam"] and v.p["w0"].shape == (8, 40, KERNEL)
    assert not set(v.meta["train_near"]) & {t.lower() for t in __import__(
        "paraedge_tools.recipe.wake_speech", fromlist=["NEAR_MISS"]).NEAR_MISS}, "trains on none of the bench's near misses"
