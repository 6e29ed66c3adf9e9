"""Any engine as a reference: a child process speaking crossval's external protocol
(docs/backends.md), started from `--reference external:CMD`. Timeouts, crashes and protocol
violations become diagnostic receipts like the llama.cpp child's (crossval/backends/isolated.py).

Version 2 (`crossval-external/2`) adds binary frames for arrays, chosen in `load` when the hello
offers `"transports": [..., "frames"]`, and the optional `capture` request; a version-1 server
(JSON lines, arrays in base64) is still accepted as it is."""

from __future__ import annotations

import binascii
import os
import shlex
import time

import numpy as np

from crossval.backends.base import (Backend, BackendCrashed, BackendSettings, BackendUnavailable, Capabilities, GenerateResult,
                                    LAYER_STAGES, Unsupported)  # fmt: skip
from crossval.backends.isolated import ChildProcess
from crossval.errors import InputError

PROTOCOL = "crossval-external/2"
PROTOCOLS = ("crossval-external/1", PROTOCOL)  # the envelope tags accepted


class ExternalBackend(ChildProcess, Backend):
    name = "external"
    protocol = PROTOCOL

    @classmethod
    def from_settings(cls, model_path, s: BackendSettings, command: str = "") -> "ExternalBackend":
        return cls(command, model_path, n_ctx=s.n_ctx, threads=s.threads, kv_type=s.kv_type, timeout=s.timeout, mode=s.mode,
                   perturb=s.perturb)  # fmt: skip

    def __init__(self, command: str, model_path, n_ctx: int = 2048, threads: int = 1, kv_type: str = "f16", timeout: float = 120.0,
                 mode: str = "float", perturb: tuple[int, float] | None = None, transport: str | None = None):  # fmt: skip
        """transport: "frames" or "base64" (None: frames when the hello offers them). `mode` and
        `perturb` go to the server's load as hints (crossval.serve honours them; others may ignore them)."""
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
        caps = hello.get("capabilities") if isinstance(hello.get("capabilities"), dict) else {}
        self.capabilities = Capabilities(tokenize=bool(caps.get("tokenize")), logits=bool(caps.get("logits")),
                                         generate=bool(caps.get("generate")), capture=bool(caps.get("capture")))  # fmt: skip
        offered = hello.get("transports") or ["base64"]
        offered = [str(x) for x in offered] if isinstance(offered, list) else ["base64"]
        self.transport = transport or ("frames" if "frames" in offered else "base64")
        if self.transport not in offered:
            self._kill()
            raise BackendUnavailable(f"external: the server does not offer the {self.transport} transport (offers {offered})")
        extra = {"mode": mode, **({"perturb": list(perturb)} if perturb else {})}
        info = self._call("load", model_path=str(model_path), n_ctx=n_ctx, threads=threads, kv_type=kv_type, transport=self.transport,
                          **extra)  # fmt: skip
        self.n_vocab = self._field(info, "n_vocab", int, "load")
        # the receipt's record of the conversation: the version the hello's tag fixed, the array
        # transport load chose, what the server offered and declared (its words, beside the
        # harness's own `capabilities`)
        version = info["provenance"].get("version") if isinstance(info.get("provenance"), dict) else None
        self._provenance = {"name": str(hello.get("name", "external")), "version": None if version is None else str(version),
                            "command": command, "protocol": self.protocol, "transport": self.transport, "transports": offered,
                            "server_capabilities": {str(k): bool(v) for k, v in caps.items()}}  # fmt: skip
        self.load_s = time.perf_counter() - t

    def _tag_ok(self, tag) -> bool:
        if getattr(self, "_hello_tag", None) is None:
            if tag not in PROTOCOLS:
                return False
            self._hello_tag = self.protocol = tag  # the version the server speaks; every later reply must carry it
        return tag == self._hello_tag

    def _field(self, obj, key, typ, stage):
        if not isinstance(obj, dict) or key not in obj or not isinstance(obj[key], typ):
            self._kill()
            raise BackendCrashed(stage, f"protocol error: reply lacks {key!r}", None, self.stderr_tail())
        return obj[key]

    def _matrix(self, obj, rows: int | None, stage: str, cols: int | None = None) -> np.ndarray:
        """An array of the reply: {"shape", "dtype": "float32"} and either "frame" (the index of a
        binary frame after the line) or "data" (base64 of the little-endian float32 bytes).
        rows None, cols -1: any."""
        cols = self.n_vocab if cols is None else cols
        shape = self._field(obj, "shape", list, stage)
        ok = len(shape) == 2 and all(isinstance(x, int) and x >= 0 for x in shape)
        if not ok or (rows is not None and shape[0] != rows) or (cols != -1 and shape[1] != cols) or obj.get("dtype", "float32") != "float32":
            self._kill()
            want = [rows if rows is not None else "any", cols if cols != -1 else "any"]
            raise BackendCrashed(stage, f"protocol error: array of shape {shape}, expected {want}", None, self.stderr_tail())
        if "frame" in obj:
            k = obj["frame"]
            if not isinstance(k, int) or not 0 <= k < len(self._frames):
                self._kill()
                raise BackendCrashed(stage, f"protocol error: array names frame {k!r} of {len(self._frames)}", None, self.stderr_tail())
            raw = self._frames[k]  # a uint8 array the pipe was read into (ChildProcess._readexact)
        else:
            data = self._field(obj, "data", str, stage)
            try:
                raw = binascii.a2b_base64(data, strict_mode=True)  # an ASCII str is read in place, not copied to bytes first
            except (ValueError, binascii.Error):
                self._kill()
                raise BackendCrashed(stage, "protocol error: array data is not base64", None, self.stderr_tail()) from None
        if len(raw) != shape[0] * shape[1] * 4:
            self._kill()
            raise BackendCrashed(stage, f"protocol error: array data has {len(raw)} bytes, shape {shape} needs {shape[0] * shape[1] * 4}",
                                 None, self.stderr_tail())  # fmt: skip
        a = np.frombuffer(raw, dtype="<f4").reshape(shape)
        # a frame is a writable buffer of its own: used as it is; base64's bytes are read-only (and a
        # big-endian host needs native order): copied
        return a if isinstance(raw, np.ndarray) and a.dtype == np.float32 else a.astype(np.float32)

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
        step_logits = self._matrix(r.get("logits", r), len(tokens), "generate") if steps else None
        return GenerateResult([int(x) for x in tokens], step_logits, time.perf_counter() - t)

    def capture_rows(self, ids: list[int], position: int, stages: tuple[str, ...] = LAYER_STAGES) -> dict[str, np.ndarray]:
        """`capture` op (capability `capture`): {"rows": {"<stage>-<layer>": array (1, width)}} for a
        teacher-forced pass over ids, the row of `position`, under llama.cpp's cb_eval names."""
        self._require("capture")
        r = self._call("capture", ids=[int(i) for i in ids], position=int(position), stages=list(stages))
        rows = self._field(r, "rows", dict, "capture")
        out = {}
        for name, arr in rows.items():
            stage, _, layer = str(name).rpartition("-")
            if stage not in stages or not layer.isdigit():
                self._kill()
                raise BackendCrashed("capture", f"protocol error: capture row {name!r} is not one of <stage>-<layer> for {list(stages)}",
                                     None, self.stderr_tail())  # fmt: skip
            out[name] = self._matrix(arr, 1, "capture", cols=-1)[0]
        return out

    def provenance(self) -> dict:
        return self.describe(**self._provenance)

    def close(self) -> None:
        self._shutdown()
