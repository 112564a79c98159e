// Errors: names and texts, cudaGetLastError/cudaPeekAtLastError, and the last error kept per host thread.
#include <cstring>
#include <thread>
#include "check.h"

int main() {
  CHECK("name of cudaSuccess", strcmp(cudaGetErrorName(cudaSuccess), "cudaSuccess") == 0);
  CHECK("text of cudaSuccess", strcmp(cudaGetErrorString(cudaSuccess), "no error") == 0);
  CHECK("name of an error", strcmp(cudaGetErrorName(cudaErrorInvalidValue), "cudaErrorInvalidValue") == 0);
  CHECK("text of an error", strcmp(cudaGetErrorString(cudaErrorMemoryAllocation), "out of memory") == 0);
  CHECK("text of cudaErrorNotSupported", strcmp(cudaGetErrorString(cudaErrorNotSupported), "operation not supported") == 0);
  CHECK("name of cudaErrorIllegalAddress", strcmp(cudaGetErrorName(cudaErrorIllegalAddress), "cudaErrorIllegalAddress") == 0);
  CHECK("text of an unknown code", strcmp(cudaGetErrorString((cudaError_t)12345), "unrecognized error code") == 0);

  OK(cudaGetLastError());
  OK(cudaSetDevice(0));
  CHECK("a failing call sets the last error", cudaSetDevice(9999) == cudaErrorInvalidDevice);
  CHECK("a later success keeps it", cudaSetDevice(0) == cudaSuccess);
  CHECK("peek does not clear", cudaPeekAtLastError() == cudaErrorInvalidDevice);
  CHECK("get returns and clears", cudaGetLastError() == cudaErrorInvalidDevice);
  CHECK("cleared", cudaGetLastError() == cudaSuccess);

  // each host thread has its own last error
  CHECK("set in main", cudaSetDevice(9999) == cudaErrorInvalidDevice);
  cudaError_t seen_in_thread = cudaErrorUnknown, after_fail = cudaSuccess;
  std::thread t([&] {
    seen_in_thread = cudaPeekAtLastError();
    void *p = nullptr;
    cudaMalloc(&p, (size_t)1 << 50);
    after_fail = cudaGetLastError();
  });
  t.join();
  CHECK("a new thread starts with no error", seen_in_thread == cudaSuccess);
  CHECK("a thread sees its own error", after_fail == cudaErrorMemoryAllocation);
  CHECK("main keeps its error", cudaGetLastError() == cudaErrorInvalidDevice);

  // several threads using the device at once
  int *d = nullptr;
  OK(cudaMalloc(&d, 8 * 1024 * sizeof(int)));
  bool thread_ok[8] = {};
  std::thread workers[8];
  for (int w = 0; w < 8; w++)
    workers[w] = std::thread([&, w] {
      int host[1024];
      for (int i = 0; i < 1024; i++) host[i] = w * 1000000 + i;
      cudaStream_t s;
      bool ok = cudaStreamCreate(&s) == cudaSuccess;
      ok &= cudaMemcpyAsync(d + w * 1024, host, sizeof host, cudaMemcpyHostToDevice, s) == cudaSuccess;
      ok &= cudaStreamSynchronize(s) == cudaSuccess;
      int back[1024];
      ok &= cudaMemcpy(back, d + w * 1024, sizeof back, cudaMemcpyDeviceToHost) == cudaSuccess;
      ok &= memcmp(back, host, sizeof back) == 0;
      ok &= cudaStreamDestroy(s) == cudaSuccess;
      thread_ok[w] = ok;
    });
  bool all = true;
  for (int w = 0; w < 8; w++) {
    workers[w].join();
    all &= thread_ok[w];
  }
  CHECK("eight threads copying at once", all);
  OK(cudaFree(d));
  return finish();
}
