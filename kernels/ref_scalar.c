/* Scalar C references: the definition of every kernel's result, and the "scalar C" row of the
 * instruction-count bench. Kept deliberately scalar (no auto-vectorisation), no FMA contraction. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-tree-vectorize")
#endif
#include <math.h>
#include <string.h>

#include "paraedge_kernels.h"

void pe_ref_gemm_s8s32(const int8_t *a, const int8_t *w, int M, int K, int N, int32_t *c) {
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            int32_t acc = 0;
            for (int k = 0; k < K; k++) acc += (int32_t)a[(size_t)m * K + k] * (int32_t)w[(size_t)n * K + k];
            c[(size_t)m * N + n] = acc;
        }
}

void pe_ref_quantize_rows_s8(const float *x, int M, int K, int8_t *q, float *scale) {
    for (int m = 0; m < M; m++) {
        const float *r = x + (size_t)m * K;
        float amax = 0.0f;
        for (int k = 0; k < K; k++) amax = fmaxf(amax, fabsf(r[k]));
        float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        for (int k = 0; k < K; k++) {
            float v = fminf(fmaxf(r[k] * inv, -127.0f), 127.0f);
            q[(size_t)m * K + k] = (int8_t)rintf(v);
        }
        scale[m] = amax / 127.0f;
    }
}

void pe_ref_dequant_s32_f32(const int32_t *c, int M, int N, const float *a_scale, const float *w_scale,
                            const float *bias, int relu, float *y) {
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            float s = a_scale[m] * w_scale[n];
            float v = (float)c[(size_t)m * N + n] * s;
            if (bias) v = v + bias[n];
            if (relu && !(v > 0.0f)) v = 0.0f;
            y[(size_t)m * N + n] = v;
        }
}

void pe_ref_requant_s32_s8(const int32_t *c, int M, int N, const float *mult, int8_t *y) {
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            float v = (float)c[(size_t)m * N + n] * mult[n];
            v = fminf(fmaxf(v, -128.0f), 127.0f);
            y[(size_t)m * N + n] = (int8_t)rintf(v);
        }
}

void pe_ref_fsmn_f32(const float *x, int T, int D, const float *hist, int H, const float *w, int kernel, int left,
                     float *y) {
    for (int t = 0; t < T; t++)
        for (int d = 0; d < D; d++) {
            float acc = 0.0f;
            for (int j = 0; j < kernel; j++) {
                int i = t + j - left;
                float s = 0.0f;
                if (i >= 0 && i < T) s = x[(size_t)i * D + d];
                else if (i < 0 && hist && i >= -H) s = hist[(size_t)(H + i) * D + d];
                acc = acc + s * w[(size_t)j * D + d];
            }
            y[(size_t)t * D + d] = acc + x[(size_t)t * D + d];
        }
}

int pe_ref_cif_offline_f32(const float *hidden, const float *alphas, int T, int D, float tail, int n_out,
                           float *out, float *scratch) {
    float *cum = scratch, *prev_cum = scratch + D, *prev_rem = scratch + 2 * D;
    memset(scratch, 0, sizeof(float) * 3 * (size_t)D);
    if (n_out > 0) memset(out, 0, sizeof(float) * (size_t)n_out * D);
    double prefix = 0.0;
    float prev_floor = 0.0f;
    int fired = 0, steps = T + (tail > 0.0f);
    for (int t = 0; t < steps; t++) {
        float a = t < T ? alphas[t] : tail;
        const float *h = t < T ? hidden + (size_t)t * D : NULL;
        prefix += (double)a;
        float p = (float)prefix, fl = floorf(p);
        for (int d = 0; d < D; d++) cum[d] = cum[d] + (h ? a * h[d] : 0.0f);
        if (fl - prev_floor > 0.0f) {
            float frac = p - fl;
            for (int d = 0; d < D; d++) {
                float rem = h ? frac * h[d] : 0.0f;
                if (fired < n_out) out[(size_t)fired * D + d] = ((cum[d] - prev_cum[d]) + prev_rem[d]) - rem;
                prev_cum[d] = cum[d];
                prev_rem[d] = rem;
            }
            fired++;
        }
        prev_floor = fl;
    }
    return fired;
}

int pe_ref_cif_stream_f32(const float *hidden, const float *alphas, int T, int D, float threshold, int final,
                          float tail, float *carry_alpha, float *carry_hidden, float *out) {
    int steps = T + 1 + (final ? 1 : 0), fired = 0;
    float integrate = 0.0f, *frame = out;
    memset(frame, 0, sizeof(float) * (size_t)D);
    for (int t = 0; t < steps; t++) {
        float a = t == 0 ? *carry_alpha : (t <= T ? alphas[t - 1] : tail);
        const float *h = t == 0 ? carry_hidden : (t <= T ? hidden + (size_t)(t - 1) * D : NULL);
        if (a + integrate < threshold) {
            integrate = integrate + a;
            for (int d = 0; d < D; d++) frame[d] = frame[d] + (h ? a * h[d] : 0.0f);
        } else {
            float wgt = threshold - integrate;
            for (int d = 0; d < D; d++) frame[d] = frame[d] + (h ? wgt * h[d] : 0.0f);
            frame = out + (size_t)(++fired) * D;
            integrate = (integrate + a) - threshold;
            for (int d = 0; d < D; d++) frame[d] = h ? integrate * h[d] : 0.0f;
        }
    }
    *carry_alpha = integrate;
    for (int d = 0; d < D; d++) carry_hidden[d] = integrate > 0.0f ? frame[d] / integrate : frame[d];
    return fired;
}

void pe_ref_layernorm_f32(const float *x, int M, int D, const float *gamma, const float *beta, float eps,
                          float *y) {
    for (int m = 0; m < M; m++) {
        const float *r = x + (size_t)m * D;
        float sum = 0.0f, sq = 0.0f;
        for (int d = 0; d < D; d++) sum += r[d];
        float mean = sum / (float)D;
        for (int d = 0; d < D; d++) sq += (r[d] - mean) * (r[d] - mean);
        float inv = 1.0f / sqrtf(sq / (float)D + eps);
        for (int d = 0; d < D; d++) y[(size_t)m * D + d] = (r[d] - mean) * inv * gamma[d] + beta[d];
    }
}

void pe_ref_attention_f32(const float *q, int T1, const float *k, const float *v, int T2, int D, int heads,
                          float scale, float *y, float *scratch) {
    int dk = D / heads;
    float *s = scratch;
    for (int h = 0; h < heads; h++)
        for (int i = 0; i < T1; i++) {
            float mx = -INFINITY, sum = 0.0f;
            for (int t = 0; t < T2; t++) {
                float acc = 0.0f;
                for (int j = 0; j < dk; j++) acc += (q[(size_t)i * D + h * dk + j] * scale) * k[(size_t)t * D + h * dk + j];
                s[t] = acc;
                if (acc > mx) mx = acc;
            }
            for (int t = 0; t < T2; t++) sum += s[t] = expf(s[t] - mx);
            for (int j = 0; j < dk; j++) {
                float acc = 0.0f;
                for (int t = 0; t < T2; t++) acc += (s[t] / sum) * v[(size_t)t * D + h * dk + j];
                y[(size_t)i * D + h * dk + j] = acc;
            }
        }
}
