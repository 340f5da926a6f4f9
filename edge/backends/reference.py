"""The numpy reference backend: Paraformer's encoder, CIF predictor and decoder, op for op as
FunASR's PyTorch modules (SANMEncoder, CifPredictorV2, ParaformerSANMDecoder), batch 1.

Weights are FunASR state_dict arrays; Linear weights are transposed once here so every matmul
is `x @ W`. This backend is the ground truth every other backend is compared against.
"""

from __future__ import annotations

import numpy as np

from edge.backends import ops
from edge.backends.base import Backend
from edge.asr.cif import CifConfig
from edge.errors import ModelError

F32 = np.float32


def fsmn_padding(kernel_size: int, shift: int) -> tuple[int, int]:
    """FunASR's FSMN padding: centred, moved left by `sanm_shfit` (FunASR's spelling)."""
    left = (kernel_size - 1) // 2 + (shift if shift > 0 else 0)
    return left, kernel_size - 1 - left


class _Weights:
    """Name-checked access to a state_dict, with clear errors for missing or misshapen tensors."""

    def __init__(self, arrays: dict, where: str, non_float: dict | None = None):
        self.arrays = arrays
        self.where = where
        self.non_float = non_float or {}
        self.used: set[str] = set()

    def get(self, name: str, shape=None) -> np.ndarray:
        if name in self.non_float:
            raise ModelError(f"{self.where}: weight '{name}' is {self.non_float[name]}, not floating point (corrupt or "
                             "foreign weights file)")
        if name not in self.arrays:
            raise ModelError(f"{self.where}: weights lack '{name}' (model and config.yaml disagree?)")
        a = np.ascontiguousarray(self.arrays[name], dtype=F32)
        if shape is not None and tuple(a.shape) != tuple(shape):
            raise ModelError(f"{self.where}: '{name}' has shape {tuple(a.shape)}, config implies {tuple(shape)}")
        self.used.add(name)
        return a

    def check_all_layers_used(self) -> None:
        """Layers of a stack the model built that the weights hold past config.yaml's count: with
        `num_blocks: 5` on 6-layer weights the model decoded "open down", with 2 nothing, exit 0.
        Stacks the model never builds (a CTC head, another model's parts) are not layers here."""
        import re

        layer = re.compile(r"(.+?\.)\d+\.")
        built = {m.group(1) for n in self.used if (m := layer.match(n))}
        extra = sorted(n for n in self.arrays if n not in self.used and (m := layer.match(n)) and m.group(1) in built)
        if extra:
            raise ModelError(f"{self.where}: the weights hold '{extra[0]}' ({len(extra)} tensors) past the layer counts "
                             f"of config.yaml; set its num_blocks / att_layer_num to the trained model's")

    def linear(self, prefix: str, n_in: int, n_out: int, bias: bool = True):
        w = self.get(prefix + ".weight", (n_out, n_in)).T.copy()
        b = self.get(prefix + ".bias", (n_out,)) if bias else None
        return w, b

    def norm(self, prefix: str, dim: int):
        return self.get(prefix + ".weight", (dim,)), self.get(prefix + ".bias", (dim,))

    def fsmn(self, prefix: str, dim: int, kernel: int) -> np.ndarray:
        return self.get(prefix + ".weight", (dim, 1, kernel))[:, 0, :].T.copy()  # [k, d]


class EncoderLayer:
    """EncoderLayerSANM: pre-norm SAN-M self-attention (+FSMN memory) and a ReLU FFN."""

    def __init__(self, w: _Weights, prefix: str, d_in: int, d: int, ffn: int, heads: int, kernel: int, shift: int):
        self.d_in, self.d, self.heads = d_in, d, heads
        self.norm1 = w.norm(prefix + ".norm1", d_in)
        self.norm2 = w.norm(prefix + ".norm2", d)
        self.qkv = w.linear(prefix + ".self_attn.linear_q_k_v", d_in, 3 * d)
        self.out = w.linear(prefix + ".self_attn.linear_out", d, d)
        self.fsmn_w = w.fsmn(prefix + ".self_attn.fsmn_block", d, kernel)
        self.pad = fsmn_padding(kernel, shift)
        self.w1 = w.linear(prefix + ".feed_forward.w_1", d, ffn)
        self.w2 = w.linear(prefix + ".feed_forward.w_2", ffn, d)

    def __call__(self, x: np.ndarray, lens=None) -> np.ndarray:
        """x: the rows of one stream, or of several stacked (`lens` rows each): every row-wise op
        (LayerNorm, Linear) runs once over the stack, attention and FSMN per stream."""
        lens = lens or [x.shape[0]]
        h = ops.layer_norm(x, *self.norm1)
        qkv = ops.linear(h, *self.qkv)
        d = self.d
        q, k, v = qkv[:, :d], qkv[:, d : 2 * d], qkv[:, 2 * d :]
        memory = per_stream(lambda v_: ops.fsmn_memory(v_, self.fsmn_w, *self.pad), lens, v)
        heads = per_stream(lambda q_, k_, v_: ops.attention(q_, k_, v_, self.heads), lens, q, k, v)
        att = ops.linear(heads, *self.out) + memory
        x = x + att if self.d_in == self.d else att  # the first layer changes width: no residual
        h = ops.layer_norm(x, *self.norm2)
        return x + ops.linear(ops.relu(ops.linear(h, *self.w1)), *self.w2)


class DecoderLayer:
    """DecoderLayerSANM: FFN (with inner LayerNorm), FSMN self-memory, cross-attention.
    `self_attn`/`src_attn` may be absent (decoders2 has no cross-attention, decoders3 neither)."""

    def __init__(self, w: _Weights, prefix: str, d: int, ffn: int, heads: int, kernel: int | None, shift: int, cross: bool):
        self.d, self.heads, self.kernel = d, heads, kernel
        self.norm1 = w.norm(prefix + ".norm1", d)
        self.w1 = w.linear(prefix + ".feed_forward.w_1", d, ffn)
        self.ffn_norm = w.norm(prefix + ".feed_forward.norm", ffn)
        self.w2 = w.linear(prefix + ".feed_forward.w_2", ffn, d, bias=False)
        self.fsmn_w = None
        if kernel is not None:
            self.norm2 = w.norm(prefix + ".norm2", d)
            self.fsmn_w = w.fsmn(prefix + ".self_attn.fsmn_block", d, kernel)
            self.pad = fsmn_padding(kernel, shift)
        self.cross = cross
        if cross:
            self.norm3 = w.norm(prefix + ".norm3", d)
            self.q = w.linear(prefix + ".src_attn.linear_q", d, d)
            self.kv = w.linear(prefix + ".src_attn.linear_k_v", d, 2 * d)
            self.out = w.linear(prefix + ".src_attn.linear_out", d, d)

    def ffn(self, x):
        h = ops.relu(ops.linear(ops.layer_norm(x, *self.norm1), *self.w1))
        return ops.linear(ops.layer_norm(h, *self.ffn_norm), *self.w2)

    def fsmn(self, x: np.ndarray, cache):
        """MultiHeadedAttentionSANMDecoder: FSMN over [cache | x]; returns (out, new cache).
        The cache is FunASR's: the padded input window of the previous call."""
        t = x.shape[0]
        if cache is None:
            left, right = self.pad
            window = np.pad(x, ((left, right), (0, 0)))
        else:
            window = np.concatenate([cache[1:], x])[-(self.kernel + t - 1) :]
        out = ops.depthwise_conv1d(window, self.fsmn_w, window.shape[0] - self.kernel + 1)
        # FunASR adds the input back only where the lengths line up (they always do for t >= 1)
        return out + x, window

    def rows(self, x, lens, memory, mem_lens, caches):
        """One layer over several streams' token rows stacked (`lens` rows each), each attending
        to its own encoder output (stacked in `memory`, `mem_lens` rows each) with its own FSMN
        cache: returns (rows, new caches)."""
        residual = x
        h = self.ffn(x)
        if self.fsmn_w is None:
            return h, [None] * len(lens)  # decoders3: FFN only, no residual (as FunASR)
        outs, caches = zip(*[self.fsmn(part, c) for part, c in zip(split_rows(ops.layer_norm(h, *self.norm2), lens), caches)])
        x = residual + join(outs)
        if self.cross:
            q = ops.linear(ops.layer_norm(x, *self.norm3), *self.q)
            kv = ops.linear(memory, *self.kv)
            d = self.d
            heads = [ops.attention(q_, kv_[:, :d], kv_[:, d:], self.heads)
                     for q_, kv_ in zip(split_rows(q, lens), split_rows(kv, mem_lens))]
            x = x + ops.linear(join(heads), *self.out)
        return x, list(caches)


class ReferenceBackend(Backend):
    name = "ref"

    def __init__(self, model_dir, threads: int | None = None):
        super().__init__(model_dir, threads)
        cfg = self.config
        w = _Weights(model_dir.weights, model_dir.path, model_dir.non_float_weights)
        enc, dec, pred = cfg.encoder_conf, cfg.decoder_conf, cfg.predictor_conf
        d = int(enc.get("output_size", 256))
        heads = int(enc.get("attention_heads", 4))
        ffn = int(enc.get("linear_units", 2048))
        blocks = int(enc.get("num_blocks", 6))
        kernel = int(enc.get("kernel_size", 11))
        shift = int(enc.get("sanm_shfit", 0))
        self.d_model = d
        self.encoder = [EncoderLayer(w, "encoder.encoders0.0", cfg.input_size, d, ffn, heads, kernel, shift)]
        self.encoder += [
            EncoderLayer(w, f"encoder.encoders.{i}", d, d, ffn, heads, kernel, shift) for i in range(blocks - 1)
        ]
        self.after_norm = w.norm("encoder.after_norm", d)

        # CIF predictor: conv (l_order, r_order) -> ReLU -> Linear(d, 1) -> sigmoid
        self.l_order, self.r_order = int(pred.get("l_order", 1)), int(pred.get("r_order", 1))
        k = self.l_order + self.r_order + 1
        conv_w = w.get("predictor.cif_conv1d.weight", (d, d, k))
        self.cif_conv_w = np.ascontiguousarray(conv_w.transpose(2, 1, 0))  # [k, in, out]
        self.cif_conv_b = w.get("predictor.cif_conv1d.bias", (d,))
        self.cif_out = w.linear("predictor.cif_output", d, 1)
        self.cif = CifConfig.from_conf(pred)

        dheads = int(dec.get("attention_heads", 4))
        dffn = int(dec.get("linear_units", 2048))
        dblocks = int(dec.get("num_blocks", 6))
        att_layers = int(dec.get("att_layer_num", 6))  # FunASR default, independent of num_blocks
        dkernel = int(dec.get("kernel_size", 21))
        dshift = dec.get("sanm_shfit", 0)
        dshift = (dkernel - 1) // 2 if dshift is None else int(dshift)
        vocab = cfg.vocab_size
        out_w = model_dir.weights.get("decoder.output_layer.weight")
        if out_w is not None and out_w.ndim == 2:  # name the tokens file, not just a shape mismatch
            model_dir.check_vocab(out_w.shape[0], f"{model_dir.weights_file} (decoder.output_layer)")
        self.decoders = [
            DecoderLayer(w, f"decoder.decoders.{i}", d, dffn, dheads, dkernel, dshift, True) for i in range(att_layers)
        ]
        self.decoders2 = [
            DecoderLayer(w, f"decoder.decoders2.{i}", d, dffn, dheads, dkernel, 0, False)
            for i in range(dblocks - att_layers)
        ]
        self.decoders3 = DecoderLayer(w, "decoder.decoders3.0", d, dffn, dheads, None, 0, False)
        self.dec_norm = w.norm("decoder.after_norm", d)
        self.output = w.linear("decoder.output_layer", d, vocab)
        self.fsmn_layers = len(self.decoders) + len(self.decoders2)
        w.check_all_layers_used()

    # -- the seam ---------------------------------------------------------------------------
    batched = True  # streams' rows stacked: exact, each row's arithmetic is the same alone or stacked

    def encode(self, x: np.ndarray):
        return self.encode_batch([x])[0]

    def encode_batch(self, windows: list) -> list:
        lens = [w.shape[0] for w in windows]
        x = np.ascontiguousarray(join(windows), dtype=F32)
        for layer in self.encoder:
            x = layer(x, lens)
        return [(enc, self.alphas(enc)) for enc in split_rows(ops.layer_norm(x, *self.after_norm), lens)]

    def alphas(self, enc: np.ndarray) -> np.ndarray:
        h = ops.relu(ops.conv1d(enc, self.cif_conv_w, self.cif_conv_b, self.l_order, self.r_order))
        a = ops.sigmoid(ops.linear(h, *self.cif_out))[:, 0]
        return ops.relu(a * F32(self.cif.smooth_factor) - F32(self.cif.noise_threshold))

    def decode(self, enc, embeds, caches=None, streaming: bool = False):
        return self.decode_batch([(enc, embeds, caches)], streaming)[0]

    def decode_batch(self, items: list, streaming: bool = True) -> list:
        x, lens, caches = run_decoder_rows(self, items, streaming)
        logits = ops.linear(ops.layer_norm(x, *self.dec_norm), *self.output)
        return list(zip(split_rows(ops.log_softmax(logits), lens), caches))


def split_rows(x: np.ndarray, lens) -> list:
    """Stacked rows back into one array per stream."""
    return [x] if len(lens) == 1 else np.split(x, np.cumsum(lens)[:-1])


def join(parts) -> np.ndarray:
    """Streams' rows stacked (one stream: the array itself, no copy)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def per_stream(fn, lens, *arrays) -> np.ndarray:
    """fn applied to each stream's rows of the stacked arrays, the results stacked again."""
    return join([fn(*parts) for parts in zip(*(split_rows(a, lens) for a in arrays))])


def run_decoder_rows(model, items, streaming: bool):
    """The decoder's layer stack (decoders, decoders2, decoders3) over several streams at once, for
    any backend whose layers have `rows(x, lens, memory, mem_lens, caches)`. items: [(enc, embeds,
    caches or None)] -> (stacked rows, token rows per stream, each stream's new caches)."""
    n = len(model.decoders) + len(model.decoders2)
    caches = [list(c) if c is not None else [None] * n for _, _, c in items]
    lens, mem_lens = [e.shape[0] for _, e, _ in items], [m.shape[0] for m, _, _ in items]
    x = np.ascontiguousarray(join([e for _, e, _ in items]), dtype=F32)
    memory = join([m for m, _, _ in items])
    layers = list(model.decoders)
    # FunASR's forward_chunk only runs decoders2 when it has more than one layer
    if model.decoders2 and (not streaming or len(model.decoders2) > 1):
        layers += model.decoders2
    for i, layer in enumerate(layers):
        x, new = layer.rows(x, lens, memory, mem_lens, [c[i] for c in caches])
        for c, cache in zip(caches, new):
            c[i] = cache
    x, _ = model.decoders3.rows(x, lens, memory, mem_lens, [None] * len(lens))
    return x, lens, caches
