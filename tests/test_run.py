"""`crossval run` end to end on tiny models: receipts, exit codes, and every failure path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import needs_llamacpp
from crossval import receipts

pytestmark = needs_llamacpp


def _prompt_file(tmp_path: Path, n: int = 2) -> Path:
    p = tmp_path / "prompts.jsonl"
    lines = [{"id": f"p{i}", "text": t} for i, t in enumerate(["the cat sat on the mat", "a dog ran in it. the cat!", "on the mat and"][:n])]
    p.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return p


def crossval(*args, env=None, timeout=300):
    e = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "crossval.cli", *map(str, args)], capture_output=True, text=True, env=e, timeout=timeout)


def _receipts(out: Path) -> list[dict]:
    files = sorted(p for p in out.rglob("*.json") if p.name != "summary.json")
    return [receipts.read_valid(p) for p in files]


def test_run_tiny_models_exit_0_with_valid_receipts(tmp_path, tiny_model):
    out = tmp_path / "out"
    r = crossval("run", "--models", f"{tiny_model('llama')},{tiny_model('gemma3')}", "--prompt-file", _prompt_file(tmp_path),
                 "--steps", 8, "--n-ctx", 128, "--out", out, "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr + r.stdout
    summary = json.loads(r.stdout)
    assert summary["passed"] and summary["counts"] == {"ok": 4}
    recs = _receipts(out)
    assert len(recs) == 4
    for rec in recs:
        assert rec["parity"]["status"] == "ok" and rec["verdict"]["passed"]
        assert rec["thresholds"]["profile"] == "exact"  # F32 fixtures
        assert rec["parity"]["cosine_similarity"] >= 0.9999
        n = rec["prompt"]["n_tokens"]
        assert rec["parity"]["positions"] == n + 8 - 1 == len(rec["per_position"])
        assert rec["backends"]["reference"]["version"].startswith("llama-cpp-python")
        assert len(rec["model"]["sha256"]) == 64 and rec["environment"]["threads"] == 1
    receipts.read_valid(next(out.rglob("summary.json")))


def test_jq_parity_query_works_on_every_receipt(tmp_path, tiny_model):
    """The seed's jq example: jq '.parity | {status, cosine_similarity, exact_match_rate, first_divergence_step}'."""
    import shutil

    out = tmp_path / "out"
    assert crossval("run", "--model", tiny_model("llama"), "--prompt-file", _prompt_file(tmp_path, 1), "--steps", 4, "--out", out).returncode == 0
    jq = shutil.which("jq")
    q = ".parity | {status, cosine_similarity, exact_match_rate, first_divergence_step}"
    for p in out.rglob("*__*.json"):
        if jq:
            got = json.loads(subprocess.run([jq, q, str(p)], capture_output=True, text=True, check=True).stdout)
        else:  # same projection in Python when jq is not installed
            par = json.loads(p.read_text())["parity"]
            got = {k: par[k] for k in ("status", "cosine_similarity", "exact_match_rate", "first_divergence_step")}
        assert got["status"] == "ok" and got["exact_match_rate"] == 1.0 and got["first_divergence_step"] is None


def test_perturbed_engine_fails_with_exit_1(tmp_path, tiny_model):
    out = tmp_path / "out"
    r = crossval("run", "--model", tiny_model("llama"), "--prompt-file", _prompt_file(tmp_path, 1), "--steps", 16, "--out", out,
                 "--perturb-layer", 1, "--perturb-scale", 3.0)  # fmt: skip
    assert r.returncode == 1, r.stderr + r.stdout
    (rec,) = _receipts(out)
    assert rec["parity"]["status"] == "divergence" and not rec["verdict"]["passed"]
    assert rec["parity"]["cosine_similarity"] < 0.9999
    assert rec["config"]["perturbation"] == {"layer": 1, "scale": 3.0}
    assert any("cosine_similarity" in f for f in rec["verdict"]["failures"])


@pytest.mark.parametrize("fault, status", [("hang", "timeout"), ("segv", "crashed"), ("abort", "crashed"), ("garbage", "crashed"),
                                          ("exit", "crashed"), ("kill", "crashed")])  # fmt: skip
def test_reference_faults_become_diagnostic_receipts(tmp_path, tiny_model, fault, status):
    out = tmp_path / "out"
    op = "tokenize" if fault == "garbage" else "compare_pass"
    t = time.monotonic()
    r = crossval("run", "--model", tiny_model("llama"), "--prompt-file", _prompt_file(tmp_path, 2), "--steps", 4, "--out", out,
                 "--timeout", 3, "--keep-going", env={"CROSSVAL_CHILD_FAULT": f"{fault}@{op}"})  # fmt: skip
    elapsed = time.monotonic() - t
    assert r.returncode == 4, r.stderr + r.stdout
    recs = _receipts(out)
    assert [x["parity"]["status"] for x in recs] == [status, status]  # the harness went on to the next prompt
    d = recs[0]["diagnostics"]
    assert d["stage"] == op and d["error"]
    assert any("injecting fault" in line for line in d["stderr_tail"])
    if fault == "hang":
        assert elapsed < 2 * (3 + 5) + 10  # two prompts, each within timeout + 5 s (+ startup)
    if fault == "kill":
        assert d["returncode"] == -9 and "SIGKILL" in d["error"]


def test_without_keep_going_a_crash_ends_the_run(tmp_path, tiny_model):
    out = tmp_path / "out"
    r = crossval("run", "--model", tiny_model("llama"), "--prompt-file", _prompt_file(tmp_path, 3), "--steps", 4, "--out", out,
                 env={"CROSSVAL_CHILD_FAULT": "segv@compare_pass"})  # fmt: skip
    assert r.returncode == 4
    recs = _receipts(out)
    assert [x["parity"]["status"] for x in recs] == ["crashed"]
    summary = receipts.read_valid(next(out.rglob("summary.json")))
    assert summary["exit_code"] == 4 and summary["counts"] == {"crashed": 1}


def test_reference_unavailable_is_engine_only(tmp_path, tiny_model):
    out = tmp_path / "out"
    env = {"LLAMA_CPP_LIB_PATH": str(tmp_path / "no-lib-here")}
    r = crossval("run", "--model", tiny_model("llama"), "--prompt-file", _prompt_file(tmp_path, 1), "--steps", 4, "--out", out, env=env)
    assert r.returncode == 0, r.stderr + r.stdout
    (rec,) = _receipts(out)
    assert rec["parity"]["status"] == "engine_only" and rec["backends"]["reference"] is None
    r = crossval("run", "--model", tiny_model("llama"), "--prompt-file", _prompt_file(tmp_path, 1), "--steps", 4, "--out", out,
                 "--require-reference", env=env)  # fmt: skip
    assert r.returncode == 3


def test_run_opens_each_model_once_and_loads_the_next_reference_early(tmp_path, tiny_model, monkeypatch):
    """Work counted, not timed: each GGUF is opened and its tokenizer built once per run (the engine
    backend reuses what resolve opened), the next model's reference starts once this model's
    first receipt is written, and every reference's load time is its own (not the wait for it)."""
    import engine.generate
    import engine.gguf_model
    from crossval import run as R
    from crossval.prompts import load_file
    from engine.tokenizer import Tokenizer

    events = []
    opened, built = [], []
    real_open, real_from_gguf = engine.gguf_model.open_gguf, Tokenizer.from_gguf.__func__
    monkeypatch.setattr(engine.gguf_model, "open_gguf", lambda p: opened.append(Path(p).name) or real_open(p))
    monkeypatch.setattr(engine.generate, "open_gguf", lambda p: opened.append(Path(p).name) or real_open(p))
    monkeypatch.setattr(Tokenizer, "from_gguf", classmethod(lambda cls, g: built.append(g.path.name) or real_from_gguf(cls, g)))
    real_write, real_start = R.receipts.write, R.StartedReference.__init__

    def write(path, obj):
        events.append(("receipt", Path(path).name))
        out = real_write(path, obj)
        if Path(path).name == "llama__p1.json":
            time.sleep(6)  # the first model's last receipt: the next reference, long loaded, waits to be used
        return out

    monkeypatch.setattr(R.receipts, "write", write)

    def start(self, cfg, plan, settings):
        events.append(("start", plan.path.name))
        real_start(self, cfg, plan, settings)

    monkeypatch.setattr(R.StartedReference, "__init__", start)
    models = [str(tiny_model("llama")), str(tiny_model("gemma3"))]
    cfg = R.RunConfig(models=models, prompts=load_file(_prompt_file(tmp_path, 2)), prompt_set=None, steps=4, n_ctx=128, out_dir=tmp_path / "out")
    res = R.run(cfg)
    assert res.exit_code == 0 and [r["status"] for r in res.rows] == ["ok"] * 4
    assert sorted(opened) == sorted(built) == ["gemma3.gguf", "llama.gguf"]
    assert events[:3] == [("start", "llama.gguf"), ("receipt", "llama__p0.json"), ("start", "gemma3.gguf")]
    recs = {r["model"]["path"]: r for r in _receipts(tmp_path / "out") if r["prompt"]["id"] == "p0"}
    assert 0 < recs[models[1]]["timing"]["reference_load_s"] < 6  # the child's load, not the 6 s it then waited


@pytest.mark.parametrize("how", ["missing", "corrupt"])
def test_bad_model_exits_2_with_one_line(tmp_path, how):
    p = tmp_path / "m.gguf"
    if how == "corrupt":
        p.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 40)
    r = crossval("run", "--model", p, "--steps", 2, "--out", tmp_path / "out")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.json"))


def test_bad_prompt_file_exits_2(tmp_path, tiny_model):
    f = tmp_path / "p.jsonl"
    f.write_text('{"id": "x", "text": "ok"}\n{not json\n')
    r = crossval("run", "--model", tiny_model("llama"), "--prompt-file", f, "--out", tmp_path / "out")
    assert r.returncode == 2 and "p.jsonl:2" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_interrupted_receipt_write_leaves_old_or_nothing(tmp_path):
    """Kill a writer mid-stream many times: the target is always absent or a complete version."""
    target = tmp_path / "r.json"
    script = (
        "import sys; from crossval.receipts import atomic_write_json\n"
        "i = 0\n"
        "while True:\n"
        "    atomic_write_json(sys.argv[1], {'version': i, 'blob': 'x' * 2_000_000})\n"
        "    i += 1\n"
    )
    for k in range(12):
        proc = subprocess.Popen([sys.executable, "-c", script, str(target)])
        time.sleep(0.3 + 0.05 * k)
        proc.kill()
        proc.wait()
        if target.exists():
            data = json.loads(target.read_text())  # never partial
            assert len(data["blob"]) == 2_000_000


def test_validate_rejects_tampered_and_malformed(tmp_path, tiny_model):
    out = tmp_path / "out"
    assert crossval("run", "--model", tiny_model("llama"), "--prompt-file", _prompt_file(tmp_path, 1), "--steps", 2, "--out", out).returncode == 0
    (good,) = [p for p in out.rglob("*__*.json")]
    assert crossval("validate", good).returncode == 0
    bad = tmp_path / "bad.json"
    rec = json.loads(good.read_text())
    rec["parity"]["cosine_similarity"] = "high"
    bad.write_text(json.dumps(rec))
    r = crossval("validate", good, bad)
    assert r.returncode == 1 and "parity/cosine_similarity" in r.stderr
    edited = json.loads(good.read_text())
    edited["parity"]["cosine_similarity"] = 0.5  # still schema-valid: only the seal catches it
    bad.write_text(json.dumps(edited))
    r = crossval("validate", bad)
    assert r.returncode == 1 and "receipt_blake3" in r.stderr
    typo = json.loads(good.read_text())
    typo["parity"]["cosine_similarit"] = 1.0
    bad.write_text(json.dumps(typo))
    assert "cosine_similarit" in crossval("validate", bad).stderr
    bad.write_text("{ nope")
    r = crossval("validate", bad)  # not a receipt at all: bad input (tests/test_hostile_receipts.py)
    assert r.returncode == 2 and "not valid JSON" in r.stderr and "Traceback" not in r.stderr


def test_diff_shows_what_moved(tmp_path, tiny_model):
    a, b = tmp_path / "a", tmp_path / "b"
    pf = _prompt_file(tmp_path, 1)
    assert crossval("run", "--model", tiny_model("llama"), "--prompt-file", pf, "--steps", 8, "--out", a).returncode == 0
    assert crossval("run", "--model", tiny_model("llama"), "--prompt-file", pf, "--steps", 8, "--out", b,
                    "--perturb-layer", 0, "--perturb-scale", 2.0).returncode == 1  # fmt: skip
    ra, rb = next(a.rglob("*__*.json")), next(b.rglob("*__*.json"))
    r = crossval("diff", ra, rb, "--json")
    assert r.returncode == 0
    rows = {x["field"]: x for x in json.loads(r.stdout)}
    assert rows["parity.status"]["old"] == "ok" and rows["parity.status"]["new"] == "divergence"
    assert rows["parity.cosine_similarity"]["direction"] == "worse"


@pytest.mark.parametrize("name, layer", [("llama", 1), ("gemma3", 4)])
def test_localisation_names_the_perturbed_layer(tmp_path, tiny_model, name, layer):
    out = tmp_path / "out"
    r = crossval("run", "--model", tiny_model(name), "--prompt-file", _prompt_file(tmp_path, 1), "--steps", 8, "--out", out,
                 "--perturb-layer", layer, "--perturb-scale", 3.0, "--n-ctx", 128)  # fmt: skip
    assert r.returncode == 1, r.stderr + r.stdout
    (rec,) = _receipts(out)
    loc = rec["parity"]["localisation"]
    assert loc["first"]["layer"] == layer and loc["first"]["stage"] == "l_out", loc["first"]
    earlier = [x for x in loc["layers"] if x["layer"] < layer]
    assert earlier and max(x["nmse"] for x in earlier) < 1e-6  # everything before it agrees
    assert f"first diverging layer: {layer}" in r.stdout


def test_diff_runs_and_trend_over_baselines(tmp_path):
    """Run directories pair by model__prompt; a metric that moved shows with its direction."""
    import json as _json
    import shutil as _shutil

    from crossval import receipts as R
    from crossval.diff import diff_runs, trend

    base = Path(__file__).resolve().parent.parent / "receipts" / "baselines"
    old, new = tmp_path / "old", tmp_path / "new"
    _shutil.copytree(base, old)
    _shutil.copytree(base, new)
    f = sorted(p.name for p in base.glob("*__*.json"))[0]
    rec = _json.loads((new / f).read_text())
    rec["parity"]["cosine_similarity"] -= 0.01
    R.write(new / f, rec)
    gone = sorted(p.name for p in base.glob("*__*.json"))[-1]
    (new / gone).unlink()
    d = diff_runs(old, new)
    assert d["only_old"] == [gone] and d["only_new"] == []
    changed = [p for p in d["pairs"] if p["changes"]]
    assert [p["file"] for p in changed] == [f]
    c = next(c for c in changed[0]["changes"] if c["field"] == "parity.cosine_similarity")
    assert c["direction"] == "worse" and abs(c["delta"] + 0.01) < 1e-12
    rows = trend([old, new], ["cosine_similarity", "kld_mean"])
    moved = [r for r in rows if r["direction"] != "same"]
    assert [(r["file"], r["metric"], r["direction"]) for r in moved] == [(f, "cosine_similarity", "worse")]
    assert next(r for r in rows if r["file"] == gone)["values"][1] is None
    r = subprocess.run([sys.executable, "-m", "crossval.cli", "trend", str(old), str(new), "--changed"],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0 and "worse" in r.stdout and f[:20] in r.stdout


def test_float_mode_gates_hold_at_any_step_count_and_catch_a_fault(tmp_path):
    """Float mode on a quantized (Q8_0) tiny llama gets the counted quantized-float gates: healthy at
    1 and 16 steps; a perturbed layer fails."""
    from gguf import GGMLQuantizationType

    from tiny_models import write_tiny_model

    model = write_tiny_model(tmp_path / "q8.gguf", weight_type=GGMLQuantizationType.Q8_0)
    pf = _prompt_file(tmp_path, 2)
    for steps in (1, 16):
        out = tmp_path / f"s{steps}"
        r = crossval("run", "--model", model, "--prompt-file", pf, "--steps", steps, "--mode", "float", "--n-ctx", 128, "--out", out)
        assert r.returncode == 0, r.stderr + r.stdout
        for rec in _receipts(out):
            assert rec["thresholds"]["profile"] == "quantized-float" and rec["thresholds"]["rates"] is not None
    out = tmp_path / "bad"
    r = crossval("run", "--model", model, "--prompt-file", pf, "--steps", 8, "--mode", "float", "--n-ctx", 128, "--out", out,
                 "--perturb-layer", 1, "--perturb-scale", 3.0)  # fmt: skip
    assert r.returncode == 1, r.stderr + r.stdout
    for rec in _receipts(out):
        assert not rec["verdict"]["passed"], rec["parity"]
