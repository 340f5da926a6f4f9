/* One place that decides where NEON comes from: the real arm_neon.h on aarch64, SIMDe's portable
 * implementation elsewhere (x86 CI and developer machines run the same intrinsics code). */
#ifndef PE_NEON_H
#define PE_NEON_H
#if defined(__aarch64__)
#include <arm_neon.h>
#define PE_NATIVE_NEON 1
#else
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/arm/neon.h>
#define PE_NATIVE_NEON 0
#endif
#include <math.h>

#include "paraedge_kernels.h"

/* acc + b * c, fused everywhere: the aarch64 instruction, x86 FMA through SIMDe, else libm's
 * correctly rounded fmaf per lane; so SIMDe builds equal aarch64 bit for bit with or without -mfma */
static inline float32x4_t pe_fmaq(float32x4_t acc, float32x4_t b, float32x4_t c) {
#if PE_NATIVE_NEON || defined(__FMA__)
    return vfmaq_f32(acc, b, c);
#else
    float a_[4], b_[4], c_[4];
    vst1q_f32(a_, acc);
    vst1q_f32(b_, b);
    vst1q_f32(c_, c);
    for (int i = 0; i < 4; i++) a_[i] = fmaf(b_[i], c_[i], a_[i]);
    return vld1q_f32(a_);
#endif
}

/* lanes folded pairwise (vpadd), the order aarch64 and SIMDe share (SIMDe's vaddvq sums in order) */
static inline float pe_hsum(float32x4_t v) {
    float32x2_t s = vpadd_f32(vget_low_f32(v), vget_high_f32(v));
    return vget_lane_f32(vpadd_f32(s, s), 0);
}

#define PE_ROUND_UP(x, m) ((((x) + (m)-1) / (m)) * (m))

/* internal entry points of the two vector GEMM paths (gemm_s8.c dispatches) */
void pe_gemm_s8_pack_dot(const int8_t *w, int K, int N, int8_t *packed);
void pe_gemm_s8s32_dot(const int8_t *a, const int8_t *packed, int M, int K, int N, int32_t *c);
int pe_dot_compiled(void);
#endif
