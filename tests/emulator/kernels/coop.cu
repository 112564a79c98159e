// Cooperative groups as CUDA code uses them: a block's tiles, tile shuffles and reductions
// (cg::reduce, which nvcc lowers to redux.sync for 32-bit integers and to shuffles otherwise),
// a scan, sub-warp tiles, a coalesced group under divergence, and a block-level total by atomics.
#include <cooperative_groups.h>
#include <cooperative_groups/reduce.h>
#include <cooperative_groups/scan.h>
namespace cg = cooperative_groups;

extern "C" __global__ void cg_reduce(const int* in, const float* fin, int* total, int* out, float* fout, int n) {
    __shared__ int partial[32];
    cg::thread_block block = cg::this_thread_block();
    cg::thread_block_tile<32> tile = cg::tiled_partition<32>(block);
    int i = block.group_index().x * block.size() + block.thread_rank();
    int v = i < n ? in[i] : 0;
    float f = i < n ? fin[i] : 0.0f;
    int s = v;
    for (int off = tile.size() / 2; off > 0; off /= 2) s += tile.shfl_down(s, off);
    int sum = cg::reduce(tile, v, cg::plus<int>());
    int mx = cg::reduce(tile, v, cg::greater<int>());
    float fsum = cg::reduce(tile, f, cg::plus<float>());
    int scan = cg::inclusive_scan(tile, v);
    cg::thread_block_tile<8> eighth = cg::tiled_partition<8>(tile);
    int sum8 = cg::reduce(eighth, v, cg::plus<int>());
    int from_next = eighth.shfl(v, (eighth.thread_rank() + 1) % 8);
    unsigned ballot = tile.ballot(v > 0);
    int rank = -1, size = 0;
    if (v > 0) {
        cg::coalesced_group active = cg::coalesced_threads();
        rank = active.thread_rank();
        size = active.size();
    }
    if (tile.thread_rank() == 0) partial[tile.meta_group_rank()] = s;
    block.sync();
    if (tile.meta_group_rank() == 0) {
        int p = tile.thread_rank() < tile.meta_group_size() ? partial[tile.thread_rank()] : 0;
        int block_sum = cg::reduce(tile, p, cg::plus<int>());
        if (tile.thread_rank() == 0) atomicAdd(total, block_sum);
    }
    if (i < n) {
        int* o = out + i * 9;
        o[0] = s; o[1] = sum; o[2] = mx; o[3] = scan; o[4] = sum8; o[5] = from_next;
        o[6] = (int)ballot; o[7] = rank; o[8] = size;
        fout[i] = fsum;
    }
}

// Tiles wider than a warp synchronise through the block's reserved shared memory (%reserved_smem_offset).
template <int W>
__device__ void reverse_in_tile(int *s, int *out)
{
    auto tile = cg::tiled_partition<W>(cg::this_thread_block());
    const int t = threadIdx.x;
    s[t] = t * 7 + W;
    tile.sync();
    const int partner = t - tile.thread_rank() + (W - 1 - tile.thread_rank());
    out[blockIdx.x * blockDim.x + t] = s[partner] + 1000 * tile.meta_group_rank();
    tile.sync();
}

extern "C" __global__ void wide_tiles(int *out64, int *out128)
{
    __shared__ int s[256];
    reverse_in_tile<64>(s, out64);
    __syncthreads();
    reverse_in_tile<128>(s, out128);
}
