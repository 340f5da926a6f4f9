"""`paraedge doctor`: check a board before a drive: CPU vs board profile, kernels, model, audio
devices, wake word and VAD, then say exactly what `paraedge run` would run. Nothing is started;
each check prints ok / warn / FAIL with the reason, and the exit code is 1 when any check failed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from edge.daemon.config import DaemonConfig
from edge.errors import ParaEdgeError


@dataclass
class Report:
    lines: list = field(default_factory=list)
    failed: int = 0

    def add(self, status: str, what: str, detail: str) -> None:
        self.lines.append((status, what, detail))
        self.failed += status == "FAIL"

    def check(self, what: str, fn):
        """Run one check: fn() returns (status, detail) or raises a ParaEdgeError (FAIL)."""
        try:
            status, detail = fn()
        except ParaEdgeError as exc:
            status, detail = "FAIL", str(exc)
        except Exception as exc:  # a broken install must show up as a finding, not a traceback
            status, detail = "FAIL", f"{type(exc).__name__}: {exc}"
        self.add(status, what, detail)
        return status != "FAIL"

    def render(self) -> str:
        return "\n".join(f"{s:<4}  {w:<10} {d}" for s, w, d in self.lines)


def _cpu() -> tuple[str, str]:
    from edge.platform import cpu_features, cpu_model, machine

    feats = cpu_features()
    interesting = [f for f in ("asimd", "asimddp", "fphp", "asimdhp", "i8mm", "sve", "avx2", "fma", "avx512f", "avx512_vnni")
                   if f in feats]
    return "ok", f"{machine()} {cpu_model()} ({os.cpu_count()} cores); features: {', '.join(interesting) or 'none found'}"


def _board(name: str):
    from edge.boards import check_runs_here, load_board

    def fn():
        if not name:
            return "warn", "no board set (config `board = ...` or --board); nothing to check the CPU against"
        board = load_board(name)
        check_runs_here(board)
        return "ok", f"{board.name}: {board.description}; this CPU has everything it needs"
    return fn


def _kernels():
    try:
        from edge.backends import kernels
    except ImportError:
        return "warn", "NEON kernel module not installed"
    line = kernels.describe_line()
    return ("ok" if kernels.available() else "warn"), line


def diagnose(cfg: DaemonConfig, board: str | None = None, load_model: bool = True) -> Report:
    r = Report()
    r.check("cpu", _cpu)
    r.check("board", _board(board or cfg.board))
    r.check("kernels", _kernels)

    state = {}

    def model():
        from edge.daemon.service import load_recognizer
        from edge.asr.modeldir import ModelDir

        if cfg.model.backend == "tvm":
            from edge.backends.tvm import read_manifest

            read_manifest(cfg.model.dir)  # a bundle is verified before any of its files is parsed
        md = ModelDir(cfg.model.dir)
        kind = "streaming" if md.config.streaming else "offline"
        if not md.config.streaming:
            raise ParaEdgeError(f"{cfg.model.dir} is an offline model; the daemon needs a ParaformerStreaming model")
        if load_model:
            state["rec"] = load_recognizer(cfg)  # loads, verifies and warms up exactly as `run` will
        return "ok", f"{cfg.model.dir} ({md.config.model}, {kind}, vocab {md.config.vocab_size})"
    r.check("model", model)

    def audio():
        from edge.daemon.capture import list_input_devices

        zones = list(cfg.zones.names)
        if cfg.audio.input:
            from edge.asr.audio import open_audio

            # read as `run` will: a missing, empty or non-WAV file is a FAIL with its reason here
            channels = open_audio(cfg.audio.input)[1].channels
            if zones:  # the header's channel count against the zones, as `run` would refuse it
                if channels != len(zones):
                    raise ParaEdgeError(f"file input {cfg.audio.input} has {channels} channel(s) but zones names "
                                        f"{len(zones)} ({', '.join(zones)}); give a {len(zones)}-channel WAV or change "
                                        "[zones] names")
                return "ok", f"file input {cfg.audio.input}, {channels} channels = zones {', '.join(zones)}"
            return "ok", f"file input {cfg.audio.input}"
        devices = list_input_devices()
        if not devices:
            raise ParaEdgeError("no audio input devices (is the microphone connected? `paraedge devices`)")
        want = cfg.audio.device
        if want:
            match = [d for d in devices if str(d["index"]) == want or want in d["name"]]
            if not match:
                raise ParaEdgeError(f"input device {want!r} not found; have: {', '.join(d['name'] for d in devices)}")
            device = match[0]
        else:
            device = ([d for d in devices if d["default"]] or devices[:1])[0]
        if zones and device["channels"] < len(zones):
            raise ParaEdgeError(f"input device {device['name']!r} has {device['channels']} input channel(s) but zones "
                                f"names {len(zones)} ({', '.join(zones)}); pick the array's device (audio.device) or "
                                "fewer zones")
        where = "input device" if want else f"default input ({len(devices)} inputs)"
        return "ok", f"{where} {device['name']!r}" + (f", one channel per zone: {', '.join(zones)}" if zones else "")
    r.check("audio", audio)

    def wake():
        if not cfg.wake.enabled:
            return "warn", "wake word disabled: the VAD opens every utterance"
        from edge.daemon.service import Daemon

        return "ok", Daemon._make_gate(cfg).describe()
    r.check("wake", wake)

    def vad():
        from edge.daemon.vad import SileroVad

        return "ok", f"silero VAD {SileroVad(cfg.vad.model or None).path}; ends after {cfg.vad.trailing_silence_s} s of silence"
    r.check("vad", vad)

    if r.failed:
        r.add("FAIL", "would run", f"nothing: {r.failed} check(s) above failed")
    elif "rec" in state:
        rec = state["rec"]
        src = cfg.audio.input or f"microphone {cfg.audio.device or '(default)'}"
        chunks = list(cfg.model.chunk_size or rec.config.chunk_size)
        from edge.daemon.pipeline import resolve_final_pass

        final = resolve_final_pass(cfg.model.final_pass, rec)
        final = "two-pass final (offline)" if final == "offline" else "streaming final"
        r.add("ok", "would run", f"{rec.backend.describe()} on {src}, {cfg.model.threads} thread(s), chunks {chunks}, {final}")
    return r
