"""`edge.toml`: the daemon's configuration, validated up front so a typo fails at start, not mid-drive.

Relative paths in the file resolve against the file's own folder. Every key has a default; an
empty file runs the shipped demo model from the default microphone, gated by okay_nabu + alexa.
See edge/resources/edge.toml for the documented template.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from edge.errors import ParaEdgeError, open_regular
from edge.platform import check_threads

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib


class ConfigError(ParaEdgeError):
    """The daemon configuration is unreadable or holds a bad value."""


_KIND_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "a string", list: "a list"}


def _shown(name: str) -> str:
    """A key from the file, fit for a one-line message: TOML quoted keys may hold newlines, any character."""
    return name if name.isprintable() else repr(name)[:80]


def _same_kind(default, value) -> bool:
    """A TOML value fits a key when it has the default's type (an int fits a float key; 1.5 never fits an int key)."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def _within(name: str, value: float, lo: float, hi: float, lo_open: bool = False) -> None:
    """Finite and in range: inf, nan and negative durations are accepted by TOML and by nothing else."""
    ok = math.isfinite(value) and (lo < value if lo_open else lo <= value) and value <= hi
    if not ok:
        raise ConfigError(f"{name} = {value!r}: must be within {'(' if lo_open else '['}{lo:g}, {hi:g}]")


def shipped_demo_model() -> str:
    from edge.assets import demo_model_dir

    return str(demo_model_dir())


@dataclass
class ModelSection:
    dir: str = field(default_factory=shipped_demo_model)
    backend: str = "onnxruntime"  # ref | onnxruntime | tvm (dir = a compiled bundle) | neon | auto
    int8: bool = True
    threads: int = 1
    chunk_size: list = field(default_factory=list)  # [left, chunk, right] LFR frames; [] = the model's default
    hotwords: str = ""  # a hotword list (edge/asr/hotwords.py) boosting phrases in free decoding; "" = none
    final_pass: str = "auto"  # streaming | offline (two-pass final) | auto (edge/daemon/pipeline.py resolve_final_pass)


@dataclass
class AudioSection:
    device: str = ""  # sounddevice name or index; "" = system default input
    input: str = ""  # a WAV file instead of a microphone
    realtime: bool = True  # pace `input` like a microphone
    samplerate: int = 0  # 0 = 16 kHz if the device allows, else its default
    channels: int = 0
    block_ms: int = 20
    buffer_s: float = 10.0  # queue between the audio thread and the pipeline
    retry_max_s: float = 10.0  # device reconnect backoff cap


@dataclass
class WakeSection:
    enabled: bool = True  # false: every utterance is decoded (push-to-talk rigs, benches)
    models: list = field(default_factory=lambda: ["okay_nabu", "alexa"])
    cutoff: float = 0.0  # 0 = the tuned value (edge/daemon/wake.py TUNED), else each model's manifest value
    window: int = 0
    pre_roll_s: float = 0.1  # audio kept from just before the detection
    refractory_s: float = 1.5  # after a wake none fires for this long (wake.py REFRACTORY_S, measured by bench/wake.py)
    verify: bool = True  # second-stage verifier (edge/daemon/verify.py) for models that have one: alexa


@dataclass
class VadSection:
    model: str = ""  # "" = silero_vad.onnx from the installed silero-vad wheel
    threshold: float = 0.5
    neg_threshold: float = 0.35
    trailing_silence_s: float = 0.5
    no_speech_timeout_s: float = 5.0
    max_utterance_s: float = 15.0
    # audio kept from before the VAD's first speech: with the wake word off, where the utterance opens;
    # with it on, where the two-pass final starts (edge.toml says why)
    pre_roll_s: float = 0.3


@dataclass
class EventsSection:
    stdout: bool = True
    socket: str = ""  # UNIX socket path (mode 0600); "" = none


MAX_ZONES = 8  # seat zones of one car; more is a typo, and each zone costs a wake gate and a VAD


@dataclass
class ZonesSection:
    names: list = field(default_factory=list)  # one seat zone per input channel, in channel order; [] = mono
    batch_wait_ms: int = 300  # how long a zone's full chunk may wait for the other zones' to batch with them


@dataclass
class GrammarSection:
    file: str = ""  # a grammar YAML (docs/GRAMMAR.md): finals carry intent, slots, confidence; "" = free text
    command_silence_s: float = 0.15  # silence after a complete, confident command that ends it (0 = off)


@dataclass
class DaemonConfig:
    model: ModelSection = field(default_factory=ModelSection)
    audio: AudioSection = field(default_factory=AudioSection)
    wake: WakeSection = field(default_factory=WakeSection)
    vad: VadSection = field(default_factory=VadSection)
    events: EventsSection = field(default_factory=EventsSection)
    zones: ZonesSection = field(default_factory=ZonesSection)
    grammar: GrammarSection = field(default_factory=GrammarSection)
    board: str = ""  # a boards/*.toml profile name; checked by `paraedge doctor`
    path: str = ""  # where this config was read from (reload re-reads it)

    @classmethod
    def load(cls, path: str | None) -> "DaemonConfig":
        if not path:
            return cls().validated()
        try:
            with open_regular(path, "rb") as f:
                raw = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text; save edge.toml as UTF-8") from None
        except RecursionError:
            raise ConfigError(f"{path}: not valid TOML (nested too deeply)") from None
        cfg = cls(path=str(path))
        base = Path(path).resolve().parent
        sections = [f.name for f in dataclasses.fields(cfg) if f.name not in ("board", "path")]
        for key, value in raw.items():
            if key == "board":
                if not isinstance(value, str):
                    raise ConfigError(f"{path}: board should be a string (a boards/*.toml name), got {value!r:.60}")
                cfg.board = value
                continue
            # by name, not getattr: [__class__] reached the class itself (its defaults, set for every config)
            if key not in sections or not isinstance(value, dict):
                raise ConfigError(f"{path}: unknown section [{_shown(key)}] (known: model, audio, wake, vad, events, zones, grammar, board)")
            section = getattr(cfg, key)
            names = {f.name: f for f in dataclasses.fields(section)}
            for k, v in value.items():
                if k not in names:
                    raise ConfigError(f"{path}: unknown key {key}.{_shown(k)} (known: {', '.join(names)})")
                default = getattr(section, k)
                if not _same_kind(default, v):
                    raise ConfigError(f"{path}: {key}.{k} should be {_KIND_NAMES.get(type(default), type(default).__name__)}, "
                                      f"got {v!r:.80}")
                setattr(section, k, float(v) if isinstance(default, float) else v)
        for section, key in ((cfg.model, "dir"), (cfg.model, "hotwords"), (cfg.audio, "input"), (cfg.vad, "model"), (cfg.events, "socket"),
                             (cfg.grammar, "file")):
            value = getattr(section, key)
            if value and not os.path.isabs(value):
                setattr(section, key, str(base / value))
        cfg.wake.models = [str(base / m) if isinstance(m, str) and m.endswith((".json", ".tflite")) and not os.path.isabs(m)
                           else m for m in cfg.wake.models]
        return cfg.validated()

    def validated(self) -> "DaemonConfig":
        from edge.asr.modeldir import check_chunk_size
        from edge.backends import BACKENDS
        from edge.daemon.pipeline import FINAL_PASSES

        m, v, w = self.model, self.vad, self.wake
        if m.backend not in BACKENDS:
            raise ConfigError(f"model.backend {m.backend!r:.40} is not one of {', '.join(BACKENDS)}")
        if m.chunk_size:
            try:
                check_chunk_size(m.chunk_size)
            except ValueError as e:
                raise ConfigError(f"model.{e} ([] = the model's default)") from None
        if m.final_pass not in FINAL_PASSES:
            raise ConfigError(f"model.final_pass {m.final_pass!r:.40} is not one of {', '.join(FINAL_PASSES)}")
        try:
            check_threads(m.threads, "model.threads")
        except ParaEdgeError as exc:
            raise ConfigError(str(exc)) from None
        if not 0 < v.neg_threshold <= v.threshold < 1:
            raise ConfigError("vad thresholds must satisfy 0 < neg_threshold <= threshold < 1")
        for name in ("trailing_silence_s", "no_speech_timeout_s", "max_utterance_s"):
            _within(f"vad.{name}", getattr(v, name), 0, 3600, lo_open=True)
        if w.enabled and not w.models:
            raise ConfigError("wake.models is empty; set wake.enabled = false to decode without a wake word")
        bad = [m for m in w.models if not isinstance(m, str) or not m]
        if bad:
            raise ConfigError(f"wake.models: {bad[0]!r} is not a model name or a .json path")
        _within("wake.pre_roll_s", w.pre_roll_s, 0, 2)
        _within("vad.pre_roll_s", v.pre_roll_s, 0, 2)
        _within("wake.cutoff", w.cutoff, 0, 1)
        if w.cutoff >= 1:  # a probability never reaches 1: it passed here, then failed naming the manifest
            raise ConfigError(f"wake.cutoff = {w.cutoff!r}: must be 0 (each model's tuned value) or in (0, 1)")
        if len(set(w.models)) != len(w.models):
            dup = next(m for m in w.models if w.models.count(m) > 1)
            raise ConfigError(f"wake.models names {dup!r} twice; list each wake word once")
        _within("wake.window", w.window, 0, 1000)
        _within("wake.refractory_s", w.refractory_s, 0, 10)
        a = self.audio
        _within("audio.block_ms", a.block_ms, 1, 1000)
        _within("audio.buffer_s", a.buffer_s, 0, 600, lo_open=True)
        _within("audio.retry_max_s", a.retry_max_s, 0.05, 3600)  # a floor: -1 meant a million reopen attempts
        if a.samplerate and not 8000 <= a.samplerate <= 384000:
            raise ConfigError(f"audio.samplerate = {a.samplerate}: 0 (automatic) or 8000..384000 Hz")
        _within("audio.channels", a.channels, 0, 64)
        _within("grammar.command_silence_s", self.grammar.command_silence_s, 0, 10)
        check_zones(self.zones.names)
        _within("zones.batch_wait_ms", self.zones.batch_wait_ms, 0, 2000)
        n = len(self.zones.names)
        if n and a.channels not in (0, n):
            raise ConfigError(f"audio.channels = {a.channels} but zones.names has {n} zones; "
                              f"set channels = {n} or 0 (zones open one channel per zone)")
        return self


def check_zones(names) -> None:
    """Zone names: a list of distinct, non-empty, printable strings, at most MAX_ZONES (events carry them)."""
    if not isinstance(names, list):
        raise ConfigError(f"zones.names should be a list of zone names, got {names!r:.60}")
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"zones.names (--zones): {name!r:.40} is not a zone name; "
                              "give non-empty names, e.g. driver,passenger")
        if not name.isprintable() or "," in name or name != name.strip():
            raise ConfigError(f"zones.names (--zones): {name!r:.40} may not hold commas, "
                              "spaces at its ends or control characters")
    seen = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"zones.names (--zones): zone {name!r:.40} is named twice; "
                              "each channel needs its own zone name")
        seen.add(name)
    if len(names) > MAX_ZONES:
        raise ConfigError(f"zones.names (--zones): {len(names)} zones, at most {MAX_ZONES} (one per input channel)")
