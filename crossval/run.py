"""`crossval run`: the same prompts through the engine and a reference, compared, one receipt each.

A pipeline of small steps (docs/architecture.md walks one prompt through it):

    resolve(cfg)                      models → ModelPlan (path, facts, thresholds, chat template)
    Backends(cfg, plan)               start the reference (apart), the engine, the third; closed in `finally`
    per prompt, one Comparison record:
      render(c, plan)                 the text: prompt text, or messages through the chat template
      tokenize(c, backends)           the reference's ids; the engine's compared with them
      compare(c, eng, ref, cfg)       one compare pass each: teacher-forced metrics + free-running steps
      localise(c, eng, ref, cfg)      on a failure: the first layer whose output departs
      three_way(c, third, cfg)        with --three-way: the odd one out at each disagreement
      detokenize(c, backends)         both continuations as text
    receipt(cfg, run_id, plan, c)     the parity receipt (validated, sealed, written atomically)
    summary(...)                      the run summary; the exit code is the worst outcome

Teacher-forced positions cover the prompt and the reference's continuation; free-running
generation is compared step by step. A reference crash or timeout becomes a diagnostic receipt
and the next prompt gets a fresh reference process. Nothing here prints: progress goes through
the `progress` callback the CLI hands in.
"""

from __future__ import annotations

import functools
import json
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from crossval import compare, provenance, receipts, signals, signing, thresholds
from crossval.backends import backend_class, make_backend
from crossval.backends.base import (Backend, BackendCrashed, BackendError, BackendSettings, BackendTimeout,
                                    BackendUnavailable, ComparePass)  # fmt: skip
from crossval.errors import EXIT_CRASH, EXIT_NO_REFERENCE, EXIT_OK, EXIT_PARITY, InputError, worst
from crossval.prompts import Prompt
from crossval.prompts import render as render_prompt

Progress = Callable[[str, dict], None]


@dataclass
class RunConfig:
    models: list[str]
    prompts: list[Prompt]
    prompt_set: str | None
    steps: int = 32
    threads: int = 1
    seed: int = 42
    n_ctx: int = 2048
    mode: str = "auto"  # crossval/modes.py: faithful against llama.cpp where the kernels are built
    kv_type: str = "f16"
    reference: str = "llamacpp"
    timeout: float = 300.0
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
    engine: str = "engine"  # the side under test: any backend spec (crossval/backends/__init__.py)
    prefix_end: int = 0  # prefix-LM attention over the prompt (gemma.cpp's semantics); 0 = causal
    gemmacpp_threads: int = 2  # gemma.cpp's results depend on it: pinned, recorded
    gemmacpp_patched: bool = True  # False: upstream gemma.cpp (the kit's --no-patches build)
    three_way: bool = False  # also run a third backend and name the odd one out at each divergence
    third: str | None = None  # that backend (default: whichever of engine/llamacpp/gemmacpp is not in use)
    sign_key: object | None = None  # an Ed25519 private key: each receipt also goes out signed (crossval/signing.py)

    def settings(self, progress: Progress | None = None) -> BackendSettings:
        return BackendSettings(n_ctx=self.n_ctx, threads=self.threads, kv_type=self.kv_type, timeout=self.timeout, mode=self.mode,
                               llama_lib=self.llama_lib, prefix_end=self.prefix_end, perturb=self.perturb,
                               gemmacpp_threads=self.gemmacpp_threads, gemmacpp_patched=self.gemmacpp_patched,
                               progress=(lambda line: progress("build", {"line": line})) if progress else None)  # fmt: skip


@dataclass
class RunResult:
    run_id: str
    out_dir: Path
    exit_code: int
    rows: list[dict] = field(default_factory=list)
    summary_path: Path | None = None


# --- step 1: resolve ---------------------------------------------------------------------------
@dataclass
class ModelPlan:
    """One model, resolved before any backend starts."""

    name: str  # as given (short name or path)
    label: str  # short name, or the file stem of a path
    path: Path
    gguf: object  # engine.gguf_model.GGUFFile
    section: dict  # the receipt's `model` section
    thresholds: thresholds.Thresholds
    chat_template: str | None
    bos_text: str
    eos_text: str
    tokenizer: dict | None = None  # the receipt's `tokenizer` section (without parse_special)
    engine_tokenizer: object | None = None  # engine.tokenizer.Tokenizer of the GGUF, None where unsupported


def resolve(cfg: RunConfig) -> list[ModelPlan]:
    """Every model resolves and opens, the mode and backends are known, the output directory is
    writable — before any work starts (bad input fails here, in one line)."""
    from crossval.models import REAL_MODELS, resolve_model
    from crossval.modes import resolve_mode
    from engine.gguf_model import GGUFError, open_gguf
    from engine.weights import faithful_fallbacks

    cfg.mode, _ = resolve_mode(cfg.mode, cfg.engine, cfg.reference)
    for spec in (cfg.engine, cfg.reference, *([_third(cfg)] if cfg.three_way else [])):
        backend_class(spec)  # an unknown backend name is bad input
    if cfg.sampling is not None:
        cfg.sampling = replace(cfg.sampling, chain=sampling_chain(cfg))
    receipts.ensure_dir(cfg.out_dir)
    plans = []
    for name in cfg.models:
        path = resolve_model(name)
        try:
            g = open_gguf(path)
            g.arch  # noqa: B018 — a missing general.architecture is bad input, reported now
        except GGUFError as e:
            raise InputError(str(e)) from None
        section = {**provenance.model_facts(g, path, name), "float_weights": provenance.float_weights(g)}
        native = cfg.mode != "faithful" or not faithful_fallbacks(g)
        thr = thresholds.select(section["float_weights"], cfg.mode, (cfg.engine, cfg.reference), cfg.kv_type, native)
        if cfg.thresholds_file:
            thr = thresholds.load_overrides(thr, cfg.thresholds_file)
        bos, eos = _special_texts(g)
        label = name if name in REAL_MODELS else Path(name).stem
        tok = _engine_tokenizer(g)
        plans.append(ModelPlan(name, label, path, g, section, thr, g.get("tokenizer.chat_template"), bos, eos,
                               provenance.tokenizer_fingerprint(g, tok.vocab if tok is not None else None), tok))  # fmt: skip
    return plans


def sampling_chain(cfg: RunConfig) -> str:
    """The sampler chain a sampled run draws with: the one its native side declares
    (Backend.sampling_chain: bitnet.cpp's fork draws differently from llama.cpp); the engine
    follows it. Two sides with different chains could never draw alike: bad input."""
    own = {spec: backend_class(spec).sampling_chain for spec in (cfg.engine, cfg.reference)}
    chains = set(own.values()) - {None}
    if len(chains) > 1:
        raise InputError(f"a sampled run needs one sampler chain: {cfg.engine} draws with {own[cfg.engine]}'s, "
                         f"{cfg.reference} with {own[cfg.reference]}'s")  # fmt: skip
    return chains.pop() if chains else cfg.sampling.chain


def _engine_tokenizer(g):
    """The engine's tokenizer of the GGUF (its vocabulary completes the `tokenizer` receipt facts;
    the engine backend reuses it), or None when the engine does not support this one."""
    from engine.tokenizer import Tokenizer, TokenizerError

    try:
        return Tokenizer.from_gguf(g)
    except (TokenizerError, ValueError):
        return None


def _special_texts(g) -> tuple[str, str]:
    """BOS/EOS token strings for chat templates (llama-cpp-python passes the vocab's texts)."""
    toks = g.get("tokenizer.ggml.tokens")

    def text(key):
        i = g.get(key)
        ok = toks is not None and i is not None and 0 <= int(i) < len(toks)
        if not ok:
            return ""
        return toks.raw()[int(i)].decode("utf-8", errors="replace") if hasattr(toks, "raw") else toks[int(i)]  # not all 262k

    return text("tokenizer.ggml.bos_token_id"), text("tokenizer.ggml.eos_token_id")


# --- step 2: the backends of one model ---------------------------------------------------------
THREE_WAY = ("engine", "llamacpp", "gemmacpp")


def _third(cfg: RunConfig) -> str:
    if cfg.third:
        if cfg.third in (cfg.engine, cfg.reference):
            raise InputError(f"--third {cfg.third} is already the engine or the reference side")
        return cfg.third
    if cfg.engine not in THREE_WAY or cfg.reference not in THREE_WAY or cfg.engine == cfg.reference:
        raise InputError(f"--three-way without --third compares {', '.join(THREE_WAY)}: --engine and --reference must be two of them")
    return next(b for b in THREE_WAY if b not in (cfg.engine, cfg.reference))


class StartedReference:
    """A model's reference backend, started (a child loads meanwhile) before its Backends exist —
    the next model's reference loads while this model's prompts run. Holds what starting it gave:
    the backend, or why it cannot run here (unavailable), or the failure the first prompt reports."""

    def __init__(self, cfg: RunConfig, plan: ModelPlan, settings: BackendSettings):
        self.ref: Backend | None = None
        self.unavailable: str | None = None
        self.failure: BackendError | None = None
        try:
            self.ref = make_backend(cfg.reference, plan.path, settings)
        except BackendUnavailable as e:
            self.unavailable = str(e)
        except BackendError as e:
            self.failure = e

    def close(self) -> None:
        ref, self.ref = self.ref, None
        _close_quietly(ref)


class Backends:
    """The engine side, the reference and (with --three-way) the third for one model. The
    reference starts first (a child loads while the engine does), unless it was started earlier
    (`started`); a reference that failed is restarted on the next request; `close()` (or `with`)
    closes every backend exactly once."""

    def __init__(self, cfg: RunConfig, plan: ModelPlan, progress: Progress, started: StartedReference | None = None):
        self.cfg, self.plan = cfg, plan
        self.settings = cfg.settings(progress)
        self.settings.gguf, self.settings.tokenizer = plan.gguf, plan.engine_tokenizer  # opened once (resolve)
        self.ref: Backend | None = None
        self.eng: Backend | None = None
        self.third: Backend | None = None
        self.third_error: str | None = None
        self.unavailable: str | None = None  # why the reference cannot run here
        self.failure: BackendError | None = None  # a timeout/crash while starting: the first prompt reports it
        self.first_load = True
        try:
            if started is not None:
                self.ref, self.unavailable, self.failure = started.ref, started.unavailable, started.failure
                started.ref = None  # ours to close now
            else:
                self._start_reference()
            try:
                with signals.deadline(cfg.timeout, "load"):  # the engine side loads under the backends' deadline
                    self.eng = make_backend(cfg.engine, plan.path, self.settings)
                    self.eng.wait_loaded()
            except BackendTimeout:
                raise
            except BackendUnavailable as e:  # the side under test cannot run here: exit 3
                raise BackendUnavailable(f"--engine {cfg.engine}: {e}") from None
            except BackendError as e:
                raise InputError(f"--engine {cfg.engine}: {e}") from None
            if cfg.three_way:
                try:
                    self.third = make_backend(_third(cfg), plan.path, self.settings)
                except BackendError as e:
                    self.third_error = f"{_third(cfg)}: {e}"
        except BaseException:
            self.close()
            raise

    def _start_reference(self) -> None:
        s = StartedReference(self.cfg, self.plan, self.settings)
        self.ref, self.unavailable, self.failure = s.ref, s.unavailable, s.failure

    def reference(self) -> Backend:
        """The reference, ready (restarted after a failure); raises what stops it."""
        if self.failure is not None:
            e, self.failure = self.failure, None
            raise e
        if self.ref is None and self.unavailable is None:
            self._start_reference()
            if self.failure is not None:
                return self.reference()
        if self.ref is None:
            raise BackendUnavailable(self.unavailable)
        return self.ref

    def recover(self) -> None:
        """After a timeout or crash: close the reference (the next prompt starts a fresh one) and
        restart an engine side that runs apart, since either may be the one that died."""
        ref, self.ref = self.ref, None
        _close_quietly(ref)
        if self.eng is not None and self.eng.capabilities.concurrent:
            eng, self.eng = self.eng, None
            _close_quietly(eng)
            self.eng = make_backend(self.cfg.engine, self.plan.path, self.settings)
            self.eng.wait_loaded()

    def close(self) -> None:
        for name in ("ref", "eng", "third"):
            b = getattr(self, name)
            setattr(self, name, None)
            _close_quietly(b)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _close_quietly(b: Backend | None) -> None:
    if b is not None:
        try:
            b.close()
        except Exception:  # a backend that fails to close must not hide the error being reported
            pass


# --- step 3: one prompt, one Comparison ----------------------------------------------------------
@dataclass
class Comparison:
    """Everything known about one (model, prompt) comparison; the receipt is built from it."""

    prompt: Prompt
    text: str = ""
    template_kind: str | None = None  # model | fallback (chat prompts), None for plain text
    ids: list[int] = field(default_factory=list)
    tokenization: dict = field(default_factory=lambda: _tokenization([], None, "not reached"))
    parity: dict = field(default_factory=lambda: _empty_parity("ok"))
    rows: list[dict] = field(default_factory=list)  # per-position metrics
    timing: dict = field(default_factory=dict)
    teacher_forced_ids: list[int] = field(default_factory=list)  # the sequence the teacher-forced logits cover
    teacher_forced: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (reference, engine) blocks
    three_way: dict | None = None
    diagnostics: dict | None = None
    reference_provenance: dict | None = None
    stage: str = "start reference"
    exit_code: int = EXIT_OK


def render(c: Comparison, plan: ModelPlan) -> None:
    c.text = render_prompt(c.prompt, plan.chat_template, plan.bos_text, plan.eos_text)
    c.template_kind = ("model" if plan.chat_template else "fallback") if c.prompt.is_chat else None


def tokenize(c: Comparison, eng: Backend, ref: Backend, n_ctx: int, steps: int) -> None:
    """The reference's ids are the ones run; the engine's tokenizer is compared with them."""
    special = c.prompt.is_chat
    c.ids = ref.tokenize(c.text, add_bos=True, parse_special=special)
    if not c.ids:
        raise InputError(f"prompt {c.prompt.id!r} is empty after tokenization")
    if len(c.ids) + steps > n_ctx:
        raise InputError(f"prompt {c.prompt.id!r}: {len(c.ids)} tokens + {steps} steps exceed --n-ctx {n_ctx}")
    if eng.capabilities.tokenize:
        c.tokenization = _tokenization(c.ids, eng.tokenize(c.text, add_bos=True, parse_special=special), None)
    else:
        c.tokenization = _tokenization(c.ids, None, f"{eng.name} has no tokenizer for this model's vocabulary")


def compare_passes(c: Comparison, eng: Backend, ref: Backend, steps: int, sampling=None) -> None:
    """Both comparisons for one prompt. The reference prefills the prompt (every position's
    logits) and runs `steps` free steps; its step logits are its teacher-forced logits over its
    own continuation. The engine does the same (at the same time when the reference runs apart),
    then is teacher-forced through the reference's continuation. Timings of the two overlap."""
    ids = c.ids
    t = time.perf_counter()
    ref.start_compare_pass(ids, steps, sampling=sampling)
    ep = eng.compare_pass(ids, steps, sampling=sampling)
    t_eng = time.perf_counter() - t
    rp = ref.finish_compare_pass()
    t_ref = time.perf_counter() - t - (0.0 if ref.capabilities.concurrent else t_eng)
    t = time.perf_counter()
    forced = eng.forced_suffix(ids, rp.tokens, free=ep)
    t_eng += time.perf_counter() - t
    # a reference may report logits only from some prompt position on (gemma.cpp under prefix_end:
    # positions inside the prefix see later tokens, and it does not expose them)
    off = len(ids) - len(rp.prompt_logits)
    c.teacher_forced = [(rp.prompt_logits, ep.prompt_logits[off:])]
    if forced is not None:
        c.teacher_forced.append((rp.step_logits[1 : len(rp.tokens)], forced))
    c.teacher_forced_ids = list(ids) + list(rp.tokens[:-1]) if steps > 1 else list(ids)
    tf = compare.teacher_forced_parts(c.teacher_forced)
    p = c.parity
    p.update(tf.summary())
    c.rows = tf.rows()
    if off:
        p["cosine_min_position"] += off
        for r in c.rows:
            r["position"] += off
    p["reference_quirks"] = _quirks(rp, len(ids), getattr(eng, "mode", None))  # mode: the engine backend's arithmetic
    _free_running(p, rp, ep, steps)
    c.timing.update({
        "reference_logits_s": rp.seconds.get("prefill_s"), "engine_logits_s": ep.seconds.get("prefill_s"),
        "reference_generate_s": rp.seconds.get("generate_s"), "engine_generate_s": ep.seconds.get("generate_s"),
        "reference_pass_s": t_ref, "engine_pass_s": t_eng,
    })  # fmt: skip
    if steps > 1:
        c.timing["reference_decode_tok_s"] = (steps - 1) / max(rp.seconds["generate_s"], 1e-9)
        c.timing["engine_decode_tok_s"] = (steps - 1) / max(ep.seconds["generate_s"], 1e-9)


def _quirks(rp: ComparePass, n_prompt: int, engine_mode: str | None = None) -> list[dict]:
    out = []
    if rp.extra.get("stale_scores_from") is not None and engine_mode != "bf16":
        # gemma.cpp's non-flash attention (Highway targets with a native bf16 dot) normalises a
        # sliding-window layer's softmax over stale scores below the window: from that position on its
        # logits are not the model's; --mode bf16 reproduces them, any other mode cannot
        w = rp.extra["stale_scores_from"]
        out.append({
            "code": "reference_stale_attention_scores",
            "message": f"the reference's logits from position {w} on are computed from stale attention scores: gemma.cpp built "
                       f"for {rp.extra.get('simd_target')} normalises each sliding-window layer's softmax over leftover scores "
                       f"below the window's start (docs/backends.md); compare with --mode bf16, which reproduces it",
        })  # fmt: skip
    if not rp.extra.get("position_shift"):
        return out
    # gemma.cpp with prefix_end == prompt length runs the last prompt token again at position P:
    # its step s predicts after prompt + [last token] + continuation[:s]
    return out + [{
        "code": "reference_reran_last_prompt_token",
        "message": f"the reference started decoding at position {rp.extra['pos'][0]}, not {n_prompt}: with prefix_end == "
                   f"prompt length gemma.cpp runs the last prompt token again, so its continuation is predicted from "
                   f"prompt + [last token]; the engine implements the intended semantics (docs/backends.md)",
    }]  # fmt: skip


def _free_running(p: dict, rp: ComparePass, ep: ComparePass, steps: int) -> None:
    """First divergence, exact-match rate and, at the divergence, each token's rank and logprob in
    both backends (for a sampled run: how far the shared uniform draw fell from the edge)."""
    div = compare.first_divergence(rp.tokens, ep.tokens)
    p["first_divergence_step"] = div
    p["exact_match_rate"] = compare.exact_match_rate(rp.tokens, ep.tokens, steps)
    p["steps_compared"] = steps
    p["reference_tokens"], p["engine_tokens"] = rp.tokens, ep.tokens
    if div is None or div >= min(len(rp.tokens), len(ep.tokens)):
        return
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


def localise(c: Comparison, eng: Backend, ref: Backend, threshold: float) -> dict | None:
    """At the first teacher-forced position whose top-1 differs (else the lowest-cosine one),
    compare every layer's attention output, post-attention residual and layer output of the two
    sides; name the first whose NMSE exceeds the threshold. None unless both sides can capture."""
    if not (eng.capabilities.capture and ref.capabilities.capture):
        return None
    pos = next((r["position"] for r in c.rows if not r["top1_match"]), c.parity["cosine_min_position"])
    ids = c.teacher_forced_ids[: pos + 1]
    out = compare.localise(eng.capture_rows(ids, pos), ref.capture_rows(ids, pos), threshold)
    out["position"] = int(pos)
    return out


def three_way(c: Comparison, cfg: RunConfig, third: Backend | None, third_error: str | None) -> dict:
    """The third backend over the same teacher-forced sequence and its own greedy run;
    compare.three_way names the odd one out wherever the three disagree."""
    names = [cfg.engine, cfg.reference, _third(cfg)]
    if third is None:
        return {"backends": names, "status": "unavailable", "reason": third_error, "pairs": {}, "disagreements": [],
                "odd_one_out_counts": {}, "first_divergence": None, "farthest": None}  # fmt: skip
    if cfg.prefix_end:
        raise BackendError("--three-way needs causal attention (prefix_end 0)")
    tf_ids = c.teacher_forced_ids
    ref_tf = np.concatenate([r for r, _ in c.teacher_forced])
    eng_tf = np.concatenate([e for _, e in c.teacher_forced])
    third_tf = third.logits(tf_ids)[len(tf_ids) - len(ref_tf) :]
    if third_tf.shape != ref_tf.shape:
        raise BackendError(f"{names[2]} returned logits of shape {third_tf.shape}, the reference {ref_tf.shape}")
    third_tokens = third.generate(c.ids, cfg.steps).tokens
    out = compare.three_way(names, [eng_tf, ref_tf, third_tf], [c.parity["engine_tokens"], c.parity["reference_tokens"], third_tokens],
                            first_position=len(tf_ids) - len(ref_tf))  # fmt: skip
    out["status"], out["reason"] = "ok", None
    return out


def detokenize(c: Comparison, eng: Backend, ref: Backend) -> None:
    side = ref if ref.capabilities.tokenize else eng if eng.capabilities.tokenize else None
    if side is not None:
        c.parity["reference_text"] = side.detokenize(c.parity["reference_tokens"])
        c.parity["engine_text"] = side.detokenize(c.parity["engine_tokens"])


def run_prompt(c: Comparison, cfg: RunConfig, plan: ModelPlan, b: Backends) -> None:
    """The per-prompt steps; a backend failure becomes the comparison's status and diagnostics."""
    t0 = time.perf_counter()
    c.timing = {"engine_load_s": b.eng.load_s, "reference_load_s": None}
    try:
        c.stage = "render"
        with signals.deadline(cfg.timeout, "render"):  # the engine-side steps: the backends' deadline
            render(c, plan)
        ref = b.reference()
        c.stage = "load"
        ref.wait_loaded()
        if b.first_load:
            c.timing["reference_load_s"] = ref.load_s
            b.first_load = False
        c.reference_provenance = ref.provenance()
        c.stage = "tokenize"
        with signals.deadline(cfg.timeout, "tokenize"):
            tokenize(c, b.eng, ref, cfg.n_ctx, cfg.steps)
        c.stage = "compare"
        compare_passes(c, b.eng, ref, cfg.steps, cfg.sampling)
        failed = thresholds.evaluate(plan.thresholds, c.parity, c.tokenization, c.rows)
        if cfg.localise == "always" or (cfg.localise == "auto" and failed):
            c.stage = "localise"
            c.parity["localisation"] = localise(c, b.eng, ref, cfg.localise_threshold)
        if cfg.three_way:
            c.stage = "three-way"
            c.three_way = three_way(c, cfg, b.third, b.third_error)
        c.stage = "detokenize"
        detokenize(c, b.eng, ref)
    except BackendUnavailable as e:
        c.parity = _empty_parity("engine_only")
        c.tokenization = _tokenization([], None, f"reference unavailable: {e}")
        c.exit_code = EXIT_NO_REFERENCE if cfg.require_reference else EXIT_OK
    except (BackendTimeout, BackendCrashed) as e:
        status = "timeout" if isinstance(e, BackendTimeout) else "crashed"
        c.parity = _empty_parity(status)
        c.diagnostics = {"stage": e.stage, "error": str(e), "stderr_tail": e.stderr_tail, "returncode": getattr(e, "returncode", None)}
        b.recover()
    except BackendError as e:
        c.parity = _empty_parity("error")
        c.diagnostics = {"stage": c.stage, "error": str(e), "stderr_tail": b.ref.stderr_tail() if b.ref else [], "returncode": None}
    c.timing["total_s"] = time.perf_counter() - t0
    for k in ("engine_logits_s", "reference_logits_s", "engine_generate_s", "reference_generate_s",
              "engine_decode_tok_s", "reference_decode_tok_s", "engine_pass_s", "reference_pass_s"):  # fmt: skip
        c.timing.setdefault(k, None)


# --- step 4: receipts ----------------------------------------------------------------------------
def receipt(cfg: RunConfig, run_id: str, plan: ModelPlan, c: Comparison, engine_provenance: dict, tokenizer: dict, env: dict) -> dict:
    """The parity receipt of one comparison (schemas/receipt.schema.json, docs/receipts.md); the
    verdict is the thresholds' (crossval/thresholds.py) and nothing else."""
    p, thr = c.parity, plan.thresholds
    if p["status"] in ("ok", "divergence"):
        failures = thresholds.evaluate(thr, p, c.tokenization, c.rows) + [q["message"] for q in p.get("reference_quirks") or []]
        p["status"] = "ok" if not failures else "divergence"
    elif p["status"] in ("timeout", "crashed", "error"):
        failures = [f"{p['status']}: {c.diagnostics['error']}" if c.diagnostics else p["status"]]
    else:
        failures = []
    prompt = c.prompt
    r = {
        **receipts.header("parity", run_id),
        "model": plan.section,
        "tokenizer": {**tokenizer, "parse_special": prompt.is_chat},
        "prompt": {
            "set": cfg.prompt_set, "id": prompt.id, "kind": prompt.kind, "text": c.text,
            "messages": list(prompt.messages) if prompt.is_chat else None,
            "blake3": provenance.blake3_text(prompt.text if not prompt.is_chat else _messages_text(prompt)),
            "formatted_blake3": provenance.blake3_text(c.text), "chat_template": c.template_kind, "n_tokens": len(c.ids),
        },  # fmt: skip
        "config": {
            "steps": cfg.steps, "threads": cfg.threads, "seed": cfg.seed,
            "sampling": {"method": "greedy", "temperature": None, "top_k": None, "top_p": None, "min_p": None,
                         "typical_p": None, "seed": None, "chain": None}
            if cfg.sampling is None else {"method": "sampled", **cfg.sampling.to_dict()},
            "n_ctx": cfg.n_ctx, "mode": cfg.mode, "kv_type": cfg.kv_type, "deterministic": cfg.deterministic,
            "timeout_s": cfg.timeout, "perturbation": {"layer": cfg.perturb[0], "scale": cfg.perturb[1]} if cfg.perturb else None,
            "prefix_end": cfg.prefix_end, "three_way": cfg.three_way,
        },  # fmt: skip
        "backends": {"engine": engine_provenance, "reference": c.reference_provenance},
        "tokenization": c.tokenization,
        "parity": p,
        "per_position": c.rows if cfg.per_position else [],
        "thresholds": thr.to_dict(),
        "verdict": {"passed": not failures and p["status"] in ("ok", "engine_only"), "failures": failures},
        "environment": env,
        "timing": c.timing,
        "three_way": c.three_way,
    }
    if c.diagnostics:
        r["diagnostics"] = c.diagnostics
    return r


def _summary_row(fname: str, plan: ModelPlan, c: Comparison, rec: dict) -> dict:
    p, tw = rec["parity"], c.three_way
    return {
        "file": fname, "model": plan.label, "prompt": c.prompt.id, "status": p["status"], "passed": rec["verdict"]["passed"],
        "tokens_match": c.tokenization["match"], "cosine_similarity": p["cosine_similarity"],
        "exact_match_rate": p["exact_match_rate"], "first_divergence_step": p["first_divergence_step"],
        "kld_mean": p["kld_mean"], "failures": rec["verdict"]["failures"],
        "localised": (p.get("localisation") or {}).get("first"),
        "odd_one_out": tw and (tw["first_divergence"] or {}).get("odd_one_out"),
    }  # fmt: skip


def _exit_code(c: Comparison, rec: dict) -> int:
    status = rec["parity"]["status"]
    if status in ("timeout", "crashed"):
        return EXIT_CRASH
    if status == "engine_only":
        return c.exit_code
    return EXIT_OK if rec["verdict"]["passed"] else EXIT_PARITY


# --- the pipeline ------------------------------------------------------------------------------
def run(cfg: RunConfig, progress: Progress | None = None) -> RunResult:
    """Run every (model, prompt); write receipts + summary under cfg.out_dir/<run_id>/."""
    progress = progress or (lambda event, info: None)
    t_run = time.perf_counter()
    try:
        plans = resolve(cfg)
        run_id = receipts.new_run_id()
        out = Path(cfg.out_dir) / run_id
        rows: list[dict] = []
        codes: list[int] = []
        interrupted = None
        try:
            receipts.ensure_dir(out)
            env = functools.cache(lambda: provenance.environment_section(cfg.threads))  # asked by the first receipt
            _run_plans(cfg, plans, run_id, out, env, rows, codes, progress)
            exit_code = worst(codes)
        except signals.Interrupted as e:  # backends closed on the way out; finished receipts stay
            if not out.is_dir():
                raise  # interrupted before the run had a directory: nothing to summarise
            interrupted = {"signal": signal.Signals(e.signum).name, "receipts_written": len(rows)}
            exit_code = e.exit_code
    finally:
        provenance.cancel_cpu_probe()  # not asked for (no receipt was written): not left running
    sp = receipts.write(out / "summary.json", summary(cfg, run_id, exit_code, rows, time.perf_counter() - t_run, interrupted))
    return RunResult(run_id, out, exit_code, rows, sp)


def _run_plans(cfg: RunConfig, plans: list[ModelPlan], run_id: str, out: Path, env: Callable[[], dict], rows: list[dict],
               codes: list[int], progress: Progress) -> None:  # fmt: skip
    """Every (model, prompt) comparison; each receipt is written as soon as it is finished.

    What waits on a child process is started early, so that it happens while other work runs:
    py-cpuinfo's probe (the receipts' environment) while the first reference loads, and the next
    model's reference once this model's first comparison is done (not sooner: the two loads would
    share the cores with each other instead of with the comparisons)."""
    stop = False
    started: StartedReference | None = None
    try:
        for i, plan in enumerate(plans):
            progress("model", {"model": plan.name, "prompts": len(cfg.prompts)})
            with Backends(cfg, plan, progress, started) as b:
                started = None
                provenance.start_cpu_probe()

                def start_next(i=i):
                    nonlocal started
                    if i + 1 < len(plans):
                        started = StartedReference(cfg, plans[i + 1], cfg.settings(progress))

                stop = _run_prompts(cfg, plan, b, run_id, out, env, rows, codes, progress, start_next)
            if stop:
                break
    finally:
        if started is not None:  # the run ended before that model: its reference is closed unused
            started.close()


def _run_prompts(cfg: RunConfig, plan: ModelPlan, b: Backends, run_id: str, out: Path, env: Callable[[], dict], rows: list[dict],
                 codes: list[int], progress: Progress, after_first: Callable[[], None]) -> bool:  # fmt: skip
    """One model's prompts; True when a crash or timeout ends the run (without --keep-going).
    after_first() is called once the first comparison is done."""
    for n, prompt in enumerate(cfg.prompts):
        c = Comparison(prompt)
        run_prompt(c, cfg, plan, b)
        rec = receipt(cfg, run_id, plan, c, b.eng.provenance(), plan.tokenizer, env())
        fname = f"{_safe(plan.label)}__{_safe(prompt.id)}.json"
        with signals.held():  # an interrupt waits until the receipt is written and counted
            receipts.write(out / fname, rec)
            if cfg.sign_key is not None:
                signing.write_signed(out / fname, rec, cfg.sign_key)
            codes.append(_exit_code(c, rec))
            rows.append(_summary_row(fname, plan, c, rec))
        progress("receipt", rows[-1])
        if rec["parity"]["status"] in ("timeout", "crashed") and not cfg.keep_going:
            return True  # without --keep-going a crash or timeout ends the run (its receipt is written)
        if n == 0:
            after_first()
    return False


def summary(cfg: RunConfig, run_id: str, exit_code: int, rows: list[dict], total_s: float, interrupted: dict | None = None) -> dict:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return {
        **receipts.header("run-summary", run_id),
        "exit_code": exit_code, "passed": exit_code == EXIT_OK, "counts": counts, "receipts": rows, "total_s": total_s,
        "interrupted": interrupted,
        "config": {"models": cfg.models, "prompt_set": cfg.prompt_set, "steps": cfg.steps, "threads": cfg.threads,
                   "seed": cfg.seed, "mode": cfg.mode, "kv_type": cfg.kv_type, "n_ctx": cfg.n_ctx,
                   "reference": cfg.reference, "engine": cfg.engine, "prefix_end": cfg.prefix_end,
                   "three_way": cfg.three_way, "timeout_s": cfg.timeout,
                   "sampling": None if cfg.sampling is None else cfg.sampling.to_dict()},
    }  # fmt: skip


# --- receipt sections ------------------------------------------------------------------------------
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


def _messages_text(p: Prompt) -> str:
    return json.dumps(list(p.messages), ensure_ascii=False, sort_keys=True)


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)[:80]
