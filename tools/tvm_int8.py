"""INT8 for TVM bundles (host side): real int8 x int8 -> int32 matmuls, not fake-quant.

TVM's ONNX importer turns QDQ graphs into float fake-quant and has no ConvInteger/QLinear*, so
the INT8 graph is arranged here, on the static-shape ONNX of each function, for every MatMul
whose B is a weight:
- weights: symmetric per output channel, int8 initializers (a quarter of the fp32 bytes);
- activations: symmetric per row (dynamic: amax of each row / 127), rounded to int8 in the graph;
- `MatMulInteger(x_q, w_q)` -> int32, then `* s_x * s_w` back to float (bias etc. stay float).
`int8_matmul_import()` makes the importer emit one `matmul(int8, int8, out_dtype=int32)`
(widening inside the kernel) instead of two int32 copies of the operands, so the weight is
read as int8 by the scheduled matmul.
"""

from __future__ import annotations

import contextlib

import numpy as np


def quantize_onnx(path: str) -> int:
    """Rewrite `path` in place; returns the number of quantized MatMuls."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load(path)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    nodes, count = [], 0
    eps = numpy_helper.from_array(np.array(1e-12, np.float32), "q8_eps")
    c127 = numpy_helper.from_array(np.array(127.0, np.float32), "q8_127")
    lo = numpy_helper.from_array(np.array(-127.0, np.float32), "q8_lo")
    g.initializer.extend([eps, c127, lo])
    for node in g.node:
        w = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if w is None or w.data_type != TensorProto.FLOAT or len(w.dims) not in (2, 3):
            nodes.append(node)
            continue
        wf = numpy_helper.to_array(w).astype(np.float32)
        # the K axis is the second-to-last: [K, N] or packed panels [N/16, K, 16]
        sw = np.maximum(np.abs(wf).max(axis=-2, keepdims=True), 1e-12) / 127.0
        wq = np.clip(np.round(wf / sw), -127, 127).astype(np.int8)
        p = f"q8_{w.name}"  # named after the weight: every shape's function shares the int8 copy
        g.initializer.extend([numpy_helper.from_array(wq, p + "_w"),
                              numpy_helper.from_array(sw.astype(np.float32), p + "_sw")])
        x, y = node.input[0], node.output[0]
        nodes += [
            helper.make_node("Abs", [x], [p + "_abs"]),
            helper.make_node("ReduceMax", [p + "_abs"], [p + "_amax"], axes=[-1], keepdims=1),
            helper.make_node("Max", [p + "_amax", "q8_eps"], [p + "_amax1"]),
            helper.make_node("Div", [p + "_amax1", "q8_127"], [p + "_sx"]),
            helper.make_node("Div", [x, p + "_sx"], [p + "_xs"]),
            helper.make_node("Round", [p + "_xs"], [p + "_xr"]),
            helper.make_node("Clip", [p + "_xr", "q8_lo", "q8_127"], [p + "_xc"]),
            helper.make_node("Cast", [p + "_xc"], [p + "_xq"], to=TensorProto.INT8),
            helper.make_node("MatMulInteger", [p + "_xq", p + "_w"], [p + "_acc"]),
            helper.make_node("Cast", [p + "_acc"], [p + "_accf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [p + "_accf", p + "_sx"], [p + "_y1"]),
            helper.make_node("Mul", [p + "_y1", p + "_sw"], [y]),
        ]
        count += 1
    used = {i for n in nodes for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    del g.node[:]
    g.node.extend(nodes)
    onnx.save(m, path)
    return count


@contextlib.contextmanager
def int8_matmul_import():
    """While active, the Relax ONNX importer maps zero-point-free MatMulInteger to a single
    int8 x int8 -> int32 matmul."""
    from tvm import relax
    from tvm.relax.frontend.onnx import onnx_frontend as fe

    original = fe.MatMulInteger._impl_v10

    def impl(cls, bb, inputs, attr, params):
        if len(inputs) > 2 and any(i is not None for i in inputs[2:]):
            return original.__func__(cls, bb, inputs, attr, params)
        return relax.op.matmul(inputs[0], inputs[1], out_dtype="int32")

    fe.MatMulInteger._impl_v10 = classmethod(impl)
    try:
        yield
    finally:
        fe.MatMulInteger._impl_v10 = original
