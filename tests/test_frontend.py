"""Frontend: equal to FunASR's WavFrontend on real speech; streaming equal to offline for any chunking."""

import numpy as np
import pytest
import torch

from edge.frontend import Cmvn, Frontend, FrontendConfig, apply_lfr


@pytest.fixture(scope="module")
def cmvn(tmp_path_factory):
    from tests.oracle import random_cmvn

    path = tmp_path_factory.mktemp("cmvn") / "am.mvn"
    Cmvn(*random_cmvn(560, 3)).save(str(path))
    return str(path)


FUNASR_CONF = dict(fs=16000, window="hamming", n_mels=80, frame_length=25, frame_shift=10, lfr_m=7, lfr_n=6, dither=0.0)


@pytest.mark.parametrize("name", ["zh", "en", "zh2"])
def test_matches_funasr_wavfrontend(name, speech, cmvn):
    from funasr.frontends.wav_frontend import WavFrontend

    x = speech[name]
    ref = WavFrontend(cmvn_file=cmvn, **FUNASR_CONF)
    feats_ref, _ = ref(torch.from_numpy(x)[None], torch.tensor([len(x)]))
    ours = Frontend(FrontendConfig.from_conf(FUNASR_CONF), Cmvn.load(cmvn))(x)
    assert ours.shape == tuple(feats_ref.shape[1:])
    np.testing.assert_allclose(ours, feats_ref[0].numpy(), atol=1e-4)


def test_lfr_matches_funasr_padding():
    from funasr.frontends.wav_frontend import apply_lfr as funasr_lfr

    rng = np.random.default_rng(0)
    for t in list(range(1, 40)) + [97, 100, 601]:
        x = rng.standard_normal((t, 4)).astype(np.float32)
        for m, n in ((7, 6), (5, 3), (1, 1), (3, 1)):
            ref = funasr_lfr(torch.from_numpy(x), m, n).numpy() if (m, n) != (1, 1) else x
            np.testing.assert_array_equal(apply_lfr(x, m, n), ref, err_msg=f"T={t} m={m} n={n}")


def test_cmvn_roundtrip_and_errors(tmp_path):
    from edge.errors import ModelError

    c = Cmvn(np.arange(4, dtype=np.float32), np.ones(4, np.float32) * 0.5)
    c.save(tmp_path / "am.mvn")
    d = Cmvn.load(tmp_path / "am.mvn")
    np.testing.assert_array_equal(d.shift, c.shift)
    (tmp_path / "bad.mvn").write_text("<Nnet>\n<AddShift> 4 4\n</Nnet>\n")
    with pytest.raises(ModelError, match="Rescale|AddShift"):
        Cmvn.load(tmp_path / "bad.mvn")


@pytest.mark.parametrize("chunk", [1, 7, 159, 160, 400, 961, 1600, 9600, 16000])
def test_streaming_equals_offline(chunk, speech, cmvn):
    cfg = FrontendConfig.from_conf(FUNASR_CONF)
    fe = Frontend(cfg, Cmvn.load(cmvn))
    x = speech["zh"] if chunk >= 100 else speech["zh"][:24000]  # per-sample feeding: keep it short
    offline = fe(x)
    s = fe.stream()
    parts = [s.accept(x[i : i + chunk]) for i in range(0, len(x), chunk)] + [s.finish()]
    np.testing.assert_array_equal(np.concatenate(parts), offline)


def test_streaming_random_chunking(speech, cmvn):
    fe = Frontend(FrontendConfig.from_conf(FUNASR_CONF), Cmvn.load(cmvn))
    x = speech["en"]
    rng = np.random.default_rng(1)
    for _ in range(5):
        s, i, parts = fe.stream(), 0, []
        while i < len(x):
            n = int(rng.integers(1, 16001))
            parts.append(s.accept(x[i : i + n]))
            i += n
        parts.append(s.finish())
        np.testing.assert_array_equal(np.concatenate(parts), fe(x))
