"""bitnet.cpp (../shared/bitnetcpp, built into the cache) as a reference: the kit build, the I2_S
format and arithmetic against the functions the fork's libggml exports, the engine's faithful mode
bit for bit against bitnet.cpp on all three BitNet architectures, and the child process's
lifecycle and failure receipts. The 100m models run when CROSSVAL_BITNET_100M=1 (the nightly
matrix runs them; about 3 minutes here)."""

from __future__ import annotations

import importlib.util
import os
import struct
import sys

import numpy as np
import pytest

pytestmark = [pytest.mark.bitnetcpp]

ARCHS = ("bitnet", "bitnet-25", "bitnet-b1.58")
SIZES = ("tiny", "100m") if os.environ.get("CROSSVAL_BITNET_100M") == "1" else ("tiny",)


def _fail_or_skip(msg: str):
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def kit():
    from crossval.bitnetcpp_kit import KitError, ensure_built

    try:
        return ensure_built()
    except KitError as e:
        _fail_or_skip(str(e))


@pytest.fixture(scope="module")
def ggml(kit):
    """The fork's libggml.so (cffi ABI mode): the exported I2_S functions."""
    import cffi

    ffi = cffi.FFI()
    ffi.cdef("""
        void quantize_row_i8_s(const float * x, void * y, int64_t n, float * act_scales, int32_t * act_sums);
        void ggml_vec_dot_i2_i8_s(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);
        size_t quantize_i2_s(const float * src, void * dst, int64_t nrow, int64_t n_per_row, const float * quant_weights);
    """)
    return ffi, ffi.dlopen(str(kit.libggml))


def _p(ffi, a: np.ndarray, ctype: str = "void *"):
    return ffi.cast(ctype, a.__array_interface__["data"][0])


def _kit_decoder():
    from crossval.bitnetcpp_kit import kit_path

    spec = importlib.util.spec_from_file_location("kit_decode_i2s", kit_path() / "tools" / "decode_i2s.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_kit_build_is_reused_and_names_its_provenance(kit):
    from crossval.bitnetcpp_kit import build_dir, ensure_built

    again = ensure_built()
    assert again.dir == kit.dir == build_dir() and again.built_s is None  # cached: build.sh not run again
    prov = kit.provenance()
    assert prov["bitnet_commit"] == "404980eecae38affa4871c3e419eae3f44536a95"
    assert prov["llama_cpp_commit"] == "40ed0f290203a9a78540b8f7eb18bd828043fe21"
    assert "-DGGML_NATIVE=ON" in prov["cmake_flags"] and "LLAMAFILE = 1" in kit.info["system_info"]


def test_i8_s_activations_equal_libggml_including_ties(ggml):
    """quantize_row_i8_s: our kernel gives the same int8 codes, scale and sum on random rows and on
    rows built so that x·s lies within one float32 rounding of a half-integer (where a rounded
    product and the fork's fused one round differently)."""
    from engine.act_quant import i8_s_roundtrip
    from engine.kernels import bitnet as kb

    ffi, lib = ggml
    rng = np.random.default_rng(1)
    rows = [rng.standard_normal(k).astype(np.float32) * np.float32(10.0 ** rng.uniform(-4, 3)) for k in (128, 256, 2048) for _ in range(4)]
    # ties: max|x| = 127 makes s = 1 exactly; x = h + δ with tiny δ gives x·s = x, no tie; scale by
    # 127/m instead and pick x so that x·(float)(127/m) is just off a half-integer in exact arithmetic
    m = np.float32(3.1801720)
    s = np.float32(127.0 / np.float64(m))
    halves = (np.arange(-120, 120) + 0.5) / np.float64(s)
    near = np.concatenate([np.nextafter(halves.astype(np.float32), np.float32(d)) for d in (-np.inf, np.inf)])
    rows.append(np.concatenate([[m], near]).astype(np.float32)[:384])
    ties_seen = 0
    for x in rows:
        x = np.ascontiguousarray(x, dtype=np.float32)
        q, sc, sm = kb.i2s_quantize_acts(x[None])
        yq = np.zeros(x.size, np.int8)
        sref, sumref = np.zeros(1, np.float32), np.zeros(1, np.int32)
        lib.quantize_row_i8_s(_p(ffi, x, "float *"), _p(ffi, yq), x.size, _p(ffi, sref, "float *"), _p(ffi, sumref, "int32_t *"))
        np.testing.assert_array_equal(q[0], yq)
        assert sc[0] == sref[0] and sm[0] == sumref[0]
        np.testing.assert_array_equal(i8_s_roundtrip(x[None])[0], yq.astype(np.float32) / sref[0])
        ties_seen += int(np.sum(np.rint(x * sref[0]) != yq))  # where rounding the product first would differ
    assert ties_seen > 0, "the tie rows did not exercise the fused rounding"


def test_i2_s_dot_equals_libggml_including_the_int16_wrap(ggml):
    """ggml_vec_dot_i2_i8_s (AVX2 on x86: int16 lanes that wrap) equals our dot on random weights
    and activations, and on the all-(+1) × constant-127 rows whose lanes wrap (K = 4096, 4224)."""
    from engine.kernels import bitnet as kb

    ffi, lib = ggml
    rng = np.random.default_rng(2)
    for K, const in ((128, False), (256, False), (1024, False), (6144, False), (4096, True), (4224, True), (8192, True)):
        N = 6
        w = np.ones((N, K), np.float32) if const else rng.integers(-1, 2, size=(N, K)).astype(np.float32)
        a = np.full(K, 127, np.int8) if const else rng.integers(-128, 128, size=K).astype(np.int8)
        packed = np.zeros(N * K // 4 + 32, np.uint8)
        lib.quantize_i2_s(_p(ffi, w, "float *"), _p(ffi, packed), N, K, ffi.NULL)
        for r in range(N):
            row = np.ascontiguousarray(packed[r * K // 4 : (r + 1) * K // 4])
            out = np.zeros(1, np.float32)
            lib.ggml_vec_dot_i2_i8_s(K, _p(ffi, out, "float *"), 0, _p(ffi, row), 0, _p(ffi, a), 0, 1)
            assert np.float32(kb.i2s_dot(row, a)) == out[0], (K, r)
        if const and K >= 4096:
            assert kb.i2s_dot(row, a) != 2 * 127 * K  # the wrap happened, and we reproduce it


@pytest.mark.parametrize("size", SIZES)
def test_i2_s_decoder_equals_the_kits_and_bitnetcpps_on_every_tensor(ggml, size):
    """Every I2_S tensor of the three models: our decoder equals the kit's reference decoder, and
    the F32 source (the ternary weights times the scale); and equals what bitnet.cpp's own
    ggml_vec_dot_i2_i8_s reads from the bytes (base-3 probes: activations 1, 3, 9, 27, 81 on five
    positions give the five codes as the digits of the dot) — every row of the tiny models, the
    first and last 4 rows of each tensor at 100m."""
    from crossval.models import resolve_model
    from engine.gguf_model import open_gguf
    from engine.quants import I2_S

    ffi, lib = ggml
    kit_dec = _kit_decoder()
    n_checked = 0
    for arch in ARCHS:
        g = open_gguf(resolve_model(f"{arch}-{size}:I2_S"))
        src = open_gguf(resolve_model(f"{arch}-{size}"))
        for name, t in g.tensors.items():
            if t.type != I2_S:
                continue
            K, N = t.ne
            ours = g.dequantize(name)
            tern, scale = kit_dec.decode_i2s(g.raw(name).tobytes(), K, N)
            np.testing.assert_array_equal(ours, tern.astype(np.float32) * scale)
            np.testing.assert_array_equal(ours, src.dequantize(name))  # ternary × scale survives exactly
            raw = np.ascontiguousarray(g.raw(name))
            out = ffi.new("float *")
            probes = np.zeros((K // 5 + 1, K), np.int8)  # probe p: 3^i at positions 5p + i
            for p in range(probes.shape[0]):
                for i in range(5):
                    if 5 * p + i < K:
                        probes[p, 5 * p + i] = 3**i
            rows = range(N) if size == "tiny" else [*range(4), *range(N - 4, N)]
            codes = np.empty((N, K), np.int64)
            for r in rows:
                row = _p(ffi, raw[r * K // 4 :])
                for p in range(probes.shape[0]):
                    lib.ggml_vec_dot_i2_i8_s(K, out, 0, row, 0, _p(ffi, probes[p]), 0, 1)
                    v = int(out[0])
                    for i in range(5):
                        if 5 * p + i < K:
                            codes[r, 5 * p + i] = v % 3
                            v //= 3
            scale_c = np.frombuffer(raw[N * K // 4 : N * K // 4 + 4].tobytes(), "<f4")[0]
            rows = list(rows)
            np.testing.assert_array_equal(ours[rows], (codes[rows] - 1).astype(np.float32) * scale_c)
            n_checked += 1
    assert n_checked == 3 * (2 if size == "tiny" else 12) * 7  # three models × their layers × seven projections


def _write_gguf(path, tensors, arch="bitnet", file_type=40, data_sizes=None):
    """A minimal GGUF v3: general.architecture / file_type and raw tensors [(name, ne, type, bytes)];
    data_sizes overrides the bytes each tensor takes in the file (its stored size)."""
    def s(x: str) -> bytes:
        b = x.encode()
        return struct.pack("<Q", len(b)) + b

    kv = s("general.architecture") + struct.pack("<I", 8) + s(arch) + s("general.file_type") + struct.pack("<II", 4, file_type)
    infos, data, off = b"", b"", 0
    for i, (name, ne, ttype, raw) in enumerate(tensors):
        infos += s(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne) + struct.pack("<IQ", ttype, off)
        size = (data_sizes or {}).get(name, len(raw))
        blob = raw[:size].ljust(size, b"\0")
        blob += b"\0" * (-len(blob) % 32)
        data += blob
        off += len(blob)
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), 2) + kv + infos
    head += b"\0" * (-len(head) % 32)
    path.write_bytes(head + data)
    return path


def test_i2_s_files_are_decided_by_their_layout(tmp_path):
    """Type 36 is read as I2_S when stored in n/4 + 32 bytes; a row length not a multiple of 128, a
    type-36 tensor stored in K·N bytes, or type 36 beside an upstream-only type (MXFP4) is refused
    with one line."""
    from gguf import GGMLQuantizationType as Q

    from engine.gguf_model import GGUFError, open_gguf

    K, N = 256, 4
    codes = np.full(K * N // 4, 0b10011000, np.uint8).tobytes() + np.float32(0.5).tobytes() + b"\0" * 28
    ok = _write_gguf(tmp_path / "ok.gguf", [("w", (K, N), 36, codes), ("n", (K,), 0, np.ones(K, np.float32).tobytes())])
    g = open_gguf(ok)
    assert g.tensors["w"].type.name == "I2_S" and g.tensors["w"].nbytes == K * N // 4 + 32
    row = g.dequantize("w")[0]
    np.testing.assert_array_equal(row[:4], [0.5, 0.5, 0.5, 0.5])  # byte 0b10_01_10_00: element 0 (shift 6) = code 2
    np.testing.assert_array_equal(row[[0, 32, 64, 96]], np.float32([0.5, 0.0, 0.5, -0.5]))

    bad_rows = _write_gguf(tmp_path / "k320.gguf", [("w", (320, 2), 36, bytes(320 * 2 // 4 + 32))])
    with pytest.raises(GGUFError, match=r"I2_S tensor 'w' has rows of 320, not a multiple of 128") as e:
        open_gguf(bad_rows)
    assert "\n" not in str(e.value)

    traits_sized = _write_gguf(tmp_path / "kn.gguf", [("w", (K, N), 36, codes), ("n", (K,), 0, bytes(4 * K))],
                               data_sizes={"w": K * N})  # fmt: skip
    with pytest.raises(GGUFError, match=r"ambiguous file: tensor 'w' of type 36 is stored in K·N bytes"):
        open_gguf(traits_sized)
    mixed = _write_gguf(tmp_path / "mx.gguf", [("w", (K, N), 36, codes), ("m", (32, 2), int(Q.MXFP4), bytes(34))])
    with pytest.raises(GGUFError, match=r"ambiguous file: type 36 .* beside upstream-only type MXFP4"):
        open_gguf(mixed)


def test_kit_quantizer_refuses_rows_i2_s_cannot_hold(tmp_path, kit):
    from crossval.bitnetcpp_kit import KitError, quantize_i2s
    from crossval.synthetic import write_bitnet

    src = write_bitnet(tmp_path / "k320.gguf", n_layer=1, n_embd=320, n_head=5, n_head_kv=5, n_ff=640, n_vocab=300)
    with pytest.raises(KitError, match="multiples of 128"):
        quantize_i2s(src, kit)


@pytest.fixture(scope="module")
def prompts():
    from crossval.prompts import load_set

    return load_set("default")


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("arch", ARCHS)
def test_faithful_equals_bitnetcpp_bit_for_bit(arch, size, kit, prompts):
    """Every default prompt: the engine's faithful mode on the I2_S model gives bitnet.cpp's logits
    bit for bit at every prompt position (one batch), every step of a 32-step greedy run (one token
    at a time) and after forced tokens; the greedy tokens are identical. Float mode (dequantized
    weights, no int8 activations) stays close: min cosine ≥ 0.998 on the tiny models (measured
    0.99907–0.99924 over the default prompts), ≥ 0.997 at 100m (measured 0.99783–0.99833):
    bitnet.cpp rounds every matmul's input to int8 per row, float mode does not."""
    from crossval.backends.bitnetcpp import BitnetCpp
    from crossval.backends.engine import EngineBackend
    from crossval.compare import cosine_rows
    from crossval.models import resolve_model
    from crossval.prompts import render

    path = resolve_model(f"{arch}-{size}:I2_S")
    ref = BitnetCpp(path, n_ctx=4096, timeout=600, build=kit)
    faithful = EngineBackend(path, n_ctx=4096, kv_type="f16", mode="faithful")
    flt = EngineBackend(path, n_ctx=4096, kv_type="f16", mode="float")
    try:
        for pr in prompts:
            text = render(pr, None)  # the synthetic vocab has no chat template: the fallback rendering
            ids = ref.tokenize(text, True, False)
            assert faithful.tokenize(text, True, False) == ids
            r = ref.compare_pass(ids, 32, forced=ids[1:4])
            e = faithful.compare_pass(ids, 32, forced=ids[1:4])
            assert np.abs(e.prompt_logits - r.prompt_logits).max() == 0.0, pr.id
            assert e.tokens == r.tokens, pr.id
            assert np.abs(e.step_logits - r.step_logits).max() == 0.0, pr.id
            assert np.abs(e.forced_logits - r.forced_logits).max() == 0.0, pr.id
            f = flt.logits(ids)
            assert cosine_rows(f, r.prompt_logits).min() >= (0.998 if size == "tiny" else 0.997), pr.id
    finally:
        ref.close()


SAMPLING_CONFIGS = [  # (temperature, top_k, top_p, min_p, seed): the default, top-p 1, top-k 0, top-k > 128 (bucket sort)
    (0.8, 40, 0.95, 0.05, 42), (0.8, 40, 1.0, 0.05, 1), (1.0, 0, 0.9, 0.0, 2), (0.7, 0, 1.0, 0.0, 3),
    (1.3, 500, 0.98, 0.01, 4), (0.5, 200, 1.0, 0.02, 5), (1.0, 1000, 0.5, 0.0, 6), (0.3, 5, 0.5, 0.05, 0),
]


@pytest.fixture(scope="module")
def fork_model(kit):
    """bitnet-tiny in bitnet.cpp's libllama, in this process (its sampler chain needs no child)."""
    from crossval.backends.bitnetcpp_capi import BitnetCppModel
    from crossval.models import resolve_model

    m = BitnetCppModel(kit.libllama, resolve_model("bitnet-tiny:I2_S"), n_ctx=32)
    yield m
    m.close()


@pytest.mark.parametrize("config", SAMPLING_CONFIGS, ids=lambda c: "t{}-k{}-p{}-m{}-s{}".format(*c))
def test_sampler_equals_bitnetcpp_chain(fork_model, config):
    """engine.sampling's chain="bitnet.cpp" picks what the fork's own sampler chain
    (bitnetcpp_capi sample_logits) picks on the same logits, draw after draw; llama.cpp's chain does
    not. (Exactly tied logits are left out: the fork orders them by std::partial_sort's or, above
    128 candidates, std::sort's mechanics; engine/sampling.py puts the lower id first.)"""
    from engine.sampling import Sampler, SamplingParams

    t, k, top_p, min_p, seed = config
    params = SamplingParams(temperature=t, top_k=k, top_p=top_p, min_p=min_p, seed=seed, chain="bitnet.cpp")
    rng = np.random.default_rng(seed)
    chain = fork_model.sampler_chain(params)
    ours, llama = Sampler(params), Sampler(SamplingParams(**{**vars(params), "chain": "llama.cpp"}))
    differs = 0
    try:
        for i in range(150):
            logits = np.zeros(2, np.float32)
            while len(np.unique(logits)) < len(logits):  # no exact ties
                logits = (rng.standard_normal(3000) * rng.uniform(0.5, 6)).astype(np.float32)
                if i % 7 == 0:
                    logits[:50] += 8.0  # a dominant head of candidates
            theirs = fork_model.sample_logits(chain, logits)
            assert ours(logits) == theirs, f"draw {i}"
            differs += llama(logits) != theirs
    finally:
        fork_model.free_sampler(chain)
    assert differs > 0


def test_child_crash_and_hang_become_backend_errors(kit):
    """A child killed by SIGSEGV mid-request raises BackendCrashed naming the signal; a hung child
    is killed at the deadline and raises BackendTimeout; neither leaves a process behind."""
    from crossval.backends.base import BackendCrashed, BackendTimeout
    from crossval.backends.bitnetcpp import BitnetCpp
    from crossval.models import resolve_model

    path = resolve_model("bitnet-tiny:I2_S")
    for fault, exc, timeout in (("segv@logits", BackendCrashed, 60), ("hang@logits", BackendTimeout, 3)):
        b = BitnetCpp(path, timeout=timeout, env=dict(os.environ, CROSSVAL_CHILD_FAULT=fault), build=kit)
        try:
            assert b.tokenize("The cat", True, False)[0] == 1
            with pytest.raises(exc) as e:
                b.logits([1, 2, 3])
            assert e.value.stage == "logits"
            if exc is BackendCrashed:
                assert "SIGSEGV" in str(e.value)
        finally:
            b.close()
        assert b._proc.poll() is not None


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_100_load_generate_free_cycles_keep_rss_bounded(kit):
    """100 × (load the model, greedy 8 tokens, free it) in one bitnet.cpp child: the child's RSS
    after cycle 100 is within 8 MiB of its RSS after cycle 10 (a leak of the model or context —
    about 1 MiB each for bitnet-tiny — would add ≥ 90 MiB), and every cycle generates the same."""
    from crossval.backends.bitnetcpp import BitnetCpp
    from crossval.models import resolve_model

    b = BitnetCpp(resolve_model("bitnet-tiny:I2_S"), n_ctx=128, build=kit)
    try:
        first = b.generate([1, 300, 301], 8).tokens
        rss = {}
        for i in range(1, 101):
            b.unload()
            b.reload()
            assert b.generate([1, 300, 301], 8).tokens == first
            if i in (10, 100):
                rss[i] = _rss_kb(b.pid)
    finally:
        b.close()
    print(f"bitnet.cpp child RSS: {rss[10]} kB after 10 cycles, {rss[100]} kB after 100")
    assert rss[100] - rss[10] <= 8 * 1024, rss


# --- crossval run / matrix with bitnet.cpp ---------------------------------------------------------
def _crossval(*args, env=None, timeout=600):
    import subprocess

    return subprocess.run([sys.executable, "-m", "crossval.cli", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), timeout=timeout)  # fmt: skip


def _prompts(tmp_path):
    import json

    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in (("a", "The cat sat on the mat"), ("b", "Once upon a time"))))
    return f


def _receipts(out, pattern="*__a.json"):
    from crossval import receipts

    return [receipts.read_valid(p) for p in sorted(out.rglob(pattern))]


def test_run_against_bitnetcpp_in_both_directions(tmp_path, kit):
    """--reference bitnetcpp in faithful mode: the strict profile, no fallback types, every metric
    exact, and the receipt names bitnet.cpp's commits, CMake flags and system_info; --engine
    bitnetcpp --reference engine passes too."""
    out = tmp_path / "out"
    r = _crossval("run", "--model", "bitnet-tiny:I2_S", "--reference", "bitnetcpp", "--mode", "faithful", "--prompt-file",
                  _prompts(tmp_path), "--steps", 16, "--out", out)  # fmt: skip
    assert r.returncode == 0, r.stderr + r.stdout
    (rec,) = _receipts(out)
    assert rec["thresholds"]["profile"] == "faithful" and rec["backends"]["engine"]["fallback_types"] == []
    assert rec["parity"]["cosine_similarity"] == 1.0 and rec["parity"]["kld_mean"] == 0.0 and rec["parity"]["exact_match_rate"] == 1.0
    ref = rec["backends"]["reference"]
    assert ref["name"] == "bitnet.cpp" and ref["commit"] == "40ed0f290203a9a78540b8f7eb18bd828043fe21"
    assert ref["build"]["bitnet_commit"] == "404980eecae38affa4871c3e419eae3f44536a95" and "-DGGML_NATIVE=ON" in ref["build"]["cmake_flags"]
    assert "AVX" in ref["system_info"] and ref["capabilities"]["capture"]
    out2 = tmp_path / "swapped"
    r = _crossval("run", "--model", "bitnet-tiny:I2_S", "--engine", "bitnetcpp", "--reference", "engine", "--mode", "faithful",
                  "--prompt-file", _prompts(tmp_path), "--steps", 8, "--out", out2)  # fmt: skip
    assert r.returncode == 0, r.stderr + r.stdout


def test_sampled_run_against_bitnetcpp_in_both_directions(tmp_path, kit):
    """A seeded sampled run (temp 0.8, top-k 40, top-p 0.95, min-p 0.05, seed 3) in faithful mode:
    the engine draws with the fork's chain, so both prompts' tokens are bitnet.cpp's (with
    llama.cpp's chain: exact_match_rate 0.06 and 0.69), with bitnet.cpp on either side, and the
    receipt names the chain."""
    import json

    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in (("a", "the cat sat"), ("b", "once upon a time"))))
    for sides in (("--reference", "bitnetcpp"), ("--engine", "bitnetcpp", "--reference", "engine")):
        out = tmp_path / sides[0].strip("-")
        r = _crossval("run", "--model", "bitnet-tiny:I2_S", *sides, "--mode", "faithful", "--prompt-file", f, "--steps", 16,
                      "--temperature", 0.8, "--seed", 3, "--out", out)  # fmt: skip
        assert r.returncode == 0, r.stderr + r.stdout
        recs = _receipts(out, "*__*.json")
        assert len(recs) == 2
        for rec in recs:
            assert rec["config"]["sampling"]["method"] == "sampled" and rec["config"]["sampling"]["chain"] == "bitnet.cpp"
            assert rec["parity"]["exact_match_rate"] == 1.0, (sides, rec["prompt"]["id"])


def test_localise_against_bitnetcpp_names_the_perturbed_layer(tmp_path, kit):
    out = tmp_path / "out"
    r = _crossval("run", "--model", "bitnet-tiny:I2_S", "--reference", "bitnetcpp", "--mode", "faithful", "--prompt-file",
                  _prompts(tmp_path), "--steps", 8, "--perturb-layer", 1, "--perturb-scale", 3.0, "--out", out)  # fmt: skip
    assert r.returncode == 1, r.stderr + r.stdout
    (rec,) = _receipts(out)
    loc = rec["parity"]["localisation"]
    assert loc["first"]["layer"] == 1 and loc["first"]["stage"] == "l_out", loc["first"]
    assert all(x["nmse"] == 0.0 for x in loc["layers"] if x["layer"] == 0)  # bit for bit before the perturbation


@pytest.mark.parametrize("fault, status", [("segv@compare_pass", "crashed"), ("hang@compare_pass", "timeout")])
def test_killed_or_hung_bitnetcpp_child_gives_a_receipt_and_exit_4(tmp_path, kit, fault, status):
    out = tmp_path / "out"
    r = _crossval("run", "--model", "bitnet-tiny:I2_S", "--reference", "bitnetcpp", "--prompt-file", _prompts(tmp_path),
                  "--steps", 4, "--timeout", 5, "--out", out, env={"CROSSVAL_CHILD_FAULT": fault})  # fmt: skip
    assert r.returncode == 4, r.stderr + r.stdout
    assert "Traceback" not in r.stderr
    (rec,) = _receipts(out)
    assert rec["parity"]["status"] == status and not rec["verdict"]["passed"]


def test_matrix_runs_i2_s_cells_through_bitnetcpp(tmp_path, kit):
    out = tmp_path / "m"
    r = _crossval("matrix", "--models", "bitnet-25-tiny", "--quants", "I2_S", "--mode", "faithful", "--prompt-file",
                  _prompts(tmp_path), "--steps", 8, "--out", out)  # fmt: skip
    assert r.returncode == 0, r.stderr + r.stdout
    from crossval import receipts

    m = receipts.read_valid(out / "matrix.json")
    assert [c["status"] for c in m["cells"]] == ["ok", "ok"] and all(c["exact_match_rate"] == 1.0 for c in m["cells"])
    (rec,) = _receipts(out, "*__a.json")
    assert rec["backends"]["reference"]["name"] == "bitnet.cpp" and rec["model"]["arch"] == "bitnet-25"


@pytest.mark.llamacpp
def test_three_way_engine_llamacpp_tq2_0_bitnetcpp_i2_s(tmp_path, kit):
    """One ternary model three ways: bitnet-tiny as llama.cpp's TQ2_0 for the engine (faithful) and
    llama.cpp, and bitnet.cpp on its I2_S quantization of the same weights (bitnetcpp:i2s). The
    engine and llama.cpp agree bit for bit, so wherever the three part, bitnet.cpp (int8 activations
    per row instead of Q8_K blocks) is the odd one out, and the farthest."""
    from conftest import HAS_LLAMACPP

    if not HAS_LLAMACPP and not os.environ.get("CI"):
        pytest.skip("llama-cpp-python not installed")
    from crossval.matrix import variant

    out = tmp_path / "out"
    r = _crossval("run", "--model", variant("bitnet-tiny", "TQ2_0"), "--mode", "faithful", "--reference", "llamacpp", "--three-way",
                  "--third", "bitnetcpp:i2s", "--prompt-file", _prompts(tmp_path), "--steps", 16, "--out", out)  # fmt: skip
    assert r.returncode == 0, r.stderr + r.stdout
    for rec in _receipts(out, "*__[ab].json"):
        tw = rec["three_way"]
        assert tw["status"] == "ok" and tw["backends"] == ["engine", "llamacpp", "bitnetcpp:i2s"]
        assert tw["pairs"]["engine~llamacpp"]["cosine_min"] == 1.0
        assert 0.998 < tw["pairs"]["engine~bitnetcpp:i2s"]["cosine_min"] < 1.0
        assert tw["farthest"] == "bitnetcpp:i2s"
        assert tw["odd_one_out_counts"]["engine"] == tw["odd_one_out_counts"]["llamacpp"] == 0
        assert tw["odd_one_out_counts"]["bitnetcpp:i2s"] >= 1
