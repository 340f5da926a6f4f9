"""bench/int8_sensitivity.py's own parts on the demo model: the layers it scans and the pairs it
builds (`models/export.py quantize(keep_float=...)` leaves exactly those MatMuls in float)."""

import importlib.util
import os

import onnx
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "models", "demo")


def bench():
    spec = importlib.util.spec_from_file_location("int8_sensitivity", os.path.join(ROOT, "bench", "int8_sensitivity.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_scanned_layers_and_the_pairs_kept_in_float(tmp_path):
    pytest.importorskip("torch")
    from paraedge_models.export import fp32_copy

    b = bench()
    fp32 = fp32_copy(DEMO, str(tmp_path / "fp32"))
    groups = b.layers(fp32)
    # six encoder layers, three decoder layers and the decoder's last FFN; the output projections
    # (kept in float by the export itself) are not scanned
    assert len(groups) == 10 and list(groups)[0] == "/encoder/encoders0.0"
    assert not any("output" in name for ms in groups.values() for _, name in ms)
    shipped, mb = b.build(fp32, str(tmp_path / "shipped"), [])
    with open(os.path.join(shipped, "model_quant.onnx"), "rb") as f, open(os.path.join(DEMO, "model_quant.onnx"), "rb") as g:
        assert f.read() == g.read()  # the empty keep list is the export's own scheme, byte for byte
    first = groups["/encoder/encoders0.0"]
    kept, kept_mb = b.build(fp32, str(tmp_path / "kept"), first)
    ops = {n.name: n.op_type for n in onnx.load(os.path.join(kept, "model_quant.onnx")).graph.node}
    assert all(ops[name] == "MatMul" for _, name in first)  # still float
    assert "/encoder/encoders.0/feed_forward/w_1/MatMul_quant" in ops  # the next layer is INT8
    assert kept_mb > mb + 2.5  # 1.02 M weights at 4 bytes instead of 1
    meta = {p.key: p.value for p in onnx.load(os.path.join(kept, "model_quant.onnx")).metadata_props}
    assert meta["model_type"] == "paraformer"  # peers (sherpa-onnx) read the pair's metadata
