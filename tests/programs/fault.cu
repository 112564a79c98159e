// A kernel that faults: the error is sticky (every later call reports it) until cudaDeviceReset.
#include "check.h"

__global__ void write_to(int *p) { *p = 1; }

int main() {
  int *d = nullptr, h = 0;
  OK(cudaMalloc(&d, sizeof(int)));
  write_to<<<1, 1>>>((int *)0x10);
  OK(cudaGetLastError());  // the launch itself is fine
  EXPECT(cudaErrorIllegalAddress, cudaDeviceSynchronize());
  EXPECT(cudaErrorIllegalAddress, cudaMemcpy(&h, d, sizeof h, cudaMemcpyDeviceToHost));
  OK(cudaDeviceReset());
  OK(cudaMalloc(&d, sizeof(int)));
  write_to<<<1, 1>>>(d);
  OK(cudaMemcpy(&h, d, sizeof h, cudaMemcpyDeviceToHost));
  CHECK("the device works again after cudaDeviceReset", h == 1);
  OK(cudaFree(d));
  return finish();
}
