// A kernel that faults: the error is sticky (every later call reports it); cudaDeviceReset succeeds.
// (What works after the reset differs: CUDA 13 on an H100 answers cudaErrorDevicesUnavailable; see
// qcuda_only/fault_recovery.cu for the emulated device, which recovers.)
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
  return finish();
}
