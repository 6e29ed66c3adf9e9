"""The child-process transport (crossval/backends/isolated.py ChildProcess): reading is linear in
the reply's size, and binary frames after a reply line arrive intact."""

from __future__ import annotations

import os
import sys
import time

import pytest

from conftest import needs_llamacpp
from crossval.backends.isolated import ChildProcess

LINE = 160_000_000  # a 650 × 49,152 float32 logits reply in base64 is about this long


def test_a_160_mb_reply_line_is_read_in_linear_time():
    # the child writes one 160 MB line in 1 MiB pieces, then a short line
    code = ("import sys; o = sys.stdout.buffer; piece = b'x' * (1 << 20)\n"
            f"n = {LINE}\n"
            "while n: k = min(n, len(piece)); o.write(piece[:k]); n -= k\n"
            "o.write(b'\\nnext\\n'); o.flush()")  # fmt: skip
    c = ChildProcess()
    c._start([sys.executable, "-c", code], dict(os.environ), 120)
    try:
        deadline = time.monotonic() + 120
        line = c._readline(deadline, "test")
        assert len(line) == LINE and line[:1] == b"x" and line[-1:] == b"x"
        # every byte read was searched for the newline at most once (the old reader re-searched the
        # whole buffer after each 64 KiB read: ~n²/128 KiB ≈ 10¹¹ bytes here)
        st = c.reader_stats
        assert st["bytes_scanned"] <= st["bytes_read"], st
        assert st["reads"] >= 2, st  # the line really arrived in pieces
        assert c._readline(deadline, "test") == b"next"
    finally:
        c._shutdown()


@pytest.mark.parametrize("transport", ["frames", "base64"])
def test_the_stand_in_reply_arrives_intact_in_either_transport(transport):
    """650 × 4096 logits (10 MB) from `python -m crossval.serve --stand-in`: the closed-form array,
    bit for bit, float32 and writable (the frame is read straight into the caller's buffer: every
    byte the reader took from the pipe is the reply's line or its frame)."""
    import numpy as np

    from crossval.backends.external import ExternalBackend
    from crossval.serve import stand_in_logits

    with ExternalBackend(f"{sys.executable} -m crossval.serve --stand-in 650 4096", "unused", transport=transport, timeout=120) as b:
        got = b.logits(list(range(650)))
        st = dict(b.reader_stats)
    assert got.dtype == np.float32 and got.flags.writeable and np.array_equal(got, stand_in_logits(650, 4096))
    if transport == "frames":
        assert st["last_frames_bytes"] == 650 * 4096 * 4
        assert st["bytes_read"] - st["bytes_scanned"] == 650 * 4096 * 4  # the line searched once, the frame never
    else:
        assert st["last_frames_bytes"] == 0 and st["bytes_scanned"] <= st["bytes_read"]


def test_base64_replies_are_the_arrays_base64_spliced_into_the_line():
    """crossval.serve.Replies writes base64 in 3 MiB slices into the JSON line in place of each
    array's placeholder: the line parses, each "data" is the base64 of the whole array, strings keep
    their escapes, and frames are the arrays' bytes in order."""
    import base64
    import io
    import json

    import numpy as np

    from crossval.serve import Replies

    a = np.random.default_rng(0).standard_normal((7, 300_001), dtype=np.float32)  # 8.4 MB: three slices
    b = np.arange(12, dtype=np.float32).reshape(3, 4)
    result = {"tokens": [1, 2], "logits": a, "x": {"y": b}, "text": 'é " \n data'}
    for transport in ("base64", "frames"):
        out = io.BytesIO()
        Replies(out, transport).send(True, result)
        line, _, rest = out.getvalue().partition(b"\n")
        r = json.loads(line)["result"]
        assert r["text"] == result["text"] and r["tokens"] == [1, 2]
        if transport == "base64":
            assert base64.b64decode(r["logits"]["data"]) == a.tobytes() and base64.b64decode(r["x"]["y"]["data"]) == b.tobytes()
            assert rest == b""
        else:
            assert (r["logits"]["frame"], r["x"]["y"]["frame"]) == (0, 1) and rest == a.tobytes() + b.tobytes()


def test_limit_blas_reaches_numpys_blas_in_a_fresh_process():
    """crossval.serve limits its BLAS pool at load as crossval commands do (a float-mode engine's
    logits depend on the OpenBLAS thread count); threadpoolctl only reaches loaded libraries, so
    limit_blas must load numpy's BLAS first — in a process that has not imported numpy yet too."""
    import subprocess

    code = "import sys; from crossval.process import limit_blas; n = limit_blas(1); print(n, 'numpy' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "OPENBLAS_NUM_THREADS": "2"},
                       timeout=120)  # fmt: skip
    assert r.stdout.split() == ["1", "True"], r.stdout + r.stderr


def _long_prompt() -> str:
    import json
    from pathlib import Path

    import crossval

    rows = [json.loads(x) for x in (Path(crossval.__file__).parent / "prompts" / "default.jsonl").read_text().splitlines() if x.strip()]
    return next(r["text"] for r in rows if r["id"] == "long")


def _bit_identical(a, b) -> bool:
    """a and b hold the same float32 bits. Compared outside `assert a.tobytes() == b.tobytes()`,
    whose failure pytest would explain with a difflib diff of two ~100 MB strings (hours)."""
    same = a.shape == b.shape and a.tobytes() == b.tobytes()
    if not same and a.shape == b.shape:
        print(f"not bit-identical: max|Δ| {float(abs(a.astype('f8') - b).max())}")
    return same


# base64 against frames is the protocol checker's other-transport case (tests/test_protocol_check.py)
@pytest.mark.parametrize("mode, transport", [("float", "frames"), ("faithful", "frames")])
def test_served_engine_is_bit_identical_to_the_engine_in_process(tiny_model, mode, transport):
    """`python -m crossval.serve` through the protocol vs the engine in process, the long default
    prompt: identical logits (teacher-forced, generated) and per-layer capture rows, both transports."""
    import numpy as np

    from crossval.backends.engine import EngineBackend
    from crossval.backends.external import ExternalBackend

    path = tiny_model("llama")
    with EngineBackend(path, n_ctx=4096, kv_type="f32", mode=mode) as e, \
            ExternalBackend(f"{sys.executable} -m crossval.serve", path, n_ctx=4096, kv_type="f32", mode=mode, transport=transport) as x:  # fmt: skip
        ids = e.tokenize(_long_prompt())
        assert len(ids) > 100 and x.tokenize(_long_prompt()) == ids
        a, b = x.logits(ids), e.logits(ids)
        assert _bit_identical(a, b)
        assert x.generate(ids[:5], 0).tokens == []  # an empty (0, n_vocab) array still travels, and the stream stays in step
        g, h = x.generate(ids, 4), e.generate(ids, 4)
        assert g.tokens == h.tokens and _bit_identical(g.logits, h.logits)
        if transport == "frames":
            r, q = x.capture_rows(ids, 50), e.capture_rows(ids, 50)
            assert sorted(r) == sorted(q) and len(r) == 3 * 2  # three stages × the tiny model's two layers
            assert all(np.array_equal(r[k], q[k]) for k in r)


@needs_llamacpp
def test_localise_against_an_external_engine_names_the_same_layer(tmp_path, tiny_model):
    """--localise always on a tiny model whose layer 1 is perturbed: the engine served through the
    protocol (its `capture` request) and the engine in process name the same first layer."""
    import json
    import subprocess

    from crossval import receipts

    prompt = tmp_path / "p.jsonl"
    prompt.write_text(json.dumps({"id": "p0", "text": "the cat sat on the mat"}) + "\n")
    first = {}
    for side in ("engine", f"external:{sys.executable} -m crossval.serve"):
        out = tmp_path / ("ext" if side != "engine" else "eng")
        r = subprocess.run([sys.executable, "-m", "crossval.cli", "run", "--model", str(tiny_model("llama")), "--prompt-file", str(prompt),
                            "--steps", "4", "--n-ctx", "128", "--engine", side, "--reference", "llamacpp", "--perturb-layer", "1",
                            "--perturb-scale", "3.0", "--localise", "always", "--out", str(out)],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
        assert r.returncode == 1, r.stderr + r.stdout
        (rec,) = [receipts.read_valid(p) for p in out.rglob("*__p0.json")]
        loc = rec["parity"]["localisation"]
        assert loc is not None, rec["parity"]
        first[side] = (loc["first"]["layer"], loc["first"]["stage"], loc["position"])
    assert len(set(first.values())) == 1 and next(iter(first.values()))[0] == 1, first
