"""TVM bundles against onnxruntime, measured side by side in one run (same model, same thread count).

- Bundles: size on disk (model.so, params.npz, everything) and compile time, per board, for the
  shipped demo model and the anchor-size model (`python -m paraedge_tools.recipe.make_model
  DIR --preset anchor --streaming`: FunASR layout, 15.75 M parameters, seeded random weights).
- x86, this host, 1 thread: wall time of the whole decode from samples to text (frontend
  included), TVM INT8 against onnxruntime INT8, offline and streaming, at lengths that fell
  between the old shape buckets (167 and 245 LFR frames: 10.0 and 14.7 s); the runs go round
  robin over the runtimes, so a slow spell of a shared host hits them alike.
- Cold start: seconds to load the model (Recognizer construction) in a fresh process, best of 3.
- `--arm`: the same decode on the emulated Cortex-A76 (qemu-aarch64 -cpu cortex-a76, 1 thread):
  aarch64 instructions per second of audio, counted between the profiler's markers
  (tools/emu/arm_profile.py), frontend included, on the 167-frame clip.

    python bench/tvm_bench.py --arm --write-readme   # tables into README.md (between tvm-bench markers)
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # (this file is not named tvm.py: bench/ is sys.path[0] and would shadow the tvm package)

DEMO = os.path.join(ROOT, "models", "demo")
LENGTHS = (167, 245)  # LFR frames: between the old buckets (160/192 and 192/256)
SIZE_BOARDS = ("raspberry-pi-5", "raspberry-pi-4", "snapdragon-rb5", "qemu-a76", "x86-host", "x86-avx512",
               "jetson-orin-nano")


def x86_board() -> str:
    """The x86 profile the x86 rows run: x86-avx512 (`vpdpbusd`) where this CPU has AVX-512 VNNI,
    else x86-host (AVX2 `vpmaddwd`). Measured on this host's AMD EPYC (anchor, whole decode,
    1 thread): VNNI 0.77-0.80x onnxruntime INT8 offline, 0.59-0.61x streaming, against AVX2's
    ~1.2x / 0.9x; the INT8 encoder 28 against 44 ms at 168 frames."""
    from edge.boards import BoardError, check_runs_here, load_board

    try:
        check_runs_here(load_board("x86-avx512"))
        return "x86-avx512"
    except BoardError:
        return "x86-host"


BEGIN, END = "<!-- tvm-bench:begin -->", "<!-- tvm-bench:end -->"


def anchor_model(out: str) -> str:
    """The anchor-size model, built once into `out` (seeded: the same weights every time)."""
    path = os.path.join(out, "anchor")
    if not os.path.isfile(os.path.join(path, "model_quant.onnx")):
        subprocess.run([sys.executable, "-m", "paraedge_tools.recipe.make_model", path, "--preset", "anchor",
                        "--streaming"], check=True, cwd=ROOT)
    return path


def compile_timed(model: str, board: str, out: str) -> dict:
    """Compile (INT8 on CPU boards, fp16 on CUDA ones) in a fresh process: seconds and sizes."""
    from edge.boards import load_board

    cuda = load_board(board).cuda
    env = {k: v for k, v in os.environ.items() if k != "TVM_USE_RUNTIME_LIB"}  # (set once this bench loaded a bundle)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "edge", "compile", "--board", board, "--model", model, "-o", out,
                        *([] if cuda else ["--int8"])], capture_output=True, text=True, cwd=ROOT, env=env)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"compile {board}: {r.stderr.strip().splitlines()[-1:]}")
    m = json.load(open(os.path.join(out, "manifest.json")))
    sizes = {f: os.path.getsize(os.path.join(out, f)) / 1e6 for f in m["files"]}
    return {"board": board, "int8": not cuda, "seconds": seconds, "functions": len(m["functions"]),
            "model_so_mb": sizes["model.so"], "params_mb": sizes["params.npz"],
            "total_mb": sum(sizes.values()) + os.path.getsize(os.path.join(out, "manifest.json")) / 1e6}


def clip(frames: int):
    """The demo samples tiled into a clip of exactly `frames` LFR frames (60 ms each)."""
    import numpy as np

    from edge.asr.audio import load_audio

    speech = np.concatenate([load_audio(w)[0] for w in sorted(glob.glob(os.path.join(DEMO, "samples", "*.wav")))])
    n = (6 * frames - 1) * 160 + 400  # fbank frames 6 * frames - 1..6 * frames -> LFR ceil(/6) = frames
    return np.tile(speech, n // len(speech) + 1)[:n].astype(np.float32)


def x86_table(model: str, bundle: str, threads: int, runs: int):
    from edge.asr.recognizer import Recognizer

    recs = {"onnxruntime INT8": Recognizer(model, "onnxruntime", threads=threads, int8=True),
            "TVM INT8": Recognizer(bundle, "tvm", threads=threads)}
    rows = {}
    for frames in LENGTHS:
        x = clip(frames)
        assert recs["TVM INT8"].prepare(recs["TVM INT8"].frontend(x)).shape[0] == frames
        for mode in ("offline", "streaming"):
            fns = {k: (r.transcribe if mode == "offline" else r.transcribe_streaming) for k, r in recs.items()}
            texts = {k: f(x).text for k, f in fns.items()}  # warm-up
            best = {k: float("inf") for k in fns}
            for _ in range(runs):
                for k, f in fns.items():
                    t0 = time.perf_counter()
                    f(x)
                    best[k] = min(best[k], time.perf_counter() - t0)
            rows[(frames, mode)] = {"seconds": best, "audio_s": len(x) / 16000,
                                    "same_text": texts["TVM INT8"] == texts["onnxruntime INT8"]}
    return rows


COLD = """
import sys, time
from edge.asr.recognizer import Recognizer
from edge.backends.tvm import import_tvm_runtime
import onnxruntime
if sys.argv[2] == "tvm":
    import_tvm_runtime(1)
t0 = time.perf_counter()
Recognizer(sys.argv[1], sys.argv[2], threads=1, int8=True)
print(time.perf_counter() - t0)
"""


def cold_start(model: str, bundle: str) -> dict:
    """Seconds to construct the Recognizer in a fresh process (imports done before), best of 3."""
    out = {}
    for label, path, backend in (("onnxruntime INT8", model, "onnxruntime"), ("TVM INT8", bundle, "tvm")):
        times = [float(subprocess.run([sys.executable, "-c", COLD, path, backend], capture_output=True, text=True,
                                      cwd=ROOT, check=True).stdout.split()[-1]) for _ in range(3)]
        out[label] = min(times)
    return out


def arm_rows(model: str, bundle: str, wav: str) -> dict:
    from paraedge_tools.emu.arm_profile import emulated_profile

    rows = {}
    for mode in ("offline", "streaming"):
        streaming = mode == "streaming"
        ort = emulated_profile(model, [wav], ["onnxruntime:int8"], streaming=streaming)["backends"]["onnxruntime:int8"]
        tvm = emulated_profile(bundle, [wav], ["tvm"], streaming=streaming)["backends"]["tvm"]
        for label, e in (("onnxruntime INT8", ort), ("TVM INT8", tvm)):
            if "skipped" in e:
                raise RuntimeError(f"{label} did not run on the emulated board: {e['skipped']}")
        rows[mode] = {"onnxruntime INT8": ort["minsns_per_audio_s"], "TVM INT8": tvm["minsns_per_audio_s"],
                      "same_text": ort["text"] == tvm["text"]}
        print(f"arm {mode}: ORT {ort['minsns_per_audio_s']:.1f} TVM {tvm['minsns_per_audio_s']:.1f} M/s", file=sys.stderr)
    return rows


def markdown(report: dict) -> str:
    from edge.platform import cpu_model

    lines = ["Bundles (`paraedge compile`, INT8 on CPU boards, fp16 on CUDA ones; this 2-core host, "
             "compile time in a fresh process; size: every file of the bundle):", "",
             "| model | board | functions | model.so MB | params.npz MB | bundle MB | compile s |", "|---|---|---|---|---|---|---|"]
    for name, rows in report["bundles"].items():
        for r in rows:
            lines.append(f"| {name} | {r['board']}{'' if r['int8'] else ' (fp16)'} | {r['functions']} | "
                         f"{r['model_so_mb']:.2f} | {r['params_mb']:.2f} | {r['total_mb']:.1f} | {r['seconds']:.0f} |")
    for name, x86 in report["x86"].items():
        lines += ["", f"x86 wall time, {name} model, whole decode from samples to text, 1 thread, best of "
                  f"{report['runs']} ({cpu_model()}; the TVM bundle for {report['x86_board']}):", "",
                  "| LFR frames | mode | onnxruntime INT8 RTF | TVM INT8 RTF | TVM / onnxruntime | same text |",
                  "|---|---|---|---|---|---|"]
        for key, r in x86.items():
            frames, mode = key.split("/")
            ort, tvm = r["seconds"]["onnxruntime INT8"], r["seconds"]["TVM INT8"]
            lines.append(f"| {frames} | {mode} | {ort / r['audio_s']:.4f} | {tvm / r['audio_s']:.4f} | "
                         f"{tvm / ort:.2f} | {'yes' if r['same_text'] else 'no'} |")
    lines += ["", "Cold start (Recognizer construction in a fresh process, imports done, best of 3):", "",
              "| model | onnxruntime INT8 s | TVM INT8 s |", "|---|---|---|"]
    for name, c in report["cold"].items():
        lines.append(f"| {name} | {c['onnxruntime INT8']:.3f} | {c['TVM INT8']:.3f} |")
    for name, arm in report.get("arm", {}).items():
        lines += ["", f"Emulated Cortex-A76, {name} model, {LENGTHS[0]}-frame clip, whole decode (frontend included), "
                  "M aarch64 instructions per audio second:", "",
                  "| mode | onnxruntime INT8 | TVM INT8 | TVM / onnxruntime | same text |", "|---|---|---|---|---|"]
        for mode, r in arm.items():
            ort, tvm = r["onnxruntime INT8"], r["TVM INT8"]
            lines.append(f"| {mode} | {ort:.1f} | {tvm:.1f} | {tvm / ort:.3f} | {'yes' if r['same_text'] else 'no'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--arm", action="store_true", help="also count aarch64 instructions on the emulated board")
    ap.add_argument("--models", default="demo,anchor", help="demo, anchor or both (default)")
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "bench", "tvm"))
    ap.add_argument("--write-readme", action="store_true", help="write the tables into README.md")
    args = ap.parse_args(argv)
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    os.makedirs(args.out, exist_ok=True)
    models = {"demo": DEMO, "anchor": None}
    x86 = x86_board()
    report = {"runs": args.runs, "threads": args.threads, "x86_board": x86, "bundles": {}, "x86": {}, "cold": {},
              "arm": {}}
    saved = os.path.join(args.out, "report.json")
    if os.path.isfile(saved):  # the other model's rows from an earlier run (--models measures one at a time)
        old = json.load(open(saved))
        if (old.get("runs"), old.get("threads"), old.get("x86_board")) == (args.runs, args.threads, x86):
            report.update({k: v for k, v in old.items() if isinstance(v, dict)})
    for name in args.models.split(","):
        model = models[name] or anchor_model(args.out)
        boards = SIZE_BOARDS if name == "demo" else (x86, "qemu-a76")
        dirs = {b: os.path.join(args.out, f"{name}-{b}") for b in boards}
        for part in ("bundles", "x86", "cold") + (("arm",) if args.arm else ()):
            report[part].pop(name, None)
        report["bundles"][name] = [compile_timed(model, b, d) for b, d in dirs.items()]
        print(json.dumps(report["bundles"][name]), file=sys.stderr)
        rows = x86_table(model, dirs[x86], args.threads, args.runs)
        report["x86"][name] = {f"{f}/{m}": r for (f, m), r in rows.items()}
        report["cold"][name] = cold_start(model, dirs[x86])
        if args.arm:
            from edge.asr.audio import write_wav

            wav = os.path.join(args.out, f"clip{LENGTHS[0]}.wav")
            write_wav(wav, clip(LENGTHS[0]))
            report["arm"][name] = arm_rows(model, dirs["qemu-a76"], wav)
        with open(saved, "w") as f:  # after each model: a failure later keeps what was measured
            json.dump(report, f, indent=1, ensure_ascii=False)
    text = markdown(report)
    from paraedge_tools.docblock import publish

    publish(text, os.path.join(ROOT, "README.md") if args.write_readme else None, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
