"""Any engine as a reference: a child process speaking crossval's JSON-lines protocol
(docs/backends.md), started from `--reference external:CMD`. Timeouts, crashes and protocol
violations become diagnostic receipts like the llama.cpp child's (crossval/backends/isolated.py)."""

from __future__ import annotations

import base64
import os
import shlex
import time

import numpy as np

from crossval.backends.base import (Backend, BackendCrashed, BackendError, BackendSettings, BackendUnavailable, Capabilities,
                                    ComparePass, GenerateResult, Unsupported)  # fmt: skip
from crossval.backends.isolated import ChildProcess
from crossval.errors import InputError

PROTOCOL = "crossval-external/1"


class ExternalBackend(ChildProcess, Backend):
    name = "external"
    protocol = PROTOCOL

    @classmethod
    def from_settings(cls, model_path, s: BackendSettings, command: str = "") -> "ExternalBackend":
        return cls(command, model_path, n_ctx=s.n_ctx, threads=s.threads, kv_type=s.kv_type, timeout=s.timeout)

    def __init__(self, command: str, model_path, n_ctx: int = 2048, threads: int = 1, kv_type: str = "f16", timeout: float = 120.0):
        argv = shlex.split(command)
        if not argv:
            raise InputError("external: empty command (external:CMD)")
        self.command = command
        t = time.perf_counter()
        try:
            self._start(argv, dict(os.environ), timeout)
        except OSError as e:
            raise BackendUnavailable(f"external: cannot start {argv[0]!r}: {e.strerror}") from None
        self._pending = ("handshake", time.monotonic() + timeout)
        hello = self._receive()
        if not isinstance(hello, dict) or hello.get("type") != "hello":
            self._kill()
            raise BackendCrashed("handshake", "protocol error: the first message is not a hello", None, self.stderr_tail())
        caps = hello.get("capabilities") or {}
        self.capabilities = Capabilities(tokenize=bool(caps.get("tokenize")), logits=bool(caps.get("logits")),
                                         generate=bool(caps.get("generate")))  # fmt: skip
        info = self._call("load", model_path=str(model_path), n_ctx=n_ctx, threads=threads, kv_type=kv_type)
        self.n_vocab = self._field(info, "n_vocab", int, "load")
        self._provenance = {"name": str(hello.get("name", "external")), "version": (info.get("provenance") or {}).get("version"),
                            "command": command}  # fmt: skip
        self.load_s = time.perf_counter() - t

    def _field(self, obj, key, typ, stage):
        if not isinstance(obj, dict) or key not in obj or not isinstance(obj[key], typ):
            self._kill()
            raise BackendCrashed(stage, f"protocol error: reply lacks {key!r}", None, self.stderr_tail())
        return obj[key]

    def _matrix(self, obj, rows: int, stage: str) -> np.ndarray:
        shape = self._field(obj, "shape", list, stage)
        data = self._field(obj, "data", str, stage)
        if shape != [rows, self.n_vocab] or obj.get("dtype", "float32") != "float32":
            self._kill()
            raise BackendCrashed(stage, f"protocol error: array of shape {shape}, expected {[rows, self.n_vocab]}", None, self.stderr_tail())
        try:
            raw = base64.b64decode(data, validate=True)
        except ValueError:
            self._kill()
            raise BackendCrashed(stage, "protocol error: array data is not base64", None, self.stderr_tail()) from None
        if len(raw) != rows * self.n_vocab * 4:
            self._kill()
            raise BackendCrashed(stage, "protocol error: array data has the wrong length", None, self.stderr_tail())
        return np.frombuffer(raw, dtype="<f4").reshape(rows, self.n_vocab).astype(np.float32)

    # --- Backend -------------------------------------------------------------------------------
    def _require(self, what: str) -> None:
        if not getattr(self.capabilities, what):
            raise Unsupported(self.name, f"{what} (its hello does not declare it)")

    def tokenize(self, text: str, add_bos: bool = True, parse_special: bool = False) -> list[int]:
        self._require("tokenize")
        ids = self._call("tokenize", text=text, add_bos=add_bos, parse_special=parse_special)
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            self._kill()
            raise BackendCrashed("tokenize", "protocol error: ids are not a list of integers", None, self.stderr_tail())
        return ids

    def detokenize(self, ids: list[int]) -> str:
        self._require("tokenize")
        text = self._call("detokenize", ids=[int(i) for i in ids])
        return text if isinstance(text, str) else ""

    def logits(self, ids: list[int]) -> np.ndarray:
        self._require("logits")
        return self._matrix(self._call("logits", ids=[int(i) for i in ids]), len(ids), "logits")

    def generate(self, ids: list[int], steps: int) -> GenerateResult:
        """`generate` op: greedy tokens and the (steps, n_vocab) logits each was chosen from.
        (compare_pass is the base's: `logits` over the prompt, then this; the protocol has no
        sampler chain, so sampled runs are Unsupported.)"""
        self._require("generate")
        t = time.perf_counter()
        r = self._call("generate", ids=[int(i) for i in ids], steps=steps)
        tokens = self._field(r, "tokens", list, "generate")
        if len(tokens) != steps or not all(isinstance(x, int) for x in tokens):
            self._kill()
            raise BackendCrashed("generate", f"protocol error: {len(tokens)} tokens for {steps} steps", None, self.stderr_tail())
        step_logits = self._matrix(r, len(tokens), "generate") if steps else None
        return GenerateResult([int(x) for x in tokens], step_logits, time.perf_counter() - t)

    def provenance(self) -> dict:
        return self.describe(**self._provenance)

    def close(self) -> None:
        self._shutdown()
