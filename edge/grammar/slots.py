"""Typed slots: the values a slot can take, how each value is said (Mandarin and English forms),
and inverse text normalisation (ITN) from a said form back to the value.

A slot value is what the integrator gets: an int for number types (temperature, fan, volume,
percent, number), a canonical name for zones, on/off and enums. A form is how the value is said,
as the model's words: "二十二" / "twenty two" for 22, "左前" / "front left" for front_left.
Forms with CJK characters are Mandarin, the others English; a template only expands the forms of
its own language (a bare "{value}" template, with neither, expands both).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

ZH_DIGITS = "零一二三四五六七八九"
EN_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
           "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
EN_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
NUMBER_MAX = 100  # forms are rendered for 0..100: enough for every in-car number (temperature, %, level)


def is_cjk(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def has_latin(text: str) -> bool:
    return re.search(r"[A-Za-z]", text) is not None


def language(text: str) -> str:
    """'zh' for text with CJK characters only, 'en' for Latin letters only, 'any' for both or neither."""
    zh, en = is_cjk(text), has_latin(text)
    return "zh" if zh and not en else "en" if en and not zh else "any"


# -- numbers ----------------------------------------------------------------------------------
def zh_number(n: int) -> str:
    """0..100 as spoken Mandarin: 十六, 二十二, 三十, 一百 (十, not 一十, for 10-19, as people say it)."""
    if not 0 <= n <= NUMBER_MAX:
        raise ValueError(f"{n} is outside 0..{NUMBER_MAX}")
    if n == 100:
        return "一百"
    if n < 10:
        return ZH_DIGITS[n]
    tens, ones = divmod(n, 10)
    return ("" if tens == 1 else ZH_DIGITS[tens]) + "十" + (ZH_DIGITS[ones] if ones else "")


def en_number(n: int) -> str:
    """0..100 as spoken English words, space-separated as the model's word tokens: 'twenty two'."""
    if not 0 <= n <= NUMBER_MAX:
        raise ValueError(f"{n} is outside 0..{NUMBER_MAX}")
    if n == 100:
        return "one hundred"
    if n < 20:
        return EN_ONES[n]
    tens, ones = divmod(n, 10)
    return EN_TENS[tens] + (" " + EN_ONES[ones] if ones else "")


def parse_zh_number(text: str) -> int | None:
    """ITN of a Mandarin number: 二十二 -> 22, 十六 -> 16, 三十 -> 30, 两 -> 2, 一百 -> 100; None if not one."""
    t = text.strip().replace("两", "二").replace("〇", "零")
    if not t or any(ch not in ZH_DIGITS + "十百" for ch in t):
        return None
    if t == "一百":
        return 100
    if len(t) == 1 and t in ZH_DIGITS:
        return ZH_DIGITS.index(t)
    m = re.fullmatch(f"([{ZH_DIGITS[2:]}]?)十([{ZH_DIGITS[1:]}]?)", t)
    if m:
        return (ZH_DIGITS.index(m[1]) if m[1] else 1) * 10 + (ZH_DIGITS.index(m[2]) if m[2] else 0)
    return None


def parse_en_number(text: str) -> int | None:
    """ITN of an English number: 'twenty two' / 'twenty-two' -> 22, 'three' -> 3; None if not one."""
    words = text.lower().replace("-", " ").split()
    if words == ["one", "hundred"] or words == ["a", "hundred"]:
        return 100
    if len(words) == 1 and words[0] in EN_ONES:
        return EN_ONES.index(words[0])
    if 1 <= len(words) <= 2 and words[0] in EN_TENS[2:]:
        tens = EN_TENS.index(words[0]) * 10
        if len(words) == 1:
            return tens
        if words[1] in EN_ONES[1:10]:
            return tens + EN_ONES.index(words[1])
    return None


# Unit words around a bare number answer ("二十二度", "三档", "level three", "fifty percent")
_ZH_UNITS = ("度", "档", "级", "格")
_EN_UNITS = ("degrees", "degree", "celsius", "percent", "level", "speed", "to")


def normalise_number(text: str) -> int | None:
    """ITN of a bare number answer, unit words stripped: '二十二度' -> 22, 'twenty two' -> 22,
    '三档' / 'level three' -> 3, '百分之五十' / 'fifty percent' -> 50. None when it is not a number."""
    t = text.strip()
    if is_cjk(t):
        t = t.removeprefix("百分之")
        while t and t.endswith(_ZH_UNITS):
            t = t[:-1]
        return parse_zh_number(t)
    words = [w for w in t.lower().replace("%", " percent").split() if w not in _EN_UNITS]
    return parse_en_number(" ".join(words))


# -- slot types -------------------------------------------------------------------------------
ZONES = {  # canonical name -> default forms (one per language; a grammar's `values:` adds synonyms)
    "driver": ["主驾", "driver"],
    "passenger": ["副驾", "passenger"],
    "front_left": ["左前", "front left"],
    "front_right": ["右前", "front right"],
    "rear_left": ["左后", "rear left"],
    "rear_right": ["右后", "rear right"],
}
ON_OFF = {"on": ["打开", "on"], "off": ["关闭", "off"]}

# Number types: name -> default range (inclusive). `number` has none: a grammar must give one.
NUMBER_TYPES = {"number": None, "temperature": (16, 30), "fan": (1, 7), "volume": (0, 10), "percent": (0, 100)}
ENUM_TYPES = {"zone": ZONES, "onoff": ON_OFF, "enum": None}
SLOT_TYPES = tuple(NUMBER_TYPES) + tuple(ENUM_TYPES)


@dataclass
class SlotType:
    """A slot's values and their forms: values[value] = list of forms (str, words space-separated
    for English, characters for Mandarin). `kind` is the built-in type it was made from."""

    kind: str
    values: dict = field(default_factory=dict)

    def forms(self, lang: str) -> list[tuple[object, str]]:
        """(value, form) pairs said in `lang` ('zh', 'en' or 'any' for both), values in order."""
        return [(v, f) for v, fs in self.values.items() for f in fs if lang == "any" or language(f) == lang]


def number_slot(kind: str, values) -> SlotType:
    """A number type over `values` (ints 0..100), each said in Mandarin and English.
    percent adds its words: 百分之五十 / fifty percent."""
    out = {}
    for n in values:
        zh, en = zh_number(n), en_number(n)
        if kind == "percent":
            zh, en = "百分之" + zh, en + " percent"
        out[n] = [zh, en]
    return SlotType(kind, out)


def enum_slot(kind: str, values: dict) -> SlotType:
    """zone / onoff / enum: values = {canonical name: [forms]}."""
    return SlotType(kind, {k: list(v) for k, v in values.items()})


def normalise(kind: str, text: str):
    """ITN of a said slot value for a built-in type: numbers -> int, zones / on-off -> canonical
    name; None when the text is not a value of that type (e.g. '左前' -> 'front_left')."""
    if kind in NUMBER_TYPES:
        return normalise_number(text)
    table = ENUM_TYPES.get(kind)
    if not table:
        return None
    t = " ".join(text.lower().split())
    for value, forms in table.items():
        if t in forms or t == value.replace("_", " "):
            return value
    return None
