// Device management: count, selection, properties, attributes, limits, flags, versions, reset.
#include <cstring>
#include "check.h"

__global__ void touch(int *p) { *p = 42; }

int main() {
  OK(cudaSetDeviceFlags(cudaDeviceScheduleAuto));
  int count = 0;
  OK(cudaGetDeviceCount(&count));
  CHECK("at least one device", count >= 1);
  OK(cudaSetDevice(0));
  EXPECT(cudaErrorInvalidDevice, cudaSetDevice(count));
  EXPECT(cudaErrorInvalidDevice, cudaSetDevice(-1));
  int dev = -1;
  OK(cudaGetDevice(&dev));
  CHECK("current device is 0", dev == 0);
  unsigned flags = 1234;
  OK(cudaGetDeviceFlags(&flags));
  CHECK("device flags read back", flags != 1234);

  cudaDeviceProp prop;
  memset(&prop, 0xff, sizeof prop);
  OK(cudaGetDeviceProperties(&prop, 0));
  EXPECT(cudaErrorInvalidDevice, cudaGetDeviceProperties(&prop, count));
  CHECK("name is a string", strlen(prop.name) > 0 && strlen(prop.name) < sizeof prop.name);
  CHECK("warp size 32", prop.warpSize == 32);
  CHECK("compute capability 9.0", prop.major == 9 && prop.minor == 0);
  CHECK("max threads per block", prop.maxThreadsPerBlock == 1024);
  CHECK("max block dims", prop.maxThreadsDim[0] == 1024 && prop.maxThreadsDim[1] == 1024 && prop.maxThreadsDim[2] == 64);
  CHECK("max grid dims", prop.maxGridSize[0] == 2147483647 && prop.maxGridSize[1] == 65535 && prop.maxGridSize[2] == 65535);
  CHECK("shared memory per block", prop.sharedMemPerBlock == 49152);
  CHECK("total constant memory", prop.totalConstMem == 65536);
  CHECK("memory", prop.totalGlobalMem >= (1ull << 30));
  CHECK("multiprocessors", prop.multiProcessorCount >= 1);
  CHECK("unified addressing", prop.unifiedAddressing == 1);
  CHECK("can map host memory", prop.canMapHostMemory == 1);

  int value = -1;
  OK(cudaDeviceGetAttribute(&value, cudaDevAttrMaxThreadsPerBlock, 0));
  CHECK("attribute = property (threads)", value == prop.maxThreadsPerBlock);
  OK(cudaDeviceGetAttribute(&value, cudaDevAttrMultiProcessorCount, 0));
  CHECK("attribute = property (SMs)", value == prop.multiProcessorCount);
  OK(cudaDeviceGetAttribute(&value, cudaDevAttrComputeCapabilityMajor, 0));
  CHECK("attribute = property (major)", value == prop.major);
  OK(cudaDeviceGetAttribute(&value, cudaDevAttrWarpSize, 0));
  CHECK("attribute = property (warp)", value == 32);
  EXPECT(cudaErrorInvalidDevice, cudaDeviceGetAttribute(&value, cudaDevAttrWarpSize, count));
  EXPECT(cudaErrorInvalidValue, cudaDeviceGetAttribute(&value, (cudaDeviceAttr)100000, 0));

  int driver = 0, runtime = 0;
  OK(cudaDriverGetVersion(&driver));
  OK(cudaRuntimeGetVersion(&runtime));
  CHECK("runtime version", runtime == CUDART_VERSION);
  CHECK("driver supports this runtime", driver >= 13000);

  size_t free_bytes = 0, total = 0;
  OK(cudaMemGetInfo(&free_bytes, &total));
  CHECK("free <= total", free_bytes > 0 && free_bytes <= total);

  size_t limit = 0;
  OK(cudaDeviceSetLimit(cudaLimitStackSize, 4096));
  OK(cudaDeviceGetLimit(&limit, cudaLimitStackSize));
  CHECK("stack limit read back", limit >= 4096);
  OK(cudaDeviceSetLimit(cudaLimitMallocHeapSize, 16 << 20));
  OK(cudaDeviceGetLimit(&limit, cudaLimitMallocHeapSize));
  CHECK("heap limit read back", limit >= (16 << 20));
  OK(cudaDeviceGetLimit(&limit, cudaLimitPrintfFifoSize));
  CHECK("printf fifo limit", limit > 0);
  EXPECT(cudaErrorInvalidValue, cudaDeviceGetLimit(&limit, (cudaLimit)99));

  int *d = nullptr, h = 0;
  OK(cudaMalloc(&d, sizeof(int)));
  touch<<<1, 1>>>(d);
  OK(cudaGetLastError());
  OK(cudaDeviceSynchronize());
  OK(cudaMemcpy(&h, d, sizeof h, cudaMemcpyDeviceToHost));
  CHECK("kernel ran before reset", h == 42);
  OK(cudaDeviceReset());
  // After a reset the device starts afresh: kernels load again, memory allocates again.
  OK(cudaMalloc(&d, sizeof(int)));
  touch<<<1, 1>>>(d);
  OK(cudaGetLastError());
  h = 0;
  OK(cudaMemcpy(&h, d, sizeof h, cudaMemcpyDeviceToHost));
  CHECK("kernel ran after reset", h == 42);
  OK(cudaFree(d));
  OK(cudaDeviceSynchronize());
  return finish();
}
