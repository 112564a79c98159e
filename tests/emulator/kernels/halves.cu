// Half2 and bfloat16 arithmetic and conversions (packed registers).
#include <cuda_fp16.h>
#include <cuda_bf16.h>
extern "C" __global__ void halves(const __half2* a, const __half2* b, __half2* out, const float* f, __nv_bfloat16* bo, __nv_bfloat162* b2, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    __half2 x = a[i], y = b[i];
    out[i] = __hfma2(x, y, __hadd2(x, __hmul2(y, y)));
    out[n + i] = __hmax2(__hsub2(x, y), __hneg2(y));
    out[2 * n + i] = __floats2half2_rn(f[i], f[i] * 3.0f);
    __nv_bfloat16 p = __float2bfloat16(f[i]);
    __nv_bfloat16 q = __float2bfloat16(f[i] * 0.37f);
    bo[i] = __hadd(p, __hmul(p, q));
    __nv_bfloat162 u = __floats2bfloat162_rn(f[i], 2.0f);
    b2[i] = __hfma2(u, u, u);
    float back = __bfloat162float(bo[i]) + __half2float(__low2half(x));
    bo[n + i] = __float2bfloat16_rz(back);
}

// Scalar half arithmetic, comparisons, conversions with each rounding mode, and half atomics.
extern "C" __global__ void half_scalar(const __half* a, const __half* b, const float* f, __half* out,
                                       unsigned short* flags, __half2* acc2, __half* acc, __nv_bfloat16* accb, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    __half x = a[i], y = b[i];
    __half* o = out + i * 12;
    o[0] = __hadd(x, y);  o[1] = __hsub(x, y);  o[2] = __hmul(x, y);  o[3] = __hdiv(x, y);
    o[4] = __hfma(x, y, __float2half(0.5f));    o[5] = hsqrt(__habs(x));
    o[6] = __float2half_rz(f[i]);  o[7] = __float2half_rd(f[i]);  o[8] = __float2half_ru(f[i]);
    o[9] = __int2half_rn((int)(f[i] * 1000.0f));  o[10] = __hadd_sat(x, y);  o[11] = __hmax(x, __hneg(y));
    flags[i] = (unsigned short)(__hlt(x, y) | (__hge(x, y) << 1) | (__hisnan(__hdiv(x, x)) << 2) | (__half2int_rz(x) << 3));
    atomicAdd(acc2, __halves2half2(__float2half(1.0f), __float2half(0.25f)));
    atomicAdd(acc, __float2half(0.5f));
    atomicAdd(accb, __float2bfloat16(2.0f));
}
