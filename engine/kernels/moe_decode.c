/* One token's routed-expert FFN (qwen3moe) for cv_layer_decode, as llama.cpp computes it
 * (llama-graph.cpp build_moe_ffn with SiLU, softmax gating, norm_w; included by qkernels.c, whose
 * mm1, softmax_lanes, act_type and cv_swiglu it uses):
 *   p = soft_max(ffn_gate_inp · h)          (F32 router: ggml_vec_dot_f32 for one row; ggml_soft_max)
 *   E = the n_expert_used largest p, descending (ggml_argsort_top_k)
 *   w = p[E] / max(sum(p[E]), 2^-14)         (ggml_sum_rows: a double accumulator; ggml_clamp; ggml_div)
 *   out = sum_j w_j · down_Ej(swiglu(gate_Ej · h, up_Ej · h))   each product rounded, added in the order of E
 *   (each expert matmul's output · its tensor's `.scale` for that expert when it has one: build_lora_mm_id)
 * Expert e's matrices start e · exp_stride bytes after expert 0 (lw->w[4..6]); one activation row
 * per expert matmul is mul_mat_id's route for a decode step (vec_dot, or the repacked gemv). */
static int moe_ffn_row(const cv_layer_cfg *c, const cv_layer_w *lw, const float *h, float *out, float *gu, float *f, void *xq) {
    const int64_t E = c->n_embd, F = c->n_ff, X = c->n_expert, K = c->n_expert_used;
    if (K <= 0 || K > X) return -1;
    float *p = malloc(sizeof(float) * (size_t)(X + K + E));
    int *sel = malloc(sizeof(int) * (size_t)K);
    int err = !p || !sel;
    float *w = p + X, *y = w + K;
    if (!err) err |= mm1(lw->t_gate_inp, lw->gate_inp, X, E, h, p, xq, c->threads, 1, c->lanes);
    if (!err) {
        softmax_lanes(p, X, c->lanes);
        for (int64_t j = 0; j < K; j++) { /* selection sort, descending; the first of equal values first */
            int best = -1;
            for (int64_t e = 0; e < X; e++) {
                int taken = 0;
                for (int64_t i = 0; i < j; i++) taken |= sel[i] == e;
                if (!taken && (best < 0 || p[e] > p[best])) best = (int)e;
            }
            sel[j] = best;
        }
        double sum = 0.0;
        for (int64_t j = 0; j < K; j++) sum += (double)p[sel[j]];
        float s = (float)sum;
        s = s < 6.103515625e-5f ? 6.103515625e-5f : s;
        for (int64_t j = 0; j < K; j++) w[j] = p[sel[j]] / s;
    }
    for (int64_t j = 0; j < K && !err; j++) {
        const int64_t e = sel[j];
        const char *g = (const char *)lw->w[4] + e * lw->exp_stride[0], *u = (const char *)lw->w[5] + e * lw->exp_stride[1],
                   *d = (const char *)lw->w[6] + e * lw->exp_stride[2];
        err |= mm1(lw->t[4], g, F, E, h, gu, xq, c->threads, 1, c->lanes);
        err |= mm1(lw->t[5], u, F, E, h, gu + F, xq, c->threads, act_type(lw->t[5]) != act_type(lw->t[4]), c->lanes);
        if (err) break;
        scale_row(gu, F, lw->s[4] ? lw->s[4] + e : NULL), scale_row(gu + F, F, lw->s[5] ? lw->s[5] + e : NULL);
        cv_swiglu(gu, f, 1, F, c->lanes, 1);
        err |= mm1(lw->t[6], d, E, F, f, y, xq, c->threads, 1, c->lanes);
        scale_row(y, E, lw->s[6] ? lw->s[6] + e : NULL);
        for (int64_t i = 0; i < E; i++) {
            const float v = y[i] * w[j];
            out[i] = j ? out[i] + v : v;
        }
    }
    free(p);
    free(sel);
    return err ? -1 : 0;
}
