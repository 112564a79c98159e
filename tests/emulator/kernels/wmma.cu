// Tensor-core matrix multiply through nvcuda::wmma (m16n16k16, f16 inputs): fragments loaded from global and
// shared memory in row- and column-major layouts, f32 and f16 accumulators, element-wise work on a fragment.
#include <mma.h>
using namespace nvcuda;

// c (16 x 16 per warp, row-major) = 2 * a (16 x n, row-major) @ b^T (b: 16 x n, i.e. b^T column-major);
// warp w works on rows 16w.. of a and c
extern "C" __global__ void wmma_f32(const half *a, const half *b, float *c, int n) {
  int w = threadIdx.x / 32;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, half, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, half, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 0.0f);
  for (int k = 0; k < n; k += 16) {
    wmma::load_matrix_sync(fa, a + w * 16 * n + k, n);
    wmma::load_matrix_sync(fb, b + k, n);
    wmma::mma_sync(acc, fa, fb, acc);
  }
  for (int i = 0; i < acc.num_elements; i++) acc.x[i] *= 2.0f;
  wmma::store_matrix_sync(c + w * 256, acc, 16, wmma::mem_row_major);
}

// the same through shared memory, b row-major, a starting accumulator c0 (column-major), f16 accumulators,
// the result stored column-major
extern "C" __global__ void wmma_f16_shared(const half *a, const half *b, const half *c0, half *c) {
  __shared__ half sa[256], sb[256], sc[256];
  for (int i = threadIdx.x; i < 256; i += blockDim.x) {
    sa[i] = a[i];
    sb[i] = b[i];
    sc[i] = c0[i];
  }
  __syncthreads();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, half, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, half, wmma::row_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, half> acc;
  wmma::load_matrix_sync(fa, sa, 16);
  wmma::load_matrix_sync(fb, sb, 16);
  wmma::load_matrix_sync(acc, sc, 16, wmma::mem_col_major);
  wmma::mma_sync(acc, fa, fb, acc);
  wmma::store_matrix_sync(c, acc, 16, wmma::mem_col_major);
}
