// Kernels the daemon-level tests launch through a guest (built to PTX by the test fixture).
#include <cstdio>

extern "C" __global__ void scale(float *x, float a, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= a;
}

extern "C" __global__ void hello(int n)
{
    if (threadIdx.x < n) printf("hello %d of block %d\n", threadIdx.x, blockIdx.x);
}

extern "C" __global__ void write_far(int *p, long long offset)
{
    p[offset] = 1;  // out of bounds when offset is large: cudaErrorIllegalAddress
}

struct Pair { int a; double b; };

extern "C" __global__ void take_struct(Pair p, double *out)
{
    *out = p.a + p.b;
}

__constant__ float coefficients[4];
__device__ int counter = 41;

extern "C" __global__ void apply(float *x, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = coefficients[i % 4] * x[i];
    if (i == 0) counter += 1;
}

extern "C" __global__ void reverse_dynamic(int *out, int n)
{
    extern __shared__ int tile[];
    for (int i = threadIdx.x; i < n; i += blockDim.x) tile[i] = i;
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = tile[n - 1 - i];
}

// where each block sits in its thread block cluster: rank * 100 + cluster size
extern "C" __global__ void cluster_ranks(int *out) {
  unsigned rank, size;
  asm("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
  asm("mov.u32 %0, %%cluster_nctarank;" : "=r"(size));
  if (threadIdx.x == 0) out[blockIdx.x] = rank * 100 + size;
}
