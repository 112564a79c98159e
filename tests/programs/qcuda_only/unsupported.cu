// qcuda only (a real GPU supports these): a call qcuda does not implement says so once on stderr
// and returns cudaErrorNotSupported; it never crashes and never pretends to succeed.
#include "../check.h"

int main() {
  cudaArray_t array;
  cudaChannelFormatDesc desc = cudaCreateChannelDesc<float>();
  EXPECT(cudaErrorNotSupported, cudaMallocArray(&array, &desc, 64, 64, 0));
  EXPECT(cudaErrorNotSupported, cudaMallocArray(&array, &desc, 64, 64, 0));
  CHECK("the last error says so", cudaMallocArray(&array, &desc, 64, 64, 0) == cudaErrorNotSupported &&
                                      cudaGetLastError() == cudaErrorNotSupported);
  void *p = nullptr;
  cudaIpcMemHandle_t ipc;
  EXPECT(cudaErrorNotSupported, cudaIpcGetMemHandle(&ipc, p));
  OK(cudaDeviceSynchronize());
  return finish();
}
