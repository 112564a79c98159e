// Struct and template parameters: the parameter layout comes from the .entry list.
struct Params {
    char tag;
    double scale;
    int offsets[3];
    short s;
};

struct alignas(16) Vec4 { float x, y, z, w; };

template <typename T, int K>
__global__ void scale_add(Params p, const T* in, T* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = (T)(in[i] * p.scale) + (T)(p.offsets[i % 3] * K) + (T)p.tag + (T)p.s;
}

template __global__ void scale_add<float, 2>(Params, const float*, float*, int);
template __global__ void scale_add<int, 3>(Params, const int*, int*, int);

extern "C" __global__ void vec4_kernel(char c, Vec4 v, float4* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = make_float4(v.x * i + c, v.y, v.z - i, v.w * v.x);
}
