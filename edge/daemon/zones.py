"""Seat zones: one pipeline per input channel (driver, passenger, ...), one shared recognizer.

A car's microphone array gives one beamformed channel per seat zone. Each zone has its own wake
gate, VAD, endpointer and stream (a wake in one zone never opens another) and every event it
emits carries `zone`. The zones' open streams are fed through `Recognizer.accept_batch`: the
encoder windows and decoder steps of all zones that complete a chunk in the same call run as one
batched backend call, each stream keeping its own caches, and each zone gets exactly the token
ids it would get decoded alone.

Dynamic batching: zones open at different moments, so their 600 ms chunks complete at different
20 ms capture blocks and would never meet in one call. A zone whose chunk is complete is
therefore held until every listening zone has one too, or for at most `batch_wait_s` (then it
runs with whoever is ready). A zone only ever waits for chunks, never for its endpoint: the VAD
sees every block as it comes, and an endpoint (or end of input) flushes what is held first. The
held audio reaches the stream unchanged and in order, so the final text and token ids are what
the zone gives alone; only partials may come later (up to batch_wait_s) and, merged, fewer.

Like Pipeline, a pure state machine with the same face to the daemon (feed, finish, abort, busy,
utterances, pos, recognizer, chunk_size); it adds the per-zone fault isolation the daemon gives a
single pipeline: a zone that raises is reported (an `error` event with its zone) and dropped, the
other zones go on (a failed batched call drops the zones in it: which one broke it is unknown).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from edge.asr.audio import SAMPLE_RATE
from edge.daemon.pipeline import Pipeline

log = logging.getLogger("paraedge.zones")


@dataclass
class _Held:
    """Audio a zone's stream has not been given yet, and how much it has been given."""

    stream: object = None  # the stream these counts belong to (a new utterance starts from zero)
    pushed: int = 0
    parts: list = field(default_factory=list)
    n: int = 0
    ready_at: int | None = None  # pos when a full chunk first waited here

    def chunk_complete(self) -> bool:
        # the stream runs a chunk each chunk_samples it is given: what it holds is pushed % chunk
        s = self.stream
        return s is not None and self.n >= s.chunk_samples - self.pushed % s.chunk_samples


class Zones:
    def __init__(self, pipelines: list[Pipeline], bus, batch_wait_s: float = 0.3):
        names = [p.zone for p in pipelines]
        if not pipelines or None in names or len(set(names)) != len(names):
            raise ValueError(f"zones need distinct names, got {names}")
        self.pipelines, self.bus = pipelines, bus
        self.names = names
        self.wait_n = int(batch_wait_s * SAMPLE_RATE)
        self.held = [_Held() for _ in pipelines]
        self.steps = 0  # releases that ran at least one chunk
        self.batched = 0  # ... of them with chunks of more than one zone

    # -- the daemon's view: the same as a single Pipeline's ------------------------------------
    @property
    def busy(self) -> bool:
        return any(p.busy for p in self.pipelines)

    @property
    def utterances(self) -> int:
        return sum(p.utterances for p in self.pipelines)

    @property
    def pos(self) -> int:
        return self.pipelines[0].pos  # every zone sees every chunk

    @property
    def gate(self):
        return self.pipelines[0].gate  # the same models in every zone: describes them all

    @property
    def recognizer(self):
        return self.pipelines[0].recognizer

    @recognizer.setter
    def recognizer(self, rec) -> None:  # a reload swaps the model for every zone at once
        for p in self.pipelines:
            p.recognizer = rec

    @property
    def chunk_size(self):
        return self.pipelines[0].chunk_size

    @chunk_size.setter
    def chunk_size(self, value) -> None:
        for p in self.pipelines:
            p.chunk_size = value

    def status(self) -> dict:
        return {p.zone: {"busy": p.busy, "utterances": p.utterances} for p in self.pipelines}

    # -- feeding ---------------------------------------------------------------------------------
    def feed(self, samples: np.ndarray, t_capture: float | None) -> None:
        """samples [n, zones]: channel i is zone i's audio."""
        if samples.ndim != 2 or samples.shape[1] != len(self.pipelines):
            raise ValueError(f"a chunk shaped {samples.shape} for {len(self.pipelines)} zones")
        ended = []
        for i, (p, h) in enumerate(zip(self.pipelines, self.held)):
            try:
                x = p.take(np.ascontiguousarray(samples[:, i]), t_capture)
                if x is None:
                    continue
                if h.stream is not p.stream:  # this chunk opened a new utterance
                    self.held[i] = h = _Held(p.stream)
                h.parts.append(x)
                h.n += len(x)
                reason = p.end_of(x)  # the VAD never waits for the batch
                if reason is not None:
                    ended.append((p, reason))
            except Exception as exc:
                self._fail(i, exc)
        listening = [h for p, h in zip(self.pipelines, self.held) if p.busy]
        ready = [h for h in listening if h.chunk_complete()]
        for h in ready:
            if h.ready_at is None:
                h.ready_at = self.pos
        waited = any(self.pos - h.ready_at >= self.wait_n for h in ready)
        if ended or (ready and (len(ready) == len(listening) or waited)):
            self._release()
        for p, reason in ended:
            if p.busy:  # not dropped by a failure in the release
                self._finish(p, reason)
        # a complete command ends on a short pause: its stream first takes what is held for it
        for i, p in enumerate(self.pipelines):
            if p.wants_command_check():
                try:
                    self._release()
                    p.command_final()
                except Exception as exc:
                    self._fail(i, exc)

    def _release(self) -> None:
        """Give every zone's stream what it holds, in one accept_batch: the chunks complete now run batched."""
        todo = [(i, h) for i, h in enumerate(self.held) if h.parts and self.pipelines[i].busy]
        if not todo:
            return
        chunks = [np.concatenate(h.parts) for _, h in todo]
        running = sum(h.chunk_complete() for _, h in todo)
        for _, h in todo:
            h.pushed += h.n
            h.parts, h.n, h.ready_at = [], 0, None
        t0 = time.perf_counter()
        try:
            news = self.recognizer.accept_batch([self.pipelines[i].stream for i, _ in todo], chunks)
        except Exception as exc:
            for i, _ in todo:
                self._fail(i, exc)
            return
        # each zone in the call waited for all of it: that is its decode time (rtf)
        dt = time.perf_counter() - t0
        self.steps += running > 0
        self.batched += running > 1
        for (i, _), new in zip(todo, news):
            try:
                self.pipelines[i].decoded(new, dt)
            except Exception as exc:
                self._fail(i, exc)

    def _finish(self, p: Pipeline, reason: str) -> None:
        try:
            p.finish(reason)
        except Exception as exc:  # one zone's flush failing must not lose the others' finals
            self._fail(self.pipelines.index(p), exc)

    def _fail(self, i: int, exc: Exception) -> None:
        p = self.pipelines[i]
        log.error("zone %s failed on a chunk", p.zone, exc_info=exc)
        p.emit("error", what="pipeline", message=f"{type(exc).__name__}: {exc}; utterance dropped")
        p.abort()
        self.held[i] = _Held()

    def finish(self, reason: str) -> None:
        """End every zone's open utterance (end of input, device lost, shutdown), held audio included."""
        self._release()
        for p in self.pipelines:
            if p.busy:
                self._finish(p, reason)

    def abort(self) -> None:
        for i, p in enumerate(self.pipelines):
            p.abort()
            self.held[i] = _Held()
