"""The backend contract: every engine answers the same questions, so the comparison never knows
which one it is talking to (docs/backends.md).

A backend is a subclass of `Backend`. It is built from the model path and one `BackendSettings`
(`from_settings`), says what it can do in `capabilities`, and is closed exactly once (`close`, or
`with backend:`). The harness asks only what the capabilities promise; asking anything else
raises `Unsupported`.

    question                               method                    capability
    wait for a model loading elsewhere     wait_loaded()             —
    text → ids, ids → text                 tokenize / detokenize     tokenize
    every position's logits, fresh cache   logits(ids)               — (every backend)
    greedy continuation + its logits       generate(ids, steps)      — (every backend)
    one prefill serving both comparisons   compare_pass(...)         sampling (for sampled runs)
      … started now, collected later       start_/finish_compare_pass  concurrent (runs apart)
    logits along another continuation      forced_suffix(...)        — (every backend)
    per-layer rows, llama.cpp's names      capture_rows(...)         capture
    what produced the numbers              provenance()              —
    release processes, files, memory       close()                   —

Arrays are float32 (rows, n_vocab). Errors are the BackendError family below; each carries the
exit code the CLI ends with when it escapes a command (crossval/errors.py).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from crossval.errors import EXIT_CRASH, EXIT_NO_REFERENCE, CrossvalError


# --- errors ------------------------------------------------------------------------------------
class BackendError(CrossvalError, RuntimeError):
    """A backend failed in a way that ends its comparison (receipt status 'error')."""

    exit_code = EXIT_CRASH


class BackendUnavailable(BackendError):
    """The backend cannot run here at all (e.g. llama-cpp-python not importable, a model gemma.cpp
    cannot convert): the receipt is 'engine_only'; exit 3 with --require-reference."""

    exit_code = EXIT_NO_REFERENCE


class Unsupported(BackendError):
    """Asked for something its capabilities do not promise."""

    def __init__(self, backend: str, what: str):
        super().__init__(f"{backend} does not support {what}")


class BackendTimeout(BackendError):
    def __init__(self, stage: str, timeout: float, stderr_tail: list[str]):
        super().__init__(f"backend timed out after {timeout:g} s during {stage}")
        self.stage, self.timeout, self.stderr_tail = stage, timeout, stderr_tail


class BackendCrashed(BackendError):
    def __init__(self, stage: str, detail: str, returncode: int | None, stderr_tail: list[str]):
        super().__init__(f"backend crashed during {stage}: {detail}")
        self.stage, self.returncode, self.stderr_tail = stage, returncode, stderr_tail


# --- what a backend is built from and what it can do --------------------------------------------
@dataclass
class BackendSettings:
    """Everything any backend may need, one object for all of them (each reads what it uses)."""

    n_ctx: int = 2048
    threads: int = 1
    kv_type: str = "f16"
    timeout: float = 300.0  # seconds per request to a backend running apart
    mode: str = "float"  # our engine's arithmetic (engine.generate.MODES)
    llama_lib: str | None = None  # another libllama build for the llamacpp backend
    prefix_end: int = 0  # prefix-LM attention over the prompt (engine, gemmacpp); 0 = causal
    perturb: tuple[int, float] | None = None  # test hook: (layer, scale) of the engine's FFN output
    gemmacpp_threads: int = 2  # gemma.cpp's results depend on it: pinned, recorded
    gemmacpp_patched: bool = True  # False: upstream gemma.cpp (the kit's --no-patches build)
    progress: Callable[[str], None] | None = None  # one-line progress (e.g. a kit building)
    # the model as the harness already opened it (crossval/run.py resolve): a backend that reads the
    # GGUF itself reuses these instead of mapping and parsing it, and building its tokenizer, again
    gguf: object | None = None  # engine.gguf_model.GGUFFile of the model path
    tokenizer: object | None = None  # engine.tokenizer.Tokenizer built from it (None: not built)


@dataclass(frozen=True)
class Capabilities:
    tokenize: bool = True  # tokenize / detokenize with the backend's own vocabulary code
    logits: bool = True  # teacher-forced logits (every backend: the comparison needs them)
    generate: bool = True  # greedy generation (every backend)
    sampling: bool = False  # compare_pass(sampling=...) with its sampler chain (Backend.sampling_chain) and seed
    capture: bool = False  # capture_rows: per-layer outputs under llama.cpp's tensor names
    concurrent: bool = False  # runs apart (a child process): start_compare_pass returns at once

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class GenerateResult:
    tokens: list[int]
    logits: np.ndarray | None = None  # (steps, n_vocab): the logits each step's token was chosen from
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


@dataclass
class ComparePass:
    """One prefill serving both comparisons (see Backend.compare_pass)."""

    prompt_logits: np.ndarray  # (n_prompt, n_vocab) teacher-forced over the prompt (fewer rows: see extra)
    tokens: list[int]  # free-running continuation
    step_logits: np.ndarray | None  # (len(tokens), n_vocab): what each continuation token was chosen from
    forced_logits: np.ndarray | None  # (len(forced), n_vocab): logits after each forced token
    seconds: dict = field(default_factory=dict)  # prefill_s, generate_s (, forced_s)
    extra: dict = field(default_factory=dict)  # e.g. sampling_trace, position_shift


# The per-layer stages localisation compares, under llama.cpp's graph tensor names: attention
# output, the residual after attention (llama.cpp's gemma graphs call it sa_out), layer output.
LAYER_STAGES = ("kqv_out", "ffn_inp", "l_out")


class Backend:
    """Base of every backend. Subclasses set `name` and `capabilities` and implement
    `from_settings`, `logits`, `generate` and `provenance`; everything else has a default built on
    those, which a backend overrides when it has a cheaper or more faithful way."""

    name: str = "backend"
    capabilities: Capabilities = Capabilities()
    # the seeded chain compare_pass(sampling=...) draws with (engine.sampling.CHAINS); None: the one
    # SamplingParams.chain names (the engine, which a run sets to its other side's: crossval/run.py)
    sampling_chain: str | None = "llama.cpp"
    load_s: float | None = None  # seconds the model took to load (None until known)

    @classmethod
    def from_settings(cls, model_path: Path, s: BackendSettings) -> "Backend":
        raise NotImplementedError

    # --- lifecycle ---------------------------------------------------------------------------------
    def wait_loaded(self) -> None:
        """Block until the model is loaded (a backend running apart loads while the harness works)."""

    def close(self) -> None:
        """Release everything (child processes, temporary files, memory). Safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def stderr_tail(self) -> list[str]:
        """The last lines a backend running apart wrote to stderr (diagnostics)."""
        return []

    # --- questions -----------------------------------------------------------------------------------
    def tokenize(self, text: str, add_bos: bool = True, parse_special: bool = False) -> list[int]:
        raise Unsupported(self.name, "tokenize")

    def detokenize(self, ids: list[int]) -> str:
        raise Unsupported(self.name, "detokenize")

    def logits(self, ids: list[int]) -> np.ndarray:
        """Teacher-forced logits of every position of ids from an empty cache: (len(ids), n_vocab)."""
        raise NotImplementedError

    def generate(self, ids: list[int], steps: int) -> GenerateResult:
        """`steps` greedy tokens after ids, with the logits each was chosen from."""
        raise NotImplementedError

    def compare_pass(self, ids: list[int], steps: int, forced: list[int] | None = None, sampling=None) -> ComparePass:
        """Every prompt position's logits, then — if forced — the logits after each forced token,
        then `steps` free-running steps from the end of the prompt: greedy, or (capability
        `sampling`) the backend's seeded sampler chain for engine.sampling.SamplingParams.
        Default: logits() over the prompt (and prompt + forced), then generate()."""
        if sampling is not None:
            raise Unsupported(self.name, "sampled compare passes")
        t = time.perf_counter()
        prompt = self.logits(ids)
        sec = {"prefill_s": time.perf_counter() - t}
        forced_logits = None
        if forced:
            t = time.perf_counter()
            forced_logits = self.logits(list(ids) + list(forced))[len(ids) :]
            sec["forced_s"] = time.perf_counter() - t
        t = time.perf_counter()
        g = self.generate(ids, steps) if steps else GenerateResult([], None)
        sec["generate_s"] = time.perf_counter() - t
        return ComparePass(prompt, list(g.tokens), g.logits, forced_logits, sec, dict(g.extra))

    def start_compare_pass(self, ids: list[int], steps: int, forced: list[int] | None = None, sampling=None) -> None:
        """Begin a compare_pass; finish_compare_pass returns it. A backend that runs apart
        (capability `concurrent`) works meanwhile; the default computes when finished."""
        self._pending_pass = (list(ids), steps, forced, sampling)

    def finish_compare_pass(self) -> ComparePass:
        ids, steps, forced, sampling = self._pending_pass
        self._pending_pass = None
        return self.compare_pass(ids, steps, forced, sampling)

    def forced_suffix(self, ids: list[int], continuation: list[int], free: ComparePass | None = None) -> np.ndarray | None:
        """Logits after each of continuation[:-1] following the prompt ids — teacher-forced along
        someone else's continuation: (len(continuation) - 1, n_vocab), None when that is empty.
        `free` is this backend's own compare_pass over ids: where its tokens are the continuation,
        its step logits are these rows, computed the way the free run computed them (one token at a
        time), so they are reused instead of a teacher-forced batch."""
        if len(continuation) <= 1:
            return None
        n = len(continuation) - 1
        if (free is not None and free.step_logits is not None and len(free.step_logits) > n
                and list(free.tokens[:n]) == list(continuation[:n])):  # fmt: skip
            return free.step_logits[1 : n + 1]
        return self.logits(list(ids) + list(continuation[:-1]))[len(ids) :]

    def capture_rows(self, ids: list[int], position: int, stages: tuple[str, ...] = LAYER_STAGES) -> dict[str, np.ndarray]:
        """Each layer's output of each stage at `position` of a teacher-forced pass over ids,
        keyed "<stage>-<layer>" as llama.cpp names its graph tensors (capability `capture`)."""
        raise Unsupported(self.name, "per-layer capture")

    def provenance(self) -> dict:
        """The receipt's backends.<side> section: at least name and version (schemas/)."""
        raise NotImplementedError

    def describe(self, **fields) -> dict:
        """provenance() helper: the given fields plus this backend's capabilities."""
        return {**fields, "capabilities": self.capabilities.to_dict()}


def greedy_compare_pass(b, ids: list[int], steps: int, forced: list[int] | None, choose=None, alloc=None) -> ComparePass:
    """compare_pass for something with reset / prefill_all / decode_step / truncate (a llama.cpp
    context, the engine): one prefill, the forced tokens decoded and rolled back, then `steps`
    steps. choose(logits) → the token picked each step (default: argmax). alloc(name, shape) → the
    float32 array the "forced" / "steps" rows are written into, one row as it comes (default
    np.empty; a child passes files its parent maps)."""
    choose = choose or (lambda row: int(np.argmax(row)))
    alloc = alloc or (lambda name, shape: np.empty(shape, dtype=np.float32))
    t = time.perf_counter()
    b.reset()
    prompt = b.prefill_all(ids)
    sec = {"prefill_s": time.perf_counter() - t}
    n0 = len(ids)
    forced_logits = None
    if forced:
        t = time.perf_counter()
        forced_logits = alloc("forced", (len(forced), prompt.shape[-1]))
        for i, tok in enumerate(forced):
            forced_logits[i] = b.decode_step(tok)
        sec["forced_s"] = time.perf_counter() - t
        b.truncate(n0)
    t = time.perf_counter()
    last, toks = prompt[-1], []
    logs = alloc("steps", (steps, prompt.shape[-1])) if steps else None
    for i in range(steps):
        logs[i] = last
        tok = choose(last)
        toks.append(tok)
        if i + 1 < steps:
            last = b.decode_step(tok)
    sec["generate_s"] = time.perf_counter() - t
    return ComparePass(prompt, toks, logs, forced_logits, sec)
