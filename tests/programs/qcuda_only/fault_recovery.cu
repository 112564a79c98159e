// qcuda only (CUDA 13 on an H100 cannot use the device again in this process): after a kernel fault
// and cudaDeviceReset, the emulated device works again.
#include "../check.h"

__global__ void write_to(int *p) { *p = 1; }

int main() {
  int *d = nullptr, h = 0;
  write_to<<<1, 1>>>((int *)0x10);
  EXPECT(cudaErrorIllegalAddress, cudaDeviceSynchronize());
  OK(cudaDeviceReset());
  OK(cudaMalloc(&d, sizeof(int)));
  write_to<<<1, 1>>>(d);
  OK(cudaMemcpy(&h, d, sizeof h, cudaMemcpyDeviceToHost));
  CHECK("the device works again after cudaDeviceReset", h == 1);
  OK(cudaFree(d));
  return finish();
}
