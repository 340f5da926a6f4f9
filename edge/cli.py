"""`paraedge` command line. Errors print one line and exit 2; nothing else prints a traceback."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from edge import __version__
from edge.backends import BACKENDS
from edge.errors import ParaEdgeError

EXIT_USAGE = 2

# Host-only commands: (installed module with main(argv), what they import, one help line). The device
# package never imports them to build its parser: their own parsers answer `paraedge CMD --help`.
HOST_COMMANDS = {
    "export": ("paraedge_models.export", ("torch", "onnx"),
               "(host) write model.npz, tokens.txt and ONNX (+INT8) into a FunASR model dir"),
    "compile": ("paraedge_tools.compiler.compile", ("torch", "tvm"),
                "(host) compile a model dir into a TVM bundle for a board"),
    "deploy": ("paraedge_tools.deploy", ("torch", "onnx", "tvm", "wheel"),
               "(host) write a self-contained install kit for one board: bundle, wheel, wheelhouse, config, service"),
    "prune": ("paraedge_tools.prune", ("torch", "onnx"),
              "(host) structured L1 pruning of FFN channels, with an accuracy check per step"),
}
HOST_HINT = 'pip install "paraedge[host]"'


def _err(msg: str) -> None:
    print(f"paraedge: error: {msg}", file=sys.stderr)


def _shown(path: str) -> str:
    """A file name fit for stdout: bytes that are not UTF-8 (surrogate escapes) shown as \\xNN, not a crash."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers separated by commas, got {text!r:.40}") from None


def _count(least: int):
    """An argparse type: a whole number >= `least` (--runs 0 divided by zero after the warm-up)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < least:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {least}, got {text!r:.40}")
        return value
    return parse


def _seconds(text: str) -> float:
    """An argparse type: a finite number of seconds > 0 (nan / inf crashed the daemon's sample limit;
    -1 stopped it at once, silently)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (0 < value < 1e9):
        raise argparse.ArgumentTypeError(f"expected seconds, more than 0 and under 1e9, got {text!r:.40}")
    return value


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", required=True, help="model dir (FunASR layout: config.yaml, am.mvn, tokens.json, weights)")
    p.add_argument("--backend", "-b", default="ref", choices=BACKENDS,
                   help="compute backend (default: ref, numpy; tvm: --model is a bundle from `paraedge compile`; "
                        "neon: INT8 + NEON C kernels; auto: neon on ARM when built, else ref)")
    p.add_argument("--int8", action="store_true", help="onnxruntime: use the INT8 model_quant.onnx")
    p.add_argument("--threads", type=int, default=None, help="compute threads (default: library default)")


def cmd_transcribe(args) -> int:
    from edge.asr.audio import load_audio, open_audio
    from edge.asr.recognizer import Recognizer

    if args.chunk_size is not None and not args.streaming:  # it was ignored, unchecked
        raise ParaEdgeError("--chunk-size sets the streaming chunks: add --streaming, or leave it out")
    if args.int8 and args.backend == "ref":  # it was ignored: the numpy reference is fp32 by definition
        raise ParaEdgeError("--int8 selects onnxruntime's INT8 graphs; the ref backend is the fp32 reference: "
                            "leave it out, or use -b onnxruntime --int8")
    t0 = time.perf_counter()
    rec = Recognizer(args.model, backend=args.backend, threads=args.threads, int8=args.int8, grammar=args.grammar,
                     hotwords=args.hotwords)
    load_s = time.perf_counter() - t0
    if args.streaming and not rec.config.streaming:
        raise ParaEdgeError(f"{args.model} is an offline model ({rec.config.model}); --streaming needs ParaformerStreaming")
    failures = 0
    for path in args.wav:
        try:
            samples, info = load_audio(path) if args.streaming else open_audio(path)
            notes = info.conversions()
            if notes and not args.json:
                print(f"note: {path}: {', '.join(notes)}", file=sys.stderr)
            if args.streaming:
                result = rec.transcribe_streaming(samples, chunk_size=args.chunk_size)
            else:
                result = rec.transcribe(samples)
        except ParaEdgeError as exc:
            _err(str(exc))
            failures += 1
            continue
        if args.json:
            out = {"file": _shown(path), "mode": "streaming" if args.streaming else "offline",
                   "backend": rec.backend.describe(), "input": info.__dict__, "conversions": info.conversions(),
                   "model_load_s": load_s, **result.as_dict()}
            print(json.dumps(out, ensure_ascii=False))
        else:
            line = result.text
            u = result.understanding
            if u is not None:  # the grammar's reading after the words heard
                what = "rejected" if u["rejected"] else f"{u['intent']} {json.dumps(u['slots'], ensure_ascii=False)}"
                line += f"\t{what}\tconfidence {u['confidence']:.2f}"
            print(f"{_shown(path)}\t{line}" if len(args.wav) > 1 else line)
    return EXIT_USAGE if failures else 0


def cmd_info(args) -> int:
    from edge.asr.modeldir import ModelDir

    md = ModelDir(args.model_dir)
    cfg = md.config
    files = sorted(f for f in os.listdir(md.path) if os.path.isfile(md.file(f)))
    info = {
        "model": cfg.model, "streaming": cfg.streaming, "vocab_size": cfg.vocab_size, "d_model": cfg.d_model,
        "encoder_blocks": int(cfg.encoder_conf.get("num_blocks", 6)), "decoder_blocks": int(cfg.decoder_conf.get("num_blocks", 6)),
        "parameters": int(sum(v.size for v in md.weights.values())),
        # FunASR runs without CMVN when the dir has no am.mvn: say so, un-normalised input decodes poorly
        "cmvn": "am.mvn" if md.cmvn is not None else "none: no am.mvn, features are not normalised (as in FunASR)",
        "files": {f: os.path.getsize(md.file(f)) for f in files},
    }
    print(json.dumps(info, indent=2, ensure_ascii=False))
    return 0


def cmd_run(args) -> int:
    from edge.daemon import catch_early_signals

    catch_early_signals()  # before the slow imports and the model load
    import logging

    from edge.daemon.config import DaemonConfig
    from edge.daemon.service import run_daemon

    logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    cfg = DaemonConfig.load(args.config)
    overrides = {("model", "dir"): args.model, ("model", "backend"): args.backend, ("audio", "input"): args.input,
                 ("audio", "device"): args.device, ("events", "socket"): args.socket,
                 ("grammar", "file"): args.grammar, ("model", "final_pass"): args.final_pass}
    for (section, key), value in overrides.items():
        if value is not None:
            setattr(getattr(cfg, section), key, value)
    if args.fast:
        cfg.audio.realtime = False
    if args.no_wake:
        cfg.wake.enabled = False
    if args.wake:
        cfg.wake.models = args.wake
    if args.zones is not None:  # "driver,passenger"; validated() names a repeated or empty zone
        cfg.zones.names = [] if args.zones.strip() in ("", "none") else [z.strip() for z in args.zones.split(",")]
    return run_daemon(cfg.validated(), duration_s=args.duration)


def cmd_devices(args) -> int:
    from edge.daemon.capture import list_input_devices

    devices = list_input_devices()
    if args.json:
        print(json.dumps(devices, indent=2))
    elif not devices:
        print("no audio input devices found")
    for d in [] if args.json else devices:
        mark = "*" if d["default"] else " "
        print(f"{mark} {d['index']:3d}  {d['name']}  ({d['hostapi']}, {d['channels']} ch, {d['default_samplerate']:.0f} Hz)")
    return 0


def cmd_boards(args) -> int:
    from edge.boards import all_boards

    boards = all_boards()
    if args.json:
        print(json.dumps({b.name: b.raw for b in boards}, indent=2))
    else:
        for b in boards:
            print(b.summary())
    return 0


def cmd_doctor(args) -> int:
    from edge.daemon.config import DaemonConfig
    from edge.diag.doctor import diagnose

    cfg = DaemonConfig.load(args.config)
    if args.model:
        cfg.model.dir = args.model
    if args.input:
        cfg.audio.input = args.input
    if args.backend:
        cfg.model.backend = args.backend
    report = diagnose(cfg, board=args.board)
    print(report.render())
    return 1 if report.failed else 0


def run_host_command(name: str, argv: list) -> int:
    """A host command, if this install has the host extra; else one line saying how to get it."""
    import importlib
    import importlib.util

    module, needs, _ = HOST_COMMANDS[name]
    missing = [m for m in needs if importlib.util.find_spec(m) is None]
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package itself is absent
        found = False
    if missing or not found:
        what = ", ".join(missing) if missing else module
        raise ParaEdgeError(f"`paraedge {name}` runs on the host and needs the host extra ({what} not installed): {HOST_HINT}")
    return importlib.import_module(module).main(argv)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="paraedge", description="ParaEdge: on-device Paraformer speech recognition")
    ap.add_argument("--version", action="version", version=f"paraedge {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("transcribe", help="decode WAV files (any rate/channels; converted to 16 kHz mono)")
    p.add_argument("wav", nargs="+", help="WAV files")
    _add_model_args(p)
    p.add_argument("--streaming", action="store_true", help="decode chunk by chunk, as the daemon does")
    p.add_argument("--chunk-size", type=lambda s: [int(v) for v in s.split(",")], default=None,
                   help="streaming [left,chunk,right] in 60 ms frames, e.g. 0,10,5: 600 ms + 300 ms look-ahead "
                        "(default: the model's config.yaml chunk_size, else 0,10,5)")
    p.add_argument("--json", action="store_true", help="one JSON object per file: text, tokens, timings, RTF")
    p.add_argument("--grammar", help="a grammar YAML (docs/GRAMMAR.md): add intent, slots, confidence and rejected")
    p.add_argument("--hotwords", help="phrases to prefer in free decoding, one per line, optional TAB boost "
                                      "(edge/asr/hotwords.py)")
    p.set_defaults(func=cmd_transcribe)

    p = sub.add_parser("profile", help="per-stage latency, RTF and memory per backend, peers side by side")
    p.add_argument("--model", "-m", required=True)
    p.add_argument("--backend", "-b", default="all",
                   help="comma list of ref, onnxruntime, onnxruntime:int8, neon, tvm, tvm:int8, or 'all' "
                        "(every available backend + sherpa-onnx/funasr-onnx peers)")
    p.add_argument("--audio", nargs="+", help="WAV files to decode")
    p.add_argument("--threads", type=int, default=1, help="threads for every backend and peer (default 1)")
    p.add_argument("--runs", type=_count(1), default=5)
    p.add_argument("--warmup", type=_count(0), default=1)
    p.add_argument("--streaming", action="store_true")
    p.add_argument("--peers", action="store_true", help="include peers with an explicit backend list")
    p.add_argument("--streams", type=_int_list, default=[1], metavar="N[,N...]",
                   help="with --streaming: concurrent streams (seat zones) decoded together, e.g. 1,2,4: a row per "
                        "count, each with its cost per stream against the first count (the batching bench)")
    p.add_argument("--board", help="board profile this runs on (boards/*.toml): printed with the numbers, checked against the CPU")
    p.add_argument("-o", "--output", help="directory for report.json and plots")
    p.set_defaults(func=lambda a: __import__("edge.diag.profile", fromlist=["run_cli"]).run_cli(a))

    p = sub.add_parser("run", help="the voice daemon: microphone -> wake word -> streaming decode -> JSON events")
    p.add_argument("--config", "-c", help="edge.toml (see edge/resources/edge.toml); defaults: demo model, default mic")
    p.add_argument("--model", "-m", help="model dir (overrides model.dir)")
    p.add_argument("--backend", "-b", choices=BACKENDS, help="overrides model.backend")
    source = p.add_mutually_exclusive_group()  # one of them was silently ignored
    source.add_argument("--input", "-i", help="a WAV file instead of the microphone, paced in real time")
    p.add_argument("--fast", action="store_true", help="with --input: as fast as possible, not real time")
    source.add_argument("--device", "-d", help="sounddevice input name or index (see `paraedge devices`)")
    p.add_argument("--socket", help="UNIX socket for events and commands (mode 0600)")
    wake = p.add_mutually_exclusive_group()
    wake.add_argument("--wake", nargs="+", help="wake-word models: built-in names or microWakeWord .json paths")
    wake.add_argument("--no-wake", action="store_true", help="no wake word: the VAD opens every utterance")
    p.add_argument("--duration", type=_seconds, help="stop after this many seconds of audio")
    p.add_argument("--grammar", help="a grammar YAML (overrides grammar.file): finals carry intent, slots, "
                                     "confidence; non-commands become `rejected` events")
    p.add_argument("--final-pass", choices=("auto", "streaming", "offline"),
                   help="the final's decode (overrides model.final_pass): offline = two-pass, the utterance decoded "
                        "again in full context; auto = offline for the shipped demo model only")
    p.add_argument("--zones", help="seat zones, one per input channel in order, e.g. driver,passenger: each its own "
                                   "wake word, VAD and stream; events carry `zone` (overrides [zones] names; none = mono)")
    p.add_argument("--verbose", "-v", action="count", default=0, help="log to stderr (-vv: debug)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("doctor", help="check CPU vs board, kernels, model, audio, wake word, VAD; say what would run")
    p.add_argument("--config", "-c", help="edge.toml to check (default: the built-in defaults)")
    p.add_argument("--model", "-m", help="model dir (overrides model.dir)")
    p.add_argument("--board", help="board profile to check this machine against (overrides `board` in the config)")
    p.add_argument("--input", "-i", help="check with a WAV file instead of the microphone (overrides audio.input)")
    p.add_argument("--backend", "-b", choices=BACKENDS, help="overrides model.backend (tvm for a compiled bundle)")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("devices", help="list audio input devices")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("boards", help="list the board profiles (boards/*.toml) bundles can be compiled for")
    p.add_argument("--json", action="store_true", help="full profiles as JSON")
    p.set_defaults(func=cmd_boards)

    p = sub.add_parser("demo", help="the main job on the shipped demo model: decode its samples, then run the daemon on them")
    p.set_defaults(func=lambda a: __import__("edge.demo", fromlist=["run"]).run(a.model, a.out))
    __import__("edge.demo", fromlist=["build_parser"]).build_parser(p)

    for name, (_, _, help_line) in HOST_COMMANDS.items():
        # add_help=False: `paraedge compile --help` reaches the host tool's own parser (or the install hint)
        p = sub.add_parser(name, help=help_line, add_help=False)
        p.set_defaults(func=None, host=name)

    p = sub.add_parser("info", help="describe a model dir")
    p.add_argument("model_dir")
    p.set_defaults(func=cmd_info)
    return ap


def main(argv=None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    host = getattr(args, "host", None)
    if rest and not host:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return run_host_command(host, rest) if host else args.func(args)
    except ParaEdgeError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `paraedge info m | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush does not fail too
        return 141


if __name__ == "__main__":
    sys.exit(main())
