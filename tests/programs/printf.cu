// Device printf: its lines appear between the host's own lines, in program order.
#include "check.h"

__global__ void say(int n, float x) {
  for (int i = 0; i < n; i++) printf("device line %d of %d: %.2f %s\n", i + 1, n, x * i, i % 2 ? "odd" : "even");
}

int main() {
  printf("host before\n");
  say<<<1, 1>>>(3, 1.5f);
  OK(cudaDeviceSynchronize());
  printf("host after\n");
  say<<<1, 1>>>(1, -2.f);
  OK(cudaDeviceSynchronize());
  return finish();
}
