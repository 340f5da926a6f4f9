/* FSMN memory block of SAN-M (depthwise 1-D conv over time + the input), streaming-cache aware:
 * frames before the chunk come from `hist` (the previous call's last inputs), so chunked decoding
 * needs no padded copy. Same multiply-then-add order as numpy's reference: bit-exact. */
#include <string.h>

#include "pe_neon.h"

static inline const float *src_row(const float *x, int T, int D, const float *hist, int H, int i) {
    if (i >= 0 && i < T) return x + (size_t)i * D;
    if (i < 0 && hist && i >= -H) return hist + (size_t)(H + i) * D;
    return NULL; /* zero padding: contributes +0, skipped */
}

void pe_fsmn_f32(const float *x, int T, int D, const float *hist, int H, const float *w, int kernel, int left,
                 float *y) {
    for (int t = 0; t < T; t++) {
        float *yr = y + (size_t)t * D;
        const float *xr = x + (size_t)t * D;
        int d = 0;
        for (; d + 16 <= D; d += 16) {
            float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0;
            for (int j = 0; j < kernel; j++) {
                const float *s = src_row(x, T, D, hist, H, t + j - left);
                if (!s) continue;
                const float *wj = w + (size_t)j * D + d;
                s += d;
                a0 = vaddq_f32(a0, vmulq_f32(vld1q_f32(s), vld1q_f32(wj)));
                a1 = vaddq_f32(a1, vmulq_f32(vld1q_f32(s + 4), vld1q_f32(wj + 4)));
                a2 = vaddq_f32(a2, vmulq_f32(vld1q_f32(s + 8), vld1q_f32(wj + 8)));
                a3 = vaddq_f32(a3, vmulq_f32(vld1q_f32(s + 12), vld1q_f32(wj + 12)));
            }
            vst1q_f32(yr + d, vaddq_f32(a0, vld1q_f32(xr + d)));
            vst1q_f32(yr + d + 4, vaddq_f32(a1, vld1q_f32(xr + d + 4)));
            vst1q_f32(yr + d + 8, vaddq_f32(a2, vld1q_f32(xr + d + 8)));
            vst1q_f32(yr + d + 12, vaddq_f32(a3, vld1q_f32(xr + d + 12)));
        }
        for (; d + 4 <= D; d += 4) {
            float32x4_t a0 = vdupq_n_f32(0.0f);
            for (int j = 0; j < kernel; j++) {
                const float *s = src_row(x, T, D, hist, H, t + j - left);
                if (s) a0 = vaddq_f32(a0, vmulq_f32(vld1q_f32(s + d), vld1q_f32(w + (size_t)j * D + d)));
            }
            vst1q_f32(yr + d, vaddq_f32(a0, vld1q_f32(xr + d)));
        }
        for (; d < D; d++) {
            float acc = 0.0f;
            for (int j = 0; j < kernel; j++) {
                const float *s = src_row(x, T, D, hist, H, t + j - left);
                if (s) acc = acc + s[d] * w[(size_t)j * D + d];
            }
            yr[d] = acc + xr[d];
        }
    }
}
