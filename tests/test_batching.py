"""Batched streaming (several seat zones at once): each stream's tokens equal its tokens decoded
alone, for every backend, and the batched ops equal the single-stream ops."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from edge.asr.audio import load_audio
from edge.asr.recognizer import Recognizer
from edge.errors import ParaEdgeError

DEMO = os.path.join(os.path.dirname(__file__), "..", "models", "demo")
HOP = 1600  # 100 ms, what the daemon feeds


def demo_samples() -> list[np.ndarray]:
    names = json.load(open(os.path.join(DEMO, "samples", "samples.json"), encoding="utf-8"))
    files = sorted(names) if isinstance(names, dict) else sorted(n["file"] for n in names)
    return [load_audio(os.path.join(DEMO, "samples", f))[0] for f in files]


def alone(rec, x) -> list[list[int]]:
    """Token ids each hop (and the finish) returns, the stream decoded by itself."""
    s = rec.stream()
    steps = [s.accept(x[i : i + HOP]) for i in range(0, len(x), HOP)]
    return steps + [s.finish()]


def together(rec, clips, starts) -> list[list[list[int]]]:
    """The clips as concurrent streams through accept_batch, stream k opening at hop starts[k]:
    so at one step some streams run their first (shorter) chunk while others run a full one."""
    streams = [None] * len(clips)
    out = [[] for _ in clips]
    hops = [range(0, len(x), HOP) for x in clips]
    for step in range(max(st + len(h) for st, h in zip(starts, hops)) + 1):
        live, chunks = [], []
        for k, x in enumerate(clips):
            i = step - starts[k]
            if i == 0:
                streams[k] = rec.stream()
            if 0 <= i < len(hops[k]):
                live.append(k)
                chunks.append(x[hops[k][i] : hops[k][i] + HOP])
            elif i == len(hops[k]):
                out[k].append(streams[k].finish())
        for k, ids in zip(live, rec.accept_batch([streams[k] for k in live], chunks)):
            out[k].append(ids)
    return out


def check_batched_equals_alone(rec, clips) -> None:
    starts = [3 * k for k in range(len(clips))]
    got = together(rec, clips, starts)
    for k, x in enumerate(clips):
        want = alone(rec, x)
        assert got[k] == want, f"stream {k}: batched {got[k]} != alone {want}"
    assert sum(len(ids) for steps in got for ids in steps) > 3 * len(clips)  # real tokens, not empty output


@pytest.fixture(scope="module")
def clips():
    xs = demo_samples()
    return [xs[0], xs[1], xs[3]]


@pytest.mark.parametrize("backend, int8", [("ref", False), ("onnxruntime", True), ("neon", False)])
def test_demo_model_batched_equals_alone(clips, backend, int8):
    try:
        rec = Recognizer(DEMO, backend, threads=1, int8=int8)
    except ParaEdgeError as exc:  # neon without the built extension
        pytest.skip(str(exc))
    check_batched_equals_alone(rec, clips)


def test_onnxruntime_fp32_batched_equals_alone(exported_streaming, long_speech):
    rec = Recognizer(exported_streaming, "onnxruntime", threads=1)
    assert rec.backend.batched
    check_batched_equals_alone(rec, [long_speech[:80000], long_speech[90000:150000], long_speech[160000:250000]])


def test_tvm_batched_equals_alone(tvm_streaming, long_speech):
    rec = Recognizer(tvm_streaming, "tvm", threads=1)
    check_batched_equals_alone(rec, [long_speech[:80000], long_speech[90000:150000]])


def test_reference_batched_ops_equal_single(exported_streaming):
    """Stacked rows give each stream exactly its own encoder and decoder outputs."""
    rec = Recognizer(exported_streaming, "ref")
    rng = np.random.default_rng(0)
    d_in = rec.config.input_size
    windows = [rng.standard_normal((t, d_in)).astype(np.float32) for t in (15, 25, 7)]
    batched = rec.backend.encode_batch(windows)
    for w, (enc, alphas) in zip(windows, batched):
        e1, a1 = rec.backend.encode(w)
        np.testing.assert_allclose(enc, e1, rtol=0, atol=2e-5)
        np.testing.assert_allclose(alphas, a1, rtol=0, atol=2e-6)
    items = [(enc, rng.standard_normal((n, enc.shape[1])).astype(np.float32), None)
             for (enc, _), n in zip(batched, (1, 3, 2))]
    for (enc, emb, _), (lp, caches) in zip(items, rec.backend.decode_batch(items)):
        lp1, caches1 = rec.backend.decode(enc, emb, None, streaming=True)
        np.testing.assert_allclose(lp, lp1, rtol=0, atol=2e-5)
        for c, c1 in zip(caches, caches1):
            np.testing.assert_allclose(c, c1, rtol=0, atol=2e-5)


def test_onnxruntime_int8_runs_streams_one_by_one(clips):
    """INT8 graphs quantize activations per tensor: batched, one zone's loudness would change
    another zone's numbers. They run one after another behind the same interface."""
    rec = Recognizer(DEMO, "onnxruntime", threads=1, int8=True)
    assert not rec.backend.batched
    quiet = clips[0] * 0.05
    a = together(rec, [clips[0], quiet], [0, 0])[1]
    assert a == alone(rec, quiet)


def test_accept_batch_rejects_bad_calls(clips):
    rec = Recognizer(DEMO, "ref")
    s, t = rec.stream(), rec.stream()
    with pytest.raises(ParaEdgeError, match="2 streams but 1 audio chunks"):
        rec.accept_batch([s, t], [clips[0]])
    with pytest.raises(ParaEdgeError, match="listed twice"):
        rec.accept_batch([s, s], [clips[0], clips[1]])
    other = Recognizer(DEMO, "ref").stream()
    with pytest.raises(ParaEdgeError, match="another Recognizer"):
        rec.accept_batch([s, other], [clips[0], clips[1]])
    t.finish()
    with pytest.raises(ParaEdgeError, match="already finished"):
        rec.accept_batch([s, t], [clips[0], clips[1]])
