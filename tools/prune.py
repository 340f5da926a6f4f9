"""`paraedge prune`: structured L1 pruning of the FFN channels of a FunASR-format Paraformer.

    paraedge prune --model models/demo --ratio 0.25 -o out/demo-p25 --corpus out/corpus --finetune-steps 200
    paraedge prune --model models/demo --ratio 0.1,0.2,0.3 -o out/sweep --eval-corpus out/corpus

Every FFN of every encoder and decoder block (decoders, decoders2, decoders3) drops the same number
of hidden channels, k = (1 - ratio) * linear_units kept (rounded to a multiple of 16, --multiple),
each block choosing its own top-k by L1 importance. FunASR's SANMEncoder and ParaformerSANMDecoder take one `linear_units` for all their
blocks, so a per-block width cannot be expressed in config.yaml: the width is uniform, the choice
of channels is per block. Importance of hidden channel j:
- encoder (`PositionwiseFeedForward`, y = W2 relu(W1 x + b1) + b2):
  (|W1[j,:]|_1 + |b1[j]|) * |W2[:,j]|_1, the L1 of what flows into the channel times the L1 of
  where it goes (a channel with a zero row, bias or column contributes nothing and goes first:
  then the encoder output is unchanged exactly);
- decoder (`PositionwiseFeedForwardDecoderSANM`, y = W2 LN(relu(W1 x + b1)), no b2): the same
  product times (|g[j]| + |beta[j]|) of the hidden LayerNorm, which scales the channel's output.
  The LayerNorm's mean and variance run over the kept channels, so even a dead channel's removal
  changes the decoder slightly: the recovery fine-tune is there for that, and the accuracy check.

Attention heads are not pruned: in SAN-M the FSMN memory block and the residual are tied to
n_feat = output_size, so removing a head would change d_model everywhere (embeddings, CIF,
decoder); that is a different, smaller model, not a pruning of this one.

The output is a complete FunASR-format model dir (config.yaml with the new linear_units, am.mvn,
tokens, model.pt that FunASR's AutoModel loads) exported as ParaEdge exports any model
(model.npz, tokens.txt, ONNX and the INT8 `_quant` pair; `paraedge compile` makes a TVM bundle of
it). `prune.json` records the source, the ratio, the channels kept per block and every accuracy
measured. With `--finetune-steps N --corpus DIR` the pruned weights are fine-tuned by the recipe
(`paraedge_tools.recipe.train`, lr 2e-4, streaming batches with left context 0 and 10 as the demo
model was trained; weights rounded to fp16 as the demo release) and the output holds that model.

Accuracy check at every step: whole-command accuracy of the unpruned model, the pruned one and the
fine-tuned one on the corpus's held-out sets (test_clean, test_snr10), fp32 numpy reference and
INT8 onnxruntime, offline, printed side by side.

Measured on the demo model (8.21 M parameters, FFN 1024; held-out clean, 776 utterances, fp32):
unpruned 99.6 %; 0.25 (FFN 768, 6.89 M) 99.4 % with no fine-tune, 99.4 % after 60 steps (2.1 min,
1 thread), so N = 0 already keeps >= 97 %; 0.75 (FFN 256, 4.26 M) 36.7 %, 97.2 % after 100 steps
(5.9 min, 2 threads on a loaded host). The ratio sweep is in models/demo/README.md
(tools/recipe/prune_table.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import shutil
import sys
import time

import numpy as np

from edge.errors import ParaEdgeError

FORMAT = "paraedge-pruned/1"
MANIFEST = "prune.json"
EVAL_SETS = ("test_clean", "test_snr10")
FFN_W1 = re.compile(r"^((encoder|decoder)\.\w+\.\d+\.feed_forward)\.w_1\.weight$")
# fine-tune defaults: the demo model's last phase (lr 2e-4 from trained weights, streaming with and
# without 600 ms of left context), see models/demo/README.md
FT_LR, FT_BATCH, FT_STREAM_LEFT = 2e-4, 24, (0, 10)
# Kept widths are multiples of 16: TVM's INT8 kernels pack weights in 16-column panels and step K
# by 16 (`sdot`, tools/compiler/int8.py). Measured on the demo at ratio 0.2: FFN 819 made the A76
# TVM INT8 bundle 2.44x the unpruned ORT INT8 instructions (unpruned TVM: 1.36x); see --multiple.
MULTIPLE = 16


# ---------------------------------------------------------------- pruning (numpy, no torch)

def check_ratio(ratio) -> float:
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        raise ParaEdgeError(f"--ratio {ratio!r}: not a number; give the fraction of FFN channels to remove, "
                            f"within (0, 1), e.g. 0.25") from None
    if not (0.0 < r < 1.0):  # also refuses nan and inf
        raise ParaEdgeError(f"--ratio {ratio}: must be within (0, 1), the fraction of FFN channels to remove (e.g. 0.25)")
    return r


def ffn_blocks(weights: dict, side: str) -> list[str]:
    """The feed-forward prefixes of one side ("encoder" / "decoder"), in weight order."""
    return [m.group(1) for k in weights if (m := FFN_W1.match(k)) and m.group(2) == side]


def importance(weights: dict, prefix: str) -> np.ndarray:
    """L1 importance of each hidden channel of one FFN (see the module docstring)."""
    w1 = np.abs(np.asarray(weights[f"{prefix}.w_1.weight"], np.float64))
    w2 = np.abs(np.asarray(weights[f"{prefix}.w_2.weight"], np.float64))
    s = w1.sum(1)
    if f"{prefix}.w_1.bias" in weights:
        s = s + np.abs(np.asarray(weights[f"{prefix}.w_1.bias"], np.float64))
    s = s * w2.sum(0)
    if f"{prefix}.norm.weight" in weights:  # the decoder's LayerNorm over the hidden channels
        s = s * (np.abs(np.asarray(weights[f"{prefix}.norm.weight"], np.float64))
                 + np.abs(np.asarray(weights.get(f"{prefix}.norm.bias", 0.0), np.float64)))
    return s


def kept_units(units: int, ratio: float, multiple: int = MULTIPLE) -> int:
    """Channels kept: (1 - ratio) * units rounded (half up) to a multiple of `multiple`, within
    [multiple, units] (a width under `multiple` is kept as it is)."""
    if units <= multiple:
        return units
    k = int(math.floor((1.0 - ratio) * units / multiple + 0.5)) * multiple
    return min(units, max(multiple, k))


def plan(weights: dict, conf: dict, ratio: float, multiple: int = MULTIPLE) -> dict:
    """{ffn prefix: sorted channel indices kept}, every block of a side keeping the same number."""
    ratio = check_ratio(ratio)
    kept = {}
    for side in ("encoder", "decoder"):
        units = int((conf.get(f"{side}_conf") or {}).get("linear_units", 2048))
        k = kept_units(units, ratio, multiple)
        for prefix in ffn_blocks(weights, side):
            n = np.shape(weights[f"{prefix}.w_1.weight"])[0]
            if n != units:
                raise ParaEdgeError(f"{prefix}.w_1.weight has {n} channels but config.yaml {side}_conf.linear_units is "
                                    f"{units}; use the config.yaml that came with these weights")
            order = np.argsort(-importance(weights, prefix), kind="stable")  # ties: the lower index stays
            kept[prefix] = np.sort(order[:k])
    return kept


def prune_weights(weights: dict, conf: dict, ratio, multiple: int = MULTIPLE) -> tuple[dict, dict]:
    """(pruned weights, config with the new linear_units); inputs are not modified, dtypes kept."""
    kept = plan(weights, conf, ratio, multiple)
    out, conf = dict(weights), copy.deepcopy(conf)
    for prefix, idx in kept.items():
        for name, axis in (("w_1.weight", 0), ("w_1.bias", 0), ("norm.weight", 0), ("norm.bias", 0), ("w_2.weight", 1)):
            key = f"{prefix}.{name}"
            if key in out:
                out[key] = np.take(np.asarray(out[key]), idx, axis=axis)
    for side in ("encoder", "decoder"):
        sc = conf.setdefault(f"{side}_conf", {})
        sc["linear_units"] = kept_units(int(sc.get("linear_units", 2048)), check_ratio(ratio), multiple)
    return out, conf


def n_params(weights: dict) -> int:
    return int(sum(np.size(v) for v in weights.values()))


# ---------------------------------------------------------------- model dirs

def write_model_dir(out: str, weights: dict, conf: dict, source: str, export: bool = True) -> list[str]:
    """A FunASR-format dir: config.yaml, the source's tokens and am.mvn, model.pt (what FunASR's
    AutoModel reads), then ParaEdge's export (model.npz, tokens.txt, ONNX + INT8)."""
    import torch
    import yaml

    from edge.asr.modeldir import tokens_file

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(conf, f, allow_unicode=True, sort_keys=False)
    tok = tokens_file(source)
    shutil.copyfile(tok, os.path.join(out, os.path.basename(tok)))
    if os.path.isfile(os.path.join(source, "am.mvn")):
        shutil.copyfile(os.path.join(source, "am.mvn"), os.path.join(out, "am.mvn"))
    # export reads model.npz before model.pt: only model.pt is written here, export derives the rest
    torch.save({k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in weights.items()},
               os.path.join(out, "model.pt"))
    if not export:
        return [os.path.join(out, f) for f in ("config.yaml", "model.pt")]
    from paraedge_models.export import export_dir

    return export_dir(out)


def read_model(model_dir: str) -> tuple[dict, dict]:
    """(float32 weights, config.yaml as a dict) of a model dir, with one-line errors."""
    from edge.asr.modeldir import ModelDir

    if not os.path.isdir(model_dir):
        raise ParaEdgeError(f"--model {model_dir}: model dir not found; give a FunASR-format dir (config.yaml, "
                            f"tokens, am.mvn, model.pt or model.npz)")
    md = ModelDir(model_dir)
    weights = md.weights
    if not ffn_blocks(weights, "encoder"):
        raise ParaEdgeError(f"{md.weights_file}: no encoder feed_forward.w_1 weights; is this a Paraformer model dir?")
    return weights, copy.deepcopy(md.config.raw)


# ---------------------------------------------------------------- accuracy

def check_corpus(corpus: str, sets=EVAL_SETS, what: str = "--eval-corpus") -> None:
    if not os.path.isdir(corpus):
        raise ParaEdgeError(f"{what} {corpus}: not found; build one with `python -m paraedge_tools.recipe.corpus {corpus}`")
    for name in sets:
        if not os.path.isfile(os.path.join(corpus, f"{name}.jsonl")):
            raise ParaEdgeError(f"{what} {corpus}: no {name}.jsonl manifest; build the corpus with "
                                f"`python -m paraedge_tools.recipe.corpus {corpus}`")


def accuracy(model_dir: str, corpus: str, limit: int | None = None, sets=EVAL_SETS) -> dict:
    """{set: {"n", "fp32": acc, "int8": acc or None}}: whole-command accuracy, offline decoding;
    fp32 is the numpy reference, INT8 onnxruntime on the `_quant` pair (1 thread)."""
    from edge.asr.modeldir import ModelDir
    from edge.asr.recognizer import Recognizer
    from paraedge_tools.recipe.corpus import read_manifest
    from paraedge_tools.recipe.evaluate import decode_all, evenly_spaced, score

    recs = {"fp32": Recognizer(model_dir, "ref")}
    if ModelDir(model_dir).has("model_quant.onnx"):
        recs["int8"] = Recognizer(model_dir, "onnxruntime", int8=True, threads=1)
    out = {}
    for name in sets:
        rows = evenly_spaced(read_manifest(os.path.join(corpus, f"{name}.jsonl")), limit)  # every phrase and voice
        res = {"n": len(rows), "fp32": None, "int8": None}
        for prec, rec in recs.items():
            res[prec] = score(rec, rows, decode_all(rec, rows, False))["acc"]
        out[name] = res
    return out


def table(rows: list[tuple[str, int, int, dict | None]]) -> str:
    """rows: (label, parameters, FFN units enc/dec as text, accuracy or None)."""
    head = f"{'model':34s} {'params':>8s} {'FFN':>9s}"
    for name in EVAL_SETS:
        head += f"  {name + ' fp32 / INT8':>26s}"
    lines = [head]
    for label, params, ffn, acc in rows:
        line = f"{label:34s} {params / 1e6:7.2f}M {ffn:>9s}"
        for name in EVAL_SETS:
            r = (acc or {}).get(name)
            if r is None:
                cell = "not measured"
            else:
                pct = [f"{100 * r[p]:.1f} %" if r[p] is not None else "-" for p in ("fp32", "int8")]
                cell = f"{pct[0]} / {pct[1]} (n={r['n']})"
            line += f"  {cell:>26s}"
        lines.append(line)
    return "\n".join(lines)


# ---------------------------------------------------------------- fine-tune

def finetune(pruned_dir: str, corpus: str, steps: int, work: str, lr: float = FT_LR, batch: int = FT_BATCH,
             threads: int = 1, stream_left=FT_STREAM_LEFT, seed: int = 0, log=print) -> dict:
    """The recipe's trainer on the pruned weights; returns the final weights, rounded to fp16
    (every artefact of the demo model derives from fp16-rounded weights; see recipe/release.py)."""
    import torch

    from paraedge_tools.recipe.train import train

    shutil.rmtree(work, ignore_errors=True)  # our scratch: a stale ckpt.pt would be resumed
    try:
        train(corpus, work, steps, batch=batch, lr=lr, seed=seed, eval_every=steps, threads=threads, log=log,
              init_dir=pruned_dir, streaming_ratio=0.5, stream_left=list(stream_left))
    except ValueError as exc:  # e.g. a corpus token the model has no output for
        raise ParaEdgeError(str(exc)) from None
    state = torch.load(os.path.join(work, "ckpt.pt"), weights_only=False)["model"]
    return {k: v.detach().half().float().numpy() for k, v in state.items()}


# ---------------------------------------------------------------- the command

def _ffn(conf: dict) -> str:
    return f"{conf['encoder_conf'].get('linear_units')}/{conf['decoder_conf'].get('linear_units')}"


def prune_dir(model_dir: str, ratio, out: str, corpus: str | None = None, finetune_steps: int = 0,
              eval_corpus: str | None = None, eval_limit: int | None = None, work: str | None = None,
              threads: int = 1, lr: float = FT_LR, batch: int = FT_BATCH, baseline: dict | None = None,
              multiple: int = MULTIPLE, log=print) -> dict:
    """Prune `model_dir` at `ratio` into `out` (a model dir written by ParaEdge, or new/empty),
    optionally fine-tune, measuring accuracy at each step. Returns the report (also in prune.json)."""
    from paraedge_tools import out_dir
    from paraedge_tools.output import OutputDir, digests

    ratio = check_ratio(ratio)
    if finetune_steps and not corpus:
        raise ParaEdgeError("--finetune-steps needs --corpus DIR (a corpus with train.jsonl, from "
                            "`python -m paraedge_tools.recipe.corpus DIR`)")
    if finetune_steps:
        check_corpus(corpus, ("train",), "--corpus")
    if eval_corpus:
        check_corpus(eval_corpus)
    weights, conf = read_model(model_dir)
    output = OutputDir(out, MANIFEST, FORMAT, "pruned model dir")  # refuses a folder that is not ours, before any work
    work = os.path.abspath(work or out_dir("prune-work", os.path.basename(os.path.abspath(out))))
    if os.path.commonpath([work, os.path.abspath(out)]) == os.path.abspath(out):
        raise ParaEdgeError(f"--work {work}: must be outside -o {out} (the output folder is replaced at the end)")
    report = {"format": FORMAT, "source": os.path.abspath(model_dir), "ratio": ratio,
              "linear_units": {"before": _ffn(conf)}, "eval_sets": list(EVAL_SETS), "eval_limit": eval_limit,
              "steps": []}
    rows = []
    if eval_corpus:
        if baseline is None:
            t0 = time.time()
            baseline = accuracy(model_dir, eval_corpus, eval_limit)
            log(f"unpruned accuracy measured in {time.time() - t0:.0f} s")
        rows.append(("unpruned", n_params(weights), _ffn(conf), baseline))
        report["steps"].append({"step": "unpruned", "parameters": n_params(weights), "accuracy": baseline})
    kept = plan(weights, conf, ratio, multiple)
    pruned, pconf = prune_weights(weights, conf, ratio, multiple)
    report["multiple"] = multiple
    report["linear_units"]["after"] = _ffn(pconf)
    report["kept_channels"] = {p: [int(i) for i in idx] for p, idx in kept.items()}
    label = f"pruned {ratio:g}"
    with output as tmp:
        target = os.path.join(work, "pruned") if finetune_steps else tmp
        if finetune_steps:
            shutil.rmtree(target, ignore_errors=True)
        t0 = time.time()
        write_model_dir(target, pruned, pconf, model_dir)
        log(f"pruned at {ratio:g}: FFN {report['linear_units']['before']} -> {report['linear_units']['after']} "
            f"(encoder/decoder), {n_params(weights) / 1e6:.2f} M -> {n_params(pruned) / 1e6:.2f} M parameters; "
            f"written and exported in {time.time() - t0:.0f} s")
        step = {"step": label, "parameters": n_params(pruned)}
        if eval_corpus:
            step["accuracy"] = accuracy(target, eval_corpus, eval_limit)
            rows.append((label, n_params(pruned), _ffn(pconf), step["accuracy"]))
            log(table(rows))
        report["steps"].append(step)
        if finetune_steps:
            t0 = time.time()
            tuned = finetune(target, corpus, finetune_steps, os.path.join(work, "finetune"), lr=lr, batch=batch,
                             threads=threads, log=log)
            minutes = (time.time() - t0) / 60
            write_model_dir(tmp, tuned, pconf, model_dir)
            label = f"pruned {ratio:g} + {finetune_steps} steps"
            step = {"step": label, "parameters": n_params(tuned), "finetune": {
                "steps": finetune_steps, "lr": lr, "batch": batch, "threads": threads, "minutes": round(minutes, 1),
                "stream_left": list(FT_STREAM_LEFT), "corpus": os.path.abspath(corpus)}}
            log(f"fine-tuned {finetune_steps} steps in {minutes:.1f} min")
            if eval_corpus:
                step["accuracy"] = accuracy(tmp, eval_corpus, eval_limit)
                rows.append((label, n_params(tuned), _ffn(pconf), step["accuracy"]))
                log(table(rows))
            report["steps"].append(step)
        report["files"] = digests(tmp, skip=MANIFEST)
        with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
    report["table"] = table(rows) if rows else ""
    return report


def parse_ratios(text: str) -> list[float]:
    ratios = [check_ratio(r.strip()) for r in str(text).split(",")]
    if len(set(ratios)) != len(ratios):
        raise ParaEdgeError(f"--ratio {text}: a ratio is listed twice")
    return ratios


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="paraedge prune", description=__doc__.split("\n\n")[0],
        epilog="Every block keeps the same number of FFN channels (FunASR has one linear_units per encoder and "
               "decoder), each block its own top-L1 ones. Attention heads are not pruned: SAN-M ties the FSMN and "
               "the residual to d_model. A ratio list (0.1,0.2,0.3) is a sweep: OUT/ratio-0.10, ...")
    ap.add_argument("--model", "-m", required=True, help="FunASR-format model dir to prune")
    ap.add_argument("--ratio", "-r", required=True,
                    help="fraction of FFN channels to remove, within (0, 1); a comma list sweeps")
    ap.add_argument("-o", "--output", required=True, help="the pruned model dir (a sweep: a folder of ratio-R dirs)")
    ap.add_argument("--corpus", help="recipe corpus (train.jsonl) for the fine-tune; also the default --eval-corpus")
    ap.add_argument("--finetune-steps", type=int, default=0, help="recovery fine-tune steps (needs --corpus)")
    ap.add_argument("--eval-corpus", help="corpus whose test_clean/test_snr10 measure accuracy at each step "
                                          "(default: --corpus; none: no accuracy check)")
    ap.add_argument("--eval-limit", type=int, default=None, help="utterances per held-out set (default: all)")
    ap.add_argument("--lr", type=float, default=FT_LR, help=f"fine-tune peak learning rate (default {FT_LR})")
    ap.add_argument("--batch", type=int, default=FT_BATCH)
    ap.add_argument("--threads", type=int, default=1, help="fine-tune torch threads (default 1)")
    ap.add_argument("--multiple", type=int, default=MULTIPLE,
                    help=f"kept FFN widths are multiples of this (default {MULTIPLE}: TVM's INT8 panels; 1: exact ratio)")
    ap.add_argument("--work", help="scratch for the fine-tune run: the pruned model before it, the training log and checkpoint "
                                     "(default: out/prune-work/NAME)")
    a = ap.parse_args(argv)
    ratios = parse_ratios(a.ratio)
    if a.finetune_steps < 0:
        raise ParaEdgeError(f"--finetune-steps {a.finetune_steps}: must be >= 0")
    if a.multiple < 1:
        raise ParaEdgeError(f"--multiple {a.multiple}: must be >= 1")
    if a.eval_limit is not None and a.eval_limit < 1:
        raise ParaEdgeError(f"--eval-limit {a.eval_limit}: must be >= 1")
    if a.finetune_steps and not a.corpus:
        raise ParaEdgeError("--finetune-steps needs --corpus DIR (a corpus with train.jsonl, from "
                            "`python -m paraedge_tools.recipe.corpus DIR`)")
    from paraedge_tools.output import OutputDir

    read_model(a.model)  # one-line errors before any work
    outs = [a.output if len(ratios) == 1 else os.path.join(a.output, f"ratio-{r:.2f}") for r in ratios]
    for out in outs:
        OutputDir(out, MANIFEST, FORMAT, "pruned model dir")  # refuses a folder that is not ours
    eval_corpus = a.eval_corpus or a.corpus
    if eval_corpus:
        check_corpus(eval_corpus)
    else:
        print("note: no --corpus or --eval-corpus: accuracy is not checked", file=sys.stderr)
    baseline, summary = None, []
    for r, out in zip(ratios, outs):
        work = a.work if len(ratios) == 1 or not a.work else os.path.join(a.work, f"ratio-{r:.2f}")
        rep = prune_dir(a.model, r, out, a.corpus, a.finetune_steps, eval_corpus, a.eval_limit, work, a.threads,
                        a.lr, a.batch, baseline, a.multiple)
        if eval_corpus:
            baseline = rep["steps"][0]["accuracy"]  # measured once per sweep
        print(f"wrote {out}")
        summary += rep["table"].splitlines()[1 + (len(summary) > 0):]  # the unpruned row once
    if len(ratios) > 1 and summary:
        print("sweep:\n" + table([]).splitlines()[0] + "\n" + "\n".join(summary))
    return 0


if __name__ == "__main__":
    from paraedge_tools import run_main

    run_main(main)
