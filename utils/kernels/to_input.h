/* The inner loops of cpu_pipeline.to_input: an interleaved BGR image (uint8 or float32)
 * minus the mean, into three float32 planes.
 *
 * Compiled for the baseline x86-64 (SSE2) the uint8 loop is not vectorised (it needs
 * byte shuffles), and is slower than OpenCV's. GCC's target_clones adds an AVX2 copy
 * chosen at load time on CPUs that have it, so the one build runs everywhere. Either copy
 * does the same float32 subtraction per element (no FMA: setup.py turns contraction off),
 * so the result is the same bits.
 */
#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define RF_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define RF_CLONES
#endif

RF_CLONES
static void rf_to_input_u8(const uint8_t *src, ptrdiff_t h, ptrdiff_t w, ptrdiff_t src_row,
                           float *d0, float *d1, float *d2, ptrdiff_t dst_row,
                           float m0, float m1, float m2)
{
    for (ptrdiff_t y = 0; y < h; y++) {
        const uint8_t *s = src + y * src_row;
        float *a = d0 + y * dst_row, *b = d1 + y * dst_row, *c = d2 + y * dst_row;
        for (ptrdiff_t x = 0; x < w; x++) {
            a[x] = (float)s[3 * x] - m0;
            b[x] = (float)s[3 * x + 1] - m1;
            c[x] = (float)s[3 * x + 2] - m2;
        }
    }
}

RF_CLONES
static void rf_to_input_f32(const float *src, ptrdiff_t h, ptrdiff_t w, ptrdiff_t src_row,
                            float *d0, float *d1, float *d2, ptrdiff_t dst_row,
                            float m0, float m1, float m2)
{
    for (ptrdiff_t y = 0; y < h; y++) {
        const float *s = src + y * src_row;
        float *a = d0 + y * dst_row, *b = d1 + y * dst_row, *c = d2 + y * dst_row;
        for (ptrdiff_t x = 0; x < w; x++) {
            a[x] = s[3 * x] - m0;
            b[x] = s[3 * x + 1] - m1;
            c[x] = s[3 * x + 2] - m2;
        }
    }
}
