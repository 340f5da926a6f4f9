"""The CUDA bundle on the GPU present, against onnxruntime measured in the same run.

- Per call, on the demo model's CUDA bundle (fp16 matmul operands, fp32 sums): the encoder at
  40, 168 and 504 frames (2.4, 10 and 30 s of audio) and the decoder at a token per 4 frames,
  the function captured in CUDA graphs (replayed) against the same graph uncaptured (`_long`),
  median of 50 calls after the first (which captures), through the backend's seam: every call
  pads and copies its inputs to the GPU and its outputs back, as decoding does.
- Whole decode from samples to text (frontend on the CPU included), the shipped samples and a
  10 s clip of them: TVM CUDA against ParaEdge's onnxruntime backend (the CPU provider; the
  report lists the providers the installed onnxruntime has) with 1 thread and with every core,
  best of 3.

A GPU box may carry TVM's runtime alone (TVM_USE_RUNTIME_LIB=1), as a board does: then --bundle
names a bundle compiled elsewhere for this GPU's arch (`paraedge compile --board x86-cuda` with
the profile's arch set to `nvidia-smi --query-gpu=compute_cap`).

    python bench/cuda_bench.py --bundle DIR --out report.json   # on the GPU machine
    python bench/cuda_bench.py --report report.json --write-readme   # the table into README.md
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

DEMO = os.path.join(ROOT, "models", "demo")
FRAMES = (40, 168, 504)
BEGIN, END = "<!-- cuda-bench:begin -->", "<!-- cuda-bench:end -->"


def _ms(call, n: int = 50) -> float:
    call()  # captures the CUDA graph at these lengths (or warms the caches)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def per_call(backend) -> list[dict]:
    """Encoder and offline decoder through the backend's seam, captured (its own pick) and
    uncaptured (the same backend offered only the `_long` functions)."""
    import copy

    uncaptured = copy.copy(backend)
    uncaptured.functions = {n: f for n, f in backend.functions.items() if "graph_frames" not in f}
    rng = np.random.default_rng(0)
    rows = []
    for t in FRAMES:
        x = rng.standard_normal((t, 560)).astype(np.float32)
        enc = backend.encode(x)[0]
        embeds = rng.standard_normal((t // 4, backend.config.d_model)).astype(np.float32)
        row = {"frames": t, "tokens": t // 4}
        for variant, b in (("graph", backend), ("long", uncaptured)):
            row[f"encoder_{variant}_ms"] = round(_ms(lambda: b.encode(x)), 3)
            row[f"decoder_{variant}_ms"] = round(_ms(lambda: b.decode(enc, embeds)), 3)
        rows.append(row)
    return rows


def whole_decode(bundle: str, model: str, tmp: str) -> dict:
    import onnxruntime

    from edge.asr.audio import load_audio
    from edge.asr.recognizer import Recognizer
    from paraedge_models.export import fp32_copy

    clips = [load_audio(w)[0] for w in sorted(glob.glob(os.path.join(model, "samples", "*.wav")))]
    ten = np.concatenate(clips * 4)[: 10 * 16000]
    fp32 = fp32_copy(model, os.path.join(tmp, "fp32"))
    runtimes = [("TVM CUDA fp16", Recognizer(bundle, "tvm")),
                ("onnxruntime CPU fp32, 1 thread", Recognizer(fp32, "onnxruntime", threads=1)),
                (f"onnxruntime CPU fp32, {os.cpu_count()} threads", Recognizer(fp32, "onnxruntime", threads=os.cpu_count()))]
    out = {"samples_s": round(sum(len(x) for x in clips) / 16000, 2), "rows": []}
    for label, rec in runtimes:
        rec.transcribe(clips[0])
        row = {"runtime": label}
        for key, audio in (("samples", clips), ("clip10s", [ten])):
            seconds = sum(len(x) for x in audio) / 16000
            best = min(_timed(rec, audio) for _ in range(3))
            row[f"{key}_rtf"] = round(best / seconds, 5)
        row["text_10s"] = rec.transcribe(ten).text
        out["rows"].append(row)
    out["onnxruntime_providers"] = onnxruntime.get_available_providers()
    return out


def _timed(rec, clips) -> float:
    t0 = time.perf_counter()
    for x in clips:
        rec.transcribe(x)
    return time.perf_counter() - t0


def gpu_name() -> str:
    r = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"],
                       capture_output=True, text=True)
    return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else "no GPU"


def table(report: dict) -> str:
    lines = [f"Measured by `bench/cuda_bench.py` on {report['gpu']} (TVM {report['tvm']}, runtime-only "
             f"library; bundle {report['bundle_mb']} MB, compiled on the x86 host for {report['arch']}).", "",
             "| frames | tokens | encoder, CUDA graph | encoder, uncaptured | decoder, CUDA graph | decoder, uncaptured |",
             "|---|---|---|---|---|---|"]
    for r in report["per_call"]:
        lines.append(f"| {r['frames']} | {r['tokens']} | {r['encoder_graph_ms']:.2f} ms | {r['encoder_long_ms']:.2f} ms "
                     f"| {r['decoder_graph_ms']:.2f} ms | {r['decoder_long_ms']:.2f} ms |")
    w = report["whole"]
    lines += ["", f"Whole decode from samples to text (CPU frontend included), best of 3; RTF on the "
              f"shipped samples ({w['samples_s']} s) and on a 10 s clip:", "",
              "| runtime | RTF, samples | RTF, 10 s |", "|---|---|---|"]
    for r in w["rows"]:
        lines.append(f"| {r['runtime']} | {r['samples_rtf']:.5f} | {r['clip10s_rtf']:.5f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", help="a CUDA bundle of the demo model for this GPU")
    ap.add_argument("--model", default=DEMO)
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "bench", "cuda", "report.json"))
    ap.add_argument("--report", help="an earlier report to print (or write into the README)")
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args(argv)
    if args.report:
        report = json.load(open(args.report))
    else:
        if not args.bundle:
            ap.error("--bundle is required to measure (or --report to print one)")
        import tempfile

        import tvm

        from edge.asr.recognizer import Recognizer

        rec = Recognizer(args.bundle, "tvm")
        manifest = json.load(open(os.path.join(args.bundle, "manifest.json")))
        report = {"gpu": gpu_name(), "tvm": tvm.__version__, "arch": manifest["cuda"]["arch"],
                  "bundle_mb": round(sum(os.path.getsize(os.path.join(args.bundle, f)) for f in manifest["files"]) / 1e6, 1),
                  "per_call": per_call(rec.backend)}
        with tempfile.TemporaryDirectory() as tmp:
            report["whole"] = whole_decode(args.bundle, args.model, tmp)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    text = table(report)
    from paraedge_tools.docblock import publish

    publish(text, os.path.join(ROOT, "README.md") if args.write_readme else None, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
