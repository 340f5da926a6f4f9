"""Accuracy of a model dir on corpus manifests: CER and whole-command accuracy, offline and streaming,
fp32 (numpy reference) and INT8 (onnxruntime). Produces the model card's table.

`python -m paraedge_tools.recipe.evaluate --model models/demo --corpus out/corpus [--write-card] [--chunk-size 0,10,5]`
`python -m paraedge_tools.recipe.evaluate --quick --model A [--model B ...] --corpus out/corpus`

`--quick` compares training runs in about 50 s a model (1,959 clean utterances, 2 cores): fp32 offline only, every clean set, and
for each the whole-command accuracy, the decodes with too many / too few tokens, and the trailing
silence counts of the full table. It writes no card.

Streaming uses the model's default chunk size (config.yaml `chunk_size`, else [0, 10, 5]) unless
--chunk-size says otherwise. The card holds one table per streaming chunk size measured, each
between `<!-- results[left,chunk,right]:begin/end -->` markers. Its last column decodes each command
again, fp32, with LEAD_S more seconds of silence or noise before it: the streaming final of a stream
opened early (espeak at 5 dB, streaming = offline without it / with it: the stage-5 weights 98.4 /
91.3 %, the stage-6 weights, trained with shifted positions and lead pads, 98.6 / 96.2 %, the
stage-7 weights 99.0 / 97.6 %).

The report (`--json`) also lists, per set, the fp32 offline misses and the decodes the trailing
second lengthened (render, voice, text, what was heard): what the card's prose cites, so new
weights need no second decoding pass to describe their errors.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def _chars(s: str) -> list[str]:
    return [c for c in s if not c.isspace()]


def edit_distance(a, b) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def cer(ref: str, hyp: str) -> tuple[int, int]:
    """(character edits, reference characters), spaces ignored."""
    r, h = _chars(ref), _chars(hyp)
    return edit_distance(r, h), len(r)


SETS = ("test_clean", "test_snr20", "test_snr10", "test_snr5")
SET_LABEL = {"test_clean": "held-out voices, clean", "test_snr20": "held-out, car noise 20 dB",
             "test_snr10": "held-out, car noise 10 dB", "test_snr5": "held-out, car noise 5 dB"}
TRAILING_S = 1.0  # audio appended after each command to catch tokens decoded past its end
# A stream opened by the wake word or a VAD hears more than the renders' 0-0.4 s before the command
# starts: the card's last column puts this much more silence or noise first (bench/lead_noise.py).
LEAD_S = 0.6


def corpus_sets(corpus: str) -> list[str]:
    """The espeak held-out sets (SETS), then every other family's `test_<family>_<clean|snrN>` set."""
    import glob

    names = [os.path.basename(p)[: -len(".jsonl")] for p in glob.glob(os.path.join(corpus, "test_*.jsonl"))]
    return [n for n in SETS if n in names] + sorted(n for n in names if n not in SETS)


def chosen_sets(corpus: str, names: str | None = None) -> list[str]:
    """`corpus_sets`, or the comma-separated `names` among them; a ValueError that names the fix."""
    have = corpus_sets(corpus)
    if not have:
        raise ValueError(f"{corpus} holds no test sets; build the corpus with python -m paraedge_tools.recipe.corpus {corpus}")
    if not names:
        return have
    wanted = [s for s in names.split(",") if s]
    unknown = [s for s in wanted if s not in have]
    if unknown:
        raise ValueError(f"{corpus} has no test set {unknown[0]}; it has {', '.join(have)}")
    return wanted


def seconds_list(text: str, most: float) -> list[float]:
    """Comma-separated seconds, each within [0, most] (the benches' --leads and --pauses); a
    ValueError that says which rule failed."""
    try:
        values = [float(v) for v in text.split(",") if v]
    except ValueError:
        raise ValueError(f"expected seconds, comma-separated, got '{text}'") from None
    if not values or not all(0.0 <= v <= most for v in values):  # NaN fails the bound too
        raise ValueError(f"each within [0, {most:g}] seconds")
    return values


def evenly_spaced(rows: list, limit: int | None) -> list:
    """At most `limit` rows, evenly spaced over the set (the daemon benches' --limit; None or 0: all)."""
    if limit and len(rows) > limit:
        return rows[:: len(rows) // limit][:limit]
    return rows


def set_label(name: str) -> str:
    if name in SET_LABEL:
        return SET_LABEL[name]
    family, _, cond = name[len("test_"):].rpartition("_")
    return f"{family}, " + ("clean" if cond == "clean" else f"car noise {cond[3:]} dB")


def with_trailing(x, snr, rng, seconds: float = TRAILING_S, before: float = 0.0):
    """x followed by `seconds` (and preceded by `before` seconds) of silence (clean) or of car noise at
    the level already mixed into x (noisy sets: the file is speech + noise at `snr`, so noise power =
    P_file / (1 + 10^(snr/10)))."""
    import numpy as np

    from edge.asr.audio import SAMPLE_RATE
    from paraedge_tools.recipe.augment import car_noise

    level = None if snr is None else np.sqrt(float(np.mean(x**2)) / (1 + 10 ** (snr / 10.0)))

    def pad(s):
        n = int(s * SAMPLE_RATE)
        return np.zeros(n, np.float32) if level is None or n == 0 else car_noise(n, rng) * level

    tail = pad(seconds)  # drawn first: the evaluator's trailing noise stays what it was without `before`
    return np.concatenate([pad(before), x, tail]).astype(np.float32)


def spurious_trailing(rec, rows, plain: list[list[int]], lengthened: list | None = None) -> tuple[int, int]:
    """Utterances that decode (fp32, offline) to more tokens than the command has once TRAILING_S of
    silence or noise follows it, and of those, the ones the silence or noise itself lengthened (more
    tokens than `plain`, the same utterance decoded without it). The first count also holds decodes
    that were too long before anything was added: on a voice it never heard the model can count one
    word too many inside the speech (the shipped weights on Kokoro's held-out voices: 7 over the
    command, none of them lengthened by the silence). A decode the silence lengthens back to the
    command's length (a last word that needed the pause to fire) is not counted. `lengthened`: a list
    that gets each lengthened row (`miss`, the decode with the added second as its `hyp`)."""
    import numpy as np

    from edge.asr.audio import load_audio
    from paraedge_tools.recipe.train import tokenize

    over = added = 0
    for k, (r, ids) in enumerate(zip(rows, plain)):
        x = with_trailing(load_audio(r["path"])[0], r.get("snr"), np.random.default_rng(k))
        res = rec.transcribe(x)
        n, want = len(res.token_ids), len(tokenize(r["text"], r["lang"]))
        longer = n > want and n > len(ids)
        over += int(n > want)
        added += int(longer)
        if longer and lengthened is not None:
            lengthened.append(miss(r, res.text))
    return over, added


def miss(row: dict, hyp: str) -> dict:
    """One decode the card's prose may cite: which render (file, voice), what was said, what was heard."""
    return {"path": os.path.basename(row["path"]), "voice": row.get("voice"), "text": row["text"], "hyp": hyp}


def lead_decodes(rec, rows, lead: float, chunk_size) -> list[tuple]:
    """(offline, streaming) Results of each row with `lead` more seconds of silence or the set's car
    noise before the command and nothing after it (`with_trailing`, seeded by the row's place)."""
    import numpy as np

    from edge.asr.audio import load_audio

    out = []
    for k, r in enumerate(rows):
        x = with_trailing(load_audio(r["path"])[0], r.get("snr"), np.random.default_rng(k), 0.0, lead)
        out.append((rec.transcribe(x), rec.transcribe_streaming(x, chunk_size=chunk_size)))
    return out


def decode_results(rec, rows, streaming: bool, chunk_size=None, snr: float | None = None) -> list:
    """Each manifest row decoded (a Result: tokens, log-posteriors, the grammar's reading when the
    recognizer has one); `snr`: car noise at that SNR added first, seeded by the row's place."""
    import numpy as np

    from edge.asr.audio import load_audio
    from paraedge_tools.recipe.augment import add_noise

    out = []
    for k, r in enumerate(rows):
        x = load_audio(r["path"])[0]
        if snr is not None:
            x = add_noise(x, snr, "car", np.random.default_rng(k)).astype(np.float32)
        out.append(rec.transcribe_streaming(x, chunk_size=chunk_size) if streaming else rec.transcribe(x))
    return out


def decode_all(rec, rows, streaming: bool, chunk_size=None) -> list[list[int]]:
    return [res.token_ids for res in decode_results(rec, rows, streaming, chunk_size)]


def score(rec, rows, hyps) -> dict:
    edits = chars = correct = 0
    for r, ids in zip(rows, hyps):
        text = rec.ids_to_result(ids).text
        e, n = cer(r["text"], text)
        edits, chars, correct = edits + e, chars + n, correct + int(text == r["text"])
    return {"cer": edits / max(chars, 1), "acc": correct / max(len(rows), 1), "n": len(rows)}


def token_agreement(a: list[list[int]], b: list[list[int]]) -> float:
    errs = sum(edit_distance(x, y) for x, y in zip(a, b))
    return 1.0 - errs / max(sum(len(x) for x in a), 1)


def evaluate(model: str, corpus: str, limit: int | None = None, chunk_size=None) -> dict:
    from edge.asr.recognizer import Recognizer
    from paraedge_tools.recipe.corpus import read_manifest

    recs = {"fp32": Recognizer(model, "ref"), "int8": Recognizer(model, "onnxruntime", int8=True, threads=1)}
    chunk_size = tuple(chunk_size or recs["fp32"].config.chunk_size)
    report = {"model": model, "chunk_size": list(chunk_size), "sets": {}}
    t0 = time.time()
    for name in corpus_sets(corpus):
        path = os.path.join(corpus, f"{name}.jsonl")
        if not os.path.exists(path):
            continue
        rows = read_manifest(path)
        if limit:
            rows = rows[:: max(1, len(rows) // limit)]
        res, hyps = {}, {}
        for prec, rec in recs.items():
            for mode in ("offline", "streaming"):
                hyps[(prec, mode)] = decode_all(rec, rows, mode == "streaming", chunk_size)
                res[f"{prec}_{mode}"] = score(rec, rows, hyps[(prec, mode)])
        off, st = hyps[("fp32", "offline")], hyps[("fp32", "streaming")]
        res["int8_fp32_token_agreement"] = token_agreement(off, hyps[("int8", "offline")])
        res["streaming_equals_offline"] = sum(a == b for a, b in zip(off, st)) / max(len(rows), 1)
        texts = [recs["fp32"].ids_to_result(ids).text for ids in off]
        dropped = other = 0
        for r, a, b, ta in zip(rows, off, st, texts):  # offline got the last character but streaming did not
            tb = recs["fp32"].ids_to_result(b).text
            if ta and ta[-1] == r["text"][-1] and (not tb or tb[-1] != r["text"][-1]):
                # dropped: streaming lost the end (fewer tokens); other: it replaced or added to it
                if len(b) < len(a):
                    dropped += 1
                else:
                    other += 1
        res["streaming_last_char_dropped"] = dropped
        res["streaming_last_char_other"] = other
        res["lengthened"] = []
        res["spurious_trailing"], res["trailing_added"] = spurious_trailing(recs["fp32"], rows, off, res["lengthened"])
        res["misses"] = [miss(r, t) for r, t in zip(rows, texts) if t != r["text"]]  # fp32 offline, as `score` counts
        lead = lead_decodes(recs["fp32"], rows, LEAD_S, chunk_size)
        res["streaming_equals_offline_lead"] = sum(a.token_ids == b.token_ids for a, b in lead) / max(len(rows), 1)
        report["sets"][name] = res
    report["seconds"] = time.time() - t0
    return report


def quick(models: list[str], corpus: str) -> dict:
    """fp32 offline on every clean set, per model: accuracy, token-count errors, trailing silence."""
    from edge.asr.recognizer import Recognizer
    from paraedge_tools.recipe.corpus import read_manifest
    from paraedge_tools.recipe.train import tokenize

    sets = [n for n in corpus_sets(corpus) if n.endswith("_clean")]  # test_clean, test_<family>_clean
    if not sets:
        raise ValueError(f"{corpus}: no test_*clean.jsonl manifests; build it with "
                         f"python -m paraedge_tools.recipe.corpus {corpus}")
    report = {}
    for model in models:
        rec = Recognizer(model, "ref")
        report[model] = {}
        for name in sets:
            rows = read_manifest(os.path.join(corpus, f"{name}.jsonl"))
            hyps = decode_all(rec, rows, False)
            want = [len(tokenize(r["text"], r["lang"])) for r in rows]
            res = score(rec, rows, hyps)
            res["too_many"] = sum(len(h) > w for h, w in zip(hyps, want))
            res["too_few"] = sum(len(h) < w for h, w in zip(hyps, want))
            res["spurious_trailing"], res["trailing_added"] = spurious_trailing(rec, rows, hyps)
            report[model][name] = res
    return report


def quick_table(report: dict) -> str:
    """One row per clean set, one column per model: acc % (too many / too few tokens; with more
    silence: over the command / lengthened by it)."""
    models = list(report)
    lines = ["| clean set | utts | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    sets = list(report[models[0]])
    for name in sets + ["total"]:
        cells = []
        for m in models:
            rs = list(report[m].values()) if name == "total" else [report[m][name]]
            n = sum(r["n"] for r in rs)
            acc = sum(r["acc"] * r["n"] for r in rs) / max(n, 1)
            cells.append(f"{100 * acc:.1f} % ({sum(r['too_many'] for r in rs)}/{sum(r['too_few'] for r in rs)}; "
                         f"{sum(r['spurious_trailing'] for r in rs)}/{sum(r['trailing_added'] for r in rs)})")
        label = "all clean sets" if name == "total" else set_label(name)
        lines.append(f"| {label} | {n} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("acc (tokens too many / too few; with 1 s more silence: more than the command / lengthened by it)")
    return "\n".join(lines)


def card_table(report: dict) -> str:
    left, chunk, right = report["chunk_size"]
    label = f"{60 * chunk} ms streaming" + (f" (+{60 * left} ms left context)" if left else "")
    lines = [f"| test set | utts | fp32 offline acc / CER | fp32 {label} acc / CER | INT8 offline acc / CER "
             "| INT8 streaming acc / CER | INT8 = fp32 tokens | streaming = offline "
             "| streaming last char dropped / replaced or extended, offline right "
             f"| with {TRAILING_S:g} s more silence or noise: more tokens than the command / of those, lengthened by it "
             f"| streaming = offline, {LEAD_S:g} s more silence or noise first |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["sets"].items():
        def cell(k):
            return f"{100 * r[k]['acc']:.1f} % / {100 * r[k]['cer']:.2f} %"

        lead = f"{100 * r['streaming_equals_offline_lead']:.1f} %" if "streaming_equals_offline_lead" in r else "?"

        lines.append(f"| {set_label(name)} | {r['fp32_offline']['n']} | {cell('fp32_offline')} | "
                     f"{cell('fp32_streaming')} | {cell('int8_offline')} | {cell('int8_streaming')} | "
                     f"{100 * r['int8_fp32_token_agreement']:.2f} % | {100 * r['streaming_equals_offline']:.1f} % | "
                     f"{r['streaming_last_char_dropped']} / {r.get('streaming_last_char_other', '?')} | "
                     f"{r.get('spurious_trailing', '?')} / {r.get('trailing_added', '?')} | {lead} |")
    return "\n".join(lines)


def markers(chunk_size) -> tuple[str, str]:
    """The card's block for one chunk size."""
    key = "[" + ",".join(str(c) for c in chunk_size) + "]"
    return f"<!-- results{key}:begin -->", f"<!-- results{key}:end -->"


def write_card(card_path: str, report: dict) -> None:
    """The report's table into the card between its chunk size's markers (a model dir released
    somewhere new, `release --out out/candidate --evaluate`, gets a card holding the table)."""
    from paraedge_tools.docblock import write_between

    write_between(card_path, *markers(report["chunk_size"]), card_table(report))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", default=None,
                    help="model dir (default models/demo); --quick takes several, side by side")
    ap.add_argument("--corpus", default="out/corpus")
    ap.add_argument("--limit", type=int, default=None, help="utterances per test set (default: all)")
    ap.add_argument("--write-card", action="store_true", help="update the results table in MODEL/README.md")
    ap.add_argument("--json", default=None, help="also write the report here")
    ap.add_argument("--quick", action="store_true",
                    help="fp32 offline on the clean sets only: accuracy, token-count errors, trailing silence")
    ap.add_argument("--chunk-size", default=None,
                    help="streaming [left,chunk,right] in 60 ms frames (default: the model's)")
    args = ap.parse_args(argv)
    models = args.model or ["models/demo"]
    for m in models:
        if not os.path.isfile(os.path.join(m, "config.yaml")):
            ap.error(f"--model {m}: not a model dir (no config.yaml); make one with "
                     "python -m paraedge_tools.recipe.release --train RUN --out DIR")
    if args.quick:
        if args.write_card or args.chunk_size or args.limit:
            ap.error("--quick measures fp32 offline on whole clean sets and writes no card: "
                     "drop --write-card, --chunk-size and --limit")
        try:
            report = quick(models, args.corpus)
        except ValueError as e:
            ap.error(str(e))
        print(quick_table(report))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1)
        return 0
    if len(models) > 1:
        ap.error("one --model at a time, except with --quick")
    args.model = models[0]
    chunk_size = None
    if args.chunk_size is not None:
        from edge.asr.modeldir import check_chunk_size

        try:
            values = [int(c) for c in args.chunk_size.split(",")]
        except ValueError:
            ap.error(f"--chunk-size: expected left,chunk,right integers, got '{args.chunk_size}'")
        try:
            chunk_size = check_chunk_size(values)
        except ValueError as e:
            ap.error(f"--chunk-size: {e}")
    report = evaluate(args.model, args.corpus, args.limit, chunk_size)
    print(card_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.write_card:
        write_card(os.path.join(args.model, "README.md"), report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
