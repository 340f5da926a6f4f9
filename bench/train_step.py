"""The training-step bench: the recipe's step two ways, side by side on the same batches.

`python bench/train_step.py [--compare precision|padding] [--corpus out/corpus8] [--model models/demo]
[--steps 40] [--threads 2]`

`--compare precision` (default): float32 against `train --precision bf16` (the matrix products in
bfloat16 under CPU autocast; weights, alphas, CIF and losses float32). `--compare padding`: the
encoder over the whole padded batch and every stream window (`losses(..., skip_padding=False)`)
against the default, which skips the padding.

Two copies of the same weights, each with its own AdamW, take the same batches of training draws
(augmented as `train` draws them, made before the clock starts) in the recipe's order of step kinds:
offline and streaming alternating, the streaming steps alternating 0 and 10 frames of left context
(`--stream-left 0,10`). The two take turns going first. Printed: seconds per step of each kind
(loss, backward, clipping, AdamW) and their ratio, measured in the same run with the thread count
verified; the mean loss of each copy (the same batches: bf16 moves it by its rounding only); how far
the two copies' weights have drifted apart after all the steps (rounding, which AdamW's normalised
steps amplify where gradients are near zero); and what one batch costs the data loader, which runs
beside the step in its own process on one thread.

Measured (x86 Sapphire Rapids with AMX, 2 threads, batch 24, 40 steps, the demo weights):
precision, fp32 0.49 s against bf16 0.38 s a step, 1.3x; padding, 1.44x (before bf16).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

KINDS = ("offline", "streaming, no left context", "streaming, 10 frames left")


def main(argv=None) -> int:
    import numpy as np
    import torch

    from edge.asr.modeldir import ModelDir
    from paraedge_models.paraformer import Paraformer
    from paraedge_tools.recipe.corpus import read_manifest
    from paraedge_tools.recipe.augment import noise_bank
    from paraedge_tools.recipe.train import Data, losses, native_bf16, streaming_step

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compare", choices=("precision", "padding"), default="precision")
    ap.add_argument("--corpus", default=os.path.join(ROOT, "out", "corpus8"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "demo"))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=2000, help="training renders loaded (drawn evenly from train.jsonl)")
    args = ap.parse_args(argv)
    manifest = os.path.join(args.corpus, "train.jsonl")
    if not os.path.exists(manifest):
        ap.error(f"{manifest} is missing; build the corpus with python -m paraedge_tools.recipe.corpus {args.corpus}")
    if args.steps < 4 or args.batch < 1 or args.threads < 1:
        ap.error("--steps must be at least 4 (one of each step kind), --batch and --threads at least 1")
    if args.compare == "precision" and not native_bf16():
        ap.error("--compare precision: this CPU has no bf16 arithmetic (AMX, AVX512-BF16 or Arm BF16); "
                 "bf16 would be emulated, so there is nothing to measure; try --compare padding")
    # the two ways: losses' keyword arguments for the baseline (False) and the change (True)
    ways = {False: {"skip_padding": False}, True: {}} if args.compare == "padding" else {False: {}, True: {"bf16": True}}
    names = ("whole padded batch", "padding skipped") if args.compare == "padding" else ("float32", "bf16")

    md = ModelDir(args.model)
    vocab = list(md.tokens)
    rows = read_manifest(manifest)
    rows = rows[:: max(1, len(rows) // args.rows)]
    data = Data(rows, vocab, np.random.default_rng(0))
    torch.set_num_threads(1)   # the loader's process runs on one thread
    data.bank = noise_bank(data.rng)   # made once per training run, before its first batch: not a batch's cost
    t0 = time.process_time()
    batches = [data.batch(args.batch) for _ in range(args.steps)]
    data_s = (time.process_time() - t0) / args.steps
    torch.set_num_threads(args.threads)
    if torch.get_num_threads() != args.threads:
        raise SystemExit(f"torch runs {torch.get_num_threads()} threads, not the {args.threads} asked for")
    shift, scale = md.cmvn.shift, md.cmvn.scale
    runs = {}
    for way in (False, True):
        model = Paraformer(copy.deepcopy(md.config.raw), len(vocab))
        model.load_state_dict({k: torch.from_numpy(v) for k, v in md.weights.items()})
        model.train()
        runs[way] = {"model": model, "opt": torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.9, 0.98),
                                                                weight_decay=1e-2),
                     "s": {k: [] for k in KINDS}, "loss": []}

    def step(run, s, feats, targets, way):
        streaming, left = streaming_step(s, 0.5), (0, 10)[(s // 2) % 2]
        kind = KINDS[0] if not streaming else KINDS[1 + (left > 0)]
        t = time.perf_counter()
        total, _ = losses(run["model"], feats, targets, streaming=streaming, left=left, qty_weight=2.0, **ways[way])
        run["opt"].zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(run["model"].parameters(), 5.0)
        run["opt"].step()
        run["s"][kind].append(time.perf_counter() - t)
        run["loss"].append(float(total.detach()))

    for s, (feats, targets) in enumerate(batches):
        feats = [(f + shift) * scale for f in feats]
        for way in ((False, True) if s % 2 else (True, False)):
            step(runs[way], s, feats, targets, way)
    with torch.no_grad():
        pairs = list(zip(runs[False]["model"].parameters(), runs[True]["model"].parameters()))
        drift = float(sum(((a - b) ** 2).sum() for a, b in pairs).sqrt() / sum((a**2).sum() for a, _ in pairs).sqrt())

    print(f"x86, {torch.get_num_threads()} threads (verified), batch {args.batch}, {args.steps} steps each, "
          f"torch {torch.__version__}: seconds per training step\n")
    print(f"| step | {names[0]} | {names[1]} | ratio |\n|---|---|---|---|")
    for kind in KINDS + ("all (the recipe's mix)",):
        a = runs[False]["s"].get(kind) or sum(runs[False]["s"].values(), [])
        b = runs[True]["s"].get(kind) or sum(runs[True]["s"].values(), [])
        print(f"| {kind} | {np.mean(a):.3f} | {np.mean(b):.3f} | {np.mean(a) / np.mean(b):.2f}x |")
    print(f"\nmean loss over the steps: {np.mean(runs[False]['loss']):.4f} ({names[0]}), "
          f"{np.mean(runs[True]['loss']):.4f} ({names[1]})")
    print(f"weights after {args.steps} steps: the two copies differ by {drift:.1e} of their norm")
    print(f"data loader: {data_s:.3f} CPU s per batch of {args.batch} (its own process, one thread)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
