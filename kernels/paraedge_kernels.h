/* ParaEdge NEON kernels: the hot spots of an INT8 Paraformer on ARM, callable from C and (via cffi)
 * from Python. Every kernel has a scalar twin in ref_scalar.c (pe_ref_*) that defines its result.
 *
 * Conventions: row-major, batch 1, [time, dim]. Integer results are exact. Float kernels use no
 * fused multiply-add (built with -ffp-contract=off), so FSMN and CIF match numpy bit for bit;
 * layernorm differs from numpy only by summation order.
 *
 * The block between cdef-begin/cdef-end is fed verbatim to cffi: keep it free of preprocessor lines.
 */
#ifndef PARAEDGE_KERNELS_H
#define PARAEDGE_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* cdef-begin */
/* GEMM paths. A path's packed weight layout is only valid for that path. */
enum { PE_PATH_SCALAR = 0, PE_PATH_NEON = 1, PE_PATH_DOT = 2 };

/* bit i set: path i is compiled into this build (dot needs an ARMv8.2 compiler or SIMDe) */
int pe_paths_compiled(void);
/* bit i set: path i can run on this CPU (dot: HWCAP_ASIMDDP on aarch64; always under SIMDe) */
int pe_paths_runnable(void);
/* "aarch64 native NEON" or "x86_64 SIMDe emulation", plus compiler */
const char *pe_build_info(void);

/* int8 x int8 -> int32: c[m][n] = sum_k a[m][k] * w[n][k]; w is [N, K] (one row per output
 * channel, torch's Linear layout). Pack once at load time, then multiply many times. */
size_t pe_gemm_s8_packed_size(int path, int K, int N);
void pe_gemm_s8_pack(int path, const int8_t *w, int K, int N, int8_t *packed);
void pe_gemm_s8s32(int path, const int8_t *a, const int8_t *packed, int M, int K, int N, int32_t *c);

/* dynamic symmetric per-row activation quantization: scale[m] = max|x[m]| / 127,
 * q = round-half-even(x * (127 / max|x[m]|)); an all-zero row gets scale 0 and q 0 */
void pe_quantize_rows_s8(const float *x, int M, int K, int8_t *q, float *scale);
/* dequant epilogue: y = (float)c * (a_scale[m] * w_scale[n]) + bias[n] (bias may be NULL), relu optional */
void pe_dequant_s32_f32(const int32_t *c, int M, int N, const float *a_scale, const float *w_scale,
                        const float *bias, int relu, float *y);
/* requant epilogue: y = saturate_s8(round-half-even((float)c * mult[n])) (per output channel) */
void pe_requant_s32_s8(const int32_t *c, int M, int N, const float *mult, int8_t *y);
/* the whole INT8 Linear: quantize rows of x, GEMM, dequant (+bias, +relu). scratch_q: M*K bytes,
 * scratch_c: M*N int32, scratch_s: M floats */
void pe_linear_s8(int path, const float *x, int M, int K, const int8_t *packed, int N, const float *w_scale,
                  const float *bias, int relu, float *y, int8_t *scratch_q, int32_t *scratch_c, float *scratch_s);

/* FSMN memory (SAN-M): y[t] = x[t] + sum_j w[j] * s(t + j - left), j < kernel, where s(i) = x[i]
 * for 0 <= i < T, hist[H + i] for -H <= i < 0 (the streaming cache: the last H inputs of the
 * previous call), 0 elsewhere. w is [kernel, D]. Encoder: hist NULL, left = (k-1)/2 + shift. */
void pe_fsmn_f32(const float *x, int T, int D, const float *hist, int H, const float *w, int kernel, int left,
                 float *y);

/* CIF offline (CifPredictorV2 + cif_v1): fires where the float64 prefix sum of alphas crosses an
 * integer. When tail > 0 a zero frame with alpha `tail` is appended. n_out rows are written (the
 * caller computes the token count from the float32 alpha sum, as the reference does); rows past
 * the fired tokens are zero. scratch: 3 * D floats. Returns the number of fired tokens. */
int pe_cif_offline_f32(const float *hidden, const float *alphas, int T, int D, float tail, int n_out, float *out,
                       float *scratch);
/* CIF streaming step (CifPredictorV2.forward_chunk): carry_alpha / carry_hidden[D] are the unfired
 * remainder, updated in place; final appends the tail. out: T + 3 rows (scratch past the fired ones);
 * returns rows fired. */
int pe_cif_stream_f32(const float *hidden, const float *alphas, int T, int D, float threshold, int final,
                      float tail, float *carry_alpha, float *carry_hidden, float *out);

/* LayerNorm over the last axis (biased variance), y = (x - mean) / sqrt(var + eps) * gamma + beta */
void pe_layernorm_f32(const float *x, int M, int D, const float *gamma, const float *beta, float eps, float *y);

/* Attention without mask for short sequences, all heads in one call (no [T1, T2] matrices in
 * Python): y = softmax((q * scale) k^T) v per head, heads split along D. q [T1, D], k/v [T2, D],
 * scale = 1/sqrt(D / heads). scratch: D / heads + T2 + 4 floats. exp is a polynomial (|rel err|
 * < 3e-7); matches numpy's attention to float32 rounding, not bit for bit. */
void pe_attention_f32(const float *q, int T1, const float *k, const float *v, int T2, int D, int heads, float scale,
                      float *y, float *scratch);

/* Kaldi log-mel fbank (fbank.c), float64 inside, of the frames of `samples` (int16 range): frame f
 * starts at f * shift, `length` samples, zero-padded to `padded` (a power of 2) for the FFT.
 * Tables from the caller: window [length], bitrev [padded/2] (bit reversal of the padded/2-point
 * complex FFT), tw [padded/2 - 1]: stage `half` (2, 4, ..) at tw + half - 1, exp(-2 pi i j /
 * (2 half)) for j < half; split [padded/2] = exp(-2 pi i k / padded); mel band b covers bins
 * band_start[b] .. + band_len[b], its weights consecutive in band_w. out [frames, n_mels];
 * scratch: 2.5 * padded doubles. Returns the number of frames (0 on bad sizes). Its result is
 * defined by edge/asr/frontend.py KaldiFbank (numpy), not by a scalar twin. */
int pe_fbank_f64(const float *samples, int n_samples, int length, int shift, int padded, const double *window,
                 const int *bitrev, const double *tw_re, const double *tw_im, const double *split_re,
                 const double *split_im, int n_mels, const int *band_start, const int *band_len,
                 const double *band_w, double eps, double *scratch, float *out);

/* scalar references (ref_scalar.c): the definition of each kernel's result */
void pe_ref_gemm_s8s32(const int8_t *a, const int8_t *w, int M, int K, int N, int32_t *c);
void pe_ref_quantize_rows_s8(const float *x, int M, int K, int8_t *q, float *scale);
void pe_ref_dequant_s32_f32(const int32_t *c, int M, int N, const float *a_scale, const float *w_scale,
                            const float *bias, int relu, float *y);
void pe_ref_requant_s32_s8(const int32_t *c, int M, int N, const float *mult, int8_t *y);
void pe_ref_fsmn_f32(const float *x, int T, int D, const float *hist, int H, const float *w, int kernel, int left,
                     float *y);
int pe_ref_cif_offline_f32(const float *hidden, const float *alphas, int T, int D, float tail, int n_out,
                           float *out, float *scratch);
int pe_ref_cif_stream_f32(const float *hidden, const float *alphas, int T, int D, float threshold, int final,
                          float tail, float *carry_alpha, float *carry_hidden, float *out);
void pe_ref_attention_f32(const float *q, int T1, const float *k, const float *v, int T2, int D, int heads,
                          float scale, float *y, float *scratch);
void pe_ref_layernorm_f32(const float *x, int M, int D, const float *gamma, const float *beta, float eps,
                          float *y);
/* cdef-end */

#ifdef __cplusplus
}
#endif
#endif
