"""The recipe's augmentation (tools/recipe/augment.py): each transform does what it says, measured on
signals whose answer is known, and none of them makes a command unrecognisable to the demo model."""

import os

import numpy as np
import pytest

from tests.conftest import ROOT

pytest.importorskip("pyroomacoustics")
from paraedge_tools.recipe import augment as A  # noqa: E402

RATE = 16000
DEMO = os.path.join(ROOT, "models", "demo")


def tone(f0: float, seconds: float = 1.0, harmonics: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, harmonics + 1)).astype(np.float32)


def peak_hz(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / RATE)[np.argmax(spec)])


def centroid_hz(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / RATE)
    return float((f * spec).sum() / spec.sum())


def test_speed_perturb_is_resample_poly_with_its_filter_designed_once():
    """The loader designs resample_poly's FIR once per ratio (`_resample_taps`); the output stays
    bit-identical to resample_poly's own design, a 1:1 ratio included (no filter there)."""
    from scipy.signal import resample_poly

    x = np.random.default_rng(3).standard_normal(9000).astype(np.float32)
    for factor in (0.87, 0.9, 1.004, 1.1, 1.26):
        want = resample_poly(x, 100, int(round(100 * factor))).astype(np.float32)
        assert np.array_equal(A.speed_perturb(x, factor), want), factor
        assert np.array_equal(A.speed_perturb(x, factor), want), factor   # the cached taps are left intact


def test_time_stretch_changes_duration_not_pitch():
    x = tone(440.0)
    for rate in (0.8, 1.25):
        y = A.time_stretch(x, rate)
        assert abs(len(y) - len(x) / rate) <= 1
        assert abs(peak_hz(y[2000:-2000]) - 440.0) < 10
    assert A.time_stretch(x, 1.0) is x


def test_stft_and_overlap_add_invert_exactly():
    """The loader's single-precision STFT: `_istft(_stft(x))` gives x back, and the blockwise overlap-add
    is the plain frame-by-frame sum."""
    x = np.random.default_rng(0).standard_normal(12345).astype(np.float32)
    spec, win = A._stft(x, 512, 128)
    assert spec.dtype == np.complex64 and spec.shape == (1 + (len(x) + 512) // 128, 257)
    y = A._istft(spec, win, 128, len(x))
    assert y.dtype == np.float32 and np.max(np.abs(y - x)) < 1e-5 * np.max(np.abs(x))
    frames = np.random.default_rng(1).standard_normal((7, 512)).astype(np.float32)
    plain = np.zeros(6 * 128 + 512, np.float32)
    for k, f in enumerate(frames):
        plain[k * 128: k * 128 + 512] += f
    assert np.allclose(A._overlap_add(frames, 128), plain, atol=1e-6)
    with pytest.raises(ValueError, match="multiple of hop"):
        A._istft(spec[:, :251], win[:500], 128, len(x))


def test_pitch_shift_moves_pitch_keeps_duration():
    x = tone(300.0)
    y = A.pitch_shift(x, 12.0)  # an octave up
    assert len(y) == len(x)
    assert abs(peak_hz(y[2000:-2000]) - 600.0) < 15
    assert abs(peak_hz(A.pitch_shift(x, -12.0)[2000:-2000]) - 150.0) < 10


def test_vtlp_moves_formants_not_pitch():
    from scipy.signal import lfilter

    noise = np.random.default_rng(0).standard_normal(RATE)
    r, w = 0.97, 2 * np.pi * 1000 / RATE  # a formant at 1 kHz
    x = lfilter([1.0], [1.0, -2 * r * np.cos(w), r * r], noise).astype(np.float32)

    def formant(z):
        s = np.convolve(np.abs(np.fft.rfft(z)) ** 2, np.ones(200) / 200, "same")
        return float(np.fft.rfftfreq(len(z), 1 / RATE)[np.argmax(s)])

    assert formant(A.vtlp(x, 1.15)) > formant(x) * 1.03 and formant(A.vtlp(x, 0.87)) < formant(x) * 0.97
    buzz = tone(150.0, harmonics=40)
    for alpha in (0.87, 1.15):
        y = A.vtlp(buzz, alpha)
        assert len(y) == len(buzz) and peak_hz(y) == pytest.approx(150.0, abs=3)
    assert centroid_hz(A.vtlp(buzz, 1.15)) > centroid_hz(buzz) > centroid_hz(A.vtlp(buzz, 0.87))


def test_source_filter_changes_the_source_not_the_pitch_or_formants():
    from scipy.signal import lfilter

    rng = np.random.default_rng(0)
    buzz = tone(150.0, harmonics=40)
    r, w = 0.97, 2 * np.pi * 1000 / RATE   # a formant at 1 kHz on the buzz
    x = lfilter([1.0], [1.0, -2 * r * np.cos(w), r * r], buzz).astype(np.float32)
    x = x / np.max(np.abs(x)) + 0.003 * rng.standard_normal(len(x)).astype(np.float32)   # finite valleys

    def harmonic_contrast(z):   # dB between the harmonics' peaks and the valleys halfway between them
        spec = np.abs(np.fft.rfft(z[2000:-2000] * np.hanning(len(z) - 4000)))
        f = np.fft.rfftfreq(len(z) - 4000, 1 / RATE)
        at = lambda hz: np.interp(hz, f, spec)   # noqa: E731
        ks = np.arange(2, 20)
        return float(np.mean(20 * np.log10(at(150.0 * ks) / (at(150.0 * ks + 75.0) + 1e-9))))

    def f0_hz(z):   # autocorrelation peak over 2.5-10 ms
        z = z[2000:-2000]
        ac = np.fft.irfft(np.abs(np.fft.rfft(z, 2 * len(z))) ** 2)[:RATE // 100 + 1]
        return RATE / (RATE // 400 + int(np.argmax(ac[RATE // 400:])))

    def formant(z):   # the peak of the smoothed log spectrum above the low harmonics
        s = np.convolve(np.log(np.abs(np.fft.rfft(z)) + 1e-6), np.ones(300) / 300, "same")
        f = np.fft.rfftfreq(len(z), 1 / RATE)
        return float(f[500 + np.argmax(s[500:4000])])

    breathy = A.source_filter(x, rng, depth=0.4, contrast=1.0, jitter=0.6)
    buzzy = A.source_filter(x, rng, depth=1.3, contrast=1.0, jitter=0.0)
    for y in (breathy, buzzy):
        assert len(y) == len(x) and y.dtype == np.float32 and np.isfinite(y).all()
        assert f0_hz(y) == pytest.approx(150.0, abs=3)                                # the pitch stays
        assert formant(y) == pytest.approx(formant(x), rel=0.1)                         # so do the formants
        assert np.std(y) == pytest.approx(np.std(x), rel=1e-3)
    assert harmonic_contrast(breathy) < harmonic_contrast(x) - 6 < harmonic_contrast(buzzy) - 6
    assert np.array_equal(A.source_filter(x, np.random.default_rng(7)), A.source_filter(x, np.random.default_rng(7)))


def test_cabin_rirs_are_short_rooms_with_a_direct_path():
    rirs = A.cabin_rirs(np.random.default_rng(0), 6)
    assert len(rirs) == 6
    for h in rirs:
        assert np.max(np.abs(h)) == pytest.approx(1.0)
        assert len(h) < RATE // 2  # a car cabin rings for well under half a second
        energy = np.cumsum(h**2) / np.sum(h**2)
        assert np.argmax(energy > 0.99) < RATE // 5  # 99 % of the energy within 200 ms
    x = tone(500.0)
    y = A.convolve(x, rirs[0])
    assert len(y) == len(x) and np.mean(y**2) == pytest.approx(np.mean(x**2), rel=1e-3)


def test_channel_band_limits():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(RATE).astype(np.float32)
    f = np.fft.rfftfreq(RATE, 1 / RATE)
    for _ in range(5):
        y = A.channel(x, rng)
        spec = np.abs(np.fft.rfft(y)) ** 2
        assert np.isfinite(y).all() and len(y) == len(x)
        # high-passed at >= 50 Hz and low-passed at <= 7.8 kHz: both extremes lose most of their energy
        assert spec[f < 30].mean() < 0.1 * spec[(f > 500) & (f < 2000)].mean()
        assert spec[f > 7950].mean() < 0.1 * spec[(f > 500) & (f < 2000)].mean()


def test_babble_and_snr():
    rng = np.random.default_rng(2)
    pool = [tone(f, 0.7) for f in (200.0, 330.0, 470.0)]
    b = A.babble(RATE, pool, rng)
    assert len(b) == RATE and np.std(b) > 0
    x = tone(1000.0)
    y = A.mix_at_snr(x, b, 5.0)
    noise = y - x
    assert 10 * np.log10(np.mean(x**2) / np.mean(noise**2)) == pytest.approx(5.0, abs=0.01)


def test_augment_draws_are_bounded_and_seeded():
    x = tone(300.0, harmonics=8) * 0.5
    bank = A.noise_bank(np.random.default_rng(5), seconds=3.0, rirs=2)
    draws = [A.augment(x, np.random.default_rng(s), bank, [tone(200.0)]) for s in range(12)]
    for y in draws:
        assert y.dtype == np.float32 and np.isfinite(y).all() and np.max(np.abs(y)) <= 0.99 + 1e-6
        assert len(x) * 0.75 <= len(y) <= len(x) * 1.3 + 1.9 * RATE  # tempo/speed, then up to 1.9 s of padding
    assert len({len(y) for y in draws}) > 3  # the draws differ
    again = A.augment(x, np.random.default_rng(3), bank, [tone(200.0)])
    assert np.array_equal(again, draws[3])


def test_noise_share_is_what_the_trainer_asks_for():
    """`noise_p` (train --noise) is the share of draws with noise mixed in: the silence before the
    command stays silent without it (the other steps leave only tiny values there)."""
    x = np.concatenate([np.zeros(RATE // 4, np.float32), (tone(300.0, harmonics=8) * 0.5)[: 3 * RATE // 4]])
    bank = A.noise_bank(np.random.default_rng(5), seconds=3.0, rirs=2)

    def noisy(p):
        lead = [A.augment(x, np.random.default_rng(s), bank, [tone(200.0)], noise_p=p) for s in range(40)]
        return sum(np.sqrt(np.mean(y[:1600] ** 2) / np.mean(y**2)) > 0.03 for y in lead)

    assert noisy(0.0) == 0 and 10 <= noisy(0.5) <= 30 and noisy(1.0) >= 32


def test_lead_pad_is_what_the_trainer_asks_for():
    """`lead_s` (train --lead-pad) bounds the silence padded before the command: without noise the
    command's onset moves by the pad, scaled by at most the tempo draws (0.8-1.25)."""
    x = tone(300.0, harmonics=8) * 0.5
    bank = A.noise_bank(np.random.default_rng(5), seconds=3.0, rirs=2)

    def onsets(lead_s):
        ys = [A.augment(x, np.random.default_rng(s), bank, noise_p=0.0, lead_s=lead_s) for s in range(40)]
        return np.array([np.argmax(np.abs(y) > 0.05 * np.max(np.abs(y))) / RATE for y in ys])

    short, long = onsets(0.4), onsets(2.0)
    assert short.max() <= 0.4 * 1.25 + 0.1 and long.max() <= 2.0 * 1.25 + 0.1
    assert (long > 0.6).sum() >= 15  # 70 % of draws are padded, 80 % of those by more than 0.4 s


def test_digital_gate_ends_in_exact_zeros_just_after_the_last_sound():
    x = np.concatenate([tone(300.0) * 0.5, np.full(RATE // 2, 1e-4, np.float32)])  # speech, then a faint floor
    last = RATE - 1
    for seed in range(5):
        y = A.digital_gate(x, np.random.default_rng(seed))
        cut = last + 1 + int(0.03 * RATE)
        assert np.array_equal(y[:last + 1], x[:last + 1])  # the speech is kept whole
        assert not np.any(y[cut:])  # and everything after it is digital silence
        assert 0.05 * RATE <= len(y) - cut + int(0.03 * RATE) and len(y) <= cut + 1.5 * RATE
    # the trainer's draws end in exact zeros often enough to learn from (14 % before the gate)
    bank = A.noise_bank(np.random.default_rng(5), seconds=3.0, rirs=2)
    ends = [A.augment(x, np.random.default_rng(s), bank)[-800:] for s in range(40)]
    assert sum(not np.any(e) for e in ends) >= 10


def test_spec_augment_masks_bands_and_spans():
    rng = np.random.default_rng(3)
    feats = rng.standard_normal((200, 80)).astype(np.float32)
    y = A.spec_augment(feats, rng, p=1.0, max_f=10, max_t=5)
    assert y.shape == feats.shape and not np.shares_memory(y, feats)
    changed = y != feats
    assert changed.any()
    assert changed.all(axis=0).sum() <= 20  # at most two bands of <= 10 bins
    assert changed.all(axis=1).sum() <= 10  # at most two spans of <= 5 frames
    assert A.spec_augment(feats, rng, p=0.0) is feats


def test_augmented_commands_stay_recognisable():
    """Every transform at its strongest setting still leaves commands the demo model gets right:
    the augmentation moves fingerprints, it does not destroy speech. Three commands, so that the
    judge is not one utterance's luck: at tempo 1.25 the stage-3 / stage-4 weights got 89 / 90 of 91
    held-out espeak renders, yet stage 4 hears this m1 "navigate home" as "home home"."""
    from edge.asr.recognizer import Recognizer
    from paraedge_tools.recipe.corpus import render

    rec = Recognizer(DEMO, "ref")
    rng = np.random.default_rng(4)
    bank = A.noise_bank(rng, seconds=5.0, rirs=2)
    other = render("play music", "en", "f1")
    wrong, right = {}, 0
    for text, lang, voice in (("navigate home", "en", "m1"), ("open the window", "en", "f2"), ("打开空调", "zh", "m3")):
        x = render(text, lang, voice)
        variants = {"tempo 0.8": A.time_stretch(x, 0.8), "tempo 1.25": A.time_stretch(x, 1.25),
                    "pitch +4": A.pitch_shift(x, 4), "pitch -4": A.pitch_shift(x, -4),
                    "vtlp 0.85": A.vtlp(x, 0.85), "vtlp 1.15": A.vtlp(x, 1.15),
                    "cabin": A.convolve(x, bank["rirs"][0]), "channel": A.channel(x, rng),
                    "source breathy": A.source_filter(x, rng, depth=0.4, contrast=0.75, jitter=0.6),
                    "source buzzy": A.source_filter(x, rng, depth=1.3, contrast=1.25, jitter=0.0),
                    "babble 10 dB": A.mix_at_snr(x, A.babble(len(x), [other], rng, (2, 3)), 10.0)}
        for k, v in variants.items():
            got = rec.transcribe(v).text
            right += got == text
            if got != text:
                wrong.setdefault(k, []).append(got)
    # no transform loses all three, and 29 of the 33 decodes are right (tempo 1.25 is the hard one
    # for the stage-3 weights: f2's "open the window" loses its last word there). Which three renders
    # a judge misses is its luck: stage 7 got 33 of these, the recipe-from-nothing weights 29 (babble
    # 2, pitch +4 1, breathy 1), yet on 40 espeak held-out renders (test_clean, every 29th) under these
    # 11 transforms and plain, 471 / 473 of 480 (babble at 10 dB 36 / 35)
    assert all(len(w) < 3 for w in wrong.values()) and right >= 29, wrong
