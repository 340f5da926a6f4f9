"""CUDA bundles: compiled on this CPU-only host for Jetson Xavier (sm_72) and Orin (sm_87), with
the kernels precompiled to cubins by NVRTC (a Jetson needs no compiler). Where a CUDA GPU is
present (never in CI; `make gpu-check` runs the `gpu` tests), bundles for it run against the numpy
reference; elsewhere those tests skip with the reason. A GPU machine may hold TVM's runtime alone,
as a board does: $PARAEDGE_GPU_BUNDLE then names the demo's bundle compiled on the host for its
GPU (`python bench/cuda_bench.py` describes how)."""

import glob
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from edge.asr.recognizer import Recognizer
from tests.conftest import SEAM_ATOL

EM_CUDA = 190


def _compiler():
    """Skips unless this machine can compile CUDA bundles (TVM's compiler and NVRTC from PyPI)."""
    pytest.importorskip("tvm.relax", reason="apache-tvm (host extra) is not installed")
    pytest.importorskip("nvidia.cuda_nvrtc", reason="NVRTC from PyPI (the cuda extra) is not installed")


def _elf_machine(data: bytes) -> int:
    assert data[:4] == b"\x7fELF"
    return int.from_bytes(data[18:20], "little")


@pytest.mark.parametrize("board,arch", [("jetson-agx-xavier", "sm_72"), ("jetson-orin-nano", "sm_87")])
def test_jetson_bundle_has_cubins(board, arch, exported_offline, tmp_path):
    _compiler()
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
    # fp16 weights (half the bytes); each graph captured in CUDA graphs up to a bound, and uncaptured
    names = {f["name"]: f for f in m["functions"]}
    assert names["encoder"]["graph_frames"] >= 1024 and "graph_frames" not in names["encoder_long"]
    assert {"decoder", "decoder_long"} <= set(names)
    params = np.load(os.path.join(out, "params.npz"))
    assert {params[k].dtype for k in names["encoder"]["params"]} == {np.dtype(np.float16), np.dtype(np.float32)}
    # the runtime takes the captured function while the input fits its bound, the uncaptured one after
    from edge.backends.tvm import pick_function

    bound = names["encoder"]["graph_frames"]
    for kind in ("encoder", "decoder"):
        assert pick_function(m["functions"], kind, bound, out)["name"] == kind
        assert pick_function(m["functions"], kind, bound + 1, out)["name"] == f"{kind}_long"


def test_captured_function_alone_refuses_longer_input_and_bad_bounds_are_refused(tvm_offline, tmp_path):
    from edge.backends.tvm import pick_function
    from edge.errors import ModelError

    captured = [{"name": "encoder", "kind": "encoder", "graph_frames": 64}]
    with pytest.raises(ModelError, match="65 frames is more than the bundle's encoder takes \\(64\\); recompile"):
        pick_function(captured, "encoder", 65, "b")
    bundle = str(tmp_path / "b")
    shutil.copytree(tvm_offline, bundle)
    path = os.path.join(bundle, "manifest.json")
    m = json.load(open(path))
    m["functions"][0]["graph_frames"] = 0
    json.dump(m, open(path, "w"))
    with pytest.raises(ModelError, match="manifest.json"):
        Recognizer(bundle, "tvm")


def _gpu_arch():
    if not shutil.which("nvidia-smi"):
        return None
    r = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True, text=True)
    cap = r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else ""
    return "sm_" + cap.replace(".", "") if cap else None


def _gpu_bundle(model: str, out: str) -> str:
    """`model` compiled for the GPU present (the x86-cuda profile at its compute capability), or,
    where $PARAEDGE_GPU_BUNDLE names one, that bundle compiled on another machine: a GPU box may
    carry TVM's runtime alone, as a board does. Returns the bundle's folder."""
    arch = _gpu_arch()
    if arch is None:
        pytest.skip("no CUDA GPU here (nvidia-smi finds none): the CUDA bundle runs only on a GPU machine")
    prebuilt = os.environ.get("PARAEDGE_GPU_BUNDLE")
    if prebuilt:
        manifest = json.load(open(os.path.join(prebuilt, "manifest.json")))
        assert manifest["cuda"]["arch"] == arch, f"{prebuilt} is for {manifest['cuda']['arch']}, this GPU is {arch}"
        from edge.asr.modeldir import ModelDir, model_hash

        assert manifest["model"]["hash"] == model_hash(ModelDir(model)), f"{prebuilt} holds another model"
        return prebuilt
    _compiler()
    from edge.boards import load_board
    from paraedge_tools.compiler.compile import compile_bundle

    board = load_board("x86-cuda")
    board.target = dict(board.target, arch=arch)
    compile_bundle(model, board, out)
    return out


@pytest.mark.gpu
@pytest.mark.skipif(bool(os.environ.get("PARAEDGE_GPU_BUNDLE")),
                    reason="$PARAEDGE_GPU_BUNDLE holds the demo's bundle; this test compiles its own model")
def test_cuda_bundle_on_gpu_equals_reference(exported_offline, speech, tmp_path):
    out = _gpu_bundle(exported_offline, str(tmp_path / "gpu"))
    ref, gpu = Recognizer(exported_offline, "ref"), Recognizer(out, "tvm")
    for x in (speech["zh"], speech["en"]):
        feats = ref.frontend(x)
        ids_r, lp_r = ref.decode_features(feats)
        ids_g, lp_g = gpu.decode_features(feats)
        np.testing.assert_allclose(lp_g, lp_r, atol=SEAM_ATOL["fp16"][2])
        assert ids_g == ids_r
    assert json.load(open(os.path.join(out, "manifest.json")))["cuda"]["arch"] == _gpu_arch()


@pytest.mark.gpu
def test_demo_on_gpu_every_function_and_sample(tmp_path):
    """The shipped demo model on the GPU present: every function against the numpy reference at
    odd lengths (1, 7, 167, 513 frames; 1, 3, 37 tokens), the samples decoded to the reference's tokens
    offline and streaming, and the latency printed by bench/cuda_bench.py (next to onnxruntime fp32:
    ParaEdge's onnxruntime backend, which runs the CPU provider)."""
    from edge.asr.audio import load_audio
    from tests.conftest import ROOT, assert_seam_matches

    demo = os.path.join(ROOT, "models", "demo")
    out = _gpu_bundle(demo, str(tmp_path / "demo-gpu"))
    ref, gpu = Recognizer(demo, "ref"), Recognizer(out, "tvm")
    for t in (1, 7, 167, 513):
        assert_seam_matches(ref.backend, gpu.backend, t, seed=t, precision="fp16")
    clips = [load_audio(w)[0] for w in sorted(glob.glob(os.path.join(demo, "samples", "*.wav")))]
    for x in clips:
        assert gpu.transcribe(x).token_ids == ref.transcribe(x).token_ids
        assert gpu.transcribe_streaming(x).token_ids == ref.transcribe_streaming(x).token_ids
    # the latency: bench/cuda_bench.py on this bundle (per call, and whole decode next to onnxruntime)
    import sys

    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "cuda_bench.py"), "--bundle", out,
                        "--out", str(tmp_path / "cuda_report.json")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    print("[gpu-check]\n" + r.stdout)
