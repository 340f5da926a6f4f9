"""Wake-word gate: microWakeWord TFLite models, the only thing that runs while the daemon idles.

A model is a `.tflite` + its `.json` manifest (cutoff, sliding window), as shipped in the
`pymicro-wakeword` wheel (okay_nabu, alexa, hey_mycroft, hey_jarvis) or trained by the user.
Features are TFLite-Micro's 40-bin frontend (`pymicro-features`), 10 ms per frame; the model
takes `stride` frames per call (3 = 30 ms) and is stateful, so a detection re-creates the
interpreter. The interpreter comes from `ai-edge-litert` or `tflite-runtime`, whichever is installed.

Tuning (`python bench/wake.py`: 300 renders per wake word, the seven synthesizer families the
recipe trains on taking turns, in car noise at 20/10/5 dB; 6 h of everyday English/Mandarin talk
(4 h espeak-ng, 20 min by each other family) with 5 % near-miss phrases; 20 ms blocks; latency = end
of the wake word -> end of the block that fired). The manifests' 5-window mean costs 70-100 ms of
latency over a window of 1 at equal false accepts, so TUNED uses window 1. The cutoff: within
<= 0.5 false accepts/h and recall within 2 standard errors of the best, P50 <= 130 ms (the 150 ms
target less a margin), then the fewest false accepts (bench/wake.py `choose`; the sweep is replayed
from raw probabilities, README's table is the exact WakeGate run):

    model      verifier window cutoff  recall  P50    P99    FA/h
    okay_nabu  -        5      0.85    45.7 %  185 ms 418 ms 0.33   manifest
    okay_nabu  -        1      0.85    46.3 %   99 ms 343 ms 0.50
    okay_nabu  -        1      0.90    41.0 %  108 ms 435 ms 0.17   TUNED (wake.verify = false)
    okay_nabu  > 0.9    1      0.50    64.3 %   65 ms 337 ms 0.33   (0.67 on the fresh renders)
    okay_nabu  > 0.9    1      0.60    60.0 %   74 ms 371 ms 0.33   VERIFIED (the default)
    alexa      -        5      0.90    85.7 %  215 ms 331 ms 2.50   manifest
    alexa      -        1      0.98    79.3 %  130 ms 277 ms 1.67
    alexa      -        1      0.99    76.3 %  136 ms 269 ms 1.33   TUNED (wake.verify = false): the fewest
    alexa      > 0.9    1      0.90    86.7 %  117 ms 260 ms 0.67
    alexa      > 0.9    1      0.98    79.0 %  130 ms 292 ms 0.50   VERIFIED (the default)

Nearly every false accept without a verifier is a near-miss phrase (alexa: "a lexus", "perplexa",
"selection", "election"; okay_nabu: "okay, maybe", "okay, now") or, for okay_nabu at low cutoffs, an
in-car command. The model's output is a byte, so cutoffs closer than 1/255 decide alike. Measured on
espeak-ng alone (the first tuning), alexa kept 0.5 false accepts/h at 0.98 but its P50 was 173 ms:
formant voices make the pretrained models slow (alexa's P50 by family: espeak-ng 163 ms, SAM 199,
RHVoice 59, Piper 137). Natural voices saying "a lexus" or "selection" wake it more often (Piper: 3
in 20 min), so over all families no cutoff alone keeps alexa within 0.5/h.

Hence a second stage for both (edge/daemon/verify.py, trained by `python -m
paraedge_tools.recipe.wake_verifier` on renders and near-miss phrases of its own, none of the
benchmark's): when the model passes its cutoff, a small CNN over the last second of the same features
must agree. It runs only on those candidates, so idle cost and latency are unchanged. alexa at 0.98:
false accepts 1.67 -> 0.50/h at the same recall and latency. okay_nabu can then run at a low cutoff:
recall 41 -> 60 %, P50 108 -> 74 ms, within the budget. The sweep picked 0.5 for okay_nabu, but a
second, independent render set (`bench/wake.py --seed 1000 --out out/wake-fresh`) gave it 0.67/h
there, so VERIFIED holds the lowest cutoff that keeps 0.5/h on both sets: 0.6 (0.33/h on each).
On that second set: okay_nabu 60.3 %, 78 ms, 0.33/h; alexa 76.3 %, 136 ms, 0.33/h.
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

from edge.daemon.verify import FRAMES, VerifierError, WakeVerifier
from edge.errors import ParaEdgeError

HOP = 160  # samples per feature frame (10 ms at 16 kHz)


# Per-keyword (cutoff, window) for the wheel's own models, measured by bench/wake.py (module
# docstring). Any other model keeps its manifest's values; wake.cutoff / wake.window override both.
TUNED: dict[str, tuple[float, int]] = {"okay_nabu": (0.9, 1), "alexa": (0.99, 1)}
# The same, for a model whose second-stage verifier (edge/daemon/verify.py) is on (wake.verify = true):
# bench/wake.py's choice, confirmed on its second render set (okay_nabu: the choice, 0.5, was not; 0.6 was).
VERIFIED: dict[str, tuple[float, int]] = {"okay_nabu": (0.6, 1), "alexa": (0.98, 1)}
# Longer than the one repeat a gate without it made in bench/wake.py's renders (0.92 s after the first
# detection, at the manifests' settings; none at TUNED's). A slower wake word (the longest rendered:
# 1.81 s) cannot fire twice either: the model must also dip below its cutoff first.
REFRACTORY_S = 1.5


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


def _manifest_problem(exc: Exception) -> str:
    """Python's words for a bad manifest ("'micro'", "list indices must be integers") made plain."""
    if isinstance(exc, KeyError):
        return f"no {exc.args[0]!r} field"
    if isinstance(exc, TypeError):
        return 'expected a JSON object with "model" and "micro": {"probability_cutoff", "sliding_window_size"}'
    return str(exc)[:100]


def resolve_manifest(name_or_path: str) -> Path:
    """'okay_nabu' -> the wheel's okay_nabu.json; a .json or .tflite path -> its manifest."""
    p = Path(name_or_path)
    if p.suffix == ".tflite":
        p = p.with_suffix(".json")
    if p.suffix == ".json":
        if p.exists() and not p.is_file():
            raise WakeError(f"wake-word manifest {p}: not a regular file; give the model's .json")
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


def manifest_values(name_or_path: str) -> tuple[float, int]:
    """(probability_cutoff, sliding_window_size) exactly as the model's manifest states them."""
    path = resolve_manifest(name_or_path)
    try:
        micro = json.loads(path.read_text(encoding="utf-8"))["micro"]
        return float(micro["probability_cutoff"]), int(micro["sliding_window_size"])
    except (ValueError, KeyError, TypeError) as exc:
        raise WakeError(f"{path}: not a microWakeWord manifest ({_manifest_problem(exc)})") from None


def _builtin(manifest_path: Path) -> bool:
    """TUNED and the shipped verifiers apply to the wheel's own models only: a user's model of the same
    name is another model."""
    d = builtin_models_dir()
    return d is not None and manifest_path.resolve().parent == d.resolve()


def _tuned(manifest_path: Path, verified: bool) -> tuple[float, int] | None:
    if not _builtin(manifest_path):
        return None
    return (VERIFIED if verified else TUNED).get(manifest_path.stem)


def verifier_path(manifest_path: Path) -> Path | None:
    """The second-stage verifier for a model: `<name>_verifier.npz` in ParaEdge's resources for the
    wheel's own models, beside the manifest for a user's model; None when there is none."""
    if _builtin(manifest_path):
        p = Path(__file__).resolve().parent.parent / "resources" / f"{manifest_path.stem}_verifier.npz"
    else:
        p = manifest_path.with_name(f"{manifest_path.stem}_verifier.npz")
    return p if p.is_file() else None


@dataclass
class Detection:
    name: str
    wake_word: str
    probability: float
    offset: int  # where in the samples given to process() it fired (end of the wake word, roughly)


class WakeModel:
    """One microWakeWord model with its sliding-window decision rule."""

    def __init__(self, name_or_path: str, cutoff: float | None = None, window: int | None = None,
                 verify: bool = True):
        self.manifest_path = resolve_manifest(name_or_path)
        self.verifier: WakeVerifier | None = None
        vpath = verifier_path(self.manifest_path) if verify else None
        if vpath is not None:
            try:
                self.verifier = WakeVerifier(vpath)
            except VerifierError as exc:
                raise WakeError(str(exc)) from None
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            micro = manifest["micro"]
            self.tflite_path = self.manifest_path.parent / manifest["model"]
            self.wake_word = manifest.get("wake_word", self.manifest_path.stem)
            tuned = (_tuned(self.manifest_path, self.verifier is not None)
                     or (micro["probability_cutoff"], micro["sliding_window_size"]))
            self.cutoff = float(cutoff if cutoff is not None else tuned[0])
            self.window = int(window if window is not None else tuned[1])
        except (ValueError, KeyError, TypeError) as exc:
            raise WakeError(f"{self.manifest_path}: not a microWakeWord manifest ({_manifest_problem(exc)})") from None
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

    @property
    def full(self) -> bool:
        """The sliding window holds `window` probabilities (after a reset it starts empty)."""
        return len(self._probs) >= self.window


class _HeldFrontend:
    """pymicro_features' MicroFrontend, freed only from this __del__. Its own dealloc crashes the
    process (a segfault, or a SystemError in place of the error) when it runs while an exception
    unwinds: a daemon whose VAD model failed to load, with the gate built in the same call, died so.
    CPython sets the pending exception aside around a __del__, so the frontend is freed in the clear."""

    def __init__(self, cls):
        self.fe = cls()

    def process_samples(self, samples: bytes):
        return self.fe.process_samples(samples)

    def __del__(self):
        self.fe = None


class WakeGate:
    """Feature frontend shared by one or more wake models; `process()` returns a Detection or None.

    After a detection every model is reset and disarmed: a model re-arms once `refractory_s` of the
    audio given to process() has passed since the detection *and* its windowed probability has since
    been at or below its cutoff. So one utterance never wakes twice, however long the probability
    stays high (a detection held back by the refractory period would otherwise fire late, on the tail)."""

    def __init__(self, models: list[str], cutoff: float | None = None, window: int | None = None,
                 refractory_s: float = REFRACTORY_S, verify: bool = True):
        if not 0.0 <= refractory_s <= 60.0:
            raise WakeError(f"wake refractory {refractory_s} s: must be in [0, 60]")
        if not models:
            raise WakeError("no wake-word model given")
        try:
            from pymicro_features import MicroFrontend
        except ImportError:
            raise WakeError("pymicro-features is not installed (pip install pymicro-wakeword)") from None
        self._Frontend = MicroFrontend
        self.models = [WakeModel(m, cutoff, window, verify) for m in models]
        self._frontend = _HeldFrontend(MicroFrontend)
        self._heard: deque[np.ndarray] = deque(maxlen=FRAMES)  # what a verifier looks at
        self.vetoed = 0  # candidates a verifier turned down (for the daemon's stats)
        self._pending = b""
        self.refractory = int(round(refractory_s * 16000))
        self._quiet = 0  # samples left in the refractory period
        self._armed = [True] * len(self.models)

    def describe(self) -> str:
        return ", ".join(f"{m.name} (cutoff {m.cutoff}, window {m.window}"
                         + (f", verifier > {m.verifier.cutoff})" if m.verifier else ")") for m in self.models)

    def reset(self) -> None:
        for m in self.models:
            m.reset()
        self._frontend = _HeldFrontend(self._Frontend)
        self._heard.clear()
        self._pending = b""
        self._quiet = 0
        self._armed = [True] * len(self.models)

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
            self._heard.append(frame)
            offset = max(0, (pos - len(self._pending)) // 2)  # buf starts with the old pending bytes
            for j, m in enumerate(self.models):
                p = m.push(frame)  # disarmed models listen too: they rebuild their state
                if p is None:
                    continue
                if not self._armed[j]:
                    self._armed[j] = offset >= self._quiet and m.full and p <= m.cutoff
                elif p > m.cutoff:
                    if m.verifier is not None and not m.verifier.accepts(np.stack(self._heard)):
                        self.vetoed += 1  # a near miss: keep listening, the model stays armed
                        continue
                    found = Detection(m.name, m.wake_word, p, offset)
                    break
        self._pending = buf[pos:]
        if found is not None:
            self.reset()
            self._armed = [False] * len(self.models)
            self._quiet = self.refractory + found.offset - len(samples)  # counted from the detection
        else:
            self._quiet = max(0, self._quiet - len(samples))
        return found
