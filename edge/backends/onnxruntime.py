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
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for corrupt files
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"{path}: onnxruntime cannot load it ({msg})") from None


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, model_dir, threads: int | None = None, int8: bool = False):
        super().__init__(model_dir, threads)
        self.int8 = int8
        suffix = "_quant" if int8 else ""
        enc_file = f"model{suffix}.onnx"
        if not model_dir.has(enc_file):
            raise BackendUnavailable(f"{model_dir.path}: no {enc_file}; run `paraedge export {model_dir.path}` on the host")
        self.session = _session(model_dir.file(enc_file), threads)
        self.decoder = None
        if self.config.streaming:
            dec_file = f"decoder{suffix}.onnx"
            if not model_dir.has(dec_file):
                raise BackendUnavailable(f"{model_dir.path}: no {dec_file}; run `paraedge export {model_dir.path}`")
            self.decoder = _session(model_dir.file(dec_file), threads)
            self.cache_inputs = [i for i in self.decoder.get_inputs() if i.name.startswith("in_cache_")]
            self.kernel = int(self.config.decoder_conf.get("kernel_size", 21))
        else:
            self.offline = self._offline

    def describe(self) -> str:
        return f"onnxruntime{' int8' if self.int8 else ''}"

    def _offline(self, feats: np.ndarray):
        logits, count = self.session.run(
            None, {"speech": feats[None].astype(F32), "speech_lengths": np.array([feats.shape[0]], np.int32)}
        )
        n = int(count[0])
        return logits[0, :n], n

    def encode(self, x: np.ndarray):
        if self.decoder is None:
            raise ModelError("this offline model.onnx has no separate encoder; stream with a ParaformerStreaming model")
        enc, _, alphas = self.session.run(
            None, {"speech": x[None].astype(F32), "speech_lengths": np.array([x.shape[0]], np.int32)}
        )
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
        out = self.decoder.run(None, feed)
        return out[0][0], out[2:]
