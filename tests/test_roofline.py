"""crossval/roofline.py: the decode bytes per token and prefill weight elements equal closed-form
counts over the GGUF's tensors read by gguf's own reader, and the streaming kernel reads every word
once (its sum is the closed-form sum). No timings are asserted."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGUFReader

from crossval import roofline
from engine.gguf_model import open_gguf, read_config


@pytest.mark.parametrize("name,tied", [("llama", False), ("gemma", True)])
def test_decode_bytes_per_token_is_every_tensor_with_one_embedding_row(tiny_model, name, tied):
    path = tiny_model(name)
    tensors = {t.name: t for t in GGUFReader(path).tensors}
    assert ("output.weight" not in tensors) == tied
    emb = tensors["token_embd.weight"]
    n_vocab = int(emb.shape[1])  # gguf lists ne order: (n_embd, n_vocab)
    expect = sum(int(t.n_bytes) for t in tensors.values())
    if not tied:  # a lookup table read for one row only
        expect -= int(emb.n_bytes) - int(emb.n_bytes) // n_vocab
    g = open_gguf(path)
    assert roofline.decode_bytes_per_token(g, read_config(g)) == expect
    elements = sum(int(t.n_elements) for n, t in tensors.items() if n.startswith("blk.") and len(t.shape) >= 2)
    assert roofline.prefill_weight_elements(g, read_config(g)) == elements


def test_routed_experts_count_their_active_share():
    class T:
        def __init__(self, nbytes, ne):
            self.nbytes, self.ne, self.n_elements = nbytes, ne, int(np.prod(ne))

    class G:
        tensors = {"blk.0.ffn_up_exps.weight": T(800, (4, 5, 8)), "blk.0.attn_q.weight": T(100, (4, 4)),
                   "token_embd.weight": T(40, (4, 10)), "output.weight": T(40, (4, 10))}  # fmt: skip

    class C:
        n_expert, n_expert_used = 8, 2

    assert roofline.decode_bytes_per_token(G(), C()) == 800 * 2 // 8 + 100 + 40 // 10 + 40
    assert roofline.prefill_weight_elements(G(), C()) == 4 * 5 * 8 * 2 // 8 + 16


def test_stream_kernel_reads_every_word_once():
    from engine import kernels

    if not kernels.available():
        pytest.skip("native kernels not built")
    n = 1000003  # not a multiple of the kernel's 64-word blocks: the tail is read too
    a = np.arange(n, dtype=np.uint64)
    for th in (1, 2):
        assert kernels.lib.cv_stream_read(kernels.ffi.cast("uint64_t *", a.ctypes.data), n, th) == n * (n - 1) // 2


def test_roofline_formulas():
    assert roofline.decode_roofline(250_000_000, 40.0, 20.0) == pytest.approx(0.5)
    assert roofline.prefill_gop_s(100_000_000, 500.0) == pytest.approx(100.0)
