// Every integer and float atomic CUDA C offers, on global and shared memory, 32- and 64-bit, with
// results and old values unused (red) and used (atom); a CAS loop as user code writes one.
#include <stdint.h>

typedef unsigned long long u64;

// Global: g32 = {add, min, max, inc, dec, and, or, xor, cas-loop add, red add}, g64 = {add, min, max, and, or,
// xor, cas-loop add}; shared: the same in s32 and s64 (s64[7]: red add), gf = {f32 add}, gd = {f64 add}. `tickets` takes the old value of an atom.add.
extern "C" __global__ void atomic_ops(const unsigned* in, unsigned* g32, u64* g64, float* gf, double* gd,
                                      unsigned* tickets, unsigned* s32_out, u64* s64_out, float* sf_out,
                                      double* sd_out, int n) {
    __shared__ unsigned s32[9];
    __shared__ u64 s64[8];
    __shared__ float sf;
    __shared__ double sd;
    int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    if (t < 9) s32[t] = t == 1 ? 0xFFFFFFFFu : (t == 5 ? 0xFFFFFFFFu : 0u);
    if (t < 8) s64[t] = t == 1 ? ~0ull : (t == 3 ? ~0ull : 0ull);
    if (t == 0) { sf = 0.0f; sd = 0.0; }
    __syncthreads();
    if (i < n) {
        unsigned v = in[i];
        u64 w = ((u64)v << 29) ^ (u64)(v * 2654435761u);
        float f = (float)(v & 255) * 0.25f;
        double d = (double)(v & 1023) * 0.125;
        tickets[i] = atomicAdd(&g32[0], 1u);
        atomicMin((int*)&g32[1], (int)v);
        atomicMax((int*)&g32[2], (int)v);
        atomicInc(&g32[3], 1000u);
        atomicDec(&g32[4], 77u);
        atomicAnd(&g32[5], v | 0x00010000u);
        atomicOr(&g32[6], v & 0x11111111u);
        atomicXor(&g32[7], v);
        unsigned old = g32[8], assumed;
        do { assumed = old; old = atomicCAS(&g32[8], assumed, assumed + (v & 15)); } while (old != assumed);
        asm volatile("red.global.add.u32 [%0], %1;" :: "l"(&g32[9]), "r"(v >> 16));  // nvcc emits atom
        atomicAdd(&g64[0], w);
        atomicMin((long long*)&g64[1], (long long)w - (1ll << 62));
        atomicMax(&g64[2], w);
        atomicAnd(&g64[3], w | 0x8000000000000001ull);
        atomicOr(&g64[4], w & 0x0101010101010101ull);
        atomicXor(&g64[5], w);
        u64 o = g64[6], a;
        do { a = o; o = atomicCAS(&g64[6], a, a + w); } while (o != a);
        atomicAdd(gf, f);
        atomicAdd(gd, d);
        atomicAdd(&s32[0], v & 0xFFFF);
        atomicMin(&s32[1], v);
        atomicMax((int*)&s32[2], (int)v);
        atomicInc(&s32[3], 50u);
        atomicDec(&s32[4], 33u);
        atomicAnd(&s32[5], v | 0x10000000u);
        atomicOr(&s32[6], v & 0x00F000F0u);
        atomicXor(&s32[7], v);
        unsigned so = s32[8], sa;
        do { sa = so; so = atomicCAS(&s32[8], sa, sa + (v & 7)); } while (so != sa);
        atomicAdd(&s64[0], w);
        atomicMin(&s64[1], w);
        atomicMax((long long*)&s64[2], (long long)w - (1ll << 62));
        atomicAnd(&s64[3], w | 0x4000000000000000ull);
        atomicOr(&s64[4], w & 0x0000FFFF0000FFFFull);
        atomicXor(&s64[5], w);
        u64 s6 = s64[6], b;
        do { b = s6; s6 = atomicCAS(&s64[6], b, b ^ w); } while (s6 != b);
        asm volatile("red.shared.add.u64 [%0], %1;" :: "r"((unsigned)__cvta_generic_to_shared(&s64[7])), "l"(w));
        atomicAdd(&sf, f);
        atomicAdd(&sd, d);
    }
    __syncthreads();
    if (t < 9) s32_out[blockIdx.x * 9 + t] = s32[t];
    if (t < 8) s64_out[blockIdx.x * 8 + t] = s64[t];
    if (t == 0) { sf_out[blockIdx.x] = sf; sd_out[blockIdx.x] = sd; }
}

// Exchange: every old value but one is some other thread's new value, and the last write stays.
extern "C" __global__ void atomic_exch_chain(unsigned* slot, unsigned* olds, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) olds[i] = atomicExch(slot, (unsigned)i + 1);
}

// Atomics through generic pointers (a device function that nvcc keeps as a call cannot know the
// space): shared counters are per block, the global one is shared by all.
__device__ __noinline__ unsigned bump(unsigned* p, unsigned v) { return atomicAdd(p, v); }
__device__ __noinline__ u64 swap64(u64* p, u64 v) { return atomicExch(p, v); }

extern "C" __global__ void generic_atomics(unsigned* g, u64* slot, unsigned* out, u64* olds) {
    __shared__ unsigned s;
    if (threadIdx.x == 0) s = 0;
    __syncthreads();
    bump(&s, 1u);
    bump(g, threadIdx.x);
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    olds[i] = swap64(slot, ((u64)i << 32) | 1u);
    __syncthreads();
    if (threadIdx.x == 0) out[blockIdx.x] = s;
}
