"""The engine as an external backend: `python -m crossval.serve` speaks crossval's external protocol
(docs/backends.md) on stdin/stdout, so the harness can drive it as a child process exactly as it
drives any other engine (a Rust port, a C++ wrapper).

It speaks version 2 (`crossval-external/2`): its hello offers both array transports, and arrays
travel as the client's `load` chose — `"transport": "frames"`: raw little-endian float32 frames
after the reply line, their byte lengths in the reply's `frames` list, each array naming its
frame; otherwise base64 inside the JSON line (version 1's form). stdout carries protocol bytes
only; everything else goes to stderr.

The answers are crossval.backends.engine.EngineBackend's, so the served engine computes exactly
what the in-process one does (mode, perturbation test hook and per-layer capture included).
`python -m crossval.serve --stand-in ROWS N_VOCAB` answers through the same reply writer without
an engine (stand_in), for timing the transport alone.
"""

from __future__ import annotations

import binascii
import json
import os
import secrets
import sys

import numpy as np

PROTOCOL = "crossval-external/2"
STAGES = ("attn_norm", "Qcur", "Kcur", "Vcur", "kqv_out", "ffn_inp", "ffn_out", "l_out")


class Replies:
    """Writes protocol replies to a binary stream; arrays as frames or base64 (the `transport`).

    Either way the array's own memory is what is written: a frame is the array's buffer handed to
    the stream as it is (no copy in Python), and base64 is encoded in slices of 3 MiB written as
    they are made (a 3-byte multiple, so the slices' base64 joins into the whole array's) into the
    JSON line at the array's place — json.dumps never sees the text (it takes seconds on a 900 MB string)."""

    B64_SLICE = 3 << 20

    def __init__(self, out, transport: str = "base64"):
        self.out, self.transport = out, transport
        self._mark = f"crossval-b64-{secrets.token_hex(8)}-"  # stands in a "data" string until the line is written

    def send(self, ok: bool, result=None, error: str | None = None) -> None:
        frames: list[np.ndarray] = []
        texts: list[np.ndarray] = []

        def enc(v):
            if isinstance(v, np.ndarray):
                a = np.ascontiguousarray(v, dtype="<f4")
                head = {"shape": list(a.shape), "dtype": "float32"}
                if self.transport == "frames":
                    frames.append(a)
                    return {**head, "frame": len(frames) - 1}
                texts.append(a)
                return {**head, "data": f"{self._mark}{len(texts) - 1:08d}"}
            if isinstance(v, dict):
                return {k: enc(x) for k, x in v.items()}
            return v

        msg = {"protocol": PROTOCOL, "ok": ok}
        msg.update({"result": enc(result)} if ok else {"error": error})
        if frames:
            msg["frames"] = [a.nbytes for a in frames]
        line = json.dumps(msg).encode() + b"\n"
        pos = 0
        for k, a in enumerate(texts):  # placeholders appear in the order enc met the arrays
            tag = f"{self._mark}{k:08d}".encode()
            i = line.index(tag, pos)
            self.out.write(line[pos:i])
            raw = a.reshape(-1).view(np.uint8)  # the array's bytes, no copy (a memoryview cast refuses a 0-row array)
            for j in range(0, len(raw), self.B64_SLICE):
                self.out.write(binascii.b2a_base64(raw[j : j + self.B64_SLICE], newline=False))
            pos = i + len(tag)
        self.out.write(line[pos:])
        for a in frames:
            self.out.write(a.reshape(-1).view(np.uint8))
        self.out.flush()


def _protocol_stream() -> Replies:
    """Replies on a private copy of fd 1; fd 1 itself (and sys.stdout) then point at stderr, so
    nothing a library prints can corrupt the protocol stream."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return Replies(out)


def stand_in_logits(rows: int, n_vocab: int) -> np.ndarray:
    """The stand-in's answer: row i, column j holds float32(i × n_vocab + j) (a closed form the
    client can check the received bytes against)."""
    return np.arange(rows * n_vocab, dtype=np.float32).reshape(rows, n_vocab)


def stand_in(rows: int, n_vocab: int) -> int:
    """`python -m crossval.serve --stand-in ROWS N_VOCAB`: a server that computes nothing — `logits`
    for n ids answers the first n rows of stand_in_logits, prepared before the hello — so timing a
    request times the transport alone (crossval bench's `transport`, benchmarks/external_transport.py)."""
    r = _protocol_stream()
    arr = stand_in_logits(rows, n_vocab)
    r.send(True, {"type": "hello", "name": "crossval-stand-in", "transports": ["base64", "frames"], "capabilities": {"logits": True}})
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "close":
            break
        if req["op"] == "load":
            r.transport = "frames" if req["args"].get("transport") == "frames" else "base64"
            r.send(True, {"n_vocab": n_vocab, "provenance": {"version": "crossval.serve/2 stand-in"}})
        elif req["op"] == "logits" and len(req["args"]["ids"]) <= rows:
            r.send(True, arr[: len(req["args"]["ids"])])
        else:
            r.send(False, error=f"the stand-in answers logits for at most {rows} ids")
    return 0


def main() -> int:
    if sys.argv[1:2] == ["--stand-in"]:
        return stand_in(int(sys.argv[2]), int(sys.argv[3]))
    r = _protocol_stream()
    r.send(True, {"type": "hello", "name": "crossval-engine", "transports": ["base64", "frames"],
                  "capabilities": {"tokenize": True, "logits": True, "generate": True, "capture": True, "top_k_logits": True}})  # fmt: skip
    b = None
    for line in sys.stdin:
        try:
            req = json.loads(line)
            op, a = req["op"], req.get("args", {})
            if not isinstance(op, str) or not isinstance(a, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            r.send(False, error="malformed request")
            continue
        try:
            if op == "close":
                break
            if op == "load":
                from crossval.backends.engine import EngineBackend
                from crossval.process import limit_blas

                # numpy's BLAS pool as a crossval command sets it (crossval.cli.prepare): one thread in
                # faithful mode, where the native kernels' OpenMP threads work, else `threads` — an
                # unlimited pool spins on every core after each call, starving the harness reading the reply
                limit_blas(1 if a.get("mode") == "faithful" else a.get("threads", 1))
                perturb = tuple(a["perturb"]) if a.get("perturb") else None
                b = EngineBackend(a["model_path"], n_ctx=a.get("n_ctx", 2048), kv_type=a.get("kv_type", "f32"),
                                  mode=a.get("mode", "float"), perturb=perturb, threads=a.get("threads", 1))  # fmt: skip
                r.transport = "frames" if a.get("transport") == "frames" else "base64"
                r.send(True, {"n_vocab": b.engine.config.n_vocab,
                              "provenance": {"name": "crossval-engine", "version": "crossval.serve/2", "mode": b.mode,
                                             "kv_type": str(b.kv_type), "transport": r.transport}})  # fmt: skip
            elif b is None:
                r.send(False, error=f"{op} before load")
            elif op == "tokenize":
                r.send(True, b.tokenize(a["text"], a.get("add_bos", True), a.get("parse_special", False)))
            elif op == "detokenize":
                r.send(True, b.detokenize(a["ids"]))
            elif op == "logits":
                logits = b.logits(a["ids"])
                k = a.get("top_k")
                if k:
                    idx = np.argsort(-logits, axis=1, kind="stable")[:, :k]
                    r.send(True, {"top": [[[int(i), float(row[i])] for i in ix] for row, ix in zip(logits, idx)]})
                else:
                    r.send(True, logits)
            elif op == "generate":
                g = b.generate(a["ids"], a["steps"])
                logits = g.logits if g.logits is not None else np.zeros((0, b.engine.config.n_vocab), np.float32)
                r.send(True, {"tokens": g.tokens, "logits": logits})
            elif op == "capture":
                stages = tuple(a.get("stages") or STAGES)
                rows = b.capture_rows(a["ids"], int(a["position"]), stages)
                r.send(True, {"rows": {k: v.reshape(1, -1) for k, v in rows.items()}})
            else:
                r.send(False, error=f"unknown op {op!r}")
        except Exception as e:  # report and keep serving
            r.send(False, error=f"{type(e).__name__}: {e}")
    if b is not None:
        b.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
