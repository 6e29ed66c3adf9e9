"""The external JSON-lines protocol: the engine served as a real child, and misbehaving children."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from crossval import receipts


def crossval(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "crossval.cli", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ), timeout=timeout)  # fmt: skip


def _prompts(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"id": f"p{i}", "text": t}) + "\n" for i, t in enumerate(["the cat sat", "a dog ran on"])))
    return f


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_engine_vs_engine_through_the_protocol(tmp_path, tiny_model, name):
    out = tmp_path / "out"
    r = crossval("run", "--model", tiny_model(name), "--prompt-file", _prompts(tmp_path), "--steps", 8, "--kv-type", "f32",
                 "--reference", f"external:{sys.executable} -m crossval.serve", "--out", out, "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr + r.stdout
    for p in out.rglob("*__p*.json"):
        rec = receipts.read_valid(p)
        assert rec["parity"]["cosine_similarity"] >= 1 - 1e-12 and rec["parity"]["exact_match_rate"] == 1.0
        assert rec["tokenization"]["match"] is True
        ref = rec["backends"]["reference"]
        assert ref["command"].endswith("-m crossval.serve")
        # the conversation as it happened: version 2 from the hello's tag, frames chosen from the
        # two transports offered, the server's own declared capabilities beside the harness's reading
        assert ref["protocol"] == "crossval-external/2" and ref["transport"] == "frames", ref
        assert sorted(ref["transports"]) == ["base64", "frames"]
        assert ref["server_capabilities"] == {"tokenize": True, "logits": True, "generate": True, "capture": True, "top_k_logits": True}
        assert ref["capabilities"]["capture"] is True and "top_k_logits" not in ref["capabilities"]


FAKE = """
import json, sys, time, base64
P = "crossval-external/1"
def say(o): sys.stdout.write(json.dumps(o) + "\\n"); sys.stdout.flush()
MODE = {mode!r}
if MODE == "silent":
    time.sleep(3600)
if MODE == "no-hello":
    say({{"protocol": P, "ok": True, "result": {{"type": "nope"}}}})
else:
    say({{"protocol": P, "ok": True, "result": {{"type": "hello", "name": "fake", "capabilities": {{"tokenize": True, "logits": True, "generate": True}}}}}})
for line in sys.stdin:
    req = json.loads(line); op = req["op"]
    if op == "load":
        say({{"protocol": P, "ok": True, "result": {{"n_vocab": 4}}}})
    elif op == "tokenize":
        say({{"protocol": P, "ok": True, "result": [1, 2, 3]}})
    elif op == "logits":
        n = len(req["args"]["ids"])
        if MODE == "malformed":
            sys.stdout.write("{{not json\\n"); sys.stdout.flush()
        elif MODE == "missing":
            say({{"protocol": P, "ok": True, "result": {{"shape": [n, 4]}}}})
        elif MODE == "shape":
            say({{"protocol": P, "ok": True, "result": {{"shape": [n, 5], "dtype": "float32", "data": base64.b64encode(bytes(20 * n)).decode()}}}})
        elif MODE == "error":
            say({{"protocol": P, "ok": False, "error": "out of cheese"}})
        elif MODE == "hang":
            time.sleep(3600)
    elif op == "close":
        break
"""


@pytest.mark.parametrize("mode, status, words", [
    ("malformed", "crashed", "protocol error"), ("missing", "crashed", "lacks 'data'"), ("shape", "crashed", "shape"),
    ("error", "error", "out of cheese"), ("hang", "timeout", "timed out"), ("silent", "timeout", "handshake"),
    ("no-hello", "crashed", "hello"),
])  # fmt: skip
def test_protocol_fuzz_statuses(tmp_path, tiny_model, mode, status, words):
    script = tmp_path / "fake.py"
    script.write_text(textwrap.dedent(FAKE.format(mode=mode)))
    out = tmp_path / "out"
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"id": "p", "text": "the cat"}) + "\n")
    r = crossval("run", "--model", tiny_model("llama"), "--prompt-file", f, "--steps", 2, "--timeout", 3,
                 "--reference", f"external:{sys.executable} {script}", "--out", out)  # fmt: skip
    assert r.returncode == (1 if status == "error" else 4), r.stderr + r.stdout
    (rec,) = [receipts.read_valid(p) for p in out.rglob("*__p.json")]
    assert rec["parity"]["status"] == status
    assert words in rec["diagnostics"]["error"] or words in rec["diagnostics"]["stage"], rec["diagnostics"]
    if mode == "error":  # loaded, then failed: a version-1 server, base64 as its hello implies (no transports listed)
        ref = rec["backends"]["reference"]
        assert (ref["protocol"], ref["transport"], ref["transports"]) == ("crossval-external/1", "base64", ["base64"]), ref
        assert ref["server_capabilities"] == {"tokenize": True, "logits": True, "generate": True}
