"""TVM bundles against onnxruntime, measured side by side in one run (same model, same threads).

x86 (this host): wall time of offline and streaming decoding of the demo samples, as RTF and
relative to onnxruntime fp32, for onnxruntime fp32/INT8 and the x86-host TVM bundles (fp32, --int8);
the runs go round robin over the runtimes, so a slow spell of a shared host hits them alike.
`--arm`: the same model on the emulated aarch64 board (tools/emu/armroot.py, qemu -cpu cortex-a76):
dynamic aarch64 instructions per second of audio (qemu plugin, tools/emu/qemu_insn.py) for the
qemu-a76 TVM bundles (fp32, --int8) and onnxruntime aarch64 fp32/INT8, counted between the profiler's stage
markers (tools/emu/arm_profile.py): only the decode counts, not imports, loading or the warm-up.
(Subtracting a load-only run from a full one, as this bench did before, gave onnxruntime counts
that moved by up to 25 M per audio second between two runs of the same command.)

    python bench/tvm_bench.py --runs 3 --arm      # prints Markdown tables; JSON in --out
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # (this file is not named tvm.py: bench/ is sys.path[0] and would shadow the tvm package)

RUNTIMES = [("onnxruntime fp32", "onnxruntime", False), ("onnxruntime INT8", "onnxruntime", True),
            ("TVM fp32", "tvm", False), ("TVM INT8", "tvm", True)]


def fp32_model(model: str, out: str) -> str:
    """A scratch copy with the fp32 ONNX pair exported (the demo ships INT8 ONNX only)."""
    from paraedge_models.export import fp32_copy

    return fp32_copy(model, os.path.join(out, "model"))


def bundle(model: str, board: str, out: str, recompile: bool | str = False, buckets=None, int8: bool = False) -> str:
    """Compile a bundle for `board` (all default buckets: minutes), or reuse the one in `out`
    when it was compiled from the same model with those buckets (pass --recompile after changing
    the compiler)."""
    from edge.asr.modeldir import ModelDir, model_hash
    from paraedge_tools.compiler.compile import DEFAULT_BUCKETS, compile_bundle

    buckets = tuple(buckets or DEFAULT_BUCKETS)
    dst = os.path.join(out, f"tvm-{board}{'-int8' if int8 else ''}")
    man = os.path.join(dst, "manifest.json")
    if recompile not in (True, board) and os.path.exists(man):
        m = json.load(open(man))
        have = {f["T"] for f in m["functions"] if f.get("kind") == "encoder"}
        if m["model"]["hash"] == model_hash(ModelDir(model)) and set(buckets) <= have and m["model"]["int8"] == int8:
            return dst
    compile_bundle(model, board, dst, buckets=buckets, int8=int8)
    return dst


def x86_table(model, tvm_dirs, audio, threads, runs):
    from edge.asr.audio import SAMPLE_RATE, load_audio
    from edge.asr.recognizer import Recognizer
    from edge.platform import cpu_model

    clips = [load_audio(a)[0] for a in audio]
    seconds = sum(len(c) for c in clips) / SAMPLE_RATE
    recs = {label: Recognizer(tvm_dirs[int8] if backend == "tvm" else model, backend, threads=threads, int8=int8)
            for label, backend, int8 in RUNTIMES}
    results = {}
    for mode in ("offline", "streaming"):
        runs_of = {label: (rec.transcribe if mode == "offline" else rec.transcribe_streaming) for label, rec in recs.items()}
        texts = {label: [run(c).text for c in clips] for label, run in runs_of.items()}  # warm-up
        best = {label: [] for label in runs_of}
        for _ in range(runs):  # round robin: a slow spell of this shared host hits every runtime alike
            for label, run in runs_of.items():
                t0 = time.perf_counter()
                for c in clips:
                    run(c)
                best[label].append(time.perf_counter() - t0)
        for label in runs_of:
            results[(mode, label)] = {"seconds": min(best[label]), "rtf": min(best[label]) / seconds, "texts": texts[label]}
    lines = [f"{len(clips)} samples ({seconds:.1f} s of audio), best of {runs} runs after 1 warm-up, {threads} thread(s), "
             f"{cpu_model()}", "", "| mode | runtime | RTF | time vs onnxruntime fp32 | same text as onnxruntime fp32 |",
             "|---|---|---|---|---|"]
    for (mode, label), r in results.items():
        base = results[(mode, "onnxruntime fp32")]
        same = sum(a == b for a, b in zip(r["texts"], base["texts"]))
        lines.append(f"| {mode} | {label} | {r['rtf']:.4f} | {r['seconds'] / base['seconds']:.2f} | {same}/{len(clips)} |")
    return lines, {f"{m}/{l}": r for (m, l), r in results.items()}


def arm_table(model, arm_dirs, wav):
    """Instructions of the decode alone: `paraedge profile` runs inside the emulated board with the
    instruction-count plugin (tools/emu/arm_profile.py), whose markers bracket the measured run, so
    imports, model loading and the warm-up never count; the frontend's share is subtracted."""
    from paraedge_tools.emu.arm_profile import emulated_profile

    results, texts = {}, {}
    for mode in ("offline", "streaming"):
        streaming = mode == "streaming"
        ort_rep = emulated_profile(model, [wav], ["onnxruntime", "onnxruntime:int8"], streaming=streaming)
        ort, seconds = ort_rep["backends"], ort_rep["audio_s"]
        tvm = [emulated_profile(arm_dirs[q], [wav], ["tvm"], streaming=streaming)["backends"]["tvm"] for q in (False, True)]
        for label, e in (("onnxruntime fp32", ort["onnxruntime"]), ("onnxruntime INT8", ort["onnxruntime:int8"]),
                         ("TVM fp32", tvm[0]), ("TVM INT8", tvm[1])):
            if "skipped" in e:
                raise RuntimeError(f"{label} did not run on the emulated board: {e['skipped']}")
            st = e["stages_minsns_per_audio_s"]
            frontend = sum(st.get(k, 0.0) for k in ("fbank", "lfr_cmvn", "frontend"))
            results[(mode, label)] = (e["minsns_per_audio_s"] - frontend) * 1e6
            texts[(mode, label)] = e["text"]
            print(f"arm {mode} {label}: {results[(mode, label)] / 1e6:.1f} M instructions / s of audio", file=sys.stderr)
    lines = [f"{os.path.basename(wav)} ({seconds:.2f} s), qemu-aarch64 -cpu cortex-a76, 1 thread; decode only "
             "(counted between the profiler's markers, frontend subtracted)", "",
             "| mode | runtime | M instructions / s audio | vs onnxruntime fp32 | same text as onnxruntime fp32 |",
             "|---|---|---|---|---|"]
    for (mode, label), n in results.items():
        same = "yes" if texts[(mode, label)] == texts[(mode, "onnxruntime fp32")] else "no"
        lines.append(f"| {mode} | {label} | {n / 1e6:.1f} | {n / results[(mode, 'onnxruntime fp32')]:.2f} | {same} |")
    return lines, {f"{m}/{l}": n for (m, l), n in results.items()}


def main(argv=None) -> int:
    from paraedge_tools.compiler.compile import parse_buckets

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "demo"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--arm", action="store_true", help="also count aarch64 instructions on the emulated board")
    ap.add_argument("--no-x86", action="store_true", help="skip the x86 wall-time table")
    ap.add_argument("--arm-wav", help="clip for the emulated board (default: the demo's shortest sample)")
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "bench", "tvm"))
    ap.add_argument("--buckets", type=parse_buckets, default=None,
                    help="offline frame buckets to compile (default: paraedge compile's); the runtime picks the "
                         "smallest that fits, so listing only those the clips use measures the same kernels sooner")
    ap.add_argument("--recompile", nargs="?", const=True, default=False,
                    help="compile the bundles (or only the one for the named board) even if --out has them")
    args = ap.parse_args(argv)
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    os.makedirs(args.out, exist_ok=True)
    audio = sorted(glob.glob(os.path.join(args.model, "samples", "*.wav")))
    model = fp32_model(args.model, args.out)
    report = {}
    if not args.no_x86:
        tvm_dirs = {q: bundle(model, "x86-host", args.out, args.recompile, args.buckets, q) for q in (False, True)}
        lines, report = x86_table(model, tvm_dirs, audio, args.threads, args.runs)
        print("\n".join(lines))
    if args.arm:
        arm_dirs = {q: bundle(model, "qemu-a76", args.out, args.recompile, args.buckets, q) for q in (False, True)}
        wav = args.arm_wav or min(audio, key=os.path.getsize)
        arm_lines, arm = arm_table(model, arm_dirs, wav)
        print()
        print("\n".join(arm_lines))
        report["arm_instructions_per_audio_second"] = arm
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f, indent=1, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
