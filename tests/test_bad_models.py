"""Corrupt and crafted model dirs (the hardening issue). The property, for every case: loading,
and decoding a shipped sample where loading succeeds, raises a ModelError whose one-line message
names the file and the problem; never a segfault, another exception type, a hang or runaway memory.

The bad inputs are corrupted copies of the shipped demo model. model.pt cases are tiny pickles
crafted here (torch only supplies the globals they name); they are decoded in a child process
without torch, under a memory limit, so a regression that segfaults or allocates without bound
fails its test instead of killing pytest or the host.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import re
import resource
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import ROOT, demo_tokens
from edge.errors import ModelError

DEMO = os.path.join(ROOT, "models", "demo")
WAV = os.path.join(DEMO, "samples", "01_okay_nabu_zh.wav")
FILES = ("config.yaml", "am.mvn", "tokens.json", "tokens.txt", "model.npz", "model_quant.onnx", "decoder_quant.onnx")
MEM_LIMIT = 4 << 30  # child address space: runaway allocation fails fast instead of swapping the host
BACKEND_KW = {"ref": {}, "onnxruntime": {"int8": True}}  # the demo ships INT8 ONNX only
VOCAB = len(demo_tokens())  # the demo's logits
ENC_WEIGHT = "encoder.encoders0.0.self_attn.linear_q_k_v.weight"


@pytest.fixture(scope="module")
def samples():
    from edge.asr.audio import load_audio

    return load_audio(WAV)[0]


def demo_copy(path, files=FILES) -> str:
    os.makedirs(path)
    for name in files:
        shutil.copy(os.path.join(DEMO, name), os.path.join(path, name))
    return str(path)


@pytest.fixture
def model(tmp_path) -> str:
    return demo_copy(tmp_path / "model")


def edit_config(d, change) -> None:
    path = os.path.join(d, "config.yaml")
    with open(path, encoding="utf-8") as f:
        conf = yaml.safe_load(f)
    change(conf)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(conf, f, allow_unicode=True, sort_keys=False)


def refused(d, samples, *needles, backend="ref") -> str:
    """Load d with `backend` and decode the sample: a one-line ModelError holding every needle."""
    from edge.asr.recognizer import Recognizer

    with pytest.raises(ModelError) as info:
        Recognizer(d, backend, **BACKEND_KW[backend]).transcribe(samples)
    msg = str(info.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, msg
    return msg


def test_demo_copy_decodes(model, samples):
    """The control: the uncorrupted copy decodes, to the same text on both backends."""
    from edge.asr.recognizer import Recognizer

    texts = {b: Recognizer(model, b, **kw).transcribe(samples).text for b, kw in BACKEND_KW.items()}
    assert texts["ref"] and texts["ref"] == texts["onnxruntime"], texts


# -- config.yaml ---------------------------------------------------------------------------------

def _set(section, key, value):
    def change(conf):
        (conf[section] if section else conf)[key] = value
    return change


CONFIGS = {
    "output_size_abc": (_set("encoder_conf", "output_size", "abc"), "encoder_conf.output_size", "'abc'"),
    "lfr_n_0": (_set("frontend_conf", "lfr_n", 0), "frontend_conf.lfr_n", "got 0"),  # was ZeroDivisionError
    "encoder_heads_3": (_set("encoder_conf", "attention_heads", 3), "encoder_conf.attention_heads 3", "divide"),
    "decoder_heads_3": (_set("decoder_conf", "attention_heads", 3), "decoder_conf.attention_heads 3", "divide"),
    "frame_shift_tiny": (_set("frontend_conf", "frame_shift", 0.01), "frontend_conf.frame_shift", "one sample"),
    "sanm_shfit_past_kernel": (_set("decoder_conf", "sanm_shfit", 9), "decoder_conf.sanm_shfit", "got 9"),
    "num_blocks_float": (_set("encoder_conf", "num_blocks", 2.5), "encoder_conf.num_blocks", "2.5"),
    # fewer layers than the weights hold decoded "open down" / nothing, exit 0
    "num_blocks_fewer": (_set("encoder_conf", "num_blocks", 5), "'encoder.encoders.4.", "num_blocks"),
    "decoder_layers_fewer": (lambda c: c["decoder_conf"].update(num_blocks=2, att_layer_num=2), "'decoder.decoders.2.",
                             "att_layer_num"),
    "cif_threshold_0": (_set("predictor_conf", "threshold", 0), "predictor_conf.threshold", "got 0"),
    "input_size_80": (_set(None, "input_size", 80), "input_size 80", "560"),
    "encoder_conf_list": (_set(None, "encoder_conf", [1, 2]), "encoder_conf must be a mapping"),
    "fs_8k": (_set("frontend_conf", "fs", 8000), "frontend_conf.fs", "16000"),
    "window_bogus": (_set("frontend_conf", "window", "kaiser"), "frontend_conf.window", "kaiser"),
}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_bad_config_values_are_named(model, samples, case):
    change, *needles = CONFIGS[case]
    edit_config(model, change)
    refused(model, samples, "config.yaml", *needles)


@pytest.mark.parametrize("content, needle", [
    (Path(DEMO, "training_curve.png").read_bytes(), "not UTF-8"),  # a binary file
    (b"model: [Paraformer\nencoder: {", "not valid YAML"),
    (b"\x00\x01\x02 binary but UTF-8", "not valid YAML"),
    (b"just a line of text\n", "expected a mapping"),
])
def test_unreadable_config_is_named(model, samples, content, needle):
    Path(model, "config.yaml").write_bytes(content)
    refused(model, samples, "config.yaml", needle)


# -- am.mvn, model.npz -----------------------------------------------------------------------------

@pytest.mark.parametrize("tag, value", [("AddShift", "nan"), ("Rescale", "inf")])
def test_non_finite_cmvn_is_named(model, samples, tag, value):
    path = Path(model, "am.mvn")
    text = path.read_text(encoding="utf-8")
    bad = re.sub(rf"(<{tag}>.*?\[\s*)(\S+)", r"\g<1>" + value, text, count=1, flags=re.DOTALL)
    assert bad != text
    path.write_text(bad, encoding="utf-8")
    refused(model, samples, "am.mvn", f"<{tag}>", "NaN or Inf")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_weight_is_named(model, samples, value):
    path = os.path.join(model, "model.npz")
    with np.load(path) as z:
        weights = {k: z[k] for k in z.files}
    weights[ENC_WEIGHT][3, 5] = value
    np.savez(path, **weights)
    refused(model, samples, "model.npz", ENC_WEIGHT, "NaN or Inf")


def test_npz_header_larger_than_its_data_is_refused_before_allocating(model, samples):
    """An array header claiming 4 TB over a few bytes of data: numpy would try to allocate it."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)})
    with zipfile.ZipFile(os.path.join(model, "model.npz"), "w") as z:
        z.writestr(ENC_WEIGHT + ".npy", buf.getvalue() + b"\0" * 64)
    refused(model, samples, "model.npz", ENC_WEIGHT, "claims shape")


# -- the CMVN file is optional, as in FunASR --------------------------------------------------------

def test_no_am_mvn_and_no_cmvn_file_decodes_without_cmvn(model, samples):
    """FunASR 1.4.16 sets frontend_conf.cmvn_file only when the dir has am.mvn (download_model_from_hub),
    and WavFrontend applies no CMVN when cmvn_file is None: such a dir decodes, un-normalised."""
    from edge.asr.frontend import apply_lfr, fbank
    from edge.asr.modeldir import ModelDir
    from edge.asr.recognizer import Recognizer

    with_cmvn = ModelDir(model).frontend(samples)
    os.remove(os.path.join(model, "am.mvn"))
    md = ModelDir(model)
    assert md.cmvn is None
    feats = md.frontend(samples)
    cfg = md.config.frontend
    np.testing.assert_array_equal(feats, apply_lfr(fbank(samples, cfg), cfg.lfr_m, cfg.lfr_n))
    assert not np.allclose(feats, with_cmvn)
    for backend, kw in BACKEND_KW.items():
        assert isinstance(Recognizer(model, backend, **kw).transcribe(samples).text, str)


@pytest.mark.parametrize("where", ["frontend_conf", None])
def test_missing_am_mvn_that_config_names_is_refused(model, samples, where):
    edit_config(model, _set(where, "cmvn_file", "am.mvn"))
    os.remove(os.path.join(model, "am.mvn"))
    refused(model, samples, "am.mvn", "missing", "cmvn_file")


def test_am_mvn_wins_over_a_stale_cmvn_file(model):
    """FunASR overrides frontend_conf.cmvn_file with the dir's am.mvn (a training machine's path)."""
    from edge.asr.modeldir import ModelDir

    edit_config(model, _set("frontend_conf", "cmvn_file", "/data/train/cmvn/am.mvn"))
    assert ModelDir(model).cmvn is not None


# -- ONNX files and the vocabulary ------------------------------------------------------------------

def test_swapped_onnx_files_are_named(model, samples):
    enc, dec = (os.path.join(model, f) for f in ("model_quant.onnx", "decoder_quant.onnx"))
    os.rename(enc, enc + ".tmp")
    os.rename(dec, enc)
    os.rename(enc + ".tmp", dec)
    refused(model, samples, "model_quant.onnx", "encoder", "looks like a decoder", backend="onnxruntime")


def test_encoder_in_place_of_the_decoder_is_named(model, samples):
    shutil.copy(os.path.join(model, "model_quant.onnx"), os.path.join(model, "decoder_quant.onnx"))
    refused(model, samples, "decoder_quant.onnx", "looks like an encoder", backend="onnxruntime")


def test_onnx_from_another_config_is_named(model, samples):
    """A decoder kernel_size the ONNX caches were not exported with: caught at load by shape."""
    edit_config(model, lambda c: c["decoder_conf"].update(kernel_size=7, sanm_shfit=3))
    refused(model, samples, "decoder_quant.onnx", "in_cache_0", "[*, 256, 6]", backend="onnxruntime")


@pytest.mark.parametrize("backend", sorted(BACKEND_KW))
@pytest.mark.parametrize("n", [100, 193])
def test_vocabulary_mismatch_is_refused_on_every_backend(model, samples, backend, n):
    """Was silent on onnxruntime (wrong or empty text, exit 0); the reference refused by shape."""
    tokens = (demo_tokens() + [f"x{i}" for i in range(n)])[:n]
    Path(model, "tokens.json").write_text(json.dumps(tokens, ensure_ascii=False), encoding="utf-8")
    refused(model, samples, "tokens.json", f"has {n} tokens", f"{VOCAB} outputs", backend=backend)


@pytest.mark.parametrize("backend", sorted(BACKEND_KW))
def test_empty_vocabulary_is_refused(model, samples, backend):
    Path(model, "tokens.json").write_text("[]")
    refused(model, samples, "tokens.json", "no tokens", backend=backend)


# -- crafted files, decoded in a child process without torch -----------------------------------------

CHILD = r"""
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
sys.modules["torch"] = None  # the runtime reads model.pt without torch
from edge.asr.audio import load_audio
from edge.asr.recognizer import Recognizer
from edge.errors import ModelError
x = load_audio({wav!r})[0]
for case, d in json.loads(sys.argv[1]):
    print(json.dumps({{"start": case}}), flush=True)
    try:
        out = {{"case": case, "text": Recognizer(d, "ref").transcribe(x).text}}
    except Exception as e:
        out = {{"case": case, "type": type(e).__name__, "model_error": isinstance(e, ModelError), "msg": str(e)}}
    print(json.dumps(out), flush=True)
"""


def decode_isolated(cases: dict, timeout: int = 300) -> dict:
    """{case: model dir} -> {case: result} from a child process; a crash fails naming the case."""
    code = CHILD.format(limit=MEM_LIMIT, wav=WAV)
    p = subprocess.run([sys.executable, "-c", code, json.dumps(sorted(cases.items()))], capture_output=True,
                       text=True, cwd=ROOT, timeout=timeout, check=False)
    lines = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    started = [line["start"] for line in lines if "start" in line]
    assert p.returncode == 0, f"child died (rc {p.returncode}) in case {started[-1:]}: {p.stderr[-3000:]}"
    return {line["case"]: line for line in lines if "case" in line}


def assert_refused(results: dict, expect: dict) -> None:
    for case, needles in expect.items():
        r = results[case]
        assert r.get("model_error"), (case, r)
        assert "\n" not in r["msg"], (case, r["msg"])
        for needle in needles:
            assert needle in r["msg"], (case, needle, r["msg"])


TOKENS_TXT = {  # (what is done to the demo's VOCAB-line tokens.txt, needles)
    "huge_id": (lambda lines: lines + ["b 99999999999"], (f"tokens.txt:{VOCAB + 1}:", "99999999999", "out of range")),
    "id_gap": (lambda lines: lines[:10] + lines[11:], (f"tokens.txt:{VOCAB - 1}:", f"id {VOCAB - 1}", f"0..{VOCAB - 2}")),
    "duplicate_id": (lambda lines: lines + ["b 7"], (f"tokens.txt:{VOCAB + 1}:", "id 7", "twice")),
    "no_id": (lambda lines: lines[:5] + ["lonely"] + lines[5:], ("tokens.txt:6:", "<token> <id>")),
    "negative_id": (lambda lines: lines[:3] + ["b -1"] + lines[4:], ("tokens.txt:4:", "<token> <id>")),
    "empty": (lambda lines: [], ("tokens.txt", "no tokens")),
}


def test_bad_tokens_txt_is_refused_by_line_before_allocating(tmp_path):
    """A `b 99999999999` line made memory grow at ~240 MB/s (a list sized by the largest id)."""
    lines = Path(DEMO, "tokens.txt").read_text(encoding="utf-8").splitlines()
    cases = {}
    for case, (change, _) in TOKENS_TXT.items():
        d = demo_copy(tmp_path / case, ("config.yaml", "am.mvn", "model.npz"))
        Path(d, "tokens.txt").write_text("".join(line + "\n" for line in change(lines)), encoding="utf-8")
        cases[case] = d
    d = cases["not_utf8"] = demo_copy(tmp_path / "not_utf8", ("config.yaml", "am.mvn", "model.npz"))
    Path(d, "tokens.txt").write_bytes(b"\xff\xfe b 0\n")
    expect = {case: needles for case, (_, needles) in TOKENS_TXT.items()}
    assert_refused(decode_isolated(cases), {**expect, "not_utf8": ("tokens.txt", "UTF-8")})


class Storage:
    """A persistent-id reference to archive/data/<key>, as torch.save writes it."""

    def __init__(self, key="0", numel=4, pid=None):
        import torch

        self.pid = pid if pid is not None else ("storage", torch.FloatStorage, key, "cpu", numel)


class Call:
    """A pickled call fn(*args): the shape torch.save gives a tensor, or anything else a crafted file holds."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def tensor(storage, offset, size, stride):
    import torch

    return Call(torch._utils._rebuild_tensor_v2, storage, offset, size, stride, False, collections.OrderedDict())


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, Storage) else None


def write_pt(path, obj, data: dict, deflate: bool = False) -> None:
    """torch.save's layout: archive/data.pkl (protocol 2) and one stored entry per storage."""
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(obj)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        for key, raw in data.items():
            z.writestr(f"archive/data/{key}", raw, compress_type=zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED)


FOUR = np.arange(4, dtype="<f4").tobytes()  # a 16-byte storage


def crafted_cases():
    """{case: (state_dict object, storages, deflate, needles)}; every needle is in the one-line error."""
    import torch

    s = Storage()

    def one(value, *needles, data=None, deflate=False):
        return collections.OrderedDict(w=value), data or {"0": FOUR}, deflate, needles

    return {
        "stride_1e9": one(tensor(s, 0, (2,), (10**9,)), "reaches element 1000000000", "outside"),
        "size_50M": one(tensor(s, 0, (50_000_000,), (1,)), "needs 200000000 bytes"),
        "overlap_past_end": one(tensor(s, 0, (8,), (1,)), "reaches element 7", "outside"),
        "offset_past_end": one(tensor(s, 4, (1,), (1,)), "outside"),
        "scalar_past_end": one(tensor(s, 7, (), ()), "reaches element 7"),
        "negative_stride": one(tensor(s, 3, (2,), (-1,)), "stride (-1,) is negative"),
        "negative_offset": one(tensor(s, -1, (2,), (1,)), "offset -1"),
        "rank_mismatch": one(tensor(s, 0, (2, 2), (1,)), "differ in length"),
        "size_not_ints": one(tensor(s, 0, ("a",), (1,)), "not a tuple of integers"),
        "stride0_2e40": one(tensor(s, 0, (2**40,), (0,)), "more than 2147483648 elements"),
        "stride0_400MB": one(tensor(s, 0, (10**8,), (0,)), "needs 400000000 bytes"),
        # each 4 MB tensor fits; a hundred of them would not: the budget is per file
        "stride0_many": (collections.OrderedDict((f"w{i}", tensor(s, 0, (10**6,), (0,))) for i in range(100)),
                         {"0": FOUR}, False, ("needs 4000000 bytes",)),
        "zip_bomb": one(tensor(s, 0, (4,), (1,)), "tensor data archive/data/0", "needs 67108864 bytes",
                        data={"0": bytes(64 << 20)}, deflate=True),
        "odd_storage_bytes": one(tensor(s, 0, (1,), (1,)), "not whole FloatStorage", data={"0": b"\0" * 6}),
        "missing_storage": one(tensor(Storage("9"), 0, (1,), (1,)), "archive/data/9 is missing"),
        "pid_string": one(tensor(Storage(pid="garbage"), 0, (1,), (1,)), "unknown persistent id"),
        "pid_short": one(tensor(Storage(pid=("storage",)), 0, (1,), (1,)), "unknown persistent id"),
        "pid_type_str": one(tensor(Storage(pid=("storage", "FloatStorage", "0", "cpu", 4)), 0, (1,), (1,)),
                            "unknown persistent id"),
        "storage_call": one(Call(torch.FloatStorage, 10), "constructs a torch.FloatStorage"),
        "rebuild_too_few_args": one(Call(torch._utils._rebuild_tensor_v2, s, 0), "size None"),
        "rebuild_int_storage": one(Call(torch._utils._rebuild_tensor_v2, 5, 0, (1,), (1,)), "storage is int"),
        "ordered_dict_bad_args": one(Call(collections.OrderedDict, 5), "corrupt checkpoint (TypeError"),
    }


def test_crafted_model_pt_is_refused_not_crashed(tmp_path):
    """as_strided took size/stride/offset on trust: a stride of 1e9 segfaulted, a size of 50 M read
    200 MB past a 16-byte storage. Each crafted model.pt is refused naming model.pt and the problem,
    and a well-formed one (the demo's weights, crafted the same way) decodes like model.npz."""
    cases = {}
    for case, (obj, data, deflate, _) in crafted_cases().items():
        d = demo_copy(tmp_path / case, ("config.yaml", "am.mvn", "tokens.json"))
        write_pt(os.path.join(d, "model.pt"), obj, data, deflate)
        cases[case] = d
    with np.load(os.path.join(DEMO, "model.npz")) as z:
        weights = {k: z[k] for k in z.files}
    sd = collections.OrderedDict()
    for i, (k, v) in enumerate(weights.items()):
        stride = tuple(int(s) // v.itemsize for s in v.strides)
        sd[k] = tensor(Storage(str(i), v.size), 0, v.shape, stride)
    d = cases["control"] = demo_copy(tmp_path / "control", ("config.yaml", "am.mvn", "tokens.json"))
    write_pt(os.path.join(d, "model.pt"), sd, {str(i): v.astype("<f4").tobytes() for i, v in enumerate(weights.values())})
    cases["demo_npz"] = DEMO
    results = decode_isolated(cases)
    assert results["control"].get("text") and results["control"]["text"] == results["demo_npz"]["text"], results["control"]
    expect = {case: ("model.pt",) + needles for case, (*_, needles) in crafted_cases().items()}
    assert_refused(results, expect)


def test_crafted_files_match_torch_save(tmp_path):
    """The crafting above writes what torch.save writes: torch itself loads a good crafted tensor."""
    import torch

    path = tmp_path / "t.pt"
    write_pt(path, collections.OrderedDict(w=tensor(Storage(), 1, (2, 1), (2, 1))), {"0": FOUR})
    np.testing.assert_array_equal(torch.load(path)["w"].numpy(), [[1], [3]])
    from edge.asr.torchfile import load_state_dict

    np.testing.assert_array_equal(load_state_dict(path)["w"], [[1], [3]])
    # a checkpoint holding nn.Parameters (torch._utils._rebuild_parameter), saved by torch itself
    torch.save({"model": {"p": torch.nn.Parameter(torch.arange(6.0).reshape(2, 3)[:, 1:])}}, tmp_path / "p.pt")
    np.testing.assert_array_equal(load_state_dict(tmp_path / "p.pt")["p"], [[1, 2], [4, 5]])


# -- the CLI: one line, exit 2 ----------------------------------------------------------------------

def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEM_LIMIT, MEM_LIMIT))


@pytest.mark.parametrize("case", ["lfr_n_0", "swapped_onnx", "tokens_huge_id", "pt_stride_1e9"])
def test_cli_bad_model_is_one_line_exit_2(tmp_path, case):
    d = demo_copy(tmp_path / "m")
    args, needle = [], "config.yaml"
    if case == "lfr_n_0":
        edit_config(d, _set("frontend_conf", "lfr_n", 0))
    elif case == "swapped_onnx":
        os.replace(os.path.join(d, "decoder_quant.onnx"), os.path.join(d, "model_quant.onnx"))
        shutil.copy(os.path.join(DEMO, "model_quant.onnx"), os.path.join(d, "decoder_quant.onnx"))
        args, needle = ["--backend", "onnxruntime", "--int8"], "model_quant.onnx"
    elif case == "tokens_huge_id":
        os.remove(os.path.join(d, "tokens.json"))
        with open(os.path.join(d, "tokens.txt"), "a", encoding="utf-8") as f:
            f.write("b 99999999999\n")
        needle = f"tokens.txt:{VOCAB + 1}:"
    else:
        os.remove(os.path.join(d, "model.npz"))
        write_pt(os.path.join(d, "model.pt"), collections.OrderedDict(w=tensor(Storage(), 0, (2,), (10**9,))), {"0": FOUR})
        needle = "model.pt"
    p = subprocess.run([sys.executable, "-m", "edge", "transcribe", "--model", d, *args, WAV], capture_output=True,
                       text=True, cwd=ROOT, timeout=120, preexec_fn=_limit_memory, check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr, (p.returncode, p.stderr)
    assert lines[0].startswith("paraedge: error: ") and needle in lines[0], lines
    assert p.stdout == ""
