"""Training augmentation that breaks a synthesizer's fingerprint (host side, numpy/scipy + pyroomacoustics).

A model trained on a few synthesizers learns their fingerprints: espeak's formant tracks, one neural
vocoder's phase, a fixed pitch contour, a clean studio channel. Each step here moves one of them, on
the waveform, before the frontend (SpecAugment works on the fbank, after it):

- speaker: vocal-tract length (VTLP: the spectral envelope warped by alpha 0.85-1.15, Jaitly &
  Hinton 2013), pitch (+-4 semitones: resample + phase-vocoder stretch back to the same length),
  tempo (0.8-1.25 without a pitch change), speed (both);
- room: a simulated car cabin (image-method RIRs from pyroomacoustics: shoebox 1.6-2.8 x 1.3-1.7 x
  1.0-1.3 m, absorptive walls, the talker on a seat, the microphone in the roof console or a pillar)
  or a small synthetic decaying tail;
- channel: microphone and codec band-limiting (high-pass 50-300 Hz, low-pass 3-7.8 kHz, an 8 kHz
  telephone path, mu-law 8-bit companding), a random peaking EQ, soft clipping;
- noise: car cabin, white, pink, or babble made from other utterances of the corpus, at 0-20 dB SNR;
- gain.

Everything takes a numpy Generator, so a seed gives the same augmented stream. The corpus builder
uses `add_noise`/`car_noise` for its fixed test sets; the trainer calls `augment` on every draw and
`spec_augment` on its features.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from edge.asr.audio import SAMPLE_RATE as RATE


# -- noise ---------------------------------------------------------------------------------------
def _shaped_noise(n: int, rng, exponent: float) -> np.ndarray:
    """1/f^exponent noise via FFT shaping (0 white, 1 pink, 2 brown)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / RATE)
    f[0] = f[1] if n > 2 else 1.0
    spec /= f ** (exponent / 2.0)
    y = np.fft.irfft(spec, n)
    return (y / (np.std(y) + 1e-12)).astype(np.float32)


def car_noise(n: int, rng) -> np.ndarray:
    """Car cabin: engine rumble (brown noise + firing harmonics), road noise (band 200-1500 Hz),
    wind (high band, slowly modulated). Generated, nothing downloaded."""
    from scipy.signal import butter, sosfilt

    t = np.arange(n) / RATE
    rpm_hz = rng.uniform(25, 60)
    engine = sum(np.sin(2 * np.pi * rpm_hz * k * t + rng.uniform(0, 6.3)) / k for k in (1, 2, 3, 4))
    rumble = sosfilt(butter(4, 150, "low", fs=RATE, output="sos"), _shaped_noise(n, rng, 2.0))
    road = sosfilt(butter(2, [200, 1500], "band", fs=RATE, output="sos"), rng.standard_normal(n))
    wind = sosfilt(butter(2, 2000, "high", fs=RATE, output="sos"), rng.standard_normal(n))
    wind *= 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t)
    mix = (0.8 * rumble / (np.std(rumble) + 1e-9) + 0.3 * engine / (np.std(engine) + 1e-9)
           + 0.6 * road / (np.std(road) + 1e-9) + 0.25 * wind / (np.std(wind) + 1e-9))
    return (mix / (np.std(mix) + 1e-12)).astype(np.float32)


def noise(kind: str, n: int, rng) -> np.ndarray:
    if kind == "car":
        return car_noise(n, rng)
    return _shaped_noise(n, rng, {"white": 0.0, "pink": 1.0, "brown": 2.0}[kind])


def mix_at_snr(x: np.ndarray, nz: np.ndarray, snr_db: float) -> np.ndarray:
    """x + nz scaled so that the speech-to-noise power ratio is snr_db."""
    scale = np.sqrt((np.mean(x**2) + 1e-12) / ((np.mean(nz**2) + 1e-12) * 10 ** (snr_db / 10.0)))
    return (x + nz * scale).astype(np.float32)


def add_noise(x: np.ndarray, snr_db: float, kind: str, rng) -> np.ndarray:
    """The test sets' noise: generated noise (unit power) scaled to snr_db below the speech."""
    nz = noise(kind, len(x), rng)
    nz *= np.sqrt((np.mean(x**2) + 1e-12) / (10 ** (snr_db / 10.0)))
    return (x + nz).astype(np.float32)


def babble(n: int, pool: list, rng, talkers: tuple[int, int] = (3, 7)) -> np.ndarray:
    """Other utterances of the corpus summed at random offsets: the cabin's other talkers."""
    out = np.zeros(n, np.float32)
    for _ in range(int(rng.integers(*talkers))):
        u = pool[int(rng.integers(len(pool)))]
        u = u / (np.std(u) + 1e-9)
        start = int(rng.integers(-len(u) // 2, n))  # talkers start before, during or after the command
        a, b = max(0, start), min(n, start + len(u))
        if b > a:
            out[a:b] += u[a - start: b - start]
    return out


# -- speaker ---------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=256)
def _resample_taps(up: int, down: int) -> np.ndarray:
    """The low-pass FIR that `resample_poly(x, up, down)` designs for itself on every call (its
    default Kaiser window, beta 5), designed once: passed back as `window`, the output is bit-identical.
    With `vtlp` kept in float32, a batch of 24 training draws went 0.119 -> 0.109 CPU s (30 batches)."""
    from scipy.signal import firwin

    g = math.gcd(up, down)
    rate = max(up, down) // g
    taps = firwin(2 * 10 * rate + 1, 1.0 / rate, window=("kaiser", 5.0)).astype(np.float32)
    taps.flags.writeable = False   # shared by every call; resample_poly works on its own copy
    return taps


def speed_perturb(x: np.ndarray, factor: float) -> np.ndarray:
    """Faster by `factor` with the pitch and formants raised by it (a resampled tape)."""
    from scipy.signal import resample_poly

    if abs(factor - 1.0) < 1e-3:
        return x
    x = np.asarray(x, np.float32)
    up, down = 100, int(round(100 * factor))
    if up == down:   # what resample_poly returns for 1:1, before it would design a filter
        return x.copy()
    return resample_poly(x, up, down, window=_resample_taps(up, down)).astype(np.float32)


def _stft(x: np.ndarray, n_fft: int, hop: int):
    """Hann-windowed frames of x (padded by n_fft each side) and their rfft, in float32 / complex64.

    The phase vocoder, VTLP and the source filter were most of the data loader's time. Single
    precision through scipy.fft, strided frames and a blockwise overlap-add (`_istft`) took a batch
    of 24 training draws from 0.189 to 0.084 CPU s (`bench/train_step.py`'s loader line, 40
    batches), and the trainer, whose loader shares the 2 cores with the step, from 0.789 to 0.649 s
    a step (steps 100-300 of the recipe from random weights, log.csv). Outputs agree with the
    float64 version to 1e-4 of their peak."""
    from scipy.fft import rfft

    win = np.hanning(n_fft + 1)[:-1].astype(np.float32)  # periodic: overlap-adds flat at hop n_fft/4
    xp = np.pad(np.asarray(x, np.float32), (n_fft, n_fft))
    frames = np.lib.stride_tricks.sliding_window_view(xp, n_fft)[::hop]
    return rfft(frames * win, axis=1), win


def _overlap_add(frames: np.ndarray, hop: int) -> np.ndarray:
    """Sum of `frames` [F, n_fft] placed hop apart (n_fft a multiple of hop): n_fft / hop shifted block adds."""
    count, n_fft = frames.shape
    r = n_fft // hop
    blocks = frames.reshape(count, r, hop)
    out = np.zeros((count + r - 1, hop), frames.dtype)
    for k in range(r):
        out[k: k + count] += blocks[:, k]
    return out.ravel()


def _istft(spec: np.ndarray, win: np.ndarray, hop: int, length: int) -> np.ndarray:
    """Inverse of `_stft`: windowed overlap-add normalised by the summed squared window, `length` samples."""
    from scipy.fft import irfft

    n_fft = len(win)
    if n_fft % hop:
        raise ValueError(f"_istft needs n_fft ({n_fft}) to be a multiple of hop ({hop})")
    frames = irfft(spec, n_fft, axis=1).astype(np.float32) * win
    y = _overlap_add(frames, hop)
    norm = _overlap_add(np.broadcast_to(win * win, frames.shape), hop)
    y = y / np.maximum(norm, 1e-3)
    return y[n_fft: n_fft + length].astype(np.float32)


def time_stretch(x: np.ndarray, rate: float, n_fft: int = 512, hop: int = 128) -> np.ndarray:
    """Phase vocoder: `rate` times faster (len/rate samples), the pitch unchanged."""
    if abs(rate - 1.0) < 1e-3 or len(x) < n_fft:
        return x
    spec, win = _stft(x, n_fft, hop)
    mag, ang = np.abs(spec), np.angle(spec)
    steps = np.arange(0, len(spec) - 1, rate)
    i = steps.astype(int)
    frac = (steps - i).astype(np.float32)[:, None]
    out_mag = (1 - frac) * mag[i] + frac * mag[i + 1]
    # each bin's expected advance per hop, taken mod 2 pi so that the running phase stays small
    omega = np.mod(2 * np.pi * hop * np.arange(spec.shape[1]) / n_fft, 2 * np.pi).astype(np.float32)
    dphi = ang[i + 1] - ang[i] - omega
    dphi -= np.float32(2 * np.pi) * np.round(dphi / np.float32(2 * np.pi))
    # summed in float64 (cheap next to the FFTs), then rounded once to float32
    phase = np.empty((len(i), spec.shape[1]), np.float32)
    phase[0] = ang[0]
    phase[1:] = ang[0] + np.cumsum(omega + dphi[:-1], 0, dtype=np.float64)
    out = out_mag * (np.cos(phase) + np.complex64(1j) * np.sin(phase))
    return _istft(out, win, hop, int(round(len(x) / rate)))


def pitch_shift(x: np.ndarray, semitones: float) -> np.ndarray:
    """Pitch (and formants) moved by `semitones`, the duration kept."""
    factor = 2.0 ** (semitones / 12.0)
    y = speed_perturb(x, factor)
    y = time_stretch(y, 1.0 / factor)
    return _fit(y, len(x))


def _log_envelope(logmag: np.ndarray, n_fft: int, lifter: int) -> np.ndarray:
    """Each frame's log spectral envelope: the log magnitude's cepstrum cut to `lifter` coefficients."""
    from scipy.fft import irfft, rfft

    cep = irfft(logmag, n_fft, axis=1)
    cep[:, lifter:n_fft - lifter + 1] = 0.0
    return rfft(cep, n_fft, axis=1).real


def vtlp(x: np.ndarray, alpha: float, f_hi: float = 4800.0, n_fft: int = 512, hop: int = 128,
         lifter: int = 30) -> np.ndarray:
    """Vocal-tract length perturbation: the spectral envelope (formants) warped f -> alpha f, piecewise
    linear above f_hi so Nyquist stays put; the harmonics and phase stay, so the pitch does not move.
    alpha > 1 sounds like a shorter vocal tract. Each frame is multiplied by warped/original envelope
    (cepstrally smoothed, `lifter` coefficients: 1.9 ms, shorter than a 500 Hz pitch period)."""
    if abs(alpha - 1.0) < 1e-3 or len(x) < n_fft:
        return x
    spec, win = _stft(x, n_fft, hop)
    nyq = RATE / 2
    f = np.fft.rfftfreq(n_fft, 1.0 / RATE)
    edge = f_hi * min(alpha, 1.0) / alpha
    warped = np.where(f <= edge, f * alpha, nyq - (nyq - f_hi * min(alpha, 1.0)) * (nyq - f) / (nyq - edge))
    src = np.interp(f, warped, f) * n_fft / RATE  # output bin at g reads the envelope at warp^-1(g)
    lo = np.clip(src.astype(int), 0, len(f) - 2)
    frac = (src - lo).astype(np.float32)   # float64 here made the gain, and the inverse STFT, float64
    env = _log_envelope(np.log(np.abs(spec) + 1e-8), n_fft, lifter)
    env_w = (1 - frac) * env[:, lo] + frac * env[:, lo + 1]
    gain = np.exp(np.clip(env_w - env, -3.0, 3.0))  # at most +-26 dB per bin
    return _istft(spec * gain, win, hop, len(x))


def source_filter(x: np.ndarray, rng, depth: float | None = None, contrast: float | None = None,
                  jitter: float | None = None, n_fft: int = 512, hop: int = 128, lifter: int = 30) -> np.ndarray:
    """A different voice source and vocal-tract sharpness under the same words: each frame's log spectrum is
    split (cepstral lifter, as `vtlp`) into the envelope (formants) and the fine structure (harmonics, the
    source's own texture: a formant synthesizer's pulse train, a vocoder's phase), then
    - the fine structure is scaled by 0.4-1.3 (flatter: breathy; deeper: buzzy, SAM-like),
    - the phase gets uniform noise of up to +-0.6 pi (aperiodicity: a noisier excitation),
    - the formant contrast (envelope about its frame mean) is scaled by 0.75-1.25 (broad, old-synthesizer
      formants to sharp ones),
    one draw per utterance (or the given `depth`, `contrast`, `jitter` in units of pi). Duration, pitch track
    and formant positions stay, so the labels do. ~10 ms per command on x86."""
    if len(x) < n_fft:
        return x
    spec, win = _stft(x, n_fft, hop)
    logmag = np.log(np.abs(spec) + 1e-8)
    env = _log_envelope(logmag, n_fft, lifter)
    fine = logmag - env
    depth = rng.uniform(0.4, 1.3) if depth is None else depth
    contrast = rng.uniform(0.75, 1.25) if contrast is None else contrast
    jitter = (rng.uniform(0.0, 0.6) if jitter is None else jitter) * np.pi
    mean = env.mean(axis=1, keepdims=True)
    new = mean + contrast * (env - mean) + depth * fine
    gain = np.exp(np.clip(new - logmag, -4.0, 4.0))   # at most +-35 dB per bin
    phase = np.exp(1j * rng.uniform(-jitter, jitter, spec.shape)).astype(np.complex64) if jitter > 0 else 1.0
    y = _istft(spec * gain * phase, win, hop, len(x))
    return (y * (np.std(x) / (np.std(y) + 1e-9))).astype(np.float32)


def _fit(y: np.ndarray, n: int) -> np.ndarray:
    return y[:n] if len(y) >= n else np.pad(y, (0, n - len(y)))


# -- room ----------------------------------------------------------------------------------------
def cabin_rirs(rng, n: int = 48) -> list[np.ndarray]:
    """Image-method impulse responses of car-cabin-sized rooms (pyroomacoustics ShoeBox): the talker
    on one of four seats, the microphone in the roof console or on a pillar. Normalised so the direct
    path has unit gain; computed once per training run (~5 ms each)."""
    import pyroomacoustics as pra

    out = []
    for _ in range(n):
        dims = np.array([rng.uniform(1.6, 2.8), rng.uniform(1.3, 1.7), rng.uniform(1.0, 1.3)])
        absorption = float(rng.uniform(0.2, 0.6))  # seats, carpet and headliner absorb; glass reflects
        room = pra.ShoeBox(dims, fs=RATE, materials=pra.Material(absorption), max_order=int(rng.integers(6, 14)))
        seat_x = rng.choice([0.35, 0.7]) * dims[0]  # front or rear row
        seat_y = rng.choice([0.28, 0.72]) * dims[1]  # left or right
        src = [seat_x + rng.uniform(-0.1, 0.1), seat_y + rng.uniform(-0.08, 0.08), dims[2] * rng.uniform(0.75, 0.9)]
        mic = ([0.2 * dims[0], dims[1] / 2, dims[2] - 0.05] if rng.random() < 0.6 else  # roof console
               [0.15 * dims[0], rng.choice([0.05, 0.95]) * dims[1], dims[2] * 0.7])      # A-pillar
        room.add_source(src)
        room.add_microphone(mic)
        room.compute_rir()
        h = np.asarray(room.rir[0][0], np.float32)
        out.append(h / (np.max(np.abs(h)) + 1e-9))
    return out


def reverb(x: np.ndarray, rng, rt60: float | None = None) -> np.ndarray:
    """Convolve with a synthetic exponentially decaying impulse response (a small tail)."""
    rt60 = rng.uniform(0.08, 0.35) if rt60 is None else rt60
    n = int(rt60 * RATE)
    t = np.arange(n) / RATE
    ir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    ir[0] = 1.0
    return convolve(x, ir)


def convolve(x: np.ndarray, ir: np.ndarray) -> np.ndarray:
    """x through the room, the level kept (so SNRs stay meaningful)."""
    from scipy.signal import fftconvolve

    y = fftconvolve(x, ir)[: len(x)]
    return (y * np.sqrt((np.mean(x**2) + 1e-12) / (np.mean(y**2) + 1e-12))).astype(np.float32)


# -- channel ---------------------------------------------------------------------------------------
def _peaking(f0: float, gain_db: float, q: float):
    """RBJ cookbook peaking-EQ biquad as (b, a)."""
    a_ = 10 ** (gain_db / 40)
    w = 2 * np.pi * f0 / RATE
    alpha = np.sin(w) / (2 * q)
    b = np.array([1 + alpha * a_, -2 * np.cos(w), 1 - alpha * a_])
    a = np.array([1 + alpha / a_, -2 * np.cos(w), 1 - alpha / a_])
    return b / a[0], a / a[0]


def channel(x: np.ndarray, rng) -> np.ndarray:
    """A microphone and codec path: band limits, a coloured response, sometimes telephone-band,
    mu-law companding or soft clipping."""
    from scipy.signal import butter, lfilter, resample_poly, sosfilt

    y = sosfilt(butter(2, rng.uniform(50, 300), "high", fs=RATE, output="sos"), x)
    if rng.random() < 0.25:
        y = resample_poly(resample_poly(y, 1, 2), 2, 1)[: len(x)]  # an 8 kHz (telephone / Bluetooth HFP) leg
    else:
        y = sosfilt(butter(6, rng.uniform(3000, 7800), "low", fs=RATE, output="sos"), y)
    for _ in range(int(rng.integers(1, 4))):
        b, a = _peaking(float(np.exp(rng.uniform(np.log(200), np.log(5000)))), rng.uniform(-8, 8), rng.uniform(0.7, 2.0))
        y = lfilter(b, a, y)
    y = np.asarray(y, np.float32)
    peak = np.max(np.abs(y)) + 1e-9
    if rng.random() < 0.25:  # G.711-style 8-bit mu-law
        mu = 255.0
        z = y / peak
        c = np.round(np.sign(z) * np.log1p(mu * np.abs(z)) / np.log1p(mu) * 127) / 127
        y = np.sign(c) * np.expm1(np.abs(c) * np.log1p(mu)) / mu * peak
    if rng.random() < 0.15:  # an overdriven input stage
        drive = rng.uniform(1.5, 4.0)
        y = np.tanh(drive * y / peak) / np.tanh(drive) * peak
    return y.astype(np.float32)


# -- the training draw -----------------------------------------------------------------------------
def digital_gate(x: np.ndarray, rng, floor_db: float = -45.0) -> np.ndarray:
    """What a TTS file or a gated microphone delivers: exact zeros from just after the last sound
    (within 0-30 ms of the last sample above `floor_db` re peak) for 0.05-1.5 s.

    The other steps (VTLP, phase vocoder, rooms, noise) fill padded silence with tiny values, so
    only ~14 % of draws ended in exact zeros; the 7-family model then dropped the last Mandarin
    syllable before exact digital silence on ~3 % of clean test commands (klatt4 "空调调到二十二度"
    lost "度": its alphas fell from 0.42/0.48 to 0.04/0.0 once the tail was exactly zero)."""
    loud = np.nonzero(np.abs(x) > np.max(np.abs(x)) * 10 ** (floor_db / 20))[0]
    end = min(len(x), (int(loud[-1]) if len(loud) else 0) + int(rng.uniform(0, 0.03) * RATE))
    tail = np.zeros(int(rng.uniform(0.05, 1.5) * RATE), np.float32)
    return np.concatenate([x[:end], tail]).astype(np.float32)


def noise_bank(rng, seconds: float = 20.0, rirs: int = 48) -> dict:
    """Pre-generated noise per kind and cabin RIRs: training takes random slices and picks instead of
    synthesising each time."""
    n = int(seconds * RATE)
    bank = {kind: noise(kind, n, rng) for kind in ("white", "pink", "car")}
    bank["rirs"] = cabin_rirs(rng, rirs) if rirs else []
    return bank


def augment(x: np.ndarray, rng, bank: dict | None = None, pool: list | None = None,
            source_p: float = 0.0, noise_p: float = 0.5, lead_s: float = 0.4) -> np.ndarray:
    """One training draw: silence padding, speaker (VTLP, pitch, tempo or speed; with probability `source_p`
    a new voice source, `source_filter`), room, channel, noise (car/white/pink or babble from `pool`,
    0-20 dB, on a `noise_p` share of the draws), a digital gate, gain. Each step is skipped with some
    probability so that clean, unmodified renders keep appearing. `lead_s`: the most silence padded
    before the command (the draw is uniform; 1.5 s after it)."""
    if rng.random() < 0.7:  # a microphone hears silence (then noise) around a command: CIF must not fire there
        lead, tail = int(rng.uniform(0, lead_s) * RATE), int(rng.uniform(0, 1.5) * RATE)
        x = np.concatenate([np.zeros(lead, np.float32), x, np.zeros(tail, np.float32)])
    if rng.random() < 0.5:
        x = vtlp(x, float(rng.uniform(0.85, 1.15)))
    r = rng.random()
    if r < 0.25:
        x = pitch_shift(x, float(rng.uniform(-4, 4)))
    elif r < 0.45:
        x = time_stretch(x, float(rng.uniform(0.8, 1.25)))
    elif r < 0.7:
        x = speed_perturb(x, float(rng.choice([0.9, 1.1])))
    if source_p > 0 and rng.random() < source_p:   # drawn only when enabled: the default stream stays as it was
        x = source_filter(x, rng)
    r = rng.random()
    if r < 0.45 and bank is not None and bank.get("rirs"):
        x = convolve(x, bank["rirs"][int(rng.integers(len(bank["rirs"])))])
    elif r < 0.6:
        x = reverb(x, rng)
    if rng.random() < 0.35:
        x = channel(x, rng)
    if rng.random() < noise_p:  # default 0.5: half keep digital silence; 0.8 left the model leaning on a noise floor
        snr = float(rng.uniform(0, 20))
        if pool and rng.random() < 0.2:
            nz = babble(len(x), pool, rng)
        else:
            kind = str(rng.choice(["white", "pink", "car", "car"]))
            if bank is not None and len(bank[kind]) > len(x):
                start = int(rng.integers(0, len(bank[kind]) - len(x)))
                nz = bank[kind][start: start + len(x)]
            else:
                nz = noise(kind, len(x), rng)
        x = mix_at_snr(x, nz, snr)
    if rng.random() < 0.3:  # after the noise too: a gated microphone cuts noise with the speech
        x = digital_gate(x, rng)
    x = x * float(10 ** (rng.uniform(-12, 3) / 20))
    peak = np.max(np.abs(x)) + 1e-9
    return (x / peak * 0.99 if peak > 0.99 else x).astype(np.float32)


def spec_augment(feats: np.ndarray, rng, freq_masks: int = 2, max_f: int = 10, time_masks: int = 2,
                 max_t: int = 5, p: float = 0.6) -> np.ndarray:
    """SpecAugment on fbank frames [T, 80] (before LFR): up to `freq_masks` bands of <= max_f bins and
    `time_masks` spans of <= max_t frames (50 ms: a command's shortest word is ~150 ms, so a mask
    blurs it but never deletes it) set to the utterance mean."""
    if rng.random() >= p:
        return feats
    y = feats.copy()
    fill = y.mean(0)
    for _ in range(freq_masks):
        w = int(rng.integers(0, max_f + 1))
        f0 = int(rng.integers(0, y.shape[1] - w + 1))
        y[:, f0: f0 + w] = fill[f0: f0 + w]
    for _ in range(time_masks):
        w = int(rng.integers(0, min(max_t, len(y) // 10) + 1))
        t0 = int(rng.integers(0, len(y) - w + 1))
        y[t0: t0 + w] = fill
    return y
