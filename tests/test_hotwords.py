"""Hotwords in free decoding (edge/asr/hotwords.py): the rescoring rule on made-up posteriors, the
file's errors, and the shipped demo model offline and streaming."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from edge.asr.hotwords import Hotword, HotwordError, Hotwords, phrase_ids
from edge.asr.text import TokenIndex

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "models", "demo")
TOKENS = ["<blank>", "<s>", "</s>", "打", "开", "空", "调", "车", "窗", "open", "the", "window", "trunk"]
DROP = {0, 1, 2}
IDX = {t: i for i, t in enumerate(TOKENS)}
VOCAB = TokenIndex(TOKENS)


def posteriors(rows: list[dict]) -> np.ndarray:
    """[N, V] log-probs: each row's listed tokens get their probability, the rest share what is left."""
    out = np.full((len(rows), len(TOKENS)), 1e-6, np.float64)
    for j, probs in enumerate(rows):
        for tok, p in probs.items():
            out[j, IDX[tok]] = p
    return np.log(out / out.sum(axis=1, keepdims=True)).astype(np.float32)


def hw(text: str, boost: float) -> Hotwords:
    return Hotwords([Hotword(text, tuple(phrase_ids(text, VOCAB)), boost)], DROP)


def text(ids) -> list[str]:
    return [TOKENS[i] for i in ids]


def test_a_near_miss_becomes_the_hotword_and_a_far_one_does_not():
    lp = posteriors([{"open": 0.9}, {"the": 0.9}, {"window": 0.55, "trunk": 0.4}, {"</s>": 0.95}])
    assert text(Hotwords([], DROP).pick(lp)) == ["open", "the", "window"]
    assert text(hw("trunk", 1.0).pick(lp)) == ["open", "the", "trunk"]  # 0.32 nats behind: within 1 nat
    assert text(hw("trunk", 0.1).pick(lp)) == ["open", "the", "window"]  # beyond 0.1 nat
    far = posteriors([{"open": 0.9}, {"the": 0.9}, {"window": 0.97, "trunk": 0.02}, {"</s>": 0.95}])
    assert text(hw("trunk", 10.0).pick(far)) == ["open", "the", "window"]  # under 5 %: never, whatever the boost


def test_a_hotword_never_fills_the_end_of_sentence_or_overlaps():
    lp = posteriors([{"打": 0.9}, {"开": 0.9}, {"</s>": 0.5, "车": 0.45}])
    assert text(hw("车", 5.0).pick(lp)) == ["打", "开"]  # the </s> position is not a word: nothing inserted
    lp = posteriors([{"打": 0.6, "车": 0.3}, {"开": 0.6, "窗": 0.3}, {"空": 0.6, "窗": 0.2}, {"</s>": 0.9}])
    picked = Hotwords([Hotword("车窗", (7, 8), 1.0), Hotword("窗", (8,), 0.8)], DROP).pick(lp)
    assert text(picked) == ["车", "窗", "空"]  # the best fit first, the overlapping one left out


def test_chinese_phrases_split_into_characters_and_unknown_words_are_refused():
    assert phrase_ids("打开 车窗", VOCAB) == [3, 4, 7, 8]
    assert phrase_ids("open the window", VOCAB) == [9, 10, 11]
    with pytest.raises(ValueError, match="'door'"):
        phrase_ids("open the door", VOCAB)
    with pytest.raises(ValueError, match="'门'"):
        phrase_ids("车门", VOCAB)


@pytest.mark.parametrize("content, message", [
    ("open the door\n", ":1: 'open the door': 'door' is not a token of this model"),
    ("# comment\n\ntrunk\tlots\n", ":3: boost 'lots' is not a number"),
    ("trunk\t-1\n", ":1: boost -1 must be within (0, 20]"),
    ("trunk\tnan\n", ":1: boost nan must be within"),
    ("# only a comment\n", "no hotwords in it"),
    (b"\xff\xfe", "not UTF-8"),
])
def test_bad_hotword_files_are_one_line(tmp_path, content, message):
    f = tmp_path / "hotwords.txt"
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(HotwordError) as e:
        Hotwords.load(str(f), TOKENS, DROP)
    assert message in str(e.value) and str(e.value).startswith(str(f)) and "\n" not in str(e.value)


def test_demo_model_offline_and_streaming_with_hotwords(tmp_path):
    """Hotwords that are the spoken words change nothing; streaming rescoring sees every chunk's rows."""
    from edge.asr.audio import load_audio
    from edge.asr.recognizer import Recognizer

    meta = {m["file"]: m for m in json.load(open(os.path.join(DEMO, "samples", "samples.json"), encoding="utf-8"))}
    f = tmp_path / "hotwords.txt"
    f.write_text("navigate home\t2\n打开空调\n", encoding="utf-8")
    rec = Recognizer(DEMO, "onnxruntime", int8=True, hotwords=str(f))
    for name in ("01_okay_nabu_zh.wav", "02_alexa_en.wav"):
        x = load_audio(os.path.join(DEMO, "samples", name))[0]
        start = int(meta[name]["command_start_s"] * 16000) - 1600
        assert rec.transcribe(x[start:]).text == meta[name]["command"]
        assert rec.transcribe_streaming(x[start:]).text == meta[name]["command"]


def test_cli_bad_hotwords_file_is_one_line(tmp_path):
    f = tmp_path / "hw.txt"
    f.write_text("open the door\n", encoding="utf-8")
    p = subprocess.run([sys.executable, "-m", "edge", "transcribe", os.path.join(DEMO, "samples", "02_alexa_en.wav"),
                        "-m", DEMO, "--hotwords", str(f)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "'door' is not a token" in p.stderr, p.stderr
