// Per-call latency of common runtime calls, as an unmodified program sees it: run natively and through
// `qcuda run` by bench/call_latency.py. Prints one line per call: NAME MICROSECONDS (median of rounds).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>
#include <cuda_runtime.h>

__global__ void empty(int *p) {}

template <typename F>
static double median_us(int rounds, int per_round, F f) {
  std::vector<double> t;
  for (int r = 0; r < rounds; r++) {
    auto a = std::chrono::steady_clock::now();
    for (int i = 0; i < per_round; i++) f();
    auto b = std::chrono::steady_clock::now();
    t.push_back(std::chrono::duration<double, std::micro>(b - a).count() / per_round);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

int main() {
  int *p, h = 0, *pinned;
  cudaStream_t s;
  cudaMalloc(&p, 4);
  cudaMallocHost(&pinned, 4);
  cudaStreamCreate(&s);
  for (int i = 0; i < 100; i++) empty<<<1, 1>>>(p);  // warm up: module load, first launch
  cudaDeviceSynchronize();
  printf("kernel_launch_async %.2f\n", median_us(9, 200, [&] { empty<<<1, 1, 0, s>>>(p); }));
  cudaStreamSynchronize(s);
  printf("launch_and_sync %.2f\n", median_us(9, 100, [&] { empty<<<1, 1, 0, s>>>(p); cudaStreamSynchronize(s); }));
  printf("memcpy_4B_d2h_pageable %.2f\n", median_us(9, 100, [&] { cudaMemcpy(&h, p, 4, cudaMemcpyDeviceToHost); }));
  printf("memcpy_4B_h2d_pageable %.2f\n", median_us(9, 100, [&] { cudaMemcpy(p, &h, 4, cudaMemcpyHostToDevice); }));
  printf("memcpy_4B_d2h_pinned %.2f\n", median_us(9, 100, [&] { cudaMemcpy(pinned, p, 4, cudaMemcpyDeviceToHost); }));
  printf("stream_query %.2f\n", median_us(9, 200, [&] { cudaStreamQuery(s); }));
  printf("get_device %.2f\n", median_us(9, 1000, [&] { int d; cudaGetDevice(&d); }));
  return cudaGetLastError() == cudaSuccess ? 0 : 1;
}
