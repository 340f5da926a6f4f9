"""NEON kernels: every kernel against the numpy reference (edge/backends/ops.py, edge/asr/cif.py) through the cffi
extension (SIMDe on x86), over many shapes, odd sizes and edge values, bit-exact wherever the
output is integer (and for FSMN/CIF, which keep numpy's operation order); the C check driver in
the native CMake build and in aarch64 cross builds under qemu-aarch64 on a Cortex-A76 (sdot) and
a Cortex-A72 (no sdot: must not be picked, and would be SIGILL); instruction counts."""

import copy
import os
import re
import shutil
import signal
import subprocess

import numpy as np
import pytest

from edge.asr import cif as ref_cif
from edge.backends import kernels, ops
from edge.asr.cif import CifConfig
from tests.conftest import ROOT

F32 = np.float32
SHAPES = [(1, 1, 1), (1, 3, 5), (2, 16, 16), (3, 17, 15), (4, 64, 33), (5, 100, 17), (7, 31, 64), (15, 256, 768),
          (16, 255, 257), (33, 1024, 20), (100, 257, 64)]


@pytest.fixture(scope="module")
def paths():
    if not kernels.available():
        pytest.fail(f"NEON kernels not built: {kernels.unavailable_reason()}")
    return kernels.describe()["runnable"]


def _s8(rng, shape, pattern):
    a = rng.integers(-128, 128, shape, dtype=np.int8)
    if pattern == "min":
        a[:] = -128
    elif pattern == "max":
        a[:] = 127
    elif pattern == "alternating":
        a[:] = np.where(np.indices(shape).sum(0) % 2, 127, -128)
    elif pattern == "zero-rows":
        a[1::3] = 0
    return a


@pytest.mark.parametrize("pattern", ["random", "min", "max", "alternating", "zero-rows"])
def test_gemm_is_exact_on_every_path(paths, pattern):
    rng = np.random.default_rng(0)
    assert {"scalar", "neon"} <= set(paths)
    for m, k, n in SHAPES:
        a = _s8(rng, (m, k), pattern)
        w = _s8(rng, (n, k), "random" if pattern == "zero-rows" else pattern)
        want = ops.gemm_s8s32(a, w)
        for path in paths:
            got = kernels.gemm_s8s32(a, kernels.PackedWeights(w, path))
            assert got.dtype == np.int32 and np.array_equal(got, want), (path, m, k, n)


def test_quantize_dequant_requant_are_exact(paths):
    rng = np.random.default_rng(1)
    for m, k, _ in SHAPES:
        x = (rng.standard_normal((m, k)) * rng.uniform(1e-3, 50, (m, 1))).astype(F32)
        x[0] = 0.0  # an all-zero row: scale 0, q 0
        q, s = kernels.quantize_rows(x)
        q_ref, s_ref = ops.quantize_rows_s8(x)
        assert np.array_equal(q, q_ref) and np.array_equal(s, s_ref), (m, k)
        assert s[0] == 0 and not q[0].any() and np.abs(q).max(initial=0) <= 127
        c = rng.integers(-2**31, 2**31 - 1, (m, k), dtype=np.int64).astype(np.int32) >> rng.integers(0, 24, (m, k))
        ws = rng.uniform(1e-4, 1e-2, k).astype(F32)
        b = rng.standard_normal(k).astype(F32)
        for bias in (None, b):
            for relu in (False, True):
                assert np.array_equal(kernels.dequant(c, s, ws, bias, relu), ops.dequant_s32(c, s, ws, bias, relu))
        assert np.array_equal(kernels.requant(c, ws), ops.requant_s32_s8(c, ws))


def test_int8_linear_is_exact_and_close_to_fp32(paths):
    rng = np.random.default_rng(2)
    for m, k, n in SHAPES[3:]:
        x = rng.standard_normal((m, k)).astype(F32)
        w = rng.standard_normal((k, n)).astype(F32)
        b = rng.standard_normal(n).astype(F32)
        want = ops.linear_s8(x, w, b, relu=True)
        for path in paths:
            assert np.array_equal(kernels.Linear(w, b, path)(x, relu=True), want), (path, m, k, n)
        fp32 = ops.relu(ops.linear(x, w, b))
        assert np.abs(want - fp32).max() <= 0.03 * np.abs(fp32).max()  # INT8 noise, not a bug


def test_fsmn_is_bit_exact_encoder_and_streaming_cache(paths):
    rng = np.random.default_rng(3)
    for t in (1, 2, 7, 15, 40):
        for d in (1, 5, 16, 20, 256):
            for kernel, shift in ((11, 0), (11, 5), (3, 0), (21, 10)):
                x = rng.standard_normal((t, d)).astype(F32)
                w = rng.standard_normal((kernel, d)).astype(F32)
                left = (kernel - 1) // 2 + shift
                right = kernel - 1 - left
                assert np.array_equal(kernels.fsmn(x, w, left), ops.fsmn_memory(x, w, left, right)), (t, d, kernel)
                # decoder streaming: the window is [last kernel-1 inputs | x]
                hist = rng.standard_normal((kernel - 1, d)).astype(F32)
                window = np.concatenate([hist, x])
                want = ops.depthwise_conv1d(window, w, t) + x
                assert np.array_equal(kernels.fsmn(x, w, kernel - 1, hist), want), (t, d, kernel)


@pytest.mark.parametrize("tail", [0.45, 0.0])
def test_cif_is_bit_exact(paths, tail):
    cfg = CifConfig(tail_threshold=tail)
    rng = np.random.default_rng(4)
    for t in (1, 2, 5, 30, 101):
        for d in (1, 3, 8, 256):
            hidden = rng.standard_normal((t, d)).astype(F32)
            for alphas in (rng.uniform(0, 1, t), np.full(t, 0.25), np.zeros(t), np.ones(t), rng.uniform(0, 0.3, t)):
                alphas = alphas.astype(F32)
                got, want = kernels.cif_offline(hidden, alphas, cfg), ref_cif.cif_offline(hidden, alphas, cfg)
                assert got.shape == want.shape and np.array_equal(got, want), (t, d, tail)
                # streaming: three chunks with the remainder carried, the last one final
                mine, ref = kernels.CifStream(cfg, d), ref_cif.CifStream(cfg, d)
                for i, chunk in enumerate(np.array_split(np.arange(t), 3)):
                    a = mine.step(hidden[chunk], alphas[chunk], final=i == 2)
                    b = ref.step(hidden[chunk], alphas[chunk], final=i == 2)
                    assert a.shape == b.shape and np.array_equal(a, b), (t, d, i)


def test_layernorm_matches_reference(paths):
    rng = np.random.default_rng(5)
    for m, d in ((1, 1), (3, 7), (15, 256), (100, 1024)):
        x = (rng.standard_normal((m, d)) * 3 + 1).astype(F32)
        g, b = rng.standard_normal(d).astype(F32), rng.standard_normal(d).astype(F32)
        np.testing.assert_allclose(kernels.layer_norm(x, g, b), ops.layer_norm(x, g, b), rtol=1e-5, atol=2e-5)


def test_wrappers_refuse_bad_shapes(paths):
    w = kernels.PackedWeights(np.zeros((4, 8), np.int8))
    with pytest.raises(ValueError, match="K="):
        kernels.gemm_s8s32(np.zeros((2, 7), np.int8), w)
    with pytest.raises(ValueError, match="features"):
        kernels.Linear(np.zeros((8, 4), F32))(np.zeros((2, 5), F32))
    with pytest.raises(ValueError, match="channels"):
        kernels.fsmn(np.zeros((3, 4), F32), np.zeros((11, 5), F32), 5)
    with pytest.raises(ValueError, match="alpha"):
        kernels.cif_offline(np.zeros((3, 4), F32), np.zeros(2, F32), CifConfig())


def test_path_choice_and_describe(paths, monkeypatch):
    d = kernels.describe()
    assert d["built"] and d["active"] in d["runnable"] and "gemm_s8" in d["kernels"]
    assert d["active"] == ("dot" if "dot" in d["runnable"] else "neon")
    assert "GEMM path" in kernels.describe_line()
    monkeypatch.setenv("PARAEDGE_KERNEL_PATH", "scalar")
    assert kernels.best_path() == "scalar"
    monkeypatch.setenv("PARAEDGE_KERNEL_PATH", "avx")
    with pytest.raises(kernels.ParaEdgeError, match="choose one of"):
        kernels.best_path()


# -- the C driver: native SIMDe build and aarch64 cross builds under qemu -----------------------
def _cmake(build_dir, *extra):
    subprocess.run(["cmake", "-S", ROOT, "-B", str(build_dir), *extra], check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build_dir), "-j2"], check=True, capture_output=True)
    return os.path.join(str(build_dir), "paraedge_kernels_test")


def _check(argv):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    return r, dict(re.findall(r"^hash (\S+) (\S+)$", r.stdout, re.M))


@pytest.fixture(scope="module")
def native_check(tmp_path_factory):
    exe = _cmake(tmp_path_factory.mktemp("k_native"))
    assert os.path.exists(os.path.join(os.path.dirname(exe), "libparaedge_kernels.so"))
    return _check([exe, "check"])


@pytest.fixture(scope="module")
def arm_exe(tmp_path_factory):
    for tool in ("aarch64-linux-gnu-gcc", "qemu-aarch64"):
        assert shutil.which(tool), f"{tool} missing: `make apt` installs it"
    return _cmake(tmp_path_factory.mktemp("k_a64"), f"-DCMAKE_TOOLCHAIN_FILE={ROOT}/kernels/aarch64-toolchain.cmake")


def test_c_driver_native_simde_build(native_check):
    r, hashes = native_check
    assert r.returncode == 0 and "ALL OK" in r.stdout, r.stdout[-2000:]
    assert len(hashes) == 9 and "compiled 0x7" in r.stdout


@pytest.mark.arm
def test_aarch64_builds_match_under_qemu_a76_and_a72(arm_exe, native_check):
    _, native = native_check
    qemu = ["qemu-aarch64", "-cpu"]
    r76, h76 = _check(qemu + ["cortex-a76", arm_exe, "check"])
    r72, h72 = _check(qemu + ["cortex-a72", arm_exe, "check"])
    assert r76.returncode == 0 and "ALL OK" in r76.stdout, r76.stdout[-2000:]
    assert r72.returncode == 0 and "ALL OK" in r72.stdout, r72.stdout[-2000:]
    assert "aarch64 native NEON" in r76.stdout and "runnable 0x7" in r76.stdout  # sdot picked on the A76
    assert "runnable 0x3" in r72.stdout  # the A72 has no sdot: only scalar + smull run
    assert h76 == h72 == native  # every kernel's outputs identical on x86 (SIMDe), A76 and A72
    # the run-time guard is real: sdot on an A72 is an illegal instruction
    forced = subprocess.run(qemu + ["cortex-a72", arm_exe, "check", "force-dot"], capture_output=True, timeout=300)
    assert forced.returncode in (-signal.SIGILL, 128 + signal.SIGILL), forced.returncode


@pytest.mark.arm
def test_sdot_gemm_needs_far_fewer_instructions(arm_exe):
    from paraedge_tools.emu.qemu_insn import count_insns

    def insns(path, m=15, k=256, n=1024):
        run = lambda reps: count_insns([arm_exe, "bench", "gemm", path, str(reps), str(m), str(k), str(n)])
        return run(1) - run(0)

    assert count_insns([arm_exe, "bench", "gemm", "dot", "1", "4", "16", "16"]) == count_insns(
        [arm_exe, "bench", "gemm", "dot", "1", "4", "16", "16"])  # deterministic
    scalar, neon, dot = insns("scalar"), insns("neon"), insns("dot")
    assert scalar >= 4 * dot and dot < neon < scalar, (scalar, neon, dot)


def test_fused_attention_matches_reference(paths):
    rng = np.random.default_rng(6)
    for t1, t2, d, heads in ((1, 1, 4, 1), (3, 5, 8, 2), (2, 3, 10, 2), (15, 15, 256, 4), (4, 29, 256, 4), (100, 100, 64, 1)):
        q, k, v = (rng.standard_normal((t, d)).astype(F32) * 3 for t in (t1, t2, t2))
        np.testing.assert_allclose(kernels.attention(q, k, v, heads), ops.attention(q, k, v, heads), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="heads"):
        kernels.attention(np.zeros((2, 6), F32), np.zeros((3, 6), F32), np.zeros((3, 6), F32), 4)


@pytest.mark.parametrize("window", ["hamming", "hanning", "povey", "rectangular", "blackman"])
@pytest.mark.parametrize("frame_ms", [25.0, 10.0, 2.5])
def test_fbank_equals_the_numpy_frontend(paths, speech, window, frame_ms):
    """kernels/fbank.c (float64 frame by frame) against KaldiFbank's numpy code: equal float32
    frames on speech, digital silence, a DC offset, full-scale clipping and noise at lengths around
    a frame, for every window and the short windows FunASR uses on sub-frame clips (FFT 512, 256,
    64). The frontend takes the C path whenever the extension is loaded."""
    from edge.asr.frontend import FrontendConfig, KaldiFbank

    cfg = FrontendConfig(window=window)
    c_fb, np_fb = KaldiFbank(cfg, frame_ms), KaldiFbank(cfg, frame_ms)
    assert c_fb.use_c
    np_fb.use_c = False
    copy.deepcopy(c_fb)  # (streams holding it are deep-copied)
    rng = np.random.default_rng(7)
    signals = {name: x * F32(32768) for name, x in speech.items()}
    signals.update(silence=np.zeros(4000, F32), dc=np.full(3000, 1234.5, F32),
                   clipped=np.where(np.arange(5000) % 40 < 20, F32(32767), F32(-32768)))
    for n in (np_fb.length, np_fb.length + 1, 559, 16000):
        signals[f"noise{n}"] = (rng.standard_normal(n) * 3000).astype(F32)
    for name, x in signals.items():
        ours, ref = c_fb(x), np_fb(x)
        assert ours.shape == ref.shape and ours.shape[0] > 0, name
        np.testing.assert_array_equal(ours, ref, err_msg=name)
    assert c_fb(np.zeros(np_fb.length - 1, F32)).shape == (0, 80)


def test_fbank_wrapper_refuses_bands_that_do_not_fit(paths):
    from edge.asr.frontend import FrontendConfig, KaldiFbank

    fb = KaldiFbank(FrontendConfig(), 25.0)
    x = np.zeros(1000, F32)
    with pytest.raises(ValueError, match="mel bands"):
        kernels.fbank(x, fb.length, fb.shift, fb.padded, fb.window, fb.band_start, fb.band_len, fb.band_w[:-1], fb.eps)
    with pytest.raises(ValueError, match="mel bands"):
        kernels.fbank(x, fb.length, fb.shift, fb.padded, fb.window, fb.band_start + 200, fb.band_len, fb.band_w, fb.eps)
