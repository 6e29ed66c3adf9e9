"""bitnet.cpp's libllama.so through the project's own cffi binding of its C API (ABI mode).

bitnet.cpp ships a llama.cpp fork whose C API is llama.cpp's of about mid-October 2024:
`llama_load_model_from_file`, `llama_new_context_with_model`, vocab functions that take the
model, `llama_kv_cache_*`, and a `llama_batch` ending in all_pos_0/all_pos_1/all_seq_id. No
released llama-cpp-python matches that ABI (the kit's README), so the declarations below are the
ones of the kit's `include/llama.h` and `ggml.h` this module needs (struct layouts exactly as
there; enums as int). Everything here runs inside the bitnetcpp child process
(crossval/backends/bitnetcpp.py), never in the harness itself.

`BitnetCppModel` is the in-child backend: tokenize/detokenize with the fork's vocab code,
teacher-forced logits of every position in one batch, decode steps, KV truncation, the fork's own
sampler chain, and graph tensors captured through its eval callback (cb_eval).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from crossval.backends.llamacpp import GreedyDecoding, sampler_chain, tensor_array, token_data

CDEF = """
typedef int32_t llama_token;
typedef int32_t llama_pos;
typedef int32_t llama_seq_id;
struct llama_model;
struct llama_context;
struct llama_sampler;

struct ggml_tensor {
    int type;
    int backend;
    void * buffer;
    int64_t ne[4];
    size_t nb[4];
    int op;
    int32_t op_params[16];
    int32_t flags;
    struct ggml_tensor * grad;
    struct ggml_tensor * src[10];
    struct ggml_tensor * view_src;
    size_t view_offs;
    void * data;
    char name[64];
    void * extra;
};
typedef bool (*ggml_backend_sched_eval_callback)(struct ggml_tensor * t, bool ask, void * user_data);
typedef bool (*ggml_abort_callback)(void * data);
typedef void (*ggml_log_callback)(int level, const char * text, void * user_data);
typedef bool (*llama_progress_callback)(float progress, void * user_data);

typedef struct llama_token_data { llama_token id; float logit; float p; } llama_token_data;
typedef struct llama_token_data_array { llama_token_data * data; size_t size; int64_t selected; bool sorted; } llama_token_data_array;

typedef struct llama_batch {
    int32_t n_tokens;
    llama_token * token;
    float * embd;
    llama_pos * pos;
    int32_t * n_seq_id;
    llama_seq_id ** seq_id;
    int8_t * logits;
    llama_pos all_pos_0;
    llama_pos all_pos_1;
    llama_seq_id all_seq_id;
} llama_batch;

struct llama_model_params {
    int32_t n_gpu_layers;
    int split_mode;
    int32_t main_gpu;
    const float * tensor_split;
    const char * rpc_servers;
    llama_progress_callback progress_callback;
    void * progress_callback_user_data;
    const void * kv_overrides;
    bool vocab_only;
    bool use_mmap;
    bool use_mlock;
    bool check_tensors;
};

struct llama_context_params {
    uint32_t n_ctx;
    uint32_t n_batch;
    uint32_t n_ubatch;
    uint32_t n_seq_max;
    int32_t n_threads;
    int32_t n_threads_batch;
    int rope_scaling_type;
    int pooling_type;
    int attention_type;
    float rope_freq_base;
    float rope_freq_scale;
    float yarn_ext_factor;
    float yarn_attn_factor;
    float yarn_beta_fast;
    float yarn_beta_slow;
    uint32_t yarn_orig_ctx;
    float defrag_thold;
    ggml_backend_sched_eval_callback cb_eval;
    void * cb_eval_user_data;
    int type_k;
    int type_v;
    bool logits_all;
    bool embeddings;
    bool offload_kqv;
    bool flash_attn;
    bool no_perf;
    ggml_abort_callback abort_callback;
    void * abort_callback_data;
};
typedef struct llama_sampler_chain_params { bool no_perf; } llama_sampler_chain_params;

void llama_backend_init(void);
void llama_log_set(ggml_log_callback log_callback, void * user_data);
struct llama_model_params llama_model_default_params(void);
struct llama_context_params llama_context_default_params(void);
struct llama_model * llama_load_model_from_file(const char * path_model, struct llama_model_params params);
void llama_free_model(struct llama_model * model);
struct llama_context * llama_new_context_with_model(struct llama_model * model, struct llama_context_params params);
void llama_free(struct llama_context * ctx);
int32_t llama_n_vocab(const struct llama_model * model);
llama_token llama_token_bos(const struct llama_model * model);
llama_token llama_token_eos(const struct llama_model * model);
bool llama_add_bos_token(const struct llama_model * model);
int32_t llama_tokenize(const struct llama_model * model, const char * text, int32_t text_len, llama_token * tokens,
                       int32_t n_tokens_max, bool add_special, bool parse_special);
int32_t llama_token_to_piece(const struct llama_model * model, llama_token token, char * buf, int32_t length, int32_t lstrip,
                             bool special);
int32_t llama_detokenize(const struct llama_model * model, const llama_token * tokens, int32_t n_tokens, char * text,
                         int32_t text_len_max, bool remove_special, bool unparse_special);
void llama_kv_cache_clear(struct llama_context * ctx);
bool llama_kv_cache_seq_rm(struct llama_context * ctx, llama_seq_id seq_id, llama_pos p0, llama_pos p1);
struct llama_batch llama_batch_init(int32_t n_tokens, int32_t embd, int32_t n_seq_max);
void llama_batch_free(struct llama_batch batch);
int32_t llama_decode(struct llama_context * ctx, struct llama_batch batch);
float * llama_get_logits_ith(struct llama_context * ctx, int32_t i);
const char * llama_print_system_info(void);

struct llama_sampler_chain_params llama_sampler_chain_default_params(void);
struct llama_sampler * llama_sampler_chain_init(struct llama_sampler_chain_params params);
void llama_sampler_chain_add(struct llama_sampler * chain, struct llama_sampler * smpl);
struct llama_sampler * llama_sampler_init_top_k(int32_t k);
struct llama_sampler * llama_sampler_init_typical(float p, size_t min_keep);
struct llama_sampler * llama_sampler_init_top_p(float p, size_t min_keep);
struct llama_sampler * llama_sampler_init_min_p(float p, size_t min_keep);
struct llama_sampler * llama_sampler_init_temp(float t);
struct llama_sampler * llama_sampler_init_dist(uint32_t seed);
void llama_sampler_apply(struct llama_sampler * smpl, llama_token_data_array * cur_p);
void llama_sampler_accept(struct llama_sampler * smpl, llama_token token);
void llama_sampler_free(struct llama_sampler * smpl);
"""

GGML_TYPE = {"f32": 0, "f16": 1}


class BitnetCppError(RuntimeError):
    """bitnet.cpp refused a request (one line)."""


_FFI = None
_LIB = None
_LOG_CB = None


def load_library(libllama: str | Path):
    """(ffi, lib) for the fork's libllama.so (once per process); raises BitnetCppError when it
    cannot be opened or lacks a declared symbol."""
    global _FFI, _LIB, _LOG_CB
    if _LIB is not None:
        return _FFI, _LIB
    import cffi

    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    try:
        lib = ffi.dlopen(str(libllama))
        lib.llama_load_model_from_file  # noqa: B018 — the old-API symbol: fails on an upstream libllama
    except (OSError, AttributeError) as e:
        raise BitnetCppError(f"cannot use {libllama} as bitnet.cpp's libllama: {e}") from None
    _LOG_CB = ffi.callback("void(int, const char *, void *)", lambda level, text, ud: None)
    lib.llama_log_set(_LOG_CB, ffi.NULL)
    lib.llama_backend_init()
    _FFI, _LIB = ffi, lib
    return ffi, lib


def _read_tensor(ffi, t) -> np.ndarray | None:
    """An F32/F16 graph tensor out of host memory → float32 numpy in (ne3, ne2, ne1, ne0) order."""
    if t.data == ffi.NULL:
        return None
    return tensor_array(t.type, t.ne, t.nb, lambda span: ffi.buffer(t.data, span))


class BitnetCppModel(GreedyDecoding):
    """One model and one context of bitnet.cpp (in the child process)."""

    name = "bitnetcpp"
    error = BitnetCppError
    no_capture = "model was loaded without capture"

    def __init__(self, libllama: str | Path, model_path: str | Path, n_ctx: int = 2048, threads: int = 1, kv_type: str = "f16",
                 capture: bool = False):  # fmt: skip
        self.ffi, self.lib = load_library(libllama)
        ffi, lib = self.ffi, self.lib
        if kv_type not in GGML_TYPE:
            raise ValueError(f"kv_type must be f16 or f32, not {kv_type!r}")
        self.libllama, self.model_path = str(libllama), str(model_path)
        if not Path(self.model_path).is_file():
            raise BitnetCppError(f"{self.model_path}: no such file")
        mp = lib.llama_model_default_params()
        mp.n_gpu_layers = 0
        self.model = lib.llama_load_model_from_file(self.model_path.encode(), mp)
        if self.model == ffi.NULL:
            self.model = None
            raise BitnetCppError(f"bitnet.cpp could not load {self.model_path}")
        self.n_vocab = int(lib.llama_n_vocab(self.model))
        self.n_ctx, self.threads, self.kv_type = n_ctx, threads, kv_type
        cp = lib.llama_context_default_params()
        cp.n_ctx = cp.n_batch = cp.n_ubatch = n_ctx
        cp.n_seq_max = 1
        cp.n_threads = cp.n_threads_batch = threads
        cp.type_k = cp.type_v = GGML_TYPE[kv_type]
        cp.flash_attn = False
        cp.no_perf = True
        self.captured: dict[str, np.ndarray] = {}
        self._capture_filter = None
        if capture:
            # the scheduler asks (ask=True) whether we want a tensor, then calls again once computed
            def cb(tp, ask, _ud):
                name = ffi.string(tp.name).decode(errors="replace")
                flt = self._capture_filter
                if flt is None or not flt(name):
                    return not ask
                if ask:
                    return True
                arr = _read_tensor(ffi, tp)
                if arr is not None:
                    self.captured[name] = arr
                return True

            self._cb = ffi.callback("bool(struct ggml_tensor *, bool, void *)", cb)
            cp.cb_eval = self._cb
        self.ctx = lib.llama_new_context_with_model(self.model, cp)
        if self.ctx == ffi.NULL:
            self.ctx = None
            self.close()
            raise BitnetCppError(f"bitnet.cpp could not create a context for {self.model_path}")
        self.n_past = 0

    # --- tokenizer -----------------------------------------------------------------------------
    def tokenize(self, text: str, add_bos: bool = True, parse_special: bool = False) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 16
        buf = self.ffi.new("llama_token[]", cap)
        n = self.lib.llama_tokenize(self.model, data, len(data), buf, cap, add_bos, parse_special)
        if n < 0:
            cap = -n
            buf = self.ffi.new("llama_token[]", cap)
            n = self.lib.llama_tokenize(self.model, data, len(data), buf, cap, add_bos, parse_special)
        return [int(buf[i]) for i in range(n)]

    def detokenize(self, ids: list[int], remove_special: bool = False, unparse_special: bool = False) -> str:
        arr = self.ffi.new("llama_token[]", [int(i) for i in ids] or [0])
        cap = 16 * len(ids) + 16
        out = self.ffi.new("char[]", cap)
        n = self.lib.llama_detokenize(self.model, arr, len(ids), out, cap, remove_special, unparse_special)
        if n < 0:
            cap = -n
            out = self.ffi.new("char[]", cap)
            n = self.lib.llama_detokenize(self.model, arr, len(ids), out, cap, remove_special, unparse_special)
        return self.ffi.buffer(out, n)[:].decode("utf-8", errors="replace")

    # --- evaluation ----------------------------------------------------------------------------
    def reset(self) -> None:
        self.lib.llama_kv_cache_clear(self.ctx)
        self.n_past = 0

    def _decode(self, ids: list[int], all_logits: bool) -> np.ndarray:
        lib, n = self.lib, len(ids)
        if n == 0:
            raise BitnetCppError("nothing to decode")
        if self.n_past + n > self.n_ctx:
            raise BitnetCppError(f"context full: {self.n_past} + {n} > n_ctx {self.n_ctx}")
        bad = [t for t in ids if not 0 <= t < self.n_vocab]
        if bad:
            raise BitnetCppError(f"token id {bad[0]} out of range [0, {self.n_vocab})")
        return self._decode_batch(lib, ids, all_logits, lambda ptr: np.frombuffer(self.ffi.buffer(ptr, 4 * self.n_vocab), dtype=np.float32))

    def truncate(self, n_past: int) -> None:
        """Drop cached positions ≥ n_past (llama_kv_cache_seq_rm)."""
        self.lib.llama_kv_cache_seq_rm(self.ctx, 0, n_past, -1)
        self.n_past = n_past

    # --- the fork's own sampler chain -----------------------------------------------------------
    def sampler_chain(self, params):
        """top-k → typical → top-p → min-p → temperature → dist(seed), as llama-cpp-python builds it
        for llama.cpp (crossval/backends/llamacpp.py), from the fork's sampler functions."""
        return sampler_chain(self.lib, params)

    def sample_logits(self, chain, logits: np.ndarray) -> int:
        cells = token_data(logits)
        data = self.ffi.from_buffer("llama_token_data[]", cells)
        arr = self.ffi.new("llama_token_data_array *", {"data": data, "size": len(cells), "selected": -1, "sorted": False})
        self.lib.llama_sampler_apply(chain, arr)
        tok = int(data[arr.selected].id)
        self.lib.llama_sampler_accept(chain, tok)
        return tok

    def free_sampler(self, chain) -> None:
        self.lib.llama_sampler_free(chain)

    # --- provenance ----------------------------------------------------------------------------
    def system_info(self) -> str:
        return self.ffi.string(self.lib.llama_print_system_info()).decode(errors="replace").strip()

    def library_sha256(self) -> str:
        return hashlib.sha256(Path(self.libllama).read_bytes()).hexdigest()

    def close(self) -> None:
        if getattr(self, "ctx", None) is not None:
            self.lib.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None) is not None:
            self.lib.llama_free_model(self.model)
            self.model = None
