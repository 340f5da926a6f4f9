"""`paraedge run`: the in-car voice daemon's life: start, listen, survive, reload, stop.

The main loop reads chunks from the source and hands them to the Pipeline. Around it:
- a vanished microphone: the open utterance is published with what was heard, a `device`
  event says so, and the source is reopened with capped exponential backoff;
- a bad chunk (NaN/inf, a backend exception): an `error` event, the chunk or utterance is
  dropped, the loop goes on. Nothing one chunk does may end the daemon;
- SIGHUP or `reload` on the socket: the configured model is loaded, verified and warmed up on
  a helper thread while the old one keeps serving; the swap happens between utterances. A model
  that fails leaves the old one in place and an `error` event says why;
- SIGTERM/SIGINT: the open utterance is finished and published, then everything closes (exit 0).
- seat zones (`[zones] names`, `--zones`): one pipeline per input channel sharing one recognizer
  (edge/daemon/zones.py); a reload waits until no zone is busy and swaps the model for all;
  shutdown and a lost device finish every zone's open utterance; events carry `zone`.
Signal handlers go in before the model loads (`run_daemon`): a SIGHUP during start-up reloads
once ready, a SIGTERM during start-up stops cleanly once ready; neither kills it silently.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading

import numpy as np

from edge.daemon.capture import DeviceLost, EndOfInput, open_source
from edge.daemon.config import DaemonConfig
from edge.errors import ParaEdgeError
from edge.platform import release_freed_memory
from edge.daemon.events import EventBus
from edge.daemon.pipeline import Pipeline
from edge.daemon.zones import Zones
from edge.daemon.vad import EndpointConfig, SileroVad
from edge.asr.audio import SAMPLE_RATE

log = logging.getLogger("paraedge.daemon")


def load_recognizer(cfg: DaemonConfig):
    """Load, verify and warm up the configured model; raises on anything that would fail later."""
    from edge.asr.recognizer import Recognizer

    m = cfg.model
    rec = Recognizer(m.dir, backend=m.backend, threads=m.threads, int8=m.int8, grammar=cfg.grammar.file or None,
                     hotwords=m.hotwords or None)
    # warm-up doubles as verification: one streamed second must run and give finite outputs
    noise = (np.random.default_rng(0).standard_normal(SAMPLE_RATE) * 0.01).astype(np.float32)
    stream = rec.stream(tuple(m.chunk_size) or None)
    stream.accept(noise)
    stream.finish()
    return rec


def pre_roll_s(cfg: DaemonConfig) -> float:
    """Audio an utterance starts with from before its opening: after a wake word, a short tail
    (its own speech is not the command); opened by the VAD, enough for silero's lag on soft onsets."""
    return cfg.wake.pre_roll_s if cfg.wake.enabled else cfg.vad.pre_roll_s


class Daemon:
    def __init__(self, cfg: DaemonConfig, source=None, bus: EventBus | None = None, duration_s: float | None = None,
                 signals: bool = False):
        """signals: install SIGTERM/SIGINT/SIGHUP handlers (main thread only) before anything slow happens."""
        self.cfg = cfg
        self.stopping = threading.Event()
        self._reload_requested = threading.Event()
        if signals:  # first: a signal during the seconds the model takes to load must not kill the process
            self.install_signal_handlers()
        self.bus = bus or EventBus(stdout=cfg.events.stdout, socket_path=cfg.events.socket or None)
        self._source = source  # injected (tests) or opened from cfg.audio
        self.duration_s = duration_s  # stop after this much audio (benches, tests on endless devices)
        self._reloaded: queue.Queue = queue.Queue()
        self._reloading = False
        self._reload_thread: threading.Thread | None = None
        self.zones = list(cfg.zones.names)
        v = cfg.vad
        endpoint = EndpointConfig(v.threshold, v.neg_threshold, v.trailing_silence_s, v.no_speech_timeout_s, v.max_utterance_s)
        try:
            self.recognizer = load_recognizer(cfg)

            def pipeline(zone=None):  # each zone its own gate and VAD: their state is per channel
                return Pipeline(self.recognizer, self._make_gate(cfg), SileroVad(cfg.vad.model or None), endpoint,
                                self.bus, cfg.model.chunk_size, pre_roll_s(cfg), zone=zone,
                                command_silence_s=cfg.grammar.command_silence_s, final_pass=cfg.model.final_pass,
                                final_lead_s=cfg.vad.pre_roll_s)

            self.pipeline = (Zones([pipeline(z) for z in self.zones], self.bus, cfg.zones.batch_wait_ms / 1000.0)
                             if self.zones else pipeline())
        except ParaEdgeError:
            self.bus.close()
            raise

    @staticmethod
    def _make_gate(cfg: DaemonConfig):
        if not cfg.wake.enabled:
            return None
        from edge.daemon.wake import WakeGate

        return WakeGate(cfg.wake.models, cfg.wake.cutoff or None, cfg.wake.window or None,
                        refractory_s=cfg.wake.refractory_s, verify=cfg.wake.verify)

    # -- control ---------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        from edge.daemon import EARLY_SIGNALS

        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        signal.signal(signal.SIGHUP, lambda *_: self._reload_requested.set())
        for sig in EARLY_SIGNALS:  # what came in before these handlers (see catch_early_signals)
            (self._reload_requested if sig == signal.SIGHUP else self.stopping).set()
        EARLY_SIGNALS.clear()

    def request_reload(self) -> None:
        self._reload_requested.set()

    def _start_reload(self) -> None:
        self._reload_requested.clear()
        if self._reloading:
            return
        self._reloading = True

        def work():
            try:
                cfg = DaemonConfig.load(self.cfg.path) if self.cfg.path else self.cfg
                self._reloaded.put((cfg, load_recognizer(cfg), None))
            except Exception as exc:  # any failure must leave the serving model untouched
                self._reloaded.put((None, None, exc))

        self._reload_thread = threading.Thread(target=work, name="model-reload", daemon=True)
        self._reload_thread.start()

    def _finish_reload(self) -> None:
        """Swap in a reloaded model, between utterances only."""
        if self.pipeline.busy or self._reloaded.empty():
            return
        cfg, rec, exc = self._reloaded.get()
        self._reloading = False
        if exc is not None:
            self.bus.emit("error", what="reload", message=f"model reload failed, still serving {self.cfg.model.dir}: {exc}")
            return
        self.cfg.model = cfg.model
        self.recognizer = self.pipeline.recognizer = rec
        self.pipeline.chunk_size = tuple(cfg.model.chunk_size) or None
        del rec
        release_freed_memory()  # the old model's arenas back to the OS: resident size stays flat over reloads
        self.bus.emit("model_reloaded", model=cfg.model.dir, backend=self.recognizer.backend.describe())

    def _commands(self) -> None:
        while (cmd := self.bus.take_command()) is not None:
            if cmd.text == "reload":
                self.request_reload()  # its outcome (model_reloaded or an error) concerns every client
            elif cmd.text == "status":
                extra = {"zones": self.pipeline.status()} if self.zones else {}
                self.bus.reply(cmd, "status", model=self.cfg.model.dir, busy=self.pipeline.busy,
                               utterances=self.pipeline.utterances, overruns=getattr(self._source, "overruns", 0), **extra)
            else:
                self.bus.reply(cmd, "error", what="command", message=f"unknown command {_clip(cmd.text)!r} (reload, status)")

    # -- source ----------------------------------------------------------------------------------
    def _open_source(self):
        a = self.cfg.audio
        return open_source(a.input or None, realtime=a.realtime, device=a.device or None,
                           samplerate=a.samplerate or None, channels=a.channels or None,
                           block_s=a.block_ms / 1000.0, buffer_s=a.buffer_s, zones=self.zones or None)

    def _reconnect(self, reason: str) -> bool:
        """Reopen the microphone with capped exponential backoff; False if asked to stop meanwhile."""
        self.bus.emit("device", state="lost", source=getattr(self._source, "name", "?"), message=reason)
        try:
            self._source.close()
        except Exception:
            pass
        delay = 0.25
        while not self.stopping.is_set():
            try:
                self._source.open()
                self.bus.emit("device", state="open", source=self._source.name)
                return True
            except ParaEdgeError as exc:
                log.info("reconnect failed (%s); retrying in %.1f s", exc, delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, self.cfg.audio.retry_max_s)
        return False

    # -- main loop -------------------------------------------------------------------------------
    def run(self) -> int:
        if self._source is None:
            try:
                self._source = self._open_source()
            except ParaEdgeError:  # e.g. a file whose channels do not match the zones: one line, exit 2
                self.bus.close()
                raise
        src = self._source
        gate = self.pipeline.gate
        extra = {"zones": self.zones} if self.zones else {}
        self.bus.emit("ready", model=self.cfg.model.dir, backend=self.recognizer.backend.describe(),
                      source=src.name, wake=gate.describe() if gate else "off", **extra)
        limit = int(self.duration_s * SAMPLE_RATE) if self.duration_s else None
        try:
            while not self.stopping.is_set():
                if self._reload_requested.is_set():
                    self._start_reload()
                self._finish_reload()
                self._commands()
                if limit is not None and self.pipeline.pos >= limit:
                    break
                try:
                    chunk = src.read(0.1)
                except EndOfInput:
                    break
                except DeviceLost as exc:
                    self.pipeline.finish("device_lost")
                    if not self._reconnect(str(exc)):
                        break
                    continue
                if chunk is None:
                    continue
                self._feed(chunk)
            self.pipeline.finish("end_of_input" if not self.stopping.is_set() else "shutdown")
        finally:
            try:
                src.close()
            except Exception:
                pass
            if self._reload_thread is not None:
                # a model still loading when the input ends: the process must not exit under onnxruntime's
                # threads (measured: SIGABRT at exit when a start-up SIGHUP's reload outlived a short input)
                self._reload_thread.join(timeout=60)
            self.bus.emit("stopped", utterances=self.pipeline.utterances, overruns=getattr(src, "overruns", 0))
            self.bus.close()
        return 0

    def _feed(self, chunk) -> None:
        x = np.asarray(chunk.samples, dtype=np.float32)
        if self.zones and x.ndim == 1 and len(self.zones) == 1:
            x = x[:, None]
        if self.zones and (x.ndim != 2 or x.shape[1] != len(self.zones)):
            self.bus.emit("error", what="audio", message=f"a chunk shaped {x.shape} for {len(self.zones)} zones; dropped")
            return
        bad = ~np.isfinite(x)
        if bad.any():
            # a glitching driver or DSP: report, zero those samples so timing stays aligned, go on
            for zone, n in (zip(self.zones, bad.sum(axis=0)) if self.zones else [(None, bad.sum())]):
                if n:  # with zones: only the zone whose channel glitched hears of it
                    where = {"zone": zone} if zone is not None else {}
                    self.bus.emit("error", **where, what="audio",
                                  message=f"{int(n)} non-finite samples in a chunk, replaced by silence")
            x = np.where(bad, np.float32(0), x)
        try:
            self.pipeline.feed(x, chunk.t)  # with zones: each zone's faults are reported and isolated in Zones
        except Exception as exc:  # never die on one chunk: drop the utterance, keep listening
            log.exception("pipeline failed on a chunk")
            self.bus.emit("error", what="pipeline", message=f"{type(exc).__name__}: {exc}; utterance dropped")
            self.pipeline.abort()


def _clip(text: str, n: int = 60) -> str:
    """What a client sent, short enough to report: an error event must not echo a huge line to everyone."""
    return text if len(text) <= n else f"{text[:n]}... ({len(text)} chars)"


def run_daemon(cfg: DaemonConfig, duration_s: float | None = None) -> int:
    return Daemon(cfg, duration_s=duration_s, signals=True).run()
