"""Speech for measuring and training wake-word gates: the wake word said by every synthesizer family the
recipe trains on (espeak-ng, MBROLA, Pico, RHVoice, Piper, Kokoro, SAM), everyday English and Mandarin
talk, in-car commands and near-miss phrases, in generated car noise. Used by `bench/wake.py` (the gate's
latency and false accepts) and `paraedge_tools.recipe.wake_verifier` (its second stage), each with its own
seeds so that no render is both trained on and measured. flite and festival never speak here: they are
kept for held-out evaluation (voices.get refuses them).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import warnings
import zlib

import numpy as np

RATE = 16000
PHRASE = {"okay_nabu": "okay nabu", "alexa": "alexa", "hey_jarvis": "hey jarvis", "hey_mycroft": "hey mycroft"}
EN_VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us-nyc", "en-gb-x-gbclan",
             "en-gb-x-gbcwmd"]
SNRS = (20, 10, 5)

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


FAMILIES = ("espeak", "mbrola", "pico", "rhvoice", "piper", "kokoro", "sam")  # the trained families that speak English


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


def _talk_segment(rng, k: int, seg_s: float, family: str, near: list[str] | None = None) -> tuple[np.ndarray, dict]:
    """One segment of everyday talk by `family` (Mandarin only where it has Mandarin voices), with its
    utterances (start, end, kind, text); 5 % of them are `near` phrases (default NEAR_MISS)."""
    near = NEAR_MISS if near is None else near
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
            kind, lang, text = "near", "en", near[rng.integers(len(near))]
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


def _family_segment(family: str, k: int, seed: int, seg_s: float, near: list[str] | None = None
                    ) -> tuple[np.ndarray, dict]:
    return _talk_segment(np.random.default_rng([seed, zlib.crc32(family.encode()), k]), k, seg_s, family, near)


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


def trace(x: np.ndarray, names: list[str]) -> tuple[np.ndarray, np.ndarray, dict, np.ndarray]:
    """x through the gate's frontend and each model exactly as WakeGate streams it (no decision rule,
    no verifier): (feature frames [n, 40], sample position after each inference, {model: raw
    probability per inference}, number of frames heard at each inference)."""
    from pymicro_features import MicroFrontend

    from edge.daemon.wake import HOP, WakeModel

    models = [WakeModel(m, cutoff=0.5, window=1, verify=False) for m in names]
    fe, buf, pos = MicroFrontend(), np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2").tobytes(), 0
    frames, where, heard, probs = [], [], [], {m: [] for m in names}
    while pos + 2 * HOP <= len(buf):
        out = fe.process_samples(buf[pos : pos + 2 * HOP])
        pos += 2 * max(out.samples_read, 1)
        if not out.features:
            continue
        frames.append(np.asarray(out.features, dtype=np.float32))
        for name, m in zip(names, models):
            p = m.push(frames[-1])
            if p is not None:
                probs[name].append(p)
                if name == names[0]:
                    where.append(pos // 2)
                    heard.append(len(frames))
    return (np.asarray(frames, np.float32).reshape(-1, 40), np.asarray(where, np.int64),
            {k: np.asarray(v, np.float32) for k, v in probs.items()}, np.asarray(heard, np.int64))
