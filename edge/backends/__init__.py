"""Compute backends behind one seam (base.Backend): reference (numpy, the ground truth), onnxruntime,
tvm (compiled bundles), neon (INT8 + NEON C kernels). Light on purpose: the CLI imports BACKENDS
to build its parser without loading numpy or any runtime."""

BACKENDS = ("ref", "onnxruntime", "tvm", "neon", "auto")
