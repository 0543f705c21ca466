/* PPO's minibatch gradient in one call: separate actor and critic MLPs (tanh or ReLU hidden
   layers), a categorical head, the clipped surrogate, the (optionally clipped) value loss and
   the entropy bonus, and the gradient-norm clip. The same arithmetic as
   pavlov/agents/ppo_fast.py's torch ops (which ppo_native.py documents and the tests compare
   against), without ~70 op dispatches a step. Single-threaded: the nets are small and DD-PPO
   runs one thread a rank. AVX2 + FMA, AVX-512 matmuls where the CPU has them. */
#include <immintrin.h>
#include "simd.h"  /* exp8, dot */
#include <math.h>
#include <string.h>

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* ------------------------------------------------------------------------------ matmuls */

/* R rows (R <= 4) of C[:, j:j+8*V] (+)= A[R, K] . B[K, j:j+8*V] (V = 1 or 2 vectors), held in
   registers over the whole K loop. With AT, A is stored transposed: element (r, k) at
   A[k * lda + r]. */
ALWAYS_INLINE void block(int AT, int R, int V, int K, const float *A, int lda, const float *B,
                         int ldb, float *C, int ldc, int acc) {
    __m256 c[4][2];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < V; v++)
            c[r][v] = acc ? _mm256_loadu_ps(C + r * ldc + 8 * v) : _mm256_setzero_ps();
    for (int k = 0; k < K; k++) {
        __m256 b[2];
        for (int v = 0; v < V; v++) b[v] = _mm256_loadu_ps(B + (long)k * ldb + 8 * v);
        for (int r = 0; r < R; r++) {
            __m256 a = _mm256_set1_ps(AT ? A[(long)k * lda + r] : A[(long)r * lda + k]);
            for (int v = 0; v < V; v++) c[r][v] = _mm256_fmadd_ps(a, b[v], c[r][v]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int v = 0; v < V; v++) _mm256_storeu_ps(C + r * ldc + 8 * v, c[r][v]);
}

ALWAYS_INLINE void rows(int AT, int R, int N, int K, const float *A, int lda, const float *B,
                        int ldb, float *C, int ldc, int acc) {
    int j = 0;
    for (; j + 16 <= N; j += 16) block(AT, R, 2, K, A, lda, B + j, ldb, C + j, ldc, acc);
    for (; j + 8 <= N; j += 8) block(AT, R, 1, K, A, lda, B + j, ldb, C + j, ldc, acc);
    for (; j < N; j++)
        for (int r = 0; r < R; r++) {
            float s = acc ? C[r * ldc + j] : 0.0f;
            for (int k = 0; k < K; k++)
                s += (AT ? A[(long)k * lda + r] : A[(long)r * lda + k]) * B[(long)k * ldb + j];
            C[r * ldc + j] = s;
        }
}

/* C[M, N] (+)= op(A)[M, K] . B[K, N]: op(A) = A (M, K) row-major, or with AT, A^T of A (K, M)
   row-major; lda, ldb, ldc are the leading dimensions. */
ALWAYS_INLINE void gemm_(int AT, int M, int N, int K, const float *A, int lda, const float *B,
                         int ldb, float *C, int ldc, int acc) {
    int i = 0;
#define AROW(i) (AT ? A + (i) : A + (long)(i) * lda)
    for (; i + 4 <= M; i += 4) rows(AT, 4, N, K, AROW(i), lda, B, ldb, C + (long)i * ldc, ldc, acc);
    switch (M - i) {
    case 3: rows(AT, 3, N, K, AROW(i), lda, B, ldb, C + (long)i * ldc, ldc, acc); break;
    case 2: rows(AT, 2, N, K, AROW(i), lda, B, ldb, C + (long)i * ldc, ldc, acc); break;
    case 1: rows(AT, 1, N, K, AROW(i), lda, B, ldb, C + (long)i * ldc, ldc, acc); break;
    }
#undef AROW
}

/* The same on 16-float AVX-512 vectors (chosen at run time where the CPU has AVX-512F): half
   the loads and FMAs per output. Column tails under 16 fall back to the AVX2 loop. */
#define TARGET512 __attribute__((target("avx512f,avx2,fma")))
#define INLINE512 static inline __attribute__((always_inline, target("avx512f,avx2,fma")))

INLINE512 void block512(int AT, int R, int V, int K, const float *A, int lda, const float *B,
                        int ldb, float *C, int ldc, int acc) {
    __m512 c[4][2];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < V; v++)
            c[r][v] = acc ? _mm512_loadu_ps(C + r * ldc + 16 * v) : _mm512_setzero_ps();
    for (int k = 0; k < K; k++) {
        __m512 b[2];
        for (int v = 0; v < V; v++) b[v] = _mm512_loadu_ps(B + (long)k * ldb + 16 * v);
        for (int r = 0; r < R; r++) {
            __m512 a = _mm512_set1_ps(AT ? A[(long)k * lda + r] : A[(long)r * lda + k]);
            for (int v = 0; v < V; v++) c[r][v] = _mm512_fmadd_ps(a, b[v], c[r][v]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int v = 0; v < V; v++) _mm512_storeu_ps(C + r * ldc + 16 * v, c[r][v]);
}

INLINE512 void rows512(int AT, int R, int N, int K, const float *A, int lda, const float *B,
                       int ldb, float *C, int ldc, int acc) {
    int j = 0;
    for (; j + 32 <= N; j += 32) block512(AT, R, 2, K, A, lda, B + j, ldb, C + j, ldc, acc);
    for (; j + 16 <= N; j += 16) block512(AT, R, 1, K, A, lda, B + j, ldb, C + j, ldc, acc);
    if (j < N) rows(AT, R, N - j, K, A, lda, B + j, ldb, C + j, ldc, acc);
}

INLINE512 void gemm512_(int AT, int M, int N, int K, const float *A, int lda, const float *B,
                        int ldb, float *C, int ldc, int acc) {
    int i = 0;
#define AROW(i) (AT ? A + (i) : A + (long)(i) * lda)
    for (; i + 4 <= M; i += 4) rows512(AT, 4, N, K, AROW(i), lda, B, ldb, C + (long)i * ldc, ldc, acc);
    switch (M - i) {
    case 3: rows512(AT, 3, N, K, AROW(i), lda, B, ldb, C + (long)i * ldc, ldc, acc); break;
    case 2: rows512(AT, 2, N, K, AROW(i), lda, B, ldb, C + (long)i * ldc, ldc, acc); break;
    case 1: rows512(AT, 1, N, K, AROW(i), lda, B, ldb, C + (long)i * ldc, ldc, acc); break;
    }
#undef AROW
}

TARGET512 static void gemm512(int M, int N, int K, const float *A, int lda, const float *B,
                              int ldb, float *C, int ldc, int acc) {
    gemm512_(0, M, N, K, A, lda, B, ldb, C, ldc, acc);
}

TARGET512 static void gemm512_tn(int M, int N, int K, const float *A, int lda, const float *B,
                                 int ldb, float *C, int ldc, int acc) {
    gemm512_(1, M, N, K, A, lda, B, ldb, C, ldc, acc);
}

static int use512 = -1;  /* -1: not yet probed */

/* Whether the AVX-512 matmuls run (the CPU has AVX-512F and ppo_use_avx512 did not turn them
   off). */
int ppo_avx512(void) {
    if (use512 < 0) use512 = __builtin_cpu_supports("avx512f");
    return use512;
}

/* Tests run both paths: 0 forces the AVX2 loops, 1 allows AVX-512 where the CPU has it. */
void ppo_use_avx512(int on) { use512 = on ? __builtin_cpu_supports("avx512f") : 0; }

static void gemm(int M, int N, int K, const float *A, int lda, const float *B, int ldb, float *C,
                 int ldc, int acc) {
    if (ppo_avx512()) gemm512(M, N, K, A, lda, B, ldb, C, ldc, acc);
    else gemm_(0, M, N, K, A, lda, B, ldb, C, ldc, acc);
}

static void gemm_tn(int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                    float *C, int ldc, int acc) {
    if (ppo_avx512()) gemm512_tn(M, N, K, A, lda, B, ldb, C, ldc, acc);
    else gemm_(1, M, N, K, A, lda, B, ldb, C, ldc, acc);
}

/* out[c, r] = in[r, c] for an (R, C) matrix with leading dimension ld. */
static void transpose(int R, int C, const float *in, int ld, float *out) {
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) out[(long)c * R + r] = in[(long)r * ld + c];
}

/* ---------------------------------------------------------------------------- activations */

/* tanh on eight lanes (Cephes' tanhf): an odd polynomial below |x| 0.625, else
   1 - 2 / (exp(2|x|) + 1) with x's sign; error ~1e-7 absolute (tested against torch.tanh). */
ALWAYS_INLINE __m256 tanh8(__m256 x) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 ax = _mm256_andnot_ps(sign, x);
    __m256 z = _mm256_mul_ps(x, x);
    __m256 p = _mm256_set1_ps(-5.70498872745e-3f);
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(2.06390887954e-2f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-5.37397155531e-2f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(1.33314422036e-1f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-3.33332819422e-1f));
    __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(p, z), x, x);
    __m256 e = exp8(_mm256_add_ps(ax, ax));
    __m256 big = _mm256_sub_ps(_mm256_set1_ps(1.0f),
                               _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(e, _mm256_set1_ps(1.0f))));
    big = _mm256_or_ps(big, _mm256_and_ps(sign, x));
    return _mm256_blendv_ps(small, big, _mm256_cmp_ps(ax, _mm256_set1_ps(0.625f), _CMP_GE_OQ));
}

static float tanh1(float x) {
    float buf[8] = {x};
    _mm256_storeu_ps(buf, tanh8(_mm256_loadu_ps(buf)));
    return buf[0];
}

enum { TANH = 0, RELU = 1 };

/* h = act(h) in place, n floats. */
static void activate(float *h, long n, int act) {
    long i = 0;
    if (act == TANH) {
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(h + i, tanh8(_mm256_loadu_ps(h + i)));
        for (; i < n; i++) h[i] = tanh1(h[i]);
    } else {
        for (; i < n; i++) h[i] = h[i] > 0.0f ? h[i] : 0.0f;
    }
}

/* g *= act'(pre) given the activation's output h: 1 - h^2 (tanh), [h > 0] (ReLU). */
static void activate_backward(float *g, const float *h, long n, int act) {
    if (act == TANH) {
        long i = 0;
        const __m256 one = _mm256_set1_ps(1.0f);
        for (; i + 8 <= n; i += 8) {
            __m256 hv = _mm256_loadu_ps(h + i);
            __m256 d = _mm256_fnmadd_ps(hv, hv, one);
            _mm256_storeu_ps(g + i, _mm256_mul_ps(_mm256_loadu_ps(g + i), d));
        }
        for (; i < n; i++) g[i] *= 1.0f - h[i] * h[i];
    } else {
        for (long i = 0; i < n; i++) g[i] = h[i] > 0.0f ? g[i] : 0.0f;
    }
}

/* -------------------------------------------------------------------------------- layers */

/* H[B, out] = X[B, in] . W^T + b, W (out, in) row-major; tw: scratch of in * out floats. */
static void linear_forward(int B, int in, int out, const float *X, const float *W, const float *b,
                           float *H, float *tw) {
    if (out >= 8) {
        transpose(out, in, W, in, tw);  /* (in, out): the output row is the vector dimension */
        for (int i = 0; i < B; i++) memcpy(H + (long)i * out, b, out * sizeof(float));
        gemm(B, out, in, X, in, tw, out, H, out, 1);
    } else {  /* a head of 1-7 outputs: dot products along the input */
        for (int i = 0; i < B; i++)
            for (int o = 0; o < out; o++) H[(long)i * out + o] = b[o] + dot(X + (long)i * in, W + (long)o * in, in);
    }
}

/* Given G = dL/dH (B, out) of layer H = X W^T + b: gW (out, in) and gb (out,) are written (not
   accumulated), and, if GX, dL/dX = G W (B, in). tw: in * out floats of scratch. */
static void linear_backward(int B, int in, int out, const float *X, const float *W,
                            const float *restrict G, float *gW, float *restrict gb, float *GX,
                            float *tw) {
    if (in >= out || in >= 16) {  /* gW = G^T X: the input row is the vector dimension */
        gemm_tn(out, in, B, G, out, X, in, gW, in, 0);
    } else {  /* a narrow input (the observation layer): gW^T = X^T G along the outputs */
        gemm_tn(in, out, B, X, in, G, out, tw, out, 0);
        transpose(in, out, tw, out, gW);
    }
    memset(gb, 0, out * sizeof(float));
    for (int i = 0; i < B; i++)
        for (int o = 0; o < out; o++) gb[o] += G[(long)i * out + o];
    if (GX) gemm(B, in, out, G, out, W, in, GX, in, 0);
}

/* An MLP of L linear layers, dims[0] -> ... -> dims[L]; hs[l] (B, dims[l]) holds each layer's
   input (hs[0] = X) and hs[L] the output; hidden layers are activated in place. */
static void mlp_forward(int B, int L, const int *dims, const float *const *w, const float *const *b,
                        float *const *hs, int act, float *tw) {
    for (int l = 0; l < L; l++) {
        linear_forward(B, dims[l], dims[l + 1], hs[l], w[l], b[l], hs[l + 1], tw);
        if (l < L - 1) activate(hs[l + 1], (long)B * dims[l + 1], act);
    }
}

/* Backward through the MLP from G = dL/d output (B, dims[L]); g0, g1: ping-pong buffers of
   B * max(dims) floats (G may be one of them). */
static void mlp_backward(int B, int L, const int *dims, const float *const *w, float *const *hs,
                         float *const *gw, float *const *gb, int act, float *G, float *g0,
                         float *g1, float *tw) {
    float *g = G;
    for (int l = L - 1; l >= 0; l--) {
        float *gx = l > 0 ? (g == g0 ? g1 : g0) : NULL;
        linear_backward(B, dims[l], dims[l + 1], hs[l], w[l], g, gw[l], gb[l], gx, tw);
        if (l > 0) {
            activate_backward(gx, hs[l], (long)B * dims[l], act);
            g = gx;
        }
    }
}

/* ------------------------------------------------------------------------------- the step */

/* One minibatch of the PPO loss (Schulman et al. 2017, eq. 9) for a categorical policy:
   writes the gradients into gw_pi/gb_pi and gw_v/gb_v (views of the flat gradient) and out[0..5]:
   policy loss, value loss, mean entropy, total loss, approximate KL (k3: mean of (r - 1) - log r)
   and the fraction of ratios outside the clip range.
   The minibatch's columns come with their row strides: x (B, dims_pi[0]) ldx, one-hot actions
   a (B, K) lda, old log-probs, old values and returns (ldc each); adv (B,) contiguous. clip_vf < 0:
   no value clip. scratch: ppo_scratch_floats(...) floats. */
typedef struct {
    int B, act;
    int L_pi; const int *dims_pi; const float *const *w_pi, *const *b_pi; float *const *gw_pi, *const *gb_pi;
    int L_v; const int *dims_v; const float *const *w_v, *const *b_v; float *const *gw_v, *const *gb_v;
    const float *x; int ldx; const float *a; int lda;
    const float *old_logp, *old_v, *ret; int ldc; const float *adv;
    float *scratch;
} ppo_minibatch;  /* one minibatch's pointers, strides and scratch: bound once, stepped many times */

void ppo_categorical_grad(const ppo_minibatch *mb, float clip_eps, float clip_vf, float vf_coef,
                          float ent_coef, float *out) {
    const int B = mb->B, act = mb->act, L_pi = mb->L_pi, L_v = mb->L_v;
    const int *dims_pi = mb->dims_pi, *dims_v = mb->dims_v;
    const float *const *w_pi = mb->w_pi, *const *b_pi = mb->b_pi, *const *w_v = mb->w_v, *const *b_v = mb->b_v;
    float *const *gw_pi = mb->gw_pi, *const *gb_pi = mb->gb_pi, *const *gw_v = mb->gw_v, *const *gb_v = mb->gb_v;
    const float *x = mb->x, *a = mb->a, *old_logp = mb->old_logp, *old_v = mb->old_v, *ret = mb->ret,
                *adv = mb->adv;
    const int ldx = mb->ldx, lda = mb->lda, ldc = mb->ldc;
    float *scratch = mb->scratch;
    int maxd = 1;
    for (int l = 0; l <= L_pi; l++) maxd = dims_pi[l] > maxd ? dims_pi[l] : maxd;
    for (int l = 0; l <= L_v; l++) maxd = dims_v[l] > maxd ? dims_v[l] : maxd;
    float *hs_pi[17], *hs_v[17];
    float *s = scratch;
    for (int l = 0; l <= L_pi; l++) { hs_pi[l] = s; s += (long)B * dims_pi[l]; }
    for (int l = 0; l <= L_v; l++) { hs_v[l] = l == 0 ? hs_pi[0] : s; if (l) s += (long)B * dims_v[l]; }
    float *g0 = s; s += (long)B * maxd;  /* g0, g1: gradients at layer outputs (ping-pong) */
    float *g1 = s; s += (long)B * maxd;
    float *tw = s; s += (long)maxd * maxd;  /* a transposed weight or weight gradient */
    float *gv = s;  /* dL/dV (B,) */

    const int in = dims_pi[0], K = dims_pi[L_pi];
    for (int i = 0; i < B; i++) memcpy(hs_pi[0] + (long)i * in, x + (long)i * ldx, in * sizeof(float));
    mlp_forward(B, L_pi, dims_pi, w_pi, b_pi, hs_pi, act, tw);
    mlp_forward(B, L_v, dims_v, w_v, b_v, hs_v, act, tw);

    /* the head and the losses, row by row; dL/dlogits into g0 (B, K), dL/dV into gv (B,) */
    const float inv_b = 1.0f / (float)B;
    double pg = 0.0, vl = 0.0, ent = 0.0, kl = 0.0;
    int outside = 0;
    float lp[64], p[64];  /* K <= 64 (checked by the caller) */
    const float *z_all = hs_pi[L_pi], *v_all = hs_v[L_v];
    for (int i = 0; i < B; i++) {
        const float *z = z_all + (long)i * K, *ai = a + (long)i * lda;
        float m = z[0];
        for (int k = 1; k < K; k++) m = z[k] > m ? z[k] : m;
        float se = 0.0f;
        for (int k = 0; k < K; k++) se += expf(z[k] - m);
        const float lse = logf(se);
        float logp = 0.0f, h = 0.0f;
        for (int k = 0; k < K; k++) {
            lp[k] = (z[k] - m) - lse;
            p[k] = expf(lp[k]);
            logp += lp[k] * ai[k];
            h -= p[k] * lp[k];
        }
        /* clipped surrogate: dL/dlogp = -A r / B where r A <= clip(r) A, else 0 */
        const float lr = logp - old_logp[(long)i * ldc], r = expf(lr), A = adv[i];
        const float surr = r * A;
        const float rc = r < 1.0f - clip_eps ? 1.0f - clip_eps : (r > 1.0f + clip_eps ? 1.0f + clip_eps : r);
        const float clipped = rc * A;
        pg += surr < clipped ? surr : clipped;
        const float dlogp = surr <= clipped ? -surr * inv_b : 0.0f;
        kl += expm1((double)lr) - lr;  /* (r - 1) - log r without float32's cancellation */
        outside += r < 1.0f - clip_eps || r > 1.0f + clip_eps;
        ent += h;
        /* d/dz_k: ([k = a] - p_k) dlogp, plus the entropy bonus's -ent_coef dH/dz / B */
        float *gz = g0 + (long)i * K;
        for (int k = 0; k < K; k++) {
            gz[k] = (ai[k] - p[k]) * dlogp;
            if (ent_coef != 0.0f) gz[k] += ent_coef * inv_b * p[k] * (lp[k] + h);
        }
        /* value loss 1/2 (V - R)^2, or the max with the clipped value's */
        const float v = v_all[i], R = ret[(long)i * ldc], diff = v - R;
        float dv;
        if (clip_vf < 0.0f) {
            vl += (double)diff * diff;
            dv = diff;
        } else {
            const float ov = old_v[(long)i * ldc], delta = v - ov;
            const float dc = ov + (delta < -clip_vf ? -clip_vf : (delta > clip_vf ? clip_vf : delta)) - R;
            const float sq = diff * diff, sqc = dc * dc;
            vl += sq > sqc ? sq : sqc;
            dv = sq >= sqc ? diff : (fabsf(delta) <= clip_vf ? dc : 0.0f);
        }
        gv[i] = dv * inv_b * vf_coef;
    }
    out[0] = (float)(-pg / B);
    out[1] = (float)(0.5 * vl / B);
    out[2] = (float)(ent / B);
    out[3] = out[0] + vf_coef * out[1] - ent_coef * out[2];
    out[4] = (float)(kl / B);
    out[5] = (float)outside / (float)B;

    mlp_backward(B, L_pi, dims_pi, w_pi, hs_pi, gw_pi, gb_pi, act, g0, g0, g1, tw);
    mlp_backward(B, L_v, dims_v, w_v, hs_v, gw_v, gb_v, act, gv, g0, g1, tw);
}

/* Floats of scratch ppo_categorical_grad needs. */
long ppo_scratch_floats(int B, int L_pi, const int *dims_pi, int L_v, const int *dims_v) {
    long n = 0;
    int maxd = 1;
    for (int l = 0; l <= L_pi; l++) { n += (long)B * dims_pi[l]; maxd = dims_pi[l] > maxd ? dims_pi[l] : maxd; }
    for (int l = 1; l <= L_v; l++) { n += (long)B * dims_v[l]; maxd = dims_v[l] > maxd ? dims_v[l] : maxd; }
    maxd = dims_v[0] > maxd ? dims_v[0] : maxd;
    return n + 2L * B * maxd + (long)maxd * maxd + B;  /* g0, g1, tw, gv */
}

/* clip_grad_norm_ on a flat gradient: g *= min(max_norm / (||g|| + 1e-6), 1); -> ||g|| before. */
float clip_grad_norm(float *g, long n, float max_norm) {
    __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
    long i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(g + i);
        __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
        acc0 = _mm256_fmadd_pd(lo, lo, acc0);
        acc1 = _mm256_fmadd_pd(hi, hi, acc1);
    }
    double lanes[4];
    _mm256_storeu_pd(lanes, _mm256_add_pd(acc0, acc1));
    double ss = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    for (; i < n; i++) ss += (double)g[i] * g[i];
    const float norm = (float)sqrt(ss);
    float scale = max_norm / (norm + 1e-6f);
    if (scale < 1.0f)
        for (long j = 0; j < n; j++) g[j] *= scale;
    return norm;
}

/* The rest of a minibatch step after the gradient (summed over `divisor` ranks: divided first):
   clip_grad_norm as above (max_norm < 0: none), then torch 2.13's fused Adam (aten/src/ATen/native/cpu/FusedAdamKernel.cpp, float32,
   no amsgrad/maximize) bit for bit: the per-parameter step counts advance by one and the step reads
   the first; the vector is cut into torch's chunks (64-byte units over `threads`), each chunk's
   first n - n % width elements take its vector loop's arithmetic (`width`: 8, on AVX2 and
   AVX-512 alike, as measured) and the rest its scalar loop's, with the fused multiply-adds where the
   compiler that built torch formed them (the tests compare against torch._fused_adam_). */
typedef struct {
    float *p, *g, *m, *v, *steps;
    long n;
    int n_steps, width, threads;
} adam_state;

typedef struct { float b2, c2, bc2s, eps, wd, w, ss; int small; } adam_consts;

static void adam_chunk(float *restrict p, const float *restrict g, float *restrict m,
                       float *restrict v, long n, int width, adam_consts k) {
    const long vec = n - n % width;
    const float coeff = k.small ? k.w : k.w - 1.0f, nss = -k.ss;
    const int decay = k.wd != 0.0f;
    const __m256 B2 = _mm256_set1_ps(k.b2), C2 = _mm256_set1_ps(k.c2), BC = _mm256_set1_ps(k.bc2s),
                 EPS = _mm256_set1_ps(k.eps), WD = _mm256_set1_ps(k.wd), CO = _mm256_set1_ps(coeff),
                 NSS = _mm256_set1_ps(nss);
    long d = 0;
    for (; d + 8 <= vec; d += 8) {  /* torch's vector loop, 8 lanes at a time (elementwise) */
        __m256 gd = _mm256_loadu_ps(g + d), pd = _mm256_loadu_ps(p + d), md = _mm256_loadu_ps(m + d);
        if (decay) gd = _mm256_fmadd_ps(pd, WD, gd);
        md = _mm256_fmadd_ps(CO, _mm256_sub_ps(gd, md), k.small ? md : gd);  /* lerp */
        const __m256 vd = _mm256_fmadd_ps(_mm256_mul_ps(C2, gd), gd, _mm256_mul_ps(_mm256_loadu_ps(v + d), B2));
        _mm256_storeu_ps(m + d, md);
        _mm256_storeu_ps(v + d, vd);
        const __m256 den = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vd), BC), EPS);
        _mm256_storeu_ps(p + d, _mm256_add_ps(pd, _mm256_div_ps(_mm256_mul_ps(NSS, md), den)));
    }
    for (; d < vec; d++) {  /* the same, one lane */
        const float gd = decay ? fmaf(p[d], k.wd, g[d]) : g[d];
        const float md = fmaf(coeff, gd - m[d], k.small ? m[d] : gd);
        const float vd = fmaf(k.c2 * gd, gd, v[d] * k.b2);
        m[d] = md;
        v[d] = vd;
        p[d] = p[d] + (nss * md) / (sqrtf(vd) / k.bc2s + k.eps);
    }
    for (; d < n; d++) {  /* torch's scalar loop */
        const float gd = decay ? fmaf(p[d], k.wd, g[d]) : g[d];
        m[d] = k.small ? fmaf(k.w, gd - m[d], m[d]) : fmaf(-(gd - m[d]), 1.0f - k.w, gd);
        v[d] = fmaf(v[d], k.b2, (k.c2 * gd) * gd);
        p[d] = p[d] - (k.ss * m[d]) / (sqrtf(v[d]) / k.bc2s + k.eps);
    }
}

void clip_adam(const adam_state *s, float divisor, float max_norm, double lr, double beta1,
               double beta2, double weight_decay, double eps) {
    if (divisor != 1.0f)  /* a sum over `divisor` ranks -> their mean, as torch's div_ */
        for (long i = 0; i < s->n; i++) s->g[i] = s->g[i] / divisor;
    if (max_norm >= 0.0f) clip_grad_norm(s->g, s->n, max_norm);
    for (int i = 0; i < s->n_steps; i++) s->steps[i] += 1.0f;
    const double step = s->steps[0];
    const double bc1 = 1 - pow(beta1, step), bc2 = 1 - pow(beta2, step);
    adam_consts k = {(float)beta2, (float)(1 - beta2), (float)sqrt(bc2), (float)eps,
                     (float)weight_decay, (float)(1 - beta1), (float)(lr / bc1), 0};
    k.small = fabsf(k.w) < 0.5f;
    const long units = (s->n + 15) / 16;  /* at::parallel_for over 64-byte units */
    const long per = s->threads > 1 && units > 1 ? (units + s->threads - 1) / s->threads : units;
    for (long u = 0; u < units; u += per) {
        const long a = u * 16, b = (u + per) * 16 < s->n ? (u + per) * 16 : s->n;
        adam_chunk(s->p + a, s->g + a, s->m + a, s->v + a, b - a, s->width, k);
    }
}
