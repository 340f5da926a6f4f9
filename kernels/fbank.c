/* Kaldi log-mel fbank, frame by frame, in float64: the C twin of edge/asr/frontend.py KaldiFbank,
 * which defines the result. Plain C (no intrinsics): the compiler vectorises the float64 loops
 * for whichever ISA builds it.
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

static void fft_complex(double *restrict re, double *restrict im, int m, const double *restrict tw_re,
                        const double *restrict tw_im) {
    /* radix-2 decimation in time, inputs already in bit-reversed order; stage `half` reads its
     * twiddles exp(-2 pi i j / (2 half)), j < half, at tw + half - 1 (contiguous: the j loop
     * vectorises). The first stage's twiddle is 1. */
    for (int a = 0; a < m; a += 2) {
        const double br = re[a + 1], bi = im[a + 1];
        re[a + 1] = re[a] - br;
        im[a + 1] = im[a] - bi;
        re[a] += br;
        im[a] += bi;
    }
    for (int half = 2; half < m; half <<= 1) {
        const double *restrict wr = tw_re + half - 1, *restrict wi = tw_im + half - 1;
        for (int start = 0; start < m; start += 2 * half) {
            double *restrict ar = re + start, *restrict ai = im + start;
            double *restrict cr = re + start + half, *restrict ci = im + start + half;
            for (int j = 0; j < half; j++) {
                const double br = cr[j] * wr[j] - ci[j] * wi[j];
                const double bi = cr[j] * wi[j] + ci[j] * wr[j];
                cr[j] = ar[j] - br;
                ci[j] = ai[j] - bi;
                ar[j] += br;
                ai[j] += bi;
            }
        }
    }
}

static inline double split_power(double zr, double zi, double cr, double ci, double sr, double si) {
    /* |X|^2 for Z = (zr, zi) and its mirror Z[m-k] = (cr, ci), twiddle (sr, si) */
    const double er = 0.5 * (zr + cr), ei = 0.5 * (zi - ci);
    const double orr = 0.5 * (zi + ci), oi = -0.5 * (zr - cr);
    const double xr = er + orr * sr - oi * si;
    const double xi = ei + orr * si + oi * sr;
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
        power[0] = split_power(re[0], im[0], re[0], im[0], split_re[0], split_im[0]);
        for (int k = 1; k <= m / 2; k++) {
            const int r = m - k;
            power[k] = split_power(re[k], im[k], re[r], im[r], split_re[k], split_im[k]);
            power[r] = split_power(re[r], im[r], re[k], im[k], split_re[r], split_im[r]);
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
