"""What grammar matching costs: one `Grammar.match` per utterance, here and on the emulated A76.

`python bench/grammar_cost.py [--arm]`

Three grammars (edge.grammar.decode's bench): the demo's (154 expansions, N = 9 CIF positions), a
templated car grammar (zones x temperatures x levels, ~1,000 expansions, N = 12) and 1,000 random
expansions all within 2 tokens of N = 12 (the worst case: none skipped by length). Prints x86
milliseconds, and with --arm the aarch64 instructions per match counted by qemu's plugin under
`-cpu cortex-a76` (the same markers as tools/emu/arm_profile.py), with the time that is at 2.4 GHz
and one instruction per cycle (a Cortex-A76 sustains more than one: an upper bound).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
REPS = 20
GHZ = 2.4

# runs inside the emulated board's Python: one block of counts per grammar, REPS matches each
INNER = f"""
import numpy as np
from edge.diag import markers
from edge.diag.profile import MARKED
from edge.grammar import decode as D
import json, os
tokens = json.load(open(os.path.join({ROOT!r}, "models", "demo", "tokens.json"), encoding="utf-8"))
demo = D.Grammar.load(os.path.join({ROOT!r}, "models", "demo", "grammar.yaml"), tokens)
rng = np.random.default_rng(0)
for gram, n in ((demo, 9), (D.templated(), 12), (D.synthetic(len(tokens), 1000, 12), 12)):
    x = rng.normal(0, 3, (n, len(gram.tokens))).astype(np.float32)
    x[:, 0:3] = -30.0
    lp = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    gram.match(lp)
    markers.reset()
    markers.begin(MARKED.index("total"))
    for _ in range({REPS}):
        gram.match(lp)
    markers.end(MARKED.index("total"))
    markers.snapshot()
"""


def arm_counts() -> list[int]:
    import subprocess

    from paraedge_tools.emu import armroot, qemu_insn
    from paraedge_tools.emu.arm_profile import parse_stages

    root = armroot.build_root()
    with tempfile.TemporaryDirectory() as d:
        stages, total = os.path.join(d, "stages"), os.path.join(d, "total")
        env = armroot.env_for(root)
        env.update(PARAEDGE_INSN_MARKERS="1", OPENBLAS_NUM_THREADS="1")
        plugin = ["-plugin", f"{qemu_insn.plugin()},out={total},stages={stages}"]
        r = subprocess.run(armroot.command(["-c", INNER], root, "cortex-a76", plugin), capture_output=True, text=True,
                           env=env, cwd=ROOT, timeout=1800)
        if r.returncode:
            raise SystemExit(f"emulated run failed: {r.stderr[-1000:]}")
        return [b["total"][0] for b in parse_stages(stages)]


def main(argv=None) -> int:
    from edge.grammar.decode import bench

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arm", action="store_true", help="also count aarch64 instructions on the emulated Cortex-A76")
    args = ap.parse_args(argv)
    native = bench()
    counts = arm_counts() if args.arm else [None] * len(native)
    print("| grammar | expansions (within 2 of N) | N | x86 match ms | A76 M instructions per match | A76 ms at 2.4 GHz, IPC 1 |")
    print("|---|---|---|---|---|---|")
    for (name, v), insns in zip(native.items(), counts):
        arm = "-" if insns is None else f"{insns / REPS / 1e6:.2f}"
        ms = "-" if insns is None else f"{insns / REPS / (GHZ * 1e6):.2f}"
        print(f"| {name} | {v['expansions']} ({v['within_2']}) | {v['N']} | {v['match_ms']:.3f} | {arm} | {ms} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
