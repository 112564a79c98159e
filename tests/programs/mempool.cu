// Stream-ordered allocation and memory pools: cudaMallocAsync/cudaFreeAsync from the default pool without
// the host waiting; memory kept above the release threshold and reused in stream order; reuse across
// streams ordered by the free; trimming; release at a synchronisation; a pool of one's own, made the
// device's current pool; attributes and access; errors.
#include <cstdint>
#include "check.h"

__global__ void fill(int *p, int v, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] = v + i;
}

__global__ void add(const int *a, int *b, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) b[i] += a[i];
}

static uint64_t attribute(cudaMemPool_t pool, cudaMemPoolAttr attr) {
  uint64_t value = 12345;
  OK(cudaMemPoolGetAttribute(pool, attr, &value));
  return value;
}

int main() {
  int supported = 0;
  OK(cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, 0));
  CHECK("the device has memory pools", supported == 1);
  cudaMemPool_t def = nullptr, cur = nullptr;
  OK(cudaDeviceGetDefaultMemPool(&def, 0));
  OK(cudaDeviceGetMemPool(&cur, 0));
  CHECK("the current pool is the default one", def != nullptr && cur == def);
  CHECK("the default release threshold is 0", attribute(def, cudaMemPoolAttrReleaseThreshold) == 0);
  int flag = 0;
  OK(cudaMemPoolGetAttribute(def, cudaMemPoolReuseAllowOpportunistic, &flag));
  CHECK("opportunistic reuse is on", flag == 1);

  cudaStream_t s, t;
  OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  OK(cudaStreamCreateWithFlags(&t, cudaStreamNonBlocking));
  const int n = 1 << 18;
  const size_t bytes = n * sizeof(int);
  int *host;
  OK(cudaMallocHost(&host, bytes));

  // allocate, use and free in stream order
  int *a = nullptr;
  OK(cudaMallocAsync(&a, bytes, s));
  fill<<<n / 256, 256, 0, s>>>(a, 7, n);
  OK(cudaMemcpyAsync(host, a, bytes, cudaMemcpyDeviceToHost, s));
  OK(cudaFreeAsync(a, s));
  OK(cudaStreamSynchronize(s));
  bool right = true;
  for (int i = 0; i < n; i++) right &= host[i] == 7 + i;
  CHECK("stream-ordered memory holds what the kernel wrote", right);
  CHECK("released at the synchronisation (threshold 0)", attribute(def, cudaMemPoolAttrReservedMemCurrent) == 0);

  // kept above the threshold, reused on the same stream
  uint64_t keep_all = UINT64_MAX;
  OK(cudaMemPoolSetAttribute(def, cudaMemPoolAttrReleaseThreshold, &keep_all));
  OK(cudaMallocAsync(&a, bytes, s));
  OK(cudaFreeAsync(a, s));
  OK(cudaStreamSynchronize(s));
  uint64_t reserved = attribute(def, cudaMemPoolAttrReservedMemCurrent);
  CHECK("the pool keeps freed memory below its threshold", reserved >= bytes);
  CHECK("none of it in use", attribute(def, cudaMemPoolAttrUsedMemCurrent) == 0);
  int *b = nullptr;
  OK(cudaMallocAsync(&b, bytes, s));
  CHECK("a new allocation on the stream reuses it", attribute(def, cudaMemPoolAttrReservedMemCurrent) == reserved);
  CHECK("in use: at least what was asked", attribute(def, cudaMemPoolAttrUsedMemCurrent) >= bytes);
  cudaPointerAttributes attr;
  OK(cudaPointerGetAttributes(&attr, b));
  CHECK("pool memory is device memory", attr.type == cudaMemoryTypeDevice && attr.device == 0);

  // freed on one stream, allocated on another: the pool orders the reuse after the free
  fill<<<n / 256, 256, 0, s>>>(b, 1, n);
  OK(cudaFreeAsync(b, s));
  int *c = nullptr, *d = nullptr;
  OK(cudaMallocAsync(&c, bytes, t));
  OK(cudaMallocAsync(&d, bytes, t));
  fill<<<n / 256, 256, 0, t>>>(c, 100, n);
  fill<<<n / 256, 256, 0, t>>>(d, 1000, n);
  add<<<n / 256, 256, 0, t>>>(c, d, n);
  OK(cudaMemcpyAsync(host, d, bytes, cudaMemcpyDeviceToHost, t));
  OK(cudaStreamSynchronize(t));
  right = true;
  for (int i = 0; i < n; i++) right &= host[i] == 1100 + 2 * i;
  CHECK("two allocations on another stream, one of them possibly reused", right);
  OK(cudaFreeAsync(c, t));
  OK(cudaFreeAsync(d, t));
  OK(cudaStreamSynchronize(s));
  OK(cudaStreamSynchronize(t));

  // high-water marks, trimming, read-only attributes
  CHECK("the used high-water mark saw both", attribute(def, cudaMemPoolAttrUsedMemHigh) >= 2 * bytes);
  uint64_t zero = 0;
  OK(cudaMemPoolSetAttribute(def, cudaMemPoolAttrUsedMemHigh, &zero));
  CHECK("reset to what is in use now", attribute(def, cudaMemPoolAttrUsedMemHigh) == 0);
  EXPECT(cudaErrorInvalidValue, cudaMemPoolSetAttribute(def, cudaMemPoolAttrReservedMemCurrent, &zero));
  OK(cudaMemPoolTrimTo(def, 0));
  CHECK("trimmed to nothing", attribute(def, cudaMemPoolAttrReservedMemCurrent) == 0);
  OK(cudaMemPoolSetAttribute(def, cudaMemPoolAttrReleaseThreshold, &zero));

  // a pool of one's own
  cudaMemPoolProps props = {};
  props.allocType = cudaMemAllocationTypePinned;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = 0;
  cudaMemPool_t mine = nullptr;
  OK(cudaMemPoolCreate(&mine, &props));
  CHECK("a new pool", mine != nullptr && mine != def);
  cudaMemAccessFlags access = cudaMemAccessFlagsProtNone;
  cudaMemLocation here = props.location;
  OK(cudaMemPoolGetAccess(&access, mine, &here));
  CHECK("its device may read and write it", access == cudaMemAccessFlagsProtReadWrite);
  cudaMemAccessDesc desc = {};
  desc.location = here;
  desc.flags = cudaMemAccessFlagsProtReadWrite;
  OK(cudaMemPoolSetAccess(mine, &desc, 1));
  OK(cudaMallocFromPoolAsync(&c, bytes, mine, t));
  CHECK("allocated from it", attribute(mine, cudaMemPoolAttrUsedMemCurrent) >= bytes);
  CHECK("not from the default pool", attribute(def, cudaMemPoolAttrUsedMemCurrent) == 0);
  OK(cudaDeviceSetMemPool(0, mine));
  OK(cudaDeviceGetMemPool(&cur, 0));
  CHECK("it is the device's current pool", cur == mine);
  OK(cudaMallocAsync(&d, 4096, t));
  CHECK("cudaMallocAsync takes from the current pool", attribute(mine, cudaMemPoolAttrUsedMemCurrent) >= bytes + 4096);
  fill<<<n / 256, 256, 0, t>>>(c, 5, n);
  OK(cudaMemcpyAsync(host, c, bytes, cudaMemcpyDeviceToHost, t));
  OK(cudaFreeAsync(c, t));
  OK(cudaFreeAsync(d, t));
  OK(cudaStreamSynchronize(t));
  right = true;
  for (int i = 0; i < n; i++) right &= host[i] == 5 + i;
  CHECK("its memory works", right);
  OK(cudaDeviceSetMemPool(0, def));
  OK(cudaMemPoolDestroy(mine));

  // errors
  cudaMemPoolProps bad = props;
  bad.allocType = cudaMemAllocationTypeInvalid;
  EXPECT(cudaErrorInvalidValue, cudaMemPoolCreate(&mine, &bad));
  EXPECT(cudaErrorInvalidValue, cudaMallocAsync(nullptr, 64, s));

  // cudaFreeAsync of memory from cudaMalloc, and of nullptr
  int *plain = nullptr;
  OK(cudaMalloc(&plain, 64));
  OK(cudaFreeAsync(plain, s));
  OK(cudaFreeAsync(nullptr, s));
  OK(cudaStreamSynchronize(s));

  OK(cudaFreeHost(host));
  OK(cudaStreamDestroy(s));
  OK(cudaStreamDestroy(t));
  return finish();
}
