"""Synthetic models for architectures no real GGUF is reachable for (BitNet b1.58; the families of
crossval/synthetic_families.py).

`write_bitnet` writes a `bitnet`-arch GGUF in F32 the way llama.cpp's converter lays one out:
ternary {−1, 0, +1} matrices with a one-element `.scale` tensor each (llama.cpp's build_lora_mm
multiplies the matmul result by it), attn_sub_norm / ffn_sub_norm, tied output. llama.cpp's
quantizer then makes the TQ1_0 / TQ2_0 variants (crossval/matrix.py); ternary rows survive those
exactly. The vocabulary is a minimal SentencePiece one both tokenizers load.

Named synthetic models resolve like real ones (crossval.models.resolve_model) and are written
into <cache>/synthetic/ on first use: `bitnet-tiny` for tests, `bitnet-100m` for the matrix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFWriter, TokenType

from crossval.synthetic_families import FAMILY_MODELS

SYNTHETIC = {
    "bitnet-tiny": dict(n_layer=2, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_vocab=320),
    # ≈ 100M parameters: 12 × (4·768² + 3·768·2048) + 32000·768
    "bitnet-100m": dict(n_layer=12, n_embd=768, n_head=12, n_head_kv=4, n_ff=2048, n_vocab=32000),
}
SYNTHETIC_NAMES = (*SYNTHETIC, *FAMILY_MODELS)  # every name synthetic_path writes


def spm_vocab(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """unk/bos/eos, the 256 byte tokens llama.cpp's SPM loader looks up, then words."""
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
    words = [
        "▁", "▁the", "▁a", "▁cat", "▁dog", "▁sat", "▁on", "▁mat", "▁and", "▁ran", "e", "t", "a", "o", "n",
        "s", "h", "r", "d", "l", "c", "u", "m", "▁in", "▁is", "▁it", ".", ",", "!", "?", "▁of", "▁to",
    ]  # fmt: skip
    i = 0
    while len(toks) < n_vocab:
        toks.append(words[i] if i < len(words) else f"▁w{i}")
        types.append(TokenType.NORMAL)
        i += 1
    scores = [0.0] * 259 + [-float(k) for k in range(n_vocab - 259)]
    return toks, scores, [int(t) for t in types]


def add_spm_tokenizer(w: GGUFWriter, n_vocab: int) -> None:
    toks, scores, types = spm_vocab(n_vocab)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(toks)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)


def write_bitnet(path: str | Path, *, n_layer: int, n_embd: int, n_head: int, n_head_kv: int, n_ff: int, n_vocab: int,
                 seed: int = 0) -> Path:  # fmt: skip
    rng = np.random.default_rng(seed)
    head_dim = n_embd // n_head
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    w = GGUFWriter(tmp, "bitnet")
    w.add_block_count(n_layer)
    w.add_context_length(2048)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(head_dim)
    w.add_file_type(0)
    add_spm_tokenizer(w, n_vocab)

    def ternary(n_out, n_in):
        return rng.integers(-1, 2, size=(n_out, n_in)).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    def lin(name, n_out, n_in):
        w.add_tensor(name + ".weight", ternary(n_out, n_in))
        # per-tensor scale ≈ 1/sqrt(2/3 · n_in) keeps activations near unit size
        w.add_tensor(name + ".scale", np.array([np.sqrt(1.5 / n_in) * (1 + 0.1 * rng.standard_normal())], dtype=np.float32))

    # the tied output reads token_embd too: 2.4/sqrt(n_embd) gives logits of std ≈ 2.4 (not one-hot softmaxes)
    w.add_tensor("token_embd.weight", (rng.standard_normal((n_vocab, n_embd)) * 2.4 / np.sqrt(n_embd)).astype(np.float32))
    for il in range(n_layer):
        p = f"blk.{il}."
        w.add_tensor(p + "attn_norm.weight", norm(n_embd))
        lin(p + "attn_q", n_head * head_dim, n_embd)
        lin(p + "attn_k", n_head_kv * head_dim, n_embd)
        lin(p + "attn_v", n_head_kv * head_dim, n_embd)
        w.add_tensor(p + "attn_sub_norm.weight", norm(n_embd))
        lin(p + "attn_output", n_embd, n_head * head_dim)
        w.add_tensor(p + "ffn_norm.weight", norm(n_embd))
        lin(p + "ffn_gate", n_ff, n_embd)
        lin(p + "ffn_up", n_ff, n_embd)
        w.add_tensor(p + "ffn_sub_norm.weight", norm(n_ff))
        lin(p + "ffn_down", n_embd, n_ff)
    w.add_tensor("output_norm.weight", norm(n_embd))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.replace(path)
    return path


def synthetic_path(name: str) -> Path:
    """The named synthetic model in the cache, written on first use (the families' models under a
    name carrying the hash of their spec: crossval/synthetic_families.py)."""
    from crossval.models import cache_dir
    from crossval.synthetic_families import spec_hash, write_family

    if name in FAMILY_MODELS:
        p = cache_dir() / "synthetic" / f"{name}-{spec_hash(name)}.F32.gguf"
        write = lambda: write_family(p, name)  # noqa: E731
    else:
        p = cache_dir() / "synthetic" / f"{name}.F32.gguf"
        write = lambda: write_bitnet(p, **SYNTHETIC[name])  # noqa: E731
    if not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
        write()
    return p
