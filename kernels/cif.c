/* CIF integrate-and-fire, vectorised over the embedding dimension. The fire decisions are scalar
 * and follow the reference exactly (float64 prefix sum offline; the float32 running integrate of
 * forward_chunk when streaming), so the fired embeddings are bit-exact with edge/asr/cif.py. */
#include <math.h>
#include <string.h>

#include "pe_neon.h"

/* y = y + a * h (h NULL: a zero frame, still added: -0 + 0 is +0, as in numpy) */
static inline void axpy(float *y, float a, const float *h, int D) {
    if (!h) {
        for (int d = 0; d < D; d++) y[d] = y[d] + 0.0f;
        return;
    }
    float32x4_t va = vdupq_n_f32(a);
    int d = 0;
    for (; d + 4 <= D; d += 4) vst1q_f32(y + d, vaddq_f32(vld1q_f32(y + d), vmulq_f32(va, vld1q_f32(h + d))));
    for (; d < D; d++) y[d] = y[d] + a * h[d];
}

/* y = a * h (h NULL: 0) */
static inline void scale(float *y, float a, const float *h, int D) {
    if (!h) {
        memset(y, 0, sizeof(float) * (size_t)D);
        return;
    }
    float32x4_t va = vdupq_n_f32(a);
    int d = 0;
    for (; d + 4 <= D; d += 4) vst1q_f32(y + d, vmulq_f32(va, vld1q_f32(h + d)));
    for (; d < D; d++) y[d] = a * h[d];
}

int pe_cif_offline_f32(const float *hidden, const float *alphas, int T, int D, float tail, int n_out, float *out,
                       float *scratch) {
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
        axpy(cum, a, h, D);
        if (fl - prev_floor > 0.0f) {
            float frac = p - fl;
            if (fired < n_out) {
                float *o = out + (size_t)fired * D;
                float32x4_t vf = vdupq_n_f32(frac);
                int d = 0;
                for (; h && d + 4 <= D; d += 4) {
                    float32x4_t rem = vmulq_f32(vf, vld1q_f32(h + d));
                    float32x4_t v = vaddq_f32(vsubq_f32(vld1q_f32(cum + d), vld1q_f32(prev_cum + d)), vld1q_f32(prev_rem + d));
                    vst1q_f32(o + d, vsubq_f32(v, rem));
                }
                for (; d < D; d++) {
                    float rem = h ? frac * h[d] : 0.0f;
                    o[d] = ((cum[d] - prev_cum[d]) + prev_rem[d]) - rem;
                }
            }
            memcpy(prev_cum, cum, sizeof(float) * (size_t)D);
            scale(prev_rem, frac, h, D);
            fired++;
        }
        prev_floor = fl;
    }
    return fired;
}

int pe_cif_stream_f32(const float *hidden, const float *alphas, int T, int D, float threshold, int final,
                      float tail, float *carry_alpha, float *carry_hidden, float *out) {
    int steps = T + 1 + (final ? 1 : 0), fired = 0;
    float integrate = 0.0f, *frame = out;
    memset(frame, 0, sizeof(float) * (size_t)D);
    for (int t = 0; t < steps; t++) {
        float a = t == 0 ? *carry_alpha : (t <= T ? alphas[t - 1] : tail);
        const float *h = t == 0 ? carry_hidden : (t <= T ? hidden + (size_t)(t - 1) * D : NULL);
        if (a + integrate < threshold) {
            integrate = integrate + a;
            axpy(frame, a, h, D);
        } else {
            axpy(frame, threshold - integrate, h, D);
            frame = out + (size_t)(++fired) * D;
            integrate = (integrate + a) - threshold;
            scale(frame, integrate, h, D);
        }
    }
    *carry_alpha = integrate;
    if (integrate > 0.0f)
        for (int d = 0; d < D; d++) carry_hidden[d] = frame[d] / integrate;
    else
        memcpy(carry_hidden, frame, sizeof(float) * (size_t)D);
    return fired;
}
