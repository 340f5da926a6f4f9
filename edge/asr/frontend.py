"""Acoustic frontend: Kaldi fbank -> LFR stacking -> CMVN, exactly as FunASR's WavFrontend.

- fbank: Kaldi's algorithm (`KaldiFbank`: DC removal, pre-emphasis 0.97, window, power spectrum,
  triangular mel banks, log), vectorised over all frames in numpy (the definition; the C kernel
  kernels/fbank.c computes the same frames where the extension is built): samples scaled to the int16
  range (FunASR's `upsacle_samples`), snip_edges, dither forced to 0 (inference must be
  deterministic). Tested against kaldi-native-fbank and FunASR's WavFrontend; it replaced a
  per-frame kaldi-native-fbank loop whose Python overhead was half of an INT8 decode's aarch64
  instructions.
- LFR: stack `lfr_m` frames every `lfr_n`, left-padded with (m-1)//2 copies of the first frame
  and right-padded with the last frame (FunASR `apply_lfr`).
- CMVN: Kaldi nnet `am.mvn` (<AddShift> then <Rescale>).

`StreamingFrontend` yields the very same frames as `Frontend` for any chunking of the input:
an LFR frame is emitted as soon as its whole window of fbank frames exists.
"""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass

import numpy as np
from scipy.fft import rfft as _rfft  # imported once: a function-level import cost more than the FFT

from edge.errors import ModelError
from edge.asr.audio import SAMPLE_RATE

INT16_SCALE = 32768.0


@dataclass(frozen=True)
class FrontendConfig:
    fs: int = SAMPLE_RATE
    n_mels: int = 80
    frame_length: float = 25.0
    frame_shift: float = 10.0
    window: str = "hamming"
    lfr_m: int = 7
    lfr_n: int = 6
    snip_edges: bool = True
    upscale_samples: bool = True

    @classmethod
    def from_conf(cls, conf: dict, where: str = "frontend_conf") -> "FrontendConfig":
        """FunASR's frontend_conf, validated: every value sizes or divides something in the
        frontend, so a bad one is one ModelError naming the key here, not a crash mid-decode."""
        # imported here: modeldir imports this module
        from edge.asr.modeldir import conf_float, conf_int

        conf = dict(conf or {})
        fs = conf_int(conf, "fs", SAMPLE_RATE, f"{where}.fs", lo=1, hi=1 << 20)
        if fs != SAMPLE_RATE:  # audio is resampled to 16 kHz before the frontend sees it
            raise ModelError(f"{where}.fs: {fs} Hz models are not supported (ParaEdge feeds {SAMPLE_RATE} Hz audio)")
        window = conf.get("window", "hamming")
        if window not in WINDOWS:
            raise ModelError(f"{where}.window: {window!r:.40} is not supported ({', '.join(WINDOWS)})")
        if conf.get("snip_edges", True) is not True:
            raise ModelError(f"{where}.snip_edges: must be true (ParaEdge computes Kaldi snip_edges frames)")
        cfg = cls(
            fs=fs,
            n_mels=conf_int(conf, "n_mels", 80, f"{where}.n_mels", hi=1024),
            frame_length=conf_float(conf, "frame_length", 25, f"{where}.frame_length", 0.0, 1000.0, lo_open=True),
            frame_shift=conf_float(conf, "frame_shift", 10, f"{where}.frame_shift", 0.0, 1000.0, lo_open=True),
            window=window,
            lfr_m=conf_int(conf, "lfr_m", 1, f"{where}.lfr_m", hi=64),
            lfr_n=conf_int(conf, "lfr_n", 1, f"{where}.lfr_n", hi=64),
            snip_edges=True,
            upscale_samples=bool(conf.get("upsacle_samples", True)),  # FunASR's spelling
        )
        # a frame or shift under one sample would divide by zero in the fbank
        for key, ms in (("frame_length", cfg.frame_length), ("frame_shift", cfg.frame_shift)):
            if _kaldi_samples(cfg.fs, ms) < 1:
                raise ModelError(f"{where}.{key}: {ms} ms is under one sample at {cfg.fs} Hz")
        return cfg

    @property
    def feat_dim(self) -> int:
        return self.n_mels * self.lfr_m

    @property
    def frame_shift_samples(self) -> int:
        return int(self.frame_shift * self.fs / 1000)

    @property
    def frame_length_samples(self) -> int:
        return int(self.frame_length * self.fs / 1000)


class Cmvn:
    """Global CMVN from a Kaldi nnet1 `am.mvn`: y = (x + shift) * scale."""

    def __init__(self, shift: np.ndarray, scale: np.ndarray, where: str = "am.mvn"):
        if shift.shape != scale.shape or shift.ndim != 1:
            raise ModelError(f"{where}: <AddShift> {shift.shape} and <Rescale> {scale.shape} differ")
        self.shift = shift.astype(np.float32)
        self.scale = scale.astype(np.float32)
        # a NaN here turns every feature into NaN: the decode would fail far from the cause
        for tag, v in (("AddShift", self.shift), ("Rescale", self.scale)):
            if not np.isfinite(v).all():
                raise ModelError(f"{where}: <{tag}> holds NaN or Inf (element {int(np.argmin(np.isfinite(v)))}); "
                                 f"corrupt CMVN file")

    @classmethod
    def load(cls, path) -> "Cmvn":
        if not os.path.isfile(path):
            raise ModelError(f"{path}: CMVN file missing (FunASR model dirs carry am.mvn)")
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        vectors = {}
        for tag in ("AddShift", "Rescale"):
            m = re.search(r"<%s>.*?<LearnRateCoef>\s+\S+\s+\[([^\]]*)\]" % tag, text, re.S)
            if not m:
                raise ModelError(f"{path}: no <{tag}> block with a [ ... ] vector")
            try:
                vectors[tag] = np.array([float(v) for v in m.group(1).split()], dtype=np.float32)
            except ValueError:
                raise ModelError(f"{path}: <{tag}> holds a non-numeric value") from None
        return cls(vectors["AddShift"], vectors["Rescale"], where=str(path))

    def save(self, path) -> None:
        dim = self.shift.size

        def vec(v):
            return " ".join(f"{x:.8g}" for x in v)

        with open(path, "w", encoding="utf-8") as f:
            f.write("<Nnet>\n")
            f.write(f"<Splice> {dim} {dim}\n[ 0 ]\n")
            f.write(f"<AddShift> {dim} {dim}\n<LearnRateCoef> 0 [ {vec(self.shift)} ]\n")
            f.write(f"<Rescale> {dim} {dim}\n<LearnRateCoef> 0 [ {vec(self.scale)} ]\n")
            f.write("</Nnet>\n")

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        dim = feats.shape[-1]
        if self.shift.size < dim:
            raise ModelError(f"am.mvn has {self.shift.size} dims but features have {dim}")
        return ((feats + self.shift[:dim]) * self.scale[:dim]).astype(np.float32)


def _kaldi_samples(fs: int, ms: float) -> int:
    """Kaldi sizes frames in float32 arithmetic (samp_freq * 0.001f * ms); so do we, to the sample."""
    return int(np.float32(fs) * np.float32(0.001) * np.float32(ms))


WINDOWS = ("hamming", "hanning", "povey", "rectangular", "blackman")


def _window(kind: str, n: int) -> np.ndarray:
    i = np.arange(n, dtype=np.float64)
    a = 2 * np.pi / (n - 1) if n > 1 else 0.0
    if kind == "hamming":
        return 0.54 - 0.46 * np.cos(a * i)
    if kind == "hanning":
        return 0.5 - 0.5 * np.cos(a * i)
    if kind == "povey":
        return (0.5 - 0.5 * np.cos(a * i)) ** 0.85
    if kind == "rectangular":
        return np.ones(n)
    if kind == "blackman":
        return 0.42 - 0.5 * np.cos(a * i) + 0.08 * np.cos(2 * a * i)
    raise ModelError(f"frontend window '{kind}' is not supported (hamming, hanning, povey, rectangular, blackman)")


def _mel(f):
    return 1127.0 * np.log(1.0 + f / 700.0)


class KaldiFbank:
    """Kaldi/kaldi-native-fbank log-mel fbank (snip_edges, no dither, power spectrum, 20 Hz to
    Nyquist), all frames at once, in float64. The streaming frontend calls it on whatever frames
    are complete, and gets bit-identical frames for any chunking."""

    PREEMPH = 0.97

    def __init__(self, cfg: FrontendConfig, frame_length_ms: float):
        self.length = _kaldi_samples(cfg.fs, frame_length_ms)
        self.shift = _kaldi_samples(cfg.fs, cfg.frame_shift)
        self.padded = 1 << max(self.length - 1, 0).bit_length()
        self.window = _window(cfg.window, self.length)
        # triangular mel banks over FFT bins 0 .. padded/2 - 1, stored sparse: for each mel bin, the
        # FFT bins inside its triangle and their weights, padded to the widest band with weight 0
        bins = np.arange(self.padded // 2)
        m = _mel(bins * cfg.fs / self.padded)
        lo, hi = _mel(20.0), _mel(cfg.fs / 2.0)
        delta = (hi - lo) / (cfg.n_mels + 1)
        bands = []
        for b in range(cfg.n_mels):
            left, center, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
            inside = np.flatnonzero((m > left) & (m < right))  # tiny FFTs can leave a band empty: energy 0
            mm = m[inside]
            bands.append((inside, np.where(mm <= center, (mm - left) / (center - left), (right - mm) / (right - center))))
        width = max(1, max(len(i) for i, _ in bands))
        self.mel_idx = np.zeros((width, cfg.n_mels), np.intp)
        self.mel_w = np.zeros((width, cfg.n_mels), np.float64)
        for b, (inside, w) in enumerate(bands):
            self.mel_idx[: len(inside), b] = inside
            self.mel_w[: len(inside), b] = w
        self.eps = np.finfo(np.float32).eps
        # the same bands for kernels/fbank.c: each band's first bin, bin count and weights
        self.band_start = np.array([i[0] if len(i) else 0 for i, _ in bands], np.intc)
        self.band_len = np.array([len(i) for i, _ in bands], np.intc)
        self.band_w = np.concatenate([w for _, w in bands] + [np.zeros(0)]).astype(np.float64)
        contiguous = all(len(i) < 2 or np.all(np.diff(i) == 1) for i, _ in bands)
        # (a flag, not the kernels module: streams holding this object are deep-copied, modules are not)
        self.use_c = self.length >= 2 and self.padded >= 4 and contiguous and _c_fbank_loaded()

    def num_frames(self, n: int) -> int:
        return 1 + (n - self.length) // self.shift if n >= self.length else 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Samples (already in the int16 range) -> [frames, n_mels] float32."""
        t = self.num_frames(len(x))
        if t == 0:
            return np.zeros((0, self.mel_idx.shape[1]), np.float32)
        if self.use_c and getattr(x, "dtype", None) == np.float32:
            from edge.backends import kernels

            return kernels.fbank(x, self.length, self.shift, self.padded, self.window, self.band_start,
                                 self.band_len, self.band_w, self.eps)
        x = np.asarray(x, np.float64)
        frames = np.lib.stride_tricks.sliding_window_view(x, self.length)[:: self.shift][:t]
        frames = frames - frames.mean(axis=1, keepdims=True)
        buf = np.zeros((t, self.padded), np.float64)
        buf[:, 1 : self.length] = (frames[:, 1:] - self.PREEMPH * frames[:, :-1]) * self.window[1:]
        buf[:, 0] = frames[:, 0] * (1.0 - self.PREEMPH) * self.window[0]
        spec = _rfft(buf, axis=1)
        power = spec.real * spec.real + spec.imag * spec.imag
        # summed bin by bin in a fixed order (not a BLAS matmul, whose order can depend on the
        # number of rows): a frame's energies never depend on which frames came with it
        power_t = np.ascontiguousarray(power.T)  # [bins, frames]: each gather below copies whole rows
        energy = np.zeros((self.mel_idx.shape[1], t))
        for idx, w in zip(self.mel_idx, self.mel_w[:, :, None]):
            energy += power_t[idx] * w
        energy = energy.T
        return np.log(np.maximum(energy, self.eps)).astype(np.float32)


def _c_fbank_loaded() -> bool:
    """Whether the C extension with kernels/fbank.c loaded (it computes KaldiFbank's frames frame
    by frame, equal to this numpy code's float32 output on every test signal). Measured on 10 s:
    x86 3.0 against 13 ms; the emulated A76 3.9 against 4.8 M instructions per audio second
    offline, 5.7 against 7.9 streaming (numpy's per-chunk calls).
    In the C code, the 256-point float64 FFT is 40 % of its 38.6 k instructions a frame, the
    real-spectrum split 19 %, pre-emphasis + window 13 %, log 10 %. PARAEDGE_KERNELS=off keeps numpy."""
    from edge.backends import kernels

    # (an extension built before fbank.c existed lacks the function: numpy then)
    return kernels.available() and hasattr(kernels.require(), "pe_fbank_f64")


def fbank(samples: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    """Log-mel fbank [frames, n_mels] of 16 kHz float samples in [-1, 1]."""
    x = np.asarray(samples, dtype=np.float32)
    if cfg.upscale_samples:
        x = x * INT16_SCALE
    # FunASR shortens the window for clips under one frame, so they still give one frame.
    frame_length = min(cfg.frame_length, x.size / cfg.fs * 1000.0)
    if frame_length <= 0 or _kaldi_samples(cfg.fs, frame_length) < 1:
        return np.zeros((0, cfg.n_mels), dtype=np.float32)
    return _fbank_for(cfg, frame_length)(x)


@functools.lru_cache(maxsize=16)
def _fbank_for(cfg: FrontendConfig, frame_length_ms: float) -> KaldiFbank:
    return KaldiFbank(cfg, frame_length_ms)


def lfr_windows(num_frames: int, m: int, n: int) -> int:
    """Number of LFR frames FunASR makes from `num_frames` fbank frames."""
    return int(math.ceil(num_frames / n)) if num_frames > 0 else 0


def apply_lfr(feats: np.ndarray, m: int, n: int) -> np.ndarray:
    """Stack m frames every n; left pad (m-1)//2 first frames, right pad with the last frame."""
    if m == 1 and n == 1:
        return feats.astype(np.float32)
    t = feats.shape[0]
    out_len = lfr_windows(t, m, n)
    left = (m - 1) // 2
    # index into the left-padded sequence, clamped at its end == FunASR's right padding
    idx = np.arange(out_len)[:, None] * n + np.arange(m)[None, :] - left
    idx = np.clip(idx, 0, t - 1)
    return feats[idx].reshape(out_len, m * feats.shape[1]).astype(np.float32)


class Frontend:
    """Offline frontend: whole utterance in, [T_lfr, n_mels*lfr_m] normalised features out."""

    def __init__(self, cfg: FrontendConfig, cmvn: Cmvn | None):
        self.cfg = cfg
        self.cmvn = cmvn

    def fbank(self, samples: np.ndarray) -> np.ndarray:
        return fbank(samples, self.cfg)

    def lfr_cmvn(self, fb: np.ndarray) -> np.ndarray:
        x = apply_lfr(fb, self.cfg.lfr_m, self.cfg.lfr_n)
        return self.cmvn(x) if self.cmvn is not None else x

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        return self.lfr_cmvn(self.fbank(samples))

    def stream(self) -> "StreamingFrontend":
        return StreamingFrontend(self.cfg, self.cmvn)


class StreamingFrontend:
    """Chunked frontend: `accept(samples)` returns the LFR frames that became complete; `finish()`
    returns the right-padded tail. Concatenated, they equal `Frontend(...)(all_samples)`."""

    def __init__(self, cfg: FrontendConfig, cmvn: Cmvn | None):
        self.cfg = cfg
        self.cmvn = cmvn
        self._fb = _fbank_for(cfg, cfg.frame_length)
        self._samples = np.zeros(0, np.float32)  # input from the next fbank frame's first sample on
        self._frames: list[np.ndarray] = []  # fbank frames not yet needed-no-more
        self._offset = 0  # absolute index of self._frames[0]
        self._taken = 0  # fbank frames computed
        self._emitted = 0  # LFR frames emitted
        self._finished = False

    @property
    def num_emitted(self) -> int:
        return self._emitted

    def _pull(self) -> None:
        n = self._fb.num_frames(len(self._samples))
        if n:
            self._frames.extend(self._fb(self._samples[: (n - 1) * self._fb.shift + self._fb.length]))
            self._samples = self._samples[n * self._fb.shift :]
            self._taken += n

    def _window(self, k: int, total: int) -> np.ndarray:
        m, n = self.cfg.lfr_m, self.cfg.lfr_n
        idx = np.clip(np.arange(m) + k * n - (m - 1) // 2, 0, total - 1) - self._offset
        return np.concatenate([self._frames[i] for i in idx])

    def _emit(self, last: int) -> np.ndarray:
        rows = [self._window(k, self._taken) for k in range(self._emitted, last)]
        self._emitted = max(self._emitted, last)
        # drop fbank frames no future window can reach (keeps memory flat in a daemon)
        keep_from = max(0, self._emitted * self.cfg.lfr_n - (self.cfg.lfr_m - 1) // 2)
        drop = min(keep_from - self._offset, len(self._frames) - 1)
        if drop > 0:
            del self._frames[:drop]
            self._offset += drop
        if not rows:
            return np.zeros((0, self.cfg.feat_dim), dtype=np.float32)
        x = np.stack(rows).astype(np.float32)
        return self.cmvn(x) if self.cmvn is not None else x

    def accept(self, samples: np.ndarray) -> np.ndarray:
        if self._finished:
            raise RuntimeError("StreamingFrontend.accept() after finish(); start a new stream")
        x = np.asarray(samples, dtype=np.float32)
        if x.size:
            if self.cfg.upscale_samples:
                x = x * INT16_SCALE
            self._samples = np.concatenate([self._samples, x])
        self._pull()
        m, n = self.cfg.lfr_m, self.cfg.lfr_n
        # LFR frame k needs padded frames [k*n, k*n+m), i.e. real frames up to k*n + m - 1 - left
        full = (self._taken + (m - 1) // 2 - m) // n + 1 if self._taken else 0
        return self._emit(max(full, self._emitted))

    def finish(self) -> np.ndarray:
        """Flush: emit the remaining, right-padded LFR frames."""
        if self._finished:
            return np.zeros((0, self.cfg.feat_dim), dtype=np.float32)
        self._finished = True  # snip_edges: a partial last frame is dropped, as offline
        if self._taken == 0:
            return np.zeros((0, self.cfg.feat_dim), dtype=np.float32)
        return self._emit(lfr_windows(self._taken, self.cfg.lfr_m, self.cfg.lfr_n))
