"""`paraedge profile` on a tiny model with two backends: schema, stage sums, percentiles, plots.
No test here asserts a speed."""

import json
import subprocess
import sys

import pytest

from edge.errors import ParaEdgeError
from tests.conftest import ROOT

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("mode", ["offline", "streaming"])
def test_profile_report(mode, exported_offline, exported_streaming, speech_dir, tmp_path):
    model = exported_streaming if mode == "streaming" else exported_offline
    out = tmp_path / "prof"
    args = [sys.executable, "-m", "edge", "profile", "--model", model, "--backend", "ref,onnxruntime",
            "--audio", str(speech_dir / "zh.wav"), str(speech_dir / "en.wav"), "--runs", "3", "-o", str(out), "--board", "x86-host"]
    if mode == "streaming":
        args.append("--streaming")
    p = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert "onnxruntime" in p.stdout and "RTF" in p.stdout
    rep = json.loads((out / "report.json").read_text())
    assert rep["mode"] == mode and rep["threads"] == 1 and rep["runs"] == 3
    assert rep["board"].startswith("x86-host") and "board: x86-host" in p.stdout
    assert {"cpu", "versions", "audio", "model_cost"} <= set(rep)
    assert rep["model_cost"]["peak_gemm_gflops"] > 0
    assert set(rep["model_cost"]["macs_per_audio_second"]) == {"fbank", "encoder", "cif", "decoder"}
    for name in ("ref", "onnxruntime"):
        e = rep["backends"][name]
        assert e["rtf"] > 0 and e["load_s"] > 0 and e["peak_rss_mb"] > 0
        lat = e["latency_s"]
        assert lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        staged = sum(e["stages_s"].values())
        # stages cover the pipeline: what is left is bookkeeping between them
        assert 0.6 * e["total_s"] <= staged <= e["total_s"] * 1.001, (staged, e["total_s"])
        assert len(e["rtf_by_length"]) == 2 * 3
        if mode == "streaming":
            assert e["chunk_s"]["p50"] <= e["chunk_s"]["max"] and e["eos_to_final_s"]["p50"] >= 0
            assert e["first_partial_audio_s"]["p50"] > 0
    assert rep["backends"]["onnxruntime"]["time_vs_onnxruntime"] == pytest.approx(1.0)
    # the daemon's always-on costs: wake gate per 10 ms hop, VAD per window, capture resampling
    assert set(rep["daemon"]) == {"wake_gate", "vad", "resample_48k"}
    for e in rep["daemon"].values():
        q = e["per_step_us"]
        assert e["rtf"] > 0 and 0 < q["p50"] <= q["p90"] <= q["p99"] <= q["max"]
    assert rep["daemon"]["wake_gate"]["step_ms"] == 10
    for png in ("stages.png", "latency_cdf.png", "rtf_vs_length.png"):
        assert (out / png).read_bytes()[:8] == PNG


def test_profile_needs_audio(exported_offline):
    p = subprocess.run([sys.executable, "-m", "edge", "profile", "--model", exported_offline, "-b", "ref"],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and "--audio" in p.stderr and "Traceback" not in p.stderr


def test_profile_peer_failures_are_rows_and_thread_pools_are_verified(exported_offline, speech_dir, tmp_path):
    """A peer that cannot read the model (funasr-onnx on a t0..tN vocabulary raises ValueError) is a
    row saying why, not a traceback; the report shows the thread pools as they are, not as asked."""
    out = tmp_path / "prof"
    p = subprocess.run([sys.executable, "-m", "edge", "profile", "--model", exported_offline, "--backend", "onnxruntime",
                        "--peers", "--audio", str(speech_dir / "en.wav"), "--runs", "1", "-o", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    rep = json.loads((out / "report.json").read_text())
    assert {"sherpa-onnx", "funasr-onnx"} <= set(rep["peers"])
    for name, e in rep["peers"].items():
        assert "rtf" in e or e["skipped"].startswith("failed on this model"), (name, e)
        assert name in p.stdout
    assert rep["thread_pools"] and all(n == 1 for n in rep["thread_pools"].values()), rep["thread_pools"]


def test_profile_concurrent_streams_rows(exported_streaming, speech_dir, tmp_path):
    """The batching bench: a row per stream count, RTF per stream, the ratio against the first
    count, and every stream count decoding the same text."""
    from edge.diag.profile import profile, table

    wav = str(sorted(speech_dir.glob("*.wav"))[0])
    rep = profile(exported_streaming, ["ref", "onnxruntime"], [wav], runs=1, warmup=0, streaming=True,
                  peers=False, daemon=False, streams=[1, 2, 4])
    for spec in ("ref", "onnxruntime"):
        rows = [rep["backends"][f"{spec} x{n}"] for n in (1, 2, 4)]
        assert [r["streams"] for r in rows] == [1, 2, 4]
        assert rows[0]["per_stream_vs_first"] == 1.0 and all(r["per_stream_vs_first"] > 0 for r in rows)
        assert len({tuple(r["text"].values()) for r in rows}) == 1
    assert rep["ratio_base"] == "onnxruntime x1"
    assert "per stream" in table(rep)
    with pytest.raises(ParaEdgeError, match="with --streaming"):
        profile(exported_streaming, ["ref"], [wav], streaming=False, streams=[2])
