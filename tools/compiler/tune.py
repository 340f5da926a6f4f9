"""`paraedge tune`: MetaSchedule tuning of a bundle's kernels, on this host or on a real board
over TVM RPC; writes a database that `paraedge compile --tuning-db DIR` applies.

    python -m tvm.exec.rpc_tracker --port 9190                                   # host
    python -m tvm.exec.rpc_server --tracker HOST:9190 --key raspberry-pi-5       # on the board
    paraedge tune --board raspberry-pi-5 --model DIR --rpc HOST:9190 --trials 2000 -o tuning/pi5
    paraedge compile --board raspberry-pi-5 --model DIR --tuning-db tuning/pi5 -o out/pi5

Without --rpc the candidates run on this host (boards of this host's arch only). Candidates
for a board are cross-compiled with the profile's compiler and uploaded by the RPC runner.
The deterministic schedules of tools/compiler/cpu.py cover every kernel without tuning; a database
replaces them kernel by kernel where it has a record. Tuning takes hours for a full model on a
small machine: start with --buckets 15 (the streaming window) and the trial count you can afford.
"""

from __future__ import annotations

import argparse
import os
import sys

from edge.boards import load_board
from edge.errors import ParaEdgeError

DB_FILES = ("database_workload.json", "database_tuning_record.json")


def tune(model: str, board_name: str, out: str, trials: int, rpc: str | None = None, buckets=(15,),
         streaming: bool | None = None, rpc_key: str | None = None, timeout: int = 180) -> str:
    board = load_board(board_name)
    if board.cuda:
        raise ParaEdgeError("tune: CUDA boards use dlight's GPU schedules; tuning them is not wired up")
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from paraedge_tools.compiler.compile import build_irmodule

    irmod, _, _ = build_irmodule(model, board, buckets, streaming, int8=False)
    # MetaSchedule sizes its parallel loops by the target's core count
    target = tvm.target.Target(dict(board.target, **{"num-cores": board.threads}))
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    with target:
        irmod = tvm.transform.Sequential(cpu.library_dispatch_passes(target) + cpu.legalize_passes(target))(irmod)
    if rpc:
        host, _, port = rpc.rpartition(":")
        if not host or not port.isdigit():
            raise ParaEdgeError(f"--rpc: expected HOST:PORT, got '{rpc}'")
        config = ms.runner.RPCConfig(tracker_host=host, tracker_port=int(port), tracker_key=rpc_key or board.name,
                                     session_timeout_sec=max(120, timeout))
        runner = ms.runner.RPCRunner(config, evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1))
    elif board.arch != os.uname().machine:
        raise ParaEdgeError(f"tune: {board.name} is {board.arch}; this host cannot run its kernels: pass --rpc HOST:PORT")
    else:
        runner = ms.runner.LocalRunner(timeout_sec=timeout)
    # Each candidate builds and runs in a fresh worker process that imports TVM first: on a small
    # host that alone takes tens of seconds, so MetaSchedule's 30 s default times every build out.
    export = tvm.support.cc.cross_compiler(board.cc) if board.arch == "aarch64" else None
    builder = ms.builder.LocalBuilder(timeout_sec=timeout, **({"f_export": export} if export else {}))
    os.makedirs(out, exist_ok=True)
    ms.relax_integration.tune_relax(mod=irmod, params={}, target=target, work_dir=out, max_trials_global=trials,
                                    num_trials_per_iter=min(64, max(trials, 1)), builder=builder, runner=runner,
                                    cost_model="random", strategy="replay-trace")
    missing = [f for f in DB_FILES if not os.path.isfile(os.path.join(out, f))]
    if missing:
        raise ParaEdgeError(f"tune: MetaSchedule wrote no {', '.join(missing)} in {out}")
    return out


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--board", required=True)
    ap.add_argument("--model", "-m", required=True)
    ap.add_argument("-o", "--output", required=True, help="database dir to write")
    ap.add_argument("--rpc", help="HOST:PORT of the TVM RPC tracker the board's rpc_server registered with")
    ap.add_argument("--rpc-key", help="the board's key at the tracker (default: the board name)")
    ap.add_argument("--trials", type=int, default=256, help="measured candidates in total")
    ap.add_argument("--buckets", default="15", help="encoder lengths to tune (default 15: the streaming window)")
    ap.add_argument("--timeout", type=int, default=180, help="seconds allowed to build or run one candidate")


def run(args) -> int:
    from paraedge_tools.compiler.compile import parse_buckets

    out = tune(args.model, args.board, args.output, args.trials, args.rpc, parse_buckets(args.buckets),
               rpc_key=args.rpc_key, timeout=args.timeout)
    print(f"wrote {out}: compile with --tuning-db {out}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="paraedge tune", description=__doc__.split("\n\n")[0])
    add_args(ap)
    return run(ap.parse_args(argv))
