"""Synthetic in-car command corpus: many synthesizer families, generated noise, held-out voices.

`python -m paraedge_tools.recipe.corpus OUT [--per-voice N] [--families espeak,piper,...]` renders every
phrase of `tools/data/incar_commands.tsv` with every synthesizer family of `voices.py` (espeak-ng,
MBROLA, SVOX Pico, RHVoice, Piper, Kokoro, SAM, baker, ttskit, and DECtalk for evaluation only; flite and
festival are never used), prosody drawn
per render, as 16 kHz mono 16-bit WAVs, and writes JSONL manifests (path, text, lang, family,
voice, params, snr, split):
- `train.jsonl`: each family's training voices (augmentation happens on the fly in training);
- `test_clean.jsonl`, `test_snr{5,10,20}.jsonl`: espeak's HELD_OUT_VOICES, never seen in training,
  clean and mixed with synthetic car-cabin noise at the given SNR;
- `test_<family>_clean.jsonl`, `test_<family>_snr10.jsonl`: the other families' held-out voices.
The leave-one-synthesizer-out runs (`loso.py`) use every render of the family they leave out.

Test-set noise is `augment.add_noise`'s car cabin; the trainer's augmentation lives in `augment.py`.
Everything is seeded: the same command gives the same corpus, but for the renders of the families
whose engines sample noise no seed reaches (`Synth.REPEATABLE` False: Piper, baker), which differ
from build to build; a model's baker figures are only comparable within one corpus.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import warnings
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from edge.asr.audio import SAMPLE_RATE

from paraedge_tools.recipe.augment import add_noise

HERE = os.path.dirname(os.path.abspath(__file__))
PHRASES = os.path.join(os.path.dirname(HERE), "data", "incar_commands.tsv")
# Mandarin is cmn-latn-pinyin: Debian's espeak-ng 1.51 `-v cmn` reads the pinyin tone digits as English
# numbers ("da three kai one"), which is what the first demo model was trained and tested on.
ESPEAK_VOICE = {"zh": "cmn-latn-pinyin", "en": "en-us"}

# espeak-ng variants (+name). Held-out voices never appear in training.
TRAIN_VOICES = ["", "m1", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f4", "f5", "klatt", "klatt2", "klatt3",
                "klatt5", "klatt6", "Alex", "Andy", "Annie", "belinda", "benjamin", "david", "ed", "edward",
                "gustave", "iven", "john", "linda", "max", "michel", "paul", "pedro", "quincy", "rob", "robert",
                "steph", "zac", "m8", "Jacky", "Michael"]
HELD_OUT_VOICES = ["m2", "f3", "klatt4", "edward2", "iven2", "steph2", "Mario", "Gene"]
SNRS = (5, 10, 20)
RATE = SAMPLE_RATE


def read_phrases(path: str = PHRASES) -> list[tuple[str, str]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line and not line.startswith("#"):
                lang, text = line.split("\t")
                out.append((lang, text))
    return out


def render(text: str, lang: str, voice: str = "", speed: int = 160, pitch: int = 50, amplitude: int = 100) -> np.ndarray:
    """espeak-ng -> float32 16 kHz mono."""
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    v = ESPEAK_VOICE[lang] + (f"+{voice}" if voice else "")
    wav = subprocess.run(["espeak-ng", "-v", v, "-s", str(speed), "-p", str(pitch), "-a", str(amplitude), "--stdout", text],
                         check=True, capture_output=True).stdout
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # --stdout writes a streaming header with an unknown length
        rate, x = wavfile.read(io.BytesIO(wav))
    x = x.astype(np.float32) / 32768.0
    if x.ndim == 2:
        x = x.mean(axis=1)
    if rate != RATE:
        from math import gcd

        g = gcd(rate, RATE)
        x = resample_poly(x, RATE // g, rate // g).astype(np.float32)
    return trim(x)


def trim(x: np.ndarray, pad: int = 1600, floor: float = 1e-3) -> np.ndarray:
    """Cut espeak's long leading/trailing silence down to `pad` samples."""
    idx = np.flatnonzero(np.abs(x) > floor)
    if idx.size == 0:
        return x
    return x[max(0, idx[0] - pad): idx[-1] + pad]


# -- corpus -------------------------------------------------------------------------------------
# Training renders per phrase of each non-espeak family (prosody drawn per render), spread over its
# training voices: phrase i starts at voice i * renders, so a family with more voices than renders still
# speaks with every voice; espeak has per_voice renders of each of its 40 training variants. English gets
# about as many renders from the six other engines as from espeak; Mandarin about as many from its four
# (MBROLA cn1, Kokoro, Baker, ttskit's 20 training speakers). Kokoro renders at ~0.85 CPU-s per audio-s
# (the others at 0.01-0.25), so it gets the fewest.
FAMILY_RENDERS = {"mbrola": {"en": 8, "zh": 16}, "pico": {"en": 6}, "rhvoice": {"en": 8}, "piper": {"en": 8},
                  "kokoro": {"en": 4, "zh": 6}, "sam": {"en": 6}, "baker": {"zh": 12}, "ttskit": {"zh": 20}}
PROGRESS = "progress.jsonl"   # build() appends each finished render's rows here until the manifests are written
FAMILY_SNRS = (10,)  # other families' held-out voices: clean and car noise at these SNRs


def espeak_voice(lang: str, variant: str) -> str:
    """The espeak-ng voice name of a variant ("" = the language's default)."""
    return ESPEAK_VOICE[lang] + (f"+{variant}" if variant else "")


def _job(args):
    """Render one job's WAVs -> its params, or {"error": one line} when the engine failed."""
    family, text, lang, voice, seed, outputs = args
    from edge.asr.audio import write_wav
    from paraedge_tools.recipe.voices import SynthError, get

    rng = np.random.default_rng(seed)
    try:
        x, params = get(family).render(text, lang, voice, rng)
    except SynthError as e:
        return {"error": str(e)}
    for path, snr in outputs:
        y = x
        if snr is not None:
            y = add_noise(x, snr, "car", rng)
            peak = np.max(np.abs(y))
            y = y / peak * 0.99 if peak > 0.99 else y
        write_wav(path, y)
    return params


def build(out: str, per_voice: int = 1, seed: int = 0, workers: int = 2, test_only: bool = False,
          phrases=None, train_voices=None, held_out_voices=HELD_OUT_VOICES, families=None,
          renders=FAMILY_RENDERS, resume: bool = False) -> dict:
    """Render the corpus under `out` and write its manifests; returns rows per split.

    `families`: synthesizer families to render (default: every one of voices.FAMILIES, all must be
    installed); espeak's training voices are its variants and accents but `held_out_voices`, or
    just `train_voices` (variants) when given; the other families use their own training and
    held-out voices (voices.py). Each held-out voice renders a phrase once;
    that render is written clean and at each SNR. `resume`: keep the WAVs (and drawn params) of a previous
    build of the same command in `out` and render only what is missing, e.g. a family added since; the
    job order is fixed, so a family added at the end of voices.FAMILIES leaves every other render as it was."""
    from paraedge_tools.recipe import voices as V

    phrases = read_phrases() if phrases is None else phrases
    synths = V.available(families if families is not None else list(V.FAMILIES))
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out, "wav"), exist_ok=True)
    manifests: dict[str, list] = {}
    jobs, rows_of_job = [], []

    def add(family, lang, text, voice, splits):
        outputs, rows = [], []
        for split, snr in splits:
            n = sum(len(v) for v in manifests.values())
            path = os.path.join(out, "wav", f"{split}_{n:06d}.wav")
            row = dict(path=os.path.relpath(path, out), text=text, lang=lang, family=family, voice=voice, snr=snr,
                       split=split)
            manifests.setdefault(split, []).append(row)
            outputs.append((path, snr))
            rows.append(row)
        jobs.append((family, text, lang, voice, int(rng.integers(1 << 31)), outputs))
        rows_of_job.append(rows)

    for s in synths:
        for i, (lang, text) in enumerate(phrases):
            if not s.voices(lang):
                continue
            if s.family == "espeak":
                held = [espeak_voice(lang, v) for v in held_out_voices]
                variants = ([v for v in s.voices(lang) if v not in held] if train_voices is None
                            else [espeak_voice(lang, v) for v in train_voices])
                train_v = [v for v in variants for _ in range(per_voice)]
                test_splits = [("test_clean", None)] + [(f"test_snr{snr}", snr) for snr in SNRS]
            else:
                held = s.held_out(lang)
                voices = [v for v in s.voices(lang) if v not in held]
                count = 0 if s.EVALUATION_ONLY else renders.get(s.family, {}).get(lang, 0)
                train_v = [voices[(i * count + k) % len(voices)] for k in range(count)]
                test_splits = [(f"test_{s.family}_clean", None)] + [(f"test_{s.family}_snr{snr}", snr)
                                                                     for snr in FAMILY_SNRS]
            if not test_only:
                for v in train_v:
                    add(s.family, lang, text, v, [("train", None)])
            for v in held:
                add(s.family, lang, text, v, test_splits)
    done = _previous_params(out, jobs, rows_of_job) if resume else {}
    todo = [k for k in range(len(jobs)) if k not in done]
    progress = os.path.join(out, PROGRESS)   # rows as they finish: a killed build resumes from here
    with ProcessPoolExecutor(workers) as pool, open(progress, "a", encoding="utf-8") as log:
        for k, params in zip(todo, pool.map(_job, [jobs[k] for k in todo], chunksize=8)):
            done[k] = params
            if "error" not in params:
                for r in rows_of_job[k]:
                    log.write(json.dumps({**r, "params": params}, ensure_ascii=False) + "\n")
                log.flush()
    failed = [k for k in range(len(jobs)) if "error" in done[k]]
    for k, rows in enumerate(rows_of_job):
        for r in rows:
            r["params"] = done[k]
    if failed:   # a render an engine cannot make is left out, not the corpus: counted and named here
        print(f"{len(failed)} of {len(jobs)} renders failed and are left out; first: {done[failed[0]]['error']}")
        for split in manifests:
            manifests[split] = [r for r in manifests[split] if "error" not in r["params"]]
    for split, rows in manifests.items():
        write_manifest(os.path.join(out, f"{split}.jsonl"), rows)
    os.remove(progress)
    with open(os.path.join(out, "README.txt"), "w", encoding="utf-8") as f:
        for s in synths:
            f.write(f"{s.family}: {s.engine}\n")
        trained = "their variants and accents" if train_voices is None else " ".join(v or "default" for v in train_voices)
        f.write(f"espeak training voices: {trained}\n")
        f.write(f"espeak held-out test variants (never trained on): {' '.join(held_out_voices)}\n")
    return {k: len(v) for k, v in manifests.items()}


def _previous_params(out: str, jobs: list, rows_of_job: list) -> dict[int, dict]:
    """Job index -> params for the jobs whose WAVs a previous build left in `out` with matching manifest rows."""
    import glob

    old = {}
    for path in sorted(glob.glob(os.path.join(out, "*.jsonl")), key=lambda p: p.endswith(PROGRESS)):
        for r in read_manifest(path):   # the progress log last: it is newer than any manifest
            old[os.path.relpath(r["path"], out)] = r
    keys = ("text", "lang", "family", "voice", "snr", "split")
    done = {}
    for k, (job, rows) in enumerate(zip(jobs, rows_of_job)):
        prev = [old.get(r["path"]) for r in rows]
        if all(p is not None and "params" in p and all(p.get(q) == r[q] for q in keys) for p, r in zip(prev, rows)) \
                and all(os.path.exists(path) for path, _ in job[-1]):
            done[k] = prev[0]["params"]
    return done


def write_manifest(path: str, rows) -> None:
    """JSONL, one row a line (read back by `read_manifest`)."""
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def family_of(row: dict) -> str:
    """A manifest row's synthesizer family."""
    return row.get("family", "espeak")  # corpora from before the families were espeak only


def read_manifest(path: str) -> list[dict]:
    base = os.path.dirname(os.path.abspath(path))
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            r["path"] = os.path.join(base, r["path"])
            rows.append(r)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--per-voice", type=int, default=1, help="renders per phrase and espeak training variant")
    ap.add_argument("--families", default=None, help="comma-separated synthesizer families (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--test-only", action="store_true", help="only the held-out test sets")
    ap.add_argument("--resume", action="store_true",
                    help="keep what a previous build of the same command left in OUT; render only what is missing")
    args = ap.parse_args(argv)
    families = args.families.split(",") if args.families else None
    if families:
        from paraedge_tools.recipe.voices import available

        try:  # reserved (flite, festival), unknown or not installed: one line before any rendering
            available(families)
        except ValueError as e:
            ap.error(f"--families: {e}")
    counts = build(args.out, args.per_voice, args.seed, args.workers, args.test_only, families=families,
                   resume=args.resume)
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
