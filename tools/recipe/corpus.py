"""Synthetic in-car command corpus: espeak-ng speech, generated noise, and held-out voices.

`python -m paraedge_tools.recipe.corpus OUT [--per-voice N]` renders every phrase of `tools/data/incar_commands.tsv`
with espeak-ng voice variants at random speed/pitch/amplitude, as 16 kHz mono 16-bit WAVs, and
writes JSONL manifests (path, text, lang, voice, speed, pitch, amplitude, snr, split):
- `train.jsonl`: TRAIN_VOICES (augmentation happens on the fly in training);
- `test_clean.jsonl`, `test_snr{5,10,20}.jsonl`: HELD_OUT_VOICES, never seen in training, clean and
  mixed with synthetic car-cabin noise at the given SNR.

The augmentation functions (speed perturbation, white/pink/car noise at an SNR, gain, exponential
reverb) are shared with the trainer. Everything is seeded: the same command gives the same corpus.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import warnings
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from edge.asr.audio import SAMPLE_RATE

HERE = os.path.dirname(os.path.abspath(__file__))
PHRASES = os.path.join(os.path.dirname(HERE), "data", "incar_commands.tsv")
ESPEAK_VOICE = {"zh": "cmn", "en": "en-us"}

# espeak-ng variants (+name). Held-out voices never appear in training.
TRAIN_VOICES = ["", "m1", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f4", "f5", "klatt", "klatt2", "klatt3",
                "klatt5", "klatt6", "Alex", "Andy", "Annie", "belinda", "benjamin", "david", "ed", "edward",
                "gustave", "iven", "john", "linda", "max", "michel", "paul", "pedro", "quincy", "rob", "robert",
                "steph", "zac", "m8", "Jacky", "Michael"]
HELD_OUT_VOICES = ["m2", "f3", "klatt4", "edward2", "iven2", "steph2", "Mario", "Gene"]
SNRS = (5, 10, 20)
RATE = SAMPLE_RATE


def read_phrases(path: str = PHRASES) -> list[tuple[str, str]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line and not line.startswith("#"):
                lang, text = line.split("\t")
                out.append((lang, text))
    return out


def render(text: str, lang: str, voice: str = "", speed: int = 160, pitch: int = 50, amplitude: int = 100) -> np.ndarray:
    """espeak-ng -> float32 16 kHz mono."""
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    v = ESPEAK_VOICE[lang] + (f"+{voice}" if voice else "")
    wav = subprocess.run(["espeak-ng", "-v", v, "-s", str(speed), "-p", str(pitch), "-a", str(amplitude), "--stdout", text],
                         check=True, capture_output=True).stdout
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # --stdout writes a streaming header with an unknown length
        rate, x = wavfile.read(io.BytesIO(wav))
    x = x.astype(np.float32) / 32768.0
    if x.ndim == 2:
        x = x.mean(axis=1)
    if rate != RATE:
        from math import gcd

        g = gcd(rate, RATE)
        x = resample_poly(x, RATE // g, rate // g).astype(np.float32)
    return trim(x)


def trim(x: np.ndarray, pad: int = 1600, floor: float = 1e-3) -> np.ndarray:
    """Cut espeak's long leading/trailing silence down to `pad` samples."""
    idx = np.flatnonzero(np.abs(x) > floor)
    if idx.size == 0:
        return x
    return x[max(0, idx[0] - pad): idx[-1] + pad]


# -- augmentation -------------------------------------------------------------------------------
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


def add_noise(x: np.ndarray, snr_db: float, kind: str, rng) -> np.ndarray:
    nz = noise(kind, len(x), rng)
    p_sig = np.mean(x**2) + 1e-12
    nz *= np.sqrt(p_sig / (10 ** (snr_db / 10.0)))
    return (x + nz).astype(np.float32)


def reverb(x: np.ndarray, rng, rt60: float | None = None) -> np.ndarray:
    """Convolve with a synthetic exponentially decaying impulse response (small cabin)."""
    from scipy.signal import fftconvolve

    rt60 = rng.uniform(0.08, 0.35) if rt60 is None else rt60
    n = int(rt60 * RATE)
    t = np.arange(n) / RATE
    ir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    ir[0] = 1.0
    ir /= np.sqrt(np.sum(ir**2))
    return fftconvolve(x, ir)[: len(x)].astype(np.float32)


def speed_perturb(x: np.ndarray, factor: float) -> np.ndarray:
    from scipy.signal import resample_poly

    if abs(factor - 1.0) < 1e-3:
        return x
    up = 100
    return resample_poly(x, up, int(round(up * factor))).astype(np.float32)


def noise_bank(rng, seconds: float = 20.0) -> dict:
    """Pre-generated noise per kind: training takes random slices instead of synthesising each time."""
    n = int(seconds * RATE)
    return {kind: noise(kind, n, rng) for kind in ("white", "pink", "car")}


def augment(x: np.ndarray, rng, bank: dict | None = None) -> np.ndarray:
    """Training augmentation: silence padding, speed, reverb, noise (white/pink/car, 0-20 dB), gain."""
    if rng.random() < 0.7:  # a microphone hears silence (then noise) around a command: CIF must not fire there
        lead, tail = int(rng.uniform(0, 0.4) * RATE), int(rng.uniform(0, 1.0) * RATE)
        x = np.concatenate([np.zeros(lead, np.float32), x, np.zeros(tail, np.float32)])
    if rng.random() < 0.5:
        x = speed_perturb(x, float(rng.choice([0.9, 1.1])))
    if rng.random() < 0.3:
        x = reverb(x, rng)
    if rng.random() < 0.8:
        kind = str(rng.choice(["white", "pink", "car", "car"]))
        snr = float(rng.uniform(0, 20))
        if bank is not None and len(bank[kind]) > len(x):
            start = int(rng.integers(0, len(bank[kind]) - len(x)))
            nz = bank[kind][start : start + len(x)]
            x = (x + nz * np.sqrt((np.mean(x**2) + 1e-12) / 10 ** (snr / 10.0))).astype(np.float32)
        else:
            x = add_noise(x, snr, kind, rng)
    x = x * float(10 ** (rng.uniform(-12, 3) / 20))
    peak = np.max(np.abs(x)) + 1e-9
    return (x / peak * 0.99 if peak > 0.99 else x).astype(np.float32)


# -- corpus -------------------------------------------------------------------------------------
def _job(args):
    idx, lang, text, voice, speed, pitch, amp, snr, path, seed = args
    from edge.asr.audio import write_wav

    x = render(text, lang, voice, speed, pitch, amp)
    if snr is not None:
        x = add_noise(x, snr, "car", np.random.default_rng(seed))
        peak = np.max(np.abs(x))
        x = x / peak * 0.99 if peak > 0.99 else x
    write_wav(path, x)
    return idx


def build(out: str, per_voice: int = 2, seed: int = 0, workers: int = 2, test_only: bool = False,
          phrases=None, train_voices=TRAIN_VOICES, held_out_voices=HELD_OUT_VOICES) -> dict:
    phrases = read_phrases() if phrases is None else phrases
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out, "wav"), exist_ok=True)
    manifests: dict[str, list] = {}
    jobs = []

    def add(split, lang, text, voice, snr=None, speed=None, pitch=None, amp=None):
        speed = int(rng.integers(120, 221)) if speed is None else speed
        pitch = int(rng.integers(30, 71)) if pitch is None else pitch
        amp = int(rng.integers(60, 141)) if amp is None else amp
        n = sum(len(v) for v in manifests.values())
        path = os.path.join(out, "wav", f"{split}_{n:06d}.wav")
        manifests.setdefault(split, []).append(dict(path=os.path.relpath(path, out), text=text, lang=lang,
                                                    voice=voice or "default", speed=speed, pitch=pitch,
                                                    amplitude=amp, snr=snr, split=split))
        jobs.append((n, lang, text, voice, speed, pitch, amp, snr, path, int(rng.integers(1 << 31))))

    if not test_only:
        for lang, text in phrases:
            for voice in train_voices:
                for _ in range(per_voice):
                    add("train", lang, text, voice)
    for lang, text in phrases:
        for voice in held_out_voices:
            speed, pitch, amp = int(rng.integers(130, 201)), int(rng.integers(35, 66)), 100
            add("test_clean", lang, text, voice, None, speed, pitch, amp)
            for snr in SNRS:
                add(f"test_snr{snr}", lang, text, voice, snr, speed, pitch, amp)
    with ProcessPoolExecutor(workers) as pool:
        for _ in pool.map(_job, jobs, chunksize=32):
            pass
    for split, rows in manifests.items():
        with open(os.path.join(out, f"{split}.jsonl"), "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    with open(os.path.join(out, "README.txt"), "w", encoding="utf-8") as f:
        f.write(f"train voices: {' '.join(v or 'default' for v in train_voices)}\n")
        f.write(f"held-out test voices (never trained on): {' '.join(held_out_voices)}\n")
    return {k: len(v) for k, v in manifests.items()}


def read_manifest(path: str) -> list[dict]:
    base = os.path.dirname(os.path.abspath(path))
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            r["path"] = os.path.join(base, r["path"])
            rows.append(r)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--per-voice", type=int, default=2, help="renders per phrase and training voice")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--test-only", action="store_true", help="only the held-out test sets")
    args = ap.parse_args(argv)
    counts = build(args.out, args.per_voice, args.seed, args.workers, args.test_only)
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
