"""Per-tensor `.scale` tensors (GGUFs converted from NVIDIA NVFP4 checkpoints carry one beside each
matrix: the checkpoint's scale_2) against llama.cpp. llama-model.cpp's generic pass loads `<w>.scale`
for every weight type — shape {1}, {n_expert} beside a 3-D expert tensor, `output.scale` only beside
an NVFP4 output.weight — and `.input_scale` tensors it leaves unused; llama-graph.cpp multiplies the
matmul output by the scale right after the matmul (build_lora_mm, build_lora_mm_id: expert e's rows ·
s[e]) where the architecture's graph passes one: q, k, v and o everywhere, the dense FFN in llama and
qwen3, the experts in qwen3moe, not the FFN of gemma*/qwen2/phi3/olmo2/granite/smollm3.

Tiny models written with scales ≠ 1 (every expert its own) beside every matrix, F32 and made NVFP4 by
llama.cpp's quantizer (`--tensor-type .=nvfp4` over Q8_0, as crossval matrix makes NVFP4: the 1-D
scales stay F32): faithful mode's logits are llama.cpp's to the bit over a greedy run — the prompt's
batch through the numpy path, every decode step through the C layer step — and float mode passes its
profile. Without the scales (the engine before them) none of these runs matches."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from conftest import needs_llamacpp
from tiny_models import QUANTIZE_NVFP4
from crossval import receipts
from engine import kernels as K

pytestmark = [pytest.mark.skipif(not K.available(), reason=K.load_error() or ""), needs_llamacpp]

DENSE = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
EXPERTS = ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")


def _scales(n_layer: int, mats: tuple[str, ...], seed: int, n_expert: int = 0, output: bool = False) -> dict[str, np.ndarray]:
    """`.scale` tensors for every layer's `mats` (one value in 0.3–1.8; experts' one per expert, 0.35,
    0.55 … 1.75 shuffled), `output.scale` if asked, and `.input_scale` tensors llama.cpp loads and leaves unused."""
    rng = np.random.default_rng(seed)
    out = {}
    for il in range(n_layer):
        for m in mats:
            n = n_expert if m in EXPERTS else 1
            out[f"blk.{il}.{m}.scale"] = rng.permutation(np.linspace(0.35, 1.75, n)) if n > 1 else rng.uniform(0.3, 1.8, 1)
            out[f"blk.{il}.{m}.input_scale"] = np.full(n, 0.01)
    if output:
        out["output.scale"], out["output.input_scale"] = np.array([0.43]), np.array([0.01])
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


def _quantize_nvfp4(src, dst):
    q = subprocess.run([sys.executable, "-c", QUANTIZE_NVFP4, str(src), str(dst)], capture_output=True, text=True, timeout=300)
    assert q.returncode == 0, q.stderr[-2000:]
    return dst


def _run(tmp_path, model, mode: str, kv: str, steps: int) -> list[dict]:
    out = tmp_path / f"runs-{mode}"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "cat", "text": "the cat sat on the mat and the dog ran"}) + "\n")
    r = subprocess.run([sys.executable, "-m", "crossval.cli", "run", "--model", str(model), "--mode", mode, "--kv-type", kv,
                        "--prompt-file", str(prompts), "--steps", str(steps), "--n-ctx", "64", "--out", str(out), "--json"],
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.stdout, r.stderr[-2000:]
    summary = json.loads(r.stdout)
    return [receipts.read_valid(out / summary["run_id"] / x["file"]) for x in summary["receipts"]]


def _model(tmp_path, case: str):
    """case → (GGUF path, its scale tensors)."""
    from tiny_models import write_tiny_model

    if case in ("llama-NVFP4", "llama-F32"):
        nvfp4 = case == "llama-NVFP4"
        sc = _scales(2, DENSE, seed=1, output=nvfp4)
        f32 = write_tiny_model(tmp_path / "f32.gguf", arch="llama", n_embd=128, n_head=4, n_head_kv=1, n_ff=256, extra_tensors=sc)
        return (_quantize_nvfp4(f32, tmp_path / "nvfp4.gguf") if nvfp4 else f32), sc
    if case == "gemma3-F32":  # gemma3.cpp passes NULL for the FFN's scales: written, loaded, unused
        sc = _scales(7, DENSE, seed=2)
        return write_tiny_model(tmp_path / "g3.gguf", arch="gemma3", n_layer=7, head_dim=32, sliding_window=5, extra_tensors=sc), sc
    from crossval.synthetic_families import FAMILY_MODELS, write_family

    name, quant = case.rsplit("-", 1)
    spec = FAMILY_MODELS[name + "-tiny"]
    mats = ("attn_q", "attn_k", "attn_v", "attn_output", *(EXPERTS if spec.get("n_expert") else DENSE[4:]))
    sc = _scales(spec["n_layer"], mats, seed=3, n_expert=spec.get("n_expert", 0), output=not spec["tied"] and quant == "NVFP4")
    f32 = write_family(tmp_path / f"{name}.gguf", name + "-tiny", extra_tensors=sc)
    return (_quantize_nvfp4(f32, tmp_path / f"{name}.nvfp4.gguf") if quant == "NVFP4" else f32), sc


# llama (dense FFN scaled, NVFP4 output head), the same in F32 (llama.cpp scales every type), gemma3
# (FFN scales unused), qwen2 (scale before its q/k/v biases; FFN scales unused), qwen3moe (per-expert)
CASES = ["llama-NVFP4", "llama-F32", "gemma3-F32", "qwen2-F32", "qwen3moe-NVFP4"]


@pytest.mark.parametrize("case", CASES)
def test_faithful_scaled_model_is_llamacpp_bit_for_bit(tmp_path, case):
    from engine.gguf_model import open_gguf

    model, sc = _model(tmp_path, case)
    g = open_gguf(model)
    for name, values in sc.items():  # the quantizer keeps every 1-D scale F32, values unchanged
        assert g.tensor(name).type == Q.F32 and np.array_equal(g.dequantize(name).reshape(-1), values), name
    if case.endswith("NVFP4"):
        assert {t.type for n, t in g.tensors.items() if len(t.ne) >= 2 and "gate_inp" not in n} == {Q.NVFP4}
    for rec in _run(tmp_path, model, "faithful", "f16", 8):
        p = rec["parity"]
        print(f"{case}: max|d| {p['max_abs_diff']:.2e} exact {p['exact_match_rate']}")
        profile = "exact" if case.endswith("F32") else "faithful"  # thresholds.select: float weights → exact
        assert rec["backends"]["engine"]["fallback_types"] == [] and rec["thresholds"]["profile"] == profile
        assert p["max_abs_diff"] == 0.0 and p["exact_match_rate"] == 1.0 and p["steps_compared"] == 8, p
        assert rec["verdict"]["passed"], rec["verdict"]["failures"]


@pytest.mark.parametrize("case", ["llama-NVFP4", "qwen3moe-NVFP4"])
def test_float_mode_scaled_model_passes_its_profile(tmp_path, case):
    """Float mode (no activation rounding) passes the quantized-float profile, every position within
    cosine 0.999 of llama.cpp (measured: 0.99986 llama, 0.99985 qwen3moe; without the scales 0.915, 0.628)."""
    model, _ = _model(tmp_path, case)
    for rec in _run(tmp_path, model, "float", "f32", 8):
        p = rec["parity"]
        print(f"{case}: min cos {p['cosine_similarity']:.8f} max|d| {p['max_abs_diff']:.2e} exact {p['exact_match_rate']}")
        assert rec["thresholds"]["profile"] == "quantized-float" and p["steps_compared"] == 8, p
        assert p["cosine_similarity"] >= 0.999, p
        assert rec["verdict"]["passed"], rec["verdict"]["failures"]


@pytest.mark.parametrize("case", ["llama-NVFP4", "qwen3moe-NVFP4"])
def test_c_decode_step_scales_as_the_numpy_path(tmp_path, case):
    """The runs above decode through the C layer step: it is built for these models, and its logits
    equal the numpy path's (the same ops, scales included) step for step."""
    from engine.generate import Engine

    model, sc = _model(tmp_path, case)
    outs = []
    for native_step in (True, False):
        e = Engine(model, n_ctx=32, kv_type="f16", mode="faithful")
        if not native_step:
            e.model.w.decoder = lambda *a, **k: None
        e.prefill(list(range(5, 12)))
        outs.append(np.stack([e.decode_step(t) for t in (20, 21, 22)]))
        assert (getattr(e.model.w, "_decoder", None) is not None) == native_step
        assert len(e.model.w.scales) == sum(1 for n in sc if n.endswith(".scale"))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_a_scale_of_the_wrong_size_is_a_clear_error(tmp_path):
    """llama.cpp refuses a `.scale` whose shape is not {1} (or {n_expert}); so does the engine, in one line."""
    from tiny_models import write_tiny_model

    from engine.generate import Engine
    from engine.gguf_model import GGUFError

    path = write_tiny_model(tmp_path / "bad.gguf", extra_tensors={"blk.1.ffn_up.scale": np.array([0.5, 0.5])})
    with pytest.raises(GGUFError, match=r"blk\.1\.ffn_up\.scale has 2 values, llama\.cpp loads 1"):
        Engine(path, n_ctx=16)
