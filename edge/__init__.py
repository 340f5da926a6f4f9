"""ParaEdge: an on-device Paraformer speech runtime.

Device side only: numpy, scipy, onnxruntime (+ the daemon's audio/wake-word packages). Nothing here imports torch.
"""

__version__ = "0.2.0"  # the one place the version is written (setup.py reads it)

from edge.errors import AudioError, ModelError, ParaEdgeError  # noqa: F401
