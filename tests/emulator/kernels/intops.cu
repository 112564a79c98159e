// 64-bit integer arithmetic and the integer bit operations.
#include <stdint.h>
extern "C" __global__ void int64_ops(const int64_t* a, const int64_t* b, int64_t* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int64_t x = a[i], y = b[i];
    uint64_t ux = (uint64_t)x, uy = (uint64_t)y;
    int64_t* o = out + (int64_t)i * 10;
    o[0] = x + y;
    o[1] = x * y;
    o[2] = y != 0 ? x / y : 0;
    o[3] = y != 0 ? x % y : 0;
    o[4] = (int64_t)(uy != 0 ? ux / uy : 0);
    o[5] = (int64_t)__umul64hi(ux, uy);
    o[6] = __mul64hi(x, y);
    o[7] = x >> (y & 63);
    o[8] = (int64_t)(ux >> (uy & 63)) ^ (x << (y & 63));
    o[9] = x < y ? (x > 0 ? x : -x) : (y < 0 ? y : ~y);
}

extern "C" __global__ void bit_ops(const uint32_t* a, const uint32_t* b, uint32_t* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    uint32_t x = a[i], y = b[i];
    uint32_t* o = out + i * 12;
    o[0] = __popc(x);
    o[1] = __clz(x);
    o[2] = __brev(x);
    o[3] = (x >> (y & 15)) & ((1u << ((y >> 4) & 15)) - 1);  // a bit-field extract
    o[4] = __byte_perm(x, y, y & 0x7777);
    o[5] = __popcll(((uint64_t)x << 32) | y);
    o[6] = __clzll((uint64_t)x * y);
    o[7] = __ffs(x);
    o[8] = (x & ~y) | (y ^ 0x5a5a5a5a);
    o[9] = __umulhi(x, y);
    o[10] = (uint32_t)__mulhi((int)x, (int)y);
    o[11] = x / (y | 1) + x % (y | 1);
}

// Bit-field extract and insert through inline PTX (CUDA C has no intrinsic for them).
extern "C" __global__ void bitfield_ops(const uint32_t* a, const uint32_t* b, uint32_t* out, uint64_t* out64, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    uint32_t x = a[i], pos = b[i] & 63, len = (b[i] >> 8) & 63, r;
    int32_t s;
    asm("bfe.u32 %0, %1, %2, %3;" : "=r"(r) : "r"(x), "r"(pos), "r"(len));
    out[i * 4 + 0] = r;
    asm("bfe.s32 %0, %1, %2, %3;" : "=r"(s) : "r"(x), "r"(pos), "r"(len));
    out[i * 4 + 1] = (uint32_t)s;
    asm("bfi.b32 %0, %1, %2, %3, %4;" : "=r"(r) : "r"(x), "r"(b[i]), "r"(pos), "r"(len));
    out[i * 4 + 2] = r;
    asm("shf.l.wrap.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(x), "r"(b[i]), "r"(pos));
    out[i * 4 + 3] = r;
    uint64_t y = ((uint64_t)x << 32) | b[i], r64;
    asm("bfe.u64 %0, %1, %2, %3;" : "=l"(r64) : "l"(y), "r"(pos), "r"(len));
    out64[i * 2 + 0] = r64;
    asm("bfe.s64 %0, %1, %2, %3;" : "=l"(r64) : "l"(y), "r"(pos), "r"(len));
    out64[i * 2 + 1] = r64;
}
