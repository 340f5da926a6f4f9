"""bench/tail_threshold.py and bench/int8_near_ties.py's own parts on the demo model: the sweep decodes
through the runtime's own CIF and decoder (at the model's tail it is `transcribe`, token for token),
its arguments and the test sets both benches read are checked, and the margin is fp32's best minus
second-best log-posterior."""

import argparse
import dataclasses
import importlib.util
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "models", "demo")
SAMPLES = os.path.join(DEMO, "samples")


def bench(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "bench", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_sweep_decodes_as_transcribe_does_at_the_models_own_tail():
    from edge.asr.audio import load_audio
    from edge.asr.recognizer import Recognizer

    b = bench("tail_threshold")
    rec, low = Recognizer(DEMO), Recognizer(DEMO)
    own = rec.cif.tail_threshold
    assert own == 0.45
    low.cif = dataclasses.replace(low.cif, tail_threshold=0.05)
    for name in sorted(os.listdir(SAMPLES)):
        if not name.endswith(".wav"):
            continue
        x = load_audio(os.path.join(SAMPLES, name))[0]
        ids = b.decode_at(rec, x, [own, 0.05])
        assert ids[own] == rec.transcribe(x).token_ids, name
        # a lower tail changes only whether the closing spike's remainder fires again (read as </s>)
        assert ids[0.05] == low.transcribe(x).token_ids, name


@pytest.mark.parametrize("text", ["0,0.45", "0.2,1", "abc", ""])
def test_tail_values_are_checked(text):
    with pytest.raises(argparse.ArgumentTypeError, match="--tails"):
        bench("tail_threshold").tails_arg(text)


def test_margin_is_the_gap_between_the_two_best_tokens():
    lp = np.log(np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]], np.float32))
    np.testing.assert_allclose(bench("int8_near_ties").margins(lp), [np.log(2.0), np.log(3.0)], rtol=1e-6)


def test_the_benches_sets_are_checked_against_the_corpus(tmp_path):
    from paraedge_tools.recipe.evaluate import chosen_sets

    with pytest.raises(ValueError, match="holds no test sets; build the corpus"):
        chosen_sets(str(tmp_path))
    for name in ("test_clean", "test_sam_clean"):
        (tmp_path / f"{name}.jsonl").write_text("")
    assert chosen_sets(str(tmp_path)) == ["test_clean", "test_sam_clean"]
    assert chosen_sets(str(tmp_path), "test_sam_clean,") == ["test_sam_clean"]
    with pytest.raises(ValueError, match="no test set test_pico_clean; it has test_clean, test_sam_clean"):
        chosen_sets(str(tmp_path), "test_sam_clean,test_pico_clean")
