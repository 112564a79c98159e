// A grid-wide barrier in an ordinary launch of a grid too large to be resident all at once: on a GPU
// the blocks that run first wait for blocks that cannot start, and the kernel hangs. The emulated device
// gives such a launch no grid workspace, so the grid group is not valid and its sync executes trap:
// the launch fails (and, as on a GPU, the context with it) rather than hanging.
// qcuda_only: a GPU hangs here.
#include <cooperative_groups.h>
#include "../check.h"
namespace cg = cooperative_groups;

__global__ void synced(int *out) {
  out[blockIdx.x] = 1;
  cg::this_grid().sync();
  out[blockIdx.x] = 2;
}

int main() {
  int sms = 0, per_sm = 0;
  OK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  OK(cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxBlocksPerMultiprocessor, 0));
  int blocks = sms * per_sm + 1, *out;
  OK(cudaMalloc(&out, blocks * sizeof(int)));
  synced<<<blocks, 32>>>(out);
  OK(cudaGetLastError());
  EXPECT(cudaErrorLaunchFailure, cudaDeviceSynchronize());
  return finish();
}
