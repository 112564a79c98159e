// Memory: device, pitched, pinned, mapped and registered host memory; copies of every kind
// (1D, 2D, synchronous and asynchronous, cudaMemcpyDefault), memsets, pointer attributes, errors.
#include <cstdint>
#include <cstring>
#include <vector>
#include "check.h"

__global__ void scale(float *p, int n, float by) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] *= by;
}

__global__ void fill_mapped(int *p, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] = 3 * i + 1;
}

static int *pinned_back_as_int(float *p) { return (int *)p; }

static bool all_bytes(const void *p, size_t n, unsigned char v) {
  for (size_t i = 0; i < n; i++)
    if (((const unsigned char *)p)[i] != v) return false;
  return true;
}

int main() {
  const int n = 1 << 16;
  const size_t bytes = n * sizeof(float);
  std::vector<float> host(n), back(n, -1.f);
  for (int i = 0; i < n; i++) host[i] = (float)i;

  // cudaMalloc, every copy kind, cudaMemset
  float *d = nullptr, *d2 = nullptr;
  OK(cudaMalloc(&d, bytes));
  OK(cudaMalloc(&d2, bytes));
  CHECK("device pointers differ", d != d2 && d != nullptr);
  OK(cudaMemcpy(d, host.data(), bytes, cudaMemcpyHostToDevice));
  OK(cudaMemcpy(d2, d, bytes, cudaMemcpyDeviceToDevice));
  OK(cudaMemcpy(back.data(), d2, bytes, cudaMemcpyDeviceToHost));
  CHECK("H2D, D2D, D2H round trip", back == host);
  std::vector<float> copy(n);
  OK(cudaMemcpy(copy.data(), host.data(), bytes, cudaMemcpyHostToHost));
  CHECK("H2H", copy == host);
  scale<<<(n + 255) / 256, 256>>>(d, n, 2.f);
  OK(cudaGetLastError());
  OK(cudaMemcpy(back.data(), d, bytes, cudaMemcpyDefault));
  bool scaled = true;
  for (int i = 0; i < n; i++) scaled &= back[i] == 2.f * i;
  CHECK("kernel result through cudaMemcpyDefault D2H", scaled);
  OK(cudaMemcpy(d2, host.data(), bytes, cudaMemcpyDefault));
  OK(cudaMemcpy(d, d2, bytes, cudaMemcpyDefault));
  OK(cudaMemcpy(back.data(), d, bytes, cudaMemcpyDefault));
  CHECK("cudaMemcpyDefault H2D and D2D", back == host);
  OK(cudaMemcpy(copy.data(), back.data(), bytes, cudaMemcpyDefault));
  CHECK("cudaMemcpyDefault H2H", copy == host);
  OK(cudaMemcpy(d + 10, host.data() + 100, 64 * sizeof(float), cudaMemcpyHostToDevice));
  float part[64];
  OK(cudaMemcpy(part, d + 10, sizeof part, cudaMemcpyDeviceToHost));
  CHECK("copy at an offset", memcmp(part, host.data() + 100, sizeof part) == 0);
  OK(cudaMemset(d, 0xAB, bytes));
  OK(cudaMemcpy(back.data(), d, bytes, cudaMemcpyDeviceToHost));
  CHECK("cudaMemset", all_bytes(back.data(), bytes, 0xAB));
  OK(cudaMemset(d, 0x1ff, 16));  // only the low byte counts
  OK(cudaMemcpy(back.data(), d, 16, cudaMemcpyDeviceToHost));
  CHECK("cudaMemset uses the low byte", all_bytes(back.data(), 16, 0xff));
  OK(cudaMemcpy(back.data(), d, 0, cudaMemcpyDeviceToHost));
  EXPECT(cudaErrorInvalidMemcpyDirection, cudaMemcpy(back.data(), d, 16, (cudaMemcpyKind)7));

  // a large copy (staged through the channel in chunks)
  const size_t big = 40u << 20;
  std::vector<unsigned char> src(big), dst(big);
  for (size_t i = 0; i < big; i++) src[i] = (unsigned char)(i * 2654435761u >> 13);
  unsigned char *dbig = nullptr;
  OK(cudaMalloc(&dbig, big));
  OK(cudaMemcpy(dbig, src.data(), big, cudaMemcpyHostToDevice));
  OK(cudaMemcpy(dst.data(), dbig, big, cudaMemcpyDeviceToHost));
  CHECK("40 MiB round trip", dst == src);
  OK(cudaFree(dbig));

  // pitched memory and 2D copies and memsets
  const size_t width = 100, height = 37;
  size_t pitch = 0;
  unsigned char *p2 = nullptr;
  OK(cudaMallocPitch((void **)&p2, &pitch, width, height));
  CHECK("pitch >= width and aligned", pitch >= width && pitch % 256 == 0);
  std::vector<unsigned char> img(width * height), img_back(width * height, 0);
  for (size_t i = 0; i < img.size(); i++) img[i] = (unsigned char)(i % 251);
  OK(cudaMemset2D(p2, pitch, 0x5A, pitch, height));
  OK(cudaMemcpy2D(p2, pitch, img.data(), width, width, height, cudaMemcpyHostToDevice));
  OK(cudaMemcpy2D(img_back.data(), width, p2, pitch, width, height, cudaMemcpyDeviceToHost));
  CHECK("2D round trip", img_back == img);
  std::vector<unsigned char> padded(pitch * height);
  OK(cudaMemcpy(padded.data(), p2, pitch * height, cudaMemcpyDeviceToHost));
  bool padding_kept = true;
  for (size_t r = 0; r < height; r++) padding_kept &= all_bytes(&padded[r * pitch + width], pitch - width, 0x5A);
  CHECK("2D copy leaves the padding alone", padding_kept);
  unsigned char *q2 = nullptr;
  size_t qpitch = 0;
  OK(cudaMallocPitch((void **)&q2, &qpitch, width, height));
  OK(cudaMemcpy2D(q2, qpitch, p2, pitch, width, height, cudaMemcpyDeviceToDevice));
  OK(cudaMemset2D(q2, qpitch, 7, 10, height));
  OK(cudaMemcpy2D(img_back.data(), width, q2, qpitch, width, height, cudaMemcpyDefault));
  bool rows_ok = true;
  for (size_t r = 0; r < height; r++)
    for (size_t c = 0; c < width; c++) rows_ok &= img_back[r * width + c] == (c < 10 ? 7 : img[r * width + c]);
  CHECK("2D D2D copy and 2D memset", rows_ok);
  EXPECT(cudaErrorInvalidPitchValue, cudaMemcpy2D(img_back.data(), width, q2, qpitch, width + 1, height, cudaMemcpyDeviceToHost));
  OK(cudaFree(p2));
  OK(cudaFree(q2));

  // pinned memory and asynchronous copies on a stream
  float *pinned = nullptr, *pinned_back = nullptr;
  OK(cudaMallocHost(&pinned, bytes));
  OK(cudaHostAlloc(&pinned_back, bytes, cudaHostAllocDefault));
  for (int i = 0; i < n; i++) pinned[i] = 0.5f * i;
  cudaStream_t stream;
  OK(cudaStreamCreate(&stream));
  OK(cudaMemcpyAsync(d, pinned, bytes, cudaMemcpyHostToDevice, stream));
  scale<<<(n + 255) / 256, 256, 0, stream>>>(d, n, 4.f);
  OK(cudaMemsetAsync(d2, 0, bytes, stream));
  OK(cudaMemcpyAsync(d2, d, bytes / 2, cudaMemcpyDeviceToDevice, stream));
  OK(cudaMemcpyAsync(pinned_back, d2, bytes, cudaMemcpyDeviceToHost, stream));
  OK(cudaStreamSynchronize(stream));
  bool async_ok = true;
  for (int i = 0; i < n; i++) async_ok &= pinned_back[i] == (i < n / 2 ? 2.f * i : 0.f);
  CHECK("async copies, kernel and memset in stream order", async_ok);
  OK(cudaMemcpy2DAsync(pinned_back, 8, d, 16, 8, 64, cudaMemcpyDeviceToHost, stream));
  OK(cudaStreamSynchronize(stream));
  bool strided = true;
  for (int r = 0; r < 64; r++) strided &= pinned_back[2 * r] == 8.f * r && pinned_back[2 * r + 1] == 8.f * r + 2.f;
  CHECK("cudaMemcpy2DAsync", strided);
  OK(cudaMemset2DAsync(d, 16, 0, 8, 64, stream));
  OK(cudaMemcpyAsync(pinned_back, d, 8, cudaMemcpyDeviceToHost, stream));
  OK(cudaStreamSynchronize(stream));
  CHECK("cudaMemset2DAsync", pinned_back[0] == 0.f && pinned_back[1] == 0.f);
  unsigned hflags = 99;
  OK(cudaHostGetFlags(&hflags, pinned_back));
  CHECK("cudaHostGetFlags: pinned memory is mapped", hflags == cudaHostAllocMapped);

  // mapped pinned memory: a kernel writes host memory in place
  int *mapped = nullptr, *mapped_dev = nullptr;
  OK(cudaHostAlloc(&mapped, 1024 * sizeof(int), cudaHostAllocMapped));
  memset(mapped, 0, 1024 * sizeof(int));
  OK(cudaHostGetDevicePointer((void **)&mapped_dev, mapped, 0));
  fill_mapped<<<4, 256>>>(mapped_dev, 1024);
  OK(cudaDeviceSynchronize());
  bool zero_copy = true;
  for (int i = 0; i < 1024; i++) zero_copy &= mapped[i] == 3 * i + 1;
  CHECK("kernel wrote mapped host memory", zero_copy);
  CHECK("unified addressing: pinned memory has one address on both sides", mapped_dev == mapped);
  fill_mapped<<<4, 256>>>(pinned_back_as_int(pinned_back), 1024);
  OK(cudaDeviceSynchronize());
  CHECK("a kernel writes pinned memory through its host pointer", ((int *)pinned_back)[1023] == 3 * 1023 + 1);

  // pointer attributes
  cudaPointerAttributes attr;
  OK(cudaPointerGetAttributes(&attr, d));
  CHECK("device memory attributes", attr.type == cudaMemoryTypeDevice && attr.device == 0 && attr.devicePointer == d);
  OK(cudaPointerGetAttributes(&attr, pinned));
  CHECK("pinned memory attributes", attr.type == cudaMemoryTypeHost && attr.hostPointer == pinned);
  OK(cudaPointerGetAttributes(&attr, mapped));
  CHECK("mapped memory attributes", attr.type == cudaMemoryTypeHost && attr.devicePointer == mapped_dev);
  OK(cudaPointerGetAttributes(&attr, host.data()));
  CHECK("pageable memory attributes", attr.type == cudaMemoryTypeUnregistered && attr.device == -2 &&
                                          attr.devicePointer == nullptr && attr.hostPointer == host.data());

  // registered host memory
  std::vector<float> reg(n);
  OK(cudaHostRegister(reg.data(), bytes, cudaHostRegisterDefault));
  OK(cudaMemcpy(reg.data(), d2, bytes, cudaMemcpyDeviceToHost));
  CHECK("copy into registered memory", reg[1] == 2.f && reg[n - 1] == 0.f);
  EXPECT(cudaErrorHostMemoryAlreadyRegistered, cudaHostRegister(reg.data(), bytes, cudaHostRegisterDefault));
  OK(cudaHostUnregister(reg.data()));
  EXPECT(cudaErrorHostMemoryNotRegistered, cudaHostUnregister(reg.data()));

  // errors
  void *huge = nullptr;
  EXPECT(cudaErrorMemoryAllocation, cudaMalloc(&huge, (size_t)1 << 50));
  int local = 0;
  EXPECT(cudaErrorInvalidValue, cudaFree(&local));
  OK(cudaFree(nullptr));
  OK(cudaStreamDestroy(stream));
  OK(cudaFreeHost(pinned));
  OK(cudaFreeHost(pinned_back));
  OK(cudaFreeHost(mapped));
  OK(cudaFree(d));
  OK(cudaFree(d2));
  OK(cudaGetLastError());
  return finish();
}
