/* The best kernel level this CPU (and its OS) runs: 2 avx512 (F, BW, DQ, VL, VNNI, BF16), 1 avx2 (AVX2, FMA,
 * F16C), 0 generic. __builtin_cpu_supports also checks that the OS saves the vector registers (XGETBV). */
int lowbit_cpu_level(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    int avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
                 __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bf16");
    return avx512 ? 2 : avx2 ? 1 : 0;
#else
    return 0;
#endif
}
