// The CUDA math library in float and double, as nvcc inlines it (range reduction, polynomials,
// and the .approx instructions it builds on), and the fast intrinsics. Built with the default
// -prec-div=true -prec-sqrt=true and again with both false (1/x, x/y and sqrtf become .approx).
#define F32_FNS 17
extern "C" __global__ void math_f32(const float* x, const float* y, float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float a = x[i], b = y[i], *o = out + i * F32_FNS;
    float pos = fabsf(a) * 0.25f + 1e-3f;
    o[0] = sinf(a);           o[1] = cosf(a);       o[2] = expf(b);       o[3] = exp2f(b);
    o[4] = logf(pos);         o[5] = log2f(pos);    o[6] = powf(pos, b);  o[7] = sqrtf(pos);
    o[8] = rsqrtf(pos);       o[9] = 1.0f / a;      o[10] = a / b;
    float r = fmodf(fabsf(a), 6.2831853f) - 3.1415926f;  // in [-pi, pi): where the intrinsics' bounds are stated
    o[11] = __sinf(r);        o[12] = __cosf(r);    o[13] = __expf(b);    o[14] = __logf(pos);
    o[15] = __log2f(pos);     o[16] = __fdividef(a, b);
}

#define F64_FNS 11
extern "C" __global__ void math_f64(const double* x, const double* y, double* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    double a = x[i], b = y[i], *o = out + i * F64_FNS;
    double pos = fabs(a) * 0.25 + 1e-3;
    o[0] = sin(a);            o[1] = cos(a);        o[2] = exp(b);        o[3] = exp2(b);
    o[4] = log(pos);          o[5] = log2(pos);     o[6] = pow(pos, b);   o[7] = sqrt(pos);
    o[8] = rsqrt(pos);        o[9] = 1.0 / a;       o[10] = a / b;
}
