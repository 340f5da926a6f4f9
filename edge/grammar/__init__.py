"""In-car command understanding: a YAML grammar of intents and typed slots (docs/GRAMMAR.md),
matched against the Paraformer's own CIF positions and decoder posteriors.

    g = Grammar.load("models/demo/grammar.yaml", tokens)
    m = g.match(log_probs)   # Recognizer.decode_features(feats)[1], or the streaming final's rows
    m.as_dict()              # {"intent", "slots", "confidence", "rejected", "text"}
"""

from edge.grammar.spec import GrammarError

__all__ = ["Grammar", "GrammarError", "Match"]


def __getattr__(name):  # lazy, so `python -m edge.grammar.decode --bench` runs decode only once
    if name in ("Grammar", "Match"):
        from edge.grammar import decode

        return getattr(decode, name)
    raise AttributeError(f"module 'edge.grammar' has no attribute '{name}'")
