"""`crossval run`: the same prompts through the engine and a reference, compared, one receipt each.

For each (model, prompt): the prompt is rendered (chat template for messages), tokenized by the
reference (the engine's tokenizer is compared when it exists), then
  teacher-forced: both backends' logits for prompt + the reference's greedy continuation,
  free-running: both backends generate `steps` greedy tokens; first divergence, exact-match rate,
                and at the divergence each token's rank and logprob in both backends.
A receipt is built, validated and written atomically; reference crashes and timeouts become
diagnostic receipts and the next prompt gets a fresh reference process.
Nothing here prints: progress goes through the `progress` callback the CLI hands in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from crossval import compare, provenance, receipts, thresholds
from crossval.backends.base import BackendCrashed, BackendError, BackendTimeout, BackendUnavailable
from crossval.prompts import Prompt, render

EXIT_OK, EXIT_PARITY, EXIT_INPUT, EXIT_NO_REFERENCE, EXIT_CRASH = 0, 1, 2, 3, 4


@dataclass
class RunConfig:
    models: list[str]
    prompts: list[Prompt]
    prompt_set: str | None
    steps: int = 32
    threads: int = 1
    seed: int = 42
    n_ctx: int = 2048
    mode: str = "float"
    kv_type: str = "f16"
    reference: str = "llamacpp"
    timeout: float = 120.0
    out_dir: Path = Path("receipts/runs")
    require_reference: bool = False
    deterministic: bool = True
    llama_lib: str | None = None
    thresholds_file: str | None = None
    perturb: tuple[int, float] | None = None  # test hook: (layer, scale) of the engine's FFN output
    keep_going: bool = False  # after a reference timeout/crash, go on with the next prompt
    sampling: object | None = None  # engine.sampling.SamplingParams; None = greedy
    localise: str = "auto"  # auto: on a failed comparison, find the first layer that diverges; always; never
    localise_threshold: float = 1e-2  # NMSE above which a layer's output counts as diverged
    per_position: bool = True
    engine: str = "engine"  # the side under test: engine | llamacpp | gemmacpp | external:CMD
    prefix_end: int = 0  # prefix-LM attention (gemma.cpp semantics, DESIGN §8); 0 = causal
    gemmacpp_threads: int = 2  # gemma.cpp's results depend on it: pinned, recorded
    gemmacpp_patched: bool = True  # False: upstream gemma.cpp (the kit's --no-patches build)
    three_way: bool = False  # also run a third backend and name the odd one out at each divergence
    third: str | None = None  # that backend (default: whichever of engine/llamacpp/gemmacpp is not in use)


@dataclass
class RunResult:
    run_id: str
    out_dir: Path
    exit_code: int
    rows: list[dict] = field(default_factory=list)
    summary_path: Path | None = None


class InputError(ValueError):
    pass


def _model_path(name: str) -> Path:
    from crossval.models import ModelFetchError, resolve_model

    try:
        return resolve_model(name)
    except ModelFetchError as e:
        raise InputError(str(e)) from None


BACKENDS = "engine, llamacpp, gemmacpp, transformers, external:CMD"


def make_backend(spec: str, cfg: RunConfig, path: Path, progress=None):
    """A backend by name (--engine / --reference / --three-way)."""
    if spec.startswith("external:"):
        from crossval.backends.external import ExternalBackend

        return ExternalBackend(spec[len("external:") :], path, n_ctx=cfg.n_ctx, threads=cfg.threads,
                               kv_type=cfg.kv_type, timeout=cfg.timeout)  # fmt: skip
    if spec == "llamacpp":
        from crossval.backends.isolated import IsolatedLlamaCpp

        return IsolatedLlamaCpp(path, n_ctx=cfg.n_ctx, threads=cfg.threads, kv_type=cfg.kv_type, timeout=cfg.timeout, llama_lib=cfg.llama_lib)
    if spec == "gemmacpp":
        from crossval.backends.gemmacpp import GemmaCpp

        return GemmaCpp(path, threads=cfg.gemmacpp_threads, timeout=cfg.timeout, patched=cfg.gemmacpp_patched,
                        prefix_end=cfg.prefix_end, progress=(lambda line: progress("build", {"line": line})) if progress else None)  # fmt: skip
    if spec == "transformers":
        from crossval.backends.transformers_hf import TransformersBackend

        return TransformersBackend(path, threads=cfg.threads)
    if spec == "engine":
        from crossval.backends.engine import EngineBackend

        return EngineBackend(path, n_ctx=cfg.n_ctx, kv_type=cfg.kv_type, mode=cfg.mode, perturb=cfg.perturb, prefix_end=cfg.prefix_end,
                             threads=cfg.threads)  # fmt: skip
    raise InputError(f"unknown backend {spec!r} (available: {BACKENDS})")


def _reference(cfg: RunConfig, path: Path, progress=None):
    return make_backend(cfg.reference, cfg, path, progress)


def _tokenization(ref_ids: list[int], eng_ids: list[int] | None, reason: str | None) -> dict:
    if eng_ids is None:
        return {"compared": False, "match": None, "reason": reason, "ids": ref_ids, "engine_ids": None,
                "first_mismatch_index": None, "context": None}  # fmt: skip
    i = compare.first_divergence(ref_ids, eng_ids)
    ctx = None if i is None else {"reference": ref_ids[max(0, i - 4) : i + 4], "engine": eng_ids[max(0, i - 4) : i + 4]}
    return {"compared": True, "match": i is None, "reason": None, "ids": ref_ids, "engine_ids": eng_ids,
            "first_mismatch_index": i, "context": ctx}  # fmt: skip


def _empty_parity(status: str) -> dict:
    return {
        "status": status, "cosine_similarity": None, "cosine_mean": None, "cosine_min_position": None,
        "exact_match_rate": None, "first_divergence_step": None, "kld_mean": None, "kld_max": None,
        "max_abs_diff": None, "top1_agreement": None, "top5_overlap": None, "top10_overlap": None,
        "ref_top1_rank_max": None, "positions": None, "steps_compared": None, "reference_tokens": None,
        "engine_tokens": None, "reference_text": None, "engine_text": None, "divergence": None, "localisation": None,
        "reference_quirks": [],
    }  # fmt: skip


def compare_one(eng, ref, ids: list[int], steps: int, sampling=None) -> tuple[dict, list[dict], dict]:
    """Both comparisons for one prompt → (parity section, per-position rows, timing).

    The reference prefills the prompt (every position's logits) and generates `steps` greedy
    tokens; its per-step logits are its teacher-forced logits over its own continuation. The
    engine does the same at the same time (the reference runs in its own process), then is
    teacher-forced through the reference's continuation from the first divergence on. Teacher-
    forced positions cover the prompt and the reference's continuation; free-running generation
    is compared step by step. Timings of the two overlap."""
    t = time.perf_counter()
    if hasattr(ref, "send_compare_pass"):  # a child process: let it work while the engine does
        ref.send_compare_pass(ids, steps, sampling=sampling)
        ep = eng.compare_pass(ids, steps, sampling=sampling)
        t_eng = time.perf_counter() - t
        rp = ref.receive_compare_pass()
        t_ref = time.perf_counter() - t
    else:
        rp = ref.compare_pass(ids, steps, sampling=sampling)
        t_ref = time.perf_counter() - t
        ep = eng.compare_pass(ids, steps, sampling=sampling)
        t_eng = time.perf_counter() - t - t_ref
    t = time.perf_counter()
    forced = forced_suffix(eng, ids, ep, rp.tokens)
    t_eng += time.perf_counter() - t
    # a reference may report logits only from some prompt position on (gemma.cpp under prefix_end:
    # positions inside the prefix see later tokens, and it does not expose them)
    off = len(ids) - len(rp.prompt_logits)
    parts = [(rp.prompt_logits, ep.prompt_logits[off:])]
    if forced is not None:
        parts.append((rp.step_logits[1 : len(rp.tokens)], forced))
    tf = compare.teacher_forced_parts(parts)
    p = _empty_parity("ok")
    p.update(tf.summary())
    rows = tf.rows()
    if off:
        p["cosine_min_position"] += off
        for r in rows:
            r["position"] += off
    p["reference_quirks"] = []
    if rp.extra.get("position_shift"):
        # gemma.cpp with prefix_end == prompt length runs the last prompt token again at position P
        # (DESIGN §8): its step s predicts after prompt + [last token] + continuation[:s]
        p["reference_quirks"].append({
            "code": "reference_reran_last_prompt_token",
            "message": f"the reference started decoding at position {rp.extra['pos'][0]}, not {len(ids)}: with prefix_end == "
                       f"prompt length gemma.cpp runs the last prompt token again, so its continuation is predicted from "
                       f"prompt + [last token]; the engine implements the intended semantics (DESIGN §8)",
        })  # fmt: skip
    div = compare.first_divergence(rp.tokens, ep.tokens)
    p["first_divergence_step"] = div
    p["exact_match_rate"] = compare.exact_match_rate(rp.tokens, ep.tokens, steps)
    p["steps_compared"] = steps
    p["reference_tokens"], p["engine_tokens"] = rp.tokens, ep.tokens
    if div is not None and div < min(len(rp.tokens), len(ep.tokens)):
        d = compare.divergence_detail(rp.tokens[div], ep.tokens[div], rp.step_logits[div], ep.step_logits[div])
        d["sampling_margin"] = None
        trace = ep.extra.get("sampling_trace")
        if trace and div < len(trace) and trace[div]["u"] is not None:
            # sampled: both draw the same u (same seed, one draw per step); how far u fell from the
            # edge of the engine token's cumulative interval says whether tiny probability
            # differences could move the pick — a sampling near-tie
            t = trace[div]
            d["sampling_margin"] = min(t["u"] - t["lo"], t["hi"] - t["u"])
            d["near_tie"] = bool(d["near_tie"] or d["sampling_margin"] < compare.NEAR_TIE_LOGPROB_GAP)
        p["divergence"] = {"step": div, **d}
    timing = {
        "reference_logits_s": rp.seconds.get("prefill_s"), "engine_logits_s": ep.seconds.get("prefill_s"),
        "reference_generate_s": rp.seconds.get("generate_s"), "engine_generate_s": ep.seconds.get("generate_s"),
        "reference_pass_s": t_ref, "engine_pass_s": t_eng,
    }  # fmt: skip
    if steps > 1:
        timing["reference_decode_tok_s"] = (steps - 1) / max(rp.seconds["generate_s"], 1e-9)
        timing["engine_decode_tok_s"] = (steps - 1) / max(ep.seconds["generate_s"], 1e-9)
    p["_teacher_forced_ids"] = list(ids) + list(rp.tokens[:-1]) if steps > 1 else list(ids)
    p["_tf"] = parts
    return p, rows, timing


THREE_WAY = ("engine", "llamacpp", "gemmacpp")


def _third(cfg: RunConfig) -> str:
    if cfg.third:
        if cfg.third in (cfg.engine, cfg.reference):
            raise InputError(f"--third {cfg.third} is already the engine or the reference side")
        return cfg.third
    if cfg.engine not in THREE_WAY or cfg.reference not in THREE_WAY or cfg.engine == cfg.reference:
        raise InputError(f"--three-way without --third compares {', '.join(THREE_WAY)}: --engine and --reference must be two of them")
    return next(b for b in THREE_WAY if b not in (cfg.engine, cfg.reference))


def three_way(cfg: RunConfig, ids: list[int], parity: dict, third, third_error: str | None) -> dict:
    """The third backend over the same teacher-forced sequence and its own greedy run; compare.three_way
    names the odd one out wherever the three disagree."""
    names = [cfg.engine, cfg.reference, _third(cfg)]
    if third is None:
        return {"backends": names, "status": "unavailable", "reason": third_error, "pairs": {}, "disagreements": [],
                "odd_one_out_counts": {}, "first_divergence": None, "farthest": None}  # fmt: skip
    if cfg.prefix_end:
        raise BackendError("--three-way needs causal attention (prefix_end 0)")
    parts = parity["_tf"]
    tf_ids = parity["_teacher_forced_ids"]
    ref_tf = np.concatenate([r for r, _ in parts])
    eng_tf = np.concatenate([e for _, e in parts])
    third_tf = third.logits(tf_ids)[len(tf_ids) - len(ref_tf) :]
    if third_tf.shape != ref_tf.shape:
        raise BackendError(f"{names[2]} returned logits of shape {third_tf.shape}, the reference {ref_tf.shape}")
    third_tokens = third.generate(ids, cfg.steps).tokens
    out = compare.three_way(names, [eng_tf, ref_tf, third_tf],
                            [parity["engine_tokens"], parity["reference_tokens"], third_tokens],
                            first_position=len(tf_ids) - len(ref_tf))  # fmt: skip
    out["status"], out["reason"] = "ok", None
    return out


def forced_suffix(b, ids: list[int], free, ref_tokens: list[int]) -> np.ndarray | None:
    """b's logits after each of ref_tokens[:-1] (teacher-forced through the reference's
    continuation), by the cheapest means the backend offers."""
    if len(ref_tokens) <= 1:
        return None
    if hasattr(b, "forced_suffix"):
        return b.forced_suffix(len(ids), free, ref_tokens)
    if hasattr(b, "forced_logits"):
        return b.forced_logits(ids, ref_tokens)[1:]
    return b.logits(list(ids) + list(ref_tokens[:-1]))[len(ids) :]


LOCALISE_PATTERN = r"^(kqv_out|ffn_inp|sa_out|l_out)-\d+$"


def localise_divergence(eng, ref, parity: dict, rows: list[dict], threshold: float) -> dict:
    """At the first teacher-forced position whose top-1 differs (else the lowest-cosine one),
    compare every layer's attention output, post-attention residual and layer output with
    llama.cpp's graph tensors; name the first whose NMSE exceeds the threshold."""
    ids = parity["_teacher_forced_ids"]
    pos = next((r["position"] for r in rows if not r["top1_match"]), parity["cosine_min_position"])
    ours = eng.capture_rows(ids[: pos + 1], pos)
    theirs = {k.replace("sa_out-", "ffn_inp-"): v for k, v in ref.capture_rows(ids[: pos + 1], pos, LOCALISE_PATTERN).items()}
    out = compare.localise(ours, theirs, threshold)
    out["position"] = int(pos)
    return out


def _receipt(cfg, run_id, model_sec, tok_sec, prompt: Prompt, text: str, tmpl_kind, n_tokens, backends, tokenization,
             parity, rows, thr, env, timing, diagnostics=None) -> dict:  # fmt: skip
    failures = thresholds.evaluate(thr, parity, tokenization) if parity["status"] in ("ok", "divergence") else []
    if parity["status"] in ("ok", "divergence"):
        failures += [q["message"] for q in parity.get("reference_quirks") or []]
    if parity["status"] in ("ok", "divergence"):
        parity["status"] = "ok" if not failures else "divergence"
    elif parity["status"] in ("timeout", "crashed", "error"):
        failures = [f"{parity['status']}: {diagnostics['error']}" if diagnostics else parity["status"]]
    r = {
        "schema_version": receipts.SCHEMA_VERSION,
        "kind": "parity",
        "run_id": run_id,
        "timestamp": receipts.utc_now(),
        "model": model_sec,
        "tokenizer": tok_sec,
        "prompt": {
            "set": cfg.prompt_set, "id": prompt.id, "kind": prompt.kind, "text": text,
            "messages": list(prompt.messages) if prompt.is_chat else None,
            "blake3": provenance.blake3_text(prompt.text if not prompt.is_chat else _messages_text(prompt)),
            "formatted_blake3": provenance.blake3_text(text), "chat_template": tmpl_kind, "n_tokens": n_tokens,
        },  # fmt: skip
        "config": {
            "steps": cfg.steps, "threads": cfg.threads, "seed": cfg.seed,
            "sampling": {"method": "greedy", "temperature": None, "top_k": None, "top_p": None, "min_p": None,
                         "typical_p": None, "seed": None} if cfg.sampling is None else {"method": "sampled", **cfg.sampling.to_dict()},
            "n_ctx": cfg.n_ctx, "mode": cfg.mode, "kv_type": cfg.kv_type, "deterministic": cfg.deterministic,
            "timeout_s": cfg.timeout, "perturbation": {"layer": cfg.perturb[0], "scale": cfg.perturb[1]} if cfg.perturb else None,
            "prefix_end": cfg.prefix_end, "three_way": cfg.three_way,
        },  # fmt: skip
        "backends": backends,
        "tokenization": tokenization,
        "parity": parity,
        "per_position": rows if cfg.per_position else [],
        "thresholds": thr.to_dict(),
        "verdict": {"passed": not failures and parity["status"] in ("ok", "engine_only"), "failures": failures},
        "environment": env,
        "timing": timing,
    }
    if diagnostics:
        r["diagnostics"] = diagnostics
    return r


def _special_texts(g) -> tuple[str, str]:
    """BOS/EOS token strings for chat templates (llama-cpp-python passes the vocab's texts)."""
    toks = g.get("tokenizer.ggml.tokens")

    def text(key):
        i = g.get(key)
        return toks[int(i)] if toks is not None and i is not None and 0 <= int(i) < len(toks) else ""

    return text("tokenizer.ggml.bos_token_id"), text("tokenizer.ggml.eos_token_id")


def _messages_text(p: Prompt) -> str:
    import json

    return json.dumps(list(p.messages), ensure_ascii=False, sort_keys=True)


def _label(m: str) -> str:
    """A model's short name, or its file stem when given as a path."""
    from crossval.models import REAL_MODELS

    return m if m in REAL_MODELS else Path(m).stem


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)[:80]


def run(cfg: RunConfig, progress: Callable[[str, dict], None] | None = None) -> RunResult:
    """Run every (model, prompt); write receipts + summary under cfg.out_dir/<run_id>/."""
    import crossval
    from crossval.backends.engine import EngineBackend
    from engine.gguf_model import GGUFError, open_gguf
    from engine.weights import faithful_fallbacks

    progress = progress or (lambda event, info: None)
    run_id = receipts.new_run_id()
    out = Path(cfg.out_dir) / run_id
    t_run = time.perf_counter()
    env = {**provenance.environment(cfg.threads), "crossval_version": crossval.__version__}
    rows: list[dict] = []
    codes: list[int] = []
    paths = {m: _model_path(m) for m in cfg.models}  # every model resolves before any work starts
    for mname, path in paths.items():
        try:
            g = open_gguf(path)
            g.arch  # noqa: B018 — a missing general.architecture is bad input, reported now
        except GGUFError as e:
            raise InputError(str(e)) from None
        model_sec = {**provenance.model_facts(g, path, mname), "float_weights": provenance.float_weights(g)}
        native = cfg.mode != "faithful" or not faithful_fallbacks(g)
        thr = thresholds.select(model_sec["float_weights"], cfg.mode, (cfg.engine, cfg.reference), cfg.kv_type, native)
        if cfg.thresholds_file:
            thr = thresholds.load_overrides(thr, cfg.thresholds_file)
        tmpl = g.get("tokenizer.chat_template")
        bos_text, eos_text = _special_texts(g)
        progress("model", {"model": mname, "prompts": len(cfg.prompts)})
        ref, ref_unavailable, ref_failure = None, None, None
        try:
            ref = _reference(cfg, path, progress)  # starts loading in its own process while the engine loads
        except BackendUnavailable as e:
            ref_unavailable = str(e)
        except BackendError as e:  # a timeout/crash while starting: the first prompt's receipt says so
            ref_failure = e
        try:
            eng = make_backend(cfg.engine, cfg, path, progress)
            if hasattr(eng, "wait_loaded"):
                eng.wait_loaded()
        except (GGUFError, BackendError) as e:
            ref = _drop(ref)
            raise InputError(f"--engine {cfg.engine}: {e}" if isinstance(e, BackendError) else str(e)) from None
        third, third_error = None, None
        if cfg.three_way:
            try:
                third = make_backend(_third(cfg), cfg, path, progress)
            except BackendError as e:
                third_error = f"{_third(cfg)}: {e}"
        eng_tok = getattr(eng, "tokenizer", None)
        tok_fp = provenance.tokenizer_fingerprint(g, eng_tok.vocab if eng_tok else None)
        first = True
        for prompt in cfg.prompts:
            t0 = time.perf_counter()
            text = render(prompt, tmpl, bos_text, eos_text)
            tmpl_kind = ("model" if tmpl else "fallback") if prompt.is_chat else None
            diagnostics, stage = None, "start reference"
            timing: dict = {"engine_load_s": eng.load_s, "reference_load_s": None}
            parity, prow, ids = _empty_parity("ok"), [], []
            tokenization = _tokenization([], None, "not reached")
            ref_prov = None
            try:
                if ref_failure is not None:
                    e, ref_failure = ref_failure, None
                    raise e
                if ref is None and ref_unavailable is None:
                    try:
                        ref = _reference(cfg, path, progress)
                    except BackendUnavailable as e:
                        ref_unavailable = str(e)
                if ref is None:
                    raise BackendUnavailable(ref_unavailable)
                stage = "load"
                ref.wait_loaded()
                if first:
                    timing["reference_load_s"] = ref.load_s
                    first = False
                ref_prov = ref.provenance()
                stage = "tokenize"
                ids = ref.tokenize(text, add_bos=True, parse_special=prompt.is_chat)
                if not ids:
                    raise InputError(f"prompt {prompt.id!r} is empty after tokenization")
                if len(ids) + cfg.steps > cfg.n_ctx:
                    raise InputError(f"prompt {prompt.id!r}: {len(ids)} tokens + {cfg.steps} steps exceed --n-ctx {cfg.n_ctx}")
                if eng.capabilities.tokenize:
                    tokenization = _tokenization(ids, eng.tokenize(text, add_bos=True, parse_special=prompt.is_chat), None)
                else:
                    tokenization = _tokenization(ids, None, "the engine has no tokenizer for this model's vocabulary")
                stage = "compare"
                parity, prow, t2 = compare_one(eng, ref, ids, cfg.steps, cfg.sampling)
                timing.update(t2)
                parity["localisation"] = None
                wanted = cfg.localise == "always" or (cfg.localise == "auto" and thresholds.evaluate(thr, parity, tokenization))
                if wanted and hasattr(ref, "capture_rows") and hasattr(eng, "capture_rows"):
                    stage = "localise"
                    parity["localisation"] = localise_divergence(eng, ref, parity, prow, cfg.localise_threshold)
                if cfg.three_way:
                    stage = "three-way"
                    parity["_three_way"] = three_way(cfg, ids, parity, third, third_error)
                stage = "detokenize"
                parity["reference_text"] = ref.detokenize(parity["reference_tokens"])
                parity["engine_text"] = ref.detokenize(parity["engine_tokens"])
            except BackendUnavailable as e:
                parity = _empty_parity("engine_only")
                tokenization = _tokenization([], None, f"reference unavailable: {e}")
                diagnostics = None
                codes.append(EXIT_NO_REFERENCE if cfg.require_reference else EXIT_OK)
            except BackendTimeout as e:
                parity = _empty_parity("timeout")
                diagnostics = {"stage": e.stage, "error": str(e), "stderr_tail": e.stderr_tail, "returncode": None}
                ref = _drop(ref)
            except BackendCrashed as e:
                parity = _empty_parity("crashed")
                diagnostics = {"stage": e.stage, "error": str(e), "stderr_tail": e.stderr_tail, "returncode": e.returncode}
                ref = _drop(ref)
            except BackendError as e:
                parity = _empty_parity("error")
                diagnostics = {"stage": stage, "error": str(e), "stderr_tail": ref.stderr_tail() if ref else [], "returncode": None}
            timing["total_s"] = time.perf_counter() - t0
            for k in ("engine_logits_s", "reference_logits_s", "engine_generate_s", "reference_generate_s",
                      "engine_decode_tok_s", "reference_decode_tok_s", "engine_pass_s", "reference_pass_s"):  # fmt: skip
                timing.setdefault(k, None)
            parity.pop("_teacher_forced_ids", None)
            parity.pop("_tf", None)
            tw = parity.pop("_three_way", None)
            backends = {"engine": eng.provenance(), "reference": ref_prov}
            tok_sec = {**tok_fp, "parse_special": prompt.is_chat}
            rec = _receipt(cfg, run_id, model_sec, tok_sec, prompt, text, tmpl_kind, len(ids), backends, tokenization,
                           parity, prow, thr, env, timing, diagnostics)  # fmt: skip
            rec["three_way"] = tw
            fname = f"{_safe(_label(mname))}__{_safe(prompt.id)}.json"
            receipts.write(out / fname, rec)
            status = rec["parity"]["status"]
            if status in ("timeout", "crashed"):
                codes.append(EXIT_CRASH)
            elif status == "error" or not rec["verdict"]["passed"] and status != "engine_only":
                codes.append(EXIT_PARITY)
            row = {
                "file": fname, "model": _label(mname), "prompt": prompt.id, "status": status, "passed": rec["verdict"]["passed"],
                "tokens_match": tokenization["match"], "cosine_similarity": parity["cosine_similarity"],
                "exact_match_rate": parity["exact_match_rate"], "first_divergence_step": parity["first_divergence_step"],
                "kld_mean": parity["kld_mean"], "failures": rec["verdict"]["failures"],
                "localised": (parity.get("localisation") or {}).get("first"),
                "odd_one_out": tw and (tw["first_divergence"] or {}).get("odd_one_out"),
            }  # fmt: skip
            rows.append(row)
            progress("receipt", row)
            if status in ("timeout", "crashed") and not cfg.keep_going:
                break
        for b in (ref, eng, third):
            if b is not None:
                b.close()
        if rows and rows[-1]["status"] in ("timeout", "crashed") and not cfg.keep_going:
            break  # without --keep-going a crash or timeout ends the run (its receipt is written)
    exit_code = max(codes, default=EXIT_OK, key=_severity)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    summary = {
        "schema_version": receipts.SCHEMA_VERSION, "kind": "run-summary", "run_id": run_id, "timestamp": receipts.utc_now(),
        "exit_code": exit_code, "passed": exit_code == EXIT_OK, "counts": counts, "receipts": rows,
        "total_s": time.perf_counter() - t_run,
        "config": {"models": cfg.models, "prompt_set": cfg.prompt_set, "steps": cfg.steps, "threads": cfg.threads,
                   "seed": cfg.seed, "mode": cfg.mode, "kv_type": cfg.kv_type, "n_ctx": cfg.n_ctx,
                   "reference": cfg.reference, "engine": cfg.engine, "prefix_end": cfg.prefix_end,
                   "three_way": cfg.three_way, "timeout_s": cfg.timeout,
                   "sampling": None if cfg.sampling is None else cfg.sampling.to_dict()},
    }  # fmt: skip
    sp = receipts.write(out / "summary.json", summary)
    return RunResult(run_id, out, exit_code, rows, sp)


_SEVERITY = {EXIT_OK: 0, EXIT_PARITY: 1, EXIT_NO_REFERENCE: 2, EXIT_CRASH: 3}


def _severity(code: int) -> int:
    return _SEVERITY.get(code, 0)


def _drop(ref):
    if ref is not None:
        try:
            ref.close()
        except Exception:
            pass
    return None
