// Thread block clusters on the emulator: cluster ranks and the cluster barrier, and distributed shared memory
// (cg::this_cluster().map_shared_rank: mapa, then generic loads, stores and atomics in another block's shared
// memory).
#include <cooperative_groups.h>
namespace cg = cooperative_groups;

// every block writes its id into its shared slot, the cluster syncs, then each block reads the slot of the
// block whose rank is its own rank + 1 (mod the cluster's size)
extern "C" __global__ void neighbour_slots(int *out) {
  __shared__ int slot;
  cg::cluster_group c = cg::this_cluster();
  if (threadIdx.x == 0) slot = blockIdx.y * gridDim.x + blockIdx.x;
  c.sync();
  int *theirs = c.map_shared_rank(&slot, (c.block_rank() + 1) % c.num_blocks());
  if (threadIdx.x == 0) out[blockIdx.y * gridDim.x + blockIdx.x] = *theirs;
  c.sync();  // no block leaves while another may still read its shared memory
}

// every thread of the cluster adds 1 to a counter in the shared memory of the cluster's rank-0 block
extern "C" __global__ void count_in_rank0(int *out) {
  __shared__ int counter;
  cg::cluster_group c = cg::this_cluster();
  if (threadIdx.x == 0) counter = 0;
  c.sync();
  atomicAdd(c.map_shared_rank(&counter, 0), 1);
  c.sync();
  if (threadIdx.x == 0) out[blockIdx.x] = counter;
}

// a block writes a whole array into the next block's shared memory, which then sums it
extern "C" __global__ void pass_along(const int *in, int *out) {
  __shared__ int data[128];
  cg::cluster_group c = cg::this_cluster();
  int *next = c.map_shared_rank(data, (c.block_rank() + 1) % c.num_blocks());
  next[threadIdx.x] = in[blockIdx.x * 128 + threadIdx.x];
  c.sync();
  if (threadIdx.x == 0) {
    int sum = 0;
    for (int i = 0; i < 128; i++) sum += data[i];
    out[blockIdx.x] = sum;
  }
  c.sync();
}

// reads the shared slot of the block of rank `rank` of its cluster (which may not exist)
extern "C" __global__ void read_rank(int *out, unsigned rank) {
  __shared__ int slot;
  cg::cluster_group c = cg::this_cluster();
  slot = 1;
  c.sync();
  out[blockIdx.x] = *c.map_shared_rank(&slot, rank);
  c.sync();
}

// the same exchange through 32-bit .shared::cluster addresses (mapa.shared::cluster, ld.shared::cluster)
extern "C" __global__ void explicit_cluster_space(int *out) {
  __shared__ int slot;
  cg::cluster_group c = cg::this_cluster();
  if (threadIdx.x == 0) slot = 10 + blockIdx.x;
  c.sync();
  unsigned mine = static_cast<unsigned>(__cvta_generic_to_shared(&slot)), theirs, value;
  unsigned rank = (c.block_rank() + 1) % c.num_blocks();
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(theirs) : "r"(mine), "r"(rank));
  asm volatile("ld.shared::cluster.u32 %0, [%1];" : "=r"(value) : "r"(theirs));
  if (threadIdx.x == 0) out[blockIdx.x] = value;
  c.sync();
}
