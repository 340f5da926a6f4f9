"""Where the INT8 pair and the fp32 reference disagree: flips by how close fp32's own top two tokens were.

`python bench/int8_near_ties.py --corpus out/corpus8 [--model models/demo] [--sets a,b]`

Each utterance of the test sets (default: all) is decoded offline by the numpy reference (fp32)
and by onnxruntime on the model's INT8 pair (1 thread). For every CIF position where both decodes
have the same count, fp32's margin is the gap in log-posterior between its best and second-best
token. Printed: positions and INT8 flips per margin bucket, how many flips put `<blank>` or `</s>`
against a word (a fire that mixes a word's end with the utterance's end), and utterances whose
CIF count itself differs (these are counted apart: every later position shifts).

Measured on the shipped demo pair (stop 47, corpus build `out/corpus8`, all 20 sets, 7,452
utterances): 29 decode differently; 5 have another CIF count, 1 of them decoding differently. Of the
38,734 positions where fp32's best token leads by 1 nat or more, INT8 flips none; of the 168 where it
leads by under 0.2, 31 (11 of 34 under 0.05); 9 of the 40 flips are `<blank>` or `</s>` against a word.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tools")]

BUCKETS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, float("inf"))  # upper edges of fp32's top-2 margin, nats


def margins(log_probs: np.ndarray) -> np.ndarray:
    """fp32's best minus second-best log-posterior at each position [N]."""
    top2 = np.sort(log_probs, axis=-1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def main(argv=None) -> int:
    from edge.asr.audio import load_audio
    from edge.asr.recognizer import Recognizer
    from edge.asr.text import SPECIAL
    from paraedge_tools.recipe.corpus import read_manifest
    from paraedge_tools.recipe.evaluate import chosen_sets

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=os.path.join(ROOT, "out", "corpus8"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "demo"))
    ap.add_argument("--sets", default=None, help="test sets by name, comma-separated (default: all)")
    args = ap.parse_args(argv)
    try:
        names = chosen_sets(args.corpus, args.sets)
    except ValueError as exc:
        ap.error(str(exc))
    ref = Recognizer(args.model)
    int8 = Recognizer(args.model, "onnxruntime", int8=True, threads=1)
    tokens = ref.model.tokens
    ends = {i for i, t in enumerate(tokens) if t in SPECIAL}
    positions = np.zeros(len(BUCKETS), int)
    flips = np.zeros(len(BUCKETS), int)
    utts = differ = counts = by_count = at_end = 0
    for name in names:
        for r in read_manifest(os.path.join(args.corpus, name + ".jsonl")):
            x = load_audio(r["path"])[0]
            a, b = ref.transcribe(x), int8.transcribe(x)
            utts += 1
            differ += a.token_ids != b.token_ids
            if a.log_probs.shape != b.log_probs.shape:  # every later position shifts: not comparable
                counts += 1
                by_count += a.token_ids != b.token_ids
                continue
            m = margins(a.log_probs)
            bucket = np.searchsorted(BUCKETS, m, side="left")
            best_a, best_b = a.log_probs.argmax(-1), b.log_probs.argmax(-1)
            flipped = best_a != best_b
            np.add.at(positions, bucket, 1)
            np.add.at(flips, bucket[flipped], 1)
            at_end += int(sum((i in ends) != (j in ends) for i, j in zip(best_a[flipped], best_b[flipped])))
        print(f"{name}: {utts} utterances so far, {differ} decode differently", file=sys.stderr, flush=True)
    print(f"{args.model}: fp32 (numpy reference) against its INT8 pair (onnxruntime, 1 thread), offline\n")
    print(f"{utts} utterances, {differ} decode differently; {counts} have another CIF count (left out below), "
          f"{by_count} of them decoding differently; {at_end} flips put <blank> or </s> against a word\n")
    print("| fp32 top-2 margin (nats) | positions | INT8 flips | flipped |\n|---|---|---|---|")
    lo = 0.0
    for hi, n, f in zip(BUCKETS, positions, flips):
        print(f"| {lo:g}-{hi:g} | {n} | {f} | {100 * f / max(n, 1):.2f} % |")
        lo = hi
    return 0


if __name__ == "__main__":
    sys.exit(main())
