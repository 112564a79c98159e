// Module variables: cudaMemcpyToSymbol/FromSymbol (+Async), cudaGetSymbolAddress/Size, kernels
// that read __constant__ and write __device__ variables, and the errors for bad symbols and ranges.
#include "check.h"

__device__ int counters[64];
__constant__ float coefficients[8];
__device__ double scalar = 2.5;
int not_a_symbol[4];
namespace tables {
__device__ __constant__ int offsets[3] = {7, 8, 9};
}

__global__ void apply(float *out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    out[i] = coefficients[i % 8] * (float)scalar;
    atomicAdd(&counters[i % 64], 1);
  }
}

int main() {
  float coef[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  OK(cudaMemcpyToSymbol(coefficients, coef, sizeof coef));
  int zeros[64] = {0};
  OK(cudaMemcpyToSymbol(counters, zeros, sizeof zeros));
  double initial = 0;
  OK(cudaMemcpyFromSymbol(&initial, scalar, sizeof initial));
  CHECK("initialised __device__ variable", initial == 2.5);

  size_t size = 0;
  OK(cudaGetSymbolSize(&size, counters));
  CHECK("cudaGetSymbolSize", size == sizeof zeros);
  OK(cudaGetSymbolSize(&size, coefficients));
  CHECK("cudaGetSymbolSize of __constant__", size == sizeof coef);
  int *counters_ptr = nullptr;
  OK(cudaGetSymbolAddress((void **)&counters_ptr, counters));
  CHECK("cudaGetSymbolAddress", counters_ptr != nullptr);

  const int n = 1000;
  float *out = nullptr;
  OK(cudaMalloc(&out, n * sizeof(float)));
  apply<<<4, 256>>>(out, n);
  OK(cudaGetLastError());
  float host[n];
  OK(cudaMemcpy(host, out, sizeof host, cudaMemcpyDeviceToHost));
  bool values = true;
  for (int i = 0; i < n; i++) values &= host[i] == coef[i % 8] * 2.5f;
  CHECK("kernel read __constant__ and __device__ variables", values);
  int counts[64];
  OK(cudaMemcpyFromSymbol(counts, counters, sizeof counts));
  bool counted = true;
  for (int i = 0; i < 64; i++) counted &= counts[i] == n / 64 + (i < n % 64);
  CHECK("kernel wrote a __device__ variable", counted);

  int via_address[64];
  OK(cudaMemcpy(via_address, counters_ptr, sizeof via_address, cudaMemcpyDeviceToHost));
  CHECK("symbol address works with cudaMemcpy", via_address[0] == counts[0] && via_address[63] == counts[63]);

  // offsets, device-to-device, asynchronous forms
  float two[2] = {10, 20};
  OK(cudaMemcpyToSymbol(coefficients, two, sizeof two, 6 * sizeof(float)));
  float readback[8];
  OK(cudaMemcpyFromSymbol(readback, coefficients, sizeof readback));
  CHECK("copy to a symbol at an offset", readback[5] == 6 && readback[6] == 10 && readback[7] == 20);
  OK(cudaMemcpyFromSymbol(two, coefficients, sizeof two, 2 * sizeof(float)));
  CHECK("copy from a symbol at an offset", two[0] == 3 && two[1] == 4);
  OK(cudaMemcpyToSymbol(coefficients, out, 8 * sizeof(float), 0, cudaMemcpyDeviceToDevice));
  OK(cudaMemcpyFromSymbol(out + 8, coefficients, 8 * sizeof(float), 0, cudaMemcpyDeviceToDevice));
  OK(cudaMemcpy(host, out, 16 * sizeof(float), cudaMemcpyDeviceToHost));
  CHECK("device-to-device symbol copies", host[8] == host[0] && host[15] == host[7]);
  cudaStream_t stream;
  OK(cudaStreamCreate(&stream));
  int *pinned = nullptr;
  OK(cudaMallocHost(&pinned, 64 * sizeof(int)));
  for (int i = 0; i < 64; i++) pinned[i] = 1000 + i;
  OK(cudaMemcpyToSymbolAsync(counters, pinned, 64 * sizeof(int), 0, cudaMemcpyHostToDevice, stream));
  OK(cudaMemsetAsync(counters_ptr, 0, 4 * sizeof(int), stream));
  OK(cudaMemcpyFromSymbolAsync(pinned, counters, 64 * sizeof(int), 0, cudaMemcpyDeviceToHost, stream));
  OK(cudaStreamSynchronize(stream));
  CHECK("asynchronous symbol copies in order", pinned[0] == 0 && pinned[3] == 0 && pinned[4] == 1004 && pinned[63] == 1063);

  int offs[3] = {0, 0, 0};
  OK(cudaMemcpyFromSymbol(offs, tables::offsets, sizeof offs));
  CHECK("a variable in a namespace, with an initialiser", offs[0] == 7 && offs[2] == 9);

  // errors
  EXPECT(cudaErrorInvalidSymbol, cudaMemcpyToSymbol(not_a_symbol, coef, sizeof(int)));
  EXPECT(cudaErrorInvalidSymbol, cudaGetSymbolSize(&size, not_a_symbol));
  EXPECT(cudaErrorInvalidValue, cudaMemcpyToSymbol(coefficients, coef, sizeof coef, 4));
  EXPECT(cudaErrorInvalidValue, cudaMemcpyFromSymbol(counts, counters, 65 * sizeof(int)));
  EXPECT(cudaErrorInvalidMemcpyDirection, cudaMemcpyToSymbol(coefficients, coef, sizeof coef, 0, cudaMemcpyDeviceToHost));
  OK(cudaFreeHost(pinned));
  OK(cudaStreamDestroy(stream));
  OK(cudaFree(out));
  return finish();
}
