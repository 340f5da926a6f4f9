"""Train the second-stage wake verifier (edge/daemon/verify.py) for one microWakeWord model.

`python -m paraedge_tools.recipe.wake_verifier --keyword alexa [-o edge/resources/alexa_verifier.npz]`

Data, rendered here with seeds of its own (bench/wake.py measures on other renders):
- positives: the wake word said by every trained synthesizer family (wake_speech._positive), each
  in car noise, followed by a command or silence;
- negatives: everyday talk by every family with *training* near-miss phrases (TRAIN_NEAR: none of
  them is in the benchmark's NEAR_MISS list), and those phrases alone.
Every render streams through the gate's frontend and the keyword's model exactly as WakeGate runs it;
each inference whose probability passes CANDIDATE becomes an example: the FRAMES frames up to it,
labelled 1 when it falls between the wake word's start and 0.4 s after its end, 0 anywhere in the
negatives. A small CNN (edge/daemon/verify.py) learns to tell them apart (torch, host only); the
weights are written as a plain .npz that the device reads with numpy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from paraedge_tools.recipe import wake_speech as S

CANDIDATE = 0.5  # the lowest model probability a verifier is asked about (bench/wake.py's lowest cutoff)
AFTER_S = 0.4    # a positive example may end this long after the wake word does
# Confusable phrases to train on; the benchmark's near misses ("a lexus", "election", "okay, maybe", ...)
# are deliberately absent, so the benchmark measures how the verifier generalises.
TRAIN_NEAR = {"alexa": ["Alaska", "a taxi", "relax a bit", "flexible", "lexicon", "Alexandra", "electrons",
                        "collection", "reflection", "complexion", "Texas", "next up", "connect a", "select all",
                        "allergic", "a lesson", "ellipse", "Felix", "Rolex", "Lexi", "a Lexie", "unlucky",
                        "eclipse", "necklace", "the lexer", "direction", "protection", "a lexical", "alas",
                        "excellent", "Alexei", "elastic"],
              "okay_nabu": ["okay cool", "okay sure", "okay google", "okey dokey", "okay, no problem", "okay, not now",
                            "OK, I know", "okay Nora", "okay, nah", "oh, come on", "okay, never mind", "a cabana",
                            "banana bread", "nah, but", "a navy boat", "knob and a bar", "the nabob", "no, Bob",
                            "okay, new plan", "okay, next", "oak nap", "hokey pokey", "Oklahoma", "okra",
                            "cocoa nib", "uh, nope", "okay, Naomi", "OK, Nadia", "a kabuki", "okay, no booze"]}


def _examples(x: np.ndarray, keyword: str, lo: int | None, hi: int | None) -> np.ndarray:
    from edge.daemon.verify import BINS, FRAMES, last_frames

    feats, where, probs, heard = S.trace(x, [keyword])
    probs = probs[keyword]
    sel = [j for j in range(len(probs)) if probs[j] > CANDIDATE and (lo is None or lo <= where[j] < hi)]
    return (np.stack([last_frames(feats[: heard[j]]) for j in sel]) if sel
            else np.zeros((0, FRAMES, BINS), np.float32))


def _pos_job(keyword: str, i: int, seed: int, families: tuple[str, ...]) -> np.ndarray:
    x, m = S._positive(keyword, i, seed, families)
    return _examples(x, keyword, m["wake_start"], m["wake_end"] + int(AFTER_S * S.RATE)).astype(np.float16)


def _talk_job(keyword: str, family: str, k: int, seed: int, near: list[str]) -> np.ndarray:
    x, _ = S._family_segment(family, k, seed, 60.0, near)  # the training near misses, not the benchmark's
    return _examples(x, keyword, None, None).astype(np.float16)


def _near_job(keyword: str, text: str, i: int, seed: int, families: tuple[str, ...]) -> np.ndarray:
    x, _ = S._near_miss(text, i, seed, families)
    return _examples(x, keyword, None, None).astype(np.float16)


def render(keyword: str, families: tuple[str, ...], positives: int, talk_minutes: dict[str, int],
           near_per_phrase: int, seed: int, jobs: int) -> tuple[np.ndarray, np.ndarray]:
    near = TRAIN_NEAR[keyword]
    pos = S.pooled(_pos_job, [(keyword, i, seed, families) for i in range(positives)], jobs)
    neg = S.pooled(_talk_job, [(keyword, f, k, seed + 1, near) for f, n in talk_minutes.items() for k in range(n)], jobs)
    neg += S.pooled(_near_job, [(keyword, t, i, seed + 2, families) for t in near for i in range(near_per_phrase)], jobs)
    return np.concatenate(pos).astype(np.float32), np.concatenate(neg).astype(np.float32)


def train(pos: np.ndarray, neg: np.ndarray, channels: int, epochs: int, seed: int, log=print) -> tuple[dict, dict]:
    """(weights for WakeVerifier, held-out accuracies). 10 % of the examples are held out."""
    import torch
    import torch.nn as nn

    from edge.daemon.verify import KERNEL, STRIDE

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = np.concatenate([pos, neg])
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))]).astype(np.float32)
    mu, sd = x.reshape(-1, 40).mean(0), x.reshape(-1, 40).std(0) + 1e-3

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            c = channels
            self.f = nn.Sequential(nn.Conv1d(40, c, KERNEL, STRIDE), nn.ReLU(), nn.Conv1d(c, c, KERNEL, STRIDE), nn.ReLU(),
                                   nn.Conv1d(c, c, KERNEL, STRIDE), nn.ReLU())
            self.o = nn.Linear(2 * c, 1)

        def forward(self, v):
            h = self.f(v.transpose(1, 2))
            return self.o(torch.cat([h.mean(2), h.amax(2)], 1)).squeeze(1)

    net = Net()
    xt, yt = torch.tensor((x - mu) / sd), torch.tensor(y)
    order = rng.permutation(len(x))
    held, fit = order[: len(x) // 10], order[len(x) // 10 :]
    opt = torch.optim.Adam(net.parameters(), 2e-3, weight_decay=1e-4)
    loss_f = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([len(neg) / max(1, len(pos))]))
    acc = {}
    for ep in range(epochs):
        net.train()
        perm = rng.permutation(fit)
        for b in range(0, len(perm), 128):
            j = perm[b : b + 128]
            v = torch.roll(xt[j], int(rng.integers(-3, 4)), 1)  # the candidate moment jitters by +-30 ms
            opt.zero_grad()
            loss_f(net(v), yt[j]).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            s = torch.sigmoid(net(xt[held])).numpy()
        yh = y[held]
        acc = {"positives": float((s[yh == 1] > 0.5).mean()), "negatives": float((s[yh == 0] <= 0.5).mean())}
        log(f"epoch {ep + 1}/{epochs}: held-out positives {acc['positives']:.3f} accepted, "
            f"negatives {acc['negatives']:.3f} rejected")
    sd_ = {k: v.detach().numpy().astype(np.float32) for k, v in net.state_dict().items()}
    w = {"mu": mu.astype(np.float32), "sd": sd.astype(np.float32), "w0": sd_["f.0.weight"], "b0": sd_["f.0.bias"],
         "w1": sd_["f.2.weight"], "b1": sd_["f.2.bias"], "w2": sd_["f.4.weight"], "b2": sd_["f.4.bias"],
         "wo": sd_["o.weight"].reshape(-1), "bo": sd_["o.bias"].reshape(1)}
    return w, acc


def main(argv=None) -> int:
    from paraedge_tools.recipe import voices

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keyword", default="alexa", choices=sorted(TRAIN_NEAR))
    ap.add_argument("-o", "--out", required=True, help="the verifier .npz to write")
    ap.add_argument("--families", default=",".join(S.FAMILIES))
    ap.add_argument("--positives", type=int, default=2100, help="wake-word renders, the families taking turns")
    ap.add_argument("--espeak-minutes", type=int, default=120, help="minutes of everyday talk by espeak-ng")
    ap.add_argument("--family-minutes", type=int, default=18, help="minutes of everyday talk by each other family")
    ap.add_argument("--near-per-phrase", type=int, default=42, help="renders of each training near-miss phrase")
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--cutoff", type=float, default=0.9, help="verifier score a candidate must pass (stored in the file)")
    ap.add_argument("--seed", type=int, default=4242, help="bench/wake.py renders with other seeds")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    try:
        fams = tuple(s.family for s in voices.available(args.families.split(",")))
    except ValueError as e:
        ap.error(str(e))
    if not 0.0 <= args.cutoff < 1.0 or min(args.positives, args.channels, args.epochs) < 1:
        ap.error("--cutoff must be in [0, 1); --positives, --channels, --epochs at least 1")
    t0 = time.time()
    talk = {f: (args.espeak_minutes if f == "espeak" else args.family_minutes) for f in fams}
    pos, neg = render(args.keyword, fams, args.positives, talk, args.near_per_phrase, args.seed, args.jobs)
    t_render = time.time() - t0
    print(f"{len(pos)} positive and {len(neg)} negative examples from {t_render:.0f} s of rendering", file=sys.stderr)
    if not len(pos) or not len(neg):
        print(f"error: no {'positive' if not len(pos) else 'negative'} candidates (probability > {CANDIDATE}); "
              "render more (--positives / --near-per-phrase)", file=sys.stderr)
        return 1
    w, acc = train(pos, neg, args.channels, args.epochs, args.seed, log=lambda s: print(s, file=sys.stderr))
    meta = {"keyword": args.keyword, "cutoff": args.cutoff, "candidate": CANDIDATE, "families": list(fams),
            "positives": int(len(pos)), "negatives": int(len(neg)), "train_near": TRAIN_NEAR[args.keyword],
            "held_out_accuracy": acc, "seed": args.seed, "render_s": round(t_render),
            "train_s": round(time.time() - t0 - t_render)}
    np.savez(args.out, meta=np.array(json.dumps(meta)), **w)
    print(f"wrote {args.out} in {time.time() - t0:.0f} s: {json.dumps(acc)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
