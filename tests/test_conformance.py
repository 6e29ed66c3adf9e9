"""The backend contract (crossval/backends/base.py, docs/backends.md), checked for every backend.

1. Each registered backend is a `Backend` with declared capabilities and the contract's methods.
2. On a tiny model, each answers every question its capabilities promise, consistently: the
   prompt logits of a compare pass are its teacher-forced logits, its free run is its `generate`,
   forced rows are the logits along the forced tokens, and what it does not promise raises
   `Unsupported`.
3. `crossval run` works in both directions (`--engine X --reference Y` and the swap) for each pair
   that makes sense, and a forced failure (a perturbed layer of the tiny model) is localised to that
   layer whichever side the perturbation sits on.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import needs_llamacpp, real_model_path
from crossval import receipts
from crossval.backends import BACKENDS, backend_class, make_backend
from crossval.backends.base import LAYER_STAGES, Backend, BackendSettings, Capabilities, Unsupported
from tiny_models import TINY_MODELS

EXTERNAL = f"external:{sys.executable} -m crossval.serve"


def _has(module: str) -> bool:
    try:
        __import__(module)
    except Exception:
        return False
    return True


# every backend, on the tiny llama model — except gemmacpp, whose kit converts only Gemma-3-270M:
# it answers on the real model (built into the cache on first use, like tests/test_gemmacpp.py)
SPECS = [
    pytest.param("engine", "llama", id="engine"),
    pytest.param("llamacpp", "llama", id="llamacpp", marks=needs_llamacpp),
    pytest.param(EXTERNAL, "llama", id="external"),
    pytest.param("bitnetcpp", "llama", id="bitnetcpp", marks=pytest.mark.bitnetcpp),  # the fork runs llama GGUFs too
    pytest.param("transformers", "llama", id="transformers",
                 marks=pytest.mark.skipif(not _has("transformers") or not _has("torch"), reason="triangulate extra not installed")),
    pytest.param("gemmacpp", "gemma3-270m", id="gemmacpp", marks=[pytest.mark.gemmacpp, pytest.mark.real_model]),
]  # fmt: skip
# how close two of a backend's own answers to the same question must be, relative to the largest
# logit: gemma.cpp's prefill and decode paths round differently to bfloat16
TOLERANCE = {"gemmacpp": 0.05}


def test_every_registered_backend_implements_the_contract():
    for name in BACKENDS:
        cls = backend_class(f"{name}:x" if name == "external" else name)
        assert issubclass(cls, Backend), name
        assert isinstance(cls.capabilities, Capabilities), name
        for method in ("from_settings", "logits", "generate", "provenance"):
            assert getattr(cls, method) is not getattr(Backend, method), f"{name} lacks {method}"
        if cls.capabilities.capture:
            assert cls.capture_rows is not Backend.capture_rows, name


def _close(a, b, what, tol):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    assert np.abs(a - b).max() <= tol * max(1.0, np.abs(b).max()), (what, float(np.abs(a - b).max()))


@pytest.mark.parametrize("spec, model", SPECS)
def test_backend_answers_what_it_promises(spec, model, tiny_model):
    from engine.gguf_model import open_gguf, read_config
    from engine.sampling import SamplingParams

    if model in TINY_MODELS:
        path = tiny_model(model)
    else:
        path = real_model_path(model)
    from engine.tokenizer import Tokenizer

    g = open_gguf(path)
    n_vocab = read_config(g).n_vocab
    tok = Tokenizer.from_gguf(g)
    ids = tok.encode("the cat sat on the mat", add_special=True, parse_special=False)[:6]
    forced = tok.encode(" and the dog ran", add_special=False, parse_special=False)[:3]
    assert len(ids) == 6 and len(forced) == 3
    tol = TOLERANCE.get(spec, 1e-3)
    b = make_backend(spec, path, BackendSettings(n_ctx=128, timeout=300))
    try:
        b.wait_loaded()
        caps = b.capabilities
        assert caps.logits and caps.generate and isinstance(b.load_s, float)
        if caps.tokenize:
            toks = b.tokenize("the cat sat", add_bos=True, parse_special=False)
            assert toks and all(isinstance(t, int) for t in toks)
            assert isinstance(b.detokenize(toks[1:]), str)
        else:
            with pytest.raises(Unsupported):
                b.tokenize("the cat sat")
        L = b.logits(ids)
        assert L.shape == (len(ids), n_vocab) and L.dtype == np.float32 and np.isfinite(L).all()
        g = b.generate(ids, 4)
        assert len(g.tokens) == 4 and g.logits.shape == (4, n_vocab)
        assert g.tokens == [int(np.argmax(r)) for r in g.logits]
        _close(g.logits[0], L[-1], "generate's first step vs teacher-forced last position", tol)
        cp = b.compare_pass(ids, 4, forced=forced[:2])
        _close(cp.prompt_logits, L, "compare_pass prompt logits", tol)
        assert cp.tokens == g.tokens
        _close(cp.step_logits, g.logits, "compare_pass step logits", tol)
        along = b.logits(ids + forced[:2])[len(ids) :]
        _close(cp.forced_logits, along, "forced rows", tol)
        assert set(cp.seconds) >= {"prefill_s", "generate_s"}
        b.start_compare_pass(ids, 3)
        cp3 = b.finish_compare_pass()
        assert cp3.tokens == g.tokens[:3]
        free = b.compare_pass(ids, 4)
        cont = forced
        _close(b.forced_suffix(ids, cont, free=free), along, "forced_suffix after its own pass", tol)
        _close(b.forced_suffix(ids, cont), along, "forced_suffix alone", tol)
        own = list(free.tokens)  # along its own free run: the rows a teacher-forced pass gives there
        _close(b.forced_suffix(ids, own, free=free), b.logits(ids + own[:-1])[len(ids) :], "forced_suffix along its own run", tol)
        assert b.forced_suffix(ids, [9]) is None
        if caps.capture:
            rows = b.capture_rows(ids, 3)
            assert rows and all(re.fullmatch(r"(kqv_out|ffn_inp|l_out)-\d+", k) for k in rows), sorted(rows)
            assert {k.rsplit("-", 1)[0] for k in rows} == set(LAYER_STAGES)
            assert {int(k.rsplit("-", 1)[1]) for k in rows} == set(range(read_config(open_gguf(path)).n_layer))
        else:
            with pytest.raises(Unsupported):
                b.capture_rows(ids, 3)
        if not caps.sampling:
            with pytest.raises(Unsupported):
                b.compare_pass(ids, 2, sampling=SamplingParams(temperature=0.8, seed=1))
        prov = b.provenance()
        assert prov["name"] and "version" in prov and prov["capabilities"] == caps.to_dict()
    finally:
        b.close()
    b.close()  # closing twice is harmless
    proc = getattr(b, "_proc", None)  # a backend answered by a child process leaves none behind
    assert proc is None or proc.poll() is not None, f"{spec}: child {proc.pid} still running after close()"


# --- crossval run, both directions ------------------------------------------------------------------
PAIRS = [("engine", "llamacpp"), ("engine", EXTERNAL), ("llamacpp", EXTERNAL)]
PAIRS += [(r, e) for e, r in PAIRS]


def crossval(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "crossval.cli", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ), timeout=timeout)  # fmt: skip


def _prompt(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"id": "p0", "text": "the cat sat on the mat"}) + "\n")
    return f


@needs_llamacpp
@pytest.mark.parametrize("engine, reference", PAIRS, ids=[f"{e.split()[0]}-vs-{r.split()[0]}" for e, r in PAIRS])
def test_run_in_both_directions(tmp_path, tiny_model, engine, reference):
    out = tmp_path / "out"
    r = crossval("run", "--model", tiny_model("llama"), "--prompt-file", _prompt(tmp_path), "--steps", 4, "--n-ctx", 128,
                 "--engine", engine, "--reference", reference, "--out", out, "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr + r.stdout
    (rec,) = [receipts.read_valid(p) for p in out.rglob("*__p0.json")]
    assert rec["parity"]["status"] == "ok" and rec["parity"]["cosine_similarity"] >= 0.9999
    assert rec["parity"]["exact_match_rate"] == 1.0
    assert rec["backends"]["engine"]["capabilities"]["logits"] and rec["backends"]["reference"]["capabilities"]["logits"]


@needs_llamacpp
@pytest.mark.parametrize("name, layer", [("llama", 1), ("gemma3", 4)])
def test_swapped_direction_localises_the_perturbed_layer(tmp_path, tiny_model, name, layer):
    """--engine llamacpp --reference engine with the engine's layer perturbed: the comparison fails
    and both sides' per-layer captures name that layer (the path that once ended in a TypeError)."""
    out = tmp_path / "out"
    r = crossval("run", "--model", tiny_model(name), "--prompt-file", _prompt(tmp_path), "--steps", 8, "--n-ctx", 128,
                 "--engine", "llamacpp", "--reference", "engine", "--perturb-layer", layer, "--perturb-scale", 3.0, "--out", out)  # fmt: skip
    assert r.returncode == 1, r.stderr + r.stdout
    (rec,) = [receipts.read_valid(p) for p in out.rglob("*__p0.json")]
    loc = rec["parity"]["localisation"]
    assert loc["first"]["layer"] == layer and loc["first"]["stage"] == "l_out", loc["first"]
    assert max(x["nmse"] for x in loc["layers"] if x["layer"] < layer) < 1e-6
    assert "Traceback" not in r.stderr
