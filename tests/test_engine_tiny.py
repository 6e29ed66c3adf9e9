"""Engine logits vs llama.cpp logits on tiny synthetic models of every supported arch."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from gguf import GGMLQuantizationType

from conftest import needs_llamacpp
from crossval.compare import cosine_rows
from engine.generate import Engine

PROMPT = "the cat sat on the mat and the dog ran in it. a cat, a dog!"


def _ref(path, kv_type="f32"):
    from crossval.backends.llamacpp import LlamaCppBackend

    return LlamaCppBackend(path, n_ctx=128, kv_type=kv_type)


@needs_llamacpp
@pytest.mark.parametrize("name", ["llama", "gemma", "gemma2", "gemma3"])
def test_teacher_forced_logits_match_llamacpp(tiny_model, name):
    path = tiny_model(name)
    with _ref(path) as ref:
        ids = ref.tokenize(PROMPT, add_bos=True)
        assert len(ids) > 20  # longer than the sliding windows of the gemma2/3 fixtures
        want = ref.logits(ids)
    got = Engine(path, n_ctx=128).logits(ids)
    assert got.dtype == np.float32 and got.shape == want.shape
    cos = cosine_rows(got, want)
    assert cos.min() >= 0.99999, f"min cosine {cos.min()} at position {cos.argmin()}"
    assert (got.argmax(-1) == want.argmax(-1)).all()


@needs_llamacpp
@pytest.mark.parametrize("name", ["gemma2", "gemma3"])
def test_sliding_window_is_exercised(tiny_model, name):
    """Without the window mask the engine must disagree: proves the fixture tests the window."""
    path = tiny_model(name)
    with _ref(path) as ref:
        ids = ref.tokenize(PROMPT, add_bos=True)
        want = ref.logits(ids)
    eng = Engine(path, n_ctx=128)
    eng.model.cfg = dataclasses.replace(eng.config, swa_layers=(False,) * eng.config.n_layer)
    cos = cosine_rows(eng.logits(ids), want)
    assert cos.min() < 0.9999


@pytest.mark.parametrize("name", ["llama", "gemma3"])
@pytest.mark.parametrize("kv_type", ["f32", "f16"])
def test_prefill_then_decode_equals_teacher_forced(tiny_model, name, kv_type):
    eng = Engine(tiny_model(name), n_ctx=64, kv_type=kv_type)
    ids = list(range(259, 259 + 20))
    full = eng.logits(ids)
    eng.reset()
    rows = [eng.prefill(ids[:7], all_logits=True)]
    rows += [eng.decode_step(t)[None] for t in ids[7:]]
    step = np.concatenate(rows)
    # batched vs one-by-one differ only in summation order (and gemma's fp16 GELU rounding)
    assert cosine_rows(step, full).min() >= (0.99999 if kv_type == "f32" else 0.9999)
    assert (step.argmax(-1) == full.argmax(-1)).all()
    assert eng.n_past == len(ids)


@needs_llamacpp
@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_greedy_generation_matches_llamacpp(tiny_model, name):
    path = tiny_model(name)
    with _ref(path) as ref:
        ids = ref.tokenize("the cat", add_bos=True)
        want, _ = ref.generate(ids, 24)
    got = Engine(path, n_ctx=128).generate(ids, 24).tokens
    assert got == want


def test_taps_report_every_layer_stage(tiny_model):
    seen = []
    eng = Engine(tiny_model("gemma3"), n_ctx=32, tap=lambda il, stage, x: seen.append((il, stage, x.shape)))
    eng.logits([1, 300, 301])
    n_layer = eng.config.n_layer
    for il in range(n_layer):
        for stage in ("kqv_out", "ffn_inp", "ffn_out", "l_out"):
            assert any(s[0] == il and s[1] == stage for s in seen), (il, stage)
    assert (-1, "result_norm", (3, eng.config.n_embd)) in seen


def test_tap_sees_a_perturbation(tiny_model):
    """A tap can localise a change: scaling one layer's output shows from that layer on."""
    ids = [1, 300, 301, 302]
    base = {}
    Engine(tiny_model("llama"), n_ctx=32, tap=lambda il, st, x: base.setdefault((il, st), x.copy())).logits(ids)
    eng = Engine(tiny_model("llama"), n_ctx=32)
    wo = eng.model.w["blk.1.attn_output.weight"]
    eng.model.w._cache["blk.1.attn_output.weight"] = wo * 1.5
    moved = {}
    eng.tap = lambda il, st, x: moved.setdefault((il, st), x.copy())
    eng.logits(ids)
    assert np.array_equal(base[(0, "l_out")], moved[(0, "l_out")])
    assert not np.allclose(base[(1, "ffn_inp")], moved[(1, "ffn_inp")])


def test_context_overflow_is_an_error(tiny_model):
    from engine.kv_cache import KVCacheFull

    eng = Engine(tiny_model("llama"), n_ctx=8)
    with pytest.raises(KVCacheFull):
        eng.logits(list(range(260, 270)))


@needs_llamacpp
@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_float_copy_of_quantized_model(tmp_path, dtype):
    """A Q8_0 model's F32/F16 copy: same metadata, tensors equal to the dequantized source, and
    llama.cpp on the copy agrees with the engine on the original (F32) to float precision."""
    from engine.convert import write_float_copy
    from engine.gguf_model import open_gguf
    from tiny_models import write_tiny_model

    src = write_tiny_model(tmp_path / "q8.gguf", "llama", weight_type=GGMLQuantizationType.Q8_0)
    dst = write_float_copy(src, tmp_path / f"copy.{dtype}.gguf", dtype)
    a, b = open_gguf(src), open_gguf(dst)
    assert {k for k in a.metadata if k != "general.file_type"} == {k for k in b.metadata if k != "general.file_type"}
    assert b.metadata["general.file_type"] == {"f32": 0, "f16": 1}[dtype]
    for name in a.tensors:
        want = a.dequantize(name)
        if dtype == "f16" and want.ndim >= 2:
            want = want.astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(b.dequantize(name), want)
    if dtype == "f32":
        with _ref(dst) as ref:
            ids = ref.tokenize(PROMPT, add_bos=True)
            want = ref.logits(ids)
        assert cosine_rows(Engine(src, n_ctx=128).logits(ids), want).min() >= 0.99999


def test_generate_cli_uses_engine_tokenizer_only(tiny_model, tmp_path):
    """`crossval generate` needs no llama.cpp: it runs with the reference library unreachable."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "LLAMA_CPP_LIB_PATH": str(tmp_path / "none")}
    r = subprocess.run([sys.executable, "-m", "crossval.cli", "generate", "--model", str(tiny_model("llama")), "--prompt", "the cat",
                        "--steps", "4", "--json"], capture_output=True, text=True, env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["prompt_ids"][0] == 1 and len(out["tokens"]) == 4


def test_round_bf16_is_nearest_even():
    """round_bf16 against the closed form: keep the top 16 bits when the dropped half is below
    0x8000, add one unit above it, and at exactly 0x8000 round to the even top half."""
    from engine.ops import round_bf16

    rng = np.random.default_rng(0)
    u = rng.integers(0, 2**31 - 2**23, 20000, dtype=np.uint64).astype(np.uint32)  # finite, positive
    u[:4] = [0x3F808000, 0x3F818000, 0x3F807FFF, 0x3F808001]  # ties (to even: down, up) and neighbours
    x = np.concatenate([u, u | np.uint32(0x80000000)]).view(np.float32)  # and their negatives
    bits = x.view(np.uint32)
    top, low = bits >> 16, bits & 0xFFFF
    up = (low > 0x8000) | ((low == 0x8000) & (top & 1 == 1))
    expect = ((top + up.astype(np.uint32)) << 16).view(np.float32)
    np.testing.assert_array_equal(round_bf16(x), expect)
    assert round_bf16(np.float32([1.00390625]))[0] == np.float32(1.0)  # 1 + 2^-8: a tie, to even
