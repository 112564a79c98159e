// Thread block clusters (sm_90): a kernel compiled with __cluster_dims__, launched as usual; cluster shapes
// given at the launch with cudaLaunchKernelEx, in one and two dimensions; cluster ranks and indices; the
// cluster barrier (every block of a cluster arrives before any leaves); a grid that is not a whole number
// of clusters refused.
#include <cooperative_groups.h>
#include "check.h"
namespace cg = cooperative_groups;

__global__ void __cluster_dims__(2, 1, 1) fixed(int *out) {
  cg::cluster_group c = cg::this_cluster();
  if (threadIdx.x == 0) out[blockIdx.x] = c.block_rank() * 100 + c.num_blocks();
  c.sync();
}

// Each block counts itself in its cluster's counter, the cluster synchronises, then each block reads the
// count (all of its cluster, if the barrier held) and writes where it sits in its cluster.
__global__ void ranks(int *out, int *counts) {
  cg::cluster_group c = cg::this_cluster();
  dim3 index = c.block_index(), shape = c.dim_blocks();
  unsigned grid_x = gridDim.x / shape.x;
  unsigned cluster = blockIdx.y / shape.y * grid_x + blockIdx.x / shape.x;
  if (threadIdx.x == 0) atomicAdd(&counts[cluster], 1);
  c.sync();
  if (threadIdx.x == 0)
    out[blockIdx.y * gridDim.x + blockIdx.x] =
        counts[cluster] * 10000 + c.block_rank() * 1000 + index.x * 100 + index.y * 10 + shape.x * shape.y;
}

static bool launch_ranks(int *out, int *counts, dim3 grid, dim3 shape, cudaStream_t s) {
  cudaLaunchAttribute attr;
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = shape.x;
  attr.val.clusterDim.y = shape.y;
  attr.val.clusterDim.z = shape.z;
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = dim3(64);
  config.stream = s;
  config.attrs = &attr;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, ranks, out, counts) == cudaSuccess;
}

static bool ranks_right(const int *host, dim3 grid, dim3 shape) {
  bool right = true;
  for (unsigned y = 0; y < grid.y; y++)
    for (unsigned x = 0; x < grid.x; x++) {
      int ix = x % shape.x, iy = y % shape.y, size = shape.x * shape.y;
      int want = size * 10000 + (iy * shape.x + ix) * 1000 + ix * 100 + iy * 10 + size;
      right &= host[y * grid.x + x] == want;
    }
  return right;
}

int main() {
  int clusters = 0;
  OK(cudaDeviceGetAttribute(&clusters, cudaDevAttrClusterLaunch, 0));
  CHECK("the device launches clusters", clusters == 1);
  int *out, *counts, host[64];
  OK(cudaMalloc(&out, sizeof host));
  OK(cudaMalloc(&counts, sizeof host));

  fixed<<<8, 64>>>(out);
  OK(cudaGetLastError());
  OK(cudaMemcpy(host, out, 8 * sizeof(int), cudaMemcpyDeviceToHost));
  bool right = true;
  for (int b = 0; b < 8; b++) right &= host[b] == (b % 2) * 100 + 2;
  CHECK("__cluster_dims__(2, 1, 1): ranks 0 and 1 of clusters of 2", right);

  cudaStream_t s;
  OK(cudaStreamCreate(&s));
  dim3 grid(16), shape(4);
  OK(cudaMemset(counts, 0, sizeof host));
  CHECK("cudaLaunchKernelEx, clusters of 4", launch_ranks(out, counts, grid, shape, s));
  OK(cudaMemcpyAsync(host, out, 16 * sizeof(int), cudaMemcpyDeviceToHost, s));
  OK(cudaStreamSynchronize(s));
  CHECK("ranks, and the whole cluster counted before the barrier let anyone on", ranks_right(host, grid, shape));

  grid = dim3(4, 4);
  shape = dim3(2, 2);
  OK(cudaMemset(counts, 0, sizeof host));
  CHECK("cudaLaunchKernelEx, clusters of 2 x 2", launch_ranks(out, counts, grid, shape, s));
  OK(cudaMemcpyAsync(host, out, 16 * sizeof(int), cudaMemcpyDeviceToHost, s));
  OK(cudaStreamSynchronize(s));
  CHECK("two-dimensional clusters", ranks_right(host, grid, shape));

  cudaLaunchAttribute attr;
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = 3;
  attr.val.clusterDim.y = attr.val.clusterDim.z = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(8);
  config.blockDim = dim3(64);
  config.attrs = &attr;
  config.numAttrs = 1;
  EXPECT(cudaErrorInvalidClusterSize, cudaLaunchKernelEx(&config, ranks, out, counts));

  OK(cudaStreamDestroy(s));
  OK(cudaFree(out));
  OK(cudaFree(counts));
  return finish();
}
