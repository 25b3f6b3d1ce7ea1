/* Preloaded (LD_PRELOAD) into training on AMD CPUs by mkl_paths.py.
 *
 * PyTorch's CPU wheels link MKL, whose matrix products check this function and take slower generic code paths
 * when it says the CPU is not Intel's. On an AMD EPYC (Zen 4, AVX-512) a phase-2 step of tools/shapes/train.py
 * measured 0.90 s without it and 0.75 s with it; the instructions the Intel paths use are ones the CPU has. */
int mkl_serv_intel_cpu_true(void) { return 1; }
