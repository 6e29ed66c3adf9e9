"""`crossval envelope`: sampling configs × prompts × seeds on two backends, one envelope receipt."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import needs_llamacpp, real_model_path
from crossval import compare, receipts
from crossval.envelope import EnvelopeInputError, read_configs, read_prompts


def _envelope(tmp_path, *args, timeout=900):
    r = subprocess.run([sys.executable, "-m", "crossval.cli", "envelope", "--out", str(tmp_path / "env"), "--json", *args],
                       capture_output=True, text=True, timeout=timeout)  # fmt: skip
    return r, (json.loads(r.stdout) if r.stdout.strip() else None)


def test_distinct_n_closed_form():
    assert compare.distinct_n([[1, 2, 1, 2]], 1) == 0.5
    assert compare.distinct_n([[1, 2, 1, 2]], 2) == 2 / 3
    assert compare.distinct_n([[1]], 2) is None


def test_token_frequency_test_separates_same_from_different():
    rng = np.random.default_rng(0)
    p = np.array([0.5, 0.3, 0.2])
    a = [(0, int(t)) for t in rng.choice(3, 400, p=p)]
    b = [(0, int(t)) for t in rng.choice(3, 400, p=p)]
    c = [(0, int(t)) for t in rng.choice(3, 400, p=[0.2, 0.3, 0.5])]
    same, diff = compare.token_frequency_test(a, b), compare.token_frequency_test(a, c)
    assert same["p_value"] > 0.01 and diff["p_value"] < 1e-10
    assert same["dof"] == 2 and diff["js_divergence"] > same["js_divergence"]
    assert compare.token_frequency_test(a, a)["p_value"] == pytest.approx(1.0)
    # rare categories merge into one "other" per prompt instead of producing tiny expected counts
    rare = compare.token_frequency_test([(0, 1)] * 20 + [(0, 9)], [(0, 1)] * 20 + [(0, 8)])
    assert rare["categories"] == 2
    assert compare.welch_p_value([1.0, 2.0, 3.0], [1.5, 2.5, 2.0]) > 0.5
    assert compare.welch_p_value([1.0, 1.1, 0.9, 1.0], [5.0, 5.1, 4.9, 5.0]) < 1e-5


def test_bad_configs_and_prompts_files(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("name\ttemp\nx\t1\n")
    with pytest.raises(EnvelopeInputError, match="header"):
        read_configs(bad)
    bad.write_text("name\ttemperature\ttop_k\nx\tnope\t40\n")
    with pytest.raises(EnvelopeInputError, match="line 2"):
        read_configs(bad)
    bad.write_text("name\ttemperature\ttop_k\nx\t0\t40\n")
    with pytest.raises(EnvelopeInputError, match="out of range"):
        read_configs(bad)
    empty = tmp_path / "p.txt"
    empty.write_text("\n\n")
    with pytest.raises(EnvelopeInputError, match="no prompts"):
        read_prompts(empty)
    r, _ = _envelope(tmp_path, "--configs", str(bad), "--model", "x.gguf")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_bundled_configs_parse():
    from importlib.resources import files

    cfgs = read_configs(files("crossval") / "prompts" / "sampling_configs.tsv")
    assert {c["name"] for c in cfgs} >= {"k40_t1", "k20_t0.7"}
    assert len(read_prompts(files("crossval") / "prompts" / "sampling_prompts.txt")) >= 4


@needs_llamacpp
def test_envelope_shared_rng_on_a_float_model(tmp_path, tiny_model):
    """Float weights: engine and llama.cpp share the sampler chain and RNG, so the same seed gives
    the same sequence (gated at min_exact_sequence_rate)."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello world\nthe cat\n")
    r, rec = _envelope(tmp_path, "--model", str(tiny_model("llama")), "--prompts", str(prompts), "--seeds", "4", "--steps", "12")
    assert r.returncode == 0, r.stderr
    receipts.validate(rec)
    assert rec["rng"] == "shared" and rec["thresholds"]["min_exact_sequence_rate"] == 0.85
    for c in rec["configs"]:
        assert c["samples"] == 8 and c["exact_sequence_match_rate"] >= 0.85, c
        assert c["steps"] and all(s["n_engine"] == 8 for s in c["steps"])


@pytest.mark.real_model
@needs_llamacpp
def test_envelope_against_llamacpp_on_a_quantized_model(tmp_path):
    real_model_path("smollm2")
    r, rec = _envelope(tmp_path, "--model", "smollm2", "--only", "k40_t1,k20_t0.7", "--seeds", "4", "--steps", "8")
    receipts.validate(rec)
    assert rec["rng"] == "shared" and rec["thresholds"]["min_exact_sequence_rate"] == 0.0  # reported, not gated
    for c in rec["configs"]:
        print(f"  {c['name']}: exact {c['exact_sequence_match_rate']:.3f}, min p {c['min_p_value']}, "
              f"logprob {c['mean_logprob']}, distinct {c['distinct']}")
        assert 0 <= c["exact_sequence_match_rate"] <= 1 and c["quirks"] == []
    assert r.returncode == (0 if rec["verdict"]["passed"] else 1)


@pytest.mark.real_model
@pytest.mark.gemmacpp
def test_envelope_against_real_gemmacpp(tmp_path):
    """Independent RNGs: statistics only. At T = 1 engine and gemma.cpp must agree in
    distribution; at T = 0.7 the receipt names gemma.cpp's ignored temperature. Each of the 64
    samples is a gemma.cpp process loading 1 GB of f32 weights (minutes): CROSSVAL_GEMMACPP_LONG=1
    (nightly)."""
    from test_gemmacpp import _built

    if not os.environ.get("CROSSVAL_GEMMACPP_LONG"):
        pytest.skip("64 gemma.cpp samples take minutes: CROSSVAL_GEMMACPP_LONG=1 (nightly)")

    _built(True)
    r, rec = _envelope(tmp_path, "--model", "gemma3-270m", "--reference", "gemmacpp", "--only", "k40_t1,k20_t0.7",
                       "--seeds", "8", "--steps", "8")  # fmt: skip
    assert rec is not None, r.stderr
    receipts.validate(rec)
    assert rec["rng"] == "independent" and rec["backends"]["reference"]["name"] == "gemmacpp"
    by = {c["name"]: c for c in rec["configs"]}
    for c in by.values():
        print(f"  {c['name']}: min p {c['min_p_value']}, logprob {c['mean_logprob']}, distinct {c['distinct']}, "
              f"failures {c['failures']}")
        assert c["exact_sequence_match_rate"] is None and c["samples"] == 32
    assert by["k40_t1"]["passed"], by["k40_t1"]["failures"]
    assert [q["code"] for q in by["k20_t0.7"]["quirks"]] == ["reference_ignores_temperature"]
    assert not by["k20_t0.7"]["passed"] and r.returncode == 1
