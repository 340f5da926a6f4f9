"""Before building int8 attention products for TVM bundles (issue 16's next lever on the A76), what would
their arithmetic do to the demo model's tokens? The numpy reference backend decodes the held-out test
sets twice: as it is, and with both attention products in int8 as `sdot` tiles would compute them:
- scores: q (already scaled by 1/sqrt(d_k)) per row and k per key, symmetric int8, exact int32 sums;
- context: the softmax output per row, v per channel (a column over the keys), int8 again;
every scale max|x| / 127, round half to even, the softmax itself in float32. Token agreement
(1 - token edits / reference tokens) and whole-command accuracy, offline and streaming.

    python -m paraedge_tools.recipe.corpus out/corpus --families espeak --test-only   # the sets, once
    python bench/int8_attention_numerics.py [--every 2] [--sets test_clean,test_snr5]

Measured (every 2nd utterance of the clean and the 5 dB set, 544 each, ~70 s): token agreement
99.96 % offline clean, 100 % offline 5 dB and streaming; whole-command accuracy 99.1 vs 98.9 %
(offline clean), equal in the other three cells. The probabilities survive a per-row int8 scale.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

F32 = np.float32


def product_int8(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a [.., M, K] x b [.., K, N] as int8 `sdot` tiles would compute it: a per row and b per column
    (ops.quantize_rows_s8 over k), exact int32 sums, then `* s_a * s_b`."""
    from edge.backends import ops

    def rows(x):  # ops.quantize_rows_s8 over the last axis, any leading axes
        q, s = ops.quantize_rows_s8(x.reshape(-1, x.shape[-1]))
        return q.reshape(x.shape).astype(np.int32), s.reshape(*x.shape[:-1], 1)

    qa, sa = rows(a)
    qb, sb = rows(np.swapaxes(b, -1, -2))
    return (qa @ np.swapaxes(qb, -1, -2)).astype(F32) * sa * np.swapaxes(sb, -1, -2)


def main(argv=None) -> int:
    from edge.asr.recognizer import Recognizer
    from edge.backends import ops
    from paraedge_tools.recipe.corpus import read_manifest
    from paraedge_tools.recipe.evaluate import decode_all, score, token_agreement

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "demo"))
    ap.add_argument("--corpus", default=os.path.join(ROOT, "out", "corpus"))
    ap.add_argument("--sets", default="test_clean,test_snr5")
    ap.add_argument("--every", type=int, default=2)
    args = ap.parse_args(argv)
    rec = Recognizer(args.model, "ref")
    reference = ops.attention
    print("| mode | set | utterances | token agreement | whole command: reference / int8 attention |")
    print("|---|---|---|---|---|")
    for streaming in (False, True):
        for name in args.sets.split(","):
            path = os.path.join(args.corpus, f"{name}.jsonl")
            if not os.path.exists(path):
                raise SystemExit(f"{path} not found: python -m paraedge_tools.recipe.corpus {args.corpus} "
                                 "--families espeak --test-only")
            rows = read_manifest(path)[:: args.every]
            base = decode_all(rec, rows, streaming)
            ops.attention = functools.partial(reference, product=product_int8)  # looked up at every call
            try:
                hyp = decode_all(rec, rows, streaming)
            finally:
                ops.attention = reference
            print(f"| {'streaming' if streaming else 'offline'} | {name} | {len(rows)} | "
                  f"{token_agreement(base, hyp) * 100:.2f} % | {score(rec, rows, base)['acc'] * 100:.1f} / "
                  f"{score(rec, rows, hyp)['acc'] * 100:.1f} % |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
