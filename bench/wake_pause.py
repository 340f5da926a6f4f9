"""The daemon's two-pass final when the speaker pauses after the wake word.

`python bench/wake_pause.py --corpus out/corpus8 [--sets test_clean,test_kokoro_clean] [--pauses 0.35,1,2] [--limit 100]`

The wake word opens the utterance at its detection (`wake.pre_roll_s` before it), so whatever pause
follows the wake word comes first in the audio that the two-pass final decodes again, and the demo
weights expect a command near the start of what they hear (the model card, Known limits). Each
command of the chosen sets goes through the daemon's own data path (edge/daemon/pipeline.py: the
real wake gate, silero VAD, the streaming recognizer, onnxruntime INT8, `final_pass` offline), fed
20 ms at a time: the shipped sample's "okay nabu", `pause` seconds of silence, the command, 1 s of
silence. Each runs twice in one process: the final decoding everything since the detection, and
the daemon's default, from `vad.pre_roll_s` before the VAD's first speech (`final_lead_s`).
Printed per set and pause: utterances woken, and finals right (one final, the command's text).

Measured (stop 51, `out/corpus8`, the stage-5 weights, every set woken every time), right finals
from the detection / from 0.3 s before the first speech, pause 0.35 / 1 / 2 s:
- espeak held-out clean (300): 99.3 / 93.3 / 71.3 % -> 99.3 / 99.7 / 98.3 %;
- Kokoro clean (286): 90.2 / 71.7 / 35.7 % -> 94.8 / 95.5 / 93.7 %;
- RHVoice clean (116): 87.1 / 73.3 / 34.5 % -> 95.7 / 94.0 / 95.7 %;
- DECtalk clean (300, never trained on): 82.0 / 63.3 / 49.0 % -> 92.3 / 90.3 / 89.3 %.
The stage-6 weights (stop 53), trained with shifted positions and lead pads, the same runs:
- espeak: 99.7 / 99.0 / 98.0 % -> 99.0 / 99.7 / 98.7 %;
- Kokoro: 95.8 / 93.0 / 86.0 % -> 95.1 / 95.1 / 94.1 %;
- RHVoice: 95.7 / 88.8 / 87.9 % -> 97.4 / 97.4 / 97.4 %;
- DECtalk: 89.0 / 79.3 / 77.3 % -> 91.7 / 92.0 / 90.7 %.
The stage-7 weights (stop 54), the same runs:
- espeak: 99.3 / 99.3 / 98.7 % -> 98.7 / 99.3 / 98.7 %;
- Kokoro: 97.2 / 95.1 / 93.7 % -> 95.1 / 95.5 / 95.1 %;
- RHVoice: 95.7 / 97.4 / 97.4 % -> 97.4 / 97.4 / 97.4 %;
- DECtalk: 92.3 / 87.3 / 87.3 % -> 93.7 / 92.7 / 90.7 %.
Decoding from the detection now costs little; the default start still gains on the longer pauses.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tools")]

SR = 16000
BLOCK = 320  # 20 ms: the daemon's default audio.block_ms
SAMPLE_GAP_S = 0.35  # the pause make_samples puts between the wake word and the command


def wake_word() -> np.ndarray:
    """The shipped sample's "okay nabu" (its lead silence included), without the pause after it."""
    from edge.asr.audio import load_audio

    samples = os.path.join(ROOT, "models", "demo", "samples")
    s = next(s for s in json.load(open(os.path.join(samples, "samples.json"), encoding="utf-8"))
             if s["wake_word"] == "okay_nabu")
    x = load_audio(os.path.join(samples, s["file"]))[0]
    return x[: int(round(s["command_start_s"] * SR)) - int(round(SAMPLE_GAP_S * SR))]


def pipeline(model: str, final_lead_s: float | None):
    from edge.daemon.config import DaemonConfig
    from edge.daemon.events import EventBus
    from edge.daemon.pipeline import Pipeline
    from edge.daemon.service import load_recognizer
    from edge.daemon.vad import EndpointConfig, SileroVad
    from edge.daemon.wake import WakeGate

    cfg = DaemonConfig()
    cfg.model.dir = model
    bus = EventBus(stdout=False)
    p = Pipeline(load_recognizer(cfg.validated()), WakeGate(cfg.wake.models), SileroVad(), EndpointConfig(), bus,
                 pre_roll_s=cfg.wake.pre_roll_s, final_pass="offline", final_lead_s=final_lead_s)
    return p, bus


def events(p, bus, audio: np.ndarray) -> list[dict]:
    p.gate.reset()
    bus.history.clear()  # bounded (HISTORY_EVENTS): read per utterance
    for i in range(0, len(audio), BLOCK):
        p.feed(audio[i : i + BLOCK], None)
    p.finish("end_of_input")  # nothing if the VAD already ended it
    return list(bus.history)


def measure(model: str, rows, pauses: list[float]) -> list[tuple]:
    """(pause, final_lead_s, woken, right) per pause, for the final from the detection (None) and the
    daemon's default (vad.pre_roll_s)."""
    from edge.asr.audio import load_audio
    from edge.daemon.config import DaemonConfig

    leads = (None, DaemonConfig().vad.pre_roll_s)
    wake = wake_word()
    cmds = [load_audio(r["path"])[0] for r in rows]
    out = []
    for lead in leads:
        p, bus = pipeline(model, lead)
        for pause in pauses:
            woken = right = 0
            for r, x in zip(rows, cmds):
                audio = np.concatenate([wake, np.zeros(int(pause * SR), np.float32), x, np.zeros(SR, np.float32)])
                evs = events(p, bus, audio)
                finals = [e for e in evs if e["event"] in ("final", "rejected")]
                woken += any(e["event"] == "wake" for e in evs)
                right += int(len(finals) == 1 and finals[0].get("text") == r["text"])
            out.append((pause, lead, woken, right))
    return out


def main(argv=None) -> int:
    from paraedge_tools.recipe.corpus import read_manifest
    from paraedge_tools.recipe.evaluate import chosen_sets, evenly_spaced, seconds_list

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", required=True, help="a corpus dir from paraedge_tools.recipe.corpus")
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "demo"))
    ap.add_argument("--sets", default="test_clean,test_kokoro_clean", help="comma-separated test sets")
    ap.add_argument("--pauses", default="0.35,1,2", help="seconds of silence after the wake word, comma-separated")
    ap.add_argument("--limit", type=int, default=100, help="at most this many utterances a set, evenly spaced")
    args = ap.parse_args(argv)
    try:
        pauses = seconds_list(args.pauses, 4.0)
    except ValueError as e:
        ap.error(f"--pauses: {e} (the VAD gives up after no_speech_timeout_s, 5 s)")
    if args.limit < 1:
        ap.error("--limit must be >= 1")
    try:
        sets = chosen_sets(args.corpus, args.sets)
    except ValueError as e:
        ap.error(str(e))
    print(f"model {args.model}; wake gate + silero VAD, onnxruntime INT8, two-pass final")
    print("| set | n | pause s | woken | final from the detection | final from 0.3 s before the first speech |")
    print("|---|---|---|---|---|---|")
    for name in sets:
        rows = evenly_spaced(read_manifest(os.path.join(args.corpus, f"{name}.jsonl")), args.limit)
        res = measure(args.model, rows, pauses)
        n = len(rows)
        for pause in pauses:
            (w, whole), (_, cut) = [(w, ok) for (p, _, w, ok) in res if p == pause]
            print(f"| {name} | {n} | {pause:g} | {w} | {100 * whole / n:.1f} % | {100 * cut / n:.1f} % |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
