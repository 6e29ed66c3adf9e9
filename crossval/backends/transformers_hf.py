"""Hugging Face transformers as a third opinion (`--three-way --third transformers`).

transformers loads a GGUF itself (gguf-py dequantizes it; the model then runs in float32 PyTorch),
which makes it an independent implementation of the same architecture: when the engine and
llama.cpp disagree, it says which of them is the odd one out. Optional: `pip install -e
'.[triangulate]'`; without it the backend reports itself unavailable and the three-way section of
the receipt says so. Token ids always come from the harness (the reference's tokenizer).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from crossval.backends.base import Backend, BackendSettings, BackendUnavailable, Capabilities, GenerateResult


class TransformersBackend(Backend):
    name = "transformers"
    capabilities = Capabilities(tokenize=False)  # ids always come from the harness

    @classmethod
    def from_settings(cls, model_path, s: BackendSettings) -> "TransformersBackend":
        return cls(model_path, threads=s.threads)

    def __init__(self, model_path, threads: int = 1):
        try:
            import torch
            import transformers
            from transformers import AutoModelForCausalLM
        except ImportError as e:
            raise BackendUnavailable(f"transformers backend needs the triangulate extra (pip install -e '.[triangulate]'): {e}") from None
        t = time.perf_counter()
        p = Path(model_path)
        torch.set_num_threads(max(1, threads))
        try:
            self.model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32).eval()
        except Exception as e:  # transformers raises many types for an architecture it cannot load
            raise BackendUnavailable(f"transformers cannot load {p.name}: {str(e).splitlines()[0][:200]}") from None
        self.torch, self.threads = torch, threads
        self.version = f"transformers {transformers.__version__}, torch {torch.__version__}"
        self.load_s = time.perf_counter() - t

    def logits(self, ids: list[int]) -> np.ndarray:
        with self.torch.no_grad():
            out = self.model(self.torch.tensor([list(ids)], dtype=self.torch.long))
        return out.logits[0].float().numpy()

    def generate(self, ids: list[int], steps: int) -> GenerateResult:
        """Greedy continuation with the model's KV cache; each step's logits kept."""
        torch = self.torch
        t = time.perf_counter()
        toks, rows = [], []
        with torch.no_grad():
            out = self.model(torch.tensor([list(ids)], dtype=torch.long), use_cache=True)
            for i in range(steps):
                row = out.logits[0, -1].float().numpy()
                rows.append(row)
                toks.append(int(np.argmax(row)))
                if i + 1 < steps:
                    out = self.model(torch.tensor([[toks[-1]]], dtype=torch.long), past_key_values=out.past_key_values, use_cache=True)
        return GenerateResult(toks, np.stack(rows) if rows else None, time.perf_counter() - t)

    def provenance(self) -> dict:
        return self.describe(name="transformers", version=self.version, library_sha256=None, commit=None, system_info=None,
                             mode="float32 (GGUF dequantized by transformers)", kv_type=None, threads=self.threads)

    def close(self) -> None:
        self.model = None
