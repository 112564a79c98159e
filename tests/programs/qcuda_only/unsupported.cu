// qcuda only (a real GPU supports these): a call qcuda does not implement says so once on stderr
// and returns cudaErrorNotSupported; it never crashes and never pretends to succeed.
#include "../check.h"

int main() {
  cudaGraph_t graph;
  EXPECT(cudaErrorNotSupported, cudaGraphCreate(&graph, 0));
  EXPECT(cudaErrorNotSupported, cudaGraphCreate(&graph, 0));
  CHECK("the last error says so", cudaGraphCreate(&graph, 0) == cudaErrorNotSupported &&
                                      cudaGetLastError() == cudaErrorNotSupported);
  void *p = nullptr;
  cudaIpcMemHandle_t ipc;
  EXPECT(cudaErrorNotSupported, cudaIpcGetMemHandle(&ipc, p));
  OK(cudaDeviceSynchronize());
  return finish();
}
