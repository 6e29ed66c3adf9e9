"""Reliability: hostile input, concurrent runs, memory over repeated load/free (docs/reliability.md)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from conftest import needs_llamacpp
from crossval import models, receipts


def crossval(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "crossval.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=300)  # fmt: skip


def _one_line_exit_2(r):
    assert r.returncode == 2, r.stderr + r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr


def test_invalid_utf8_prompt_file(tmp_path, tiny_model):
    f = tmp_path / "p.jsonl"
    f.write_bytes(b'{"id": "x", "text": "caf\xe9"}\n')
    _one_line_exit_2(crossval("run", "--model", tiny_model("llama"), "--prompt-file", f, "--out", tmp_path / "o"))


def test_missing_prompt_file(tmp_path, tiny_model):
    _one_line_exit_2(crossval("run", "--model", tiny_model("llama"), "--prompt-file", tmp_path / "nope.jsonl", "--out", tmp_path / "o"))


@needs_llamacpp
def test_prompt_longer_than_context(tmp_path, tiny_model):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"id": "long", "text": "the cat " * 200}) + "\n")
    r = crossval("run", "--model", tiny_model("llama"), "--prompt-file", f, "--n-ctx", 64, "--out", tmp_path / "o")
    _one_line_exit_2(r)
    assert "exceed --n-ctx 64" in r.stderr


@needs_llamacpp
def test_empty_prompt(tmp_path, tiny_model):
    """With add_bos an empty prompt is just BOS, a valid one-token prompt; without it there is
    nothing to run, which is bad input (exit 2, one line)."""
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"id": "empty", "text": ""}) + "\n")
    r = crossval("run", "--model", tiny_model("llama"), "--prompt-file", f, "--out", tmp_path / "o", "--steps", 2)
    assert r.returncode == 0, r.stderr
    rec = receipts.read_valid(next((tmp_path / "o").rglob("*__empty.json")))
    assert rec["tokenization"]["ids"] == [1]
    nobos = tmp_path / "nobos.gguf"
    nobos.write_bytes(tiny_model("llama").read_bytes().replace(b"tokenizer.ggml.add_bos_token\x07\x00\x00\x00\x01",
                                                               b"tokenizer.ggml.add_bos_token\x07\x00\x00\x00\x00"))  # fmt: skip
    r = crossval("run", "--model", nobos, "--prompt-file", f, "--out", tmp_path / "o2", "--steps", 2)
    _one_line_exit_2(r)
    assert "empty after tokenization" in r.stderr


@pytest.mark.parametrize("name", ["../../etc/passwd", "smollm2/../../x", "/abs/path/model"])
def test_model_names_cannot_escape_the_cache(tmp_path, monkeypatch, name):
    monkeypatch.setenv("CROSSVAL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(models.ModelFetchError, match="unknown model"):
        models.fetch(name)
    try:  # a name that is not a known model is only ever taken as the path the user typed
        assert models.resolve_model(name) == Path(name)
    except models.ModelFetchError:
        pass
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*"))


@needs_llamacpp
def test_prompt_ids_cannot_escape_the_output_dir(tmp_path, tiny_model):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"id": "../../escaped", "text": "the cat"}) + "\n")
    out = tmp_path / "out"
    assert crossval("run", "--model", tiny_model("llama"), "--prompt-file", f, "--out", out, "--steps", 2).returncode == 0
    written = [p for p in tmp_path.rglob("*.json")]
    assert written and all(out in p.parents for p in written)


@needs_llamacpp
def test_concurrent_runs_into_one_directory(tmp_path, tiny_model):
    out = tmp_path / "out"
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"id": f"p{i}", "text": "the cat sat " * (i + 1)}) + "\n" for i in range(3)))
    cmd = [sys.executable, "-m", "crossval.cli", "run", "--model", str(tiny_model("llama")), "--prompt-file", str(f),
           "--out", str(out), "--steps", "4", "--json"]  # fmt: skip
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    run_ids = {json.loads(o)["run_id"] for o, _ in outs}
    assert len(run_ids) == 3  # each run has its own directory
    files = list(out.rglob("*.json"))
    assert len(files) == 3 * 4
    for p in files:
        receipts.read_valid(p)
    assert not list(out.rglob("*.tmp"))


def test_engine_load_free_100x_rss_bounded(tiny_model):
    from engine.generate import Engine

    path = tiny_model("gemma3")
    proc = psutil.Process()
    rss = []
    for i in range(100):
        e = Engine(path, n_ctx=64).load()
        e.generate([1, 300, 301], 4)
        del e
        if i in (9, 99):
            gc.collect()
            rss.append(proc.memory_info().rss)
    growth = (rss[1] - rss[0]) / 2**20
    print(f"engine: RSS growth over 90 load/generate/free cycles: {growth:.1f} MB")
    assert growth < 50


def test_reliability_doc_names_every_test():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "reliability.md").read_text()
    for t in ("test_fuzz_gguf", "test_reference_faults_become_diagnostic_receipts", "test_interrupted_receipt_write_leaves_old_or_nothing",
              "test_concurrent_runs_into_one_directory", "test_validate_rejects_tampered_and_malformed",
              "test_engine_load_free_100x_rss_bounded", "test_llamacpp_load_generate_free_100x"):  # fmt: skip
        assert t in doc, t


@needs_llamacpp
def test_plain_text_prompt_file(tmp_path, tiny_model):
    f = tmp_path / "prompts.txt"
    f.write_text("the cat sat\n\na dog ran\n", encoding="utf-8")
    out = tmp_path / "o"
    r = crossval("run", "--model", tiny_model("llama"), "--prompt-file", f, "--out", out, "--steps", 2, "--json")
    assert r.returncode == 0, r.stderr
    assert [x["prompt"] for x in json.loads(r.stdout)["receipts"]] == ["line1", "line2"]
