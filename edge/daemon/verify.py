"""Second-stage wake verifier: a small 1-D CNN that looks at the last second of the wake gate's own
features whenever a microWakeWord model passes its cutoff, and vetoes near misses.

Why: the pretrained alexa model fires on "a lexus", "selection", "perplexa" (bench/wake.py: 1.3-1.7
false accepts/h at any cutoff fast enough for P50 <= 150 ms, almost all near misses). A verifier that
runs only on those rare candidates costs nothing while idle and adds no latency: it sees the same
features the model just saw.

Shape (weights from `python -m paraedge_tools.recipe.wake_verifier`): the last FRAMES 40-bin frames
(zero-padded at the start when fewer were heard), normalised per bin, three conv1d layers (kernel 5,
stride 2, ReLU), the mean and max over time, one linear unit, a sigmoid. Pure numpy; 16.9 k weights,
0.47 M multiply-adds and 0.16 ms per call on this x86 host (1 thread), and it only runs while the
model's probability is past its cutoff.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from edge.errors import ParaEdgeError

FRAMES = 100  # 1.0 s of 10 ms feature frames
BINS = 40
KERNEL, STRIDE = 5, 2


class VerifierError(ParaEdgeError):
    """A verifier file that cannot be used (named in the message)."""


def _conv_relu(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[T, Cin] -> [T', Cout]: valid conv1d with KERNEL and STRIDE, then ReLU. w is [Cout, Cin, K]."""
    win = np.lib.stride_tricks.sliding_window_view(x, KERNEL, axis=0)[::STRIDE]  # [T', Cin, K]
    return np.maximum(np.einsum("tck,ock->to", win, w, optimize=True) + b, 0.0)


def last_frames(frames: np.ndarray) -> np.ndarray:
    """The verifier's input: the last FRAMES rows of [n, BINS] frames, zero-padded at the start."""
    x = np.zeros((FRAMES, BINS), np.float32)
    f = np.asarray(frames, np.float32)[-FRAMES:]
    if len(f):
        x[FRAMES - len(f):] = f
    return x


class WakeVerifier:
    """Loads a verifier .npz; `score(frames)` -> probability that the frames end in the wake word."""

    KEYS = ("mu", "sd", "w0", "b0", "w1", "b1", "w2", "b2", "wo", "bo")

    def __init__(self, path: str | Path, cutoff: float | None = None):
        self.path = Path(path)
        try:
            with np.load(self.path, allow_pickle=False) as z:
                missing = [k for k in (*self.KEYS, "meta") if k not in z.files]
                if missing:
                    raise ValueError(f"missing arrays {missing}")
                p = {k: np.asarray(z[k], np.float32) for k in self.KEYS}
                self.meta = json.loads(str(z["meta"]))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise VerifierError(f"{self.path}: not a wake verifier ({exc}); rebuild it with "
                                "python -m paraedge_tools.recipe.wake_verifier") from None
        c = p["w0"].shape[0]
        want = {"mu": (BINS,), "sd": (BINS,), "w0": (c, BINS, KERNEL), "b0": (c,), "w1": (c, c, KERNEL),
                "b1": (c,), "w2": (c, c, KERNEL), "b2": (c,), "wo": (2 * c,), "bo": (1,)}
        bad = [k for k, s in want.items() if p[k].shape != s]
        if bad or not all(np.isfinite(v).all() for v in p.values()) or (p["sd"] <= 0).any():
            raise VerifierError(f"{self.path}: wrong shapes or values in {bad or 'mu/sd or weights'}; rebuild it "
                                "with python -m paraedge_tools.recipe.wake_verifier")
        self.p = p
        self.keyword = str(self.meta.get("keyword", ""))
        self.cutoff = float(cutoff if cutoff is not None else self.meta.get("cutoff", 0.5))
        if not 0.0 <= self.cutoff < 1.0:
            raise VerifierError(f"{self.path}: verifier cutoff {self.cutoff} must be in [0, 1)")

    def score(self, frames: np.ndarray) -> float:
        """frames: [n, 40] features, oldest first (the last FRAMES are used)."""
        p = self.p
        h = (last_frames(frames) - p["mu"]) / p["sd"]
        for i in range(3):
            h = _conv_relu(h, p[f"w{i}"], p[f"b{i}"])
        z = float(np.concatenate([h.mean(0), h.max(0)]) @ p["wo"] + p["bo"][0])
        return float(1.0 / (1.0 + np.exp(-np.clip(z, -60, 60))))

    def accepts(self, frames: np.ndarray) -> bool:
        return self.score(frames) > self.cutoff
