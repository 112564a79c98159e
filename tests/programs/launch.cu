// Kernel launches: <<<>>> and cudaLaunchKernel, parameters of every size and alignment (including
// structs by value and a 32 000-byte parameter block), dynamic shared memory, 3D grids, streams,
// and launch-configuration errors reported at the launch.
#include <cstdint>
#include "check.h"

struct Mixed {
  char c;
  double d;
  short s;
  int3 v;
};

struct Big {
  int values[1000];  // 4000 bytes
};

struct Huge {
  int values[8000];  // 32000 bytes: CUDA 12.1+ allows up to 32764 bytes of parameters
};

__global__ void scalars(long long *out, char c, short s, int i, long long l, float f, double d, unsigned char u) {
  out[0] = c;
  out[1] = s;
  out[2] = i;
  out[3] = l;
  out[4] = (long long)(f * 4);
  out[5] = (long long)(d * 8);
  out[6] = u;
}

__global__ void mixed(double *out, Mixed m, char tail) {
  out[0] = m.c + m.d + m.s + m.v.x + m.v.y + m.v.z + tail;
}

__global__ void big(long long *out, Big b, int scale) {
  long long sum = 0;
  for (int i = 0; i < 1000; i++) sum += b.values[i];
  out[threadIdx.x] = sum * scale;
}

__global__ void huge(long long *out, Huge h) {
  long long sum = 0;
  for (int i = threadIdx.x; i < 8000; i += blockDim.x) sum += h.values[i];
  atomicAdd((unsigned long long *)out, (unsigned long long)sum);
}

__global__ void reverse_block(int *data) {
  extern __shared__ int tile[];
  int t = threadIdx.x;
  tile[t] = data[blockIdx.x * blockDim.x + t];
  __syncthreads();
  data[blockIdx.x * blockDim.x + t] = tile[blockDim.x - 1 - t];
}

__global__ void coordinates(int *out, int nx, int ny) {
  int x = blockIdx.x * blockDim.x + threadIdx.x;
  int y = blockIdx.y * blockDim.y + threadIdx.y;
  int z = blockIdx.z * blockDim.z + threadIdx.z;
  out[(z * ny + y) * nx + x] = x + 100 * y + 10000 * z;
}

__global__ void nothing() {}

template <typename T, int N>
__global__ void fill_n(T *out, T value) {
  for (int i = 0; i < N; i++) out[i] = value * (T)(i + 1);
}

int main() {
  long long *out = nullptr, host[8];
  OK(cudaMalloc(&out, 64 * sizeof(long long)));

  scalars<<<1, 1>>>(out, -3, -300, 70000, 1ll << 40, 2.25f, 0.375, 250);
  OK(cudaGetLastError());
  OK(cudaMemcpy(host, out, 7 * sizeof(long long), cudaMemcpyDeviceToHost));
  CHECK("scalar parameters", host[0] == -3 && host[1] == -300 && host[2] == 70000 && host[3] == (1ll << 40) &&
                                 host[4] == 9 && host[5] == 3 && host[6] == 250);

  Mixed m = {7, 0.5, 11, make_int3(100, 200, 300)};
  double dres = 0;
  mixed<<<1, 1>>>((double *)out, m, 3);
  OK(cudaGetLastError());
  OK(cudaMemcpy(&dres, out, sizeof dres, cudaMemcpyDeviceToHost));
  CHECK("struct by value with padding", dres == 7 + 0.5 + 11 + 600 + 3);

  Big b;
  long long want = 0;
  for (int i = 0; i < 1000; i++) want += b.values[i] = i * 3 - 500;
  big<<<1, 4>>>(out, b, 2);
  OK(cudaGetLastError());
  OK(cudaMemcpy(host, out, 4 * sizeof(long long), cudaMemcpyDeviceToHost));
  CHECK("4000-byte struct parameter", host[0] == 2 * want && host[3] == 2 * want);

  static Huge h;
  long long hwant = 0;
  for (int i = 0; i < 8000; i++) hwant += h.values[i] = (i % 97) - 40;
  OK(cudaMemset(out, 0, sizeof(long long)));
  huge<<<1, 128>>>(out, h);
  OK(cudaGetLastError());
  OK(cudaMemcpy(host, out, sizeof(long long), cudaMemcpyDeviceToHost));
  CHECK("32000-byte parameter block", host[0] == hwant);

  // explicit cudaLaunchKernel with an argument array
  void *args[] = {&out, &m, &m.c};
  OK(cudaLaunchKernel((const void *)mixed, dim3(1), dim3(1), args, 0, nullptr));
  OK(cudaMemcpy(&dres, out, sizeof dres, cudaMemcpyDeviceToHost));
  CHECK("cudaLaunchKernel", dres == 7 + 0.5 + 11 + 600 + 7);

  // dynamic shared memory on a stream
  const int blocks = 8, threads = 128;
  int data[blocks * threads], *ddata = nullptr;
  for (int i = 0; i < blocks * threads; i++) data[i] = i;
  OK(cudaMalloc(&ddata, sizeof data));
  cudaStream_t stream;
  OK(cudaStreamCreate(&stream));
  OK(cudaMemcpyAsync(ddata, data, sizeof data, cudaMemcpyHostToDevice, stream));
  reverse_block<<<blocks, threads, threads * sizeof(int), stream>>>(ddata);
  OK(cudaGetLastError());
  OK(cudaMemcpyAsync(data, ddata, sizeof data, cudaMemcpyDeviceToHost, stream));
  OK(cudaStreamSynchronize(stream));
  bool reversed = true;
  for (int blk = 0; blk < blocks; blk++)
    for (int t = 0; t < threads; t++) reversed &= data[blk * threads + t] == blk * threads + threads - 1 - t;
  CHECK("dynamic shared memory", reversed);

  // a 3D grid of 3D blocks
  const int nx = 16, ny = 8, nz = 4;
  int *grid = nullptr, ghost[nx * ny * nz];
  OK(cudaMalloc(&grid, sizeof ghost));
  coordinates<<<dim3(4, 2, 2), dim3(4, 4, 2)>>>(grid, nx, ny);
  OK(cudaGetLastError());
  OK(cudaMemcpy(ghost, grid, sizeof ghost, cudaMemcpyDeviceToHost));
  bool coords = true;
  for (int z = 0; z < nz; z++)
    for (int y = 0; y < ny; y++)
      for (int x = 0; x < nx; x++) coords &= ghost[(z * ny + y) * nx + x] == x + 100 * y + 10000 * z;
  CHECK("3D grid", coords);

  // template kernels: one registration per instantiation
  fill_n<int, 4><<<1, 1>>>((int *)out, 3);
  fill_n<double, 2><<<1, 1>>>((double *)out + 4, 0.25);
  OK(cudaGetLastError());
  int ints[4];
  double dbls[2];
  OK(cudaMemcpy(ints, out, sizeof ints, cudaMemcpyDeviceToHost));
  OK(cudaMemcpy(dbls, (double *)out + 4, sizeof dbls, cudaMemcpyDeviceToHost));
  CHECK("template kernels", ints[0] == 3 && ints[3] == 12 && dbls[0] == 0.25 && dbls[1] == 0.5);

  // configuration errors are reported at the launch (CUDA 13 says cudaErrorInvalidValue), then cleared
  nothing<<<1, 2048>>>();
  CHECK("cudaPeekAtLastError keeps the error",
        cudaPeekAtLastError() == cudaErrorInvalidValue && cudaPeekAtLastError() == cudaErrorInvalidValue);
  EXPECT(cudaErrorInvalidValue, cudaGetLastError());
  OK(cudaGetLastError());
  nothing<<<0, 32>>>();
  EXPECT(cudaErrorInvalidValue, cudaGetLastError());
  nothing<<<1, dim3(32, 32, 2)>>>();
  EXPECT(cudaErrorInvalidValue, cudaGetLastError());
  nothing<<<dim3(1, 70000), 1>>>();
  EXPECT(cudaErrorInvalidValue, cudaGetLastError());
  nothing<<<1, 1>>>();
  OK(cudaGetLastError());
  EXPECT(cudaErrorInvalidResourceHandle, cudaLaunchKernel((const void *)main, dim3(1), dim3(1), nullptr, 0, nullptr));
  OK(cudaDeviceSynchronize());

  OK(cudaStreamDestroy(stream));
  OK(cudaFree(out));
  OK(cudaFree(ddata));
  OK(cudaFree(grid));
  return finish();
}
