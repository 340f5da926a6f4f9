"""`paraedge profile` on the emulated aarch64 board, in instructions instead of seconds.

The very same profiler runs inside tools/armroot.py's aarch64 CPython under
`qemu-aarch64 -cpu cortex-a76` with the instruction-count plugin (tools/qemu/insn_count.c). Every
stage the profiler times natively is bracketed by a marker (edge/insn_markers.py), so each
backend gets dynamic aarch64 instruction counts per stage; wall time under emulation means
nothing, these counts are exact and identical run to run. Printed per second of audio, with
ratios against onnxruntime INT8 measured in the same run.

    python -m tools.arm_profile --model models/demo --audio models/demo/samples/02_alexa_en.wav \\
        --backend ref,onnxruntime:int8,neon --streaming -o out/arm-profile
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from tools import armroot, qemu_insn

BASE = "onnxruntime:int8"


def parse_stages(path: str) -> list[dict]:
    """The plugin's snapshot blocks -> [{stage name: (instructions, calls)}], one per backend."""
    from edge.profile import MARKED

    blocks: list[dict] = []
    if not os.path.exists(path):
        return blocks
    for line in open(path, encoding="utf-8"):
        parts = line.split()
        if parts == ["snapshot"]:
            blocks.append({})
        elif len(parts) == 3 and blocks:
            k, insns, calls = (int(p) for p in parts)
            blocks[-1][MARKED[k]] = (insns, calls)
    return blocks


def emulated_profile(model: str, audio: list[str], backends: list[str], streaming: bool, cpu: str = "cortex-a76",
                     warmup: int = 1, timeout: float = 3600) -> dict:
    root = armroot.build_root()
    with tempfile.TemporaryDirectory() as d:
        stages_file, total_file = os.path.join(d, "stages"), os.path.join(d, "total")
        args = ["-m", "edge", "profile", "--model", os.path.abspath(model), "--backend", ",".join(backends),
                "--audio", *[os.path.abspath(a) for a in audio], "--runs", "1", "--warmup", str(warmup),
                "--threads", "1", "-o", d]
        if streaming:
            args.append("--streaming")
        plugin = ["-plugin", f"{qemu_insn.plugin()},out={total_file},stages={stages_file}"]
        extra = []
        if any(b.split(":")[0] in ("neon", "auto") for b in backends):
            from kernels.build import build_for_armroot  # the NEON kernels, cross-built for this root

            extra.append(build_for_armroot(root)[1])
        env = armroot.env_for(root, extra)
        env.update(PARAEDGE_INSN_MARKERS="1", OPENBLAS_NUM_THREADS="1", MPLBACKEND="Agg")
        import subprocess

        r = subprocess.run(armroot.command(args, root, cpu, plugin), capture_output=True, text=True, env=env,
                           cwd=armroot.REPO, timeout=timeout)
        if r.returncode:
            raise RuntimeError(f"emulated profile failed (exit {r.returncode}): {r.stderr[-1500:]}")
        report = json.load(open(os.path.join(d, "report.json"), encoding="utf-8"))
        blocks = parse_stages(stages_file)
    audio_s = sum(a["seconds"] for a in report["audio"])
    ran = [name for name, e in report["backends"].items() if "skipped" not in e]
    if len(blocks) != len(ran):
        raise RuntimeError(f"expected {len(ran)} blocks of stage counts, got {len(blocks)}")
    out = {"cpu": cpu, "mode": report["mode"], "audio_s": audio_s, "audio": report["audio"], "versions": report["versions"],
           "backends": {}}
    for name, block in zip(ran, blocks):
        total = block.get("total", (0, 0))[0]
        out["backends"][name] = {
            "insns_total": total,
            "minsns_per_audio_s": total / audio_s / 1e6,
            "load_minsns": block.get("load", (0, 0))[0] / 1e6,
            "stages_minsns_per_audio_s": {k: v[0] / audio_s / 1e6 for k, v in block.items() if k not in ("total", "load")},
            "text": report["backends"][name]["text"],
        }
    for name, e in report["backends"].items():
        if "skipped" in e:
            out["backends"][name] = {"skipped": e["skipped"]}
    base = out["backends"].get(BASE, {}).get("minsns_per_audio_s")
    for e in out["backends"].values():
        if base and "minsns_per_audio_s" in e:
            e["vs_onnxruntime_int8"] = e["minsns_per_audio_s"] / base
    return out


def table(rep: dict) -> str:
    rows = [f"emulated {rep['cpu']} (qemu-user, instruction counts), {rep['mode']}, {rep['audio_s']:.1f} s audio, 1 thread",
            f"{'backend':18s} {'M insn/audio s':>15s} {'x ORT int8':>10s} {'load M':>8s}  stages (M insn per audio s)"]
    for name, e in rep["backends"].items():
        if "skipped" in e:
            rows.append(f"{name:18s} skipped: {e['skipped']}")
            continue
        ratio = e.get("vs_onnxruntime_int8")
        st = " ".join(f"{k}={v:.2f}" for k, v in e["stages_minsns_per_audio_s"].items())
        rows.append(f"{name:18s} {e['minsns_per_audio_s']:15.2f} {(f'{ratio:.2f}' if ratio else '-'):>10s} "
                    f"{e['load_minsns']:8.1f}  {st}")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.arm_profile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", "-m", required=True)
    ap.add_argument("--audio", nargs="+", required=True, help="keep it short: emulation runs ~200x slower")
    ap.add_argument("--backend", "-b", default="ref,onnxruntime,onnxruntime:int8,neon")
    ap.add_argument("--streaming", action="store_true")
    ap.add_argument("--cpu", default="cortex-a76", help="qemu CPU model (a board profile's qemu_cpu)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("-o", "--output", help="directory for arm_report.json")
    a = ap.parse_args(argv)
    rep = emulated_profile(a.model, a.audio, a.backend.split(","), a.streaming, a.cpu, a.warmup)
    print(table(rep))
    if a.output:
        os.makedirs(a.output, exist_ok=True)
        with open(os.path.join(a.output, "arm_report.json"), "w", encoding="utf-8") as f:
            json.dump(rep, f, indent=1, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RuntimeError, armroot.ArmRootError, qemu_insn.QemuInsnError) as exc:
        print(f"paraedge: error: {exc}", file=sys.stderr)
        sys.exit(2)
