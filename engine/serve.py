"""The engine as an external backend: `python -m engine.serve` speaks crossval's JSON-lines
protocol (docs/backends.md) on stdin/stdout, so the harness can drive it as a child process
exactly as it drives any other engine (a Rust port, a C++ wrapper).

Arrays travel as base64 of little-endian float32 with their shape. stdout carries protocol
lines only; everything else goes to stderr.
"""

from __future__ import annotations

import base64
import json
import os
import sys

import numpy as np

PROTOCOL = "crossval-external/1"


def _array(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a, dtype="<f4")
    return {"shape": list(a.shape), "dtype": "float32", "data": base64.b64encode(a.tobytes()).decode("ascii")}


def main() -> int:
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(ok: bool, result=None, error: str | None = None) -> None:
        msg = {"protocol": PROTOCOL, "ok": ok}
        msg.update({"result": result} if ok else {"error": error})
        out.write(json.dumps(msg) + "\n")
        out.flush()

    send(True, {"type": "hello", "name": "crossval-engine",
                "capabilities": {"tokenize": True, "logits": True, "generate": True, "top_k_logits": True}})  # fmt: skip
    eng = tok = None
    for line in sys.stdin:
        try:
            req = json.loads(line)
            op, a = req["op"], req.get("args", {})
        except (ValueError, KeyError, TypeError):
            send(False, error="malformed request")
            continue
        try:
            if op == "close":
                break
            if op == "load":
                from engine.generate import Engine
                from engine.tokenizer import Tokenizer

                eng = Engine(a["model_path"], n_ctx=a.get("n_ctx", 2048), kv_type=a.get("kv_type", "f32")).load()
                tok = Tokenizer.from_gguf(eng.gguf)
                send(True, {"n_vocab": eng.config.n_vocab,
                            "provenance": {"name": "crossval-engine", "version": "engine.serve/1", "mode": eng.mode,
                                           "kv_type": a.get("kv_type", "f32")}})  # fmt: skip
            elif eng is None:
                send(False, error=f"{op} before load")
            elif op == "tokenize":
                send(True, tok.encode(a["text"], a.get("add_bos", True), a.get("parse_special", False)))
            elif op == "detokenize":
                send(True, tok.detokenize(a["ids"]))
            elif op == "logits":
                logits = eng.logits(a["ids"])
                k = a.get("top_k")
                if k:
                    idx = np.argsort(-logits, axis=1, kind="stable")[:, :k]
                    top = [[[int(i), float(row[i])] for i in ix] for row, ix in zip(logits, idx)]
                    send(True, {"top": top})
                else:
                    send(True, _array(logits))
            elif op == "generate":
                g = eng.generate(a["ids"], a["steps"], keep_logits=True)
                send(True, {"tokens": g.tokens, **_array(np.stack(g.logits) if g.logits else np.zeros((0, eng.config.n_vocab)))})
            else:
                send(False, error=f"unknown op {op!r}")
        except Exception as e:  # report and keep serving
            send(False, error=f"{type(e).__name__}: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
