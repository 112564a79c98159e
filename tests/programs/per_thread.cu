// nvcc flags: --default-stream per-thread
// The per-thread default stream (nvcc --default-stream per-thread: the _ptsz/_ptds calls): stream 0 is
// each host thread's own stream, so one thread's blocked default stream does not hold up another's.
#include <atomic>
#include <thread>
#include <unistd.h>
#include "check.h"

__global__ void fill(int *out, int value, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = value;
}

static std::atomic<int> a_queued{0}, b_done{0};
static int a_saw_b = 0;

static void CUDART_CB wait_for_b(void *) {  // holds thread A's default stream until thread B is done
  for (int i = 0; i < 20000 && !b_done.load(); i++) usleep(1000);
  a_saw_b = b_done.load();
}

int main() {
  const int n = 512;
  int *a, *b, ha[n], hb[n];
  OK(cudaMalloc(&a, n * sizeof(int)));
  OK(cudaMalloc(&b, n * sizeof(int)));
  cudaError_t a_sync = cudaErrorUnknown, b_copy = cudaErrorUnknown;
  std::thread ta([&] {
    fill<<<(n + 127) / 128, 128>>>(a, 1, n);
    cudaLaunchHostFunc(0, wait_for_b, nullptr);
    fill<<<(n + 127) / 128, 128>>>(a, 2, n);  // runs after the host function
    a_queued = 1;
    a_sync = cudaStreamSynchronize(0);
  });
  while (!a_queued.load()) usleep(100);
  std::thread tb([&] {
    fill<<<(n + 127) / 128, 128>>>(b, 3, n);
    b_copy = cudaMemcpy(hb, b, sizeof hb, cudaMemcpyDeviceToHost);  // on thread B's own default stream
    b_done = 1;
  });
  tb.join();
  ta.join();
  CHECK("thread B's synchronous copy", b_copy == cudaSuccess);
  bool right = true;
  for (int i = 0; i < n; i++) right &= hb[i] == 3;
  CHECK("thread B's kernel", right);
  CHECK("thread B finished while thread A's default stream was held", a_saw_b == 1);
  CHECK("thread A's stream synchronisation", a_sync == cudaSuccess);
  OK(cudaMemcpy(ha, a, sizeof ha, cudaMemcpyDeviceToHost));
  right = true;
  for (int i = 0; i < n; i++) right &= ha[i] == 2;
  CHECK("thread A's work in order", right);

  // stream 0, cudaStreamPerThread and the legacy stream in one thread
  fill<<<(n + 127) / 128, 128, 0, cudaStreamPerThread>>>(a, 4, n);
  OK(cudaMemsetAsync(b, 0, n * sizeof(int), 0));
  fill<<<(n + 127) / 128, 128, 0, cudaStreamLegacy>>>(b, 5, n);  // waits for this thread's default stream
  OK(cudaMemcpyAsync(ha, a, sizeof ha, cudaMemcpyDeviceToHost, cudaStreamPerThread));
  OK(cudaStreamSynchronize(cudaStreamLegacy));
  OK(cudaStreamSynchronize(0));
  OK(cudaMemcpy(hb, b, sizeof hb, cudaMemcpyDeviceToHost));
  CHECK("per-thread and legacy streams in order", ha[0] == 4 && ha[n - 1] == 4 && hb[0] == 5 && hb[n - 1] == 5);
  unsigned flags = 99;
  OK(cudaStreamGetFlags(0, &flags));
  CHECK("the per-thread stream is a blocking stream", flags == cudaStreamDefault);
  // the per-thread stream captures; another thread's default stream meanwhile runs its work at once
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  OK(cudaStreamBeginCapture(0, cudaStreamCaptureModeRelaxed));
  fill<<<(n + 127) / 128, 128>>>(a, 7, n);
  OK(cudaMemcpyAsync(ha, a, sizeof ha, cudaMemcpyDeviceToHost, 0));
  cudaStreamCaptureStatus main_status = cudaStreamCaptureStatusNone, other_status = cudaStreamCaptureStatusActive;
  OK(cudaStreamIsCapturing(cudaStreamPerThread, &main_status));
  cudaError_t other_copy = cudaErrorUnknown;
  std::thread other([&] {
    cudaStreamIsCapturing(0, &other_status);
    fill<<<(n + 127) / 128, 128>>>(b, 8, n);
    other_copy = cudaMemcpy(hb, b, sizeof hb, cudaMemcpyDeviceToHost);
  });
  other.join();
  OK(cudaStreamEndCapture(0, &graph));
  CHECK("this thread's default stream captured", main_status == cudaStreamCaptureStatusActive);
  CHECK("another thread's did not", other_status == cudaStreamCaptureStatusNone);
  CHECK("and ran its work at once", other_copy == cudaSuccess && hb[0] == 8 && hb[n - 1] == 8);
  CHECK("nothing captured ran", ha[0] == 4);
  OK(cudaGraphInstantiate(&exec, graph, 0));
  OK(cudaGraphLaunch(exec, cudaStreamPerThread));
  OK(cudaStreamSynchronize(0));
  CHECK("the per-thread stream's graph", ha[0] == 7 && ha[n - 1] == 7);
  OK(cudaGraphExecDestroy(exec));
  OK(cudaGraphDestroy(graph));
  OK(cudaFree(a));
  OK(cudaFree(b));
  return finish();
}
