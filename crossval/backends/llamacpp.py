"""The llama.cpp reference, through llama-cpp-python's low-level C API (ctypes).

One llama_context with every position's logits requested in a single batch (teacher forcing),
greedy generation token by token, tokenize/detokenize with llama.cpp's own vocab code, and the
provenance a receipt needs (version, library sha256, system_info). The KV cache type is
selectable: "f16" is llama.cpp's default, "f32" is what exactness checks use.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from pathlib import Path

import numpy as np

GGML_TYPE = {"f32": 0, "f16": 1}


class LlamaCppError(RuntimeError):
    pass


class LlamaCppUnavailable(LlamaCppError):
    """llama-cpp-python cannot serve as the reference here: not importable, or built with kernels
    we refuse (see `refused_build`)."""


# How to rebuild the pinned llama-cpp-python without AMX (the README's install command does this).
REBUILD = ('CMAKE_ARGS="-DCMAKE_C_FLAGS=-mno-amx-int8 -DCMAKE_CXX_FLAGS=-mno-amx-int8" '
           "pip install --no-cache-dir --force-reinstall --no-deps llama-cpp-python==0.3.36")


def refused_build(system_info: str) -> str | None:
    """Why a llama.cpp build cannot be the reference, or None. A build with AMX_INT8 = 1 sends its
    Q4_0/Q4_1/Q8_0/K-quant matmuls through ggml's AMX tile kernels (ggml-cpu/amx/mmq.cpp): another
    float order than the AVX-512 routes faithful mode follows, and on KVM guests of this kind they
    crash with SIGSEGV in ggml_backend_amx_mul_mat. `-march=native` enables AMX on every CPU that has
    it, so the install command turns it off explicitly."""
    if "AMX_INT8 = 1" in system_info:
        return f"llama-cpp-python was built with AMX kernels (AMX_INT8 = 1), which this harness does not use; rebuild it: {REBUILD}"
    return None


class GGMLTensor(ctypes.Structure):
    """struct ggml_tensor (ggml/include/ggml.h), enough of it to read a computed tensor."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * 64),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


def tensor_array(type_: int, ne, nb, host_bytes) -> np.ndarray | None:
    """An F32/F16 ggml tensor (ggml type, ne, nb) → float32 numpy in (ne[3], ne[2], ne[1], ne[0])
    order; host_bytes(span) returns a buffer over the span bytes the tensor occupies in host
    memory. None for another type."""
    dt = {0: np.float32, 1: np.float16}.get(type_)
    if dt is None:
        return None
    ne, nb = list(ne), list(nb)
    span = sum((n - 1) * b for n, b in zip(ne, nb)) + np.dtype(dt).itemsize
    base = np.frombuffer(host_bytes(span), dtype=np.uint8)
    arr = np.ndarray(shape=tuple(reversed(ne)), dtype=dt, buffer=base, strides=tuple(reversed(nb)))
    return arr.astype(np.float32)


def _read_tensor(t: GGMLTensor) -> np.ndarray | None:
    """Copy an F32/F16 tensor out of host memory → numpy in (ne[3], ne[2], ne[1], ne[0]) order."""
    if not t.data:
        return None
    return tensor_array(t.type, t.ne, t.nb, lambda span: (ctypes.c_char * span).from_address(t.data))


# struct llama_token_data { llama_token id; float logit; float p; } (llama.h): 12 bytes, no padding
TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


def token_data(logits: np.ndarray) -> np.ndarray:
    """The candidates a sampler chain reads for a logits vector: llama_token_data[n] with
    cell i = (i, logits[i], 0), as llama-cpp-python fills them, built in one numpy pass."""
    cells = np.zeros(len(logits), dtype=TOKEN_DATA)
    cells["id"] = np.arange(len(logits), dtype=np.int32)
    cells["logit"] = logits
    return cells


def sampler_chain(api, params):
    """The chain llama-cpp-python builds (llama.py _init_sampler): top-k → typical → top-p →
    min-p → temperature → dist(seed), from `api`'s llama_sampler_* functions (llama.cpp's through
    llama_cpp, or a fork's through cffi). Free it with llama_sampler_free."""
    chain = api.llama_sampler_chain_init(api.llama_sampler_chain_default_params())
    api.llama_sampler_chain_add(chain, api.llama_sampler_init_top_k(params.top_k))
    api.llama_sampler_chain_add(chain, api.llama_sampler_init_typical(params.typical_p, params.min_keep))
    api.llama_sampler_chain_add(chain, api.llama_sampler_init_top_p(params.top_p, params.min_keep))
    api.llama_sampler_chain_add(chain, api.llama_sampler_init_min_p(params.min_p, params.min_keep))
    api.llama_sampler_chain_add(chain, api.llama_sampler_init_temp(params.temperature))
    api.llama_sampler_chain_add(chain, api.llama_sampler_init_dist(params.seed))
    return chain


class GreedyDecoding:
    """Batched decoding, teacher-forced logits, greedy generation and graph capture over a
    llama.cpp-style context (ctx, n_past, n_vocab), shared by LlamaCppBackend and bitnet.cpp's
    BitnetCppModel. The class provides reset(), _decode(ids, all_logits) → (rows, n_vocab) float32
    (its checks, then _decode_batch), and (when built to capture) _cb, captured
    and _capture_filter; `error` is the exception it raises, `no_capture` the message when the
    model was built without capture."""

    error: type[Exception] = RuntimeError
    no_capture = "model was created without capture"
    # where the next every-position logits go: alloc(shape) → a float32 array (e.g. a file mapping
    # the parent reads, so the child writes them once); used once, then back to fresh arrays
    rows_out = None

    def _decode_batch(self, api, ids: list[int], all_logits: bool, row) -> np.ndarray:
        """One llama_decode of ids (sequence 0, positions n_past…) through `api`'s llama_batch_* /
        llama_decode → the logits of every position (all_logits) or of the last, each read by
        row(llama_get_logits_ith pointer) as (n_vocab,) float32."""
        n = len(ids)
        batch = api.llama_batch_init(n, 0, 1)
        try:
            for i, t in enumerate(ids):
                batch.token[i] = t
                batch.pos[i] = self.n_past + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 1 if (all_logits or i == n - 1) else 0
            batch.n_tokens = n
            rc = api.llama_decode(self.ctx, batch)
            if rc != 0:
                raise self.error(f"llama_decode failed with code {rc}")
        finally:
            api.llama_batch_free(batch)
        self.n_past += n
        rows = range(n) if all_logits else [n - 1]
        alloc, self.rows_out = (self.rows_out, None) if all_logits else (None, self.rows_out)
        out = (alloc or np.empty)((len(rows), self.n_vocab), dtype=np.float32)
        for j, i in enumerate(rows):
            out[j] = row(api.llama_get_logits_ith(self.ctx, i))
        return out

    def logits(self, ids: list[int]) -> np.ndarray:
        """Teacher-forced logits of every position, fresh cache: (n, n_vocab) float32."""
        self.reset()
        return self._decode([int(i) for i in ids], all_logits=True)

    def prefill_all(self, ids: list[int]) -> np.ndarray:
        return self._decode([int(i) for i in ids], all_logits=True)

    def prefill(self, ids: list[int]) -> np.ndarray:
        return self._decode([int(i) for i in ids], all_logits=False)[0]

    def decode_step(self, token: int) -> np.ndarray:
        return self._decode([int(token)], all_logits=True)[0]

    def generate(self, ids: list[int], steps: int, keep_logits: bool = False):
        """Greedy continuation (argmax) after a fresh prefill; → (tokens, per-step logits)."""
        self.reset()
        last = self.prefill(ids)
        toks, logs = [], []
        for i in range(steps):
            if keep_logits:
                logs.append(last)
            t = int(np.argmax(last))
            toks.append(t)
            if i + 1 < steps:
                last = self.decode_step(t)
        return toks, logs

    def capture_logits(self, ids: list[int], want) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Teacher-forced logits plus every graph tensor whose name satisfies want(name)
        (e.g. 'l_out-3', 'ffn_out-3', 'kqv_out-3', 'result_norm'). Needs capture=True."""
        if not hasattr(self, "_cb"):
            raise self.error(self.no_capture)
        self.captured = {}
        self._capture_filter = want
        try:
            out = self.logits(ids)
        finally:
            self._capture_filter = None
        return out, dict(self.captured)


def _lib():
    from crossval.isa import check_llama_cpp

    check_llama_cpp(os.environ.get("LLAMA_CPP_LIB_PATH"))  # built for a wider CPU: ForeignBuild (exit 3) before loading it
    try:
        import llama_cpp
    except Exception as e:  # ImportError, or OSError when the shared library fails to load
        raise LlamaCppUnavailable(f"llama-cpp-python is not importable: {e}") from None
    why = refused_build(llama_cpp.llama_print_system_info().decode(errors="replace"))
    if why:
        raise LlamaCppUnavailable(why)
    return llama_cpp


_LOG_CB = None


def _silence(llama_cpp) -> None:
    global _LOG_CB
    if _LOG_CB is None:
        _LOG_CB = llama_cpp.llama_log_callback(lambda level, text, user: None)
        llama_cpp.llama_log_set(_LOG_CB, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()


class LlamaCppBackend(GreedyDecoding):
    name = "llamacpp"
    error = LlamaCppError
    no_capture = "backend was created without capture=True"

    def __init__(self, model_path: str | os.PathLike, n_ctx: int = 2048, threads: int = 1, kv_type: str = "f16",
                 flash_attn: bool = False, vocab_only: bool = False, n_batch: int | None = None,
                 capture: bool = False):  # fmt: skip
        lc = self.lc = _lib()
        _silence(lc)
        if kv_type not in GGML_TYPE:
            raise ValueError(f"kv_type must be f16 or f32, not {kv_type!r}")
        self.model_path = str(model_path)
        if not Path(self.model_path).is_file():
            raise LlamaCppError(f"{self.model_path}: no such file")
        mp = lc.llama_model_default_params()
        mp.n_gpu_layers = 0
        mp.vocab_only = vocab_only
        self.model = lc.llama_model_load_from_file(self.model_path.encode(), mp)
        if not self.model:
            raise LlamaCppError(f"llama.cpp could not load {self.model_path}")
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        self.ctx = None
        self.n_ctx, self.threads, self.kv_type = n_ctx, threads, kv_type
        self.n_batch = n_batch or n_ctx  # at most this many tokens per llama_decode call
        if not vocab_only:
            cp = lc.llama_context_default_params()
            cp.n_ctx = n_ctx
            cp.n_batch = cp.n_ubatch = n_batch or n_ctx
            cp.n_seq_max = 1
            cp.n_threads = cp.n_threads_batch = threads
            cp.type_k = cp.type_v = GGML_TYPE[kv_type]
            cp.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
            cp.no_perf = True
            self.captured: dict[str, np.ndarray] = {}
            self._capture_filter = None
            if capture:
                # ggml's scheduler asks (ask=True) whether we want a tensor, then calls again when it
                # has been computed; returning True keeps the graph running
                def cb(tp, ask, _user):
                    t = ctypes.cast(tp, ctypes.POINTER(GGMLTensor)).contents
                    name = t.name.decode(errors="replace")
                    flt = self._capture_filter
                    if flt is None or not flt(name):
                        return not ask
                    if ask:
                        return True
                    arr = _read_tensor(t)
                    if arr is not None:
                        self.captured[name] = arr
                    return True

                self._cb = lc.ggml_backend_sched_eval_callback(cb)
                cp.cb_eval = self._cb
                cp.cb_eval_user_data = None
            self.ctx = lc.llama_init_from_model(self.model, cp)
            if not self.ctx:
                self.close()
                raise LlamaCppError(f"llama.cpp could not create a context for {self.model_path}")
        self.n_past = 0

    # --- tokenizer -----------------------------------------------------------------------------
    def tokenize(self, text: str, add_bos: bool = True, parse_special: bool = False) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 16
        buf = (self.lc.llama_token * cap)()
        n = self.lc.llama_tokenize(self.vocab, data, len(data), buf, cap, add_bos, parse_special)
        if n < 0:
            cap = -n
            buf = (self.lc.llama_token * cap)()
            n = self.lc.llama_tokenize(self.vocab, data, len(data), buf, cap, add_bos, parse_special)
        return list(buf[:n])

    def token_to_piece(self, token: int, special: bool = True) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = self.lc.llama_token_to_piece(self.vocab, token, buf, 256, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self.lc.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def detokenize(self, ids: list[int], remove_special: bool = False, unparse_special: bool = False) -> str:
        arr = (self.lc.llama_token * max(1, len(ids)))(*ids)
        cap = 16 * len(ids) + 16
        out = ctypes.create_string_buffer(cap)
        n = self.lc.llama_detokenize(self.vocab, arr, len(ids), out, cap, remove_special, unparse_special)
        if n < 0:
            cap = -n
            out = ctypes.create_string_buffer(cap)
            n = self.lc.llama_detokenize(self.vocab, arr, len(ids), out, cap, remove_special, unparse_special)
        return out.raw[:n].decode("utf-8", errors="replace")

    # --- evaluation ----------------------------------------------------------------------------
    def reset(self) -> None:
        self.lc.llama_memory_clear(self.lc.llama_get_memory(self.ctx), True)
        self.n_past = 0

    def _decode(self, ids: list[int], all_logits: bool) -> np.ndarray:
        if len(ids) > self.n_batch:  # llama_decode takes at most n_batch tokens: feed it in batches
            parts = [self._decode(ids[i : i + self.n_batch], all_logits) for i in range(0, len(ids), self.n_batch)]
            return np.concatenate(parts) if all_logits else parts[-1]
        lc, n = self.lc, len(ids)
        if self.n_past + n > self.n_ctx:
            raise LlamaCppError(f"context full: {self.n_past} + {n} > n_ctx {self.n_ctx}")
        return self._decode_batch(lc, ids, all_logits, lambda ptr: np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)))

    def truncate(self, n_past: int) -> None:
        """Drop cached positions ≥ n_past (llama_memory_seq_rm)."""
        self.lc.llama_memory_seq_rm(self.lc.llama_get_memory(self.ctx), 0, n_past, -1)
        self.n_past = n_past

    # --- sampling (llama.cpp's own chain) -------------------------------------------------------------
    def sampler_chain(self, params):
        """llama.cpp's sampler chain (sampler_chain above); free it with llama_sampler_free."""
        return sampler_chain(self.lc, params)

    def sample_logits(self, chain, logits: np.ndarray) -> int:
        """Apply a sampler chain to a logits vector (llama_sampler_apply on a token-data array)."""
        lc = self.lc
        cells = token_data(logits)
        data = (lc.llama_token_data * len(cells)).from_buffer(cells)  # the numpy cells themselves, no copy
        arr = lc.llama_token_data_array(data=data, size=len(cells), selected=-1, sorted=False)
        lc.llama_sampler_apply(chain, ctypes.byref(arr))
        tok = int(data[arr.selected].id)
        lc.llama_sampler_accept(chain, tok)
        return tok

    # --- provenance ----------------------------------------------------------------------------
    def provenance(self) -> dict:
        lc = self.lc
        libdir = Path(lc.__file__).parent / "lib"
        lib = libdir / "libllama.so"
        sha = hashlib.sha256(lib.read_bytes()).hexdigest() if lib.exists() else None
        return {
            "name": "llama.cpp",
            "version": f"llama-cpp-python {lc.__version__}",
            "library_sha256": sha,
            "system_info": lc.llama_print_system_info().decode(errors="replace").strip(),
            "kv_type": self.kv_type,
            "threads": self.threads,
        }

    def close(self) -> None:
        if getattr(self, "ctx", None):
            self.lc.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            self.lc.llama_model_free(self.model)
            self.model = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
