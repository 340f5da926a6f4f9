"""Token ids -> text, following FunASR's `sentence_postprocess` for character/BPE vocabularies:
CJK characters are joined directly, whole English words are separated by spaces, a trailing
`@@` glues a BPE piece to the next one, and no space separates English from CJK."""

from __future__ import annotations

import re

SPECIAL = {"<s>", "</s>", "<unk>", "<OOV>", "<blank>"}


def is_cjk_token(token: str) -> bool:
    """A Mandarin character token (joined without spaces), as opposed to an English word or piece."""
    return bool(token) and all("\u4e00" <= ch <= "\u9fff" for ch in token)


def tokens_to_text(tokens: list[str]) -> str:
    words = [t for t in tokens if t not in SPECIAL]
    out: list[str] = []
    piece = ""
    for tok in words:
        if is_cjk_token(tok):
            if out and out[-1] == " ":
                out.pop()
            if piece:
                out.append(piece)
                piece = ""
            out.append(tok)
        elif "@@" in tok:
            piece += tok.replace("@@", "")
        else:
            out.extend([piece + tok, " "])
            piece = ""
    if piece:
        out.append(piece)
    return "".join(out).strip()


class TokenIndex:
    """Words -> model token ids, for phrases users write (grammar templates, hotwords): a word that is
    a token (or its lower case), else its CJK characters and other runs, each a token."""

    def __init__(self, tokens: list):
        self.tokens = list(tokens)
        self.index = {}
        for i, t in enumerate(self.tokens):
            self.index.setdefault(t, i)

    def ids(self, text: str) -> tuple:
        """Token ids of `text`; raises ValueError(word, piece) for a word the model cannot emit."""
        out = []
        for word in text.split():
            if word in SPECIAL:
                raise ValueError(word, word)
            if word in self.index:
                out.append(self.index[word])
                continue
            if word.lower() in self.index and word.lower() not in SPECIAL:
                out.append(self.index[word.lower()])
                continue
            # not a token itself: CJK runs split into characters; other runs must be tokens
            for piece in re.findall(r"[\u4e00-\u9fff]|[^\u4e00-\u9fff]+", word):
                if piece in self.index and piece not in SPECIAL:
                    out.append(self.index[piece])
                elif piece.lower() in self.index and piece.lower() not in SPECIAL:
                    out.append(self.index[piece.lower()])
                else:
                    raise ValueError(word, piece)
        return tuple(out)
