"""Receipts we did not write (docs/reliability.md): validate, diff, trend and report on NaN /
Infinity, out-of-range numbers, 10,000-deep nesting, a 1 GB file and receipts of the wrong kind
end in one line and exit 2, within 10 s and 1 GiB of data memory; prompt and model text with
HTML/JS (and matplotlib mathtext) in it is inert in the report."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pytest

from crossval import receipts


def crossval(*args):
    """The CLI in a child limited to 1 GiB of data memory, killed after 10 s."""

    def limit():
        resource.setrlimit(resource.RLIMIT_DATA, (1 << 30, 1 << 30))

    return subprocess.run([sys.executable, "-m", "crossval.cli", *map(str, args)], capture_output=True, text=True, timeout=10,
                          preexec_fn=limit)  # fmt: skip


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, tiny_model):
    d = tmp_path_factory.mktemp("hostile")
    f = d / "p.jsonl"
    f.write_text(json.dumps({"id": "p1", "text": "the cat sat"}) + "\n")
    r = subprocess.run([sys.executable, "-m", "crossval.cli", "run", "--model", str(tiny_model("llama")), "--reference", "engine",
                        "--prompt-file", str(f), "--steps", "2", "--out", str(d / "out"), "--json"], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return d / "out" / json.loads(r.stdout)["run_id"]


def _hostile(tmp_path, good: dict, case: str):
    """Write one hostile file; return its path."""
    p = tmp_path / "m__x.json"
    text = json.dumps(good)
    if case == "nan":
        text = text.replace('"cosine_similarity": ', '"cosine_similarity": NaN, "_": ', 1)
    elif case == "infinity":
        text = text.replace('"cosine_similarity": ', '"cosine_similarity": -Infinity, "_": ', 1)
    elif case == "huge_float":
        text = text.replace('"cosine_similarity": ', '"cosine_similarity": 1e99999, "_": ', 1)
    elif case == "huge_int":
        text = text.replace('"steps": ', '"steps": ' + "9" * 100_000 + ', "_": ', 1)
    elif case == "deep":
        text = "[" * 10_000 + "]" * 10_000
    elif case == "deep_object":
        text = '{"kind": "parity", "x": ' + '{"a": ' * 10_000 + "1" + "}" * 10_000 + "}"
    elif case == "gigabyte":
        with open(p, "wb") as f:
            f.truncate(1 << 30)  # sparse: no disk used
        return p
    elif case == "unknown_kind":
        text = json.dumps({**good, "kind": "banana"})
    elif case == "kind_not_a_string":
        text = json.dumps({**good, "kind": ["parity"]})
    elif case == "not_an_object":
        text = "[1, 2, 3]"
    elif case == "fifo":
        os.mkfifo(p)  # opening it for reading would wait for a writer forever
        return p
    elif case == "not_utf8":
        p.write_bytes(b'{"kind": "\xff"}')
        return p
    p.write_text(text)
    return p


CASES = ["nan", "infinity", "huge_float", "huge_int", "deep", "deep_object", "gigabyte", "unknown_kind", "kind_not_a_string",
         "not_an_object", "not_utf8", "fifo"]  # fmt: skip


def _one_line_exit_2(r):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr and len(lines[0]) < 1000, r.stderr[-2000:]


@pytest.mark.parametrize("case", CASES)
def test_hostile_receipt(tmp_path, good_run, case):
    good_file = next(p for p in good_run.glob("*.json") if p.name != "summary.json")
    bad = _hostile(tmp_path, receipts.read_valid(good_file), case)
    _one_line_exit_2(crossval("validate", bad))
    _one_line_exit_2(crossval("diff", good_file, bad))
    _one_line_exit_2(crossval("trend", good_run, tmp_path))
    _one_line_exit_2(crossval("report", tmp_path, "--html", tmp_path / "html"))
    assert not (tmp_path / "html").exists()


def test_receipts_of_the_wrong_kind(tmp_path, good_run):
    good_file = next(p for p in good_run.glob("*.json") if p.name != "summary.json")
    summary = good_run / "summary.json"
    _one_line_exit_2(crossval("diff", summary, good_file))  # a run summary is not a parity receipt
    _one_line_exit_2(crossval("trend", good_file))  # a file is not a run directory
    (tmp_path / "summary.json").write_bytes(good_file.read_bytes())  # a parity receipt posing as the summary
    (tmp_path / good_file.name).write_bytes(good_file.read_bytes())
    _one_line_exit_2(crossval("report", tmp_path, "--html", tmp_path / "html"))


def test_html_and_js_in_prompt_and_model_text_are_inert(tmp_path, tiny_model):
    """Prompt ids, prompt text and a model file name carrying markup, script and a malformed
    mathtext formula: the report renders them as text."""
    evil = '<script>alert(1)</script>"><img src=x onerror=alert(2)>$\\frac{$'
    model = tmp_path / "m<b onmouseover=alert(3)>.gguf"
    model.write_bytes(tiny_model("llama").read_bytes())
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"id": evil, "text": evil}) + "\n")
    r = subprocess.run([sys.executable, "-m", "crossval.cli", "run", "--model", str(model), "--reference", "engine", "--prompt-file", str(f),
                        "--steps", "2", "--out", str(tmp_path / "out"), "--json", "--localise", "always"], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    run_dir = tmp_path / "out" / json.loads(r.stdout)["run_id"]
    r = crossval("report", run_dir, "--html", tmp_path / "html")
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "html" / "index.html").read_text()
    assert "<script>alert" not in page and "<img src=x" not in page and "<b onmouseover" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<script>") == 1  # the page's own render check, nothing else
