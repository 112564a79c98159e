// Occupancy queries: resident blocks per SM from the kernel's registers and shared memory and the
// device's limits; the block size that maximises occupancy; dynamic shared memory left per block.
#include "check.h"

__global__ void small(int *out) { out[blockIdx.x * blockDim.x + threadIdx.x] = threadIdx.x; }

__global__ void big_static(int *out) {
  __shared__ int tile[12288];  // 48 KiB
  tile[threadIdx.x] = threadIdx.x;
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = tile[blockDim.x - 1 - threadIdx.x];
}

__global__ void dynamic(int *out) {
  extern __shared__ int scratch[];
  scratch[threadIdx.x] = threadIdx.x;
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = scratch[threadIdx.x];
}

int main() {
  int sms = 0, per_sm_threads = 0;
  OK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  OK(cudaDeviceGetAttribute(&per_sm_threads, cudaDevAttrMaxThreadsPerMultiProcessor, 0));
  int blocks = -1;
  OK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, small, 1024, 0));
  CHECK("1024-thread blocks: as many as the SM's threads allow", blocks == per_sm_threads / 1024);
  OK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, small, 32, 0));
  CHECK("32-thread blocks: the SM's block limit", blocks == 32);
  OK(cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(&blocks, small, 100, 0, cudaOccupancyDisableCachingOverride));
  CHECK("100 threads take 4 warps", blocks == per_sm_threads / 128 || blocks == 32);
  OK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, big_static, 64, 0));
  CHECK("48 KiB of static shared memory: 4 blocks", blocks == 4);
  OK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, dynamic, 64, 20000));
  CHECK("20000 bytes of dynamic shared memory: 11 blocks", blocks == 11);
  OK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, small, 2048, 0));
  CHECK("a block too large: none", blocks == 0);
  EXPECT(cudaErrorInvalidValue, cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(&blocks, small, 64, 0, 0x100));
  EXPECT(cudaErrorInvalidResourceHandle, cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, (const void *)main, 64, 0));

  int min_grid = 0, block = 0;
  OK(cudaOccupancyMaxPotentialBlockSize(&min_grid, &block, small, 0, 0));
  int at_best = 0;
  OK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&at_best, small, block, 0));
  CHECK("best block size: whole warps", block > 0 && block <= 1024 && block % 32 == 0);
  CHECK("minimum grid for full occupancy", min_grid == at_best * sms);
  CHECK("full occupancy", at_best * block == per_sm_threads);
  OK(cudaOccupancyMaxPotentialBlockSize(&min_grid, &block, big_static, 0, 256));
  CHECK("block size limit honoured", block > 0 && block <= 256);

  size_t room = 0;
  OK(cudaOccupancyAvailableDynamicSMemPerBlock(&room, dynamic, 2, 64));
  CHECK("dynamic shared memory for 2 blocks", room > 0);
  OK(cudaFuncSetAttribute(dynamic, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024));
  OK(cudaOccupancyAvailableDynamicSMemPerBlock(&room, dynamic, 2, 64));
  CHECK("about half the SM's shared memory after opting in", room > 100 * 1024 && room < 120 * 1024);
  OK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, dynamic, 64, room));
  CHECK("the per-block reservation leaves room for one", blocks == 1);  // CUDA's own arithmetic

  // a grid of exactly the resident blocks runs
  OK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, small, 256, 0));
  int *out;
  OK(cudaMalloc(&out, blocks * sms * 256 * sizeof(int)));
  small<<<blocks * sms, 256>>>(out);
  OK(cudaGetLastError());
  OK(cudaDeviceSynchronize());
  OK(cudaFree(out));
  return finish();
}
