/* Fused symmetric int8 quantisation for CPU float32 tensors.
 *
 * One pass finds max|x|, one pass scales, rounds and stores int8. Stochastic rounding draws its
 * uniform numbers from a counter-based hash of (element index, two 32-bit keys), so no generator
 * state is stored or advanced: the caller derives fresh keys for every call. Single-threaded:
 * an OpenMP team costs more than the pass itself at FF's tensor sizes. The loops are
 * written so that the compiler vectorises them (checked with -fopt-info-vec on gcc 12, AVX2);
 * nothing depends on one instruction set.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

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
    if (m >= 0x7f800000u) return NAN;
    float out;
    memcpy(&out, &m, sizeof out);
    return out;
}

/* q[i] = clamp(round(x[i] * inv_scale), -127, 127), rounding half up. */
void ffq_quantize_nearest(const float *restrict x, int8_t *restrict q, int64_t n, float inv_scale) {
    for (int64_t i = 0; i < n; i++) {
        q[i] = (int8_t)(int32_t)clamp127(floorf(x[i] * inv_scale + 0.5f));
    }
}

/* Stochastic rounding: floor(v) + (u < frac(v)) with v = x[i] * inv_scale and
 * u = top 24 bits of mix32((i ^ k1) * golden + k2) / 2^24, so P(up) = frac(v) to within 2^-24. */
void ffq_quantize_stochastic(const float *restrict x, int8_t *restrict q, int64_t n,
                             float inv_scale, uint32_t k1, uint32_t k2) {
    for (int64_t i = 0; i < n; i++) {
        float v = x[i] * inv_scale;
        float fl = floorf(v);
        uint32_t h = mix32(((uint32_t)i ^ k1) * 0x9e3779b9U + k2);
        float u = (float)(int32_t)(h >> 8) * (1.0f / 16777216.0f);
        float r = fl + (u < v - fl ? 1.0f : 0.0f); /* v - fl is exact in float32 */
        q[i] = (int8_t)(int32_t)clamp127(r);
    }
}
