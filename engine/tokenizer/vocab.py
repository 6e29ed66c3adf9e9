"""The vocabulary as llama.cpp loads it from GGUF metadata (src/llama-vocab.cpp load()).

Token texts are kept as bytes (llama.cpp works on std::string bytes); text → id keeps the *last*
id of a duplicated text, as llama.cpp's token_to_id map does. Token types map to attributes;
special ids and add_bos/add_eos follow the metadata with llama.cpp's per-model defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from engine.gguf_model import GGUFFile

# llama.h llama_token_type → attribute bits (llama_token_attr)
ATTR_UNDEFINED, ATTR_UNKNOWN, ATTR_UNUSED, ATTR_NORMAL, ATTR_CONTROL, ATTR_USER_DEFINED, ATTR_BYTE = 0, 1, 2, 4, 8, 16, 32
ATTR_LSTRIP, ATTR_RSTRIP = 128, 256
_TYPE_TO_ATTR = {0: ATTR_UNDEFINED, 1: ATTR_NORMAL, 2: ATTR_UNKNOWN, 3: ATTR_CONTROL, 4: ATTR_USER_DEFINED, 5: ATTR_UNUSED, 6: ATTR_BYTE}


EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
             "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>")  # fmt: skip
CONTROL_LOOKING = EOT_TEXTS + (
    "<|eom_id|>", "<EOT>", "<MID>", "<PAD>", "<PRE>", "<REPO>", "<SUF>", "<eos>", "<fim-middle>", "<fim-pad>",
    "<fim-prefix>", "<fim-repo>", "<fim-suffix>", "<fim_middle>", "<fim_pad>", "<fim_prefix>", "<fim_suffix>",
    "<reponame>", "<turn|>", "<|calls|>", "<|call|>", "<|code_middle|>", "<|code_prefix|>", "<|code_suffix|>",
    "<|file_sep|>", "<|fim_middle|>", "<|fim_pad|>", "<|fim_prefix|>", "<|fim_repo|>", "<|fim_suffix|>", "<|flush|>",
    "<|middle|>", "<|prefix|>", "<|repo_name|>", "<|return|>", "<|suffix|>", "<|tool_response>", "<｜fim▁begin｜>",
    "<｜fim▁end｜>", "<｜fim▁hole｜>", "[EOS]", "[PAD]", "[e~[", "▁<MID>", "▁<PRE>", "▁<SUF>", "</s>",
)  # fmt: skip
# with one of these in the vocabulary, "</s>" is an ordinary token (llama-vocab.cpp, EOG clean-up)
NORMAL_S_MARKERS = ("<|tool_response>", "<|plamo:eos|>")


class TokenizerError(ValueError):
    pass


@dataclass
class Vocab:
    model: str  # "llama" (SPM) or "gpt2" (BPE)
    pre: str | None
    texts: list[bytes]
    scores: np.ndarray
    attrs: list[int]
    token_to_id: dict[bytes, int]
    bos: int | None
    eos: int | None
    eot: int | None
    unk: int | None
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool
    merges: dict[tuple[str, str], int] = field(default_factory=dict)
    ignore_merges: bool = False
    clean_spaces: bool = False
    special_ids: list[int] = field(default_factory=list)  # longest text first
    eom: int | None = None

    @property
    def n_tokens(self) -> int:
        return len(self.texts)

    @cached_property
    def score_list(self) -> list[float]:
        """The scores as Python floats (indexing the numpy array per bigram costs more than a merge)."""
        return self.scores.tolist()


def load_vocab(g: GGUFFile) -> Vocab:
    from engine.tokenizer.pretokenize import PRE_TYPES

    md = g.metadata
    model = md.get("tokenizer.ggml.model")
    if model is None or "tokenizer.ggml.tokens" not in md:
        raise TokenizerError(f"{g.path.name}: no tokenizer in metadata")
    if model not in ("llama", "gpt2"):
        raise TokenizerError(f"{g.path.name}: tokenizer model {model!r} is not supported (llama, gpt2)")
    texts = md["tokenizer.ggml.tokens"].raw()
    texts = [t if t else f"[EMPTY_{i}]".encode() for i, t in enumerate(texts)]
    n = len(texts)
    scores = md.get("tokenizer.ggml.scores", np.zeros(n, np.float32))
    types = md.get("tokenizer.ggml.token_type")
    for key, arr in (("scores", scores), ("token_type", types)):
        if arr is not None and (not isinstance(arr, np.ndarray) or len(arr) < n):
            raise TokenizerError(f"{g.path.name}: tokenizer.ggml.{key} is not a numeric array of at least {n} entries")
    scores = np.asarray(scores[:n], dtype=np.float32)
    attrs = [ATTR_NORMAL] * n if types is None else [_TYPE_TO_ATTR.get(int(t), ATTR_UNDEFINED) for t in types[:n].tolist()]
    token_to_id = {t: i for i, t in enumerate(texts)}
    pre = md.get("tokenizer.ggml.pre")

    def tok_id(key, default):
        v = md.get(key)
        v = default if v is None else int(v)
        return v if v is not None and 0 <= v < n else None

    if model == "llama":
        # SPM defaults (llama-vocab.cpp): bos 1, eos 2, unk 0, add_bos, add_space_prefix
        v = Vocab("llama", pre, texts, scores, attrs, token_to_id, tok_id("tokenizer.ggml.bos_token_id", 1),
                  tok_id("tokenizer.ggml.eos_token_id", 2), tok_id("tokenizer.ggml.eot_token_id", None),
                  tok_id("tokenizer.ggml.unknown_token_id", 0), True, False, True)  # fmt: skip
    else:
        p = pre or "default"
        if p not in PRE_TYPES:
            raise TokenizerError(f"{g.path.name}: pre-tokenizer {p!r} is not supported (supported: {', '.join(sorted(PRE_TYPES))})")
        _, ignore_merges, clean_spaces, add_bos = PRE_TYPES[p]
        merges = {}
        for rank, m in enumerate(md["tokenizer.ggml.merges"].tolist() if "tokenizer.ggml.merges" in md else []):
            pos = m.find(" ", 1)
            if pos != -1:
                merges.setdefault((m[:pos], m[pos + 1 :]), rank)
        # BPE defaults: bos/eos 11 (llama-vocab.cpp gpt2 branch)
        v = Vocab("gpt2", p, texts, scores, attrs, token_to_id, tok_id("tokenizer.ggml.bos_token_id", 11),
                  tok_id("tokenizer.ggml.eos_token_id", 11), tok_id("tokenizer.ggml.eot_token_id", None),
                  tok_id("tokenizer.ggml.unknown_token_id", None), add_bos, False, False, merges,
                  ignore_merges, clean_spaces)  # fmt: skip
    if "tokenizer.ggml.eom_token_id" in md:
        v.eom = tok_id("tokenizer.ggml.eom_token_id", None)
    if "tokenizer.ggml.add_bos_token" in md:
        v.add_bos = bool(md["tokenizer.ggml.add_bos_token"])
    if "tokenizer.ggml.add_eos_token" in md:
        v.add_eos = bool(md["tokenizer.ggml.add_eos_token"])
    if "tokenizer.ggml.add_space_prefix" in md:
        v.add_space_prefix = bool(md["tokenizer.ggml.add_space_prefix"])
    # control-looking tokens (EOT/EOM/EOG/FIM texts) are forced to CONTROL (llama-vocab.cpp load())
    for t in CONTROL_LOOKING:
        j = token_to_id.get(t.encode())
        if j is not None:
            v.attrs[j] |= ATTR_CONTROL
            if v.eot is None and t in EOT_TEXTS:
                v.eot = j
            if v.eom is None and t == "<|eom_id|>":
                v.eom = j
    if b"</s>" in token_to_id and any(m.encode() in token_to_id for m in NORMAL_S_MARKERS):
        v.attrs[token_to_id[b"</s>"]] = ATTR_NORMAL
    special = [i for i, a in enumerate(v.attrs) if a & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)]
    special.sort(key=lambda i: -len(texts[i]))  # stable: equal lengths keep id order
    v.special_ids = special
    # per-model attribute fixes (llama-vocab.cpp "set attributes by model name")
    name = str(md.get("general.name", "")).lower()
    if "phi-3" in name or "phi3" in name:
        for i in special:
            v.attrs[i] |= ATTR_RSTRIP
        for t, on in ((b"</s>", True), (b"<unk>", False), (b"<s>", False), (b"<|endoftext|>", False)):
            if t in token_to_id:
                j = token_to_id[t]
                v.attrs[j] = (v.attrs[j] | ATTR_RSTRIP) if on else (v.attrs[j] & ~ATTR_RSTRIP)
    return v
