"""Produce the README's performance table from a fresh run (nothing typed by hand).

`python bench/readme_table.py [--model models/demo] [--runs 5] [--out out/bench]` runs
`paraedge profile` with every backend and the peers on the shipped demo samples, offline and
streaming, 1 thread, and prints a Markdown table of RTF and time relative to onnxruntime measured
in the same run. It also leaves report.json and the plots in --out. With --arm it adds the same
comparison on the emulated Cortex-A76 (tools/emu/arm_profile.py): aarch64 instructions per second of
audio, per backend, in one run.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main(argv=None) -> int:
    from edge.diag.profile import plots, profile

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "demo"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "bench"))
    ap.add_argument("--arm", action="store_true", help="also count instructions on the emulated Cortex-A76")
    args = ap.parse_args(argv)
    audio = sorted(glob.glob(os.path.join(args.model, "samples", "*.wav")))
    # the demo ships only INT8 ONNX: export the fp32 pair into a scratch copy so onnxruntime fp32
    # (the baseline every ratio is taken against) and the peers' fp32 runs exist
    from paraedge_models.export import fp32_copy

    args.model = fp32_copy(args.model, os.path.join(args.out, "model"))
    lines = ["| mode | runtime | RTF | time vs onnxruntime fp32 |", "|---|---|---|---|"]
    for mode in ("offline", "streaming"):
        backends = ["ref", "onnxruntime", "onnxruntime:int8"]
        rep = profile(args.model, backends, audio, args.threads, args.runs, 1, mode == "streaming", peers=True)
        out = os.path.join(args.out, mode)
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "report.json"), "w") as f:
            json.dump(rep, f, indent=1, ensure_ascii=False)
        plots(rep, out)
        for group, suffix in (("backends", ""), ("peers", " (peer)")):
            for name, e in rep.get(group, {}).items():
                if "rtf" not in e:
                    continue
                label = {"ref": "ParaEdge numpy reference", "onnxruntime": "ParaEdge onnxruntime fp32",
                         "onnxruntime:int8": "ParaEdge onnxruntime INT8"}.get(name, name + suffix)
                ratio = e.get("time_vs_onnxruntime")
                lines.append(f"| {mode} | {label} | {e['rtf']:.4f} | {ratio:.2f} |" if ratio else
                             f"| {mode} | {label} | {e['rtf']:.4f} | - |")
    audio_s = sum(a["seconds"] for a in rep["audio"])
    print(f"{len(audio)} demo samples ({audio_s:.1f} s of audio), {args.runs} runs after 1 warm-up, "
          f"{args.threads} thread, CPU: {rep['cpu']}\n")
    print("\n".join(lines))
    if args.arm:
        print()
        print(arm_table(args.model, os.path.join(os.path.dirname(audio[0]), "02_alexa_en.wav")
                        if os.path.exists(os.path.join(os.path.dirname(audio[0]), "02_alexa_en.wav")) else audio[0]))
    return 0


def arm_table(model: str, wav: str) -> str:
    from paraedge_tools.emu.arm_profile import emulated_profile

    labels = {"ref": "ParaEdge numpy reference", "onnxruntime": "ParaEdge onnxruntime fp32",
              "onnxruntime:int8": "ParaEdge onnxruntime INT8", "neon": "ParaEdge NEON kernels (INT8, sdot)"}
    lines = ["| mode | runtime | M aarch64 instructions per audio second | vs onnxruntime INT8 | fbank/frontend share |",
             "|---|---|---|---|---|"]
    for mode in ("offline", "streaming"):
        rep = emulated_profile(model, [wav], list(labels), streaming=mode == "streaming")
        for name, e in rep["backends"].items():
            if "skipped" in e:
                continue
            st = e["stages_minsns_per_audio_s"]
            fe = st.get("fbank", 0.0) + st.get("lfr_cmvn", 0.0) + st.get("frontend", 0.0)
            lines.append(f"| {mode} | {labels[name]} | {e['minsns_per_audio_s']:.1f} | {e['vs_onnxruntime_int8']:.2f} | "
                         f"{fe:.1f} |")
    head = (f"emulated {rep['cpu']} (qemu-user + instruction-count plugin), {os.path.basename(wav)} "
            f"({rep['audio_s']:.1f} s), 1 thread, whole decode from samples to text\n")
    return head + "\n" + "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
