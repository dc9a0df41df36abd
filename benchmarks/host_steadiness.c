// How steady this machine's cores are: the same fixed block of AVX-512 multiply-adds (8 independent chains, the FMA
// units' throughput) timed 30 times on each CPU at once, one process pinned to each. On a quiet, dedicated machine
// every block takes the same time; on a shared virtual machine the blocks spread with what the host runs beside
// them (session 13, the AMD EPYC: 26.9-52.6 ms per block, the two CPUs varying apart), and so does every timing
// in benchmarks/README.md taken in the same minutes: read them together (benchmarks/README.md, session 13).
//
//   gcc -O2 -mavx512f -o /tmp/steadiness benchmarks/host_steadiness.c
//   for c in 0 1; do /tmp/steadiness $c > /tmp/steadiness.$c & done; wait; cat /tmp/steadiness.0 /tmp/steadiness.1
#define _GNU_SOURCE
#include <immintrin.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char** argv) {
    const int cpu = argc > 1 ? atoi(argv[1]) : 0, blocks = argc > 2 ? atoi(argv[2]) : 30;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) perror("sched_setaffinity");
    __m512d chain[8];
    for (int k = 0; k < 8; ++k) chain[k] = _mm512_set1_pd(1.0 + k * 1e-3);
    const __m512d scale = _mm512_set1_pd(0.9999999), shift = _mm512_set1_pd(1e-9);
    double least = 1e30, most = 0.0;
    printf("cpu %d, ms per block:", cpu);
    for (int b = 0; b < blocks; ++b) {
        const double start = seconds();
        for (long i = 0; i < 5000000; ++i)
            for (int k = 0; k < 8; ++k) chain[k] = _mm512_fmadd_pd(chain[k], scale, shift);
        const double ms = (seconds() - start) * 1e3;
        least = ms < least ? ms : least;
        most = ms > most ? ms : most;
        printf(" %.1f", ms);
    }
    double sum = 0.0;  // the chains' values, printed so that the compiler keeps the work
    for (int k = 0; k < 8; ++k) sum += _mm512_reduce_add_pd(chain[k]);
    printf("\ncpu %d: slowest block %.2f x the fastest (checksum %g)\n", cpu, most / least, sum);
    return 0;
}
