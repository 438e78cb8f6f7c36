/* Fused symmetric int8 quantisation for CPU float32 tensors (and, below it, adam8's fused step
 * and a tiled byte transpose for the int8 convolutions).
 *
 * One pass finds max|x|, one pass scales, rounds and stores int8. Stochastic rounding draws its
 * uniform numbers from a counter-based hash of (element index, two 32-bit keys), so no generator
 * state is stored or advanced: the caller derives fresh keys for every call. Single-threaded:
 * an OpenMP team costs more than the pass itself at FF's tensor sizes. The loops are
 * written so that the compiler vectorises them (checked with -fopt-info-vec on gcc 12, AVX2).
 * Two places use intrinsics, each with a fallback that gives the same results (tested): adam8's
 * decode (AVX-512; a portable loop) and the factored steps' int8 product (AVX-512 VNNI; without
 * it the library reports that it cannot, and the caller uses torch._int_mm).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#if (defined(__x86_64__) || defined(__i386__)) && !defined(FFQ_PORTABLE)
#include <immintrin.h>
#endif

/* A 32-bit integer hash with good avalanche (lowbias32, C. Wellons). */
static inline uint32_t mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

static inline float clamp127(float r) {
    r = r < -127.0f ? -127.0f : r;
    return r > 127.0f ? 127.0f : r;
}

/* A float's bit pattern and back. */
static inline uint32_t f2u(float x) { uint32_t b; memcpy(&b, &x, sizeof b); return b; }
static inline float u2f(uint32_t b) { float x; memcpy(&x, &b, sizeof x); return x; }

/* |x|'s bit pattern: for |x| the unsigned integer order is the float order, and every NaN or
 * Inf pattern (>= 0x7f800000) is above every finite one. */
static inline uint32_t abs_bits(float x) { return f2u(x) & 0x7fffffffu; }

/* The largest |x| from the largest abs_bits: NaN where it is a NaN or Inf pattern. */
static inline float amax_of_bits(uint32_t top) { return top >= 0x7f800000u ? NAN : u2f(top); }

/* Stochastic rounding of v, the rounding noise hashed from the element's index i and the two
 * keys: floor(v) + (u < frac(v)), u = top 24 bits of mix32((i ^ k1) * golden + k2) / 2^24, so
 * P(up) = frac(v) to within 2^-24; clamped to [-127, 127]. */
static inline int8_t round_stochastic(float v, uint32_t i, uint32_t k1, uint32_t k2) {
    float fl = floorf(v);
    uint32_t h = mix32((i ^ k1) * 0x9e3779b9U + k2);
    float u = (float)(int32_t)(h >> 8) * (1.0f / 16777216.0f);
    return (int8_t)(int32_t)clamp127(fl + (u < v - fl ? 1.0f : 0.0f)); /* v - fl is exact */
}

/* max|x[i]|; NaN if any element is NaN or Inf (so the caller can report divergence).
 * Works on the bit patterns: for |x| the unsigned integer order is the float order, and every
 * NaN or Inf pattern (>= 0x7f800000) is above every finite one. An integer max vectorises. */
float ffq_absmax(const float *restrict x, int64_t n) {
    const uint32_t *restrict bits = (const uint32_t *)x;
    uint32_t m = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t a = bits[i] & 0x7fffffffu;
        m = a > m ? a : m;
    }
    return amax_of_bits(m);
}

/* q[i] = clamp(round(x[i] * inv_scale), -127, 127), rounding half up. */
void ffq_quantize_nearest(const float *restrict x, int8_t *restrict q, int64_t n, float inv_scale) {
    for (int64_t i = 0; i < n; i++) {
        q[i] = (int8_t)(int32_t)clamp127(floorf(x[i] * inv_scale + 0.5f));
    }
}

/* One scale per row of a (rows, cols) row-major x, rounding to nearest with ties to even:
 * scale[r] = max(max|x_r| / 127, tiny), 1 for an all-zero row, NaN for a row holding a NaN or
 * Inf (its q then 0); q = clamp(rint(x / scale[r]), -127, 127). The same operations, in the same
 * float32 rounding, as the PyTorch path (absmax_scale, x / scale, round, clamp), so the same
 * values; division, not a reciprocal multiply, for that reason. */
void ffq_quantize_rows_nearest(const float *restrict x, int8_t *restrict q, float *restrict scale,
                               int64_t rows, int64_t cols, float tiny) {
    for (int64_t r = 0; r < rows; r++) {
        const float *restrict xr = x + r * cols;
        int8_t *restrict qr = q + r * cols;
        float amax = ffq_absmax(xr, cols);
        if (amax != amax) {
            scale[r] = NAN;
            memset(qr, 0, (size_t)cols);
            continue;
        }
        float s = amax / 127.0f;
        s = s < tiny ? tiny : s;
        s = amax == 0.0f ? 1.0f : s;
        scale[r] = s;
        for (int64_t i = 0; i < cols; i++) {
            qr[i] = (int8_t)(int32_t)clamp127(nearbyintf(xr[i] / s));
        }
    }
}

/* Stochastic rounding of v = x[i] * inv_scale (round_stochastic, keyed by i). */
void ffq_quantize_stochastic(const float *restrict x, int8_t *restrict q, int64_t n,
                             float inv_scale, uint32_t k1, uint32_t k2) {
    for (int64_t i = 0; i < n; i++) q[i] = round_stochastic(x[i] * inv_scale, (uint32_t)i, k1, k2);
}

/* ---- Adam with 8-bit block-wise state (ffint8.train.adam8; ffint8.quant.blockwise is the
 * reference in PyTorch). Codes are float8 e4m3 bit patterns, one float32 scale per block. ---- */

#define FFQ_MAX_BLOCK 1024

/* No fused multiply-adds from here on: the Adam arithmetic rounds as PyTorch's does, op by op. */
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

/* The e4m3 code of y, in the low 8 bits: |y| above 448 (Inf too) clamps to 448, NaN gives NaN
 * (0x7f, and the sign). stochastic: |y| goes to 3 mantissa bits, up with probability the dropped
 * fraction (noise uniform in [0, 2^20)), then values below e4m3's normal range (2^-6) to the
 * nearest subnormal, ties to even: what blockwise.quantize_blocks does with noise. Otherwise one
 * rounding to nearest, ties to even, as PyTorch's float8 conversion does. In 32-bit integer
 * operations and selects, without branches, so that the store loops vectorise with every lane
 * a 32-bit value until the store; the clamp too is an integer min on |y|'s bit pattern (for
 * |y| the integer order is the float order). */
static inline uint32_t e4m3_code(float y, const int stochastic, uint32_t noise) {
    uint32_t sign = (f2u(y) >> 24) & 0x80u, full = abs_bits(y);
    uint32_t mag = full < 0x43e00000u ? full : 0x43e00000u; /* min(|y|, 448) */
    /* |y| with 3 mantissa bits; to nearest only at and above 2^-6 (0x3c800000), so that
     * subnormals round once, below */
    uint32_t rounded = stochastic ? (mag + noise) & 0x7ff00000u
        : (mag >= 0x3c800000u ? (mag + 0x7ffffu + ((mag >> 20) & 1u)) & 0x7ff00000u : mag);
    uint32_t normal = (rounded >> 20) - (120u << 3); /* float32's exponent bias 127, e4m3's 7 */
    /* below 2^-6: k of k * 2^-9, to nearest (ties to even) by adding 2^23 */
    uint32_t sub = f2u(u2f(rounded) * 512.0f + 8388608.0f) - 0x4b000000u;
    uint32_t code = rounded >= 0x3c800000u ? normal : sub; /* sub = 8 is 2^-6, e4m3's 0x08 */
    return sign | (full > 0x7f800000u ? 0x7fu : code);
}

/* The stochastic rounding noise of value e of a tensor (its index): 16 bits, two values to one
 * 32-bit hash, value e taking half e % 2 (the low half first) of mix32(((e / 2) ^ k1) * golden
 * + k2). Laid out in memory on a little-endian machine, the hashes of consecutive indices are
 * the noise of consecutive values, so vector loops read them in order. e4m3_code takes it
 * shifted to [0, 2^20): P(up) is the dropped fraction to within 2^-16 of a spacing. */
static inline uint32_t sr_noise16(uint32_t e, uint32_t k1, uint32_t k2) {
    return (mix32(((e >> 1) ^ k1) * 0x9e3779b9U + k2) >> (16u * (e & 1u))) & 0xffffu;
}

/* The value of e4m3 code c (the inverse of e4m3_code; 0x7f and 0xff are NaN), computed rather
 * than looked up: a table lookup is a gather, which costs more than these few operations. */
static inline float e4m3_decode(uint32_t c) {
    uint32_t mag = c & 0x7fu;
    float normal = u2f((mag << 20) + (120u << 23));
    float sub = (float)(int32_t)mag * (1.0f / 512.0f);
    float a = mag >= 8u ? normal : sub;
    a = mag == 0x7fu ? NAN : a;
    return u2f(f2u(a) | (c & 0x80u) << 24);
}

/* An AVX-512 (F, BW, VL) form of the decode loop, with the hardware's float16 conversion;
 * FFQ_PORTABLE builds without it (the tests do, to check that both give the same values). */
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && !defined(FFQ_PORTABLE)
#define FFQ_AVX512 1

/* out[i] = value of code c[i] times sc, for a block a multiple of 16: the code's float16 form
 * (magnitude << 7, sign at bit 15, NaN for 0x7f) converted by the hardware, times sc * 2^8. The
 * same values as e4m3_decode(c) * sc: both are the exact product rounded once. */
static void e4m3_load16(const uint8_t *restrict c, float *restrict out, float sc, int64_t block) {
    const __m512 times = _mm512_set1_ps(sc * 256.0f);
    const __m256i low7 = _mm256_set1_epi16(0x7f), sgn = _mm256_set1_epi16(0x80),
                  nan = _mm256_set1_epi16(0x7e00);
    for (int64_t i = 0; i < block; i += 16) {
        __m256i w = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(c + i)));
        __m256i mag = _mm256_and_si256(w, low7);
        __m256i h = _mm256_or_si256(_mm256_slli_epi16(mag, 7),
                                    _mm256_slli_epi16(_mm256_and_si256(w, sgn), 8));
        h = _mm256_mask_mov_epi16(h, _mm256_cmpeq_epi16_mask(mag, low7), nan);
        _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_cvtph_ps(h), times));
    }
}

#endif

/* Block x's values times sc, from its codes. */
static void e4m3_load(const uint8_t *restrict c, float *restrict out, float sc, int64_t block) {
#ifdef FFQ_AVX512
    if (block % 16 == 0) {
        e4m3_load16(c, out, sc, block);
        return;
    }
#endif
    for (int64_t i = 0; i < block; i++) out[i] = e4m3_decode(c[i]) * sc;
}

/* Store block x as codes and one scale: amax (the block's ffq_absmax, which the caller found
 * while it wrote x) / 448, at least FLT_MIN (so that 1 / scale is
 * finite: a block of tiny values stores zeros), x * (1 / scale) rounded. offset: x[0]'s index in
 * its tensor, for the rounding noise. Written as one loop per rounding, with a 32-bit index:
 * each then vectorises without masks or 64-bit lanes. */
static void e4m3_store(const float *restrict x, uint8_t *restrict codes, float *restrict scale,
                       int64_t block, float amax, int stochastic, uint32_t k1, uint32_t k2,
                       int64_t offset) {
    float s = amax / 448.0f; /* NaN if any is NaN or Inf */
    if (!(s >= 0x1p-126f)) s = 0x1p-126f;
    *scale = s;
    float inv = 1.0f / s;
    int nb = (int)block;
    uint32_t at = (uint32_t)offset;
    if (!stochastic) {
        for (int i = 0; i < nb; i++) codes[i] = (uint8_t)e4m3_code(x[i] * inv, 0, 0);
        return;
    }
    /* |y| <= 448 but for float32's rounding: e4m3_code clamps */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (nb % 2 == 0 && at % 2 == 0) {
        /* sr_noise16's hashes, once per two values, read back as 16-bit halves: two loops
         * that vectorise */
        uint32_t h[FFQ_MAX_BLOCK / 2];
        uint16_t noise[FFQ_MAX_BLOCK];
        for (int l = 0; l < nb / 2; l++)
            h[l] = mix32((((at >> 1) + (uint32_t)l) ^ k1) * 0x9e3779b9U + k2);
        memcpy(noise, h, (size_t)nb * 2); /* not a cast: C's aliasing rules */
        for (int i = 0; i < nb; i++)
            codes[i] = (uint8_t)e4m3_code(x[i] * inv, 1, (uint32_t)noise[i] << 4);
        return;
    }
#endif
    for (int i = 0; i < nb; i++)
        codes[i] = (uint8_t)e4m3_code(x[i] * inv, 1, sr_noise16(at + (uint32_t)i, k1, k2) << 4);
}

/* One block's update (ffq_adam8): values 0..len-1 from p and their gradient (g, or acc times
 * g_scale where has_g is 0; L2 decay added where has_wd), then the padding past len as zeros, as
 * the PyTorch path pads. m and r come in decoded and leave updated; *tm, *tr and *tp collect the
 * bit patterns' maxima of |m|, |r| and the new |p| (ffq_absmax's order). One pass: the flags
 * are constants where it is inlined, so each variant vectorises without branches. */
static inline __attribute__((always_inline)) void adam8_block(
        float *restrict p, const float *restrict g, const int32_t *restrict acc, float g_scale,
        int64_t len, int64_t block, float *restrict m, float *restrict r, float w1, float b2,
        float w2, float step_size, float inv_root_c2, float eps, float wd, const int has_g,
        const int has_wd, uint32_t *tm, uint32_t *tr, uint32_t *tp) {
    uint32_t am = *tm, ar = *tr, ap = *tp;
    for (int64_t i = 0; i < len; i++) {
        float pi = p[i];
        float gi = has_g ? g[i] : (float)acc[i] * g_scale;
        if (has_wd) gi = gi + wd * pi;
        float mi = m[i] + w1 * (gi - m[i]);              /* lerp_ with weight w1 = 1 - b1 */
        float ri = sqrtf(r[i] * r[i] * b2 + w2 * gi * gi); /* square_, mul_, addcmul_ */
        float upd = mi / (ri * inv_root_c2 + eps);
        float pn = ri > 0.0f ? pi + (-step_size) * upd : pi;
        p[i] = pn;
        m[i] = mi;
        r[i] = ri;
        uint32_t a = abs_bits(pn), b = abs_bits(mi), c = abs_bits(ri);
        ap = a > ap ? a : ap;
        am = b > am ? b : am;
        ar = c > ar ? c : ar;
    }
    for (int64_t i = len; i < block; i++) { /* padding: gradient and parameter 0 */
        float gi = 0.0f;
        if (has_wd) gi = gi + wd * 0.0f;
        float mi = m[i] + w1 * (gi - m[i]);
        float ri = sqrtf(r[i] * r[i] * b2 + w2 * gi * gi);
        m[i] = mi;
        r[i] = ri;
        uint32_t b = abs_bits(mi), c = abs_bits(ri);
        am = b > am ? b : am;
        ar = c > ar ? c : ar;
    }
    *tm = am;
    *tr = ar;
    *tp = ap;
}

/* One Adam step of n parameters p with gradient g (L2 weight decay wd added to it), the first
 * moment m and r = sqrt(v) stored as codes mc, rc (n rounded up to whole blocks) with scales
 * ms, rs; w1 = 1 - b1 and w2 = 1 - b2 as the caller rounds them.
 * The arithmetic follows ffint8.train.adam8's PyTorch path operation by operation (lerp takes
 * w1, not b1). Keys (k1, k2) and (k3, k4): the rounding noise of m and of r.
 * g NULL: the gradient is acc[i] * g_scale instead, an int8 GEMM's exact int32 result times its
 * two scales (as ffq_adam_i32 takes it), so no float32 gradient is written. base: the index of
 * p[0] in its tensor, where a caller steps a tensor a slice at a time (a multiple of block):
 * the rounding noise is hashed from base + i, so slices round as one call over the whole would.
 * Returns max(amax_in, max|p| after the step) as ffq_adam_i32 does (NaN once any p is NaN or
 * Inf), so that the caller can quantise the new weight without another pass to find it.
 * A block takes three passes: decode m and r, update (adam8_block, which finds the maxima the
 * stores need), encode m and r. */
float ffq_adam8(float *restrict p, const float *restrict g, const int32_t *restrict acc,
               float g_scale, int64_t n, uint8_t *restrict mc,
               float *restrict ms, uint8_t *restrict rc, float *restrict rs, int64_t block,
               float w1, float b2, float w2, float step_size,
               float root_c2, float eps, float wd, int stochastic, uint32_t k1, uint32_t k2,
               uint32_t k3, uint32_t k4, int64_t base, float amax_in) {
    float m[FFQ_MAX_BLOCK], r[FFQ_MAX_BLOCK];
    uint32_t top = abs_bits(amax_in);
    float inv_root_c2 = 1.0f / root_c2;
    for (int64_t o = 0; o < n; o += block) {
        int64_t len = n - o < block ? n - o : block;
        int64_t b = o / block;
        e4m3_load(mc + o, m, ms[b], block);
        e4m3_load(rc + o, r, rs[b], block);
        uint32_t tm = 0, tr = 0;
#define FFQ_ADAM8_BLOCK(HAS_G, HAS_WD)                                                        \
        adam8_block(p + o, HAS_G ? g + o : NULL, HAS_G ? NULL : acc + o, g_scale, len, block, m, \
                    r, w1, b2, w2, step_size, inv_root_c2, eps, wd, HAS_G, HAS_WD, &tm, &tr, &top)
        if (g) {
            if (wd != 0.0f) FFQ_ADAM8_BLOCK(1, 1); else FFQ_ADAM8_BLOCK(1, 0);
        } else {
            if (wd != 0.0f) FFQ_ADAM8_BLOCK(0, 1); else FFQ_ADAM8_BLOCK(0, 0);
        }
#undef FFQ_ADAM8_BLOCK
        e4m3_store(m, mc + o, ms + b, block, amax_of_bits(tm), stochastic, k1, k2, base + o);
        e4m3_store(r, rc + o, rs + b, block, amax_of_bits(tr), stochastic, k3, k4, base + o);
    }
    return amax_of_bits(top);
}

/* ---- adam8 from the int8 factors of a dense weight's gradient, g_W = g_q^T a_q: the int32
 * gradient formed a few rows at a time in a small buffer, by AVX-512 VNNI dot products, and
 * stepped at once (ffint8.train.adam8, Adam8.step_factored). Where the CPU has no VNNI the
 * library does not offer it (ffq_factored_scratch returns 0) and the caller forms the rows
 * with torch._int_mm instead: integer sums, so the same update either way. ---- */
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512F__) \
    && !defined(FFQ_PORTABLE)
#define FFQ_VNNI 1

/* out (rows, d) = gt (rows, kp) x a (kp, d), all int32 sums exact: gt the rows' int8 factors
 * (kp a multiple of 4, zero padded), a4 the quads of a + 128 as unsigned bytes, laid out
 * (kp / 4, d, 4) for vpdpbusd (unsigned times signed bytes), corr[r] = 128 * sum_k gt[r, k],
 * which takes the offset back out. Columns 64 at a time (a's slab stays in L1 across rows). */
/* nr (1..4) rows of out from column c on: 4 x nr accumulators, so that enough independent
 * dot-product chains are in flight to keep the VNNI unit busy (one chain waits on its last). */
static inline __attribute__((always_inline)) void gemm_tile_vnni(
        const int8_t *restrict gt, int64_t kp, const uint8_t *restrict a4,
        const int32_t *restrict corr, int64_t d, int32_t *restrict out, int64_t c,
        const __mmask16 *mask, const int nr) {
    __m512i acc[4][4];
    for (int i = 0; i < nr; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = _mm512_setzero_si512();
    for (int64_t q = 0; q < kp / 4; q++) {
        const uint8_t *slab = a4 + (q * d + c) * 4;
        __m512i av[4];
        for (int j = 0; j < 4; j++) av[j] = _mm512_maskz_loadu_epi32(mask[j], slab + 64 * j);
        for (int i = 0; i < nr; i++) {
            int32_t quad;
            memcpy(&quad, gt + i * kp + 4 * q, 4);
            __m512i b = _mm512_set1_epi32(quad);
            for (int j = 0; j < 4; j++) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], av[j], b);
        }
    }
    for (int i = 0; i < nr; i++) {
        __m512i off = _mm512_set1_epi32(corr[i]);
        for (int j = 0; j < 4; j++)
            _mm512_mask_storeu_epi32(out + i * d + c + 16 * j, mask[j],
                                     _mm512_sub_epi32(acc[i][j], off));
    }
}

/* out (rows, d) = gt (rows, kp) x a (kp, d), all int32 sums exact: gt the rows' int8 factors
 * (kp a multiple of 4, zero padded), a4 the quads of a + 128 as unsigned bytes, laid out
 * (kp / 4, d, 4) for vpdpbusd (unsigned times signed bytes), corr[r] = 128 * sum_k gt[r, k],
 * which takes the offset back out. Columns 64 at a time (a's slab stays in L1 across rows),
 * rows 4 at a time. */
static void gemm_rows_vnni(const int8_t *restrict gt, int64_t kp, const uint8_t *restrict a4,
                           const int32_t *restrict corr, int64_t rows, int64_t d,
                           int32_t *restrict out) {
    for (int64_t c = 0; c < d; c += 64) {
        __mmask16 mask[4];
        for (int j = 0; j < 4; j++) {
            int64_t left = d - c - 16 * j;
            mask[j] = left >= 16 ? (__mmask16)0xffff
                    : left <= 0 ? 0 : (__mmask16)((1u << left) - 1);
        }
        int64_t r = 0;
        for (; r + 4 <= rows; r += 4)
            gemm_tile_vnni(gt + r * kp, kp, a4, corr + r, d, out + r * d, c, mask, 4);
        for (; r < rows; r++)
            gemm_tile_vnni(gt + r * kp, kp, a4, corr + r, d, out + r * d, c, mask, 1);
    }
}
#endif

/* ---- The same rows by AMX tile multiplies (Sapphire Rapids and later), where the compiler
 * targets AMX-INT8 and Linux lets this process use the tile registers. tdpbsud multiplies
 * signed bytes (gt) by unsigned ones (a4), as vpdpbusd does with the roles swapped, so the
 * layout and the offset correction are gemm_rows_vnni's; each 16 x 16 accumulator tile starts
 * at -corr of its rows. Integer sums, so the rows are those of gemm_rows_vnni exactly (tested:
 * ffq_use_amx switches it off). kp a multiple of 64 (one tile's depth); row blocks of 16, the
 * last rows (fewer than 16) by gemm_rows_vnni. ---- */
#if defined(FFQ_VNNI) && defined(__AMX_TILE__) && defined(__AMX_INT8__) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#define FFQ_AMX 1

static int amx_granted = -1; /* whether Linux gave this process the tile state; -1: not asked */
static int amx_enabled = 1;  /* ffq_use_amx's switch */

static int amx_available(void) {
    if (amx_granted < 0) /* ARCH_REQ_XCOMP_PERM (0x1023) for XFEATURE_XTILEDATA (18) */
        amx_granted = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
    return amx_granted;
}

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_config;

static void gemm_rows_amx(const int8_t *restrict gt, int64_t kp, const uint8_t *restrict a4,
                          const int32_t *restrict corr, int64_t rows, int64_t d,
                          int32_t *restrict out) {
    int64_t tail = d % 16, d16 = d - tail, r16 = rows / 16 * 16;
    /* tiles 0, 1: accumulators; 2: gt's 16 rows; 3, 4: a4's columns; 6, 7: the last d % 16
     * columns' accumulator and a4 */
    amx_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.rows[t] = 16;
        cfg.colsb[t] = (t >= 6 && tail) ? (uint16_t)(4 * tail) : 64;
    }
    _tile_loadconfig(&cfg);
    int32_t start[16 * 16] __attribute__((aligned(64)));
/* one accumulator tile `acc` of rows r.., columns col.. (16, or d % 16 for tiles 6 and 7), its
 * a4 slab through tile `slab` (tile numbers are immediates, hence a macro) */
#define AMX_ONE_TILE(acc, slab, col)                                          \
    do {                                                                      \
        _tile_loadd(acc, start, 64);                                          \
        for (int64_t k0 = 0; k0 < kp; k0 += 64) {                             \
            _tile_loadd(2, gt + r * kp + k0, kp);                             \
            _tile_loadd(slab, a4 + (k0 / 4 * d + (col)) * 4, d * 4);          \
            _tile_dpbsud(acc, 2, slab);                                       \
        }                                                                     \
        _tile_stored(acc, out + r * d + (col), d * 4);                        \
    } while (0)
    for (int64_t r = 0; r < r16; r += 16) {
        for (int i = 0; i < 16; i++)
            for (int j = 0; j < 16; j++) start[i * 16 + j] = -corr[r + i];
        int64_t c = 0;
        for (; c + 32 <= d16; c += 32) {
            _tile_loadd(0, start, 64);
            _tile_loadd(1, start, 64);
            for (int64_t k0 = 0; k0 < kp; k0 += 64) {
                _tile_loadd(2, gt + r * kp + k0, kp);
                _tile_loadd(3, a4 + (k0 / 4 * d + c) * 4, d * 4);
                _tile_loadd(4, a4 + (k0 / 4 * d + c + 16) * 4, d * 4);
                _tile_dpbsud(0, 2, 3);
                _tile_dpbsud(1, 2, 4);
            }
            _tile_stored(0, out + r * d + c, d * 4);
            _tile_stored(1, out + r * d + c + 16, d * 4);
        }
        for (; c < d16; c += 16) AMX_ONE_TILE(0, 3, c);
        if (tail) AMX_ONE_TILE(6, 7, d16);
    }
#undef AMX_ONE_TILE
    _tile_release();
    if (r16 < rows)
        gemm_rows_vnni(gt + r16 * kp, kp, a4, corr + r16, rows - r16, d, out + r16 * d);
}
#endif

/* Whether the factored steps form their rows by AMX: mode 0 switches it off, 1 back on (where
 * it is available), -1 only asks. Returns the state after the call. */
int ffq_use_amx(int mode) {
#ifdef FFQ_AMX
    if (mode >= 0) amx_enabled = mode;
    return amx_enabled && amx_available();
#else
    (void)mode;
    return 0;
#endif
}

#ifdef FFQ_VNNI
/* The factors' depth as laid out: k rounded up to a whole tile's depth (64) where AMX may run,
 * else to a quad (4). Zero padding adds nothing to the sums. */
static int64_t factored_depth(int64_t k) {
#ifdef FFQ_AMX
    if (amx_available()) return (k + 63) / 64 * 64;
#endif
    return (k + 3) / 4 * 4;
}
#endif

/* Bytes of scratch ffq_adam8_factored and ffq_adam_i32_factored need for an (n, d) weight, k
 * factor rows and row blocks of `rows`; 0 where this build has no VNNI loop (the caller then
 * forms the gradient itself). */
int64_t ffq_factored_scratch(int64_t n, int64_t d, int64_t k, int64_t rows) {
#ifdef FFQ_VNNI
    int64_t kp = factored_depth(k);
    return n * kp + kp * d + 4 * n + 4 * rows * d + 64;
#else
    (void)n; (void)d; (void)k; (void)rows;
    return 0;
#endif
}

#ifdef FFQ_VNNI
/* gemm_rows_vnni's product by AMX tiles where they run and the depth allows, else by VNNI. */
static void gemm_rows(const int8_t *restrict gt, int64_t kp, const uint8_t *restrict a4,
                      const int32_t *restrict corr, int64_t rows, int64_t d,
                      int32_t *restrict out) {
#ifdef FFQ_AMX
    if (amx_enabled && amx_available() && kp % 64 == 0) {
        gemm_rows_amx(gt, kp, a4, corr, rows, d, out);
        return;
    }
#endif
    gemm_rows_vnni(gt, kp, a4, corr, rows, d, out);
}

/* a4 (kp / 4, n, 4), gemm_rows_vnni's layout, from rows 0..k-1 of b (row stride ldb, n
 * columns): each quad of rows interleaved byte by byte, plus 128 (a sign flip of the top bit);
 * rows from k to kp count as 0. Whole quads 16 columns at a time by SSE2 unpacks. */
static void quads_of_rows(const int8_t *restrict b, int64_t ldb, int64_t k, int64_t n,
                          int64_t kp, uint8_t *restrict a4) {
    const __m128i flip = _mm_set1_epi8((char)0x80);
    for (int64_t q = 0; q < kp / 4; q++) {
        uint8_t *restrict dst = a4 + q * n * 4;
        int64_t r = 4 * q, c = 0;
        if (r + 4 <= k) {
            const int8_t *r0 = b + r * ldb, *r1 = r0 + ldb, *r2 = r1 + ldb, *r3 = r2 + ldb;
            for (; c + 16 <= n; c += 16) {
                __m128i x0 = _mm_loadu_si128((const __m128i *)(r0 + c));
                __m128i x1 = _mm_loadu_si128((const __m128i *)(r1 + c));
                __m128i x2 = _mm_loadu_si128((const __m128i *)(r2 + c));
                __m128i x3 = _mm_loadu_si128((const __m128i *)(r3 + c));
                __m128i lo01 = _mm_unpacklo_epi8(x0, x1), hi01 = _mm_unpackhi_epi8(x0, x1);
                __m128i lo23 = _mm_unpacklo_epi8(x2, x3), hi23 = _mm_unpackhi_epi8(x2, x3);
                __m128i *o = (__m128i *)(dst + c * 4);
                _mm_storeu_si128(o, _mm_xor_si128(_mm_unpacklo_epi16(lo01, lo23), flip));
                _mm_storeu_si128(o + 1, _mm_xor_si128(_mm_unpackhi_epi16(lo01, lo23), flip));
                _mm_storeu_si128(o + 2, _mm_xor_si128(_mm_unpacklo_epi16(hi01, hi23), flip));
                _mm_storeu_si128(o + 3, _mm_xor_si128(_mm_unpackhi_epi16(hi01, hi23), flip));
            }
        }
        for (; c < n; c++)
            for (int64_t j = 0; j < 4; j++)
                dst[c * 4 + j] = (uint8_t)((r + j < k ? b[(r + j) * ldb + c] : 0) + 128);
    }
}

/* corr[r] = 128 * (the sum of row r of g, k int8 values, row stride ld), for rows 0..n-1: the
 * offset gemm_rows_vnni takes back out, summed by VNNI against bytes of 1. Unsigned arithmetic:
 * the product wraps as the dot products do, so the difference is exact wherever the true
 * result fits in int32. */
static void corr_of_rows(const int8_t *restrict g, int64_t ld, int64_t n, int64_t k,
                         int32_t *restrict corr) {
    const __m512i ones = _mm512_set1_epi8(1);
    for (int64_t r = 0; r < n; r++) {
        const int8_t *row = g + r * ld;
        __m512i acc = _mm512_setzero_si512();
        int64_t j = 0;
        for (; j + 64 <= k; j += 64)
            acc = _mm512_dpbusd_epi32(acc, ones, _mm512_loadu_si512(row + j));
        if (j < k)
            acc = _mm512_dpbusd_epi32(acc, ones,
                                      _mm512_maskz_loadu_epi8((__mmask64)((1ULL << (k - j)) - 1),
                                                              row + j));
        corr[r] = (int32_t)((uint32_t)_mm512_reduce_add_epi32(acc) * 128u);
    }
}

/* gt (rows, kp): `rows` rows of k int8 values (row stride ld) zero padded to kp, or src itself
 * where its row stride is kp already: then whatever lies past k in a row meets a4's padding,
 * b = 0 (128 in a4), and corr takes out exactly what it adds. */
static const int8_t *padded_rows(const int8_t *src, int64_t ld, int64_t rows, int64_t k,
                                 int64_t kp, int8_t *restrict buf) {
    if (ld == kp) return src;
    for (int64_t r = 0; r < rows; r++) {
        memcpy(buf + r * kp, src + r * ld, (size_t)k);
        memset(buf + r * kp + k, 0, (size_t)(kp - k));
    }
    return buf;
}
#endif

#ifdef FFQ_VNNI
enum { MM_CHUNK = 64 }; /* nt: columns of the transposed product formed at a time */

/* ffq_int8_mm's scratch, laid out: a4 (kp * cols bytes), the padded copy of the rows operand
 * where it is not laid out as gt already, corr (rows), and for nt the transposed product. */
typedef struct {
    uint8_t *a4;
    int8_t *gbuf;
    int32_t *corr, *outt;
    int64_t bytes;
} mm_scratch;

static mm_scratch mm_layout(uint8_t *base, int64_t m, int64_t k, int64_t n, int nt, int64_t ld) {
    int64_t kp = factored_depth(k), rows = nt ? n : m, cols = nt ? MM_CHUNK : n;
    mm_scratch s;
    uintptr_t at = (uintptr_t)base;
    s.a4 = (uint8_t *)at;
    at += (uintptr_t)(kp * cols);
    s.gbuf = (int8_t *)at;
    if (ld != kp) at += (uintptr_t)(kp * rows);
    at = (at + 63) & ~(uintptr_t)63;
    s.corr = (int32_t *)at;
    at = (at + 4 * (uintptr_t)rows + 63) & ~(uintptr_t)63;
    s.outt = (int32_t *)at;
    if (nt) at += 4 * (uintptr_t)(MM_CHUNK * n);
    s.bytes = (int64_t)(at - (uintptr_t)base) + 64; /* + 64: base itself may be unaligned */
    return s;
}
#endif

/* Bytes of scratch ffq_int8_mm needs for an (m, k) x (k, n) product whose rows operand (b for
 * nt, a for nn) has row stride ld; 0 where this build has no VNNI loop. */
int64_t ffq_int8_mm_scratch(int64_t m, int64_t k, int64_t n, int nt, int64_t ld) {
#ifdef FFQ_VNNI
    return mm_layout(NULL, m, k, n, nt, ld).bytes;
#else
    (void)m; (void)k; (void)n; (void)nt; (void)ld;
    return 0;
#endif
}

/* out (m, n) int32 = a (m, k) x b (k, n), int8, exact (k at most 131,071, so the true sums fit
 * in int32), on the VNNI rows of the factored steps, so that no oneDNN kernel is brought in.
 * a's rows are contiguous (row stride lda); b either row-major (row stride ldb, "nn") or the
 * transpose of a row-major (n, k) matrix such as a weight W (b = W^T, ldb = W's row stride,
 * "nt"). nt runs the product transposed, out^T = W a^T, so that W is gemm_rows_vnni's rows as
 * it lies and only a (the smaller operand in a dense layer's forward) is laid out in quads,
 * MM_CHUNK of its rows at a time (the scratch does not grow with m); nn lays out b.
 * scratch: ffq_int8_mm_scratch bytes. Returns 0, or -1 where this build has no VNNI loop
 * (nothing done). Single-threaded. */
int ffq_int8_mm(const int8_t *restrict a, int64_t lda, const int8_t *restrict b, int64_t ldb,
                int nt, int64_t m, int64_t k, int64_t n, int32_t *restrict out,
                uint8_t *restrict scratch) {
#ifdef FFQ_VNNI
    int64_t kp = factored_depth(k);
    mm_scratch s = mm_layout(scratch, m, k, n, nt, nt ? ldb : lda);
    if (nt) {
        const int8_t *gt = padded_rows(b, ldb, n, k, kp, s.gbuf);
        corr_of_rows(gt, kp, n, kp, s.corr);
        for (int64_t c0 = 0; c0 < m; c0 += MM_CHUNK) {
            int64_t w = m - c0 < MM_CHUNK ? m - c0 : MM_CHUNK;
            /* a4 from a's rows c0..c0+w-1: quad q of column c is a[c0 + c, 4q..4q+3] + 128 */
            for (int64_t q = 0; q < kp / 4; q++)
                for (int64_t c = 0; c < w; c++) {
                    uint8_t *dst = s.a4 + (q * w + c) * 4;
                    const int8_t *src = a + (c0 + c) * lda + 4 * q;
                    if (4 * q + 4 <= k) {
                        uint32_t v;
                        memcpy(&v, src, 4);
                        v ^= 0x80808080u;
                        memcpy(dst, &v, 4);
                    } else {
                        for (int64_t j = 0; j < 4; j++)
                            dst[j] = (uint8_t)((4 * q + j < k ? src[j] : 0) + 128);
                    }
                }
            gemm_rows(gt, kp, s.a4, s.corr, n, w, s.outt); /* (n, w) */
            for (int64_t r0 = 0; r0 < w; r0 += 16)
                for (int64_t c = 0; c < n; c++)
                    for (int64_t r = r0; r < r0 + 16 && r < w; r++)
                        out[(c0 + r) * n + c] = s.outt[c * w + r];
        }
    } else {
        quads_of_rows(b, ldb, k, n, kp, s.a4);
        const int8_t *gt = padded_rows(a, lda, m, k, kp, s.gbuf);
        corr_of_rows(gt, kp, m, kp, s.corr);
        gemm_rows(gt, kp, s.a4, s.corr, m, n, out);
    }
    return 0;
#else
    (void)a; (void)lda; (void)b; (void)ldb; (void)nt; (void)m; (void)k; (void)n; (void)out;
    (void)scratch;
    return -1;
#endif
}

#ifdef FFQ_VNNI
/* A weight's gradient g_scale * gq^T aq, row block by row block: the factors laid out for
 * gemm_rows_vnni in scratch (gt (n, kp) = gq^T zero padded, a4, corr), then out (rows, d). */
typedef struct {
    const int8_t *gt;
    const uint8_t *a4;
    const int32_t *corr;
    int32_t *out;
    int64_t n, d, kp, rows;
} factored_rows;

static factored_rows factored_begin(const int8_t *restrict gq, const int8_t *restrict aq,
                                    int64_t n, int64_t d, int64_t k, int64_t rows,
                                    uint8_t *restrict scratch) {
    int64_t kp = factored_depth(k);
    int8_t *gt = (int8_t *)scratch;                          /* (n, kp) */
    uint8_t *a4 = scratch + n * kp;                          /* (kp / 4, d, 4) */
    uintptr_t end = (uintptr_t)(a4 + kp * d);
    int32_t *corr = (int32_t *)((end + 63) & ~(uintptr_t)63); /* (n,) */
    for (int64_t r = 0; r < n; r++) {
        int32_t sum = 0;
        for (int64_t j = 0; j < kp; j++) {
            int8_t v = j < k ? gq[j * n + r] : 0;
            gt[r * kp + j] = v;
            sum += v;
        }
        corr[r] = 128 * sum;
    }
    quads_of_rows(aq, d, k, d, kp, a4);
    factored_rows it = {gt, a4, corr, corr + n, n, d, kp, rows};
    return it;
}

/* The rows from r0 on (at most it->rows) formed in it->out; their number, 0 past the end. */
static int64_t factored_next(const factored_rows *it, int64_t r0) {
    int64_t len = it->n - r0 < it->rows ? it->n - r0 : it->rows;
    if (len <= 0) return 0;
    gemm_rows(it->gt + r0 * it->kp, it->kp, it->a4, it->corr + r0, len, it->d, it->out);
    return len;
}
#endif

/* One adam8 step (ffq_adam8, from the start of the tensor) of the (n, d) float32 weight p whose
 * gradient is g_scale * gq^T aq: gq (k, n) and aq (k, d) int8, row-major. Rows `rows` at a time
 * (a multiple of block / gcd(d, block), so every row block starts on a block of the state),
 * their exact int32 gradient in scratch (ffq_factored_scratch bytes). Returns what ffq_adam8
 * returns (max|p| after the step), or -1 where this build has no VNNI loop. */
float ffq_adam8_factored(float *restrict p, int64_t n, int64_t d, const int8_t *restrict gq,
                         const int8_t *restrict aq, int64_t k, float g_scale,
                         uint8_t *restrict mc, float *restrict ms, uint8_t *restrict rc,
                         float *restrict rs, int64_t block, float w1, float b2, float w2,
                         float step_size, float root_c2, float eps, float wd, int stochastic,
                         uint32_t k1, uint32_t k2, uint32_t k3, uint32_t k4, int64_t rows,
                         uint8_t *restrict scratch) {
#ifdef FFQ_VNNI
    factored_rows it = factored_begin(gq, aq, n, d, k, rows, scratch);
    float amax = 0.0f;
    int64_t len;
    for (int64_t r0 = 0; (len = factored_next(&it, r0)) > 0; r0 += rows) {
        int64_t o = r0 * d;
        amax = ffq_adam8(p + o, NULL, it.out, g_scale, len * d, mc + o, ms + o / block, rc + o,
                         rs + o / block, block, w1, b2, w2, step_size, root_c2, eps, wd,
                         stochastic, k1, k2, k3, k4, o, amax);
    }
    return amax;
#else
    (void)p; (void)n; (void)d; (void)gq; (void)aq; (void)k; (void)g_scale; (void)mc; (void)ms;
    (void)rc; (void)rs; (void)block; (void)w1; (void)b2; (void)w2; (void)step_size;
    (void)root_c2; (void)eps; (void)wd; (void)stochastic; (void)k1; (void)k2; (void)k3;
    (void)k4; (void)rows; (void)scratch;
    return -1.0f;
#endif
}

/* One Adam step of n float32 parameters p. Its gradient is either acc[i] * g_scale, acc an int32
 * accumulator: an int8 GEMM's exact result times its two scales (ffint8.train.factored), so no
 * float32 gradient tensor is written or read; or, where acc is NULL, the float32 g[i] (a bias's
 * gradient: stepped here too, that saves torch.optim's per-step machinery, which costs more than
 * the arithmetic for a thousand values). m, v: Adam's two moments, float32, as
 * torch.optim.Adam keeps them. w1 = 1 - b1, w2 = 1 - b2; wd: the L2 term (grad + p * wd), 0
 * for none; decay: AdamW's factor 1 - lr * wd (1 for Adam); neg_step = -lr / (1 - b1^t);
 * root_c2 = sqrt(1 - b2^t).
 *
 * The operations are those of PyTorch's fused CPU Adam for float32 (FusedAdamKernel.cpp, as
 * gcc builds it for x86: the L2 term, the lerp and the second moment each one fused
 * multiply-add), in the same order, so weights and moments come out bit-equal to its vector
 * loop (tested). Its scalar tail, the last numel % (vector width) values of a tensor, rounds the
 * second moment otherwise now and then: there the values may differ in the last place.
 * Returns max(amax_in, max|p| after the step) as ffq_absmax does (NaN once any p is NaN or
 * Inf), so that the caller can quantise the new weight without another pass to find it. */
static inline __attribute__((always_inline)) float adam_pass(
        float *restrict p, float *restrict m, float *restrict v, const int32_t *restrict acc,
        const float *restrict gf, const int use_acc, int64_t n, float g_scale, float w1,
        float b2, float w2, float neg_step, float root_c2, float eps, float wd, float decay,
        float amax_in) {
    uint32_t top = abs_bits(amax_in);
    for (int64_t i = 0; i < n; i++) {
        float pi = p[i];
        float g = use_acc ? (float)acc[i] * g_scale : gf[i]; /* use_acc: a constant, folded */
        if (wd != 0.0f) g = fmaf(pi, wd, g);       /* grad += p * wd */
        if (decay != 1.0f) pi = pi * decay;
        float mi = fmaf(w1, g - m[i], m[i]);      /* m.lerp_(g, w1), w1 < 0.5 */
        float vi = fmaf(w2 * g, g, v[i] * b2);     /* v * b2 + w2 * g * g */
        pi = pi + neg_step * mi / (sqrtf(vi) / root_c2 + eps);
        m[i] = mi;
        v[i] = vi;
        p[i] = pi;
        uint32_t bits = abs_bits(pi);
        top = bits > top ? bits : top;
    }
    return amax_of_bits(top);
}

/* Two entry points, so that each loop is compiled for its one kind of gradient. */
float ffq_adam_i32(float *restrict p, float *restrict m, float *restrict v,
                   const int32_t *restrict acc, int64_t n, float g_scale, float w1, float b2,
                   float w2, float neg_step, float root_c2, float eps, float wd, float decay,
                   float amax_in) {
    return adam_pass(p, m, v, acc, NULL, 1, n, g_scale, w1, b2, w2, neg_step, root_c2, eps, wd,
                     decay, amax_in);
}

/* ffq_adam_i32 for the (n, d) weight p whose gradient is g_scale * gq^T aq (gq (k, n), aq
 * (k, d) int8), its int32 rows formed `rows` at a time in scratch (ffq_factored_scratch bytes)
 * as ffq_adam8_factored forms them; rows * d a multiple of 16, so that only the tensor's last
 * values take the scalar tail, as in one call over all of p. -1 where this build has no VNNI. */
float ffq_adam_i32_factored(float *restrict p, float *restrict m, float *restrict v, int64_t n,
                            int64_t d, const int8_t *restrict gq, const int8_t *restrict aq,
                            int64_t k, float g_scale, float w1, float b2, float w2,
                            float neg_step, float root_c2, float eps, float wd, float decay,
                            int64_t rows, uint8_t *restrict scratch) {
#ifdef FFQ_VNNI
    factored_rows it = factored_begin(gq, aq, n, d, k, rows, scratch);
    float amax = 0.0f;
    int64_t len;
    for (int64_t r0 = 0; (len = factored_next(&it, r0)) > 0; r0 += rows) {
        int64_t o = r0 * d;
        amax = adam_pass(p + o, m + o, v + o, it.out, NULL, 1, len * d, g_scale, w1, b2, w2,
                         neg_step, root_c2, eps, wd, decay, amax);
    }
    return amax;
#else
    (void)p; (void)m; (void)v; (void)n; (void)d; (void)gq; (void)aq; (void)k; (void)g_scale;
    (void)w1; (void)b2; (void)w2; (void)neg_step; (void)root_c2; (void)eps; (void)wd;
    (void)decay; (void)rows; (void)scratch;
    return -1.0f;
#endif
}

float ffq_adam_f32(float *restrict p, float *restrict m, float *restrict v,
                   const float *restrict g, int64_t n, float w1, float b2, float w2,
                   float neg_step, float root_c2, float eps, float wd, float decay,
                   float amax_in) {
    return adam_pass(p, m, v, NULL, g, 0, n, 1.0f, w1, b2, w2, neg_step, root_c2, eps, wd, decay,
                     amax_in);
}

/* dst (batch, cols, rows) = src (batch, rows, cols) transposed, for 1-byte elements; both
 * row-major. PyTorch's strided copy moves one byte per step (3-5 ms for 2 M bytes here); this
 * works in 16x16 tiles that stay in L1 and moves whole 8x8 blocks through 64-bit words, so loads
 * and stores are 8 bytes wide (0.8 ms for the same 2 M bytes, gcc 12, AVX2). */
void ffq_transpose_u8(const uint8_t *restrict src, uint8_t *restrict dst, int64_t batch,
                      int64_t rows, int64_t cols) {
    enum { T = 16 };
    for (int64_t b = 0; b < batch; b++) {
        const uint8_t *restrict s = src + b * rows * cols;
        uint8_t *restrict d = dst + b * rows * cols;
        for (int64_t i0 = 0; i0 < rows; i0 += T) {
            int64_t i1 = i0 + T < rows ? i0 + T : rows;
            for (int64_t j0 = 0; j0 < cols; j0 += T) {
                int64_t j1 = j0 + T < cols ? j0 + T : cols;
                int64_t i = i0;
                for (; i + 8 <= i1; i += 8) {
                    int64_t j = j0;
                    for (; j + 8 <= j1; j += 8) {
                        uint64_t r[8];  /* byte k of r[m] is s[i + m][j + k] (little-endian) */
                        for (int m = 0; m < 8; m++) memcpy(&r[m], s + (i + m) * cols + j, 8);
                        for (int k = 0; k < 8; k++) {
                            uint64_t x = 0;
                            for (int m = 0; m < 8; m++) x |= ((r[m] >> (8 * k)) & 0xFFu) << (8 * m);
                            memcpy(d + (j + k) * rows + i, &x, 8);
                        }
                    }
                    for (; j < j1; j++)
                        for (int m = 0; m < 8; m++) d[j * rows + i + m] = s[(i + m) * cols + j];
                }
                for (; i < i1; i++)
                    for (int64_t j = j0; j < j1; j++) d[j * rows + i] = s[i * cols + j];
            }
        }
    }
}

/* Weight gradient of a depthwise convolution (one filter per channel), exact:
 * out[c][a][b] = sum over n, i, j of g[n][i][j][c] * x[n][i*sh - ph + a][j*sw - pw + b][c],
 * taps that fall in the zero padding skipped. x is (N, H, W, C) int8 and g (N, Ho, Wo, C) int8,
 * both channels-last, so 16 channels of one position are 16 adjacent bytes and the channel loop
 * vectorises; out is (C, kh*kw) int64. Each image sums in int32 (at most Ho*Wo*2^14 per image,
 * checked by the caller) and is added into int64, so no batch is too large.
 * oneDNN runs this as a grouped convolution whose "kernel" is the whole of g (a poor shape for
 * it). Here the taps of 16 channels stay in registers while g and x stream through once. */
enum { FFQ_DW_LANES = 16, FFQ_DW_MAX_TAPS = 49 };

static inline __attribute__((always_inline)) void dw_weight_lanes(
    const int8_t *restrict x, const int8_t *restrict g, int64_t *restrict out, int64_t n,
    int64_t h, int64_t w, int64_t c, int64_t ho, int64_t wo, const int kh, const int kw,
    int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t c0, const int lanes) {
    int32_t acc[FFQ_DW_MAX_TAPS][FFQ_DW_LANES];
    int64_t total[FFQ_DW_MAX_TAPS][FFQ_DW_LANES];
    for (int t = 0; t < kh * kw; t++)
        for (int l = 0; l < lanes; l++) total[t][l] = 0;
    for (int64_t img = 0; img < n; img++) {
        for (int t = 0; t < kh * kw; t++)
            for (int l = 0; l < lanes; l++) acc[t][l] = 0;
        for (int64_t i = 0; i < ho; i++) {
            for (int64_t j = 0; j < wo; j++) {
                const int8_t *restrict gp = g + ((img * ho + i) * wo + j) * c + c0;
                int32_t gv[FFQ_DW_LANES];
                for (int l = 0; l < lanes; l++) gv[l] = gp[l];
                for (int a = 0; a < kh; a++) {
                    int64_t y = i * sh - ph + a;
                    if (y < 0 || y >= h) continue;
                    for (int b = 0; b < kw; b++) {
                        int64_t xx = j * sw - pw + b;
                        if (xx < 0 || xx >= w) continue;
                        const int8_t *restrict xp = x + ((img * h + y) * w + xx) * c + c0;
                        for (int l = 0; l < lanes; l++) acc[a * kw + b][l] += gv[l] * xp[l];
                    }
                }
            }
        }
        for (int t = 0; t < kh * kw; t++)
            for (int l = 0; l < lanes; l++) total[t][l] += acc[t][l];
    }
    for (int t = 0; t < kh * kw; t++)
        for (int l = 0; l < lanes; l++) out[(c0 + l) * kh * kw + t] = total[t][l];
}

/* Returns 0, or -1 where kh*kw exceeds FFQ_DW_MAX_TAPS (nothing written). */
int ffq_dw_weight_i8(const int8_t *restrict x, const int8_t *restrict g, int64_t *restrict out,
                     int64_t n, int64_t h, int64_t w, int64_t c, int64_t ho, int64_t wo,
                     int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
    if (kh < 1 || kw < 1 || kh * kw > FFQ_DW_MAX_TAPS) return -1;
    int64_t c0 = 0;
    for (; c0 + FFQ_DW_LANES <= c; c0 += FFQ_DW_LANES) {
        /* the common kernel sizes get constant loop bounds: unrolled, accumulators in registers */
        if (kh == 3 && kw == 3)
            dw_weight_lanes(x, g, out, n, h, w, c, ho, wo, 3, 3, sh, sw, ph, pw, c0, FFQ_DW_LANES);
        else if (kh == 5 && kw == 5)
            dw_weight_lanes(x, g, out, n, h, w, c, ho, wo, 5, 5, sh, sw, ph, pw, c0, FFQ_DW_LANES);
        else
            dw_weight_lanes(x, g, out, n, h, w, c, ho, wo, (int)kh, (int)kw, sh, sw, ph, pw, c0,
                            FFQ_DW_LANES);
    }
    if (c0 < c)
        dw_weight_lanes(x, g, out, n, h, w, c, ho, wo, (int)kh, (int)kw, sh, sw, ph, pw, c0,
                        (int)(c - c0));
    return 0;
}

/* ---- The FF-INT8 dense unit's step, fused (ffint8.nn.dense, ffint8.train.ff) ----
 * Each function does in one or two passes what the PyTorch path does in five to ten tensor
 * operations, each a pass over memory and a dispatch: at FF's sizes (2B x 1000 values) those,
 * not the int8 GEMMs, set the step time (issue 5). Every value computed elementwise goes
 * through the same float32 operations in the same order as there (fp-contract is off, above), so
 * it comes out the same; sums over a row or a column are taken in another order (16 lanes, or
 * row by row), so those, and what follows from them, may differ in the last place. */

#define FFQ_LANES 16

/* sum of x[j] * y[j], j < n, in FFQ_LANES float32 lanes, then the lanes added in order */
static inline float lane_dot(const float *restrict x, const float *restrict y, int64_t n) {
    float acc[FFQ_LANES] = {0};
    int64_t j = 0;
    for (; j + FFQ_LANES <= n; j += FFQ_LANES)
        for (int l = 0; l < FFQ_LANES; l++) acc[l] += x[j + l] * y[j + l];
    for (int l = 0; j + l < n; l++) acc[l] += x[j + l] * y[j + l];
    float s = 0.0f;
    for (int l = 0; l < FFQ_LANES; l++) s += acc[l];
    return s;
}

/* Pass one of normalise-then-quantise: r[i] = sqrt(mean_j h_ij^2) (rms) or sqrt(sum_j h_ij^2)
 * (l2) for h (rows, cols), and the return value max_ij |h_ij / (r_i + eps)|, as ffq_absmax
 * would give it for the normalised a (NaN if any value is NaN or Inf). Division by a positive
 * number is monotone in float32, so a row's largest |a| is its largest |h| divided once. */
float ffq_row_norms(const float *restrict h, int64_t rows, int64_t cols, int l2, float eps,
                    float *restrict r) {
    uint32_t top = 0;
    for (int64_t i = 0; i < rows; i++) {
        const float *restrict hr = h + i * cols;
        float sq = lane_dot(hr, hr, cols);
        float ri = sqrtf(l2 ? sq : sq / (float)cols);
        r[i] = ri;
        float hmax = ffq_absmax(hr, cols); /* NaN for a NaN or Inf */
        if (hmax != hmax || ri != ri) {
            top = 0x7f800000u;
            continue;
        }
        uint32_t a = abs_bits(hmax / (ri + eps));
        top = a > top ? a : top;
    }
    return amax_of_bits(top);
}

/* Pass two: q = stochastic rounding of (h_ij / (r_i + eps)) * inv_scale, as
 * ffq_quantize_stochastic rounds the normalised tensor (the same index, the same noise). */
void ffq_quantize_rows_div_sr(const float *restrict h, const float *restrict r,
                              int8_t *restrict q, int64_t rows, int64_t cols, float eps,
                              float inv_scale, uint32_t k1, uint32_t k2) {
    for (int64_t i = 0; i < rows; i++) {
        const float c = r[i] + eps;
        const float *restrict hr = h + i * cols;
        int8_t *restrict qr = q + i * cols;
        const uint32_t base = (uint32_t)(i * cols);
        for (int64_t j = 0; j < cols; j++)
            qr[j] = round_stochastic((hr[j] / c) * inv_scale, base + (uint32_t)j, k1, k2);
    }
}

/* y = relu(float(acc) * (a_scale * w_scale) + bias) for the int32 accumulator acc (rows, cols),
 * and with it each row's sum of y^2 (sumsq, for the goodness) and each column's sum of y
 * (colsum, for peer normalisation's batch means). */
void ffq_dense_epilogue(const int32_t *restrict acc, int64_t rows, int64_t cols, float a_scale,
                        float w_scale, const float *restrict bias, float *restrict y,
                        float *restrict sumsq, float *restrict colsum) {
    const float s = a_scale * w_scale;
    for (int64_t j = 0; j < cols; j++) colsum[j] = 0.0f;
    for (int64_t i = 0; i < rows; i++) {
        const int32_t *restrict ar = acc + i * cols;
        float *restrict yr = y + i * cols;
        for (int64_t j = 0; j < cols; j++) {
            float z = (float)ar[j] * s + bias[j];
            z = z < 0.0f ? 0.0f : z; /* NaN stays NaN, for the divergence check */
            yr[j] = z;
            colsum[j] += z;
        }
        sumsq[i] = lane_dot(yr, yr, cols);
    }
}

/* One unit's dL/dz, formed as ffint8.train.ff forms it, from its ReLU output y (rows, cols):
 *   own  = crow_i * y_ij + [y_ij > 0] pcol_j           (its loss, and peer normalisation's)
 *   gz   = own + lam * [y_ij > 0] sig_ij               (chain: later losses, weighted)
 *   down = [y_ij > 0] sig_ij + own                      (what passes on to the unit below)
 * pcol, sig and down may each be absent (has_*). bias = column sums of gz. Returns max|gz|,
 * *amax_down max|down| (NaN for a NaN or Inf, as ffq_absmax). */
static inline __attribute__((always_inline)) float unit_grad(
        const float *restrict y, int64_t rows, int64_t cols, const float *restrict crow,
        const float *restrict pcol, const float *restrict sig, float lam, float *restrict gz,
        float *restrict down, float *restrict bias, float *restrict amax_down,
        const int has_p, const int has_sig, const int has_down) {
    uint32_t top = 0, top_d = 0;
    for (int64_t j = 0; j < cols; j++) bias[j] = 0.0f;
    for (int64_t i = 0; i < rows; i++) {
        const float c = crow[i];
        const int64_t o = i * cols;
        for (int64_t j = 0; j < cols; j++) {
            float yv = y[o + j];
            int on = yv > 0.0f;
            float own = c * yv;
            if (has_p) own = own + (on ? pcol[j] : 0.0f);
            float g = own, d = own;
            if (has_sig) {
                float f = on ? sig[o + j] : 0.0f;
                g = own + lam * f;
                d = f + own;
            }
            gz[o + j] = g;
            bias[j] += g;
            uint32_t a = abs_bits(g);
            top = a > top ? a : top;
            if (has_down) {
                down[o + j] = d;
                uint32_t b = abs_bits(d);
                top_d = b > top_d ? b : top_d;
            }
        }
    }
    *amax_down = amax_of_bits(top_d);
    return amax_of_bits(top);
}

float ffq_ff_unit_grad(const float *restrict y, int64_t rows, int64_t cols,
                       const float *restrict crow, const float *restrict pcol,
                       const float *restrict sig, float lam, float *restrict gz,
                       float *restrict down, float *restrict bias, float *restrict amax_down) {
    /* one loop compiled for each combination of the optional parts */
    int key = (pcol != NULL) * 4 + (sig != NULL) * 2 + (down != NULL);
    switch (key) {
#define FFQ_UNIT_GRAD(k, p, s, d) \
    case k: \
        return unit_grad(y, rows, cols, crow, pcol, sig, lam, gz, down, bias, amax_down, p, s, d);
        FFQ_UNIT_GRAD(0, 0, 0, 0)
        FFQ_UNIT_GRAD(1, 0, 0, 1)
        FFQ_UNIT_GRAD(2, 0, 1, 0)
        FFQ_UNIT_GRAD(3, 0, 1, 1)
        FFQ_UNIT_GRAD(4, 1, 0, 0)
        FFQ_UNIT_GRAD(5, 1, 0, 1)
        FFQ_UNIT_GRAD(6, 1, 1, 0)
        default: return unit_grad(y, rows, cols, crow, pcol, sig, lam, gz, down, bias,
                                  amax_down, 1, 1, 1);
#undef FFQ_UNIT_GRAD
    }
}

/* dL/dh for a unit's input h (rows, cols), normalised as a = h / (r + eps), from the int32
 * accumulator acc = s_q (rows, N) @ w_q (N, cols): g = float(acc) * (s_scale * w_scale) is
 * dL/da, then ffint8.nn.functional.normalize_backward: with c = r + eps,
 *   out = g / c - h * (sum_j h_j g_j / (m * max(r, eps) * c * c)),  m = cols (rms) or 1 (l2). */
void ffq_input_grad(const int32_t *restrict acc, int64_t rows, int64_t cols, float s_scale,
                    float w_scale, const float *restrict h, const float *restrict r, float m,
                    float eps, float *restrict out) {
    const float s = s_scale * w_scale;
    for (int64_t i = 0; i < rows; i++) {
        const int32_t *restrict ar = acc + i * cols;
        const float *restrict hr = h + i * cols;
        float *restrict o = out + i * cols;
        for (int64_t j = 0; j < cols; j++) o[j] = (float)ar[j] * s;
        const float dot = lane_dot(hr, o, cols);
        const float ri = r[i], c = ri + eps;
        float den = m * (ri < eps ? eps : ri);
        den = den * c;
        den = den * c;
        const float k = dot / den;
        for (int64_t j = 0; j < cols; j++) o[j] = o[j] / c - hr[j] * k;
    }
}

/* ---- Batch norm (training mode) and the activation after it, fused, for float32 NCHW feature
 * maps (ffint8.nn.norm.BatchNormAct): the convolutional units' norm and activation in two passes
 * forward and two backward, where PyTorch's BatchNorm2d and ReLU6 take about twice as many and
 * keep the norm's output as well as its input for the backward. Per channel: mean and biased
 * variance over (n, hw), summed in float lanes and, every BN_FLUSH rows, in double; the mean
 * first, then the squares about it, as a two-pass variance. act: 0 none, 1 ReLU, 2 ReLU6. ---- */

#define BN_LANES 16
/* Rows (NCHW) or pixels (NHWC) between moves of the float sums to double: every one. At 16 the
 * expand norms' weight gradients of MobileNet-v2 came out twice as far from float64 as
 * PyTorch's (an ill-conditioned sum; session 17), at 1 as far; 0.86x PyTorch's epoch either way. */
#define BN_FLUSH 1

static inline double bn_lanes_sum(float *acc) {
    float s = 0.0f;
    for (int k = 0; k < BN_LANES; k++) {
        s += acc[k];
        acc[k] = 0.0f;
    }
    return s;
}

/* Sum over channel ch's values of (x - shift)^power, power 1 or 2. */
static inline __attribute__((always_inline)) double bn_channel_sum(
        const float *restrict x, int64_t n, int64_t c, int64_t ch, int64_t hw, float shift,
        const int power) {
    float acc[BN_LANES] = {0};
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const float *row = x + (i * c + ch) * hw;
        int64_t j = 0;
        for (; j + BN_LANES <= hw; j += BN_LANES)
            for (int k = 0; k < BN_LANES; k++) {
                float d = row[j + k] - shift;
                acc[k] += power == 2 ? d * d : d;
            }
        for (; j < hw; j++) {
            float d = row[j] - shift;
            acc[j % BN_LANES] += power == 2 ? d * d : d;
        }
        if ((i + 1) % BN_FLUSH == 0) s += bn_lanes_sum(acc);
    }
    return s + bn_lanes_sum(acc);
}

static inline float bn_act(float z, const int act) {
    if (act == 0) return z;
    z = z > 0.0f ? z : 0.0f;
    return act == 2 && z > 6.0f ? 6.0f : z;
}

/* 1 where the activation passes the gradient at its input z: z > 0 (ReLU), 0 < z < 6 (ReLU6,
 * as PyTorch's hardtanh backward), everywhere without one. */
static inline float bn_act_pass(float z, const int act) {
    if (act == 0) return 1.0f;
    return (z > 0.0f && (act == 1 || z < 6.0f)) ? 1.0f : 0.0f;
}

static inline __attribute__((always_inline)) void bn_forward(
        const float *restrict x, float *restrict y, int64_t n, int64_t c, int64_t hw,
        const float *restrict w, const float *restrict b, float eps, float *restrict mean,
        float *restrict var, float *restrict invstd, const int act) {
    double count = (double)n * (double)hw;
    for (int64_t ch = 0; ch < c; ch++) {
        float mu = (float)(bn_channel_sum(x, n, c, ch, hw, 0.0f, 1) / count);
        float v = (float)(bn_channel_sum(x, n, c, ch, hw, mu, 2) / count);
        float is = 1.0f / sqrtf(v + eps);
        mean[ch] = mu;
        var[ch] = v;
        invstd[ch] = is;
        float scale = is * w[ch], shift = b[ch] - mu * scale;
        for (int64_t i = 0; i < n; i++) {
            const float *row = x + (i * c + ch) * hw;
            float *out = y + (i * c + ch) * hw;
            for (int64_t j = 0; j < hw; j++) out[j] = bn_act(row[j] * scale + shift, act);
        }
    }
}

/* The same for a channels-last map: `rows` = n * hw pixels of c channels each, channels
 * contiguous, so every pass runs along the channels (which vectorises) with c float sums, moved
 * to double every BN_FLUSH pixels. c at most BN_MAX_CHANNELS (the sums live on the stack). */
#define BN_MAX_CHANNELS 4096

static inline void bn_flush(float *restrict acc, double *restrict sum, int64_t c) {
    for (int64_t ch = 0; ch < c; ch++) {
        sum[ch] += acc[ch];
        acc[ch] = 0.0f;
    }
}

static inline __attribute__((always_inline)) void bn_forward_nhwc(
        const float *restrict x, float *restrict y, int64_t rows, int64_t c,
        const float *restrict w, const float *restrict b, float eps, float *restrict mean,
        float *restrict var, float *restrict invstd, const int act) {
    float acc[BN_MAX_CHANNELS], scale[BN_MAX_CHANNELS], shift[BN_MAX_CHANNELS];
    double sum[BN_MAX_CHANNELS];
    double count = (double)rows;
    for (int pass = 0; pass < 2; pass++) { /* the mean, then the squares about it */
        for (int64_t ch = 0; ch < c; ch++) acc[ch] = 0.0f, sum[ch] = 0.0;
        for (int64_t r = 0; r < rows; r++) {
            const float *px = x + r * c;
            if (pass == 0)
                for (int64_t ch = 0; ch < c; ch++) acc[ch] += px[ch];
            else
                for (int64_t ch = 0; ch < c; ch++) {
                    float d = px[ch] - mean[ch];
                    acc[ch] += d * d;
                }
            if ((r + 1) % BN_FLUSH == 0) bn_flush(acc, sum, c);
        }
        bn_flush(acc, sum, c);
        for (int64_t ch = 0; ch < c; ch++) {
            if (pass == 0) {
                mean[ch] = (float)(sum[ch] / count);
            } else {
                var[ch] = (float)(sum[ch] / count);
                invstd[ch] = 1.0f / sqrtf(var[ch] + eps);
            }
        }
    }
    for (int64_t ch = 0; ch < c; ch++) {
        scale[ch] = invstd[ch] * w[ch];
        shift[ch] = b[ch] - mean[ch] * scale[ch];
    }
    for (int64_t r = 0; r < rows; r++)
        for (int64_t ch = 0; ch < c; ch++)
            y[r * c + ch] = bn_act(x[r * c + ch] * scale[ch] + shift[ch], act);
}

/* y = act(w * (x - mean) * invstd + b) for x (n, c, hw), or (n, hw, c) where nhwc, the batch's
 * mean, biased variance and 1 / sqrt(var + eps) per channel written out (the caller updates the
 * running statistics). -1 (nothing done) for a channels-last map of more than BN_MAX_CHANNELS
 * channels, else 0. */
int ffq_bn_act_forward(const float *restrict x, float *restrict y, int64_t n, int64_t c,
                       int64_t hw, const float *restrict w, const float *restrict b, float eps,
                       float *restrict mean, float *restrict var, float *restrict invstd,
                       int act, int nhwc) {
    if (nhwc) {
        if (c > BN_MAX_CHANNELS) return -1;
        switch (act) {
            case 1: bn_forward_nhwc(x, y, n * hw, c, w, b, eps, mean, var, invstd, 1); break;
            case 2: bn_forward_nhwc(x, y, n * hw, c, w, b, eps, mean, var, invstd, 2); break;
            default: bn_forward_nhwc(x, y, n * hw, c, w, b, eps, mean, var, invstd, 0); break;
        }
        return 0;
    }
    switch (act) {
        case 1: bn_forward(x, y, n, c, hw, w, b, eps, mean, var, invstd, 1); break;
        case 2: bn_forward(x, y, n, c, hw, w, b, eps, mean, var, invstd, 2); break;
        default: bn_forward(x, y, n, c, hw, w, b, eps, mean, var, invstd, 0); break;
    }
    return 0;
}

static inline __attribute__((always_inline)) void bn_backward(
        const float *restrict g, const float *restrict x, float *restrict dx, int64_t n,
        int64_t c, int64_t hw, const float *restrict w, const float *restrict b,
        const float *restrict mean, const float *restrict invstd, float *restrict dw,
        float *restrict db, const int act) {
    double count = (double)n * (double)hw;
    for (int64_t ch = 0; ch < c; ch++) {
        float mu = mean[ch], is = invstd[ch], scale = is * w[ch], shift = b[ch] - mu * scale;
        float s1[BN_LANES] = {0}, s2[BN_LANES] = {0};
        double sum_g = 0.0, sum_gx = 0.0; /* of dL/dz and of dL/dz * (x - mean) */
        for (int64_t i = 0; i < n; i++) {
            const float *row = x + (i * c + ch) * hw, *grow = g + (i * c + ch) * hw;
            int64_t j = 0;
            for (; j + BN_LANES <= hw; j += BN_LANES)
                for (int k = 0; k < BN_LANES; k++) {
                    float xv = row[j + k];
                    float gz = grow[j + k] * bn_act_pass(xv * scale + shift, act);
                    s1[k] += gz;
                    s2[k] += gz * (xv - mu);
                }
            for (; j < hw; j++) {
                float gz = grow[j] * bn_act_pass(row[j] * scale + shift, act);
                s1[j % BN_LANES] += gz;
                s2[j % BN_LANES] += gz * (row[j] - mu);
            }
            if ((i + 1) % BN_FLUSH == 0) {
                sum_g += bn_lanes_sum(s1);
                sum_gx += bn_lanes_sum(s2);
            }
        }
        sum_g += bn_lanes_sum(s1);
        sum_gx += bn_lanes_sum(s2);
        db[ch] = (float)sum_g;
        dw[ch] = (float)(sum_gx * is);
        if (dx == NULL) continue;
        /* dx = w * invstd * (gz - mean(gz) - xhat * mean(gz * xhat)), xhat = (x - mean) * invstd */
        float k1 = (float)(sum_g / count), k2 = (float)(sum_gx / count) * is * is;
        for (int64_t i = 0; i < n; i++) {
            const float *row = x + (i * c + ch) * hw, *grow = g + (i * c + ch) * hw;
            float *out = dx + (i * c + ch) * hw;
            for (int64_t j = 0; j < hw; j++) {
                float gz = grow[j] * bn_act_pass(row[j] * scale + shift, act);
                out[j] = scale * (gz - k1 - (row[j] - mu) * k2);
            }
        }
    }
}

static inline __attribute__((always_inline)) void bn_backward_nhwc(
        const float *restrict g, const float *restrict x, float *restrict dx, int64_t rows,
        int64_t c, const float *restrict w, const float *restrict b, const float *restrict mean,
        const float *restrict invstd, float *restrict dw, float *restrict db, const int act) {
    float s1[BN_MAX_CHANNELS], s2[BN_MAX_CHANNELS], scale[BN_MAX_CHANNELS], shift[BN_MAX_CHANNELS];
    double sum_g[BN_MAX_CHANNELS], sum_gx[BN_MAX_CHANNELS];
    for (int64_t ch = 0; ch < c; ch++) {
        scale[ch] = invstd[ch] * w[ch];
        shift[ch] = b[ch] - mean[ch] * scale[ch];
        s1[ch] = s2[ch] = 0.0f;
        sum_g[ch] = sum_gx[ch] = 0.0;
    }
    for (int64_t r = 0; r < rows; r++) {
        const float *px = x + r * c, *pg = g + r * c;
        for (int64_t ch = 0; ch < c; ch++) {
            float gz = pg[ch] * bn_act_pass(px[ch] * scale[ch] + shift[ch], act);
            s1[ch] += gz;
            s2[ch] += gz * (px[ch] - mean[ch]);
        }
        if ((r + 1) % BN_FLUSH == 0) {
            bn_flush(s1, sum_g, c);
            bn_flush(s2, sum_gx, c);
        }
    }
    bn_flush(s1, sum_g, c);
    bn_flush(s2, sum_gx, c);
    double count = (double)rows;
    for (int64_t ch = 0; ch < c; ch++) {
        db[ch] = (float)sum_g[ch];
        dw[ch] = (float)(sum_gx[ch] * invstd[ch]);
        s1[ch] = (float)(sum_g[ch] / count);                            /* k1 */
        s2[ch] = (float)(sum_gx[ch] / count) * invstd[ch] * invstd[ch]; /* k2 */
    }
    if (dx == NULL) return;
    for (int64_t r = 0; r < rows; r++) {
        const float *px = x + r * c, *pg = g + r * c;
        float *out = dx + r * c;
        for (int64_t ch = 0; ch < c; ch++) {
            float gz = pg[ch] * bn_act_pass(px[ch] * scale[ch] + shift[ch], act);
            out[ch] = scale[ch] * (gz - s1[ch] - (px[ch] - mean[ch]) * s2[ch]);
        }
    }
}

/* The gradients of ffq_bn_act_forward's y: g = dL/dy, in x's layout (nhwc as there) -> dL/dx
 * (skipped where dx is NULL), dL/dw and dL/db (c,), from x and the forward's mean and invstd;
 * the activation's mask is formed again from x rather than kept. -1 where the forward refuses. */
int ffq_bn_act_backward(const float *restrict g, const float *restrict x, float *restrict dx,
                        int64_t n, int64_t c, int64_t hw, const float *restrict w,
                        const float *restrict b, const float *restrict mean,
                        const float *restrict invstd, float *restrict dw, float *restrict db,
                        int act, int nhwc) {
    if (nhwc) {
        if (c > BN_MAX_CHANNELS) return -1;
        switch (act) {
            case 1: bn_backward_nhwc(g, x, dx, n * hw, c, w, b, mean, invstd, dw, db, 1); break;
            case 2: bn_backward_nhwc(g, x, dx, n * hw, c, w, b, mean, invstd, dw, db, 2); break;
            default: bn_backward_nhwc(g, x, dx, n * hw, c, w, b, mean, invstd, dw, db, 0); break;
        }
        return 0;
    }
    switch (act) {
        case 1: bn_backward(g, x, dx, n, c, hw, w, b, mean, invstd, dw, db, 1); break;
        case 2: bn_backward(g, x, dx, n, c, hw, w, b, mean, invstd, dw, db, 2); break;
        default: bn_backward(g, x, dx, n, c, hw, w, b, mean, invstd, dw, db, 0); break;
    }
    return 0;
}
