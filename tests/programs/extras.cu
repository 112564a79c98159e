// Calls beyond the basics that programs commonly make: stream-ordered allocation, kernel attributes,
// stream properties, event record flags, peer copies on one device, the PCI bus id, the profiler.
#include <cstring>
#include <cuda_profiler_api.h>
#include "check.h"

__global__ void shared_reverse(int *out) {
  extern __shared__ int tile[];
  tile[threadIdx.x] = threadIdx.x;
  __syncthreads();
  out[threadIdx.x] = tile[blockDim.x - 1 - threadIdx.x];
}

int main() {
  cudaStream_t s, prio;
  OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  int least = 0, greatest = 0;
  OK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  OK(cudaStreamCreateWithPriority(&prio, cudaStreamDefault, greatest - 100));  // clamped to the range
  unsigned flags = 99;
  int priority = 99, dev = 99;
  OK(cudaStreamGetFlags(s, &flags));
  CHECK("non-blocking stream flags", flags == cudaStreamNonBlocking);
  OK(cudaStreamGetFlags(prio, &flags));
  CHECK("default stream flags", flags == cudaStreamDefault);
  OK(cudaStreamGetPriority(prio, &priority));
  CHECK("priority clamped to the greatest", priority == greatest);
  OK(cudaStreamGetPriority(s, &priority));
  CHECK("default priority", priority == 0);
  OK(cudaStreamGetDevice(s, &dev));
  cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusActive;
  OK(cudaStreamIsCapturing(s, &capturing));
  CHECK("not capturing", capturing == cudaStreamCaptureStatusNone);
  CHECK("stream device", dev == 0);

  int *a = nullptr, *b = nullptr, host[256];
  OK(cudaMallocAsync(&a, sizeof host, s));
  OK(cudaMallocAsync(&b, sizeof host, s));
  OK(cudaMemsetAsync(a, 0, sizeof host, s));
  OK(cudaFuncSetAttribute((const void *)shared_reverse, cudaFuncAttributeMaxDynamicSharedMemorySize, 40 * 1024));
  EXPECT(cudaErrorInvalidValue,
         cudaFuncSetAttribute((const void *)shared_reverse, cudaFuncAttributeMaxDynamicSharedMemorySize, 1 << 30));
  shared_reverse<<<1, 256, 40 * 1024, s>>>(a);
  OK(cudaGetLastError());
  OK(cudaMemcpyPeerAsync(b, 0, a, 0, sizeof host, s));
  cudaEvent_t done;
  OK(cudaEventCreate(&done));
  OK(cudaEventRecordWithFlags(done, s, cudaEventRecordDefault));
  OK(cudaEventSynchronize(done));
  OK(cudaMemcpy(host, b, sizeof host, cudaMemcpyDeviceToHost));
  bool reversed = true;
  for (int i = 0; i < 256; i++) reversed &= host[i] == 255 - i;
  CHECK("dynamic shared memory after cudaFuncSetAttribute", reversed);
  OK(cudaMemcpyPeer(a, 0, b, 0, sizeof host));
  OK(cudaFreeAsync(a, s));
  OK(cudaFreeAsync(b, s));
  OK(cudaStreamSynchronize(s));

  cudaFuncAttributes fattr;
  OK(cudaFuncGetAttributes(&fattr, (const void *)shared_reverse));
  CHECK("function attributes", fattr.maxThreadsPerBlock > 0 && fattr.maxThreadsPerBlock <= 1024 &&
                                   fattr.binaryVersion == 90 && fattr.ptxVersion == 90);
  EXPECT(cudaErrorInvalidResourceHandle, cudaFuncGetAttributes(&fattr, (const void *)main));

  cudaFuncCache cache = cudaFuncCachePreferEqual;
  OK(cudaDeviceGetCacheConfig(&cache));
  CHECK("no cache preference at first", cache == cudaFuncCachePreferNone);
  OK(cudaDeviceSetCacheConfig(cudaFuncCachePreferShared));
  OK(cudaDeviceGetCacheConfig(&cache));
  CHECK("the device's cache preference", cache == cudaFuncCachePreferShared);
  OK(cudaFuncSetCacheConfig((const void *)shared_reverse, cudaFuncCachePreferL1));
  OK(cudaDeviceSetCacheConfig(cudaFuncCachePreferNone));

  char bus[32];
  OK(cudaDeviceGetPCIBusId(bus, sizeof bus, 0));
  CHECK("PCI bus id form", strlen(bus) == 12 && bus[4] == ':' && bus[7] == ':' && bus[10] == '.');
  OK(cudaProfilerStart());
  OK(cudaProfilerStop());
  OK(cudaEventDestroy(done));
  OK(cudaStreamDestroy(s));
  OK(cudaStreamDestroy(prio));
  return finish();
}
