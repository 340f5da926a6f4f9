"""Hotwords for free decoding: phrases (names, places) the recogniser should prefer, with a boost.

Paraformer decides every CIF position at once, so a hotword is a rescoring of the decoder's own
posteriors, not a search: wherever a phrase of L tokens fits L consecutive positions with a summed
log-posterior within `boost x L` nats of what greedy decoding picks there, the phrase replaces them
(best fit first, windows never overlapping). Only positions that greedy decoding turns into words
take part, so a hotword never fills the `</s>` position or trailing silence (no insertions after the
command's end). The same rows decide offline results and streaming partials and finals (the stream
rescores everything it has decoded so far), so a hotword spanning two chunks is found as well.

File format (`--hotwords FILE`): one phrase per line, optionally a tab and its boost in nats per
token (default DEFAULT_BOOST); `#` starts a comment. Every word must be a token of the model: an
English word token (or its lower case), or Chinese characters that each are one, as in a grammar
(edge.asr.text.TokenIndex); anything else is an error naming the
file and the line, at load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge.asr.text import TokenIndex
from edge.errors import ParaEdgeError, open_regular

# nats per token, measured on the demo model's held-out voices (tools/recipe/hotword_eval.py, 8
# phrases, 776 utterances per set, offline and streaming): 0.5 lifted streaming recall at -3 dB car
# noise from 0.909 to 0.920 and inserted a phrase into none of the 688 utterances without one on any
# set; 1.0 inserted 1 at -3 dB and 0 dB, 2.0 up to 2, 4.0 up to 3 (all into outputs already wrong)
DEFAULT_BOOST = 0.5
MAX_BOOST = 20.0
MIN_TOKEN_LOGP = float(np.log(0.05))  # a phrase token below 5 % posterior is not put in, whatever the boost
MAX_PHRASES = 10000


class HotwordError(ParaEdgeError):
    """A hotword list that cannot be used with this model."""


def phrase_ids(text: str, vocab: TokenIndex) -> list[int]:
    """A phrase as model token ids, by the grammar's rules (edge.asr.text.TokenIndex). Raises
    ValueError naming the first word or character the model cannot emit."""
    try:
        return list(vocab.ids(text))
    except ValueError as exc:
        raise ValueError(f"{exc.args[1]!r} is not a token of this model") from None


@dataclass
class Hotword:
    text: str
    ids: tuple
    boost: float


class Hotwords:
    def __init__(self, phrases: list[Hotword], drop: set[int]):
        self.phrases = phrases
        self.drop = drop  # ids greedy decoding drops (blank, sos, eos): never a hotword position

    @classmethod
    def load(cls, path: str, tokens: list[str], drop: set[int]) -> "Hotwords":
        try:
            with open_regular(path, encoding="utf-8-sig") as f:  # a BOM (Notepad's UTF-8) is not a token
                lines = f.read().splitlines()
        except FileNotFoundError:
            raise HotwordError(f"{path}: no such hotword file") from None
        except UnicodeDecodeError:
            raise HotwordError(f"{path}: not UTF-8 text; save the hotword list as UTF-8") from None
        except OSError as exc:
            raise HotwordError(f"{path}: cannot be read ({exc.strerror})") from None
        vocab = TokenIndex(tokens)
        phrases = []
        for n, line in enumerate(lines, 1):
            text, _, boost = line.split("#", 1)[0].partition("\t")
            if not text.strip():
                continue
            try:
                value = float(boost) if boost.strip() else DEFAULT_BOOST
            except ValueError:
                raise HotwordError(f"{path}:{n}: boost {boost.strip()!r:.30} is not a number "
                                   f"(write 'phrase<TAB>boost', boost in nats per token)") from None
            if not (math.isfinite(value) and 0 < value <= MAX_BOOST):
                raise HotwordError(f"{path}:{n}: boost {value:g} must be within (0, {MAX_BOOST:g}] nats per token")
            try:
                ids = phrase_ids(text, vocab)
            except ValueError as exc:
                raise HotwordError(f"{path}:{n}: {text.strip()!r:.60}: {exc}; the model cannot emit it, so it "
                                   f"cannot be a hotword") from None
            phrases.append(Hotword(text.strip(), tuple(ids), value))
            if len(phrases) > MAX_PHRASES:
                raise HotwordError(f"{path}: more than {MAX_PHRASES} hotwords")
        if not phrases:
            raise HotwordError(f"{path}: no hotwords in it (one phrase per line)")
        return cls(phrases, drop)

    def pick(self, log_probs: np.ndarray) -> list[int]:
        """Greedy ids of the positions, with every hotword that fits within its boost put in."""
        best = log_probs.argmax(axis=-1)
        words = np.array([int(i) not in self.drop for i in best], bool)
        greedy = log_probs.max(axis=-1).astype(np.float64)
        fits = []  # (margin, start, hotword)
        for hw in self.phrases:
            n = len(hw.ids)
            if n > len(best):
                continue
            # the phrase's log-probability at every start, against greedy's over the same window
            rows = np.arange(len(best) - n + 1)[:, None] + np.arange(n)[None, :]
            own = log_probs[rows, np.array(hw.ids)[None, :]]
            gain = own.sum(axis=1) - greedy[rows].sum(axis=1) + hw.boost * n
            # every token of the phrase must be a real candidate where it lands, not noise the boost lifts
            usable = np.lib.stride_tricks.sliding_window_view(words, n).all(axis=1) & (own.min(axis=1) >= MIN_TOKEN_LOGP)
            for start in np.flatnonzero((gain >= 0) & usable):
                fits.append((float(gain[start]), int(start), hw))
        ids = [int(i) for i in best]
        taken = np.zeros(len(best), bool)
        for _, start, hw in sorted(fits, key=lambda f: -f[0]):
            span = slice(start, start + len(hw.ids))
            if not taken[span].any():
                taken[span] = True
                ids[span] = hw.ids
        return [i for i in ids if i not in self.drop]
