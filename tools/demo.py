"""`make demo`: the main job end to end on a model dir.

Uses the shipped demo model (models/demo) when present; otherwise builds a random-weight model of
the right shape (the text is then meaningless, but every stage runs for real). Renders a spoken
in-car command with espeak-ng, decodes it offline and streaming, on every available backend.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SHIPPED = os.path.join(os.path.dirname(HERE), "models", "demo")


def render(text: str, voice: str, out_wav: str) -> str:
    """espeak-ng -> 16 kHz mono 16-bit WAV."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "raw.wav")
        subprocess.run(["espeak-ng", "-v", voice, "-w", raw, text], check=True)
        subprocess.run(["sox", raw, "-r", "16000", "-c", "1", "-b", "16", out_wav], check=True)
    return out_wav


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="out/demo-model", help="where to build a model when none is shipped")
    args = ap.parse_args(argv)
    from edge.cli import main as cli

    if os.path.isfile(os.path.join(SHIPPED, "config.yaml")):
        model = SHIPPED
        print(f"== shipped demo model: {model}")
    else:
        from tools.make_model import make_model_dir

        model = args.out
        if not os.path.isfile(os.path.join(model, "model_quant.onnx")):
            shutil.rmtree(model, ignore_errors=True)
            print(f"== no trained model shipped yet: building a random-weight streaming Paraformer in {model}")
            make_model_dir(model, "tiny", streaming=True)
        print("   (random weights: the text below is not meaningful; every stage runs for real)")
    wav = render("打开空调，导航回家", "cmn", os.path.join(os.path.dirname(model) or ".", "demo.wav"))
    print(f"== audio: {wav}")
    rc = 0
    for extra in (["--backend", "ref"], ["--backend", "onnxruntime"], ["--backend", "onnxruntime", "--int8"]):
        for mode in ([], ["--streaming"]):
            print(f"== paraedge transcribe {' '.join(extra + mode)}")
            sys.stdout.flush()
            rc |= cli(["transcribe", wav, "--model", model, "--json", *extra, *mode])
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
