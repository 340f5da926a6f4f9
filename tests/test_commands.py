"""In-car command understanding end to end: the daemon and the CLI with the demo grammar. A shipped
sample's final carries its intent and slots, a non-command is a `rejected` event, and a complete
command is published after grammar.command_silence_s instead of the VAD's trailing silence."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from edge.asr.audio import load_audio, write_wav
from edge.daemon.config import ConfigError, DaemonConfig
from edge.daemon.events import EventBus
from edge.daemon.service import Daemon

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "models", "demo")
GRAMMAR = os.path.join(DEMO, "grammar.yaml")
SAMPLES = os.path.join(DEMO, "samples")
META = {m["file"]: m for m in json.load(open(os.path.join(SAMPLES, "samples.json"), encoding="utf-8"))}
SR = 16000


def reading(text: str) -> tuple[str, dict]:
    """The grammar's own intent and slots for a command text (its expansion)."""
    from edge.asr.modeldir import ModelDir
    from edge.grammar import Grammar

    g = Grammar.load(GRAMMAR, ModelDir(DEMO).tokens)
    ids = g.vocab.ids(text)
    return next((intent, slots) for intent, e_ids, slots, _ in g.expansions if tuple(e_ids) == ids)


def daemon_events(path: str, grammar: str | None, wake: bool = True, silence_s: float = 0.15,
                  final_pass: str = "auto") -> list[dict]:
    cfg = DaemonConfig()
    cfg.model.final_pass = final_pass
    cfg.audio.input, cfg.audio.realtime = path, False
    cfg.wake.enabled = wake
    cfg.grammar.file = grammar or ""
    cfg.grammar.command_silence_s = silence_s
    d = Daemon(cfg.validated(), bus=EventBus(stdout=False))
    d.run()
    return list(d.bus.history)


def kinds(events, kind):
    return [e for e in events if e["event"] == kind]


@pytest.mark.parametrize("name", ["01_okay_nabu_zh.wav", "02_alexa_en.wav", "03_okay_nabu_zh.wav"])
def test_shipped_sample_final_carries_intent_and_slots(name):
    events = daemon_events(os.path.join(SAMPLES, name), GRAMMAR)
    finals = kinds(events, "final")
    assert len(finals) == 1 and not kinds(events, "rejected"), events
    intent, slots = reading(META[name]["command"])
    f = finals[0]
    assert (f["intent"], f["slots"], f["text"]) == (intent, slots, META[name]["command"])
    assert 0.5 <= f["confidence"] <= 1.0


def test_a_non_command_is_rejected_with_what_was_heard(tmp_path):
    from paraedge_tools.recipe.corpus import render

    x = np.concatenate([np.zeros(SR // 2, np.float32), render("今天天气很好", "zh", "m2"), np.zeros(SR, np.float32)])
    path = str(tmp_path / "chat.wav")
    write_wav(path, x)
    events = daemon_events(path, GRAMMAR, wake=False)
    assert not kinds(events, "final")
    (r,) = kinds(events, "rejected")
    assert r["text"] and r["confidence"] < 0.5 and r["reason"] == "silence"


@pytest.mark.parametrize("final_pass", ["streaming", "offline"])
def test_a_complete_command_ends_before_the_vad_timeout(final_pass):
    """The same sample with and without the grammar: the command final comes on a short pause,
    each final equal, the grammar's utterance shorter by about trailing_silence - command_silence.
    Both ways of deciding it: a finished copy of the stream, or the audio so far decoded offline."""
    path = os.path.join(SAMPLES, "04_alexa_en.wav")
    free = kinds(daemon_events(path, None, final_pass=final_pass), "final")
    cmd = kinds(daemon_events(path, GRAMMAR, final_pass=final_pass), "final")
    assert [f["text"] for f in free] == [f["text"] for f in cmd] == [META["04_alexa_en.wav"]["command"]]
    assert free[0]["reason"] == "silence" and cmd[0]["reason"] == "command"
    shorter = free[0]["audio_s"] - cmd[0]["audio_s"]
    assert 0.25 <= shorter <= 0.45, (free[0]["audio_s"], cmd[0]["audio_s"])


def test_command_endpointing_can_be_switched_off():
    events = daemon_events(os.path.join(SAMPLES, "04_alexa_en.wav"), GRAMMAR, silence_s=0.0)
    (f,) = kinds(events, "final")
    assert f["reason"] == "silence" and f["intent"]


def test_transcribe_json_carries_the_reading(tmp_path):
    name = "05_okay_nabu_zh.wav"
    x = load_audio(os.path.join(SAMPLES, name))[0]
    cut = str(tmp_path / "command.wav")
    write_wav(cut, x[int((META[name]["command_start_s"] - 0.2) * SR):])
    p = subprocess.run([sys.executable, "-m", "edge", "transcribe", cut, "-m", DEMO, "--grammar", GRAMMAR, "--json"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    intent, slots = reading(META[name]["command"])
    assert (out["intent"], out["slots"], out["rejected"]) == (intent, slots, False) and out["confidence"] > 0.5


def test_bad_grammar_and_config_are_one_line(tmp_path):
    bad = tmp_path / "g.yaml"
    bad.write_text("version: 1\nintents:\n  open_door:\n    - open the door\n", encoding="utf-8")
    p = subprocess.run([sys.executable, "-m", "edge", "transcribe", os.path.join(SAMPLES, "02_alexa_en.wav"), "-m", DEMO,
                        "--grammar", str(bad)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and f"{bad}:4" in p.stderr and "door" in p.stderr, p.stderr
    conf = tmp_path / "edge.toml"
    conf.write_text("[grammar]\ncommand_silence_s = -1\n")
    with pytest.raises(ConfigError, match="grammar.command_silence_s"):
        DaemonConfig.load(str(conf))


def test_zones_end_their_commands_early_each(tmp_path):
    """Two seat zones with the grammar: each zone's command ends on its own short pause, tagged."""
    a, b = (load_audio(os.path.join(SAMPLES, n))[0] for n in ("01_okay_nabu_zh.wav", "02_alexa_en.wav"))
    x = np.zeros((max(len(a), len(b) + 11200) + SR, 2), np.float32)
    x[: len(a), 0], x[11200 : 11200 + len(b), 1] = a, b
    path = str(tmp_path / "cabin.wav")
    from scipy.io import wavfile

    wavfile.write(path, SR, np.clip(np.round(x * 32768), -32768, 32767).astype(np.int16))
    cfg = DaemonConfig()
    cfg.audio.input, cfg.audio.realtime = path, False
    cfg.zones.names = ["driver", "passenger"]
    cfg.grammar.file = GRAMMAR
    d = Daemon(cfg.validated(), bus=EventBus(stdout=False))
    d.run()
    finals = {f["zone"]: f for f in kinds(d.bus.history, "final")}
    assert set(finals) == {"driver", "passenger"}
    for zone, name in (("driver", "01_okay_nabu_zh.wav"), ("passenger", "02_alexa_en.wav")):
        f = finals[zone]
        assert (f["intent"], f["slots"]) == reading(META[name]["command"]) and f["reason"] == "command"
