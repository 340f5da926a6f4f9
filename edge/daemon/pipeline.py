"""The daemon's data path, one chunk at a time: wake gate -> streaming Paraformer + VAD -> events.

Idle, only the wake gate runs (and a short pre-roll of audio is kept). A detection opens a
recognizer stream fed from the pre-roll on; every chunk goes to the stream (partials) and to the
VAD; trailing silence, a no-speech timeout or the length cap ends the utterance, the stream
flushes its CIF tail and the `final` event carries the text and its latencies. With the gate
disabled the VAD's first speech opens the utterance instead.

No threads here and no I/O but the event bus: the daemon owns the source, signals and reloads.

`feed()` is three steps, public so that several seat zones (edge/daemon/zones.py) can share one
batched recognizer call: `take()` (wake gate / VAD opening; returns the audio the open stream must
accept, or None), the stream's accept (here `stream.accept`, there `Recognizer.accept_batch`), and
`heard()` (partials: `decoded()`, then VAD and endpointing: `end_of()`). A pipeline with a `zone`
tags every event it emits with it.

Two-pass final (`final_pass`, FunASR's "2pass" mode): partials stay streaming, but the final is the
utterance's audio decoded once more in full context. Chunked decoding sees 300 ms ahead; the whole
utterance sees its end, which an unheard voice needs most. The shipped demo model, on the held-out
sets of its card (fp32): Kokoro 90.2 % streaming against 97.2 % offline, RHVoice 83.6 / 88.8 % at
10 dB, espeak 99.1 / 99.1 % clean (see `resolve_final_pass` for when it is on). After a wake word
it decodes from `final_lead_s` before the VAD's first speech, leaving the pause out (`decode_offline`).
"""

from __future__ import annotations

import collections
import logging
import os
import time

import numpy as np

from edge.asr.audio import SAMPLE_RATE
from edge.daemon.vad import Endpointer

log = logging.getLogger("paraedge.pipeline")

FINAL_PASSES = ("auto", "streaming", "offline")


def resolve_final_pass(final_pass: str, recognizer) -> str:
    """"streaming" or "offline" for this recognizer. "auto" is offline for the shipped demo model,
    which was trained for full-context and chunked decoding alike (its card: offline is never
    worse), and streaming for every other model: a FunASR streaming model is trained chunked
    only, and FunASR's own two-pass pairs it with a separate offline model, not with itself."""
    if final_pass != "auto":
        return final_pass
    from edge.assets import demo_model_dir

    try:
        demo = os.path.samefile(str(recognizer.model.path), str(demo_model_dir()))
    except (OSError, AttributeError):  # no demo installed, or a model not read from a dir
        demo = False
    return "offline" if demo else "streaming"


class Pipeline:
    def __init__(self, recognizer, gate, vad, endpoint, bus, chunk_size=None, pre_roll_s: float = 0.1,
                 zone: str | None = None, command_silence_s: float = 0.15, final_pass: str = "streaming",
                 final_lead_s: float | None = None):
        """command_silence_s: with a grammar on the recognizer, this much silence after a complete,
        confident command publishes the final at once (0 = off: the VAD's trailing silence decides).
        final_pass: "streaming" (the stream's own flush), "offline" (the utterance decoded again in
        full context) or "auto" (`resolve_final_pass`, per recognizer: a reload may change it).
        final_lead_s: the offline final decodes from this long before the VAD's first speech (None:
        from where the utterance opened; see `decode_offline`)."""
        if final_pass not in FINAL_PASSES:
            raise ValueError(f"final_pass {final_pass!r:.40} is not one of {', '.join(FINAL_PASSES)}")
        self.final_pass = final_pass
        self.final_lead_s = final_lead_s
        self.command_silence_s = command_silence_s
        self.recognizer, self.gate, self.vad, self.bus = recognizer, gate, vad, bus
        self.zone = zone  # None: the single-channel daemon, whose events carry no `zone`
        self.endpoint = Endpointer(endpoint)
        self.chunk_size = tuple(chunk_size) if chunk_size else None  # None: the model's default
        self.pre_roll = collections.deque()  # recent idle audio: (samples, capture time)
        self.pre_roll_n = int(pre_roll_s * SAMPLE_RATE)
        self.captured: collections.deque = collections.deque(maxlen=2000)  # (end sample, capture time)
        self.pos = 0  # samples consumed since start
        self.stream = None
        self.audio = []  # the open utterance's audio, for an offline final pass (15 s cap: 0.96 MB)
        self.utterances = 0

    @property
    def busy(self) -> bool:
        return self.stream is not None

    def emit(self, event: str, **fields) -> None:
        if self.zone is not None:
            fields = {"zone": self.zone, **fields}
        self.bus.emit(event, **fields)

    # -- time bookkeeping ----------------------------------------------------------------------
    def _capture_time(self, sample: int) -> float | None:
        """Monotonic time at which absolute sample `sample` was captured, from the end time of the
        chunk that carried it; None for sources that are not clocked."""
        for end, t in self.captured:
            if end >= sample:
                return None if t is None else t - (end - sample) / SAMPLE_RATE
        return None

    # -- feeding -------------------------------------------------------------------------------
    def feed(self, samples: np.ndarray, t_capture: float | None) -> None:
        todo = self.take(samples, t_capture)
        if todo is not None:
            t0 = time.perf_counter()
            new = self.stream.accept(todo)
            self.heard(todo, new, time.perf_counter() - t0)

    def take(self, samples: np.ndarray, t_capture: float | None) -> np.ndarray | None:
        """Step 1 of feed(): count the chunk, run the wake gate (or the VAD) while idle. Returns the
        samples the open stream must accept now (pre-roll included when this chunk opened it), or
        None when idle; the caller then hands the stream's new token ids to heard()."""
        start = self.pos
        self.pos += len(samples)
        self.captured.append((self.pos, t_capture))
        todo = self._idle(samples, start) if self.stream is None else samples
        if todo is not None:
            self.audio.append(todo)  # what the stream accepts: the offline final pass decodes it again
        return todo

    def _idle(self, samples: np.ndarray, start: int) -> np.ndarray | None:
        if self.gate is None:
            # no wake word: the first speech the VAD hears opens the utterance
            probs = self.vad.process(samples)
            if not (len(probs) and probs.max() >= self.endpoint.config.threshold):
                self._remember(samples)
                return None
            cut = 0
        else:
            det = self.gate.process(samples)
            if det is None:
                self._remember(samples)
                return None
            # what follows the detection point in this chunk belongs to the command
            cut = min(len(samples), det.offset)
            self._remember(samples[:cut])
            self.emit("wake", wake_word=det.name, phrase=det.wake_word, probability=round(det.probability, 3),
                      audio_s=round((start + cut) / SAMPLE_RATE, 3))
        pre = np.concatenate(list(self.pre_roll)) if self.pre_roll else np.zeros(0, np.float32)
        pre = pre[len(pre) - min(len(pre), self.pre_roll_n) :]
        # with a wake word the pre-roll holds its tail: that speech is not the command (measured: a
        # detection ~90 ms after the word made the VAD end "okay nabu | pause | command" in the pause)
        self._open(start + cut - len(pre), ignore_s=len(pre) / SAMPLE_RATE if self.gate is not None else 0.0)
        return np.concatenate([pre, samples[cut:]])

    def _remember(self, samples: np.ndarray) -> None:
        if self.pre_roll_n == 0 or not len(samples):
            return
        self.pre_roll.append(samples)
        total = sum(len(s) for s in self.pre_roll)
        while self.pre_roll and total - len(self.pre_roll[0]) >= self.pre_roll_n:
            total -= len(self.pre_roll.popleft())

    def _open(self, start_sample: int, ignore_s: float = 0.0) -> None:
        self.pre_roll.clear()
        self.stream = self.recognizer.stream(self.chunk_size)
        self.utt_start = start_sample
        self.t_open = time.monotonic()
        self.t_first_partial = None
        self.last_text = ""
        self.decode_s = 0.0
        self.tried_at = None  # the speech end whose silence a command final was tried for
        self.audio = []
        self.vad.reset()
        self.endpoint.reset(ignore_s)

    def heard(self, samples: np.ndarray, new: list[int], decode_s: float) -> None:
        """Step 3 of feed(): the open stream accepted `samples` (what take() returned) and recognised
        `new` in `decode_s` seconds: publish a changed partial, run the VAD, end the utterance on an endpoint."""
        self.decoded(new, decode_s)
        reason = self.end_of(samples)
        if reason is not None:
            self.finish(reason)
        elif self.wants_command_check():
            self.command_final()

    # -- command-aware endpointing ---------------------------------------------------------------
    def wants_command_check(self) -> bool:
        """A grammar is loaded and the speaker has been quiet command_silence_s since speech last
        ended, not yet tried for this pause."""
        e = self.endpoint
        return (self.stream is not None and self.command_silence_s > 0 and self.recognizer.grammar is not None
                and e.silence_s >= self.command_silence_s and self.tried_at != e.speech_end_s)

    def offline_final(self) -> bool:
        return resolve_final_pass(self.final_pass, self.recognizer) == "offline"

    def decode_offline(self):
        """The utterance so far decoded in full context (the two-pass final; grammar and hotwords apply).
        All of it, the trailing silence the VAD waited for included: cutting it 0.15 s after the VAD's
        speech end was measured and not kept (right finals through this pipeline, whole / cut: 800
        training renders 98.2 / 98.9 %, espeak held-out 99.0 / 98.3 %, Kokoro 95.1 / 95.8 %; 0.3 s:
        espeak 99.0 %), a wash that would also risk the soft endings of real speakers' last words.
        Opened by a wake word, its start is cut to `final_lead_s` before the VAD's first speech: the
        detection opens the utterance, and whatever pause follows the wake word would come first,
        where the demo weights expect the command (its card, Known limits: after 2 s of silence,
        espeak's clean commands decode 97.8 % offline, Kokoro's 96.9 %, against 99.3 and 96.5 % with
        none; stage 6 read 94.3 and 87.8 %, the stage-5 weights 51.7 and 34.3 %; after a 2 s pause
        this start still takes DECtalk's finals from 87.3 to 90.7 %; bench/lead_noise.py,
        bench/wake_pause.py).
        Opened by the VAD, the utterance already starts its pre-roll before the speech."""
        audio = np.concatenate(self.audio).astype(np.float32, copy=False)
        start = self.endpoint.speech_start_s
        if self.gate is not None and self.final_lead_s is not None and start is not None:
            audio = audio[max(0, int(round((start - self.final_lead_s) * SAMPLE_RATE))):]
        return self.recognizer.transcribe(audio)

    def command_final(self) -> bool:
        """Finish a copy of the stream now (the CIF tail flushed as at the end), or with a two-pass
        final decode the audio so far: a complete, confident grammar match is the final, published
        at once; anything else leaves the stream listening until the VAD's trailing silence (this
        costs one chunk's decode, or one offline decode, once per pause)."""
        self.tried_at = self.endpoint.speech_end_s
        t0 = time.perf_counter()
        if self.offline_final():
            trial, result = self.stream, self.decode_offline()
        else:
            trial = self.stream.fork()
            trial.finish()
            result = trial.result()
        self.decode_s += time.perf_counter() - t0
        m = result.match
        if m is None or not m.complete or m.rejected:
            return False
        self.stream = trial
        self.finish("command", tail_s=time.perf_counter() - t0, result=result)
        return True

    def decoded(self, new: list[int], decode_s: float) -> None:
        """The open stream recognised `new` in `decode_s` seconds: a changed text is a `partial`."""
        self.decode_s += decode_s
        if new:
            text = self.stream.result().text
            if text != self.last_text:
                self.last_text = text
                if self.t_first_partial is None:
                    self.t_first_partial = time.monotonic()
                self.emit("partial", text=text)

    def end_of(self, samples: np.ndarray) -> str | None:
        """The VAD on the utterance's audio: why it ended ('silence', ...) once it has, else None."""
        return self.endpoint.update(self.vad.process(samples))

    def finish(self, reason: str, tail_s: float | None = None, result=None) -> None:
        """End the open utterance (endpoint, end of input, device lost, shutdown): flush and publish.
        A command final passes the result its finished copy gave (and what that cost)."""
        stream, self.stream = self.stream, None
        if stream is None:
            return
        if result is None:
            t0 = time.perf_counter()
            if self.endpoint.speech_end_s is None:
                # the VAD heard no speech (a false wake, then cabin noise): decoding noise makes words
                # up, "driver", "next", "关闭" in 6 of 6 such tries with either final; say nothing instead
                rec = self.recognizer
                result = rec.understand(rec.ids_to_result([], log_probs=rec.stack_rows([])))
            elif self.offline_final():
                result = self.decode_offline()  # the stream's own flush is not needed: it would be discarded
            else:
                stream.finish()
                result = stream.result()
            tail_s = time.perf_counter() - t0
            self.decode_s += tail_s
        t_final = time.monotonic()
        audio_s = (self.pos - self.utt_start) / SAMPLE_RATE
        latency = {"decode_tail_ms": round(tail_s * 1000, 2)}  # the flush, or the offline pass
        if self.t_first_partial is not None:
            latency["wake_to_first_partial_ms"] = round((self.t_first_partial - self.t_open) * 1000, 2)
        speech_end = self.endpoint.speech_end_s
        eos = None if speech_end is None else self._capture_time(self.utt_start + int(speech_end * SAMPLE_RATE))
        if eos is not None:
            latency["end_of_speech_to_final_ms"] = round((t_final - eos) * 1000, 2)
        self.utterances += 1
        fields = dict(text=result.text, tokens=result.tokens, reason=reason, audio_s=round(audio_s, 3),
                      rtf=round(self.decode_s / audio_s, 4) if audio_s else 0.0, latency=latency)
        u = result.understanding
        if u is not None and u["rejected"]:  # heard, but not a command: the text says what was heard
            self.emit("rejected", confidence=u["confidence"], closest_intent=u["intent"], **fields)
        elif u is not None:
            self.emit("final", intent=u["intent"], slots=u["slots"], confidence=u["confidence"],
                      command_text=u["text"], **fields)
        else:
            self.emit("final", **fields)
        self._back_to_idle()

    def abort(self) -> None:
        """Drop a broken utterance without publishing (the error event already said why)."""
        self.stream = None
        self._back_to_idle()

    def _back_to_idle(self) -> None:
        self.audio = []
        if self.gate is not None:
            self.gate.reset()
        self.vad.reset()
