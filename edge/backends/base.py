"""The backend seam. Every backend computes the same three things, on batch 1, float32:

- `encode(x)`: prepared encoder input [T, input_size] (features already scaled by sqrt(d_model)
  and position-encoded; in streaming, overlapped with the previous look-ahead) ->
  (encoder output [T, d_model], CIF alphas [T]).
- `decode(enc, embeds, caches)`: encoder output + CIF acoustic embeddings [N, d_model] ->
  (log-probabilities [N, vocab], new decoder FSMN caches). `caches=None` starts a fresh
  utterance; offline decoding is one call with `caches=None`.
- `offline(feats)` (optional fast path): CMVN'd features [T, input_size] -> (log-probs, tokens)
  for backends that run the whole offline graph at once (onnxruntime's model.onnx).

Decoding logic (chunking, CIF, caches, tail flush, token filtering) lives in `edge.recognizer`
and is written once for all backends.
"""

from __future__ import annotations

import numpy as np


class Backend:
    name = "base"

    def __init__(self, model_dir, threads: int | None = None):
        self.model_dir = model_dir
        self.config = model_dir.config
        self.threads = threads

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def decode(self, enc: np.ndarray, embeds: np.ndarray, caches=None, streaming: bool = False):
        raise NotImplementedError

    offline = None  # optional: callable(feats) -> (log_probs [N, V], token_count)

    def describe(self) -> str:
        return self.name
