"""The families users bring (qwen2, qwen3, qwen3moe, phi3, olmo2, granite, smollm3) on their synthetic
models (crossval/synthetic_families.py) against llama.cpp: float mode with an F32 cache, and faithful
mode on llama.cpp's own Q4_K_M and Q8_0 requantizations, every default prompt, 32 greedy steps."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import needs_llamacpp
from crossval import receipts
from crossval.compare import cosine_rows
from crossval.synthetic_families import FAMILY_MODELS

NAMES = list(FAMILY_MODELS)


def _run(tmp_path, models: list[str], *args: str) -> list[dict]:
    """One `crossval run` of the models on the default prompts → the receipts (one per model × prompt)."""
    out = tmp_path / "runs"
    r = subprocess.run([sys.executable, "-m", "crossval.cli", "run", "--models", ",".join(models), "--steps", "32", "--out", str(out),
                        "--json", *args], capture_output=True, text=True, timeout=900)  # fmt: skip
    assert r.stdout, r.stderr[-2000:]
    summary = json.loads(r.stdout)
    recs = [receipts.read_valid(out / summary["run_id"] / x["file"]) for x in summary["receipts"]]
    assert len(recs) == 8 * len(models) and r.returncode == 0, [(x["prompt"]["id"], x["verdict"]["failures"]) for x in recs]
    return recs


@needs_llamacpp
@pytest.mark.parametrize("name", NAMES)
def test_float_mode_matches_llamacpp_on_every_default_prompt(tmp_path, name):
    """F32 weights, F32 KV cache on both sides: every position's logits within cosine 0.99999 of
    llama.cpp's and the same 32 greedy tokens."""
    recs = _run(tmp_path, [name], "--mode", "float", "--kv-type", "f32")
    for rec in recs:
        p = rec["parity"]
        print(f"{name} {rec['prompt']['id']}: min cos {p['cosine_similarity']:.8f} max|d| {p['max_abs_diff']:.2e}")
        assert rec["model"]["arch"] == FAMILY_MODELS[name]["arch"]
        assert p["status"] == "ok" and p["cosine_similarity"] >= 0.99999, rec["prompt"]["id"]
        assert p["exact_match_rate"] == 1.0 and p["steps_compared"] == 32, rec["prompt"]["id"]


@needs_llamacpp
@pytest.mark.parametrize("name", NAMES)
def test_faithful_mode_is_llamacpp_bit_for_bit(tmp_path, name):
    """llama.cpp's quantizer's Q4_K_M and Q8_0 (its per-tensor type choices: Q6_K, Q5_K, F32 routers…),
    F16 cache: faithful mode's logits are llama.cpp's (max |Δlogit| 0), the greedy runs identical,
    no fallback type, the strict profile."""
    from crossval.matrix import variant

    recs = _run(tmp_path, [str(variant(name, q)) for q in ("Q4_K_M", "Q8_0")], "--mode", "faithful", "--kv-type", "f16")
    for rec in recs:
        p = rec["parity"]
        print(f"{rec['model']['name']} {rec['prompt']['id']}: max|d| {p['max_abs_diff']:.2e} exact {p['exact_match_rate']}")
        assert rec["backends"]["engine"]["fallback_types"] == [] and rec["thresholds"]["profile"] == "faithful"
        assert p["max_abs_diff"] == 0.0 and p["exact_match_rate"] == 1.0 and p["steps_compared"] == 32, rec["prompt"]["id"]


def test_unsupported_architecture_is_one_line_exit_2(tmp_path):
    from gguf import GGUFWriter

    from crossval.synthetic_families import FAMILY_MODELS as _  # noqa: F401 — the module imports cleanly

    path = tmp_path / "sc2.gguf"
    w = GGUFWriter(path, "starcoder2")
    w.add_block_count(1)
    w.add_embedding_length(8)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    r = subprocess.run([sys.executable, "-m", "crossval.cli", "run", "--model", str(path), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "'starcoder2'" in r.stderr and "qwen3moe" in r.stderr and "smollm3" in r.stderr and "Traceback" not in r.stderr


# Each quirk changes the logits: switched off, the engine departs from itself (so the llama.cpp
# comparisons above exercise it). Engine-only, a few tokens.
QUIRKS = {
    "qwen2-tiny": lambda m: _layers(m, qkv_bias=(None, None, None)),
    "qwen3-tiny": lambda m: setattr(m, "qk_norm", 0),
    "phi3-tiny": lambda m: setattr(m, "_rope_factors", lambda n_ctx: None),  # long-rope factors off
    "olmo2-tiny": lambda m: _layers(m, attn_post_norm=None, ffn_post_norm=None),
    "granite-tiny": lambda m: setattr(m, "cfg", dataclasses.replace(m.cfg, residual_scale=0.0)),
    "smollm3-tiny": lambda m: _layers(m, rope=True),
    "qwen3moe-tiny": lambda m: setattr(m, "cfg", dataclasses.replace(m.cfg, n_expert_used=1)),
}  # fmt: skip


def _layers(m, **change):
    m.layers = [dataclasses.replace(L, **change) for L in m.layers]


@pytest.mark.parametrize("name", NAMES)
def test_each_quirk_is_exercised(name):
    from crossval.models import resolve_model
    from engine.generate import Engine

    path = resolve_model(name)
    ids = list(range(300, 340))
    want = Engine(path, n_ctx=64).logits(ids)
    eng = Engine(path, n_ctx=64)
    QUIRKS[name](eng.model)
    assert cosine_rows(eng.logits(ids), want).min() < 0.9999


@needs_llamacpp
@pytest.mark.parametrize("name", NAMES)
def test_chat_template_renders_as_llama_cpp_python(name):
    """The family's template (from the GGUF) through our renderer and llama-cpp-python's
    Jinja2ChatFormatter: the same text for the default chat prompt and a multi-turn chat."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from crossval.models import resolve_model
    from crossval.prompts import load_set
    from crossval.run import _special_texts
    from engine.gguf_model import open_gguf
    from engine.tokenizer.chat import render

    g = open_gguf(resolve_model(name))
    tmpl = g.get("tokenizer.chat_template")
    bos, eos = _special_texts(g)
    chats = [list(p.messages) for p in load_set("default") if p.is_chat]
    chats.append([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"},
                  {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye?"}])  # fmt: skip
    for msgs in chats:
        ours = render(tmpl, msgs, bos_token=bos, eos_token=eos)
        theirs = Jinja2ChatFormatter(template=tmpl, eos_token=eos, bos_token=bos)(messages=msgs).prompt
        assert ours == theirs and msgs[-1]["content"] in ours


@needs_llamacpp
def test_phi3_takes_the_long_rope_factors_past_the_original_context():
    """phi3's rope factors (llama-model.cpp get_rope_factors): with a context longer than
    rope.scaling.original_context_length (4096) llama.cpp switches to rope_factors_long; so do we."""
    from crossval.backends.llamacpp import LlamaCppBackend
    from crossval.models import resolve_model
    from engine.generate import Engine

    path = resolve_model("phi3-tiny")
    text = "Once upon a time, in a village at the edge of a great forest, there lived a cat."
    for n_ctx, factors in ((512, "rope_factors_short.weight"), (8192, "rope_factors_long.weight")):
        with LlamaCppBackend(path, n_ctx=n_ctx, kv_type="f32") as ref:
            ids = ref.tokenize(text, add_bos=True)
            want = ref.logits(ids)
        eng = Engine(path, n_ctx=n_ctx)
        assert eng.model._rope_factors(n_ctx) == factors
        assert cosine_rows(eng.logits(ids), want).min() >= 0.99999, n_ctx


@pytest.mark.parametrize("name", NAMES)
def test_one_layer_description_drives_both_decode_paths(name):
    """Faithful mode decodes a token with every layer in C (cv_layer_decode, configured from the
    family's layer descriptions; qwen3moe's routed FFN in moe_decode.c) and, with a tap attached,
    op by op in numpy over the native kernels: the same floats."""
    from crossval.matrix import variant
    from engine.generate import Engine

    eng = Engine(variant(name, "Q8_0"), n_ctx=64, kv_type="f16", mode="faithful")
    ids = [1, 50, 60, 70, 80, 90, 100]
    t = int(eng.prefill(ids).argmax())
    in_c = eng.decode_step(t)
    assert eng.model.w._decoder is not None
    eng.truncate(len(ids))
    eng.tap = lambda *a: None
    np.testing.assert_array_equal(eng.decode_step(t), in_c)


def test_moe_threads_split_rows_never_sums():
    """qwen3moe in faithful mode: two threads give the same floats as one (routing, expert batches
    and the native kernels' row split do not change any sum)."""
    from crossval.matrix import variant
    from engine.generate import Engine

    path = variant("qwen3moe-tiny", "Q4_K_M")
    ids = list(range(300, 340))
    one = Engine(path, n_ctx=64, kv_type="f16", mode="faithful").logits(ids)
    two = Engine(path, n_ctx=64, kv_type="f16", mode="faithful", threads=2).logits(ids)
    np.testing.assert_array_equal(one, two)
