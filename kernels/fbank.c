/* Kaldi log-mel fbank, frame by frame, in float64: the C twin of edge/asr/frontend.py KaldiFbank,
 * which defines the result. No intrinsics: the FFT and the real split are written in GCC / Clang
 * two-lane float64 vectors, the other loops left to the compiler, for whichever ISA builds it.
 * On the emulated Cortex-A76 that took the kernel from 39.1 to 28.5 M instructions per 10 s of
 * audio (an FFT of two radix-2 stages a pass, 15.7k -> 8.1k instructions a frame; the split two
 * bins a step, 7.2k -> 4.3k), its float32 output unchanged bit for bit; the remaining ~12k a frame
 * are log() (4.4k), the mel sums (in the numpy twin's order), the frame's mean and pre-emphasis.
 *
 * Per frame: DC removal, pre-emphasis 0.97 + window, a real FFT of `padded` points computed as a
 * complex FFT of padded/2 points (even samples real, odd imaginary) and split into the real
 * spectrum, the power of bins 0 .. padded/2 - 1, the triangular mel bands (summed in the numpy
 * twin's order), log(max(e, eps)). The tables (bit reversal, twiddles, mel bands) come from the
 * caller. Only the DC mean and the FFT sum in another order than numpy/pocketfft: float64
 * round-off, far below the float32 output's last bit.
 */
#include "paraedge_kernels.h"

#include <math.h>

/* two float64 lanes (GCC / Clang vector types: NEON on aarch64, SSE2 on x86); every operation is
 * lane by lane, so a vector loop computes exactly what its scalar loop would */
typedef double v2d __attribute__((vector_size(16)));

static inline v2d ld2(const double *p) {
    v2d v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
}

static inline void st2(double *p, v2d v) { __builtin_memcpy(p, &v, sizeof v); }

static inline void butterfly2(v2d *ar, v2d *ai, v2d *cr, v2d *ci, v2d wr, v2d wi) {
    /* (a, c) <- (a + w c, a - w c) at two points */
    const v2d br = *cr * wr - *ci * wi;
    const v2d bi = *cr * wi + *ci * wr;
    *cr = *ar - br;
    *ci = *ai - bi;
    *ar += br;
    *ai += bi;
}

static inline v2d swap2(v2d v) { return (v2d){v[1], v[0]}; }

static void fft_complex(double *restrict re, double *restrict im, int m, const double *restrict tw_re,
                        const double *restrict tw_im) {
    /* radix-2 decimation in time, inputs already in bit-reversed order; stage `half` reads its
     * twiddles exp(-2 pi i j / (2 half)), j < half, at tw + half - 1. Two stages at a time: the
     * four points j, j + half, j + 2 half, j + 3 half of a 4 half block meet only each other in
     * stages half and 2 half, so they are loaded once for both (the same operations in the same
     * order per point as one stage at a time: the same result, half the loads and stores). */
    int half = 1;
    if (m >= 4) { /* stages 1 and 2: twiddle 1, then tw[1] and tw[2] */
        for (int a = 0; a < m; a += 4) {
            double r0 = re[a], i0 = im[a], r1 = re[a + 1], i1 = im[a + 1];
            double r2 = re[a + 2], i2 = im[a + 2], r3 = re[a + 3], i3 = im[a + 3];
            const double s0 = r0 + r1, t0 = i0 + i1, s1 = r0 - r1, t1 = i0 - i1;
            const double s2 = r2 + r3, t2 = i2 + i3, s3 = r2 - r3, t3 = i2 - i3;
            /* stage 2: (0, 2) and (1, 3), twiddles tw[1] and tw[2], multiplied as any other (the
             * table's cos(pi / 2) is not 0) */
            double br = s2 * tw_re[1] - t2 * tw_im[1], bi = s2 * tw_im[1] + t2 * tw_re[1];
            re[a + 2] = s0 - br; im[a + 2] = t0 - bi; re[a] = s0 + br; im[a] = t0 + bi;
            br = s3 * tw_re[2] - t3 * tw_im[2]; bi = s3 * tw_im[2] + t3 * tw_re[2];
            re[a + 3] = s1 - br; im[a + 3] = t1 - bi; re[a + 1] = s1 + br; im[a + 1] = t1 + bi;
        }
        half = 4;
    } else if (m == 2) {
        const double br = re[1], bi = im[1];
        re[1] = re[0] - br; im[1] = im[0] - bi; re[0] += br; im[0] += bi;
        return;
    }
    for (; 2 * half < m; half <<= 2) { /* stages half and 2 half */
        const double *restrict w1r = tw_re + half - 1, *restrict w1i = tw_im + half - 1;
        const double *restrict w2r = tw_re + 2 * half - 1, *restrict w2i = tw_im + 2 * half - 1;
        for (int start = 0; start < m; start += 4 * half) {
            double *restrict r0 = re + start, *restrict i0 = im + start;
            double *restrict r1 = r0 + half, *restrict i1 = i0 + half;
            double *restrict r2 = r1 + half, *restrict i2 = i1 + half;
            double *restrict r3 = r2 + half, *restrict i3 = i2 + half;
            for (int j = 0; j < half; j += 2) { /* half >= 4: two points a vector */
                v2d ar = ld2(r0 + j), ai = ld2(i0 + j), br = ld2(r1 + j), bi = ld2(i1 + j);
                v2d cr = ld2(r2 + j), ci = ld2(i2 + j), dr = ld2(r3 + j), di = ld2(i3 + j);
                const v2d w1re = ld2(w1r + j), w1im = ld2(w1i + j);
                butterfly2(&ar, &ai, &br, &bi, w1re, w1im);
                butterfly2(&cr, &ci, &dr, &di, w1re, w1im);
                butterfly2(&ar, &ai, &cr, &ci, ld2(w2r + j), ld2(w2i + j));
                butterfly2(&br, &bi, &dr, &di, ld2(w2r + j + half), ld2(w2i + j + half));
                st2(r0 + j, ar); st2(i0 + j, ai); st2(r1 + j, br); st2(i1 + j, bi);
                st2(r2 + j, cr); st2(i2 + j, ci); st2(r3 + j, dr); st2(i3 + j, di);
            }
        }
    }
    if (half < m) { /* an odd number of stages: the last one alone */
        for (int j = 0; j < half; j += 2) {
            v2d ar = ld2(re + j), ai = ld2(im + j), cr = ld2(re + j + half), ci = ld2(im + j + half);
            butterfly2(&ar, &ai, &cr, &ci, ld2(tw_re + half - 1 + j), ld2(tw_im + half - 1 + j));
            st2(re + j, ar); st2(im + j, ai); st2(re + j + half, cr); st2(im + j + half, ci);
        }
    }
}

static inline v2d split_power2(v2d zr, v2d zi, v2d cr, v2d ci, v2d sr, v2d si) {
    /* |X|^2 of two bins: Z = (zr, zi), its mirror Z[m-k] = (cr, ci), twiddle (sr, si) */
    const v2d half = {0.5, 0.5}, mhalf = {-0.5, -0.5};
    const v2d er = half * (zr + cr), ei = half * (zi - ci);
    const v2d orr = half * (zi + ci), oi = mhalf * (zr - cr);
    const v2d xr = er + orr * sr - oi * si;
    const v2d xi = ei + orr * si + oi * sr;
    return xr * xr + xi * xi;
}

int pe_fbank_f64(const float *restrict samples, int n_samples, int length, int shift, int padded,
                 const double *restrict window, const int *restrict bitrev, const double *restrict tw_re,
                 const double *restrict tw_im, const double *restrict split_re, const double *restrict split_im,
                 int n_mels, const int *restrict band_start, const int *restrict band_len,
                 const double *restrict band_w, double eps, double *restrict scratch, float *restrict out) {
    if (length < 2 || shift < 1 || padded < 4 || (padded & (padded - 1)) || length > padded || n_samples < length)
        return 0;
    const int frames = 1 + (n_samples - length) / shift;
    const int m = padded / 2;
    double *restrict buf = scratch;      /* padded: the windowed frame */
    double *restrict re = buf + padded;  /* m: the complex FFT */
    double *restrict im = re + m;
    double *restrict power = im + m;     /* m: bins 0 .. m-1 */
    const double preemph = 0.97;
    for (int f = 0; f < frames; f++) {
        const float *restrict x = samples + (size_t)f * shift;
        double mean = 0.0;
        for (int i = 0; i < length; i++) mean += (double)x[i];
        mean /= length;
        buf[0] = ((double)x[0] - mean) * (1.0 - preemph) * window[0];
        for (int i = 1; i < length; i++)
            buf[i] = (((double)x[i] - mean) - preemph * ((double)x[i - 1] - mean)) * window[i];
        for (int i = length; i < padded; i++) buf[i] = 0.0;
        for (int k = 0; k < m; k++) {
            re[bitrev[k]] = buf[2 * k];
            im[bitrev[k]] = buf[2 * k + 1];
        }
        fft_complex(re, im, m, tw_re, tw_im);
        /* X[k] = (Z[k] + conj Z[m-k]) / 2 - i/2 exp(-2 pi i k / padded) (Z[k] - conj Z[m-k]); bins k
         * and m - k from the same pair */
        for (int k = 1; k + 1 < m; k += 2) { /* bins k, k + 1 and their mirrors m - k, m - k - 1 */
            const v2d cr = swap2(ld2(re + m - k - 1)), ci = swap2(ld2(im + m - k - 1));
            st2(power + k, split_power2(ld2(re + k), ld2(im + k), cr, ci, ld2(split_re + k), ld2(split_im + k)));
        }
        { /* the two bins left (m is even): 0, its own mirror, and m - 1, mirrored by 1 */
            const v2d two = split_power2((v2d){re[0], re[m - 1]}, (v2d){im[0], im[m - 1]}, (v2d){re[0], re[1]},
                                         (v2d){im[0], im[1]}, (v2d){split_re[0], split_re[m - 1]},
                                         (v2d){split_im[0], split_im[m - 1]});
            power[0] = two[0];
            power[m - 1] = two[1];
        }
        /* each band: its bins in order, as the numpy twin sums them (its zero-weight padding adds
         * exact zeros) */
        float *restrict o = out + (size_t)f * n_mels;
        const double *restrict w = band_w;
        for (int b = 0; b < n_mels; b++) {
            const double *restrict p = power + band_start[b];
            double e = 0.0;
            for (int i = 0; i < band_len[b]; i++) e += p[i] * w[i];
            w += band_len[b];
            o[b] = (float)log(e > eps ? e : eps);
        }
    }
    return frames;
}
