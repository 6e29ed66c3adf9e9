"""A tiny external-protocol server (n_vocab 8, logits a fixed function of the ids) that breaks the
protocol in one chosen way: `python toy_server.py BREAK` (BREAK "none" speaks it correctly).
tests/test_protocol_check.py runs `crossval protocol check` against each break."""

import base64
import json
import struct
import sys
import time

BREAK = sys.argv[1] if len(sys.argv) > 1 else "none"
TAG = "crossval-external/2"
V = 8
out = sys.stdout.buffer


def say(msg, frames=(), tag=TAG):
    msg = {"protocol": tag, **msg}
    if frames:
        msg["frames"] = [len(f) for f in frames]
    out.write(json.dumps(msg).encode() + b"\n" + b"".join(frames))
    out.flush()


def rows(ids):  # position p's logits: (ids[p] + 3 j) mod 8 for token j
    return [[float((i + 3 * j) % V) for j in range(V)] for i in ids]


TRANSPORT = "frames"


def array(r, cols=V, nbytes=None):
    data = b"".join(struct.pack(f"<{len(x)}f", *x) for x in r)
    if nbytes is not None:
        data = data[:nbytes]
    if TRANSPORT == "base64":  # base64-differs: the base64 form carries other numbers
        data = data[:-4] + struct.pack("<f", 99.0)
        return {"shape": [len(r), cols], "dtype": "float32", "data": base64.b64encode(data).decode()}, []
    return {"shape": [len(r), cols], "dtype": "float32", "frame": 0}, [data]


if BREAK == "silent":
    time.sleep(3600)
say({"ok": True, "result": {"type": "hello", "name": "toy", "transports": ["frames", "base64"] if BREAK == "base64-differs" else ["frames"],
                            "capabilities": {"tokenize": False, "logits": True, "generate": True}}})
loaded = False
for raw in sys.stdin.buffer:
    try:
        req = json.loads(raw.decode("utf-8"))
        op, a = req["op"], req.get("args", {})
    except (ValueError, KeyError, TypeError):
        if BREAK == "crash-on-malformed":
            raise
        say({"ok": False, "error": "malformed request"})
        continue
    if op == "close":
        if BREAK == "ignore-close":
            continue
        if BREAK == "noise-at-close":
            out.write(b"bye\n")
            out.flush()
        break
    if op == "load":
        if BREAK == "stdout-noise":
            out.write(b"loading model...\n")
            out.flush()
        loaded = True
        TRANSPORT = a.get("transport", "base64")
        say({"ok": True, "result": {"n_vocab": V, "provenance": {"version": "toy/1"}}}, tag="crossval-external/9" if BREAK == "wrong-tag" else TAG)
    elif not loaded:
        if BREAK == "no-load-check":
            say({"ok": True, "result": None})
        else:
            say({"ok": False, "error": f"{op} before load"})
    elif op == "logits":
        ids = a["ids"]
        r = rows(ids)
        if BREAK == "hang":
            time.sleep(3600)
        if BREAK == "crash-mid-reply":
            out.write(b'{"protocol": "crossval-external/2", "ok": true, "res')
            out.flush()
            sys.exit(1)
        if BREAK == "non-utf8":
            out.write(b"\xff\xfe\xfd not utf-8\n")
            out.flush()
            continue
        if BREAK == "nan":
            r[0][0] = float("nan")
        if BREAK == "nondeterministic":
            r[-1][0] += time.perf_counter() % 1
        arr, frames = array(r, cols=V + 1 if BREAK == "wrong-shape" else V, nbytes=len(ids) * V * 4 - 4 if BREAK == "short-array" else None)
        if BREAK == "wrong-shape":
            frames = [frames[0] + bytes(4 * len(ids))]
        say({"ok": True, "result": arr}, frames)
    elif op == "generate":
        ids, steps = list(a["ids"]), a["steps"]
        toks, logs = [], []
        for _ in range(steps):
            row = rows(ids)[-1]
            tok = max(range(V), key=lambda j: row[j])
            if BREAK == "not-greedy":
                tok = (tok + 1) % V
            toks.append(tok)
            logs.append(row)
            ids.append(tok)
        arr, frames = array(logs)
        say({"ok": True, "result": {"tokens": toks[:-1] if BREAK == "token-count" else toks, "logits": arr}}, frames)
    else:
        say({"ok": False, "error": f"unknown op {op!r}"})
