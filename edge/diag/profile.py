"""`paraedge profile`: where the time goes, per stage, per backend, next to peer runtimes.

Every backend (and every peer) runs in the same process on the same audio with the same thread
count. Stages: resample (when the WAV is not 16 kHz mono), fbank, lfr_cmvn, encoder, cif, decoder
(onnxruntime's fused offline graph reports encoder+cif+decoder as `model`). Streaming adds per-chunk
timings, first-partial latency and end-of-speech -> final latency. Warm-up runs are excluded.
Outputs: a terminal table, `report.json`, and PNG plots (stacked stages, latency CDF, RTF vs length).
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from edge.diag import markers
from edge.errors import BackendUnavailable, ParaEdgeError, check_output_dir
from edge.platform import cpu_model, limit_threads, machine
from edge.asr.audio import SAMPLE_RATE

STAGES = ("resample", "fbank", "lfr_cmvn", "frontend", "encoder", "cif", "decoder", "model")
MARKED = STAGES + ("total", "load")  # stage numbers for instruction-count markers (tools/emu/arm_profile.py)


@dataclass
class Sample:
    name: str
    samples: np.ndarray  # 16 kHz mono
    raw: np.ndarray | None = None  # original, when it needed resampling
    raw_rate: int = SAMPLE_RATE

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE


@dataclass
class RunTimes:
    stages: dict = field(default_factory=dict)
    total: float = 0.0
    extra: dict = field(default_factory=dict)

    def add(self, stage: str, dt: float):
        self.stages[stage] = self.stages.get(stage, 0.0) + dt


class _Clock:
    def __init__(self, times: RunTimes, stage: str):
        self.times, self.stage = times, stage

    def __enter__(self):
        markers.begin(MARKED.index(self.stage))
        self.t = time.perf_counter()

    def __exit__(self, *exc):
        self.times.add(self.stage, time.perf_counter() - self.t)
        markers.end(MARKED.index(self.stage))


def _resample(s: Sample, t: RunTimes):
    if s.raw is not None:
        from edge.asr.audio import to_mono_16k

        with _Clock(t, "resample"):
            to_mono_16k(s.raw, s.raw_rate)


def run_offline(rec, s: Sample) -> RunTimes:
    t = RunTimes()
    t0 = time.perf_counter()
    _resample(s, t)
    with _Clock(t, "fbank"):
        fb = rec.frontend.fbank(s.samples)
    with _Clock(t, "lfr_cmvn"):
        feats = rec.frontend.lfr_cmvn(fb)
    be = rec.backend
    if be.offline is not None:
        with _Clock(t, "model"):
            log_probs, n = be.offline(feats)
        ids = rec.pick_tokens(log_probs, n)
    else:
        with _Clock(t, "encoder"):
            enc, alphas = be.encode(rec.prepare(feats))
        with _Clock(t, "cif"):
            embeds = be.cif_offline(enc, alphas, rec.cif)
        ids = []
        if len(embeds):
            with _Clock(t, "decoder"):
                log_probs, _ = be.decode(enc, embeds)
            ids = rec.pick_tokens(log_probs, len(embeds))
    t.total = time.perf_counter() - t0
    t.extra["text"] = rec.ids_to_result(ids).text
    return t


def run_streaming(rec, s: Sample, hop: int = 1600, streams: int = 1) -> RunTimes:
    """Feed `hop` samples at a time; the stream's own work is split into stages. streams > 1: that
    many seat zones hear the sample at once, decoded together (Recognizer.accept_batch); the
    times are then the cost of all of them."""
    from edge.asr.recognizer import Stream

    t = RunTimes()
    rec.clock = lambda stage: _Clock(t, stage)  # the stream's own stages, timed where they run
    try:
        zones = [Stream(rec) for _ in range(streams)]
        stream = zones[0]
        chunk_times, first_partial = [], None
        t0 = time.perf_counter()
        _resample(s, t)
        fed = 0
        for i in range(0, len(s.samples), hop):
            before, c0 = stream.chunks, time.perf_counter()
            piece = s.samples[i : i + hop]
            new = rec.accept_batch(zones, [piece] * streams)[0]
            fed += len(piece)
            dt = time.perf_counter() - c0
            if stream.chunks > before:  # this hop completed a 600 ms chunk: its cost is a chunk's cost
                chunk_times.append(dt)
            if new and first_partial is None:
                first_partial = {"audio_s": fed / SAMPLE_RATE, "compute_s": dt}
        e0 = time.perf_counter()
        for z in zones:
            z.finish()
        eos_to_final = time.perf_counter() - e0
        t.total = time.perf_counter() - t0
    finally:
        del rec.clock  # back to the class default: no clock
    t.extra.update(text=stream.result().text, chunks=stream.chunks, chunk_s=chunk_times,
                   first_partial=first_partial, eos_to_final_s=eos_to_final)
    return t


def percentiles(xs) -> dict:
    a = np.asarray(xs, dtype=np.float64)
    if a.size == 0:
        return {}
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max()), "mean": float(a.mean())}


def peak_gemm_gflops(n: int = 512, seconds: float = 0.5) -> float:
    """A simple fp32 GEMM probe (numpy/BLAS, current thread setting)."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = a.copy()
    a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def model_macs_per_second(cfg) -> dict:
    """Multiply-accumulates per second of audio, per stage, from the config (offline decode).
    Frames: 100 fbank/s -> 100/lfr_n encoder frames/s; tokens: ~4/s (Paraformer CIF rate, assumed)."""
    enc, dec = cfg.encoder_conf, cfg.decoder_conf
    d, din = cfg.d_model, cfg.input_size
    ffn, blocks, k = int(enc.get("linear_units", 2048)), int(enc.get("num_blocks", 6)), int(enc.get("kernel_size", 11))
    frames = 100.0 / cfg.frontend.lfr_n
    tokens = 4.0
    def enc_layer(i):
        return i * 3 * d + d * d + 2 * d * ffn + d * k

    encoder = frames * (enc_layer(din) + (blocks - 1) * enc_layer(d)) + frames * frames * 2 * d * blocks
    l = int(dec.get("att_layer_num", 6))
    dffn, dk = int(dec.get("linear_units", 2048)), int(dec.get("kernel_size", 21))
    decoder = tokens * (l * (2 * d * dffn + 2 * d * d + d * dk) + 2 * d * dffn + d * cfg.vocab_size) \
        + l * (frames * 2 * d * d + tokens * frames * 2 * d)
    cif = frames * (3 * d * d + d)
    fbank = 100 * (512 * 9 * 2 + 80 * 257)  # FFT ~ N log N, mel filterbank
    return {"fbank": fbank, "encoder": encoder, "cif": cif, "decoder": decoder}


def versions() -> dict:
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("onnxruntime", "kaldi_native_fbank", "sherpa_onnx", "funasr_onnx", "tvm"):
        m = sys.modules.get(mod)
        if m is None:
            try:
                m = __import__(mod)
            except Exception:  # an absent peer is reported as absent
                continue
        out[mod] = getattr(m, "__version__", "?")
    return out


# -- peers --------------------------------------------------------------------------------------
def peer_runners(model_dir: str, threads: int, streaming: bool) -> dict:
    """Peers that can read this model dir: name -> callable(samples) -> text, or the exception that
    loading it raised (a peer that cannot read the model becomes a row saying why)."""
    from edge.asr.modeldir import ModelDir

    out = {}
    md = model_dir
    if ModelDir(md).config.streaming != streaming:
        # a streaming dir's model.onnx is an encoder, not an offline model: peers would crash on it
        return out

    def add(name, make):
        try:
            out[name] = make()
        except Exception as exc:
            out[name] = exc

    try:
        import sherpa_onnx
    except ImportError:
        sherpa_onnx = None

    def sherpa_offline(model):
        r = sherpa_onnx.OfflineRecognizer.from_paraformer(paraformer=model, tokens=f"{md}/tokens.txt", num_threads=threads)

        def run(x):
            s = r.create_stream()
            s.accept_waveform(SAMPLE_RATE, x)
            r.decode_stream(s)
            return s.result.text
        return run

    def sherpa_online(enc, dec):
        r = sherpa_onnx.OnlineRecognizer.from_paraformer(tokens=f"{md}/tokens.txt", encoder=enc, decoder=dec, num_threads=threads)

        def run(x):
            s = r.create_stream()
            s.accept_waveform(SAMPLE_RATE, x)
            s.accept_waveform(SAMPLE_RATE, np.zeros(8000, np.float32))
            s.input_finished()
            while r.is_ready(s):
                r.decode_stream(s)
            return r.get_result(s)
        return run

    def funasr_onnx(quantize):
        from funasr_onnx import Paraformer

        m = Paraformer(md, batch_size=1, quantize=quantize, intra_op_num_threads=threads)
        return lambda x: m(x)[0]["preds"][0]

    for q in ("", "_quant"):
        name = f"sherpa-onnx{' int8' if q else ''}"
        enc, dec = f"{md}/model{q}.onnx", f"{md}/decoder{q}.onnx"
        if sherpa_onnx is not None and not streaming and os.path.exists(enc):
            add(name, lambda enc=enc: sherpa_offline(enc))
        if sherpa_onnx is not None and streaming and os.path.exists(enc) and os.path.exists(dec):
            add(name, lambda enc=enc, dec=dec: sherpa_online(enc, dec))
    if not streaming and importlib.util.find_spec("funasr_onnx") is not None:  # optional on a board
        for q in (False, True):
            if os.path.exists(f"{md}/model{'_quant' if q else ''}.onnx"):
                add(f"funasr-onnx{' int8' if q else ''}", lambda q=q: funasr_onnx(q))
    return out


def _time_peer(fn, samples: list, runs: int, warmup: int) -> dict:
    if isinstance(fn, Exception):
        raise fn
    times, by_len, text = [], [], ""
    for s in samples:
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            text = fn(s.samples)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
                by_len.append((s.seconds, times[-1]))
    audio_s = sum(s.seconds for s in samples) * runs
    return {"rtf": sum(times) / audio_s, "latency_s": percentiles(times), "rtf_by_length": by_len, "text": text}


# -- the daemon's always-on costs ---------------------------------------------------------------
def daemon_costs(samples: list[Sample], runs: int, wake_models=("okay_nabu", "alexa")) -> dict:
    """What the daemon pays while idle and per utterance outside the recognizer: the wake gate per
    10 ms hop, the VAD per 32 ms window, capture resampling (48 kHz mic, 20 ms blocks)."""
    from edge.asr.audio import StreamingResampler

    out = {}
    audio_s = sum(s.seconds for s in samples) * runs

    def measure(name, make, step, inputs, rate=SAMPLE_RATE):
        try:
            fn = make()
        except ParaEdgeError as exc:
            out[name] = {"skipped": str(exc)}
            return
        per = []
        for _ in range(runs):
            for x in inputs:
                for i in range(0, len(x) - step + 1, step):
                    t0 = time.perf_counter()
                    fn(x[i : i + step])
                    per.append(time.perf_counter() - t0)
        out[name] = {"per_step_us": {k: v * 1e6 for k, v in percentiles(per).items()}, "step_ms": 1000 * step / rate,
                     "rtf": sum(per) / audio_s}

    def gate():
        from edge.daemon.wake import WakeGate

        return WakeGate(list(wake_models)).process

    def vad():
        from edge.daemon.vad import SileroVad

        return SileroVad().process

    from scipy.signal import resample_poly

    mono = [s.samples for s in samples]
    measure("wake_gate", gate, 160, mono)
    measure("vad", vad, 512, mono)
    mic_48k = [resample_poly(x, 3, 1).astype(np.float32) for x in mono]  # made once, not per run
    measure("resample_48k", lambda: StreamingResampler(48000), 960, mic_48k, rate=48000)
    return out


# -- the command --------------------------------------------------------------------------------
def load_samples(paths) -> list[Sample]:
    from edge.asr.audio import check_samples, read_wav, to_mono_16k

    out = []
    for p in paths:
        raw, info = read_wav(p)
        mono = check_samples(to_mono_16k(raw, info.sample_rate), p)
        needs = info.sample_rate != SAMPLE_RATE or info.channels != 1
        out.append(Sample(os.path.basename(p), mono, raw if needs else None, info.sample_rate))
    return out


def profile(model: str, backends: list[str], audio: list[str], threads: int = 1, runs: int = 5,
            warmup: int = 1, streaming: bool = False, peers: bool = True, daemon: bool = True,
            streams=(1,)) -> dict:
    """streams (streaming only): concurrent streams per backend, e.g. (1, 2, 4): each count is its
    own row, `<backend> xN`, whose RTF is per stream, with its cost per stream against 1 stream."""
    from edge.asr.recognizer import Recognizer

    streams = [int(n) for n in streams]
    if not streams or min(streams) < 1 or max(streams) > 64 or (len(streams) > 1 or streams[0] > 1) and not streaming:
        raise ParaEdgeError(f"--streams {','.join(map(str, streams))}: 1..64 concurrent streams, with --streaming")

    pools = limit_threads(threads)
    samples = load_samples(audio)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = {"model": os.path.abspath(model), "mode": "streaming" if streaming else "offline", "threads": threads,
              "thread_pools": pools, "runs": runs, "warmup": warmup, "cpu": cpu_model(), "machine": machine(),
              "versions": versions(), "audio": [{"name": s.name, "seconds": s.seconds} for s in samples],
              "backends": {}}
    for spec in backends:
        name, _, opt = spec.partition(":")
        t0 = time.perf_counter()
        markers.reset()
        markers.begin(MARKED.index("load"))
        try:
            rec = Recognizer(model, name, threads=threads, int8=(opt == "int8"))
        except BackendUnavailable as exc:
            report["backends"][spec] = {"skipped": str(exc)}
            continue
        markers.end(MARKED.index("load"))
        load_s = time.perf_counter() - t0
        for n in streams:
            name = spec if streams == [1] else f"{spec} x{n}"
            report["backends"][name] = _measure(rec, samples, runs, warmup, streaming, n, load_s)
            markers.snapshot()  # one block of counts per row, in report order
        first = report["backends"].get(f"{spec} x{streams[0]}", {})
        for n in streams if streams != [1] and "rtf" in first else ():
            e = report["backends"][f"{spec} x{n}"]
            e["streams"], e["per_stream_vs_first"] = n, e["rtf"] / first["rtf"]
    if peers:
        report["peers"] = {}
        for name, fn in peer_runners(model, threads, streaming).items():
            try:
                report["peers"][name] = _time_peer(fn, samples, runs, warmup)
            except Exception as exc:  # e.g. funasr-onnx on a t0..t995 vocabulary: ValueError, a row not a traceback
                report["peers"][name] = {"skipped": f"failed on this model: {type(exc).__name__}: {str(exc)[:200]}"}
    # ratios against onnxruntime fp32, or INT8 where the model ships only INT8 (the demo model)
    names = [b + suffix for suffix in ("", f" x{streams[0]}") for b in ("onnxruntime", "onnxruntime:int8")]
    ref_name = next((n for n in names if "rtf" in report["backends"].get(n, {})), None)
    base = report["backends"][ref_name]["rtf"] if ref_name else None
    report["ratio_base"] = ref_name
    if base:
        for group in ("backends", "peers"):
            for e in report.get(group, {}).values():
                if "rtf" in e:
                    e["time_vs_onnxruntime"] = e["rtf"] / base
    if daemon and not markers.ENABLED:  # under emulation only the recognizer's stages are counted
        report["daemon"] = daemon_costs(samples, runs)
    from edge.asr.modeldir import ModelDir

    md = ModelDir(model)
    macs = model_macs_per_second(md.config)
    peak = None if markers.ENABLED else peak_gemm_gflops()  # a wall-clock probe means nothing emulated
    try:
        weights_mb = sum(v.nbytes for v in md.weights.values()) / 2**20
    except ParaEdgeError:  # a TVM bundle: its params.npz holds the compiled layout, not the model's weights
        weights_mb = None
    report["model_cost"] = {"macs_per_audio_second": macs, "peak_gemm_gflops": peak, "weights_mb": weights_mb,
                            "rss_before_mb": rss0 / 1024.0}
    for group in ("backends",):
        for e in report[group].values():
            if "stages_rtf" in e:
                flops = 2 * sum(macs[k] for k in ("encoder", "cif", "decoder"))
                model_rtf = sum(e["stages_rtf"].get(k, 0.0) for k in ("encoder", "cif", "decoder", "model"))
                e["fraction_of_peak"] = flops / 1e9 / peak / model_rtf if model_rtf and peak else None
    return report


def _measure(rec, samples: list, runs: int, warmup: int, streaming: bool, streams: int, load_s: float) -> dict:
    """One row of the report: `runs` timed decodes of every sample (after `warmup` untimed ones).
    RTF is per stream: compute seconds / (audio seconds x streams)."""
    per_run, by_len = [], []
    for s in samples:
        for i in range(warmup + runs):
            markers.active = i >= warmup
            markers.begin(MARKED.index("total"))
            t = run_streaming(rec, s, streams=streams) if streaming else run_offline(rec, s)
            markers.end(MARKED.index("total"))
            markers.active = True
            if i >= warmup:
                per_run.append(t)
                by_len.append((s.seconds, t.total))
    audio_s = sum(s.seconds for s in samples) * runs * streams
    stage_sum = {st: sum(r.stages.get(st, 0.0) for r in per_run) for st in STAGES}
    total = sum(r.total for r in per_run)
    entry = {
        "load_s": load_s,
        "rtf": total / audio_s,
        "total_s": total,
        "stages_s": {k: v for k, v in stage_sum.items() if v > 0},
        "stages_rtf": {k: v / audio_s for k, v in stage_sum.items() if v > 0},
        "latency_s": percentiles([r.total for r in per_run]),
        "rtf_by_length": by_len,
        "text": {s.name: per_run[i * runs].extra["text"] for i, s in enumerate(samples)},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }
    if streaming:
        chunks = [c for r in per_run for c in r.extra["chunk_s"]]
        entry["chunk_s"] = percentiles(chunks)
        entry["eos_to_final_s"] = percentiles([r.extra["eos_to_final_s"] for r in per_run])
        fp = [r.extra["first_partial"] for r in per_run if r.extra["first_partial"]]
        entry["first_partial_audio_s"] = percentiles([f["audio_s"] for f in fp])
    return entry


def table(report: dict) -> str:
    pools = ", ".join(f"{k} {v}" for k, v in (report.get("thread_pools") or {}).items())
    rows = [f"ParaEdge profile: {report['mode']}, {report['threads']} thread(s) (pools: {pools or 'n/a'}), {report['runs']} runs, "
            f"{sum(a['seconds'] for a in report['audio']):.1f} s audio, CPU {report['cpu']}",
            f"board: {report.get('board') or '(none given: --board)'}; versions: "
            + ", ".join(f"{k} {v}" for k, v in report["versions"].items())]
    head = f"{'backend':22s} {'RTF':>8s} {'x ' + (report.get('ratio_base') or 'ORT'):>7s} {'p50 s':>8s} {'p99 s':>8s} {'load s':>7s}  stages (RTF)"
    rows += [head, "-" * len(head)]
    for group in ("backends", "peers"):
        for name, e in report.get(group, {}).items():
            if "skipped" in e:
                rows.append(f"{name:22s} skipped: {e['skipped']}")
                continue
            st = " ".join(f"{k}={v:.4f}" for k, v in e.get("stages_rtf", {}).items())
            ratio = e.get("time_vs_onnxruntime")
            if "per_stream_vs_first" in e:  # concurrent streams: what each stream costs against the first row's
                st = f"per stream {e['per_stream_vs_first']:.2f}x of {name.rsplit(' ', 1)[0]}'s first row; " + st
            rows.append(f"{name + (' (peer)' if group == 'peers' else ''):22s} {e['rtf']:8.4f} "
                        f"{(f'{ratio:.2f}' if ratio else '-'):>7s} {e['latency_s']['p50']:8.4f} "
                        f"{e['latency_s']['p99']:8.4f} {e.get('load_s', float('nan')):7.3f}  {st}")
    for name, e in report.get("daemon", {}).items():
        if "skipped" in e:
            rows.append(f"daemon {name}: skipped: {e['skipped']}")
        else:
            p = e["per_step_us"]
            rows.append(f"daemon {name:12s} RTF {e['rtf']:.4f}; per {e['step_ms']:.0f} ms step: p50 {p['p50']:.0f} us, "
                        f"p99 {p['p99']:.0f} us, max {p['max']:.0f} us")
    mc = report["model_cost"]
    rows.append(f"model: {sum(mc['macs_per_audio_second'].values()) / 1e6:.1f} M MAC per audio second; "
                f"peak fp32 GEMM probe {mc['peak_gemm_gflops'] or 0:.1f} GFLOP/s")
    return "\n".join(rows)


def plots(report: dict, out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig, name):
        fig.tight_layout()
        written.append(os.path.join(out_dir, name))
        fig.savefig(written[-1], dpi=90)
        plt.close(fig)

    names = [n for n, e in report["backends"].items() if "stages_rtf" in e]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bottom = np.zeros(len(names))
    for st in STAGES:
        vals = np.array([report["backends"][n]["stages_rtf"].get(st, 0.0) for n in names])
        if vals.any():
            ax.bar(names, vals, bottom=bottom, label=st)
            bottom += vals
    ax.set_ylabel("RTF (compute s / audio s)")
    ax.set_title(f"per-stage cost, {report['mode']}")
    ax.legend(fontsize=8)
    save(fig, "stages.png")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for group in ("backends", "peers"):
        for n, e in report.get(group, {}).items():
            lat = sorted(t for _, t in e.get("rtf_by_length", []))
            if lat:
                ax.plot(lat, np.linspace(0, 1, len(lat)), label=n)
    ax.set_xlabel("latency per utterance (s)"), ax.set_ylabel("CDF"), ax.legend(fontsize=7)
    save(fig, "latency_cdf.png")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for group in ("backends", "peers"):
        for n, e in report.get(group, {}).items():
            pts = e.get("rtf_by_length", [])
            if pts:
                secs = np.array([p[0] for p in pts])
                ax.scatter(secs, np.array([p[1] for p in pts]) / secs, s=10, label=n)
    ax.set_xlabel("audio length (s)"), ax.set_ylabel("RTF"), ax.legend(fontsize=7)
    ax.set_title("does cost grow linearly with length?")
    save(fig, "rtf_vs_length.png")
    return written


def run_cli(args) -> int:
    backends = args.backend.split(",")
    if args.backend == "all":  # every backend this machine has; a missing one shows as skipped, with why
        backends = ["ref", "onnxruntime", "onnxruntime:int8", "neon"]
        if os.path.isfile(os.path.join(args.model, "manifest.json")):  # a `paraedge compile` bundle
            backends.append("tvm")
    if not args.audio:
        raise ParaEdgeError("profile needs --audio FILE.wav [...]")
    if args.output:
        check_output_dir(args.output, "--output")
    board = None
    if args.board:  # the profile the numbers are for; a CPU that cannot run it is refused up front
        from edge.boards import check_runs_here, load_board

        board = load_board(args.board)
        check_runs_here(board)
    report = profile(args.model, backends, args.audio, args.threads, args.runs, args.warmup, args.streaming,
                     peers=args.backend == "all" or args.peers, streams=args.streams)
    report["board"] = board.summary() if board else None
    print(table(report))
    if args.output:
        os.makedirs(args.output, exist_ok=True)
        with open(os.path.join(args.output, "report.json"), "w") as f:
            json.dump(report, f, indent=1, ensure_ascii=False)
        try:
            for p in plots(report, args.output):
                print(f"wrote {p}")
        except ImportError:
            print("matplotlib not installed: plots skipped (pip install matplotlib)", file=sys.stderr)
        print(f"wrote {os.path.join(args.output, 'report.json')}")
    return 0
