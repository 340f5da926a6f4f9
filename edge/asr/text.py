"""Token ids -> text, following FunASR's `sentence_postprocess` for character/BPE vocabularies:
CJK characters are joined directly, whole English words are separated by spaces, a trailing
`@@` glues a BPE piece to the next one, and no space separates English from CJK."""

from __future__ import annotations

SPECIAL = {"<s>", "</s>", "<unk>", "<OOV>", "<blank>"}


def _is_cjk(token: str) -> bool:
    return bool(token) and all("\u4e00" <= ch <= "\u9fff" for ch in token)


def tokens_to_text(tokens: list[str]) -> str:
    words = [t for t in tokens if t not in SPECIAL]
    out: list[str] = []
    piece = ""
    for tok in words:
        if _is_cjk(tok):
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
