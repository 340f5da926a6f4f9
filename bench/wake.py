"""Measure the wake gate: detection latency and recall on noisy wake-word renders, false accepts per
hour on non-wake speech and car noise, at the shipped cutoffs and a sweep of candidates.

`python bench/wake.py [--positives 300] [--neg-minutes 240] [--family-minutes 20] [--families ...]
[--out out/wake] [--readme] [--sweep]` renders (once; cached under --out) for each keyword N positives,
"okay nabu" / "alexa" spoken in turn by every synthesizer family the recipe trains on (espeak-ng with
many voices, variants, speeds and pitches; MBROLA, Pico, RHVoice, Piper, Kokoro, SAM with their
voices), after 0.4-1.2 s of lead-in and followed by an English or Mandarin command or silence, mixed
with generated car noise at 20/10/5 dB SNR (of the speech). The wake word is rendered alone first, so
where it ends (last 10 ms frame within 30 dB of its loudest) is known. Negatives: --neg-minutes of
everyday English and Mandarin sentences by espeak-ng, and --family-minutes more by each other family,
the in-car commands and near-miss words ("okay", "nab", "alexander", "election"), with pauses and
noise-only stretches, clean or in car noise at 20/10/5 dB; the near-miss phrases alone, by every family.

Why every family: one synthesizer measures that synthesizer (issue 18's lesson). On espeak-ng's
formant voices alexa's probability passes 0.98 a median 179 ms after the word ends, on RHVoice's 82 ms
and Piper's 131 ms; and natural voices saying "a lexus" or "election" wake alexa more often than
espeak-ng's do (measured while making this change: 2-7 of 76 near-miss renders per family at 0.98,
0 for espeak-ng's).

Every render goes through the TFLite-Micro frontend and each model once, keeping the raw probability
of every 30 ms inference; the decision rule (mean of the last `window` probabilities > cutoff, then a
reset and the refractory period) is then replayed for each candidate. Latency = end of the 20 ms
block that fired (the daemon's block size) - end of the wake word. A hit is the first detection
between the wake word's start and 1 s after its end; anything else is a false accept. The chosen
setting (edge/daemon/wake.py TUNED, REFRACTORY_S) is finally re-run exactly through WakeGate in
20 ms blocks, and that is the table printed (and, with --readme, written into README.md between the
wake markers), with latency and false accepts by family. flite and festival never speak here: they
are kept for held-out evaluation. Renders and raw probabilities are cached by count and family list:
delete --out after editing the phrase lists.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
import warnings
import zlib

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

RATE = 16000
BLOCK = 320  # the daemon's 20 ms capture block
PHRASE = {"okay_nabu": "okay nabu", "alexa": "alexa", "hey_jarvis": "hey jarvis", "hey_mycroft": "hey mycroft"}
EN_VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us-nyc", "en-gb-x-gbclan",
             "en-gb-x-gbcwmd"]
SNRS = (20, 10, 5)
HIT_AFTER_S = 1.0  # a detection up to this long after the wake word ends still counts as a hit
WINDOWS = (1, 2, 3, 4, 5)
CUTOFFS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.86, 0.87, 0.88, 0.89, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)

# -- text ----------------------------------------------------------------------------------------
NEAR_MISS = ["okay", "ok then", "okay, now", "oh okay", "okay, let's go", "ok fine", "nab it", "grab a cab",
             "the cab is here", "a nap", "alexander", "alexander the great", "the election results",
             "an election year", "a lexus", "alex said so", "alexis is late", "a lecture", "electric car",
             "okay, nobody", "okay, maybe", "hey, jarvis", "hey you", "hey mike", "my crofton", "nabisco",
             "nebula", "okay boomer", "a new bar", "oak and a bough", "al, let's go",
             "election", "selection", "a lex", "perplexa", "nabbed", "hey travis", "hey, microphone"]
EN_FREE = [
    "Can you pass me the water bottle please.", "I think we missed the turn back there.",
    "What time does the pharmacy close on Sundays?", "The traffic on the bridge was terrible this morning.",
    "Did you remember to lock the front door?", "My phone battery is almost dead again.",
    "Let's stop for coffee at the next service station.", "The kids have a football match on Saturday.",
    "I can't believe how expensive petrol has become.", "Turn it down a little, it's too loud.",
    "We should be there in about twenty minutes.", "Honestly I liked the old version of that song better.",
    "Grandma wants us to come over for lunch next week.", "Is it going to rain this afternoon?",
    "I left my jacket at the office yesterday.", "Tell me about your day, how was the meeting?",
    "The new restaurant on Main Street is surprisingly good.", "Watch out for that cyclist on the right.",
    "We need to buy milk, bread, eggs and some apples.", "The dentist moved my appointment to Thursday.",
    "That was the longest red light I have ever seen.", "Please remind me to call the insurance company.",
    "Our neighbours are finally painting their fence.", "I read an interesting article about bees today.",
    "Nobody told me the road was closed for repairs.", "He said the package would arrive before noon.",
    "Could you check the map, I think we are lost.", "My sister is moving to a new apartment next month.",
    "The museum is free on the first Sunday of the month.", "I'm starving, what do you want for dinner?",
]
EN_SUBJ = ["I", "we", "my brother", "the kids", "our neighbour", "my boss", "you", "they", "my wife", "my husband",
           "the teacher", "Tom", "Sarah", "the mechanic", "everybody", "my friend from work", "the new guy"]
EN_VERB = ["need to", "want to", "forgot to", "promised to", "would like to", "are going to", "should",
           "might", "have to", "decided to", "tried to", "will probably"]
EN_ACT = ["pick up some groceries", "call the dentist", "book a table for dinner", "watch the game",
          "finish the quarterly report", "visit grandma", "fix the leaking tap", "walk the dog",
          "read that new book", "pay the electricity bill", "wash the car", "clean out the garage",
          "plan the summer holiday", "order a new printer", "bake a chocolate cake", "learn to play guitar",
          "change the tyres", "water the plants", "take the train into town", "send the invoice",
          "return the library books", "buy a birthday present", "meet the accountant", "repaint the kitchen"]
EN_WHEN = ["before the weekend", "after work", "tomorrow morning", "if it stops raining", "later today",
           "next Tuesday", "on the way home", "sometime this month", "right after lunch", "", "", ""]
EN_Q = ["did you see {x}?", "what do you think about {x}?", "have you heard about {x}?",
        "I keep thinking about {x}.", "nobody mentioned {x} to me.", "remember {x} last year?"]
EN_X = ["the football final", "the storm last night", "the new bakery", "the price of houses", "that film",
        "the school concert", "the road works", "the company picnic", "the weather forecast",
        "the concert in the park", "the power cut", "the marathon", "the new bus timetable"]
ZH_FREE = ["今天天气真不错。", "你吃过午饭了吗？", "前面好像堵车了。", "我们晚上去吃火锅吧。", "孩子明天要考试。",
           "这首歌我以前听过。", "周末我们去公园散步。", "你把手机充好电了吗？", "下个路口右转就到了。",
           "超市里的水果很新鲜。", "我忘了带钥匙。", "妈妈让我们早点回家。", "这条路晚上车很少。", "明天可能会下雨。"]
ZH_SUBJ = ["我", "我们", "你", "他", "她", "妈妈", "爸爸", "老板", "孩子们", "同事", "邻居", "老师"]
ZH_WHEN = ["今天", "明天早上", "下午", "周末", "晚上", "下个星期", "过一会儿", "中午", "后天"]
ZH_ACT = ["去超市买菜", "开会", "看电影", "给奶奶打电话", "去公园散步", "做作业", "吃火锅", "去医院看病",
          "洗车", "修电脑", "去银行取钱", "接孩子放学", "打扫房间", "去机场接人", "学游泳", "买新衣服",
          "去图书馆还书", "准备晚饭", "去加油站加油", "换轮胎"]


def en_sentence(rng) -> str:
    r = rng.random()
    if r < 0.25:
        return EN_FREE[rng.integers(len(EN_FREE))]
    if r < 0.45:
        return EN_Q[rng.integers(len(EN_Q))].format(x=EN_X[rng.integers(len(EN_X))])
    pick = lambda xs: xs[rng.integers(len(xs))]  # noqa: E731
    return " ".join(w for w in (pick(EN_SUBJ), pick(EN_VERB), pick(EN_ACT), pick(EN_WHEN)) if w) + "."


def zh_sentence(rng) -> str:
    if rng.random() < 0.3:
        return ZH_FREE[rng.integers(len(ZH_FREE))]
    pick = lambda xs: xs[rng.integers(len(xs))]  # noqa: E731
    return pick(ZH_SUBJ) + pick(ZH_WHEN) + "要" + pick(ZH_ACT) + "。"


# -- audio ---------------------------------------------------------------------------------------
def espeak(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """espeak-ng with a full voice name (corpus.render only knows en-us and cmn-latn-pinyin) -> float32 16 kHz."""
    from math import gcd

    from scipy.io import wavfile
    from scipy.signal import resample_poly

    from paraedge_tools.recipe.corpus import trim

    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                         check=True, capture_output=True).stdout
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # --stdout writes a streaming header with an unknown length
        rate, x = wavfile.read(io.BytesIO(wav))
    x = x.astype(np.float32) / 32768.0
    g = gcd(rate, RATE)
    return trim(resample_poly(x, RATE // g, rate // g).astype(np.float32))


def speech_span(x: np.ndarray) -> tuple[int, int]:
    """(start, end) samples of the audible part: 10 ms frames within 30 dB of the loudest."""
    n = len(x) // 160
    rms = np.sqrt(np.mean(x[: n * 160].reshape(n, 160) ** 2, axis=1))
    on = np.flatnonzero(rms > rms.max() * 10 ** (-30 / 20))
    return int(on[0] * 160), int((on[-1] + 1) * 160)


def voice(rng, lang: str = "en") -> str:
    from paraedge_tools.recipe.corpus import HELD_OUT_VOICES, TRAIN_VOICES

    v = [""] + TRAIN_VOICES + HELD_OUT_VOICES
    base = EN_VOICES[rng.integers(len(EN_VOICES))] if lang == "en" else "cmn-latn-pinyin"  # plain cmn reads tone digits as English
    var = v[rng.integers(len(v))]
    return base + (f"+{var}" if var else "")


def mix_noise(x: np.ndarray, speech_power: float, snr, rng) -> np.ndarray:
    from paraedge_tools.recipe.augment import car_noise

    if snr is None:
        return x
    nz = car_noise(len(x), rng) * np.sqrt(speech_power / 10 ** (snr / 10))
    y = x + nz
    peak = np.abs(y).max()
    return (y * (0.95 / peak) if peak > 0.95 else y).astype(np.float32)


FAMILIES = ("espeak", "mbrola", "pico", "rhvoice", "piper", "kokoro", "sam")  # the recipe's trained families


def speaks(family: str, lang: str) -> bool:
    from paraedge_tools.recipe import voices

    return family == "espeak" or bool(voices.get(family).voices(lang))


def say(family: str, text: str, lang: str, rng) -> tuple[np.ndarray, str]:
    """`text` by a random voice of `family` (float32 16 kHz, trimmed) and that voice's name. espeak-ng
    draws from all its accents and variants with a random speed and pitch; the other families go
    through the recipe's renderers (tools/recipe/voices.py), held-out voices included."""
    if family == "espeak":
        v = voice(rng, lang)
        return espeak(text, v, int(rng.integers(120, 211)), int(rng.integers(25, 76))), v
    from paraedge_tools.recipe import voices

    synth = voices.get(family)
    names = synth.voices(lang)
    v = names[rng.integers(len(names))]
    return synth.render(text, lang, v, rng)[0], f"{family}/{v}"


def pooled(fn, args: list, jobs: int) -> list:
    """fn(*a) for every a in args, in order, on `jobs` processes (rendering is the slow part)."""
    if jobs <= 1:
        return [fn(*a) for a in args]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(jobs) as ex:
        return list(ex.map(fn, *zip(*args), chunksize=4))


def _positive(kw: str, i: int, seed: int, families: tuple[str, ...]) -> tuple[np.ndarray, dict]:
    from paraedge_tools.recipe.corpus import read_phrases

    rng = np.random.default_rng([seed, i])
    fam = families[i % len(families)]
    wake, v = say(fam, PHRASE[kw], "en", rng)
    wake = wake * (rng.uniform(0.3, 0.9) / (np.abs(wake).max() + 1e-9))
    ws, we = speech_span(wake)
    lead = np.zeros(int(rng.uniform(0.4, 1.2) * RATE), np.float32)
    gap = np.zeros(int(rng.uniform(0.0, 0.4) * RATE), np.float32)
    commands = [c for c in read_phrases() if speaks(fam, c[0])]
    if rng.random() < 0.75:
        lang, text = commands[rng.integers(len(commands))]
        cmd = say(fam, text, lang, rng)[0]
        cmd *= np.abs(wake).max() / (np.abs(cmd).max() + 1e-9)
    else:
        text, cmd = "", np.zeros(int(0.8 * RATE), np.float32)
    tail = np.zeros(int(0.6 * RATE), np.float32)
    x = np.concatenate([lead, wake, gap, cmd, tail])
    snr = SNRS[i % len(SNRS)]
    speech = np.concatenate([wake[ws:we], cmd])
    x = mix_noise(x, float(np.mean(speech[np.abs(speech) > 1e-3] ** 2)), snr, rng)
    return x, {"family": fam, "voice": v, "snr": snr, "command": text,
               "wake_start": len(lead) + ws, "wake_end": len(lead) + we}


def make_positives(kw: str, n: int, seed: int, families: tuple[str, ...], jobs: int):
    """n renders of the wake word, the families taking turns (so each has n / len(families))."""
    out = pooled(_positive, [(kw, i, seed, families) for i in range(n)], jobs)
    return [x for x, _ in out], [m for _, m in out]


def _talk_segment(rng, k: int, seg_s: float, family: str) -> tuple[np.ndarray, dict]:
    """One segment of everyday talk by `family` (Mandarin only where it has Mandarin voices), with its
    utterances (start, end, kind, text)."""
    from paraedge_tools.recipe.augment import car_noise
    from paraedge_tools.recipe.corpus import read_phrases

    commands = [c for c in read_phrases() if speaks(family, c[0])]
    zh = speaks(family, "zh")
    n = int(seg_s * RATE)
    snr = [None, *SNRS][k % 4]
    x, pos, utts = np.zeros(n, np.float32), int(rng.uniform(0.2, 1.0) * RATE), []
    while pos < n:
        r = rng.random()
        if r < 0.1:  # a stretch with nobody speaking
            pos += int(rng.uniform(2, 6) * RATE)
            continue
        if r < 0.15:
            kind, lang, text = "near", "en", NEAR_MISS[rng.integers(len(NEAR_MISS))]
        elif r < 0.3:
            kind, (lang, text) = "command", commands[rng.integers(len(commands))]
        elif r < 0.65 or not zh:
            kind, lang, text = "en", "en", en_sentence(rng)
        else:
            kind, lang, text = "zh", "zh", zh_sentence(rng)
        s = say(family, text, lang, rng)[0]
        s = s * rng.uniform(0.3, 0.9) / (np.abs(s).max() + 1e-9)
        m = min(len(s), n - pos)
        x[pos : pos + m] += s[:m]
        utts.append({"start": pos, "end": pos + m, "kind": kind, "text": text})
        pos += len(s) + int(rng.uniform(0.1, 1.5) * RATE)
    voiced = x[np.abs(x) > 1e-3]
    power = float(np.mean(voiced**2)) if voiced.size else 0.05
    if snr is not None:
        x = mix_noise(x, power, snr, rng)
    elif k % 8 == 0:  # some clean segments get plain cabin noise at a low level anyway
        x = (x + 0.003 * car_noise(n, rng)).astype(np.float32)
    return x, {"family": family, "snr": snr, "utterances": utts}


def make_negatives(minutes: float, seed: int, seg_s: float = 60.0) -> tuple[list[np.ndarray], list[dict]]:
    """Minute-long segments of everyday talk by espeak-ng (one random stream, as first cached)."""
    rng = np.random.default_rng(seed)
    out = [_talk_segment(rng, k, seg_s, "espeak") for k in range(int(np.ceil(minutes * 60 / seg_s)))]
    return [x for x, _ in out], [m for _, m in out]


def _family_segment(family: str, k: int, seed: int, seg_s: float) -> tuple[np.ndarray, dict]:
    return _talk_segment(np.random.default_rng([seed, zlib.crc32(family.encode()), k]), k, seg_s, family)


def make_family_negatives(families, minutes: float, seed: int, jobs: int, seg_s: float = 60.0):
    """`minutes` of everyday talk by each of `families`."""
    n = int(np.ceil(minutes * 60 / seg_s))
    out = pooled(_family_segment, [(f, k, seed, seg_s) for f in families for k in range(n)], jobs)
    return [x for x, _ in out], [m for _, m in out]


def _near_miss(text: str, i: int, seed: int, families: tuple[str, ...]) -> tuple[np.ndarray, dict]:
    rng = np.random.default_rng([seed, zlib.crc32(text.encode()), i])
    fam = families[i % len(families)]
    s, v = say(fam, text, "en", rng)
    s = s * (rng.uniform(0.3, 0.9) / (np.abs(s).max() + 1e-9))
    x = np.concatenate([np.zeros(int(0.8 * RATE), np.float32), s, np.zeros(int(0.8 * RATE), np.float32)])
    snr = [None, *SNRS][i % 4]
    return mix_noise(x, float(np.mean(s[np.abs(s) > 1e-3] ** 2)), snr, rng), {"text": text, "family": fam,
                                                                              "voice": v, "snr": snr}


def make_near_misses(per_phrase: int, seed: int, families: tuple[str, ...], jobs: int):
    """Each near-miss phrase alone, per_phrase times (the families taking turns), with the positives'
    layout and noise."""
    out = pooled(_near_miss, [(t, i, seed, families) for t in NEAR_MISS for i in range(per_phrase)], jobs)
    return [x for x, _ in out], [m for _, m in out]


def cached(path: str, make):
    """Renders are stored as int16 .npz beside a JSON of their metadata."""
    if os.path.exists(path + ".npz") and os.path.exists(path + ".json"):
        z = np.load(path + ".npz")
        xs = [z[f"a{i}"].astype(np.float32) / 32767.0 for i in range(len(z.files))]
        return xs, json.load(open(path + ".json"))
    xs, meta = make()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path + ".npz", **{f"a{i}": np.round(x * 32767).astype(np.int16) for i, x in enumerate(xs)})
    json.dump(meta, open(path + ".json", "w"), ensure_ascii=False)
    return xs, meta


# -- the gate, raw and replayed ------------------------------------------------------------------
def raw_probs(x: np.ndarray, names: list[str]) -> tuple[np.ndarray, dict]:
    """The frontend + each model over x exactly as WakeGate streams it: (sample position after each
    inference, {model: raw probability per inference})."""
    from pymicro_features import MicroFrontend

    from edge.daemon.wake import HOP, WakeModel

    models = [WakeModel(m, cutoff=0.5, window=1) for m in names]
    fe, buf, pos = MicroFrontend(), np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2").tobytes(), 0
    where, probs = [], {m: [] for m in names}
    while pos + 2 * HOP <= len(buf):
        out = fe.process_samples(buf[pos : pos + 2 * HOP])
        pos += 2 * max(out.samples_read, 1)
        if not out.features:
            continue
        frame = np.asarray(out.features, dtype=np.float32)
        for name, m in zip(names, models):
            p = m.push(frame)
            if p is not None:
                probs[name].append(p)
                if name == names[0]:
                    where.append(pos // 2)
    return np.asarray(where), {k: np.asarray(v, np.float32) for k, v in probs.items()}


def replay(where: np.ndarray, p: np.ndarray, cutoff: float, window: int, refractory: int) -> list[int]:
    """Detections (block-end sample positions) of WakeGate's rule on raw probabilities: fire when the
    mean of the last `window` is above cutoff; then the window empties (the gate resets) and the model
    re-arms once `refractory` samples have passed and its windowed mean has been at or below cutoff.
    (The reset model's state is not replayed: after a detection this is an approximation.)"""
    if len(p) < window:
        return []
    mean = np.convolve(p, np.ones(window) / window, "valid")  # mean[j] ends at inference j + window - 1
    end = np.arange(len(mean)) + window - 1
    out, i = [], 0
    while True:
        above = np.flatnonzero((mean[i:] > cutoff))
        if not above.size:
            return out
        j = i + above[0]
        out.append(int(-(-where[end[j]] // BLOCK) * BLOCK))
        # window refilled after the reset, refractory over, then a dip at or below cutoff
        k = max(j + window, int(np.searchsorted(where[window - 1 :], where[end[j]] + refractory)))
        low = np.flatnonzero(mean[k:] <= cutoff)
        if not low.size:
            return out
        i = k + low[0] + 1


def utterance_at(fired: int, utts: list[dict]) -> dict:
    """The negative utterance a false accept fired on (up to 1 s after it ends), else noise."""
    for u in utts:
        if u["start"] <= fired <= u["end"] + HIT_AFTER_S * RATE:
            return u
    return {"kind": "noise", "text": ""}


def kind_of(fired: int, utts: list[dict]) -> str:
    return utterance_at(fired, utts)["kind"]


def says(text: str, kw: str) -> bool:
    """True when `text` is kw's own phrase ("hey, jarvis" is a near miss for the others, not for
    hey_jarvis): a detection there is no false accept."""
    return "".join(c for c in text.lower() if c.isalpha()) == PHRASE.get(kw, kw).replace(" ", "")


def score(pos_runs, neg_runs, near_runs, kw, cutoff, window, refractory, neg_hours):
    lat, hits, extra = [], 0, 0
    for (where, probs), m in pos_runs:
        det = replay(where, probs[kw], cutoff, window, refractory)
        ok = [d for d in det if m["wake_start"] <= d <= m["wake_end"] + HIT_AFTER_S * RATE]
        if ok:
            hits += 1
            lat.append((ok[0] - m["wake_end"]) / RATE * 1000)
        extra += len(det) - (1 if ok else 0)
    kinds: dict[str, int] = {}
    for (where, probs), m in neg_runs:
        for d in replay(where, probs[kw], cutoff, window, refractory):
            u = utterance_at(d, m["utterances"])
            if says(u["text"], kw):
                continue
            k = u["kind"]
            kinds[k] = kinds.get(k, 0) + 1
    near_runs = [r for r in near_runs if not says(r[1]["text"], kw)]
    near = sum(1 for (where, probs), _ in near_runs if replay(where, probs[kw], cutoff, window, refractory))
    fa = sum(kinds.values())
    return {"cutoff": cutoff, "window": window, "recall": hits / max(1, len(pos_runs)),
            "p50": float(np.percentile(lat, 50)) if lat else float("nan"),
            "p99": float(np.percentile(lat, 99)) if lat else float("nan"),
            "fa": fa, "fa_h": fa / neg_hours, "fa_kinds": kinds, "near": near / max(1, len(near_runs)),
            "extra": extra}


TARGET_P50, TARGET_FA_H = 150.0, 0.5  # issue 17: P50 <= 150 ms, <= 0.5 false accepts per hour
MARGIN_MS = 20.0  # P50 moves ~5-15 ms between render sets and in the exact WakeGate run


def choose(rows: list[dict], n_pos: int) -> tuple[dict, bool]:
    """(setting, whether it keeps the false-accept budget). Within TARGET_FA_H: the settings whose
    recall is within two standard errors of the best (closer than that is noise at n_pos renders); of
    those, the ones with P50 <= TARGET_P50 - MARGIN_MS if any; then the fewest false accepts and the
    lowest P50. When no setting keeps the budget: the fewest false accepts with P50 <= TARGET_P50 (or,
    failing that, overall), then the best recall."""
    ok = [r for r in rows if r["fa_h"] <= TARGET_FA_H]
    if not ok:
        fast = [r for r in rows if r["p50"] <= TARGET_P50] or rows
        return min(fast, key=lambda r: (r["fa_h"], -r["recall"], r["p50"])), False
    best = max(r["recall"] for r in ok)
    tol = 2 * np.sqrt(best * (1 - best) / n_pos)
    near_best = [r for r in ok if r["recall"] >= best - tol]
    fast = [r for r in near_best if r["p50"] <= TARGET_P50 - MARGIN_MS] or near_best
    return min(fast, key=lambda r: (r["fa_h"], r["p50"], -r["recall"])), True


def exact(xs, kw_names, cutoff_of, window_of, refractory_s):
    """The real WakeGate (all keywords loaded together, as in the daemon), 20 ms blocks: a list of
    [(model, block-end sample)] per render."""
    from edge.daemon.wake import WakeGate

    gate = WakeGate(kw_names, refractory_s=refractory_s)
    for m in gate.models:
        m.cutoff, m.window = cutoff_of[m.name], window_of[m.name]
        m.reset()
    res = []
    for x in xs:
        gate.reset()
        dets = []
        for i in range(0, len(x), BLOCK):
            d = gate.process(x[i : i + BLOCK])
            if d is not None:
                dets.append((d.name, i + min(BLOCK, len(x) - i)))
        res.append(dets)
    return res


def main(argv=None) -> int:
    from edge.daemon import wake as W

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keywords", default="okay_nabu,alexa")
    ap.add_argument("--positives", type=int, default=300, help="renders per keyword")
    ap.add_argument("--neg-minutes", type=float, default=240.0)
    ap.add_argument("--near-per-phrase", type=int, default=14, help="renders of each near-miss phrase")
    ap.add_argument("--families", default=",".join(FAMILIES),
                    help="synthesizer families that speak (flite and festival are refused: held out)")
    ap.add_argument("--family-minutes", type=float, default=20.0,
                    help="minutes of everyday talk by each family other than espeak-ng")
    ap.add_argument("--jobs", type=int, default=2, help="rendering processes")
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "wake"))
    ap.add_argument("--readme", action="store_true", help="write the chosen table into README.md")
    ap.add_argument("--sweep", action="store_true", help="also print the full cutoff x window sweep")
    args = ap.parse_args(argv)
    kws = args.keywords.split(",")
    from paraedge_tools.recipe import voices

    try:
        fams = tuple(s.family for s in voices.available(args.families.split(",")))
    except ValueError as e:
        ap.error(str(e))
    tag = "-".join(f[:3] for f in fams)
    others = tuple(f for f in fams if f != "espeak")
    t0 = time.time()
    pos_sets = {kw: cached(os.path.join(args.out, f"pos_{kw}_{args.positives}_{tag}"),
                           lambda kw=kw: make_positives(kw, args.positives, zlib.crc32(kw.encode()), fams, args.jobs))
                for kw in kws}
    neg_x, neg_meta = cached(os.path.join(args.out, f"neg_{args.neg_minutes:g}min"),
                             lambda: make_negatives(args.neg_minutes, 7)) if "espeak" in fams else ([], [])
    if others and args.family_minutes > 0:
        fx, fm = cached(os.path.join(args.out, f"neg_{args.family_minutes:g}min_{'-'.join(f[:3] for f in others)}"),
                        lambda: make_family_negatives(others, args.family_minutes, 13, args.jobs))
        neg_x, neg_meta = neg_x + fx, neg_meta + fm
    near_x, near_meta = cached(os.path.join(args.out, f"near_{args.near_per_phrase}_{tag}"),
                               lambda: make_near_misses(args.near_per_phrase, 11, fams, args.jobs))
    neg_hours = sum(len(x) for x in neg_x) / RATE / 3600
    fam_hours = {}
    for x, m in zip(neg_x, neg_meta):
        fam_hours[m.get("family", "espeak")] = fam_hours.get(m.get("family", "espeak"), 0.0) + len(x) / RATE / 3600
    print(f"renders ready in {time.time() - t0:.0f} s: {neg_hours:.2f} h of negatives "
          f"{ {f: round(h, 2) for f, h in fam_hours.items()} }", file=sys.stderr)

    probs_path = os.path.join(args.out, f"probs_{'_'.join(kws)}_{args.positives}_{args.neg_minutes:g}"
                                        f"_{args.family_minutes:g}_{args.near_per_phrase}_{tag}.npz")
    if os.path.exists(probs_path):
        z = np.load(probs_path, allow_pickle=True)
        pos_raw, neg_raw, near_raw = z["pos"].item(), list(z["neg"]), list(z["near"])
    else:
        pos_raw = {kw: [raw_probs(x, kws) for x in pos_sets[kw][0]] for kw in kws}
        neg_raw = [raw_probs(x, kws) for x in neg_x]
        near_raw = [raw_probs(x, kws) for x in near_x]
        np.savez(probs_path, pos=np.array(pos_raw, dtype=object), neg=np.array(neg_raw, dtype=object),
                 near=np.array(near_raw, dtype=object))
    print(f"raw probabilities ready in {time.time() - t0:.0f} s", file=sys.stderr)

    refr = int(W.REFRACTORY_S * RATE)
    sweep = {kw: [score(list(zip(pos_raw[kw], pos_sets[kw][1])), list(zip(neg_raw, neg_meta)),
                        list(zip(near_raw, near_meta)), kw, c, w, refr, neg_hours)
                  for w in WINDOWS for c in CUTOFFS] for kw in kws}
    json.dump(sweep, open(os.path.join(args.out, "sweep.json"), "w"), indent=1)
    for kw in kws:
        if args.sweep:
            print(f"\n{kw}: window cutoff recall P50 P99 FA FA/h near-miss-fires extra  FA-by-kind", file=sys.stderr)
            for r in sweep[kw]:
                print(f"  {r['window']} {r['cutoff']:.2f} {r['recall']:.3f} {r['p50']:.0f} {r['p99']:.0f} {r['fa']} "
                      f"{r['fa_h']:.2f} {r['near']:.3f} {r['extra']}  {r['fa_kinds']}", file=sys.stderr)
        pick, within = choose(sweep[kw], len(pos_sets[kw][0]))
        rule = ("<= 0.5 FA/h, recall within 2 SE of the best, P50 <= 130 ms, the fewest FA" if within else
                "NO setting keeps <= 0.5 FA/h: the fewest FA with P50 <= 150 ms")
        print(f"{kw}: chosen ({rule}): "
              f"cutoff {pick['cutoff']} window {pick['window']} recall {pick['recall']:.3f} P50 {pick['p50']:.0f} ms "
              f"FA/h {pick['fa_h']:.2f}", file=sys.stderr)

    # the exact run with what wake.py ships (its TUNED table, else the manifest's values)
    shipped = {kw: W.WakeModel(kw) for kw in kws}
    cutoff_of = {kw: m.cutoff for kw, m in shipped.items()}
    window_of = {kw: m.window for kw, m in shipped.items()}
    neg_det = exact(neg_x, kws, cutoff_of, window_of, W.REFRACTORY_S)
    near_det = exact(near_x, kws, cutoff_of, window_of, W.REFRACTORY_S)
    lines = ["| wake word | cutoff | window | recall (20 / 10 / 5 dB) | latency P50 | latency P99 | false accepts / h | near-miss phrases that woke it |",
             "|---|---|---|---|---|---|---|---|"]
    fa_text, met = {}, {}
    family_rows = ["| wake word | " + " | ".join(f"{f} ({60 * fam_hours.get(f, 0):.0f} min)" for f in fams) + " |",
                   "|---|" + "---|" * len(fams)]
    for kw in kws:
        xs, meta = pos_sets[kw]
        det = exact(xs, kws, cutoff_of, window_of, W.REFRACTORY_S)
        lat, extra, by_snr, by_fam = [], 0, {snr: [] for snr in SNRS}, {f: [] for f in fams}
        for d, m in zip(det, meta):
            ok = [s for n, s in d if n == kw and m["wake_start"] <= s <= m["wake_end"] + HIT_AFTER_S * RATE]
            if ok:
                lat.append((ok[0] - m["wake_end"]) / RATE * 1000)
                by_fam[m["family"]].append(lat[-1])
            extra += len(d) - (1 if ok else 0)
            by_snr[m["snr"]].append(bool(ok))
        fa_at = [(utterance_at(s, m["utterances"]), m.get("family", "espeak"))
                 for d, m in zip(neg_det, neg_meta) for n, s in d if n == kw]
        fa_at = [(u, f) for u, f in fa_at if not says(u["text"], kw)]
        fa_u, fa_fam = [u for u, _ in fa_at], [f for _, f in fa_at]
        fa = [u["kind"] for u in fa_u]
        n_fam = {f: sum(1 for m in meta if m["family"] == f) for f in fams}
        family_rows.append(f"| {kw} | " + " | ".join(
            f"{np.median(by_fam[f]):.0f} ms, {len(by_fam[f]) / max(1, n_fam[f]):.0%}, {fa_fam.count(f)}"
            if by_fam[f] else f"-, 0%, {fa_fam.count(f)}" for f in fams) + " |")
        fa_text[kw] = sorted({u["text"] or u["kind"] for u in fa_u})
        met[kw] = (np.percentile(lat, 50) <= TARGET_P50, len(fa) / neg_hours <= TARGET_FA_H)
        near_kw = [d for d, m in zip(near_det, near_meta) if not says(m["text"], kw)]
        near = sum(1 for d in near_kw if any(n == kw for n, _ in d))
        snr_recall = " / ".join(f"{np.mean(v):.0%}" for v in by_snr.values())
        lines.append(f"| {kw} | {cutoff_of[kw]} | {window_of[kw]} | {len(lat) / len(xs):.1%} ({snr_recall}) | "
                     f"{np.percentile(lat, 50):.0f} ms | {np.percentile(lat, 99):.0f} ms | "
                     f"{len(fa) / neg_hours:.2f} ({len(fa)}) | {near / len(near_kw):.1%} |")
        man = W.manifest_values(kw)
        ref = next((r for r in sweep[kw] if r["window"] == man[1] and abs(r["cutoff"] - man[0]) < 1e-9), None)
        if ref and man != (cutoff_of[kw], window_of[kw]):
            lines.append(f"| {kw} (manifest, replayed) | {man[0]} | {man[1]} | {ref['recall']:.1%} | {ref['p50']:.0f} ms | "
                         f"{ref['p99']:.0f} ms | {ref['fa_h']:.2f} ({ref['fa']}) | {ref['near']:.1%} |")
        print(f"{kw} shipped: {extra} extra detections on its positives; false accepts by kind "
              f"{ {k: fa.count(k) for k in sorted(set(fa))} }", file=sys.stderr)

    # the refractory period: how soon after a detection a gate without one fires again
    gaps = []
    for d in exact([x for kw in kws for x in pos_sets[kw][0]] + neg_x, kws, cutoff_of, window_of, 0.0):
        gaps += [(b[1] - a[1]) / RATE for a, b in zip(d, d[1:])]
    close = sorted(g for g in gaps if g < 5)
    longest = max((m["wake_end"] - m["wake_start"]) / RATE for kw in kws for m in pos_sets[kw][1])
    print(f"without a refractory period: {len(gaps)} repeat detections in one render, "
          f"{len(close)} within 5 s of the previous one: {[round(g, 2) for g in close]}; "
          f"longest wake word rendered: {longest:.2f} s", file=sys.stderr)

    cand = ["| wake word | window | cutoff | recall | latency P50 | latency P99 | false accepts / h | of them near-miss | near-miss renders woken |",
            "|---|---|---|---|---|---|---|---|---|"]
    for kw in kws:
        for r in sweep[kw]:
            if r["window"] in (1, W.manifest_values(kw)[1]) and r["cutoff"] >= 0.8:
                cand.append(f"| {kw} | {r['window']} | {r['cutoff']} | {r['recall']:.1%} | {r['p50']:.0f} ms | "
                            f"{r['p99']:.0f} ms | {r['fa_h']:.2f} | {r['fa_kinds'].get('near', 0)}/{r['fa']} | {r['near']:.1%} |")
    print("Candidates (replayed from the raw probabilities):\n\n" + "\n".join(cand) + "\n")

    n_pos = {kw: len(pos_sets[kw][0]) for kw in kws}
    head = (f"{', '.join(f'{n} {kw}' for kw, n in n_pos.items())} renders (the {len(fams)} synthesizer families "
            f"taking turns: {', '.join(fams)}; car noise at 20/10/5 dB), {neg_hours:.1f} h of everyday English and "
            f"Mandarin talk with car noise (by family below), {len(near_x)} near-miss phrases; 20 ms blocks, all "
            f"keywords loaded together, refractory {W.REFRACTORY_S:g} s. Latency = end of the wake word -> end of "
            f"the block that fired (`python bench/wake.py`).")
    yes = lambda b: "met" if b else "not met"  # noqa: E731
    tail = ("False accepts fired on: " + "; ".join(f"{kw}: {', '.join(repr(t) for t in fa_text[kw]) or 'none'}"
                                                   for kw in kws) + ". Targets (P50 <= 150 ms, <= 0.5 false accepts/h): "
            + "; ".join(f"{kw}: latency {yes(met[kw][0])}, false accepts {yes(met[kw][1])}" for kw in kws) + ".")
    table = (head + "\n\n" + "\n".join(lines) + "\n\n" + tail + "\n\nBy family, at the shipped settings: latency "
             "P50, recall, false accepts (in that family's hours of talk):\n\n" + "\n".join(family_rows))
    from paraedge_tools.docblock import publish

    publish(table, os.path.join(ROOT, "README.md") if args.readme else None, "<!-- wake:begin -->", "<!-- wake:end -->")
    print(f"done in {time.time() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
