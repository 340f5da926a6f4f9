"""CUDA bundles: compiled on this CPU-only host for Jetson Xavier (sm_72) and Orin (sm_87), with
the kernels precompiled to cubins by NVRTC (a Jetson needs no compiler). Where a CUDA GPU is
present (never in CI; `make gpu-check` runs the `gpu` tests), bundles for it run against the numpy
reference; elsewhere those tests skip with the reason."""

import glob
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

pytest.importorskip("tvm.relax", reason="apache-tvm (host extra) is not installed")
pytest.importorskip("nvidia.cuda_nvrtc", reason="NVRTC from PyPI (the cuda extra) is not installed")

from edge.asr.recognizer import Recognizer  # noqa: E402

EM_CUDA = 190


def _elf_machine(data: bytes) -> int:
    assert data[:4] == b"\x7fELF"
    return int.from_bytes(data[18:20], "little")


@pytest.mark.parametrize("board,arch", [("jetson-agx-xavier", "sm_72"), ("jetson-orin-nano", "sm_87")])
def test_jetson_bundle_has_cubins(board, arch, exported_offline, tmp_path):
    from paraedge_tools.compiler.compile import compile_bundle

    out = str(tmp_path / board)
    m = compile_bundle(exported_offline, board, out)
    assert m["cuda"]["arch"] == arch and m["cuda"]["cubins"]
    so = open(os.path.join(out, "model.so"), "rb").read()
    assert _elf_machine(so) == 183  # the host code is aarch64 (the Jetson's CPU)
    for entry in m["cuda"]["cubins"]:
        cubin = open(os.path.join(out, entry["file"]), "rb").read()
        assert _elf_machine(cubin) == EM_CUDA and len(cubin) == entry["bytes"]
        assert entry["file"] in m["files"]
        assert cubin[:4096] in so  # the .so embeds the cubin, not CUDA C to compile at load time
    assert b"extern \"C\" __global__" not in so


def _gpu_arch():
    if not shutil.which("nvidia-smi"):
        return None
    r = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True, text=True)
    cap = r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else ""
    return "sm_" + cap.replace(".", "") if cap else None


def _gpu_bundle(model: str, out: str) -> str:
    """`model` compiled for the GPU present (the x86-cuda profile at its compute capability)."""
    arch = _gpu_arch()
    if arch is None:
        pytest.skip("no CUDA GPU here (nvidia-smi finds none): the CUDA bundle runs only on a GPU machine")
    from edge.boards import load_board
    from paraedge_tools.compiler.compile import compile_bundle

    board = load_board("x86-cuda")
    board.target = dict(board.target, arch=arch)
    compile_bundle(model, board, out)
    return arch


@pytest.mark.gpu
def test_cuda_bundle_on_gpu_equals_reference(exported_offline, speech, tmp_path):
    out = str(tmp_path / "gpu")
    arch = _gpu_bundle(exported_offline, out)
    ref, gpu = Recognizer(exported_offline, "ref"), Recognizer(out, "tvm")
    for x in (speech["zh"], speech["en"]):
        feats = ref.frontend(x)
        ids_r, lp_r = ref.decode_features(feats)
        ids_g, lp_g = gpu.decode_features(feats)
        np.testing.assert_allclose(lp_g, lp_r, atol=1e-3)
        assert ids_g == ids_r
    assert json.load(open(os.path.join(out, "manifest.json")))["cuda"]["arch"] == arch


@pytest.mark.gpu
def test_demo_on_gpu_every_function_and_sample(tmp_path):
    """The shipped demo model on the GPU present: every function against the numpy reference at
    odd lengths (1, 7, 167 frames; 1, 3, 37 tokens), the samples decoded to the reference's tokens
    offline and streaming, and the latency printed next to onnxruntime fp32 (ParaEdge's onnxruntime
    backend, which runs the CPU provider: a CUDA-provider row is not wired up yet)."""
    from edge.asr.audio import load_audio
    from tests.conftest import ROOT, assert_seam_matches

    demo = os.path.join(ROOT, "models", "demo")
    out = str(tmp_path / "demo-gpu")
    _gpu_bundle(demo, out)
    ref, gpu = Recognizer(demo, "ref"), Recognizer(out, "tvm")
    for t in (1, 7, 167):
        assert_seam_matches(ref.backend, gpu.backend, t, seed=t)
    clips = [load_audio(w)[0] for w in sorted(glob.glob(os.path.join(demo, "samples", "*.wav")))]
    for x in clips:
        assert gpu.transcribe(x).token_ids == ref.transcribe(x).token_ids
        assert gpu.transcribe_streaming(x).token_ids == ref.transcribe_streaming(x).token_ids
    from paraedge_models.export import fp32_copy

    peer = Recognizer(fp32_copy(demo, str(tmp_path / "fp32")), "onnxruntime")
    seconds = sum(len(x) for x in clips) / 16000
    for label, rec in (("TVM CUDA fp32", gpu), ("onnxruntime fp32 (CPU)", peer)):
        rec.transcribe(clips[0])  # warm-up
        best = min(_timed(rec, clips) for _ in range(3))
        print(f"[gpu-check] {label}: RTF {best / seconds:.5f} ({len(clips)} samples, {seconds:.1f} s of audio)")


def _timed(rec, clips) -> float:
    import time

    t0 = time.perf_counter()
    for x in clips:
        rec.transcribe(x)
    return time.perf_counter() - t0
