"""The grammar, measured: intent + slot accuracy on the held-out command sets (clean and car noise),
next to free decoding's whole-command accuracy on the same utterances; rejection of out-of-grammar
speech; and how well the confidence is calibrated. Writes the tables into docs/GRAMMAR.md.

`python -m paraedge_tools.recipe.grammar_eval [--model models/demo] [--grammar models/demo/grammar.yaml]
 [--corpus out/corpus] [--limit N] [--final-pass auto|streaming|offline] [--write-doc]`

- In-grammar: the corpus's held-out voices (`test_clean`, `test_snr20/10/5`); each reference text is
  an expansion of the grammar, which gives its reference intent and slots.
- Out of grammar: `tools/data/non_commands.tsv` (everyday English and Mandarin sentences, near misses
  included), each rendered by all 8 of the corpus's held-out espeak voices (never trained on), at a random
  speed and pitch: 1,040 utterances, 520 in each half.
- The calibration and the threshold are chosen on a dev half (even sentences, even utterances) of
  the decode the daemon's final uses (`model.final_pass`, resolved for the model as the daemon does:
  the two-pass, offline final for the shipped demo model), and everything is reported on the test
  half (odd ones), the other decode included, at that one calibration and threshold (what the
  grammar file ships). The threshold is
  the lowest calibrated confidence, from 0.5 in steps of 0.01, at which the dev half rejects >= 95 %
  of its non-commands while rejecting <= 1 % of every dev command set. The 7-family weights had
  been reported at a plain 0.5 (the equal-cost point of a calibrated probability): 94.6 % of the
  test half's non-commands rejected. Choosing instead the highest threshold that keeps dev
  rejections of commands <= 1 % picked 0.85, 98.1 % of non-commands but 2.4-2.8 % of test-half
  commands rejected (the dev half had promised 1 %): the false-rejection side of the curve is the
  noisy one, so the rule aims at the rejection target and treats 1 % as a bound.
- Decoding is the daemon's: onnxruntime INT8, the final's decode (offline, or streaming with the
  model's chunk size), the grammar matched on the final. The other decode is reported too.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from paraedge_tools.recipe.evaluate import SET_LABEL, decode_results

HERE = os.path.dirname(os.path.abspath(__file__))
NON_COMMANDS = os.path.join(os.path.dirname(HERE), "data", "non_commands.tsv")
SETS = ("test_clean", "test_snr20", "test_snr10", "test_snr5")
VOICES_PER_SENTENCE = 8  # every held-out voice: 520 test-half utterances, the issue's >= 500
BINS = np.linspace(0.0, 1.0, 11)
OOG_TARGET = 0.95  # the out-of-grammar rejection target
FALSE_REJECTION_LIMIT = 0.01  # ... at <= 1 % of commands rejected


def render_non_commands(corpus: str) -> list[dict]:
    """The out-of-grammar set under CORPUS/non_commands (rendered once, then read from the manifest)."""
    from edge.asr.audio import write_wav
    from paraedge_tools.recipe.corpus import HELD_OUT_VOICES, read_manifest, read_phrases, render, write_manifest

    out = os.path.join(corpus, "non_commands")
    manifest = os.path.join(out, "manifest.jsonl")
    phrases = read_phrases(NON_COMMANDS)
    if os.path.exists(manifest):
        rows = read_manifest(manifest)
        if len(rows) == len(phrases) * VOICES_PER_SENTENCE:  # else rendered by an older recipe: again
            return rows
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for k, (lang, text) in enumerate(phrases):
        for v in range(VOICES_PER_SENTENCE):
            voice = HELD_OUT_VOICES[(k + v) % len(HELD_OUT_VOICES)]
            speed, pitch = int(rng.integers(130, 201)), int(rng.integers(35, 66))
            name = f"oog_{k:03d}_{v}.wav"
            write_wav(os.path.join(out, name), render(text, lang, voice, speed, pitch))
            rows.append({"path": name, "text": text, "lang": lang, "voice": voice, "sentence": k,
                         "split": "dev" if k % 2 == 0 else "test"})
    write_manifest(manifest, rows)
    return read_manifest(manifest)


def reference_readings(grammar, tokens) -> dict:
    """Token ids of every expansion -> (intent, slots): what a command's reference text means."""
    return {tuple(ids): (intent, slots) for intent, ids, slots, _ in grammar.expansions}


def fit_calibration(raw: np.ndarray, right: np.ndarray, l2: float = 1e-2) -> tuple[float, float]:
    """Logistic regression of `right` on logit(raw) (Newton steps, a little L2 so separable data stays
    finite): the grammar's calibration (scale, shift)."""
    x = np.log(np.clip(raw, 1e-6, 1 - 1e-6) / (1 - np.clip(raw, 1e-6, 1 - 1e-6)))
    X = np.stack([x, np.ones_like(x)], axis=1)
    w = np.array([1.0, 0.0])
    for _ in range(50):
        p = 1 / (1 + np.exp(-X @ w))
        grad = X.T @ (p - right) + l2 * w * len(x)
        hess = X.T @ (X * (p * (1 - p))[:, None]) + l2 * len(x) * np.eye(2)
        w = w - np.linalg.solve(hess, grad)
    return float(max(w[0], 1e-3)), float(w[1])


def calibrate(raw: np.ndarray, cal: tuple[float, float]) -> np.ndarray:
    r = np.clip(raw, 1e-9, 1 - 1e-9)
    return np.where(raw < 0, -1.0, 1 / (1 + np.exp(-(cal[0] * np.log(r / (1 - r)) + cal[1]))))


def accept_score(m) -> float:
    """What the grammar's threshold is compared with: the utterance confidence; a prefix, no match
    or an edit in a slot's words is never accepted."""
    return m.confidence if m.complete and not m.slot_edits else -1.0


def operating_threshold(commands: list[np.ndarray], oog: np.ndarray, floor: float = 0.5) -> float:
    """The lowest calibrated threshold (floor, floor + 0.01, ...) at which >= OOG_TARGET of the non-commands
    `oog` are rejected and <= FALSE_REJECTION_LIMIT of every command set in `commands` (accept scores, a
    dev half); if none reaches the target, the one rejecting the most non-commands within the limit."""
    best = (-1.0, -floor)
    for t in np.round(np.arange(floor, 1.0, 0.01), 2):
        if max(float(np.mean(c < t)) for c in commands) > FALSE_REJECTION_LIMIT:
            break  # higher thresholds only reject more commands
        rejected = float(np.mean(oog < t))
        if rejected >= OOG_TARGET:
            return float(t)
        best = max(best, (rejected, -float(t)))  # ties: the lower threshold
    return -best[1]


def split_of(i: int) -> str:
    return "dev" if i % 2 == 0 else "test"


def reliability(conf: np.ndarray, correct: np.ndarray) -> tuple[list[str], float]:
    """Markdown rows (confidence bin, utterances, mean confidence, accuracy) and the expected calibration error."""
    rows, ece = [], 0.0
    for lo, hi in zip(BINS[:-1], BINS[1:]):
        inside = (conf >= lo) & ((conf < hi) if hi < 1 else (conf <= hi))
        n = int(inside.sum())
        if not n:
            continue
        mean_c, acc = float(conf[inside].mean()), float(correct[inside].mean())
        ece += n / len(conf) * abs(mean_c - acc)
        rows.append(f"| {lo:.1f}-{hi:.1f} | {n} | {mean_c:.3f} | {acc:.3f} |")
    return rows, ece


def run(model: str, grammar_path: str, corpus: str, limit: int | None = None,
        final_pass: str = "auto") -> tuple[list[str], dict]:
    from edge.asr.recognizer import Recognizer
    from edge.daemon.pipeline import resolve_final_pass
    from paraedge_tools.recipe.corpus import read_manifest

    rec = Recognizer(model, "onnxruntime", int8=True, threads=1, grammar=grammar_path)
    daemon = resolve_final_pass(final_pass, rec)  # the decode the daemon's finals use: fitted on
    g = rec.grammar
    g.calibration = (1.0, 0.0)  # raw confidences here: the calibration is fitted below, on the dev half
    meaning = reference_readings(g, rec.model.tokens)
    oog_rows = render_non_commands(corpus)
    sets = {}
    for name in SETS:
        rows = read_manifest(os.path.join(corpus, f"{name}.jsonl"))
        sets[name] = rows[:: max(1, len(rows) // limit)] if limit else rows
    if limit:
        oog_rows = oog_rows[:: max(1, len(oog_rows) // limit)]
    report = {"model": model, "grammar": grammar_path, "sets": {}, "threshold_in_file": g.threshold,
              "daemon_final_pass": daemon}
    lines = []
    for mode in (daemon, ({"streaming", "offline"} - {daemon}).pop()):
        streaming, fitting = mode == "streaming", mode == daemon
        scored = {}  # set -> (confidence, reading right, free text right, split)
        for name, rows in sets.items():
            results = decode_results(rec, rows, streaming)
            conf, right, free, split, reported = [], [], [], [], []
            for i, (r, res) in enumerate(zip(rows, results)):
                want = meaning.get(g.vocab.ids(r["text"]))
                if want is None:
                    raise SystemExit(f"{grammar_path}: the command {r['text']!r} is no expansion of the grammar")
                m = res.match
                conf.append(accept_score(m))
                reported.append(m.confidence)
                right.append((m.intent, m.slots) == want)
                free.append(res.text == r["text"])
                split.append(split_of(i))
            scored[name] = tuple(map(np.array, (conf, right, free, split, reported)))
        oog = decode_results(rec, oog_rows, streaming)
        oog_conf = np.array([accept_score(res.match) for res in oog])
        oog_split = np.array([r["split"] for r in oog_rows])
        if fitting:  # the daemon's decode: calibration and threshold fitted on its dev half
            # commands read right are 1, everything else (misread commands, every non-command) 0
            dev_x = np.concatenate([c[s == "dev"] for c, _, _, s, _ in scored.values()] + [oog_conf[oog_split == "dev"]])
            dev_y = np.concatenate([r[s == "dev"] for _, r, _, s, _ in scored.values()]
                                   + [np.zeros((oog_split == "dev").sum())]).astype(float)
            cal = fit_calibration(np.clip(dev_x, 0, 1), dev_y)
            dev_commands = [calibrate(c[s == "dev"], cal) for c, _, _, s, _ in scored.values()]
            dev_non_commands = calibrate(oog_conf[oog_split == "dev"], cal)
            threshold = operating_threshold(dev_commands, dev_non_commands)
            dev_fr = max(float(np.mean(c < threshold)) for c in dev_commands)
            dev_oog = float(np.mean(dev_non_commands < threshold))
        scored = {k: (calibrate(c, cal), r, f, sp, calibrate(rep, cal)) for k, (c, r, f, sp, rep) in scored.items()}
        oog_conf = calibrate(oog_conf, cal)
        entry = {"threshold": threshold, "calibration": {"scale": cal[0], "shift": cal[1]}, "sets": {}}
        fitted = "fitted on the dev half" if fitting else f"the {daemon} decode's, as the grammar file ships"
        lines += [f"### {mode} (onnxruntime INT8{', the daemon' if fitting else ''}): calibration scale "
                  f"{cal[0]:.3f}, shift {cal[1]:.3f}, threshold {threshold:g} ({fitted}): accepted at calibrated "
                  f"confidence >= {threshold:g}", "",
                  *([f"The threshold's dev half: {dev_oog:.3f} of non-commands rejected, at most {dev_fr:.3f} of a "
                     "command set.", ""] if fitting else []),
                  "| set (test half) | utterances | intent + slots right | rejected (false rejection) | "
                  "free decoding: whole command right |", "|---|---|---|---|---|"]
        for name, (conf, right, free, split, _) in scored.items():
            t = split == "test"
            accepted_right = right[t] & (conf[t] >= threshold)
            e = {"n": int(t.sum()), "intent_slots": float(accepted_right.mean()),
                 "false_rejection": float((conf[t] < threshold).mean()), "free_text": float(free[t].mean())}
            entry["sets"][name] = e
            lines.append(f"| {SET_LABEL[name]} | {e['n']} | {e['intent_slots']:.3f} | {e['false_rejection']:.3f} | "
                         f"{e['free_text']:.3f} |")
        test_oog = oog_split == "test"
        entry["oog"] = {"n": int(test_oog.sum()), "rejected": float((oog_conf[test_oog] < threshold).mean()),
                        "n_all": len(oog_rows), "rejected_all": float((oog_conf < threshold).mean())}
        lines += ["", f"Out of grammar (everyday sentences, English and Mandarin, near misses included): "
                  f"{entry['oog']['rejected']:.3f} of {entry['oog']['n']} test-half utterances rejected "
                  f"({entry['oog']['rejected_all']:.3f} of all {len(oog_rows)}).", ""]
        # calibration: confidence as the probability that the reading is right (non-commands never are)
        oog_reported = calibrate(np.array([res.match.confidence for res in oog]), cal)
        all_conf = np.concatenate([c[s == "test"] for _, _, _, s, c in scored.values()] + [oog_reported[test_oog]])
        all_right = np.concatenate([r[s == "test"] for _, r, _, s, _ in scored.values()] + [np.zeros(test_oog.sum(), bool)])
        rel, ece = reliability(all_conf, all_right)
        entry["ece"] = ece
        lines += [f"Reliability (test half, commands and non-commands together): ECE {ece:.3f}", "",
                  "| confidence | utterances | mean confidence | reading right |", "|---|---|---|---|"] + rel + [""]
        report["sets"][mode] = entry
    return lines, report


def write_doc(path: str, lines: list[str]) -> None:
    from paraedge_tools.docblock import write_between

    write_between(path, "<!-- grammar-eval:begin -->", "<!-- grammar-eval:end -->", "\n".join(lines),
                  heading="## Measured on the demo model")


def write_calibration(grammar_path: str, entry: dict) -> None:
    """Put the fitted calibration and the chosen threshold into the grammar file (its `threshold:` line's
    value, and one `calibration:` line after it)."""
    import re

    text = open(grammar_path, encoding="utf-8").read()
    value = f"threshold: {entry['threshold']:g}"
    m = re.search(r"^threshold:[ \t]*[^ \t#\n]+([ \t]*)(#?)", text, re.M)
    if m:  # the new value; a comment after it stays in its column
        pad = max(len(m.group(0)) - len(m.group(2)) - len(value), 1 if m.group(2) else 0)
        text = text[: m.start()] + value + " " * pad + text[m.end() - len(m.group(2)) :]
    else:  # after the version line, else first
        v = re.search(r"^version:.*\n", text, re.M)
        at = v.end() if v else 0
        text = text[:at] + value + "\n" + text[at:]
    cal = entry["calibration"]
    line = f"calibration: {{scale: {cal['scale']:.4f}, shift: {cal['shift']:.4f}}}   # fitted by grammar_eval.py\n"
    if re.search(r"^calibration:.*\n", text, re.M):
        text = re.sub(r"^calibration:.*\n", line, text, count=1, flags=re.M)
    else:
        text = re.sub(r"^(threshold:.*\n)", lambda m: m.group(1) + line, text, count=1, flags=re.M)
    with open(grammar_path, "w", encoding="utf-8") as f:
        f.write(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/demo")
    ap.add_argument("--grammar", default="models/demo/grammar.yaml")
    ap.add_argument("--corpus", default="out/corpus")
    ap.add_argument("--limit", type=int, default=None, help="about this many utterances per set")
    ap.add_argument("--json", default=None, help="also write the report here")
    ap.add_argument("--write-doc", action="store_true", help="put the tables into docs/GRAMMAR.md")
    ap.add_argument("--write-calibration", action="store_true",
                    help="put the daemon's decode's calibration and threshold into the grammar file")
    ap.add_argument("--final-pass", default="auto", choices=("auto", "streaming", "offline"),
                    help="the daemon's model.final_pass: which decode the calibration is fitted on (default auto, "
                         "as the daemon resolves it)")
    args = ap.parse_args(argv)
    lines, report = run(args.model, args.grammar, args.corpus, args.limit, args.final_pass)
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
    if args.write_calibration:
        write_calibration(args.grammar, report["sets"][report["daemon_final_pass"]])
    if args.write_doc:
        write_doc(os.path.join(os.path.dirname(os.path.dirname(HERE)), "docs", "GRAMMAR.md"), lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
