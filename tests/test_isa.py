"""Native builds made for a wider CPU are refused before use (crossval/isa.py): the recorded ISA of
llama-cpp-python's library and of a kit build is faked to include an extension this CPU lacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import needs_llamacpp
from crossval import isa

# real /proc/cpuinfo flags, the first of which this CPU lacks stands for "a wider ISA"
CANDIDATES = ["avx512f", "avx512_fp16", "amx_tile", "amx_fp16", "avx512_4vnniw", "avx10_1", "user_shstk"]


def _wider() -> str:
    missing = [f for f in CANDIDATES if f not in isa.cpu_flags()]
    if not isa.cpu_flags() or not missing:
        pytest.skip("no /proc/cpuinfo flags, or this CPU has every candidate extension")
    return missing[0]


def _one_line_exit_3(r):
    assert r.returncode == 3, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "built for a CPU with" in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_key_and_features():
    assert isa.level({"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}) == "v4"
    assert isa.level({"avx", "avx2", "bmi2", "f16c", "fma"}) == "v3" and isa.level(set()) == "v1"
    k, k_narrow = isa.key(frozenset(isa.KEY_FLAGS)), isa.key(frozenset({"avx", "avx2", "bmi2", "f16c", "fma"}))
    assert k != k_narrow and k.endswith(k.split("-")[-1]) and "-v4-" in k and "-v3-" in k_narrow
    assert isa.key(frozenset(isa.KEY_FLAGS) | {"not_an_isa_flag"}) == k  # only the extensions builds select on count
    si = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 0 | AMX_INT8 = 1 | OPENMP = 1 | "
    assert isa.features_from_system_info(si) == {"pni", "avx", "avx2", "avx512f", "amx_int8"}
    r = subprocess.run([sys.executable, "-m", "crossval.isa", "key"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == isa.key()


@needs_llamacpp
def test_llama_cpp_built_for_a_wider_cpu_is_refused(tmp_path, tiny_model):
    wider = _wider()
    env = {**os.environ, "CROSSVAL_CACHE": str(tmp_path / "cache")}
    probe = "from crossval import isa; print(sorted(isa.llama_build_flags()))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    (rec,) = (tmp_path / "cache" / "isa").glob("llama-*.json")  # what the library reported, recorded for this CPU
    (tmp_path / "p.txt").write_text("the cat sat\n")
    run = [sys.executable, "-m", "crossval.cli", "run", "--model", str(tiny_model("llama")), "--prompt-file", str(tmp_path / "p.txt"),
           "--steps", "2", "--out", str(tmp_path / "o")]  # fmt: skip
    assert subprocess.run(run + ["--json"], capture_output=True, text=True, env=env).returncode == 0
    doc = json.loads(rec.read_text())
    rec.write_text(json.dumps({**doc, "flags": doc["flags"] + [wider]}))  # as if built on a CPU with `wider`
    _one_line_exit_3(subprocess.run(run, capture_output=True, text=True, env=env))
    r = subprocess.run([sys.executable, "-m", "crossval.cli", "tokenize", "--model", str(tiny_model("llama")), "x", "--compare"],
                       capture_output=True, text=True, env=env)  # fmt: skip
    _one_line_exit_3(r)  # in-process use (vocab-only) is checked too


def _fake_gemmacpp_build(tmp_path, gguf, flags):
    """A finished-looking gemma.cpp kit build in a private cache, recording `flags`."""
    from crossval import gemmacpp_kit
    from engine.convert import sha256_file

    kit = tmp_path / "kit"
    (kit / "sources").mkdir(parents=True)
    (kit / "build.sh").write_text("exit 1\n")  # never run: the build is found
    (kit / "sources" / "SHA256SUMS").write_text("")
    os.environ[gemmacpp_kit.KIT_ENV] = str(kit)
    out = gemmacpp_kit.build_dir(True, kit)
    for p in ("weights/m.sbs", "weights/m-tokenizer.spm", "bin/gemma_greedy", "lib/libgemma_capi.so"):
        (out / p).parent.mkdir(parents=True, exist_ok=True)
        (out / p).write_bytes(b"")
    info = {"variant": "patched", "compiler": {"hwy_static_target": "AVX2"},
            "weights": [{"gguf_sha256": sha256_file(gguf), "sbs": "weights/m.sbs", "tokenizer": "weights/m-tokenizer.spm"}]}  # fmt: skip
    (out / "BUILD_INFO.json").write_text(json.dumps(info))
    (out / isa.RECORD).write_text(json.dumps({"flags": sorted(flags)}))
    return out


def test_kit_build_for_a_wider_cpu_is_refused(tmp_path, tiny_model, monkeypatch):
    from crossval import gemmacpp_kit

    wider = _wider()
    monkeypatch.setenv("CROSSVAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(gemmacpp_kit.KIT_ENV, "")
    gguf = tiny_model("gemma3")
    mine = set(isa.KEY_FLAGS) & isa.cpu_flags()
    out = _fake_gemmacpp_build(tmp_path, gguf, mine)
    assert gemmacpp_kit.ensure_built(gguf).dir == out  # recorded for this CPU: reused
    (out / isa.RECORD).write_text(json.dumps({"flags": sorted(mine | {wider})}))
    with pytest.raises(isa.ForeignBuild, match=wider):
        gemmacpp_kit.ensure_built(gguf)
    r = subprocess.run([sys.executable, "-m", "crossval.cli", "gemmacpp", "build", "--model", str(gguf)], capture_output=True, text=True,
                       env={**os.environ, "CROSSVAL_CACHE": str(tmp_path / "cache"), gemmacpp_kit.KIT_ENV: str(tmp_path / "kit")})  # fmt: skip
    _one_line_exit_3(r)
    (out / isa.RECORD).unlink()  # an older build: what BUILD_INFO shows (highway's AVX2 target) is checked instead
    assert isa.recorded(out, json.loads((out / "BUILD_INFO.json").read_text())) == {"avx2", "fma", "f16c", "bmi2", "ssse3", "sse4_1", "sse4_2"}


def test_ci_caches_of_native_builds_are_keyed_on_the_isa():
    import yaml

    from pathlib import Path

    for path in sorted((Path(__file__).resolve().parent.parent / "ci").glob("*.yml")):
        wf = yaml.safe_load(path.read_text())
        for name, job in wf["jobs"].items():
            steps = job["steps"]
            for i, step in enumerate(steps):
                if str(step.get("uses", "")).startswith("actions/cache"):
                    assert "steps.isa.outputs.key" in step["with"]["key"], f"{path.name}/{name}: cache key ignores the CPU's ISA"
                    isa_steps = [s for s in steps[:i] if s.get("id") == "isa"]
                    assert isa_steps and "crossval.isa key" in isa_steps[0]["run"], f"{path.name}/{name}: no isa step before the cache"
