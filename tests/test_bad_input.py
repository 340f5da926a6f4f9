"""Bad input gets one line and loses nothing: corrupt audio, odd files, absurd configuration values,
crafted bundle manifests. Each case runs the real CLI or loader; the batch around a bad file still
decodes."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.asr.audio import load_audio, write_wav
from edge.asr.modeldir import sha256_file
from edge.backends.tvm import BUNDLE_FORMAT
from edge.daemon.config import ConfigError, DaemonConfig
from edge.errors import AudioError, ModelError, ParaEdgeError
from tests.conftest import ROOT

DEMO = os.path.join(ROOT, "models", "demo")
SAMPLE = os.path.join(DEMO, "samples", "02_alexa_en.wav")


def _cli(*args, env=None, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, cwd=cwd, env=env, timeout=300)


def _one_error_line(r) -> str:
    err = r.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("paraedge: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _float_wav(path, x):
    from scipy.io import wavfile

    wavfile.write(path, 16000, np.asarray(x, np.float32))
    return str(path)


@pytest.fixture(scope="module")
def good_wav(tmp_path_factory):
    x, _ = load_audio(SAMPLE)
    path = str(tmp_path_factory.mktemp("wav") / "good.wav")
    write_wav(path, x[int(1.246 * 16000):])  # the command, after the wake word (samples.json)
    return path


# -- audio ------------------------------------------------------------------------------------
def test_huge_finite_float_samples_fail_alone_and_the_batch_goes_on(tmp_path, good_wav):
    x = load_audio(good_wav)[0].copy()
    x[1000] = 3e36  # one flipped exponent byte in a float WAV
    bad = _float_wav(tmp_path / "flipped.wav", x)
    r = _cli("transcribe", "--model", DEMO, "--backend", "onnxruntime", "--int8", bad, good_wav)
    assert r.returncode == 2
    assert "flipped.wav" in _one_error_line(r) and "corrupt float WAV" in r.stderr.decode()
    assert good_wav in r.stdout.decode() and r.stdout.decode().split("\t")[-1].strip()


def test_int16_scaled_float_wav_still_decodes(tmp_path, good_wav):
    """Some tools write float WAVs on the int16 scale: loud, but a real recording."""
    x = load_audio(good_wav)[0] * 32768.0
    r = _cli("transcribe", "--model", DEMO, "--backend", "onnxruntime", "--int8", _float_wav(tmp_path / "loud.wav", x))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("kind", ["directory", "fifo", "device"])
def test_not_a_regular_file_is_named_as_such(tmp_path, kind):
    path = {"directory": str(tmp_path), "device": "/dev/zero"}.get(kind)
    if kind == "fifo":
        path = str(tmp_path / "pipe.wav")
        os.mkfifo(path)
    with pytest.raises(AudioError) as e:
        load_audio(path)
    assert "no such file" not in str(e.value)
    assert ("directory" if kind == "directory" else "not a regular file") in str(e.value)


@pytest.mark.parametrize("which", ["config.yaml", "hotwords", "grammar", "edge.toml"])
def test_a_fifo_in_place_of_a_text_file_is_refused_not_waited_on(tmp_path, which):
    """Each of these was opened and read whole: a FIFO there blocked `info`, `transcribe` and
    `doctor` forever (no writer ever comes). The subprocess timeout is what would catch a hang."""
    model = DEMO
    if which == "config.yaml":
        model = str(tmp_path / "model")
        shutil.copytree(DEMO, model, ignore=shutil.ignore_patterns("samples", "*.png", "*.csv"))
        os.remove(os.path.join(model, "config.yaml"))
        fifo = os.path.join(model, "config.yaml")
    else:
        fifo = str(tmp_path / {"hotwords": "hot.txt", "grammar": "g.yaml", "edge.toml": "edge.toml"}[which])
    os.mkfifo(fifo)
    args = {"config.yaml": ["info", model], "hotwords": ["transcribe", "-m", model, "--hotwords", fifo, SAMPLE],
            "grammar": ["transcribe", "-m", model, "--grammar", fifo, SAMPLE], "edge.toml": ["doctor", "-c", fifo]}[which]
    r = subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2
    line = _one_error_line(r)
    assert fifo in line and "not a regular file" in line


def test_control_characters_in_a_grammar_are_one_line_with_the_place(tmp_path):
    from edge.grammar.spec import GrammarError, load_spec
    from tests.conftest import demo_tokens

    path = tmp_path / "g.yaml"
    path.write_bytes(Path(DEMO, "grammar.yaml").read_bytes().replace(b"intents:", b"intents:\x07", 1))
    with pytest.raises(GrammarError, match=r"g\.yaml:\d+: bad YAML: .*'\\x07'.*remove the control character"):
        load_spec(str(path), demo_tokens())


def test_a_deeply_nested_edge_toml_is_one_line(tmp_path):
    """tomllib recurses per nesting level: 5,000 '[' raised RecursionError out of `paraedge doctor`."""
    path = tmp_path / "edge.toml"
    path.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        DaemonConfig.load(str(path))


@pytest.mark.parametrize("args, needle", [
    (["run", "--input", SAMPLE, "--fast", "--duration", "nan"], "--duration"),  # ValueError traceback
    (["run", "--input", SAMPLE, "--fast", "--duration", "1e308"], "--duration"),  # OverflowError traceback
    (["run", "--input", SAMPLE, "--fast", "--duration", "-1"], "--duration"),  # stopped at once, exit 0
    (["profile", "-m", DEMO, "--audio", SAMPLE, "-b", "ref", "--runs", "0"], "--runs"),  # ZeroDivisionError
    (["profile", "-m", DEMO, "--audio", SAMPLE, "-b", "ref", "--warmup", "-1"], "--warmup"),  # IndexError
])
def test_absurd_counts_and_durations_are_refused(args, needle):
    r = _cli(*args)
    err = r.stderr.decode()
    assert r.returncode == 2 and "Traceback" not in err and f"argument {needle}:" in err, err


@pytest.mark.parametrize("args", [["profile", "-m", DEMO, "--audio", SAMPLE, "-b", "ref", "--runs", "1", "-o"],
                                  ["demo", "--out"]])
def test_an_output_dir_that_is_a_file_is_refused_before_any_work(tmp_path, args):
    """os.makedirs raised FileExistsError after the whole run; the file is left as it was."""
    path = tmp_path / "keep.txt"
    path.write_text("mine")
    r = _cli(*args, str(path))
    assert r.returncode == 2 and str(path) in _one_error_line(r) and r.stdout == b""
    assert path.read_text() == "mine"


@pytest.mark.parametrize("args, needle", [
    (["--chunk-size", "0,10,-5"], "--chunk-size"),  # without --streaming it was ignored, unchecked
    (["-b", "ref", "--int8"], "--int8"),  # ignored: the reference is fp32
])
def test_options_that_would_be_ignored_are_refused(good_wav, args, needle):
    r = _cli("transcribe", "--model", DEMO, *args, good_wav)
    assert r.returncode == 2 and needle in _one_error_line(r)


def test_a_hotword_list_with_a_bom_loads(tmp_path, good_wav):
    """Notepad's UTF-8 starts with a BOM: it was read as part of the first hotword ("'\\ufeff' is not a token")."""
    path = tmp_path / "hot.txt"
    path.write_bytes("\ufeffopen the window\t2.0\n".encode("utf-8"))
    r = _cli("transcribe", "--model", DEMO, "--hotwords", str(path), good_wav)
    assert r.returncode == 0, r.stderr


def test_wav_errors_say_what_is_wrong_in_the_users_terms(tmp_path, good_wav):
    """scipy's own words leaked: "cannot access local variable 'data'..." for a file with no data chunk."""
    raw = open(good_wav, "rb").read()
    nodata = tmp_path / "nodata.wav"
    head = raw[: raw.index(b"data")]  # RIFF + fmt, then the end, the RIFF size saying so
    nodata.write_bytes(head[:4] + struct.pack("<I", len(head) - 8) + head[8:])
    with pytest.raises(AudioError, match="no 'data' chunk"):
        load_audio(str(nodata))


def test_a_non_float_weight_is_named_not_reported_missing(tmp_path):
    from edge.asr.recognizer import Recognizer

    model = tmp_path / "m"
    shutil.copytree(DEMO, model, ignore=shutil.ignore_patterns("samples", "*.png", "*.csv"))
    w = dict(np.load(model / "model.npz"))
    key = "encoder.encoders.1.feed_forward.w_1.bias"
    w[key] = w[key].astype(np.int64)
    np.savez(model / "model.npz", **w)
    with pytest.raises(ModelError, match=f"'{re.escape(key)}' is int64, not floating point"):
        Recognizer(str(model))


@pytest.fixture(scope="module")
def int8_rec():
    from edge.asr.recognizer import Recognizer

    return Recognizer(DEMO, "onnxruntime", int8=True, threads=1)


@pytest.mark.parametrize("make, needle", [
    (lambda x: (x * 32767).astype(np.int16), "x / 32768"),  # decoded "twenty navigate the", unscaled
    (lambda x: np.stack([x, x]), "one mono channel"),  # channels first: decoded ""
    (lambda x: np.stack([x, x], 1), "one mono channel"),  # a ValueError from the kernels
    (lambda x: SAMPLE, "load_audio(path)"),  # "could not convert string to float"
    (lambda x: None, "float array"),  # TypeError: has no len()
    (lambda x: x.astype(np.complex64), "float array"),  # a ComplexWarning, then a decode
])
def test_what_the_api_cannot_decode_is_an_audio_error(int8_rec, make, needle):
    x = load_audio(SAMPLE)[0]
    assert int8_rec.transcribe(x[:, None]).text == int8_rec.transcribe(x).text  # [N, 1] is mono
    for call in (int8_rec.transcribe, lambda a: int8_rec.stream().accept(a)):  # a stream interleaved [N, 2]
        with pytest.raises(AudioError, match=re.escape(needle)):
            call(make(x))


@pytest.mark.parametrize("call, err", [
    (lambda rec, x: rec.transcribe_streaming(x, hop=0), ParaEdgeError),  # ValueError from range()
    (lambda rec, x: rec.transcribe_streaming(x, hop=-5), ParaEdgeError),  # silently ""
    (lambda rec, x: rec.accept_batch(["x"], [x]), ParaEdgeError),  # AttributeError
    (lambda rec, x: type(rec)(None), ModelError),  # TypeError from os.fspath
    (lambda rec, x: type(rec)(DEMO, "onnxruntime", int8="yes"), ParaEdgeError),  # taken as True
])
def test_api_misuse_is_a_paraedge_error(int8_rec, call, err):
    with pytest.raises(err):
        call(int8_rec, load_audio(SAMPLE)[0])


def test_numpy_integers_are_thread_counts():
    from edge.platform import check_threads

    assert check_threads(np.int64(2)) == 2  # "must be a whole number of threads, got 2"


def test_a_hotwords_argument_that_is_not_a_path_leaves_the_descriptors_alone(tmp_path):
    """Recognizer(M, hotwords=2) went to open(2): the error closed the process's own stderr."""
    from edge.asr.hotwords import HotwordError
    from edge.asr.recognizer import Recognizer

    for value in (2, ["打开"]):
        with pytest.raises(HotwordError, match="not a file path"):
            Recognizer(DEMO, hotwords=value)
    os.fstat(2)  # still open


def test_a_grammar_loaded_for_another_models_tokens_is_refused_at_construction(tmp_path):
    """It was accepted, then every transcribe failed on a log-posterior shape."""
    from edge.asr.recognizer import Recognizer
    from edge.grammar import Grammar
    from tests.conftest import demo_tokens

    g = Grammar.load(os.path.join(DEMO, "grammar.yaml"), demo_tokens() + ["extra"])
    with pytest.raises(ParaEdgeError, match="another model's tokens"):
        Recognizer(DEMO, grammar=g)


@pytest.mark.parametrize("content, needle", [
    ("[1, 2]", 'expected a JSON object with "model" and "micro"'),  # "list indices must be integers..."
    ('{"model": "x.tflite"}', "no 'micro' field"),  # "('micro')"
    (None, "not a regular file"),  # a FIFO: "not found"
])
def test_a_bad_wake_manifest_says_what_is_wrong(tmp_path, content, needle):
    path = tmp_path / "wake.json"
    os.mkfifo(path) if content is None else path.write_text(content)
    r = _cli("run", "--wake", str(path), "--input", SAMPLE, "--fast")
    assert r.returncode == 2 and needle in _one_error_line(r)


@pytest.mark.parametrize("args", [["--wake", "alexa", "--no-wake"], ["--input", SAMPLE, "--device", "0"]])
def test_run_options_that_contradict_are_refused(args):
    """Each pair was accepted and one of the two silently ignored."""
    r = _cli("run", *args, "--fast")
    assert r.returncode == 2 and b"not allowed with argument" in r.stderr


def test_non_utf8_file_name_with_json_does_not_lose_the_batch(tmp_path, good_wav):
    odd = os.path.join(os.fsencode(str(tmp_path)), b"caf\xe9.wav")
    shutil.copy(good_wav, odd)
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    r = _cli("transcribe", "--model", DEMO, "--backend", "onnxruntime", "--int8", "--json", os.fsdecode(odd), good_wav, env=env)
    assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr
    rows = [json.loads(line) for line in r.stdout.decode().splitlines()]
    assert len(rows) == 2 and rows[0]["file"].endswith("caf\\xe9.wav") and rows[0]["text"] == rows[1]["text"]


def test_nan_cif_weights_are_a_model_error():
    from edge.asr.cif import CifConfig, token_count

    with pytest.raises(ModelError, match="not finite"):
        token_count(np.array([0.5, np.nan], np.float32), CifConfig())


# -- threads and configuration ----------------------------------------------------------------
@pytest.mark.parametrize("threads", ["99999999999", "0", "100000"])
def test_absurd_thread_counts_on_the_command_line(good_wav, threads):
    r = _cli("transcribe", "--model", DEMO, "--threads", threads, good_wav)
    assert r.returncode == 2 and "threads" in _one_error_line(r)


@pytest.mark.parametrize("text, key", [
    ("[model]\nthreads = 9223372036854775807\n", "model.threads"),
    ("[model]\nthreads = 1e20\n", "model.threads"),
    ("[model]\nthreads = 1.5\n", "model.threads"),
    ("[model]\nthreads = 100000\n", "model.threads"),
    ("[model]\nthreads = true\n", "model.threads"),
    ("[wake]\nmodels = [1, 2]\n", "wake.models"),
    ("[audio]\nretry_max_s = -1\n", "audio.retry_max_s"),
    ("[audio]\nbuffer_s = nan\n", "audio.buffer_s"),
    ("[audio]\nbuffer_s = inf\n", "audio.buffer_s"),
    ("[vad]\ntrailing_silence_s = inf\n", "vad.trailing_silence_s"),
    ("[audio]\nsamplerate = -16000\n", "audio.samplerate"),
    ("[wake]\ncutoff = 2.0\n", "wake.cutoff"),
    ("[wake]\ncutoff = 1.0\n", "wake.cutoff"),  # passed, then failed naming okay_nabu.json
    ("[wake]\nmodels = [\"alexa\", \"alexa\"]\n", "wake.models"),
    ("[model]\nchunk_size = [false, true, true]\n", "chunk_size"),  # read as [0, 1, 1]
])
def test_absurd_config_values_are_refused(tmp_path, text, key):
    path = tmp_path / "edge.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        DaemonConfig.load(str(path))
    assert key in str(e.value)
    r = _cli("run", "--config", str(path), "--input", SAMPLE, "--fast")
    assert r.returncode == 2 and key in _one_error_line(r)


def test_non_utf8_config_is_one_line(tmp_path):
    path = tmp_path / "edge.toml"
    path.write_bytes(b"[model]\nbackend = \"\xff\xfe\"\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        DaemonConfig.load(str(path))


def test_good_config_values_still_load(tmp_path):
    path = tmp_path / "edge.toml"
    path.write_text("[model]\nthreads = 4\n[audio]\nbuffer_s = 5\nretry_max_s = 2.5\nsamplerate = 48000\n[vad]\ntrailing_silence_s = 0.3\n")
    cfg = DaemonConfig.load(str(path))
    assert cfg.model.threads == 4 and cfg.audio.buffer_s == 5.0 and isinstance(cfg.audio.buffer_s, float)


# -- TVM bundle manifests (checked before TVM, config.yaml or tokens are touched) -------------
def _fake_bundle(tmp_path, edit) -> str:
    b = tmp_path / "bundle"
    b.mkdir()
    for name in ("config.yaml", "am.mvn", "tokens.json"):
        shutil.copy(os.path.join(DEMO, name), b / name)
    (b / "model.so").write_bytes(b"\x7fELF not really")
    np.savez(b / "params.npz", w=np.zeros(3, np.float32))
    files = {n: sha256_file(b / n) for n in ("config.yaml", "am.mvn", "tokens.json", "model.so", "params.npz")}
    manifest = {"format": BUNDLE_FORMAT, "board": {"name": "x86-host", "arch": "x86_64", "features": [], "cc": "g++"},
                "target": {"kind": "llvm"}, "model": {"int8": False}, "functions": [], "files": files}
    edit(manifest, b)
    (b / "manifest.json").write_text(json.dumps(manifest))
    return str(b)


@pytest.mark.parametrize("case, expect", [
    ("board_string", "'board' must be a dict"),
    ("params_unlisted", "does not list params.npz"),
    ("tokens_unlisted", "does not list tokens.json"),
    ("path_escape", "names inside the bundle"),
    ("tokens_modified", "sha256 does not match"),
])
def test_crafted_manifests_fail_before_anything_is_parsed(tmp_path, case, expect):
    from edge.asr.recognizer import Recognizer

    def edit(m, b):
        if case == "board_string":
            m["board"] = "raspberry-pi-5"
        elif case == "params_unlisted":
            del m["files"]["params.npz"]
        elif case == "tokens_unlisted":
            del m["files"]["tokens.json"]
        elif case == "path_escape":
            m["files"]["../../etc/passwd"] = "0" * 64
        elif case == "tokens_modified":
            (b / "tokens.json").write_bytes(b"\xff not json")  # parsed first, it would be a JSON error

    bundle = _fake_bundle(tmp_path, edit)
    with pytest.raises(ModelError, match=expect.replace("(", r"\(").replace(")", r"\)")):
        Recognizer(bundle, "tvm")
    r = _cli("doctor", "--model", bundle, "--backend", "tvm")
    assert b"Traceback" not in r.stderr and expect.split()[0].encode() in r.stdout


def test_a_bundle_run_with_another_backend_says_so(tmp_path):
    from edge.asr.recognizer import Recognizer

    bundle = _fake_bundle(tmp_path, lambda m, b: None)
    with pytest.raises(ParaEdgeError, match="a TVM bundle .* backend tvm"):
        Recognizer(bundle, "onnxruntime")


# -- long input -------------------------------------------------------------------------------
def test_long_audio_is_cut_in_pauses():
    from edge.asr.recognizer import MAX_SEGMENT_S, segment_bounds

    rng = np.random.default_rng(0)
    x = rng.standard_normal(16000 * 95).astype(np.float32)
    x[16000 * 27 : 16000 * 27 + 4000] = 0  # a pause inside the first segment's search window
    bounds = segment_bounds(x)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(x)
    assert all(b[1] == c[0] for b, c in zip(bounds, bounds[1:]))
    assert all(0 < b - a <= MAX_SEGMENT_S * 16000 for a, b in bounds)
    assert 16000 * 27 < bounds[0][1] <= 16000 * 27 + 4000
    assert segment_bounds(x[: 16000 * 30]) == [(0, 16000 * 30)]


def test_ten_minutes_decode_in_bounded_memory(tmp_path):
    """Decoded whole, 10 minutes took 5.7 GB (onnxruntime INT8: attention is quadratic). In segments,
    read lazily from the WAV, it decodes; the peak RSS (README, hardening) is a measurement, not asserted here."""
    import json as _json

    with open(os.path.join(DEMO, "samples", "samples.json"), encoding="utf-8") as f:
        samples = _json.load(f)
    gap = np.zeros(int(0.6 * 16000), np.float32)
    cmds = [load_audio(os.path.join(DEMO, "samples", s["file"]))[0][int(s["command_start_s"] * 16000):] for s in samples]
    one = np.concatenate([c for cmd in cmds for c in (cmd, gap)])
    reps = int(np.ceil(600 * 16000 / len(one)))
    path = str(tmp_path / "long.wav")
    write_wav(path, np.tile(one, reps))
    r = _cli("transcribe", "--model", DEMO, "--backend", "onnxruntime", "--int8", "--threads", "1", "--json", path)
    assert r.returncode == 0, r.stderr.decode()[-1500:]
    row = _json.loads(r.stdout.decode())
    assert row["timings"]["segments"] >= 20  # at most 30 s each
    assert row["text"].count("navigate home") >= 0.9 * reps, row["text"][:500]
