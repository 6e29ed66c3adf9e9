"""Importance matrices (crossval/imatrix.py): the imatrix tool's sums from the engine's activations,
its GGUF layout, and llama.cpp's quantizer accepting them (it refuses IQ3_XXS / IQ2_XXS without one)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from conftest import needs_llamacpp
from crossval import imatrix as I

TEXT = " ".join(f"the {w} sat on the mat number {i}, and then it went home." for i, w in enumerate(["cat", "dog"]))  # 3 chunks of 32


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    """A tiny llama whose rows are 256 wide (the IQ K-super-blocks), F32 (what the quantizer reads)."""
    from tiny_models import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("im") / "wide.gguf", n_embd=256, n_head=4, n_head_kv=2, n_ff=256)


@pytest.fixture(scope="module")
def im(wide_model):
    return I.compute(wide_model, TEXT, chunk_size=32, dataset="t.txt")


def test_sums_are_the_squared_inputs_of_every_matrix(wide_model, im):
    """Layer 0's q/k/v input is rms_norm(embedding) · attn_norm, a closed form of the model's own
    weights: its column sums of squares over the chunks (first token BOS) are the imatrix's."""
    from engine.gguf_model import open_gguf
    from engine.ops import rms_norm
    from engine.tokenizer import Tokenizer

    g = open_gguf(wide_model)
    tok = Tokenizer.from_gguf(g)
    ids = tok.encode(TEXT, add_special=True)
    n_chunk = len(ids) // 32
    assert im.chunk_count == n_chunk >= 2 and im.chunk_size == 32 and im.datasets == ["t.txt"]
    layers = {n.split(".")[1] for n in im.sums}
    assert len(layers) == 2 and len(im.sums) == 2 * 7  # q k v o gate up down per layer; no output / embedding
    assert {int(c[0]) for c in im.counts.values()} == {32 * n_chunk} and all(len(c) == 1 for c in im.counts.values())
    emb, norm = g.dequantize("token_embd.weight"), g.dequantize("blk.0.attn_norm.weight")
    expect = np.zeros(256)
    for c in range(n_chunk):
        chunk = ids[c * 32 : (c + 1) * 32]
        chunk[0] = tok.vocab.bos
        x = rms_norm(emb[chunk], norm, float(g.metadata["llama.attention.layer_norm_rms_epsilon"]))
        expect += np.square(x.astype(np.float64)).sum(0)
    for m in ("attn_q", "attn_k", "attn_v"):
        np.testing.assert_allclose(im.sums[f"blk.0.{m}.weight"][0], expect, rtol=1e-5)
    assert im.sums["blk.1.ffn_down.weight"].shape == (1, 256) and (im.sums["blk.1.ffn_down.weight"] > 0).all()


def test_gguf_layout_round_trip_and_means(wide_model, im, tmp_path):
    import gguf

    p = I.write(im, tmp_path / "m.imatrix.gguf")
    r = gguf.GGUFReader(str(p))
    assert r.fields["general.type"].contents() == "imatrix"
    assert r.fields["imatrix.chunk_count"].contents() == im.chunk_count
    assert r.fields["imatrix.datasets"].contents() == ["t.txt"]
    t = {x.name: x for x in r.tensors}
    s = t["blk.0.ffn_up.weight.in_sum2"]
    assert s.tensor_type == Q.F32 and list(s.shape) == [256, 1] and list(t["blk.0.ffn_up.weight.counts"].shape) == [1, 1]
    back = I.read(p)
    assert all(np.array_equal(back.counts[n], im.counts[n]) and np.array_equal(back.sums[n], im.sums[n]) for n in im.sums)
    means = I.quantize_weights(back)
    np.testing.assert_array_equal(means["blk.0.ffn_up.weight"], im.sums["blk.0.ffn_up.weight"][0] / np.float32(im.counts["blk.0.ffn_up.weight"][0]))
    back.counts["blk.0.ffn_up.weight"][:] = 0  # a matrix the text never reached: weight 1 everywhere, as llama-quantize does
    assert (I.quantize_weights(back)["blk.0.ffn_up.weight"] == 1).all()
    with pytest.raises(I.ImatrixError):
        I.compute(wide_model, "too short", chunk_size=32)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf")
    with pytest.raises(I.ImatrixError):
        I.read(bad)


@needs_llamacpp
@pytest.mark.parametrize("quant, wtype", [("IQ3_XXS", Q.IQ3_XXS)])
def test_llamacpp_quantizes_with_it_and_refuses_without(wide_model, im, tmp_path, quant, wtype):
    """llama.cpp's i-quant lattice setup costs up to a minute per type on a shared machine, so the
    quantization with the imatrix is cached (keyed by the model's and the imatrix file's hashes)."""
    from crossval.models import cache_dir
    from engine.convert import sha256_file
    from engine.gguf_model import open_gguf

    imat = I.write(im, tmp_path / "m.imatrix.gguf")
    cmd = [sys.executable, "-m", "crossval.matrix", "quantize", str(wide_model)]
    without = subprocess.run([*cmd, str(tmp_path / "no.gguf"), quant], capture_output=True, text=True, timeout=300)
    assert without.returncode != 0  # "this quantization requires an imatrix!"
    out = cache_dir() / "quants" / "tiny-imatrix" / f"{sha256_file(wide_model)[:12]}.{sha256_file(imat)[:12]}.{quant}.gguf"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".tmp{tmp_path.name}")
        r = subprocess.run([*cmd, str(tmp), quant, str(imat)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-500:]
        tmp.replace(out)
    g = open_gguf(out)
    assert wtype in {t.type for t in g.tensors.values()}
    assert g.metadata["quantize.imatrix.entries_count"] == 14 and g.metadata["quantize.imatrix.dataset"] == "t.txt"


def test_crossval_imatrix_command(wide_model, im, tmp_path):
    """`crossval imatrix` writes the file llama-quantize reads; bad input is one line, exit 2."""
    text = tmp_path / "calib.txt"
    text.write_text(TEXT)
    out = tmp_path / "m.imatrix.gguf"
    base = [sys.executable, "-m", "crossval.cli", "imatrix", "--model", str(wide_model), "--chunk-size", "32"]
    r = subprocess.run([*base, "--text", str(text), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    back = I.read(out)
    assert back.datasets == ["calib.txt"] and back.arch == "llama"
    assert all(np.array_equal(back.counts[n], im.counts[n]) and np.array_equal(back.sums[n], im.sums[n]) for n in im.sums)
    for bad_text in (tmp_path / "missing.txt", tmp_path / "short.txt"):
        if bad_text.name == "short.txt":
            bad_text.write_text("too short")
        r = subprocess.run([*base, "--text", str(bad_text), "--out", str(tmp_path / "x.gguf")], capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert not (tmp_path / "x.gguf").exists()


@needs_llamacpp
def test_experts_are_collected_per_expert_and_llamacpp_takes_them(tmp_path):
    """A 3-D expert tensor's rows are collected per expert from the rows routed to it (the tool's
    MUL_MAT_ID branch: in_sum2 n_in × n_expert, one count per expert, every routed row counted), and
    llama.cpp's quantizer accepts them (it checks each entry's size against n_in · n_expert)."""
    from crossval.models import resolve_model

    model = resolve_model("qwen3moe-tiny")
    text = " ".join(f"the {w} sat on the mat number {i}, and then it went home." for i, w in enumerate(["cat", "dog", "owl", "fox"] * 3))
    im = I.compute(model, text, chunk_size=16)
    exps = [n for n in im.sums if "_exps." in n]
    assert exps and all(im.sums[n].shape == (8, 256) and len(im.counts[n]) == 8 for n in exps)
    assert all(int(im.counts[n].sum()) == im.chunk_count * 16 * 2 for n in exps)  # two experts per token
    imat = I.write(im, tmp_path / "moe.imatrix.gguf")
    back = I.read(imat)
    assert all(np.array_equal(back.counts[n], im.counts[n]) and np.array_equal(back.sums[n], im.sums[n]) for n in exps)
    out = tmp_path / "moe.IQ4_XS.gguf"
    r = subprocess.run([sys.executable, "-m", "crossval.matrix", "quantize", str(model), str(out), "IQ4_XS", str(imat)],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0 and "is different from tensor size" not in r.stderr, r.stderr[-500:]
