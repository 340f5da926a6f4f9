"""Op by op: every numpy reference op against the FunASR PyTorch module it mirrors."""

import numpy as np
import pytest
import torch

from edge.backends import ops
from edge.asr.cif import CifConfig, CifStream, cif_offline

rng = np.random.default_rng(0)


def t(x):
    return torch.from_numpy(np.ascontiguousarray(x))


def test_layer_norm():
    from funasr.models.transformer.layer_norm import LayerNorm

    ln = LayerNorm(48)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    x = rng.standard_normal((13, 48)).astype(np.float32) * 5
    ref = ln(t(x)).detach().numpy()
    np.testing.assert_allclose(ops.layer_norm(x, ln.weight.detach().numpy(), ln.bias.detach().numpy()), ref, atol=1e-5)


@pytest.mark.parametrize("start", [0, 17])
@pytest.mark.parametrize("depth", [560, 64])
def test_position_encoding(start, depth):
    from funasr.models.transformer.embedding import StreamSinusoidalPositionEncoder

    x = torch.zeros(1, 23, depth)
    ref = StreamSinusoidalPositionEncoder()(x, {"start_idx": start})[0].numpy()
    np.testing.assert_allclose(ops.sinusoidal_position_encoding(23, depth, start), ref, atol=1e-5)


@pytest.mark.parametrize("kernel,shift", [(11, 0), (11, 5), (7, 2), (5, 0)])
def test_sanm_attention_with_fsmn(kernel, shift):
    from funasr.models.sanm.attention import MultiHeadedAttentionSANM

    from edge.backends.reference import fsmn_padding

    torch.manual_seed(kernel + shift)
    m = MultiHeadedAttentionSANM(4, 40, 32, 0.0, kernel, shift).eval()
    x = rng.standard_normal((19, 40)).astype(np.float32)
    ref = m(t(x)[None], torch.ones(1, 1, 19))[0].detach().numpy()
    sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    qkv = x @ sd["linear_q_k_v.weight"].T + sd["linear_q_k_v.bias"]
    q, k, v = qkv[:, :32], qkv[:, 32:64], qkv[:, 64:]
    mem = ops.fsmn_memory(v, sd["fsmn_block.weight"][:, 0, :].T, *fsmn_padding(kernel, shift))
    att = ops.attention(q, k, v, 4) @ sd["linear_out.weight"].T + sd["linear_out.bias"]
    np.testing.assert_allclose(att + mem, ref, atol=1e-4)


def test_cif_conv1d():
    conv = torch.nn.Conv1d(16, 16, 3)
    x = rng.standard_normal((11, 16)).astype(np.float32)
    ref = conv(torch.nn.functional.pad(t(x).T[None], (1, 1)))[0].T.detach().numpy()
    w = conv.weight.detach().numpy().transpose(2, 1, 0)
    np.testing.assert_allclose(ops.conv1d(x, w, conv.bias.detach().numpy(), 1, 1), ref, atol=1e-5)


def test_cif_offline_matches_cif_v1():
    from funasr.models.paraformer.cif_predictor import cif_v1

    for trial in range(30):
        T = int(rng.integers(1, 80))
        h = rng.standard_normal((T, 8)).astype(np.float32)
        a = rng.uniform(0, 1, T).astype(np.float32) ** 2
        cfg = CifConfig(tail_threshold=0.0)
        ref, _ = cif_v1(t(h)[None], t(a)[None], 1.0)
        ours = cif_offline(h, a, cfg)
        assert ours.shape == tuple(ref.shape[1:])
        np.testing.assert_allclose(ours, ref[0].numpy(), atol=1e-4)


def test_cif_stream_matches_forward_chunk():
    from funasr.models.paraformer.cif_predictor import CifPredictorV2

    pred = CifPredictorV2(8, 1, 1, tail_threshold=0.45).eval()
    cache = {"cif_hidden": torch.zeros(1, 1, 8), "cif_alphas": torch.zeros(1, 1), "chunk_size": [0, 10, 5]}
    ours = CifStream(CifConfig(tail_threshold=0.45), 8)
    for i in range(6):
        final = i == 5
        h = rng.standard_normal((15, 8)).astype(np.float32)
        with torch.no_grad():
            emb_ref, n_ref, _, _ = pred.forward_chunk(t(h)[None], cache, is_final=final)
        # forward_chunk computes alphas itself: feed the same ones to ours
        with torch.no_grad():
            ctx = pred.pad(t(h)[None].transpose(1, 2))
            a = torch.sigmoid(pred.cif_output(torch.relu(pred.cif_conv1d(ctx)).transpose(1, 2)))[0, :, 0].numpy().copy()
        if not final:
            a[10:] = 0.0
        emb = ours.step(h, a, final)
        assert emb.shape[0] == int(n_ref[0])
        if emb.shape[0]:
            np.testing.assert_allclose(emb, emb_ref[0].numpy(), atol=1e-5)


def test_matmul_f16_sums_in_half_precision_with_one_rounding_a_step():
    """ops.matmul_f16 (the float16 attention products of INT8 bundles on half-precision boards):
    sums in float16, k in order, each step a fused multiply-add. 2048 + 1 + 1: each +1 is a tie
    at float16's spacing of 2 and rounds to even (2048), where a float32 sum gives 2050. And
    (1 - u) + (1 + u)^2 with u = 2^-10 is 2 + u + u^2: fused, it rounds up to 2 + 2u; with the
    product rounded first (to 1 + 2u) the sum is the tie 2 + u, which rounds to even (2)."""
    a = np.array([[2048.0, 1.0, 1.0]], np.float16)
    b = np.ones((3, 1), np.float16)
    assert ops.matmul_f16(a, b)[0, 0] == 2048
    assert np.float16(np.matmul(a.astype(np.float32), b.astype(np.float32))[0, 0]) == 2050
    u = 2.0**-10
    fused = ops.matmul_f16(np.array([[1 - u, 1 + u]], np.float16), np.array([[1.0], [1 + u]], np.float16))[0, 0]
    assert fused == 2 + 2 * u
    q, k = rng.standard_normal((2, 3, 9, 16)), rng.standard_normal((2, 3, 16, 11))
    got = ops.matmul_f16(q, k)
    assert got.dtype == np.float16 and got.shape == (2, 3, 9, 11)
    np.testing.assert_allclose(got, np.matmul(q.astype(np.float16).astype(np.float64), k.astype(np.float16)),
                               rtol=1e-2, atol=2e-2)


def test_recognizer_positions_are_the_encoding_bit_for_bit():
    """Recognizer.positions slices a table computed once: the rows it returns equal
    ops.sinusoidal_position_encoding exactly, as the table grows, at streaming offsets, and past
    its cap (computed per call there)."""
    from edge.asr.recognizer import Recognizer
    from tests.conftest import DEMO

    rec = Recognizer(DEMO, "ref")
    depth = 560
    for n, start in [(5, 0), (167, 0), (40, 300), (1, 1023), (600, 0), (8, rec.POSITION_ROWS - 3), (7, 5000)]:
        np.testing.assert_array_equal(rec.positions(n, depth, start), ops.sinusoidal_position_encoding(n, depth, start))
    assert rec._positions.shape == (rec.POSITION_ROWS, depth)
