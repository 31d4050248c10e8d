/* The machine's arithmetic peak, measured: AVX-512 FP32 FMA, AVX512_BF16 and VNNI dot products.
 *
 * Why measure: a core's peak depends on how many 512-bit FMA pipes it has (one or two, or
 * two 256-bit halves on AMD Zen 4), which no flag tells. Each thread runs 12 independent
 * accumulator chains (enough to hide the FMA latency) and the rate is per CPU-second of the
 * process, times the thread count: other load on the machine does not lower it.
 * Build: cc -O2 -mavx512f -mavx512bf16 -mavx512vnni -pthread peak.c -o peak; run: ./peak THREADS
 * Prints "fp32 GFLOP/s", "bf16 GFLOP/s" and "int8 GOP/s" lines (an FMA is 2 FLOP, a BF16
 * pair-dot 4, a VNNI u8*s8 quad-dot 8: vpdpbusd, the instruction INT8 convolutions run on
 * CPUs without AMX).
 */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define ITERS 100000000L
static int use_bf16;  /* 0: fp32 FMA, 1: bf16 dot, 2: int8 VNNI dot */

static double cpu_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *work(void *out) {
    __m512 acc[12];
    __m512 x = _mm512_set1_ps(1.0000001f), y = _mm512_set1_ps(0.9999999f);
    __m512bh xb = (__m512bh)_mm512_set1_epi16(0x3f80), yb = xb;
    for (int i = 0; i < 12; i++) acc[i] = _mm512_set1_ps((float)i);
    if (use_bf16 == 2) {
        __m512i iacc[12], a = _mm512_set1_epi8(1), b = _mm512_set1_epi8(-1);
        for (int i = 0; i < 12; i++) iacc[i] = _mm512_set1_epi32(i);
        for (long n = 0; n < ITERS / 12; n++) {
#pragma GCC unroll 12
            for (int i = 0; i < 12; i++) iacc[i] = _mm512_dpbusd_epi32(iacc[i], a, b);
        }
        int s = 0;
        for (int i = 0; i < 12; i++) s += _mm512_reduce_add_epi32(iacc[i]);
        *(float *)out = (float)s;
        return NULL;
    }
    for (long n = 0; n < ITERS / 12; n++) {
        if (use_bf16) {
#pragma GCC unroll 12
            for (int i = 0; i < 12; i++) acc[i] = _mm512_dpbf16_ps(acc[i], xb, yb);
        } else {
#pragma GCC unroll 12
            for (int i = 0; i < 12; i++) acc[i] = _mm512_fmadd_ps(acc[i], x, y);
        }
    }
    float s = 0;
    for (int i = 0; i < 12; i++) s += _mm512_reduce_add_ps(acc[i]);
    *(float *)out = s;  /* keeps the chains alive */
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    if (threads < 1 || threads > 256) return 2;
    pthread_t tid[256];
    float sink[256];
    for (use_bf16 = 0; use_bf16 < 3; use_bf16++) {
        double t0 = cpu_seconds();
        for (int i = 0; i < threads; i++) pthread_create(&tid[i], NULL, work, &sink[i]);
        for (int i = 0; i < threads; i++) pthread_join(tid[i], NULL);
        /* 16 lanes x (2 FLOP | 2 pairs x 2 | 4 quads x 2) */
        double flop_per_op = use_bf16 == 2 ? 128.0 : use_bf16 ? 64.0 : 32.0;
        double gflops = ITERS * flop_per_op * threads / (cpu_seconds() - t0) / 1e9 * threads;
        printf("%s %.1f\n", use_bf16 == 2 ? "int8" : use_bf16 ? "bf16" : "fp32", gflops);
    }
    return 0;
}
