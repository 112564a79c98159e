// Streams and events: creation with flags and priorities, ordering between streams through
// events, queries, synchronisation, elapsed time, and errors for handles that do not exist.
#include "check.h"

__global__ void spin_add(float *p, int n, float v, int rounds) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n)
    for (int r = 0; r < rounds; r++) p[i] += v;
}

int main() {
  const int n = 4096;
  float *a = nullptr, *host = nullptr;
  OK(cudaMalloc(&a, n * sizeof(float)));
  OK(cudaMallocHost(&host, n * sizeof(float)));
  OK(cudaMemset(a, 0, n * sizeof(float)));

  int least = 1, greatest = 1;
  OK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  CHECK("priority range", greatest <= least);
  cudaStream_t s1, s2, s3;
  OK(cudaStreamCreate(&s1));
  OK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
  OK(cudaStreamCreateWithPriority(&s3, cudaStreamNonBlocking, greatest));
  cudaEvent_t start, stop, mid, untimed;
  OK(cudaEventCreate(&start));
  OK(cudaEventCreate(&stop));
  OK(cudaEventCreateWithFlags(&mid, cudaEventDefault));
  OK(cudaEventCreateWithFlags(&untimed, cudaEventDisableTiming));

  OK(cudaEventRecord(start, s1));
  spin_add<<<n / 256, 256, 0, s1>>>(a, n, 1.f, 20);
  OK(cudaEventRecord(mid, s1));
  OK(cudaStreamWaitEvent(s2, mid, 0));
  spin_add<<<n / 256, 256, 0, s2>>>(a, n, 2.f, 1);  // must see s1's work first
  OK(cudaEventRecord(untimed, s2));
  OK(cudaStreamWaitEvent(s3, untimed, 0));
  OK(cudaMemcpyAsync(host, a, n * sizeof(float), cudaMemcpyDeviceToHost, s3));
  OK(cudaEventRecord(stop, s3));
  OK(cudaEventSynchronize(stop));
  OK(cudaEventQuery(stop));
  OK(cudaStreamQuery(s3));
  bool ordered = true;
  for (int i = 0; i < n; i++) ordered &= host[i] == 22.f;
  CHECK("streams ordered by events", ordered);
  float ms = -1;
  OK(cudaEventElapsedTime(&ms, start, stop));
  CHECK("elapsed time", ms >= 0);
  EXPECT(cudaErrorInvalidResourceHandle, cudaEventElapsedTime(&ms, start, untimed));

  // the legacy default stream waits for blocking streams
  spin_add<<<n / 256, 256, 0, s1>>>(a, n, 1.f, 5);
  OK(cudaMemcpy(host, a, n * sizeof(float), cudaMemcpyDeviceToHost));
  CHECK("legacy stream after a blocking stream", host[0] == 27.f && host[n - 1] == 27.f);
  OK(cudaStreamSynchronize(0));
  OK(cudaStreamSynchronize(cudaStreamLegacy));
  OK(cudaStreamSynchronize(cudaStreamPerThread));
  OK(cudaStreamQuery(0));

  // a query of pending work says cudaErrorNotReady, which is no error for cudaGetLastError
  spin_add<<<n / 256, 256, 0, s2>>>(a, n, 1.f, 2000);
  cudaError_t q = cudaStreamQuery(s2);
  CHECK("query of a stream is ready or not ready", q == cudaSuccess || q == cudaErrorNotReady);
  OK(cudaPeekAtLastError());
  OK(cudaStreamSynchronize(s2));
  OK(cudaStreamQuery(s2));

  OK(cudaStreamDestroy(s1));
  OK(cudaStreamDestroy(s2));
  OK(cudaStreamDestroy(s3));
  OK(cudaEventDestroy(start));
  OK(cudaEventDestroy(stop));
  OK(cudaEventDestroy(mid));
  OK(cudaEventDestroy(untimed));
  OK(cudaFreeHost(host));
  OK(cudaFree(a));
  OK(cudaDeviceSynchronize());
  return finish();
}
