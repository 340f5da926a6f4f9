"""Audio input: read any PCM/float WAV, check it, and bring it to 16 kHz mono float32 in [-1, 1].

Paraformer models are trained on 16 kHz mono; everything else is converted here, once, and
the conversion is reported back to the caller so the CLI can say what it did.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from math import gcd

import numpy as np

from edge.errors import AudioError

SAMPLE_RATE = 16000  # Hz: what every model, the VAD and the wake models take; the one place it is written
# WAV sample rates accepted (the daemon's audio.samplerate range). Outside it a header is corrupt, and
# resampling would cost without bound: 1 Hz makes 16000x the samples; a rate coprime to 16 kHz sizes
# the polyphase filter by the rate (383999 Hz: 2 s, 400 MB; a flipped byte giving 4e9 Hz: 525 GiB).
MIN_RATE, MAX_RATE = 8000, 384000


@dataclass(frozen=True)
class AudioInfo:
    """What the source file was, before conversion."""

    sample_rate: int
    channels: int
    dtype: str
    num_samples: int

    @property
    def duration(self) -> float:
        return self.num_samples / float(self.sample_rate)

    def conversions(self) -> list[str]:
        """Human-readable list of what had to change to reach 16 kHz mono."""
        out = []
        if self.channels != 1:
            out.append(f"downmixed {self.channels} channels to mono")
        if self.sample_rate != SAMPLE_RATE:
            out.append(f"resampled {self.sample_rate} Hz to {SAMPLE_RATE} Hz")
        return out


def _to_float(data: np.ndarray) -> np.ndarray:
    """Integer PCM to float32 in [-1, 1]; int16 maps exactly to x / 32768 as FunASR's loaders do."""
    if data.dtype == np.uint8:  # 8-bit WAV is unsigned, centred on 128
        return (data.astype(np.float32) - 128.0) / 128.0
    if data.dtype == np.int16:
        return data.astype(np.float32) / 32768.0
    if data.dtype == np.int32:  # 32-bit, and 24-bit which scipy left-justifies into int32
        return (data.astype(np.float64) / 2147483648.0).astype(np.float32)
    if data.dtype in (np.float32, np.float64):
        with np.errstate(over="ignore"):  # float64 beyond float32 becomes inf, which check_samples refuses;
            return data.astype(np.float32)  # numpy's RuntimeWarning was two more lines on stderr
    raise AudioError(f"unsupported WAV sample type {data.dtype}")  # _read_pcm refuses these first


def read_wav(source) -> tuple[np.ndarray, AudioInfo]:
    """Read a WAV file (path, bytes or file object) into float32 samples shaped [samples, channels]."""
    data, info, _ = _read_pcm(source)
    return _to_float(data), info


def _read_pcm(source) -> tuple[np.ndarray, AudioInfo, bool]:
    """The WAV's samples as stored ([samples, channels]), info, and whether they are memory-mapped
    (files, where scipy can map them)."""
    from scipy.io import wavfile

    name = source if isinstance(source, (str, os.PathLike)) else "<audio>"
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    if isinstance(source, (str, os.PathLike)) and not os.path.isfile(source):
        if os.path.isdir(source):
            raise AudioError(f"{name}: is a directory, not a WAV file")
        if os.path.exists(source):  # a FIFO, a device such as /dev/zero: reading could block or never end
            raise AudioError(f"{name}: not a regular file (a pipe or device?); give a WAV file")
        raise AudioError(f"{name}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns on unknown chunks; we only need the data
            try:  # memory-mapped: an hour of audio is converted once, not held twice
                rate, data = wavfile.read(source, mmap=isinstance(source, (str, os.PathLike)))
            except ValueError:  # 24-bit and some layouts cannot be mapped
                rate, data = wavfile.read(source)
    except UnboundLocalError:  # scipy's reader, on a file that ends before any 'data' chunk
        raise AudioError(f"{name}: not a readable WAV file (no 'data' chunk: truncated?)") from None
    except Exception as exc:  # scipy raises ValueError, struct.error, EOFError... on corrupt files
        raise AudioError(f"{name}: not a readable WAV file ({exc or type(exc).__name__})") from None
    mapped = isinstance(data, np.memmap)
    data = np.asarray(data)
    if data.ndim == 1:
        data = data[:, None]
    if data.ndim != 2:
        raise AudioError(f"{name}: unexpected WAV layout {data.shape}")
    info = AudioInfo(int(rate), int(data.shape[1]), str(data.dtype), int(data.shape[0]))
    if info.num_samples == 0 or info.channels == 0:
        raise AudioError(f"{name}: the WAV file holds no audio samples")
    if not MIN_RATE <= rate <= MAX_RATE:  # before resampling: its filter grows with the rate (4e9 Hz: 525 GiB)
        raise AudioError(f"{name}: sample rate {rate} Hz is outside {MIN_RATE}..{MAX_RATE} Hz (a corrupt WAV header?)")
    if data.dtype not in (np.uint8, np.int16, np.int32, np.float32, np.float64):  # int8: scipy's reading of 12 bits
        raise AudioError(f"{name}: unsupported WAV sample format (read as {data.dtype}, not 8/16/24/32-bit PCM or "
                         "float); convert it to 16-bit PCM, e.g. sox in.wav -b 16 out.wav")
    return data, info, mapped


def to_mono_16k(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Downmix [samples, channels] (or [samples]) to mono and resample to 16 kHz (polyphase)."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]
    if sample_rate != SAMPLE_RATE:
        from scipy.signal import resample_poly

        g = gcd(int(sample_rate), SAMPLE_RATE)
        x = resample_poly(x, SAMPLE_RATE // g, int(sample_rate) // g).astype(np.float32)
    return np.ascontiguousarray(x, dtype=np.float32)


class StreamingResampler:
    """Mono float32 at `rate` -> 16 kHz, block by block, with the same polyphase filter as
    `scipy.signal.resample_poly` (Kaiser-windowed FIR): fed any block sizes, the output equals
    resample_poly on the whole signal except for the last half-filter, which waits for input.
    Capture blocks must be resampled with state; resampling each block alone clicks at the seams."""

    def __init__(self, rate: int, target: int = SAMPLE_RATE):
        from scipy.signal import firwin

        g = gcd(int(rate), int(target))
        self.up, self.down = int(target) // g, int(rate) // g
        m = max(self.up, self.down)
        self.half = 10 * m
        self.h = np.ones(1, np.float32)
        if m > 1:
            self.h = (firwin(2 * self.half + 1, 1.0 / m, window=("kaiser", 5.0)) * self.up).astype(np.float32)
        self._hist = np.zeros(0, np.float32)  # input samples still needed, starting at absolute index _base
        self._base = 0
        self._next = 0  # next output index
        self._taps_per_out = -(-len(self.h) // self.up)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        from scipy.signal import upfirdn

        x = np.asarray(x, np.float32)
        if self.up == self.down:
            return x
        buf = np.concatenate([self._hist, x])
        end = self._base + len(buf)  # absolute index one past the newest input
        # y[n] = sum_m x[m] h[n*down + half - m*up]; output n is ready once input m_hi(n) arrived
        count = ((end - 1) * self.up - self.half) // self.down + 1 - self._next
        y = np.zeros(0, np.float32)
        if count > 0:
            # upfirdn evaluates at multiples of `down` in the upsampled buffer; delaying h by `pad`
            # zeros lines those up with our outputs (the same trick resample_poly uses)
            off = self.half - self._base * self.up
            pad = (-off) % self.down
            full = upfirdn(np.concatenate([np.zeros(pad, np.float32), self.h]), buf, self.up, self.down)
            j0 = (self._next * self.down + off + pad) // self.down
            y = full[j0 : j0 + count].astype(np.float32)
            self._next += count
        keep_from = max(int(self._newest(self._next)) - self._taps_per_out + 1, self._base)
        self._hist = buf[keep_from - self._base :]
        self._base = keep_from
        return y

    def _newest(self, n):
        return (n * self.down + self.half) // self.up


# Float audio is [-1, 1]; some tools write float WAVs on the int16 scale (+-32768), which still
# decodes. Beyond this the file is corrupt (one flipped exponent byte gives 1e36), and the
# fbank's float32 energies overflow into NaN: measured, a 50-file batch then stopped at file 32.
MAX_ABS_SAMPLE = 1e6


def check_samples(x: np.ndarray, what: str = "audio") -> np.ndarray:
    """Reject what would silently poison the features: empty, non-finite or absurdly loud audio."""
    if x.size == 0:
        raise AudioError(f"{what}: empty audio (no samples)")
    flat = x.reshape(-1)
    bad, peak = 0, 0.0
    for i in range(0, flat.size, 1 << 20):  # in blocks: no temporaries the size of an hour of audio
        block = flat[i : i + (1 << 20)]
        finite = np.isfinite(block)
        bad += int(block.size - np.count_nonzero(finite))
        if block.size:
            peak = max(peak, float(np.max(np.abs(np.where(finite, block, 0)))))
    if bad:
        raise AudioError(f"{what}: {bad} samples are NaN or infinite")
    if peak > MAX_ABS_SAMPLE:
        raise AudioError(f"{what}: samples reach {peak:.3g}, beyond +-{MAX_ABS_SAMPLE:.0g}: a corrupt float WAV "
                         "(float audio is expected in [-1, 1])")
    return x


def as_samples(x, what: str = "audio") -> np.ndarray:
    """What the API takes as audio: 16 kHz mono float samples in [-1, 1], as a 1-D array (or [N, 1]).
    Anything else was decoded silently wrong (int16 PCM unscaled: "twenty navigate the" for "next
    navigate home"; [2, N] channels first: ""; [N, 2] into a stream: the channels interleaved) or
    failed deep in numpy; each is one AudioError saying what to pass instead."""
    if isinstance(x, (str, bytes, os.PathLike)):
        raise AudioError(f"{what}: got a file path or bytes, not samples; read it first: "
                         "edge.asr.audio.load_audio(path)[0]")
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise AudioError(f"{what}: not an array of samples ({exc})") from None
    if a.dtype.kind in "iub":
        hint = "; int16 PCM: x / 32768" if a.dtype.kind == "i" else ""
        raise AudioError(f"{what}: {a.dtype} samples; pass float samples in [-1, 1]{hint}")
    if a.dtype.kind != "f":
        raise AudioError(f"{what}: samples of type {a.dtype}; pass a float array of 16 kHz mono samples")
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise AudioError(f"{what}: samples shaped {a.shape}; pass one mono channel, 1-D (downmix first, "
                         "e.g. x.mean(axis=1) for [N, channels])")
    return a


def load_audio(source) -> tuple[np.ndarray, AudioInfo]:
    """Read a WAV and return 16 kHz mono float32 samples plus what the file originally was."""
    data, info = read_wav(source)
    name = source if isinstance(source, (str, os.PathLike)) else "<audio>"
    check_samples(data, str(name))
    return check_samples(to_mono_16k(data, info.sample_rate), str(name)), info


class WavSamples:
    """A 16 kHz WAV file's mono float32 samples, converted slice by slice from a memory map.

    `Recognizer.transcribe` decodes long audio segment by segment; with this it also reads it so,
    and an hour of 16-bit audio is never held as 230 MB of float32 (measured: 437 MB peak RSS for
    1 h with onnxruntime INT8 when loaded whole). Slices with step 1 only; len() is the sample count.
    """

    def __init__(self, pcm: np.ndarray, info: AudioInfo, name: str):
        self.pcm, self.info, self.name = pcm, info, name

    def __len__(self) -> int:
        return self.pcm.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("WavSamples takes slices with step 1")
        block = _to_float(np.asarray(self.pcm[key]))
        return block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else np.ascontiguousarray(block[:, 0])


def open_audio(source) -> tuple[np.ndarray | WavSamples, AudioInfo]:
    """For offline decoding: a 16 kHz file as WavSamples (read lazily, checked per segment), anything
    else as load_audio() gives it (resampling needs the whole signal)."""
    pcm, info, mapped = _read_pcm(source)
    name = str(source) if isinstance(source, (str, os.PathLike)) else "<audio>"
    if info.sample_rate == SAMPLE_RATE and mapped:
        return WavSamples(pcm, info, name), info
    data = _to_float(pcm)
    check_samples(data, name)
    return check_samples(to_mono_16k(data, info.sample_rate), name), info


def write_wav(path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write float samples in [-1, 1] as 16-bit PCM."""
    from scipy.io import wavfile

    pcm = np.clip(np.round(np.asarray(samples, dtype=np.float64) * 32768.0), -32768, 32767)
    wavfile.write(path, sample_rate, pcm.astype(np.int16))
