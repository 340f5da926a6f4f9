"""End of speech -> final, in real time: the shipped commands played into a PulseAudio null sink
while `paraedge run` records its monitor, as a car's microphone would deliver them.

`python bench/endpoint_latency.py [--rounds 4] [--grammar models/demo/grammar.yaml]`

Each configuration is one daemon run hearing every shipped sample `--rounds` times (wake word +
command, 1.5 s apart). The daemon's own `final` events carry `end_of_speech_to_final_ms` (capture
time of the last speech window to publication); printed as P50 / P99 per configuration:
- free text: the VAD's trailing silence (0.5 s) ends every command;
- with the grammar: a complete, confident command ends after `grammar.command_silence_s` (0.15 s).
Needs pulseaudio, pactl, paplay and the ALSA pulse plugin (`make test` installs them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(ROOT, "models", "demo", "samples")


def pulse_server(tmp: str) -> dict:
    home, rt = os.path.join(tmp, "home"), os.path.join(tmp, "rt")
    os.makedirs(home)
    os.makedirs(rt, mode=0o700)
    env = dict(os.environ, HOME=home, XDG_RUNTIME_DIR=rt, PYTHONPATH=ROOT)
    with open(os.path.join(home, ".asoundrc"), "w") as f:
        f.write('pcm.pulsemic {\n type pulse\n device "vsink.monitor"\n}\n')
    subprocess.run(["pulseaudio", "-D", "-n", "--exit-idle-time=-1", "--load=module-native-protocol-unix",
                    "--load=module-null-sink sink_name=vsink"], env=env, check=True, capture_output=True, timeout=30)
    for _ in range(50):
        if subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode == 0:
            break
        time.sleep(0.1)
    return env


def run_config(env: dict, extra: list[str], rounds: int, gap_s: float = 1.5) -> list[dict]:
    names = sorted(n for n in os.listdir(SAMPLES) if n.endswith(".wav"))
    duration = rounds * sum(_seconds(os.path.join(SAMPLES, n)) + gap_s for n in names) + 3
    d = subprocess.Popen([sys.executable, "-m", "edge", "run", "--device", "pulsemic", "--duration", f"{duration:.1f}",
                          *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    first = json.loads(d.stdout.readline())
    if first["event"] != "ready":
        raise SystemExit(f"daemon did not start: {d.stderr.read()[-500:]}")
    time.sleep(0.5)
    for _ in range(rounds):
        for n in names:
            subprocess.run(["paplay", "-d", "vsink", os.path.join(SAMPLES, n)], env=env, check=True, timeout=60)
            time.sleep(gap_s)
    out, err = d.communicate(timeout=int(duration) + 60)
    return [e for e in map(json.loads, out.splitlines()) if e["event"] in ("final", "rejected")]


def _seconds(path: str) -> float:
    from edge.asr.audio import open_audio

    return open_audio(path)[1].duration


def summary(events: list[dict]) -> str:
    lat = np.array([e["latency"]["end_of_speech_to_final_ms"] for e in events
                    if "end_of_speech_to_final_ms" in e.get("latency", {})])
    reasons = {}
    for e in events:
        reasons[e["reason"]] = reasons.get(e["reason"], 0) + 1
    if not len(lat):
        return "no finals"
    return (f"{len(lat)} finals, end of speech -> final P50 {np.percentile(lat, 50):.0f} ms, "
            f"P99 {np.percentile(lat, 99):.0f} ms, max {lat.max():.0f} ms; ended by {reasons}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--grammar", default=os.path.join(ROOT, "models", "demo", "grammar.yaml"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        env = pulse_server(tmp)
        try:
            for label, extra in (("free text (VAD trailing silence 0.5 s)", []),
                                 ("grammar, command-aware endpointing (0.15 s)", ["--grammar", args.grammar])):
                events = run_config(env, extra, args.rounds)
                texts = sorted({e.get("intent") or e["text"] for e in events})
                print(f"{label}: {summary(events)}; heard {texts}")
        finally:
            subprocess.run(["pulseaudio", "--kill"], env=env, capture_output=True, timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
