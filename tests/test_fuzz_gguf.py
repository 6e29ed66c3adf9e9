"""Hostile GGUFs: every mutated file loads or fails with a one-line GGUFError, within 1 s, with
peak Python/numpy memory under 2× the file size. CROSSVAL_FUZZ_LONG=1 runs 20,000 files."""

from __future__ import annotations

import os
import time
import tracemalloc

import pytest

from engine.gguf_model import GGUFError, open_gguf, read_config
from gguf_fuzz import _layout, mutations

N = 20_000 if os.environ.get("CROSSVAL_FUZZ_LONG") else 1_000


def _load(path):
    """What opening a model for inference reads: header, metadata, tensor table, config, vocabulary."""
    from engine.tokenizer import Tokenizer, TokenizerError

    g = open_gguf(path)
    read_config(g)
    try:
        Tokenizer.from_gguf(g)
    except TokenizerError:
        pass


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_mutated_ggufs_fail_cleanly(tmp_path, tiny_model, name):
    src_path = tiny_model(name)
    src = src_path.read_bytes()
    layout = _layout(src_path)
    counts: dict[str, int] = {}
    worst_t, worst_mem = 0.0, 0.0
    p = tmp_path / "m.gguf"
    _load(src_path)  # warm up: imports and caches are not the loader's memory
    for i, (kind, data) in enumerate(mutations(src, layout, N, seed={"llama": 11, "gemma3": 13}[name])):
        p.write_bytes(data)
        tracemalloc.start()
        t = time.perf_counter()
        try:
            _load(p)
            outcome = "loaded"
        except GGUFError as e:
            msg = str(e)
            assert msg and "\n" not in msg, (kind, msg)
            outcome = "GGUFError"
        except Exception as e:  # anything else is a bug: name the mutation
            raise AssertionError(f"mutation #{i} ({kind}) raised {type(e).__name__}: {e}") from e
        finally:
            dt = time.perf_counter() - t
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        assert dt < 1.0, f"mutation #{i} ({kind}) took {dt:.2f} s"
        # 2× the file size, plus a fixed 64 KiB for interpreter-level allocations of any call
        assert peak < 2 * len(data) + 64 * 1024, f"mutation #{i} ({kind}) peaked at {peak} bytes for a {len(data)}-byte file"
        worst_t, worst_mem = max(worst_t, dt), max(worst_mem, peak)
        counts[f"{kind}:{outcome}"] = counts.get(f"{kind}:{outcome}", 0) + 1
    print(f"{name}: {N} files, worst {worst_t * 1e3:.1f} ms, worst peak {worst_mem / 1024:.0f} KiB (file {len(src) / 1024:.0f} KiB); {sorted(counts.items())}")
    assert sum(v for k, v in counts.items() if k.endswith("GGUFError")) > N // 2
