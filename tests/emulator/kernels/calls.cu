// Device functions nvcc keeps as calls (__noinline__), guarded calls, nested calls, and printf.
#include <cstdio>

__device__ __noinline__ int mix(int a, int b) {
    int r = a * 31 + b;
    if (r & 1) return r ^ 0x55;
    return r >> 1;
}

__device__ __noinline__ float weighted(const float* p, int i, float w) {
    float acc = 0.0f;
    for (int k = 0; k <= i % 4; ++k) acc += p[k] * w;
    return acc + (float)mix(i, 3);
}

__device__ __noinline__ void store_pair(int* out, int i, int v) {
    out[2 * i] = v;
    out[2 * i + 1] = mix(v, i);
}

extern "C" __global__ void calls(const float* p, float* outf, int* outi, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    outf[i] = weighted(p, i, 0.5f);
    if (i % 3) store_pair(outi, i, mix(i, i + 1));
    else store_pair(outi, i, -i);
}

extern "C" __global__ void hello(int n) {
    int i = threadIdx.x;
    if (i < n) printf("thread %d of %u: %5.2f %s %lld %c|%-4x|\n", i, blockDim.x, i * 0.5, "ok", -7LL * i, 'A' + i, i * 17);
}
