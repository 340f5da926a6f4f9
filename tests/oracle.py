"""Build FunASR's own Paraformer models (random, seeded) and save them as FunASR model dirs.

Host-side test helper: needs torch and the `funasr` package. The saved dir is what a user brings
(config.yaml + model.pt + tokens.json + am.mvn), and FunASR itself runs as the oracle on it.
"""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import yaml

# Two deliberately different shapes (kernel sizes, heads, depths, FFN widths, shifts).
CONFIGS = {
    "a": dict(
        encoder_conf=dict(output_size=64, attention_heads=4, linear_units=128, num_blocks=3, kernel_size=11, sanm_shfit=0),
        decoder_conf=dict(attention_heads=4, linear_units=128, num_blocks=2, kernel_size=11, sanm_shfit=0),
    ),
    "b": dict(
        encoder_conf=dict(output_size=48, attention_heads=2, linear_units=96, num_blocks=4, kernel_size=7, sanm_shfit=2),
        decoder_conf=dict(attention_heads=3, linear_units=80, num_blocks=3, att_layer_num=2, kernel_size=5, sanm_shfit=1),
    ),
}

CJK = [chr(c) for c in range(0x4E00, 0x4E00 + 120)]


def assert_features_close(ours, ref, what: str = "", frac: float = 1e-3) -> None:
    """FunASR's fbank runs in float32 (torchaudio): in log-mel bins that hold ~1e-4 of a frame's
    energy its FFT rounding noise reaches a few 1e-4, and varies with torch's FFT code path (the
    same input differs from run to run in such bins). ParaEdge computes fbank in float64 (see
    tests/test_frontend.py: equal to a plain float64 Kaldi fbank), so all but ~0.1 % of the
    features agree to 1e-4, and none is further off than 1e-3."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
    d = np.abs(ours.astype(np.float64) - ref)
    assert (d > 1e-4).sum() <= max(2, frac * d.size), f"{what}: {(d > 1e-4).sum()} of {d.size} features differ by > 1e-4"
    assert d.max() < 1e-3, f"{what}: max feature difference {d.max():.2e}"


def funasr_with_our_fbank(monkeypatch) -> None:
    """Make FunASR's WavFrontend/WavFrontendOnline compute fbank with ParaEdge's KaldiFbank.

    FunASR's own fbank is float32 (torchaudio, or kaldi-native-fbank without it), ours float64;
    on random-weight models a 1e-5 feature difference can flip a near-tie argmax. With the fbank
    shared, these tests compare everything after it bit for bit (LFR, CMVN, streaming caches,
    encoder, CIF, decoder); the fbank itself is compared with FunASR's, kaldi-native-fbank and a
    plain float64 Kaldi fbank in tests/test_frontend.py."""
    import torch
    from funasr.utils import fbank as funasr_fbank

    from edge.asr.frontend import FrontendConfig, KaldiFbank

    def fbank(waveform, num_mel_bins=80, frame_length=25.0, frame_shift=10.0, dither=0.0, energy_floor=0.0,
              window_type="povey", sample_frequency=16000, snip_edges=True, **unused):
        assert dither == 0.0 and energy_floor == 0.0 and snip_edges and not unused, (dither, energy_floor, unused)
        cfg = FrontendConfig(fs=int(sample_frequency), n_mels=num_mel_bins, frame_length=frame_length,
                             frame_shift=frame_shift, window=window_type)
        return torch.from_numpy(KaldiFbank(cfg, frame_length)(waveform[0].numpy()))

    monkeypatch.setattr(funasr_fbank, "fbank", fbank)


def token_list(n_chars: int = 60) -> list[str]:
    return ["<blank>", "<s>", "</s>"] + CJK[:n_chars] + ["<unk>"]


def funasr_config(shape: str = "a", streaming: bool = False, vocab_size: int = 64, tail_threshold: float = 0.45,
                  predictor_bias: int = 1) -> dict:
    """A FunASR config for one of CONFIGS, with every dropout off (inference-equivalent training mode)."""
    from paraedge_tools.recipe.make_model import model_config

    conf = model_config(CONFIGS[shape], streaming, vocab_size, tail_threshold, predictor_bias)
    conf["encoder_conf"].update(dropout_rate=0.0, positional_dropout_rate=0.0, attention_dropout_rate=0.0,
                                pos_enc_class="SinusoidalPositionEncoder")
    conf["decoder_conf"].update(dropout_rate=0.0, positional_dropout_rate=0.0, self_attention_dropout_rate=0.0,
                                src_attention_dropout_rate=0.0)
    conf["model_conf"].update(lsm_weight=0.1, length_normalized_loss=True)
    if streaming:
        conf["decoder_conf"]["att_layer_num"] = conf["decoder_conf"]["num_blocks"]  # peers size caches by num_blocks
    return conf


def build_funasr_model(conf: dict, seed: int = 0):
    import torch
    from funasr.register import tables
    import funasr.models.paraformer.model  # noqa: F401  (registers the classes)
    import funasr.models.paraformer_streaming.model  # noqa: F401

    torch.manual_seed(seed)
    kwargs = copy.deepcopy(conf)
    model_conf = kwargs.pop("model_conf")
    cls = tables.model_classes.get(kwargs["model"])
    model = cls(**kwargs, **model_conf)
    # random init leaves CIF alphas near 0.5/frame; widen the spread so tokens vary by frame
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.mul_(1.5)
    return model.eval()


def random_cmvn(dim: int = 560, seed: int = 0):
    rng = np.random.default_rng(seed)
    shift = (-rng.uniform(8.0, 14.0, dim)).astype(np.float32)
    scale = rng.uniform(0.2, 0.5, dim).astype(np.float32)
    return shift, scale


def save_model_dir(model, conf: dict, path, tokens: list[str], cmvn_seed: int = 0) -> str:
    import torch

    from edge.asr.frontend import Cmvn

    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(conf, f, allow_unicode=True, sort_keys=False)
    with open(os.path.join(path, "tokens.json"), "w", encoding="utf-8") as f:
        json.dump(tokens, f, ensure_ascii=False)
    Cmvn(*random_cmvn(conf["input_size"], cmvn_seed)).save(os.path.join(path, "am.mvn"))
    torch.save(model.state_dict(), os.path.join(path, "model.pt"))
    return str(path)


def make_funasr_dir(path, shape: str = "a", streaming: bool = False, seed: int = 0, **kw) -> str:
    tokens = token_list()
    conf = funasr_config(shape, streaming, vocab_size=len(tokens), **kw)
    model = build_funasr_model(conf, seed)
    return save_model_dir(model, conf, path, tokens, cmvn_seed=seed)


def load_funasr(path):
    """FunASR's model object + its frontend, built from a saved dir (config.yaml + model.pt)."""
    import torch
    from funasr.frontends.wav_frontend import WavFrontend, WavFrontendOnline

    with open(os.path.join(path, "config.yaml"), encoding="utf-8") as f:
        conf = yaml.safe_load(f)
    model = build_funasr_model(conf)
    model.load_state_dict(torch.load(os.path.join(path, "model.pt")))
    fe_cls = WavFrontendOnline if conf["model"] == "ParaformerStreaming" else WavFrontend
    frontend = fe_cls(cmvn_file=os.path.join(path, "am.mvn"), **conf["frontend_conf"])
    return model.eval(), frontend, conf


def funasr_offline(model, frontend, samples):
    """FunASR's offline path: (token ids from inference(), log-probs [N,V] or None, token count)."""
    import torch

    x = torch.from_numpy(np.asarray(samples, dtype=np.float32))
    with torch.no_grad():
        speech, lens = frontend(x[None], torch.tensor([len(x)]))
        enc, enc_lens = model.encode(speech, lens)
        emb, count, _, _ = model.calc_predictor(enc, enc_lens)
        n = int(count.round().long().max())
        logp = None
        if n >= 1:
            logp = model.cal_decoder_with_predictor(enc, enc_lens, emb, count.round().long())[0][0].numpy()
        out = model.inference([x], key=["u"], frontend=frontend, device="cpu", tokenizer=None)
    ids = out[0][0]["token_int"] if out else []
    return [int(i) for i in ids], logp, n, speech[0].numpy()


def shown_by_funasr_streaming(ids: list[int], model_dir: str) -> list[int]:
    """Our token ids as FunASR's streaming path can show them: it returns text only, and its
    sentence_postprocess drops `<unk>` (a random test model emits it; the offline path, which returns
    token_int, keeps it and matches ours id for id)."""
    with open(os.path.join(model_dir, "tokens.json"), encoding="utf-8") as f:
        tokens = json.load(f)
    return [i for i in ids if tokens[i] != "<unk>"]


def funasr_streaming(model, frontend, conf, samples, step=9600, chunk_size=(0, 10, 5)):
    """FunASR's streaming path fed `step` samples at a time; returns the recognised token ids
    (from its text: compare with `shown_by_funasr_streaming`)."""
    import torch
    from funasr.tokenizer.char_tokenizer import CharTokenizer

    with open(os.path.join(os.path.dirname(frontend.cmvn_file), "tokens.json"), encoding="utf-8") as f:
        tokens = json.load(f)
    tok = CharTokenizer(token_list=tokens)
    index = {t: i for i, t in enumerate(tokens)}
    cache, text, n = {}, "", 0
    x = np.asarray(samples, dtype=np.float32)
    with torch.no_grad():
        while True:
            piece = x[n : n + step]
            n += step
            final = n >= len(x)
            res, _ = model.inference([torch.from_numpy(piece)], key=["u"], tokenizer=tok, frontend=frontend, cache=cache,
                                     is_final=final, chunk_size=list(chunk_size), encoder_chunk_look_back=0,
                                     decoder_chunk_look_back=0, device="cpu", encoder_conf=conf["encoder_conf"],
                                     frontend_conf=conf["frontend_conf"])
            text += res[0]["text"]
            if final:
                break
    return [index[ch] for ch in text]  # the test vocabulary is single CJK characters
