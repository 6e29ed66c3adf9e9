"""Synthetic models for architectures no real GGUF is reachable for (BitNet b1.58; the families of
crossval/synthetic_families.py).

`write_bitnet` writes a BitNet GGUF in F32 for one of the three architectures bitnet.cpp's
llama.cpp fork knows, laid out as its converters lay them out:
- `bitnet` (1bitLLM; llama.cpp has it too): ternary {−1, 0, +1} matrices with a one-element
  `.scale` tensor each (build_lora_mm multiplies the matmul result by it);
- `bitnet-25` and `bitnet-b1.58` (the fork's build_bitnet_158, which has no `.scale` tensors):
  each matrix is ternary × one per-tensor scale, stored multiplied out;
all with attn_sub_norm / ffn_sub_norm and the output tied to token_embd. Every row length is a
multiple of 128, so bitnet.cpp's I2_S accepts them (crossval/bitnetcpp_kit.py quantizes with its
llama-quantize); llama.cpp's quantizer makes the TQ1_0 / TQ2_0 variants of `bitnet`
(crossval/matrix.py); ternary rows survive all three exactly. The vocabulary is a minimal
SentencePiece one every tokenizer loads.

Named synthetic models resolve like real ones (crossval.models.resolve_model) and are written into
<cache>/synthetic/ on first use: `<arch>-tiny` for tests, `<arch>-100m` for the matrix
(`bitnet-tiny`, `bitnet-25-tiny`, `bitnet-b1.58-tiny`, …); `NAME:I2_S` is bitnet.cpp's I2_S
quantization of NAME.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, TokenType

from crossval.synthetic_families import FAMILY_MODELS

BITNET_ARCHS = ("bitnet", "bitnet-25", "bitnet-b1.58")
_SIZES = {
    "tiny": dict(n_layer=2, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_vocab=320),
    # ≈ 100M parameters: 12 × (4·768² + 3·768·2048) + 32000·768
    "100m": dict(n_layer=12, n_embd=768, n_head=12, n_head_kv=4, n_ff=2048, n_vocab=32000),
}
# one seed per architecture, so the bitnet-25 and bitnet-b1.58 models (one graph in the fork) differ
SYNTHETIC = {f"{arch}-{size}": dict(dims, arch=arch, seed=seed) for seed, arch in enumerate(BITNET_ARCHS) for size, dims in _SIZES.items()}
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
                 seed: int = 0, arch: str = "bitnet") -> Path:  # fmt: skip
    if arch not in BITNET_ARCHS:
        raise ValueError(f"arch must be one of {', '.join(BITNET_ARCHS)}, not {arch!r}")
    rng = np.random.default_rng(seed)
    head_dim = n_embd // n_head
    path = Path(path)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    w = GGUFWriter(tmp, arch)
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
        t = ternary(n_out, n_in)
        # per-tensor scale ≈ 1/sqrt(2/3 · n_in) keeps activations near unit size
        s = np.array([np.sqrt(1.5 / n_in) * (1 + 0.1 * rng.standard_normal())], dtype=np.float32)
        if arch == "bitnet":
            w.add_tensor(name + ".weight", t)
            w.add_tensor(name + ".scale", s)
        else:  # no .scale tensors in build_bitnet_158: the scale lives in the weights
            w.add_tensor(name + ".weight", t * s[0])

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
    name carrying the hash of their spec: crossval/synthetic_families.py); `NAME:I2_S` is a BitNet
    model's I2_S copy made by bitnet.cpp's llama-quantize (the kit is built on first use)."""
    from crossval.models import cache_dir
    from crossval.synthetic_families import spec_hash, write_family

    base, _, quant = name.partition(":")
    if quant:
        if quant.upper() != "I2_S" or base not in SYNTHETIC:
            raise ValueError(f"{name}: the only quantization named this way is I2_S (bitnet.cpp's) of a BitNet model")
        from crossval.bitnetcpp_kit import quantize_i2s

        return quantize_i2s(synthetic_path(base))
    if name in FAMILY_MODELS:
        p = cache_dir() / "synthetic" / f"{name}-{spec_hash(name)}.F32.gguf"
        write = lambda: write_family(p, name)  # noqa: E731
    else:
        spec = SYNTHETIC[name]
        # keyed by the spec and the writer's source, so a changed generator never reuses an old file
        key = hashlib.sha256((repr(sorted(spec.items())) + inspect.getsource(write_bitnet)).encode()).hexdigest()[:12]
        p = cache_dir() / "synthetic" / f"{name}-{key}.F32.gguf"
        write = lambda: write_bitnet(p, **spec)  # noqa: E731
    if not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
        write()
    return p


def is_synthetic(name: str) -> bool:
    base, _, quant = name.partition(":")
    return base in SYNTHETIC and quant.upper() in ("", "I2_S")
