"""Paraformer decoding, written once for every backend: offline and streaming.

Offline: features -> scale by sqrt(d_model) + sinusoidal positions -> encoder -> CIF (tail alpha,
floor of the alpha sum) -> parallel decoder -> argmax, blank/sos/eos dropped (FunASR inference()).

Streaming mirrors FunASR's ParaformerStreaming with `chunk_size=[left, chunk, right]` in LFR
frames (default: the model's config.yaml `chunk_size`, else FunASR's [0, 10, 5]: 600 ms chunks,
300 ms look-ahead, no left context): each 600 ms of audio runs the
streaming frontend; its frames are position-encoded with a running offset and prefixed with the
previous `left + right` frames; the encoder runs on that window; alphas of the left context and
the look-ahead are zeroed; CIF carries its remainder; the decoder carries FSMN caches. The last
chunk keeps its look-ahead alphas and adds the tail alpha, so the last token is always flushed.
"""

from __future__ import annotations

import contextlib
import numbers
import os
import time
from dataclasses import dataclass, field

import numpy as np

from edge.backends import BACKENDS, ops  # noqa: F401  (BACKENDS: make_backend's names, re-exported)
from edge.asr.audio import SAMPLE_RATE, WavSamples, as_samples, check_samples
from edge.asr.cif import CifConfig
from edge.errors import ModelError, ParaEdgeError
from edge.asr.modeldir import ModelDir, check_chunk_size
from edge.asr.text import tokens_to_text
from edge.platform import check_threads

F32 = np.float32
SAMPLES_PER_LFR_FRAME = 960  # 6 fbank frames x 10 ms at 16 kHz


@dataclass
class Result:
    token_ids: list[int]
    tokens: list[str]
    text: str
    timings: dict = field(default_factory=dict)
    # the decoder's log-posteriors of every CIF position, blank/sos/eos ones included [N, V]: what a
    # grammar is matched against
    log_probs: np.ndarray | None = field(default=None, repr=False)
    # with a grammar (Recognizer(grammar=...)): intent, slots, confidence, rejected, and the grammar's text
    understanding: dict | None = None
    match: object = field(default=None, repr=False)  # the edge.grammar Match behind `understanding`

    def as_dict(self) -> dict:
        out = {"text": self.text, "tokens": self.tokens, "token_ids": self.token_ids, "timings": self.timings}
        if self.understanding is not None:
            out.update(self.understanding, text=self.text, command_text=self.understanding.get("text"))
        return out




def make_backend(name: str, model_dir: ModelDir, threads: int | None = None, int8: bool = False,
                 manifest: dict | None = None):
    if name == "auto":  # the NEON kernels where they are native (ARM, extension built), else numpy
        from edge.backends import kernels

        name = "neon" if kernels.available() and kernels.is_arm() else "ref"
    if name in ("ref", "reference", "numpy"):
        from edge.backends.reference import ReferenceBackend

        return ReferenceBackend(model_dir, threads)
    if name in ("onnxruntime", "ort", "onnx"):
        from edge.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model_dir, threads, int8=int8)
    if name == "tvm":  # model_dir is a bundle from `paraedge compile`
        from edge.backends.tvm import TvmBackend

        return TvmBackend(model_dir, threads, int8=int8, manifest=manifest)
    if name == "neon":  # INT8 + NEON C kernels (edge/backends/kernels.py); BackendUnavailable when not built
        from edge.backends.neon import NeonBackend

        return NeonBackend(model_dir, threads)
    raise ParaEdgeError(f"unknown backend '{name}' (choose ref, onnxruntime, tvm or neon)")


# Offline attention is quadratic in length: decoded whole, a 10-minute WAV took 5.0 GB (reference)
# and 5.7 GB (onnxruntime INT8). Audio longer than MAX_SEGMENT_S is decoded in segments cut in its
# pauses, as FunASR's own pipelines cut long audio with a VAD (whose segments it caps at 60 s).
# Commands (<= MAX_SEGMENT_S) are never cut, so they decode exactly as FunASR decodes them.
MAX_SEGMENT_S = 30.0
PAUSE_S = 0.3  # quiet this long between words is a cut point
CUT_SEARCH_S, CUT_WINDOW_S = 5.0, 0.1
_HOP = SAMPLE_RATE // 100  # 10 ms frames for the pause search


def _frame_db(samples, start: int, end: int) -> np.ndarray:
    """Level of each 10 ms frame of samples[start:end] in dB, read in blocks (bounded memory)."""
    out = []
    block = _HOP * 6000
    for i in range(start, end, block):
        x = np.asarray(samples[i : min(i + block, end)], np.float64)
        x = x[: len(x) // _HOP * _HOP].reshape(-1, _HOP)
        out.append(10 * np.log10(np.mean(x * x, axis=1) + 1e-20))
    return np.concatenate(out) if out else np.zeros(0)


def segment_bounds(samples, max_s: float = MAX_SEGMENT_S) -> list[tuple[int, int]]:
    """[(start, end)] sample ranges covering the samples, none longer than max_s. Audio up to max_s
    is one segment. Longer audio is cut in the middle of every pause of PAUSE_S or more (frames
    10 dB above the recording's quietest tenth, and below -30 dBFS); a stretch still too long is
    cut at the end of the quietest 100 ms in its last 5 s, so no cut lands inside a word."""
    n, limit = len(samples), int(max_s * SAMPLE_RATE)
    if n <= limit:
        return [(0, n)]
    db = _frame_db(samples, 0, n)
    quiet = db < min(-30.0, float(np.percentile(db, 10)) + 10.0)
    cuts, run = [], 0
    for i, q in enumerate(np.append(quiet, False)):
        if q:
            run += 1
            continue
        if run >= PAUSE_S * 100:
            cuts.append((i - run // 2) * _HOP)
        run = 0
    bounds, start = [], 0
    for end in [c for c in cuts if 0 < c < n] + [n]:
        while end - start > limit:  # no pause long enough: the quietest 100 ms near the limit
            lo = start + limit - int(CUT_SEARCH_S * SAMPLE_RATE)
            level = _frame_db(samples, lo, start + limit)
            win = int(CUT_WINDOW_S * 100)
            cut = lo + (int(np.argmin(np.convolve(10 ** (level / 10), np.ones(win), "valid"))) + win) * _HOP
            bounds.append((start, cut))
            start = cut
        if end > start:
            bounds.append((start, end))
            start = end
    return bounds


def _no_clock(stage: str):
    return _NULL


_NULL = contextlib.nullcontext()


class Recognizer:
    """A model directory + a backend. `transcribe()` decodes offline; `stream()` opens a stream."""

    # clock(stage) -> a context manager around each stage a Stream runs (frontend, encoder, cif,
    # decoder): a no-op here; `paraedge profile` sets its stage timer on the instance, so it times
    # the real calls through the real seam and patches nothing
    clock = staticmethod(_no_clock)

    def __init__(self, model, backend: str = "ref", threads: int | None = None, int8: bool = False, grammar=None,
                 hotwords=None):
        """grammar: a grammar YAML path (or an edge.grammar.Grammar): offline results and streaming
        finals then carry intent, slots, confidence and rejected (partials stay free text).
        hotwords: a hotword list file (edge.asr.hotwords) boosting phrases in free decoding."""
        threads = check_threads(threads)
        if not isinstance(int8, bool):
            raise ParaEdgeError(f"int8 must be True or False, got {int8!r:.40}")
        if not isinstance(model, (ModelDir, str, os.PathLike)):
            raise ModelError(f"model must be a model directory path, got {type(model).__name__}")
        manifest = None
        if not isinstance(model, ModelDir) and os.path.isfile(os.path.join(str(model), "manifest.json")):
            from edge.backends.tvm import read_manifest

            if backend != "tvm":
                raise ParaEdgeError(f"{model}: a TVM bundle (manifest.json); run it with backend tvm "
                                    "(--backend tvm, or model.backend = \"tvm\" in edge.toml)")
            manifest = read_manifest(model)  # every file's digest checked before config.yaml or tokens are parsed
        self.model = model if isinstance(model, ModelDir) else ModelDir(model)
        self.config = self.model.config
        self.backend = make_backend(backend, self.model, threads, int8, manifest)
        self.frontend = self.model.frontend
        self.cif = CifConfig.from_conf(self.config.predictor_conf)
        self.scale = F32(self.config.d_model**0.5)
        self._positions = np.zeros((0, 0), F32)  # rows 1.. of the position encoding, grown on demand
        self.hotwords = None
        if hotwords is not None:
            from edge.asr.hotwords import Hotwords

            self.hotwords = Hotwords.load(hotwords, self.model.tokens, self._dropped())
        self.grammar = None
        if grammar is not None:
            from edge.grammar import Grammar

            # every word checked against this model's tokens at load: one it cannot emit is an error now
            self.grammar = grammar if isinstance(grammar, Grammar) else Grammar.load(grammar, self.model.tokens)
            if self.grammar.tokens != list(self.model.tokens):  # every transcribe failed on its shape
                raise ParaEdgeError(f"grammar {self.grammar.path} was loaded for another model's tokens; load it "
                                    f"with this model's: Grammar.load(path, ModelDir({self.model.path!r}).tokens)")

    def understand(self, result: Result) -> Result:
        """The grammar's reading of a whole utterance (no-op without a grammar)."""
        if self.grammar is not None and result.log_probs is not None:
            result.match = self.grammar.match(result.log_probs)
            result.understanding = result.match.as_dict()
        return result

    # -- shared pieces ------------------------------------------------------------------------
    def ids_to_result(self, ids: list[int], timings: dict | None = None, log_probs: np.ndarray | None = None) -> Result:
        tokens = [self.model.tokens[i] if 0 <= i < len(self.model.tokens) else "<unk>" for i in ids]
        return Result(ids, tokens, tokens_to_text(tokens), timings or {}, log_probs)

    def stack_rows(self, rows: list) -> np.ndarray:
        """Log-posterior rows of several decoder calls (segments, streaming steps) as one [N, V]."""
        return np.concatenate(rows) if rows else np.zeros((0, self.config.vocab_size), F32)

    def _dropped(self) -> set[int]:
        return {self.config.blank_id, self.config.sos, self.config.eos}

    def pick_tokens(self, log_probs: np.ndarray, count: int) -> list[int]:
        """Greedy pick per CIF token, dropping blank/sos/eos as FunASR does (hotwords boosted in)."""
        if self.hotwords is not None:
            return self.hotwords.pick(log_probs[:count])
        drop = self._dropped()
        return [int(i) for i in log_probs[:count].argmax(axis=-1) if int(i) not in drop]

    POSITION_ROWS = 1024  # position encodings kept (61 s of frames; 560 features: 2.3 MB at most)

    def positions(self, n: int, depth: int, start: int = 0) -> np.ndarray:
        """ops.sinusoidal_position_encoding(n, depth, start), rows sliced from a table computed
        once (each row depends on its position alone, so the slice is the same array bit for bit).
        Computing it per call was 0.24 of the A76 anchor's 30.9 M instructions per audio second
        (numpy's sin/cos over 167 x 560 values for 10 s); past POSITION_ROWS it is computed."""
        end = start + n
        if end > self.POSITION_ROWS:
            return ops.sinusoidal_position_encoding(n, depth, start)
        if end > self._positions.shape[0] or self._positions.shape[1] != depth:
            rows = min(self.POSITION_ROWS, max(end, 2 * self._positions.shape[0]))
            self._positions = ops.sinusoidal_position_encoding(rows, depth)
        return self._positions[start:end]

    def prepare(self, feats: np.ndarray, start: int = 0) -> np.ndarray:
        """Encoder input: features x sqrt(d_model) + positions start+1.. (FunASR's embed)."""
        pe = self.positions(feats.shape[0], feats.shape[1], start)
        return (feats.astype(F32) * self.scale + pe).astype(F32)

    # -- offline -------------------------------------------------------------------------------
    def decode_features(self, feats: np.ndarray) -> tuple[list[int], np.ndarray]:
        """CMVN'd LFR features [T, D] -> (token ids, log-probs [N, V])."""
        if feats.shape[0] == 0:
            return [], np.zeros((0, self.config.vocab_size), F32)
        if self.backend.offline is not None:
            log_probs, count = self.backend.offline(feats)
        else:
            enc, alphas = self.backend.encode(self.prepare(feats))
            embeds = self.backend.cif_offline(enc, alphas, self.cif)
            count = embeds.shape[0]
            if count < 1:
                return [], np.zeros((0, self.config.vocab_size), F32)
            log_probs, _ = self.backend.decode(enc, embeds)
        return self.pick_tokens(log_probs, count), log_probs[:count]

    def transcribe(self, samples: np.ndarray) -> Result:
        """16 kHz mono float samples (an array, or edge.asr.audio.WavSamples) -> Result (text, tokens,
        per-stage timings). Audio longer than MAX_SEGMENT_S is decoded segment by segment (see
        segment_bounds), in bounded memory; each segment is checked as it is read."""
        what = getattr(samples, "name", "audio")
        if not isinstance(samples, WavSamples):
            samples = as_samples(samples, what)
        if len(samples) == 0:
            check_samples(np.zeros(0, F32), what)
        ids, rows, frontend_s, model_s = [], [], 0.0, 0.0
        bounds = segment_bounds(samples)
        for a, b in bounds:
            t0 = time.perf_counter()
            feats = self.frontend(check_samples(np.asarray(samples[a:b], F32), what))
            t1 = time.perf_counter()
            seg_ids, log_probs = self.decode_features(feats)
            ids += seg_ids
            rows.append(log_probs)
            frontend_s, model_s = frontend_s + t1 - t0, model_s + time.perf_counter() - t1
        audio_s = len(samples) / SAMPLE_RATE
        total = frontend_s + model_s
        timings = {"frontend_s": frontend_s, "model_s": model_s, "total_s": total, "audio_s": audio_s,
                   "rtf": total / audio_s if audio_s else 0.0, "segments": len(bounds)}
        return self.understand(self.ids_to_result(ids, timings, self.stack_rows(rows)))

    def transcribe_streaming(self, samples: np.ndarray, hop: int = 1600, chunk_size=None) -> Result:
        """Decode a whole clip the way a microphone feeds it (`hop` samples at a time, 100 ms by
        default); `timings["partials"]` lists the text after every hop that recognised something."""
        samples = check_samples(as_samples(samples))
        if isinstance(hop, bool) or not isinstance(hop, numbers.Integral) or hop < 1:
            raise ParaEdgeError(f"hop must be a whole number of samples >= 1, got {hop!r:.40}")
        t0 = time.perf_counter()
        stream, partials = self.stream(chunk_size), []
        for i in range(0, len(samples), hop):
            if stream.accept(samples[i : i + hop]):
                partials.append(stream.result().text)
        stream.finish()
        elapsed = time.perf_counter() - t0
        audio_s = len(samples) / SAMPLE_RATE
        result = stream.result()
        result.timings = {"total_s": elapsed, "audio_s": audio_s, "rtf": elapsed / audio_s,
                          "chunks": stream.chunks, "partials": partials}
        return result

    def stream(self, chunk_size=None) -> "Stream":
        """A new streaming utterance; `chunk_size` None means the model's default."""
        if not self.config.streaming:
            raise ParaEdgeError(
                f"{self.model.path} is an offline model ({self.config.model}); streaming needs a ParaformerStreaming model"
            )
        return Stream(self, chunk_size)

    def accept_batch(self, streams: list, chunks: list) -> list[list[int]]:
        """Feed each stream its audio and run every full chunk of all of them, one backend call per
        step for the streams that are ready together (seat zones speaking at once). Returns each
        stream's new token ids: what `stream.accept(chunk)` would return for it alone."""
        if len(streams) != len(chunks):
            raise ParaEdgeError(f"accept_batch: {len(streams)} streams but {len(chunks)} audio chunks")
        if len({id(s) for s in streams}) != len(streams):
            raise ParaEdgeError("accept_batch: a stream is listed twice")
        if any(not isinstance(s, Stream) for s in streams):
            raise ParaEdgeError("accept_batch: streams must come from Recognizer.stream()")
        if any(s.rec is not self for s in streams):
            raise ParaEdgeError("accept_batch: a stream opened by another Recognizer")
        if any(s.finished for s in streams):  # checked before any stream takes its audio: nothing half-fed
            raise ParaEdgeError("stream already finished; open a new one")
        for s, x in zip(streams, chunks):
            s._push(x)
        new = [[] for _ in streams]
        while True:
            ready = [i for i, s in enumerate(streams) if s.ready]
            if not ready:
                return new
            windows = [streams[i]._next_window() for i in ready]
            for i, ids in zip(ready, self.run_windows([streams[i] for i in ready], windows, final=False)):
                new[i] += ids

    def run_windows(self, streams: list, windows: list, final: bool) -> list[list[int]]:
        """One chunk of each stream: encoder (one batched call), CIF (per stream), decoder (one
        batched call for the streams whose CIF fired) -> each stream's new token ids."""
        clock = self.clock
        full = [w for w in windows if w.shape[0]]
        with clock("encoder"):
            encoded = iter(self.backend.encode_batch(full) if full else [])
        fired = []
        for s, window in zip(streams, windows):
            if window.shape[0]:
                enc, alphas = next(encoded)
                s.last_enc = enc
            else:
                # A final chunk with no frames (chunk_size [0, N, 0] and under a frame of audio left):
                # only CIF's tail to flush; a token it fires is decoded against the last chunk's frames
                enc, alphas = (s.last_enc if s.last_enc is not None else np.zeros((0, self.config.d_model), F32),
                               np.zeros(0, F32))
            left, chunk, _ = s.chunk_size
            s.chunks += 1
            s.encoder_frames += window.shape[0]
            alphas = alphas.copy()
            alphas[:left] = 0.0
            if not final:
                alphas[left + chunk :] = 0.0
            with clock("cif"):
                embeds = s.cif.step(enc[: alphas.shape[0]], alphas, final)
            if embeds.shape[0] >= 1:
                fired.append((s, enc, embeds))
        new = {id(s): [] for s in streams}
        if fired:
            with clock("decoder"):
                decoded = self.backend.decode_batch([(enc, embeds, s.caches) for s, enc, embeds in fired], streaming=True)
            for (s, _, embeds), (log_probs, caches) in zip(fired, decoded):
                s.caches = caches
                s.rows.append(log_probs[: embeds.shape[0]])
                ids = self.pick_tokens(log_probs, embeds.shape[0])
                s.ids += ids
                new[id(s)] = ids
        return [new[id(s)] for s in streams]


class Stream:
    """One streaming utterance. Feed audio with `accept()`; `finish()` flushes the tail.
    Both return the token ids recognised by that call; `result()` gives everything so far."""

    def __init__(self, rec: Recognizer, chunk_size=None):
        try:
            left, chunk, right = check_chunk_size(rec.config.chunk_size if chunk_size is None else chunk_size)
        except ValueError as e:
            raise ParaEdgeError(str(e)) from None
        self.rec = rec
        self.chunk_size = (left, chunk, right)
        self.chunk_samples = chunk * SAMPLES_PER_LFR_FRAME
        self.frontend = rec.frontend.stream()
        self.cif = rec.backend.cif_stream(rec.cif, rec.config.d_model)
        self.context = np.zeros((left + right, rec.config.input_size), F32)  # prepared frames
        self.position = 0
        self.caches = None
        self.last_enc = None  # the encoder output of the last chunk encoded
        self.pending = np.zeros(0, F32)
        self.ids: list[int] = []
        self.rows: list[np.ndarray] = []  # each decoder step's log-probs, for a grammar on the final
        self.finished = False
        self.chunks = 0
        self.encoder_frames = 0

    def accept(self, samples: np.ndarray) -> list[int]:
        return self.rec.accept_batch([self], [samples])[0]

    def finish(self) -> list[int]:
        """Process the remaining audio as the final chunk and flush CIF's tail."""
        if self.finished:
            return []
        self.finished = True
        rest, self.pending = self.pending, np.zeros(0, F32)
        if rest.size >= SAMPLES_PER_LFR_FRAME:
            with self.rec.clock("frontend"):
                feats = np.concatenate([self.frontend.accept(rest), self.frontend.finish()])
            window = self._window(feats)
        else:
            # Too little audio for a new frame: re-run the cached look-ahead as the last chunk.
            # FunASR scales these already-prepared frames by sqrt(d_model) a second time here;
            # we do the same so results match FunASR token for token.
            window = self.context * self.rec.scale
        return self.rec.run_windows([self], [window], final=True)[0]

    # -- the steps accept_batch drives ---------------------------------------------------------
    def _push(self, samples: np.ndarray) -> None:
        if self.finished:
            raise ParaEdgeError("stream already finished; open a new one")
        x = as_samples(samples, "audio chunk")
        x = check_samples(x.astype(F32, copy=False), "audio chunk") if len(x) else np.zeros(0, F32)
        self.pending = np.concatenate([self.pending, x])

    @property
    def ready(self) -> bool:
        """A full chunk of audio is waiting."""
        return self.pending.size >= self.chunk_samples

    def _next_window(self) -> np.ndarray:
        chunk, self.pending = self.pending[: self.chunk_samples], self.pending[self.chunk_samples :]
        with self.rec.clock("frontend"):
            feats = self.frontend.accept(chunk)
        return self._window(feats)

    def _window(self, feats: np.ndarray) -> np.ndarray:
        """The encoder's input for these frames: the kept context + the frames, position-encoded."""
        left, _, right = self.chunk_size
        prepared = self.rec.prepare(feats, self.position)
        self.position += feats.shape[0]
        window = np.concatenate([self.context, prepared])
        self.context = window[window.shape[0] - (left + right) :] if left + right else window[:0]
        return window

    def result(self) -> Result:
        """Everything recognised so far; once finished, with the grammar's reading (partials stay free text)."""
        rows = self.rec.stack_rows(self.rows)
        # hotwords rescore every position decoded so far: a phrase may span two chunks
        ids = self.rec.pick_tokens(rows, len(rows)) if self.rec.hotwords is not None else list(self.ids)
        result = self.rec.ids_to_result(ids, log_probs=rows)
        return self.rec.understand(result) if self.finished else result

    def fork(self) -> "Stream":
        """An independent copy of this stream's whole state (frontend, context, CIF, caches, audio
        pending): finishing the copy shows what the final would be now, and leaves this one running."""
        import copy

        rec = self.rec  # shared, never copied: the model, its frontend tables, the backend
        return copy.deepcopy(self, {id(o): o for o in (rec, rec.model, rec.frontend, rec.backend, rec.cif, rec.config)})
