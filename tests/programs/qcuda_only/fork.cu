// qcuda only (CUDA cannot be used in a child forked after the parent used it): a forked child that
// calls CUDA gets its own session and never hangs, and the parent carries on.
#include <sys/wait.h>
#include <unistd.h>
#include "../check.h"

__global__ void set(int *p, int v) { *p = v; }

static int use_device(int v) {
  int *d = nullptr, h = 0;
  if (cudaMalloc(&d, sizeof(int)) != cudaSuccess) return 1;
  set<<<1, 1>>>(d, v);
  if (cudaMemcpy(&h, d, sizeof h, cudaMemcpyDeviceToHost) != cudaSuccess) return 2;
  cudaFree(d);
  return h == v ? 0 : 3;
}

int main() {
  CHECK("the parent uses the device", use_device(1) == 0);
  for (int round = 0; round < 3; round++) {
    pid_t child = fork();
    if (child == 0) _exit(use_device(100 + round));
    int status = -1;
    waitpid(child, &status, 0);
    CHECK("a forked child uses the device", WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  CHECK("the parent still uses the device", use_device(2) == 0);
  return finish();
}
