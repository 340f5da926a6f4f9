"""Pure-numpy reference implementation of every Paraformer op (float32, batch 1, [time, dim]).

This module is the ground truth: the onnxruntime, TVM and NEON backends are tested against
these functions op by op. Each mirrors the FunASR PyTorch module named in its docstring.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32


def linear(x: np.ndarray, w_t: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """torch.nn.Linear with the weight stored transposed ([in, out]) once at load time."""
    y = x @ w_t
    if b is not None:
        y += b
    return y


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, F32(0))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (F32(1) / (F32(1) + np.exp(-x))).astype(F32)


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """FunASR LayerNorm (torch.nn.LayerNorm, eps=1e-12): biased variance over the last axis."""
    mean = x.mean(axis=-1, keepdims=True)
    xc = x - mean
    var = (xc * xc).mean(axis=-1, keepdims=True)
    return xc / np.sqrt(var + F32(eps)) * gamma + beta


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    z = x - m
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def sinusoidal_position_encoding(num_frames: int, depth: int, start: int = 0) -> np.ndarray:
    """FunASR SinusoidalPositionEncoder / StreamSinusoidalPositionEncoder: positions start+1..,
    [sin | cos] halves, timescale 10000 spread over depth/2 - 1 steps, computed in float32."""
    inc = F32(np.log(F32(10000))) / F32(depth / 2 - 1)
    inv = np.exp(np.arange(depth // 2, dtype=F32) * -inc).astype(F32)
    pos = np.arange(start + 1, start + num_frames + 1, dtype=F32)
    scaled = pos[:, None] * inv[None, :]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(F32)


def depthwise_conv1d(x_padded: np.ndarray, w_kd: np.ndarray, out_len: int) -> np.ndarray:
    """Depthwise Conv1d over time, no bias: y[t, d] = sum_k w[k, d] * x_padded[t + k, d]."""
    y = np.zeros((out_len, x_padded.shape[1]), dtype=F32)
    for k in range(w_kd.shape[0]):
        y += x_padded[k : k + out_len] * w_kd[k]
    return y


def fsmn_memory(v: np.ndarray, w_kd: np.ndarray, left: int, right: int) -> np.ndarray:
    """SAN-M FSMN memory (MultiHeadedAttentionSANM.forward_fsmn): zero-padded depthwise conv + input."""
    t = v.shape[0]
    padded = np.pad(v, ((left, right), (0, 0)))
    return depthwise_conv1d(padded, w_kd, t) + v


def conv1d(x: np.ndarray, w_kio: np.ndarray, bias: np.ndarray, left: int, right: int) -> np.ndarray:
    """Full Conv1d over time with zero padding (CifPredictorV2.cif_conv1d); w as [k, in, out]."""
    t = x.shape[0]
    padded = np.pad(x, ((left, right), (0, 0)))
    y = np.broadcast_to(bias, (t, bias.size)).astype(F32)
    for k in range(w_kio.shape[0]):
        y = y + padded[k : k + t] @ w_kio[k]
    return y


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, heads: int, product=np.matmul) -> np.ndarray:
    """Scaled dot-product attention, no mask (batch 1 has no padding): [T1,D],[T2,D],[T2,D] -> [T1,D].
    `product` computes the two batched products (scores, context), as paraformer.attend's seam."""
    t1, d = q.shape
    dk = d // heads
    qh = q.reshape(t1, heads, dk).transpose(1, 0, 2) * F32(dk**-0.5)
    kh = k.reshape(-1, heads, dk).transpose(1, 2, 0)
    vh = v.reshape(-1, heads, dk).transpose(1, 0, 2)
    p = softmax(product(qh, kh))
    return product(p, vh).transpose(1, 0, 2).reshape(t1, d)


def matmul_f16(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a [.., M, K] x b [.., K, N] in float16, summed in float16 over k in order, each step one
    rounding (a fused multiply-add: the products of float16 values are exact in float64): the
    attention products of INT8 TVM bundles on aarch64 boards with half-precision arithmetic."""
    a, b = np.asarray(a, np.float16), np.asarray(b, np.float16)
    acc = np.zeros((*np.broadcast_shapes(a.shape[:-2], b.shape[:-2]), a.shape[-2], b.shape[-1]), np.float16)
    for k in range(a.shape[-1]):
        step = acc.astype(np.float64) + a[..., k:k + 1].astype(np.float64) * b[..., k:k + 1, :].astype(np.float64)
        acc = step.astype(np.float16)
    return acc


F16 = np.float16
# exp's range reduction x = n ln2 + r, n = round(x log2(e)), ln2 in two parts (Cephes): ln2 - LN2_LO
# is LN2_HI, exact in 9 bits. Shared by softmax_f16, its TE compute and the compiler's float32 exp.
LOG2E, LN2_HI, LN2_LO = 1.4426950408889634, 0.693359375, 2.12194440e-4
LN2 = 0.6931471805599453
# softmax_f16's exp: exp(r) = 1 + r + r^2 (c0 + c1 r) on |r| <= ln2/2, fitted for the least maximum
# relative error (1.2e-4 in exact arithmetic, about float16's own rounding); zero for n below
# SOFTMAX_F16_MIN_N (x - max < -8.7: exp < 1.7e-4), where 2^n would soon leave float16's normal range
SOFTMAX_F16_MIN_N = -12
SOFTMAX_F16_P = (0.50394, 0.16663)


def softmax_f16(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float16, for the float16 attention context of INT8 bundles on
    boards with half-precision arithmetic: d = x - max, n = round(d / ln2) and r = d - n ln2 in
    float32; exp(r) in float16 arithmetic (1 + r + r^2 p(r), each step rounded), 2^n through the
    float16 exponent bits, 0 for n below SOFTMAX_F16_MIN_N; summed in float32, normalised in float16
    (e x float16(1 / sum)). Against float32's softmax: within 0.2 % where p > 1e-3."""
    x = np.asarray(x, F32)
    d = (x - x.max(axis=-1, keepdims=True)).astype(F32)
    dc = np.maximum(d, F32(-10))  # (n >= -15: 2^n's bits fit an int16; below MIN_N the result is 0)
    n = np.rint(dc * F32(LOG2E)).astype(F32)
    r = ((dc - n * F32(LN2_HI)).astype(F32) + (n * F32(LN2_LO)).astype(F32)).astype(F16)
    e = _exp_f16(r, n.astype(np.int16))
    inv = (F32(1) / e.astype(F32).sum(axis=-1, keepdims=True, dtype=F32)).astype(F16)
    return (e * inv).astype(F16)


def _exp_f16(r: np.ndarray, n: np.ndarray) -> np.ndarray:
    """exp(r) 2^n in float16 arithmetic (1 + r + r^2 p(r), each step rounded; 2^n through the
    exponent bits, 0 for n below SOFTMAX_F16_MIN_N): r float16 on |r| <= ln2/2, n int16; the exp
    of softmax_f16 and softmax_s8."""
    p = (F16(SOFTMAX_F16_P[0]) + (r * F16(SOFTMAX_F16_P[1])).astype(F16)).astype(F16)
    e = ((((r * r).astype(F16) * p).astype(F16) + r).astype(F16) + F16(1)).astype(F16)
    bits = e.view(np.int16) + (n << np.int16(10))
    return np.where(n < SOFTMAX_F16_MIN_N, F16(0), bits.view(F16))


# -- INT8 (the NEON backend's arithmetic; edge/backends/kernels.py must match these exactly) ------------
def quantize_rows_s8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: scale = max|row| / 127, q = round-half-even(x * 127 / max|row|),
    clipped to [-127, 127]; an all-zero row gets scale 0. Weights use it per output channel
    (rows of torch's [out, in]), activations per time step (dynamic, as onnxruntime's)."""
    x = np.asarray(x, dtype=F32)
    amax = np.abs(x).max(axis=1) if x.shape[1] else np.zeros(x.shape[0], F32)
    inv = np.where(amax > 0, F32(127) / np.where(amax > 0, amax, F32(1)), F32(0)).astype(F32)
    q = np.rint(np.clip(x * inv[:, None], F32(-127), F32(127))).astype(np.int8)
    return q, (amax / F32(127)).astype(F32)


def scores_s8(q: np.ndarray, k: np.ndarray, heads: int) -> np.ndarray:
    """The attention scores of INT8 TVM bundles on boards with the dot product and half-precision
    arithmetic: q [T1, D], k [T2, D] -> [H, T1, T2] = (int32 sums of each head's int8 query and key
    rows, quantized per row) x query scale x (key scale x dk^-0.5), in float32 in that order."""
    t1, d = q.shape
    dk = d // heads
    qq, sq = quantize_rows_s8(np.asarray(q, F32).reshape(-1, dk))
    kq, sk = quantize_rows_s8(np.asarray(k, F32).reshape(-1, dk))
    acc = qq.reshape(t1, heads, dk).transpose(1, 0, 2).astype(np.int32) @ kq.reshape(-1, heads, dk).transpose(1, 2, 0).astype(np.int32)
    key_scale = (sk.reshape(-1, heads).T * F32(dk**-0.5)).astype(F32)
    return (acc.astype(F32) * sq.reshape(t1, heads).T[:, :, None]) * key_scale[:, None, :]


def softmax_s8(x: np.ndarray) -> np.ndarray:
    """The attention weights of the int8 context (context_s8), all in float16 arithmetic (the
    scores rounded to float16 first): d = max(x - max, -10), n = round(d / ln2) (half away from
    zero: -trunc(0.5 - d log2 e)), r = d - n ln2, exp(r) as softmax_f16's and 2^n through the
    exponent bits (0 for n below SOFTMAX_F16_MIN_N), so e is 1 at the row's largest; then int8
    round-half-up(e x 127) (+ 0.5, exact, truncated): the largest of every row is 127, and the
    normalisation is the context's (by the row's int8 sum). Float16 here costs less than the
    int8 rounding after it (a weight's error ~0.2 % against the int8 step of 1/127)."""
    d = np.maximum((np.asarray(x, F16) - np.asarray(x, F16).max(axis=-1, keepdims=True)).astype(F16), F16(-10))
    n = -np.trunc((F16(0.5) - (d * F16(LOG2E)).astype(F16)).astype(F16)).astype(np.int16)
    e = _exp_f16((d - (n.astype(F16) * F16(LN2)).astype(F16)).astype(F16), n)
    return np.trunc(((e * F16(127)).astype(F16) + F16(0.5)).astype(F16)).astype(np.int8)


def quantize_cols_s8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-column int8 over the first axis (x [T, ...]): scale = max|column| / 127 (at
    least 1e-12 / 127), q = round-half-even(x x 127 / max|column|); the values of the attention
    context's int8 V, one scale per channel for every key."""
    x = np.asarray(x, dtype=F32)
    amax = np.maximum(np.abs(x).max(axis=0) if x.shape[0] else np.zeros(x.shape[1:], F32), F32(1e-12))
    inv = (F32(127) / amax).astype(F32)
    return np.rint(x * inv).astype(np.int8), (amax / F32(127)).astype(F32)


def context_s8(scores: np.ndarray, v: np.ndarray, heads: int, key_mask: np.ndarray | None = None) -> np.ndarray:
    """The attention context of INT8 TVM bundles on boards with the dot product and half-precision
    arithmetic (after scores_s8): scores [H, T1, T2] (masked keys at -1e4), v [T2, D] -> [T1, D] =
    (int32 sums of the int8 weights (softmax_s8) and the int8 values, each channel quantized over
    the valid keys (quantize_cols_s8 of v x key_mask)) x (1 / the row's int8 weight sum) x the
    channel's scale, in float32 in that order: the quantized weights of a row sum to exactly 1."""
    t2, d = v.shape
    dk = d // heads
    q = softmax_s8(scores).astype(np.int32)  # [H, T1, T2]
    vm = np.asarray(v, F32) if key_mask is None else (np.asarray(v, F32) * np.asarray(key_mask, F32)[:, None]).astype(F32)
    vq, sv = quantize_cols_s8(vm.reshape(t2, heads, dk))  # [T2, H, dk], [H, dk]
    acc = q @ vq.transpose(1, 0, 2).astype(np.int32)  # [H, T1, dk]
    norm = (F32(1) / q.sum(axis=-1, keepdims=True).astype(F32)).astype(F32)
    out = (acc.astype(F32) * norm) * sv[:, None, :]
    return out.transpose(1, 0, 2).reshape(-1, d)


def gemm_s8s32(a: np.ndarray, w_nk: np.ndarray) -> np.ndarray:
    """int8 [M, K] x int8 [N, K] (one row per output channel) -> exact int32 [M, N]."""
    return a.astype(np.int32) @ w_nk.astype(np.int32).T


def dequant_s32(c: np.ndarray, a_scale: np.ndarray, w_scale: np.ndarray, bias: np.ndarray | None = None,
                relu: bool = False) -> np.ndarray:
    """float32(c) * (a_scale[m] * w_scale[n]) + bias[n], then optionally ReLU."""
    y = c.astype(F32) * (a_scale.astype(F32)[:, None] * w_scale.astype(F32)[None, :])
    if bias is not None:
        y = y + bias.astype(F32)
    return relu_(y) if relu else y


def relu_(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, F32(0)).astype(F32)


def requant_s32_s8(c: np.ndarray, mult: np.ndarray) -> np.ndarray:
    """Per-output-channel requantization to int8: round-half-even(float32(c) * mult[n]), saturated."""
    return np.rint(np.clip(c.astype(F32) * mult.astype(F32)[None, :], F32(-128), F32(127))).astype(np.int8)


def linear_s8(x: np.ndarray, w_t: np.ndarray, b: np.ndarray | None = None, relu: bool = False) -> np.ndarray:
    """The INT8 Linear: weights [in, out] quantized per output channel, activations per row."""
    qw, ws = quantize_rows_s8(np.ascontiguousarray(w_t.T))
    qx, xs = quantize_rows_s8(x)
    return dequant_s32(gemm_s8s32(qx, qw), xs, ws, b, relu)
