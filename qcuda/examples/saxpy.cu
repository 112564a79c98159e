// The demo's unmodified CUDA program: plain CUDA runtime calls and a <<<>>> launch, checked on the host.
// `qcuda demo` builds it with `nvcc -cudart shared` and runs it through `qcuda run`.
#include <cstdio>
#include <cstdlib>
#include <cmath>

__global__ void saxpy(int n, float a, const float *x, float *y)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + y[i];
}

int main()
{
    const int n = 1 << 20;
    float *x = (float *)malloc(n * sizeof(float)), *y = (float *)malloc(n * sizeof(float));
    for (int i = 0; i < n; i++) { x[i] = i * 0.5f; y[i] = 1.0f; }
    cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, 0);
    float *dx, *dy;
    cudaMalloc(&dx, n * sizeof(float));
    cudaMalloc(&dy, n * sizeof(float));
    cudaMemcpy(dx, x, n * sizeof(float), cudaMemcpyHostToDevice);
    cudaMemcpy(dy, y, n * sizeof(float), cudaMemcpyHostToDevice);
    saxpy<<<(n + 255) / 256, 256>>>(n, 2.0f, dx, dy);
    cudaError_t err = cudaMemcpy(y, dy, n * sizeof(float), cudaMemcpyDeviceToHost);
    int wrong = 0;
    for (int i = 0; i < n; i++) wrong += y[i] != 2.0f * (i * 0.5f) + 1.0f;
    printf("saxpy of %d floats on %s: %s (%s)\n", n, prop.name, wrong ? "WRONG" : "correct", cudaGetErrorString(err));
    cudaFree(dx);
    cudaFree(dy);
    free(x);
    free(y);
    return wrong || err != cudaSuccess;
}
