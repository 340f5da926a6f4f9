"""ParaEdge's numpy reference vs FunASR's own PyTorch code (the oracle), on FunASR-made model dirs.

Random seeded weights, two differently shaped configs, real speech plus edge inputs. Offline:
log-probs within 1e-3, identical token counts and ids. Streaming: identical final tokens to
FunASR's ParaformerStreaming fed chunk by chunk, including every tail-flush path. FunASR computes
fbank with ParaEdge's (see tests/oracle.py: funasr_with_our_fbank); the fbank is tested against
FunASR's own in tests/test_frontend.py.
"""

import numpy as np
import pytest

from edge.asr.recognizer import Recognizer
from tests.oracle import (funasr_offline, funasr_streaming, funasr_with_our_fbank, load_funasr,
                          shown_by_funasr_streaming)


@pytest.fixture(autouse=True)
def shared_fbank(monkeypatch):
    funasr_with_our_fbank(monkeypatch)


def edge_inputs(speech, long_speech):
    zh = speech["zh"]
    return {
        "speech_zh": zh,
        "speech_en": speech["en"],
        "one_frame_400": zh[8000:8400],  # exactly one 25 ms fbank frame
        "short_300": zh[8000:8300],  # under one frame: FunASR shortens the window
        "odd_12345": zh[:12345],
        "odd_777": zh[3000:3777],
        "silence": np.zeros(16000, np.float32),
        "long_30s": long_speech,
    }


@pytest.mark.parametrize("which", ["a", "b"])
def test_offline_matches_funasr(which, request, speech, long_speech):
    path = request.getfixturevalue(f"funasr_offline_{which}")
    model, frontend, _ = load_funasr(path)
    rec = Recognizer(path)  # reads FunASR's model.pt directly, no torch on our side
    for name, x in edge_inputs(speech, long_speech).items():
        ids_ref, logp_ref, count_ref, feats_ref = funasr_offline(model, frontend, x)
        feats = rec.frontend(x)
        np.testing.assert_allclose(feats, feats_ref, atol=1e-5, err_msg=name)  # LFR + CMVN: FunASR's and ours
        ids, logp = rec.decode_features(feats)
        assert len(logp) == count_ref, name
        if count_ref:
            np.testing.assert_allclose(logp, logp_ref, atol=1e-3, err_msg=name)
        assert ids == ids_ref, name
        assert rec.transcribe(x).token_ids == ids_ref, name


def test_rounded_token_count_path(tmp_path, speech):
    """tail_threshold 0: FunASR's inference() rounds the alpha sum instead of flooring it."""
    from tests.oracle import make_funasr_dir

    path = make_funasr_dir(str(tmp_path / "m"), "a", streaming=False, seed=5, tail_threshold=0.0)
    model, frontend, _ = load_funasr(path)
    rec = Recognizer(path)
    for x in (speech["zh"], speech["en"][:20000]):
        ids_ref, logp_ref, count_ref, _ = funasr_offline(model, frontend, x)
        ids, logp = rec.decode_features(rec.frontend(x))
        assert len(logp) == count_ref
        np.testing.assert_allclose(logp, logp_ref, atol=1e-3)
        assert ids == ids_ref


@pytest.mark.parametrize("which", ["a", "b"])
def test_streaming_matches_funasr(which, request, speech):
    path = request.getfixturevalue(f"funasr_streaming_{which}")
    model, frontend, conf = load_funasr(path)
    rec = Recognizer(path)
    zh = speech["zh"]
    # lengths hit every end: exact multiples of 600 ms (tail re-run), < 60 ms left (tail), a full last chunk
    for n in (len(zh), 9600 * 4, 9600 * 4 + 500, 9600 * 4 + 2000, 9600 + 959, 9600 + 960, 1000, 300):
        x = zh[:n]
        expected = funasr_streaming(model, frontend, conf, x)
        stream = rec.stream()
        for i in range(0, len(x), 1600):  # we feed 100 ms pieces; FunASR got 600 ms ones
            stream.accept(x[i : i + 1600])
        stream.finish()
        assert shown_by_funasr_streaming(stream.result().token_ids, path) == expected, n


@pytest.mark.parametrize("chunk_size", [(0, 8, 4), (10, 10, 5)])  # shorter chunks; 600 ms of left context
def test_streaming_other_chunk_size(funasr_streaming_a, speech, chunk_size):
    model, frontend, conf = load_funasr(funasr_streaming_a)
    rec = Recognizer(funasr_streaming_a)
    x = speech["en"]
    expected = funasr_streaming(model, frontend, conf, x, step=chunk_size[1] * 960, chunk_size=chunk_size)
    stream = rec.stream(chunk_size=chunk_size)
    stream.accept(x)
    stream.finish()
    assert shown_by_funasr_streaming(stream.result().token_ids, funasr_streaming_a) == expected


def test_funasr_automodel_reads_the_same_dir(funasr_offline_a, speech_dir):
    """The dir is a genuine FunASR model dir: FunASR's AutoModel loads it (no hub) and agrees with us."""
    from funasr import AutoModel

    from edge.asr.audio import load_audio

    wav = str(speech_dir / "zh.wav")
    am = AutoModel(model=funasr_offline_a, disable_update=True, device="cpu", disable_pbar=True, disable_log=True)
    text = am.generate(input=wav)[0]["text"]
    assert text == Recognizer(funasr_offline_a).transcribe(load_audio(wav)[0]).text


def test_funasr_automodel_takes_chunk_size_from_config(tmp_path, funasr_streaming_a):
    """A top-level `chunk_size` in config.yaml reaches FunASR's generate() kwargs as it reaches our
    Stream: both read it as the model's streaming default."""
    import shutil

    import yaml
    from funasr import AutoModel

    d = tmp_path / "m"
    shutil.copytree(funasr_streaming_a, d)
    conf = yaml.safe_load(open(d / "config.yaml", encoding="utf-8"))
    conf["chunk_size"] = [10, 10, 5]
    yaml.safe_dump(conf, open(d / "config.yaml", "w", encoding="utf-8"))
    am = AutoModel(model=str(d), disable_update=True, device="cpu", disable_pbar=True, disable_log=True)
    assert list(am.kwargs["chunk_size"]) == [10, 10, 5]
    assert Recognizer(str(d)).stream().chunk_size == (10, 10, 5)
