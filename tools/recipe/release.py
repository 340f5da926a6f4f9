"""Turn a training run into the shipped demo model dir (`models/demo`).

`python -m paraedge_tools.recipe.release --train out/train --out models/demo [--corpus out/corpus --evaluate]`

Writes config.yaml, am.mvn (from training features), tokens.json/tokens.txt, model.npz (weights
rounded to fp16 and stored so: every shipped artifact derives from the same rounded weights) and the
INT8 streaming pair model_quant.onnx + decoder_quant.onnx; the fp32 ONNX files are left out to keep
the repo small (`paraedge export models/demo` regenerates them). Then renders the demo samples and,
with --evaluate, measures the model card's table.

Shipping new weights into models/demo also changes what was measured from the old ones; each has
its script: the `[0, 10, 5]` table (`evaluate --chunk-size 0,10,5 --limit 300 --write-card`), the
grammar's calibration, threshold and tables (`grammar_eval --write-calibration --write-doc`: the
stage-3 weights moved the threshold from 0.53 to 0.50), then the card's and README's prose.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np


def run_model_dir(train_dir: str, out: str, checkpoint: str = "best.pt", stream_left: int | None = None,
                  fp16_weights: bool = True) -> str:
    """A training run's checkpoint as a FunASR-format model dir (config.yaml, am.mvn, tokens, model.npz).
    The vocabulary and config are the run's own (`tokens.json`, `train_info.json` conf of an
    --init-dir run), else the recipe's. `stream_left`: the left context of the model's default
    streaming chunk size (config.yaml `chunk_size` [left, 10, 5]); default: the largest the run
    trained with (a preset run) or the init model's (an --init-dir run)."""
    import torch

    from paraedge_models.paraformer import Paraformer
    from paraedge_tools.recipe.train import build_vocab, model_config, write_model_dir

    info = json.load(open(os.path.join(train_dir, "train_info.json")))
    tokens = os.path.join(train_dir, "tokens.json")
    vocab = json.load(open(tokens, encoding="utf-8")) if os.path.exists(tokens) else build_vocab()
    if info.get("conf"):
        conf = info["conf"]
        if stream_left is not None:
            conf["chunk_size"] = [stream_left] + list(conf["chunk_size"][1:])
    else:
        if stream_left is None:
            trained = info.get("stream_left", 0)
            stream_left = max(trained) if isinstance(trained, list) else trained
        conf = model_config(info["preset"], len(vocab), stream_left)
    model = Paraformer(conf, len(vocab))
    state = torch.load(os.path.join(train_dir, checkpoint), weights_only=False)
    model.load_state_dict(state["model"] if "model" in state and "opt" in state else state)  # ckpt.pt or best.pt
    z = np.load(os.path.join(train_dir, "cmvn.npz"))
    return write_model_dir(out, model.eval(), conf, vocab, (z["shift"], z["scale"]), fp16_weights=fp16_weights)


def release(train_dir: str, out: str, checkpoint: str = "best.pt", stream_left: int | None = None) -> list[str]:
    """The run's model dir plus the INT8 ONNX pair; model.npz stored as fp16 (every artifact derives
    from the same fp16-rounded weights)."""
    from paraedge_models.export import export_dir

    run_model_dir(train_dir, out, checkpoint, stream_left)
    written = export_dir(out)
    w = np.load(os.path.join(out, "model.npz"))
    np.savez(os.path.join(out, "model.npz"), **{k: w[k].astype(np.float16) for k in w.files})  # exact: fp16-rounded
    for f in ("model.onnx", "decoder.onnx"):
        os.remove(os.path.join(out, f))
    return [f for f in written if os.path.exists(f)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", default="out/train")
    ap.add_argument("--out", default="models/demo")
    ap.add_argument("--checkpoint", default="best.pt")
    ap.add_argument("--corpus", default="out/corpus")
    ap.add_argument("--evaluate", action="store_true", help="measure and write the model card table")
    ap.add_argument("--stream-left", type=int, default=None,
                    help="default streaming chunk_size [N, 10, 5] (default: the largest left context trained)")
    args = ap.parse_args(argv)
    for f in release(args.train, args.out, args.checkpoint, args.stream_left):
        print(f"wrote {f} ({os.path.getsize(f) / 1e6:.2f} MB)")
    from paraedge_tools.recipe.make_samples import make

    make(os.path.join(args.out, "samples"))
    if args.evaluate:
        from paraedge_tools.recipe.evaluate import evaluate, write_card

        report = evaluate(args.out, args.corpus)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(report, f, indent=1)
        write_card(os.path.join(args.out, "README.md"), report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
