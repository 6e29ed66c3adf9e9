"""`crossval envelope`: the sampling compatibility envelope (configs × prompts × K seeds, two backends).

For every sampling config (a row of configs.tsv) and prompt (a line of prompts.txt), both backends
generate `steps` sampled tokens with seeds seed0 … seed0+K−1. Two kinds of comparison:
- shared RNG (engine vs llama.cpp: the same sampler chain and std::mt19937): the same seed must
  give the same sequence — the exact-sequence match rate, gated by min_exact_sequence_rate;
- independent RNG (engine vs gemma.cpp: AES-CTR streams, std::discrete_distribution): only the
  distributions can agree — per step, a chi-square test of homogeneity on the (prompt, token)
  counts of the two backends (compare.token_frequency_test), Bonferroni-corrected over steps;
  plus distinct-1/2 and the mean logprob of each backend's own sampled tokens (Welch's t-test on
  per-sequence means, at alpha).
Reference behaviours that change what a config means are reported per config as quirks
(gemma.cpp ignores temperature at its pinned commit and has no top-p/min-p; docs/backends.md).
One envelope receipt (schemas/envelope.schema.json) per run.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crossval import compare, provenance, receipts
from crossval.errors import InputError

DEFAULT_THRESHOLDS = {
    # shared RNG, float weights. Measured on SmolLM2's F32 copy (4 seeds × 4 prompts × 8 steps):
    # 0.875–1.0 per config. With quantized weights llama.cpp's quantized arithmetic moves the
    # sampling distributions themselves (mean logprob −1.88 vs −2.00 at top-k 40, T = 1), the
    # rate falls to 0.25–0.44 and is reported, not gated (as greedy exact-match is, thresholds.py)
    "min_exact_sequence_rate": 0.85,
    "alpha": 0.01,  # family-wise: each step's test runs at alpha / steps (Bonferroni)
    # |distinct-n(engine) − distinct-n(reference)|, n = 1 and 2. Loose on purpose: with 16–32
    # sequences of 8–16 tokens, two samples of the same sampler differ by up to ~0.2
    "max_distinct_diff": 0.3,
}
SHARED_RNG = {"llamacpp"}
CONFIG_COLUMNS = ("name", "temperature", "top_k", "top_p", "min_p")


class EnvelopeInputError(InputError):
    pass


@dataclass
class EnvelopeConfig:
    model: str
    configs: list[dict]
    prompts: list[str]
    reference: str = "llamacpp"
    seeds: int = 8
    seed0: int = 1
    steps: int = 16
    mode: str = "auto"  # crossval/modes.py
    kv_type: str = "f16"
    threads: int = 1
    gemmacpp_threads: int = 2
    timeout: float = 300.0
    out_dir: Path = Path("receipts/envelope")
    configs_file: str | None = None
    prompts_file: str | None = None
    thresholds: dict = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))


def read_configs(path: str | Path) -> list[dict]:
    """configs.tsv: a header line naming the columns name, temperature, top_k, top_p, min_p (any
    order; top_p / min_p optional, default 1.0 / 0.0), then one config per line; # comments."""
    try:
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    except OSError as e:
        raise EnvelopeInputError(f"cannot read configs file {path}: {e.strerror}") from None
    if not lines:
        raise EnvelopeInputError(f"configs file {path} is empty")
    rows = list(csv.DictReader(lines, delimiter="\t"))
    need = {"name", "temperature", "top_k"}
    if not need <= set(rows[0] if rows else csv.DictReader(lines, delimiter="\t").fieldnames or []):
        raise EnvelopeInputError(f"configs file {path}: the header must name {', '.join(CONFIG_COLUMNS)} (tab-separated)")
    out = []
    for i, r in enumerate(rows, start=2):
        try:
            c = {"name": r["name"].strip(), "temperature": float(r["temperature"]), "top_k": int(r["top_k"]),
                 "top_p": float(r.get("top_p") or 1.0), "min_p": float(r.get("min_p") or 0.0)}  # fmt: skip
        except (TypeError, ValueError):
            raise EnvelopeInputError(f"configs file {path}, line {i}: expected name, temperature, top_k, top_p, min_p") from None
        if c["temperature"] <= 0 or c["top_k"] < 0 or not 0 < c["top_p"] <= 1 or not 0 <= c["min_p"] < 1:
            raise EnvelopeInputError(f"configs file {path}, line {i}: values out of range (temperature > 0, top_k ≥ 0, 0 < top_p ≤ 1, 0 ≤ min_p < 1)")
        out.append(c)
    return out


def read_prompts(path: str | Path) -> list[str]:
    try:
        prompts = [ln for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise EnvelopeInputError(f"cannot read prompts file {path}: {e}") from None
    if not prompts:
        raise EnvelopeInputError(f"prompts file {path} has no prompts")
    return prompts


def _quirks(reference: str, c: dict) -> list[dict]:
    q = []
    if reference == "gemmacpp":
        if c["temperature"] != 1.0:
            q.append({"code": "reference_ignores_temperature",
                      "message": f"gemma.cpp's top-k sampler ignores temperature at its pinned commit (its softmax "
                                 f"cancels the 1/T factor): it samples at T = 1, the engine at T = {c['temperature']:g}"})  # fmt: skip
        if c["top_p"] < 1.0 or c["min_p"] > 0.0:
            q.append({"code": "reference_lacks_top_p_min_p",
                      "message": "gemma.cpp samples from the top-k softmax only: top_p and min_p apply to the engine alone"})  # fmt: skip
    return q


def _cut_at_eos(toks: list[int], eos: set[int]) -> list[int]:
    for i, t in enumerate(toks):
        if t in eos:
            return toks[: i + 1]
    return toks


def run_envelope(cfg: EnvelopeConfig, progress=None) -> tuple[Path, dict]:
    """Run the envelope; write and return (receipt path, receipt)."""
    from contextlib import ExitStack

    from crossval.backends import make_backend
    from crossval.backends.base import BackendSettings
    from crossval.backends.gemmacpp import EOS_IDS
    from crossval.models import resolve_model
    from crossval.modes import resolve_mode
    from engine.gguf_model import open_gguf
    from engine.sampling import SamplingParams

    progress = progress or (lambda event, info: None)
    t0 = time.perf_counter()
    cfg.mode, _ = resolve_mode(cfg.mode, "engine", cfg.reference)
    path = resolve_model(cfg.model)
    g = open_gguf(path)
    receipts.ensure_dir(cfg.out_dir)
    settings = BackendSettings(threads=cfg.threads, mode=cfg.mode, kv_type=cfg.kv_type, timeout=cfg.timeout,
                               gemmacpp_threads=cfg.gemmacpp_threads, progress=lambda line: progress("build", {"line": line}))  # fmt: skip
    with ExitStack() as backends:
        ref = backends.enter_context(make_backend(cfg.reference, path, settings))
        eng = backends.enter_context(make_backend("engine", path, settings))
        ref.wait_loaded()
        ids_by_prompt = [ref.tokenize(p, add_bos=True, parse_special=False) for p in cfg.prompts]
        shared = cfg.reference in SHARED_RNG
        eos = set(EOS_IDS) if cfg.reference == "gemmacpp" else set()  # gemma.cpp stops after these
        th = dict(cfg.thresholds)
        if not provenance.float_weights(g):
            th["min_exact_sequence_rate"] = 0.0
        out_configs, failures = [], []
        for c in cfg.configs:
            progress("config", {"name": c["name"]})
            seqs = {"engine": [], "reference": []}
            logprobs = {"engine": [], "reference": []}  # per sequence: mean logprob of its tokens
            exact = []
            for pi, ids in enumerate(ids_by_prompt):
                for k in range(cfg.seeds):
                    seed = cfg.seed0 + k
                    params = SamplingParams(temperature=c["temperature"], top_k=c["top_k"], top_p=c["top_p"], min_p=c["min_p"], seed=seed)
                    ep = eng.compare_pass(ids, cfg.steps, sampling=params)
                    if cfg.reference == "gemmacpp":
                        out, rows = ref.run_driver(ids, cfg.steps, top_k=max(c["top_k"], 1), temperature=c["temperature"], seed=seed,
                                                   stage="sample")  # fmt: skip
                        r_toks, r_rows = [int(t) for t in out["tokens"]], rows
                    else:
                        rp = ref.compare_pass(ids, cfg.steps, sampling=params)
                        r_toks, r_rows = rp.tokens, rp.step_logits
                    e_toks = _cut_at_eos(list(ep.tokens), eos) if eos else list(ep.tokens)
                    for side, toks, rows in (("engine", e_toks, ep.step_logits), ("reference", r_toks, r_rows)):
                        seqs[side].append((pi, toks))
                        if len(toks):
                            lp = compare.log_softmax(np.asarray(rows[: len(toks)], dtype=np.float64))
                            logprobs[side].append(float(lp[np.arange(len(toks)), toks].mean()))
                    exact.append(e_toks == r_toks)
                    progress("sample", {"name": c["name"], "prompt": pi, "seed": seed})
            steps_out = []
            for s in range(cfg.steps):
                a = [(pi, t[s]) for pi, t in seqs["engine"] if len(t) > s]
                b = [(pi, t[s]) for pi, t in seqs["reference"] if len(t) > s]
                if not a or not b:
                    break
                steps_out.append({"step": s, "n_engine": len(a), "n_reference": len(b), **compare.token_frequency_test(a, b)})
            ps = [x["p_value"] for x in steps_out if x["p_value"] is not None]
            min_p = min(ps) if ps else None
            distinct = {side: {"distinct_1": compare.distinct_n([t for _, t in seqs[side]], 1),
                               "distinct_2": compare.distinct_n([t for _, t in seqs[side]], 2)} for side in seqs}  # fmt: skip
            mean_lp = {side: (float(np.mean(v)) if v else None) for side, v in logprobs.items()}
            lp_p = compare.welch_p_value(logprobs["engine"], logprobs["reference"])
            quirks = _quirks(cfg.reference, c)
            fails = []
            rate = sum(exact) / len(exact) if exact else None
            if shared and rate is not None and rate < th["min_exact_sequence_rate"]:
                fails.append(f"exact-sequence match rate {rate:.3f} < {th['min_exact_sequence_rate']:g}")
            if min_p is not None and min_p < th["alpha"] / max(len(steps_out), 1):
                worst = min((x for x in steps_out if x["p_value"] is not None), key=lambda x: x["p_value"])
                fails.append(f"token frequencies differ at step {worst['step']} (chi-square p = {min_p:.3g} < "
                             f"{th['alpha']:g}/{len(steps_out)})")  # fmt: skip
            for n in ("distinct_1", "distinct_2"):
                de, dr = distinct["engine"][n], distinct["reference"][n]
                if de is not None and dr is not None and abs(de - dr) > th["max_distinct_diff"]:
                    fails.append(f"{n} {de:.3f} vs {dr:.3f} differs by more than {th['max_distinct_diff']:g}")
            if lp_p is not None and lp_p < th["alpha"]:
                fails.append(f"mean logprob {mean_lp['engine']:.3f} vs {mean_lp['reference']:.3f} differs (Welch t-test "
                             f"p = {lp_p:.3g} < {th['alpha']:g})")  # fmt: skip
            fails += [q["message"] for q in quirks]
            out_configs.append({
                **c, "samples": len(exact), "exact_sequence_match_rate": rate if shared else None,
                "exact_sequence_matches": sum(exact), "steps": steps_out, "min_p_value": min_p,
                "distinct": distinct, "mean_logprob": {**mean_lp, "p_value": lp_p}, "quirks": quirks, "passed": not fails, "failures": fails,
            })  # fmt: skip
            failures += [f"{c['name']}: {f}" for f in fails]
        rec = {
            **receipts.header("envelope"),
            "model": {**provenance.model_facts(g, path, cfg.model), "float_weights": provenance.float_weights(g)},
            "backends": {"engine": eng.provenance(), "reference": ref.provenance()},
            "rng": "shared" if shared else "independent",
            "config": {"seeds": cfg.seeds, "seed0": cfg.seed0, "steps": cfg.steps, "mode": cfg.mode, "kv_type": cfg.kv_type,
                       "threads": cfg.threads, "configs_file": cfg.configs_file, "prompts_file": cfg.prompts_file,
                       "prompts": list(cfg.prompts), "prompt_ids": ids_by_prompt},  # fmt: skip
            "test": "token frequencies: Pearson chi-square test of homogeneity on (prompt, token) counts per step "
                    "(scipy.stats.chi2_contingency, categories with pooled count < 5 merged per prompt), Bonferroni-corrected "
                    "over steps; mean logprob: Welch's t-test on per-sequence mean logprobs (scipy.stats.ttest_ind)",
            "thresholds": dict(th),
            "configs": out_configs,
            "verdict": {"passed": not failures, "failures": failures},
            "environment": provenance.environment_section(cfg.threads),
            "timing": {"total_s": time.perf_counter() - t0},
        }
    out = Path(cfg.out_dir) / f"{rec['run_id']}__envelope__{cfg.reference}.json"
    receipts.write(out, rec)
    return out, rec
