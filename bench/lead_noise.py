"""How much does a streaming final depend on the noise heard before the command starts?

`python bench/lead_noise.py --corpus out/corpus8 [--model models/demo --model DIR ...] [--leads 0,0.6] [--sets test_snr5]`

The corpus's renders open with 0-0.4 s of silence (then the set's car noise) before the command, as
the trainer's draws did (`augment`, `train --lead-pad`). A stream opened by the wake word or by a
VAD hears more than that before a person speaks. Each utterance of the chosen sets is decoded (fp32,
the numpy reference, the model's default chunk size) with `lead` more seconds of car noise at the
set's own level before it (`evaluate.lead_decodes`, nothing after it; the evaluator's last column
is this at 0.6 s), offline and streaming. Printed per model, set and lead: whole commands right
offline and streaming, and streaming equal to offline.

Measured (stop 50, `out/corpus8`, espeak held-out at 5 dB, 1,144 commands), lead 0 / 0.6 s, streaming
right (streaming equal to offline; offline right):
- the stage-5 weights: 97.4 / 90.6 % (98.4 / 91.3 %; 98.3 / 97.6 %);
- the recipe's mean of stages 2 and 3: 96.2 / 93.6 % (97.0 / 94.2 %; 97.7 / 97.2 %);
- that mean fine-tuned with `train --lead-pad 1.5`: 96.5 / 95.1 % (97.0 / 95.8 %; 97.6 / 97.8 %).
The evaluator's streaming column (lead 0) holds only for a stream opened just before the speech;
600 ms more of cabin noise costs every one of them streaming, the stage-5 weights most. The daemon's
two-pass final (`model.final_pass`) decodes the utterance again offline, which the lead barely moves.

Silence does it too, and offline as well, once the lead is longer (stop 51, `--sets test_clean,test_kokoro_clean
--leads 0,0.6,1.2,2`): the stage-5 weights, espeak held-out clean offline 99.1 / 98.0 / 91.3 / 51.7 %,
streaming 99.1 / 95.3 / 75.3 / 30.1 %; Kokoro offline 97.2 / 89.2 / 64.0 / 34.3 %. It is the encoder's
absolute positions, which the weights read as where a command starts (`train --position-shift`).
The stage-6 weights, trained with shifted positions and lead pads (stop 53, the same sets and
leads): espeak offline 99.1 / 99.2 / 98.8 / 94.3 %, streaming 99.1 / 98.2 / 96.9 / 91.8 %; Kokoro
offline 97.6 / 95.5 / 90.6 / 87.8 %, streaming 90.2 / 82.9 / 80.1 / 74.8 %. The stage-7 weights
(stop 54, a short fine-tune of a mean of stage 6's run, the same flags): espeak offline 99.3 / 99.1 /
99.3 / 97.8 %, streaming 99.2 / 98.8 / 98.6 / 97.1 %; Kokoro offline 96.5 / 96.5 / 96.2 / 96.9 %,
streaming 92.7 / 89.2 / 87.1 / 87.8 %. The recipe-from-nothing weights that replaced them (stop 63,
no shifted positions, lead pads up to 1.5 s in the last step): espeak offline 99.7 / 99.6 / 97.0 /
54.7 %, streaming 99.3 / 99.4 / 92.9 / 39.6 %; Kokoro offline 98.6 / 98.6 / 92.0 / 68.2 %, streaming
96.5 / 92.3 / 78.3 / 41.3 %: the position cue is back past about a second of silence.
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tools")]


def measure(model: str, corpus: str, sets: list[str], leads: list[float]) -> list[tuple]:
    from edge.asr.recognizer import Recognizer
    from paraedge_tools.recipe.corpus import read_manifest
    from paraedge_tools.recipe.evaluate import lead_decodes

    rec = Recognizer(model, "ref")
    chunk = tuple(rec.config.chunk_size)
    rows_out = []
    for name in sets:
        rows = read_manifest(os.path.join(corpus, f"{name}.jsonl"))
        for lead in leads:
            pairs = lead_decodes(rec, rows, lead, chunk)
            n = max(len(rows), 1)
            off = sum(a.text == r["text"] for (a, _), r in zip(pairs, rows)) / n
            st = sum(b.text == r["text"] for (_, b), r in zip(pairs, rows)) / n
            same = sum(a.token_ids == b.token_ids for a, b in pairs) / n
            rows_out.append((model, name, lead, len(rows), off, st, same))
    return rows_out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--model", action="append", default=None, help="model dir (default models/demo); repeat to compare")
    ap.add_argument("--leads", default="0,0.6", help="seconds of car noise added before each command, comma-separated")
    ap.add_argument("--sets", default="test_snr5", help="comma-separated test sets of the corpus")
    args = ap.parse_args(argv)
    from paraedge_tools.recipe.evaluate import chosen_sets, seconds_list

    try:
        leads = seconds_list(args.leads, 10.0)
    except ValueError as e:
        ap.error(f"--leads: {e}")
    try:
        sets = chosen_sets(args.corpus, args.sets)
    except ValueError as e:
        ap.error(str(e))
    models = args.model or ["models/demo"]
    for m in models:
        if not os.path.isfile(os.path.join(m, "config.yaml")):
            ap.error(f"--model {m}: not a model dir (no config.yaml)")
    print("| model | set | lead s | n | offline right | streaming right | streaming = offline |")
    print("|---|---|---|---|---|---|---|")
    for m in models:
        for model, name, lead, n, off, st, same in measure(m, args.corpus, sets, leads):
            print(f"| {model} | {name} | {lead:g} | {n} | {100 * off:.1f} % | {100 * st:.1f} % | {100 * same:.1f} % |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
