"""Shared fixtures: real speech rendered with espeak-ng, FunASR-made model dirs, exported copies."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DEMO = os.path.join(ROOT, "models", "demo")


def demo_tokens() -> list[str]:
    """The shipped demo model's vocabulary (its tokens.json): tests derive sizes from it, never a literal."""
    with open(os.path.join(DEMO, "tokens.json"), encoding="utf-8") as f:
        return json.load(f)

PHRASES = {
    "zh": ("cmn-latn-pinyin", "打开空调，导航回家，调高温度"),
    "en": ("en-us", "open the window and navigate home"),
    "zh2": ("cmn-latn-pinyin", "空调调到二十二度"),
}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running (still part of `make test`)")
    config.addinivalue_line("markers", "arm: runs on the emulated aarch64 board (qemu-user, tools/emu/armroot.py)")
    config.addinivalue_line("markers", "gpu: needs an NVIDIA GPU (`make gpu-check`); skips with the reason elsewhere")


def render(text: str, voice: str, path: str, rate: int = 16000, channels: int = 1, bits: int = 16, enc=None) -> str:
    raw = path + ".raw.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-w", raw, text], check=True, capture_output=True)
    # -R: repeatable. sox dithers by default when it writes fewer bits, with a random seed, so the
    # same phrase would differ run to run; tests on random-weight models need the same input.
    cmd = ["sox", "-R", raw, "-r", str(rate), "-c", str(channels), "-b", str(bits)]
    if enc:
        cmd += ["-e", enc]
    subprocess.run(cmd + [path], check=True, capture_output=True)
    os.remove(raw)
    return path


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("speech")
    for name, (voice, text) in PHRASES.items():
        render(text, voice, str(d / f"{name}.wav"))
    return d


@pytest.fixture(scope="session")
def speech(speech_dir):
    """{name: 16 kHz float32 samples} of real (synthesised) speech."""
    from edge.asr.audio import load_audio

    return {name: load_audio(str(speech_dir / f"{name}.wav"))[0] for name in PHRASES}


@pytest.fixture(scope="session")
def long_speech(speech):
    """~30 s: the phrases repeated, with short pauses."""
    pause = np.zeros(4000, np.float32)
    pieces = []
    while sum(len(p) for p in pieces) < 30 * 16000:
        for x in speech.values():
            pieces += [x, pause]
    return np.concatenate(pieces)[: 30 * 16000]


def _funasr_dir(tmp_path_factory, name, **kw):
    from tests.oracle import make_funasr_dir

    return make_funasr_dir(str(tmp_path_factory.mktemp(name)), **kw)


@pytest.fixture(scope="session")
def funasr_offline_a(tmp_path_factory):
    return _funasr_dir(tmp_path_factory, "off_a", shape="a", streaming=False, seed=11)


@pytest.fixture(scope="session")
def funasr_offline_b(tmp_path_factory):
    return _funasr_dir(tmp_path_factory, "off_b", shape="b", streaming=False, seed=12)


@pytest.fixture(scope="session")
def funasr_streaming_a(tmp_path_factory):
    return _funasr_dir(tmp_path_factory, "str_a", shape="a", streaming=True, seed=13)


@pytest.fixture(scope="session")
def funasr_streaming_b(tmp_path_factory):
    return _funasr_dir(tmp_path_factory, "str_b", shape="b", streaming=True, seed=14)


def exported_copy(src: str, dst) -> str:
    from paraedge_models.export import export_dir

    shutil.copytree(src, dst)
    export_dir(str(dst))
    return str(dst)


@pytest.fixture(scope="session")
def exported_offline(tmp_path_factory, funasr_offline_a):
    return exported_copy(funasr_offline_a, tmp_path_factory.mktemp("exp") / "off_a")


@pytest.fixture(scope="session")
def exported_streaming(tmp_path_factory, funasr_streaming_a):
    return exported_copy(funasr_streaming_a, tmp_path_factory.mktemp("exp") / "str_a")


# -- compiled TVM bundles, shared by test_tvm*, test_conformance --------------------------------
# (enc, alphas, log-probs) tolerances: fp32 bundles; fp16 CUDA bundles, whose matmul operands are
# rounded to 11 bits (the demo in torch eager, fp16 vs fp32 at 168 frames: 4.0e-3, 5.0e-4, 4.7e-3)
SEAM_ATOL = {"fp32": (1e-3, 1e-4, 1e-3), "fp16": (2e-2, 2.5e-3, 2e-2)}


def assert_seam_matches(ref, tvm, frames: int, tokens=(1, 3, 37), seed: int = 0, precision: str = "fp32") -> None:
    """A bundle's backend against the reference backend at the seam, on random inputs: the
    encoder at `frames`, the offline and streaming decoders at each token count over it, and the
    streaming caches (each backend's own layout) carrying the FSMN memory into the next chunk alike."""
    atol_enc, atol_alphas, atol = SEAM_ATOL[precision]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((frames, 560)).astype(np.float32)
    (enc_r, alphas_r), (enc_t, alphas_t) = ref.encode(x), tvm.encode(x)
    assert enc_t.shape == enc_r.shape and alphas_t.shape == (frames,)
    np.testing.assert_allclose(enc_t, enc_r, atol=atol_enc)
    np.testing.assert_allclose(alphas_t, alphas_r, atol=atol_alphas)
    for n in tokens:
        embeds = rng.standard_normal((n, enc_r.shape[1])).astype(np.float32)
        (lp_r, _), (lp_t, _) = ref.decode(enc_r, embeds), tvm.decode(enc_r, embeds)
        np.testing.assert_allclose(lp_t, lp_r, atol=atol)
        (lp_r, caches_r), (lp_t, caches_t) = ref.decode(enc_r, embeds, streaming=True), tvm.decode(enc_r, embeds, streaming=True)
        np.testing.assert_allclose(lp_t, lp_r, atol=atol)
        lp_r = ref.decode(enc_r, embeds[::-1].copy(), caches_r, streaming=True)[0]
        np.testing.assert_allclose(tvm.decode(enc_r, embeds[::-1].copy(), caches_t, streaming=True)[0], lp_r, atol=atol)



def _compile(tmp_path_factory, name, model, board, **kw) -> str:
    pytest.importorskip("tvm.relax", reason="apache-tvm (host extra) is not installed")
    from paraedge_tools.compiler.compile import compile_bundle

    out = str(tmp_path_factory.mktemp("tvm") / name)
    compile_bundle(model, board, out, **kw)
    return out


@pytest.fixture(scope="session")
def tvm_offline(tmp_path_factory, exported_offline):
    return _compile(tmp_path_factory, "off_x86", exported_offline, "x86-host")


@pytest.fixture(scope="session")
def tvm_streaming(tmp_path_factory, exported_streaming):
    return _compile(tmp_path_factory, "str_x86", exported_streaming, "x86-host")


@pytest.fixture(scope="session")
def tvm_demo_int8(tmp_path_factory):
    """The trained demo model as an INT8 x86 bundle, offline + streaming."""
    return _compile(tmp_path_factory, "demo_int8", os.path.join(ROOT, "models", "demo"), "x86-host", int8=True)


@pytest.fixture(scope="session")
def armroot():
    if not (shutil.which("qemu-aarch64") and shutil.which("aarch64-linux-gnu-gcc")):
        pytest.skip("qemu-user and gcc-aarch64-linux-gnu are not installed (make apt installs them)")
    from paraedge_tools.emu.armroot import build_root

    return build_root()


@pytest.fixture(scope="session")
def arm_demo_int8(tmp_path_factory):
    """The demo model as an INT8 bundle for the emulated Cortex-A76 (sdot tiles)."""
    return _compile(tmp_path_factory, "demo_int8_a76", os.path.join(ROOT, "models", "demo"), "qemu-a76", int8=True)


@pytest.fixture(scope="session")
def arm_bundle(tmp_path_factory, exported_streaming):
    return _compile(tmp_path_factory, "str_a76", exported_streaming, "qemu-a76")
