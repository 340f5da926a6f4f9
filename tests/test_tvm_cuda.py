"""CUDA bundles: compiled on this CPU-only host for Jetson Xavier (sm_72) and Orin (sm_87), with
the kernels precompiled to cubins by NVRTC (a Jetson needs no compiler). Where a CUDA GPU is
present (never in CI), a bundle for it runs against the numpy reference; elsewhere that test skips."""

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


def test_cuda_bundle_on_gpu_equals_reference(exported_offline, speech, tmp_path):
    arch = _gpu_arch()
    if arch is None:
        pytest.skip("no CUDA GPU here (nvidia-smi finds none): the CUDA bundle runs only on a GPU machine")
    from edge.boards import load_board
    from paraedge_tools.compiler.compile import compile_bundle

    board = load_board("x86-cuda")
    board.target = dict(board.target, arch=arch)
    out = str(tmp_path / "gpu")
    compile_bundle(exported_offline, board, out)
    ref, gpu = Recognizer(exported_offline, "ref"), Recognizer(out, "tvm")
    for x in (speech["zh"], speech["en"]):
        feats = ref.frontend(x)
        ids_r, lp_r = ref.decode_features(feats)
        ids_g, lp_g = gpu.decode_features(feats)
        np.testing.assert_allclose(lp_g, lp_r, atol=1e-3)
        assert ids_g == ids_r
    assert json.load(open(os.path.join(out, "manifest.json")))["cuda"]["arch"] == arch
