"""`paraedge demo` (what `make demo` runs): the main job end to end on the shipped demo model.

1. For every shipped sample (a wake word, then an in-car command) it decodes the command offline
   and streaming, with the numpy reference (fp32) and onnxruntime INT8, and prints what came out,
   the real-time factor and, in streaming, the partial results as they fired.
2. Then the voice daemon (`paraedge run`) listens to all samples played back to back, through
   the same pipeline a microphone feeds: wake gate -> streaming Paraformer + VAD -> JSON events.
Device side only (numpy, onnxruntime, the daemon's packages): it runs the same from a checkout and
from an installed wheel, whose package data carries the demo model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run(args.model, args.out)


def build_parser(ap: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    ap = ap or argparse.ArgumentParser(prog="paraedge demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="a model dir with samples/samples.json (default: the shipped demo model)")
    ap.add_argument("--out", default=None, help="where the daemon's input WAV is written (default: a temporary folder)")
    return ap


def load_samples(model: str) -> list:
    from edge.errors import ModelError

    path = os.path.join(model, "samples", "samples.json")
    try:
        with open(path, encoding="utf-8") as f:
            samples = json.load(f)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: the demo needs a model dir with samples/samples.json ({exc})") from None
    if not isinstance(samples, list) or not all(isinstance(s, dict) and {"file", "command", "command_start_s"} <= s.keys()
                                                for s in samples):
        raise ModelError(f"{path}: expected a list of {{file, command, command_start_s}} objects")
    return samples


def run(model: str | None = None, out: str | None = None) -> int:
    from edge.asr.audio import SAMPLE_RATE, load_audio
    from edge.asr.recognizer import Recognizer
    from edge.assets import demo_model_dir
    from edge.errors import ParaEdgeError, check_output_dir

    if out:
        check_output_dir(out, "--out")
    model = model or str(demo_model_dir())
    samples = load_samples(model)
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
        command = x[int(s["command_start_s"] * SAMPLE_RATE):]
        print(f"\n{s['file']}  (wake word {s.get('wake_word', '-')}, expected: {s['command']})")
        for name, rec in recs.items():
            t = time.perf_counter()
            offline = rec.transcribe(command).text
            t_off = time.perf_counter() - t
            streamed = rec.transcribe_streaming(command)  # 100 ms of microphone audio at a time
            final, partials = streamed.text, streamed.timings["partials"]
            secs = len(command) / SAMPLE_RATE
            known = "random" not in s["command"]
            exact[0] += known and offline == s["command"]
            exact[1] += known and final == s["command"]
            mark = "ok" if final == s["command"] else "differs" if known else ""
            print(f"  {name:17s} offline  {offline!r:34s} RTF {t_off / secs:.4f}")
            print(f"  {'':17s} stream   {final!r:34s} RTF {streamed.timings['rtf']:.4f}  partials {partials}  {mark}")
    n = len(samples) * len(recs)
    print(f"\nexact command text: offline {exact[0]}/{n}, streaming {exact[1]}/{n}")
    if any(s.get("wake_word") for s in samples):
        if out:
            failures += run_daemon(model, samples, out)
        else:
            with tempfile.TemporaryDirectory(prefix="paraedge-demo-") as tmp:
                failures += run_daemon(model, samples, tmp)
    sys.stdout.flush()
    return 1 if failures else 0


def run_daemon(model: str, samples: list, out: str) -> int:
    """The daemon on every sample back to back (as fast as it can decode); prints its events."""
    import numpy as np

    from edge.asr.audio import load_audio, write_wav
    from edge.daemon.config import DaemonConfig
    from edge.daemon.service import Daemon

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
