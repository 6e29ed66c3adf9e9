"""The Backend protocol (DESIGN §3): every engine answers the same questions, so the comparator
never knows which one it is talking to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


class BackendError(RuntimeError):
    """A backend failed in a way that ends its comparison (status 'error')."""


class BackendUnavailable(BackendError):
    """The backend cannot run here at all (e.g. llama-cpp-python not importable)."""


class BackendTimeout(BackendError):
    def __init__(self, stage: str, timeout: float, stderr_tail: list[str]):
        super().__init__(f"backend timed out after {timeout:g} s during {stage}")
        self.stage, self.timeout, self.stderr_tail = stage, timeout, stderr_tail


class BackendCrashed(BackendError):
    def __init__(self, stage: str, detail: str, returncode: int | None, stderr_tail: list[str]):
        super().__init__(f"backend crashed during {stage}: {detail}")
        self.stage, self.returncode, self.stderr_tail = stage, returncode, stderr_tail


@dataclass
class Capabilities:
    tokenize: bool = True
    logits: bool = True
    generate: bool = True

    def to_dict(self) -> dict:
        return {"tokenize": self.tokenize, "logits": self.logits, "generate": self.generate}


@dataclass
class GenerateResult:
    tokens: list[int]
    logits: np.ndarray | None = None  # (steps, n_vocab): the logits each step's token was chosen from
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


@dataclass
class ComparePass:
    """One prefill serving both comparisons (see Backend.compare_pass)."""

    prompt_logits: np.ndarray  # (n_prompt, n_vocab), teacher-forced over the prompt
    tokens: list[int]  # free-running greedy continuation
    step_logits: np.ndarray | None  # (steps, n_vocab): what each continuation token was chosen from
    forced_logits: np.ndarray | None  # (len(forced), n_vocab): logits after each forced token
    seconds: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def greedy_compare_pass(b, ids: list[int], steps: int, forced: list[int] | None, choose=None) -> ComparePass:
    """compare_pass for a backend with reset/prefill(all_logits)/decode_step/truncate/n_past.
    choose(logits) → token picks each step (default: argmax)."""
    import time

    choose = choose or (lambda row: int(np.argmax(row)))
    t = time.perf_counter()
    b.reset()
    prompt = b.prefill_all(ids)
    sec = {"prefill_s": time.perf_counter() - t}
    n0 = len(ids)
    forced_logits = None
    if forced:
        t = time.perf_counter()
        forced_logits = np.stack([b.decode_step(tok) for tok in forced])
        sec["forced_s"] = time.perf_counter() - t
        b.truncate(n0)
    t = time.perf_counter()
    last, toks, logs = prompt[-1], [], []
    for i in range(steps):
        logs.append(last)
        tok = choose(last)
        toks.append(tok)
        if i + 1 < steps:
            last = b.decode_step(tok)
    sec["generate_s"] = time.perf_counter() - t
    return ComparePass(prompt, toks, np.stack(logs) if logs else None, forced_logits, sec)


class Backend(Protocol):
    name: str
    capabilities: Capabilities

    def tokenize(self, text: str, add_bos: bool, parse_special: bool) -> list[int]: ...

    def detokenize(self, ids: list[int]) -> str: ...

    def logits(self, ids: list[int]) -> np.ndarray:
        """Teacher-forced logits of every position of ids: float32 (len(ids), n_vocab)."""
        ...

    def generate(self, ids: list[int], steps: int) -> GenerateResult: ...

    def compare_pass(self, ids: list[int], steps: int, forced: list[int] | None = None, sampling=None) -> ComparePass:
        """One prefill of ids (all positions' logits), then — if forced — one decode step per
        forced token, rolled back, then `steps` steps from the end of the prompt: greedy, or the
        backend's own seeded sampler chain when `sampling` (engine.sampling.SamplingParams)."""
        ...

    def provenance(self) -> dict: ...

    def close(self) -> None: ...
