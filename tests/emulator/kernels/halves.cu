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
