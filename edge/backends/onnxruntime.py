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
            raise BackendUnavailable(f"{model_dir.path}: no {enc_file}; run `paraedge export {model_dir.path}` on the host")
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

    def encode(self, x: np.ndarray):
        if self.decoder is None:
            raise ModelError("this offline model.onnx has no separate encoder; stream with a ParaformerStreaming model")
        enc, _, alphas = _run(self.session, self.enc_path,
                              {"speech": x[None].astype(F32), "speech_lengths": np.array([x.shape[0]], np.int32)})
        return enc[0], alphas[0]

    def decode(self, enc, embeds, caches=None, streaming: bool = False):
        if caches is None:
            caches = [np.zeros((1, self.config.d_model, self.kernel - 1), F32) for _ in self.cache_inputs]
        feed = {
            "enc": enc[None].astype(F32),
            "enc_len": np.array([enc.shape[0]], np.int32),
            "acoustic_embeds": embeds[None].astype(F32),
            "acoustic_embeds_len": np.array([embeds.shape[0]], np.int32),
        }
        for inp, c in zip(self.cache_inputs, caches):
            feed[inp.name] = c
        out = _run(self.decoder, self.dec_path, feed)
        return self._logits(out[0], self.dec_path)[0], out[2:]
