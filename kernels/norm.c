/* LayerNorm over the last axis. Reductions use 4 lanes folded pairwise (vpadd), the order ARM's
 * and SIMDe's builds share, so x86 and aarch64 agree bit for bit; numpy sums in another order. */
#include <math.h>

#include "pe_neon.h"

void pe_layernorm_f32(const float *x, int M, int D, const float *gamma, const float *beta, float eps, float *y) {
    for (int m = 0; m < M; m++) {
        const float *r = x + (size_t)m * D;
        float *o = y + (size_t)m * D;
        float32x4_t s4 = vdupq_n_f32(0.0f);
        int d = 0;
        for (; d + 4 <= D; d += 4) s4 = vaddq_f32(s4, vld1q_f32(r + d));
        float sum = pe_hsum(s4);
        for (; d < D; d++) sum += r[d];
        float mean = sum / (float)D;
        float32x4_t vm = vdupq_n_f32(mean), q4 = vdupq_n_f32(0.0f);
        for (d = 0; d + 4 <= D; d += 4) {
            float32x4_t c = vsubq_f32(vld1q_f32(r + d), vm);
            q4 = vaddq_f32(q4, vmulq_f32(c, c));
        }
        float sq = pe_hsum(q4);
        for (; d < D; d++) sq += (r[d] - mean) * (r[d] - mean);
        float inv = 1.0f / sqrtf(sq / (float)D + eps);
        float32x4_t vi = vdupq_n_f32(inv);
        for (d = 0; d + 4 <= D; d += 4) {
            float32x4_t c = vmulq_f32(vsubq_f32(vld1q_f32(r + d), vm), vi);
            vst1q_f32(o + d, vaddq_f32(vmulq_f32(c, vld1q_f32(gamma + d)), vld1q_f32(beta + d)));
        }
        for (; d < D; d++) o[d] = (r[d] - mean) * inv * gamma[d] + beta[d];
    }
}
