"""Interrupted and concurrent runs (docs/reliability.md): SIGINT/SIGTERM at random points of a
real run leave no orphan process, only files that validate, a summary marked `interrupted`, and
exit 130/143; a second Ctrl-C exits at once; the engine's own steps run under --timeout; eight
runs into one receipts folder."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import needs_llamacpp
from crossval import receipts


def _prompts(tmp_path, n=6):
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"id": f"p{i}", "text": "the cat sat on the mat " * (i + 1)}) + "\n" for i in range(n)))
    return f


def _start(tmp_path, model, out, *extra):
    cmd = [sys.executable, "-m", "crossval.cli", "run", "--model", str(model), "--prompt-file", str(_prompts(tmp_path)),
           "--steps", "16", "--out", str(out), "--keep-going", "--json", *map(str, extra)]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _descendants(p: subprocess.Popen) -> list[psutil.Process]:
    try:
        return psutil.Process(p.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for q in procs:
        try:
            if q.is_running() and q.status() != psutil.STATUS_ZOMBIE:
                out.append(q)
        except psutil.NoSuchProcess:
            pass
    return out


def _check_files(out):
    files = [p for p in out.rglob("*.json")]
    for p in files:
        receipts.read_valid(p)  # every file on disk validates
    return files


def _wait_for_run_dir(p, out, kids, limit=120.0) -> float:
    """Poll until the run's directory exists (its imports and model checks are done); return when."""
    t0 = time.perf_counter()
    while p.poll() is None and time.perf_counter() - t0 < limit:
        for q in _descendants(p):
            kids.setdefault(q.pid, q)
        if out.exists() and any(out.iterdir()):
            break
        time.sleep(0.02)
    return time.perf_counter()


@needs_llamacpp
def test_signals_at_random_points_of_a_real_run(tmp_path, tiny_model):
    """Eight runs sent SIGINT or SIGTERM at random moments — two while the command starts up, six
    during the comparisons (between the run directory appearing and the usual end, measured
    first): children gone, every file on disk valid, the summary marked `interrupted` with the
    receipts finished so far, exit 128 + the signal."""
    model = tiny_model("llama")
    p = _start(tmp_path, model, tmp_path / "whole")
    t_start = _wait_for_run_dir(p, tmp_path / "whole", {})
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    span = time.perf_counter() - t_start
    rng = random.Random(int(os.environ.get("CROSSVAL_SIGNAL_SEED", "1")))
    mid_run = 0
    for trial in range(8):
        sig = (signal.SIGINT, signal.SIGTERM)[trial % 2]
        out = tmp_path / f"run{trial}"
        kids: dict[int, psutil.Process] = {}
        p = _start(tmp_path, model, out)
        if trial < 2:
            time.sleep(rng.uniform(0.3, 1.0))  # starting up: imports, model checks
        else:
            t0 = _wait_for_run_dir(p, out, kids)
            delay = rng.uniform(0.0, 0.8 * span)
            while time.perf_counter() - t0 < delay and p.poll() is None:
                for q in _descendants(p):
                    kids.setdefault(q.pid, q)
                time.sleep(0.02)
        p.send_signal(sig)
        stdout, err = p.communicate(timeout=60)
        time.sleep(0.5)
        assert not _alive(list(kids.values())), f"trial {trial}: orphans {[q.pid for q in _alive(list(kids.values()))]}"
        files = _check_files(out)
        assert not list(out.rglob("*.tmp")) if out.exists() else True
        if p.returncode == 0:  # it had finished before the signal
            continue
        assert p.returncode == 128 + sig, (trial, p.returncode, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        run_dirs = [d for d in out.iterdir() if d.is_dir()] if out.exists() else []
        if run_dirs:
            s = receipts.read_valid(run_dirs[0] / "summary.json")
            assert s["exit_code"] == 128 + sig and s["interrupted"]["signal"] == sig.name
            assert s["interrupted"]["receipts_written"] == len(s["receipts"]) == len(files) - 1
            mid_run += 1
    assert mid_run >= 3, f"only {mid_run} of 6 runs were interrupted mid-run"


@needs_llamacpp
def test_second_ctrl_c_exits_at_once(tmp_path, tiny_model):
    out = tmp_path / "o"
    p = _start(tmp_path, tiny_model("llama"), out)
    kids: dict[int, psutil.Process] = {}
    t0 = time.perf_counter()
    while not kids and time.perf_counter() - t0 < 60:
        for q in _descendants(p):
            kids.setdefault(q.pid, q)
        time.sleep(0.05)
    assert kids, "the run started no child"
    p.send_signal(signal.SIGINT)
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=10)
    assert p.returncode == 130
    time.sleep(0.5)
    assert not _alive(list(kids.values()))
    _check_files(out)


def test_engine_steps_run_under_the_deadline(tmp_path):
    """A chat template that loops for hours: its render is stopped by --timeout like a hung
    reference would be — a `timeout` receipt naming the stage, exit 4."""
    sys.path.insert(0, os.path.dirname(__file__))
    from tiny_models import write_tiny_model

    from gguf import GGUFValueType

    forever = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    model = write_tiny_model(tmp_path / "m.gguf", "llama", extra_kv={"tokenizer.chat_template": (forever, GGUFValueType.STRING)})
    f = tmp_path / "chat.jsonl"
    f.write_text(json.dumps({"id": "c", "messages": [{"role": "user", "content": "hi"}]}) + "\n")
    r = subprocess.run([sys.executable, "-m", "crossval.cli", "run", "--model", str(model), "--reference", "engine", "--prompt-file",
                        str(f), "--steps", "2", "--timeout", "3", "--out", str(tmp_path / "o"), "--json"],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 4, r.stderr
    (rec,) = [p for p in (tmp_path / "o").rglob("*__c.json")]
    d = receipts.read_valid(rec)
    assert d["parity"]["status"] == "timeout" and d["diagnostics"]["stage"] == "render"  # (without the deadline: hours)


@needs_llamacpp
def test_eight_concurrent_runs_into_one_folder(tmp_path, tiny_model):
    out = tmp_path / "out"
    cache = tmp_path / "cache"
    env = {**os.environ, "CROSSVAL_CACHE": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-m", "crossval.cli", "run", "--model", str(tiny_model("llama")), "--prompt-file",
                               str(_prompts(tmp_path, 2)), "--steps", "4", "--out", str(out), "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(8)]  # fmt: skip
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    run_ids = {json.loads(o)["run_id"] for o, _ in outs}
    assert len(run_ids) == 8
    files = _check_files(out)
    assert len(files) == 8 * 3 and not list(out.rglob("*.tmp"))
    # the one cache entry every run needed (llama.cpp's compiled ISA) was written once, complete
    (isa_rec,) = (cache / "isa").glob("llama-*.json")
    assert json.loads(isa_rec.read_text())["flags"] and not list((cache / "isa").glob(".*"))


def test_a_cache_entry_is_built_once(tmp_path, tiny_model):
    """Eight processes wanting the same F32 copy at once: one writes it (under its lock), the
    others wait and use that very file — every process sees the same inode, no temporary is left."""
    code = ("import os, sys; from engine.convert import cached_float_copy; "
            "print(os.stat(cached_float_copy(sys.argv[1], sys.argv[2])).st_ino)")  # fmt: skip
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tiny_model("gemma3")), str(tmp_path / "float")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(8)]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    assert len({o.strip() for o, _ in outs}) == 1
    assert [p.name for p in (tmp_path / "float").iterdir() if not p.name.endswith(".lock")] == [p.name for p in (tmp_path / "float").glob("*.gguf")]


def test_interrupted_kit_build_leaves_no_finished_looking_build(tmp_path, tiny_model):
    """SIGTERM while a kit's build.sh runs (here a stand-in that starts a long child): the build's
    whole process group is gone, exit 143, and the build directory no longer looks finished (the
    BUILD_INFO.json of an earlier build was set aside before build.sh started)."""
    from crossval import gemmacpp_kit

    kit = tmp_path / "kit"
    (kit / "sources").mkdir(parents=True)
    (kit / "sources" / "SHA256SUMS").write_text("")
    (kit / "build.sh").write_text("sleep 300 &\nwait\n")
    env = {**os.environ, "CROSSVAL_CACHE": str(tmp_path / "cache"), gemmacpp_kit.KIT_ENV: str(kit)}
    out = tmp_path / "cache" / "gemmacpp" / gemmacpp_kit.build_dir(True, kit).name  # the build directory in this test's cache
    out.mkdir(parents=True)
    (out / "BUILD_INFO.json").write_text(json.dumps({"variant": "patched", "weights": []}))  # an earlier build, another GGUF
    p = subprocess.Popen([sys.executable, "-m", "crossval.cli", "gemmacpp", "build", "--model", str(tiny_model("gemma3"))], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    sleeper = None
    t0 = time.perf_counter()
    while sleeper is None and time.perf_counter() - t0 < 60:
        sleeper = next((q for q in _descendants(p) if q.name() == "sleep"), None)
        time.sleep(0.05)
    assert sleeper is not None, p.stderr.read() if p.poll() is not None else "build.sh never started"
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 143 and len(err.strip().splitlines()) == 1, err
    time.sleep(0.5)
    assert not _alive([sleeper])
    assert not (out / "BUILD_INFO.json").exists()
