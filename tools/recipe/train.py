"""Train the demo Paraformer on the synthetic corpus (CPU, torch, 2 threads).

`python -m paraedge_tools.recipe.train --corpus out/corpus --out out/train [--steps N] [--preset demo]`
`python -m paraedge_tools.recipe.train --corpus out/corpus --out out/ft --init-dir MODEL_DIR --steps N --lr 2e-4`
fine-tunes a FunASR-format model dir whose shape is no preset (e.g. one from `paraedge prune`): its
config.yaml, tokens, am.mvn and weights are the starting point.

Losses (FunASR's recipe, simplified): CE on the parallel decoder fed CIF embeddings integrated
from target-length-scaled alphas (label smoothing 0.1), CIF quantity loss |sum(alphas) - N|, and an
auxiliary CTC loss on the encoder. Targets end with </s> (`predictor_bias: 1`, as FunASR's models).

Streaming-capable: every other batch is trained exactly as the runtime decodes a stream with
chunk_size [left, 10, 5] (`--stream-left`, default 0, or a list the streaming batches take in turn:
each 10-frame chunk encoded in a window with the previous left + 5 frames; alphas outside the chunk zeroed; each token's decoder cross-attention
limited to the window it fired in), the others with full context, so the same weights serve offline
and 600 ms streaming decoding. The encoder never runs on a batch's padding (`losses`' `skip_padding`):
1.44x faster per step than encoding the whole padded batch, the same loss (bench/train_step.py).

Resumable (`ckpt.pt` holds model, optimiser, step, RNG state and the seconds trained so far: the log's
`seconds` are the whole run's, across resumes; steps after the last checkpoint of a killed run are
trained again and not counted twice), seeded, logs loss and held-out
CER to `log.csv` and `curve.png`, and keeps the best checkpoint by held-out whole-command accuracy.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time

import numpy as np

from paraedge_tools.compiler.graphs import pad_to
from paraedge_tools.recipe.augment import augment, noise_bank, spec_augment
from paraedge_tools.recipe.corpus import read_manifest, read_phrases

CHUNK, LOOKAHEAD = 10, 5
FRAME_S = 0.06  # one encoder frame: LFR stacks 7 fbank frames every 6 x 10 ms
ENCODE_GROUPS = 3  # encode_by_length
PRECISIONS = ("fp32", "bf16")  # train --precision
# A bf16 step pads its lengths to a multiple of this many LFR frames: oneDNN builds its bf16 kernels
# for each new shape, and a batch of new lengths cost more than float32 (an offline step, 10 batches
# of the demo: 0.372 s against 0.331; the same batches again, 0.211 against 0.318).
BF16_FRAMES = 16

DEMO_CONF = dict(
    encoder_conf=dict(output_size=256, attention_heads=4, linear_units=1024, num_blocks=6, kernel_size=11, sanm_shfit=0),
    decoder_conf=dict(attention_heads=4, linear_units=1024, num_blocks=3, att_layer_num=3, kernel_size=11, sanm_shfit=5),
)
TINY_CONF = dict(  # for the recipe smoke test
    encoder_conf=dict(output_size=32, attention_heads=2, linear_units=64, num_blocks=2, kernel_size=11, sanm_shfit=0),
    decoder_conf=dict(attention_heads=2, linear_units=64, num_blocks=1, att_layer_num=1, kernel_size=11, sanm_shfit=5),
)


def tokenize(text: str, lang: str) -> list[str]:
    return text.split() if lang == "en" else list(text.replace(" ", ""))


def build_vocab() -> list[str]:
    toks = []
    for lang, text in read_phrases():
        for t in tokenize(text, lang):
            if t not in toks:
                toks.append(t)
    return ["<blank>", "<s>", "</s>"] + toks + ["<unk>"]


def model_config(preset: str, vocab_size: int, stream_left: int = 0) -> dict:
    from paraedge_tools.recipe.make_model import model_config as base_config

    conf = base_config("tiny", streaming=True, vocab_size=vocab_size)
    p = DEMO_CONF if preset == "demo" else TINY_CONF
    conf["encoder_conf"].update(p["encoder_conf"])
    conf["decoder_conf"].update(p["decoder_conf"])
    conf["predictor_conf"]["idim"] = p["encoder_conf"]["output_size"]
    conf["model_conf"]["ctc_weight"] = 0.3
    conf["chunk_size"] = [stream_left, CHUNK, LOOKAHEAD]  # the streaming windows it was trained for
    return conf


class Data:
    """Clean waveforms in memory; each draw is augmented afresh and turned into raw LFR features."""

    def __init__(self, rows, vocab, rng, source_p: float = 0.0, balance_languages: bool = False,
                 noise_p: float = 0.5, lead_s: float = 0.4):
        from edge.asr.audio import load_audio

        self.rows = rows
        self.index = {t: i for i, t in enumerate(vocab)}
        self.audio = [load_audio(r["path"])[0] for r in rows]
        self.targets = [[self.index[t] for t in tokenize(r["text"], r["lang"])] + [2] for r in rows]
        self.rng = rng
        self.bank = None
        self.source_p = source_p
        self.noise_p = noise_p
        self.lead_s = lead_s
        self.weights = None
        if balance_languages:   # each language half the draws, however many renders it has
            langs = [r["lang"] for r in rows]
            count = {lang: langs.count(lang) for lang in set(langs)}
            self.weights = np.array([1.0 / (len(count) * count[lang]) for lang in langs])

    def feats(self, x, aug: bool = False):
        """Raw LFR features; `aug` applies SpecAugment to the fbank frames first."""
        from edge.asr.frontend import FrontendConfig, apply_lfr, fbank

        cfg = FrontendConfig(lfr_m=7, lfr_n=6)
        f = fbank(x, cfg)
        return apply_lfr(spec_augment(f, self.rng) if aug else f, 7, 6)

    def batch(self, n, aug=True):
        if aug and self.bank is None:
            self.bank = noise_bank(self.rng)
        idx = (self.rng.integers(0, len(self.rows), n) if self.weights is None
               else self.rng.choice(len(self.rows), n, p=self.weights))
        if not aug:
            return [self.feats(self.audio[i]) for i in idx], [self.targets[i] for i in idx]
        # babble is the other utterances of the corpus: the cabin's other talkers
        xs = [self.feats(augment(self.audio[i], self.rng, self.bank, self.audio, self.source_p, self.noise_p,
                                    self.lead_s), aug=True) for i in idx]
        return xs, [self.targets[i] for i in idx]

    def stream(self, n, seed):
        """Batches made in a background process (the 2 cores overlap data and compute)."""
        import torch

        data = self

        class Batches(torch.utils.data.IterableDataset):
            def __iter__(self):
                torch.set_num_threads(1)
                data.rng = np.random.default_rng(seed)
                while True:
                    yield data.batch(n)

        return iter(torch.utils.data.DataLoader(Batches(), batch_size=None, num_workers=1, prefetch_factor=4,
                                                persistent_workers=True))


def streaming_step(step: int, ratio: float) -> bool:
    """Whether `step` trains as the runtime streams; spread evenly (0.5: odd steps, 0.75: three in four)."""
    return int((step + 1) * ratio) > int(step * ratio)


def compute_cmvn(data: Data, n: int = 400):
    feats = np.concatenate([data.feats(data.audio[i]) for i in range(0, len(data.audio), max(1, len(data.audio) // n))])
    mean, std = feats.mean(0), feats.std(0) + 1e-5
    return (-mean).astype(np.float32), (1.0 / std).astype(np.float32)


def pad(seqs, value=0.0, multiple: int = 1):
    """Sequences padded to one length (rounded up to `multiple`) and their lengths."""
    import torch

    t = pad_to(max(len(s) for s in seqs), multiple)
    out = np.full((len(seqs), t) + np.asarray(seqs[0]).shape[1:], value, dtype=np.float32)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return torch.from_numpy(out), torch.tensor([len(s) for s in seqs])


def stream_windows(model, enc_in, mask, xlen, left: int = 0, skip_padding: bool = True):
    """The encoder and predictor run as the runtime streams with chunk_size [left, 10, 5]: every
    window is [previous left + 5 prepared frames | next 10], zero context at the start. Returns the
    windows' frames back to back (hidden [B, K*W, D]), their alphas with everything the runtime
    zeroes zeroed, the kept-frame mask, each frame's window id and the frames' validity."""
    import torch
    import torch.nn.functional as F

    b, t, _ = enc_in.shape
    ctx, width = left + LOOKAHEAD, left + LOOKAHEAD + CHUNK
    k = math.ceil(t / CHUNK)
    tt = k * CHUNK
    enc_in = F.pad(enc_in * mask[:, :, None], (0, 0, ctx, tt - t))  # zeros before frame 0 and after the end
    wins = enc_in.unfold(1, width, CHUNK).permute(0, 1, 3, 2)  # [B, K, width, D]
    # the zero context before frame 0 is real input at runtime, so it is not masked
    wmask_full = F.pad(F.pad(mask, (ctx, 0), value=1.0), (0, tt - t)).unfold(1, width, CHUNK)  # [B, K, width]
    wmask = wmask_full.reshape(b * k, -1)
    last = ((xlen + CHUNK - 1) // CHUNK - 1)[:, None, None]
    win = torch.arange(k)[None, :, None]
    # windows past an utterance's end are batch padding: nothing downstream reads them (keep, the
    # decoder's window mask and CTC all stop at `last`), so only the others run the encoder
    used = (win[:, :, 0] <= last[:, :, 0]) if skip_padding else torch.ones(b, k, dtype=torch.bool)
    used = torch.nonzero(used.reshape(-1))[:, 0]
    enc_used = model.encoder(wins.reshape(b * k, width, -1)[used], wmask[used]) * wmask[used, :, None]
    enc_w = enc_in.new_zeros(b * k, width, enc_used.shape[-1], dtype=enc_used.dtype).index_copy(0, used, enc_used)
    a_w = enc_in.new_zeros(b * k, width).index_copy(0, used, fp32_alphas(model, enc_used, wmask[used])).reshape(b, k, -1)
    # keep positions left..left+9 of each window, and the look-ahead too in each utterance's last window
    pos = torch.arange(width)[None, None, :]
    keep = ((pos >= left) & ((pos < left + CHUNK) | (win == last)) & (win <= last)).float() * wmask_full
    window_of = torch.arange(k).repeat_interleave(width)  # window id of each frame
    return (enc_w.reshape(b, k * width, -1), (a_w * keep).reshape(b, -1), keep.reshape(b, -1), window_of,
            wmask_full.reshape(b, -1))


def length_groups(lengths, groups: int = ENCODE_GROUPS) -> list:
    """Indices of `lengths` split into at most `groups` runs of similar length, so that the padded
    frames (sum over runs of size x longest) are fewest: an exact split by dynamic programming over
    the sorted lengths (a batch is 24)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    srt = [int(lengths[i]) for i in order]
    n = len(srt)
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(groups + 1)]   # best[g][j]: first j lengths in g runs
    cut = [[0] * (n + 1) for _ in range(groups + 1)]
    best[0][0] = 0
    for g in range(1, groups + 1):
        for j in range(1, n + 1):
            for i in range(g - 1, j):   # the run is srt[i:j], padded to srt[j - 1]
                c = best[g - 1][i] + (j - i) * srt[j - 1]
                if c < best[g][j]:
                    best[g][j], cut[g][j] = c, i
    g = min(range(1, groups + 1), key=lambda g: best[g][n])
    runs, j = [], n
    while g > 0:
        i = cut[g][j]
        runs.append(order[i:j])
        j, g = i, g - 1
    return runs[::-1]


def encode_by_length(model, enc_in, mask, xlen, groups: int = ENCODE_GROUPS, multiple: int = 1):
    """The encoder over a padded batch, run in `length_groups` so that it does not compute the
    padding: the same frames out (padding left zero; nothing reads it: the predictor, the decoder
    and CTC all mask it). A batch of 24 training draws is about half padding (random lengths of
    13-99 LFR frames: 53 % of the frames were speech, measured on 8 draws). An offline step's loss
    and backward, 2 threads, 14 batches of the demo: 0.744 s in one group, 0.620 / 0.607 / 0.619 /
    0.695 s in 2 / 3 / 4 / 6 (smaller matrices cost more than the padding they drop). `multiple`:
    each group's length rounded up to it (`BF16_FRAMES`)."""
    import torch

    if groups <= 1:
        return model.encoder(enc_in, mask)
    out = None
    for run in length_groups(xlen.tolist(), groups):
        idx = torch.tensor(run)
        t = min(pad_to(int(xlen[idx].max()), multiple), enc_in.shape[1])
        enc = model.encoder(enc_in[idx, :t], mask[idx, :t])
        if out is None:
            out = enc_in.new_zeros(enc_in.shape[:2] + enc.shape[2:], dtype=enc.dtype)
        out[idx, :t] = enc
    return out


def count_jitter(alphas, targets, ghost: float = 0.0, shift: float = 0.0, tail: float = 0.0,
                 tail_tokens=None):
    """Teach the decoder the CIF count errors it meets on voices it never heard. `alphas` are the
    target-scaled alphas [B, T] (each sums to its target's length, </s> included). One word of an
    utterance (uniformly drawn) gets extra alpha, laid over it in its own proportions:
    - with probability `ghost`, one whole token more, and the target `<blank>` (dropped by the
      runtime, as FunASR drops it) at the second of the two fires the word now makes;
    - else with probability `shift`, a fraction in [-0.45, 0.55) (what the 0.45 tail still rounds
      to the same count), targets unchanged: every later fire moves, and the last position mixes
      the end of speech into </s>, or </s> into the last word;
    - else with probability `tail`, the end that trailing silence lengthens: f in [0.25, 1) of a
      token more over the last word and 1 - f more over </s>, so the last word fires early, the
      next fire is the word's end plus part of </s> (target `<blank>`) and the last fire is </s>.
      `tail_tokens`: the token ids whose utterance-final use may get it (None: any), e.g. English
      words only (`tail_tokens_for`); an utterance ending otherwise is left as it is. English only
      against both languages (1,200 steps from the stage-4 weights, 20 %, the corpus with the bare
      answers, fp32 offline clean): too few tokens 107 / 125 of 2,060, lengthened 3 / 4, espeak
      99.1 / 99.3 %, Kokoro 97.2 / 96.2, Pico 89.7 / 84.5, ttskit 55.3 / 52.2, baker 96.5 / 94.1,
      SAM 70.7 / 74.1, RHVoice 92.2 / 93.1, MBROLA 69.0 / 70.7: the stage-5 weights use English only.
    Why: clean decodes that 1 s of trailing silence lengthened had 0.54-0.86 of a token too much
    alpha inside the speech, and their last fire mixed the last word's end into </s> ("close the
    passenger window" -> "... window window"). The extra mass is a constant: gradients still reach
    the predictor through the word's own alphas.
    Measured (1,200 steps from the shipped weights, nine-family corpus, fp32 offline clean, against
    a control run of the same 1,200 steps without it): ghost 10 % + shift 30 % took decodes longer
    than the command with 1 s more silence 33 -> 14 over the eight clean sets, and those the silence
    lengthened 7 -> 3, but espeak held-out 99.0 -> 98.6 % (its last Mandarin syllable became </s>
    where the count had no </s> slot), Kokoro 93.4 -> 91.5, SAM 64.3 -> 58.9, RHVoice 92.9 -> 95.5.
    Fractions in [0, 0.55) only (shift 40 %, ghost 5 %): lengthened 0, espeak 97.6 % (the last word
    called </s>); [-0.25, 0.45): lengthened 3, espeak 98.6 %; ghost 25 % alone: lengthened 9, more
    than the command 18, espeak 98.8 %. A decoder cannot tell half of a last word from half of </s>:
    every dose traded espeak's last words for fewer extra ones, so it is off by default.
    The tail fire (20 %, same 1,200 steps, a corpus with SAM's renders made repeatable; the shipped
    weights there: lengthened 10, more than the command 43, espeak 99.0 %) is the best dose yet:
    lengthened 0 on all eight clean sets, more than the command 11, Kokoro 91.5 -> 94.5, Pico 83.9
    -> 89.3, SAM 50.0 -> 55.4, ttskit 54.4 -> 56.9, but espeak 98.8 % (edward2's last Mandarin
    syllable, its fire half </s>, called <blank>), RHVoice 94.6 -> 92.9, MBROLA 69.6 -> 66.1. Its
    variants were worse: f in [0.55, 1) only (where the runtime's count makes room for the extra
    fire) lengthened 3, espeak 98.9, Kokoro 91.9; adding short last words (f in [-0.5, 0), targets
    unchanged, a third of the tail draws) lengthened 2, espeak 98.8. Off by default."""
    import torch

    if ghost <= 0 and shift <= 0 and tail <= 0:
        return alphas, targets
    draw = torch.rand(len(targets))
    pick = torch.rand(len(targets))
    frac = torch.rand(len(targets)) - 0.45
    end = 0.25 + 0.75 * torch.rand(len(targets))
    csum = torch.cumsum(alphas.detach().double(), dim=1).float()
    prev = torch.cat([torch.zeros_like(csum[:, :1]), csum[:, :-1]], dim=1)
    extra = torch.zeros_like(alphas)

    def share_of(i, k):  # where utterance i's token k has its alpha, as a distribution over frames
        w = torch.relu(torch.minimum(csum[i], torch.tensor(k + 1.0)) - torch.maximum(prev[i], torch.tensor(float(k))))
        return w / w.sum().clamp(min=1e-6)

    out = []
    for i, tg in enumerate(targets):
        words = len(tg) - 1  # the last target is </s>
        d = float(draw[i])
        if words < 1 or d >= ghost + shift + tail:
            out.append(tg)
            continue
        if d >= ghost + shift:
            if tail_tokens is not None and tg[-2] not in tail_tokens:
                out.append(tg)
                continue
            f = float(end[i])
            extra[i] = f * share_of(i, words - 1) + (1 - f) * share_of(i, words)
            out.append(list(tg[:-1]) + [0, tg[-1]])
            continue
        k = min(int(float(pick[i]) * words), words - 1)
        share = share_of(i, k)
        if d < ghost:
            extra[i] = share
            out.append(list(tg[: k + 1]) + [0] + list(tg[k + 1:]))
        else:
            extra[i] = share * float(frac[i])
            out.append(tg)
    return alphas + extra, out


TAIL_LANGS = ("en", "zh")  # the phrase list's two languages (`tokenize`'s two kinds of token)


def tail_tokens_for(vocab: list[str], langs) -> frozenset[int]:
    """Ids of the vocabulary's words in `langs`: "zh" a CJK character, "en" any other word (the
    runtime's own split, `edge.asr.text.is_cjk_token`); the special symbols are neither."""
    from edge.asr.text import SPECIAL, is_cjk_token

    langs = set(langs)
    bad = langs.difference(TAIL_LANGS)
    if bad:
        raise ValueError(f"tail languages must be en or zh, not {sorted(bad)}")
    return frozenset(i for i, t in enumerate(vocab)
                     if t not in SPECIAL and ("zh" if is_cjk_token(t) else "en") in langs)


def position_starts(seed: int, step: int, n: int, seconds: float) -> np.ndarray:
    """`n` encoder position offsets, uniform over whole frames within `seconds` (`train`'s
    `position_shift`). Their own stream, a function of (seed, step): the data draws stay what they
    were without it, and a resumed run redraws the same offsets."""
    return np.random.default_rng([seed, step]).integers(0, int(seconds / FRAME_S + 1e-9) + 1, n)


def fp32_alphas(model, hidden, mask):
    """The predictor's alphas in float32, also inside a bf16 step: CIF sums them over the whole
    utterance, where bf16's 8-bit mantissa (about 0.4 %) would move fires and the quantity loss."""
    import torch

    with torch.autocast("cpu", enabled=False):
        return model.predictor.alphas(hidden.float(), mask.float())


def native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bf16 in hardware (x86 AMX or AVX512-BF16, Arm's BF16). Without
    it torch emulates bf16 and a bf16 step is slower than float32."""
    try:
        with open(cpuinfo) as f:
            flags = set(f.read().split())
    except OSError:
        return False
    return bool(flags & {"amx_bf16", "avx512_bf16", "bf16"})


def losses(model, feats, targets, streaming: bool, left: int = 0, qty_weight: float = 1.0, ghost: float = 0.0,
           shift: float = 0.0, tail: float = 0.0, tail_tokens=None, skip_padding: bool = True, starts=None,
           bf16: bool = False):
    """One forward pass; returns (total, parts). Streaming windows have `left` frames of extra context.
    `qty_weight` scales the CIF quantity loss: on voices it never heard, a model whose alphas fall
    0.6-1.0 short of the token count drops the last word (measured on the 7-family fine-tune).
    `ghost`, `shift`, `tail`: the shares of utterances whose decoder input gets one extra fire, a
    fraction of one, or an extra fire between the last word and </s> (`count_jitter`; `tail_tokens`:
    the last words that may get it). `skip_padding`: the encoder does not run on the batch's padding
    (`encode_by_length`, and no stream windows past an utterance's end); the same loss, gradients
    equal to float rounding (tested), the step 1.44x faster (bench/train_step.py). `starts`: one
    position offset (LFR frames) per utterance, added to the encoder's positions (`position_shift`).
    `bf16`: the matrix products in bfloat16 (CPU autocast); the weights, the predictor's alphas,
    CIF and the losses stay float32 (`fp32_alphas`); the step 1.3x faster on AMX (bench/train_step.py)."""
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return _losses(model, feats, targets, streaming, left, qty_weight, ghost, shift, tail, tail_tokens,
                       skip_padding, starts, BF16_FRAMES if bf16 else 1)


def _losses(model, feats, targets, streaming, left, qty_weight, ghost, shift, tail, tail_tokens, skip_padding, starts,
            multiple):
    import torch
    import torch.nn.functional as F

    x, xlen = pad(feats, multiple=multiple)
    b, t, _ = x.shape
    mask = (torch.arange(t)[None, :] < xlen[:, None]).float()
    enc_in = model.encoder.embed(x, 0 if starts is None else torch.as_tensor(starts))
    if not streaming:
        enc = encode_by_length(model, enc_in, mask, xlen, ENCODE_GROUPS if skip_padding else 1, multiple)
        # zero the batch padding first: at runtime the predictor's conv sees zeros past the end
        alphas = fp32_alphas(model, enc * mask[:, :, None], mask)
        hidden, amask, memory = enc, mask, enc
    else:
        hidden, alphas, amask, window_of, mem_valid = stream_windows(model, enc_in, mask, xlen, left, skip_padding)
        memory = hidden
    # quantity loss + target-scaled CIF (teacher forcing the token count)
    n_true = torch.tensor([len(tg) for tg in targets], dtype=torch.float32)
    qty = (alphas.sum(-1) - n_true).abs().mean()
    scaled = alphas * (n_true / alphas.sum(-1).clamp(min=1e-4))[:, None]
    # the decoder's targets: with count jitter, some utterances get a <blank> position more
    scaled, dec_targets = count_jitter(scaled, targets, ghost, shift, tail, tail_tokens)
    ys, ylen = pad([np.array(tg, np.float32) for tg in dec_targets], value=-1)
    ys, n_tgt = ys.long(), ylen.float()
    embeds, _ = model.predictor.integrate(hidden, scaled, n_tgt, fired_only=False)
    nmax = embeds.shape[1]
    tgt_mask = (torch.arange(nmax)[None, :] < ylen[:, None]).float()
    if streaming:
        # each token attends to the window in which it fired (where the running sum crosses j+1)
        csum = torch.cumsum(scaled, dim=1)
        j = torch.arange(nmax, dtype=csum.dtype)[None, :, None] + 1 - 1e-4
        fire_frame = (csum[:, None, :] < j).sum(-1).clamp(max=csum.shape[1] - 1)  # [B, N]
        fire_win = window_of[fire_frame]
        mem_mask = (window_of[None, None, :] == fire_win[:, :, None]).float() * mem_valid[:, None, :]
    else:
        mem_mask = mask
    logits = model.decoder(memory, mem_mask, embeds, tgt_mask)[0].float()
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ys[:, :nmax].reshape(-1), ignore_index=-1,
                         label_smoothing=0.1)
    # auxiliary CTC on the encoder frames (targets without </s>)
    lp = model.ctc.ctc_lo(hidden).float().log_softmax(-1).transpose(0, 1)
    in_len = (amask > 0).sum(-1) if streaming else xlen
    ctc_tgt = [torch.tensor(tg[:-1]) for tg in targets]
    if streaming:  # CTC over the frames that are kept, in order
        lp = torch.stack([F.pad(lp[:, i][amask[i] > 0], (0, 0, 0, lp.shape[0] - int(in_len[i]))) for i in range(b)], 1)
    ctc = F.ctc_loss(lp, torch.cat(ctc_tgt), in_len, torch.tensor([len(c) for c in ctc_tgt]), blank=0,
                     reduction="mean", zero_infinity=True)
    total = ce + qty_weight * qty + 0.3 * ctc
    return total, {"ce": float(ce.detach()), "qty": float(qty.detach()), "ctc": float(ctc.detach())}


def evaluate(model_dir_writer, rows, limit: int | None = None) -> dict:
    """Decode held-out clean utterances with the numpy runtime (offline)."""
    from edge.asr.audio import load_audio
    from edge.asr.recognizer import Recognizer
    from paraedge_tools.recipe.evaluate import cer

    rec = Recognizer(model_dir_writer())
    errs = chars = correct = 0
    subset = rows if limit is None else rows[:: max(1, len(rows) // limit)]
    for r in subset:
        hyp = rec.transcribe(load_audio(r["path"])[0]).text
        e, n = cer(r["text"], hyp)
        errs, chars, correct = errs + e, chars + n, correct + int(hyp == r["text"])
    return {"cer": errs / max(chars, 1), "acc": correct / max(len(subset), 1), "n": len(subset)}


def write_model_dir(out, model, conf, vocab, cmvn, fp16_weights: bool = False) -> str:
    import yaml

    from edge.asr.frontend import Cmvn

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(conf, f, allow_unicode=True, sort_keys=False)
    with open(os.path.join(out, "tokens.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    Cmvn(*cmvn).save(os.path.join(out, "am.mvn"))
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if fp16_weights:  # every artifact derives from the same fp16-rounded weights
        sd = {k: v.half().float() for k, v in sd.items()}
    np.savez(os.path.join(out, "model.npz"), **{k: v.numpy().astype(np.float32) for k, v in sd.items()})
    return out


def grown_vocab(old: list[str], rows) -> list[str]:
    """`old` with the corpus's new tokens inserted before `<unk>` (kept last), in corpus order."""
    known = set(old)
    body = [t for t in old if t != "<unk>"]
    for r in rows:
        for t in tokenize(r["text"], r["lang"]):
            if t not in known:
                known.add(t)
                body.append(t)
    return body + ["<unk>"] if "<unk>" in old else body


def grow_state(state: dict, fresh: dict, old: list[str], new: list[str]) -> dict:
    """Weights for vocabulary `new` from weights trained with `old`: every [V, ...] tensor (decoder
    embedding and output layer, CTC head) keeps its trained row for each old token, by name; new
    tokens start from `fresh` (the new model's own initialisation)."""
    import torch

    rows = torch.tensor([old.index(t) for t in new if t in old])
    keep = torch.tensor([i for i, t in enumerate(new) if t in old])
    out = {}
    for k, v in state.items():
        if v.shape[:1] == (len(old),) and fresh[k].shape[:1] == (len(new),):
            w = fresh[k].clone()
            w[keep] = v[rows]
            out[k] = w
        else:
            out[k] = v
    return out


def train(corpus: str, out: str, steps: int, preset: str = "demo", batch: int = 24, lr: float = 1e-3,
          seed: int = 0, eval_every: int = 500, threads: int = 2, log=print, init: str | None = None,
          streaming_ratio: float = 0.5, stream_left=0, init_dir: str | None = None, grow: bool = False,
          qty_weight: float = 1.0, source_filter: float = 0.0, balance_languages: bool = False,
          ghost: float = 0.0, shift: float = 0.0, tail: float = 0.0, tail_langs=None, noise: float = 0.5,
          lead: float = 0.4, position_shift: float = 0.0, precision: str = "fp32") -> str:
    """`init_dir`: fine-tune that FunASR-format model dir (its config, tokens, CMVN and weights;
    `preset` is then ignored), as `paraedge prune --finetune-steps` does. `grow`: the corpus may
    hold tokens the model lacks; they are added to its vocabulary (`grown_vocab`, `grow_state`).
    `source_filter`: probability of `augment.source_filter` (a new voice source) on a training draw.
    `balance_languages`: draw each language equally often. The Mandarin neural families (baker, ttskit)
    took the corpus from 51 to 61 % Mandarin renders; the leave-kokoro-out run on it then decoded
    English with Mandarin tokens added or swapped in ("navigate home首"): 32 % of Kokoro's English
    commands right against 50 % on the 51 % corpus. Balanced (with `source_filter` 0.3 in both runs),
    that fold went from English 31.5 / Mandarin 41.4 % to 35.7 / 29.4 %: a trade, so it is off by default.
    `source_filter` 0.3 against 0 on the same fold: 38.0 against 35.8 % (en 31.5 / 32.1, zh 41.4 / 37.7), but a
    second seed without it gave 38.4 %: no measured gain, so it is off by default too.
    `tail_langs`: the languages ("en", "zh") whose commands get `tail` (None: both; `tail_tokens_for`).
    `noise`: the share of draws with noise mixed in (`augment`'s `noise_p`). 0.75 against 0.5, as a
    1,200-step fourth stage of the README's recipe (lr 2e-4), against the third stage it started
    from, fp32 offline: in car noise at 10 dB Kokoro 91.6 -> 94.1 %, RHVoice 87.1 -> 92.2, SAM 75.9 ->
    79.3, espeak held-out at 5 dB 96.9 -> 97.5; but espeak held-out clean 99.6 -> 98.5 and streaming
    equal to offline there 98.6 -> 97.5 %: not the default.
    `lead`: the most seconds of silence padded before a command (`augment`'s `lead_s`; the corpus's
    renders and test sets open with 0-0.4 s). 1.5 against 0.4, 1,200 steps (lr 2e-4,
    `--streaming-ratio 0.75`) from the README recipe's mean of stages 2 and 3: with 0.6 s more car
    noise before each espeak held-out command at 5 dB (`bench/lead_noise.py`) streaming right
    93.6 -> 95.1 % (offline 97.2 -> 97.8), without it 96.2 -> 96.5; but the trainer's clean
    held-out check 99.1 -> 97.4 %: not the default.
    `position_shift`: each utterance's encoder positions start up to this many seconds later (uniform,
    whole LFR frames). The positions are absolute (FunASR's sinusoidal `pe` from frame 1), and the
    draws' speech starts within 0.4 s, so the weights learn where a command starts: the shipped
    weights, offline with the positions alone moved 1.2 s (no audio changed), Kokoro clean 97 -> 55 %,
    espeak held-out 100 -> 87 % (60 commands each); a file or a stream with 1.2 s of silence before the
    command loses as much. The shift costs no compute (the audio is unchanged). 3 s against none,
    1,200 steps (lr 2e-4, seed 5, stage 5's flags) from the shipped weights, fp32, lead 0 / 2 s of
    silence (`bench/lead_noise.py`): espeak held-out clean offline 99.1 / 51.7 -> 98.8 / 99.4 %,
    streaming 99.1 / 30.1 -> 98.3 / 98.9 %; Kokoro clean offline 97.2 / 34.3 -> 96.2 / 94.8 %. But
    with 0.6 s of the set's car noise first, streaming equal to offline fell (espeak at 5 dB 91.3 ->
    74.9 %, the evaluator's last column; offline right 98.6 % for both on every 4th command, two of
    the eight voices): the weights lost the position cue and had never streamed noise before a
    command (draws open within `lead`).
    `precision`: "bf16" runs each step's matrix products in bfloat16 (`losses`); the weights, the
    optimiser and everything CIF sums stay float32 (bench/train_step.py has the speed)."""
    import copy

    import torch

    from paraedge_models.paraformer import Paraformer

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    os.makedirs(out, exist_ok=True)
    lefts = [int(v) for v in (stream_left if isinstance(stream_left, (list, tuple)) else [stream_left])]
    init_md = None
    if init_dir:
        from edge.asr.modeldir import ModelDir

        init_md = ModelDir(init_dir)
        vocab = list(init_md.tokens)
        conf = copy.deepcopy(init_md.config.raw)  # keeps its own default chunk_size
    else:
        vocab = build_vocab()
        conf = model_config(preset, len(vocab), max(lefts))
    train_rows = read_manifest(os.path.join(corpus, "train.jsonl"))
    init_vocab = vocab
    if init_md is not None and grow:
        vocab = grown_vocab(init_vocab, train_rows)
        conf["vocab_size"] = len(vocab)
        if len(vocab) > len(init_vocab):
            log(f"vocabulary {len(init_vocab)} -> {len(vocab)} tokens: {' '.join(vocab[len(init_vocab) - 1:-1])}")
    if init_md is not None:  # a token the model cannot emit would be a KeyError deep in the data loader
        known = set(vocab)
        for r in train_rows:
            missing = [t for t in tokenize(r["text"], r["lang"]) if t not in known]
            if missing:
                raise ValueError(f"{corpus}/train.jsonl: token {missing[0]!r} is not in {init_md.tokens_file}; "
                                 f"fine-tune on a corpus of the model's own vocabulary, or add --grow-vocab")
    test_rows = read_manifest(os.path.join(corpus, "test_clean.jsonl")) if os.path.exists(
        os.path.join(corpus, "test_clean.jsonl")) else []
    data = Data(train_rows, vocab, rng, source_filter, balance_languages, noise, lead)
    tail_tokens = None if tail_langs is None else tail_tokens_for(vocab, tail_langs)
    with open(os.path.join(out, "tokens.json"), "w", encoding="utf-8") as f:  # release/loso rebuild the model from it
        json.dump(vocab, f, ensure_ascii=False)
    cmvn_path = os.path.join(out, "cmvn.npz")
    if init_md is not None and init_md.cmvn is not None:  # the model's own CMVN, not recomputed
        cmvn = (init_md.cmvn.shift, init_md.cmvn.scale)
        np.savez(cmvn_path, shift=cmvn[0], scale=cmvn[1])
    elif os.path.exists(cmvn_path):
        z = np.load(cmvn_path)
        cmvn = (z["shift"], z["scale"])
    else:
        cmvn = compute_cmvn(data)
        np.savez(cmvn_path, shift=cmvn[0], scale=cmvn[1])
    model = Paraformer(conf, len(vocab))
    if init_md is not None:
        state = {k: torch.from_numpy(v) for k, v in init_md.weights.items()}
        if vocab != init_vocab:
            state = grow_state(state, model.state_dict(), init_vocab, vocab)
        model.load_state_dict(state)
    if init:  # fine-tune: start from another run's weights with a fresh optimiser and schedule
        st = torch.load(init, weights_only=False)
        model.load_state_dict(st["model"] if "opt" in st else st)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=1e-2)
    warmup = min(1000, max(1, steps // 10))

    def lr_at(s):
        return lr * min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(steps, 1)))) + 0.02)

    step, best, spent = 0, -1.0, 0.0
    ckpt = os.path.join(out, "ckpt.pt")
    if os.path.exists(ckpt):
        st = torch.load(ckpt, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step, best, spent = st["step"], st.get("best", -1.0), st.get("seconds", 0.0)
        rng.bit_generator.state = st["rng"]
        torch.set_rng_state(st["torch_rng"])
        log(f"resumed at step {step}")
    log_path = os.path.join(out, "log.csv")
    logf, writer = open_log(log_path)
    t0 = time.time() - spent   # log.csv's seconds count the whole run across resumes (a run may span sessions)
    run = {"loss": 0.0, "ce": 0.0, "qty": 0.0, "ctc": 0.0, "n": 0}
    model.train()
    try:
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=step, unit="step", dynamic_ncols=True)
    except ImportError:  # progress bar is a nicety
        bar = None
    batches = data.stream(batch, seed + step)  # resuming at step s continues a deterministic stream
    while step < steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        feats, targets = next(batches)
        feats = [(f + cmvn[0]) * cmvn[1] for f in feats]
        starts = position_starts(seed, step, len(feats), position_shift) if position_shift > 0 else None
        total, parts = losses(model, feats, targets, streaming=streaming_step(step, streaming_ratio),
                              left=lefts[(step // 2) % len(lefts)], qty_weight=qty_weight, ghost=ghost,
                              shift=shift, tail=tail, tail_tokens=tail_tokens, starts=starts,
                              bf16=precision == "bf16")
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        step += 1
        run["loss"] += float(total.detach())
        for k_ in ("ce", "qty", "ctc"):
            run[k_] += parts[k_]
        run["n"] += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(total.detach()):.3f}")
        if step % eval_every == 0 or step == steps:
            model.eval()
            metrics = {"cer": float("nan"), "acc": float("nan")}
            if test_rows:
                metrics = evaluate(lambda: write_model_dir(os.path.join(out, "eval_model"), model, conf, vocab, cmvn),
                                   test_rows, limit=200)
            n = max(run["n"], 1)
            writer.writerow([step, round(time.time() - t0, 1), run["loss"] / n, run["ce"] / n, run["qty"] / n,
                             run["ctc"] / n, lr_at(step), metrics["cer"], metrics["acc"]])
            logf.flush()
            log(f"step {step}: loss {run['loss'] / n:.3f} heldout cer {metrics['cer']:.4f} acc {metrics['acc']:.3f}")
            run = {"loss": 0.0, "ce": 0.0, "qty": 0.0, "ctc": 0.0, "n": 0}
            state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "best": best,
                     "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                     "seconds": time.time() - t0}
            if test_rows and metrics["acc"] >= best:
                best = state["best"] = metrics["acc"]
                torch.save(model.state_dict(), os.path.join(out, "best.pt"))
            torch.save(state, ckpt + ".tmp")
            os.replace(ckpt + ".tmp", ckpt)  # atomic: a kill mid-save never corrupts the checkpoint
            plot(log_path, os.path.join(out, "curve.png"))
            model.train()
    if bar is not None:
        bar.close()
    logf.close()
    with open(os.path.join(out, "train_info.json"), "w") as f:
        json.dump({"steps": steps, "batch": batch, "preset": "dir" if init_md else preset, "seed": seed, "threads": threads,
                   "lr": lr, "init_dir": os.path.abspath(init_dir) if init_dir else None,
                   "conf": conf if init_md else None,
                   "streaming_ratio": streaming_ratio, "stream_left": lefts, "qty_weight": qty_weight,
                   "source_filter": source_filter, "balance_languages": balance_languages, "ghost_fires": ghost,
                   "shift_fires": shift, "tail_fires": tail, "tail_langs": sorted(tail_langs) if tail_langs else None,
                   "noise": noise,
                   "lead": lead, "position_shift": position_shift, "precision": precision,
                   "best_heldout_acc": best, "vocab_size": len(vocab),
                   "parameters": int(sum(p.numel() for p in model.parameters()))}, f, indent=1)
    return out


LOG_COLUMNS = ["step", "seconds", "loss", "ce", "qty", "ctc", "lr", "heldout_cer", "heldout_acc"]


def open_log(log_path: str):
    """log.csv for appending, its header written when the file is new or empty: a run killed before its
    first check leaves an empty log.csv, and the resumed run's rows need the header (plot reads it)."""
    new_log = not os.path.exists(log_path) or os.path.getsize(log_path) == 0
    logf = open(log_path, "a", newline="")
    writer = csv.writer(logf)
    if new_log:
        writer.writerow(LOG_COLUMNS)
    return logf, writer


def plot(log_path: str, png: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = list(csv.DictReader(open(log_path)))
    if not rows:
        return
    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    for k in ("loss", "ce", "qty", "ctc"):
        ax[0].plot(steps, [float(r[k]) for r in rows], label=k)
    ax[0].set_xlabel("step"), ax[0].set_yscale("log"), ax[0].legend(), ax[0].set_title("training loss")
    ax[1].plot(steps, [float(r["heldout_cer"]) for r in rows], label="CER")
    ax[1].plot(steps, [1 - float(r["heldout_acc"]) for r in rows], label="command error")
    ax[1].set_xlabel("step"), ax[1].set_yscale("log"), ax[1].legend(), ax[1].set_title("held-out voices, clean")
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)


def add_recipe_args(ap) -> None:
    """The training settings train and loso both take (loso passes them to each fold's train)."""
    ap.add_argument("--qty-weight", type=float, default=1.0,
                    help="weight of the CIF quantity loss (CE + w * quantity + 0.3 CTC)")
    ap.add_argument("--source-filter", type=float, default=0.0,
                    help="probability of a new voice source on a training draw (augment.source_filter)")
    ap.add_argument("--balance-languages", action="store_true",
                    help="draw each language of the corpus equally often, whatever its share of the renders")
    ap.add_argument("--ghost-fires", type=float, default=0.0,
                    help="share of utterances whose decoder gets one extra CIF fire to label <blank> (count_jitter)")
    ap.add_argument("--shift-fires", type=float, default=0.0,
                    help="share of utterances whose CIF fires are shifted by a fraction of a token (count_jitter)")
    ap.add_argument("--tail-fires", type=float, default=0.0,
                    help="share of utterances whose decoder gets an extra fire (<blank>) between the last word and "
                         "</s> (count_jitter)")
    ap.add_argument("--tail-langs", default=None, type=lambda v: [x for x in v.split(",") if x],
                    help="comma-separated languages (en, zh) whose commands get --tail-fires (default: both)")
    ap.add_argument("--noise", type=float, default=0.5,
                    help="share of training draws with noise mixed in at 0-20 dB (augment; the rest keep their silence)")
    ap.add_argument("--lead-pad", type=float, default=0.4,
                    help="most seconds of silence (then noise) padded before a command on a training draw (augment)")
    ap.add_argument("--precision", choices=PRECISIONS, default="fp32",
                    help="bf16: matrix products in bfloat16 (CPU autocast), about 1.3x faster steps on a CPU with "
                         "AMX or AVX512-BF16 (bench/train_step.py); weights and CIF stay float32")
    ap.add_argument("--position-shift", type=float, default=0.0,
                    help="most seconds each utterance's encoder positions start later (uniform): weights that do "
                         "not learn where a command starts")


def check_recipe_args(ap, args) -> dict:
    """`add_recipe_args`' settings checked: one line and exit 2 (`ap.error`) before anything is
    written or trained (NaN fails every bound); returns them as `train`'s keyword arguments."""
    if not 0.0 <= args.source_filter <= 1.0:
        ap.error("--source-filter must be within [0, 1]")
    if not 0.0 <= args.noise <= 1.0:
        ap.error("--noise must be within [0, 1]")
    if not 0.0 <= args.lead_pad <= 5.0:
        ap.error("--lead-pad must be within [0, 5] seconds")
    if not 0.0 <= args.position_shift <= 60.0:
        ap.error("--position-shift must be within [0, 60] seconds")
    if not 0.0 <= args.qty_weight <= 100.0:
        ap.error("--qty-weight must be within [0, 100]")
    shares = (args.ghost_fires, args.shift_fires, args.tail_fires)
    if not (all(0.0 <= v <= 1.0 for v in shares) and sum(shares) <= 1.0):
        ap.error("--ghost-fires, --shift-fires and --tail-fires must be within [0, 1], and their sum too")
    if args.tail_langs is not None and (not args.tail_langs or set(args.tail_langs).difference(TAIL_LANGS)):
        ap.error("--tail-langs takes en, zh or en,zh")
    if args.precision == "bf16" and not native_bf16():
        ap.error("--precision bf16: this CPU has no bf16 arithmetic (AMX, AVX512-BF16 or Arm BF16 in /proc/cpuinfo), "
                 "so torch would emulate it, slower than float32; train with --precision fp32")
    return {"qty_weight": args.qty_weight, "source_filter": args.source_filter,
            "balance_languages": args.balance_languages, "ghost": args.ghost_fires, "shift": args.shift_fires,
            "tail": args.tail_fires, "tail_langs": args.tail_langs,
            "noise": args.noise, "lead": args.lead_pad, "position_shift": args.position_shift,
            "precision": args.precision}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=8000)
    ap.add_argument("--preset", default="demo", choices=["demo", "tiny"])
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--init", default=None, help="fine-tune from this checkpoint (model weights only)")
    ap.add_argument("--init-dir", default=None,
                    help="fine-tune this FunASR-format model dir (config.yaml, tokens, am.mvn, weights; --preset ignored)")
    ap.add_argument("--grow-vocab", action="store_true",
                    help="with --init-dir: add the corpus's tokens the model lacks to its vocabulary (trained rows kept)")
    ap.add_argument("--streaming-ratio", type=float, default=0.5,
                    help="fraction of steps trained exactly as the runtime streams (the rest with full context)")
    ap.add_argument("--stream-left", type=lambda v: [int(x) for x in v.split(",")], default=[0],
                    help="left context (LFR frames) of the streaming windows: train for chunk_size [N, 10, 5]; "
                         "a list (0,10) takes turns")
    add_recipe_args(ap)
    args = ap.parse_args(argv)
    recipe = check_recipe_args(ap, args)
    if not 0.0 <= args.streaming_ratio <= 1.0:
        ap.error("--streaming-ratio must be within [0, 1]")
    if min(args.stream_left) < 0:
        ap.error("--stream-left must be >= 0")
    if args.grow_vocab and not args.init_dir:
        ap.error("--grow-vocab grows the vocabulary of an --init-dir model; a preset run builds its own from the phrases")
    train(args.corpus, args.out, args.steps, args.preset, args.batch, args.lr, args.seed, args.eval_every, args.threads,
          init=args.init, streaming_ratio=args.streaming_ratio,
          stream_left=args.stream_left, init_dir=args.init_dir, grow=args.grow_vocab, **recipe)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
