"""The memory roofline `crossval bench` measures both engines against.

A decode step must stream every weight it multiplies by once, so its speed is bounded by

    decode_tok_s ≤ bandwidth / decode_bytes_per_token

and `decode_roofline` = decode_bytes_per_token × decode_tok_s ÷ bandwidth is the fraction of that
bound an engine reaches (1.0 = it streams at the measured read rate; weights that stay in a cache
larger than the model can push it above 1). Prefill multiplies many tokens per weight read, so it is
compute-bound: achieved GOP/s = 2 × prefill_weight_elements × prefill_tok_s ÷ 1e9 against the peak
of the engine's own Q8_0 dot-product kernel on a large matrix × many tokens.

Byte counts come from the GGUF (ggml_nbytes of each tensor as stored), nothing is estimated.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from crossval.bench import timed

MIB = 1 << 20


def _expert_share(name: str, config) -> float:
    """A routed-expert tensor (…_exps) is read for n_expert_used of its n_expert experts per token."""
    if "_exps." in name and getattr(config, "n_expert", 0):
        return config.n_expert_used / config.n_expert
    return 1.0


def decode_bytes_per_token(g, config=None) -> int:
    """Bytes one decode step reads from the weights: every tensor's nbytes (all layer tensors, the
    final norm, the output head), except the token-embedding table, of which one row is looked up —
    unless it is also the output head (no output.weight: tied), then all of it is streamed.
    Routed-expert tensors count the n_expert_used ÷ n_expert share a token runs."""
    tied = "output.weight" not in g.tensors
    total = 0.0
    for name, t in g.tensors.items():
        if name == "token_embd.weight" and not tied:
            total += t.nbytes / (t.ne[1] if len(t.ne) > 1 else 1)
        else:
            total += t.nbytes * (_expert_share(name, config) if config is not None else 1.0)
    return int(round(total))


def prefill_weight_elements(g, config=None) -> int:
    """Weight elements one prefill token multiplies: the elements of every ≥ 2-D layer tensor (blk.*;
    routed experts by their n_expert_used ÷ n_expert share). The output head is left out: prefill
    needs logits of its last token only."""
    total = 0.0
    for name, t in g.tensors.items():
        if name.startswith("blk.") and len(t.ne) >= 2:
            total += t.n_elements * (_expert_share(name, config) if config is not None else 1.0)
    return int(round(total))


def l3_bytes() -> int | None:
    """The last-level cache size the kernel reports (sysfs), None when it does not."""
    try:
        caches = sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"))
        sizes = [c / "size" for c in caches if (c / "level").read_text().strip() == "3"]
        s = sizes[0].read_text().strip() if sizes else None
    except OSError:
        return None
    if not s:
        return None
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1], 1)
    return int(s.rstrip("KMG")) * mult


def stream_buffer_bytes() -> int:
    """4 × the L3 cache (so a pass cannot be served from it), at least 256 MiB and at most 2 GiB."""
    l3 = l3_bytes() or 64 * MIB
    return int(min(max(4 * l3, 256 * MIB), 2048 * MIB)) // 512 * 512


def stream_bandwidth(threads: list[int], nbytes: int | None = None, passes: int = 3) -> dict[int, float]:
    """GB/s (1e9 bytes) of engine/kernels/stream_bench.c reading a buffer of nbytes once per pass,
    best of `passes`, at each thread count."""
    from engine.kernels import ffi, lib

    nbytes = stream_buffer_bytes() if nbytes is None else nbytes
    buf = np.ones(nbytes // 8, dtype=np.uint64)  # written once: every page is resident before timing
    ptr = ffi.cast("uint64_t *", buf.ctypes.data)
    out = {}
    for th in threads:
        lib.cv_stream_read(ptr, buf.size, int(th))  # warm-up (thread pool, TLB)
        best = float("inf")
        for _ in range(passes):
            t = time.perf_counter()
            s = lib.cv_stream_read(ptr, buf.size, int(th))
            best = min(best, time.perf_counter() - t)
            if s != buf.size:  # every word is 1: the sum proves each was read once
                raise RuntimeError(f"stream kernel read {s} words of {buf.size}")
        out[th] = buf.nbytes / best / 1e9
    del buf
    return out


PEAK_SHAPE = {"type": "Q8_0", "n_rows": 2048, "n_cols": 2048, "n_tok": 128}


def matmul_peak(threads: list[int], min_s: float = 0.3) -> dict[int, float]:
    """GOP/s (2 × n_rows × n_cols × n_tok ÷ s ÷ 1e9) of the engine's native Q8_0 matmul
    (engine.kernels.matmul_prequantized, activations quantized once outside the timing) on a
    PEAK_SHAPE matrix of random blocks × n_tok tokens, at each thread count: the dot-product
    kernel's compute peak prefill is measured against."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    from engine import kernels

    q8 = GGMLQuantizationType.Q8_0
    block, size = GGML_QUANT_SIZES[q8]
    r, c, n = PEAK_SHAPE["n_rows"], PEAK_SHAPE["n_cols"], PEAK_SHAPE["n_tok"]
    rng = np.random.default_rng(0)
    blocks = rng.integers(-127, 128, (r, c // block, size), dtype=np.int8).view(np.uint8)
    blocks[:, :, :2] = np.frombuffer(np.float16(0.01).tobytes(), dtype=np.uint8)  # each block's f16 scale
    raw = np.ascontiguousarray(blocks.reshape(r, c // block * size))
    xq = kernels.quantize_acts(int(q8), rng.standard_normal((n, c)).astype(np.float32))
    out = np.empty((n, r), dtype=np.float32)
    res = {}
    for th in threads:
        f = lambda: kernels.matmul_prequantized(raw, int(q8), xq, n, c, threads=th, out=out)  # noqa: E731
        res[th] = 2 * r * c * n / timed(f, min_s) / 1e9
    return res


def decode_roofline(bytes_per_token: int, tok_s: float, gb_s: float) -> float:
    """Fraction of the streaming bound reached: bytes_per_token × tok_s ÷ (gb_s × 1e9)."""
    return bytes_per_token * tok_s / (gb_s * 1e9)


def prefill_gop_s(weight_elements: int, tok_s: float) -> float:
    """Achieved int8 GOP/s of a prefill: 2 × weight_elements × tok_s ÷ 1e9."""
    return 2 * weight_elements * tok_s / 1e9
