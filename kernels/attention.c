/* Fused attention for the short sequences of streaming ASR (T up to a few hundred): per head and
 * query row, scores -> max -> exp -> normalise -> weighted sum of V, in one pass over small
 * buffers. Replaces a dozen numpy calls (reshape, transpose, two batched matmuls, softmax) per
 * layer, which dominate the instruction count when T is 15..100. */
#include <string.h>

#include "pe_neon.h"

/* exp(x): Cephes' range reduction and polynomial, fused multiply-adds, |rel err| < 3e-7 */
static inline float32x4_t pe_expq(float32x4_t x) {
    x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.3f)), vdupq_n_f32(88.3f));
    float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(1.44269504088896341f)));
    float32x4_t r = pe_fmaq(x, n, vdupq_n_f32(-0.693359375f));
    r = pe_fmaq(r, n, vdupq_n_f32(2.12194440e-4f));
    float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
    p = pe_fmaq(vdupq_n_f32(1.3981999507e-3f), p, r);
    p = pe_fmaq(vdupq_n_f32(8.3334519073e-3f), p, r);
    p = pe_fmaq(vdupq_n_f32(4.1665795894e-2f), p, r);
    p = pe_fmaq(vdupq_n_f32(1.6666665459e-1f), p, r);
    p = pe_fmaq(vdupq_n_f32(5.0000001201e-1f), p, r);
    float32x4_t e = vaddq_f32(pe_fmaq(r, p, vmulq_f32(r, r)), vdupq_n_f32(1.0f));
    int32x4_t pow2 = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
    return vmulq_f32(e, vreinterpretq_f32_s32(pow2));
}

static inline float dot(const float *a, const float *b, int n) {
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = acc0;
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        acc0 = pe_fmaq(acc0, vld1q_f32(a + i), vld1q_f32(b + i));
        acc1 = pe_fmaq(acc1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
    }
    for (; i + 4 <= n; i += 4) acc0 = pe_fmaq(acc0, vld1q_f32(a + i), vld1q_f32(b + i));
    float s = pe_hsum(vaddq_f32(acc0, acc1));
    for (; i < n; i++) s = fmaf(a[i], b[i], s);
    return s;
}

void pe_attention_f32(const float *q, int T1, const float *k, const float *v, int T2, int D, int heads, float scale,
                      float *y, float *scratch) {
    int dk = D / heads;
    float *qs = scratch, *s = scratch + dk;
    float32x4_t vscale = vdupq_n_f32(scale);
    for (int h = 0; h < heads; h++) {
        int off = h * dk;
        for (int i = 0; i < T1; i++) {
            const float *qi = q + (size_t)i * D + off;
            int j = 0;
            for (; j + 4 <= dk; j += 4) vst1q_f32(qs + j, vmulq_f32(vld1q_f32(qi + j), vscale));
            for (; j < dk; j++) qs[j] = qi[j] * scale;
            float mx = -INFINITY;
            for (int t = 0; t < T2; t++) {
                s[t] = dot(qs, k + (size_t)t * D + off, dk);
                mx = s[t] > mx ? s[t] : mx;
            }
            float32x4_t vmx = vdupq_n_f32(mx), vsum = vdupq_n_f32(0.0f);
            int t = 0;
            for (; t + 4 <= T2; t += 4) {
                float32x4_t e = pe_expq(vsubq_f32(vld1q_f32(s + t), vmx));
                vst1q_f32(s + t, e);
                vsum = vaddq_f32(vsum, e);
            }
            if (t < T2) { /* tail: pad to a vector so every exp comes from the same polynomial */
                float buf[4] = {mx, mx, mx, mx};
                memcpy(buf, s + t, sizeof(float) * (size_t)(T2 - t));
                float e4[4];
                vst1q_f32(e4, pe_expq(vsubq_f32(vld1q_f32(buf), vmx)));
                for (int u = 0; u < T2 - t; u++) s[t + u] = e4[u];
            }
            float sum = pe_hsum(vsum);
            for (; t < T2; t++) sum += s[t];
            float inv = 1.0f / sum;
            float *yi = y + (size_t)i * D + off;
            for (j = 0; j + 8 <= dk; j += 8) {
                float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0;
                for (int u = 0; u < T2; u++) {
                    float32x4_t p = vdupq_n_f32(s[u]);
                    const float *vu = v + (size_t)u * D + off + j;
                    a0 = pe_fmaq(a0, p, vld1q_f32(vu));
                    a1 = pe_fmaq(a1, p, vld1q_f32(vu + 4));
                }
                vst1q_f32(yi + j, vmulq_f32(a0, vdupq_n_f32(inv)));
                vst1q_f32(yi + j + 4, vmulq_f32(a1, vdupq_n_f32(inv)));
            }
            for (; j < dk; j++) {
                float acc = 0.0f;
                for (int u = 0; u < T2; u++) acc = fmaf(s[u], v[(size_t)u * D + off + j], acc);
                yi[j] = acc * inv;
            }
        }
    }
}
