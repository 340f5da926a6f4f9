/* C test + bench driver for the kernels, runnable natively, under SIMDe on x86 and under
 * qemu-aarch64 (any -cpu).
 *   test_kernels check [scalar|neon|dot|force-dot]...  every kernel vs its scalar reference over
 *       many shapes and edge values; prints one FNV hash per kernel so builds for different CPUs
 *       can be compared; exit 1 on any mismatch. force-dot runs sdot even without HWCAP_ASIMDDP.
 *   test_kernels bench KERNEL PATH REPS ARGS...         runs one kernel REPS times after setup
 *       (packing included in setup): instruction counts are count(REPS=1) - count(REPS=0).
 *       gemm|linear PATH REPS M K N; fsmn PATH REPS T D KERNEL; cif PATH REPS T D; layernorm PATH REPS M D;
 *       attention PATH REPS T D HEADS (float kernels: PATH scalar = the C reference, else NEON) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "paraedge_kernels.h"

static uint64_t rng = 88172645463325252ull;
static uint32_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 32);
}
static float frand(void) { return (float)(next() % 2000001) / 1000000.0f - 1.0f; }

static uint64_t hashes[9];
static void fnv(int slot, const void *p, size_t n) {
    const unsigned char *b = p;
    uint64_t h = hashes[slot] ? hashes[slot] : 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    hashes[slot] = h;
}
enum { H_GEMM, H_QUANT, H_DEQ, H_REQ, H_FSMN, H_CIF, H_CIFS, H_NORM, H_ATT, H_COUNT };
static const char *hash_names[] = {"gemm",        "quantize",   "dequant",   "requant",  "fsmn",
                                   "cif_offline", "cif_stream", "layernorm", "attention"};

static int failures = 0;
static void fail(const char *what, int a, int b, int c, int d) {
    if (failures++ < 20) printf("FAIL %s %d %d %d %d\n", what, a, b, c, d);
}

/* pattern: 0 random, 1 all -128, 2 all 127, 3 alternating extremes, 4 random with zero rows */
static void fill_s8(int8_t *p, int rows, int cols, int pattern) {
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            int8_t v = (int8_t)(next() & 0xff);
            if (pattern == 1) v = -128;
            else if (pattern == 2) v = 127;
            else if (pattern == 3) v = ((r + c) & 1) ? 127 : -128;
            else if (pattern == 4 && r % 3 == 1) v = 0;
            p[(size_t)r * cols + c] = v;
        }
}

static int check_gemm(const int *paths, int npaths) {
    static const int Ms[] = {1, 2, 3, 4, 5, 7, 15, 16, 17, 33};
    static const int Ks[] = {1, 3, 4, 7, 15, 16, 17, 31, 64, 100, 257};
    static const int Ns[] = {1, 3, 4, 5, 15, 16, 17, 33, 64};
    int cases = 0;
    for (size_t mi = 0; mi < sizeof Ms / sizeof *Ms; mi++)
        for (size_t ki = 0; ki < sizeof Ks / sizeof *Ks; ki++)
            for (size_t ni = 0; ni < sizeof Ns / sizeof *Ns; ni++) {
                int M = Ms[mi], K = Ks[ki], N = Ns[ni], pattern = (int)((mi + ki + ni) % 5);
                int8_t *a = malloc((size_t)M * K), *w = malloc((size_t)N * K);
                int32_t *ref = malloc(sizeof(int32_t) * M * N), *c = malloc(sizeof(int32_t) * M * N);
                fill_s8(a, M, K, pattern);
                fill_s8(w, N, K, (pattern + 2) % 5);
                pe_ref_gemm_s8s32(a, w, M, K, N, ref);
                fnv(H_GEMM, ref, sizeof(int32_t) * M * N);
                for (int i = 0; i < npaths; i++) {
                    int8_t *packed = malloc(pe_gemm_s8_packed_size(paths[i], K, N));
                    pe_gemm_s8_pack(paths[i], w, K, N, packed);
                    memset(c, 0x5a, sizeof(int32_t) * M * N);
                    pe_gemm_s8s32(paths[i], a, packed, M, K, N, c);
                    if (memcmp(c, ref, sizeof(int32_t) * M * N)) fail("gemm", paths[i], M, K, N);
                    free(packed);
                    cases++;
                }
                free(a); free(w); free(ref); free(c);
            }
    return cases;
}

static int check_epilogues(void) {
    int cases = 0;
    static const int shapes[][2] = {{1, 1}, {3, 7}, {4, 8}, {5, 17}, {16, 256}, {33, 100}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int M = shapes[s][0], N = shapes[s][1];
        float *x = malloc(sizeof(float) * M * N), *sc = malloc(sizeof(float) * M), *sr = malloc(sizeof(float) * M);
        int8_t *q = malloc((size_t)M * N), *qr = malloc((size_t)M * N);
        for (int i = 0; i < M * N; i++) x[i] = frand() * (1 + (i % 7)) * 3.0f;
        for (int n = 0; n < N; n++) x[n] = 0.0f; /* an all-zero row */
        if (M > 2) x[2 * N] = 1e-30f;             /* a tiny one */
        pe_quantize_rows_s8(x, M, N, q, sc);
        pe_ref_quantize_rows_s8(x, M, N, qr, sr);
        if (memcmp(q, qr, (size_t)M * N) || memcmp(sc, sr, sizeof(float) * M)) fail("quantize", M, N, 0, 0);
        fnv(H_QUANT, q, (size_t)M * N);
        int32_t *c = malloc(sizeof(int32_t) * M * N);
        float *ws = malloc(sizeof(float) * N), *b = malloc(sizeof(float) * N), *y = malloc(sizeof(float) * M * N),
              *yr = malloc(sizeof(float) * M * N);
        for (int i = 0; i < M * N; i++) c[i] = (int32_t)next() >> (i % 24);
        c[0] = INT32_MIN;
        if (M * N > 1) c[1] = INT32_MAX;
        for (int n = 0; n < N; n++) ws[n] = (frand() + 1.5f) * 1e-3f, b[n] = frand();
        for (int relu = 0; relu < 2; relu++)
            for (int bias = 0; bias < 2; bias++) {
                pe_dequant_s32_f32(c, M, N, sc, ws, bias ? b : NULL, relu, y);
                pe_ref_dequant_s32_f32(c, M, N, sc, ws, bias ? b : NULL, relu, yr);
                if (memcmp(y, yr, sizeof(float) * M * N)) fail("dequant", M, N, relu, bias);
                fnv(H_DEQ, y, sizeof(float) * M * N);
                cases++;
            }
        int8_t *o = malloc((size_t)M * N), *or_ = malloc((size_t)M * N);
        pe_requant_s32_s8(c, M, N, ws, o);
        pe_ref_requant_s32_s8(c, M, N, ws, or_);
        if (memcmp(o, or_, (size_t)M * N)) fail("requant", M, N, 0, 0);
        fnv(H_REQ, o, (size_t)M * N);
        cases += 2;
        free(x); free(sc); free(sr); free(q); free(qr); free(c); free(ws); free(b); free(y); free(yr); free(o); free(or_);
    }
    return cases;
}

static int check_fsmn(void) {
    int cases = 0;
    static const int Ts[] = {1, 2, 5, 15, 40};
    static const int Ds[] = {1, 3, 4, 16, 20, 256};
    static const int kl[][2] = {{11, 5}, {11, 10}, {11, 0}, {3, 1}, {21, 15}};
    for (size_t ti = 0; ti < 5; ti++)
        for (size_t di = 0; di < 6; di++)
            for (size_t ki = 0; ki < 5; ki++)
                for (int H = 0; H <= kl[ki][0] - 1; H += kl[ki][0] - 1) {
                    int T = Ts[ti], D = Ds[di], K = kl[ki][0], left = kl[ki][1];
                    float *x = malloc(sizeof(float) * T * D), *w = malloc(sizeof(float) * K * D);
                    float *hist = H ? malloc(sizeof(float) * H * D) : NULL;
                    float *y = malloc(sizeof(float) * T * D), *yr = malloc(sizeof(float) * T * D);
                    for (int i = 0; i < T * D; i++) x[i] = frand();
                    for (int i = 0; i < K * D; i++) w[i] = frand();
                    for (int i = 0; i < H * D; i++) hist[i] = frand();
                    pe_fsmn_f32(x, T, D, hist, H, w, K, left, y);
                    pe_ref_fsmn_f32(x, T, D, hist, H, w, K, left, yr);
                    if (memcmp(y, yr, sizeof(float) * T * D)) fail("fsmn", T, D, K, H);
                    fnv(H_FSMN, y, sizeof(float) * T * D);
                    free(x); free(w); free(hist); free(y); free(yr);
                    cases++;
                }
    return cases;
}

static int check_cif(void) {
    int cases = 0;
    static const int Ts[] = {1, 2, 7, 30, 100};
    static const int Ds[] = {1, 5, 8, 256};
    for (size_t ti = 0; ti < 5; ti++)
        for (size_t di = 0; di < 4; di++)
            for (int kind = 0; kind < 3; kind++) {
                int T = Ts[ti], D = Ds[di];
                float *h = malloc(sizeof(float) * T * D), *a = malloc(sizeof(float) * T);
                for (int i = 0; i < T * D; i++) h[i] = frand();
                for (int t = 0; t < T; t++) a[t] = kind == 0 ? (frand() + 1.0f) * 0.5f : (kind == 1 ? 0.25f : 0.0f);
                float tail = kind == 2 ? 0.0f : 0.45f;
                int n_out = T + 2;
                float *o = malloc(sizeof(float) * n_out * D), *orf = malloc(sizeof(float) * n_out * D);
                float *s1 = malloc(sizeof(float) * 3 * D), *s2 = malloc(sizeof(float) * 3 * D);
                int f1 = pe_cif_offline_f32(h, a, T, D, tail, n_out, o, s1);
                int f2 = pe_ref_cif_offline_f32(h, a, T, D, tail, n_out, orf, s2);
                if (f1 != f2 || memcmp(o, orf, sizeof(float) * n_out * D)) fail("cif_offline", T, D, kind, f1);
                fnv(H_CIF, o, sizeof(float) * n_out * D);
                /* streaming: three chunks carrying the remainder, the last one final */
                float ca1 = 0, ca2 = 0, *ch1 = calloc(D, sizeof(float)), *ch2 = calloc(D, sizeof(float));
                float *so = malloc(sizeof(float) * (T + 3) * D), *sr = malloc(sizeof(float) * (T + 3) * D);
                for (int chunk = 0; chunk < 3; chunk++) {
                    int g1 = pe_cif_stream_f32(h, a, T, D, 1.0f, chunk == 2, 0.45f, &ca1, ch1, so);
                    int g2 = pe_ref_cif_stream_f32(h, a, T, D, 1.0f, chunk == 2, 0.45f, &ca2, ch2, sr);
                    if (g1 != g2 || memcmp(so, sr, sizeof(float) * g1 * D) || ca1 != ca2 ||
                        memcmp(ch1, ch2, sizeof(float) * D))
                        fail("cif_stream", T, D, kind, chunk);
                    fnv(H_CIFS, so, sizeof(float) * g1 * D);
                    fnv(H_CIFS, ch1, sizeof(float) * D);
                }
                free(h); free(a); free(o); free(orf); free(s1); free(s2); free(ch1); free(ch2); free(so); free(sr);
                cases += 2;
            }
    return cases;
}

static int check_layernorm(void) {
    int cases = 0;
    static const int Ds[] = {1, 3, 4, 7, 64, 256, 1024};
    for (size_t di = 0; di < 7; di++)
        for (int M = 1; M <= 9; M += 4) {
            int D = Ds[di];
            float *x = malloc(sizeof(float) * M * D), *g = malloc(sizeof(float) * D), *b = malloc(sizeof(float) * D);
            float *y = malloc(sizeof(float) * M * D), *yr = malloc(sizeof(float) * M * D);
            for (int i = 0; i < M * D; i++) x[i] = frand() * 4.0f + 1.0f;
            for (int i = 0; i < D; i++) g[i] = frand(), b[i] = frand();
            pe_layernorm_f32(x, M, D, g, b, 1e-12f, y);
            pe_ref_layernorm_f32(x, M, D, g, b, 1e-12f, yr);
            for (int i = 0; i < M * D; i++)
                if (fabsf(y[i] - yr[i]) > 1e-4f * (1.0f + fabsf(yr[i]))) {
                    fail("layernorm", M, D, i, 0);
                    break;
                }
            fnv(H_NORM, y, sizeof(float) * M * D);
            free(x); free(g); free(b); free(y); free(yr);
            cases++;
        }
    return cases;
}

static int check_attention(void) {
    int cases = 0;
    static const int shapes[][4] = {{1, 1, 4, 1}, {3, 5, 8, 2}, {2, 3, 10, 2}, {7, 9, 12, 3}, {15, 15, 256, 4},
                                    {4, 29, 256, 4}, {29, 29, 256, 4}, {100, 100, 64, 1}};
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
        int T1 = shapes[si][0], T2 = shapes[si][1], D = shapes[si][2], H = shapes[si][3], dk = D / H;
        float *q = malloc(sizeof(float) * T1 * D), *k = malloc(sizeof(float) * T2 * D), *v = malloc(sizeof(float) * T2 * D);
        float *y = malloc(sizeof(float) * T1 * D), *yr = malloc(sizeof(float) * T1 * D);
        float *sc = malloc(sizeof(float) * (dk + T2 + 4));
        for (int i = 0; i < T1 * D; i++) q[i] = frand() * 4.0f;
        for (int i = 0; i < T2 * D; i++) k[i] = frand() * 4.0f, v[i] = frand();
        float scale = 1.0f / sqrtf((float)dk);
        pe_attention_f32(q, T1, k, v, T2, D, H, scale, y, sc);
        pe_ref_attention_f32(q, T1, k, v, T2, D, H, scale, yr, sc);
        for (int i = 0; i < T1 * D; i++)
            if (fabsf(y[i] - yr[i]) > 2e-5f * (1.0f + fabsf(yr[i]))) {
                fail("attention", T1, T2, D, H);
                break;
            }
        fnv(H_ATT, y, sizeof(float) * T1 * D);
        free(q); free(k); free(v); free(y); free(yr); free(sc);
        cases++;
    }
    return cases;
}

static int path_id(const char *s) {
    return !strcmp(s, "scalar") ? PE_PATH_SCALAR : !strcmp(s, "neon") ? PE_PATH_NEON : !strcmp(s, "dot") ? PE_PATH_DOT : -1;
}

static int run_check(int argc, char **argv) {
    int paths[4], n = 0, runnable = pe_paths_runnable();
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "force-dot")) paths[n++] = PE_PATH_DOT;
        else if (path_id(argv[i]) >= 0 && (runnable >> path_id(argv[i]) & 1)) paths[n++] = path_id(argv[i]);
        else if (path_id(argv[i]) >= 0) printf("skip %s: not runnable on this CPU\n", argv[i]);
    }
    if (!argc)
        for (int p = 0; p < 3; p++)
            if (runnable >> p & 1) paths[n++] = p;
    printf("build %s; compiled 0x%x runnable 0x%x\n", pe_build_info(), pe_paths_compiled(), runnable);
    printf("ok gemm %d cases\n", check_gemm(paths, n));
    printf("ok epilogues %d cases\n", check_epilogues());
    printf("ok fsmn %d cases\n", check_fsmn());
    printf("ok cif %d cases\n", check_cif());
    printf("ok layernorm %d cases\n", check_layernorm());
    printf("ok attention %d cases\n", check_attention());
    for (int i = 0; i < H_COUNT; i++) printf("hash %s %016llx\n", hash_names[i], (unsigned long long)hashes[i]);
    printf(failures ? "FAILED %d\n" : "ALL OK\n", failures);
    return failures ? 1 : 0;
}

static int run_bench(int argc, char **argv) {
    if (argc < 3) return 2;
    const char *kernel = argv[0];
    int path = path_id(argv[1]), reps = atoi(argv[2]);
    int a0 = argc > 3 ? atoi(argv[3]) : 0, a1 = argc > 4 ? atoi(argv[4]) : 0, a2 = argc > 5 ? atoi(argv[5]) : 0;
    if (!strcmp(kernel, "gemm") || !strcmp(kernel, "linear")) {
        int M = a0, K = a1, N = a2;
        if (path < 0) return 2;
        int8_t *a = malloc((size_t)M * K), *w = malloc((size_t)N * K), *packed = malloc(pe_gemm_s8_packed_size(path, K, N));
        int32_t *c = malloc(sizeof(int32_t) * M * N);
        float *x = malloc(sizeof(float) * M * K), *y = malloc(sizeof(float) * M * N), *ws = malloc(sizeof(float) * N),
              *sc = malloc(sizeof(float) * M);
        fill_s8(a, M, K, 0);
        fill_s8(w, N, K, 0);
        for (int i = 0; i < M * K; i++) x[i] = frand();
        for (int i = 0; i < N; i++) ws[i] = 1e-3f;
        pe_gemm_s8_pack(path, w, K, N, packed);
        for (int r = 0; r < reps; r++) {
            if (kernel[0] == 'g') pe_gemm_s8s32(path, a, packed, M, K, N, c);
            else pe_linear_s8(path, x, M, K, packed, N, ws, ws, 0, y, a, c, sc);
        }
        printf("%d\n", kernel[0] == 'g' ? c[0] : (int)y[0]);
    } else if (!strcmp(kernel, "fsmn")) {
        int T = a0, D = a1, K = a2;
        float *x = malloc(sizeof(float) * T * D), *w = malloc(sizeof(float) * K * D), *y = malloc(sizeof(float) * T * D);
        for (int i = 0; i < T * D; i++) x[i] = frand();
        for (int i = 0; i < K * D; i++) w[i] = frand();
        for (int r = 0; r < reps; r++)
            (path == PE_PATH_SCALAR ? pe_ref_fsmn_f32 : pe_fsmn_f32)(x, T, D, NULL, 0, w, K, K / 2, y);
        printf("%f\n", y[0]);
    } else if (!strcmp(kernel, "cif")) {
        int T = a0, D = a1;
        float *h = malloc(sizeof(float) * T * D), *a = malloc(sizeof(float) * T), *o = malloc(sizeof(float) * (T + 2) * D),
              *s = malloc(sizeof(float) * 3 * D);
        for (int i = 0; i < T * D; i++) h[i] = frand();
        for (int t = 0; t < T; t++) a[t] = (frand() + 1.0f) * 0.25f;
        for (int r = 0; r < reps; r++)
            (path == PE_PATH_SCALAR ? pe_ref_cif_offline_f32 : pe_cif_offline_f32)(h, a, T, D, 0.45f, T + 2, o, s);
        printf("%f\n", o[0]);
    } else if (!strcmp(kernel, "layernorm")) {
        int M = a0, D = a1;
        float *x = malloc(sizeof(float) * M * D), *g = malloc(sizeof(float) * D), *y = malloc(sizeof(float) * M * D);
        for (int i = 0; i < M * D; i++) x[i] = frand();
        for (int i = 0; i < D; i++) g[i] = frand();
        for (int r = 0; r < reps; r++)
            (path == PE_PATH_SCALAR ? pe_ref_layernorm_f32 : pe_layernorm_f32)(x, M, D, g, g, 1e-12f, y);
        printf("%f\n", y[0]);
    } else if (!strcmp(kernel, "attention")) {
        int T = a0, D = a1, H = a2;
        float *q = malloc(sizeof(float) * T * D), *y = malloc(sizeof(float) * T * D), *sc = malloc(sizeof(float) * (D + T + 4));
        for (int i = 0; i < T * D; i++) q[i] = frand();
        for (int r = 0; r < reps; r++)
            (path == PE_PATH_SCALAR ? pe_ref_attention_f32 : pe_attention_f32)(q, T, q, q, T, D, H, 0.125f, y, sc);
        printf("%f\n", y[0]);
    } else {
        return 2;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "check")) return run_check(argc - 2, argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "bench")) {
        int rc = run_bench(argc - 2, argv + 2);
        if (rc == 2) fprintf(stderr, "usage: test_kernels bench gemm|linear|fsmn|cif|layernorm PATH REPS ARGS...\n");
        return rc;
    }
    if (argc >= 2 && !strcmp(argv[1], "info")) {
        printf("%s\ncompiled 0x%x runnable 0x%x\n", pe_build_info(), pe_paths_compiled(), pe_paths_runnable());
        return 0;
    }
    fprintf(stderr, "usage: test_kernels check [paths] | bench ... | info\n");
    return 2;
}
