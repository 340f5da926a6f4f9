"""A FunASR-format model directory: config.yaml, am.mvn, tokens.json, weights.

Weights are read, in order of preference, from `model.npz` (ParaEdge's exported float32 arrays,
FunASR parameter names) or `model.pt` (FunASR's own state_dict, read without torch).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from edge.errors import ModelError
from edge.asr.frontend import Cmvn, Frontend, FrontendConfig

OFFLINE_MODELS = ("Paraformer",)
STREAMING_MODELS = ("ParaformerStreaming",)
DEFAULT_CHUNK_SIZE = (0, 10, 5)  # FunASR's default: 600 ms chunks, 300 ms look-ahead, no left context
ENCODERS = ("SANMEncoder", "SANMEncoderChunkOpt")
DECODERS = ("ParaformerSANMDecoder",)
PREDICTORS = ("CifPredictorV2",)


@dataclass
class ModelConfig:
    """The parts of FunASR's config.yaml that decoding depends on, validated."""

    model: str
    encoder_conf: dict
    decoder_conf: dict
    predictor_conf: dict
    frontend: FrontendConfig
    vocab_size: int
    input_size: int
    sos: int = 1
    eos: int = 2
    blank_id: int = 0
    # the model's streaming default; a top-level `chunk_size` in config.yaml is the key FunASR's
    # AutoModel hands to generate(), so a model trained for left context can ask for it
    chunk_size: tuple = DEFAULT_CHUNK_SIZE
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def streaming(self) -> bool:
        return self.model in STREAMING_MODELS

    @property
    def d_model(self) -> int:
        return int(self.encoder_conf.get("output_size", 256))

    @classmethod
    def from_dict(cls, conf: dict, vocab_size: int | None = None, where: str = "config.yaml"):
        if not isinstance(conf, dict):
            raise ModelError(f"{where}: expected a mapping at the top level")
        model = conf.get("model")
        if model not in OFFLINE_MODELS + STREAMING_MODELS:
            raise ModelError(f"{where}: model '{model}' is not supported (Paraformer, ParaformerStreaming)")
        for key, allowed in (("encoder", ENCODERS), ("decoder", DECODERS), ("predictor", PREDICTORS)):
            if conf.get(key) not in allowed:
                raise ModelError(f"{where}: {key} '{conf.get(key)}' is not supported ({', '.join(allowed)})")
        enc = dict(conf.get("encoder_conf") or {})
        dec = dict(conf.get("decoder_conf") or {})
        pred = dict(conf.get("predictor_conf") or {})
        if enc.get("input_layer", "pe") not in ("pe", "pe_online"):
            raise ModelError(f"{where}: encoder input_layer '{enc.get('input_layer')}' is not supported (pe, pe_online)")
        if enc.get("selfattention_layer_type", "sanm") != "sanm":
            raise ModelError(f"{where}: encoder selfattention_layer_type must be 'sanm'")
        if not enc.get("normalize_before", True) or enc.get("concat_after", False):
            raise ModelError(f"{where}: only normalize_before=true, concat_after=false encoders are supported")
        if enc.get("positionwise_layer_type", "linear") != "linear":
            raise ModelError(f"{where}: encoder positionwise_layer_type must be 'linear'")
        frontend = FrontendConfig.from_conf(conf.get("frontend_conf") or {})
        model_conf = dict(conf.get("model_conf") or {})
        if vocab_size is None:
            vocab_size = conf.get("vocab_size", -1)
        input_size = conf.get("input_size") or frontend.feat_dim

        def pick(key, default):
            value = model_conf.get(key, conf.get(key))
            return default if value is None else int(value)

        chunk_size = conf.get("chunk_size", list(DEFAULT_CHUNK_SIZE))
        try:
            chunk_size = check_chunk_size(chunk_size)
        except ValueError as e:
            raise ModelError(f"{where}: {e}") from None

        return cls(
            model=model,
            encoder_conf=enc,
            decoder_conf=dec,
            predictor_conf=pred,
            frontend=frontend,
            vocab_size=int(vocab_size),
            input_size=int(input_size),
            sos=pick("sos", 1),
            eos=pick("eos", 2),
            blank_id=pick("blank_id", 0),
            chunk_size=chunk_size,
            raw=conf,
        )


def check_chunk_size(chunk_size) -> tuple:
    """[left, chunk, right] in LFR frames (60 ms each): left context, chunk, look-ahead."""
    try:
        values = tuple(int(c) for c in chunk_size)
        ok = len(values) == 3 and all(int(c) == c for c in chunk_size) and min(values) >= 0 and values[1] >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"chunk_size must be [left, chunk, right] LFR frames with chunk >= 1, got {chunk_size!r}")
    return values


def _read_yaml(path):
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except FileNotFoundError:
        raise ModelError(f"{path}: missing (a FunASR model dir needs config.yaml)") from None
    except yaml.YAMLError as exc:
        raise ModelError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None


def read_tokens(model_dir) -> list[str]:
    jpath = os.path.join(model_dir, "tokens.json")
    tpath = os.path.join(model_dir, "tokens.txt")
    if os.path.isfile(jpath):
        try:
            with open(jpath, encoding="utf-8") as f:
                tokens = json.load(f)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ModelError(f"{jpath}: not valid JSON ({exc})") from None
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ModelError(f"{jpath}: expected a JSON list of token strings")
        return tokens
    if os.path.isfile(tpath):  # sherpa-onnx style "token id" per line
        tokens = {}
        with open(tpath, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                parts = line.rstrip("\n").rsplit(" ", 1)
                if len(parts) != 2 or not parts[1].isdigit():
                    raise ModelError(f"{tpath}:{n}: expected '<token> <id>'")
                tokens[int(parts[1])] = parts[0]
        return [tokens.get(i, "<unk>") for i in range(max(tokens) + 1)] if tokens else []
    raise ModelError(f"{model_dir}: missing tokens.json (or tokens.txt)")


def write_tokens_txt(tokens: list[str], path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i, tok in enumerate(tokens):
            f.write(f"{tok} {i}\n")


def sha256_file(path) -> str:
    """The digest bundle manifests record and the TVM loader verifies."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


MODEL_FILES = ("config.yaml", "am.mvn", "tokens.json")  # what a bundle copies besides its compiled code


def model_hash(md: "ModelDir") -> str:
    """sha256 over what decides the model's numbers: config, CMVN, tokens, weights. A bundle
    records it, and benchmark scratch copies and deploy kits are rebuilt when it changes."""
    h = hashlib.sha256()
    weights = "model.npz" if md.has("model.npz") else "model.pt"
    for name in MODEL_FILES + (weights,):
        if md.has(name):
            h.update(name.encode() + b"\0" + sha256_file(md.file(name)).encode())
    return h.hexdigest()


def load_npz(path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise ModelError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise ModelError(f"{path}: corrupt or truncated weights file ({exc})") from None


class ModelDir:
    """Everything ParaEdge reads from a model directory, each piece loaded and checked lazily."""

    def __init__(self, path):
        self.path = os.fspath(path)
        if not os.path.isdir(self.path):
            raise ModelError(f"{self.path}: model directory not found")
        self.tokens = read_tokens(self.path)
        conf = _read_yaml(os.path.join(self.path, "config.yaml"))
        self.config = ModelConfig.from_dict(conf, vocab_size=len(self.tokens), where=os.path.join(self.path, "config.yaml"))
        self.cmvn = Cmvn.load(os.path.join(self.path, "am.mvn"))
        if self.cmvn.shift.size != self.config.frontend.feat_dim:
            raise ModelError(
                f"{self.path}/am.mvn has {self.cmvn.shift.size} dims, the frontend makes {self.config.frontend.feat_dim}"
            )

    def file(self, name) -> str:
        return os.path.join(self.path, name)

    def has(self, name) -> bool:
        return os.path.isfile(self.file(name))

    @cached_property
    def frontend(self) -> Frontend:
        return Frontend(self.config.frontend, self.cmvn)

    @cached_property
    def weights(self) -> dict[str, np.ndarray]:
        if self.has("model.npz"):
            w = load_npz(self.file("model.npz"))
        elif self.has("model.pt"):
            from edge.asr.torchfile import load_state_dict

            w = load_state_dict(self.file("model.pt"))
        else:
            raise ModelError(f"{self.path}: no weights (model.npz or model.pt)")
        return {k: np.asarray(v, dtype=np.float32) for k, v in w.items() if v.dtype.kind == "f"}
