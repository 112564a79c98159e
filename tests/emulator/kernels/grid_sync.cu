// Grid-wide synchronisation (cooperative launches): cg::this_grid().sync() between phases.
#include <cooperative_groups.h>
namespace cg = cooperative_groups;

// every block writes its id, syncs the grid, then reads its neighbour's; twice, with a second barrier
extern "C" __global__ void neighbours(int *slots, int *seen, int *again) {
  cg::grid_group grid = cg::this_grid();
  if (threadIdx.x == 0) slots[blockIdx.x] = blockIdx.x + 1;
  grid.sync();
  seen[grid.thread_rank()] = slots[(blockIdx.x + 1) % gridDim.x];
  grid.sync();
  if (threadIdx.x == 0) slots[blockIdx.x] = 0;
  grid.sync();
  again[grid.thread_rank()] = slots[(blockIdx.x + 1) % gridDim.x];
}

extern "C" __global__ void valid(int *out) { out[blockIdx.x * blockDim.x + threadIdx.x] = cg::this_grid().is_valid(); }
