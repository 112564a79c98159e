// The "Done when" kernels of the emulator's issue that are about memory: a histogram privatised in
// shared memory (dynamic, sized at launch, next to a static counter), and __constant__ tables:
// one the host fills by name (cudaMemcpyToSymbol), one with initial values.
#include <stdint.h>

extern "C" __global__ void shared_histogram(const uint8_t* data, unsigned* bins, unsigned* seen, int n, int nbins) {
    extern __shared__ unsigned local_bins[];  // nbins counters
    __shared__ unsigned block_seen;
    for (int b = threadIdx.x; b < nbins; b += blockDim.x) local_bins[b] = 0;
    if (threadIdx.x == 0) block_seen = 0;
    __syncthreads();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        atomicAdd(&local_bins[data[i] % nbins], 1u);
        atomicAdd(&block_seen, 1u);
    }
    __syncthreads();
    for (int b = threadIdx.x; b < nbins; b += blockDim.x)
        if (local_bins[b]) atomicAdd(&bins[b], local_bins[b]);
    if (threadIdx.x == 0) atomicAdd(seen, block_seen);
}

__constant__ uint32_t crc_table[256];  // filled by the host
__constant__ float poly[5] = {1.0f, -0.5f, 0.25f, -0.125f, 0.0625f};

// CRC-32 (zlib's) of each 64-byte row through the constant table, and a polynomial by Horner's rule.
extern "C" __global__ void constant_tables(const uint8_t* rows, uint32_t* crcs, const float* x, float* px, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    uint32_t c = 0xFFFFFFFFu;
    for (int k = 0; k < 64; ++k) c = crc_table[(c ^ rows[i * 64 + k]) & 0xFF] ^ (c >> 8);
    crcs[i] = ~c;
    float acc = 0.0f;
    for (int k = 4; k >= 0; --k) acc = fmaf(acc, x[i], poly[k]);
    px[i] = acc;
}
