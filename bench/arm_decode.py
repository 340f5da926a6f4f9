"""Guest side of the end-to-end ARM runs (tests/test_neon_backend.py, bench/kernels.py): decode one
demo sample offline REPS times in the aarch64 Python of tools/emu/armroot.py and print the result as
JSON. Run on the host it works too.  python bench/arm_decode.py BACKEND INT8(0|1) REPS [SAMPLE_INDEX]"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from edge.asr.audio import SAMPLE_RATE, load_audio  # noqa: E402
from edge.asr.recognizer import Recognizer  # noqa: E402

DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "demo")


def main(backend: str, int8: bool, reps: int, index: int = 1) -> dict:
    with open(os.path.join(DEMO, "samples", "samples.json"), encoding="utf-8") as f:
        s = json.load(f)[index]
    rec = Recognizer(DEMO, backend, int8=int8, threads=1)
    x, _ = load_audio(os.path.join(DEMO, "samples", s["file"]))
    feats = rec.frontend(x[int(s["command_start_s"] * SAMPLE_RATE):])
    ids = []
    for _ in range(reps):
        ids, _ = rec.decode_features(feats)
    text = rec.ids_to_result(ids).text if reps else None
    return {"backend": rec.backend.describe(), "text": text, "expected": s["command"], "frames": int(feats.shape[0])}


if __name__ == "__main__":
    a = sys.argv[1:]
    print(json.dumps(main(a[0], a[1] == "1", int(a[2]), int(a[3]) if len(a) > 3 else 1), ensure_ascii=False))
