"""Tiny synthetic GGUFs written with gguf.GGUFWriter: small random weights that llama.cpp loads.

The vocabulary is a minimal SentencePiece one (unk/bos/eos, the 256 byte tokens llama.cpp's SPM
loader looks up, then a few words), so both engines can run them; the weights are random normal
with a fixed seed. Dimensions are small but keep every code path: GQA, several layers, sliding
window layers (gemma2/gemma3), q/k norms (gemma3), soft-capping (gemma2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from crossval.synthetic import add_spm_tokenizer

N_VOCAB = 320


def _quantize(arr: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """gguf-py's quantizer where it has one; libggml's reference quantizer otherwise (K-quants)."""
    from gguf.quants import quantize

    try:
        return quantize(arr, qtype)
    except NotImplementedError:
        from crossval import libggml

        return libggml.from_float_ref(arr, qtype).reshape(arr.shape[0], -1)


def write_tiny_model(path: str | Path, arch: str = "llama", *, n_layer: int = 2, n_embd: int = 64, n_head: int = 4,
                     n_head_kv: int = 2, head_dim: int | None = None, n_ff: int = 128, sliding_window: int = 4,
                     seed: int = 0, weight_type: GGMLQuantizationType = GGMLQuantizationType.F32,
                     extra_kv: dict | None = None, tensor_edit=None, extra_tensors: dict | None = None) -> Path:  # fmt: skip
    """Write a tiny `arch` model to path. tensor_edit(name, array) may return a replacement array;
    extra_tensors {name: float32 array} are written after the model's own (e.g. `.scale` tensors)."""
    rng = np.random.default_rng(seed)
    head_dim = head_dim or n_embd // n_head
    path = Path(path)
    w = GGUFWriter(path, arch)
    w.add_block_count(n_layer)
    w.add_context_length(256)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-6 if arch.startswith("gemma") else 1e-5)
    w.add_rope_freq_base(10000.0)
    if arch == "llama":
        w.add_rope_dimension_count(head_dim)
    if arch.startswith("gemma"):
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if arch in ("gemma2", "gemma3"):
        w.add_sliding_window(sliding_window)
    if arch == "gemma2":
        w.add_attn_logit_softcapping(50.0)
        w.add_final_logit_softcapping(30.0)
    w.add_file_type(0 if weight_type == GGMLQuantizationType.F32 else 1)
    add_spm_tokenizer(w, N_VOCAB)
    for k, v in (extra_kv or {}).items():
        w.add_key_value(k, v[0], v[1])

    def mat(n_out, n_in, scale=1.0):
        return (rng.standard_normal((n_out, n_in)) * scale / np.sqrt(n_in)).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    def add(name, arr):
        if tensor_edit is not None:
            new = tensor_edit(name, arr)
            arr = arr if new is None else new
        if arr.ndim >= 2 and weight_type != GGMLQuantizationType.F32:
            w.add_tensor(name, _quantize(arr, weight_type), raw_dtype=weight_type)
        else:
            w.add_tensor(name, arr)

    add("token_embd.weight", (rng.standard_normal((N_VOCAB, n_embd)) * (0.1 if arch.startswith("gemma") else 1.0)).astype(np.float32))
    for il in range(n_layer):
        p = f"blk.{il}."
        add(p + "attn_norm.weight", norm(n_embd))
        add(p + "attn_q.weight", mat(n_head * head_dim, n_embd))
        add(p + "attn_k.weight", mat(n_head_kv * head_dim, n_embd))
        add(p + "attn_v.weight", mat(n_head_kv * head_dim, n_embd))
        add(p + "attn_output.weight", mat(n_embd, n_head * head_dim))
        add(p + "ffn_norm.weight", norm(n_embd))
        add(p + "ffn_gate.weight", mat(n_ff, n_embd))
        add(p + "ffn_up.weight", mat(n_ff, n_embd))
        add(p + "ffn_down.weight", mat(n_embd, n_ff))
        if arch in ("gemma2", "gemma3"):
            add(p + "post_attention_norm.weight", norm(n_embd))
            add(p + "post_ffw_norm.weight", norm(n_embd))
        if arch == "gemma3":
            add(p + "attn_q_norm.weight", norm(head_dim))
            add(p + "attn_k_norm.weight", norm(head_dim))
    add("output_norm.weight", norm(n_embd))
    if arch == "llama":
        add("output.weight", mat(N_VOCAB, n_embd, 4.0))
    for name, arr in (extra_tensors or {}).items():
        w.add_tensor(name, np.asarray(arr, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# The fixture set the tests run (arch, kwargs): every arch, GQA, windows shorter than the prompts.
# llama.cpp's quantizer making every matrix NVFP4 over a Q8_0 file type, as `llama-quantize --tensor-type
# .=nvfp4 SRC DST Q8_0` does (it names no NVFP4 file type): `python -c QUANTIZE_NVFP4 SRC DST`
QUANTIZE_NVFP4 = """
import sys, llama_cpp
src, dst = sys.argv[1:]
p = llama_cpp.llama_model_quantize_default_params()
p.ftype, p.nthread = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, 1
tt = (llama_cpp.llama_model_tensor_override * 2)()
tt[0].pattern, tt[0].type = b".", llama_cpp.GGML_TYPE_NVFP4  # llama-quantize --tensor-type .=nvfp4
p.tt_overrides = tt
sys.exit(llama_cpp.llama_model_quantize(src.encode(), dst.encode(), p))
"""

TINY_MODELS = {
    "llama": dict(arch="llama", n_layer=2),
    "gemma": dict(arch="gemma", n_layer=2, n_head_kv=1, head_dim=32),
    "gemma2": dict(arch="gemma2", n_layer=4, head_dim=32, sliding_window=5),
    "gemma3": dict(arch="gemma3", n_layer=7, head_dim=32, sliding_window=5),
}
