"""Grammar files (YAML, docs/GRAMMAR.md): load, validate against the model's tokens, expand.

Every problem is one GrammarError line "path:line: what is wrong; how to fix it". The YAML is
read as a node tree (yaml.compose) so every key, template and slot keeps its line; keys are read
as written, so YAML 1.1's `on`/`off` stay strings, not booleans.

Expansion: each template is expanded over every value of each of its slots, in the template's
language (Mandarin forms in a template with CJK characters, English forms in one with Latin
letters, both in a bare "{value}" answer), and every expansion is tokenised into model token ids:
a word that is a token; otherwise a CJK run split into characters, each a token; anything else,
including a slot value the model cannot say, is an error at load, never silently dropped.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

import yaml

from edge.asr.text import SPECIAL, TokenIndex, tokens_to_text
from edge.errors import ParaEdgeError, open_regular
from edge.grammar import slots as S


class GrammarError(ParaEdgeError):
    """A grammar file is unreadable or invalid; str(err) is 'path:line: problem; fix'."""


# Defaults, documented in docs/GRAMMAR.md (a grammar file may override each).
# 0.5: 194 rendered demo commands score 0.887-0.90; renders whose free transcript is not a command
# 0.03-0.5; one CIF edit 0.21 (2 words) to 0.65 (8 words). To be calibrated on held-out data.
DEFAULT_THRESHOLD = 0.5
# An insertion (CIF made one position too many) or deletion (CIF merged two tokens) costs 3.0 nats,
# the price of a token the model gives 5 %: dearer than any plausible match, so a clean utterance
# never pays one, and far cheaper than the mismatches a shifted alignment would pay (the demo
# model's wrong tokens sit at -7 to -15), so a count off by one costs one edit, not every later token.
DEFAULT_INSERTION = 3.0
DEFAULT_DELETION = 3.0
TOLERANCE = 2  # at most this many insertions and, separately, deletions per utterance
MAX_EXPANSIONS = 200_000  # a guard against a typo'd range blowing up memory

TOP_KEYS = {"version", "threshold", "calibration", "costs", "slots", "intents", "answers"}
SLOT_KEYS = {"type", "range", "values", "lang"}
_REF = re.compile(r"\{([^{}]*)\}")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class Expansion:
    intent: str
    ids: tuple
    slots: dict
    text: str
    line: int
    answer: bool = False  # from `answers:`: a bare slot answer to a question the car asked
    spans: dict = field(default_factory=dict)  # slot name -> (start, end, ids of every form of it)


@dataclass
class Spec:
    path: str
    expansions: list
    threshold: float = DEFAULT_THRESHOLD
    # confidence = sigmoid(scale * logit(raw) + shift): the raw geometric mean made a probability that
    # the reading is right; identity by default, fitted per model by tools/recipe/grammar_eval.py
    calibration: tuple = (1.0, 0.0)
    insertion: float = DEFAULT_INSERTION
    deletion: float = DEFAULT_DELETION
    slot_types: dict = field(default_factory=dict)
    vocab: TokenIndex | None = None  # the model's tokens the templates were read with


class _Reader:
    """Node-tree helpers that turn every problem into 'path:line: ...'."""

    def __init__(self, path: str):
        self.path = path
        self.loader = None

    def error(self, node_or_line, msg: str) -> GrammarError:
        line = node_or_line if isinstance(node_or_line, int) else node_or_line.start_mark.line + 1
        return GrammarError(f"{self.path}:{line}: {msg}")

    def compose(self, text: str):
        try:
            self.loader = yaml.SafeLoader(text)  # its reader refuses control characters here
            return self.loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = mark.line + 1 if mark else 1
            raise GrammarError(f"{self.path}:{line}: bad YAML: {e.problem or e.context}; fix the syntax there") from None
        except yaml.reader.ReaderError as e:
            line = text.count("\n", 0, e.position) + 1
            char = chr(e.character) if isinstance(e.character, int) else e.character
            raise GrammarError(f"{self.path}:{line}: bad YAML: {e.reason} ({char!r}, character {e.position + 1}); "
                               "remove the control character") from None
        except yaml.YAMLError as e:
            raise GrammarError(f"{self.path}:1: bad YAML: {e}") from None
        except RecursionError:
            raise GrammarError(f"{self.path}:1: bad YAML: nested too deeply") from None

    def mapping(self, node, what: str) -> list:
        """[(key, key_node, value_node)] of a mapping node; duplicate keys are errors."""
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{what} must be a mapping (key: value lines)")
        out, seen = [], {}
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode) or not k.value:
                raise self.error(k, f"{what}: keys must be plain names")
            if k.value in seen:
                raise self.error(k, f"{what}: '{k.value}' appears twice (first on line {seen[k.value]}); keep one")
            seen[k.value] = k.start_mark.line + 1
            out.append((k.value, k, v))
        return out

    def value(self, node):
        return self.loader.construct_object(node, deep=True)

    def number(self, node, what: str, kind=(int, float)):
        v = self.value(node) if isinstance(node, yaml.ScalarNode) else None
        if isinstance(v, bool) or not isinstance(v, kind):
            want = "an integer" if kind is int else "a number"
            raise self.error(node, f"{what} must be {want}, got {node.value if isinstance(node, yaml.ScalarNode) else 'a ' + node.id}")
        return v

    def string(self, node, what: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag.endswith("null"):
            raise self.error(node, f"{what} must be text")
        return node.value

    def strings(self, node, what: str) -> list:
        """A string or a list of strings (synonyms)."""
        if isinstance(node, yaml.SequenceNode):
            if not node.value:
                raise self.error(node, f"{what} is an empty list; give at least one form")
            return [self.string(n, what) for n in node.value]
        return [self.string(node, what)]


def _cannot_emit(word: str, piece: str) -> str:
    if word in SPECIAL:
        return f"'{word}' is a special token, not a word"
    what = f"'{piece}' in '{word}'" if piece != word else f"'{word}'"
    return f"the model cannot emit {what} (not in its tokens)"


def _slot_type(r: _Reader, name: str, node) -> S.SlotType:
    """One `slots:` entry -> SlotType, validated."""
    entries = {k: (kn, v) for k, kn, v in r.mapping(node, f"slot '{name}'")}
    for k, (kn, _) in entries.items():
        if k not in SLOT_KEYS:
            raise r.error(kn, f"slot '{name}': unknown key '{k}' (known: {', '.join(sorted(SLOT_KEYS))})")
    if "type" not in entries:
        raise r.error(node, f"slot '{name}' has no type; add `type:` ({', '.join(S.SLOT_TYPES)})")
    tnode = entries["type"][1]
    kind = r.string(tnode, f"slot '{name}' type")
    if kind not in S.SLOT_TYPES:
        raise r.error(tnode, f"slot '{name}': unknown slot type '{kind}' (known: {', '.join(S.SLOT_TYPES)})")
    if kind in S.NUMBER_TYPES:
        st = _number_type(r, name, kind, entries, node)
    elif "range" in entries:
        raise r.error(entries["range"][0], f"slot '{name}': a {kind} slot has no range; list its `values:`")
    else:
        st = _enum_type(r, name, kind, entries.get("values", (None, None))[1], node)
    if "lang" in entries:  # keep one language's forms (a bare "{value}" answer otherwise expands both)
        lnode = entries["lang"][1]
        lang = r.string(lnode, f"slot '{name}' lang")
        if lang not in ("zh", "en"):
            raise r.error(lnode, f"slot '{name}': lang must be zh or en, got '{lang}'")
        st.values = {v: [f for f in fs if S.language(f) == lang] for v, fs in st.values.items()}
        st.values = {v: fs for v, fs in st.values.items() if fs}
        if not st.values:
            raise r.error(lnode, f"slot '{name}': no values have {lang} forms")
    return st


def _number_type(r: _Reader, name: str, kind: str, entries: dict, node) -> S.SlotType:
    lo_hi = S.NUMBER_TYPES[kind]
    if "range" in entries:
        rnode = entries["range"][1]
        if not isinstance(rnode, yaml.SequenceNode) or len(rnode.value) != 2:
            raise r.error(rnode, f"slot '{name}': range must be [low, high], e.g. [16, 30]")
        lo, hi = (r.number(n, f"slot '{name}' range", int) for n in rnode.value)
        if not 0 <= lo <= hi <= S.NUMBER_MAX:
            raise r.error(rnode, f"slot '{name}': bad range [{lo}, {hi}]; need 0 <= low <= high <= {S.NUMBER_MAX}")
        lo_hi = (lo, hi)
    if "values" in entries:
        vnode = entries["values"][1]
        if not isinstance(vnode, yaml.SequenceNode) or not vnode.value:
            raise r.error(vnode, f"slot '{name}': values must be a non-empty list of numbers, e.g. [18, 20, 22]")
        values = []
        for n in vnode.value:
            v = r.number(n, f"slot '{name}' value", int)
            low, high = lo_hi or (0, S.NUMBER_MAX)
            if not low <= v <= high:
                raise r.error(n, f"slot '{name}': value {v} is outside its range [{low}, {high}]; drop it or widen the range")
            if v not in values:
                values.append(v)
    elif lo_hi is None:
        raise r.error(node, f"slot '{name}': a number slot needs `range: [low, high]` or `values: [...]`")
    else:
        values = range(lo_hi[0], lo_hi[1] + 1)
    return S.number_slot(kind, values)


def _enum_type(r: _Reader, name: str, kind: str, vnode, node) -> S.SlotType:
    defaults = S.ENUM_TYPES[kind]
    if vnode is None:
        if defaults is None:
            raise r.error(node, f"slot '{name}': an enum slot needs `values:` (canonical name: [forms])")
        return S.enum_slot(kind, defaults)
    values = {}
    if isinstance(vnode, yaml.SequenceNode) and defaults is not None:  # a subset of the built-in values
        for n in vnode.value:
            v = r.string(n, f"slot '{name}' value")
            if v not in defaults:
                raise r.error(n, f"slot '{name}': '{v}' is not a {kind} value (known: {', '.join(defaults)})")
            values[v] = defaults[v]
    elif isinstance(vnode, yaml.MappingNode):
        for v, kn, fnode in r.mapping(vnode, f"slot '{name}' values"):
            if defaults is not None and v not in defaults:
                raise r.error(kn, f"slot '{name}': '{v}' is not a {kind} value (known: {', '.join(defaults)})")
            if isinstance(fnode, yaml.ScalarNode) and fnode.tag.endswith("null"):
                if defaults is None:
                    raise r.error(kn, f"slot '{name}': value '{v}' has no forms; list how it is said")
                values[v] = defaults[v]
            else:
                values[v] = r.strings(fnode, f"slot '{name}' value '{v}'")
                for form in values[v]:  # neither language's: no template would ever use it
                    if not S.is_cjk(form) and not S.has_latin(form):
                        raise r.error(fnode, f"slot '{name}': value '{v}' has the form {form!r}, which has no Mandarin "
                                             "or English word; list how it is said")
    else:
        raise r.error(vnode, f"slot '{name}': values must map each value to its forms, e.g. `on: [打开, on]`")
    if not values:
        raise r.error(vnode, f"slot '{name}': no values")
    return S.enum_slot(kind, values)


def _builtin(kind: str) -> S.SlotType | None:
    """A built-in type used directly in a template ({value:temperature}), with its defaults."""
    if kind in S.NUMBER_TYPES and S.NUMBER_TYPES[kind]:
        lo, hi = S.NUMBER_TYPES[kind]
        return S.number_slot(kind, range(lo, hi + 1))
    if kind in S.ENUM_TYPES and S.ENUM_TYPES[kind]:
        return S.enum_slot(kind, S.ENUM_TYPES[kind])
    return None


class _Expander:
    def __init__(self, r: _Reader, vocab: TokenIndex, types: dict):
        self.r, self.vocab, self.types = r, vocab, types
        self.out: list = []
        self.seen: dict = {}  # ids -> Expansion

    def template(self, intent: str, node, answer: bool) -> None:
        fixed = {}
        if isinstance(node, yaml.MappingNode):  # `- 导航回家: {destination: home}`: fixed slot values
            if len(node.value) != 1:
                raise self.r.error(node, f"intent '{intent}': a template with fixed slots is one `text: {{slot: value}}` line")
            knode, snode = node.value[0]
            text = self.r.string(knode, f"intent '{intent}' template")
            for k, kn, vn in self.r.mapping(snode, f"intent '{intent}' fixed slots"):
                if not _NAME.match(k):
                    raise self.r.error(kn, f"intent '{intent}': bad slot name '{k}'")
                if not isinstance(vn, yaml.ScalarNode) or vn.tag.endswith("null"):
                    raise self.r.error(vn, f"intent '{intent}': fixed slot '{k}' needs a value")
                fixed[k] = self.r.value(vn) if vn.tag.endswith("int") else vn.value
        else:
            text = self.r.string(node, f"intent '{intent}' template")
        line = node.start_mark.line + 1
        if not text.strip():
            raise self.r.error(line, f"intent '{intent}': empty template; write what the driver says")
        pieces, refs, pos = [], [], 0
        for m in _REF.finditer(text):
            pieces.append(text[pos : m.start()])
            refs.append(self.ref(intent, m[1], line))
            pos = m.end()
        pieces.append(text[pos:])
        if any("{" in p or "}" in p for p in pieces):
            raise self.r.error(line, f"intent '{intent}': unbalanced brace in '{text}'; slots are written {{name}} or {{name:type}}")
        names = [n for n, _ in refs]
        if len(set(names)) != len(names):
            raise self.r.error(line, f"intent '{intent}': a slot name repeats in '{text}'; name them apart, e.g. {{low:temperature}} {{high:temperature}}")
        clash = set(names) & set(fixed)
        if clash:
            raise self.r.error(line, f"intent '{intent}': slot '{clash.pop()}' is both in the text and fixed; keep one")
        lang = S.language("".join(pieces))
        try:
            lits = [self.vocab.ids(p) for p in pieces]
        except ValueError as e:
            fix = "remove it" if e.args[0] in SPECIAL else "use words from tokens.json, or retrain with it"
            raise self.r.error(line, f"intent '{intent}': {_cannot_emit(*e.args)}; {fix}") from None
        choices, vocab_sets = [], []
        for name, st in refs:
            forms = st.forms(lang)
            if not forms:
                raise self.r.error(line, f"intent '{intent}': slot '{name}' has no {'Mandarin' if lang == 'zh' else 'English'} forms for '{text}'; add some to its values")
            opts = []
            for value, form in forms:
                try:
                    opts.append((value, self.vocab.ids(form), form))
                except ValueError as e:
                    fix = ("list the values it can say with `values: [...]` in a slots: entry"
                           if st.kind in S.NUMBER_TYPES else "drop that form from the slot's values")
                    raise self.r.error(line, f"intent '{intent}': slot '{name}' value {value!r} is said '{form}': "
                                       f"{_cannot_emit(*e.args)}; {fix}") from None
            choices.append(opts)
            vocab_sets.append(frozenset(t for _, ids, _ in opts for t in ids))
        total = 1
        for c in choices:
            total *= len(c)
        if len(self.out) + total > MAX_EXPANSIONS:
            raise self.r.error(line, f"intent '{intent}': over {MAX_EXPANSIONS} expansions; narrow the slot ranges")
        for combo in itertools.product(*choices):
            ids, slots, spans = list(lits[0]), dict(fixed), {}
            for (name, _), (value, vids, _), lit, words in zip(refs, combo, lits[1:], vocab_sets):
                spans[name] = (len(ids), len(ids) + len(vids), words)
                ids += list(vids) + list(lit)
                slots[name] = value
            text = tokens_to_text([self.vocab.tokens[i] for i in ids])
            self.add(Expansion(intent, tuple(ids), slots, text, line, answer, spans))

    def ref(self, intent: str, body: str, line: int):
        name, _, kind = body.partition(":")
        name, kind = name.strip(), (kind.strip() or name.strip())
        if not _NAME.match(name) or not _NAME.match(kind):
            raise self.r.error(line, f"intent '{intent}': bad slot reference '{{{body}}}'; write {{name}} or {{name:type}}")
        st = self.types.get(kind) or _builtin(kind)
        if st is None:
            if kind in ("number", "enum"):
                raise self.r.error(line, f"intent '{intent}': a '{kind}' slot needs a definition; add it under slots: with its range or values")
            raise self.r.error(line, f"intent '{intent}': unknown slot type '{kind}' in '{{{body}}}'; define it under slots: "
                               f"or use a built-in ({', '.join(t for t in S.SLOT_TYPES if t not in ('number', 'enum'))})")
        return name, st

    def add(self, e: Expansion) -> None:
        if not e.ids:
            raise self.r.error(e.line, f"intent '{e.intent}': a template that says nothing")
        old = self.seen.get(e.ids)
        if old is None:
            self.seen[e.ids] = e
            self.out.append(e)
        elif (old.intent, old.slots) != (e.intent, e.slots):
            raise self.r.error(e.line, f"'{e.text}' means {e.intent} {e.slots} here and {old.intent} {old.slots} on line "
                               f"{old.line}; say them differently or drop one")


def load_spec(path: str, tokens: list) -> Spec:
    """Read, validate and expand a grammar file against the model's tokens."""
    path = str(path)
    r = _Reader(path)
    try:
        with open_regular(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise GrammarError(f"{path}:1: cannot read the grammar: {e}") from None
    root = r.compose(text)
    if root is None:
        raise GrammarError(f"{path}:1: empty grammar file; see docs/GRAMMAR.md")
    top = {k: (kn, v) for k, kn, v in r.mapping(root, "the grammar")}
    for k, (kn, _) in top.items():
        if k not in TOP_KEYS:
            raise r.error(kn, f"unknown key '{k}' (known: {', '.join(sorted(TOP_KEYS))})")
    spec = Spec(path, [])
    if "version" in top and r.number(top["version"][1], "version", int) != 1:
        raise r.error(top["version"][1], "unsupported grammar version; this runtime reads version 1")
    if "threshold" in top:
        spec.threshold = float(r.number(top["threshold"][1], "threshold"))
        if not 0.0 <= spec.threshold <= 1.0:
            raise r.error(top["threshold"][1], f"threshold {spec.threshold} must be between 0 and 1")
    if "calibration" in top:
        cal = {k: (kn, float(r.number(v, f"calibration {k}"))) for k, kn, v in r.mapping(top["calibration"][1], "calibration")}
        for k, (kn, value) in cal.items():
            if k not in ("scale", "shift"):
                raise r.error(kn, f"calibration: unknown key '{k}' (known: scale, shift)")
            if not -100.0 < value < 100.0 or (k == "scale" and value <= 0):
                raise r.error(kn, f"calibration {k} {value} is out of range (scale in (0, 100), shift in (-100, 100))")
        spec.calibration = (cal.get("scale", (None, 1.0))[1], cal.get("shift", (None, 0.0))[1])
    if "costs" in top:
        for k, kn, v in r.mapping(top["costs"][1], "costs"):
            if k not in ("insertion", "deletion"):
                raise r.error(kn, f"costs: unknown key '{k}' (known: insertion, deletion)")
            c = float(r.number(v, f"costs {k}"))
            if not 0.0 < c < 100.0:
                raise r.error(v, f"costs {k} must be above 0 and below 100 (nats)")
            setattr(spec, k, c)
    if "slots" in top:
        for name, kn, v in r.mapping(top["slots"][1], "slots"):
            if not _NAME.match(name):
                raise r.error(kn, f"bad slot name '{name}'; use letters, digits and _")
            spec.slot_types[name] = _slot_type(r, name, v)
    if "intents" not in top:
        raise r.error(root, "no intents: add an `intents:` section (see docs/GRAMMAR.md)")
    spec.vocab = TokenIndex(tokens)
    ex = _Expander(r, spec.vocab, spec.slot_types)
    for section, answer in (("intents", False), ("answers", True)):
        if section not in top:
            continue
        kn, node = top[section]
        if (isinstance(node, yaml.ScalarNode) and node.tag.endswith("null")) or (
                section == "intents" and isinstance(node, yaml.MappingNode) and not node.value):
            # `intents: {}` loaded, and rejected every utterance
            raise r.error(kn, f"'{section}' is empty; list intents under it")
        for intent, ikn, inode in r.mapping(node, section):
            if not _NAME.match(intent):
                raise r.error(ikn, f"bad intent name '{intent}'; use letters, digits and _")
            if not isinstance(inode, yaml.SequenceNode) or not inode.value:
                raise r.error(ikn, f"empty intent '{intent}': list at least one template under it (`- 打开空调`)")
            for tnode in inode.value:
                ex.template(intent, tnode, answer)
    spec.expansions = ex.out
    return spec
