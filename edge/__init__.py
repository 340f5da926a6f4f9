"""ParaEdge: an on-device Paraformer speech runtime.

Device side only: numpy, scipy, onnxruntime (+ the daemon's audio/wake-word packages). Nothing here imports torch.
"""

__version__ = "0.1.0"

from edge.errors import AudioError, ModelError, ParaEdgeError  # noqa: F401
