/* Small C kernels for pavlov's CPU decode step and lean backward (see native.py, which
   compiles this file on first use and declares each function's ctypes signature). */
#include <immintrin.h>
#include "simd.h"
#include <math.h>
#include <stdint.h>
#include <string.h>

/* exp8 with exp(x) = 0 below its clamp (x < -87.3, -inf included): a token whose logit is -inf
   keeps probability exactly 0. */
static inline __m256 exp8z(__m256 x) {
    __m256 keep = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3f), _CMP_GE_OQ);
    return _mm256_and_ps(exp8(x), keep);
}

static inline float exp1z(float x) { return x < -87.3f ? 0.0f : expf(x); }

/* One inverse-CDF draw per row of softmax(z), z (B, V) row-major: token[b] is the first v with
   e_0 + ... + e_v > u[b] * (e_0 + ... + e_{V-1}), e = exp(z - max z) (what softmax normalises),
   so a token of probability 0 is never drawn; logp[b] = z[token] - max - log(sum e). Sums run
   over blocks of 64 (float32 lanes, block totals in double), then within the crossing block in
   double. work: B * ceil(V / 64) doubles. Rows are split over the threads. */
void sample_rows(const float *z, const double *u, int B, int V, int64_t *token, float *logp,
                 double *work, int threads) {
    int nb = (V + 63) / 64;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int b = 0; b < B; b++) {
        const float *zb = z + (int64_t)b * V;
        double *blocks = work + (int64_t)b * nb;
        __m256 mv = _mm256_set1_ps(-INFINITY);
        int v = 0;
        for (; v + 8 <= V; v += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(zb + v));
        float lanes[8], top = -INFINITY;
        _mm256_storeu_ps(lanes, mv);
        for (int i = 0; i < 8; i++) top = lanes[i] > top ? lanes[i] : top;
        for (; v < V; v++) top = zb[v] > top ? zb[v] : top;
        __m256 tv = _mm256_set1_ps(top);
        double total = 0.0;
        for (int k = 0; k < nb; k++) {
            int lo = k * 64, hi = lo + 64 < V ? lo + 64 : V;
            float s = 0.0f;
            if (hi - lo == 64) {
                __m256 acc = _mm256_setzero_ps();
                for (int j = lo; j < hi; j += 8)
                    acc = _mm256_add_ps(acc, exp8z(_mm256_sub_ps(_mm256_loadu_ps(zb + j), tv)));
                s = hsum(acc);
            } else {
                for (int j = lo; j < hi; j++) s += exp1z(zb[j] - top);
            }
            blocks[k] = s;
            total += s;
        }
        double target = u[b] * total, run = 0.0;
        int pick = -1;
        for (int k = 0; k < nb && pick < 0; k++) {
            if (run + blocks[k] <= target && k + 1 < nb) { run += blocks[k]; continue; }
            int lo = k * 64, hi = lo + 64 < V ? lo + 64 : V;
            float e[64];
            if (hi - lo == 64) {
                for (int j = 0; j < 64; j += 8)
                    _mm256_storeu_ps(e + j, exp8z(_mm256_sub_ps(_mm256_loadu_ps(zb + lo + j), tv)));
            } else {
                for (int j = 0; j < hi - lo; j++) e[j] = exp1z(zb[lo + j] - top);
            }
            int last = -1;
            for (int j = 0; j < hi - lo; j++) {
                if (e[j] <= 0.0f) continue;
                last = lo + j;
                run += e[j];
                if (run > target) { pick = lo + j; break; }
            }
            /* round-off between the block total and its sequential sum: stay in this block */
            if (pick < 0 && last >= 0) pick = last;
        }
        if (pick < 0)  /* u * total at the very top: the last token of positive probability */
            for (int j = V - 1; j >= 0 && pick < 0; j--)
                if (exp1z(zb[j] - top) > 0.0f) pick = j;
        if (pick < 0) pick = 0;  /* every logit -inf or NaN: no distribution to draw from */
        token[b] = pick;
        logp[b] = (float)((double)zb[pick] - (double)top - log(total));
    }
}

/* The elementwise part of the SwiGLU MLP's backward, h = silu(g) * u with gradient gh of h:
   p = silu(g) * u (the down projection's input, for its weight gradient), gu = gh silu(g) and
   gg = gh u silu'(g), where silu'(g) = s (1 + g (1 - s)) and s = sigmoid(g); n floats each, one
   pass. gg may be gh itself (each element is read before it is written). */
void swiglu_backward(const float *g, const float *u, const float *gh, float *p, float *gu,
                     float *gg, int64_t n, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int t = 0; t < threads; t++) {
        int64_t lo = n * t / threads / 8 * 8;
        int64_t hi = t + 1 == threads ? n : n * (t + 1) / threads / 8 * 8;
        int64_t i = lo;
        __m256 one = _mm256_set1_ps(1.0f);
        for (; i + 8 <= hi; i += 8) {
            __m256 gv = _mm256_loadu_ps(g + i), uv = _mm256_loadu_ps(u + i);
            __m256 hv = _mm256_loadu_ps(gh + i);
            __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv));
            __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, e));
            __m256 a = _mm256_mul_ps(gv, s);
            __m256 d = _mm256_mul_ps(s, _mm256_fmadd_ps(gv, _mm256_sub_ps(one, s), one));
            _mm256_storeu_ps(p + i, _mm256_mul_ps(a, uv));
            _mm256_storeu_ps(gu + i, _mm256_mul_ps(hv, a));
            _mm256_storeu_ps(gg + i, _mm256_mul_ps(_mm256_mul_ps(hv, uv), d));
        }
        for (; i < hi; i++) {
            float s = 1.0f / (1.0f + expf(-g[i])), a = g[i] * s, h = gh[i];
            p[i] = a * u[i];
            gu[i] = h * a;
            gg[i] = h * u[i] * (s * (1.0f + g[i] * (1.0f - s)));
        }
    }
}

/* RMSNorm backward, y = w * x * rstd per row of E floats (rstd = 1 / rms(x), saved by the
   forward): gx = rstd (gn - n mean(gn n)) with n = x rstd, gn = gy w; gw = sum over rows of
   gy n. Rows are split over the threads; each sums its gw part into work + t * E, and the
   parts are added in thread order at the end. */
void rmsnorm_backward(const float *x, const float *rstd, const float *w, const float *gy,
                      float *gx, float *gw, int64_t rows, int E, float *work, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int t = 0; t < threads; t++) {
        float *part = work + (int64_t)t * E;
        for (int e = 0; e < E; e++) part[e] = 0.0f;
        int64_t r0 = rows * t / threads, r1 = rows * (t + 1) / threads;
        for (int64_t r = r0; r < r1; r++) {
            const float *xr = x + r * E, *gr = gy + r * E;
            float *out = gx + r * E, k = rstd[r];
            __m256 kv = _mm256_set1_ps(k), acc = _mm256_setzero_ps();
            int e = 0;
            for (; e + 8 <= E; e += 8) {
                __m256 n = _mm256_mul_ps(_mm256_loadu_ps(xr + e), kv);
                __m256 g = _mm256_loadu_ps(gr + e);
                acc = _mm256_fmadd_ps(_mm256_mul_ps(g, _mm256_loadu_ps(w + e)), n, acc);
                _mm256_storeu_ps(part + e, _mm256_fmadd_ps(g, n, _mm256_loadu_ps(part + e)));
            }
            float dot = hsum(acc);
            for (; e < E; e++) {
                float n = xr[e] * k;
                dot += gr[e] * w[e] * n;
                part[e] += gr[e] * n;
            }
            float mean = dot / (float)E;
            __m256 mv = _mm256_set1_ps(mean);
            for (e = 0; e + 8 <= E; e += 8) {
                __m256 n = _mm256_mul_ps(_mm256_loadu_ps(xr + e), kv);
                __m256 gn = _mm256_mul_ps(_mm256_loadu_ps(gr + e), _mm256_loadu_ps(w + e));
                _mm256_storeu_ps(out + e, _mm256_mul_ps(kv, _mm256_fnmadd_ps(n, mv, gn)));
            }
            for (; e < E; e++) out[e] = k * (gr[e] * w[e] - xr[e] * k * mean);
        }
    }
    for (int e = 0; e < E; e++) {
        float total = 0.0f;
        for (int t = 0; t < threads; t++) total += work[(int64_t)t * E + e];
        gw[e] = total;
    }
}

/* sum of x^2 over n float32 arrays (lengths len[j]), the elements split evenly over the
   threads across array boundaries; squares summed in float32 lanes over runs of 1024 elements,
   the runs in double. */
double sum_squares(const float *const *x, const int64_t *len, int n, int threads) {
    int64_t total = 0;
    for (int j = 0; j < n; j++) total += len[j];
    double parts[64] = {0};
    if (threads > 64) threads = 64;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int t = 0; t < threads; t++) {
        int64_t g0 = total * t / threads, g1 = total * (t + 1) / threads, start = 0;
        double sum = 0.0;
        for (int j = 0; j < n; j++) {
            int64_t lo = g0 > start ? g0 : start, hi = g1 < start + len[j] ? g1 : start + len[j];
            const float *a = x[j] - start;
            for (int64_t i = lo; i < hi;) {
                int64_t end = i + 1024 < hi ? i + 1024 : hi;
                __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
                for (; i + 32 <= end; i += 32) {
                    __m256 v0 = _mm256_loadu_ps(a + i), v1 = _mm256_loadu_ps(a + i + 8);
                    __m256 v2 = _mm256_loadu_ps(a + i + 16), v3 = _mm256_loadu_ps(a + i + 24);
                    s0 = _mm256_fmadd_ps(v0, v0, s0);
                    s1 = _mm256_fmadd_ps(v1, v1, s1);
                    s2 = _mm256_fmadd_ps(v2, v2, s2);
                    s3 = _mm256_fmadd_ps(v3, v3, s3);
                }
                float run = hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
                for (; i < end; i++) run += a[i] * a[i];
                sum += run;
            }
            start += len[j];
        }
        parts[t] = sum;
    }
    double out = 0.0;
    for (int t = 0; t < threads; t++) out += parts[t];
    return out;
}

/* Eight bfloat16 weights -> eight floats: a bf16 value is the high half of a float32. */
static inline __m256 load_bf16(const uint16_t *p) {
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static inline float bf16_value(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* y[m, n] = sum_k x[m, k] W[n, k] + b[n] for rows m < M (M <= 8) and weight rows n0 <= n < n1.
   x (M, K) and W (N, K) row-major (W float32, or bfloat16 for the _bf16 variant: half the bytes
   to stream, each weight widened to float32 exactly, the sums in float32); y has row stride ldy.
   Called with a literal M so that the compiler unrolls the row loop and keeps the M
   accumulators in registers. */
#define BLOCK(NAME, ATTR, ISA, WTYPE, LOAD, VALUE, AHEAD, FAR) \
    BLOCK_(NAME, ATTR, ISA, WTYPE, LOAD, VALUE, AHEAD, FAR)
/* ISA: vector type, lanes, zero, fused multiply-add, float load, horizontal sum. */
#define BLOCK_(NAME, ATTR, VEC, LANES, ZERO, FMADD, LOADX, REDUCE, WTYPE, LOAD, VALUE, AHEAD, \
               FAR)                                                                             \
ATTR static inline void NAME(const float *x, const WTYPE *W, const float *b, float *y,          \
                             int M, int ldy, int K, int n0, int n1) {                           \
    int KV = K & ~(LANES - 1);                                                                  \
    for (int n = n0; n < n1; n++) {                                                             \
        const WTYPE *w = W + (int64_t)n * K;                                                    \
        VEC acc[8];                                                                             \
        for (int m = 0; m < 8; m++) acc[m] = ZERO();                                            \
        for (int k = 0; k < KV; k += LANES) {                                                   \
            /* 2 KB ahead in the weight stream (into the next rows) into L1, 8 KB ahead into   \
               L2: the hardware prefetcher alone left the loads stalling between FMAs (+20-30% \
               at 8 rows with the first); with the first alone a core still overlapped little   \
               of its streaming with its FMAs (AMD EPYC, 8 rows, float32: 13.7-15.4 -> 21.5-25.5 \
               GB/s on 2 cores with the second). */                                            \
            _mm_prefetch((const char *)(w + k + AHEAD), _MM_HINT_T0);                           \
            _mm_prefetch((const char *)(w + k + FAR), _MM_HINT_T1);                             \
            VEC wv = LOAD(w + k);                                                               \
            for (int m = 0; m < M; m++)                                                         \
                acc[m] = FMADD(wv, LOADX(x + (int64_t)m * K + k), acc[m]);                      \
        }                                                                                       \
        for (int m = 0; m < M; m++) {                                                           \
            float s = REDUCE(acc[m]) + (b ? b[n] : 0.0f);                                       \
            for (int k = KV; k < K; k++) s += VALUE(w[k]) * x[(int64_t)m * K + k];              \
            y[(int64_t)m * ldy + n] = s;                                                        \
        }                                                                                       \
    }                                                                                           \
}
#define AVX2 __m256, 8, _mm256_setzero_ps, _mm256_fmadd_ps, _mm256_loadu_ps, hsum
#define AS_FLOAT(v) (v)
BLOCK(block, , AVX2, float, _mm256_loadu_ps, AS_FLOAT, 512, 2048)
BLOCK(block_bf16, , AVX2, uint16_t, load_bf16, bf16_value, 1024, 4096)

/* FN(x, W, b, y, m, ...) with m a literal 1..8 (the row loop unrolled and its accumulators in
   registers): one switch for every block variant. */
#define BY_ROWS(FN, X, W, B, Y, M, LDY, K, N0, N1)                                              \
    switch (M) {                                                                                \
    case 1: FN(X, W, B, Y, 1, LDY, K, N0, N1); break;                                           \
    case 2: FN(X, W, B, Y, 2, LDY, K, N0, N1); break;                                           \
    case 3: FN(X, W, B, Y, 3, LDY, K, N0, N1); break;                                           \
    case 4: FN(X, W, B, Y, 4, LDY, K, N0, N1); break;                                           \
    case 5: FN(X, W, B, Y, 5, LDY, K, N0, N1); break;                                           \
    case 6: FN(X, W, B, Y, 6, LDY, K, N0, N1); break;                                           \
    case 7: FN(X, W, B, Y, 7, LDY, K, N0, N1); break;                                           \
    default: FN(X, W, B, Y, 8, LDY, K, N0, N1); break;                                          \
    }

/* The same on AVX-512 (compiled for it, chosen at run time): sixteen weights per load halve
   the loads per FMA, which bound the AVX2 loop at 8+ rows. */
#define TARGET512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma")))
TARGET512 static inline __m512 load16_f32(const float *p) { return _mm512_loadu_ps(p); }
TARGET512 static inline __m512 load16_bf16(const uint16_t *p) {
    __m256i h = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
#define AVX512 __m512, 16, _mm512_setzero_ps, _mm512_fmadd_ps, _mm512_loadu_ps, \
    _mm512_reduce_add_ps
BLOCK(block512, TARGET512, AVX512, float, load16_f32, AS_FLOAT, 512, 2048)
BLOCK(block512_bf16, TARGET512, AVX512, uint16_t, load16_bf16, bf16_value, 1024, 4096)

TARGET512 static void rows512(const float *x, const void *W, int wbf16, const float *b, float *y,
                              int m, int ldy, int K, int n0, int n1) {
    if (wbf16)
        BY_ROWS(block512_bf16, x, (const uint16_t *)W, b, y, m, ldy, K, n0, n1)
    else
        BY_ROWS(block512, x, (const float *)W, b, y, m, ldy, K, n0, n1)
}

static int use512 = -1; /* -1: not checked yet */

static int has512(void) {
    if (use512 < 0) {
        __builtin_cpu_init();
        use512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
                 && __builtin_cpu_supports("avx512vl");
    }
    return use512;
}

/* on = 0: the 8-float loops even where AVX-512 is there (tests run both); on = 1: AVX-512
   where the CPU has it. */
void native_use_avx512(int on) {
    use512 = -1;
    use512 = on && has512();
}

/* rows m < M of y for weight rows n0 <= n < n1; wbf16: W holds bfloat16 values. */
static void rows(const float *x, const void *W, int wbf16, const float *b, float *y,
                 int M, int ldy, int K, int n0, int n1) {
    if (M > 8) {
        /* Blocks of 8 input rows pass in turn over weight rows in chunks of ~32 KB, which
           stay in L2 between the blocks: the weights stream from memory once. */
        int bytes = K * (wbf16 ? 2 : 4);
        int chunk = 32768 / bytes > 0 ? 32768 / bytes : 1;
        for (int c0 = n0; c0 < n1; c0 += chunk) {
            int c1 = c0 + chunk < n1 ? c0 + chunk : n1;
            for (int m0 = 0; m0 < M; m0 += 8)
                rows(x + (int64_t)m0 * K, W, wbf16, b, y + (int64_t)m0 * ldy,
                     M - m0 < 8 ? M - m0 : 8, ldy, K, c0, c1);
        }
        return;
    }
    for (int m0 = 0; m0 < M; m0 += 8) {
        const float *xm = x + (int64_t)m0 * K;
        float *ym = y + (int64_t)m0 * ldy;
        int m = M - m0 < 8 ? M - m0 : 8;
        if (has512()) {
            rows512(xm, W, wbf16, b, ym, m, ldy, K, n0, n1);
            continue;
        }
        if (wbf16)
            BY_ROWS(block_bf16, xm, (const uint16_t *)W, b, ym, m, ldy, K, n0, n1)
        else
            BY_ROWS(block, xm, (const float *)W, b, ym, m, ldy, K, n0, n1)
    }
}

/* y = x [W_0; W_1; ...]^T + [b_0; b_1; ...]: nw weights (N_j, K) sharing the input x (M, K),
   outputs side by side in y (M, sum N_j); bit j of bf16: W_j holds bfloat16 values. The stacked
   weight rows are split evenly over the threads (one parallel region, however many weights:
   q/k/v or gate/up in one call). */
void row_linear(const float *x, const void *const *W, const float *const *b, const int *N,
                int nw, float *y, int M, int K, int threads, int bf16) {
    int64_t total = 0;
    for (int j = 0; j < nw; j++) total += N[j];
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int t = 0; t < threads; t++) {
        int64_t g0 = total * t / threads, g1 = total * (t + 1) / threads, start = 0;
        for (int j = 0; j < nw; j++) {
            int64_t lo = g0 > start ? g0 : start, hi = g1 < start + N[j] ? g1 : start + N[j];
            if (lo < hi)
                rows(x, W[j], (bf16 >> j) & 1, b[j], y + start, M, (int)total, K,
                     (int)(lo - start), (int)(hi - start));
            start += N[j];
        }
    }
}

/* ---- one decode step of a Llama-family model: every layer, one new token per row ---------

   Per layer (HF LlamaDecoderLayer, S = 1): h = rmsnorm(x); q, k, v = h Wq^T, h Wk^T, h Wv^T
   (+ biases); RoPE on q and k (half-split layout); k, v written to the static cache at column
   `col`; softmax(scale q K^T, masked by `keys`) V per query head (GQA: head hh reads kv head
   hh / (H / KV)); x += o_proj(att); h = rmsnorm(x); x += down(silu(gate(h)) * up(h)).
   P holds NP pointers per layer, in the order of the enum below (biases may be NULL). */
enum { WQ, WK, WV, WO, WG, WU, WD, BQ, BK, BV, BO, BG, BU, BD, N1, N2, KC, VC, NP };

static void rmsnorm(const float *x, const float *w, float *y, int B, int E, float eps) {
    for (int b = 0; b < B; b++) {
        const float *xb = x + (int64_t)b * E;
        float *yb = y + (int64_t)b * E, ss = 0.0f;
        for (int e = 0; e < E; e++) ss += xb[e] * xb[e];
        float r = 1.0f / sqrtf(ss / (float)E + eps);
        for (int e = 0; e < E; e++) yb[e] = w[e] * (xb[e] * r);
    }
}

static void linear1(const float *x, const void *W, const float *b, int N, float *y,
                    int M, int K, int threads, int wbf16) {
    const void *Ws[1] = {W};
    const float *bs[1] = {b};
    int Ns[1] = {N};
    row_linear(x, Ws, bs, Ns, 1, y, M, K, threads, wbf16);
}

/* x (B, E) in place. cos/sin: this column's rotary values, row b at cs + b * cs_stride (D).
   keys (B, Lmax): columns row b may attend. work: B * ((H + 2 KV) D + H D + 2 E + 3 I)
   + B * H * Lmax floats. save (may be NULL): one buffer per layer for its linear outputs, row b
   of layer l at save[l] + save_at + b * save_row: q, k, v (before RoPE), o_proj, gate, up and
   down_proj outputs side by side ((H + 2 KV) D + 2 E + 2 I floats; pavlov.llm.cpu.tape).
   Bit s of wmask (s = WQ .. WD): that projection's weights hold bfloat16 values in every layer
   (everything else is float32). */
void decode_layers(float *x, int B, int E, int L, int H, int KV, int D, int I,
                   const float *const *P, float eps, int Lmax, int col, const float *cos,
                   const float *sin, int cs_stride, const unsigned char *keys, float scale,
                   float *work, int threads, float *const *save, int64_t save_at,
                   int64_t save_row, int wmask) {
    int QKV = (H + 2 * KV) * D, half = D / 2, group = H / KV;
    float *h = work, *qkv = h + (int64_t)B * E, *att = qkv + (int64_t)B * QKV;
    float *o = att + (int64_t)B * H * D, *gu = o + (int64_t)B * E, *act = gu + (int64_t)B * 2 * I;
    float *scores = act + (int64_t)B * I;
    for (int l = 0; l < L; l++) {
        const float *const *p = P + (int64_t)l * NP;
        float *kc = (float *)p[KC], *vc = (float *)p[VC];
        rmsnorm(x, p[N1], h, B, E, eps);
        const void *W3[3] = {p[WQ], p[WK], p[WV]};
        const float *b3[3] = {p[BQ], p[BK], p[BV]};
        int N3[3] = {H * D, KV * D, KV * D};
        row_linear(h, W3, b3, N3, 3, qkv, B, E, threads, wmask & 7);
        float *sv = save ? save[l] + save_at : NULL;
        if (sv)
            for (int b = 0; b < B; b++)
                memcpy(sv + b * save_row, qkv + (int64_t)b * QKV, QKV * sizeof(float));
        for (int b = 0; b < B; b++) {
            const float *c = cos + (int64_t)b * cs_stride, *s = sin + (int64_t)b * cs_stride;
            for (int hh = 0; hh < H + KV; hh++) {  /* q heads, then k heads */
                float *v = qkv + (int64_t)b * QKV + (int64_t)hh * D;
                for (int d = 0; d < half; d++) {
                    float a = v[d], z = v[d + half];
                    v[d] = a * c[d] - z * s[d];
                    v[d + half] = z * c[d + half] + a * s[d + half];
                }
            }
            for (int g = 0; g < KV; g++) {
                int64_t at = (((int64_t)b * KV + g) * Lmax + col) * D;
                memcpy(kc + at, qkv + (int64_t)b * QKV + (int64_t)(H + g) * D, D * sizeof(float));
                memcpy(vc + at, qkv + (int64_t)b * QKV + (int64_t)(H + KV + g) * D,
                       D * sizeof(float));
            }
        }
        #pragma omp parallel for num_threads(threads) schedule(static)
        for (int bh = 0; bh < B * H; bh++) {
            int b = bh / H, hh = bh % H;
            int64_t base = ((int64_t)b * KV + hh / group) * Lmax * D;
            const float *q = qkv + (int64_t)b * QKV + (int64_t)hh * D;
            const unsigned char *mask = keys + (int64_t)b * Lmax;
            float *sc = scores + (int64_t)bh * Lmax, top = -INFINITY, total = 0.0f;
            for (int j = 0; j <= col; j++) {
                if (!mask[j]) continue;
                sc[j] = dot(q, kc + base + (int64_t)j * D, D) * scale;
                if (sc[j] > top) top = sc[j];
            }
            for (int j = 0; j <= col; j++)
                if (mask[j]) { sc[j] = expf(sc[j] - top); total += sc[j]; }
            float *out = att + (int64_t)b * H * D + (int64_t)hh * D;
            for (int d = 0; d < D; d++) out[d] = 0.0f;
            for (int j = 0; j <= col; j++) {
                if (!mask[j]) continue;
                const float *vj = vc + base + (int64_t)j * D;
                float w = sc[j] / total;
                for (int d = 0; d < D; d++) out[d] += w * vj[d];
            }
        }
        linear1(att, p[WO], p[BO], E, o, B, H * D, threads, (wmask >> WO) & 1);
        if (sv)
            for (int b = 0; b < B; b++)
                memcpy(sv + b * save_row + QKV, o + (int64_t)b * E, E * sizeof(float));
        for (int64_t i = 0; i < (int64_t)B * E; i++) x[i] += o[i];
        rmsnorm(x, p[N2], h, B, E, eps);
        const void *W2[2] = {p[WG], p[WU]};
        const float *b2[2] = {p[BG], p[BU]};
        int N2s[2] = {I, I};
        row_linear(h, W2, b2, N2s, 2, gu, B, E, threads, (wmask >> WG) & 3);
        if (sv)
            for (int b = 0; b < B; b++)
                memcpy(sv + b * save_row + QKV + E, gu + (int64_t)b * 2 * I,
                       2 * (size_t)I * sizeof(float));
        /* act = silu(gate) * up = gate / (1 + exp(-gate)) * up, split over the threads. */
        #pragma omp parallel for num_threads(threads) schedule(static)
        for (int b = 0; b < B; b++) {
            const float *g = gu + (int64_t)b * 2 * I, *u = g + I;
            float *a = act + (int64_t)b * I;
            int i = 0;
            for (; i + 8 <= I; i += 8) {
                __m256 gv = _mm256_loadu_ps(g + i);
                __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv));
                __m256 s = _mm256_div_ps(gv, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
                _mm256_storeu_ps(a + i, _mm256_mul_ps(s, _mm256_loadu_ps(u + i)));
            }
            for (; i < I; i++) a[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
        }
        linear1(act, p[WD], p[BD], E, o, B, I, threads, (wmask >> WD) & 1);
        if (sv)
            for (int b = 0; b < B; b++)
                memcpy(sv + b * save_row + QKV + E + 2 * I, o + (int64_t)b * E, E * sizeof(float));
        for (int64_t i = 0; i < (int64_t)B * E; i++) x[i] += o[i];
    }
}
