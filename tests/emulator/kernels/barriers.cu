// cuda::barrier (mbarrier in shared memory): every thread's write is seen by all after arrive_and_wait, phase
// after phase; and the parity form of the wait through cuda::ptx-free inline PTX.
#include <cuda/barrier>
#include <cooperative_groups.h>
namespace cg = cooperative_groups;
extern "C" __global__ void bar_sum(const int *in, int *out) {
  __shared__ cuda::barrier<cuda::thread_scope_block> bar;
  __shared__ int data[256];
  auto block = cg::this_thread_block();
  if (block.thread_rank() == 0) init(&bar, block.size());
  block.sync();
  data[threadIdx.x] = in[blockIdx.x * blockDim.x + threadIdx.x];
  bar.arrive_and_wait();
  int s = 0;
  for (int i = 0; i < blockDim.x; i++) s += data[i];
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
  bar.arrive_and_wait();
  data[threadIdx.x] = 1;
  bar.arrive_and_wait();
}

// one mbarrier by hand: init, arrive (keeping the token), the wait on the token, the parity wait, pending count
extern "C" __global__ void by_hand(int *out) {
  __shared__ unsigned long long bar;
  __shared__ int seen[64];
  unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(&bar));
  if (threadIdx.x == 0) asm volatile("mbarrier.init.shared.b64 [%0], %1;" :: "r"(addr), "r"(blockDim.x));
  __syncthreads();
  seen[threadIdx.x] = threadIdx.x * 3;
  unsigned long long token;
  asm volatile("mbarrier.arrive.shared.b64 %0, [%1];" : "=l"(token) : "r"(addr));
  unsigned done = 0, pending;
  asm volatile("{ .reg .pred p; mbarrier.test_wait.shared.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
               : "=r"(done) : "r"(addr), "l"(token));
  asm volatile("mbarrier.pending_count.b64 %0, %1;" : "=r"(pending) : "l"(token));
  unsigned parity_done = 0;
  asm volatile("{ .reg .pred p; mbarrier.test_wait.parity.shared.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
               : "=r"(parity_done) : "r"(addr), "r"(0));
  out[threadIdx.x] = done * 1000 + parity_done * 100 + seen[(threadIdx.x + 1) % blockDim.x] % 97;
  out[blockDim.x + threadIdx.x] = pending;
}
