"""Fuzz suite: bad input gets a one-line error and loses nothing, checked on seeded mutants of the
shipped files (WAV samples, the demo model dir, a small torch checkpoint, edge.toml, a TVM bundle
manifest, a board profile).

The properties:
- Python-level parsers either succeed or raise `ParaEdgeError` (ModelError, AudioError, ConfigError,
  BoardError, ...) whose message is one line; any other exception type, or no answer within
  CASE_TIMEOUT_S, fails the test naming the case (and where the mutant was saved).
- The `paraedge` CLI exits 0 or 2; on exit 2 stderr holds exactly one line, `paraedge: error: ...`
  (besides the informational `note: FILE: resampled ...` lines transcribe prints for converted input),
  and never a traceback; in a batch `good BAD good`, both good files are still decoded, to the text
  they decode to alone.

Every run is repeatable: each case draws from `random.Random(seed)` with a fixed seed, and hypothesis
runs derandomized with no example database. CI runs the default counts (the whole file in 45 s on two
cores); PARAEDGE_FUZZ_SCALE=10 runs ten times as many cases of every kind, the first ones the same. Model.pt cases run in a child process without torch, under a 4 GB
address-space limit, so a segfault or runaway allocation fails the test instead of killing pytest;
in-process cases run with the same headroom over what the process already maps.

Regression tests for what this fuzzing found are at the end of the file, each with its minimised input.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import io
import json
import math
import os
import pickle
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import traceback
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT, demo_tokens
from edge.backends.tvm import BUNDLE_FORMAT
from edge.errors import AudioError, ModelError, ParaEdgeError

DEMO = os.path.join(ROOT, "models", "demo")
SAMPLE = os.path.join(DEMO, "samples", "02_alexa_en.wav")
MODEL_FILES = ("config.yaml", "am.mvn", "tokens.json", "tokens.txt", "model.npz", "model_quant.onnx", "decoder_quant.onnx")
BOARD = os.path.join(ROOT, "boards", "raspberry-pi-5.toml")
TEMPLATE = os.path.join(ROOT, "edge", "resources", "edge.toml")
SCALE = float(os.environ.get("PARAEDGE_FUZZ_SCALE", "1"))
CASE_TIMEOUT_S = 30  # one in-process case; the slowest legitimate one (a 2 s resample) is far below
CLI_TIMEOUT_S = 120
MEM_LIMIT = 4 << 30


def count(n: int) -> int:
    return max(1, round(n * SCALE))


def fuzz_settings(n: int):
    return settings(max_examples=count(n), deadline=None, derandomize=True, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])


# -- the mutator ------------------------------------------------------------------------------------

INTERESTING = (0, 1, 2, 3, 7, 8, 16, 24, 32, 64, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 44100, 16000,
               0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


def mutate(data: bytes, rng: random.Random, edits: int | None = None) -> bytes:
    """1-4 seeded edits: bit flips, interesting bytes and 16/32-bit integers, truncation, insertion of
    random bytes, duplication or deletion of a chunk; rarely the whole input replaced by random bytes."""
    if rng.random() < 0.03:
        return rng.randbytes(rng.choice([0, 1, 4, 12, 44, 300, 5000]))
    b = bytearray(data)
    for _ in range(edits or rng.randint(1, 4)):
        if not b:
            b += rng.randbytes(rng.randint(1, 64))
            continue
        i = rng.randrange(len(b))
        op = rng.randrange(8)
        if op == 0:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[i] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif op == 2:
            del b[rng.randrange(len(b)):]
        elif op == 3:
            b[i:i] = rng.randbytes(rng.randint(1, 32))
        elif op == 4:
            j = min(len(b), i + rng.randint(1, 512))
            b[j:j] = b[i:j] * rng.randint(1, 3)
        elif op == 5:
            del b[i:i + rng.randint(1, 64)]
        else:
            size = 2 if op == 6 else 4
            i = min(i, max(0, len(b) - size))
            b[i:i + size] = (rng.choice(INTERESTING) & ((1 << (8 * size)) - 1)).to_bytes(size, "little")[:len(b) - i]
    return bytes(b)


# -- running one case -------------------------------------------------------------------------------

class CaseTimeout(BaseException):
    """BaseException: a library's `except Exception` must not turn a hang into a clean error."""


@contextlib.contextmanager
def time_limit(seconds: int, what: str):
    def on_alarm(signum, frame):
        raise CaseTimeout(f"{what}: no answer within {seconds} s (a hang?)")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _mapped_bytes() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@contextlib.contextmanager
def memory_headroom(extra: int = MEM_LIMIT):
    """A soft RLIMIT_AS of what the process maps now + `extra`: a runaway allocation in a case is a
    MemoryError (a failed case) instead of the OOM killer taking pytest. Restored afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    used = _mapped_bytes()
    if used is None:
        yield
        return
    limit = used + extra if hard == resource.RLIM_INFINITY else min(used + extra, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


class Outcomes(collections.Counter):
    """What the cases of one test gave: 'ok' or the ParaEdgeError class name."""

    def check(self, what: str, fn, saved: str | None = None) -> str:
        where = f" (input saved as {saved})" if saved else ""
        try:
            with time_limit(CASE_TIMEOUT_S, what + where):
                fn()
            result = "ok"
        except ParaEdgeError as exc:
            msg = str(exc)
            assert msg and len(msg.splitlines()) == 1, f"{what}{where}: the error is not one line: {msg!r:.400}"
            result = type(exc).__name__
        except CaseTimeout:
            raise
        except Exception as exc:  # noqa: BLE001 - the property under test
            pytest.fail(f"{what}{where}: {type(exc).__name__} escaped, not a ParaEdgeError: {str(exc)[:300]}\n"
                        f"{traceback.format_exc()[-2500:]}")
        self[result] += 1
        return result


def save(path: str, data: bytes) -> str:
    """Write a mutant, first removing what is there: in a model copy that is a symlink to the shipped file."""
    if os.path.lexists(path):
        os.unlink(path)
    with open(path, "wb") as f:
        f.write(data)
    return path


# -- the CLI ---------------------------------------------------------------------------------------

def cli(*args, timeout=CLI_TIMEOUT_S):
    return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, cwd=ROOT, timeout=timeout,
                          check=False)


def assert_cli_property(r, what: str, bad: str | None = None) -> list[str]:
    """Exit 0 or 2; on 2 exactly one `paraedge: error:` line (naming `bad` when given), nothing else
    but `note:` lines; never a traceback. Returns stdout's lines."""
    err = r.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, f"{what}: traceback\n{err[-3000:]}"
    assert r.returncode in (0, 2), f"{what}: exit {r.returncode}\n{err[-3000:]}"
    lines = [ln for ln in err.splitlines() if not ln.startswith("note: ")]
    if r.returncode == 2:
        assert len(lines) == 1 and lines[0].startswith("paraedge: error: "), f"{what}: stderr is not one line:\n{err[-3000:]}"
        if bad:
            assert bad in lines[0], f"{what}: the error does not name {bad}: {lines[0]}"
    else:
        assert not lines, f"{what}: exit 0 with stderr:\n{err[-3000:]}"
    return r.stdout.decode("utf-8", "replace").splitlines()


# == 1. WAV ==========================================================================================

HEADER = {  # canonical 44-byte header: field -> (offset, size); data_size is found per file
    "riff_size": (4, 4), "fmt_size": (16, 4), "format_tag": (20, 2), "channels": (22, 2), "sample_rate": (24, 4),
    "byte_rate": (28, 4), "block_align": (32, 2), "bits_per_sample": (34, 2),
}
FIELD_VALUES = {
    "riff_size": (0, 4, 36, 0x7FFFFFFF, 0xFFFFFFFF),
    "fmt_size": (0, 2, 14, 15, 17, 18, 40, 0x7FFFFFFF, 0xFFFFFFFF),
    "format_tag": (0, 1, 2, 3, 6, 7, 0xFFFE, 0xFFFF),
    "channels": (0, 2, 3, 7, 255, 0xFFFF),
    "sample_rate": (0, 1, 7999, 8000, 8009, 11025, 44100, 384000, 384001, 0x7FFFFFFF, 0xFFFFFFFF),
    "byte_rate": (0, 1, 0xFFFFFFFF),
    "block_align": (0, 1, 3, 5, 0xFFFF),
    "bits_per_sample": (0, 1, 7, 8, 12, 24, 32, 64, 0xFFFF),
    "data_size": (0, 1, 3, 1000, 0x7FFFFFFF, 0xFFFFFFFF),
    # the fields that depend on each other, set consistently (scipy refuses a PCM file whose byte rate
    # is not rate x block align, before any of these values is used)
    "consistent_rate": (0, 1, 7999, 8000, 8009, 22050, 48000, 384000, 384001, 0xFFFFFFFF),
    "consistent_channels": (0, 2, 3, 8, 255, 0xFFFF),
    "consistent_bits": (0, 8, 12, 24, 32, 64, 0xFFF8),
}


def _wav_bytes(rate: int, x: np.ndarray) -> bytes:
    from scipy.io import wavfile

    buf = io.BytesIO()
    wavfile.write(buf, rate, x)
    return buf.getvalue()


def _raw_wav(fmt_tag: int, channels: int, rate: int, bits: int, data: bytes, extensible: bool = False) -> bytes:
    """A WAV written by hand: 24-bit PCM and WAVE_FORMAT_EXTENSIBLE, which scipy reads but does not write."""
    align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", 0xFFFE if extensible else fmt_tag, channels, rate, rate * align, align, bits)
    if extensible:  # cbSize, valid bits, channel mask, the sub-format GUID (its first 2 bytes: the format tag)
        fmt += struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", fmt_tag) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body + (b"\0" if len(data) % 2 else b"")


@pytest.fixture(scope="module")
def wavs() -> dict:
    """The shipped sample and the same speech in every layout the reader takes."""
    from edge.asr.audio import load_audio

    x = load_audio(SAMPLE)[0]
    one_s = x[8000:24000]
    pcm24 = (np.clip(one_s, -1, 1) * 8388607).astype("<i4")
    pcm24 = np.stack([(pcm24 >> s) & 0xFF for s in (0, 8, 16)], axis=1).astype(np.uint8).tobytes()
    return {
        "pcm16": Path(SAMPLE).read_bytes(),
        "float32": _wav_bytes(16000, one_s.astype(np.float32)),
        "float64_stereo_44k": _wav_bytes(44100, np.stack([x[:22050], x[22050:44100]], 1).astype(np.float64)),
        "int32_8k": _wav_bytes(8000, (x[:16000:2] * 2**31 * 0.9).astype(np.int32)),
        "uint8": _wav_bytes(16000, ((one_s + 1) * 127.5).astype(np.uint8)),
        "pcm24": _raw_wav(1, 1, 16000, 24, pcm24),
        "extensible16": _raw_wav(1, 1, 16000, 16, (one_s * 32767).astype("<i2").tobytes(), extensible=True),
    }


def set_field(data: bytes, field: str, value: int) -> bytes:
    if field.startswith("consistent_"):
        channels, rate, _, _, bits = struct.unpack_from("<HIIHH", data, 22)
        channels, rate, bits = {"consistent_rate": (channels, value, bits), "consistent_channels": (value, rate, bits),
                                "consistent_bits": (channels, rate, value)}[field]
        align = channels * bits // 8
        for name, v in (("channels", channels), ("sample_rate", rate), ("bits_per_sample", bits),
                        ("block_align", align), ("byte_rate", rate * align)):
            data = set_field(data, name, v)
        return data
    if field == "data_size":
        pos = data.find(b"data", 12)
        if pos < 0:
            return data
        offset, size = pos + 4, 4
    else:
        offset, size = HEADER[field]
    b = bytearray(data)
    b[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
    return bytes(b)


def wav_mutant(wavs: dict, rng: random.Random) -> tuple[str, bytes]:
    """(description, bytes): a header field set to an edge value, generic mutations, or both."""
    base = rng.choice(sorted(wavs))
    data, what = wavs[base], [base]
    kind = rng.random()
    if kind < 0.6:
        field = rng.choice(sorted(FIELD_VALUES))
        value = rng.choice(FIELD_VALUES[field] + (rng.getrandbits(32),))
        data = set_field(data, field, value)
        what.append(f"{field}={value}")
    if kind > 0.4:
        data = mutate(data, rng)
        what.append("mutated")
    return " ".join(what), data


def read_everything(path: str) -> None:
    """load_audio and open_audio (a WavSamples read through, block by block, as transcribe reads it)."""
    from edge.asr.audio import WavSamples, check_samples, load_audio, open_audio

    load_audio(path)
    samples, _ = open_audio(path)
    if isinstance(samples, WavSamples):
        for i in range(0, len(samples), 1 << 16):
            check_samples(samples[i:i + (1 << 16)], samples.name)


@pytest.mark.parametrize("field", sorted(FIELD_VALUES))
def test_wav_header_fields(tmp_path, wavs, field):
    """Every header field at its edge values, in 16-bit, float, 24-bit and extensible files."""
    out = Outcomes()
    with memory_headroom():
        for base in ("pcm16", "float32", "pcm24", "extensible16"):
            for value in FIELD_VALUES[field]:
                path = save(str(tmp_path / f"{base}_{field}_{value}.wav"), set_field(wavs[base], field, value))
                out.check(f"{base} {field}={value}", functools.partial(read_everything, path), path)
    assert sum(out.values()) == 4 * len(FIELD_VALUES[field]), out


def test_wav_mutations(tmp_path, wavs):
    rng = random.Random(1)
    out = Outcomes()
    with memory_headroom():
        for i in range(count(600)):
            what, data = wav_mutant(wavs, rng)
            path = save(str(tmp_path / f"case{i}.wav"), data)
            out.check(f"WAV case {i} ({what})", functools.partial(read_everything, path), path)
            os.unlink(path)
    assert out["ok"] > 10 and out["AudioError"] > 10, out


@pytest.fixture(scope="module")
def recognizers():
    from edge.asr.recognizer import Recognizer

    return {"ref": Recognizer(DEMO, "ref"), "onnxruntime": Recognizer(DEMO, "onnxruntime", int8=True)}


def test_wav_mutations_decode(tmp_path, wavs, recognizers):
    """Mutants that still read are decoded, offline and streaming, on both backends."""
    from edge.asr.audio import load_audio, open_audio

    rng = random.Random(2)
    out = Outcomes()
    with memory_headroom():
        for i in range(count(60)):
            what, data = wav_mutant(wavs, rng)
            path = save(str(tmp_path / f"case{i}.wav"), data)
            backend, streaming = rng.choice(sorted(recognizers)), rng.random() < 0.35
            rec = recognizers[backend]

            def decode(rec=rec, path=path, streaming=streaming):
                if streaming:
                    rec.transcribe_streaming(load_audio(path)[0])
                else:
                    rec.transcribe(open_audio(path)[0])

            out.check(f"WAV decode case {i} ({what}; {backend}{' streaming' if streaming else ''})", decode, path)
    assert out["ok"] and out["AudioError"], out


@pytest.fixture(scope="module")
def good_batch(tmp_path_factory, recognizers):
    """before.wav / after.wav (the shipped sample) and the text each backend gives it alone."""
    from edge.asr.audio import load_audio

    d = tmp_path_factory.mktemp("batch")
    paths = [str(d / "before.wav"), str(d / "after.wav")]
    for p in paths:
        shutil.copy(SAMPLE, p)
    x = load_audio(SAMPLE)[0]
    texts = {b: (r.transcribe(x).text, r.transcribe_streaming(x).text) for b, r in recognizers.items()}
    assert all(all(t) for t in texts.values()), texts
    return paths, texts


BATCH_FIXED = {  # always in the batch cases: certain failures, so the "loses nothing" half is exercised
    0: ("sample_rate=0xFFFFFFFF", lambda w: set_field(w["pcm16"], "sample_rate", 0xFFFFFFFF)),
    1: ("truncated to 30 bytes", lambda w: w["pcm16"][:30]),
    2: ("float NaN", lambda w: w["float32"][:-4] + struct.pack("<f", float("nan"))),
}


@pytest.mark.parametrize("case", range(count(10)))
def test_cli_batch_keeps_the_good_files(tmp_path, wavs, good_batch, case):
    """`paraedge transcribe before.wav BAD.wav after.wav`: one line for BAD, both good files decoded."""
    (before, after), texts = good_batch
    rng = random.Random(100 + case)
    if case in BATCH_FIXED:
        what, make = BATCH_FIXED[case]
        data = make(wavs)
    else:
        what, data = wav_mutant(wavs, rng)
    bad = save(str(tmp_path / "BAD.wav"), data)
    backend, streaming = ("ref", "onnxruntime")[case % 2], case % 3 == 2
    args = ["--backend", backend] + (["--int8"] if backend == "onnxruntime" else []) + (["--streaming"] if streaming else [])
    r = cli("transcribe", before, bad, after, "--model", DEMO, *args)
    what = f"batch case {case} ({what}; {' '.join(args)}; BAD kept at {bad})"
    lines = assert_cli_property(r, what, bad=bad)
    text = texts[backend][1 if streaming else 0]
    for good in (before, after):
        assert f"{good}\t{text}" in lines, f"{what}: {good} lost or decoded differently: {lines}"
    if case in BATCH_FIXED:
        assert r.returncode == 2, what


# == 2. the model dir ================================================================================

READERS = {"model.npz": ("ref",), "model_quant.onnx": ("onnxruntime",), "decoder_quant.onnx": ("onnxruntime",)}


def model_copy(path, without=()) -> str:
    """The demo model dir as symlinks to the shipped files; save() replaces one with a real file."""
    os.makedirs(path)
    for name in MODEL_FILES:
        if name not in without:
            os.symlink(os.path.join(DEMO, name), os.path.join(path, name))
    return str(path)


def decode_with(d: str, backend: str, x: np.ndarray, streaming: bool = False) -> str:
    from edge.asr.recognizer import Recognizer

    rec = Recognizer(d, backend, int8=backend == "onnxruntime")
    return (rec.transcribe_streaming(x) if streaming else rec.transcribe(x)).text


@pytest.fixture(scope="module")
def speech():
    from edge.asr.audio import load_audio

    return load_audio(SAMPLE)[0]


def npz_mutant(rng: random.Random) -> bytes:
    """model.npz rewritten with valid CRCs around a mutated member (mostly its .npy header), or a
    renamed member: a raw byte flip would only ever meet zipfile's CRC check."""
    with zipfile.ZipFile(os.path.join(DEMO, "model.npz")) as z:
        members = {i.filename: z.read(i.filename) for i in z.infolist()}
    name = rng.choice(sorted(members))
    data = members[name]
    if rng.random() < 0.7:
        members[name] = mutate(data[:128], rng) + data[128:]
    else:
        members[name] = mutate(data, rng)
    if rng.random() < 0.15:
        members[rng.choice([name[:-4], name + "x", "x/", name.upper()])] = members.pop(name)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for k, v in members.items():
            z.writestr(k, v)
    return buf.getvalue()


MODEL_CASES = {"config.yaml": 60, "am.mvn": 40, "tokens.json": 40, "tokens.txt": 40, "model.npz": 9,
               "model_quant.onnx": 16, "decoder_quant.onnx": 16}


@pytest.mark.parametrize("name", MODEL_FILES)
def test_model_file_mutations(tmp_path, speech, name):
    """Each model file mutated alone, in a copy of the demo dir: load and decode on the backends that read it."""
    rng = random.Random(sum(name.encode()))
    src = Path(DEMO, name).read_bytes()
    d = model_copy(tmp_path / "m", without=("tokens.json",) if name == "tokens.txt" else ())
    out = Outcomes()
    with memory_headroom():
        for i in range(count(MODEL_CASES[name])):
            data = npz_mutant(rng) if name == "model.npz" and i % 3 else mutate(src, rng)
            path = save(os.path.join(d, name), data)
            for backend in READERS.get(name, ("ref", "onnxruntime")):
                streaming = i % 4 == 3
                out.check(f"{name} case {i} ({backend}{' streaming' if streaming else ''})",
                          functools.partial(decode_with, d, backend, speech, streaming), path)
    assert out["ModelError"], out


def _yaml_values():
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                        st.sampled_from([0, 1, -1, 2, 3, 5, 7, 11, 21, 255, 256, 257, 560, 65536, 65537]),
                        st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.5, 1e-9, 25.0, 256.0]),
                        st.text(max_size=12), st.sampled_from(["Paraformer", "pe", "sanm", "hamming", "linear"]))
    return st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                        max_leaves=6)


def _key_paths(tree, prefix=()):
    for k, v in tree.items():
        yield prefix + (k,)
        if isinstance(v, dict):
            yield from _key_paths(v, prefix + (k,))


@pytest.fixture(scope="module")
def yaml_dir(tmp_path_factory):
    return model_copy(tmp_path_factory.mktemp("yaml") / "m")


@fuzz_settings(60)
@given(data=st.data())
def test_config_yaml_values(yaml_dir, speech, data):
    """config.yaml with 1-3 of its real keys set to values of random types (or deleted)."""
    with open(os.path.join(DEMO, "config.yaml"), encoding="utf-8") as f:
        conf = yaml.safe_load(f)
    paths = sorted(_key_paths(conf), key=str)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        holder = conf
        for p in path[:-1]:
            holder = holder.get(p) if isinstance(holder, dict) else None
        if not isinstance(holder, dict):
            continue
        if data.draw(st.integers(0, 6)) == 0:
            holder.pop(path[-1], None)
        else:
            holder[path[-1]] = data.draw(_yaml_values())
    text = yaml.safe_dump(conf, allow_unicode=True)
    save(os.path.join(yaml_dir, "config.yaml"), text.encode("utf-8"))
    backend = data.draw(st.sampled_from(["ref", "onnxruntime"]))
    streaming = data.draw(st.booleans())
    with memory_headroom():
        Outcomes().check(f"config.yaml ({backend}{' streaming' if streaming else ''}):\n{text}",
                         lambda: decode_with(yaml_dir, backend, speech, streaming))


def onnx_graph_mutant(model, rng: random.Random):
    """A copy of the ONNX model with one structural edit (what a byte flip rarely reaches whole)."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    op = rng.choice(["del_node", "swap_io", "rewire", "dim", "dtype", "del_init", "del_output", "opset", "rename_io"])
    node = g.node[rng.randrange(len(g.node))]
    if op == "del_node":
        g.node.remove(node)
    elif op == "swap_io" and node.input and node.output:
        node.input[0], node.output[0] = node.output[0], node.input[0]
    elif op == "rewire" and node.input:
        node.input[rng.randrange(len(node.input))] = rng.choice([g.input[0].name, "nowhere", g.output[0].name])
    elif op == "dim":
        value = rng.choice(list(g.input) + list(g.output))
        dims = value.type.tensor_type.shape.dim
        if dims:
            dim = dims[rng.randrange(len(dims))]
            if rng.random() < 0.6:
                dim.dim_value = rng.choice([0, 1, 3, 255, 257, 560])
            else:
                dim.dim_param = "other"
    elif op == "dtype":
        rng.choice(list(g.input) + list(g.output)).type.tensor_type.elem_type = rng.choice([1, 6, 7, 10, 11])
    elif op == "del_init" and g.initializer:
        g.initializer.remove(g.initializer[rng.randrange(len(g.initializer))])
    elif op == "del_output":
        g.output.remove(g.output[rng.randrange(len(g.output))])
    elif op == "opset":
        m.opset_import[0].version = rng.choice([1, 7, 30, 999])
    elif op == "rename_io":
        value = rng.choice(list(g.input) + list(g.output))
        value.name = rng.choice(["speech", "enc", "logits", "x"])
    return op, m.SerializeToString()


@pytest.mark.parametrize("name", ["model_quant.onnx", "decoder_quant.onnx"])
def test_onnx_graph_mutations(tmp_path, speech, name):
    onnx = pytest.importorskip("onnx", reason="onnx (host extra) builds the graph mutants")
    model = onnx.load(os.path.join(DEMO, name))
    rng = random.Random(7 + len(name))
    d = model_copy(tmp_path / "m")
    out = Outcomes()
    with memory_headroom():
        for i in range(count(20)):
            op, data = onnx_graph_mutant(model, rng)
            path = save(os.path.join(d, name), data)
            streaming = i % 2 == 1
            out.check(f"{name} graph case {i} ({op}{', streaming' if streaming else ''})",
                      functools.partial(decode_with, d, "onnxruntime", speech, streaming), path)
    assert out["ModelError"], out


@pytest.mark.parametrize("name", MODEL_FILES)
def test_cli_mutated_model_file_is_one_line(tmp_path, name):
    """One mutant per model file through the CLI: exit 0, or 2 with one line and nothing on stdout."""
    rng = random.Random(31 + len(name))
    d = model_copy(tmp_path / "m", without=("tokens.json",) if name == "tokens.txt" else ())
    data = npz_mutant(rng) if name == "model.npz" else mutate(Path(DEMO, name).read_bytes(), rng, edits=3)
    save(os.path.join(d, name), data)
    backend = READERS.get(name, ("onnxruntime",))[0]
    args = ["--backend", backend] + (["--int8"] if backend == "onnxruntime" else [])
    r = cli("transcribe", SAMPLE, "--model", d, *args)
    lines = assert_cli_property(r, f"{name} mutant via the CLI ({' '.join(args)}; kept in {d})")
    if r.returncode == 2:
        assert lines == [], lines


# == 3. model.pt =====================================================================================

PT_CHILD = r"""
import json, resource, signal, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
sys.modules["torch"] = None  # the runtime reads model.pt without torch
import numpy as np
from edge.asr.torchfile import load_state_dict
from edge.errors import ParaEdgeError

class Hang(BaseException):
    pass

def on_alarm(*_):
    raise Hang()

signal.signal(signal.SIGALRM, on_alarm)
for case, path in json.loads(sys.stdin.read()):
    print(json.dumps({{"start": case}}), flush=True)
    signal.alarm({timeout})
    try:
        sd = load_state_dict(path)
        ok = isinstance(sd, dict) and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in sd.items())
        out = {{"result": "ok" if ok else "bad result", "msg": repr(type(sd))}}
    except ParaEdgeError as e:
        out = {{"result": type(e).__name__, "msg": str(e)}}
    except Hang:
        out = {{"result": "hang", "msg": "no answer in {timeout} s"}}
    except BaseException as e:
        out = {{"result": type(e).__name__, "msg": str(e)[:300], "escaped": True}}
    finally:
        signal.alarm(0)
    out["case"] = case
    print(json.dumps(out), flush=True)
# VmHWM: this image's peak. ru_maxrss would carry over the forking pytest's peak (Linux keeps it across exec)
print(json.dumps({{"maxrss_kb": int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")))}}), flush=True)
"""


@pytest.fixture(scope="module")
def small_pt(tmp_path_factory) -> bytes:
    """A real torch.save checkpoint, small: float32/float16/bfloat16/int64 tensors, a view with an
    offset, a transposed (non-contiguous) one, a scalar, an nn.Parameter, tied weights, nested in 'model'."""
    torch = pytest.importorskip("torch", reason="torch (host extra) writes the checkpoint that is mutated")
    sd = collections.OrderedDict()
    sd["a.weight"] = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    sd["a.bias"] = torch.arange(4, dtype=torch.float32)
    base = torch.arange(20, dtype=torch.float16)
    sd["half_view"] = base[2:10].reshape(2, 4)
    sd["half_t"] = base[:8].reshape(2, 4).t()
    sd["bf16"] = torch.arange(6, dtype=torch.bfloat16)
    sd["step"] = torch.tensor(7, dtype=torch.int64)
    sd["param"] = torch.nn.Parameter(torch.ones(2, 2))
    sd["tied"] = sd["a.weight"]
    path = tmp_path_factory.mktemp("pt") / "small.pt"
    torch.save({"model": sd, "epoch": 3}, path)
    return path.read_bytes()


def pt_mutant(src: bytes, rng: random.Random) -> tuple[str, bytes]:
    """Mutate the zip itself, or rewrite it (valid CRCs) around a mutated data.pkl, storage or name."""
    kind = rng.choice(["zip", "pickle", "pickle", "storage", "names"])
    if kind == "zip":
        return kind, mutate(src, rng)
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(io.BytesIO(src)) as zin, zipfile.ZipFile(buf, "w") as zout:
        warnings.simplefilter("ignore")  # renamed members may collide: "Duplicate name", a case like any other
        for info in zin.infolist():
            name, raw = info.filename, zin.read(info.filename)
            if kind == "pickle" and name.endswith("/data.pkl"):
                raw = mutate(raw, rng)
            elif kind == "storage" and "/data/" in name and rng.random() < 0.5:
                raw = mutate(raw, rng)
            elif kind == "names" and rng.random() < 0.3:
                name = rng.choice([name + "x", name.replace("/data/", "/dat/"), name.split("/")[0] + f"/data/{rng.randrange(9)}",
                                   "other/data.pkl"])
            zout.writestr(name, raw, compress_type=info.compress_type)
    return kind, buf.getvalue()


def test_model_pt_mutations(tmp_path, small_pt):
    """Mutated checkpoints read by load_state_dict in a child: no torch, 4 GB of address space."""
    rng = random.Random(3)
    cases, kinds = [], {}
    for i in range(count(800)):
        kind, data = pt_mutant(small_pt, rng)
        path = save(str(tmp_path / f"case{i}.pt"), data)
        cases.append((f"case{i}", path))
        kinds[f"case{i}"] = kind
    code = PT_CHILD.format(limit=MEM_LIMIT, timeout=CASE_TIMEOUT_S)
    p = subprocess.run([sys.executable, "-c", code], input=json.dumps(cases), capture_output=True, text=True, cwd=ROOT,
                       timeout=300, check=False)
    rows = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    started = [r["start"] for r in rows if "start" in r]
    assert p.returncode == 0, (f"the child died (exit {p.returncode}) in {started[-1:]} "
                               f"(kept in {tmp_path}): {p.stderr[-3000:]}")
    results = {r["case"]: r for r in rows if "case" in r}
    assert len(results) == len(cases), (len(results), p.stderr[-3000:])
    out = collections.Counter()
    for case, r in results.items():
        what = f"model.pt {case} ({kinds[case]}; kept as {tmp_path / case}.pt)"
        assert not r.get("escaped") and r["result"] not in ("hang", "bad result"), (what, r)
        assert r["result"] == "ok" or len(r["msg"].splitlines()) == 1, (what, r["msg"])
        assert "MemoryError" not in r["msg"], (what, "a runaway allocation, turned into an error", r["msg"])
        out[r["result"]] += 1
    assert out["ok"] and out["ModelError"], out
    maxrss = next(r["maxrss_kb"] for r in rows if "maxrss_kb" in r)
    assert maxrss < 1 << 20, f"the child peaked at {maxrss >> 10} MB reading 3 KB checkpoints"


# == 4. edge.toml ====================================================================================

def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return v.isoformat()  # dates, times


def toml_document(doc: dict) -> str:
    lines = [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for section, table in doc.items():
        if isinstance(table, dict):
            lines.append(f"[{json.dumps(section)}]")
            lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _config_keys() -> dict:
    """{section: [key, ...]} of edge.toml, from the dataclasses DaemonConfig.load fills."""
    from edge.daemon.config import DaemonConfig

    cfg = DaemonConfig()
    sections = [getattr(cfg, f.name) for f in dataclasses.fields(cfg)]
    return {f.name: [g.name for g in dataclasses.fields(v)] for f, v in zip(dataclasses.fields(cfg), sections)
            if dataclasses.is_dataclass(v)}


TOML_SCALARS = st.one_of(
    st.booleans(), st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, 1, -1, 2, 20, 1000, 1001, 8000, 16000, 384001, 100000, 10**12]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 0.05, 0.35, 0.5, 1.0, 2.5, 3600.5]),
    st.text(max_size=16), st.sampled_from(["", "ref", "onnxruntime", "tvm", "okay_nabu", "a.json", "/abs.tflite", "x.tflite"]),
    st.dates(), st.times(),
)
TOML_VALUES = st.recursive(TOML_SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                           max_leaves=6)


@st.composite
def toml_documents(draw):
    keys = _config_keys()
    doc = {}
    if draw(st.integers(0, 3)) == 0:
        doc["board"] = draw(TOML_VALUES)
    for section in draw(st.lists(st.sampled_from(sorted(keys) + ["bogus", "__class__", "path", "validated"]),
                                 min_size=1, max_size=3, unique=True)):
        known = keys.get(section, ["x"])
        names = draw(st.lists(st.sampled_from(known) | st.text(max_size=6), max_size=len(known), unique=True))
        doc[section] = {k: draw(TOML_VALUES) for k in names}
    return doc


@pytest.fixture(scope="module")
def toml_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("toml")


@fuzz_settings(400)
@given(doc=toml_documents())
def test_edge_toml_documents(toml_dir, doc):
    """edge.toml documents over the real sections and keys (and a few that are not), values of any TOML
    type: loaded or refused with a ConfigError; what loads is what the daemon can run; no default changes."""
    from edge.asr.modeldir import check_chunk_size
    from edge.daemon.config import DaemonConfig

    path = toml_dir / "edge.toml"
    text = toml_document(doc)
    path.write_text(text, encoding="utf-8")
    defaults = repr(DaemonConfig())
    result = {}

    def load():
        result["cfg"] = DaemonConfig.load(str(path))

    Outcomes().check(f"edge.toml:\n{text}", load)
    if "cfg" in result and result["cfg"].model.chunk_size:  # what loads is what the daemon can run
        check_chunk_size(result["cfg"].model.chunk_size)
    assert repr(DaemonConfig()) == defaults, f"loading changed the defaults:\n{text}"


def test_edge_toml_template_mutations(tmp_path):
    from edge.daemon.config import DaemonConfig

    src = Path(TEMPLATE).read_bytes()
    rng = random.Random(4)
    out = Outcomes()
    for i in range(count(600)):
        path = save(str(tmp_path / f"case{i}.toml"), mutate(src, rng))
        out.check(f"edge.toml case {i}", functools.partial(DaemonConfig.load, path), path)
        os.unlink(path)
    assert out["ok"] and out["ConfigError"], out


# == 5. TVM bundle manifests =========================================================================

def fake_bundle(path) -> tuple[str, dict]:
    """A bundle dir as `paraedge compile` lays it out, without compiling (the loader checks the manifest,
    the board and the files first): the manifest is returned, for the test to edit and write."""
    from edge.asr.modeldir import sha256_file

    b = str(path)
    os.makedirs(b)
    for name in ("config.yaml", "am.mvn", "tokens.json"):
        shutil.copy(os.path.join(DEMO, name), os.path.join(b, name))
    with open(os.path.join(b, "model.so"), "wb") as f:
        f.write(b"\x7fELF not really")
    np.savez(os.path.join(b, "params.npz"), w=np.zeros(3, np.float32))
    files = {n: sha256_file(os.path.join(b, n)) for n in ("config.yaml", "am.mvn", "tokens.json", "model.so", "params.npz")}
    manifest = {
        "format": BUNDLE_FORMAT,
        "board": {"name": "x86-host", "arch": "x86_64", "features": [], "cc": "g++"},
        "target": {"kind": "llvm"}, "host": None,
        "model": {"type": "ParaformerStreaming", "streaming": True, "int8": False, "d_model": 256, "vocab_size": len(demo_tokens())},
        "functions": [{"name": "encoder", "kind": "encoder", "lengths": {"T": 8}, "inputs": {"x": [1, "T", 560]},
                       "params": ["w"]},
                      {"name": "stream_decoder", "kind": "stream_decoder", "lengths": {"T": 8, "N": 4}, "kernel": 11,
                       "caches": 3, "params": ["w"]}],
        "files": files,
    }
    return b, manifest


JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                         st.text(max_size=12),
                         st.sampled_from(["", ".", "..", "../x", "/etc/hostname", "model.so", "./model.so", "a\\..\\b",
                                          "encoder", "decoder", "stream_decoder", "llvm", "cuda", "x86_64", "aarch64",
                                          "sm_87", "w", "0" * 64]))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                           max_leaves=6)


def _json_paths(tree, prefix=()):
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for k, v in items:
        yield prefix + (k,)
        yield from _json_paths(v, prefix + (k,))


def edit_json(data, doc):
    """1-3 structural edits: a value replaced by one of another type, a key deleted or added."""
    for _ in range(data.draw(st.integers(1, 3))):
        paths = list(_json_paths(doc))
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        holder = doc
        for p in path[:-1]:
            holder = holder[p]
        op = data.draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if op == "delete":
            del holder[path[-1]]
        elif op == "add" and isinstance(holder, dict):
            key = data.draw(st.sampled_from(["extra", "name", "kind", "T", "N", "params", "d_model", "/etc/hostname",
                                             "../outside", "model.so "]) | st.text(max_size=8))
            holder[key] = data.draw(JSON_VALUES)
        else:
            holder[path[-1]] = data.draw(JSON_VALUES)
    return doc


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return fake_bundle(tmp_path_factory.mktemp("tvm") / "bundle")


def write_manifest(b: str, manifest) -> str:
    text = json.dumps(manifest, allow_nan=True)
    with open(os.path.join(b, "manifest.json"), "w", encoding="utf-8") as f:
        f.write(text)
    return text


@fuzz_settings(300)
@given(data=st.data())
def test_manifest_structure(bundle, data):
    from edge.backends.tvm import read_manifest

    b, manifest = bundle
    text = write_manifest(b, edit_json(data, json.loads(json.dumps(manifest))))
    Outcomes().check(f"manifest.json {text}", lambda: read_manifest(b))


@fuzz_settings(60)
@given(data=st.data())
def test_manifest_structure_through_the_loader(bundle, data):
    """The same edits, loaded as the CLI does (Recognizer(bundle, "tvm")): board, model and functions
    entries are read before the TVM runtime is; the fake model.so is refused last."""
    from edge.asr.recognizer import Recognizer

    b, manifest = bundle
    text = write_manifest(b, edit_json(data, json.loads(json.dumps(manifest))))
    Outcomes().check(f"bundle with manifest.json {text}", lambda: Recognizer(b, "tvm"))


def test_manifest_byte_mutations(tmp_path):
    from edge.backends.tvm import read_manifest

    b, manifest = fake_bundle(tmp_path / "bundle")
    src = json.dumps(manifest, indent=1).encode()
    rng = random.Random(5)
    out = Outcomes()
    for i in range(count(300)):
        save(os.path.join(b, "manifest.json"), mutate(src, rng))
        out.check(f"manifest.json byte case {i}", lambda: read_manifest(b), os.path.join(b, "manifest.json"))
    assert out["ok"] and out["ModelError"], out


# == 6. board profiles ===============================================================================

def test_board_profile_mutations(tmp_path):
    from edge.boards import load_board

    src = Path(BOARD).read_bytes()
    rng = random.Random(6)
    out = Outcomes()
    for i in range(count(600)):
        path = save(str(tmp_path / "raspberry-pi-5.toml"), mutate(src, rng))
        out.check(f"board case {i}", functools.partial(load_board, path), path)
    assert out["ok"] and out["BoardError"], out


@fuzz_settings(400)
@given(data=st.data())
def test_board_profile_structure(data):
    from edge.boards import _load_toml, parse_board

    profile = edit_json(data, _load_toml(BOARD))
    Outcomes().check(f"board profile {profile!r:.2000}", lambda: parse_board(profile, "fuzz.toml"))


# == regressions: the minimised inputs of what the fuzzing above found ================================

@pytest.mark.parametrize("base, rate", [("float32", r) for r in (0xFFFFFFFF, 4245083861, 0x7FFFFFFF, 384001, 7999, 1, 0)]
                         # PCM: scipy refuses a byte rate (rate x 2) that does not fit its 32 bits itself
                         + [("pcm16", r) for r in (0x7FFFFFFF, 384001, 7999, 1, 0)])
def test_absurd_wav_sample_rate_is_refused_before_resampling(tmp_path, wavs, base, rate):
    """Was a MemoryError (4e9 Hz: resample_poly's filter wanted 525 GiB), or seconds and GBs of work."""
    path = save(str(tmp_path / "rate.wav"), set_field(wavs[base], "consistent_rate", rate))
    from edge.asr.audio import load_audio, open_audio

    for fn in (load_audio, open_audio):
        t0 = time.perf_counter()
        with pytest.raises(AudioError, match=f"sample rate {rate} Hz is outside 8000..384000 Hz"):
            fn(path)
        assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize("rate", [8000, 384000])
def test_wav_sample_rate_range_edges_still_load(tmp_path, wavs, rate):
    from edge.asr.audio import load_audio

    x, info = load_audio(save(str(tmp_path / "rate.wav"), set_field(wavs["pcm16"], "consistent_rate", rate)))
    assert info.sample_rate == rate and x.size


def test_float64_wav_beyond_float32_is_one_line(tmp_path):
    """The cast to float32 overflowed with a RuntimeWarning: two extra stderr lines before the error."""
    x = np.zeros(16000)
    x[5] = 1e300
    path = save(str(tmp_path / "huge.wav"), _wav_bytes(16000, x))
    r = cli("transcribe", path, "--model", DEMO)
    assert r.returncode == 2
    assert_cli_property(r, "float64 1e300", bad=path)


NULL_KEYS = [("encoder_conf", "num_blocks"), ("encoder_conf", "sanm_shfit"), ("decoder_conf", "kernel_size"),
             ("predictor_conf", "tail_threshold"), ("predictor_conf", "threshold"), ("predictor_conf", "l_order")]


@pytest.mark.parametrize("section, key", NULL_KEYS)
def test_null_config_value_is_its_default(tmp_path, speech, recognizers, section, key):
    """A YAML null passed validation as "the default", then int(None)/float(None) raised TypeError
    in the backends and the CIF config. The validated value is now what they read."""
    d = model_copy(tmp_path / "m")
    with open(os.path.join(DEMO, "config.yaml"), encoding="utf-8") as f:
        conf = yaml.safe_load(f)
    default = {"num_blocks": 6, "sanm_shfit": 0, "kernel_size": 21, "tail_threshold": 0.0, "threshold": 1.0, "l_order": 1}[key]
    same = conf[section].get(key, default) == default
    conf[section][key] = None
    save(os.path.join(d, "config.yaml"), yaml.safe_dump(conf).encode())
    for backend in ("ref", "onnxruntime"):
        try:
            text = decode_with(d, backend, speech)
        except ModelError as exc:  # a default the weights or the ONNX caches do not fit: named, one line
            assert not same and "\n" not in str(exc), exc
            continue
        if same:
            assert text == recognizers[backend].transcribe(speech).text


def test_npz_header_with_an_unbalanced_bracket(tmp_path, speech):
    """numpy tokenizes the .npy header: "{'descr': '<f4', 'shape': (3," raised tokenize.TokenError."""
    d = model_copy(tmp_path / "m")
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (3,"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header) + 1) + header + b"\n" + b"\0" * 12
    with zipfile.ZipFile(save(os.path.join(d, "model.npz"), b""), "w") as z:
        z.writestr("encoder.after_norm.weight.npy", npy)
    with pytest.raises(ModelError, match="model.npz: corrupt or truncated weights file"):
        decode_with(d, "ref", speech)


def _onnx_copy(tmp_path, edit) -> str:
    d = model_copy(tmp_path / "m")
    src = Path(DEMO, "model_quant.onnx").read_bytes()
    save(os.path.join(d, "model_quant.onnx"), edit(src))
    return d


def test_onnx_with_a_non_utf8_op_type_is_one_line(tmp_path):
    """onnxruntime's message quoted the corrupt bytes: a UnicodeDecodeError, which its provider
    fallback answered by printing a 4-line "EP Error" banner to stdout before the error."""
    def corrupt(src):
        i = src.index(b"\x22\x08Constant")  # NodeProto.op_type (field 4), 8 bytes
        return src[:i] + b"\x22\x08Co\xffstant" + src[i + 10:]

    d = _onnx_copy(tmp_path, corrupt)
    r = cli("transcribe", SAMPLE, "--model", d, "--backend", "onnxruntime", "--int8")
    assert r.returncode == 2 and r.stdout == b"", r.stdout
    assert_cli_property(r, "non-UTF-8 op_type", bad="model_quant.onnx: onnxruntime cannot load it")


def test_onnx_graph_failing_at_run_is_a_model_error(tmp_path, speech):
    """A static dim the graph contradicts (speech_lengths: [257]) passed the load checks and raised
    onnxruntime's InvalidArgument mid-decode (a traceback, exit 1); a node failing logged [E:...] lines."""
    onnx = pytest.importorskip("onnx")
    model = onnx.load(os.path.join(DEMO, "model_quant.onnx"))
    next(i for i in model.graph.input if i.name == "speech_lengths").type.tensor_type.shape.dim[0].dim_value = 257
    d = _onnx_copy(tmp_path, lambda _: model.SerializeToString())
    with pytest.raises(ModelError, match="model_quant.onnx: onnxruntime failed running it"):
        decode_with(d, "onnxruntime", speech)
    r = cli("transcribe", SAMPLE, "--model", d, "--backend", "onnxruntime", "--int8")
    assert r.returncode == 2
    assert_cli_property(r, "speech_lengths 257", bad="model_quant.onnx")


def _pt_with_central_directory_edit(src: bytes, offset: int, value: bytes) -> bytes:
    b = bytearray(src)
    cd = b.index(b"PK\x01\x02")  # the first central directory entry
    b[cd + offset:cd + offset + len(value)] = value
    return bytes(b)


def test_model_pt_corrupt_zip_directory_is_a_model_error(tmp_path, small_pt):
    """zipfile.ZipFile() raised NotImplementedError for a "version needed" above 6.3, and
    UnicodeDecodeError for a name flagged UTF-8 that is not: only BadZipFile/OSError were caught."""
    from edge.asr.torchfile import load_state_dict

    version = _pt_with_central_directory_edit(small_pt, 6, struct.pack("<H", 255))  # version needed: 25.5
    flags = int.from_bytes(small_pt[small_pt.index(b"PK\x01\x02") + 8:][:2], "little")
    name_at = 46  # the name follows the 46-byte fixed part
    utf8 = _pt_with_central_directory_edit(small_pt, 8, struct.pack("<H", flags | 0x800))
    utf8 = _pt_with_central_directory_edit(utf8, name_at, b"\xff")
    for what, data in (("version", version), ("utf8", utf8)):
        path = save(str(tmp_path / f"{what}.pt"), data)
        with pytest.raises(ModelError, match="not a PyTorch zip checkpoint or truncated") as e:
            load_state_dict(path)
        assert "\n" not in str(e.value)


class _Ref:
    """A pickled persistent id, as torch.save writes storages (and, crafted, anything else)."""

    def __init__(self, pid):
        self.pid = pid


class _Call:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, _Ref) else None


def test_model_pt_persistent_id_holding_a_tensor_is_one_line(tmp_path):
    """A mutated pickle made a tensor part of a persistent id; the error quoted the id's repr, and an
    array's repr is several lines."""
    torch = pytest.importorskip("torch", reason="the crafted pickle names torch's globals")
    from edge.asr.torchfile import load_state_dict

    storage = _Ref(("storage", torch.FloatStorage, "0", "cpu", 12))
    tensor = _Call(torch._utils._rebuild_tensor_v2, storage, 0, (3, 4), (4, 1), False, collections.OrderedDict())
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump({"w": _Ref(("a.weight", tensor))})
    path = str(tmp_path / "m.pt")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/data/0", np.arange(12, dtype="<f4").tobytes())
    with pytest.raises(ModelError, match="unknown persistent id") as e:
        load_state_dict(path)
    assert len(str(e.value).splitlines()) == 1, str(e.value)


@pytest.mark.parametrize("text", ["[__class__]\n[__class__.model]\nthreads = 2\n", "[__class__]\nboard = \"x\"\n",
                                  "[validated]\n"])
def test_edge_toml_cannot_reach_the_class(tmp_path, text):
    """A section name went through getattr(): [__class__] reached DaemonConfig itself, setting its class
    attributes or raising AttributeError (a default_factory field has no class attribute)."""
    from edge.daemon.config import ConfigError, DaemonConfig

    before = dict(vars(DaemonConfig))
    path = tmp_path / "edge.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="unknown section"):
        DaemonConfig.load(str(path))
    assert dict(vars(DaemonConfig)) == before


def test_edge_toml_board_must_be_a_string(tmp_path):
    from edge.daemon.config import ConfigError, DaemonConfig

    path = tmp_path / "edge.toml"
    path.write_text("board = [1, 2]\n")
    with pytest.raises(ConfigError, match="board should be a string"):
        DaemonConfig.load(str(path))


@pytest.mark.parametrize("value", ["[0, 10, 99999999999]", "[0, inf, 5]", "[1001, 10, 5]"])
def test_absurd_chunk_size_is_refused(tmp_path, value):
    """[0, 10, 99999999999] passed and the stream allocated its context (204 TiB: a MemoryError
    traceback); int(inf) raised OverflowError, which the check did not catch."""
    from edge.daemon.config import ConfigError, DaemonConfig

    path = tmp_path / "edge.toml"
    path.write_text(f"[model]\nchunk_size = {value}\n")
    with pytest.raises(ConfigError, match="chunk_size must be"):
        DaemonConfig.load(str(path))


@pytest.mark.parametrize("backend, int8", [("ref", False), ("onnxruntime", True)])
@pytest.mark.parametrize("extra", [0, 500])
def test_chunk_size_without_context_finishes(backend, int8, extra):
    """chunk_size [0, 10, 0] keeps no context frames, so a final chunk with under a frame of new
    audio had an empty window: the reference raised "zero-size array" from its softmax, onnxruntime
    failed as if the model were corrupt, and the daemon lost the utterance. The final now only
    flushes CIF's tail; the partial tokens stay a prefix of the final's."""
    from edge.asr.audio import load_audio
    from edge.asr.recognizer import Recognizer

    x = load_audio(SAMPLE)[0]
    x = x[: len(x) // 9600 * 9600 + extra]  # whole 600 ms chunks, then under one 60 ms frame
    rec = Recognizer(DEMO, backend, int8=int8, threads=1)
    stream = rec.stream(chunk_size=(0, 10, 0))
    partial = list(stream.accept(x))
    stream.finish()
    ids = stream.result().token_ids
    assert ids[: len(partial)] == partial and ids
    assert ids == Recognizer(DEMO).transcribe_streaming(x, chunk_size=(0, 10, 0)).token_ids


def test_cli_absurd_chunk_size_is_one_line():
    r = cli("transcribe", SAMPLE, "--model", DEMO, "--streaming", "--chunk-size", "0,10,99999999999")
    assert r.returncode == 2
    assert_cli_property(r, "--chunk-size 0,10,99999999999")
    assert "chunk_size must be" in r.stderr.decode()


@pytest.mark.parametrize("text, needle", [
    ("name = \"b\"\ncpu = 5\n", "[cpu] must be a table"),
    (("name = \"b\"\n[runtime]\nthreads = 1\nmemory_mb = 1\n[cpu]\narch = \"x86_64\"\nfeatures = []\n[tvm]\ncc = \"g++\"\n"
      "target = { kind = \"llvm\" }\nhost = \"x86_64\"\n"), "[tvm] host must be a table"),
    ("name = \"b\"\ntvm = [1]\n[cpu]\narch = \"x86_64\"\nfeatures = []\n", "[tvm] must be a table"),
    (Path(BOARD).read_text(encoding="utf-8").replace("sample_rate = 16000", "sample_rate = \"abc\""),
     "[audio] sample_rate must be a positive integer"),
    (Path(BOARD).read_text(encoding="utf-8").replace("sample_rate = 16000", "sample_rate = [16000]"),
     "[audio] sample_rate must be a positive integer"),
    (b"name = \"\xff\"\n", "not UTF-8"),
])
def test_board_profile_of_the_wrong_shape_is_a_board_error(tmp_path, text, needle):
    """Sections of another type raised AttributeError ('int' object has no attribute 'get'), int() on a
    sample_rate TypeError/ValueError, dict() on a string host ValueError, a binary file UnicodeDecodeError."""
    from edge.boards import BoardError, load_board

    path = tmp_path / "board.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(BoardError) as e:
        load_board(str(path))
    assert needle in str(e.value), str(e.value)


def test_board_profile_that_is_a_directory(tmp_path):
    from edge.boards import BoardError, load_board

    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(BoardError, match="cannot read"):
        load_board(str(tmp_path / "dir.toml"))


def _manifest_case(case: str, m: dict) -> None:
    if case == "d_model_text":
        m["model"]["d_model"] = "abc"
    elif case == "d_model_nan":
        m["model"]["d_model"] = float("nan")
    elif case == "host_int":
        m["host"] = 249
    elif case == "host_str":
        m["host"] = "x86_64"
    elif case == "function_without_kind":
        del m["functions"][0]["kind"]
    elif case == "function_T_text":
        m["functions"][1]["lengths"]["T"] = "8"
    elif case == "proc_self_mem":
        m["files"]["/proc/self/mem"] = "0" * 64
    elif case == "absolute":
        m["files"]["/etc/hostname"] = "0" * 64


MANIFEST_CASES = {  # case: what the one-line error says
    "d_model_text": "model.d_model must be an integer", "d_model_nan": "model.d_model must be an integer",
    "host_int": "[tvm] host must be a table", "host_str": "[tvm] host must be a table",
    "function_without_kind": "'functions' entry", "function_T_text": "'functions' entry",
    "proc_self_mem": "names inside the bundle", "absolute": "names inside the bundle",
}


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_crafted_manifest_is_a_model_error(tmp_path, case):
    """Each was a TypeError/ValueError/OSError: int("abc") and int(nan) on model.d_model, iterating an
    int host, dict("x86_64"), a function without a kind indexed at decode time, and an absolute name
    read outside the bundle (/proc/self/mem: OSError EIO while hashing it)."""
    from edge.asr.recognizer import Recognizer

    b, m = fake_bundle(tmp_path / "bundle")
    _manifest_case(case, m)
    write_manifest(b, m)
    with pytest.raises(ModelError) as e:
        Recognizer(b, "tvm")
    assert MANIFEST_CASES[case] in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_deeply_nested_manifest_is_a_model_error(tmp_path):
    from edge.backends.tvm import read_manifest

    b, _ = fake_bundle(tmp_path / "bundle")
    with open(os.path.join(b, "manifest.json"), "w") as f:
        f.write("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ModelError, match="not valid JSON"):
        read_manifest(b)


# -- names and values from a file, quoted in an error: one line whatever they hold --------------------

def test_edge_toml_key_with_a_control_character_is_one_line(tmp_path):
    """A quoted TOML key may hold any character: `"\\x1e" = false` split the unknown-key error in two."""
    from edge.daemon.config import ConfigError, DaemonConfig

    for text in ('[audio]\n"\\u001e" = false\n', '["a\\nb"]\nx = 1\n', '[model]\nbackend = "a\\nb"\n'):
        path = tmp_path / "edge.toml"
        path.write_text(text)
        with pytest.raises(ConfigError) as e:
            DaemonConfig.load(str(path))
        assert len(str(e.value).splitlines()) == 1, str(e.value)


@pytest.mark.parametrize("section, key", [(None, "model"), (None, "encoder"), ("encoder_conf", "input_layer"),
                                          ("frontend_conf", "window")])
def test_config_yaml_string_with_a_newline_is_one_line(tmp_path, speech, section, key):
    d = model_copy(tmp_path / "m")
    with open(os.path.join(DEMO, "config.yaml"), encoding="utf-8") as f:
        conf = yaml.safe_load(f)
    (conf[section] if section else conf)[key] = "two\nlines"
    save(os.path.join(d, "config.yaml"), yaml.safe_dump(conf).encode())
    with pytest.raises(ModelError) as e:
        decode_with(d, "ref", speech)
    assert len(str(e.value).splitlines()) == 1 and key in str(e.value), str(e.value)


def test_npz_member_name_with_a_newline_is_one_line(tmp_path, speech):
    d = model_copy(tmp_path / "m")
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (10**9,)})
    with zipfile.ZipFile(save(os.path.join(d, "model.npz"), b""), "w") as z:
        z.writestr("two\nlines.npy", buf.getvalue())
    with pytest.raises(ModelError, match="claims shape") as e:
        decode_with(d, "ref", speech)
    assert len(str(e.value).splitlines()) == 1, str(e.value)


@pytest.mark.parametrize("edit, needle", [
    (lambda m: m["board"].update(name="x86\nhost"), "control character"),
    (lambda m: m["board"].update(features=["avx2\n"]), "[cpu] features"),
    (lambda m: m["files"].update({"model.so\n": "0" * 64}), "names inside the bundle"),
    (lambda m: m["functions"][0]["params"].append("w\n"), "'functions' entry"),
])
def test_manifest_names_with_a_newline_are_one_line(tmp_path, edit, needle):
    from edge.asr.recognizer import Recognizer

    b, m = fake_bundle(tmp_path / "bundle")
    edit(m)
    write_manifest(b, m)
    with pytest.raises(ModelError) as e:
        Recognizer(b, "tvm")
    assert needle in str(e.value) and len(str(e.value).splitlines()) == 1, str(e.value)


@pytest.mark.parametrize("case", ["memo_index", "bytearray8", "pickle_bomb"])
def test_model_pt_pickle_cannot_size_an_allocation(tmp_path, case):
    """One mutated byte made a LONG_BINPUT of index 1769300581: the C unpickler grew its memo table to
    that index (28 GB, zeroed; a MemoryError under the 4 GB limit, the OOM killer without one). Read by
    the pure-Python unpickler now; its one claim-sized buffer (BYTEARRAY8) and a deflated data.pkl
    larger than the checkpoint's budget are refused. Run in a child under the memory limit."""
    pkl = {"memo_index": b"\x80\x02}r" + struct.pack("<I", 1769300581) + b".",  # {} memoized at 1769300581
           "bytearray8": b"\x80\x05\x96" + struct.pack("<Q", 3 << 30) + b"abc",
           "pickle_bomb": b"\x80\x02}." + b"\0" * (200 << 20)}[case]
    path = str(tmp_path / "m.pt")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", pkl)
    code = PT_CHILD.format(limit=MEM_LIMIT, timeout=CASE_TIMEOUT_S)
    p = subprocess.run([sys.executable, "-c", code], input=json.dumps([[case, path]]), capture_output=True, text=True,
                       cwd=ROOT, timeout=120, check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    r = next(json.loads(line) for line in p.stdout.splitlines() if '"case"' in line)
    expect = {"memo_index": "ok", "bytearray8": "ModelError", "pickle_bomb": "ModelError"}[case]
    assert r["result"] == expect and "MemoryError" not in r["msg"], r
