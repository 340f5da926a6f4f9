"""Hotwords, measured: recall of the phrases on speech that has them, and false insertions on speech
that does not, with and without the boost, offline and streaming, on the held-out test sets.

`python -m paraedge_tools.recipe.hotword_eval --model models/demo --corpus out/corpus [--sets test_snr5,test_snr10]`

Each utterance is decoded once (onnxruntime INT8, the daemon's default) and its log-posteriors kept;
the hotword lists at every boost are then applied to the same rows, so the rows differ only by the
boost. Recall: utterances whose reference holds a phrase and whose output does too. False insertion:
an utterance whose reference holds no phrase, whose output gains one with the boost.
"""

from __future__ import annotations

import argparse
import os

from paraedge_tools.recipe.evaluate import SET_LABEL, decode_results

# phrases of the demo vocabulary that noisy speech gets wrong (the model card's 5 dB errors)
DEMO_HOTWORDS = ("充电站", "加油站", "机场", "座椅加热", "氛围灯", "charging station", "windshield", "sunroof")
BOOSTS = (0.5, 1.0, 2.0, 3.0, 4.0)


def contains(text: str, phrase: str) -> bool:
    if phrase.isascii():  # whole words
        return f" {phrase} " in f" {text} "
    return phrase.replace(" ", "") in text.replace(" ", "")


def measure(rec, refs: list[str], log_probs: list, phrases, boost: float | None) -> dict:
    """Recall and false insertions of `phrases` at `boost` (None: plain greedy)."""
    from edge.asr.hotwords import Hotword, Hotwords
    from edge.asr.text import TokenIndex

    vocab = TokenIndex(rec.model.tokens)
    hw = None if boost is None else Hotwords([Hotword(p, vocab.ids(p), boost) for p in phrases],
                                             rec._dropped())
    plain = Hotwords([], rec._dropped())
    with_phrase = hits = clean = inserted = 0
    for ref, lp in zip(refs, log_probs):
        base = rec.ids_to_result(plain.pick(lp)).text
        hyp = base if hw is None else rec.ids_to_result(hw.pick(lp)).text
        have = [p for p in phrases if contains(ref, p)]
        if have:
            with_phrase += 1
            hits += all(contains(hyp, p) for p in have)
        else:
            clean += 1
            inserted += any(contains(hyp, p) and not contains(base, p) for p in phrases)
    return {"recall": hits / max(with_phrase, 1), "with_phrase": with_phrase, "false_insertions": inserted,
            "without_phrase": clean}


def run(model: str, corpus: str, sets, phrases=DEMO_HOTWORDS, boosts=BOOSTS, limit: int | None = None) -> list[str]:
    from edge.asr.recognizer import Recognizer
    from paraedge_tools.recipe.corpus import read_manifest

    rec = Recognizer(model, "onnxruntime", int8=True, threads=1)
    lines = [f"hotwords: {', '.join(phrases)}", "",
             "| set | mode | boost (nats/token) | recall | utterances with a phrase | false insertions | utterances without |",
             "|---|---|---|---|---|---|---|"]
    for spec in sets:
        name, _, snr = spec.partition("@")  # test_clean@0: the clean set with car noise at 0 dB
        rows = read_manifest(os.path.join(corpus, f"{name}.jsonl"))
        rows = rows[:: max(1, len(rows) // limit)] if limit else rows
        refs = [r["text"] for r in rows]
        label = SET_LABEL.get(name, name) if not snr else f"held-out voices, car noise {snr} dB"
        for streaming in (False, True):
            # both results carry every decoder position's log-posteriors (streaming: each step's rows)
            lps = [res.log_probs for res in decode_results(rec, rows, streaming, snr=float(snr) if snr else None)]
            for boost in (None,) + tuple(boosts):
                m = measure(rec, refs, lps, phrases, boost)
                lines.append(f"| {label} | {'streaming' if streaming else 'offline'} | "
                             f"{'none' if boost is None else f'{boost:g}'} | {m['recall']:.3f} | {m['with_phrase']} | "
                             f"{m['false_insertions']} | {m['without_phrase']} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/demo")
    ap.add_argument("--corpus", default="out/corpus")
    ap.add_argument("--sets", default="test_clean@-3,test_clean@0,test_clean",
                    help="corpus sets; NAME@SNR adds car noise at SNR dB to set NAME first")
    ap.add_argument("--limit", type=int, default=None, help="every k-th utterance, about this many per set")
    args = ap.parse_args(argv)
    print("\n".join(run(args.model, args.corpus, args.sets.split(","), limit=args.limit)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
