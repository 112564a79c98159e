// The demo's kernel. qcuda/examples/vector_add.ptx is generated from this file by
// tools/gen_examples.sh (nvcc -ptx), so guests without a compiler can still load it.
extern "C" __global__ void vector_add(const float *a, const float *b, float *c, int n)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        c[i] = a[i] + b[i];
    }
}
