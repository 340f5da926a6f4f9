/* INT8 GEMM for ARMv8.2 dot product (sdot: Cortex-A55/A76/A78, Orin, Snapdragon). Built into every
 * aarch64 binary (target pragma) and picked at run time only when HWCAP_ASIMDDP says the CPU has
 * it; a dotprod instruction on a Cortex-A72 is SIGILL.
 *
 * Layout (packed once at load time): panels of 16 output channels; inside a panel, for each group
 * of 4 k: [channel 0..15][4 bytes] (64 bytes), K zero-padded to a multiple of 16. The 4x16
 * micro-kernel keeps 16 int32x4 accumulators; per 16 k it loads 4 A rows and 4 x 64 B bytes and
 * issues 64 sdot-by-lane (1024 multiply-adds). */
#if defined(__aarch64__) && !defined(__ARM_FEATURE_DOTPROD) && !defined(PE_NO_DOTPROD) && defined(__GNUC__) && \
    !defined(__clang__)
#pragma GCC target("arch=armv8.2-a+dotprod")
#define PE_DOT_BY_PRAGMA 1
#endif
#include <string.h>

#include "pe_neon.h"

#if !defined(__aarch64__) || defined(__ARM_FEATURE_DOTPROD) || defined(PE_DOT_BY_PRAGMA)
#define PE_HAVE_DOT 1
#else
#define PE_HAVE_DOT 0
#endif

#define DOT_NR 16
#define DOT_MR 4
#define KB 16

int pe_dot_compiled(void) { return PE_HAVE_DOT; }

void pe_gemm_s8_pack_dot(const int8_t *w, int K, int N, int8_t *packed) {
    int Kp = PE_ROUND_UP(K, KB), Np = PE_ROUND_UP(N, DOT_NR);
    memset(packed, 0, (size_t)Kp * Np);
    for (int n = 0; n < N; n++) {
        int panel = n / DOT_NR, col = n % DOT_NR;
        for (int k = 0; k < K; k++)
            packed[(size_t)panel * Kp * DOT_NR + (size_t)(k / 4) * 4 * DOT_NR + (size_t)col * 4 + k % 4] =
                w[(size_t)n * K + k];
    }
}

#if PE_HAVE_DOT
/* 16 named accumulators (c<row><col-group>), not an array: GCC then keeps them in registers
 * instead of writing them back to the stack every iteration (3x fewer instructions per sdot) */
#define DOT4(r, a, lane)                                  \
    c##r##0 = vdotq_laneq_s32(c##r##0, b.val[0], a, lane); \
    c##r##1 = vdotq_laneq_s32(c##r##1, b.val[1], a, lane); \
    c##r##2 = vdotq_laneq_s32(c##r##2, b.val[2], a, lane); \
    c##r##3 = vdotq_laneq_s32(c##r##3, b.val[3], a, lane)

/* the empty asm keeps GCC from hoisting all 16 B vectors of a K16 step at once: with the 16
 * accumulators that is 33 live registers and a spill per step */
#if defined(__aarch64__) && defined(__GNUC__)
#define KEEP_ORDER() __asm__ volatile("" ::: "memory")
#else
#define KEEP_ORDER() ((void)0)
#endif
#define DOT_KB(p, lane)                                                  \
    do {                                                                 \
        KEEP_ORDER();                                                    \
        int8x16x4_t b = vld1q_s8_x4(p);                                  \
        DOT4(0, a0, lane); DOT4(1, a1, lane); DOT4(2, a2, lane); DOT4(3, a3, lane); \
    } while (0)

#define DOT_K16(p) DOT_KB(p, 0); DOT_KB(p + 64, 1); DOT_KB(p + 128, 2); DOT_KB(p + 192, 3)

#define STORE_ROW(r)                                                                   \
    if (r < mr) {                                                                      \
        int32_t *cr = c + (size_t)r * ldc;                                             \
        if (nr == DOT_NR) {                                                            \
            vst1q_s32(cr, c##r##0); vst1q_s32(cr + 4, c##r##1);                        \
            vst1q_s32(cr + 8, c##r##2); vst1q_s32(cr + 12, c##r##3);                   \
        } else {                                                                       \
            int32_t tmp[DOT_NR];                                                       \
            vst1q_s32(tmp, c##r##0); vst1q_s32(tmp + 4, c##r##1);                      \
            vst1q_s32(tmp + 8, c##r##2); vst1q_s32(tmp + 12, c##r##3);                 \
            memcpy(cr, tmp, sizeof(int32_t) * (size_t)nr);                             \
        }                                                                              \
    }

static void kernel_dot_4x16(const int8_t *const rows[4], const int8_t *panel, int K, int32_t *c, int ldc, int mr,
                            int nr) {
    int32x4_t z = vdupq_n_s32(0);
    int32x4_t c00 = z, c01 = z, c02 = z, c03 = z, c10 = z, c11 = z, c12 = z, c13 = z;
    int32x4_t c20 = z, c21 = z, c22 = z, c23 = z, c30 = z, c31 = z, c32 = z, c33 = z;
    const int8_t *p = panel, *r0 = rows[0], *r1 = rows[1], *r2 = rows[2], *r3 = rows[3];
    int k = 0;
    for (; k + KB <= K; k += KB, p += KB * DOT_NR) {
        int8x16_t a0 = vld1q_s8(r0 + k), a1 = vld1q_s8(r1 + k), a2 = vld1q_s8(r2 + k), a3 = vld1q_s8(r3 + k);
        DOT_K16(p);
    }
    if (k < K) { /* K tail: zero-padded row copies against the zero-padded panel */
        int8_t buf[4][KB];
        memset(buf, 0, sizeof(buf));
        for (int r = 0; r < 4; r++) memcpy(buf[r], rows[r] + k, (size_t)(K - k));
        int8x16_t a0 = vld1q_s8(buf[0]), a1 = vld1q_s8(buf[1]), a2 = vld1q_s8(buf[2]), a3 = vld1q_s8(buf[3]);
        DOT_K16(p);
    }
    STORE_ROW(0)
    STORE_ROW(1)
    STORE_ROW(2)
    STORE_ROW(3)
}

void pe_gemm_s8s32_dot(const int8_t *a, const int8_t *packed, int M, int K, int N, int32_t *c) {
    int Kp = PE_ROUND_UP(K, KB);
    for (int m = 0; m < M; m += DOT_MR) {
        int mr = M - m < DOT_MR ? M - m : DOT_MR;
        const int8_t *rows[4];
        for (int r = 0; r < 4; r++) rows[r] = a + (size_t)(m + (r < mr ? r : mr - 1)) * K;
        for (int n = 0; n < N; n += DOT_NR) {
            int nr = N - n < DOT_NR ? N - n : DOT_NR;
            kernel_dot_4x16(rows, packed + (size_t)(n / DOT_NR) * Kp * DOT_NR, K, c + (size_t)m * N + n, N, mr, nr);
        }
    }
}
#else
/* Not compiled in (a non-GCC compiler without +dotprod): callers check pe_paths_compiled(); stay
 * correct anyway by reading the dot layout with scalar code. */
void pe_gemm_s8s32_dot(const int8_t *a, const int8_t *packed, int M, int K, int N, int32_t *c) {
    int Kp = PE_ROUND_UP(K, KB);
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            const int8_t *p = packed + (size_t)(n / DOT_NR) * Kp * DOT_NR + (size_t)(n % DOT_NR) * 4;
            int32_t acc = 0;
            for (int k = 0; k < K; k++) acc += (int32_t)a[(size_t)m * K + k] * p[(size_t)(k / 4) * 4 * DOT_NR + k % 4];
            c[(size_t)m * N + n] = acc;
        }
}
#endif
