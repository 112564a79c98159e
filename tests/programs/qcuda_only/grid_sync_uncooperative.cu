// A grid-wide barrier in an ordinary (not cooperative) launch: the grid group is not valid and its sync
// executes trap, so the launch fails (and, as on a GPU, the context with it) rather than hanging.
// qcuda_only: the error a GPU reports for a trap is not checked here against a real one.
#include <cooperative_groups.h>
#include "../check.h"
namespace cg = cooperative_groups;

__global__ void synced(int *out) {
  out[blockIdx.x] = 1;
  cg::this_grid().sync();
  out[blockIdx.x] = 2;
}

int main() {
  int *out;
  OK(cudaMalloc(&out, 4 * sizeof(int)));
  synced<<<4, 32>>>(out);
  OK(cudaGetLastError());
  EXPECT(cudaErrorLaunchFailure, cudaDeviceSynchronize());
  return finish();
}
