"""Leave-one-synthesizer-out: how the recipe does on a synthesizer family it never trained on.

`python -m paraedge_tools.recipe.loso --corpus out/corpus --out out/loso --init-dir models/demo-espeak
--init-families espeak [--families piper,kokoro] [--steps 600] [--curve] [--write-card models/demo/README.md]`

Held-out voices of a family the model trained on share that family's engine, so they say little
about a voice from another engine (a person, or a synthesizer nobody tried). This measures that.
For each family F (default: every family of the corpus's train.jsonl the init model never saw):
1. a corpus view OUT/F/corpus: train.jsonl = every training row of the other families;
   test_clean.jsonl = the espeak held-out clean set, which only picks the best checkpoint (never F);
2. the release recipe's fine-tune of --init-dir on it for --steps (grown vocabulary, same
   augmentation, half the steps streaming);
3. the fp32 model scored on every render of F in the corpus (training and held-out voices alike:
   none was heard), offline, clean and with car noise at 10 dB added as the evaluator adds it.
A family the init model was trained on (--init-families) cannot be left out from it; the table
says so instead of reporting a number that would not mean anything.

`--as-is`: no fine-tune. --init-dir itself is scored on every family of the corpus it never trained on:
for the shipped model (`--init-dir models/demo --init-families` its nine), that is a fold as it
ships, e.g. DECtalk, an evaluation-only family (voices.py) no recipe run has trained on. Its table
goes into the card's own block (`loso-as-is`), beside the fine-tuned folds'.

`--curve`: how the left-out family's accuracy moves with training. The fold's periodic check (every
steps / 8) then decodes ~200 of F's clean renders instead of the espeak set, and the scored model is
the last step's, never a checkpoint picked by F. Measured at 2,400 steps: kokoro left out went 22.5 %
(step 300), 46 % (600), 61 % (1,200), 67 % (1,500), 68 % (2,400), scored 68.2 % on every render
against 38.0 % for a 600-step fold; baker 10 / 36 / 69 / 76 / 77 %, scored 79.8 % against 27.6 %.
The short folds measure an under-trained model as much as an unheard engine.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from paraedge_tools.recipe.corpus import family_of

TABLE_BEGIN, TABLE_END = "<!-- loso:begin -->", "<!-- loso:end -->"
AS_IS_BEGIN, AS_IS_END = "<!-- loso-as-is:begin -->", "<!-- loso-as-is:end -->"
SNR = 10


def rows_by_family(train_rows: list[dict], corpus: str) -> dict[str, list[dict]]:
    """Training rows and per-family clean test rows, grouped by family."""
    import glob

    from paraedge_tools.recipe.corpus import read_manifest

    out: dict[str, list[dict]] = {}
    tests = [r for p in sorted(glob.glob(os.path.join(corpus, "test_*_clean.jsonl"))) for r in read_manifest(p)]
    for r in train_rows + tests:
        out.setdefault(family_of(r), []).append(r)
    return out


def check_known(families: list[str], groups: dict, corpus: str) -> None:
    """ValueError naming the first of `families` the corpus has no renders of."""
    unknown = [f for f in families if f not in groups]
    if unknown:
        raise ValueError(f"{corpus}: no renders of family '{unknown[0]}' (families here: {', '.join(sorted(groups))})")


def write_view(train_rows: list[dict], pick_rows: list[dict], family: str, view: str) -> dict:
    """OUT/F/corpus: the manifests of a run without `family` (paths absolute, nothing copied);
    `pick_rows`: what the trainer's periodic check decodes (never F's renders unless --curve asks)."""
    from paraedge_tools.recipe.corpus import write_manifest

    os.makedirs(view, exist_ok=True)
    train = [r for r in train_rows if family_of(r) != family]
    write_manifest(os.path.join(view, "train.jsonl"), train)
    write_manifest(os.path.join(view, "test_clean.jsonl"), pick_rows)
    return {"train": len(train), "families": sorted({family_of(r) for r in train})}


def score_family(model_dir: str, rows: list[dict]) -> dict:
    """Whole-command accuracy (fp32, offline) on `rows`, clean and at SNR dB car noise, per language."""
    from edge.asr.recognizer import Recognizer
    from paraedge_tools.recipe.evaluate import decode_results

    rec = Recognizer(model_dir, "ref")
    out = {}
    for cond, snr in (("clean", None), (f"snr{SNR}", SNR)):
        results = decode_results(rec, rows, streaming=False, snr=snr)
        for lang in sorted({r["lang"] for r in rows}) + ["all"]:
            pairs = [(r, res) for r, res in zip(rows, results) if lang in ("all", r["lang"])]
            out[f"{cond}_{lang}"] = {"acc": sum(res.text == r["text"] for r, res in pairs) / len(pairs), "n": len(pairs)}
    return out


def run(corpus: str, out: str, init_dir: str, init_families: list[str], families: list[str] | None,
        steps: int, lr: float, threads: int, log=print, curve: bool = False, **recipe) -> dict:
    """`recipe`: train's settings (`train.check_recipe_args`: qty_weight, source_filter,
    balance_languages, ghost, shift, tail, tail_langs), the same for every fold."""
    from paraedge_tools.recipe.release import run_model_dir
    from paraedge_tools.recipe.train import train

    from paraedge_tools.recipe.corpus import read_manifest

    train_rows = read_manifest(os.path.join(corpus, "train.jsonl"))
    pick_rows = read_manifest(os.path.join(corpus, "test_clean.jsonl"))
    groups = rows_by_family(train_rows, corpus)
    families = families or sorted(groups)
    report = {"corpus": os.path.abspath(corpus), "init_dir": os.path.abspath(init_dir), "init_families": init_families,
              "steps": steps, "lr": lr, "snr": SNR, "source_filter": recipe.get("source_filter", 0.0),
              "balance_languages": recipe.get("balance_languages", False), "qty_weight": recipe.get("qty_weight", 1.0),
              "ghost_fires": recipe.get("ghost", 0.0), "shift_fires": recipe.get("shift", 0.0),
              "tail_fires": recipe.get("tail", 0.0), "tail_langs": recipe.get("tail_langs"),
              "precision": recipe.get("precision", "fp32"), "families": {}}
    check_known(families, groups, corpus)  # before any training
    for fam in families:
        if fam in init_families:
            report["families"][fam] = {"skipped": f"{init_dir} was trained on {fam}"}
            log(f"{fam}: skipped ({init_dir} was trained on it)")
            continue
        view = os.path.join(out, fam, "corpus")
        picks = groups[fam] if curve else [r for r in pick_rows if family_of(r) != fam]
        info = write_view(train_rows, picks, fam, view)
        run_dir = os.path.join(out, fam, "train")
        t0 = time.time()
        train(view, run_dir, steps, lr=lr, eval_every=max(1, steps // (8 if curve else 4)), threads=threads,
              init_dir=init_dir, grow=True, log=log, **recipe)
        minutes = (time.time() - t0) / 60
        # --curve: the check saw F, so the last step is scored, not the checkpoint F picked
        model = run_model_dir(run_dir, os.path.join(out, fam, "model"), "ckpt.pt" if curve else "best.pt",
                              fp16_weights=False)
        scores = score_family(model, groups[fam])
        report["families"][fam] = {"trained_on": info["families"], "train_rows": info["train"], "steps": steps,
                                   "minutes": round(minutes, 1), "voices": sorted({r["voice"] for r in groups[fam]}),
                                   **scores}
        if curve:
            report["families"][fam]["curve"] = read_curve(os.path.join(run_dir, "log.csv"))
        log(f"{fam}: {json.dumps(scores)}")
        with open(os.path.join(out, "loso.json"), "w") as f:
            json.dump(report, f, indent=1)
    return report


def run_as_is(corpus: str, model_dir: str, model_families: list[str], families: list[str] | None,
              log=print) -> dict:
    """`model_dir` scored, without any training, on each family of `corpus` it was never trained on."""
    from paraedge_tools.recipe.corpus import read_manifest

    groups = rows_by_family(read_manifest(os.path.join(corpus, "train.jsonl")), corpus)
    families = families or sorted(f for f in groups if f not in model_families)
    check_known(families, groups, corpus)
    trained = [f for f in families if f in model_families]
    if trained:
        raise ValueError(f"{model_dir} was trained on {trained[0]}: scoring it there is no leave-one-out fold")
    report = {"corpus": os.path.abspath(corpus), "model": os.path.abspath(model_dir), "trained_on": model_families,
              "snr": SNR, "families": {}}
    for fam in families:
        scores = score_family(model_dir, groups[fam])
        report["families"][fam] = {"voices": sorted({r["voice"] for r in groups[fam]}), **scores}
        log(f"{fam}: {json.dumps(scores)}")
    return report


def _cells(r: dict, cond: str) -> str:
    parts = []
    for lang in ("all", "en", "zh"):
        k = f"{cond}_{lang}"
        parts.append(f"{100 * r[k]['acc']:.1f} % (n={r[k]['n']})" if k in r else "-")
    return " / ".join(parts)


def table_as_is(report: dict) -> str:
    model = report["model"].rstrip("/").split("/")[-1]
    lines = [f"`{model}` as it is, no fine-tune (`python -m paraedge_tools.recipe.loso --as-is`), scored on every render "
             f"of each family it never trained on (fp32, offline; car noise at {report['snr']} dB as the evaluator adds "
             f"it). It trained on {', '.join(report['trained_on'])}.",
             "", "| never trained on | voices | clean: all / en / zh | 10 dB: all / en / zh |", "|---|---|---|---|"]
    for fam, r in report["families"].items():
        lines.append(f"| {fam} | {len(r['voices'])} | {_cells(r, 'clean')} | {_cells(r, 'snr' + str(report['snr']))} |")
    return "\n".join(lines)


def read_curve(log_csv: str) -> list[list]:
    """[step, clean accuracy of the periodic check] from a training run's log.csv."""
    import csv

    with open(log_csv, newline="") as f:
        return [[int(r["step"]), float(r["heldout_acc"])] for r in csv.DictReader(f) if r.get("heldout_acc") not in ("", "nan")]


def earlier_rows(card: str, report: dict) -> list[str]:
    """The card's rows for families this run did not leave out (a run may leave out only some), as written."""
    try:
        text = open(card, encoding="utf-8").read()
    except OSError:
        return []
    if TABLE_BEGIN not in text or TABLE_END not in text:
        return []
    block = text[text.index(TABLE_BEGIN):text.index(TABLE_END)]
    rows = [line for line in block.splitlines() if line.startswith("| ") and not line.startswith(("| left out", "|---"))]
    return [r for r in rows if r.split("|")[1].split()[0] not in report["families"]]


def table(report: dict, earlier: list[str] = ()) -> str:
    lines = [f"Leave-one-synthesizer-out (`python -m paraedge_tools.recipe.loso`): {report['init_dir'].split('/')[-1]} "
             f"fine-tuned {report['steps']:,} steps (lr {report['lr']:g}"
             + (f", a new voice source on {100 * report['source_filter']:.0f} % of draws" if report.get("source_filter") else "")
             + (", languages drawn equally often" if report.get("balance_languages") else "")
             + (f", quantity loss x{report['qty_weight']:g}" if report.get("qty_weight", 1.0) != 1.0 else "")
             + (f", count jitter: a whole extra fire on {100 * report['ghost_fires']:.0f} %, a fraction of one on "
                f"{100 * report['shift_fires']:.0f} %, one before </s> on {100 * report.get('tail_fires', 0):.0f} % of draws"
                if report.get("ghost_fires") or report.get("shift_fires") or report.get("tail_fires") else "")
             + ") on every family but one, then scored on every "
             f"render of the one left out (fp32, offline; car noise at {report['snr']} dB as the evaluator adds it).",
             "", "| left out | voices | trained on | clean: all / en / zh | 10 dB: all / en / zh | fine-tune |",
             "|---|---|---|---|---|---|"]
    for fam, r in report["families"].items():
        if "skipped" in r:
            lines.append(f"| {fam} | | | not measured: {r['skipped']} | | |")
            continue

        noisy = f"snr{report['snr']}"
        lines.append(f"| {fam} | {len(r['voices'])} | {', '.join(r['trained_on'])} | {_cells(r, 'clean')} | "
                     f"{_cells(r, noisy)} | {r['minutes']:.0f} min" + (f", {r['steps']:,} steps" if "steps" in r else "") + " |")
    for row in earlier:   # kept from an earlier run, marked as such once
        cells = row.split("|")
        if "(earlier run)" not in cells[1]:
            cells[1] = f" {cells[1].strip()} (earlier run) "
        lines.append("|".join(cells))
    for fam, r in report["families"].items():
        if r.get("curve"):
            points = ", ".join(f"{step:,}: {100 * acc:.1f} %" for step, acc in r["curve"])
            lines += ["", f"{fam} left out, accuracy on ~200 of its clean renders as training went on (`--curve`; "
                          f"its row scores the last step on every render): {points}."]
    if earlier:
        lines += ["", "Rows marked (earlier run) come from an earlier run of this script, with the corpus (their "
                  "\"trained on\" column) and settings of its time; a run leaves out only the families it is given."]
    return "\n".join(lines)


def main(argv=None) -> int:
    from paraedge_tools.recipe.train import add_recipe_args, check_recipe_args

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default="out/corpus")
    ap.add_argument("--out", default="out/loso")
    ap.add_argument("--init-dir", required=True, help="the model every run starts from")
    ap.add_argument("--init-families", required=True,
                    help="comma-separated families --init-dir was trained on (never left out from it)")
    ap.add_argument("--families", default=None, help="comma-separated families to leave out (default: all)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--threads", type=int, default=2)
    add_recipe_args(ap)  # train's settings, passed to every fold
    ap.add_argument("--curve", action="store_true",
                    help="check the left-out family every steps/8 while training (a learning curve); score the last step")
    ap.add_argument("--as-is", action="store_true",
                    help="no fine-tune: score --init-dir itself on the families it never trained on")
    ap.add_argument("--write-card", default=None, help="model card (README.md) to write the table into")
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error("--steps must be >= 1")
    fams = args.families.split(",") if args.families else None
    if args.as_is:
        if args.curve:
            ap.error("--as-is trains nothing, so there is no --curve: drop one")
        if not os.path.isfile(os.path.join(args.init_dir, "config.yaml")):
            ap.error(f"--init-dir {args.init_dir}: not a model dir (no config.yaml)")
    else:
        recipe = check_recipe_args(ap, args)   # before any corpus view or training
    if not os.path.exists(os.path.join(args.corpus, "train.jsonl")):
        ap.error(f"{args.corpus}/train.jsonl: not found; build it with `python -m paraedge_tools.recipe.corpus {args.corpus}`")
    if args.as_is:
        try:
            report = run_as_is(args.corpus, args.init_dir, args.init_families.split(","), fams)
        except ValueError as e:
            ap.error(str(e))
        print(table_as_is(report))
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "as_is.json"), "w") as f:
            json.dump(report, f, indent=1)
        if args.write_card:
            from paraedge_tools.docblock import write_between

            write_between(args.write_card, AS_IS_BEGIN, AS_IS_END, table_as_is(report))
        return 0
    try:
        report = run(args.corpus, args.out, args.init_dir, args.init_families.split(","), fams, args.steps, args.lr,
                     args.threads, curve=args.curve, **recipe)
    except ValueError as e:
        ap.error(str(e))
    print(table(report))
    if args.write_card:
        from paraedge_tools.docblock import write_between

        write_between(args.write_card, TABLE_BEGIN, TABLE_END, table(report, earlier_rows(args.write_card, report)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
