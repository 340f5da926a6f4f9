"""Synthesizer families of tools/recipe/voices.py: every family renders, voices differ, the registry guards
the reserved held-out engines. A family that is not installed FAILS here (`make test` installs them all)."""

import subprocess

import numpy as np
import pytest
from paraedge_tools.recipe import voices as V

TEXT = {"en": "turn on the air conditioning", "zh": "打开空调"}
SLOW = {"kokoro"}   # ~1 s CPU per render
CASES = [pytest.param(f, lang, id=f"{f}-{lang}", marks=[pytest.mark.slow] if f in SLOW else [])
         for f, s in V.FAMILIES.items() for lang in ("en", "zh") if s.voices(lang)]


def _usable(name: str) -> V.Synth:
    s = V.get(name)
    reason = s.missing()
    if reason is not None:
        pytest.fail(f"synthesizer family {name} is not usable: {reason}")
    return s


def _check(x: np.ndarray, params: dict) -> None:
    assert isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim == 1
    assert np.all(np.isfinite(x))
    assert 0.4 <= len(x) / V.RATE <= 6.0, len(x) / V.RATE
    assert float(np.sqrt(np.mean(x ** 2))) > 1e-3
    assert 0.49 <= float(np.max(np.abs(x))) <= 0.91
    assert np.max(np.abs(x[:V.PAD // 2])) < 0.05 and np.max(np.abs(x[-V.PAD // 2:])) < 0.05   # silence kept at the ends
    assert isinstance(params, dict) and params


@pytest.mark.parametrize("name,lang", CASES)
def test_render_two_voices(name, lang):
    s = _usable(name)
    voices = s.voices(lang)
    pair = voices[:2] if len(voices) >= 2 else voices * 2   # one-voice families: two prosody draws
    out = []
    for i, voice in enumerate(pair):
        x, params = s.render(TEXT[lang], lang, voice, np.random.default_rng(i))
        _check(x, params)
        out.append(x)
    a, b = (x / np.max(np.abs(x)) for x in out)   # the random peak level alone must not count as a difference
    n = min(len(a), len(b))
    assert len(a) != len(b) or not np.allclose(a[:n], b[:n], atol=1e-3), f"{name}: {pair} gave the same audio"


@pytest.mark.parametrize("name", [pytest.param(f, marks=[pytest.mark.slow] if f in SLOW else [])
                                  for f, s in V.FAMILIES.items() if s.REPEATABLE])
def test_render_depends_only_on_text_voice_and_seed(name):
    """A repeatable family renders the same audio for the same draw, whatever it rendered before (one
    SamTTS kept state between calls: a corpus then depended on each worker's render order)."""
    s = _usable(name)
    lang = "en" if s.voices("en") else "zh"
    other = {"en": "play music", "zh": "关闭车窗"}[lang]
    voice = (s.held_out(lang) or s.voices(lang))[0]
    first, _ = s.render(TEXT[lang], lang, voice, np.random.default_rng(3))
    s.render(other, lang, voice, np.random.default_rng(4))
    again, _ = s.render(TEXT[lang], lang, voice, np.random.default_rng(3))
    assert np.array_equal(first, again), f"{name}/{voice}: the same draw gave different audio"


@pytest.mark.parametrize("name", V.FAMILIES)
def test_voices_and_held_out(name):
    s = V.FAMILIES[name]
    assert s.family == name and s.engine
    langs = [lang for lang in ("en", "zh") if s.voices(lang)]
    assert langs
    for lang in langs:
        voices, held = s.voices(lang), s.held_out(lang)
        assert len(set(voices)) == len(voices)
        assert set(held) <= set(voices)
        if s.EVALUATION_ONLY:   # held out whole: the corpus renders no training voice of it
            assert held == voices
        else:
            assert [v for v in voices if v not in held], f"{name}/{lang}: no training voices"
        if len(voices) < 2:
            assert held == []
    assert s.voices("xx") == [] and s.held_out("xx") == []


def test_held_out_choices():
    assert "mb-us3" in V.get("mbrola").held_out("en") and V.get("mbrola").held_out("zh") == []
    assert V.get("pico").held_out("en") == ["en-GB"]
    assert set(V.get("rhvoice").held_out("en")) == {"clb", "evgeniy-eng"}
    kokoro = V.get("kokoro")
    for lang in ("en", "zh"):
        train = set(kokoro.voices(lang)) - set(kokoro.held_out(lang))
        assert "jf_tebukuro" in kokoro.held_out(lang)
        assert not [v for v in train if "jf_tebukuro" in v]
        assert any("+" in v for v in train)
    espeak = V.get("espeak")
    assert "en-us+m2" in espeak.held_out("en") and "en-us+m1" not in espeak.held_out("en")
    assert "cmn-latn-pinyin+m2" in espeak.held_out("zh")


def test_espeak_mandarin_is_pinyin_voice():
    """Plain `-v cmn` in Debian's espeak-ng 1.51 reads pinyin tone digits as English numbers: "(en)" switches."""
    voices = V.get("espeak").voices("zh")
    assert voices and all(v.split("+")[0] == "cmn-latn-pinyin" for v in voices)
    for voice in voices[:2]:
        phon = subprocess.run(["espeak-ng", "-q", "-x", "-v", voice, "打开"], capture_output=True, text=True,
                              check=True).stdout
        assert phon.strip() and "(en)" not in phon, phon


@pytest.mark.parametrize("name", V.RESERVED + ("FLITE", "festival-kal"))
def test_reserved_refused(name):
    with pytest.raises(ValueError, match="reserved for held-out evaluation"):
        V.get(name)
    with pytest.raises(ValueError, match="reserved"):
        V.available([name])
    assert name.lower() not in V.FAMILIES


def test_unknown_lists_known():
    with pytest.raises(ValueError) as e:
        V.get("nosuchtts")
    assert all(f in str(e.value) for f in V.FAMILIES)


def test_registry_order_and_available():
    # new families go last: a resumed corpus build then keeps every earlier render (corpus.build)
    assert list(V.FAMILIES) == ["espeak", "mbrola", "pico", "rhvoice", "piper", "kokoro", "sam", "baker", "ttskit",
                               "dectalk"]
    usable = V.available()
    assert [s.family for s in usable] == [f for f, s in V.FAMILIES.items() if s.missing() is None]
    if V.get("sam").missing() is None and V.get("espeak").missing() is None:
        assert [s.family for s in V.available(["sam", "espeak"])] == ["sam", "espeak"]


def test_missing_is_reported(monkeypatch):
    s = V.get("pico")
    monkeypatch.setattr(type(s), "NEEDS", (("bin", "no-such-binary-xyz", "apt install libttspico-utils"),))
    assert "libttspico-utils" in s.missing()
    with pytest.raises(ValueError, match="libttspico-utils"):
        V.available(["pico"])
    assert s not in V.available()


def test_bad_voice_and_engine_failure(monkeypatch):
    s = V.get("espeak")
    with pytest.raises(ValueError, match="no voice"):
        s.render("hello", "en", "no-such-voice", np.random.default_rng(0))
    broken = ["espeak-ng", "-v", "zz-nope", "-w", V.OUT, "x"]
    monkeypatch.setattr(V, "_espeak_wav", lambda *a: V._cli_wav(broken))
    with pytest.raises(V.SynthError, match=r"espeak/en-us\+m1 failed on 'hello'.*espeak-ng exit"):
        s.render("hello", "en", "en-us+m1", np.random.default_rng(0))


def test_tts_worker_failures_are_one_line(monkeypatch, tmp_path):
    """The TensorFlow voices run in their own venv: without it, or with a python lacking TensorFlow, one line
    that says what to do; a dead worker is restarted on the next render."""
    import sys

    s = V.get("baker")
    monkeypatch.setattr(type(s), "NEEDS", (("file", str(tmp_path / "none" / "python"), "run `make tts-venv`"),))
    assert "make tts-venv" in s.missing()
    monkeypatch.setattr(V, "TTS_PYTHON", sys.executable)   # the project's venv: no TensorFlow here
    monkeypatch.setattr(V, "_tts", None)
    for _ in range(2):
        with pytest.raises(V.SynthError) as e:
            s.render("打开空调", "zh", "fastspeech2", np.random.default_rng(0))
        assert "baker/fastspeech2 failed on '打开空调'" in str(e.value) and "tensorflow" in str(e.value)
        assert "\n" not in str(e.value)
    V._tts.kill()
    V._tts.wait()
    monkeypatch.setattr(V, "TTS_PYTHON", "/no/such/python")
    with pytest.raises(V.SynthError, match="tts worker"):
        s.render("打开空调", "zh", "fastspeech2", np.random.default_rng(0))
    dies = tmp_path / "dies.py"   # a worker that promises 10 samples, sends 2 and exits: no cut-off render
    dies.write_text("import sys\nsys.stdin.readline()\nsys.stdout.buffer.write(b'{\"n\": 10, \"rate\": 16000}\\n'"
                    " + bytes(8))\n")
    monkeypatch.setattr(V, "TTS_PYTHON", sys.executable)
    monkeypatch.setattr(V, "TTS_WORKER", str(dies))
    with pytest.raises(V.SynthError, match="sent 2 of 10 samples"):
        s.render("打开空调", "zh", "fastspeech2", np.random.default_rng(0))


@pytest.mark.parametrize("cli,args,needle", [
    ("corpus", ["--families", "espeak,flite"], "reserved for held-out evaluation"),
    ("corpus", ["--families", "espeak,klatt"], "unknown synthesizer family"),
    ("loso", ["--init-dir", "x", "--init-families", "espeak", "--families", "nosuch"], "no renders of family 'nosuch'"),
    ("loso", ["--init-dir", "x", "--init-families", "espeak", "--source-filter", "1.5"], "[0, 1]"),
    ("loso", ["--init-dir", "x", "--init-families", "espeak", "--shift-fires", "-0.1"], "their sum"),
    ("loso", ["--init-dir", "x", "--init-families", "espeak", "--as-is", "--curve"], "no --curve"),
    ("loso", ["--init-dir", "x", "--init-families", "espeak", "--as-is"], "not a model dir"),
])
def test_recipe_clis_refuse_bad_families_in_one_line(tmp_path, cli, args, needle):
    """A reserved, unknown or absent family is one line and exit 2, before anything is rendered or trained."""
    import json
    import subprocess
    import sys

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    row = {"path": "a.wav", "text": "x", "lang": "en", "family": "espeak", "voice": "en-us"}
    for name in ("train", "test_clean"):
        (corpus / f"{name}.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    argv = [str(tmp_path / "out")] if cli == "corpus" else ["--corpus", str(corpus), "--out", str(tmp_path / "out")]
    p = subprocess.run([sys.executable, "-m", f"paraedge_tools.recipe.{cli}", *argv, *args], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "out" / "wav").exists() and not (tmp_path / "out" / "nosuch").exists()


@pytest.mark.parametrize("args, needle", [(["--grow-vocab"], "--init-dir"), (["--qty-weight", "-1"], "[0, 100]"),
                                           (["--qty-weight", "nan"], "[0, 100]"), (["--source-filter", "2"], "[0, 1]"),
                                           (["--ghost-fires", "0.6", "--shift-fires", "0.6"], "their sum"),
                                           (["--tail-fires", "0.5", "--ghost-fires", "0.6"], "their sum"),
                                           (["--tail-langs", "fr"], "en, zh"), (["--noise", "1.5"], "[0, 1]"),
                                           (["--lead-pad", "nan"], "[0, 5] seconds"),
                                           (["--position-shift", "-1"], "[0, 60] seconds")])
def test_train_refuses_bad_arguments_before_it_writes(tmp_path, args, needle):
    """--grow-vocab without a model to grow, or an absurd quantity-loss weight: one line, exit 2."""
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "paraedge_tools.recipe.train", "--corpus", str(tmp_path), "--out",
                        str(tmp_path / "o"), *args], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and args[0] in p.stderr and needle in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, needle", [
    (["--model", "NOSUCH"], "not a model dir"),
    (["--quick", "--model", "models/demo", "--write-card"], "writes no card"),
    (["--quick", "--model", "models/demo"], "no test_*clean.jsonl manifests"),  # an empty corpus
    (["--model", "models/demo", "--model", "models/demo"], "except with --quick"),
])
def test_evaluate_refuses_bad_arguments_in_one_line(tmp_path, args, needle):
    """A model dir that is not one, a card asked of --quick, a corpus without clean sets: one line, exit 2."""
    import os
    import subprocess
    import sys

    demo = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "demo")
    args = [str(tmp_path / "x") if a == "NOSUCH" else demo if a == "models/demo" else a for a in args]
    p = subprocess.run([sys.executable, "-m", "paraedge_tools.recipe.evaluate", "--corpus", str(tmp_path), *args],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_corpus_build_resumes_and_leaves_out_failed_renders(tmp_path, monkeypatch):
    """--resume renders only what a previous build left missing; a render its engine cannot make is left out
    of the manifests (counted), not the whole corpus."""
    import json
    import os

    from paraedge_tools.recipe.corpus import build

    phrases = [("en", "open the window"), ("en", "play music"), ("en", "navigate home")]
    out = str(tmp_path / "c")
    kw = dict(workers=1, phrases=phrases, families=["sam"], renders={"sam": {"en": 2}})
    counts = build(out, **kw)
    wavs = sorted(os.listdir(os.path.join(out, "wav")))
    mtimes = {w: os.stat(os.path.join(out, "wav", w)).st_mtime_ns for w in wavs}
    manifest = open(os.path.join(out, "train.jsonl"), encoding="utf-8").read()
    gone = next(w for w in wavs if w.startswith("train_"))   # a training render: one WAV per job
    os.remove(os.path.join(out, "wav", gone))
    assert build(out, resume=True, **kw) == counts
    assert open(os.path.join(out, "train.jsonl"), encoding="utf-8").read() == manifest   # same draws, same params
    again = {w: os.stat(os.path.join(out, "wav", w)).st_mtime_ns for w in wavs}
    assert [w for w in wavs if again[w] != mtimes[w]] == [gone]   # only the missing one was rendered
    assert not os.path.exists(os.path.join(out, "progress.jsonl"))

    synth = type(V.get("sam"))._synth

    def fails_on_music(self, text, lang, voice, rng):   # runs in the forked pool worker
        if text == "play music":
            raise V.SynthError("engine says no")
        return synth(self, text, lang, voice, rng)

    monkeypatch.setattr(type(V.get("sam")), "_synth", fails_on_music)
    fewer = build(str(tmp_path / "d"), **kw)
    rows = [json.loads(line) for line in open(tmp_path / "d" / "train.jsonl", encoding="utf-8")]
    assert fewer["train"] == counts["train"] - 2 and "play music" not in {r["text"] for r in rows}
