"""`paraedge profile` on the emulated aarch64 board, in instructions instead of seconds.

The very same profiler runs inside tools/emu/armroot.py's aarch64 CPython under
`qemu-aarch64 -cpu cortex-a76` with the instruction-count plugin (tools/emu/qemu/insn_count.c). Every
stage the profiler times natively is bracketed by a marker (edge/diag/markers.py), so each
backend gets dynamic aarch64 instruction counts per stage; wall time under emulation means
nothing, these counts are exact and identical run to run. Printed per second of audio, with
ratios against onnxruntime INT8 measured in the same run.

    python -m paraedge_tools.emu.arm_profile --model models/demo --audio models/demo/samples/02_alexa_en.wav \\
        --backend ref,onnxruntime:int8,neon --streaming -o out/arm-profile
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

from paraedge_tools.emu import armroot, qemu_insn

BASE = "onnxruntime:int8"


def parse_stages(path: str) -> list[dict]:
    """The plugin's snapshot blocks -> [{stage name: (instructions, calls)}], one per backend."""
    from edge.diag.profile import MARKED

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


def hot_functions(blocks_file: str, maps_file: str, root: str) -> dict[str, int]:
    """The plugin's hot blocks -> instructions per "library:function", from the guest's memory map
    (libraries under the emulated root are read from the host's copy) and their ELF symbols."""
    import bisect
    import subprocess

    maps = []  # (start, end, load base, path)
    bases: dict[str, int] = {}
    for line in open(maps_file, encoding="utf-8"):
        parts = line.split()
        if len(parts) < 6 or not parts[5].startswith("/"):
            continue
        start, end = (int(v, 16) for v in parts[0].split("-"))
        if int(parts[2], 16) == 0:
            bases.setdefault(parts[5], start)
        maps.append((start, end, parts[5]))
    symbols: dict[str, tuple[list[int], list[str]]] = {}

    def symbols_of(path: str):
        if path not in symbols:
            host = path if os.path.exists(path) else root + path  # qemu -L usually shows the host's path
            out = subprocess.run(["aarch64-linux-gnu-nm", "-n", "--defined-only", host], capture_output=True,
                                 text=True).stdout
            if not out.strip():  # stripped: the dynamic symbols still name the exported functions
                out = subprocess.run(["aarch64-linux-gnu-nm", "-n", "-D", "--defined-only", host],
                                     capture_output=True, text=True).stdout
            rows = [(int(a, 16), n) for a, t, n in (ln.split(None, 2) for ln in out.splitlines() if ln.count(" ") >= 2)
                    if t.lower() == "t"]
            symbols[path] = ([a for a, _ in rows], [n for _, n in rows])
        return symbols[path]

    starts = [m[0] for m in maps]
    out: dict[str, int] = {}
    for line in open(blocks_file, encoding="utf-8"):
        vaddr, n, execs = line.split()
        vaddr, insns = int(vaddr, 16), int(n) * int(execs)
        i = bisect.bisect_right(starts, vaddr) - 1
        name = "?"
        if i >= 0 and vaddr < maps[i][1]:
            path = maps[i][2]
            addrs, names = symbols_of(path)
            j = bisect.bisect_right(addrs, vaddr - bases.get(path, maps[i][0])) - 1
            name = f"{os.path.basename(path)}:{names[j] if j >= 0 else '?'}"
        out[name] = out.get(name, 0) + insns
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def emulated_profile(model: str, audio: list[str], backends: list[str], streaming: bool, cpu: str = "cortex-a76",
                     warmup: int = 1, timeout: float = 3600, kernels: bool = False, streams=(1,),
                     kernel_stage: str = "total") -> dict:
    """Per-stage instruction counts of each backend; `kernels` adds the instructions of the measured
    runs (stage `kernel_stage`, "total" by default, summed over the backends) per library function,
    under "functions".
    streams (with streaming), e.g. (1, 2, 4): a row per count of concurrent streams decoded together,
    counted per stream, with `per_stream_vs_first` (the batching bench)."""
    from edge.diag.profile import MARKED

    root = armroot.build_root()
    with tempfile.TemporaryDirectory() as d:
        stages_file, total_file = os.path.join(d, "stages"), os.path.join(d, "total")
        blocks_file, maps_file = os.path.join(d, "blocks"), os.path.join(d, "maps")
        args = ["-m", "edge", "profile", "--model", os.path.abspath(model), "--backend", ",".join(backends),
                "--audio", *[os.path.abspath(a) for a in audio], "--runs", "1", "--warmup", str(warmup),
                "--threads", "1", "-o", d]
        if streaming:
            args += ["--streaming", "--streams", ",".join(str(n) for n in streams)]
        plugin_args = f"{qemu_insn.plugin()},out={total_file},stages={stages_file}"
        if kernels:
            plugin_args += f",blocks={blocks_file},block_stage={MARKED.index(kernel_stage)}"
        plugin = ["-plugin", plugin_args]
        # the C kernels, cross-built for this root, as `pip install` builds them on a board: the neon
        # backend needs them, and every backend's frontend uses their fbank
        from kernels.build import build_for_armroot

        extra = [build_for_armroot(root)[1]]
        env = armroot.env_for(root, extra)
        env.update(PARAEDGE_INSN_MARKERS="1", OPENBLAS_NUM_THREADS="1", MPLBACKEND="Agg")
        if kernels:
            env["PARAEDGE_INSN_MAPS"] = maps_file
        import subprocess

        r = subprocess.run(armroot.command(args, root, cpu, plugin), capture_output=True, text=True, env=env,
                           cwd=armroot.REPO, timeout=timeout)
        if r.returncode:
            raise RuntimeError(f"emulated profile failed (exit {r.returncode}): {r.stderr[-1500:]}")
        report = json.load(open(os.path.join(d, "report.json"), encoding="utf-8"))
        blocks = parse_stages(stages_file)
        functions = hot_functions(blocks_file, maps_file, root) if kernels else None
    audio_s = sum(a["seconds"] for a in report["audio"])
    ran = [name for name, e in report["backends"].items() if "skipped" not in e]
    if len(blocks) != len(ran):
        raise RuntimeError(f"expected {len(ran)} blocks of stage counts, got {len(blocks)}")
    out = {"cpu": cpu, "mode": report["mode"], "audio_s": audio_s, "audio": report["audio"], "versions": report["versions"],
           "backends": {}}
    for name, block in zip(ran, blocks):
        total = block.get("total", (0, 0))[0]
        per = audio_s * report["backends"][name].get("streams", 1)  # audio seconds decoded: per stream
        out["backends"][name] = {
            "insns_total": total,
            "minsns_per_audio_s": total / per / 1e6,
            "load_minsns": block.get("load", (0, 0))[0] / 1e6,
            "stages_minsns_per_audio_s": {k: v[0] / per / 1e6 for k, v in block.items() if k not in ("total", "load")},
            "text": report["backends"][name]["text"],
        }
    for name, e in out["backends"].items():
        spec, _, count = name.rpartition(" x")
        first = out["backends"].get(f"{spec} x{streams[0]}") if count else None
        if first:  # concurrent streams: instructions per stream against the first count's
            e["streams"] = int(count)
            e["per_stream_vs_first"] = e["minsns_per_audio_s"] / first["minsns_per_audio_s"]
    for name, e in report["backends"].items():
        if "skipped" in e:
            out["backends"][name] = {"skipped": e["skipped"]}
    if functions is not None:
        out["functions_minsns_per_audio_s"] = {k: v / audio_s / 1e6 for k, v in functions.items()}
    base = (out["backends"].get(BASE) or out["backends"].get(f"{BASE} x{streams[0]}", {})).get("minsns_per_audio_s")
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
        if "per_stream_vs_first" in e:
            st = f"per stream {e['per_stream_vs_first']:.2f}x of the first count; " + st
        rows.append(f"{name:18s} {e['minsns_per_audio_s']:15.2f} {(f'{ratio:.2f}' if ratio else '-'):>10s} "
                    f"{e['load_minsns']:8.1f}  {st}")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m paraedge_tools.emu.arm_profile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", "-m", required=True)
    ap.add_argument("--audio", nargs="+", required=True, help="keep it short: emulation runs ~200x slower")
    ap.add_argument("--backend", "-b", default="ref,onnxruntime,onnxruntime:int8,neon")
    ap.add_argument("--streaming", action="store_true")
    ap.add_argument("--streams", default="1", help="with --streaming: concurrent stream counts, e.g. 1,2,4 (the batching bench)")
    ap.add_argument("--cpu", default="cortex-a76", help="qemu CPU model (a board profile's qemu_cpu)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--kernels", type=int, default=0, metavar="N",
                    help="also list the N functions (TVM kernels, library routines) that executed the most "
                         "instructions in the measured runs, summed over the backends")
    ap.add_argument("--kernel-stage", default="total", choices=["total", "fbank", "lfr_cmvn", "encoder", "cif", "decoder"],
                    help="with --kernels: count the functions within this stage only (default: the whole decode)")
    ap.add_argument("-o", "--output", help="directory for arm_report.json")
    a = ap.parse_args(argv)
    streams = [int(n) for n in a.streams.split(",")]
    rep = emulated_profile(a.model, a.audio, a.backend.split(","), a.streaming, a.cpu, a.warmup, kernels=a.kernels > 0,
                           streams=streams, kernel_stage=a.kernel_stage)
    print(table(rep))
    if a.kernels:
        print(f"\ntop {a.kernels} functions (M insn per audio s, all backends; stage {a.kernel_stage}):")
        for name, v in list(rep["functions_minsns_per_audio_s"].items())[: a.kernels]:
            print(f"{v:10.2f}  {name}")
    if a.output:
        os.makedirs(a.output, exist_ok=True)
        with open(os.path.join(a.output, "arm_report.json"), "w", encoding="utf-8") as f:
            json.dump(rep, f, indent=1, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    from paraedge_tools import run_main

    run_main(main, (RuntimeError, armroot.ArmRootError, qemu_insn.QemuInsnError))
