"""`crossval protocol check CMD` passes a server that speaks the external protocol and fails each
broken one at the right case, with the right reason (tests/protocol_servers/toy_server.py BREAK)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import needs_llamacpp

TOY = Path(__file__).parent / "protocol_servers" / "toy_server.py"


def check(command: str, *extra):
    r = subprocess.run([sys.executable, "-m", "crossval.cli", "protocol", "check", command, "--json", *map(str, extra)],
                       capture_output=True, text=True, env=dict(os.environ), timeout=300)  # fmt: skip
    return r.returncode, json.loads(r.stdout) if r.stdout.strip().startswith("{") else r


def test_engine_serve_passes(tiny_model):
    rc, out = check(f"{sys.executable} -m crossval.serve", "--model", tiny_model("llama"))
    assert rc == 0, out
    cases = {c["name"]: c for c in out["cases"]}
    assert all(c["ok"] for c in cases.values()), cases  # crossval.serve declares every capability
    assert "transport frames" in cases["load"]["reason"]


def test_the_toy_server_passes():
    rc, out = check(f"{sys.executable} {TOY} none", "--model", "unused")
    assert rc == 0 and out["passed"], out
    assert {c["name"]: c["ok"] for c in out["cases"]}["capture"] is None  # optional, not declared


@pytest.mark.parametrize("brk, case, words", [
    ("wrong-tag", "load", "reply tagged 'crossval-external/9', expected 'crossval-external/2'"),
    ("short-array", "logits", "array data has 156 bytes, shape [5, 8] needs 160"),
    ("wrong-shape", "logits", "array of shape [5, 9], expected [5, 8]"),
    ("silent", "hello", "timed out after 3 s during handshake"),
    ("crash-mid-reply", "logits", "exited with status 1"),
    ("non-utf8", "logits", "protocol error: unexpected output b'\\xff\\xfe\\xfd"),
    ("crash-on-malformed", "malformed-json", "backend crashed during malformed-json: exited with status 1"),
    ("hang", "logits", "timed out after 3 s during logits"),
    ("nan", "logits", "1 values are not finite"),
    ("nondeterministic", "deterministic", "two logits requests for the same ids differ"),
    ("not-greedy", "generate", "is not the argmax"),
    ("token-count", "generate", "protocol error: 2 tokens for 3 steps"),
    ("no-load-check", "before-load", "answered ok: true (an error reply was expected)"),
    ("stdout-noise", "load", "protocol error: unexpected output b'loading model...'"),
    ("ignore-close", "close", "still running 10 s after close"),
    ("base64-differs", "other-transport", "logits as base64: differ from frames"),
    ("noise-at-close", "close", "wrote 4 bytes after its last reply: b'bye\\n'"),
])  # fmt: skip
def test_a_broken_server_fails_at_the_right_case(brk, case, words):
    rc, out = check(f"{sys.executable} {TOY} {brk}", "--model", "unused", "--timeout", 3)
    assert rc == 1 and not out["passed"], out
    failed = [c for c in out["cases"] if c["ok"] is False]
    assert [c["name"] for c in failed] == [case], failed
    assert words in failed[0]["reason"], failed[0]


def _build_c_server(tmp_path) -> Path:
    """examples/c_server/server.c built with the system compiler against the libllama (and its
    llama.h) that llama-cpp-python installs."""
    import shutil

    import llama_cpp

    pkg = Path(llama_cpp.__file__).parent
    lib, include = pkg / "lib", pkg.parent / "include"
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc and (include / "llama.h").exists() and (lib / "libllama.so").exists(), (cc, include, lib)
    exe = tmp_path / "crossval-c-server"
    src = Path(__file__).resolve().parents[1] / "examples" / "c_server" / "server.c"
    r = subprocess.run([cc, "-O2", "-Wall", "-Werror", "-o", str(exe), str(src), f"-I{include}", f"-L{lib}", "-lllama",
                        f"-Wl,-rpath,{lib}"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return exe


@needs_llamacpp
def test_the_compiled_c_server_passes_and_answers_as_llama_cpp(tmp_path, tiny_model):
    import numpy as np

    from crossval.backends.external import ExternalBackend
    from crossval.backends.isolated import IsolatedLlamaCpp

    exe = _build_c_server(tmp_path)
    rc, out = check(str(exe), "--model", tiny_model("llama"))
    assert rc == 0 and out["passed"], out
    ids = list(range(1, 40))
    with ExternalBackend(str(exe), tiny_model("llama"), kv_type="f16") as x, IsolatedLlamaCpp(tiny_model("llama"), kv_type="f16") as r:
        a, b = x.logits(ids), r.logits(ids)
        g, h = x.generate(ids, 5), r.generate(ids, 5)
    # the same libllama through another context setup (one batch of n_ctx): same greedy tokens,
    # logits within llama.cpp's own batch-size variation (measured 0.010 max |Δ| on this model)
    assert g.tokens == h.tokens and (a.argmax(1) == b.argmax(1)).all()
    assert np.abs(a - b).max() <= 0.05 * np.abs(b).max(), float(np.abs(a - b).max())


@pytest.mark.parametrize("command, words", [("", "empty command"), ("/nonexistent/server", "cannot start")])
def test_a_command_that_cannot_start_is_a_one_line_input_error(command, words):
    rc, r = check(command)
    assert rc == 2 and words in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
