"""Voice activity: silero VAD (ONNX, onnxruntime only) and the endpointer that ends an utterance.

The ONNX file comes from the installed `silero-vad` wheel (located, never imported: its Python
package pulls in torch) or from an explicit path. Silero takes 512-sample windows at 16 kHz
with the previous window's last 64 samples as context and carries an LSTM state.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import ParaEdgeError
from edge.asr.audio import SAMPLE_RATE

WINDOW = 512  # samples per VAD decision (32 ms)
CONTEXT = 64


class VadError(ParaEdgeError):
    """The VAD model is missing or unusable."""


def default_model_path() -> Path | None:
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "data" / "silero_vad.onnx"
    return p if p.is_file() else None


class SileroVad:
    """Streaming speech probabilities, one per 32 ms window."""

    def __init__(self, path: str | None = None):
        import onnxruntime as ort

        p = Path(path) if path else default_model_path()
        if p is None:
            raise VadError("silero VAD model not found: pip install --no-deps silero-vad, or set vad_model to an ONNX path")
        if not p.is_file():
            raise VadError(f"VAD model not found: {p}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise VadError(f"{p}: cannot load VAD model ({exc})") from None
        self.path = p
        self.reset()
        # Checked at load, not per utterance: another ONNX here (the ASR model) passed `doctor`, then
        # every utterance of `run` ended in an `error` event and was lost
        names = sorted(i.name for i in self.session.get_inputs())
        try:
            if names != ["input", "sr", "state"]:
                raise ValueError(f"inputs {names}")
            self.process(np.zeros(WINDOW, np.float32))
        except Exception as exc:
            raise VadError(f"{p}: not a silero VAD v5 model ({str(exc)[:80]}); give silero_vad.onnx, or "
                           "leave [vad] model unset for the packaged one") from None
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), np.float32)
        self._context = np.zeros(CONTEXT, np.float32)
        self._pending = np.zeros(0, np.float32)

    def process(self, samples: np.ndarray) -> np.ndarray:
        """16 kHz float samples -> speech probabilities of every full window they complete."""
        buf = np.concatenate([self._pending, samples.astype(np.float32)])
        n = len(buf) // WINDOW
        probs = np.empty(n, np.float32)
        sr = np.array(SAMPLE_RATE, np.int64)
        for i in range(n):
            win = buf[i * WINDOW : (i + 1) * WINDOW]
            x = np.concatenate([self._context, win])[None]
            out, self._state = self.session.run(None, {"input": x, "state": self._state, "sr": sr})
            probs[i] = out.reshape(-1)[0]
            self._context = win[-CONTEXT:]
        self._pending = buf[n * WINDOW :]
        return probs


@dataclass
class EndpointConfig:
    threshold: float = 0.5  # speech starts above this
    neg_threshold: float = 0.35  # and continues until below this (hysteresis, as silero recommends)
    trailing_silence_s: float = 0.5  # silence that ends an utterance
    no_speech_timeout_s: float = 5.0  # after the wake word, give up if nobody speaks
    max_utterance_s: float = 15.0


class Endpointer:
    """Turns per-window speech probabilities into 'speech started' and 'utterance ended'."""

    def __init__(self, config: EndpointConfig):
        self.config = config
        self.reset()

    def reset(self, ignore_s: float = 0.0) -> None:
        """ignore_s: speech in the utterance's first seconds is not the command (the wake word's
        tail in the pre-roll): it neither starts the command nor, followed by the pause before the
        command, ends it."""
        self.ignore_s = ignore_s
        self.windows = 0  # windows seen this utterance
        self.in_speech = False
        self.heard_speech = False
        self.last_speech_window = -1
        self.first_speech_window = -1
        self.reason: str | None = None

    @property
    def seconds(self) -> float:
        return self.windows * WINDOW / SAMPLE_RATE

    @property
    def speech_end_s(self) -> float | None:
        """Utterance time where the last speech window ended."""
        return None if self.last_speech_window < 0 else (self.last_speech_window + 1) * WINDOW / SAMPLE_RATE

    @property
    def speech_start_s(self) -> float | None:
        """Utterance time where the first speech window (after ignore_s) began."""
        return None if self.first_speech_window < 0 else self.first_speech_window * WINDOW / SAMPLE_RATE

    @property
    def silence_s(self) -> float:
        """Silence since the last speech window, once speech was heard (0 while speaking or before)."""
        if not self.heard_speech or self.in_speech:
            return 0.0
        return self.seconds - self.speech_end_s

    def update(self, probs: np.ndarray) -> str | None:
        """Feed probabilities; returns why the utterance ended ('silence', 'no_speech', 'max_length') or None."""
        c = self.config
        for p in probs:
            self.windows += 1
            if self.seconds <= self.ignore_s:
                continue
            if p >= c.threshold or (self.in_speech and p >= c.neg_threshold):
                self.in_speech = self.heard_speech = True
                self.last_speech_window = self.windows - 1
                if self.first_speech_window < 0:
                    self.first_speech_window = self.windows - 1
            else:
                self.in_speech = False
            if self.reason is None:
                if self.heard_speech and self.seconds - self.speech_end_s >= c.trailing_silence_s:
                    self.reason = "silence"
                elif not self.heard_speech and self.seconds >= c.no_speech_timeout_s:
                    self.reason = "no_speech"
                elif self.seconds >= c.max_utterance_s:
                    self.reason = "max_length"
        return self.reason
