"""Acoustic frontend: Kaldi fbank -> LFR stacking -> CMVN, exactly as FunASR's WavFrontend.

- fbank: kaldi-native-fbank, samples scaled to the int16 range (FunASR's `upsacle_samples`),
  hamming window, snip_edges, dither forced to 0 (inference must be deterministic).
- LFR: stack `lfr_m` frames every `lfr_n`, left-padded with (m-1)//2 copies of the first frame
  and right-padded with the last frame (FunASR `apply_lfr`).
- CMVN: Kaldi nnet `am.mvn` (<AddShift> then <Rescale>).

`StreamingFrontend` yields the very same frames as `Frontend` for any chunking of the input:
an LFR frame is emitted as soon as its whole window of fbank frames exists.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import numpy as np

from edge.errors import ModelError

INT16_SCALE = 32768.0


@dataclass(frozen=True)
class FrontendConfig:
    fs: int = 16000
    n_mels: int = 80
    frame_length: float = 25.0
    frame_shift: float = 10.0
    window: str = "hamming"
    lfr_m: int = 7
    lfr_n: int = 6
    snip_edges: bool = True
    upscale_samples: bool = True

    @classmethod
    def from_conf(cls, conf: dict) -> "FrontendConfig":
        conf = dict(conf or {})
        return cls(
            fs=int(conf.get("fs", 16000)),
            n_mels=int(conf.get("n_mels", 80)),
            frame_length=float(conf.get("frame_length", 25)),
            frame_shift=float(conf.get("frame_shift", 10)),
            window=str(conf.get("window", "hamming")),
            lfr_m=int(conf.get("lfr_m", 1)),
            lfr_n=int(conf.get("lfr_n", 1)),
            snip_edges=bool(conf.get("snip_edges", True)),
            upscale_samples=bool(conf.get("upsacle_samples", True)),  # FunASR's spelling
        )

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

    def __init__(self, shift: np.ndarray, scale: np.ndarray):
        if shift.shape != scale.shape or shift.ndim != 1:
            raise ModelError(f"am.mvn: <AddShift> {shift.shape} and <Rescale> {scale.shape} differ")
        self.shift = shift.astype(np.float32)
        self.scale = scale.astype(np.float32)

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
        return cls(vectors["AddShift"], vectors["Rescale"])

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


def _fbank_options(cfg: FrontendConfig, frame_length_ms: float):
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = float(cfg.fs)
    opts.frame_opts.frame_length_ms = float(frame_length_ms)
    opts.frame_opts.frame_shift_ms = float(cfg.frame_shift)
    opts.frame_opts.dither = 0.0
    opts.frame_opts.window_type = cfg.window
    opts.frame_opts.snip_edges = cfg.snip_edges
    opts.mel_opts.num_bins = cfg.n_mels
    opts.energy_floor = 0.0
    return opts


def _drain(fb, start: int = 0) -> np.ndarray:
    n = fb.num_frames_ready
    if n <= start:
        return np.zeros((0, fb.dim), dtype=np.float32)
    return np.array([fb.get_frame(i) for i in range(start, n)], dtype=np.float32)


def fbank(samples: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    """Log-mel fbank [frames, n_mels] of 16 kHz float samples in [-1, 1]."""
    import kaldi_native_fbank as knf

    x = np.asarray(samples, dtype=np.float32)
    if cfg.upscale_samples:
        x = x * INT16_SCALE
    # FunASR shortens the window for clips under one frame, so they still give one frame.
    frame_length = min(cfg.frame_length, x.size / cfg.fs * 1000.0)
    if frame_length <= 0:
        return np.zeros((0, cfg.n_mels), dtype=np.float32)
    fb = knf.OnlineFbank(_fbank_options(cfg, frame_length))
    fb.accept_waveform(cfg.fs, x)
    fb.input_finished()
    return _drain(fb)


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
        import kaldi_native_fbank as knf

        self.cfg = cfg
        self.cmvn = cmvn
        self._fb = knf.OnlineFbank(_fbank_options(cfg, cfg.frame_length))
        self._frames: list[np.ndarray] = []  # fbank frames not yet needed-no-more
        self._offset = 0  # absolute index of self._frames[0]
        self._taken = 0  # fbank frames read out of knf
        self._emitted = 0  # LFR frames emitted
        self._finished = False

    @property
    def num_emitted(self) -> int:
        return self._emitted

    def _pull(self) -> None:
        n = self._fb.num_frames_ready
        for i in range(self._taken, n):
            self._frames.append(np.array(self._fb.get_frame(i), dtype=np.float32, copy=True))
        if n > self._taken:
            self._fb.pop(n - self._taken)  # knf keeps frames until popped; we keep our own copy
        self._taken = n

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
            raise RuntimeError("StreamingFrontend.accept() after finish(); call reset()")
        x = np.asarray(samples, dtype=np.float32)
        if x.size:
            if self.cfg.upscale_samples:
                x = x * INT16_SCALE
            self._fb.accept_waveform(self.cfg.fs, x)
        self._pull()
        m, n = self.cfg.lfr_m, self.cfg.lfr_n
        # LFR frame k needs padded frames [k*n, k*n+m), i.e. real frames up to k*n + m - 1 - left
        full = (self._taken + (m - 1) // 2 - m) // n + 1 if self._taken else 0
        return self._emit(max(full, self._emitted))

    def finish(self) -> np.ndarray:
        """Flush: emit the remaining, right-padded LFR frames."""
        if self._finished:
            return np.zeros((0, self.cfg.feat_dim), dtype=np.float32)
        self._fb.input_finished()
        self._pull()
        self._finished = True
        if self._taken == 0:
            return np.zeros((0, self.cfg.feat_dim), dtype=np.float32)
        return self._emit(lfr_windows(self._taken, self.cfg.lfr_m, self.cfg.lfr_n))
