"""FFI lifecycle: load / generate / free the llama.cpp backend 100× in one process."""

from __future__ import annotations

import gc

import psutil

from conftest import needs_llamacpp


@needs_llamacpp
def test_llamacpp_load_generate_free_100x(tiny_model):
    from crossval.backends.llamacpp import LlamaCppBackend

    path = tiny_model("llama")
    proc = psutil.Process()
    rss = []
    for i in range(100):
        with LlamaCppBackend(path, n_ctx=64, kv_type="f16") as b:
            toks, _ = b.generate(b.tokenize("the cat", add_bos=True), 4)
            assert len(toks) == 4
        if i in (9, 99):  # after warm-up (allocator pools settle), and at the end
            gc.collect()
            rss.append(proc.memory_info().rss)
    growth_mb = (rss[1] - rss[0]) / 2**20
    print(f"RSS growth over 90 load/generate/free cycles: {growth_mb:.1f} MB")
    assert growth_mb < 50
