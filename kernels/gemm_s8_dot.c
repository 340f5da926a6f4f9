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
#define DOT4(r, a, lane)                                              \
    acc[r][0] = vdotq_laneq_s32(acc[r][0], b.val[0], a, lane);        \
    acc[r][1] = vdotq_laneq_s32(acc[r][1], b.val[1], a, lane);        \
    acc[r][2] = vdotq_laneq_s32(acc[r][2], b.val[2], a, lane);        \
    acc[r][3] = vdotq_laneq_s32(acc[r][3], b.val[3], a, lane)

#define DOT_K16(p, a0, a1, a2, a3)                                                               \
    do {                                                                                         \
        int8x16x4_t b = vld1q_s8_x4(p);                                                          \
        DOT4(0, a0, 0); DOT4(1, a1, 0); DOT4(2, a2, 0); DOT4(3, a3, 0);                          \
        b = vld1q_s8_x4(p + 64);                                                                 \
        DOT4(0, a0, 1); DOT4(1, a1, 1); DOT4(2, a2, 1); DOT4(3, a3, 1);                          \
        b = vld1q_s8_x4(p + 128);                                                                \
        DOT4(0, a0, 2); DOT4(1, a1, 2); DOT4(2, a2, 2); DOT4(3, a3, 2);                          \
        b = vld1q_s8_x4(p + 192);                                                                \
        DOT4(0, a0, 3); DOT4(1, a1, 3); DOT4(2, a2, 3); DOT4(3, a3, 3);                          \
    } while (0)

static void kernel_dot_4x16(const int8_t *const rows[4], const int8_t *panel, int K, int32_t *c, int ldc, int mr,
                            int nr) {
    int32x4_t acc[4][4];
    for (int r = 0; r < 4; r++)
        for (int j = 0; j < 4; j++) acc[r][j] = vdupq_n_s32(0);
    const int8_t *p = panel;
    int k = 0;
    for (; k + KB <= K; k += KB, p += KB * DOT_NR) {
        int8x16_t a0 = vld1q_s8(rows[0] + k), a1 = vld1q_s8(rows[1] + k);
        int8x16_t a2 = vld1q_s8(rows[2] + k), a3 = vld1q_s8(rows[3] + k);
        DOT_K16(p, a0, a1, a2, a3);
    }
    if (k < K) { /* K tail: zero-padded row copies against the zero-padded panel */
        int8_t buf[4][KB];
        memset(buf, 0, sizeof(buf));
        for (int r = 0; r < 4; r++) memcpy(buf[r], rows[r] + k, (size_t)(K - k));
        int8x16_t a0 = vld1q_s8(buf[0]), a1 = vld1q_s8(buf[1]), a2 = vld1q_s8(buf[2]), a3 = vld1q_s8(buf[3]);
        DOT_K16(p, a0, a1, a2, a3);
    }
    for (int r = 0; r < mr; r++) {
        int32_t *cr = c + (size_t)r * ldc;
        if (nr == DOT_NR) {
            for (int j = 0; j < 4; j++) vst1q_s32(cr + 4 * j, acc[r][j]);
        } else {
            int32_t tmp[DOT_NR];
            for (int j = 0; j < 4; j++) vst1q_s32(tmp + 4 * j, acc[r][j]);
            memcpy(cr, tmp, sizeof(int32_t) * (size_t)nr);
        }
    }
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
