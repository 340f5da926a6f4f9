/* INT8 GEMM for ARMv8.0 NEON (Cortex-A53/A57/A72: Pi 4, Jetson Nano/TX2): smull + sadalp, plus the
 * quantize / dequant / requant epilogues and the path dispatcher. The sdot path is gemm_s8_dot.c.
 *
 * NEON path layout (packed once at load time): panels of 4 output channels; inside a panel,
 * blocks of 16 k: [k-block][channel 0..3][16 bytes], K zero-padded to a multiple of 16. The
 * 4x4 micro-kernel multiplies 16 k at a time: vmull_s8 (8 int16 products, exact even for
 * -128 * -128) and sadalp into int32 lanes, so no intermediate can overflow. */
#include <math.h>
#include <string.h>

#include "pe_neon.h"

#define NEON_NR 4
#define NEON_MR 4
#define KB 16

static void pack_neon(const int8_t *w, int K, int N, int8_t *packed) {
    int Kp = PE_ROUND_UP(K, KB), Np = PE_ROUND_UP(N, NEON_NR);
    memset(packed, 0, (size_t)Kp * Np);
    for (int n = 0; n < N; n++) {
        int panel = n / NEON_NR, col = n % NEON_NR;
        for (int k = 0; k < K; k++) {
            size_t off = (size_t)panel * Kp * NEON_NR + (size_t)(k / KB) * KB * NEON_NR + (size_t)col * KB + k % KB;
            packed[off] = w[(size_t)n * K + k];
        }
    }
}

size_t pe_gemm_s8_packed_size(int path, int K, int N) {
    if (path == PE_PATH_DOT) return (size_t)PE_ROUND_UP(K, KB) * PE_ROUND_UP(N, 16);
    if (path == PE_PATH_NEON) return (size_t)PE_ROUND_UP(K, KB) * PE_ROUND_UP(N, NEON_NR);
    return (size_t)K * N;
}

void pe_gemm_s8_pack(int path, const int8_t *w, int K, int N, int8_t *packed) {
    if (path == PE_PATH_DOT) pe_gemm_s8_pack_dot(w, K, N, packed);
    else if (path == PE_PATH_NEON) pack_neon(w, K, N, packed);
    else memcpy(packed, w, (size_t)K * N);
}

#define MUL16(acc, a, b) \
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(b))); \
    acc = vpadalq_s16(acc, vmull_high_s8(a, b))

/* 4 rows x 4 channels, full K; rows[] may repeat a row for an M tail (only mr rows are stored).
 * 16 named accumulators (c<row><channel>): GCC keeps them in registers (an array got spilled). */
#define ROW4(r, a) MUL16(c##r##0, a, b0); MUL16(c##r##1, a, b1); MUL16(c##r##2, a, b2); MUL16(c##r##3, a, b3)
/* one A row live at a time (the empty asm stops GCC hoisting all four): 16 accumulators + 4 B +
 * 1 A + 2 products fit the 32 registers without spills */
#if defined(__aarch64__) && defined(__GNUC__)
#define KEEP_ORDER() __asm__ volatile("" ::: "memory")
#else
#define KEEP_ORDER() ((void)0)
#endif
#define ROWSTEP(r, pa)                   \
    do {                                 \
        KEEP_ORDER();                    \
        int8x16_t a = vld1q_s8(pa);      \
        ROW4(r, a);                      \
    } while (0)
#define STEP16(pa0, pa1, pa2, pa3, p)                                                                  \
    do {                                                                                               \
        int8x16_t b0 = vld1q_s8(p), b1 = vld1q_s8(p + 16), b2 = vld1q_s8(p + 32), b3 = vld1q_s8(p + 48); \
        ROWSTEP(0, pa0); ROWSTEP(1, pa1); ROWSTEP(2, pa2); ROWSTEP(3, pa3);                            \
    } while (0)
#define STORE4(r)                                                                                   \
    if (r < mr) {                                                                                   \
        int32x4_t s = vpaddq_s32(vpaddq_s32(c##r##0, c##r##1), vpaddq_s32(c##r##2, c##r##3));         \
        if (nr == 4) {                                                                              \
            vst1q_s32(c + (size_t)r * ldc, s);                                                      \
        } else {                                                                                    \
            int32_t tmp[4];                                                                         \
            vst1q_s32(tmp, s);                                                                      \
            memcpy(c + (size_t)r * ldc, tmp, sizeof(int32_t) * (size_t)nr);                         \
        }                                                                                           \
    }

static void kernel_neon_4x4(const int8_t *const rows[4], const int8_t *panel, int K, int32_t *c, int ldc, int mr,
                            int nr) {
    int32x4_t z = vdupq_n_s32(0);
    int32x4_t c00 = z, c01 = z, c02 = z, c03 = z, c10 = z, c11 = z, c12 = z, c13 = z;
    int32x4_t c20 = z, c21 = z, c22 = z, c23 = z, c30 = z, c31 = z, c32 = z, c33 = z;
    const int8_t *p = panel, *r0 = rows[0], *r1 = rows[1], *r2 = rows[2], *r3 = rows[3];
    int k = 0;
    for (; k + KB <= K; k += KB, p += KB * NEON_NR) STEP16(r0 + k, r1 + k, r2 + k, r3 + k, p);
    if (k < K) { /* K tail: zero-padded copies of the rows; the packed panel is already padded */
        int8_t buf[4][KB];
        memset(buf, 0, sizeof(buf));
        for (int r = 0; r < 4; r++) memcpy(buf[r], rows[r] + k, (size_t)(K - k));
        STEP16(buf[0], buf[1], buf[2], buf[3], p);
    }
    STORE4(0)
    STORE4(1)
    STORE4(2)
    STORE4(3)
}

static void gemm_neon(const int8_t *a, const int8_t *packed, int M, int K, int N, int32_t *c) {
    int Kp = PE_ROUND_UP(K, KB);
    for (int m = 0; m < M; m += NEON_MR) {
        int mr = M - m < NEON_MR ? M - m : NEON_MR;
        const int8_t *rows[4];
        for (int r = 0; r < 4; r++) rows[r] = a + (size_t)(m + (r < mr ? r : mr - 1)) * K;
        for (int n = 0; n < N; n += NEON_NR) {
            int nr = N - n < NEON_NR ? N - n : NEON_NR;
            kernel_neon_4x4(rows, packed + (size_t)(n / NEON_NR) * Kp * NEON_NR, K, c + (size_t)m * N + n, N, mr, nr);
        }
    }
}

void pe_gemm_s8s32(int path, const int8_t *a, const int8_t *packed, int M, int K, int N, int32_t *c) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        memset(c, 0, sizeof(int32_t) * (size_t)M * N);
        return;
    }
    if (path == PE_PATH_DOT) pe_gemm_s8s32_dot(a, packed, M, K, N, c);
    else if (path == PE_PATH_NEON) gemm_neon(a, packed, M, K, N, c);
    else pe_ref_gemm_s8s32(a, packed, M, K, N, c);
}

void pe_quantize_rows_s8(const float *x, int M, int K, int8_t *q, float *scale) {
    for (int m = 0; m < M; m++) {
        const float *r = x + (size_t)m * K;
        int8_t *o = q + (size_t)m * K;
        float32x4_t vmax = vdupq_n_f32(0.0f);
        int k = 0;
        for (; k + 4 <= K; k += 4) vmax = vmaxq_f32(vmax, vabsq_f32(vld1q_f32(r + k)));
        float amax = vmaxvq_f32(vmax);
        for (; k < K; k++) amax = fmaxf(amax, fabsf(r[k]));
        float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        float32x4_t vinv = vdupq_n_f32(inv), lo = vdupq_n_f32(-127.0f), hi = vdupq_n_f32(127.0f);
        for (k = 0; k + 8 <= K; k += 8) {
            float32x4_t v0 = vminq_f32(vmaxq_f32(vmulq_f32(vld1q_f32(r + k), vinv), lo), hi);
            float32x4_t v1 = vminq_f32(vmaxq_f32(vmulq_f32(vld1q_f32(r + k + 4), vinv), lo), hi);
            int32x4_t i0 = vcvtq_s32_f32(vrndnq_f32(v0)), i1 = vcvtq_s32_f32(vrndnq_f32(v1));
            int16x8_t h = vcombine_s16(vqmovn_s32(i0), vqmovn_s32(i1));
            vst1_s8(o + k, vqmovn_s16(h));
        }
        for (; k < K; k++) o[k] = (int8_t)rintf(fminf(fmaxf(r[k] * inv, -127.0f), 127.0f));
        scale[m] = amax / 127.0f;
    }
}

void pe_dequant_s32_f32(const int32_t *c, int M, int N, const float *a_scale, const float *w_scale,
                        const float *bias, int relu, float *y) {
    float32x4_t zero = vdupq_n_f32(0.0f);
    for (int m = 0; m < M; m++) {
        const int32_t *cr = c + (size_t)m * N;
        float *yr = y + (size_t)m * N;
        float as = a_scale[m];
        float32x4_t vas = vdupq_n_f32(as);
        int n = 0;
        for (; n + 4 <= N; n += 4) {
            float32x4_t s = vmulq_f32(vas, vld1q_f32(w_scale + n));
            float32x4_t v = vmulq_f32(vcvtq_f32_s32(vld1q_s32(cr + n)), s);
            if (bias) v = vaddq_f32(v, vld1q_f32(bias + n));
            if (relu) v = vmaxq_f32(v, zero);
            vst1q_f32(yr + n, v);
        }
        for (; n < N; n++) {
            float v = (float)cr[n] * (as * w_scale[n]);
            if (bias) v = v + bias[n];
            if (relu && !(v > 0.0f)) v = 0.0f;
            yr[n] = v;
        }
    }
}

void pe_requant_s32_s8(const int32_t *c, int M, int N, const float *mult, int8_t *y) {
    float32x4_t lo = vdupq_n_f32(-128.0f), hi = vdupq_n_f32(127.0f);
    for (int m = 0; m < M; m++) {
        const int32_t *cr = c + (size_t)m * N;
        int8_t *yr = y + (size_t)m * N;
        int n = 0;
        for (; n + 8 <= N; n += 8) {
            float32x4_t v0 = vmulq_f32(vcvtq_f32_s32(vld1q_s32(cr + n)), vld1q_f32(mult + n));
            float32x4_t v1 = vmulq_f32(vcvtq_f32_s32(vld1q_s32(cr + n + 4)), vld1q_f32(mult + n + 4));
            v0 = vrndnq_f32(vminq_f32(vmaxq_f32(v0, lo), hi));
            v1 = vrndnq_f32(vminq_f32(vmaxq_f32(v1, lo), hi));
            int16x8_t h = vcombine_s16(vqmovn_s32(vcvtq_s32_f32(v0)), vqmovn_s32(vcvtq_s32_f32(v1)));
            vst1_s8(yr + n, vqmovn_s16(h));
        }
        for (; n < N; n++) yr[n] = (int8_t)rintf(fminf(fmaxf((float)cr[n] * mult[n], -128.0f), 127.0f));
    }
}

void pe_linear_s8(int path, const float *x, int M, int K, const int8_t *packed, int N, const float *w_scale,
                  const float *bias, int relu, float *y, int8_t *scratch_q, int32_t *scratch_c, float *scratch_s) {
    pe_quantize_rows_s8(x, M, K, scratch_q, scratch_s);
    pe_gemm_s8s32(path, scratch_q, packed, M, K, N, scratch_c);
    pe_dequant_s32_f32(scratch_c, M, N, scratch_s, w_scale, bias, relu, y);
}
