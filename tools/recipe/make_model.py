"""Build a randomly initialised Paraformer as a FunASR-format model dir (host side, torch).

For pipelines and tests that need a real model file of a given shape before a trained one exists:
`python -m paraedge_tools.recipe.make_model OUT [--streaming] [--preset tiny|paper|anchor]` writes config.yaml,
model.pt, tokens.json and am.mvn exactly as FunASR lays them out, then exports model.npz/ONNX. `--preset anchor`
(also `--size anchor`) is the benches' anchor-size model: encoder 12 x 256 (FFN 1024, kernel 11), decoder 6,
vocabulary 1,000, 15.75 M parameters, seeded.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
from edge.asr.audio import SAMPLE_RATE

PRESETS = {
    # small and fast: for demos and tests
    "tiny": dict(encoder_conf=dict(output_size=64, attention_heads=4, linear_units=256, num_blocks=4, kernel_size=11),
                 decoder_conf=dict(attention_heads=4, linear_units=256, num_blocks=2, att_layer_num=2, kernel_size=11)),
    # the mission's class: ~15.7M parameters (encoder 12x256, decoder 6)
    "paper": dict(encoder_conf=dict(output_size=256, attention_heads=4, linear_units=1024, num_blocks=12, kernel_size=11),
                  decoder_conf=dict(attention_heads=4, linear_units=1024, num_blocks=6, att_layer_num=6, kernel_size=11)),
}
# the benches' anchor-size model: the paper shape with a 1,000-token vocabulary (15.75 M parameters)
PRESETS["anchor"] = PRESETS["paper"]
VOCAB = {"anchor": 1000}  # tokens per preset; others 100


def model_config(preset="tiny", streaming: bool = False, vocab_size: int = 100, tail_threshold: float = 0.45,
                 predictor_bias: int = 1) -> dict:
    """A FunASR config.yaml as a dict; `preset` names a PRESETS entry or is a dict with
    encoder_conf/decoder_conf. Streaming models get a causal decoder FSMN, as FunASR's online ones."""
    p = PRESETS[preset] if isinstance(preset, str) else preset
    enc = dict({"sanm_shfit": 0}, **p["encoder_conf"], input_layer="pe_online" if streaming else "pe",
               normalize_before=True, selfattention_layer_type="sanm")
    dec = dict({"sanm_shfit": 0}, **p["decoder_conf"])
    if streaming:
        dec["sanm_shfit"] = (dec["kernel_size"] - 1) // 2
    if streaming:
        enc.update(chunk_size=[12, 15], stride=[8, 10], pad_left=[0, 0],
                   encoder_att_look_back_factor=[4, 4], decoder_att_look_back_factor=[1, 1])
    return {
        "model": "ParaformerStreaming" if streaming else "Paraformer",
        "model_conf": {"ctc_weight": 0.0, "predictor_weight": 1.0, "predictor_bias": predictor_bias,
                       "sampling_ratio": 0.75},
        "encoder": "SANMEncoderChunkOpt" if streaming else "SANMEncoder",
        "encoder_conf": enc,
        "decoder": "ParaformerSANMDecoder",
        "decoder_conf": dec,
        "predictor": "CifPredictorV2",
        "predictor_conf": {"idim": enc["output_size"], "threshold": 1.0, "l_order": 1, "r_order": 1,
                           "tail_threshold": tail_threshold},
        "frontend": "WavFrontendOnline" if streaming else "WavFrontend",
        "frontend_conf": {"fs": SAMPLE_RATE, "window": "hamming", "n_mels": 80, "frame_length": 25, "frame_shift": 10,
                          "lfr_m": 7, "lfr_n": 6, "dither": 0.0},
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": "<unk>"},
        "input_size": 560,
        "vocab_size": vocab_size,
    }


def default_tokens(n: int = 96) -> list[str]:
    return ["<blank>", "<s>", "</s>"] + [chr(0x4E00 + i) for i in range(n)] + ["<unk>"]


def make_model_dir(out, preset: str = "tiny", streaming: bool = False, seed: int = 0, export: bool = True) -> str:
    import torch
    import yaml

    from edge.asr.frontend import Cmvn
    from paraedge_models.paraformer import Paraformer

    tokens = default_tokens(VOCAB.get(preset, 100) - 4)
    conf = model_config(preset, streaming, len(tokens))
    torch.manual_seed(seed)
    model = Paraformer(conf, len(tokens)).eval()
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(conf, f, allow_unicode=True, sort_keys=False)
    with open(os.path.join(out, "tokens.json"), "w", encoding="utf-8") as f:
        json.dump(tokens, f, ensure_ascii=False)
    rng = np.random.default_rng(seed)  # plausible log-mel statistics: mean ~ 8..14, std ~ 2..5
    Cmvn(-rng.uniform(8, 14, 560).astype(np.float32), rng.uniform(0.2, 0.5, 560).astype(np.float32)).save(
        os.path.join(out, "am.mvn"))
    torch.save(model.state_dict(), os.path.join(out, "model.pt"))
    if export:
        from paraedge_models.export import export_dir

        export_dir(out)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--preset", "--size", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--streaming", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-export", action="store_true")
    args = ap.parse_args(argv)
    make_model_dir(args.out, args.preset, args.streaming, args.seed, export=not args.no_export)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
