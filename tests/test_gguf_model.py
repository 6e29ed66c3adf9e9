"""The GGUF reader: agrees with gguf.GGUFReader, reads configs, rejects bad files in one line."""

from __future__ import annotations

import struct
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGUFReader

from conftest import real_model_path
from engine.gguf_model import GGUFError, StringArray, open_gguf, read_config


def _assert_same_as_gguf_reader(path):
    ours = open_gguf(path)
    ref = GGUFReader(path)
    ref_fields = {k: f for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    assert set(ours.metadata) == set(ref_fields)
    for k, f in ref_fields.items():
        v = ours.metadata[k]
        if isinstance(v, StringArray):
            assert v.raw() == [bytes(f.parts[i]) for i in f.data], k
        elif isinstance(v, np.ndarray):
            np.testing.assert_array_equal(v, np.array([f.parts[i][0] for i in f.data]), err_msg=k)
        else:
            assert v == f.contents(), k
    assert list(ours.tensors) == [t.name for t in ref.tensors]
    for t in ref.tensors:
        mine = ours.tensors[t.name]
        assert mine.type == t.tensor_type and list(mine.ne) == [int(d) for d in t.shape]
        assert mine.offset == t.data_offset and mine.nbytes == t.n_bytes
        np.testing.assert_array_equal(ours.raw(t.name).reshape(-1).view(np.uint8), np.asarray(t.data).reshape(-1).view(np.uint8))


@pytest.mark.parametrize("name", ["llama", "gemma", "gemma2", "gemma3"])
def test_reader_matches_gguf_reader_on_tiny_models(tiny_model, name):
    _assert_same_as_gguf_reader(tiny_model(name))


def test_resident_copy_serves_the_same_bytes_read_only(tiny_model):
    """make_resident (the tensor data copied to huge-page memory, faithful mode's weights): raw() of
    every tensor gives the mapping's bytes, dtype and shape, read-only, from the copy."""
    path = tiny_model("gemma3")
    mapped, g = open_gguf(path), open_gguf(path)
    if not g.make_resident():
        pytest.skip("no transparent huge pages here (or too little memory): raw() keeps reading the mapping")
    assert g.make_resident() and mapped._data is None
    for name in mapped.tensors:
        a, b = mapped.raw(name), g.raw(name)
        assert (b.dtype, b.shape, b.flags.writeable) == (a.dtype, a.shape, False), name
        assert np.shares_memory(b, g._data), name
        np.testing.assert_array_equal(b.reshape(-1).view(np.uint8), a.reshape(-1).view(np.uint8), err_msg=name)


@pytest.mark.real_model
def test_reader_matches_gguf_reader_on_smollm2():
    _assert_same_as_gguf_reader(real_model_path("smollm2"))


@pytest.mark.real_model
@pytest.mark.parametrize(
    "name, expect",
    [
        ("smollm2", dict(arch="llama", n_layer=30, n_embd=576, n_head=9, n_head_kv=3, head_dim=64, n_vocab=49152, rope_neox=False, tied_output=True)),
        ("gemma3-270m", dict(arch="gemma3", n_layer=18, n_embd=640, n_head=4, n_head_kv=1, head_dim=256, n_vocab=262144, sliding_window=512, rope_neox=True, rope_base_swa=10000.0, rope_base=1e6)),
    ],
)
def test_real_model_configs(name, expect):
    """Facts about the real models (README: Real models), read from their metadata."""
    cfg = read_config(open_gguf(real_model_path(name)))
    for k, v in expect.items():
        assert getattr(cfg, k) == v, k
    if name == "gemma3-270m":
        # 5 local layers to 1 global: globals are 5, 11, 17
        assert [i for i, s in enumerate(cfg.swa_layers) if not s] == [5, 11, 17]
        assert cfg.embd_scale == pytest.approx(np.sqrt(640), rel=1e-6)


def test_gemma2_defaults_and_pattern(tiny_model):
    cfg = read_config(open_gguf(tiny_model("gemma2")))
    assert cfg.attn_softcap == 50.0 and cfg.final_softcap == 30.0
    assert cfg.swa_layers == (True, False, True, False)  # every other layer (llama-hparams.cpp)


# --- bad input ---------------------------------------------------------------------------------


def _mutate(tmp_path, src, fn, name="bad.gguf"):
    data = bytearray(src.read_bytes())
    data = fn(data)
    p = tmp_path / name
    p.write_bytes(bytes(data))
    return p


def _tensor_type_offset(path, tensor_name: bytes) -> int:
    """Byte offset of the u32 type field of a tensor info (found by its name bytes)."""
    data = path.read_bytes()
    i = data.index(struct.pack("<Q", len(tensor_name)) + tensor_name)
    i += 8 + len(tensor_name)
    (n_dims,) = struct.unpack_from("<I", data, i)
    return i + 4 + 8 * n_dims


@pytest.mark.parametrize(
    "case, fn, message",
    [
        ("truncated", lambda d: d[: len(d) // 2], "truncated|runs past end"),
        ("header-only", lambda d: d[:20], "too short|truncated"),
        ("wrong magic", lambda d: b"GGUX" + d[4:], "bad magic"),
        ("bad version", lambda d: d[:4] + struct.pack("<I", 99) + d[8:], "unsupported GGUF version 99"),
        ("absurd counts", lambda d: d[:8] + struct.pack("<QQ", 2**40, 2**40) + d[24:], "more than the file can hold"),
    ],
)
def test_bad_files_raise_one_line_errors(tmp_path, tiny_model, case, fn, message):
    p = _mutate(tmp_path, tiny_model("llama"), fn)
    with pytest.raises(GGUFError, match=message) as ei:
        open_gguf(p)
    assert "\n" not in str(ei.value)


def test_unknown_tensor_type(tmp_path, tiny_model):
    src = tiny_model("llama")
    off = _tensor_type_offset(src, b"blk.0.attn_q.weight")

    def fn(d):
        d[off : off + 4] = struct.pack("<I", 250)
        return d

    with pytest.raises(GGUFError, match="unknown ggml type 250"):
        open_gguf(_mutate(tmp_path, src, fn))


def test_type_42_is_q2_0_though_the_gguf_package_lacks_it(tmp_path, tiny_model):
    """ggml type 42 (Q2_0, newer than the gguf package) is read with llama.cpp's 64-value, 18-byte blocks
    and its name; 43 stays an unknown type."""
    from engine.quants import Q2_0

    src = tiny_model("llama")
    off = _tensor_type_offset(src, b"blk.0.attn_q.weight")

    def retype(n):
        def fn(d):
            d[off : off + 4] = struct.pack("<I", n)
            return d

        return fn

    g = open_gguf(_mutate(tmp_path, src, retype(42)))
    t = g.tensors["blk.0.attn_q.weight"]
    assert t.type == Q2_0 and t.type.name == "Q2_0" and t.nbytes == t.n_elements // 64 * 18 and t.ne[0] % 64 == 0
    assert g.raw("blk.0.attn_q.weight").shape == (t.ne[1], t.ne[0] // 64 * 18)
    with pytest.raises(GGUFError, match="unknown ggml type 43"):
        open_gguf(_mutate(tmp_path, src, retype(43), name="t43.gguf"))


def test_missing_metadata_key(tmp_path):
    from tiny_models import write_tiny_model

    # a llama model without its rms epsilon: write one, then rename the key in place
    p = write_tiny_model(tmp_path / "m.gguf", "llama")
    data = p.read_bytes().replace(b"llama.attention.layer_norm_rms_epsilon", b"llama.attention.layer_norm_rms_epsilXn")
    p.write_bytes(data)
    g = open_gguf(p)
    with pytest.raises(GGUFError, match="missing metadata key 'llama.attention.layer_norm_rms_epsilon'"):
        read_config(g)


def test_unsupported_arch(tmp_path):
    from tiny_models import write_tiny_model

    p = write_tiny_model(tmp_path / "m.gguf", "llama")
    p.write_bytes(p.read_bytes().replace(b"\x05\x00\x00\x00\x00\x00\x00\x00llama", b"\x05\x00\x00\x00\x00\x00\x00\x00llamz", 1))
    with pytest.raises(GGUFError, match="unsupported architecture 'llamz'"):
        read_config(open_gguf(p))


@pytest.mark.parametrize("kind", ["truncated", "missing", "magic"])
def test_cli_bad_model_exits_2_with_one_line(tmp_path, tiny_model, kind):
    if kind == "missing":
        arg = str(tmp_path / "nope.gguf")
    else:
        fn = (lambda d: d[: len(d) // 3]) if kind == "truncated" else (lambda d: b"XXXX" + d[4:])
        arg = str(_mutate(tmp_path, tiny_model("llama"), fn))
    r = subprocess.run([sys.executable, "-m", "crossval.cli", "generate", "--model", arg, "--steps", "1"], capture_output=True, text=True)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("crossval: error:"), r.stderr
    assert "Traceback" not in r.stderr
