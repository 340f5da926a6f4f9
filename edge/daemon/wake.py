"""Wake-word gate: microWakeWord TFLite models, the only thing that runs while the daemon idles.

A model is a `.tflite` + its `.json` manifest (cutoff, sliding window), as shipped in the
`pymicro-wakeword` wheel (okay_nabu, alexa, hey_mycroft, hey_jarvis) or trained by the user.
Features are TFLite-Micro's 40-bin frontend (`pymicro-features`), 10 ms per frame; the model
takes `stride` frames per call (3 = 30 ms) and is stateful, so a detection re-creates the
interpreter. The interpreter comes from `ai-edge-litert` or `tflite-runtime`, whichever is installed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import ParaEdgeError

HOP = 160  # samples per feature frame (10 ms at 16 kHz)


class WakeError(ParaEdgeError):
    """A wake-word model or its runtime is missing or unusable."""


@contextlib.contextmanager
def _quiet_stderr():
    """TFLite prints an INFO line from C on every interpreter it creates; the daemon is quiet by default."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise WakeError("no TFLite runtime: pip install ai-edge-litert (or tflite-runtime)") from None
    return Interpreter


def builtin_models_dir() -> Path | None:
    """The models folder of the installed pymicro-wakeword wheel (found without importing it)."""
    spec = importlib.util.find_spec("pymicro_wakeword")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0]) / "models"
    return d if d.is_dir() else None


def builtin_models() -> list[str]:
    d = builtin_models_dir()
    return sorted(p.stem for p in d.glob("*.json")) if d else []


def resolve_manifest(name_or_path: str) -> Path:
    """'okay_nabu' -> the wheel's okay_nabu.json; a .json or .tflite path -> its manifest."""
    p = Path(name_or_path)
    if p.suffix == ".tflite":
        p = p.with_suffix(".json")
    if p.suffix == ".json":
        if not p.is_file():
            raise WakeError(f"wake-word manifest not found: {p}")
        return p
    d = builtin_models_dir()
    if d is None:
        raise WakeError(f"wake word '{name_or_path}': pymicro-wakeword is not installed (pip install pymicro-wakeword)")
    p = d / f"{name_or_path}.json"
    if not p.is_file():
        raise WakeError(f"unknown wake word '{name_or_path}' (built in: {', '.join(builtin_models())})")
    return p


@dataclass
class Detection:
    name: str
    wake_word: str
    probability: float
    offset: int  # where in the samples given to process() it fired (end of the wake word, roughly)


class WakeModel:
    """One microWakeWord model with its sliding-window decision rule."""

    def __init__(self, name_or_path: str, cutoff: float | None = None, window: int | None = None):
        self.manifest_path = resolve_manifest(name_or_path)
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            micro = manifest["micro"]
            self.tflite_path = self.manifest_path.parent / manifest["model"]
            self.wake_word = manifest.get("wake_word", self.manifest_path.stem)
            self.cutoff = float(cutoff if cutoff is not None else micro["probability_cutoff"])
            self.window = int(window if window is not None else micro["sliding_window_size"])
        except (ValueError, KeyError, TypeError) as exc:
            raise WakeError(f"{self.manifest_path}: not a microWakeWord manifest ({exc})") from None
        if not self.tflite_path.is_file():
            raise WakeError(f"{self.manifest_path}: model file {self.tflite_path.name} is missing")
        if not 0.0 < self.cutoff < 1.0 or self.window < 1:
            raise WakeError(f"{self.manifest_path}: cutoff must be in (0, 1) and window >= 1")
        self.name = self.manifest_path.stem
        self._Interpreter = _interpreter_class()
        self._load()

    def _load(self) -> None:
        try:
            with _quiet_stderr():
                self.interp = self._Interpreter(model_path=str(self.tflite_path), num_threads=1)
                self.interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise WakeError(f"{self.tflite_path}: cannot load ({exc})") from None
        inp, out = self.interp.get_input_details()[0], self.interp.get_output_details()[0]
        self.stride = int(inp["shape"][1])
        self._in, self._out = inp["index"], out["index"]
        self._in_scale, self._in_zero = inp["quantization"]
        self._out_scale, self._out_zero = out["quantization"]
        self._in_dtype = inp["dtype"]
        self._frames: list[np.ndarray] = []
        self._probs: deque[float] = deque(maxlen=self.window)

    def reset(self) -> None:
        """Forget everything heard: the model's streaming state lives inside the interpreter."""
        self._load()

    def push(self, frame: np.ndarray) -> float | None:
        """One 40-bin feature frame -> the windowed probability when the model ran, else None."""
        self._frames.append(frame)
        if len(self._frames) < self.stride:
            return None
        x = np.stack(self._frames)[None]
        self._frames.clear()
        q = np.round(x / self._in_scale + self._in_zero)
        info = np.iinfo(self._in_dtype)
        self.interp.set_tensor(self._in, np.clip(q, info.min, info.max).astype(self._in_dtype))
        self.interp.invoke()
        p = (float(self.interp.get_tensor(self._out).reshape(-1)[0]) - self._out_zero) * self._out_scale
        self._probs.append(p)
        if len(self._probs) < self.window:
            return 0.0
        return float(np.mean(self._probs))


class WakeGate:
    """Feature frontend shared by one or more wake models; `process()` returns a Detection or None.

    After a detection every model is reset, so the same wake word cannot fire twice."""

    def __init__(self, models: list[str], cutoff: float | None = None, window: int | None = None):
        if not models:
            raise WakeError("no wake-word model given")
        try:
            from pymicro_features import MicroFrontend
        except ImportError:
            raise WakeError("pymicro-features is not installed (pip install pymicro-wakeword)") from None
        self._Frontend = MicroFrontend
        self.models = [WakeModel(m, cutoff, window) for m in models]
        self._frontend = MicroFrontend()
        self._pending = b""

    def describe(self) -> str:
        return ", ".join(f"{m.name} (cutoff {m.cutoff}, window {m.window})" for m in self.models)

    def reset(self) -> None:
        for m in self.models:
            m.reset()
        self._frontend = self._Frontend()
        self._pending = b""

    def process(self, samples: np.ndarray) -> Detection | None:
        """16 kHz float samples in [-1, 1] -> a Detection when a wake word fired in them."""
        pcm = np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2").tobytes()
        buf, pos, found = self._pending + pcm, 0, None
        while pos + 2 * HOP <= len(buf):
            out = self._frontend.process_samples(buf[pos : pos + 2 * HOP])
            pos += 2 * max(out.samples_read, 1)
            if not out.features or found is not None:
                continue
            frame = np.asarray(out.features, dtype=np.float32)
            for m in self.models:
                p = m.push(frame)
                if p is not None and p > m.cutoff:
                    offset = max(0, (pos - len(self._pending)) // 2)  # buf starts with the old pending bytes
                    found = Detection(m.name, m.wake_word, p, offset)
                    break
        self._pending = buf[pos:]
        if found is not None:
            self.reset()
        return found
