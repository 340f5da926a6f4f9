"""Join corpus builds into one corpus directory the trainer reads, without copying audio.

`python -m paraedge_tools.recipe.join OUT BUILD [BUILD ...] [--families espeak]`

OUT/train.jsonl holds the training rows of every BUILD in the order given (paths made absolute,
so OUT may live anywhere), optionally only those of some synthesizer families; OUT/test_clean.jsonl
is the first BUILD's, what `train`'s periodic held-out check decodes. The shipped recipe's first
step trains on four espeak renders this way: the espeak rows of the nine-family build and three
`corpus --families espeak --seed N` builds (23,808 rows). Measured there against one render (the
card, Training): espeak at 5 dB car noise after the first step, offline 96.8 -> 97.4 %, streaming
equal to offline 95.1 -> 96.2 %.
"""

from __future__ import annotations

import argparse
import json
import os

from edge.errors import ParaEdgeError
from paraedge_tools.output import OutputDir, digests
from paraedge_tools.recipe.corpus import family_of, read_manifest, write_manifest

MANIFEST, FORMAT = "join.json", "paraedge-corpus-join/1"


def join(out: str, builds: list[str], families: list[str] | None = None) -> dict:
    """Write OUT/train.jsonl and OUT/test_clean.jsonl (see the module docstring); returns the row
    counts. ValueError, before anything is written, for a build that is not one, an OUT that is one
    of the builds, or a family none of the builds has rendered; ParaEdgeError for an OUT that is
    neither new, empty nor an earlier join (`OutputDir`: a corpus build's manifests are never
    overwritten). OUT is written whole or not at all."""
    if not builds:
        raise ValueError("no corpus build given: pass one or more directories written by paraedge_tools.recipe.corpus")
    if os.path.abspath(out) in {os.path.abspath(b) for b in builds}:
        raise ValueError(f"{out}: the output is one of the builds; join into a new directory")
    output = OutputDir(out, MANIFEST, FORMAT, "joined corpus")   # refuses a folder that is not ours, before any work
    rows = []
    for b in builds:
        path = os.path.join(b, "train.jsonl")
        if not os.path.isfile(path):
            raise ValueError(f"{path}: no such file; pass directories written by paraedge_tools.recipe.corpus")
        rows += read_manifest(path)
    if families:
        have = {family_of(r) for r in rows}
        missing = [f for f in families if f not in have]
        if missing:
            raise ValueError(f"--families: no training renders of '{missing[0]}' in {', '.join(builds)} "
                             f"(families there: {', '.join(sorted(have))})")
        rows = [r for r in rows if family_of(r) in families]
    test = os.path.join(builds[0], "test_clean.jsonl")
    test_rows = read_manifest(test) if os.path.isfile(test) else []
    with output as tmp:
        write_manifest(os.path.join(tmp, "train.jsonl"), rows)
        write_manifest(os.path.join(tmp, "test_clean.jsonl"), test_rows)
        with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as f:
            json.dump({"format": FORMAT, "builds": [os.path.abspath(b) for b in builds], "families": families,
                       "files": digests(tmp, MANIFEST)}, f, indent=1)
    return {"train": len(rows), "test_clean": len(test_rows)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("builds", nargs="+", help="corpus directories (paraedge_tools.recipe.corpus OUT)")
    ap.add_argument("--families", default=None, type=lambda v: [x for x in v.split(",") if x],
                    help="comma-separated synthesizer families whose training rows to keep (default: all)")
    args = ap.parse_args(argv)
    try:
        counts = join(args.out, args.builds, args.families)
    except (ValueError, ParaEdgeError) as e:
        ap.error(str(e))
    print(counts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
