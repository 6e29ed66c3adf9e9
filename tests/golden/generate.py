"""Regenerate tests/golden/tokens_*.json from llama.cpp (needs llama-cpp-python and the vocab files:
`crossval models fetch`). Each file records, per case, llama.cpp's ids with and without
parse_special; tests/test_tokenizer.py checks our tokenizer against them without llama.cpp.

    python tests/golden/generate.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent.parent))

CASES = [
    "Hello world", " Hello world", "  leading spaces", "multiple   spaces  inside", "tab\tand\nnewline\n\n",
    "digits 1 12 123 1234 12345 3.14159", "punctuation!!! ??? ... ,;: (x) [y] {z}", "emoji 🙂👍🏽 and 👨‍👩‍👧",
    "CJK 東京は日本の首都です。 한국어 텍스트", "combining e\u0301 n\u0303 a\u0308", "it's we'll they've I'm",
    "special <s> </s> <|endoftext|> <|im_start|> <|eot_id|> <start_of_turn> <end_of_turn>",
    "mixed Привет мир مرحبا नमस्ते", "code: def f(x):\n    return x**2  # square",
]  # fmt: skip


def families() -> dict[str, Path]:
    from crossval.models import llama_data_dir, model_path

    vocab = llama_data_dir() / "vocab"
    out = {"smollm2": model_path("smollm2"), "gemma3": model_path("gemma3-270m")}
    for name in ("llama-spm", "llama-bpe", "gpt-2", "qwen2", "deepseek-llm", "starcoder", "falcon", "phi-3"):
        out[name] = vocab / f"ggml-vocab-{name}.gguf"
    return out


def main() -> None:
    from crossval.backends.llamacpp import LlamaCppBackend
    from engine.gguf_model import open_gguf

    for fam, path in families().items():
        g = open_gguf(path)
        cases = []
        with LlamaCppBackend(path, vocab_only=True) as ref:
            for text in CASES:
                cases.append({
                    "text": text,
                    "ids": ref.tokenize(text, add_bos=True, parse_special=False),
                    "ids_parse_special": ref.tokenize(text, add_bos=True, parse_special=True),
                })  # fmt: skip
        doc = {
            "family": fam,
            "source": path.name,
            "tokenizer_model": g.get("tokenizer.ggml.model"),
            "tokenizer_pre": g.get("tokenizer.ggml.pre"),
            "generated_by": f"llama.cpp via {ref.provenance()['version']}",
            "cases": cases,
        }
        (HERE / f"tokens_{fam}.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
        print(fam, len(cases))


if __name__ == "__main__":
    main()
