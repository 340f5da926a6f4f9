"""`paraedge profile` on the emulated Cortex-A76: per-stage aarch64 instruction counts per backend
(tools/emu/arm_profile.py + the qemu plugin's stage markers)."""

from __future__ import annotations

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "models", "demo")


def test_stage_blocks_parse(tmp_path):
    from edge.diag.profile import MARKED
    from paraedge_tools.emu.arm_profile import parse_stages

    f = tmp_path / "stages"
    f.write_text(f"snapshot\n{MARKED.index('encoder')} 1000 3\n{MARKED.index('total')} 5000 1\nsnapshot\n"
                 f"{MARKED.index('fbank')} 7 1\n")
    assert parse_stages(str(f)) == [{"encoder": (1000, 3), "total": (5000, 1)}, {"fbank": (7, 1)}]


@pytest.mark.arm
@pytest.mark.slow
def test_emulated_profile_counts_every_stage(tmp_path):
    from edge.asr.audio import load_audio, write_wav
    from edge.asr.recognizer import Recognizer
    from paraedge_tools.emu.arm_profile import emulated_profile, table

    wav = str(tmp_path / "cmd.wav")
    x = load_audio(os.path.join(DEMO, "samples", "02_alexa_en.wav"))[0][16000:]  # keep emulation short
    write_wav(wav, x)
    rep = emulated_profile(DEMO, [wav], ["ref", "onnxruntime:int8"], streaming=False, kernels=True)
    assert rep["cpu"] == "cortex-a76" and rep["mode"] == "offline"
    native = Recognizer(DEMO, "onnxruntime", int8=True).transcribe(load_audio(wav)[0]).text
    for name in ("ref", "onnxruntime:int8"):
        e = rep["backends"][name]
        st = e["stages_minsns_per_audio_s"]
        assert {"fbank", "lfr_cmvn", "encoder", "cif", "decoder"} <= set(st), st
        assert all(v > 0 for v in st.values())
        # stages are inside the run: their sum cannot exceed it, and covers most of it
        assert 0.8 * e["minsns_per_audio_s"] <= sum(st.values()) <= e["minsns_per_audio_s"]
        assert e["load_minsns"] > 0
        assert list(e["text"].values()) == [native]  # same tokens on the emulated board
    assert rep["backends"]["onnxruntime:int8"]["vs_onnxruntime_int8"] == 1.0
    assert "M insn/audio s" in table(rep)
    # the hot-block histogram covers the measured runs exactly and names real functions
    funcs = rep["functions_minsns_per_audio_s"]
    total = sum(e["minsns_per_audio_s"] for e in rep["backends"].values())
    assert abs(sum(funcs.values()) - total) <= 0.01 * total, (sum(funcs.values()), total)
    top = list(funcs)[:10]
    assert any(k.startswith("onnxruntime_pybind11_state") for k in top), top  # onnxruntime's kernels
    assert any("sgemm" in k for k in top), top  # the reference's numpy matmuls (OpenBLAS)
    assert sum(v for k, v in funcs.items() if k.startswith("?") or k.endswith(":?")) < 0.2 * total


@pytest.mark.arm
@pytest.mark.slow
def test_emulated_batching_bench_counts_per_stream(tmp_path):
    """The batching bench on the emulated A76: 1 and 2 concurrent streams, counted per stream."""
    from edge.asr.audio import load_audio, write_wav
    from paraedge_tools.emu.arm_profile import emulated_profile, table

    wav = str(tmp_path / "cmd.wav")
    write_wav(wav, load_audio(os.path.join(DEMO, "samples", "02_alexa_en.wav"))[0][16000:40000])
    rep = emulated_profile(DEMO, [wav], ["ref"], streaming=True, warmup=0, streams=(1, 2))
    one, two = rep["backends"]["ref x1"], rep["backends"]["ref x2"]
    assert one["per_stream_vs_first"] == 1.0 and two["streams"] == 2
    assert 0.2 < two["per_stream_vs_first"] < 1.5  # per stream, not the sum of both streams
    assert one["text"] == two["text"]
    assert "per stream" in table(rep)
