"""A FunASR-format model directory: config.yaml, am.mvn, tokens.json, weights.

Weights are read, in order of preference, from `model.npz` (ParaEdge's exported float32 arrays,
FunASR parameter names) or `model.pt` (FunASR's own state_dict, read without torch).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tokenize
import zipfile
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from edge.errors import ModelError, open_regular, sub_dict
from edge.asr.frontend import Cmvn, Frontend, FrontendConfig

OFFLINE_MODELS = ("Paraformer",)
STREAMING_MODELS = ("ParaformerStreaming",)
DEFAULT_CHUNK_SIZE = (0, 10, 5)  # FunASR's default: 600 ms chunks, 300 ms look-ahead, no left context
ENCODERS = ("SANMEncoder", "SANMEncoderChunkOpt")
DECODERS = ("ParaformerSANMDecoder",)
PREDICTORS = ("CifPredictorV2",)
MAX_SIZE = 1 << 16  # widths, heads, blocks, kernels: far above any Paraformer; larger is a corrupt config
# chunk_size values, in 60 ms LFR frames: 1000 is a minute, far above any streaming setup; the stream
# allocates its context by them (0,10,99999999999 asked for 204 TiB)
MAX_CHUNK = 1000
MAX_CIF = 10.0  # CIF thresholds/factors (FunASR: 1.0, 0.45, 1.0, 0.0); larger makes token counts explode


def conf_int(conf: dict, key: str, default, where: str, lo: int = 1, hi: int = MAX_SIZE) -> int:
    """conf[key] (absent or null: default) as an int in [lo, hi] (a YAML float like 256.0 counts),
    else a ModelError naming the key."""
    value = conf.get(key)
    value = default if value is None else value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ModelError(f"{where}: must be an integer in [{lo}, {hi}], got {value!r:.40}")
    return value


def conf_float(conf: dict, key: str, default, where: str, lo: float, hi: float, lo_open: bool = False) -> float:
    value = conf.get(key)
    value = default if value is None else value
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (lo < value if lo_open else lo <= value) or value > hi:
        raise ModelError(f"{where}: must be a number in {'(' if lo_open else '['}{lo}, {hi}], got {value!r:.40}")
    return float(value)


def _mapping(conf: dict, key: str, where: str) -> dict:
    return dict(sub_dict(conf, key, f"{where}: {key}", ModelError))


def _check_values(enc: dict, dec: dict, pred: dict, where: str) -> None:
    """Types and ranges of everything the backends size arrays or loops by, before any is used:
    a bad value is one clear error here, not a ZeroDivisionError or a reshape error mid-decode.
    Each checked value is stored back (a YAML null becomes its default, 256.0 becomes 256): the
    backends read these dicts with .get(key, default), and int(None) was a TypeError mid-load."""

    def keep(conf: dict, key: str, value):
        if key in conf:
            conf[key] = value
        return value

    def check_int(conf, key, default, name, **kw):
        return keep(conf, key, conf_int(conf, key, default, f"{where}: {name}", **kw))

    def check_float(conf, key, default, lo, hi, **kw):
        return keep(conf, key, conf_float(conf, key, default, f"{where}: predictor_conf.{key}", lo, hi, **kw))

    d = check_int(enc, "output_size", 256, "encoder_conf.output_size")
    for section, conf, heads_default in (("encoder_conf", enc, 4), ("decoder_conf", dec, 4)):
        heads = check_int(conf, "attention_heads", heads_default, f"{section}.attention_heads")
        if d % heads:
            raise ModelError(f"{where}: {section}.attention_heads {heads} does not divide the model width "
                             f"{d} (encoder_conf.output_size)")
        check_int(conf, "linear_units", 2048, f"{section}.linear_units")
        check_int(conf, "num_blocks", 6, f"{section}.num_blocks")
    check_int(dec, "att_layer_num", 6, "decoder_conf.att_layer_num", lo=0)
    for section, conf, kernel_default in (("encoder_conf", enc, 11), ("decoder_conf", dec, 21)):
        kernel = check_int(conf, "kernel_size", kernel_default, f"{section}.kernel_size")
        if conf is enc or conf.get("sanm_shfit", 0) is not None:  # the decoder's None means "causal"
            # FSMN padding: left (k-1)//2 + shift, right what remains, which must not go negative
            check_int(conf, "sanm_shfit", 0, f"{section}.sanm_shfit (kernel_size {kernel})",
                      lo=0, hi=(kernel - 1) - (kernel - 1) // 2)
    if "idim" in pred and check_int(pred, "idim", d, "predictor_conf.idim") != d:
        raise ModelError(f"{where}: predictor_conf.idim {pred['idim']} differs from encoder_conf.output_size {d}")
    check_int(pred, "l_order", 1, "predictor_conf.l_order", lo=0, hi=64)
    check_int(pred, "r_order", 1, "predictor_conf.r_order", lo=0, hi=64)
    check_float(pred, "threshold", 1.0, 0.0, MAX_CIF, lo_open=True)
    check_float(pred, "tail_threshold", 0.0, 0.0, MAX_CIF)
    check_float(pred, "smooth_factor", 1.0, 0.0, MAX_CIF)
    check_float(pred, "noise_threshold", 0.0, -MAX_CIF, MAX_CIF)


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
            raise ModelError(f"{where}: model {model!r:.60} is not supported (Paraformer, ParaformerStreaming)")
        for key, allowed in (("encoder", ENCODERS), ("decoder", DECODERS), ("predictor", PREDICTORS)):
            if conf.get(key) not in allowed:
                raise ModelError(f"{where}: {key} {conf.get(key)!r:.60} is not supported ({', '.join(allowed)})")
        enc = _mapping(conf, "encoder_conf", where)
        dec = _mapping(conf, "decoder_conf", where)
        pred = _mapping(conf, "predictor_conf", where)
        if enc.get("input_layer", "pe") not in ("pe", "pe_online"):
            raise ModelError(f"{where}: encoder input_layer {enc.get('input_layer')!r:.60} is not supported (pe, pe_online)")
        if enc.get("selfattention_layer_type", "sanm") != "sanm":
            raise ModelError(f"{where}: encoder selfattention_layer_type must be 'sanm'")
        if not enc.get("normalize_before", True) or enc.get("concat_after", False):
            raise ModelError(f"{where}: only normalize_before=true, concat_after=false encoders are supported")
        if enc.get("positionwise_layer_type", "linear") != "linear":
            raise ModelError(f"{where}: encoder positionwise_layer_type must be 'linear'")
        _check_values(enc, dec, pred, where)
        frontend = FrontendConfig.from_conf(_mapping(conf, "frontend_conf", where), where=f"{where}: frontend_conf")
        model_conf = _mapping(conf, "model_conf", where)
        if vocab_size is None:
            vocab_size = conf_int(conf, "vocab_size", -1, f"{where}: vocab_size", lo=-1, hi=1 << 24)
        # FunASR sizes the encoder input by the frontend (n_mels * lfr_m), whatever input_size says
        input_size = conf_int(conf, "input_size", frontend.feat_dim, f"{where}: input_size")
        if input_size != frontend.feat_dim:
            raise ModelError(f"{where}: input_size {input_size} differs from the frontend's n_mels * lfr_m = "
                             f"{frontend.feat_dim}")

        def pick(key, default):
            holder = model_conf if model_conf.get(key) is not None else conf
            if holder.get(key) is None:
                return default
            return conf_int(holder, key, default, f"{where}: {key}", lo=-1, hi=1 << 24)

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
        ok = (len(values) == 3 and all(int(c) == c and not isinstance(c, bool) for c in chunk_size)
              and min(values) >= 0 and values[1] >= 1
              and max(values) <= MAX_CHUNK)
    except (TypeError, ValueError, OverflowError):  # int(inf) is an OverflowError
        ok = False
    if not ok:
        raise ValueError(f"chunk_size must be [left, chunk, right] LFR frames with chunk >= 1 (each <= {MAX_CHUNK}), "
                         f"got {chunk_size!r:.80}")
    return values


def _read_yaml(path):
    import yaml

    try:
        with open_regular(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except FileNotFoundError:
        raise ModelError(f"{path}: missing (a FunASR model dir needs config.yaml)") from None
    except UnicodeDecodeError:
        raise ModelError(f"{path}: not UTF-8 text (a binary file?); it must be FunASR's YAML config") from None
    except yaml.YAMLError as exc:
        raise ModelError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except RecursionError:
        raise ModelError(f"{path}: not valid YAML (nested too deeply)") from None


_TOKEN_LINE = re.compile(r"(.+) ([0-9]+)")  # "<token> <id>"


def tokens_file(model_dir) -> str:
    """The tokens file read_tokens() reads: tokens.json, else sherpa-onnx style tokens.txt."""
    jpath = os.path.join(model_dir, "tokens.json")
    return jpath if os.path.isfile(jpath) else os.path.join(model_dir, "tokens.txt")


def read_tokens(model_dir) -> list[str]:
    path = tokens_file(model_dir)
    if path.endswith(".json"):
        try:
            with open_regular(path, encoding="utf-8") as f:
                tokens = json.load(f)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ModelError(f"{path}: not valid JSON ({str(exc)[:100]})") from None
        except OSError as exc:
            raise ModelError(f"{path}: cannot be read ({exc.strerror})") from None
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ModelError(f"{path}: expected a JSON list of token strings")
    elif os.path.isfile(path):  # sherpa-onnx style "token id" per line
        try:
            with open(path, encoding="utf-8", newline="") as f:
                lines = [line.removesuffix("\r") for line in f.read().split("\n")]
            if lines[-1] == "":  # the last line's newline
                lines.pop()
        except UnicodeDecodeError:
            raise ModelError(f"{path}: not UTF-8 text") from None
        # ids must be a permutation of 0..N-1 for N lines: checked before anything is sized by an id
        tokens = [None] * len(lines)
        for n, line in enumerate(lines, 1):
            m = _TOKEN_LINE.fullmatch(line)
            if not m:
                raise ModelError(f"{path}:{n}: expected '<token> <id>', got {line!r:.60}")
            digits = m.group(2).lstrip("0") or "0"
            # compared by length first: a 10,000-digit id is refused without converting it
            if len(digits) > len(str(len(lines))) or int(digits) >= len(lines):
                raise ModelError(f"{path}:{n}: id {digits:.20} is out of range: {len(lines)} lines need ids "
                                 f"0..{len(lines) - 1}")
            i = int(digits)
            if tokens[i] is not None:
                raise ModelError(f"{path}:{n}: id {i} is used twice")
            tokens[i] = m.group(1)
    else:
        raise ModelError(f"{model_dir}: missing tokens.json (or tokens.txt)")
    if not tokens:
        raise ModelError(f"{path}: no tokens")
    return tokens


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
    fmt = np.lib.format
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {}
            for member in z.zip.infolist():
                name = member.filename.removesuffix(".npy")
                if name == member.filename:
                    raise ModelError(f"{path}: member {name!r:.60} is not a .npy array")
                # numpy allocates what the header claims before reading: check the claim first
                with z.zip.open(member) as f:
                    version = fmt.read_magic(f)
                    header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                    shape, _, dtype = header(f)
                need = math.prod(shape) * dtype.itemsize
                if need > member.file_size:
                    raise ModelError(f"{path}: array {name!r:.80} claims shape {shape!r:.60} ({need} bytes), more "
                                     f"than its {member.file_size}-byte entry (truncated or corrupt)")
                out[name] = z[name]
            return out
    except FileNotFoundError:
        raise ModelError(f"{path}: no such file") from None
    # numpy parses an .npy header with tokenize: an unbalanced bracket there raises TokenError
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, tokenize.TokenError, SyntaxError) as exc:
        msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ModelError(f"{path}: corrupt or truncated weights file ({msg})") from None


class ModelDir:
    """Everything ParaEdge reads from a model directory, each piece loaded and checked lazily."""

    def __init__(self, path):
        self.path = os.fspath(path)
        # filled by `weights`: name -> dtype of what it skipped (FunASR's checkpoints hold int counters)
        self.non_float_weights: dict[str, str] = {}
        if not os.path.isdir(self.path):
            raise ModelError(f"{self.path}: model directory not found")
        self.tokens_file = tokens_file(self.path)
        self.tokens = read_tokens(self.path)
        conf = _read_yaml(os.path.join(self.path, "config.yaml"))
        self.config = ModelConfig.from_dict(conf, vocab_size=len(self.tokens), where=os.path.join(self.path, "config.yaml"))
        self.cmvn = self._load_cmvn(conf)

    def _load_cmvn(self, conf: dict) -> Cmvn | None:
        """am.mvn when the dir has one (FunASR then uses it whatever config.yaml says). Without it,
        FunASR applies no CMVN unless config.yaml names a `cmvn_file`: then the model was trained
        with one, and decoding without it would be silently wrong, so it is refused."""
        path = self.file("am.mvn")
        if not os.path.isfile(path):
            named = (conf.get("frontend_conf") or {}).get("cmvn_file") or conf.get("cmvn_file")
            if named:
                raise ModelError(f"{path}: missing, but config.yaml names cmvn_file {str(named)!r:.80}; "
                                 f"copy that CMVN file into the model dir as am.mvn")
            return None
        cmvn = Cmvn.load(path)
        if cmvn.shift.size != self.config.frontend.feat_dim:
            raise ModelError(f"{path}: has {cmvn.shift.size} dims, the frontend makes {self.config.frontend.feat_dim} "
                             f"(n_mels * lfr_m)")
        return cmvn

    def file(self, name) -> str:
        return os.path.join(self.path, name)

    def has(self, name) -> bool:
        return os.path.isfile(self.file(name))

    def check_vocab(self, outputs: int, source: str) -> None:
        """The tokens file must list exactly one token per model output (logit)."""
        if outputs != len(self.tokens):
            raise ModelError(f"{self.tokens_file}: has {len(self.tokens)} tokens but {source} has {outputs} outputs; "
                             f"use the tokens file that came with this model")

    @cached_property
    def frontend(self) -> Frontend:
        return Frontend(self.config.frontend, self.cmvn)

    @property
    def weights_file(self) -> str:
        for name in ("model.npz", "model.pt"):
            if self.has(name):
                return self.file(name)
        raise ModelError(f"{self.path}: no weights (model.npz or model.pt)")

    @cached_property
    def weights(self) -> dict[str, np.ndarray]:
        path = self.weights_file
        if path.endswith(".npz"):
            w = load_npz(path)
        else:
            from edge.asr.torchfile import load_state_dict

            w = load_state_dict(path)
        out = {}
        for k, v in w.items():
            if v.dtype.kind != "f":
                self.non_float_weights[k] = str(v.dtype)
                continue
            v = np.asarray(v, dtype=np.float32)
            # a NaN/Inf weight decodes to garbage or a late, obscure error: refuse it by name
            if not np.isfinite(v).all():
                raise ModelError(f"{path}: weight {k!r:.100} holds NaN or Inf values (corrupt weights file)")
            out[k] = v
        return out
