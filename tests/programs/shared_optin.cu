// More than 48 KiB of dynamic shared memory: allowed after cudaFuncSetAttribute opts the kernel in.
#include "check.h"

__global__ void reverse(int *out, int n) {
  extern __shared__ int tile[];
  for (int i = threadIdx.x; i < n; i += blockDim.x) tile[i] = i;
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = tile[n - 1 - i];
}

int main() {
  const int n = 24 * 1024;  // 96 KiB of ints
  int *d = nullptr, *host = new int[n];
  OK(cudaMalloc(&d, n * sizeof(int)));
  OK(cudaFuncSetAttribute((const void *)reverse, cudaFuncAttributeMaxDynamicSharedMemorySize, n * sizeof(int)));
  reverse<<<1, 256, n * sizeof(int)>>>(d, n);
  OK(cudaGetLastError());
  OK(cudaMemcpy(host, d, n * sizeof(int), cudaMemcpyDeviceToHost));
  bool reversed = true;
  for (int i = 0; i < n; i++) reversed &= host[i] == n - 1 - i;
  CHECK("96 KiB of dynamic shared memory", reversed);
  OK(cudaFree(d));
  delete[] host;
  return finish();
}
