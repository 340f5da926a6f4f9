"""Grammar-constrained decoding over a Paraformer's own outputs: the CIF positions and the
decoder's log-posteriors log_probs [N, V].

Positions whose argmax is blank, <s> or </s> are dropped first, exactly as the free transcript
drops them (pick_tokens): the demo model's last CIF position always carries </s> (tail alpha).

Alignment of one expansion (tokens t_1..t_L) to the kept positions 1..N is an edit alignment:
  match    token i at position j      cost -log_probs[j, t_i]
  insert   position j, no token       cost ins[j]  (CIF made a position too many)
  delete   token i, no position       cost del     (CIF merged two tokens into one position)
with at most TOLERANCE (2) insertions and, separately, at most 2 deletions; an expansion whose
length is more than 2 away from N cannot align. Its cost is the cheapest such alignment; the
match is the expansion of least cost (brute-force-checked in tests/test_grammar.py).

Vectorised over expansions: with k_i insertions and k_d deletions so far after token i, the
position is j = i + k_i - k_d, so a row of the DP is 9 states (k_i, k_d in 0..2) x E expansions,
and one token row is ~8 numpy calls on [9, E] arrays, no per-expansion Python. Expansions are kept
sorted by length, so those that can align with N positions are one slice, and those that end at
row i leave the arrays there. Only the winner is re-aligned in Python to recover its path.

Measured (`python -m edge.grammar.decode --bench`, x86 dev host, one thread, best of 25 rounds):
match() 0.17 ms on the demo grammar, 0.26 ms on a templated car grammar of 981 expansions, 0.42 ms
on 1,000 random expansions all within 2 tokens of N = 12; docs/GRAMMAR.md "Cost" has the A76 estimate.

Confidence: each step of the winning path has a probability: a matched token its posterior
exp(log_probs[j, t]), an insertion exp(-ins), a deletion exp(-del). The utterance confidence is
their geometric mean, exp(-cost / steps): about 0.9 for a clean demo command (its label-smoothed
posteriors peak at 0.9), ~0.5 with one CIF edit in a short command, < 0.1 when the words are not
in the grammar (every mismatch costs 7+ nats). token_confidence lists the step probability of
each expansion token; slot_confidence the weakest step in or next to each slot's words, so an edit
that could change a value rejects the match. The free greedy path's log-probability is kept as
free_score, so a later calibration can also use the margin (score - free_score) without re-decoding.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from edge.asr.text import TokenIndex, tokens_to_text
from edge.grammar.spec import TOLERANCE, GrammarError, load_spec

F32 = np.float32
DROP = ("<blank>", "<s>", "</s>")  # positions the greedy transcript drops are dropped here too


@dataclass
class Match:
    intent: str | None
    slots: dict = field(default_factory=dict)
    text: str = ""
    token_ids: list = field(default_factory=list)
    score: float = -math.inf  # log-domain: sum of matched log-probs minus edit costs (higher is better)
    confidence: float = 0.0  # 0..1 per utterance, geometric mean of the path's step probabilities
    token_confidence: list = field(default_factory=list)
    rejected: bool = True  # confidence or a slot_confidence < the grammar's threshold, a prefix, or nothing
    complete: bool = False  # a whole command / answer (False: nothing matched, or a prefix with partial=True)
    answer: bool = False  # a bare slot answer (the grammar's `answers:`)
    free_score: float = -math.inf  # log-prob of the free greedy path over the same positions
    edits: int = 0  # insertions + deletions on the winning path
    slot_confidence: dict = field(default_factory=dict)  # slot -> weakest step in or next to its words
    slot_edits: list = field(default_factory=list)  # slots whose words an insertion or deletion touches

    def as_dict(self) -> dict:
        return {"intent": self.intent, "slots": dict(self.slots), "confidence": round(float(self.confidence), 4),
                "rejected": bool(self.rejected), "text": self.text}


def align_costs(costs_t: np.ndarray, ids_t: np.ndarray, lengths: np.ndarray, ins: np.ndarray, dele: float,
                tol: int = TOLERANCE, prefix: bool = False):
    """Cost of the best alignment of every expansion; inf where none exists.

    costs_t [N, V]: -log_probs (float32); ids_t [Lmax, E] token ids, one column per expansion,
    columns sorted by `lengths` (ascending), padding ignored; ins [N] insertion cost per position;
    dele: deletion cost. ~8 numpy calls per token row, none per expansion: numpy call overhead,
    not arithmetic, dominates up to ~1,000 expansions (x86, best of many: 0.13 ms for 1 expansion,
    0.34 ms for 1,000, all within 2 tokens of N = 12).
    prefix=True also returns, per expansion, the cost of its best proper prefix aligned to all N
    positions (the rest not said yet) and that prefix's length: (costs, prefix_costs, prefix_lengths).
    """
    N, V = costs_t.shape
    E = ids_t.shape[1]
    out = np.full(E, np.inf, F32)
    pre, pre_len = np.full(E, np.inf, F32), np.zeros(E, np.int64)
    lo, hi = int(np.searchsorted(lengths, N - tol, "left")), int(np.searchsorted(lengths, N + tol, "right"))
    if prefix:  # and any longer expansion may have a prefix that fits
        lo, hi = min(lo, int(np.searchsorted(lengths, 2, "left"))), E
    if lo >= hi:
        return (out, pre, pre_len) if prefix else out
    S = tol + 1
    lmax = min(int(lengths[hi - 1]), N + tol)  # no state after row N + tol uses exactly N positions
    # row tol + j of pad holds position j (1-based); positions outside 1..N are unreachable (inf)
    width = lmax + 2 * tol + 1
    pad = np.full((width, V), np.inf, F32)
    pad[tol + 1 : tol + 1 + N] = costs_t
    insp = np.full(width, np.inf, F32)
    insp[tol + 1 : tol + 1 + N] = ins
    # state [ki, kd]: after token i with ki insertions and kd deletions the position is
    # j = i + ki - kd; an insertion layer ki is one contiguous block, a deletion shifts kd
    rows = np.arange(lmax + 1)[:, None] + (tol + _KI[tol] - _KD[tol])  # [i, state] -> pad row of j
    match_tab = pad[rows[1:]]  # [lmax, S*S, V]: token i matched at the state's position
    ins_tab = insp[rows].reshape(lmax + 1, S, S, 1)  # position j inserted into state [ki, kd]
    D = np.full((S, S, hi - lo), np.inf, F32)  # row 0: leading insertions only
    D[0, 0] = 0.0
    for k in range(1, S):
        D[k, 0] = D[k - 1, 0] + insp[tol + k]
    off = lo
    ends = np.searchsorted(lengths, np.arange(lmax + 1), "right").tolist()  # lengths <= i end before ends[i]
    dele = F32(dele)
    minimum = np.minimum
    for i in range(1, lmax + 1):
        new = match_tab[i - 1].take(ids_t[i - 1, off:hi], axis=1).reshape(S, S, hi - off)
        new += D  # token i matched
        minimum(new[:, 1:], D[:, :-1] + dele, out=new[:, 1:])  # token i deleted
        ins_i, below = ins_tab[i], new[0]
        for k in range(1, S):  # then a position inserted, one more per layer
            layer = new[k]
            minimum(layer, below + ins_i[k], out=layer)
            below = layer
        end = min(ends[i], hi)
        done = [(a, a - N + i) for a in range(S) if 0 <= a - N + i < S]  # states that used all N positions
        if prefix and done and end < hi:  # tokens 1..i of the longer expansions, said so far
            p = new[done[0][0], done[0][1], end - off :]
            for a, b in done[1:]:
                p = minimum(p, new[a, b, end - off :])
            better = p < pre[end:hi]
            pre[end:hi][better] = p[better]
            pre_len[end:hi][better] = i
        if end > off:  # expansions of length i finish
            if done:
                r = new[done[0][0], done[0][1], : end - off]
                for a, b in done[1:]:
                    r = minimum(r, new[a, b, : end - off])
                out[off:end] = r
            new = new[:, :, end - off :]
            off = end
            if off >= hi:
                break
        D = new
    return (out, pre, pre_len) if prefix else out


_KI = {t: np.repeat(np.arange(t + 1), t + 1) for t in range(4)}  # state order [ki, kd], ki-major
_KD = {t: np.tile(np.arange(t + 1), t + 1) for t in range(4)}


def align_path(cost: list, ins: list, dele: float, tol: int = TOLERANCE):
    """The best alignment of one expansion, with its steps (the same model as align_costs, in
    Python, for the winner only). cost [L][N] = -log_probs[:, tokens].T as nested lists.
    Returns (total, steps), steps [(kind, i, j, cost)] in order, kind 'match' | 'ins' | 'del',
    i the 0-based token (-1 for ins), j the 0-based position (-1 for del)."""
    L, N = len(cost), len(ins)
    S = tol + 1
    INF = math.inf
    rows, backs = [], []
    cur, back = [INF] * (S * S), [None] * (S * S)
    for i in range(L + 1):
        prev = cur
        cur, back = [INF] * (S * S), [None] * (S * S)
        for kd in range(S):
            for ki in range(S):
                s, j = kd * S + ki, i + ki - kd  # j: 1-based position after this state
                if i == 0:
                    if kd == 0 and ki == 0:
                        cur[s] = 0.0
                elif 1 <= j <= N and prev[s] + cost[i - 1][j - 1] < cur[s]:
                    cur[s], back[s] = prev[s] + cost[i - 1][j - 1], ("match", s, i - 1, j - 1)
                if i and kd and prev[s - S] + dele < cur[s]:
                    cur[s], back[s] = prev[s - S] + dele, ("del", s - S, i - 1, -1)
                if ki and 1 <= j <= N and cur[s - 1] + ins[j - 1] < cur[s]:
                    cur[s], back[s] = cur[s - 1] + ins[j - 1], ("ins", s - 1, -1, j - 1)
        rows.append(cur)
        backs.append(back)
    finals = [(rows[L][kd * S + ki], kd * S + ki) for kd in range(S) for ki in range(S) if L + ki - kd == N]
    total, s = min(finals, default=(INF, 0))
    if total == INF:
        return INF, []
    steps, i = [], L
    while backs[i][s] is not None:
        kind, ps, ti, pj = backs[i][s]
        pi = i if kind == "ins" else i - 1
        steps.append((kind, ti, pj, rows[i][s] - rows[pi][ps]))
        i, s = pi, ps
    return total, steps[::-1]


class Grammar:
    """A loaded grammar over a model's tokens. `match(log_probs)` -> Match."""

    def __init__(self, spec, tokens: list):
        self.path = spec.path
        self.tokens = list(tokens)
        self.vocab = spec.vocab or TokenIndex(tokens)  # phrases -> ids by the templates' rules
        self.threshold = spec.threshold
        self.calibration = spec.calibration
        self.insertion, self.deletion = spec.insertion, spec.deletion
        self.tolerance = TOLERANCE
        self._exp = spec.expansions
        self.expansions = [(e.intent, e.ids, e.slots, e.text) for e in spec.expansions]
        lengths = np.array([len(e.ids) for e in spec.expansions], np.int64)
        self._order = np.argsort(lengths, kind="stable")
        self._lengths = lengths[self._order]
        lmax = int(lengths.max()) if len(lengths) else 0
        ids = np.zeros((max(lmax, 1), len(lengths)), np.intp)  # [token, expansion]: a row per DP step
        for col, k in enumerate(self._order):
            e = spec.expansions[k].ids
            ids[: len(e), col] = e
        self._ids = ids
        self._drop = np.array([t in DROP for t in self.tokens], bool)  # by token id: a lookup, not np.isin

    @classmethod
    def load(cls, path, tokens: list) -> "Grammar":
        """Load and validate a grammar file against the model's tokens (GrammarError 'path:line: ...')."""
        return cls(load_spec(path, tokens), tokens)

    def _positions(self, log_probs: np.ndarray) -> np.ndarray:
        lp = np.asarray(log_probs, F32)
        if lp.ndim != 2 or lp.shape[1] != len(self.tokens):
            raise GrammarError(f"{self.path}:1: log_probs must be [N, {len(self.tokens)}] for this grammar's tokens, "
                               f"got {list(lp.shape)}; load the grammar with the model's tokens")
        if np.isnan(lp).any():  # a broken backend's NaN must not win an argmin: the token is impossible
            lp = np.where(np.isnan(lp), -np.inf, lp)
        if lp.shape[0]:
            keep = ~self._drop[lp.argmax(axis=1)]
            if not keep.all():
                lp = lp[keep]
        return lp

    def calibrated(self, raw: float) -> float:
        """A raw confidence (geometric mean of step probabilities) through the grammar's calibration."""
        scale, shift = self.calibration
        if (scale, shift) == (1.0, 0.0):
            return raw
        raw = min(max(raw, 1e-9), 1 - 1e-9)
        return 1.0 / (1.0 + math.exp(-(scale * math.log(raw / (1 - raw)) + shift)))

    def costs(self, log_probs: np.ndarray, partial: bool = False) -> np.ndarray:
        """Best alignment cost of every expansion (in `expansions` order; inf: cannot align).
        partial=True: the cheaper of the whole expansion and its best proper prefix."""
        lp = self._positions(log_probs)
        ins = np.full(lp.shape[0], self.insertion, F32)
        res = align_costs(-lp, self._ids, self._lengths, ins, self.deletion, self.tolerance, prefix=partial)
        sorted_costs = np.minimum(res[0], res[1]) if partial else res
        out = np.empty_like(sorted_costs)
        out[self._order] = sorted_costs
        return out

    def match(self, log_probs: np.ndarray, partial: bool = False) -> Match:
        """The grammar expansion that best explains the decoder's posteriors, with confidences.
        partial=True (a streaming partial): a proper prefix of an expansion may match too, as if
        the rest were not said yet; such a match has complete=False and is always rejected (never
        act on half a command), and keeps only the slots said in full."""
        lp = self._positions(log_probs)
        n = lp.shape[0]
        free = float(lp.max(axis=1).sum()) if n else 0.0
        if n == 0 or not self._exp:
            return Match(None, free_score=free)
        ins = np.full(n, self.insertion, F32)
        res = align_costs(-lp, self._ids, self._lengths, ins, self.deletion, self.tolerance, prefix=partial)
        costs = res[0] if partial else res
        row, length = int(np.argmin(costs)), None
        if partial:
            prow = int(np.argmin(res[1]))
            if res[1][prow] < costs[row]:  # ties go to the whole command
                row, length = prow, int(res[2][prow])
        if not np.isfinite(costs[row]) and length is None:
            return Match(None, free_score=free)
        e = self._exp[int(self._order[row])]
        ids = list(e.ids) if length is None else list(e.ids[:length])
        total, steps = align_path((-lp[:, ids].T).tolist(), ins.tolist(), self.deletion, self.tolerance)
        conf = self.calibrated(math.exp(-total / len(steps)))
        token_conf = [self.calibrated(math.exp(-c)) for kind, _, _, c in steps if kind != "ins"]
        spans = {k: v for k, v in e.spans.items() if v[1] <= len(ids)}
        raw_slots, edited = _slot_confidence(steps, spans, lp.argmax(axis=1))
        slot_conf = {k: self.calibrated(c) for k, c in raw_slots.items()}
        slots = {k: v for k, v in e.slots.items() if k not in e.spans or k in spans}
        # rejected below the threshold, or when an edit touches a slot's words: a count that is off
        # inside "二十二" changes the value, so a value the model did not clearly hear is never guessed
        # ("空调调到三十五度", out of range, otherwise matches 三十度 with one insertion at 0.63). A slot
        # word merely heard with a low posterior is not an edit: greedy decoding picks it too (measured:
        # rejecting those too refused a right "空调调到十七度" at 5 dB, 七 at 0.37, free decoding had it)
        rejected = conf < self.threshold or bool(edited) or length is not None
        text = e.text if length is None else tokens_to_text([self.tokens[t] for t in ids])
        return Match(e.intent, slots, text, ids, -total, conf, token_conf, rejected, length is None,
                     e.answer, free, sum(kind != "match" for kind, *_ in steps), slot_conf, edited)


def _slot_confidence(steps: list, spans: dict, heard: np.ndarray) -> tuple[dict, list]:
    """Per slot: the least probable step among its words, insertions between them, and insertions
    just outside them that the model heard as a word of that slot (五 after 三十: maybe 三十五); and
    the slots where such a step is an edit (insertion or deletion).
    heard[j]: the argmax token of position j. A duplicated 度 or 到 next to a slot does not count."""
    probs = [math.exp(-c) for *_, c in steps]
    token_step = [k for k, (kind, *_) in enumerate(steps) if kind != "ins"]  # token index -> step index
    out, edited = {}, []
    for name, (a, b, words) in spans.items():
        lo, hi = token_step[a], token_step[b - 1]
        while lo > 0 and steps[lo - 1][0] == "ins" and int(heard[steps[lo - 1][2]]) in words:
            lo -= 1
        while hi + 1 < len(steps) and steps[hi + 1][0] == "ins" and int(heard[steps[hi + 1][2]]) in words:
            hi += 1
        out[name] = min(probs[lo : hi + 1])
        if any(kind != "match" for kind, *_ in steps[lo : hi + 1]):
            edited.append(name)
    return out, edited


# -- benchmark ------------------------------------------------------------------------------------
def _time(fn, reps: int = 20, rounds: int = 25) -> float:
    """Best mean over `rounds` of `reps` calls: the machine's speed, not its other tenants'."""
    fn()
    best = math.inf
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def synthetic(tokens_n: int, count: int, n: int, seed: int = 0):
    """A Grammar of `count` random expansions, every one within the tolerance of n tokens (the
    worst case: none is skipped by length), over a vocabulary of tokens_n tokens."""
    from edge.grammar.spec import Expansion, Spec

    rng = np.random.default_rng(seed)
    exps = []
    for k in range(count):
        length = int(rng.integers(max(1, n - TOLERANCE), n + TOLERANCE + 1))
        exps.append(Expansion(f"i{k % 50}", tuple(int(t) for t in rng.integers(3, tokens_n, length)), {}, "", 0))
    tokens = ["<blank>", "<s>", "</s>"] + [f"t{i}" for i in range(3, tokens_n)]
    return Grammar(Spec("<synthetic>", exps), tokens)


# A car-sized grammar written as a car maker would: zones x temperatures x levels, both languages
TEMPLATED = """
slots:
  t_en: {type: temperature, values: [18, 19, 20, 21, 22, 23, 24, 25, 26]}
  delta: {type: number, range: [1, 5]}
intents:
  set_temperature:
    - 把{zone}温度调到{value:temperature}度
    - set the {zone} temperature to {value:t_en}
  seat_heating:
    - "{zone}座椅加热调到{level:fan}档"
    - set {zone} seat heating to level {level:fan}
  seat_ventilation:
    - "{zone}座椅通风调到{level:fan}档"
  set_fan:
    - "{zone}风量调到{level:fan}档"
    - set {zone} fan to level {level:fan}
  set_volume:
    - 音量调到{value:percent}
    - set volume to {value:percent}
  seat_massage:
    - "{zone}座椅按摩调到{level:fan}档"
    - set {zone} seat massage to level {level:fan}
    - set {zone} seat ventilation to level {level:fan}
  warmer:
    - 把{zone}温度调高{delta}度
    - raise the {zone} temperature by {delta} degrees
  cooler:
    - 把{zone}温度调低{delta}度
    - lower the {zone} temperature by {delta} degrees
  set_temperature_degrees:
    - make it {value:temperature} degrees for the {zone}
  window:
    - "{state:onoff}{zone}车窗"
    - turn {state:onoff} the {zone} window
  seat_heating_power:
    - "{state:onoff}{zone}座椅加热"
    - turn {state:onoff} the {zone} seat heating
answers:
  answer_temperature: ["{value:temperature}度"]
  answer_level: ["{level:fan}档", "level {level:fan}"]
  answer_zone: ["{zone}"]
"""


def templated() -> "Grammar":
    """TEMPLATED over a vocabulary of exactly its words (about 1,000 expansions)."""
    import os
    import re
    import tempfile

    from edge.grammar import slots as S

    said = re.sub(r"\{[^}]*\}", " ", TEMPLATED.split("intents:")[1])
    words = set(re.findall(r"[a-z]+", said)) | {"percent", "on", "off"} | {w for n in range(101) for w in S.en_number(n).split()}
    words |= {w for forms in S.ZONES.values() for f in forms for w in f.split() if not S.is_cjk(w)}
    chars = {ch for ch in TEMPLATED + "零一二三四五六七八九十百分之" + "".join(f for fs in S.ZONES.values() for f in fs) + "打开关闭" if S.is_cjk(ch)}
    tokens = ["<blank>", "<s>", "</s>"] + sorted(words) + sorted(chars) + ["<unk>"]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False, encoding="utf-8") as f:
        f.write(TEMPLATED)
    try:
        return Grammar.load(f.name, tokens)
    finally:
        os.unlink(f.name)


def bench() -> dict:
    """Time costs() and match() for the demo grammar, a templated car grammar (~1,000 expansions)
    and 1,000 random expansions all within 2 tokens of N (the worst case), on random posteriors."""
    import json
    import os

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    demo = os.path.join(root, "models", "demo")
    with open(os.path.join(demo, "tokens.json"), encoding="utf-8") as f:
        tokens = json.load(f)
    g = Grammar.load(os.path.join(demo, "grammar.yaml"), tokens)
    rng = np.random.default_rng(0)
    out = {}
    for name, gram, n in (("demo", g, 9), ("templated", templated(), 12), ("synthetic_1000", synthetic(len(tokens), 1000, 12), 12)):
        x = rng.normal(0, 3, (n, len(gram.tokens))).astype(F32)
        x[:, 0:3] = -30.0  # no dropped positions
        lp = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
        lengths = np.array([len(e[1]) for e in gram.expansions])
        out[name] = {"expansions": len(gram.expansions), "N": n, "within_2": int((abs(lengths - n) <= TOLERANCE).sum()),
                     "align_ms": 1e3 * _time(lambda: gram.costs(lp)),
                     "match_ms": 1e3 * _time(lambda: gram.match(lp)),
                     "partial_ms": 1e3 * _time(lambda: gram.match(lp, partial=True))}
    return out


if __name__ == "__main__":
    import sys

    if "--bench" in sys.argv:
        for k, v in bench().items():
            print(f"{k}: {v['expansions']} expansions ({v['within_2']} within 2 of N={v['N']}): "
                  f"costs {v['align_ms']:.3f} ms, match {v['match_ms']:.3f} ms, partial match {v['partial_ms']:.3f} ms")
    else:
        print("usage: python -m edge.grammar.decode --bench")
