// Cooperative launches: a grid-wide barrier (cg::this_grid().sync()) between two phases, launched with
// cudaLaunchCooperativeKernel and with cudaLaunchKernelEx's cooperative attribute; a grid too large to
// be resident is refused; cudaLaunchKernelEx with a one-block cluster and a priority.
#include <cooperative_groups.h>
#include "check.h"
namespace cg = cooperative_groups;

// phase 1: each block sums its slice into partial[block]; grid sync; phase 2: every block reads all partials
__global__ void two_phase(const int *in, int *partial, int *total, int n) {
  cg::grid_group grid = cg::this_grid();
  __shared__ int sum;
  if (threadIdx.x == 0) sum = 0;
  __syncthreads();
  for (int i = grid.thread_rank(); i < n; i += grid.size()) atomicAdd(&sum, in[i]);
  __syncthreads();
  if (threadIdx.x == 0) partial[blockIdx.x] = sum;
  grid.sync();
  if (threadIdx.x == 0) {
    int t = 0;
    for (int b = 0; b < gridDim.x; b++) t += partial[b];
    total[blockIdx.x] = t;
  }
  grid.sync();  // a second barrier on the same grid
  if (threadIdx.x == 0) partial[blockIdx.x] = total[(blockIdx.x + 1) % gridDim.x];
}

__global__ void valid(int *out) {
  if (threadIdx.x == 0) out[blockIdx.x] = cg::this_grid().is_valid();
}

__global__ void plain(int *out, int value) { out[blockIdx.x * blockDim.x + threadIdx.x] = value; }

int main() {
  int coop = 0, sms = 0, per_sm = 0;
  OK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, 0));
  CHECK("the device runs cooperative launches", coop == 1);
  OK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  const int threads = 128, n = 10000;
  OK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, two_phase, threads, 0));
  CHECK("some blocks fit", per_sm > 0);
  int blocks = per_sm * sms > 8 ? 8 : per_sm * sms;  // a few blocks: the emulated device runs them on a CPU
  int *in, *partial, *total, host[64], want = 0;
  OK(cudaMalloc(&in, n * sizeof(int)));
  OK(cudaMalloc(&partial, 64 * sizeof(int)));
  OK(cudaMalloc(&total, 64 * sizeof(int)));
  int *values = new int[n];
  for (int i = 0; i < n; i++) want += values[i] = i % 7 - 2;
  OK(cudaMemcpy(in, values, n * sizeof(int), cudaMemcpyHostToDevice));

  int nn = n;
  void *args[] = {&in, &partial, &total, &nn};
  OK(cudaLaunchCooperativeKernel((const void *)two_phase, blocks, threads, args, 0, 0));
  OK(cudaDeviceSynchronize());
  OK(cudaMemcpy(host, total, blocks * sizeof(int), cudaMemcpyDeviceToHost));
  bool right = true;
  for (int b = 0; b < blocks; b++) right &= host[b] == want;
  CHECK("every block saw every partial sum after the grid sync", right);
  OK(cudaMemcpy(host, partial, blocks * sizeof(int), cudaMemcpyDeviceToHost));
  right = true;
  for (int b = 0; b < blocks; b++) right &= host[b] == want;
  CHECK("a second grid sync", right);

  EXPECT(cudaErrorCooperativeLaunchTooLarge,
         cudaLaunchCooperativeKernel((const void *)two_phase, per_sm * sms + 1, threads, args, 0, 0));

  // cudaLaunchKernelEx: cooperative attribute, on a stream
  cudaStream_t s;
  OK(cudaStreamCreate(&s));
  OK(cudaMemset(total, 0, 64 * sizeof(int)));
  cudaLaunchAttribute attrs[3];
  attrs[0].id = cudaLaunchAttributeCooperative;
  attrs[0].val.cooperative = 1;
  attrs[1].id = cudaLaunchAttributeClusterDimension;
  attrs[1].val.clusterDim.x = attrs[1].val.clusterDim.y = attrs[1].val.clusterDim.z = 1;
  attrs[2].id = cudaLaunchAttributePriority;
  attrs[2].val.priority = 0;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(blocks);
  config.blockDim = dim3(threads);
  config.stream = s;
  config.attrs = attrs;
  config.numAttrs = 3;
  OK(cudaLaunchKernelEx(&config, two_phase, (const int *)in, partial, total, n));
  OK(cudaStreamSynchronize(s));
  OK(cudaMemcpy(host, total, blocks * sizeof(int), cudaMemcpyDeviceToHost));
  right = true;
  for (int b = 0; b < blocks; b++) right &= host[b] == want;
  CHECK("cudaLaunchKernelEx, cooperative", right);

  // the grid group is valid in an ordinary launch too (the driver gives every launch of a kernel that
  // uses it a grid workspace: so the H100 does), and a grid that is all resident syncs
  int *flags;
  OK(cudaMalloc(&flags, 4 * sizeof(int)));
  valid<<<4, 32>>>(flags);
  OK(cudaMemcpy(host, flags, 4 * sizeof(int), cudaMemcpyDeviceToHost));
  CHECK("a valid grid in an ordinary launch", host[0] == 1 && host[3] == 1);
  OK(cudaMemset(total, 0, 64 * sizeof(int)));
  two_phase<<<4, threads>>>(in, partial, total, n);
  OK(cudaMemcpy(host, total, 4 * sizeof(int), cudaMemcpyDeviceToHost));
  right = true;
  for (int b = 0; b < 4; b++) right &= host[b] == want;
  CHECK("a resident grid syncs in an ordinary launch", right);
  void *vargs[] = {&flags};
  OK(cudaLaunchCooperativeKernel((const void *)valid, 4, 32, vargs, 0, s));
  OK(cudaMemcpyAsync(host, flags, 4 * sizeof(int), cudaMemcpyDeviceToHost, s));
  OK(cudaStreamSynchronize(s));
  CHECK("a valid grid in a cooperative launch", host[0] == 1 && host[3] == 1);

  // cudaLaunchKernelEx without attributes; with a one-block cluster and a priority only
  config.gridDim = dim3(2);
  config.blockDim = dim3(32);
  config.numAttrs = 0;
  OK(cudaLaunchKernelEx(&config, plain, partial, 5));
  config.attrs = attrs + 1;
  config.numAttrs = 2;
  OK(cudaLaunchKernelEx(&config, plain, total, 6));
  OK(cudaStreamSynchronize(s));
  OK(cudaMemcpy(host, partial, 64 * sizeof(int), cudaMemcpyDeviceToHost));
  CHECK("cudaLaunchKernelEx, no attributes", host[0] == 5 && host[63] == 5);
  OK(cudaMemcpy(host, total, 64 * sizeof(int), cudaMemcpyDeviceToHost));
  CHECK("cudaLaunchKernelEx, cluster of one and a priority", host[0] == 6 && host[63] == 6);

  OK(cudaStreamDestroy(s));
  OK(cudaFree(flags));
  OK(cudaFree(in));
  OK(cudaFree(partial));
  OK(cudaFree(total));
  delete[] values;
  return finish();
}
