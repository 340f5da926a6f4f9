"""Measure the wake gate: detection latency and recall on noisy wake-word renders, false accepts per
hour on non-wake speech and car noise, at the shipped cutoffs and a sweep of candidates.

`python bench/wake.py [--positives 300] [--neg-minutes 240] [--family-minutes 20] [--families ...]
[--seed 0] [--out out/wake] [--readme] [--sweep]` renders (once; cached under --out) for each keyword N positives,
"okay nabu" / "alexa" spoken in turn by every synthesizer family the recipe trains on (espeak-ng with
many voices, variants, speeds and pitches; MBROLA, Pico, RHVoice, Piper, Kokoro, SAM with their
voices), after 0.4-1.2 s of lead-in and followed by an English or Mandarin command or silence, mixed
with generated car noise at 20/10/5 dB SNR (of the speech). The wake word is rendered alone first, so
where it ends (last 10 ms frame within 30 dB of its loudest) is known. Negatives: --neg-minutes of
everyday English and Mandarin sentences by espeak-ng, and --family-minutes more by each other family,
the in-car commands and near-miss words ("okay", "nab", "alexander", "election"), with pauses and
noise-only stretches, clean or in car noise at 20/10/5 dB; the near-miss phrases alone, by every family.

Why every family: one synthesizer measures that synthesizer (issue 18's lesson). On espeak-ng's
formant voices alexa's probability passes 0.98 a median 179 ms after the word ends, on RHVoice's 82 ms
and Piper's 131 ms; and natural voices saying "a lexus" or "election" wake alexa more often than
espeak-ng's do (measured while making this change: 2-7 of 76 near-miss renders per family at 0.98,
0 for espeak-ng's).

Every render goes through the TFLite-Micro frontend and each model once, keeping the raw probability
of every 30 ms inference and, for a model with a second-stage verifier (alexa), the verifier's score
wherever the probability passes 0.5; the decision rule (mean of the last `window` probabilities >
cutoff, and the verifier's agreement, then a reset and the refractory period) is then replayed for
each candidate, with and without the verifier. Latency = end of the 20 ms
block that fired (the daemon's block size) - end of the wake word. A hit is the first detection
between the wake word's start and 1 s after its end; anything else is a false accept. The chosen
setting (edge/daemon/wake.py TUNED / VERIFIED, REFRACTORY_S) is finally re-run exactly through WakeGate in
20 ms blocks, and that is the table printed (and, with --readme, written into README.md between the
wake markers), with latency and false accepts by family. flite and festival never speak here: they
are kept for held-out evaluation. Renders and raw probabilities are cached by count, family list and
verifier file: delete --out after editing the phrase lists. `--seed 1000 --out out/wake-fresh` renders
a second, independent set on which to confirm the settings chosen on the first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from paraedge_tools.recipe.wake_speech import (FAMILIES, PHRASE, RATE, SNRS, cached,  # noqa: E402
                                               make_family_negatives, make_near_misses, make_negatives,
                                               make_positives, trace)

BLOCK = 320  # the daemon's 20 ms capture block
HIT_AFTER_S = 1.0  # a detection up to this long after the wake word ends still counts as a hit
WINDOWS = (1, 2, 3, 4, 5)
CUTOFFS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.86, 0.87, 0.88, 0.89, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)


# -- the gate, raw and replayed ------------------------------------------------------------------
def raw_probs(x: np.ndarray, names: list[str], verifiers: dict) -> tuple[np.ndarray, dict, dict]:
    """The frontend + each model over x exactly as WakeGate streams it: (sample position after each
    inference, {model: raw probability per inference}, {model: its verifier's score where the
    probability passed CUTOFFS[0], else 0; absent for a model without a verifier})."""
    frames, where, probs, heard = trace(x, names)
    scores = {}
    for name in names:
        v = verifiers[name]
        if v is not None:
            p = probs[name]
            scores[name] = np.array([v.score(frames[: heard[j]]) if p[j] > CUTOFFS[0] else 0.0
                                     for j in range(len(p))], np.float32)
    return where, probs, scores


def replay(where: np.ndarray, p: np.ndarray, cutoff: float, window: int, refractory: int,
           verified: np.ndarray | None = None) -> list[int]:
    """Detections (block-end sample positions) of WakeGate's rule on raw probabilities: fire when the
    mean of the last `window` is above cutoff (and, given `verified`, the verifier accepts at that
    inference: a veto leaves the model armed); then the window empties (the gate resets) and the model
    re-arms once `refractory` samples have passed and its windowed mean has been at or below cutoff.
    (The reset model's state is not replayed: after a detection this is an approximation.)"""
    if len(p) < window:
        return []
    mean = np.convolve(p, np.ones(window) / window, "valid")  # mean[j] ends at inference j + window - 1
    end = np.arange(len(mean)) + window - 1
    fires = mean > cutoff if verified is None else (mean > cutoff) & verified[end]
    out, i = [], 0
    while True:
        above = np.flatnonzero(fires[i:])
        if not above.size:
            return out
        j = i + above[0]
        out.append(int(-(-where[end[j]] // BLOCK) * BLOCK))
        # window refilled after the reset, refractory over, then a dip at or below cutoff
        k = max(j + window, int(np.searchsorted(where[window - 1 :], where[end[j]] + refractory)))
        low = np.flatnonzero(mean[k:] <= cutoff)
        if not low.size:
            return out
        i = k + low[0] + 1


def utterance_at(fired: int, utts: list[dict]) -> dict:
    """The negative utterance a false accept fired on (up to 1 s after it ends), else noise."""
    for u in utts:
        if u["start"] <= fired <= u["end"] + HIT_AFTER_S * RATE:
            return u
    return {"kind": "noise", "text": ""}


def kind_of(fired: int, utts: list[dict]) -> str:
    return utterance_at(fired, utts)["kind"]


def says(text: str, kw: str) -> bool:
    """True when `text` is kw's own phrase ("hey, jarvis" is a near miss for the others, not for
    hey_jarvis): a detection there is no false accept."""
    return "".join(c for c in text.lower() if c.isalpha()) == PHRASE.get(kw, kw).replace(" ", "")


def score(pos_runs, neg_runs, near_runs, kw, cutoff, window, refractory, neg_hours, verify: float | None = None):
    """One setting replayed over every render; `verify`: the verifier's cutoff (None: no verifier)."""
    def fired(run):
        where, probs, scores = run
        ok = None if verify is None else scores[kw] > verify
        return replay(where, probs[kw], cutoff, window, refractory, ok)

    lat, hits, extra = [], 0, 0
    for run, m in pos_runs:
        det = fired(run)
        ok = [d for d in det if m["wake_start"] <= d <= m["wake_end"] + HIT_AFTER_S * RATE]
        if ok:
            hits += 1
            lat.append((ok[0] - m["wake_end"]) / RATE * 1000)
        extra += len(det) - (1 if ok else 0)
    kinds: dict[str, int] = {}
    for run, m in neg_runs:
        for d in fired(run):
            u = utterance_at(d, m["utterances"])
            if says(u["text"], kw):
                continue
            k = u["kind"]
            kinds[k] = kinds.get(k, 0) + 1
    near_runs = [r for r in near_runs if not says(r[1]["text"], kw)]
    near = sum(1 for run, _ in near_runs if fired(run))
    fa = sum(kinds.values())
    return {"cutoff": cutoff, "window": window, "verify": verify, "recall": hits / max(1, len(pos_runs)),
            "p50": float(np.percentile(lat, 50)) if lat else float("nan"),
            "p99": float(np.percentile(lat, 99)) if lat else float("nan"),
            "fa": fa, "fa_h": fa / neg_hours, "fa_kinds": kinds, "near": near / max(1, len(near_runs)),
            "extra": extra}


TARGET_P50, TARGET_FA_H = 150.0, 0.5  # issue 17: P50 <= 150 ms, <= 0.5 false accepts per hour
MARGIN_MS = 20.0  # P50 moves ~5-15 ms between render sets and in the exact WakeGate run


def choose(rows: list[dict], n_pos: int) -> tuple[dict, bool]:
    """(setting, whether it keeps the false-accept budget). Within TARGET_FA_H: the settings with P50
    <= TARGET_P50 - MARGIN_MS (failing that, <= TARGET_P50; failing that, all); of those, the ones
    whose recall is within two standard errors of their best (closer than that is noise at n_pos
    renders); then the fewest false accepts and the lowest P50. When no setting keeps the budget: the
    fewest false accepts with P50 <= TARGET_P50 (or, failing that, overall), then the best recall."""
    ok = [r for r in rows if r["fa_h"] <= TARGET_FA_H]
    if not ok:
        fast = [r for r in rows if r["p50"] <= TARGET_P50] or rows
        return min(fast, key=lambda r: (r["fa_h"], -r["recall"], r["p50"])), False
    fast = ([r for r in ok if r["p50"] <= TARGET_P50 - MARGIN_MS] or [r for r in ok if r["p50"] <= TARGET_P50]
            or ok)
    best = max(r["recall"] for r in fast)
    tol = 2 * np.sqrt(best * (1 - best) / n_pos)
    return min((r for r in fast if r["recall"] >= best - tol), key=lambda r: (r["fa_h"], r["p50"], -r["recall"])), True


def exact(xs, kw_names, cutoff_of, window_of, refractory_s):
    """The real WakeGate (all keywords loaded together, as in the daemon), 20 ms blocks: a list of
    [(model, block-end sample)] per render."""
    from edge.daemon.wake import WakeGate

    gate = WakeGate(kw_names, refractory_s=refractory_s)
    for m in gate.models:
        m.cutoff, m.window = cutoff_of[m.name], window_of[m.name]
        m.reset()
    res = []
    for x in xs:
        gate.reset()
        dets = []
        for i in range(0, len(x), BLOCK):
            d = gate.process(x[i : i + BLOCK])
            if d is not None:
                dets.append((d.name, i + min(BLOCK, len(x) - i)))
        res.append(dets)
    return res


def main(argv=None) -> int:
    from edge.daemon import wake as W

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keywords", default="okay_nabu,alexa")
    ap.add_argument("--positives", type=int, default=300, help="renders per keyword")
    ap.add_argument("--neg-minutes", type=float, default=240.0)
    ap.add_argument("--near-per-phrase", type=int, default=14, help="renders of each near-miss phrase")
    ap.add_argument("--families", default=",".join(FAMILIES),
                    help="synthesizer families that speak (flite and festival are refused: held out)")
    ap.add_argument("--family-minutes", type=float, default=20.0,
                    help="minutes of everyday talk by each family other than espeak-ng")
    ap.add_argument("--jobs", type=int, default=2, help="rendering processes")
    ap.add_argument("--seed", type=int, default=0,
                    help="added to every render seed: another --seed (with another --out) is a fresh set of renders "
                         "on which to confirm the settings chosen on the default one")
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "wake"))
    ap.add_argument("--readme", action="store_true", help="write the chosen table into README.md")
    ap.add_argument("--sweep", action="store_true", help="also print the full cutoff x window sweep")
    args = ap.parse_args(argv)
    kws = args.keywords.split(",")
    from paraedge_tools.recipe import voices

    try:
        fams = tuple(s.family for s in voices.available(args.families.split(",")))
    except ValueError as e:
        ap.error(str(e))
    tag = "-".join(f[:3] for f in fams)
    others = tuple(f for f in fams if f != "espeak")
    t0 = time.time()
    pos_sets = {kw: cached(os.path.join(args.out, f"pos_{kw}_{args.positives}_{tag}"),
                           lambda kw=kw: make_positives(kw, args.positives, zlib.crc32(kw.encode()) + args.seed, fams, args.jobs))
                for kw in kws}
    neg_x, neg_meta = cached(os.path.join(args.out, f"neg_{args.neg_minutes:g}min"),
                             lambda: make_negatives(args.neg_minutes, 7 + args.seed)) if "espeak" in fams else ([], [])
    if others and args.family_minutes > 0:
        fx, fm = cached(os.path.join(args.out, f"neg_{args.family_minutes:g}min_{'-'.join(f[:3] for f in others)}"),
                        lambda: make_family_negatives(others, args.family_minutes, 13 + args.seed, args.jobs))
        neg_x, neg_meta = neg_x + fx, neg_meta + fm
    near_x, near_meta = cached(os.path.join(args.out, f"near_{args.near_per_phrase}_{tag}"),
                               lambda: make_near_misses(args.near_per_phrase, 11 + args.seed, fams, args.jobs))
    neg_hours = sum(len(x) for x in neg_x) / RATE / 3600
    fam_hours = {}
    for x, m in zip(neg_x, neg_meta):
        fam_hours[m.get("family", "espeak")] = fam_hours.get(m.get("family", "espeak"), 0.0) + len(x) / RATE / 3600
    print(f"renders ready in {time.time() - t0:.0f} s: {neg_hours:.2f} h of negatives "
          f"{ {f: round(h, 2) for f, h in fam_hours.items()} }", file=sys.stderr)

    shipped = {kw: W.WakeModel(kw) for kw in kws}  # TUNED / VERIFIED values and verifiers, as the daemon loads them
    verifier = {kw: m.verifier for kw, m in shipped.items()}
    vsum = "".join(f"_{zlib.crc32(v.path.read_bytes()):08x}" for v in verifier.values() if v is not None)
    probs_path = os.path.join(args.out, f"probs_{'_'.join(kws)}_{args.positives}_{args.neg_minutes:g}"
                                        f"_{args.family_minutes:g}_{args.near_per_phrase}_{tag}{vsum}.npz")
    if os.path.exists(probs_path):
        z = np.load(probs_path, allow_pickle=True)
        pos_raw, neg_raw, near_raw = z["pos"].item(), list(z["neg"]), list(z["near"])
    else:
        pos_raw = {kw: [raw_probs(x, kws, verifier) for x in pos_sets[kw][0]] for kw in kws}
        neg_raw = [raw_probs(x, kws, verifier) for x in neg_x]
        near_raw = [raw_probs(x, kws, verifier) for x in near_x]
        np.savez(probs_path, pos=np.array(pos_raw, dtype=object), neg=np.array(neg_raw, dtype=object),
                 near=np.array(near_raw, dtype=object))
    print(f"raw probabilities ready in {time.time() - t0:.0f} s", file=sys.stderr)

    refr = int(W.REFRACTORY_S * RATE)
    sweep = {kw: [score(list(zip(pos_raw[kw], pos_sets[kw][1])), list(zip(neg_raw, neg_meta)),
                        list(zip(near_raw, near_meta)), kw, c, w, refr, neg_hours, v)
                  for v in [None] + ([verifier[kw].cutoff] if verifier[kw] else []) for w in WINDOWS for c in CUTOFFS]
             for kw in kws}
    json.dump(sweep, open(os.path.join(args.out, "sweep.json"), "w"), indent=1)
    for kw in kws:
        if args.sweep:
            print(f"\n{kw}: verifier window cutoff recall P50 P99 FA FA/h near-miss-fires extra  FA-by-kind",
                  file=sys.stderr)
            for r in sweep[kw]:
                print(f"  {r['verify'] or '-'} {r['window']} {r['cutoff']:.2f} {r['recall']:.3f} {r['p50']:.0f} "
                      f"{r['p99']:.0f} {r['fa']} "
                      f"{r['fa_h']:.2f} {r['near']:.3f} {r['extra']}  {r['fa_kinds']}", file=sys.stderr)
        for on in ([False, True] if verifier[kw] else [False]):
            pick, within = choose([r for r in sweep[kw] if (r["verify"] is not None) == on], len(pos_sets[kw][0]))
            rule = ("<= 0.5 FA/h, recall within 2 SE of the best, P50 <= 130 ms, the fewest FA" if within else
                    "NO setting keeps <= 0.5 FA/h: the fewest FA with P50 <= 150 ms")
            print(f"{kw}{' with its verifier' if on else ''}: chosen ({rule}): cutoff {pick['cutoff']} window "
                  f"{pick['window']} recall {pick['recall']:.3f} P50 {pick['p50']:.0f} ms FA/h {pick['fa_h']:.2f}",
                  file=sys.stderr)

    # the exact run with what wake.py ships (its TUNED / VERIFIED tables, else the manifest's values)
    cutoff_of = {kw: m.cutoff for kw, m in shipped.items()}
    window_of = {kw: m.window for kw, m in shipped.items()}
    neg_det = exact(neg_x, kws, cutoff_of, window_of, W.REFRACTORY_S)
    near_det = exact(near_x, kws, cutoff_of, window_of, W.REFRACTORY_S)
    lines = ["| wake word | cutoff | window | verifier | recall (20 / 10 / 5 dB) | latency P50 | latency P99 | "
             "false accepts / h | near-miss phrases that woke it |", "|---|---|---|---|---|---|---|---|---|"]
    fa_text, met = {}, {}
    family_rows = ["| wake word | " + " | ".join(f"{f} ({60 * fam_hours.get(f, 0):.0f} min)" for f in fams) + " |",
                   "|---|" + "---|" * len(fams)]
    for kw in kws:
        xs, meta = pos_sets[kw]
        det = exact(xs, kws, cutoff_of, window_of, W.REFRACTORY_S)
        lat, extra, by_snr, by_fam = [], 0, {snr: [] for snr in SNRS}, {f: [] for f in fams}
        for d, m in zip(det, meta):
            ok = [s for n, s in d if n == kw and m["wake_start"] <= s <= m["wake_end"] + HIT_AFTER_S * RATE]
            if ok:
                lat.append((ok[0] - m["wake_end"]) / RATE * 1000)
                by_fam[m["family"]].append(lat[-1])
            extra += len(d) - (1 if ok else 0)
            by_snr[m["snr"]].append(bool(ok))
        fa_at = [(utterance_at(s, m["utterances"]), m.get("family", "espeak"))
                 for d, m in zip(neg_det, neg_meta) for n, s in d if n == kw]
        fa_at = [(u, f) for u, f in fa_at if not says(u["text"], kw)]
        fa_u, fa_fam = [u for u, _ in fa_at], [f for _, f in fa_at]
        fa = [u["kind"] for u in fa_u]
        n_fam = {f: sum(1 for m in meta if m["family"] == f) for f in fams}
        family_rows.append(f"| {kw} | " + " | ".join(
            f"{np.median(by_fam[f]):.0f} ms, {len(by_fam[f]) / max(1, n_fam[f]):.0%}, {fa_fam.count(f)}"
            if by_fam[f] else f"-, 0%, {fa_fam.count(f)}" for f in fams) + " |")
        fa_text[kw] = sorted({u["text"] or u["kind"] for u in fa_u})
        met[kw] = (np.percentile(lat, 50) <= TARGET_P50, len(fa) / neg_hours <= TARGET_FA_H)
        near_kw = [d for d, m in zip(near_det, near_meta) if not says(m["text"], kw)]
        near = sum(1 for d in near_kw if any(n == kw for n, _ in d))
        snr_recall = " / ".join(f"{np.mean(v):.0%}" for v in by_snr.values())
        v = shipped[kw].verifier
        lines.append(f"| {kw} | {cutoff_of[kw]} | {window_of[kw]} | {f'> {v.cutoff}' if v else '-'} | "
                     f"{len(lat) / len(xs):.1%} ({snr_recall}) | "
                     f"{np.percentile(lat, 50):.0f} ms | {np.percentile(lat, 99):.0f} ms | "
                     f"{len(fa) / neg_hours:.2f} ({len(fa)}) | {near / len(near_kw):.1%} |")
        others = [("manifest", W.manifest_values(kw))]
        if v is not None and kw in W.TUNED:
            others.insert(0, ("without its verifier", W.TUNED[kw]))
        for what, (c, w) in others:
            ref = next((r for r in sweep[kw] if r["verify"] is None and r["window"] == w and abs(r["cutoff"] - c) < 1e-9),
                       None)
            if ref and ((c, w) != (cutoff_of[kw], window_of[kw]) or v is not None):
                lines.append(f"| {kw} ({what}, replayed) | {c} | {w} | - | {ref['recall']:.1%} | {ref['p50']:.0f} ms | "
                             f"{ref['p99']:.0f} ms | {ref['fa_h']:.2f} ({ref['fa']}) | {ref['near']:.1%} |")
        print(f"{kw} shipped: {extra} extra detections on its positives; false accepts by kind "
              f"{ {k: fa.count(k) for k in sorted(set(fa))} }", file=sys.stderr)

    # the refractory period: how soon after a detection a gate without one fires again
    gaps = []
    for d in exact([x for kw in kws for x in pos_sets[kw][0]] + neg_x, kws, cutoff_of, window_of, 0.0):
        gaps += [(b[1] - a[1]) / RATE for a, b in zip(d, d[1:])]
    close = sorted(g for g in gaps if g < 5)
    longest = max((m["wake_end"] - m["wake_start"]) / RATE for kw in kws for m in pos_sets[kw][1])
    print(f"without a refractory period: {len(gaps)} repeat detections in one render, "
          f"{len(close)} within 5 s of the previous one: {[round(g, 2) for g in close]}; "
          f"longest wake word rendered: {longest:.2f} s", file=sys.stderr)

    cand = ["| wake word | verifier | window | cutoff | recall | latency P50 | latency P99 | false accepts / h | "
            "of them near-miss | near-miss renders woken |", "|---|---|---|---|---|---|---|---|---|---|"]
    for kw in kws:
        for r in sweep[kw]:
            if r["window"] in (1, W.manifest_values(kw)[1]) and r["cutoff"] >= 0.8:
                ver = f"> {r['verify']}" if r["verify"] else "-"
                cand.append(f"| {kw} | {ver} | {r['window']} | "
                            f"{r['cutoff']} | {r['recall']:.1%} | {r['p50']:.0f} ms | {r['p99']:.0f} ms | "
                            f"{r['fa_h']:.2f} | {r['fa_kinds'].get('near', 0)}/{r['fa']} | {r['near']:.1%} |")
    print("Candidates (replayed from the raw probabilities):\n\n" + "\n".join(cand) + "\n")

    n_pos = {kw: len(pos_sets[kw][0]) for kw in kws}
    head = (f"{', '.join(f'{n} {kw}' for kw, n in n_pos.items())} renders (the {len(fams)} synthesizer families "
            f"taking turns: {', '.join(fams)}; car noise at 20/10/5 dB), {neg_hours:.1f} h of everyday English and "
            f"Mandarin talk with car noise (by family below), {len(near_x)} near-miss phrases; 20 ms blocks, all "
            f"keywords loaded together, refractory {W.REFRACTORY_S:g} s. Latency = end of the wake word -> end of "
            f"the block that fired (`python bench/wake.py`).")
    yes = lambda b: "met" if b else "not met"  # noqa: E731
    tail = ("False accepts fired on: " + "; ".join(f"{kw}: {', '.join(repr(t) for t in fa_text[kw]) or 'none'}"
                                                   for kw in kws) + ". Targets (P50 <= 150 ms, <= 0.5 false accepts/h): "
            + "; ".join(f"{kw}: latency {yes(met[kw][0])}, false accepts {yes(met[kw][1])}" for kw in kws) + ".")
    table = (head + "\n\n" + "\n".join(lines) + "\n\n" + tail + "\n\nBy family, at the shipped settings: latency "
             "P50, recall, false accepts (in that family's hours of talk):\n\n" + "\n".join(family_rows))
    from paraedge_tools.docblock import publish

    publish(table, os.path.join(ROOT, "README.md") if args.readme else None, "<!-- wake:begin -->", "<!-- wake:end -->")
    print(f"done in {time.time() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
