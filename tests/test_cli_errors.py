"""Every failure ends in one line and its documented exit code (crossval/errors.py, README):
an unusable `--out` is bad input (2) and leaves nothing behind; an internal error is 5 with the
traceback saved to a file the line names; usage errors are one line too."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import needs_llamacpp
from crossval import cli


def _prompt(tmp_path: Path) -> Path:
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"id": "p0", "text": "the cat sat"}) + "\n")
    return f


def _one_line(err: str, code: int, rc: int) -> str:
    lines = err.strip().splitlines()
    assert rc == code, err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _run(tmp_path, tiny_model, out, *extra):
    return ["run", "--model", str(tiny_model("llama")), "--prompt-file", str(_prompt(tmp_path)), "--steps", "2", "--n-ctx", "64",
            "--out", str(out), *extra]  # fmt: skip


def test_out_on_a_file_is_bad_input(tmp_path, tiny_model):
    f = tmp_path / "afile"
    f.write_text("x")
    r = subprocess.run([sys.executable, "-m", "crossval.cli", *_run(tmp_path, tiny_model, f)], capture_output=True, text=True, timeout=120)
    line = _one_line(r.stderr, 2, r.returncode)
    assert "cannot write" in line and "afile" in line
    assert f.read_text() == "x"


def test_out_under_a_file_is_bad_input(tmp_path, tiny_model):
    f = tmp_path / "afile"
    f.write_text("x")
    r = subprocess.run([sys.executable, "-m", "crossval.cli", *_run(tmp_path, tiny_model, f / "sub")], capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert "cannot write" in _one_line(r.stderr, 2, r.returncode)


def test_unwritable_out_is_bad_input(tmp_path, tiny_model, capsys, monkeypatch):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    if os.access(d, os.W_OK):  # running as root: permissions do not bind, so simulate what the kernel says
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == d else real(p, mode, **kw))
    try:
        code = cli.main(_run(tmp_path, tiny_model, d))
    finally:
        d.chmod(0o700)
    line = _one_line(capsys.readouterr().err, 2, code)
    assert "permission denied" in line
    assert not list(d.iterdir())


@needs_llamacpp
def test_full_disk_is_bad_input_and_leaves_nothing(tmp_path, tiny_model, capsys, monkeypatch):
    """ENOSPC while writing a receipt (simulated at fsync, where a full disk reports it)."""
    out = tmp_path / "out"

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    code = cli.main(_run(tmp_path, tiny_model, out))
    line = _one_line(capsys.readouterr().err, 2, code)
    assert "no space left" in line
    assert not [p for p in out.rglob("*") if p.is_file()]  # no receipt, no temporary file


@needs_llamacpp
@pytest.mark.parametrize("exc", [ValueError, KeyError, RuntimeError])
def test_internal_error_has_its_own_exit_code_and_a_saved_traceback(tmp_path, tiny_model, capsys, monkeypatch, exc):
    """A bug inside crossval (here: the metric step raising) is never reported as bad input."""
    from crossval import compare

    monkeypatch.setenv("CROSSVAL_CACHE", str(tmp_path / "cache"))

    def broken(parts):
        raise exc("injected fault")

    monkeypatch.setattr(compare, "teacher_forced_parts", broken)
    code = cli.main(_run(tmp_path, tiny_model, tmp_path / "out"))
    line = _one_line(capsys.readouterr().err, 5, code)
    assert "internal error" in line and exc.__name__ in line
    saved = Path(line.rsplit("traceback saved to ", 1)[1])
    text = saved.read_text()
    assert saved.parent == tmp_path / "cache" / "errors" and "Traceback" in text and "injected fault" in text


@pytest.mark.parametrize("argv", [["run", "--steps", "0"], ["run", "--mode", "fast"], ["nope"], ["run", "--timeout", "-1"]])
def test_usage_errors_are_one_line(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    _one_line(capsys.readouterr().err, 2, e.value.code)


def test_shared_options_have_one_default_everywhere():
    """--timeout, --kv-type, --mode, --threads mean the same in every command that takes them."""
    p = cli.build_parser()
    sub = next(a for a in p._actions if isinstance(a, type(p._subparsers._group_actions[0])))
    seen: dict[str, set] = {}
    for name, parser in sub.choices.items():
        for a in parser._actions:
            if a.dest in ("timeout", "kv_type", "mode"):
                seen.setdefault(a.dest, set()).add(a.default)
    assert seen == {"timeout": {300.0}, "kv_type": {"f16"}, "mode": {"auto"}}, seen


def test_a_closed_output_pipe_is_a_quiet_141_not_a_traceback(tmp_path):
    """`crossval models list | head -0`: the reader is gone before the table is printed."""
    p = subprocess.Popen([sys.executable, "-m", "crossval.cli", "models", "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # before the child has finished importing, so its first write meets a closed pipe
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141, err
    assert err == ""


def test_a_closed_stderr_keeps_the_errors_exit_code(tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "crossval.cli", "run", "--model", str(tmp_path / "missing.gguf")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    p.stderr.close()
    out = p.stdout.read().decode()
    assert p.wait(timeout=120) == 2, out
