/* A compiled example server for crossval's external protocol (docs/backends.md), version 2 with
 * binary frames: llama.cpp's libllama (the one llama-cpp-python ships) behind `hello`, `load`,
 * `logits`, `generate` and `close`. A starting point for an engine written in C or C++: replace
 * the three llama_* blocks marked ENGINE with your own engine's calls.
 *
 * Build (tests/test_protocol_check.py does this with the system compiler):
 *   cc -O2 -o crossval-c-server server.c -I<dir of llama.h> -L<dir of libllama.so> -lllama -Wl,-rpath,<that dir>
 * Check:  crossval protocol check ./crossval-c-server --model tiny.gguf
 *
 * Requests are one JSON object per line; this file reads the few fields it needs with a small
 * scanner (a real server would use a JSON library) after checking the line is UTF-8 and its
 * brackets balance. Arrays go out as raw little-endian float32 frames after the reply line (this
 * assumes a little-endian host). Everything except protocol bytes goes to stderr.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <ctype.h>
#include "llama.h"

#define TAG "crossval-external/2"

static struct llama_model *model;
static struct llama_context *ctx;
static int n_vocab, n_ctx_loaded;

static void reply_error(const char *msg) {
    printf("{\"protocol\": \"" TAG "\", \"ok\": false, \"error\": \"%s\"}\n", msg);
    fflush(stdout);
}

/* --- a minimal scanner for the request line ------------------------------------------------ */
static int valid_utf8(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t k = c < 0x80 ? 0 : (c >> 5) == 6 ? 1 : (c >> 4) == 14 ? 2 : (c >> 3) == 30 ? 3 : 9;
        if (k == 9 || i + k >= n + (k == 0)) return 0;
        for (size_t j = 1; j <= k; j++) if ((s[i + j] & 0xC0) != 0x80) return 0;
        i += k + 1;
    }
    return 1;
}

static int balanced_object(const char *s) {
    int depth = 0, in_str = 0, seen = 0;
    while (isspace((unsigned char)*s)) s++;
    if (*s != '{') return 0;
    for (; *s; s++) {
        if (in_str) { if (*s == '\\' && s[1]) s++; else if (*s == '"') in_str = 0; continue; }
        if (*s == '"') in_str = 1;
        else if (*s == '{' || *s == '[') depth++, seen = 1;
        else if (*s == '}' || *s == ']') { if (--depth < 0) return 0; }
        else if (depth == 0 && !isspace((unsigned char)*s)) return 0;
    }
    return seen && depth == 0 && !in_str;
}

static const char *value_of(const char *line, const char *key) { /* the text after "key": */
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *p = strstr(line, pat);
    if (!p) return NULL;
    p += strlen(pat);
    while (isspace((unsigned char)*p)) p++;
    if (*p != ':') return NULL;
    p++;
    while (isspace((unsigned char)*p)) p++;
    return p;
}

static int get_str(const char *line, const char *key, char *out, size_t cap) {
    const char *p = value_of(line, key);
    if (!p || *p != '"') return 0;
    size_t n = 0;
    for (p++; *p && *p != '"' && n + 1 < cap; p++) out[n++] = (*p == '\\' && p[1]) ? *++p : *p;
    out[n] = 0;
    return *p == '"';
}

static int get_int(const char *line, const char *key, long *out) {
    const char *p = value_of(line, key);
    char *end;
    if (!p) return 0;
    *out = strtol(p, &end, 10);
    return end != p;
}

static int get_ids(const char *line, llama_token **ids, int *n) { /* "ids": [1, 2, ...] */
    const char *p = value_of(line, "ids");
    if (!p || *p != '[') return 0;
    int cap = 64;
    *ids = malloc(cap * sizeof **ids);
    *n = 0;
    for (p++;;) {
        while (isspace((unsigned char)*p) || *p == ',') p++;
        if (*p == ']') return 1;
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v >= n_vocab) { free(*ids); *ids = NULL; return 0; }
        if (*n == cap) *ids = realloc(*ids, (cap *= 2) * sizeof **ids);
        (*ids)[(*n)++] = (llama_token)v;
        p = end;
    }
}

/* --- ENGINE: model and context ------------------------------------------------------------ */
static int load(const char *path, int n_ctx, int threads) {
    struct llama_model_params mp = llama_model_default_params();
    model = llama_model_load_from_file(path, mp);
    if (!model) return 0;
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = cp.n_batch = cp.n_ubatch = n_ctx;
    cp.n_threads = cp.n_threads_batch = threads;
    ctx = llama_init_from_model(model, cp);
    if (!ctx) return 0;
    n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    n_ctx_loaded = n_ctx;
    return 1;
}

/* ENGINE: decode tokens at positions pos.. (all rows' logits wanted when all_logits) */
static int decode(const llama_token *ids, int n, int pos, int all_logits) {
    struct llama_batch b = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; i++) {
        b.token[i] = ids[i];
        b.pos[i] = pos + i;
        b.n_seq_id[i] = 1;
        b.seq_id[i][0] = 0;
        b.logits[i] = all_logits || i == n - 1;
    }
    b.n_tokens = n;
    int rc = llama_decode(ctx, b);
    llama_batch_free(b);
    return rc == 0;
}

/* ENGINE: every position's logits from an empty cache, into out (n × n_vocab) */
static int prefill(const llama_token *ids, int n, float *out) {
    llama_memory_clear(llama_get_memory(ctx), 1);
    if (!decode(ids, n, 0, 1)) return 0;
    for (int i = 0; i < n; i++) memcpy(out + (size_t)i * n_vocab, llama_get_logits_ith(ctx, i), n_vocab * sizeof(float));
    return 1;
}

/* --- replies with frames -------------------------------------------------------------------- */
static void reply_array(int rows, const float *data, const llama_token *tokens) {
    size_t bytes = (size_t)rows * n_vocab * sizeof(float);
    printf("{\"protocol\": \"" TAG "\", \"ok\": true, \"result\": ");
    if (tokens) {
        printf("{\"tokens\": [");
        for (int i = 0; i < rows; i++) printf(i ? ", %d" : "%d", tokens[i]);
        printf("], \"logits\": ");
    }
    printf("{\"shape\": [%d, %d], \"dtype\": \"float32\", \"frame\": 0}", rows, n_vocab);
    printf("%s, \"frames\": [%zu]}\n", tokens ? "}" : "", bytes);
    fwrite(data, 1, bytes, stdout);
    fflush(stdout);
}

int main(void) {
    llama_backend_init();
    printf("{\"protocol\": \"" TAG "\", \"ok\": true, \"result\": {\"type\": \"hello\", \"name\": \"crossval-c-server\", "
           "\"transports\": [\"frames\"], \"capabilities\": {\"tokenize\": false, \"logits\": true, \"generate\": true}}}\n");
    fflush(stdout);
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, stdin)) > 0) {
        char op[64];
        if (!valid_utf8((unsigned char *)line, (size_t)len) || !balanced_object(line) || !get_str(line, "op", op, sizeof op)) {
            reply_error("malformed request");
            continue;
        }
        if (!strcmp(op, "close")) break;
        if (!strcmp(op, "load")) {
            char path[4096];
            long n_ctx = 2048, threads = 1;
            get_int(line, "n_ctx", &n_ctx);
            get_int(line, "threads", &threads);
            if (!get_str(line, "model_path", path, sizeof path)) { reply_error("load: no model_path"); continue; }
            if (model) { reply_error("load: already loaded"); continue; }
            if (!load(path, (int)n_ctx, (int)threads)) { reply_error("load: llama.cpp cannot load the model"); continue; }
            printf("{\"protocol\": \"" TAG "\", \"ok\": true, \"result\": {\"n_vocab\": %d, \"provenance\": "
                   "{\"version\": \"crossval-c-server/1\"}}}\n", n_vocab);
            fflush(stdout);
            continue;
        }
        if (strcmp(op, "logits") && strcmp(op, "generate")) {
            char msg[128];
            snprintf(msg, sizeof msg, "unknown op %.60s", op);
            reply_error(msg);
            continue;
        }
        if (!model) { reply_error("request before load"); continue; }
        llama_token *ids;
        int n;
        long steps = 0;
        if (!get_ids(line, &ids, &n) || n == 0) { reply_error("ids: a non-empty list of token ids below n_vocab"); continue; }
        if (!strcmp(op, "generate") && (!get_int(line, "steps", &steps) || steps < 0)) { free(ids); reply_error("generate: no steps"); continue; }
        if (n + steps > n_ctx_loaded) { free(ids); reply_error("context full"); continue; }
        float *rows = malloc((size_t)(n > steps ? n : steps + 1) * n_vocab * sizeof(float));
        int ok = prefill(ids, n, rows);
        if (ok && !strcmp(op, "logits")) {
            reply_array(n, rows, NULL);
        } else if (ok) { /* greedy: each step's row is the logits its token was chosen from */
            llama_token *toks = malloc((steps + 1) * sizeof *toks);
            memmove(rows, rows + (size_t)(n - 1) * n_vocab, n_vocab * sizeof(float));
            for (long s = 0; ok && s < steps; s++) {
                const float *r = rows + (size_t)s * n_vocab;
                int best = 0;
                for (int j = 1; j < n_vocab; j++) if (r[j] > r[best]) best = j;
                toks[s] = best;
                if (s + 1 < steps) {
                    ok = decode(&toks[s], 1, n + (int)s, 0);
                    if (ok) memcpy(rows + (size_t)(s + 1) * n_vocab, llama_get_logits_ith(ctx, -1), n_vocab * sizeof(float));
                }
            }
            if (ok) reply_array((int)steps, rows, toks);
            free(toks);
        }
        if (!ok) reply_error("llama_decode failed");
        free(rows);
        free(ids);
    }
    free(line);
    if (ctx) llama_free(ctx);
    if (model) llama_model_free(model);
    llama_backend_free();
    return 0;
}
