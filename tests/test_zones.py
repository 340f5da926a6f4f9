"""Seat zones (issue 20, parts 3 and 4): a 2-channel input, one zone per channel, each with its own
wake gate, VAD, endpointing and stream; the zones' chunks decoded in batched backend calls; each
zone's final equal to that channel decoded alone. Real parts throughout: the shipped demo model,
microWakeWord, silero VAD; the one wrapper (around the backend's batched encoder) only counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy.io import wavfile

from edge.asr.audio import load_audio, write_wav
from edge.daemon.capture import EndOfInput, FileSource
from edge.daemon.config import ConfigError, DaemonConfig
from edge.daemon.events import Command, EventBus
from edge.daemon.service import Daemon
from tests.test_daemon import ScriptedSource

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(ROOT, "models", "demo", "samples")
META = {m["file"]: m for m in json.load(open(os.path.join(SAMPLES, "samples.json"), encoding="utf-8"))}
SR = 16000
ZONES = ["driver", "passenger"]
A, B = "01_okay_nabu_zh.wav", "02_alexa_en.wav"


def sample(name: str, wake: bool = True) -> np.ndarray:
    x = load_audio(os.path.join(SAMPLES, name))[0]
    return x if wake else x[int((META[name]["command_start_s"] - 0.2) * SR) :]


def two_channels(a: np.ndarray, b: np.ndarray, b_at_s: float = 0.7, tail_s: float = 1.0) -> np.ndarray:
    """[n, 2]: `a` from t=0 on channel 0, `b` from b_at_s on channel 1, silence around them."""
    off = int(b_at_s * SR)
    x = np.zeros((max(len(a), off + len(b)) + int(tail_s * SR), 2), np.float32)
    x[: len(a), 0] = a
    x[off : off + len(b), 1] = b
    return x


def write_pcm(path, x: np.ndarray, rate: int = SR) -> str:
    wavfile.write(str(path), rate, np.clip(np.round(x * 32768), -32768, 32767).astype(np.int16))
    return str(path)


def kinds(events, kind, zone=None):
    return [e for e in events if e["event"] == kind and (zone is None or e.get("zone") == zone)]


def run_daemon(cfg: DaemonConfig, source=None) -> Daemon:
    d = Daemon(cfg, source=source, bus=EventBus(stdout=False))
    d.run()
    return d


def file_cfg(path: str, zones=None, wake: bool = True) -> DaemonConfig:
    cfg = DaemonConfig()
    cfg.audio.input, cfg.audio.realtime, cfg.audio.retry_max_s = path, False, 0.05
    cfg.wake.enabled = wake
    cfg.zones.names = list(zones or [])
    return cfg.validated()


@pytest.mark.parametrize("wake", [True, False], ids=["wake", "no_wake"])
def test_two_zones_overlapping_commands_one_exact_final_each(tmp_path, wake):
    a, b = sample(A, wake), sample(B, wake)
    x = two_channels(a, b)
    path = write_pcm(tmp_path / "zones.wav", x)
    cfg = file_cfg(path, ZONES, wake)
    d = Daemon(cfg, bus=EventBus(stdout=False))
    windows = []  # windows per batched encoder call: counted, then the real call
    real = d.recognizer.backend.encode_batch
    d.recognizer.backend.encode_batch = lambda w: windows.append(len(w)) or real(w)
    t0 = time.perf_counter()
    d.run()
    ev = list(d.bus.history)
    assert ev[0]["event"] == "ready" and ev[0]["zones"] == ZONES
    assert all(e["zone"] in ZONES for e in ev if e["event"] not in ("ready", "stopped")), ev
    assert not kinds(ev, "error")
    finals = {z: kinds(ev, "final", z) for z in ZONES}
    assert [len(f) for f in finals.values()] == [1, 1], finals
    if wake:
        assert [w["wake_word"] for w in kinds(ev, "wake", "driver")] == ["okay_nabu"]
        assert [w["wake_word"] for w in kinds(ev, "wake", "passenger")] == ["alexa"]
    # the commands overlap in time, and their chunks met in the backend
    assert max(windows) == 2 and d.pipeline.batched >= 1, windows

    for i, (zone, name) in enumerate(zip(ZONES, (A, B))):
        (final,) = finals[zone]
        assert final["text"] == META[name]["command"]
        # each channel decoded alone, by the single-channel daemon: the same tokens
        mono = write_pcm(tmp_path / f"{zone}.wav", x[:, i])
        alone = kinds(run_daemon(file_cfg(mono, None, wake)).bus.history, "final")
        assert [(f["text"], f["tokens"]) for f in alone] == [(final["text"], final["tokens"])]
        assert "zone" not in alone[0]
    # and by the recognizer directly, on the span the zone's stream was given
    rec, pre = d.recognizer, int(cfg.wake.pre_roll_s * SR)
    for i, zone in enumerate(ZONES):
        (final,) = finals[zone]
        if wake:
            start = int(round(kinds(ev, "wake", zone)[0]["audio_s"] * SR)) - pre
            span = x[start : start + int(round(final["audio_s"] * SR)), i]
            assert rec.transcribe_streaming(span).text == final["text"]
    print(f"two zones decoded in {time.perf_counter() - t0:.2f} s; batched encoder calls {windows}")


def test_a_wake_in_one_zone_does_not_open_the_other(tmp_path):
    """Channel 1 holds speech without a wake word, at the same time as channel 0's wake word."""
    x = two_channels(sample(A), sample(B, wake=False), b_at_s=1.0)
    d = run_daemon(file_cfg(write_pcm(tmp_path / "zones.wav", x), ZONES))
    ev = list(d.bus.history)
    assert [f["text"] for f in kinds(ev, "final", "driver")] == [META[A]["command"]]
    assert not [e for e in ev if e.get("zone") == "passenger"], "nothing happens in the passenger zone"
    assert d.pipeline.batched == 0


def test_zone_faults_status_and_reload_wait_for_every_zone(tmp_path):
    x = two_channels(sample(A), sample(B))
    state = {}

    def on_chunk(k):
        d = state["d"]
        if k == 110:  # 2.2 s: both zones are mid-command
            d.bus.commands.put(Command("status"))
            d.request_reload()
        if k == 111:
            time.sleep(1.5)  # the reload is ready while both zones are still busy

    cfg = file_cfg("", ZONES)
    cfg.audio.input = ""
    d = state["d"] = Daemon(cfg, source=ScriptedSource(x, nan_at=100, nan_channel=1, on_chunk=on_chunk), bus=EventBus(stdout=False))
    d.run()
    ev = list(d.bus.history)
    (err,) = kinds(ev, "error")
    assert err["zone"] == "passenger" and err["what"] == "audio" and "non-finite" in err["message"]
    (status,) = kinds(ev, "status")
    assert status["busy"] and status["zones"] == {"driver": {"busy": True, "utterances": 0},
                                                  "passenger": {"busy": True, "utterances": 0}}
    order = [(e["event"], e.get("zone")) for e in ev if e["event"] in ("final", "model_reloaded")]
    # both zones finish their commands (in whichever order their audio ends) before the reload lands
    assert sorted(order[:2]) == [("final", "driver"), ("final", "passenger")], order
    assert order[2:] == [("model_reloaded", None)], order
    assert [f["text"] for f in kinds(ev, "final", "driver")] == [META[A]["command"]]
    assert [f["text"] for f in kinds(ev, "final", "passenger")] == [META[B]["command"]]


def test_a_failed_batched_call_drops_its_zones_not_the_daemon(tmp_path):
    c = "05_okay_nabu_zh.wav"
    x = two_channels(np.concatenate([sample(A), np.zeros(SR, np.float32), sample(c)]), sample(B))
    cfg = file_cfg(write_pcm(tmp_path / "zones.wav", x), ZONES)
    d = Daemon(cfg, bus=EventBus(stdout=False))
    real, faults = d.recognizer.backend.encode_batch, []

    def flaky(windows):  # the real backend, but the first call that batches both zones fails
        if len(windows) == 2 and not faults:
            faults.append(1)
            raise RuntimeError("simulated backend fault")
        return real(windows)

    d.recognizer.backend.encode_batch = flaky
    d.run()
    ev = list(d.bus.history)
    errors = kinds(ev, "error")
    assert faults and sorted(e["zone"] for e in errors) == ZONES, errors
    assert all(e["what"] == "pipeline" and "simulated backend fault" in e["message"] for e in errors)
    # both utterances in that call are dropped; the driver's next command is served
    assert [(f["zone"], f["text"]) for f in kinds(ev, "final")] == [("driver", META[c]["command"])]


def test_a_lost_device_finishes_every_open_zone(tmp_path):
    x = two_channels(sample(A), sample(B))
    cfg = file_cfg("", ZONES)
    cfg.audio.input = ""
    d = run_daemon(cfg, ScriptedSource(x, lose_at=120))  # 2.4 s: both zones mid-command
    ev = list(d.bus.history)
    finals = kinds(ev, "final")
    assert sorted(f["zone"] for f in finals) == ZONES and {f["reason"] for f in finals} == {"device_lost"}
    assert all(f["text"] for f in finals), "what each zone heard is published"


def test_file_source_keeps_channels_apart_and_resamples_each(tmp_path):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((48000, 2)) * 0.1).astype(np.float32)
    path = write_pcm(tmp_path / "s48.wav", x, 48000)
    src = FileSource(path, realtime=False, block_s=0.1, zones=ZONES)
    src.open()
    chunks = []
    try:
        while True:
            chunks.append(src.read().samples)
    except EndOfInput:
        pass
    y = np.concatenate(chunks)
    assert y.shape == (16000, 2) and y.dtype == np.float32
    for i in range(2):  # each channel as the mono loader converts that channel alone
        mono = tmp_path / f"c{i}.wav"
        write_wav(str(mono), x[:, i], 48000)
        np.testing.assert_allclose(y[:, i], load_audio(str(mono))[0], atol=1e-4)


@pytest.mark.parametrize("names,msg", [
    (["driver", "driver"], "zone 'driver' is named twice"),
    (["driver", ""], "'' is not a zone name"),
    (["driver", 3], "3 is not a zone name"),
    ([f"z{i}" for i in range(9)], "9 zones, at most 8"),
    (["a,b"], "may not hold commas"),
])
def test_bad_zone_names_are_one_line(tmp_path, names, msg):
    conf = tmp_path / "edge.toml"
    conf.write_text(f"[zones]\nnames = {json.dumps(names)}\n")
    with pytest.raises(ConfigError, match=msg) as err:
        DaemonConfig.load(str(conf))
    assert "\n" not in str(err.value) and "zones.names" in str(err.value)


def test_audio_channels_must_match_the_zones(tmp_path):
    conf = tmp_path / "edge.toml"
    conf.write_text('[audio]\nchannels = 1\n[zones]\nnames = ["driver", "passenger"]\n')
    with pytest.raises(ConfigError, match="audio.channels = 1 but zones.names has 2 zones; set channels = 2 or 0"):
        DaemonConfig.load(str(conf))
    conf.write_text('[audio]\nchannels = 2\n[zones]\nnames = ["driver", "passenger"]\nbatch_wait_ms = 0\n')
    assert DaemonConfig.load(str(conf)).zones.names == ZONES


def run_cli(args):
    p = subprocess.run([sys.executable, "-m", "edge", "run", *args], capture_output=True, text=True, timeout=120,
                       cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    return p, [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]


def test_cli_bad_input_is_one_line(tmp_path):
    mono = os.path.join(SAMPLES, B)
    p, events = run_cli(["--input", mono, "--fast", "--zones", "driver,passenger"])
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert f"input {mono} has 1 channel but zones names 2 zones (driver, passenger)" in p.stderr
    assert not events, "nothing starts"
    p, _ = run_cli(["--input", mono, "--fast", "--zones", "driver,passenger,driver"])
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "'driver' is named twice" in p.stderr, p.stderr


def test_alsa_microphone_array_48k(tmp_path):
    """A real sounddevice input: an ALSA `file` device replaying 2-channel 48 kHz PCM, opened with two
    channels (no downmix), each resampled on its own."""
    try:
        import sounddevice  # noqa: F401
    except OSError as exc:
        pytest.fail(f"PortAudio missing ({exc}); `make test` installs libportaudio2")
    from scipy.signal import resample_poly

    x = two_channels(sample(A), sample(B))
    pcm = np.clip(np.round(resample_poly(x, 3, 1, axis=0) * 32767), -32768, 32767).astype("<i2")
    raw = tmp_path / "array.raw"
    raw.write_bytes(pcm.tobytes())  # interleaved frames: channel 0, channel 1
    home = tmp_path / "home"
    home.mkdir()
    (home / ".asoundrc").write_text('pcm.arraymic {\n type file\n slave.pcm "null"\n file "/dev/null"\n'
                                    f' infile "{raw}"\n format "raw"\n}}\n')
    conf = tmp_path / "edge.toml"
    conf.write_text('[audio]\ndevice = "arraymic"\nsamplerate = 48000\n[zones]\nnames = ["driver", "passenger"]\n')
    p = subprocess.run([sys.executable, "-m", "edge", "run", "--config", str(conf), "--duration", f"{len(x) / SR:.1f}"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=ROOT, HOME=str(home)))
    assert p.returncode == 0, p.stderr
    events = [json.loads(line) for line in p.stdout.splitlines()]
    assert events[0]["source"] == "mic:arraymic" and events[0]["zones"] == ZONES
    assert sorted((f["zone"], f["text"]) for f in kinds(events, "final")) == [
        ("driver", META[A]["command"]), ("passenger", META[B]["command"])]


def test_cli_zones_end_to_end(tmp_path):
    path = write_pcm(tmp_path / "zones.wav", two_channels(sample(A), sample(B)))
    p, events = run_cli(["--input", path, "--fast", "--zones", "driver,passenger"])
    assert p.returncode == 0, p.stderr
    assert sorted((f["zone"], f["text"]) for f in kinds(events, "final")) == [
        ("driver", META[A]["command"]), ("passenger", META[B]["command"])]


def test_doctor_checks_the_channels_against_the_zones(tmp_path):
    """`paraedge doctor` refuses a file whose channel count differs from [zones] names, before a drive."""
    two = write_pcm(tmp_path / "two.wav", two_channels(sample(A), sample(B)))
    conf = tmp_path / "edge.toml"
    for path, status, text in ((two, "ok", "2 channels = zones driver, passenger"),
                               (os.path.join(SAMPLES, B), "FAIL", "has 1 channel(s) but zones names 2")):
        conf.write_text(f'[audio]\ninput = "{path}"\n[zones]\nnames = ["driver", "passenger"]\n')
        p = subprocess.run([sys.executable, "-m", "edge", "doctor", "--config", str(conf)], capture_output=True,
                           text=True, timeout=300)
        line = next(ln for ln in p.stdout.splitlines() if ln.split()[1:2] == ["audio"])
        assert line.startswith(status) and text in line, p.stdout
