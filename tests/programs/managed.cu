// Managed memory: one pointer for host and device, written on both sides in turn, across kernels,
// copies, memsets and every kind of synchronisation; prefetch and advice accepted; pointer attributes.
#include <cstring>
#include "check.h"

__global__ void scale_add(int *x, int a, int b, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] = a * x[i] + b;
}

__global__ void sum_into(const int *x, int *total, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) atomicAdd(total, x[i]);
}

int main() {
  int managed_ok = 0;
  OK(cudaDeviceGetAttribute(&managed_ok, cudaDevAttrManagedMemory, 0));
  CHECK("the device offers managed memory", managed_ok == 1);
  const int n = 3000;  // more than one page, not a whole number of them
  int *x = nullptr, *total = nullptr;
  OK(cudaMallocManaged(&x, n * sizeof(int)));
  OK(cudaMallocManaged(&total, sizeof(int), cudaMemAttachGlobal));
  CHECK("distinct allocations", x != nullptr && total != nullptr && x != total);
  for (int i = 0; i < n; i++) x[i] = i;  // host writes
  *total = 0;

  scale_add<<<(n + 255) / 256, 256>>>(x, 2, 1, n);  // device reads the host's values
  OK(cudaDeviceSynchronize());
  bool right = true;
  for (int i = 0; i < n; i++) right &= x[i] == 2 * i + 1;
  CHECK("the kernel's results on the host after cudaDeviceSynchronize", right);

  x[5] = -100;  // host writes one element, device the rest
  cudaStream_t s;
  OK(cudaStreamCreate(&s));
  scale_add<<<(n + 255) / 256, 256, 0, s>>>(x, 1, 1, n);
  OK(cudaStreamSynchronize(s));
  CHECK("one host write reached the device", x[5] == -99);
  CHECK("and the others are the device's", x[0] == 2 && x[n - 1] == 2 * (n - 1) + 2);

  // several rounds on both sides, with events and queries as synchronisation points
  cudaEvent_t done;
  OK(cudaEventCreate(&done));
  for (int round = 0; round < 4; round++) {
    for (int i = 0; i < n; i++) x[i] = round;
    *total = 0;
    sum_into<<<(n + 255) / 256, 256, 0, s>>>(x, total, n);
    OK(cudaEventRecord(done, s));
    if (round % 2) {
      OK(cudaEventSynchronize(done));
    } else {
      while (cudaEventQuery(done) == cudaErrorNotReady) {
      }
    }
    CHECK("a sum of host-written values", *total == round * n);
  }

  // copies and memsets on managed memory, either side named as host or device
  int host[16];
  for (int i = 0; i < 16; i++) host[i] = 1000 + i;
  OK(cudaMemcpy(x, host, sizeof host, cudaMemcpyHostToDevice));
  CHECK("a copy into managed memory is seen by the host", x[0] == 1000 && x[15] == 1015);
  OK(cudaMemset(x + 16, 0, 16 * sizeof(int)));
  CHECK("a memset of managed memory is seen by the host", x[16] == 0 && x[31] == 0);
  x[40] = 77;
  int back = 0;
  OK(cudaMemcpy(&back, x + 40, sizeof back, cudaMemcpyDeviceToHost));
  CHECK("a host write is seen by a copy from managed memory", back == 77);
  OK(cudaMemcpy(&back, x + 40, sizeof back, cudaMemcpyHostToHost));
  CHECK("managed memory named as host memory", back == 77);
  OK(cudaMemcpy(&back, x + 40, sizeof back, cudaMemcpyDefault));
  CHECK("cudaMemcpyDefault from managed memory", back == 77);
  int *plain;
  OK(cudaMalloc(&plain, n * sizeof(int)));
  for (int i = 0; i < n; i++) x[i] = 3 * i;
  OK(cudaMemcpyAsync(plain, x, n * sizeof(int), cudaMemcpyDefault, s));
  OK(cudaMemsetAsync(x, 0, n * sizeof(int), s));
  OK(cudaMemcpyAsync(x, plain, n * sizeof(int), cudaMemcpyDeviceToDevice, s));
  scale_add<<<(n + 255) / 256, 256, 0, s>>>(x, 1, -1, n);
  OK(cudaStreamSynchronize(s));
  right = true;
  for (int i = 0; i < n; i++) right &= x[i] == 3 * i - 1;
  CHECK("device-to-device through managed memory", right);

  // prefetch, advice, attach: accepted
  cudaMemLocation gpu = {cudaMemLocationTypeDevice, 0}, cpu = {cudaMemLocationTypeHost, 0};
  OK(cudaMemPrefetchAsync(x, n * sizeof(int), gpu, 0, s));
  OK(cudaMemAdvise(x, n * sizeof(int), cudaMemAdviseSetReadMostly, gpu));
  OK(cudaMemAdvise(x, n * sizeof(int), cudaMemAdviseSetPreferredLocation, cpu));
  OK(cudaStreamAttachMemAsync(s, x, 0, cudaMemAttachGlobal));
  OK(cudaMemPrefetchAsync(x, n * sizeof(int), cpu, 0, s));
  OK(cudaStreamSynchronize(s));
  CHECK("values kept across prefetches", x[10] == 29);
  EXPECT(cudaErrorInvalidValue, cudaMemAdvise(host, sizeof host, cudaMemAdviseSetReadMostly, gpu));

  cudaPointerAttributes attr;
  OK(cudaPointerGetAttributes(&attr, x + 1));
  CHECK("managed pointer attributes", attr.type == cudaMemoryTypeManaged && attr.devicePointer == x + 1 &&
                                          attr.hostPointer == x + 1 && attr.device == 0);
  int *none = x;
  OK(cudaMallocManaged(&none, 0));
  CHECK("no memory for 0 bytes", none == NULL);
  EXPECT(cudaErrorInvalidValue, cudaMallocManaged(&none, 64, 0));

  OK(cudaEventDestroy(done));
  OK(cudaStreamDestroy(s));
  OK(cudaFree(plain));
  OK(cudaFree(x));
  OK(cudaFree(total));
  return finish();
}
