"""Synthetic models of the families users bring (qwen2, qwen3, qwen3moe, phi3, olmo2, granite, smollm3).

No real weights of these are reachable here, so each is written with gguf.GGUFWriter the way
llama.cpp's converter lays the family out: its `general.architecture`, its real metadata keys
(granite's four multipliers, phi3's long-rope attn_factor and original context, qwen3moe's expert
counts), its tensor names and shapes (qwen2's q/k/v biases, phi3's fused attn_qkv and ffn_up,
qwen3's per-head and olmo2's full-width q/k norms, olmo2's post-norms, qwen3moe's 3-D expert
tensors and F32 router), random normal weights at the family's ratios (GQA, head dims 64 and 128,
q wider than n_embd for qwen3) and the family's tokenizer: the vocabulary of llama.cpp's own
tokenizer test file for it (ggml-vocab-*.gguf, `crossval models fetch llama-data`) — SPM phi-3
whole (32,064 tokens), the byte-level BPE ones (qwen2 pre-tokenizer for the qwens) cut to their
first `n_vocab` tokens with the merges among those, the family's special tokens appended — and
the family's chat template from llama.cpp's templates directory (olmo2: none ships there; the
Tülu-style turn markers OLMo-2-Instruct uses are written below).

Files are cached as <cache>/synthetic/<name>-<hash>.F32.gguf, the hash covering the spec, the
writer's version and the vocabulary file, so a changed spec writes a new file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, TokenType

WRITER_VERSION = 1

# realistic ratios at a tiny size: (n_embd, n_head, n_head_kv, head_dim) follow each family's small
# checkpoint's proportions (Qwen2.5-0.5B: 14/2 heads of 64; Qwen3-0.6B: q 2× n_embd, heads of 128;
# Phi-3.5-mini: MHA, 64; OLMo-2-1B: MHA, 64; Granite-3: 4:1 GQA of 64; SmolLM3: 4:1 GQA of 128)
FAMILY_MODELS: dict[str, dict] = {
    "qwen2-tiny": dict(arch="qwen2", vocab="qwen2", n_vocab=8192, n_layer=2, n_embd=256, n_head=4, n_head_kv=2, head_dim=64,
                       n_ff=768, rope_base=1000000.0, eps=1e-6, ctx=32768, tied=True, template="Qwen-Qwen2.5-7B-Instruct"),
    "qwen3-tiny": dict(arch="qwen3", vocab="qwen2", n_vocab=8192, n_layer=2, n_embd=256, n_head=4, n_head_kv=2, head_dim=128,
                       n_ff=768, rope_base=1000000.0, eps=1e-6, ctx=40960, tied=True, template="Qwen-Qwen3-0.6B",
                       specials=["<think>", "</think>", "<tool_call>", "</tool_call>"]),
    "qwen3moe-tiny": dict(arch="qwen3moe", vocab="qwen2", n_vocab=8192, n_layer=2, n_embd=256, n_head=4, n_head_kv=2,
                          head_dim=128, n_ff=768, n_expert=8, n_expert_used=2, n_ff_exp=256, rope_base=1000000.0, eps=1e-6,
                          ctx=40960, tied=False, template="Qwen-Qwen3-0.6B", specials=["<think>", "</think>", "<tool_call>", "</tool_call>"]),
    "phi3-tiny": dict(arch="phi3", vocab="phi-3", n_vocab=0, n_layer=2, n_embd=256, n_head=4, n_head_kv=4, head_dim=64, n_ff=512,
                      rope_base=10000.0, eps=1e-5, ctx=131072, ctx_orig=4096, tied=False, template="microsoft-Phi-3.5-mini-instruct"),
    "olmo2-tiny": dict(arch="olmo2", vocab="llama-bpe", pre="dbrx", n_vocab=8192, n_layer=2, n_embd=256, n_head=4, n_head_kv=4,
                       head_dim=64, n_ff=768, rope_base=500000.0, eps=1e-6, ctx=4096, tied=False, template=None,
                       specials=["<|pad|>"]),
    "granite-tiny": dict(arch="granite", vocab="refact", n_vocab=8192, n_layer=2, n_embd=256, n_head=4, n_head_kv=1, head_dim=64,
                         n_ff=768, rope_base=10000.0, eps=1e-5, ctx=4096, tied=True, template="ibm-granite-granite-3.3-2B-Instruct",
                         specials=["<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>", "<|tool_call|>"],
                         multipliers=dict(embedding_scale=12.0, residual_scale=0.22, attention_scale=0.015625, logit_scale=8.0)),
    "smollm3-tiny": dict(arch="smollm3", vocab="llama-bpe", n_vocab=8192, n_layer=4, n_embd=256, n_head=4, n_head_kv=1,
                         head_dim=128, n_ff=768, rope_base=5000000.0, eps=1e-6, ctx=65536, tied=True,
                         template="HuggingFaceTB-SmolLM3-3B", specials=["<|im_start|>", "<|im_end|>"]),
}  # fmt: skip

# OLMo-2-Instruct's turn markers (Tülu format); no OLMo template ships in llama.cpp's templates directory
OLMO2_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}{% endfor %}"
)


def _vocab_file(name: str) -> Path:
    from crossval.models import fetch_llama_data

    return fetch_llama_data() / "vocab" / f"ggml-vocab-{name}.gguf"


def _template(name: str | None) -> str:
    if name is None:
        return OLMO2_TEMPLATE
    from crossval.models import fetch_llama_data

    return (fetch_llama_data() / "templates" / f"{name}.jinja").read_text()


def spec_hash(name: str) -> str:
    spec = FAMILY_MODELS[name]
    h = hashlib.sha256(json.dumps([WRITER_VERSION, spec], sort_keys=True).encode())
    h.update(_vocab_file(spec["vocab"]).name.encode())
    h.update(str(_vocab_file(spec["vocab"]).stat().st_size).encode())
    return h.hexdigest()[:12]


def add_vocab(w: GGUFWriter, vocab: str, n_vocab: int, specials: list[str], pre: str | None) -> int:
    """The tokenizer.* keys of llama.cpp's ggml-vocab-<vocab>.gguf; a BPE vocabulary cut to its first
    n_vocab tokens (0: whole) plus its control tokens, the 256 byte symbols and `specials`. → size."""
    from engine.gguf_model import open_gguf
    from engine.tokenizer.unicode import bytes_to_unicode

    g = open_gguf(_vocab_file(vocab))
    toks = list(g.metadata["tokenizer.ggml.tokens"])
    types = np.asarray(g.metadata["tokenizer.ggml.token_type"]).astype(int)
    bpe = g.metadata["tokenizer.ggml.model"] == "gpt2"
    if n_vocab and bpe:
        index = {t: i for i, t in enumerate(toks)}
        keep = set(range(min(n_vocab, len(toks))))
        keep |= {i for i, t in enumerate(types) if t == TokenType.CONTROL}
        keep |= {index[c] for c in bytes_to_unicode().values() if c in index}
        old = sorted(keep)
    else:
        old = list(range(len(toks)))
    remap = {o: n for n, o in enumerate(old)}
    new_toks = [toks[o] for o in old]
    new_types = [int(types[o]) for o in old]
    have = set(new_toks)
    for s in specials:
        if s not in have:
            new_toks.append(s)
            new_types.append(int(TokenType.CONTROL))
            have.add(s)
    for k, v in g.metadata.items():
        if not k.startswith("tokenizer.") or k == "tokenizer.chat_template":
            continue
        if k == "tokenizer.ggml.tokens":
            w.add_token_list(new_toks)
        elif k == "tokenizer.ggml.token_type":
            w.add_token_types(new_types)
        elif k == "tokenizer.ggml.scores":
            sc = np.asarray(v)
            w.add_token_scores([float(sc[o]) for o in old] + [0.0] * (len(new_toks) - len(old)))
        elif k == "tokenizer.ggml.merges":
            merges = [m for m in v if all(p in have for p in m.split(" ", 1)) and m.replace(" ", "", 1) in have]
            w.add_token_merges(merges)
        elif k == "tokenizer.ggml.pre" and pre:
            w.add_tokenizer_pre(pre)
        elif k.endswith("_token_id"):
            if int(v) in remap:
                w.add_key_value(k, remap[int(v)], g.value_types[k])
        else:
            w.add_key_value(k, v, g.value_types[k])
    return len(new_toks)


def write_family(path: str | Path, name: str, seed: int = 0, extra_tensors: dict | None = None) -> Path:
    """Write the family model `name` to path; extra_tensors {name: float32 array} after its own (tests:
    NVFP4 checkpoints' `.scale` tensors)."""
    s = FAMILY_MODELS[name]
    arch, E, H, KV, D, F, L = s["arch"], s["n_embd"], s["n_head"], s["n_head_kv"], s["head_dim"], s["n_ff"], s["n_layer"]
    rng = np.random.default_rng(seed)
    path = Path(path)
    tmp = path.with_suffix(f".tmp{rng.integers(1 << 30)}")
    w = GGUFWriter(tmp, arch)
    w.add_name(name)
    w.add_block_count(L)
    w.add_context_length(s["ctx"])
    w.add_embedding_length(E)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_layer_norm_rms_eps(s["eps"])
    w.add_rope_freq_base(s["rope_base"])
    if D * H != E:
        w.add_key_length(D)
        w.add_value_length(D)
    w.add_rope_dimension_count(D)
    w.add_file_type(0)
    if arch == "qwen3moe":
        w.add_expert_count(s["n_expert"])
        w.add_expert_used_count(s["n_expert_used"])
        w.add_expert_feed_forward_length(s["n_ff_exp"])
    if arch == "phi3":  # Phi-3.5-mini's long-rope keys; its sliding_window key llama.cpp ignores (phi3.cpp)
        w.add_rope_scaling_attn_factors(1.1902380714238083)
        w.add_rope_scaling_orig_ctx_len(s["ctx_orig"])
        w.add_sliding_window(262144)
    if arch == "granite":
        m = s["multipliers"]
        w.add_embedding_scale(m["embedding_scale"])
        w.add_residual_scale(m["residual_scale"])
        w.add_attention_scale(m["attention_scale"])
        w.add_logit_scale(m["logit_scale"])
    n_vocab = add_vocab(w, s["vocab"], s["n_vocab"], s.get("specials", []), s.get("pre"))
    w.add_chat_template(_template(s["template"]))

    def mat(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale / np.sqrt(shape[-1])).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    nq, nk = H * D, KV * D
    # tied: token_embd is the LM head too, so its scale sets the logits' (std ≈ 3: no one-hot softmaxes)
    emb_scale = 3.0 if s["tied"] else np.sqrt(E) * 0.5
    w.add_tensor("token_embd.weight", mat(n_vocab, E, scale=emb_scale))
    if arch == "phi3":  # global (one per model); short factors ~1–3, long ones larger, as Phi-3.5's
        w.add_tensor("rope_factors_long.weight", np.sort(1.0 + 40.0 * rng.random(D // 2)).astype(np.float32))
        w.add_tensor("rope_factors_short.weight", np.sort(1.0 + 2.0 * rng.random(D // 2)).astype(np.float32))
    for il in range(L):
        p = f"blk.{il}."
        if arch != "olmo2":
            w.add_tensor(p + "attn_norm.weight", norm(E))
        if arch == "phi3":
            w.add_tensor(p + "attn_qkv.weight", mat(nq + 2 * nk, E))
        else:
            w.add_tensor(p + "attn_q.weight", mat(nq, E))
            w.add_tensor(p + "attn_k.weight", mat(nk, E))
            w.add_tensor(p + "attn_v.weight", mat(nk, E))
        if arch == "qwen2":
            for t, n in (("attn_q", nq), ("attn_k", nk), ("attn_v", nk)):
                w.add_tensor(p + t + ".bias", (0.5 * rng.standard_normal(n)).astype(np.float32))
        if arch in ("qwen3", "qwen3moe"):
            w.add_tensor(p + "attn_q_norm.weight", norm(D))
            w.add_tensor(p + "attn_k_norm.weight", norm(D))
        if arch == "olmo2":
            w.add_tensor(p + "attn_q_norm.weight", norm(nq))
            w.add_tensor(p + "attn_k_norm.weight", norm(nk))
        w.add_tensor(p + "attn_output.weight", mat(E, nq))
        if arch == "olmo2":
            w.add_tensor(p + "post_attention_norm.weight", norm(E))
            w.add_tensor(p + "post_ffw_norm.weight", norm(E))
        else:
            w.add_tensor(p + "ffn_norm.weight", norm(E))
        if arch == "qwen3moe":
            X, Fe = s["n_expert"], s["n_ff_exp"]
            w.add_tensor(p + "ffn_gate_inp.weight", mat(X, E, scale=2.0))
            w.add_tensor(p + "ffn_gate_exps.weight", mat(X, Fe, E))
            w.add_tensor(p + "ffn_up_exps.weight", mat(X, Fe, E))
            w.add_tensor(p + "ffn_down_exps.weight", mat(X, E, Fe))
        elif arch == "phi3":
            w.add_tensor(p + "ffn_up.weight", mat(2 * F, E))
            w.add_tensor(p + "ffn_down.weight", mat(E, F))
        else:
            w.add_tensor(p + "ffn_gate.weight", mat(F, E))
            w.add_tensor(p + "ffn_up.weight", mat(F, E))
            w.add_tensor(p + "ffn_down.weight", mat(E, F))
    w.add_tensor("output_norm.weight", norm(E))
    if not s["tied"]:
        w.add_tensor("output.weight", mat(n_vocab, E, scale=3.0))
    for t, arr in (extra_tensors or {}).items():
        w.add_tensor(t, np.asarray(arr, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.replace(path)
    return path
