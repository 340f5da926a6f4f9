"""The daemon's finals, streaming against two-pass, on a corpus's held-out voices.

`python bench/final_pass.py --corpus out/corpus8 [--sets test_kokoro_clean,...] [--limit 300] [--grammar G]`

Every utterance goes through the daemon's own data path (edge/daemon/pipeline.py: silero VAD
opening and endpointing with the default vad.pre_roll_s, the streaming recognizer, its partials)
with the wake gate off: 0.3 s of silence, the command, then 1 s of silence, fed 20 ms at a time as
the microphone delivers it. The
same pipeline, model and audio run twice in one process, once per `model.final_pass`:
- streaming: the final is the stream's own flush;
- offline: the final is the utterance's audio decoded again in full context (two-pass).
A final is right when it is the command's text and the only final the utterance gave. Printed per
set: both accuracies, and the final's decode cost (`decode_tail_ms`: the flush or the offline pass)
as P50 of each and their ratio. The corpus comes from `python -m paraedge_tools.recipe.corpus`.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tools")]

DEFAULT_SETS = ("test_clean,test_kokoro_clean,test_kokoro_snr10,test_baker_clean,test_rhvoice_clean,"
                "test_pico_clean,test_sam_clean,test_mbrola_clean,test_ttskit_clean")
BLOCK = 320  # 20 ms: the daemon's default audio.block_ms


def utterance_finals(pipeline, bus, x: np.ndarray) -> list[dict]:
    """Feed one utterance (silence around it) block by block; the finals and rejections it gave."""
    sr = 16000
    audio = np.concatenate([np.zeros(int(0.3 * sr), np.float32), x, np.zeros(sr, np.float32)])
    bus.history.clear()  # bounded (HISTORY_EVENTS): read per utterance
    for i in range(0, len(audio), BLOCK):
        pipeline.feed(audio[i : i + BLOCK], None)
    pipeline.finish("end_of_input")  # nothing if the VAD already ended it
    return [e for e in bus.history if e["event"] in ("final", "rejected")]


def run_set(rows, model: str, final_pass: str, grammar: str | None) -> tuple[int, list[float]]:
    from edge.asr.audio import load_audio
    from edge.daemon.events import EventBus
    from edge.daemon.pipeline import Pipeline
    from edge.daemon.service import load_recognizer
    from edge.daemon.config import DaemonConfig
    from edge.daemon.vad import EndpointConfig, SileroVad

    cfg = DaemonConfig()
    cfg.model.dir, cfg.grammar.file = model, grammar or ""
    rec = load_recognizer(cfg.validated())
    bus = EventBus(stdout=False)
    p = Pipeline(rec, None, SileroVad(), EndpointConfig(), bus, pre_roll_s=cfg.vad.pre_roll_s, final_pass=final_pass)
    right, cost = 0, []
    for r in rows:
        finals = utterance_finals(p, bus, load_audio(r["path"])[0])
        right += int(len(finals) == 1 and finals[0]["text"] == r["text"])
        cost += [f["latency"]["decode_tail_ms"] for f in finals]
    return right, cost


def main(argv=None) -> int:
    from paraedge_tools.recipe.corpus import read_manifest
    from paraedge_tools.recipe.evaluate import evenly_spaced

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", required=True, help="a corpus dir from paraedge_tools.recipe.corpus")
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "demo"))
    ap.add_argument("--sets", default=DEFAULT_SETS, help=f"comma-separated manifests (default {DEFAULT_SETS})")
    ap.add_argument("--limit", type=int, default=300, help="at most this many utterances a set, evenly spaced")
    ap.add_argument("--grammar", default=None, help="a grammar YAML: command finals end on the short pause")
    args = ap.parse_args(argv)
    print(f"model {args.model}; onnxruntime INT8, 1 thread; {'grammar ' + args.grammar if args.grammar else 'free text'}")
    print("set | n | streaming final | two-pass final | final's decode P50 ms: flush / offline pass (ratio)")
    for name in args.sets.split(","):
        path = os.path.join(args.corpus, f"{name}.jsonl")
        if not os.path.exists(path):
            print(f"{name}: no {path}; skipped")
            continue
        rows = evenly_spaced(read_manifest(path), args.limit)
        (s_ok, s_ms), (o_ok, o_ms) = (run_set(rows, args.model, fp, args.grammar) for fp in ("streaming", "offline"))
        s50, o50 = np.percentile(s_ms, 50), np.percentile(o_ms, 50)
        print(f"{name} | {len(rows)} | {100 * s_ok / len(rows):.1f} % | {100 * o_ok / len(rows):.1f} % | "
              f"{s50:.1f} / {o50:.1f} ({o50 / s50:.2f}x)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
