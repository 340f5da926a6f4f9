"""What the INT8 TVM bundle of the emulated Cortex-A76 decodes, against the fp32 numpy reference, on
the demo model's held-out test sets: the bundle as compiled by default (attention scores in int8,
and the encoder's softmax and context in int8 past 64 frames: the A76 has the dot product and
half-precision arithmetic), with
`--attention float16` and with `--attention float32`, offline and streaming, next to onnxruntime
INT8 on this host. Token agreement (1 - token edits / reference
tokens) and whole-command accuracy.

    python -m paraedge_tools.recipe.corpus out/corpus --families espeak --test-only   # the sets, once
    python bench/arm_int8_agreement.py [--every 16] [--sets test_clean,test_snr5]

Every `--every`-th utterance of each set (emulation runs the float math ~200x slower). Measured
(every 16th of the four sets, 272 utterances, ~12 min on a quiet host): 100 % agreement for
onnxruntime INT8 and the three TVM bundles (int8, float16 and float32 attention), offline and
streaming; whole-command accuracy equal to the reference's in every cell. The commands are 1-3 s,
under the 64 frames from which the encoder's scores run in int8; `--join 3` decodes clips of three
(22 clips a set: int8 attention 98.5 / 98.2 % clean, offline / streaming, and 99.0 / 100 % at
5 dB; float32 attention 98.1 / 98.2 and 99.3 / 99.7 %; onnxruntime INT8 97.3 / 96.4 and 99.7 / 99.0 %).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# guest side: decode the WAVs listed in ARGV[2] with the bundle ARGV[1], offline and streaming
GUEST = """
import json, sys
from edge.asr.audio import load_audio
from edge.asr.recognizer import Recognizer
rec = Recognizer(sys.argv[1], "tvm", int8=True, threads=1)
paths = json.load(open(sys.argv[2]))
xs = [load_audio(p)[0] for p in paths]
print(json.dumps({"offline": [rec.transcribe(x).token_ids for x in xs],
                  "streaming": [rec.transcribe_streaming(x).token_ids for x in xs]}))
"""


def on_board(bundle: str, paths: list[str], work: str) -> dict:
    from paraedge_tools.emu.armroot import build_root, run_python

    with open(os.path.join(work, "paths.json"), "w", encoding="utf-8") as f:
        json.dump(paths, f)
    with open(os.path.join(work, "guest.py"), "w", encoding="utf-8") as f:
        f.write(GUEST)
    r = run_python([os.path.join(work, "guest.py"), bundle, os.path.join(work, "paths.json")], root=build_root(),
                   timeout=None)
    lines = r.stdout.strip().splitlines()
    if r.returncode and not (lines and lines[-1].startswith("{")):
        raise SystemExit(f"emulated decode failed: {r.stderr[-2000:]}")
    if r.returncode:  # (seen under qemu-user with other emulated processes running: a signal at exit)
        print(f"note: the emulated process exited with {r.returncode} after its results", file=sys.stderr)
    return json.loads(lines[-1])


def joined(rows: list[dict], n: int, where: str) -> list[dict]:
    """Clips of n consecutive rows, 0.3 s of silence apart, written under `where` (their text is
    the rows' texts joined: for the token agreement; a whole-clip command accuracy is not scored)."""
    import numpy as np

    from edge.asr.audio import SAMPLE_RATE, load_audio, write_wav

    os.makedirs(where, exist_ok=True)
    gap = np.zeros(int(0.3 * SAMPLE_RATE), np.float32)
    out = []
    for i in range(0, len(rows) - n + 1, n):
        group = rows[i:i + n]
        path = os.path.join(where, f"{i:05d}.wav")
        write_wav(path, np.concatenate([np.concatenate([load_audio(r["path"])[0], gap]) for r in group]))
        out.append({"path": path, "text": " ".join(r["text"] for r in group)})
    return out


def main(argv=None) -> int:
    from edge.asr.recognizer import Recognizer
    from paraedge_tools.compiler.compile import compile_bundle
    from paraedge_tools.recipe.corpus import read_manifest
    from paraedge_tools.recipe.evaluate import decode_all, score, token_agreement

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "demo"))
    ap.add_argument("--corpus", default=os.path.join(ROOT, "out", "corpus"))
    ap.add_argument("--sets", default="test_clean,test_snr5")
    ap.add_argument("--every", type=int, default=16, help="decode every N-th utterance of each set")
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "bench", "arm_int8_agreement"))
    ap.add_argument("--join", type=int, default=1,
                    help="decode clips of N consecutive utterances (0.3 s apart): commands are 1-3 s, below the "
                         "64 frames from which the encoder's attention scores run in int8; 3 make 4-9 s")
    args = ap.parse_args(argv)
    rows = {}
    for name in args.sets.split(","):
        path = os.path.join(args.corpus, f"{name}.jsonl")
        if not os.path.isfile(path):
            raise SystemExit(f"{path}: no such test set; render it with "
                             "`python -m paraedge_tools.recipe.corpus out/corpus --families espeak --test-only`")
        rows[name] = read_manifest(path)[:: max(1, args.every)]
        if args.join > 1:
            rows[name] = joined(rows[name], args.join, os.path.join(args.out, "joined", name))
    bundles = {}
    for attention in ("int8", "float16", "float32"):
        out = os.path.join(args.out, attention)
        compile_bundle(args.model, "qemu-a76", out, int8=True, attention=attention)
        bundles[f"tvm int8, {attention} attention"] = out
    ref = Recognizer(args.model, "ref")
    ort = Recognizer(args.model, "onnxruntime", int8=True, threads=1)
    lines = ["| set | decoder | agreement offline | agreement streaming | commands offline | commands streaming |",
             "|---|---|---|---|---|---|"]
    report = {}
    for name, rs in rows.items():
        hyps = {label: {m: decode_all(rec, rs, m == "streaming") for m in ("offline", "streaming")}
                for label, rec in (("reference fp32", ref), ("onnxruntime int8", ort))}
        with tempfile.TemporaryDirectory() as work:
            for label, bundle in bundles.items():
                hyps[label] = on_board(bundle, [r["path"] for r in rs], work)
        for label, h in hyps.items():
            cells = {m: (token_agreement(hyps["reference fp32"][m], h[m]), score(ref, rs, h[m])["acc"])
                     for m in ("offline", "streaming")}
            report[f"{name}/{label}"] = cells
            lines.append(f"| {name} ({len(rs)}{f' clips of {args.join}' if args.join > 1 else ''}) | {label} | "
                         f"{cells['offline'][0]:.2%} | {cells['streaming'][0]:.2%} | "
                         + ("- | - |" if args.join > 1 else f"{cells['offline'][1]:.1%} | {cells['streaming'][1]:.1%} |"))
    print("\n".join(lines))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
