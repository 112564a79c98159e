// Special registers, module-scope variables, atomics, per-thread local arrays and generic pointers.
#include <stdint.h>

__device__ int counter_base = 1000;
__device__ unsigned table_g[4] = {3, 1, 4, 1};
__constant__ float coeffs[4] = {0.5f, 1.5f, -2.0f, 4.0f};

extern "C" __global__ void thread_ids(uint32_t* out) {
    unsigned bid = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    unsigned tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    unsigned g = bid * blockDim.x * blockDim.y * blockDim.z + tid;
    unsigned lane, warp;
    asm("mov.u32 %0, %%laneid;" : "=r"(lane));
    asm("mov.u32 %0, %%warpid;" : "=r"(warp));
    long long c0 = clock64();
    unsigned c1 = clock();
    uint32_t* o = out + g * 8;
    o[0] = threadIdx.x; o[1] = threadIdx.y; o[2] = threadIdx.z;
    o[3] = blockIdx.x;  o[4] = blockIdx.y;  o[5] = blockIdx.z;
    o[6] = lane | (warp << 16);
    o[7] = (c0 != 0 || c1 != 0) ? gridDim.x * 100 + gridDim.y * 10 + gridDim.z : 0;
}

extern "C" __global__ void use_globals(float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = coeffs[i & 3] * (float)(table_g[i & 3] + counter_base);
}

extern "C" __global__ void histogram(const unsigned* in, unsigned* bins, int n, int nbins) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        atomicAdd(&bins[in[i] % nbins], 1u);
}

extern "C" __global__ void ticket(int* next, int* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = atomicAdd(next, 1);
}

// A per-thread array indexed with runtime values lives in local memory.
extern "C" __global__ void local_array(const int* in, int* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int buf[16];
    for (int k = 0; k < 16; ++k) buf[k] = in[i] * k + (k ^ i);
    int acc = 0;
    for (int k = 0; k < 16; ++k) acc += buf[(k * 7 + in[i]) & 15] * (k + 1);
    out[i] = acc;
}

// A device function that nvcc cannot specialise receives generic pointers into shared and global memory.
__device__ __noinline__ void add_into(int* dst, const int* src, int k) { *dst += src[k]; }

extern "C" __global__ void generic_pointers(const int* in, int* out, int which) {
    __shared__ int s[64];
    int t = threadIdx.x;
    s[t] = in[blockIdx.x * 64 + t];
    __syncthreads();
    int v = 0;
    int* p = which ? &s[63 - t] : &out[blockIdx.x * 64 + t];
    *p += 1;
    __syncthreads();
    v = s[t];
    out[blockIdx.x * 64 + t] = v;
}

// A module variable initialised with another variable's address.
__device__ int gvals[3] = {7, 8, 9};
__device__ int* gptr = &gvals[1];
extern "C" __global__ void follow_pointer(int* out) { out[threadIdx.x] = gptr[(int)threadIdx.x - 1]; }

// Atomics on one contended address, in shared memory per block, and the other operations.
extern "C" __global__ void atomics_mix(const int* in, float* fsum, int* imax, int* last, int* cas_wins,
                                       int* olds, unsigned* block_hist, int n) {
    __shared__ unsigned hist[8];
    int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    if (t < 8) hist[t] = 0;
    __syncthreads();
    if (i < n) {
        int v = in[i];
        atomicAdd(fsum, (float)(v & 7));
        olds[i] = atomicMax(imax, v);
        atomicExch(last, i);
        if (atomicCAS(cas_wins, 0, i + 1) == 0) olds[n + i] = 1;
        atomicAdd(&hist[v & 7], 1u);
    }
    __syncthreads();
    if (t < 8) block_hist[blockIdx.x * 8 + t] = hist[t];
}

// Managed, 2D, double and struct module variables, and a constant array set from the host.
__managed__ int mcount = 5;
__device__ float dtab[3][4] = {{1, 2, 3, 4}, {5, 6, 7, 8}};
__device__ double dval = 2.5;
__constant__ int c2[2];
struct Pair { int a; float b; };
__device__ Pair sv = {3, 4.5f};
extern "C" __global__ void more_globals(int* out) {
    out[threadIdx.x] = mcount + (int)dtab[1][threadIdx.x & 3] + (int)dval + c2[1] + sv.a + (int)sv.b;
}
