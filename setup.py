"""ParaEdge: an on-device Paraformer runtime (device package `edge`, host tools in `models`/`tools`)."""

from setuptools import find_packages, setup

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kernels.build import setup_kwargs as kernel_setup_kwargs  # noqa: E402  (the optional NEON cffi extension)

setup(
    name="paraedge",
    version="0.1.0",
    description="On-device Paraformer speech recognition for ARM edge boards",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["edge", "edge.*", "models", "models.*", "tools", "tools.*"]),
    package_data={"models": ["demo/*", "demo/samples/*"], "edge": ["resources/*"]},
    install_requires=[
        # the device runtime: no torch, no TVM compiler
        "numpy>=1.23",
        "scipy>=1.10",
        "onnxruntime>=1.16",
        "PyYAML>=6",
        # the daemon: microphone, wake word (microWakeWord models + a TFLite runtime)
        "sounddevice>=0.4",
        "pymicro-wakeword>=2,<3",
        "ai-edge-litert>=1.0",
        "tomli>=2; python_version < '3.11'",
        "cffi>=1.15",  # the optional NEON kernels (edge._kernels, built by this setup.py when it can be)
        # silero-vad is installed with --no-deps (its package requires torch; we only read its ONNX file)
    ],
    extras_require={
        # host side: model definition, export, training. torch pinned: any looser spec pulls CUDA wheels.
        "host": ["torch==2.13.0", "onnx>=1.15", "matplotlib>=3.5", "tqdm>=4",
                 # TVM compiler for `paraedge compile`; devices load only its runtime libraries.
                 # tvm-ffi 0.1.14.post1: 0.1.15 segfaults when MetaSchedule writes its database (`paraedge tune`)
                 "apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post1", "psutil>=5", "cloudpickle>=2"],
        # host: NVRTC + CUDA headers to precompile cubins for CUDA boards (no GPU or CUDA toolkit needed)
        "cuda": ["nvidia-cuda-nvrtc-cu12==12.9.*", "nvidia-cuda-runtime-cu12==12.9.*", "nvidia-cuda-cccl-cu12==12.9.*"],
        "test": ["pytest>=7", "kaldi-native-fbank>=1.18", "funasr-onnx>=0.4", "sherpa-onnx>=1.10"],
    },
    entry_points={"console_scripts": ["paraedge=edge.cli:main"]},
    **kernel_setup_kwargs(),
)
