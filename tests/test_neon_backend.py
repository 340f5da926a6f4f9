"""The neon backend (INT8 Linear + C FSMN/CIF/layernorm) on the shipped demo model: the same tokens
as the numpy reference on every sample, offline and streaming, on both GEMM paths; FSMN caches
interchangeable with the reference's; a clear error when the extension is missing."""

import os

import numpy as np
import pytest

from edge.backends import kernels
from tests.test_demo_model import DEMO, SAMPLES, samples


@pytest.fixture(scope="module")
def commands():
    from edge.asr.audio import load_audio

    if not kernels.available():
        pytest.fail(f"NEON kernels not built: {kernels.unavailable_reason()}")
    out = []
    for s in samples():
        x, _ = load_audio(os.path.join(SAMPLES, s["file"]))
        out.append((s, x[int(s["command_start_s"] * 16000):]))
    return out


@pytest.fixture(scope="module")
def ref():
    from edge.asr.recognizer import Recognizer

    return Recognizer(DEMO, "ref", threads=1)


@pytest.mark.parametrize("path", ["dot", "neon"])
def test_int8_tokens_equal_reference_on_demo_samples(path, commands, ref, monkeypatch):
    from edge.asr.recognizer import Recognizer

    if path not in kernels.describe()["runnable"]:
        pytest.skip(f"{path} cannot run on this CPU")
    monkeypatch.setenv("PARAEDGE_KERNEL_PATH", path)
    rec = Recognizer(DEMO, "neon", threads=1)
    assert rec.backend.describe() == f"neon int8 ({path})"
    for s, x in commands:
        offline = rec.transcribe(x)
        assert offline.token_ids == ref.transcribe(x).token_ids and offline.text == s["command"], s["file"]
        assert rec.transcribe_streaming(x).token_ids == ref.transcribe_streaming(x).token_ids, s["file"]


def test_stages_close_to_reference_and_caches_carry(commands, ref):
    """Three consecutive streaming windows, each backend carrying its *own* decoder FSMN caches:
    the neon caches must track the reference's, and every token the reference picks by a clear
    margin must agree (random or stale caches move the argmax within a window or two). These
    windows are cut without the runtime's left-context and look-ahead rules, so a position can be a
    near tie: with the stage-4 demo weights one is <blank> against a word by 0.07 nat (INT8: 0.04 the
    other way), while every other position's margin is 2.9 nat or more."""
    from edge.asr.cif import cif_offline
    from edge.backends.neon import NeonBackend

    neon = NeonBackend(ref.model)
    feats = max((ref.frontend(x) for _, x in commands), key=len)
    assert len(feats) >= 35
    caches_r = caches_n = None
    agree = []
    for w in range(3):
        x = ref.prepare(feats[w * 10 : w * 10 + 15], start=w * 10)
        enc_r, a_r = ref.backend.encode(x)
        enc_n, a_n = neon.encode(x)
        np.testing.assert_allclose(a_n, a_r, atol=0.05)  # INT8 noise on the alphas stays small
        assert np.corrcoef(enc_n.ravel(), enc_r.ravel())[0, 1] > 0.99
        emb = cif_offline(enc_r, a_r, ref.cif)
        if not len(emb):
            continue
        lp_r, caches_r = ref.backend.decode(enc_r, emb, caches_r, streaming=True)
        lp_n, caches_n = neon.decode(enc_r, emb, caches_n, streaming=True)
        assert [c.shape for c in caches_n] == [c.shape for c in caches_r]
        for c_n, c_r in zip(caches_n, caches_r):  # INT8 noise: a few % of the cache's range
            assert np.abs(c_n - c_r).max() <= 0.05 * max(1.0, float(np.abs(c_r).max()))
        top2 = np.sort(lp_r, axis=-1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] >= 0.5  # nat: INT8 moved no margin by more than 0.13 here
        agree += list((lp_n.argmax(-1) == lp_r.argmax(-1))[clear])
    assert len(agree) >= 8 and all(agree), agree


def test_missing_extension_is_a_clear_error(monkeypatch, ref):
    from edge.errors import BackendUnavailable
    from edge.asr.recognizer import Recognizer

    monkeypatch.setattr(kernels, "_lib", None)
    monkeypatch.setattr(kernels, "_reason", "extension not built (test)")
    assert not kernels.available() and "not available" in kernels.describe_line()
    with pytest.raises(BackendUnavailable, match="backend neon needs the NEON kernels: extension not built"):
        Recognizer(DEMO, "neon")


def test_auto_picks_neon_only_where_it_is_native(ref):
    from edge.backends.neon import NeonBackend
    from edge.backends.reference import ReferenceBackend
    from edge.asr.recognizer import make_backend

    backend = make_backend("auto", ref.model)
    assert isinstance(backend, NeonBackend if kernels.is_arm() else ReferenceBackend)


@pytest.mark.arm
def test_aarch64_extension_decodes_on_emulated_boards():
    """The extension cross-built for aarch64 CPython (tools/emu/armroot.py's root) under qemu: real
    NEON, sdot picked on a Cortex-A76, smull on a Cortex-A72, the sample's exact text on both; its
    fbank equal to the numpy frontend."""
    import json

    from kernels.build import build_for_armroot
    from tests.conftest import ROOT
    from paraedge_tools.emu import armroot

    root = armroot.build_root()
    _, site = build_for_armroot(root)
    for cpu, path in (("cortex-a76", "dot"), ("cortex-a72", "neon")):
        r = armroot.run_python([os.path.join(ROOT, "bench", "arm_decode.py"), "neon", "0", "1"], root=root, cpu=cpu,
                               extra_path=[site], timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        out = json.loads(r.stdout.strip().splitlines()[-1])
        assert out["backend"] == f"neon int8 ({path})" and out["text"] == out["expected"], (cpu, out)
    # the fbank's two-lane float64 FFT and split compiled for aarch64: equal float32 frames to the numpy
    # frontend at FFT 512, 256 and 64 (an even and two odd numbers of radix-2 stages), as on the host
    check = """
import numpy as np
from edge.asr.frontend import FrontendConfig, KaldiFbank
from edge.asr.audio import load_audio
x = load_audio("models/demo/samples/02_alexa_en.wav")[0] * np.float32(32768)
noise = (np.random.default_rng(3).standard_normal(5000) * 3000).astype(np.float32)
for ms in (25.0, 10.0, 2.5):
    c, ref = KaldiFbank(FrontendConfig(), ms), KaldiFbank(FrontendConfig(), ms)
    assert c.use_c, "the C fbank did not load"
    ref.use_c = False
    for sig in (x, noise):
        np.testing.assert_array_equal(c(sig), ref(sig))
print("fbank equal")
"""
    r = armroot.run_python(check, root=root, cpu="cortex-a76", extra_path=[site], timeout=300)
    assert r.returncode == 0 and "fbank equal" in r.stdout, r.stderr[-2000:]
