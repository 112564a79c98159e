// Divergent branches and data-dependent loops: every thread takes its own path and trip count.
extern "C" __global__ void collatz_steps(const unsigned* in, unsigned* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    unsigned long long x = in[i];
    unsigned steps = 0;
    while (x != 1 && steps < 1000) {
        if (x & 1) x = 3 * x + 1;
        else x >>= 1;
        ++steps;
    }
    out[i] = steps;
}

extern "C" __global__ void branchy(const int* in, int* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int v = in[i];
    int r;
    if (v % 3 == 0) {
        r = v * 7;
        for (int k = 0; k < (v & 7); ++k) r ^= k << 3;
    } else if (v % 3 == 1) {
        r = -v;
        if (v > 100) r += 5; else r -= 5;
    } else {
        r = 0;
        int k = 0;
        do { r += k * v; ++k; } while (k < (v & 15));
    }
    out[i] = r;
}
