"""Paraformer in PyTorch (host side: export and training), parameter for parameter FunASR's.

Module and parameter names equal FunASR's (`encoder.encoders0.0.self_attn.linear_q_k_v.weight`,
`decoder.decoders3.0.feed_forward.norm.bias`, ...), so a FunASR `model.pt` loads with
`load_state_dict(strict=True)` and no renaming. Semantics equal FunASR's inference path
(SANMEncoder, CifPredictorV2 + cif_v1, ParaformerSANMDecoder); the forward passes are written to
trace cleanly for ONNX (masks instead of Python control flow, CIF as a weight matrix).
The numpy reference in `edge/` is the ground truth both are tested against.
"""

from __future__ import annotations

import math

import torch
from torch import nn

DEFAULT_ENCODER = dict(output_size=256, attention_heads=4, linear_units=2048, num_blocks=6, kernel_size=11, sanm_shfit=0)
DEFAULT_DECODER = dict(attention_heads=4, linear_units=2048, num_blocks=6, att_layer_num=6, kernel_size=21, sanm_shfit=0)


class LayerNorm(nn.LayerNorm):
    """FunASR's LayerNorm: eps 1e-12."""

    def __init__(self, dim: int):
        super().__init__(dim, eps=1e-12)


def fsmn_padding(kernel_size: int, shift: int) -> tuple[int, int]:
    left = (kernel_size - 1) // 2 + (shift if shift > 0 else 0)
    return left, kernel_size - 1 - left


def position_encoding(num_frames, depth: int, start=0, device=None) -> torch.Tensor:
    """FunASR SinusoidalPositionEncoder: positions start+1.., [sin | cos], float32: [T, D], or
    [B, T, D] when `start` is a tensor of one start per utterance (training's position shift)."""
    inc = math.log(10000.0) / (depth / 2 - 1)
    inv = torch.exp(torch.arange(depth // 2, dtype=torch.float32, device=device) * -inc)
    pos = torch.arange(1, num_frames + 1, dtype=torch.float32, device=device)
    if torch.is_tensor(start):
        pos = pos[None, :] + start.to(torch.float32)[:, None]
    else:
        pos = pos + start
    scaled = pos[..., None] * inv
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=-1)


def attend(q, k, v, heads: int, key_mask=None, product=torch.matmul, scores=None, weights=None, mix=None):
    """q [B,T1,D], k/v [B,T2,D], key_mask [B,T2] or per query [B,T1,T2] (1 = valid) -> [B,T1,D].
    `product` computes the two batched products (scores, context), `scores` (q, k, heads) ->
    [B,H,T1,T2] the scaled scores in place of the first, `weights` the softmax over the keys,
    `mix` (masked scores, v, heads, key_mask [B,T2]) -> [B,T1,D] the softmax and the context in
    place of both: a compiler's seams."""
    b, t1, d = q.shape
    dk = d // heads
    vh = v.reshape(b, -1, heads, dk).transpose(1, 2)
    if scores is not None:
        scores = scores(q, k, heads)
    else:
        qh = q.reshape(b, t1, heads, dk).transpose(1, 2) * dk**-0.5
        kh = k.reshape(b, -1, heads, dk).transpose(1, 2)
        scores = product(qh, kh.transpose(-2, -1))
    if key_mask is not None:
        m = key_mask[:, None, None, :] if key_mask.dim() == 2 else key_mask[:, None, :, :]
        scores = scores.masked_fill(m == 0, -1e4)
    if mix is not None:
        return mix(scores, v, heads, key_mask)
    p = torch.softmax(scores, dim=-1) if weights is None else weights(scores)
    return product(p, vh).transpose(1, 2).reshape(b, t1, d)


class PositionwiseFeedForward(nn.Module):
    def __init__(self, idim: int, hidden: int):
        super().__init__()
        self.w_1 = nn.Linear(idim, hidden)
        self.w_2 = nn.Linear(hidden, idim)

    def forward(self, x):
        return self.w_2(torch.relu(self.w_1(x)))


class PositionwiseFeedForwardDecoderSANM(nn.Module):
    def __init__(self, idim: int, hidden: int):
        super().__init__()
        self.w_1 = nn.Linear(idim, hidden)
        self.w_2 = nn.Linear(hidden, idim, bias=False)
        self.norm = LayerNorm(hidden)

    def forward(self, x):
        return self.w_2(self.norm(torch.relu(self.w_1(x))))


class MultiHeadedAttentionSANM(nn.Module):
    product = staticmethod(torch.matmul)  # the attention products (attend)
    scores = None  # the scores in place of the first product (attend)
    weights = None  # the softmax over the keys (attend)
    mix = None  # the softmax and the context in place of both (attend)

    def __init__(self, heads: int, in_feat: int, n_feat: int, kernel_size: int, sanm_shfit: int = 0):
        super().__init__()
        self.h = heads
        self.linear_out = nn.Linear(n_feat, n_feat)
        self.linear_q_k_v = nn.Linear(in_feat, n_feat * 3)
        self.fsmn_block = nn.Conv1d(n_feat, n_feat, kernel_size, groups=n_feat, bias=False)
        self.pad = fsmn_padding(kernel_size, sanm_shfit)

    def forward(self, x, mask):
        """x [B,T,Din], mask [B,T] float (1 = valid)."""
        d = self.linear_out.in_features
        q, k, v = torch.split(self.linear_q_k_v(x), d, dim=-1)
        vm = v * mask[:, :, None]
        mem = (self.fsmn(vm) + vm) * mask[:, :, None]
        return self.linear_out(attend(q, k, v, self.h, mask, self.product, self.scores, self.weights, self.mix)) + mem

    def fsmn(self, xm):
        """The FSMN memory block: the depthwise conv over time of xm [B, T, D], zero-padded."""
        return self.fsmn_block(nn.functional.pad(xm.transpose(1, 2), self.pad)).transpose(1, 2)


class EncoderLayerSANM(nn.Module):
    def __init__(self, in_size, size, heads, ffn, kernel_size, sanm_shfit):
        super().__init__()
        self.in_size, self.size = in_size, size
        self.self_attn = MultiHeadedAttentionSANM(heads, in_size, size, kernel_size, sanm_shfit)
        self.feed_forward = PositionwiseFeedForward(size, ffn)
        self.norm1 = LayerNorm(in_size)
        self.norm2 = LayerNorm(size)

    def forward(self, x, mask):
        att = self.self_attn(self.norm1(x), mask)
        x = x + att if self.in_size == self.size else att
        return x + self.feed_forward(self.norm2(x))


class SANMEncoder(nn.Module):
    """SANMEncoder / SANMEncoderChunkOpt (same parameters; chunking is done by the runtime)."""

    def __init__(self, input_size: int, output_size=256, attention_heads=4, linear_units=2048, num_blocks=6,
                 kernel_size=11, sanm_shfit=0, **_):
        super().__init__()
        self._output_size = output_size
        self.encoders0 = nn.ModuleList(
            [EncoderLayerSANM(input_size, output_size, attention_heads, linear_units, kernel_size, sanm_shfit)]
        )
        self.encoders = nn.ModuleList(
            [EncoderLayerSANM(output_size, output_size, attention_heads, linear_units, kernel_size, sanm_shfit)
             for _ in range(num_blocks - 1)]
        )
        self.after_norm = LayerNorm(output_size)

    def output_size(self) -> int:
        return self._output_size

    def embed(self, speech, start=0):
        """Scale by sqrt(d_model) and add positions (what FunASR's `pe` input layer does); `start`:
        an offset, or a tensor of one offset per utterance."""
        return speech * self._output_size**0.5 + position_encoding(speech.shape[1], speech.shape[2], start, speech.device)

    def forward(self, x, mask):
        """x: already embedded input [B,T,Din]; mask [B,T] float."""
        for layer in list(self.encoders0) + list(self.encoders):
            x = layer(x, mask)
        return self.after_norm(x)


class CifPredictorV2(nn.Module):
    def __init__(self, idim, l_order=1, r_order=1, threshold=1.0, smooth_factor=1.0, noise_threshold=0.0,
                 tail_threshold=0.0, **_):
        super().__init__()
        self.pad = (l_order, r_order)
        self.cif_conv1d = nn.Conv1d(idim, idim, l_order + r_order + 1)
        self.cif_output = nn.Linear(idim, 1)
        self.threshold = threshold
        self.smooth_factor = smooth_factor
        self.noise_threshold = noise_threshold
        self.tail_threshold = tail_threshold

    def alphas(self, hidden, mask):
        h = torch.relu(self.cif_conv1d(nn.functional.pad(hidden.transpose(1, 2), self.pad))).transpose(1, 2)
        a = torch.sigmoid(self.cif_output(h))[:, :, 0]
        a = torch.relu(a * self.smooth_factor - self.noise_threshold)
        return a * mask

    def add_tail(self, hidden, alphas, mask):
        """FunASR tail_process_fn: tail_threshold at index len, one zero frame appended."""
        b = hidden.shape[0]
        zeros = torch.zeros(b, 1, dtype=alphas.dtype, device=alphas.device)
        ones = torch.ones_like(zeros)
        edge = torch.cat([ones, mask], dim=1) - torch.cat([mask, zeros], dim=1)
        alphas = torch.cat([alphas, zeros], dim=1) + edge * self.tail_threshold
        hidden = torch.cat([hidden, torch.zeros(b, 1, hidden.shape[2], dtype=hidden.dtype, device=hidden.device)], 1)
        return hidden, alphas

    def token_count(self, alphas):
        total = alphas.sum(-1)
        return torch.floor(total) if self.tail_threshold > 0 else torch.round(total)

    def integrate(self, hidden, alphas, count, fired_only: bool = True):
        """CIF as a matrix: token j collects each frame's alpha mass inside [j, j+1) of the running sum.
        Equal to FunASR's cif_v1 whenever every alpha <= threshold (sigmoid alphas always are).
        Training passes target-scaled alphas and `fired_only=False`, so float error in the sum
        cannot drop the last token."""
        prefix = torch.cumsum(alphas.double(), dim=1).float()
        prev = torch.cat([torch.zeros_like(prefix[:, :1]), prefix[:, :-1]], dim=1)
        n = torch.clamp(count.max(), min=1).long()
        j = torch.arange(n, device=alphas.device, dtype=prefix.dtype)[None, :, None]
        w = torch.relu(torch.minimum(prefix[:, None, :], j + 1) - torch.maximum(prev[:, None, :], j))
        fires = torch.floor(prefix[:, -1:])  # tokens that really fired (a partial last bin stays zero)
        limit = torch.minimum(fires, count[:, None]) if fired_only else count[:, None]
        fired = (j[:, :, 0] < limit).to(w.dtype)
        token_mask = (j[:, :, 0] < count[:, None]).to(w.dtype)
        return (w * fired[:, :, None]) @ hidden, token_mask

    def forward(self, hidden, mask):
        alphas = self.alphas(hidden, mask)
        if self.tail_threshold > 0:
            hidden, alphas = self.add_tail(hidden, alphas, mask)
        count = self.token_count(alphas)
        embeds, token_mask = self.integrate(hidden, alphas, count)
        return embeds, count, alphas, token_mask


class MultiHeadedAttentionSANMDecoder(nn.Module):
    def __init__(self, n_feat, kernel_size, sanm_shfit=0):
        super().__init__()
        self.fsmn_block = nn.Conv1d(n_feat, n_feat, kernel_size, groups=n_feat, bias=False)
        self.pad = fsmn_padding(kernel_size, sanm_shfit)
        self.kernel_size = kernel_size

    def forward(self, x, mask):
        xm = x * mask[:, :, None]
        return (self.fsmn(xm) + xm) * mask[:, :, None]

    fsmn = MultiHeadedAttentionSANM.fsmn

    def forward_cached(self, x, cache):
        """Streaming: cache [B, D, K-1] holds the previous inputs (causal FSMN only)."""
        window = torch.cat([cache, x.transpose(1, 2)], dim=2)
        y = self.fsmn_block(window).transpose(1, 2)
        return y + x, window[:, :, -(self.kernel_size - 1):]


class MultiHeadedAttentionCrossAtt(nn.Module):
    product = staticmethod(torch.matmul)  # the attention products (attend)
    scores = None  # the scores in place of the first product (attend)
    weights = None  # the softmax over the keys (attend)

    def __init__(self, heads, n_feat):
        super().__init__()
        self.h = heads
        self.linear_q = nn.Linear(n_feat, n_feat)
        self.linear_k_v = nn.Linear(n_feat, n_feat * 2)
        self.linear_out = nn.Linear(n_feat, n_feat)

    def forward(self, x, memory, memory_mask):
        k, v = torch.split(self.linear_k_v(memory), self.linear_q.out_features, dim=-1)
        return self.linear_out(attend(self.linear_q(x), k, v, self.h, memory_mask, self.product, self.scores, self.weights))


class DecoderLayerSANM(nn.Module):
    def __init__(self, size, ffn, heads=None, kernel_size=None, sanm_shfit=0, self_attn=True, src_attn=True):
        super().__init__()
        self.feed_forward = PositionwiseFeedForwardDecoderSANM(size, ffn)
        self.norm1 = LayerNorm(size)
        self.self_attn = MultiHeadedAttentionSANMDecoder(size, kernel_size, sanm_shfit) if self_attn else None
        if self_attn:
            self.norm2 = LayerNorm(size)
        self.src_attn = MultiHeadedAttentionCrossAtt(heads, size) if src_attn else None
        if src_attn:
            self.norm3 = LayerNorm(size)

    def forward(self, x, mask, memory, memory_mask, cache=None):
        residual = x
        h = self.feed_forward(self.norm1(x))
        if self.self_attn is None:
            return h, None
        if cache is None:
            x = residual + self.self_attn(self.norm2(h), mask)
        else:
            att, cache = self.self_attn.forward_cached(self.norm2(h), cache)
            x = residual + att
        if self.src_attn is not None:
            x = x + self.src_attn(self.norm3(x), memory, memory_mask)
        return x, cache


class ParaformerSANMDecoder(nn.Module):
    def __init__(self, vocab_size, encoder_output_size, attention_heads=4, linear_units=2048, num_blocks=6,
                 att_layer_num=6, kernel_size=21, sanm_shfit=0, **_):
        super().__init__()
        d = encoder_output_size
        if sanm_shfit is None:
            sanm_shfit = (kernel_size - 1) // 2
        self.embed = nn.Sequential(nn.Embedding(vocab_size, d))  # unused at inference; FunASR keeps it
        self.after_norm = LayerNorm(d)
        self.output_layer = nn.Linear(d, vocab_size)
        self.decoders = nn.ModuleList(
            [DecoderLayerSANM(d, linear_units, attention_heads, kernel_size, sanm_shfit) for _ in range(att_layer_num)]
        )
        self.decoders2 = None
        if num_blocks - att_layer_num > 0:
            self.decoders2 = nn.ModuleList(
                [DecoderLayerSANM(d, linear_units, None, kernel_size, 0, src_attn=False)
                 for _ in range(num_blocks - att_layer_num)]
            )
        self.decoders3 = nn.ModuleList([DecoderLayerSANM(d, linear_units, self_attn=False, src_attn=False)])

    def fsmn_layers(self, streaming: bool = False) -> list:
        layers = list(self.decoders)
        # FunASR's forward_chunk runs decoders2 only when it has more than one layer
        if self.decoders2 is not None and (not streaming or len(self.decoders2) > 1):
            layers += list(self.decoders2)
        return layers

    def forward(self, memory, memory_mask, embeds, embeds_mask, caches=None):
        """Returns logits [B,N,V] and, when caches are given (streaming), the new caches."""
        x = embeds
        new_caches = []
        for i, layer in enumerate(self.fsmn_layers(streaming=caches is not None)):
            x, c = layer(x, embeds_mask, memory, memory_mask, None if caches is None else caches[i])
            new_caches.append(c)
        x, _ = self.decoders3[0](x, embeds_mask, memory, memory_mask)
        return self.output_layer(self.after_norm(x)), new_caches


class Paraformer(nn.Module):
    """Offline and streaming Paraformer (`ParaformerStreaming` shares every parameter name)."""

    def __init__(self, conf: dict, vocab_size: int):
        super().__init__()
        enc_conf = dict(DEFAULT_ENCODER, **(conf.get("encoder_conf") or {}))
        dec_conf = dict(DEFAULT_DECODER, **(conf.get("decoder_conf") or {}))
        input_size = conf.get("input_size") or 560
        self.conf = conf
        self.vocab_size = vocab_size
        self.encoder = SANMEncoder(input_size, **enc_conf)
        self.decoder = ParaformerSANMDecoder(vocab_size, self.encoder.output_size(), **dec_conf)
        self.predictor = CifPredictorV2(**conf["predictor_conf"])
        model_conf = conf.get("model_conf") or {}
        if float(model_conf.get("ctc_weight", 0.0)) > 0.0:
            self.ctc = CTC(vocab_size, self.encoder.output_size())

    def forward(self, speech, speech_lengths):
        """Offline: CMVN'd features [B,T,Din] + lengths -> log-probs [B,N,V], token counts [B] int32."""
        t = speech.shape[1]
        mask = (torch.arange(t, device=speech.device)[None, :] < speech_lengths[:, None]).float()
        enc = self.encoder(self.encoder.embed(speech), mask)
        embeds, count, _, valid = self.predictor(enc, mask)
        logits, _ = self.decoder(enc, mask, embeds, valid)
        return torch.log_softmax(logits, dim=-1), count.to(torch.int32)


class CTC(nn.Module):
    def __init__(self, odim, encoder_output_size):
        super().__init__()
        self.ctc_lo = nn.Linear(encoder_output_size, odim)
