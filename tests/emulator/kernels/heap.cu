// Device-side malloc/free and assert.
#include <cstdio>
#include <cassert>
extern "C" __global__ void heap(int* out, int n) {
    int i = threadIdx.x;
    int* p = (int*)malloc(n * sizeof(int));
    for (int k = 0; k < n; ++k) p[k] = i * k;
    int s = 0;
    for (int k = 0; k < n; ++k) s += p[k];
    free(p);
    out[i] = s;
    assert(i < 100);
}
