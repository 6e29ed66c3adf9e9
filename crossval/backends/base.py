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


class Backend(Protocol):
    name: str
    capabilities: Capabilities

    def tokenize(self, text: str, add_bos: bool, parse_special: bool) -> list[int]: ...

    def detokenize(self, ids: list[int]) -> str: ...

    def logits(self, ids: list[int]) -> np.ndarray:
        """Teacher-forced logits of every position of ids: float32 (len(ids), n_vocab)."""
        ...

    def generate(self, ids: list[int], steps: int) -> GenerateResult: ...

    def provenance(self) -> dict: ...

    def close(self) -> None: ...
