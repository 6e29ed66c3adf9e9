"""Pass/fail thresholds: the one place they live. Written into every receipt, the only source of pass/fail.

Profiles, chosen per run from the model file and the engine mode:
- exact: the model's matrices are float (F32/F16/BF16), so both engines run the same arithmetic
  up to summation order. Measured on F32 copies of both real models: min cosine ≥ 0.9999993,
  top-1 100 %, greedy continuations identical.
- faithful: --mode faithful against llama.cpp on a quantized model with the F16 KV cache, every
  matrix of a type with a native kernel (the configuration faithful mode emulates op by op; other
  types go through the q8 float path and get quantized-float). The project's target is cosine
  ≥ 0.9999 (docs/metrics.md); measured on both real models, default prompts: identical logits at
  every position (max |Δlogit| 0, KLD 0) and identical greedy continuations — `crossval run` with
  no flags, 16 receipts — so every gate is as strict as `exact`'s. The same holds against
  bitnet.cpp on its I2_S models (bitnet, bitnet-25, bitnet-b1.58 at tiny and 100m, default prompts:
  max |Δlogit| 0, tests/test_bitnetcpp.py). Float and q8 mode against bitnet.cpp get
  quantized-float: bitnet.cpp rounds every matmul input to int8 per row (127 levels per row's
  max), which float mode does not; measured min cosine 0.99907–0.99924 (float) and
  0.99952–0.99964 (q8) over the default prompts of the three tiny models, 0.99783–0.99833
  (float) at 100m.
- quantized-float: quantized weights with the float (or q8) engine. llama.cpp multiplies quantized
  weights by Q8-quantized activations; the float engine does not, and the difference compounds
  into positions that are chaotic rather than faulty (q8 mode has its own; an F32 KV cache on both
  sides moves smollm2 "chat" to 0.955). A minimum or a mean over positions cannot be one gate for
  every step count — the minimum of 600 positions sits lower than that of 6, and one chaotic
  position moves a mean of 6 far — so this profile counts (docs/metrics.md, "Counted gates"): per
  position, a top-1 mismatch whose margin (the smaller of the two backends' preference for its own
  top-1, in logits) is ≥ tie_margin, a cosine < soft_cosine, a KLD > soft_kld; the receipt fails
  when its count is improbable (P < alpha/3, binomial) for a healthy engine's per-position rate.
  Measured by benchmarks/float_thresholds.py (llama.cpp's greedy continuation, the float engine
  teacher-forced along it, F16 KV) on the default and chat sets (256 steps) and two generated sets
  (40 prompts: facts, code, lists, arithmetic, six languages, long, one- and two-turn chats; 128
  steps smollm2, 64 steps gemma3; gemma3's chat set at 256 steps did not fit in memory next to
  the other work on the machine: there the receipts of `crossval run --mode float --steps 128
  --prompts chat` stand in, every prefix N = 1…128 passing). smollm2, 52
  prompts, 10,297 positions: min cosine 0.9796, cosine < 0.99 at 0.24 % of positions (at most 3 in
  one prompt), KLD > 0.1 at 0.01 %, top-1 mismatches at 1.8 %, every margin ≤ 0.265. gemma3-270m,
  48 prompts, 6,265 positions: min cosine 0.9598 (step 203 of "long", where both softmaxes agree:
  KLD 0), cosine < 0.99 at 0.13 % (at most 5 in one prompt), KLD > 0.1 at 0.05 %, top-1 mismatches
  at 1.9 %, margins ≤ 0.24 but one at 0.79 (prompt position 4 of "multilingual").
  Exceedances cluster (a chaotic stretch spans several positions), so each rate is set well above
  the measured one: tie_margin 0.5 with rate 0.002 (one decisive flip in 16,562 positions),
  soft_cosine 0.99 with rate 0.02, soft_kld 0.1 with rate 0.01, alpha 0.003 (at most one false
  alarm per ~330 healthy receipts, whatever their length), and a hard floor of 0.90 for any single
  position. Exact-match of the free runs is reported, not gated. With these every measured prompt
  passes at every step count from 1 to its full run (benchmarks/float_thresholds.py analyse: 12,800
  (prompt, N) pairs), and a perturbed layer fails (tests/test_run.py). The former gate (min
  ≥ 0.95, mean ≥ 0.995, top-1 ≥ 0.90, KLD mean ≤ 0.01, fitted to 32 steps) failed 13 of these 100
  prompts at 1 step, 11 at 8, 2 at 32 and none from 64 steps on.
- bf16-reference: gemma.cpp on either side. It runs the GGUF's dequantized weights in f32 but
  rounds matmul operands to bf16 (docs/backends.md). Measured against the float engine on
  gemma3-270m, default prompts, patched gemma.cpp at 2 threads: per-prompt min cosine
  0.99980–0.99998 on 7 of 8 prompts, mean ≥ 0.99996, top-1 ≥ 0.97, KLD mean ≤ 5e-4. The long
  prompt has one ill-conditioned position (383 of 611) at 0.990 — where llama.cpp vs gemma.cpp is
  0.990 as well (--three-way) — so the gate is min ≥ 0.98 with mean ≥ 0.9999; exact-match is
  reported (near-ties at 0.01 logits flip greedy tokens).
- bf16-matched: --mode bf16 against gemma.cpp (the engine runs gemma.cpp's arithmetic for the
  Highway target the kit was built for, engine/models/gemmacpp.py). Measured on gemma3-270m, default
  prompts (the long one, 618 positions past the 512-token sliding window, included), patched
  gemma.cpp at 2 threads: identical logits (max |Δlogit| 0) at every teacher-forced position and
  free-running step and identical greedy tokens, on target AVX3_SPR (old attention, stale scores
  reproduced) and on AVX3_DL (FlashAttention; also at 1 thread) — tests/test_gemmacpp.py. Before
  FlashAttention was reproduced, AVX3_DL gave max |Δlogit| 0.14–0.32 and min cosine
  0.99983–0.99999 on the seven short prompts and 10.9 / 0.836 on the long one. The gate stays what
  bf16 rounding alone guarantees, a floor for runs the engine does not replicate call by call
  (--prefix-end, where it batches the prompt its own way; targets not measured, AVX3 and AVX2; a
  gemma.cpp whose thread pools differ from the worker count assumed): min ≥ 0.999, mean ≥ 0.9999
  (measured before the native kernels, with bf16-rounded operands and numpy's sums: per-prompt min
  cosine 0.99940–0.99997, mean ≥ 0.99995); max |Δlogit| and exact-match are reported, not gated.
A --thresholds JSON file overrides any field.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from crossval.errors import InputError


@dataclass(frozen=True)
class Thresholds:
    profile: str
    min_cosine: float  # minimum over positions (receipt: parity.cosine_similarity): no position below it
    min_cosine_mean: float | None  # None: not gated (the counted gates below judge the positions instead)
    min_top1_agreement: float | None
    max_kld_mean: float | None
    min_exact_match_rate: float
    allow_near_tie_divergence: bool  # a greedy divergence at a near-tie does not fail the gate
    require_tokenization_match: bool
    # counted gates (a profile without them leaves these None): per position, a top-1 mismatch whose
    # top1_margin is ≥ tie_margin (not a near-tie), a cosine below soft_cosine, a KLD above soft_kld
    # each count as an exceedance; a healthy engine shows each kind at a per-position rate of at
    # most `rates[kind]`. With x exceedances in n positions the gate fails when P(X ≥ x) < alpha / 3
    # for X ~ Binomial(n, rate) — one false alarm in 1/alpha healthy receipts whatever n is.
    tie_margin: float | None = None
    soft_cosine: float | None = None
    soft_kld: float | None = None
    rates: dict | None = None  # {"decisive_top1": p, "low_cosine": p, "high_kld": p}
    alpha: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


COUNTED = (("decisive_top1", "top-1 mismatches beyond a near-tie"), ("low_cosine", "positions below the soft cosine"),
           ("high_kld", "positions above the soft KLD"))  # fmt: skip


def exceedances(t: Thresholds, rows: list[dict]) -> dict[str, int]:
    """How many positions exceed each soft level of a profile with counted gates."""
    return {
        "decisive_top1": sum(1 for r in rows if not r["top1_match"] and (r.get("top1_margin") is None or r["top1_margin"] >= t.tie_margin)),
        "low_cosine": sum(1 for r in rows if r["cosine"] < t.soft_cosine),
        "high_kld": sum(1 for r in rows if r["kld"] > t.soft_kld),
    }  # fmt: skip


def binomial_tail(x: int, n: int, p: float) -> float:
    """P(X ≥ x) for X ~ Binomial(n, p)."""
    from scipy.stats import binom

    return 1.0 if x <= 0 else float(binom.sf(x - 1, n, p))


PROFILES = {
    "exact": Thresholds("exact", 0.9999, 0.99999, 0.99, 1e-4, 1.0, True, True),
    "quantized-float": Thresholds("quantized-float", 0.90, None, None, None, 0.0, True, True, tie_margin=0.5, soft_cosine=0.99,
                                  soft_kld=0.1, rates={"decisive_top1": 0.002, "low_cosine": 0.02, "high_kld": 0.01},
                                  alpha=0.003),  # fmt: skip
    "bf16-reference": Thresholds("bf16-reference", 0.98, 0.9999, 0.95, 1e-3, 0.0, True, True),
    "faithful": Thresholds("faithful", 0.9999, 0.99999, 0.99, 1e-4, 1.0, True, True),
    "bf16-matched": Thresholds("bf16-matched", 0.999, 0.9999, 0.95, 1e-3, 0.0, True, True),
}


class ThresholdsError(InputError):
    pass


def select(float_weights: bool, mode: str, backends: tuple[str, str] = ("engine", "llamacpp"), kv_type: str = "f16",
           native: bool = True) -> Thresholds:  # fmt: skip
    """The profile for one comparison: (engine backend, reference backend), the engine's mode.
    native: faithful mode has a native kernel for every matrix type (engine.weights.faithful_fallbacks)."""
    ours = backends[0] == "engine"  # the mode only describes our engine's arithmetic
    if "gemmacpp" in backends:
        matched = ours and mode == "bf16" and backends[1] == "gemmacpp"
        return PROFILES["bf16-matched" if matched else "bf16-reference"]
    if float_weights:
        return PROFILES["exact"]
    if ours and mode == "faithful" and backends[1] in ("llamacpp", "bitnetcpp") and kv_type == "f16" and native:
        return PROFILES["faithful"]
    return PROFILES["quantized-float"]


def load_overrides(base: Thresholds, path: str | Path) -> Thresholds:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ThresholdsError(f"cannot read thresholds file {path}: {e}") from None
    names = {f.name for f in fields(Thresholds)}
    unknown = set(data) - names
    if unknown:
        raise ThresholdsError(f"thresholds file {path}: unknown field(s) {', '.join(sorted(unknown))}")
    return replace(base, **data)


def evaluate(t: Thresholds, parity: dict, tokenization: dict, rows: list[dict] | None = None) -> list[str]:
    """The failures of one comparison against the thresholds ([] = passed). rows: the per-position
    metrics (compare.TeacherForced.rows), which the counted gates need."""
    out = []
    if t.require_tokenization_match and tokenization.get("compared") and not tokenization.get("match"):
        out.append(f"tokenization differs at index {tokenization.get('first_mismatch_index')}")
    checks = [
        ("cosine_similarity", ">=", t.min_cosine),
        ("cosine_mean", ">=", t.min_cosine_mean),
        ("top1_agreement", ">=", t.min_top1_agreement),
        ("kld_mean", "<=", t.max_kld_mean),
    ]
    for key, op, lim in checks:
        v = parity.get(key)
        if v is None or lim is None:
            continue
        if (op == ">=" and v < lim) or (op == "<=" and v > lim):
            out.append(f"{key} {v:.6g} {'<' if op == '>=' else '>'} threshold {lim:g}")
    if t.rates and rows:
        n, level = len(rows), t.alpha / len(COUNTED)
        for (kind, what), x in zip(COUNTED, exceedances(t, rows).values()):
            tail = binomial_tail(x, n, t.rates[kind])
            if tail < level:
                out.append(f"{x} of {n} {what} (healthy rate ≤ {t.rates[kind]:g}: P = {tail:.2g} < {level:.2g})")
    emr = parity.get("exact_match_rate")
    if emr is not None and emr < t.min_exact_match_rate:
        div = parity.get("divergence") or {}
        if not (t.allow_near_tie_divergence and div.get("near_tie")):
            out.append(f"exact_match_rate {emr:.4g} < threshold {t.min_exact_match_rate:g} (first divergence at step {parity.get('first_divergence_step')})")
    return out
