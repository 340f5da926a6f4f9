"""`make demo`: the main job end to end on the shipped demo model.

1. For every shipped sample (a wake word, then an in-car command) it decodes the command offline
   and streaming, with the numpy reference (fp32) and onnxruntime INT8, and prints what came out,
   the real-time factor and, in streaming, the partial results as they fired.
2. Then the voice daemon (`paraedge run`) listens to all samples played back to back, through
   the same pipeline a microphone feeds: wake gate -> streaming Paraformer + VAD -> JSON events.
Without a shipped model it builds a random-weight model of the right shape, so every stage still runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SHIPPED = os.path.join(os.path.dirname(HERE), "models", "demo")


def _fallback_model(out: str) -> tuple[str, list]:
    """No trained model: random weights of the right shape + one synthesised command."""
    from edge.audio import write_wav
    from tools.corpus import render
    from tools.make_model import make_model_dir

    if not os.path.isfile(os.path.join(out, "model_quant.onnx")):
        make_model_dir(out, "tiny", streaming=True)
    os.makedirs(os.path.join(out, "samples"), exist_ok=True)
    write_wav(os.path.join(out, "samples", "cmd.wav"), render("打开空调", "zh"))
    return out, [{"file": "cmd.wav", "command": "(random weights: no meaningful text)", "command_start_s": 0.0}]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=SHIPPED)
    ap.add_argument("--out", default="out/demo-model", help="where to build a model when none is shipped")
    args = ap.parse_args(argv)
    from edge.audio import load_audio
    from edge.errors import ParaEdgeError
    from edge.recognizer import Recognizer

    if os.path.isfile(os.path.join(args.model, "config.yaml")):
        model = args.model
        with open(os.path.join(model, "samples", "samples.json"), encoding="utf-8") as f:
            samples = json.load(f)
    else:
        print(f"no trained model at {args.model}: building a random-weight one in {args.out}")
        model, samples = _fallback_model(args.out)
    print(f"model: {model}")
    recs = {"ref fp32": Recognizer(model, "ref"), "onnxruntime int8": Recognizer(model, "onnxruntime", int8=True, threads=1)}
    failures, exact = 0, [0, 0]
    for s in samples:
        path = os.path.join(model, "samples", s["file"])
        try:
            x, _ = load_audio(path)
        except ParaEdgeError as exc:
            print(f"error: {exc}")
            failures += 1
            continue
        command = x[int(s["command_start_s"] * 16000):]
        print(f"\n{s['file']}  (wake word {s.get('wake_word', '-')}, expected: {s['command']})")
        for name, rec in recs.items():
            t = time.perf_counter()
            offline = rec.transcribe(command).text
            t_off = time.perf_counter() - t
            streamed = rec.transcribe_streaming(command)  # 100 ms of microphone audio at a time
            final, partials = streamed.text, streamed.timings["partials"]
            secs = len(command) / 16000
            known = "random" not in s["command"]
            exact[0] += known and offline == s["command"]
            exact[1] += known and final == s["command"]
            mark = "ok" if final == s["command"] else "differs" if known else ""
            print(f"  {name:17s} offline  {offline!r:34s} RTF {t_off / secs:.4f}")
            print(f"  {'':17s} stream   {final!r:34s} RTF {streamed.timings['rtf']:.4f}  partials {partials}  {mark}")
    n = len(samples) * len(recs)
    print(f"\nexact command text: offline {exact[0]}/{n}, streaming {exact[1]}/{n}")
    if any(s.get("wake_word") for s in samples):
        failures += run_daemon(model, samples, args.out)
    sys.stdout.flush()
    return 1 if failures else 0


def run_daemon(model: str, samples: list, out: str) -> int:
    """The daemon on every sample back to back (as fast as it can decode); prints its events."""
    import numpy as np

    from edge.audio import load_audio, write_wav
    from edge.config import DaemonConfig
    from edge.daemon import Daemon

    os.makedirs(out, exist_ok=True)
    wav = os.path.join(out, "daemon_input.wav")
    write_wav(wav, np.concatenate([load_audio(os.path.join(model, "samples", s["file"]))[0] for s in samples]))
    cfg = DaemonConfig()
    cfg.model.dir, cfg.audio.input, cfg.audio.realtime = model, wav, False
    print(f"\n$ paraedge run --input {wav} --fast      # the voice daemon; events as JSON lines:")
    sys.stdout.flush()
    d = Daemon(cfg)
    d.run()
    finals = [e["text"] for e in d.bus.history if e["event"] == "final"]
    wakes = [e for e in d.bus.history if e["event"] == "wake"]
    expected = [s["command"] for s in samples]
    print(f"daemon: {len(wakes)} wake words, {sum(a == b for a, b in zip(finals, expected))}/{len(expected)} "
          f"finals exactly the command")
    return 0 if len(finals) == len(expected) else 1


if __name__ == "__main__":
    raise SystemExit(main())
