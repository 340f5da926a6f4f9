"""The batching bench: what each seat zone costs when 1, 2 or 4 streams are decoded together.

`python bench/batching.py [--model models/demo] [--streams 1,2,4] [--runs 3] [--arm] [--out out/bench-batching]`

Every stream hears the same command, fed 100 ms at a time through `Recognizer.accept_batch`
(`paraedge profile --streaming --streams`), 1 thread. Printed per backend: the cost per stream
against one stream, measured in the same run; on x86 in wall time, with --arm also in aarch64
instructions on the emulated Cortex-A76 (tools/emu/arm_profile.py). The demo ships only INT8 ONNX,
so the fp32 pair is exported into a scratch copy first (onnxruntime fp32 is the one onnxruntime
graph that batches; see edge/backends/onnxruntime.py).
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

LABELS = {"ref": "numpy reference (rows stacked)", "onnxruntime": "onnxruntime fp32 (batched graph)",
          "onnxruntime:int8": "onnxruntime INT8 (one by one)", "neon": "NEON kernels INT8 (rows stacked)"}


def rows_table(backends: dict, streams: list[int], unit: str) -> list[str]:
    head = "| backend | " + " | ".join(f"{n} stream{'s' if n > 1 else ''}" for n in streams) + " |"
    lines = [head, "|---|" + "---|" * len(streams)]
    for spec, label in LABELS.items():
        cells = [backends.get(f"{spec} x{n}", {}) for n in streams]
        if not all("per_stream_vs_first" in c for c in cells):
            continue
        lines.append(f"| {label} | " + " | ".join(f"{c['per_stream_vs_first']:.2f}x ({c[unit]:.4g})" for c in cells) + " |")
    return lines


def main(argv=None) -> int:
    from edge.diag.profile import profile

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "demo"))
    ap.add_argument("--audio", default=os.path.join(ROOT, "models", "demo", "samples", "02_alexa_en.wav"))
    ap.add_argument("--streams", default="1,2,4")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--arm", action="store_true", help="also count instructions on the emulated Cortex-A76")
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "bench-batching"))
    args = ap.parse_args(argv)
    streams = [int(n) for n in args.streams.split(",")]
    from paraedge_models.export import fp32_copy

    model = fp32_copy(args.model, os.path.join(args.out, "model"))
    rep = profile(model, ["ref", "onnxruntime", "onnxruntime:int8"], [args.audio], 1, args.runs, 1, True,
                  peers=False, daemon=False, streams=streams)
    print(f"x86, 1 thread, {os.path.basename(args.audio)}, {args.runs} runs, CPU {rep['cpu']}: cost per stream "
          f"against 1 stream (per-stream RTF)\n")
    print("\n".join(rows_table(rep["backends"], streams, "rtf")))
    if args.arm:
        from edge.asr.audio import load_audio, write_wav
        from paraedge_tools.emu.arm_profile import emulated_profile

        short = os.path.join(args.out, "cmd.wav")  # 2 s of the command: emulation runs ~200x slower
        write_wav(short, load_audio(args.audio)[0][16000:48000])
        arm = emulated_profile(model, [short], ["ref", "onnxruntime", "onnxruntime:int8", "neon"], True,
                               streams=streams)
        print(f"\nemulated {arm['cpu']}, 1 thread, {arm['audio_s']:.1f} s of the command: instructions per stream "
              f"against 1 stream (M aarch64 instructions per audio second per stream)\n")
        print("\n".join(rows_table(arm["backends"], streams, "minsns_per_audio_s")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
