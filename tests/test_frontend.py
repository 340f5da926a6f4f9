"""Frontend: equal to FunASR's WavFrontend on real speech; streaming equal to offline for any chunking."""

import numpy as np
import pytest
import torch

from edge.asr.frontend import Cmvn, Frontend, FrontendConfig, apply_lfr
from tests.oracle import assert_features_close


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
    assert_features_close(ours, feats_ref[0].numpy(), name)


def plain_kaldi_fbank(x: np.ndarray, n_mels: int = 80, fs: int = 16000) -> np.ndarray:
    """Kaldi's fbank written the slow, obvious way (one frame at a time, float64), as Kaldi's
    feature-window.cc / mel-computations.cc describe it: the oracle for the vectorised one."""
    length, shift, padded = 400, 160, 512
    mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)  # noqa: E731
    lo, hi = mel(20.0), mel(fs / 2)
    delta = (hi - lo) / (n_mels + 1)
    banks = np.zeros((padded // 2 + 1, n_mels))
    for b in range(n_mels):
        left, center, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
        for k in range(padded // 2):
            m = mel(k * fs / padded)
            if left < m < right:
                banks[k, b] = (m - left) / (center - left) if m <= center else (right - m) / (right - center)
    window = 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(length) / (length - 1))
    out = []
    for t in range(1 + (len(x) - length) // shift):
        w = x[t * shift : t * shift + length].astype(np.float64) * 32768.0
        w = w - w.mean()
        w = np.concatenate([[w[0] - 0.97 * w[0]], w[1:] - 0.97 * w[:-1]]) * window
        power = np.abs(np.fft.rfft(w, padded)) ** 2
        out.append(np.log(np.maximum(power @ banks, np.finfo(np.float32).eps)))
    return np.array(out)


def test_fbank_is_kaldis_algorithm(speech):
    from edge.asr.frontend import fbank

    for x in (speech["zh"][:48000], speech["en"][:16000], np.zeros(4000, np.float32)):
        np.testing.assert_allclose(fbank(x, FrontendConfig()), plain_kaldi_fbank(x), atol=2e-5, rtol=0)


def test_fbank_matches_kaldi_native_fbank(speech):
    """kaldi-native-fbank (float32) is an independent implementation of the same algorithm."""
    import kaldi_native_fbank as knf

    from edge.asr.frontend import fbank

    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.window_type = "hamming"
    opts.mel_opts.num_bins = 80
    for name in ("zh", "en"):
        x = speech[name]
        fb = knf.OnlineFbank(opts)
        fb.accept_waveform(16000, x * 32768.0)
        fb.input_finished()
        ref = np.array([fb.get_frame(i) for i in range(fb.num_frames_ready)])
        assert_features_close(fbank(x, FrontendConfig()), ref, name)


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
