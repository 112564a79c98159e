// Host work in stream order: cudaLaunchHostFunc and cudaStreamAddCallback run on the host once the
// work before them is done, and the work after them waits for them.
#include <atomic>
#include "check.h"

__global__ void add(int *p, int v) { *p += v; }

struct Log {
  int *pinned;
  int seen[4];
  std::atomic<int> count{0};
};

static void CUDART_CB host_fn(void *data) {
  Log *log = (Log *)data;
  log->seen[log->count++] = *log->pinned;
  *log->pinned += 1000;  // the next kernel must see this
}

static void CUDART_CB stream_callback(cudaStream_t, cudaError_t status, void *data) {
  Log *log = (Log *)data;
  log->seen[log->count++] = status == cudaSuccess ? *log->pinned : -1;
}

int main() {
  Log log;
  int *d = nullptr;
  OK(cudaMallocHost(&log.pinned, sizeof(int)));
  OK(cudaMalloc(&d, sizeof(int)));
  OK(cudaMemset(d, 0, sizeof(int)));
  cudaStream_t s;
  OK(cudaStreamCreate(&s));
  add<<<1, 1, 0, s>>>(d, 5);
  OK(cudaMemcpyAsync(log.pinned, d, sizeof(int), cudaMemcpyDeviceToHost, s));
  OK(cudaLaunchHostFunc(s, host_fn, &log));
  OK(cudaMemcpyAsync(d, log.pinned, sizeof(int), cudaMemcpyHostToDevice, s));
  add<<<1, 1, 0, s>>>(d, 7);
  OK(cudaMemcpyAsync(log.pinned, d, sizeof(int), cudaMemcpyDeviceToHost, s));
  OK(cudaStreamAddCallback(s, stream_callback, &log, 0));
  OK(cudaStreamSynchronize(s));
  CHECK("two host calls ran", log.count == 2);
  CHECK("the host function saw the kernel's result", log.seen[0] == 5);
  CHECK("later work saw the host function's write", log.seen[1] == 1012);
  OK(cudaLaunchHostFunc(0, host_fn, &log));
  OK(cudaDeviceSynchronize());
  CHECK("a host function on the default stream", log.count == 3 && log.seen[2] == 1012);
  EXPECT(cudaErrorInvalidValue, cudaStreamAddCallback(s, stream_callback, &log, 1));
  OK(cudaStreamDestroy(s));
  OK(cudaFreeHost(log.pinned));
  OK(cudaFree(d));
  return finish();
}
