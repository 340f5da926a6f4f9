"""CIF (continuous integrate-and-fire): encoder frames + alphas -> one acoustic embedding per token.

Shared by every backend (it is tiny and sequential). Two forms, as FunASR has them:
- `cif_offline`: CifPredictorV2.forward + cif_v1 (vectorised prefix sums, tail alpha appended).
- `CifStream.step`: CifPredictorV2.forward_chunk (a loop carrying the unfired remainder
  across chunks; on the final chunk a tail alpha flushes the last token).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.errors import ModelError

F32 = np.float32


@dataclass(frozen=True)
class CifConfig:
    threshold: float = 1.0
    tail_threshold: float = 0.45
    smooth_factor: float = 1.0
    noise_threshold: float = 0.0

    @classmethod
    def from_conf(cls, conf: dict) -> "CifConfig":
        return cls(
            threshold=float(conf.get("threshold", 1.0)),
            tail_threshold=float(conf.get("tail_threshold", 0.0)),
            smooth_factor=float(conf.get("smooth_factor", 1.0)),
            noise_threshold=float(conf.get("noise_threshold", 0.0)),
        )


def token_count(alphas_with_tail: np.ndarray, cfg: CifConfig) -> int:
    """FunASR inference(): floor of the alpha sum when a tail is used, else rounded (half to even)."""
    total = alphas_with_tail.astype(F32).sum(dtype=F32)
    if not np.isfinite(total):  # NaN weights or features: one clear error, not int(NaN) deep in a batch
        raise ModelError(f"the model's CIF weights are not finite (sum {total}); corrupt weights or input")
    return int(np.floor(total)) if cfg.tail_threshold > 0 else int(np.round(total))


def cif_offline(hidden: np.ndarray, alphas: np.ndarray, cfg: CifConfig) -> np.ndarray:
    """Whole-utterance CIF: hidden [T, D], alphas [T] -> acoustic embeddings [N, D]."""
    hidden = hidden.astype(F32)
    alphas = alphas.astype(F32)
    if cfg.tail_threshold > 0:
        alphas = np.concatenate([alphas, np.array([cfg.tail_threshold], dtype=F32)])
        hidden = np.concatenate([hidden, np.zeros((1, hidden.shape[1]), dtype=F32)])
    n_tokens = token_count(alphas, cfg)
    # fire where the running sum crosses an integer (float64 cumsum, as FunASR, to avoid drift)
    prefix = np.cumsum(alphas, dtype=np.float64).astype(F32)
    floors = np.floor(prefix)
    fired = (floors - np.concatenate([[F32(0)], floors[:-1]])) > 0
    frac = prefix - floors
    cum_hidden = np.cumsum(alphas[:, None] * hidden, axis=0, dtype=F32)
    fire_t = np.flatnonzero(fired)
    frames = cum_hidden[fire_t]
    remain = frac[fire_t, None] * hidden[fire_t]
    # each token: mass since the previous fire, plus the previous fire's remainder, minus its own
    prev_frames = np.concatenate([np.zeros((1, hidden.shape[1]), F32), frames[:-1]])
    prev_remain = np.concatenate([np.zeros((1, hidden.shape[1]), F32), remain[:-1]])
    tokens = frames - prev_frames + prev_remain - remain
    max_len = int(np.round(alphas.sum(dtype=F32)))
    out = np.zeros((max_len, hidden.shape[1]), dtype=F32)
    k = min(len(tokens), max_len)
    out[:k] = tokens[:k]
    if cfg.tail_threshold > 0:
        out = out[:n_tokens]
    return out


@dataclass
class CifStream:
    """Streaming CIF state: unfired alpha mass and its (normalised) hidden vector."""

    cfg: CifConfig
    dim: int
    alpha: np.float32 = F32(0)
    hidden: np.ndarray | None = None

    def step(self, hidden: np.ndarray, alphas: np.ndarray, final: bool) -> np.ndarray:
        """Integrate one chunk's frames; return the embeddings of tokens that fired, [n, D]."""
        cfg = self.cfg
        carry_h = self.hidden if self.hidden is not None else np.zeros(self.dim, F32)
        hidden = np.concatenate([carry_h[None, :], hidden.astype(F32)])
        alphas = np.concatenate([[F32(self.alpha)], alphas.astype(F32)]).astype(F32)
        if final:
            hidden = np.concatenate([hidden, np.zeros((1, self.dim), F32)])
            alphas = np.concatenate([alphas, [F32(cfg.tail_threshold)]]).astype(F32)
        threshold = F32(cfg.threshold)
        integrate = F32(0)
        frame = np.zeros(self.dim, F32)
        fired = []
        for t in range(alphas.shape[0]):
            a = alphas[t]
            if a + integrate < threshold:
                integrate = F32(integrate + a)
                frame = frame + a * hidden[t]
            else:
                frame = frame + (threshold - integrate) * hidden[t]
                fired.append(frame)
                integrate = F32(F32(integrate + a) - threshold)
                frame = integrate * hidden[t]
        self.alpha = integrate
        self.hidden = (frame / integrate).astype(F32) if integrate > 0 else frame.astype(F32)
        if not fired:
            return np.zeros((0, self.dim), F32)
        return np.stack(fired).astype(F32)
