"""The demo model's pruning table: FFN pruning ratio x {fp32, INT8}, measured in one run.

`python -m paraedge_tools.recipe.prune_table --model models/demo --corpus out/corpus [--limit N] [--write-card]`

For each ratio (0 = the shipped model, then 0.1, 0.2, 0.3, 0.5; `paraedge prune`'s structured L1
FFN pruning, no fine-tune) it measures:
- parameters, fp32 size (4 bytes a parameter) and INT8 size (model_quant.onnx + decoder_quant.onnx);
- whole-command accuracy, offline, on the held-out test_clean and test_snr10 sets: fp32 (numpy
  reference) and INT8 (onnxruntime), the evaluator `paraedge prune` uses;
- x86 wall time, onnxruntime 1 thread, fp32 and INT8, as ratios to the unpruned INT8 model: the
  same utterances decoded by every model in turn, several rounds, the fastest round of each kept
  (the machine is shared: interleaving makes every model see the same load);
- emulated Cortex-A76 instructions per audio second (tools/emu/arm_profile.py: qemu-user with the
  instruction-count plugin, exact run to run), onnxruntime fp32 and INT8 and a TVM INT8 bundle
  for the `qemu-a76` board, as ratios likewise. The bundle is offline (encoder and decoder, one
  function each for every length): ~20 s to compile here.
The pruning comes first (fp32 weights), then the INT8 export quantizes the pruned model: each INT8
column is a quantized pruned model, the file a board would run.

With --write-card the table and a sentence on the seed's figures (8-bit loses < 1 %; 20 %
structured L1 channel pruning loses < 2 %; together 1/4 the size and 3.2x faster on a Jetson
Xavier) go into MODEL/README.md between `<!-- prune-table:begin -->` and `<!-- prune-table:end -->`.
"""

from __future__ import annotations

import argparse
import json
import os
import time

RATIOS = (0.0, 0.1, 0.2, 0.3, 0.5)
BEGIN, END = "<!-- prune-table:begin -->", "<!-- prune-table:end -->"
QUANT = ("model_quant.onnx", "decoder_quant.onnx")


def model_dirs(model: str, work: str, ratios, log=print) -> dict:
    """{ratio: model dir with fp32 and INT8 ONNX}: the unpruned model as an fp32 copy (the demo
    ships only the INT8 pair), each pruned one by `paraedge prune`."""
    from paraedge_models.export import fp32_copy
    from paraedge_tools.prune import prune_dir

    dirs = {}
    for r in ratios:
        if r == 0:
            dirs[r] = fp32_copy(model, os.path.join(work, "ratio-0.00"))
        else:
            dirs[r] = os.path.join(work, f"ratio-{r:.2f}")
            prune_dir(model, r, dirs[r], log=log)
    return dirs


def wall_times(dirs: dict, rows: list, rounds: int = 3) -> tuple[dict, dict]:
    """({(ratio, "fp32"/"int8"): wall seconds}, {...: CPU seconds}) to decode `rows` offline with
    onnxruntime, 1 thread (it runs in the calling thread, so the process's CPU time is the decode's:
    unlike wall time, it does not count the time other jobs on a shared host hold the core)."""
    from edge.asr.audio import load_audio
    from edge.asr.recognizer import Recognizer

    audio = [load_audio(r["path"])[0] for r in rows]
    recs = {(r, p): Recognizer(d, "onnxruntime", int8=p == "int8", threads=1) for r, d in dirs.items()
            for p in ("fp32", "int8")}
    for rec in recs.values():  # warm-up: session creation and first-run allocations
        rec.transcribe(audio[0])
    best = {k: float("inf") for k in recs}
    cpu = {k: float("inf") for k in recs}
    for _ in range(rounds):
        for k, rec in recs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for x in audio:
                rec.transcribe(x)
            best[k] = min(best[k], time.perf_counter() - t0)
            cpu[k] = min(cpu[k], time.process_time() - c0)
    return best, cpu


def a76_insns(dirs: dict, audio: list[str], tvm_work: str | None = None) -> dict:
    """{(ratio, "fp32" / "int8" / "tvm"): M instructions per audio second} on the emulated
    Cortex-A76: onnxruntime fp32 and INT8, and with `tvm_work` an INT8 TVM bundle for the board
    `qemu-a76` (offline: encoder and decoder for every length; ~20 s a compile here)."""
    from paraedge_tools.emu.arm_profile import emulated_profile

    out = {}
    for r, d in dirs.items():
        rep = emulated_profile(d, audio, ["onnxruntime", "onnxruntime:int8"], streaming=False)
        out[(r, "fp32")] = rep["backends"]["onnxruntime"]["minsns_per_audio_s"]
        out[(r, "int8")] = rep["backends"]["onnxruntime:int8"]["minsns_per_audio_s"]
        if tvm_work:
            from paraedge_tools.compiler.compile import compile_bundle

            bundle = os.path.join(tvm_work, f"tvm-a76-ratio-{r:.2f}")
            compile_bundle(d, "qemu-a76", bundle, streaming=False, int8=True, log=lambda *_: None)
            rep = emulated_profile(bundle, audio, ["tvm"], streaming=False)
            out[(r, "tvm")] = rep["backends"]["tvm"]["minsns_per_audio_s"]
    return out


def measure(model: str, corpus: str, work: str, limit: int | None = None, ratios=RATIOS, wall_utts: int = 40,
            arm: bool = True, tvm: bool = True, log=print) -> dict:
    from edge.asr.modeldir import ModelDir
    from paraedge_tools.prune import EVAL_SETS, accuracy, check_corpus, n_params
    from paraedge_tools.recipe.corpus import read_manifest

    check_corpus(corpus, what="--corpus")
    t0 = time.time()
    dirs = model_dirs(model, work, ratios, log=log)
    rep = {"model": os.path.abspath(model), "corpus": os.path.abspath(corpus), "limit": limit, "rows": {}}
    for r, d in dirs.items():
        md = ModelDir(d)
        params = n_params(md.weights)
        rep["rows"][r] = {"ffn": f"{md.config.encoder_conf['linear_units']}/{md.config.decoder_conf['linear_units']}",
                          "params": params, "fp32_mb": params * 4 / 2**20,
                          "int8_mb": sum(os.path.getsize(md.file(f)) for f in QUANT if md.has(f)) / 2**20}
        t1 = time.time()
        rep["rows"][r]["acc"] = accuracy(d, corpus, limit)
        log(f"ratio {r:g}: accuracy in {time.time() - t1:.0f} s: {json.dumps(rep['rows'][r]['acc'])}")
    clean = read_manifest(os.path.join(corpus, f"{EVAL_SETS[0]}.jsonl"))
    wall_rows = clean[:: max(1, len(clean) // wall_utts)][:wall_utts]
    load = os.getloadavg()[0]
    wall, cpu = wall_times(dirs, wall_rows)
    rep["wall_utts"], rep["load_avg"] = len(wall_rows), round((load + os.getloadavg()[0]) / 2, 1)
    for (r, p), s in wall.items():
        rep["rows"][r][f"wall_{p}"] = s / wall[(0.0, "int8")]
        rep["rows"][r][f"wall_{p}_s"] = s
        rep["rows"][r][f"cpu_{p}"] = cpu[(r, p)] / cpu[(0.0, "int8")]
        rep["rows"][r][f"cpu_{p}_s"] = cpu[(r, p)]
    log(f"wall times measured ({len(wall_rows)} utterances x {len(wall)} models)")
    if arm:
        samples = os.path.join(model, "samples")
        audio = [os.path.join(samples, f) for f in ("02_alexa_en.wav", "03_okay_nabu_zh.wav")]
        rep["a76_audio"] = [os.path.basename(a) for a in audio]
        insns = a76_insns(dirs, audio, work if tvm else None)
        for (r, p), v in insns.items():
            rep["rows"][r][f"a76_{p}"] = v
            rep["rows"][r][f"a76_{p}_x"] = v / insns[(0.0, "int8")] if 0.0 in dirs else None
        log("A76 instruction counts measured")
    rep["seconds"] = time.time() - t0
    return rep


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def card(rep: dict, tvm_note: str) -> str:
    lim = f"an evenly spread subset of {rep['limit']} utterances per set" if rep["limit"] else "all utterances"
    n = {k: v["n"] for k, v in next(iter(rep["rows"].values()))["acc"].items()}
    lines = [
        f"Measured by `tools/recipe/prune_table.py` in one run ({rep['seconds'] / 60:.0f} min, 2-core x86 host): "
        f"`paraedge prune` at each ratio, no fine-tune. Accuracy: whole-command, offline, held-out voices, "
        f"{lim} (clean n={n.get('test_clean')}, 10 dB n={n.get('test_snr10')}). x86: onnxruntime, 1 thread, "
        f"{rep['wall_utts']} clean utterances, fastest of 3 interleaved rounds, wall time and (CPU time); the host "
        f"was shared (load average {rep.get('load_avg', '?')} on 2 cores), so wall times are noisy and CPU times, "
        f"which leave out the time other jobs held the core, are the steadier x86 figure. A76: emulated Cortex-A76 instructions "
        f"per audio second (qemu-user, `{' + '.join(rep.get('a76_audio', []))}`, offline, 1 thread; TVM: INT8 bundle "
        f"for `qemu-a76`, offline). "
        "Speed columns are ratios to the unpruned INT8 model (lower is faster).",
        "",
        "| ratio | FFN enc/dec | params | fp32 size | INT8 size | clean fp32 / INT8 | 10 dB fp32 / INT8 "
        "| x86 wall (CPU) fp32 / INT8 | A76 M insn per audio s, ORT fp32 / ORT INT8 / TVM INT8 "
        "| A76 ORT fp32 / ORT INT8 / TVM INT8 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r, row in rep["rows"].items():
        acc = row["acc"]
        a76 = (f"{row['a76_fp32']:.1f} / {row['a76_int8']:.1f} / " if "a76_int8" in row else "not measured")
        a76x = (f"{row['a76_fp32_x']:.2f}x / {row['a76_int8_x']:.2f}x / " if row.get("a76_int8_x") else "-")
        if "a76_int8" in row:
            a76 += f"{row['a76_tvm']:.1f}" if "a76_tvm" in row else tvm_note
            a76x += f"{row['a76_tvm_x']:.2f}x" if "a76_tvm_x" in row else "-"
        lines.append(
            f"| {r:g} | {row['ffn']} | {row['params'] / 1e6:.2f} M | {row['fp32_mb']:.1f} MiB | {row['int8_mb']:.1f} MiB "
            f"| {_pct(acc['test_clean']['fp32'])} / {_pct(acc['test_clean']['int8'])} "
            f"| {_pct(acc['test_snr10']['fp32'])} / {_pct(acc['test_snr10']['int8'])} "
            f"| {row['wall_fp32']:.2f}x ({row['cpu_fp32']:.2f}x) / {row['wall_int8']:.2f}x ({row['cpu_int8']:.2f}x) "
            f"| {a76} | {a76x} |")
    return "\n".join(lines)


def seed_check(rep: dict) -> str:
    """One paragraph: do the seed's figures hold on this model?"""
    rows = rep["rows"]
    base, p20 = rows.get(0.0), rows.get(0.2)
    if not base or not p20:
        return ""
    c = "test_clean"
    q_loss = max(base["acc"][s]["fp32"] - base["acc"][s]["int8"] for s in base["acc"])
    p_loss = max(base["acc"][s]["fp32"] - p20["acc"][s]["fp32"] for s in base["acc"])
    size = p20["int8_mb"] / base["fp32_mb"]
    speed = base.get("a76_fp32_x") and p20.get("a76_int8_x") and base["a76_fp32_x"] / p20["a76_int8_x"]
    wall = base["wall_fp32"] / p20["wall_int8"]
    cpu = base["cpu_fp32"] / p20["cpu_int8"]
    top = max(rows)
    top_loss = base["acc"][c]["fp32"] - rows[top]["acc"][c]["fp32"]
    return (
        f"The seed's figures, checked here: 8-bit loses {100 * q_loss:+.1f} points at most "
        f"(seed: < 1 %: {'holds' if q_loss < 0.01 else 'does not hold'}); 20 % structured L1 FFN pruning loses "
        f"{100 * p_loss:+.1f} points at most without fine-tune (seed: < 2 %: {'holds' if p_loss < 0.02 else 'does not hold'}; "
        f"clean {_pct(base['acc'][c]['fp32'])} -> {_pct(p20['acc'][c]['fp32'])}); together (ratio 0.2 + INT8 against "
        f"unpruned fp32) {size:.2f} of the size (seed: 1/4: {'holds' if size <= 0.26 else 'does not hold'}) and "
        + (f"{speed:.1f}x fewer A76 instructions, " if speed else "")
        + f"{wall:.1f}x less x86 wall time ({cpu:.1f}x less CPU time) (seed: 3.2x faster on a Jetson Xavier, not "
        "measured here). Negative losses "
        "are gains. Pruning keeps accuracy to higher ratios than the seed's 20 % on this 97-command model: "
        f"its FFNs (1024 = 4 x d_model) are larger than the task needs; at {top:g} clean accuracy is down "
        f"{100 * top_loss:.1f} points before any fine-tune. The TVM INT8 bundle pads each sample to its 96-frame bucket (the samples have 50 "
        "and 88 frames), hence its distance to onnxruntime; kept widths are multiples of 16 for its INT8 panels "
        "(measured separately at 0.2: an FFN of 819 instead of 816 took 2.44x the unpruned ORT INT8 instructions "
        "instead of 1.26x).")


def finetune_lines(dirs: list[str]) -> str:
    """One line per `paraedge prune --finetune-steps` output: its prune.json's accuracy per step."""
    lines = []
    for d in dirs:
        rep = json.load(open(os.path.join(d, "prune.json"), encoding="utf-8"))
        steps = [s for s in rep["steps"] if "accuracy" in s]
        ft = next((s["finetune"] for s in rep["steps"] if "finetune" in s), None)
        if not ft or not steps:
            continue
        n = steps[0]["accuracy"]["test_clean"]["n"]
        cells = [f"{s['step']}: clean {_pct(s['accuracy']['test_clean']['fp32'])} / {_pct(s['accuracy']['test_clean']['int8'])}, "
                 f"10 dB {_pct(s['accuracy']['test_snr10']['fp32'])} / {_pct(s['accuracy']['test_snr10']['int8'])}"
                 for s in steps]
        lines.append(f"- `paraedge prune --ratio {rep['ratio']:g} --finetune-steps {ft['steps']}` (lr {ft['lr']:g}, batch "
                     f"{ft['batch']}, {ft['threads']} thread(s), {ft['minutes']} min of fine-tuning; fp32 / INT8, n={n} per set): "
                     + "; ".join(cells) + ".")
    return ("Recovery fine-tune (from each output's `prune.json`):\n\n" + "\n".join(lines)) if lines else ""


def write_card(path: str, text: str) -> None:
    from paraedge_tools.docblock import write_between

    write_between(path, BEGIN, END, text, heading="## Pruning (`paraedge prune`)")


def main(argv=None) -> int:
    from paraedge_tools import out_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/demo")
    ap.add_argument("--corpus", default="out/corpus")
    ap.add_argument("--limit", type=int, default=None, help="utterances per held-out set (default: all)")
    ap.add_argument("--ratios", default=",".join(f"{r:g}" for r in RATIOS))
    ap.add_argument("--work", default=None, help="where the pruned dirs go (default: out/prune-table)")
    ap.add_argument("--no-arm", action="store_true", help="skip the emulated A76 instruction counts")
    ap.add_argument("--no-tvm", action="store_true", help="skip the TVM INT8 bundles (A76 column)")
    ap.add_argument("--json", default=None, help="also write the measurements here")
    ap.add_argument("--finetuned", nargs="*", default=[],
                    help="outputs of `paraedge prune --finetune-steps` whose prune.json accuracy goes under the table")
    ap.add_argument("--write-card", action="store_true", help="write the table into MODEL/README.md")
    a = ap.parse_args(argv)
    ratios = [float(r) for r in a.ratios.split(",")]
    if any(not 0.0 <= r < 1.0 for r in ratios) or 0.0 not in ratios:
        ap.error("--ratios: values within [0, 1), including 0 (the baseline every ratio is compared with)")
    rep = measure(a.model, a.corpus, a.work or out_dir("prune-table"), a.limit, ratios, arm=not a.no_arm,
                  tvm=not a.no_tvm)
    tvm_note = "not measured (--no-tvm)"
    text = card(rep, tvm_note) + "\n\n" + seed_check(rep)
    if a.finetuned:
        text += "\n\n" + finetune_lines(a.finetuned)
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({**rep, "rows": {str(k): v for k, v in rep["rows"].items()}}, f, indent=1)
    if a.write_card:
        write_card(os.path.join(a.model, "README.md"), text)
    return 0


if __name__ == "__main__":
    from paraedge_tools import run_main

    run_main(main)
