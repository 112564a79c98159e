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

// match.sync (any/all, 32- and 64-bit, also under divergence), the other warp reductions, vote.uni,
// and __syncwarp ordering shared-memory exchanges within a warp.
extern "C" __global__ void warp_match(const int* in, const long long* wide, unsigned* out, int n) {
    __shared__ int s[128];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int lane = threadIdx.x & 31;
    int v = i < n ? in[i] : 0;
    long long w = i < n ? wide[i] : 0;
    int p32, p64;
    unsigned any32 = __match_any_sync(0xffffffff, v);
    unsigned any64 = __match_any_sync(0xffffffff, w);
    unsigned all32 = __match_all_sync(0xffffffff, v, &p32);
    unsigned all64 = __match_all_sync(0xffffffff, w, &p64);
    unsigned odd = 0;
    if (lane & 1) odd = __match_any_sync(0xaaaaaaaa, v & 3);
    s[threadIdx.x] = v;
    __syncwarp();
    int neighbour = s[threadIdx.x ^ 1];
    __syncwarp();
    unsigned* o = out + i * 13;
    unsigned mn = (unsigned)__reduce_min_sync(0xffffffff, v);
    unsigned mx = __reduce_max_sync(0xffffffff, (unsigned)v);
    unsigned an = __reduce_and_sync(0xffffffff, (unsigned)v);
    unsigned orr = __reduce_or_sync(0xffffffff, (unsigned)v);
    unsigned xr = __reduce_xor_sync(0xffffffff, (unsigned)v);
    int uni = __uni_sync(0xffffffff, v > 0) | (__uni_sync(0xffffffff, (i >> 5) & 1) << 1);
    if (i < n) {
        o[0] = any32; o[1] = any64; o[2] = all32;
        o[3] = all64; o[4] = (unsigned)p32 | ((unsigned)p64 << 1); o[5] = odd; o[6] = (unsigned)neighbour;
        o[7] = mn; o[8] = mx; o[9] = an; o[10] = orr; o[11] = xr; o[12] = (unsigned)uni;
    }
}
