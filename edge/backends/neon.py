"""The NEON backend: the reference model with its hot spots in the C kernels (edge/backends/kernels.py).

Every Linear layer of the encoder and decoder runs INT8: weights quantized per output channel
once at load time and packed for the CPU's GEMM path (sdot or smull), activations quantized per
row on each call (dynamic, like onnxruntime's INT8 export). FSMN memory, LayerNorm, attention
(fused, all heads per call, on short sequences) and CIF run in C in float32 (FSMN and CIF bit-exact with the
reference). The CIF predictor (conv + alpha head) stays float32 numpy: the token count hangs on
the alpha sum.

Weights are read and checked by the reference backend's loader, so both see the same model.
"""

from __future__ import annotations

import numpy as np

from edge.backends import kernels, ops
from edge.backends.base import Backend
from edge.backends.reference import ReferenceBackend, join, per_stream, run_decoder_rows, split_rows

F32 = np.float32
# The fused attention kernel beats numpy's batched BLAS matmuls on short sequences only (aarch64
# instructions per call, D=256, 4 heads: T=15 0.21M vs 0.30M; T=29 0.63M vs 0.63M; T=100 6.8M vs
# 4.9M): streaming windows are 15 frames, whole utterances go to BLAS.
FUSED_ATTENTION_MAX_T = 32


def _attention(q, k, v, heads):
    if k.shape[0] <= FUSED_ATTENTION_MAX_T:
        return kernels.attention(q, k, v, heads)
    return ops.attention(q, k, v, heads)


class _Enc:
    def __init__(self, layer, path):
        self.r = layer
        self.qkv = kernels.Linear(*layer.qkv, path=path)
        self.out = kernels.Linear(*layer.out, path=path)
        self.w1 = kernels.Linear(*layer.w1, path=path)
        self.w2 = kernels.Linear(*layer.w2, path=path)

    def __call__(self, x, lens=None):
        """Several streams' rows stacked (`lens` each) as the reference's layer takes them: the
        INT8 Linears quantize per row, so a row's result is the same alone or stacked."""
        r, d = self.r, self.r.d
        lens = lens or [x.shape[0]]
        qkv = self.qkv(kernels.layer_norm(x, *r.norm1))
        q, k, v = qkv[:, :d], qkv[:, d : 2 * d], qkv[:, 2 * d :]
        memory = per_stream(lambda v_: kernels.fsmn(v_, r.fsmn_w, r.pad[0]), lens, v)
        heads = per_stream(lambda q_, k_, v_: _attention(q_, k_, v_, r.heads), lens, q, k, v)
        att = self.out(heads) + memory
        x = x + att if r.d_in == r.d else att
        return x + self.w2(self.w1(kernels.layer_norm(x, *r.norm2), relu=True))


class _Dec:
    def __init__(self, layer, path):
        self.r = layer
        self.w1 = kernels.Linear(*layer.w1, path=path)
        self.w2 = kernels.Linear(*layer.w2, path=path)
        if layer.cross:
            self.q = kernels.Linear(*layer.q, path=path)
            self.kv = kernels.Linear(*layer.kv, path=path)
            self.out = kernels.Linear(*layer.out, path=path)

    def fsmn(self, x, cache):
        """Same cache as the reference (FunASR's padded window), so caches are interchangeable;
        the kernel reads the window's last kernel-1 rows instead of a padded copy."""
        k, left = self.r.kernel, self.r.pad[0]
        if cache is None:
            return kernels.fsmn(x, self.r.fsmn_w, left), np.pad(x, (self.r.pad, (0, 0)))
        hist = cache[1:][-(k - 1) :] if k > 1 else cache[:0]
        return kernels.fsmn(x, self.r.fsmn_w, k - 1, hist), np.concatenate([hist, x])

    def rows(self, x, lens, memory, mem_lens, caches):
        """The reference DecoderLayer.rows, on the kernels."""
        r = self.r
        residual = x
        h = self.w1(kernels.layer_norm(x, *r.norm1), relu=True)
        h = self.w2(kernels.layer_norm(h, *r.ffn_norm))
        if r.fsmn_w is None:
            return h, [None] * len(lens)
        outs, caches = zip(*[self.fsmn(part, c)
                             for part, c in zip(split_rows(kernels.layer_norm(h, *r.norm2), lens), caches)])
        x = residual + join(outs)
        if r.cross:
            q = self.q(kernels.layer_norm(x, *r.norm3))
            kv = self.kv(memory)
            heads = [_attention(q_, kv_[:, : r.d], kv_[:, r.d :], r.heads)
                     for q_, kv_ in zip(split_rows(q, lens), split_rows(kv, mem_lens))]
            x = x + self.out(join(heads))
        return x, list(caches)


class NeonBackend(Backend):
    name = "neon"

    def __init__(self, model_dir, threads: int | None = None, path: str | None = None):
        kernels.require()  # BackendUnavailable with the reason when the extension is missing
        super().__init__(model_dir, threads)
        self.path = path or kernels.best_path()
        ref = self.ref = ReferenceBackend(model_dir, threads)
        self.encoder = [_Enc(layer, self.path) for layer in ref.encoder]
        self.decoders = [_Dec(layer, self.path) for layer in ref.decoders]
        self.decoders2 = [_Dec(layer, self.path) for layer in ref.decoders2]
        self.decoders3 = _Dec(ref.decoders3, self.path)
        self.output = kernels.Linear(*ref.output, path=self.path)
        self.cif = ref.cif

    def describe(self) -> str:
        return f"neon int8 ({self.path})"

    # CIF in C, picked up by edge.asr.recognizer (bit-exact with edge.asr.cif)
    cif_offline = staticmethod(kernels.cif_offline)
    cif_stream = kernels.CifStream

    batched = True  # rows stacked, as the reference backend

    def encode(self, x: np.ndarray):
        return self.encode_batch([x])[0]

    def encode_batch(self, windows: list) -> list:
        lens = [w.shape[0] for w in windows]
        x = np.ascontiguousarray(join(windows), dtype=F32)
        for layer in self.encoder:
            x = layer(x, lens)
        return [(enc, self.ref.alphas(enc)) for enc in split_rows(kernels.layer_norm(x, *self.ref.after_norm), lens)]

    def decode(self, enc, embeds, caches=None, streaming: bool = False):
        return self.decode_batch([(enc, embeds, caches)], streaming)[0]

    def decode_batch(self, items: list, streaming: bool = True) -> list:
        x, lens, caches = run_decoder_rows(self, items, streaming)
        logits = self.output(kernels.layer_norm(x, *self.ref.dec_norm))
        return list(zip(split_rows(ops.log_softmax(logits), lens), caches))
