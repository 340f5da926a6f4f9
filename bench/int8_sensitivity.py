"""Which layers of a model's INT8 pair move its decodes: a layer-by-layer sensitivity scan.

`python bench/int8_sensitivity.py --corpus out/corpus8 [--model models/demo] [--n 1500] [--test-sets]`

The scan ranks layers on training renders only (`train.jsonl`: `--n` of them, seeded, each clean
and in car noise at 10, 5 and 0 dB), never on a test set. Every pair is compared with the fp32
ONNX pair on the same audio, onnxruntime, 1 thread:
- `shipped`: the export's own scheme (`models/export.py` `quantize`: every MatMul INT8 but the
  output projections);
- `smoothed`: that scheme after `smooth` (what `paraedge export --calibrate` writes), its ranges
  measured on `--probe` / 4 other training renders (seed 1), each clean and at 10, 5, 0 dB;
- `only-L`: layer L alone in INT8, everything else in float: L's share of the damage;
- `float-L1+...`: the shipped scheme with the most damaging layers kept in float, added one at a
  time while the pair stays within `--budget-mb` (the mission's 15 MB).

First, why the INT8 pair differs at all: per INT8 MatMul, over `--probe` of the fp32 decodes, how
far the input's largest channel stands above its median channel, and the SNR that the export's
rounding leaves the input (per tensor) and the weights (per output column).

Per pair: size, token edits against fp32, and the mean KL divergence of the decoder's posteriors
over the utterances whose CIF count agrees (a graded measure: token flips are too rare to rank by).
Speed is not measured here: `bench/readme_table.py` times a pair.
`--test-sets` then scores the shipped pair and each `float-` pair on every test set of the corpus
against the numpy reference, as `tools/recipe/evaluate.py`'s "INT8 = fp32 tokens" column does.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tools")]

from paraedge_models.export import RangeProbe  # noqa: E402  (light: numpy and edge only)

PAIR = ("model", "decoder")
MODEL_FILES = ("config.yaml", "am.mvn", "tokens.json", "tokens.txt", "model.npz")


def layers(fp32_dir: str) -> dict[str, list[tuple[str, str]]]:
    """The INT8 MatMuls of the pair by layer ('/encoder/encoders.1', ...): [(part, node name)]."""
    from paraedge_models.export import int8_matmuls

    out: dict[str, list[tuple[str, str]]] = {}
    for part in PAIR:
        for name, _, _ in int8_matmuls(os.path.join(fp32_dir, f"{part}.onnx")):
            out.setdefault("/".join(name.split("/")[:3]), []).append((part, name))
    return out


def build(fp32_dir: str, dst: str, keep_float: list[tuple[str, str]], ranges: dict | None = None) -> tuple[str, float]:
    """An INT8 pair in `dst` with `keep_float` MatMuls in float (smoothed with `ranges`, as
    `activation_ranges` gives them); its size in MB."""
    import shutil

    from paraedge_models.export import quantize

    os.makedirs(dst, exist_ok=True)
    for f in MODEL_FILES:
        shutil.copy(os.path.join(fp32_dir, f), dst)
    size = 0
    for part in PAIR:
        src, q = os.path.join(fp32_dir, f"{part}.onnx"), os.path.join(dst, f"{part}_quant.onnx")
        quantize(src, q, [name for p, name in keep_float if p == part], (ranges or {}).get(f"{part}.onnx"))
        size += os.path.getsize(q)
    return dst, size / 1e6


def calibration(corpus: str, n: int, seed: int = 0) -> list[np.ndarray]:
    from edge.asr.audio import load_audio
    from paraedge_tools.recipe.augment import add_noise
    from paraedge_tools.recipe.corpus import read_manifest

    rows = read_manifest(os.path.join(corpus, "train.jsonl"))
    pick = np.random.default_rng(seed).choice(len(rows), min(n, len(rows)), replace=False)
    xs = []
    for k, i in enumerate(pick):
        x = load_audio(rows[i]["path"])[0]
        xs.append(x)
        xs += [add_noise(x, snr, "car", np.random.default_rng(1000 + k)).astype(np.float32) for snr in (10, 5, 0)]
    return xs


class RoundingProbe(RangeProbe):
    """export's RangeProbe that also sums, per input, the signal energy and the error energy of the
    per-tensor uint8 rounding that dynamic quantization gives it (DynamicQuantizeLinear:
    [min(0, lo), max(0, hi)] in 255 steps)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.energy = {a: [0.0, 0.0] for a in self.names}

    def record(self, name, rows):
        super().record(name, rows)
        lo, hi = min(0.0, float(rows.min())), max(0.0, float(rows.max()))
        step = (hi - lo) / 255 or 1.0
        self.energy[name][0] += float(np.sum(rows**2))
        self.energy[name][1] += float(np.sum((np.round((rows - lo) / step) * step + lo - rows) ** 2))


def activations(fp32_dir: str, xs: list) -> list[dict]:
    """Per INT8 MatMul of the pair, over the decodes of `xs` (fp32, onnxruntime): how far its input's
    largest channel stands above the median channel (what smoothing evens out), and the SNR that
    per-tensor uint8 rounding leaves its input and per-column uint8 rounding leaves its weights
    (the export's scheme)."""
    import onnx
    from onnx import numpy_helper

    from paraedge_models.export import int8_matmuls, probed

    rec, probes = probed(fp32_dir, probe=RoundingProbe)
    for x in xs:
        rec.transcribe(x)
    rows = []
    for part in PAIR:
        path = os.path.join(fp32_dir, f"{part}.onnx")
        probe, inits = probes[f"{part}.onnx"], {i.name: i for i in onnx.load(path).graph.initializer}
        for name, a, w in int8_matmuls(path):
            ch = probe.absmax[a]
            wt = numpy_helper.to_array(inits[w]).astype(np.float64)   # [in, out]: a scale per output column
            lo, hi = np.minimum(wt.min(0), 0), np.maximum(wt.max(0), 0)
            step = np.where(hi > lo, (hi - lo) / 255, 1.0)
            werr = np.sum((np.round((wt - lo) / step) * step + lo - wt) ** 2)
            rows.append({"matmul": name, "channels": len(ch), "spread": float(ch.max() / np.median(ch)),
                         "act_snr": 10 * np.log10(probe.energy[a][0] / probe.energy[a][1]),
                         "weight_snr": 10 * np.log10(np.sum(wt**2) / werr)})
    return rows


def compare(ref: list, res: list) -> dict:
    from paraedge_tools.recipe.evaluate import edit_distance

    kl = [float(np.mean(np.sum(np.exp(a.log_probs) * (a.log_probs - b.log_probs), axis=-1)))
          for a, b in zip(ref, res) if a.log_probs.shape == b.log_probs.shape]
    return {"edits": sum(edit_distance(a.token_ids, b.token_ids) for a, b in zip(ref, res)),
            "tokens": sum(len(a.token_ids) for a in ref), "kl": float(np.mean(kl))}


def main(argv=None) -> int:
    from edge.asr.recognizer import Recognizer
    from paraedge_models.export import activation_ranges, fp32_copy

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "demo"))
    ap.add_argument("--corpus", default=os.path.join(ROOT, "out", "corpus"))
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "bench", "int8-sensitivity"))
    ap.add_argument("--n", type=int, default=1500, help="training renders (each clean and at 10, 5, 0 dB)")
    ap.add_argument("--probe", type=int, default=400,
                    help="calibration decodes the activation table reads; the smoothed pair's ranges come from as many "
                         "other draws (export --calibrate's minimum is 400)")
    ap.add_argument("--budget-mb", type=float, default=15.0)
    ap.add_argument("--test-sets", action="store_true", help="also score the pairs on every test set")
    args = ap.parse_args(argv)
    if not os.path.exists(os.path.join(args.corpus, "train.jsonl")):
        ap.error(f"{args.corpus}/train.jsonl not found: build the corpus with python -m paraedge_tools.recipe.corpus")
    fp32 = fp32_copy(args.model, os.path.join(args.out, "fp32"))
    groups = layers(fp32)
    xs = calibration(args.corpus, args.n)
    print(f"{len(xs)} calibration decodes (training renders), {len(groups)} layers", flush=True)
    acts = activations(fp32, xs[: args.probe])
    print(f"\nINT8 MatMul inputs over {min(args.probe, len(xs))} of those decodes (fp32): the largest channel's "
          "magnitude over the median channel's; the SNR of per-tensor uint8 activations and per-channel "
          "uint8 weights\n\n| MatMul | in | largest / median channel | activation SNR | weight SNR |\n|---|---|---|---|---|")
    for r in acts:
        print(f"| {r['matmul']} | {r['channels']} | {r['spread']:.1f} | {r['act_snr']:.1f} dB | {r['weight_snr']:.1f} dB |")
    print(f"| all {len(acts)} | | {min(r['spread'] for r in acts):.1f}-{max(r['spread'] for r in acts):.1f} | "
          f"{min(r['act_snr'] for r in acts):.1f}-{max(r['act_snr'] for r in acts):.1f} dB | "
          f"{min(r['weight_snr'] for r in acts):.1f}-{max(r['weight_snr'] for r in acts):.1f} dB |\n", flush=True)
    ref = list(map(Recognizer(fp32, "onnxruntime", threads=1).transcribe, xs))

    def scan(name, keep, ranges=None):
        d, mb = build(fp32, os.path.join(args.out, name), keep, ranges)
        r = compare(ref, list(map(Recognizer(d, "onnxruntime", int8=True, threads=1).transcribe, xs)))
        r.update(mb=mb, dir=d)
        print(f"| {name} | {mb:.2f} | {r['edits']} / {r['tokens']} | {r['kl']:.2e} |", flush=True)
        return r

    print("| pair | MB | token edits vs fp32 | mean KL |\n|---|---|---|---|")
    results: dict = {}
    results["shipped"] = scan("shipped", [])
    # the export's smoothing, its ranges measured on other training renders than those compared
    ranges = activation_ranges(fp32, calibration(args.corpus, args.probe // 4, seed=1))
    results["smoothed"] = scan("smoothed", [], ranges)
    everything = [m for ms in groups.values() for m in ms]
    for g, ms in groups.items():
        results[f"only-{g}"] = scan(f"only-{g.strip('/').replace('/', '.')}", [m for m in everything if m not in ms])
    ranked = sorted(groups, key=lambda g: -results[f"only-{g}"]["kl"])
    keep, names = [], []
    for g in ranked:
        keep, names = keep + groups[g], names + [g.split("/")[-1]]
        name = "float-" + "+".join(names)
        results[name] = scan(name, keep)
        if results[name]["mb"] > args.budget_mb:
            break
    if args.test_sets:
        from paraedge_tools.recipe.corpus import read_manifest
        from paraedge_tools.recipe.evaluate import corpus_sets, decode_all, token_agreement

        pairs = [n for n in results if n in ("shipped", "smoothed") or n.startswith("float-")]
        print("\n| test set | " + " | ".join(f"{n} ({results[n]['mb']:.2f} MB)" for n in pairs) + " |")
        print("|---|" + "---|" * len(pairs))
        ref_rec = Recognizer(args.model, "ref")
        recs = {n: Recognizer(results[n]["dir"], "onnxruntime", int8=True, threads=1) for n in pairs}
        for s in corpus_sets(args.corpus):
            rows = read_manifest(os.path.join(args.corpus, f"{s}.jsonl"))
            want = decode_all(ref_rec, rows, False)
            cells = [f"{100 * token_agreement(want, decode_all(recs[n], rows, False)):.2f} %" for n in pairs]
            print(f"| {s} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
