// Two translation units, so two fatbins in one program: each module loads on its first launch.
#include "../check.h"

void launch_other(int *p, int n);  // other.cu

__global__ void square(int *p, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] *= p[i];
}

int main() {
  const int n = 300;
  int host[n], *d = nullptr;
  for (int i = 0; i < n; i++) host[i] = i;
  OK(cudaMalloc(&d, sizeof host));
  OK(cudaMemcpy(d, host, sizeof host, cudaMemcpyHostToDevice));
  square<<<(n + 127) / 128, 128>>>(d, n);
  OK(cudaGetLastError());
  launch_other(d, n);
  OK(cudaGetLastError());
  OK(cudaMemcpy(host, d, sizeof host, cudaMemcpyDeviceToHost));
  bool ok = true;
  for (int i = 0; i < n; i++) ok &= host[i] == i * i + 5;
  CHECK("kernels of two fatbins", ok);
  OK(cudaFree(d));
  return finish();
}
