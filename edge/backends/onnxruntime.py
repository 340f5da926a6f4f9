"""onnxruntime backend: runs the ONNX files `paraedge export` writes (FunASR's layout).

Offline models use the fused `model.onnx` (features -> log-probs, token count); streaming models
use `model.onnx` (encoder + CIF alphas) and `decoder.onnx` (with FSMN caches). `int8=True`
picks the `_quant` twins.
"""

from __future__ import annotations

import numpy as np

from edge.backends.base import Backend
from edge.errors import BackendUnavailable, ModelError

F32 = np.float32


def _session(path: str, threads: int | None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendUnavailable("backend onnxruntime needs the onnxruntime package (pip install onnxruntime)") from None
    # a corrupt file made onnxruntime log graph warnings and node errors to stderr and print an
    # "EP Error" banner to stdout (its provider fallback, pointless on CPU); every failure is also
    # raised, and the ModelError made of it is the one line the user gets
    ort.set_default_logger_severity(4)
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"], enable_fallback=0)
    except Exception as exc:  # onnxruntime raises its own exception types for corrupt files
        text = str(exc)
        if isinstance(exc, UnicodeDecodeError) and isinstance(exc.object, bytes):
            text = exc.object.decode("utf-8", "replace")  # its message quotes the corrupt bytes
        msg = (text.splitlines() or [""])[0][:300] or type(exc).__name__
        raise ModelError(f"{path}: onnxruntime cannot load it ({msg})") from None


def _run(session, path: str, feed: dict) -> list:
    """session.run, its failures one ModelError: the inputs were checked at load, so a node failing
    (a Reshape that cannot fit, a static dim the graph itself contradicts) is a corrupt graph."""
    try:
        return session.run(None, feed)
    except Exception as exc:  # onnxruntime's Fail, InvalidArgument, RuntimeException...
        msg = (str(exc).splitlines() or [""])[0][:300] or type(exc).__name__
        raise ModelError(f"{path}: onnxruntime failed running it (corrupt or foreign graph: {msg})") from None


ANY = None  # a dimension the graph leaves dynamic (batch, time, tokens)


def _check_io(session, path: str, role: str, inputs: dict, outputs: list) -> None:
    """The session's inputs (by name: rank, type, static dims) and outputs (by position: name,
    rank, static dims) must be what this backend feeds and reads, checked at load: a decoder file
    swapped in for the encoder, or a file from another model, is named here, not a ValueError
    deep in a decode. `inputs` maps name -> (type, dims); `outputs` lists (name, dims)."""
    got_in = {i.name: i for i in session.get_inputs()}
    got_out = session.get_outputs()
    def plain(names):  # FSMN caches vary in number with the decoder's depth
        return {n for n in names if not n.startswith("in_cache_")}

    if plain(got_in) != plain(inputs):
        looks = ("a decoder (decoder*.onnx)" if "acoustic_embeds" in got_in
                 else "an encoder (model*.onnx)" if "speech" in got_in else "another kind of model")
        raise ModelError(f"{path}: inputs {sorted(plain(got_in))} are not the {role}'s {sorted(plain(inputs))}; it looks like "
                         f"{looks}: are the ONNX files swapped or from another export?")

    def check(kind, name, shape, dims):
        ok = isinstance(shape, (list, tuple)) and len(shape) == len(dims) and all(
            want is ANY or not isinstance(have, int) or have == want for have, want in zip(shape, dims))
        if not ok:
            want = "[" + ", ".join("*" if d is ANY else str(d) for d in dims) + "]"
            raise ModelError(f"{path}: {role} {kind} '{name}' has shape {list(shape or [])}, config.yaml implies "
                             f"{want}: the ONNX file is from another model")

    for name, (elem, dims) in inputs.items():
        if got_in[name].type != elem:
            raise ModelError(f"{path}: {role} input '{name}' is {got_in[name].type}, expected {elem}")
        check("input", name, got_in[name].shape, dims)
    names = [o.name for o in got_out]
    if names[: len(outputs)] != [n for n, _ in outputs]:
        raise ModelError(f"{path}: outputs {names} are not the {role}'s {[n for n, _ in outputs]} "
                         f"(in this order): are the ONNX files swapped or from another export?")
    for o, (name, dims) in zip(got_out, outputs):
        check("output", name, o.shape, dims)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, model_dir, threads: int | None = None, int8: bool = False):
        super().__init__(model_dir, threads)
        self.int8 = int8
        suffix = "_quant" if int8 else ""
        enc_file = f"model{suffix}.onnx"
        if not model_dir.has(enc_file):
            # the demo ships only the INT8 pair: --int8 is the likelier fix than an export
            hint = " (or use --int8: model_quant.onnx is here)" if not int8 and model_dir.has("model_quant.onnx") else ""
            raise BackendUnavailable(f"{model_dir.path}: no {enc_file}; run `paraedge export {model_dir.path}` on the "
                                     f"host{hint}")
        cfg = self.config
        din, d = cfg.input_size, cfg.d_model
        self.vocab = len(model_dir.tokens)
        self.enc_path = enc_path = model_dir.file(enc_file)
        self.session = _session(enc_path, threads)
        speech = {"speech": ("tensor(float)", [ANY, ANY, din]), "speech_lengths": ("tensor(int32)", [ANY])}
        self.decoder = None
        if self.config.streaming:
            _check_io(self.session, enc_path, "encoder", speech,
                      [("enc", [ANY, ANY, d]), ("enc_len", [ANY]), ("alphas", [ANY, ANY])])
            dec_file = f"decoder{suffix}.onnx"
            if not model_dir.has(dec_file):
                raise BackendUnavailable(f"{model_dir.path}: no {dec_file}; run `paraedge export {model_dir.path}`")
            self.dec_path = dec_path = model_dir.file(dec_file)
            self.decoder = _session(dec_path, threads)
            self.kernel = int(cfg.decoder_conf.get("kernel_size", 21))
            self.cache_inputs = [i for i in self.decoder.get_inputs() if i.name.startswith("in_cache_")]
            f32 = "tensor(float)"
            dec_in = {"enc": (f32, [ANY, ANY, d]), "enc_len": ("tensor(int32)", [ANY]),
                      "acoustic_embeds": (f32, [ANY, ANY, d]), "acoustic_embeds_len": ("tensor(int32)", [ANY])}
            # decode() starts each utterance with zero caches sized by config.yaml's kernel_size
            dec_in.update({i.name: (f32, [ANY, d, self.kernel - 1]) for i in self.cache_inputs})
            dec_out = [("logits", [ANY, ANY, ANY]), ("sample_ids", [ANY, ANY])]
            dec_out += [(f"out_cache_{i}", [ANY, d, ANY]) for i in range(len(self.cache_inputs))]
            _check_io(self.decoder, dec_path, "decoder", dec_in, dec_out)
            if len(self.decoder.get_outputs()) != len(dec_out):
                raise ModelError(f"{dec_path}: {len(self.cache_inputs)} cache inputs but "
                                 f"{len(self.decoder.get_outputs()) - 2} cache outputs (corrupt export)")
            self._check_vocab(self.decoder, dec_path)
        else:
            _check_io(self.session, enc_path, "offline model", speech,
                      [("logits", [ANY, ANY, ANY]), ("token_num", [ANY])])
            self._check_vocab(self.session, enc_path)
            self.offline = self._offline

    def _check_vocab(self, session, path: str) -> None:
        """Tokens vs the logits' vocabulary dim, as the reference backend checks its output layer:
        a mismatch would otherwise decode to wrong or empty text with exit 0."""
        dim = session.get_outputs()[0].shape[-1]
        if isinstance(dim, int):
            self.model_dir.check_vocab(dim, f"{path} (logits)")

    def _logits(self, logits: np.ndarray, path: str) -> np.ndarray:
        if logits.shape[-1] != self.vocab:  # a dynamic vocab dim could not be checked at load
            self.model_dir.check_vocab(logits.shape[-1], f"{path} (logits)")
        return logits

    def describe(self) -> str:
        return f"onnxruntime{' int8' if self.int8 else ''}"

    def _offline(self, feats: np.ndarray):
        logits, count = _run(self.session, self.enc_path,
                             {"speech": feats[None].astype(F32), "speech_lengths": np.array([feats.shape[0]], np.int32)})
        n = int(count[0])
        return self._logits(logits, self.enc_path)[0, :n], n

    @property
    def batched(self) -> bool:
        """fp32 graphs run several streams as one batch. INT8 graphs do not: onnxruntime's dynamic
        quantization scales activations per tensor (DynamicQuantizeLinear), so one stream's result
        would depend on the loudness of the others in its batch."""
        return not self.int8

    def encode(self, x: np.ndarray):
        return self.encode_batch([x])[0]

    def encode_batch(self, windows: list) -> list:
        if self.decoder is None:
            raise ModelError("this offline model.onnx has no separate encoder; stream with a ParaformerStreaming model")
        out = [None] * len(windows)
        # streams of the same window length share a call (all but a stream's first and last chunk)
        for idx in _groups([w.shape[0] for w in windows], self.batched):
            x = np.stack([windows[i] for i in idx]).astype(F32)
            enc, _, alphas = _run(self.session, self.enc_path,
                                  {"speech": x, "speech_lengths": np.full(len(idx), x.shape[1], np.int32)})
            for j, i in enumerate(idx):
                out[i] = (enc[j], alphas[j])
        return out

    def decode(self, enc, embeds, caches=None, streaming: bool = False):
        return self.decode_batch([(enc, embeds, caches)], streaming)[0]

    def decode_batch(self, items: list, streaming: bool = True) -> list:
        out = [None] * len(items)
        zero = np.zeros((1, self.config.d_model, self.kernel - 1), F32)
        # same frames and tokens share a call: the cached FSMN window has no mask, so padded
        # tokens would shift a shorter stream's cache
        for idx in _groups([(e.shape[0], m.shape[0]) for e, m, _ in items], self.batched):
            group = [items[i] for i in idx]
            enc = np.stack([e for e, _, _ in group]).astype(F32)
            embeds = np.stack([m for _, m, _ in group]).astype(F32)
            b = len(idx)
            feed = {"enc": enc, "enc_len": np.full(b, enc.shape[1], np.int32),
                    "acoustic_embeds": embeds, "acoustic_embeds_len": np.full(b, embeds.shape[1], np.int32)}
            for c, inp in enumerate(self.cache_inputs):
                feed[inp.name] = np.concatenate([zero if caches is None else caches[c] for _, _, caches in group])
            res = _run(self.decoder, self.dec_path, feed)
            logits = self._logits(res[0], self.dec_path)
            for j, i in enumerate(idx):
                out[i] = (logits[j], [cache[j : j + 1] for cache in res[2:]])
        return out


def _groups(keys: list, together: bool) -> list[list[int]]:
    """Indices of equal keys, in first-seen order (each index alone when not batching)."""
    if not together:
        return [[i] for i in range(len(keys))]
    groups: dict = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    return list(groups.values())
