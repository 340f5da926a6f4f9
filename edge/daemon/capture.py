"""Audio sources for the daemon: a microphone (sounddevice) or a WAV file, both yielding 16 kHz
mono float32 `Chunk`s through the same `read()` so the pipeline cannot tell them apart.

With seat zones (`zones`: one name per channel) a source keeps its channels apart instead: chunks
are [samples, zones] float32 at 16 kHz, each channel resampled on its own. A file or device whose
channel count differs from the number of zones is refused with one line naming both.

The microphone's PortAudio callback only copies into a bounded queue (deque appends are atomic
in CPython, so the audio thread never waits on the pipeline). When the pipeline falls behind,
new blocks are dropped and counted as overruns instead of stalling the audio thread; the
overrun count is reported, never fatal. Downmix and resampling happen on the reading side.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from math import gcd

import numpy as np

from edge.asr.audio import SAMPLE_RATE, StreamingResampler, check_samples, load_audio, read_wav
from edge.errors import ParaEdgeError

log = logging.getLogger("paraedge.capture")


class DeviceLost(ParaEdgeError):
    """The input device stopped delivering audio (unplugged, driver error, stream died)."""


class EndOfInput(Exception):
    """A finite source (a file) has delivered everything."""


@dataclass
class Chunk:
    samples: np.ndarray  # 16 kHz float32: mono [n], or [n, zones] from a zoned source
    t: float | None  # time.monotonic() when the last sample was captured; None when not clocked (fast file)


def _zones_text(zones) -> str:
    return f"{len(zones)} zone{'s' if len(zones) != 1 else ''} ({', '.join(zones)})"


def _channels_text(n: int) -> str:
    return f"{n} channel{'s' if n != 1 else ''}"


def load_channels(path: str, zones) -> tuple[np.ndarray, object]:
    """A WAV file as [samples, channels] float32 at 16 kHz, channels kept apart (one per zone)."""
    data, info = read_wav(path)
    if info.channels != len(zones):
        raise ParaEdgeError(f"input {path} has {_channels_text(info.channels)} but zones names {_zones_text(zones)}; "
                            f"give a {len(zones)}-channel WAV or change --zones / [zones] names")
    check_samples(data, path)
    x = np.asarray(data, np.float32)
    if info.sample_rate != SAMPLE_RATE:  # per channel, the same polyphase filter as the mono path
        from scipy.signal import resample_poly

        g = gcd(info.sample_rate, SAMPLE_RATE)
        x = resample_poly(x, SAMPLE_RATE // g, info.sample_rate // g, axis=0).astype(np.float32)
    return check_samples(np.ascontiguousarray(x), path), info


class FileSource:
    """A WAV file through the daemon's pipeline, paced in real time or as fast as possible.
    zones: keep the file's channels apart, one per zone (the file must have exactly that many)."""

    def __init__(self, path: str, realtime: bool = True, block_s: float = 0.02, zones=None):
        self.path = path
        self.realtime = realtime
        self.block = max(1, int(block_s * SAMPLE_RATE))
        self.zones = tuple(zones or ())
        self.overruns = 0
        self.name = f"file:{path}"
        self._samples: np.ndarray | None = None

    def open(self) -> None:
        if self.zones:
            self._samples, self.info = load_channels(self.path, self.zones)
        else:
            self._samples, self.info = load_audio(self.path)
        self._pos = 0
        self._t0 = time.monotonic()

    def read(self, timeout: float = 0.1) -> Chunk | None:
        if self._samples is None:
            raise DeviceLost(f"{self.name} is not open")
        if self._pos >= len(self._samples):
            raise EndOfInput()
        end = min(self._pos + self.block, len(self._samples))
        if self.realtime:  # the chunk "arrives" when its last sample would have been spoken
            due = self._t0 + end / SAMPLE_RATE
            wait = due - time.monotonic()
            if wait > timeout:
                time.sleep(timeout)
                return None
            if wait > 0:
                time.sleep(wait)
        chunk = Chunk(self._samples[self._pos : end], time.monotonic() if self.realtime else None)
        self._pos = end
        return chunk

    def close(self) -> None:
        self._samples = None


def _sounddevice():
    try:
        import sounddevice as sd
    except OSError as exc:  # the module imports, but PortAudio itself is missing
        raise ParaEdgeError(f"PortAudio is not available ({exc}); install libportaudio2") from None
    except ImportError:
        raise ParaEdgeError("sounddevice is not installed (pip install sounddevice)") from None
    return sd


def list_input_devices() -> list[dict]:
    sd = _sounddevice()
    default_in = sd.default.device[0] if sd.default.device else None
    out = []
    for i, d in enumerate(sd.query_devices()):
        if d["max_input_channels"] > 0:
            out.append({"index": i, "name": d["name"], "channels": d["max_input_channels"],
                        "default_samplerate": d["default_samplerate"], "hostapi": sd.query_hostapis(d["hostapi"])["name"],
                        "default": i == default_in})
    return out


class MicSource:
    """A sounddevice input. Opens at 16 kHz mono when the device allows it, else at the device's
    own rate and channel count, converted here. Samples are int16: what codecs deliver natively,
    and what ALSA's file/pipe plugins carry. zones: open exactly one channel per zone and keep
    them apart (no downmix); each channel has its own resampler."""

    def __init__(self, device=None, samplerate: int | None = None, channels: int | None = None,
                 block_s: float = 0.02, buffer_s: float = 10.0, stall_s: float = 2.0, zones=None):
        self.device = device if device not in ("", None) else None
        self.zones = tuple(zones or ())
        self.want_rate, self.want_channels = samplerate or None, (len(self.zones) or channels or None)
        self.block_s, self.buffer_s, self.stall_s = block_s, buffer_s, stall_s
        self.overruns = 0  # blocks lost: PortAudio overflow flags + our own queue full
        self.name = f"mic:{self.device if self.device is not None else 'default'}"
        self._stream = None

    def _pick_format(self, sd) -> tuple[int, int]:
        try:
            info = sd.query_devices(self.device, "input")
        except (ValueError, sd.PortAudioError) as exc:
            which = "the default input device" if self.device is None else f"input device {self.device!r}"
            raise DeviceLost(f"{which} not found ({exc}); see `paraedge devices`") from None
        for rate in ([self.want_rate] if self.want_rate else [SAMPLE_RATE, int(info["default_samplerate"])]):
            for ch in ([self.want_channels] if self.want_channels else [1, int(info["max_input_channels"])]):
                try:
                    sd.check_input_settings(device=self.device, samplerate=rate, channels=ch, dtype="int16")
                    return int(rate), int(ch)
                except (ValueError, sd.PortAudioError):
                    continue
        if self.zones and int(info["max_input_channels"]) < len(self.zones):  # no retry can fix this
            raise ParaEdgeError(f"input {self.name} has {_channels_text(int(info['max_input_channels']))} but zones names "
                                f"{_zones_text(self.zones)}; pick a {len(self.zones)}-channel device or change "
                                "--zones / [zones] names")
        raise DeviceLost(f"input device {info['name']!r} accepts none of the tried rates/channel counts")

    def open(self) -> None:
        sd = _sounddevice()
        self.rate, self.channels = self._pick_format(sd)
        self._resample = StreamingResampler(self.rate)
        self._resamplers = [StreamingResampler(self.rate) for _ in self.zones]  # one state per channel
        blocksize = max(1, int(self.block_s * self.rate))
        self._queue: collections.deque = collections.deque()
        self._max_blocks = max(2, int(self.buffer_s / self.block_s))
        self._ready = threading.Event()
        self._finished = threading.Event()

        def callback(indata, frames, time_info, status):
            if status.input_overflow:
                self.overruns += 1
            if len(self._queue) >= self._max_blocks:
                self.overruns += 1  # keep what is queued; the audio thread must not wait
            else:
                self._queue.append((indata.copy(), time.monotonic()))
            self._ready.set()

        try:
            self._stream = sd.InputStream(device=self.device, samplerate=self.rate, channels=self.channels,
                                          dtype="int16", blocksize=blocksize, callback=callback,
                                          finished_callback=self._finished.set)
            self._stream.start()
        except (ValueError, sd.PortAudioError) as exc:
            self._stream = None
            raise DeviceLost(f"cannot open input device {self.device!r}: {exc}") from None
        self._last_data = time.monotonic()
        log.info("capturing from %s at %d Hz x %d", self.name, self.rate, self.channels)

    def read(self, timeout: float = 0.1) -> Chunk | None:
        if self._stream is None:
            raise DeviceLost(f"{self.name} is not open")
        if not self._queue:
            self._ready.clear()
            self._ready.wait(timeout)
        if not self._queue:
            if self._finished.is_set() or not self._stream.active:
                raise DeviceLost(f"{self.name} stopped delivering audio")
            if time.monotonic() - self._last_data > self.stall_s:
                raise DeviceLost(f"{self.name}: no audio for {self.stall_s:.1f} s")
            return None
        block, t = self._queue.popleft()
        self._last_data = time.monotonic()
        x = block.astype(np.float32) / np.float32(32768)
        if self.zones:  # same rate and block length per channel: the resampled lengths match
            return Chunk(np.stack([r(x[:, i]) for i, r in enumerate(self._resamplers)], axis=1), t)
        mono = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
        return Chunk(self._resample(mono), t)

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close(ignore_errors=True)
            except Exception:  # a device that vanished may fail to close; nothing left to save
                pass


def open_source(input_path: str | None = None, realtime: bool = True, zones=None, **mic_args):
    src = FileSource(input_path, realtime=realtime, zones=zones) if input_path else MicSource(zones=zones, **mic_args)
    src.open()
    return src
