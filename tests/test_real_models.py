"""Both real models vs llama.cpp on the default prompts (docs/metrics.md; README: Real models).

F32 copies (every tensor dequantized, F32 KV cache on both sides): exactness — per-position
cosine ≥ 0.99999, top-1 100 %, and identical 32-token greedy continuations.
As shipped (quantized, llama.cpp's default F16 KV cache, engine float mode): llama.cpp multiplies
quantized weights by Q8-quantized activations, so the float engine sits at a measured distance.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import needs_llamacpp, real_model_path
from crossval.compare import cosine_rows, first_divergence
from crossval.prompts import load_set, render

pytestmark = [pytest.mark.real_model, needs_llamacpp]

MODELS = ["smollm2", "gemma3-270m"]
PROMPTS = load_set("default")
STEPS = 32
N_CTX = 1280


def _run(path, kv_type: str, mode: str = "float"):
    """Each prompt through both engines as `crossval run` takes it: one prefill with every
    position's logits, then STEPS greedy steps from the same cache (greedy_compare_pass)."""
    from crossval.backends.base import greedy_compare_pass
    from crossval.backends.engine import EngineBackend
    from crossval.backends.llamacpp import LlamaCppBackend

    rows = {}
    with EngineBackend(path, n_ctx=N_CTX, kv_type=kv_type, mode=mode) as eng, \
            LlamaCppBackend(path, n_ctx=N_CTX, threads=2, kv_type=kv_type) as ref:
        tmpl = eng.engine.gguf.get("tokenizer.chat_template")
        for p in PROMPTS:
            ids = ref.tokenize(render(p, tmpl), add_bos=True, parse_special=p.is_chat)
            want = greedy_compare_pass(ref, ids, STEPS, None)
            got = eng.compare_pass(ids, STEPS)
            cos = cosine_rows(got.prompt_logits, want.prompt_logits)
            rows[p.id] = dict(
                n=len(ids),
                cos=cos,
                top1=float(np.mean(got.prompt_logits.argmax(-1) == want.prompt_logits.argmax(-1))),
                div=first_divergence(want.tokens, got.tokens),
            )
            print(f"{path.name} {p.id:13s} n={len(ids):4d} min_cos={cos.min():.7f} top1={rows[p.id]['top1']:.3f} first_div={rows[p.id]['div']}")
    return rows


@pytest.fixture(scope="module")
def f32_results():
    from crossval.models import cache_dir
    from engine.convert import cached_float_copy

    return {m: _run(cached_float_copy(real_model_path(m), cache_dir() / "float", "f32"), "f32") for m in MODELS}


@pytest.fixture(scope="module")
def quant_results():
    return {m: _run(real_model_path(m), "f16") for m in MODELS}


def test_long_prompt_crosses_gemma3_window(f32_results):
    assert f32_results["gemma3-270m"]["long"]["n"] > 600 > 512
    assert f32_results["smollm2"]["long"]["n"] > 600


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("prompt", [p.id for p in PROMPTS])
def test_f32_copy_matches_llamacpp_exactly(f32_results, model, prompt):
    r = f32_results[model][prompt]
    assert r["cos"].min() >= 0.99999, f"min cosine {r['cos'].min():.7f} at position {r['cos'].argmin()}"
    assert r["top1"] == 1.0
    assert r["div"] is None, f"greedy continuation diverged at step {r['div']}"


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("prompt", [p.id for p in PROMPTS])
def test_quantized_float_mode_within_measured_envelope(quant_results, model, prompt):
    """Float mode on the shipped quantized files. Measured (2026-11-23): per-prompt min cosine
    0.980–0.9997 (below 0.99 only at 1–2 positions of smollm2's long and multilingual prompts and
    gemma3's long one — chaotic positions: q8 mode and an F32 cache each have their own), top-1
    ≥ 0.90. Asserted: top-1 ≥ 90 %; at most max(1, 1 %) of the positions below cosine 0.99; none
    below 0.95."""
    r = quant_results[model][prompt]
    cos = r["cos"]
    assert r["top1"] >= 0.90
    low = int(np.sum(cos < 0.99))
    assert low <= max(1, int(np.ceil(0.01 * len(cos)))), f"{low} of {len(cos)} positions below cosine 0.99"
    assert cos.min() >= 0.95, f"min cosine {cos.min():.5f} at position {cos.argmin()}"
