/* The merge loops of llama.cpp's SPM and BPE tokenizers (src/llama-vocab.cpp
 * llm_tokenizer_spm_session::tokenize and llm_tokenizer_bpe_session::tokenize), for
 * engine/tokenizer: the same algorithm as engine/tokenizer/spm.py tokenize() and
 * engine/tokenizer/bpe.py merge(), which stay the reference and the fallback.
 *
 *   symbols  : a doubly linked list of byte spans (start, n, prev, next), one per UTF-8 character
 *   queue    : a binary heap of candidate pairs (prio, left, size), smallest prio first, ties by the
 *              lower left index; SPM prio = -score of the pair's token, BPE prio = merge rank
 *   pop      : current iff n[left] > 0, next[left] != -1 and n[left] + n[next[left]] == size
 *              (symbols only grow to the right, so this is llama.cpp's "texts unchanged" test)
 *   merge    : left absorbs right; push (prev, left) then (left, next)
 *
 * O(n log n) for n characters. The caller maps the final spans to token ids.
 *
 * String tables (cv_strtab): open addressing over byte strings. A key is a byte string with an
 * optional split point (BPE merges are keyed by the pair (left, right) = the concatenation plus
 * where left ends); inserting an existing key overwrites its value (llama.cpp's token_to_id keeps
 * the last id of a duplicated text; the caller passes BPE merges already deduplicated).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tokmerge.h"

typedef struct {
    uint8_t *blob;   /* all keys, concatenated */
    int64_t *off;    /* key i = blob[off[i] : off[i] + len[i]] */
    int32_t *len;
    int32_t *split;  /* BPE: bytes of the left part; SPM: -1 */
    int32_t *value;  /* token id or merge rank */
    float *score;    /* SPM: score per token id (indexed by value); else NULL */
    int32_t n_score;
    uint32_t *slot;  /* 0 = empty, else key index + 1 */
    uint64_t mask;
} cv_strtab;

static uint64_t h_bytes(const uint8_t *p, int64_t n, int64_t split) {
    uint64_t h = 1469598103934665603ULL ^ (uint64_t)(split + 1) * 0x9E3779B97F4A7C15ULL;
    for (int64_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ULL;
    return h ^ (h >> 29);
}

static int64_t tab_find(const cv_strtab *t, const uint8_t *p, int64_t n, int64_t split) {
    uint64_t i = h_bytes(p, n, split) & t->mask;
    for (;;) {
        uint32_t s = t->slot[i];
        if (!s) return -1;
        int64_t k = s - 1;
        if (t->len[k] == n && t->split[k] == split && memcmp(t->blob + t->off[k], p, (size_t)n) == 0) return k;
        i = (i + 1) & t->mask;
    }
}

void cv_strtab_free(void *tp) {
    cv_strtab *t = tp;
    if (!t) return;
    free(t->blob); free(t->off); free(t->len); free(t->split); free(t->value); free(t->score); free(t->slot);
    free(t);
}

/* keys: blob + off/len (+ split, NULL = none); values per key; scores: n_score floats or NULL */
void *cv_strtab_new(const uint8_t *blob, int64_t blob_len, const int64_t *off, const int32_t *len, const int32_t *split,
                    const int32_t *value, int32_t n, const float *scores, int32_t n_score) {
    cv_strtab *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    uint64_t cap = 16;
    while (cap < (uint64_t)n * 2 + 16) cap <<= 1;
    t->blob = malloc((size_t)blob_len + 1);
    t->off = malloc(sizeof(int64_t) * (size_t)(n + 1));
    t->len = malloc(sizeof(int32_t) * (size_t)(n + 1));
    t->split = malloc(sizeof(int32_t) * (size_t)(n + 1));
    t->value = malloc(sizeof(int32_t) * (size_t)(n + 1));
    t->slot = calloc(cap, sizeof(uint32_t));
    t->mask = cap - 1;
    if (scores && n_score > 0) {
        t->score = malloc(sizeof(float) * (size_t)n_score);
        if (t->score) memcpy(t->score, scores, sizeof(float) * (size_t)n_score);
        t->n_score = n_score;
    }
    if (!t->blob || !t->off || !t->len || !t->split || !t->value || !t->slot || (scores && n_score > 0 && !t->score)) {
        cv_strtab_free(t);
        return NULL;
    }
    memcpy(t->blob, blob, (size_t)blob_len);
    int32_t m = 0; /* distinct keys stored */
    for (int32_t i = 0; i < n; i++) {
        int64_t sp = split ? split[i] : -1;
        int64_t k = tab_find(t, blob + off[i], len[i], sp);
        if (k >= 0) { t->value[k] = value[i]; continue; }
        t->off[m] = off[i]; t->len[m] = len[i]; t->split[m] = (int32_t)sp; t->value[m] = value[i];
        uint64_t j = h_bytes(blob + off[i], len[i], sp) & t->mask;
        while (t->slot[j]) j = (j + 1) & t->mask;
        t->slot[j] = (uint32_t)m + 1;
        m++;
    }
    return t;
}

/* --- the queue ------------------------------------------------------------------------------- */
typedef struct { double prio; int64_t left, size; } cv_bigram;

static int bg_less(const cv_bigram *a, const cv_bigram *b) {
    return a->prio < b->prio || (a->prio == b->prio && a->left < b->left);
}

typedef struct { cv_bigram *v; int64_t n, cap; } cv_heap;

static int heap_push(cv_heap *h, double prio, int64_t left, int64_t size) {
    if (h->n == h->cap) {
        int64_t cap = h->cap ? h->cap * 2 : 64;
        cv_bigram *v = realloc(h->v, sizeof *v * (size_t)cap);
        if (!v) return -1;
        h->v = v; h->cap = cap;
    }
    cv_bigram x = {prio, left, size};
    int64_t i = h->n++;
    while (i > 0) {
        int64_t p = (i - 1) / 2;
        if (!bg_less(&x, &h->v[p])) break;
        h->v[i] = h->v[p];
        i = p;
    }
    h->v[i] = x;
    return 0;
}

static cv_bigram heap_pop(cv_heap *h) {
    cv_bigram top = h->v[0], x = h->v[--h->n];
    int64_t i = 0;
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && bg_less(&h->v[c + 1], &h->v[c])) c++;
        if (!bg_less(&h->v[c], &x)) break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n) h->v[i] = x;
    return top;
}

static int utf8_len(uint8_t b) {
    static const int8_t lens[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lens[b >> 4];
}

/* the pair (left, right) as a candidate: its priority, or 0 = not a candidate */
static int pair_prio(const cv_strtab *t, int spm, const uint8_t *text, int64_t ls, int64_t ln, int64_t rn, double *prio) {
    if (spm) {
        int64_t k = tab_find(t, text + ls, ln + rn, -1);
        if (k < 0) return 0;
        int32_t id = t->value[k];
        if (id < 0 || id >= t->n_score) return 0;
        *prio = -(double)t->score[id];
    } else {
        int64_t k = tab_find(t, text + ls, ln + rn, ln);
        if (k < 0) return 0;
        *prio = (double)t->value[k];
    }
    return 1;
}

/* Merge text[0:n] (UTF-8) and write its token ids to out_id (at most n): each final symbol's id
 * in `tokens`, or — for a symbol whose text is not a token — one id per byte: SPM the <0xXX>
 * token, else the one-byte token (llm_tokenizer_spm_session::resegment, byte_to_token); BPE the
 * one-byte token, skipped when absent (llm_tokenizer_bpe_session). Returns the number of ids,
 * -1 when out of memory, -2 when an SPM vocabulary has no token for a byte (the caller names it).
 * spm = 1: t is the token table with scores; 0: the BPE merge table. */
int64_t cv_merge(const void *tp, const void *tokens, int spm, const uint8_t *text, int64_t n, int32_t *out_id) {
    const cv_strtab *t = tp, *tok = tokens;
    if (n <= 0) return 0;
    int64_t *st = malloc(sizeof(int64_t) * (size_t)n), *ln = malloc(sizeof(int64_t) * (size_t)n);
    int64_t *prv = malloc(sizeof(int64_t) * (size_t)n), *nxt = malloc(sizeof(int64_t) * (size_t)n);
    cv_heap h = {0};
    int64_t count = 0, ret = -1;
    if (!st || !ln || !prv || !nxt) goto done;
    for (int64_t off = 0; off < n; count++) {
        int64_t c = utf8_len(text[off]);
        if (c > n - off) c = n - off;
        st[count] = off; ln[count] = c; prv[count] = count - 1; nxt[count] = count + 1;
        off += c;
    }
    nxt[count - 1] = -1;
    for (int64_t i = 0; i + 1 < count; i++) {
        double p;
        if (pair_prio(t, spm, text, st[i], ln[i], ln[i + 1], &p) && heap_push(&h, p, i, ln[i] + ln[i + 1])) goto done;
    }
    while (h.n) {
        cv_bigram b = heap_pop(&h);
        int64_t left = b.left, right = nxt[left];
        if (ln[left] == 0 || right == -1 || ln[right] == 0 || ln[left] + ln[right] != b.size) continue;
        ln[left] += ln[right];
        ln[right] = 0;
        int64_t after = nxt[right], before = prv[left];
        nxt[left] = after;
        if (after != -1) prv[after] = left;
        double p;
        if (before != -1 && pair_prio(t, spm, text, st[before], ln[before], ln[left], &p) &&
            heap_push(&h, p, before, ln[before] + ln[left]))
            goto done;
        if (after != -1 && pair_prio(t, spm, text, st[left], ln[left], ln[after], &p) &&
            heap_push(&h, p, left, ln[left] + ln[after]))
            goto done;
    }
    ret = 0;
    for (int64_t i = 0; i != -1; i = nxt[i]) {
        int64_t k = tab_find(tok, text + st[i], ln[i], -1);
        if (k >= 0) {
            out_id[ret++] = tok->value[k];
            continue;
        }
        for (int64_t j = st[i]; j < st[i] + ln[i]; j++) {
            static const char hex[] = "0123456789ABCDEF";
            uint8_t hb[6] = {'<', '0', 'x', (uint8_t)hex[text[j] >> 4], (uint8_t)hex[text[j] & 15], '>'};
            int64_t kb = spm ? tab_find(tok, hb, 6, -1) : -1;
            if (kb < 0) kb = tab_find(tok, text + j, 1, -1);
            if (kb >= 0) {
                out_id[ret++] = tok->value[kb];
            } else if (spm) {
                ret = -2;
                goto done;
            }
        }
    }
done:
    free(st); free(ln); free(prv); free(nxt); free(h.v);
    return ret;
}
