// Warp-level primitives: shuffles, votes, the active mask and warp reductions.
#include <stdint.h>
extern "C" __global__ void warp_ops(const int* in, int* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int v = i < n ? in[i] : 0;
    int lane = threadIdx.x & 31;
    int sum = v;
    for (int off = 16; off > 0; off >>= 1) sum += __shfl_down_sync(0xffffffff, sum, off);
    int bfly = v;
    for (int m = 1; m < 32; m <<= 1) bfly = max(bfly, __shfl_xor_sync(0xffffffff, bfly, m));
    int bcast = __shfl_sync(0xffffffff, v, 5);
    int up = __shfl_up_sync(0xffffffff, v, 3);
    int seg = __shfl_down_sync(0xffffffff, v, 1, 8);  // width 8: sub-warps of 8 lanes
    unsigned ballot = __ballot_sync(0xffffffff, v > 0);
    int any = __any_sync(0xffffffff, v > 90);
    int all = __all_sync(0xffffffff, v > -90);
    unsigned active = 0;
    if (lane % 3 == 0) active = __activemask();
    unsigned red = __reduce_add_sync(0xffffffff, (unsigned)v);
    if (i < n) {
        int* o = out + i * 10;
        o[0] = sum; o[1] = bfly; o[2] = bcast; o[3] = up; o[4] = seg;
        o[5] = (int)ballot; o[6] = any; o[7] = all; o[8] = (int)active; o[9] = (int)red;
    }
}

// Block-wide votes (__syncthreads_count/and/or) and the int8 dot product.
extern "C" __global__ void block_votes(const int* in, int* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int v = i < n ? in[i] : 0;
    int count = __syncthreads_count(v > 0);
    int all = __syncthreads_and(v > -50);
    int any = __syncthreads_or(v > 95);
    if (i < n) {
        out[i * 5 + 0] = count;
        out[i * 5 + 1] = all;
        out[i * 5 + 2] = any;
        out[i * 5 + 3] = __dp4a(v, v * 3 + 1, 7);
        out[i * 5 + 4] = (int)__dp4a((unsigned)v, 0x01020304u, 5u);
    }
}
