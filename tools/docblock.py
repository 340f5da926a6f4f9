"""Measured tables go into Markdown between markers, written by the script that measured them
(never typed): the model card's results and pruning tables, the grammar and wake-word numbers."""

from __future__ import annotations


def write_between(path: str, begin: str, end: str, body: str, heading: str | None = "") -> None:
    """Replace what lies between the `begin` and `end` markers of a Markdown file with `body`.
    Without the markers the block is appended, under `heading` when one is given, and a file that
    does not exist yet is started with it (a model dir released somewhere new has no card: the
    measurement is not lost to a traceback); heading=None makes a missing marker or file an error
    instead (a README whose section must already exist)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        if heading is None:
            raise SystemExit(f"{path}: no such file; the table belongs in an existing README") from None
        text = ""
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    elif heading is None:
        raise SystemExit(f"{path}: no {begin} ... {end} markers; add them where the table belongs")
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + (f"{heading}\n\n" if heading else "") + block + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def publish(text: str, readme: str | None, begin: str, end: str) -> None:
    """A bench's table: printed, and written between its markers in `readme` when one is given
    (the markers must be there: a bench's table has its place in the README)."""
    print(text)
    if readme:
        write_between(readme, begin, end, text, heading=None)
