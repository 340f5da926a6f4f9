"""Every backend against the numpy reference: per stage (encoder, alphas, decoder) and end to end.
fp32 must be exact (1e-3 on log-probs, identical tokens); INT8 is checked for agreement only,
since on random weights even FunASR's own INT8 export agrees on just ~90% of tokens."""

import numpy as np
import pytest

from edge.backends.onnxruntime import OnnxRuntimeBackend
from edge.asr.cif import cif_offline
from edge.asr.recognizer import Recognizer
from edge.assets import demo_model_dir


def test_offline_onnxruntime_equals_reference(exported_offline, speech, long_speech):
    ref, ort = Recognizer(exported_offline, "ref"), Recognizer(exported_offline, "onnxruntime")
    for x in (speech["zh"], speech["en"], speech["zh"][:777], long_speech):
        feats = ref.frontend(x)
        ids_r, lp_r = ref.decode_features(feats)
        ids_o, lp_o = ort.decode_features(feats)
        assert lp_r.shape == lp_o.shape
        np.testing.assert_allclose(lp_o, lp_r, atol=1e-3)
        assert ids_o == ids_r


def test_streaming_stages_equal_reference(exported_streaming, speech):
    ref = Recognizer(exported_streaming, "ref")
    ort = OnnxRuntimeBackend(ref.model)
    x = ref.prepare(ref.frontend(speech["zh"])[:15], start=40)
    enc_r, a_r = ref.backend.encode(x)
    enc_o, a_o = ort.encode(x)
    np.testing.assert_allclose(enc_o, enc_r, atol=1e-4)
    np.testing.assert_allclose(a_o, a_r, atol=1e-5)
    emb = cif_offline(enc_r, a_r, ref.cif)
    caches_r = caches_o = None
    for _ in range(3):  # the FSMN caches must carry identically across calls
        lp_r, caches_r = ref.backend.decode(enc_r, emb, caches_r, streaming=True)
        lp_o, caches_o = ort.decode(enc_r, emb, caches_o, streaming=True)
        np.testing.assert_allclose(lp_o, lp_r, atol=1e-3)


@pytest.mark.parametrize("backend", ["onnxruntime"])
def test_streaming_end_to_end_equals_reference(backend, exported_streaming, speech):
    ref, other = Recognizer(exported_streaming, "ref"), Recognizer(exported_streaming, backend)
    for x in (speech["zh"], speech["en"], speech["zh2"][: 9600 * 3]):
        outs = []
        for rec in (ref, other):
            s = rec.stream()
            s.accept(x)
            s.finish()
            outs.append(s.result().token_ids)
        assert outs[0] == outs[1]
    # offline decoding of a streaming model composes encoder + CIF + decoder with empty caches
    assert ref.transcribe(speech["zh"]).token_ids == other.transcribe(speech["zh"]).token_ids


def test_int8_runs_and_mostly_agrees(exported_offline, speech):
    ref, q = Recognizer(exported_offline, "ref"), Recognizer(exported_offline, "onnxruntime", int8=True)
    feats = ref.frontend(speech["zh"])
    _, lp_r = ref.decode_features(feats)
    _, lp_q = q.decode_features(feats)
    # random weights: INT8 noise can move the alpha sum across an integer (one token more or less)
    assert abs(len(lp_q) - len(lp_r)) <= 1 and lp_q.shape[1:] == lp_r.shape[1:]
    n = min(len(lp_q), len(lp_r))
    agree = (lp_q[:n].argmax(-1) == lp_r[:n].argmax(-1)).mean()
    assert agree >= 0.7, agree


def test_missing_onnx_is_a_clear_error(funasr_offline_a):
    from edge.errors import BackendUnavailable

    with pytest.raises(BackendUnavailable, match="paraedge export") as e:
        Recognizer(funasr_offline_a, "onnxruntime")
    assert "--int8" not in str(e.value)  # nothing exported at all: only the export helps
    with pytest.raises(BackendUnavailable, match=r"or use --int8: model_quant\.onnx is here"):
        Recognizer(str(demo_model_dir()), "onnxruntime")  # the demo ships the INT8 pair only
