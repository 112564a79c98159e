// Kernels in the style of the CUDA samples: each mixes several features the emulator must get right together.
#include <stdint.h>

// Block scan (Hillis-Steele, double-buffered in shared memory), then a per-block offset add.
extern "C" __global__ void block_scan(const int* in, int* out, int* block_sums, int n) {
    extern __shared__ int temp[];  // 2 * blockDim.x ints
    int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    int pout = 0, pin = 1;
    temp[t] = i < n ? in[i] : 0;
    __syncthreads();
    for (int off = 1; off < blockDim.x; off <<= 1) {
        pout = 1 - pout; pin = 1 - pout;
        int v = temp[pin * blockDim.x + t];
        if (t >= off) v += temp[pin * blockDim.x + t - off];
        temp[pout * blockDim.x + t] = v;
        __syncthreads();
    }
    if (i < n) out[i] = temp[pout * blockDim.x + t];
    if (t == blockDim.x - 1) block_sums[blockIdx.x] = temp[pout * blockDim.x + t];
}

// Matrix transpose through a padded shared tile (32x33), 2D grid, blocks of 32x8 looping over rows.
#define TD 32
#define BR 8
extern "C" __global__ void transpose(float* odata, const float* idata, int width, int height) {
    __shared__ float tile[TD][TD + 1];
    int x = blockIdx.x * TD + threadIdx.x, y = blockIdx.y * TD + threadIdx.y;
    for (int j = 0; j < TD; j += BR)
        if (x < width && y + j < height) tile[threadIdx.y + j][threadIdx.x] = idata[(y + j) * width + x];
    __syncthreads();
    x = blockIdx.y * TD + threadIdx.x;
    y = blockIdx.x * TD + threadIdx.y;
    for (int j = 0; j < TD; j += BR)
        if (x < height && y + j < width) odata[(y + j) * height + x] = tile[threadIdx.x][threadIdx.y + j];
}

// Reduction: grid-stride accumulate, warp shuffles, one shared slot per warp, one atomic per block.
extern "C" __global__ void reduce_sum(const float* in, double* total, unsigned long long* count, long long n) {
    __shared__ float warp_sums[32];
    float acc = 0.0f;
    unsigned long long cnt = 0;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        acc += in[i];
        cnt += in[i] > 0.5f;
    }
    for (int off = 16; off; off >>= 1) acc += __shfl_down_sync(0xffffffff, acc, off);
    if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = acc;
    __syncthreads();
    if (threadIdx.x < 32) {
        acc = threadIdx.x < (blockDim.x + 31) / 32 ? warp_sums[threadIdx.x] : 0.0f;
        for (int off = 16; off; off >>= 1) acc += __shfl_down_sync(0xffffffff, acc, off);
        if (threadIdx.x == 0) atomicAdd(total, (double)acc);
    }
    atomicAdd(count, cnt);
}

// Mandelbrot: float iteration with a per-pixel, data-dependent trip count.
extern "C" __global__ void mandelbrot(unsigned char* out, int w, int h, int max_iter) {
    int px = blockIdx.x * blockDim.x + threadIdx.x, py = blockIdx.y * blockDim.y + threadIdx.y;
    if (px >= w || py >= h) return;
    float cr = -2.0f + 2.5f * px / w, ci = -1.25f + 2.5f * py / h;
    float zr = 0.0f, zi = 0.0f;
    int it = 0;
    while (zr * zr + zi * zi <= 4.0f && it < max_iter) {
        float t = zr * zr - zi * zi + cr;
        zi = 2.0f * zr * zi + ci;
        zr = t;
        ++it;
    }
    out[py * w + px] = (unsigned char)it;
}

// Bitonic sort of one block's keys in shared memory: barriers inside nested loops with divergent swaps.
extern "C" __global__ void bitonic_sort(unsigned* keys) {
    extern __shared__ unsigned s[];
    unsigned t = threadIdx.x, base = blockIdx.x * blockDim.x;
    s[t] = keys[base + t];
    __syncthreads();
    for (unsigned k = 2; k <= blockDim.x; k <<= 1) {
        for (unsigned j = k >> 1; j > 0; j >>= 1) {
            unsigned ixj = t ^ j;
            if (ixj > t) {
                bool up = (t & k) == 0;
                unsigned a = s[t], b = s[ixj];
                if ((a > b) == up) { s[t] = b; s[ixj] = a; }
            }
            __syncthreads();
        }
    }
    keys[base + t] = s[t];
}

// N-body style float math: rsqrtf, fmaf, a loop over shared tiles of positions.
extern "C" __global__ void nbody_accel(const float4* pos, float3* acc, int n) {
    extern __shared__ float4 sh[];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float4 p = i < n ? pos[i] : make_float4(0, 0, 0, 0);
    float ax = 0, ay = 0, az = 0;
    for (int tile = 0; tile < (n + blockDim.x - 1) / blockDim.x; ++tile) {
        int j = tile * blockDim.x + threadIdx.x;
        sh[threadIdx.x] = j < n ? pos[j] : make_float4(0, 0, 0, 0);
        __syncthreads();
        for (int k = 0; k < blockDim.x; ++k) {
            float4 q = sh[k];
            float dx = q.x - p.x, dy = q.y - p.y, dz = q.z - p.z;
            float d2 = dx * dx + dy * dy + dz * dz + 0.01f;
            float inv = rsqrtf(d2);
            float s = q.w * inv * inv * inv;
            ax += dx * s; ay += dy * s; az += dz * s;
        }
        __syncthreads();
    }
    if (i < n) acc[i] = make_float3(ax, ay, az);
}

// Asynchronous copies into shared memory (cp.async), then a reversed read.
#include <cuda_pipeline.h>
extern "C" __global__ void async_stage(const float4* in, float4* out, const int* part, int n) {
    __shared__ float4 s[128];
    int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    s[t] = make_float4(-1, -1, -1, -1);
    __syncthreads();
    if (i < n) {
        if (part[i]) __pipeline_memcpy_async(&s[t], &in[i], sizeof(float4), sizeof(float4) - 8);  // zero-fills z, w
        else __pipeline_memcpy_async(&s[t], &in[i], sizeof(float4));
    }
    __pipeline_commit();
    __pipeline_wait_prior(0);
    __syncthreads();
    if (i < n) out[i] = s[blockDim.x - 1 - t];
}
