"""Does FunASR's `tail_threshold` decide the words decoded after a command? A sweep on a corpus's test sets.

`python bench/tail_threshold.py --corpus out/corpus8 [--model models/demo] [--tails 0.05,0.1,0.2,0.3,0.45] [--sets a,b]`

CIF appends `tail_threshold` of alpha after the last frame (`edge/asr/cif.py`), so it looks like the
knob for a decode that gains a token when silence follows the command (`tools/recipe/evaluate.py`'s
last column). Each utterance is encoded once, plain and with the evaluator's extra second of
silence or noise (`with_trailing`); CIF and the decoder then run at every tail value (fp32, the
numpy reference, offline). Printed per set: whole commands right (plain / with the second), decodes
with the second longer than the command, of those the ones the second lengthened, and how many
decodes (plain or with the second) differ from the model's own tail value's.

Measured on the shipped demo weights (stop 47, corpus build `out/corpus8`, 0.05-0.45): no decode
changes on espeak's clean set and the eight other families' clean and 10 dB sets (4,020 utterances,
each plain and with the second). The model closes each utterance with a whole token of alpha on its last frame (1.00 in the
four clean decodes the second lengthens), so the tail only decides whether that spike's remainder
fires once more, and that fire decodes as `</s>`. The spurious word is the fire before it: the last
word's leftover alpha mixed with part of the spike (Kokoro "navigate to work": 0.67 of leftover with
the second, decoded "雾"; 0.54 without it, decoded `</s>`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tools")]


def tails_arg(text: str) -> list[float]:
    try:
        tails = [float(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tails takes numbers separated by commas, got {text!r}") from None
    if not tails or any(not 0.0 < t < 1.0 for t in tails):
        raise argparse.ArgumentTypeError(f"--tails must be values between 0 and 1 (0 switches CIF to rounding), got {text!r}")
    return tails


def decode_at(rec, samples, tails) -> dict:
    """Token ids of `samples` at each tail value: one encoder pass, then CIF and the decoder per value."""
    enc, alphas = rec.backend.encode(rec.prepare(rec.frontend(samples)))
    out = {}
    for t in tails:
        embeds = rec.backend.cif_offline(enc, alphas, dataclasses.replace(rec.cif, tail_threshold=t))
        out[t] = [] if embeds.shape[0] < 1 else rec.pick_tokens(rec.backend.decode(enc, embeds)[0], embeds.shape[0])
    return out


def main(argv=None) -> int:
    from edge.asr.audio import load_audio
    from edge.asr.recognizer import Recognizer
    from paraedge_tools.recipe.corpus import read_manifest
    from paraedge_tools.recipe.evaluate import SETS, chosen_sets, set_label, with_trailing
    from paraedge_tools.recipe.train import tokenize

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=os.path.join(ROOT, "out", "corpus8"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "demo"))
    ap.add_argument("--tails", type=tails_arg, default=tails_arg("0.05,0.1,0.2,0.3,0.45"))
    ap.add_argument("--sets", default=None, help="test sets by name, comma-separated (default: all but espeak's)")
    args = ap.parse_args(argv)
    try:
        names = chosen_sets(args.corpus, args.sets)
    except ValueError as exc:
        ap.error(str(exc))
    if not args.sets:  # espeak's four sets are its held-out variants, 4,576 utterances: ask for them by name
        names = [n for n in names if n not in SETS]
    rec = Recognizer(args.model)
    own, tokens = rec.cif.tail_threshold, rec.model.tokens
    tails = sorted(set(args.tails) | {own}) if own > 0 else args.tails
    print(f"{args.model}: tail_threshold {own:g} in its config; fp32 offline, numpy reference\n")
    print("| test set | utts | " + " | ".join(f"tail {t:g}: right plain / +1 s, longer, lengthened" for t in tails)
          + " | decodes that differ from its own tail's |")
    print("|---|---|" + "---|" * len(tails) + "---|")
    for name in names:
        rows = read_manifest(os.path.join(args.corpus, name + ".jsonl"))
        right = {t: [0, 0] for t in tails}
        longer = {t: [0, 0] for t in tails}
        differ = 0
        for k, r in enumerate(rows):
            x = load_audio(r["path"])[0]
            want = tokenize(r["text"], r["lang"])
            plain = decode_at(rec, x, tails)
            trail = decode_at(rec, with_trailing(x, r.get("snr"), np.random.default_rng(k)), tails)
            for t in tails:
                right[t][0] += [tokens[i] for i in plain[t]] == want
                right[t][1] += [tokens[i] for i in trail[t]] == want
                longer[t][0] += len(trail[t]) > len(want)
                longer[t][1] += len(trail[t]) > len(want) and len(trail[t]) > len(plain[t])
            if own > 0:
                differ += any(plain[t] != plain[own] or trail[t] != trail[own] for t in tails)
        cells = " | ".join(f"{right[t][0]} / {right[t][1]}, {longer[t][0]}, {longer[t][1]}" for t in tails)
        print(f"| {set_label(name)} | {len(rows)} | {cells} | {differ if own > 0 else '-'} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
