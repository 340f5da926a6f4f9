"""The backend conformance matrix: every backend against the numpy reference, offline and streaming,
stage by stage (encoder output, CIF alphas, decoder log-probs, through the Backend seam with each
backend carrying its own caches) and end to end (tokens), with one tolerance table.

fp32 backends run the random-weight FunASR-format test models and must match the reference to
float rounding, token for token. INT8 backends run the trained demo model (random weights sit on
near-ties, where any quantisation flips tokens) and must agree on >= 99 % of its tokens.
The emulated Cortex-A76 row runs the same checks end to end inside the aarch64 board's Python.
"""

from __future__ import annotations

import difflib
import json
import os

import numpy as np
import pytest

from edge.asr.audio import load_audio
from edge.asr.cif import cif_offline
from edge.asr.recognizer import Recognizer
from tests.conftest import ROOT

DEMO = os.path.join(ROOT, "models", "demo")

# what each kind of backend must reach against the reference
TOLERANCE = {
    # max |diff| on encoder output, alphas and log-probs; tokens identical
    "fp32": {"enc": 1e-3, "alphas": 1e-4, "log_probs": 2e-3, "tokens": 1.0},
    # encoder output correlation, |diff| on alphas, argmax agreement of log-probs, token agreement
    "int8": {"enc_corr": 0.99, "alphas": 0.05, "argmax": 0.95, "tokens": 0.99},
}
# (row, backend, int8 flag, kind, model fixture per mode)
ROWS = [
    ("onnxruntime", "onnxruntime", False, "fp32", {"offline": "exported_offline", "streaming": "exported_streaming"}),
    ("tvm", "tvm", False, "fp32", {"offline": "tvm_offline", "streaming": "tvm_streaming"}),
    ("onnxruntime:int8", "onnxruntime", True, "int8", {"offline": None, "streaming": None}),
    ("neon", "neon", False, "int8", {"offline": None, "streaming": None}),
    ("tvm:int8", "tvm", True, "int8", {"offline": "tvm_demo_int8", "streaming": "tvm_demo_int8"}),
]
MATRIX = [pytest.param(row, mode, id=f"{row[0]}-{mode}") for row in ROWS for mode in ("offline", "streaming")]


def _models(request, row, mode):
    """(reference recognizer, backend recognizer) for this row and mode."""
    name, backend, int8, kind, fixtures = row
    if backend == "neon":
        from edge.backends import kernels

        if not kernels.available():
            pytest.fail(f"NEON kernels not built: {kernels.unavailable_reason()}")
    if kind == "fp32":
        ref_model = request.getfixturevalue("exported_offline" if mode == "offline" else "exported_streaming")
    else:
        ref_model = DEMO
    model = request.getfixturevalue(fixtures[mode]) if fixtures[mode] else ref_model
    return Recognizer(ref_model, "ref"), Recognizer(model, backend, int8=int8, threads=1)


def _inputs(kind, speech, long_speech):
    if kind == "fp32":
        return [speech["zh"], speech["en"], speech["zh2"][: 9600 * 3 + 500], speech["zh"][:777]]
    with open(os.path.join(DEMO, "samples", "samples.json"), encoding="utf-8") as f:
        samples = json.load(f)
    return [load_audio(os.path.join(DEMO, "samples", s["file"]))[0][int(s["command_start_s"] * 16000):] for s in samples]


def _agreement(a: list, b: list) -> float:
    matched = sum(m.size for m in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_matching_blocks())
    return matched / max(len(a), len(b), 1)


def _check_encoder(tol, enc_b, a_b, enc_r, a_r):
    if "enc" in tol:
        np.testing.assert_allclose(enc_b, enc_r, atol=tol["enc"])
    else:
        assert np.corrcoef(enc_b.ravel(), enc_r.ravel())[0, 1] >= tol["enc_corr"]
    np.testing.assert_allclose(a_b, a_r, atol=tol["alphas"])


def _check_log_probs(tol, lp_b, lp_r):
    assert lp_b.shape == lp_r.shape
    if "log_probs" in tol:
        np.testing.assert_allclose(lp_b, lp_r, atol=tol["log_probs"])
    return list(lp_b.argmax(-1) == lp_r.argmax(-1))


@pytest.mark.parametrize("row, mode", MATRIX)
def test_stages(request, row, mode, speech, long_speech):
    """Encoder, alphas and decoder through the seam, on the same inputs (the reference's CIF output
    feeds both decoders, so a difference is the decoder's own)."""
    kind = row[3]
    tol = TOLERANCE[kind]
    ref, other = _models(request, row, mode)
    agree = []
    for x in _inputs(kind, speech, long_speech)[:3]:
        feats = ref.frontend(x)
        if mode == "offline" and other.backend.offline is not None:  # a fused offline graph: compared whole
            ids_r, lp_r = ref.decode_features(feats)
            lp_b, n = other.backend.offline(feats)
            if len(lp_b) == len(lp_r):
                agree += _check_log_probs(tol, lp_b, lp_r)
            else:  # INT8 noise moved the alpha sum across an integer: one token more or less
                assert kind == "int8" and abs(len(lp_b) - len(lp_r)) <= 1
            continue
        # offline: the whole utterance as one window; streaming: three 15-frame windows (chunk 10 + 5 look-ahead)
        windows = [(0, len(feats))] if mode == "offline" else [(w * 10, w * 10 + 15) for w in range(3)]
        caches_r = caches_b = None
        for a, b in windows:
            xin = ref.prepare(feats[a:b], start=a)
            enc_r, a_r = ref.backend.encode(xin)
            enc_b, a_b = other.backend.encode(xin)
            _check_encoder(tol, enc_b, a_b, enc_r, a_r)
            emb = cif_offline(enc_r, a_r, ref.cif)
            if not len(emb):
                continue
            streaming = mode == "streaming"
            lp_r, caches_r = ref.backend.decode(enc_r, emb, caches_r, streaming=streaming)
            lp_b, caches_b = other.backend.decode(enc_r, emb, caches_b, streaming=streaming)
            agree += _check_log_probs(tol, lp_b, lp_r)
    assert len(agree) >= 3
    assert np.mean(agree) >= tol.get("argmax", 1.0), np.mean(agree)


@pytest.mark.parametrize("row, mode", MATRIX)
def test_end_to_end(request, row, mode, speech, long_speech):
    kind = row[3]
    ref, other = _models(request, row, mode)
    a, b = [], []
    for x in _inputs(kind, speech, long_speech):
        run = (lambda rec: rec.transcribe_streaming(x)) if mode == "streaming" else (lambda rec: rec.transcribe(x))
        a += run(ref).token_ids + [-1]  # -1: utterance separator, so a shift never spans two inputs
        b += run(other).token_ids + [-1]
    if kind == "fp32":
        assert b == a
    else:
        assert _agreement(a, b) >= TOLERANCE["int8"]["tokens"], _agreement(a, b)


ARM_RUN = """
import json, sys, numpy as np
from edge.asr.recognizer import Recognizer
rec = Recognizer(sys.argv[1], "tvm", int8=sys.argv[3] == "int8")
z = np.load(sys.argv[2])
xs = [z[k] for k in sorted(z.files)]
maps = open("/proc/self/maps").read()
print(json.dumps({"offline": [rec.transcribe(x).token_ids for x in xs],
                  "streaming": [rec.transcribe_streaming(x).token_ids for x in xs],
                  "board": rec.backend.describe(), "compiler_loaded": "libtvm_compiler" in maps}))
"""


def _on_board(armroot, bundle, xs, tmp_path, int8: bool) -> dict:
    from paraedge_tools.emu.armroot import run_python

    np.savez(tmp_path / "x.npz", **{f"x{i:02d}": x for i, x in enumerate(xs)})
    (tmp_path / "run.py").write_text(ARM_RUN)
    r = run_python([str(tmp_path / "run.py"), bundle, str(tmp_path / "x.npz"), "int8" if int8 else "fp32"],
                   root=armroot, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.arm
def test_end_to_end_on_emulated_a76(armroot, arm_bundle, exported_streaming, speech, tmp_path):
    """The tvm row on the board: the aarch64 bundle in the emulated Cortex-A76's Python, runtime
    only, offline and streaming, token for token. Inputs are short: float math is 160-340x slower."""
    xs = [speech["zh"][: 16000 * 2], speech["en"][: 16000 * 2]]  # 2 s: 4 streaming chunks, ~33 offline frames
    out = _on_board(armroot, arm_bundle, xs, tmp_path, int8=False)
    ref = Recognizer(exported_streaming, "ref")
    assert out["board"] == "tvm qemu-a76" and not out["compiler_loaded"]
    assert out["offline"] == [ref.transcribe(x).token_ids for x in xs] and all(out["offline"])
    assert out["streaming"] == [ref.transcribe_streaming(x).token_ids for x in xs]


@pytest.mark.arm
@pytest.mark.slow
def test_int8_end_to_end_on_emulated_a76(armroot, arm_demo_int8, speech, long_speech, tmp_path):
    """The tvm:int8 row on the board (sdot tiles): the demo model's commands, offline and streaming."""
    xs = _inputs("int8", speech, long_speech)
    out = _on_board(armroot, arm_demo_int8, xs, tmp_path, int8=True)
    assert out["board"] == "tvm qemu-a76 int8" and not out["compiler_loaded"]
    ref = Recognizer(DEMO, "ref")
    for mode, run in (("offline", ref.transcribe), ("streaming", ref.transcribe_streaming)):
        a = [t for x in xs for t in run(x).token_ids + [-1]]
        b = [t for ids in out[mode] for t in ids + [-1]]
        assert _agreement(a, b) >= TOLERANCE["int8"]["tokens"], (mode, _agreement(a, b))
