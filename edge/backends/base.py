"""The backend seam. Every backend computes the same three things, on batch 1, float32:

- `encode(x)`: prepared encoder input [T, input_size] (features already scaled by sqrt(d_model)
  and position-encoded; in streaming, overlapped with the previous look-ahead) ->
  (encoder output [T, d_model], CIF alphas [T]).
- `decode(enc, embeds, caches)`: encoder output + CIF acoustic embeddings [N, d_model] ->
  (log-probabilities [N, vocab], new decoder FSMN caches). `caches=None` starts a fresh
  utterance; offline decoding is one call with `caches=None`.

Optional hooks, declared here with the shared implementation as default (`HOOKS` names them, so a
wrapper such as the profiler's clock forwards every one; before they were found by getattr and a
wrapper silently dropped the neon backend's C CIF):
- `offline(feats)`: CMVN'd features [T, input_size] -> (log-probs, tokens) for backends that run
  the whole offline graph at once (onnxruntime's model.onnx); None = encode + CIF + decode.
- `cif_offline(enc, alphas, cfg)` / `cif_stream(cfg, d_model)`: CIF where the backend runs it
  (the neon backend's C CIF, bit-exact); default the numpy reference in `edge.asr.cif`.

Batched streams (several seat zones at once, edge.asr.recognizer.Recognizer.accept_batch):
- `encode_batch(windows)` -> [(enc, alphas)] and `decode_batch([(enc, embeds, caches)])` ->
  [(log-probs, caches)], each stream's result equal to its own `encode`/`decode`. The defaults run
  the streams one after another; backends that can run them together (`batched = True`) override.

Decoding logic (chunking, CIF, caches, tail flush, token filtering) lives in `edge.asr.recognizer`
and is written once for all backends.
"""

from __future__ import annotations

import abc
from typing import Callable, Optional

import numpy as np

from edge.asr import cif


class Backend(abc.ABC):
    name = "base"
    HOOKS = ("offline", "cif_offline", "cif_stream")
    offline: Optional[Callable] = None  # callable(feats) -> (log_probs [N, V], token_count)
    cif_offline: Callable = staticmethod(cif.cif_offline)
    cif_stream: Callable = cif.CifStream

    def __init__(self, model_dir, threads: int | None = None):
        self.model_dir = model_dir
        self.config = model_dir.config
        self.threads = threads

    @abc.abstractmethod
    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ...

    @abc.abstractmethod
    def decode(self, enc: np.ndarray, embeds: np.ndarray, caches=None, streaming: bool = False):
        ...

    batched = False  # True: encode_batch/decode_batch run several streams in one call

    def encode_batch(self, windows: list) -> list:
        return [self.encode(w) for w in windows]

    def decode_batch(self, items: list, streaming: bool = True) -> list:
        return [self.decode(enc, embeds, caches, streaming) for enc, embeds, caches in items]

    def describe(self) -> str:
        return self.name
