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
#include "paraedge_kernels.h"

#define PE_ROUND_UP(x, m) ((((x) + (m)-1) / (m)) * (m))

/* internal entry points of the two vector GEMM paths (gemm_s8.c dispatches) */
void pe_gemm_s8_pack_dot(const int8_t *w, int K, int N, int8_t *packed);
void pe_gemm_s8s32_dot(const int8_t *a, const int8_t *packed, int M, int K, int N, int32_t *c);
int pe_dot_compiled(void);
#endif
