// Conversions between integer and float types, with the rounding modes nvcc emits.
#include <stdint.h>
#include <cuda_fp16.h>
extern "C" __global__ void conversions(const float* f, const double* d, const int64_t* l, int32_t* oi, float* of, double* od, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = f[i]; double y = d[i]; int64_t z = l[i];
    oi[i * 8 + 0] = (int)x;
    oi[i * 8 + 1] = (int)(unsigned)fabsf(x);
    oi[i * 8 + 2] = (int)y;
    oi[i * 8 + 3] = (int)(short)z;
    oi[i * 8 + 4] = (int)(signed char)z;
    oi[i * 8 + 5] = (int)(unsigned char)(z >> 3);
    oi[i * 8 + 6] = __float2int_rn(x);
    oi[i * 8 + 7] = (int)(long long)y;
    of[i * 4 + 0] = (float)y;
    of[i * 4 + 1] = (float)z;
    of[i * 4 + 2] = (float)(unsigned)z;
    of[i * 4 + 3] = fminf(x, (float)y) + fmaxf(x, -1.0f) - fabsf(x);
    od[i * 4 + 0] = (double)x;
    od[i * 4 + 1] = (double)z;
    od[i * 4 + 2] = (double)(uint64_t)z;
    od[i * 4 + 3] = fma(y, 2.0, (double)x);
}

// Fused multiply-add in single precision: one rounding, also where float64 arithmetic would round twice.
extern "C" __global__ void fma_f32(const float* a, const float* b, const float* c, float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = fmaf(a[i], b[i], c[i]);
}

// Vector loads and stores (.v2/.v4, .nc) and half precision conversions.
extern "C" __global__ void vectors(const float4* __restrict__ in, const double2* __restrict__ d, float4* out, double2* outd, unsigned short* h, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float4 v = in[i];
    out[i] = make_float4(v.w, v.z * 2.0f, v.y + v.x, -v.x);
    double2 e = d[i];
    outd[i] = make_double2(e.y, e.x - e.y);
    h[i] = __half_as_ushort(__float2half_rn(v.x));
}

extern "C" __global__ void fma_f64(const double* a, const double* b, const double* c, double* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = fma(a[i], b[i], c[i]);
}
