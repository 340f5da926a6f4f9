"""The device side needs no torch: `import edge`, model.pt reading and decoding all work without it."""

import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from tests.conftest import ROOT

NO_TORCH = "import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError


def test_decode_without_torch(exported_streaming, funasr_offline_a, speech_dir):
    code = NO_TORCH + f"""
import edge
from edge.asr.audio import load_audio
from edge.asr.recognizer import Recognizer
x = load_audio({str(speech_dir / 'zh.wav')!r})[0]
for d, b in (({funasr_offline_a!r}, "ref"), ({exported_streaming!r}, "onnxruntime")):
    r = Recognizer(d, b)
    print(len(r.transcribe(x).token_ids))
s = Recognizer({exported_streaming!r}).stream(); s.accept(x); s.finish(); print(len(s.ids))
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert all(int(n) > 0 for n in p.stdout.split())


def test_torchfile_equals_torch_load(funasr_offline_b):
    from edge.asr.torchfile import load_state_dict

    ours = load_state_dict(f"{funasr_offline_b}/model.pt")
    theirs = torch.load(f"{funasr_offline_b}/model.pt")
    assert set(ours) == set(theirs)
    for k, v in theirs.items():
        np.testing.assert_array_equal(ours[k], v.numpy(), err_msg=k)


def test_torchfile_dtypes_views_and_checkpoints(tmp_path):
    from edge.asr.torchfile import load_state_dict

    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd = {"t": base.t(), "slice": base[1:3, 2:], "half": base.half(), "bf16": base.bfloat16(),
          "long": torch.arange(5), "scalar": torch.tensor(3.5)}
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "ckpt.pt")
    got = load_state_dict(tmp_path / "ckpt.pt")
    for k, v in sd.items():
        np.testing.assert_array_equal(got[k].astype(np.float64), v.float().numpy().astype(np.float64), err_msg=k)


def test_torchfile_refuses_code_and_truncation(tmp_path):
    from edge.errors import ModelError
    from edge.asr.torchfile import load_state_dict

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"w": torch.ones(2), "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ModelError, match="builtins.print|Python object"):
        load_state_dict(tmp_path / "evil.pt")
    torch.save({"w": torch.ones(1000)}, tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError):
        load_state_dict(tmp_path / "cut.pt")
    with zipfile.ZipFile(tmp_path / "nodata.pt", "w") as z:
        z.writestr("x/other.txt", "hi")
    with pytest.raises(ModelError, match="data.pkl"):
        load_state_dict(tmp_path / "nodata.pt")
