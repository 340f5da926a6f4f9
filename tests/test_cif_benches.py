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


def test_lead_noise_goes_before_the_command_only():
    """`with_trailing(before=...)`: that many seconds of silence (clean) or of car noise at the
    file's noise level go before the command; the evaluator's default call is unchanged."""
    from paraedge_tools.recipe.augment import car_noise
    from paraedge_tools.recipe.evaluate import with_trailing

    x = np.sin(np.arange(8000) / 5.0).astype(np.float32)
    y = with_trailing(x, None, np.random.default_rng(0), 0.0, 0.5)
    assert len(y) == 16000 and not y[:8000].any() and np.array_equal(y[8000:], x)
    level = np.sqrt(np.mean(x**2) / (1 + 10 ** 0.5))
    rng = np.random.default_rng(1)
    tail = car_noise(16000, rng) * level
    head = car_noise(4800, rng) * level
    y = with_trailing(x, 5.0, np.random.default_rng(1), 1.0, 0.3)
    np.testing.assert_allclose(y, np.concatenate([head, x, tail]), rtol=1e-6, atol=1e-7)
    plain = with_trailing(x, 5.0, np.random.default_rng(1))  # the evaluator's call: only the trailing second
    np.testing.assert_allclose(plain, np.concatenate([x, tail]), rtol=1e-6, atol=1e-7)


def sample_commands(tmp_path, **extra) -> list[dict]:
    """Manifest rows for the first two shipped samples' commands (cut at their start), as WAVs in tmp_path."""
    import json

    from edge.asr.audio import load_audio, write_wav

    rows = []
    for s in json.load(open(os.path.join(SAMPLES, "samples.json"), encoding="utf-8"))[:2]:
        x = load_audio(os.path.join(SAMPLES, s["file"]))[0][int(s["command_start_s"] * 16000):]
        path = str(tmp_path / s["file"])
        write_wav(path, x)
        rows.append({"path": path, "text": s["command"], "lang": s["lang"], **extra})
    return rows


def test_lead_noise_bench_decodes_the_commands(tmp_path):
    """bench/lead_noise.py on the shipped samples' commands (cut at their start): with no lead it
    decodes them as the runtime does (all right, offline and streaming); bad arguments are one line.
    The evaluator's lead column decodes the same audio with LEAD_S more before each command."""
    import json
    import subprocess
    import sys

    from edge.asr.audio import load_audio

    rows = sample_commands(tmp_path, snr=10)
    with open(tmp_path / "test_snr10.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    from edge.asr.recognizer import Recognizer
    from paraedge_tools.recipe.evaluate import LEAD_S, lead_decodes

    rec = Recognizer(DEMO, "ref")  # the evaluator's last column hears LEAD_S more, offline and streaming alike
    for r, pair in zip(rows, lead_decodes(rec, rows, LEAD_S, tuple(rec.config.chunk_size))):
        want = len(load_audio(r["path"])[0]) / 16000 + LEAD_S
        assert [res.timings["audio_s"] for res in pair] == pytest.approx([want, want], abs=1e-3)
    out = bench("lead_noise").measure(DEMO, str(tmp_path), ["test_snr10"], [0.0, 0.6])
    assert [(r[2], r[3]) for r in out] == [(0.0, 2), (0.6, 2)]
    assert out[0][4:] == (1.0, 1.0, 1.0)
    assert all(0.0 <= v <= 1.0 for r in out for v in r[4:])
    for args, needle in ((["--leads", "abc"], "--leads"), (["--leads", "-1"], "[0, 10]"), (["--sets", "test_x"], "no test set")):
        p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "lead_noise.py"), "--corpus", str(tmp_path), *args],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_wake_pause_bench_goes_through_the_wake_gate(tmp_path):
    """bench/wake_pause.py: the shipped "okay nabu", a pause, a shipped sample's command, through the
    daemon's pipeline; each is woken, and the daemon's final (from 0.3 s before the first speech)
    is right at the samples' own pause. Bad arguments are one line."""
    import json
    import subprocess
    import sys

    rows = sample_commands(tmp_path)
    mod = bench("wake_pause")
    assert len(mod.wake_word()) < 1.3 * 16000  # the wake word alone, not the command after it
    out = mod.measure(DEMO, rows, [0.35])
    assert [(p, lead, woken) for p, lead, woken, _ in out] == [(0.35, None, 2), (0.35, 0.3, 2)]
    assert out[1][3] == 2
    with open(tmp_path / "test_clean.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    for args, needle in ((["--pauses", "x"], "--pauses"), (["--pauses", "9"], "[0, 4]"), (["--limit", "0"], "--limit"),
                         (["--sets", "test_x"], "no test set")):
        p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "wake_pause.py"), "--corpus", str(tmp_path), *args],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr, p.stderr
