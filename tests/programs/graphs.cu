// CUDA graphs captured from streams: kernels, async copies and memsets, a host function, a fork into a
// second stream and its join (events), replayed many times; the errors of a capture gone wrong.
#include <vector>
#include "check.h"

// a call that must fail, whatever error a given CUDA names for it
#define REFUSED(name, call)                  \
  do {                                       \
    CHECK(name, (call) != cudaSuccess);      \
    cudaGetLastError();                      \
  } while (0)

__global__ void axpb(float *x, float a, float b, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] = a * x[i] + b;
}

__global__ void add(float *out, const float *a, const float *b, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = a[i] + b[i];
}

static void CUDART_CB count_up(void *p) { ++*static_cast<int *>(p); }

int main() {
  const int n = 1000, launches = 5;
  const size_t bytes = n * sizeof(float);
  std::vector<float> host(n), result(n);
  for (int i = 0; i < n; i++) host[i] = float(i % 17);
  float *x, *y, *sum, *pinned;
  OK(cudaMalloc(&x, bytes));
  OK(cudaMalloc(&y, bytes));
  OK(cudaMalloc(&sum, bytes));
  OK(cudaMallocHost(&pinned, bytes));
  cudaStream_t s, side;
  OK(cudaStreamCreate(&s));
  OK(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking));
  cudaEvent_t fork, join;
  OK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
  OK(cudaEventCreateWithFlags(&join, cudaEventDisableTiming));
  int calls = 0;

  // x = host; x = 2x + 1 (s) | y = 0; y = y + 3 (side); sum = x + y; back to pinned; count the calls
  OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  OK(cudaStreamIsCapturing(s, &status));
  CHECK("capturing", status == cudaStreamCaptureStatusActive);
  OK(cudaMemcpyAsync(x, host.data(), bytes, cudaMemcpyHostToDevice, s));
  OK(cudaEventRecord(fork, s));
  OK(cudaStreamWaitEvent(side, fork, 0));
  OK(cudaStreamIsCapturing(side, &status));
  CHECK("the forked stream captures too", status == cudaStreamCaptureStatusActive);
  OK(cudaMemsetAsync(y, 0, bytes, side));
  axpb<<<(n + 255) / 256, 256, 0, side>>>(y, 1.0f, 3.0f, n);
  OK(cudaGetLastError());
  axpb<<<(n + 255) / 256, 256, 0, s>>>(x, 2.0f, 1.0f, n);
  OK(cudaGetLastError());
  unsigned long long id = 0;
  size_t deps = 99;
  const cudaGraphNode_t *dep_nodes = nullptr;
  OK(cudaStreamGetCaptureInfo(s, &status, &id, nullptr, &dep_nodes, nullptr, &deps));
  CHECK("capture info", status == cudaStreamCaptureStatusActive && id != 0 && deps == 1 && dep_nodes != nullptr);
  cudaGraph_t capturing = nullptr;
  size_t so_far = 0;
  OK(cudaStreamGetCaptureInfo(side, &status, nullptr, &capturing, nullptr, nullptr, nullptr));
  OK(cudaGraphGetNodes(capturing, nullptr, &so_far));
  CHECK("the graph being captured, so far", so_far == 4);
  OK(cudaEventRecord(join, side));
  OK(cudaStreamWaitEvent(s, join, 0));
  OK(cudaStreamGetCaptureInfo(s, &status, nullptr, nullptr, nullptr, nullptr, &deps));
  CHECK("joined: two dependencies", deps == 2);
  add<<<(n + 255) / 256, 256, 0, s>>>(sum, x, y, n);
  OK(cudaMemcpyAsync(pinned, sum, bytes, cudaMemcpyDeviceToHost, s));
  OK(cudaLaunchHostFunc(s, count_up, &calls));
  cudaGraph_t graph = nullptr;
  OK(cudaStreamEndCapture(s, &graph));
  CHECK("a graph", graph != nullptr);
  OK(cudaStreamIsCapturing(s, &status));
  CHECK("capture over", status == cudaStreamCaptureStatusNone);
  OK(cudaStreamIsCapturing(side, &status));
  CHECK("capture over on the forked stream", status == cudaStreamCaptureStatusNone);
  CHECK("nothing ran during the capture", calls == 0);

  size_t count = 0;
  OK(cudaGraphGetNodes(graph, nullptr, &count));
  CHECK("seven nodes", count == 7);
  std::vector<cudaGraphNode_t> nodes(count);
  OK(cudaGraphGetNodes(graph, nodes.data(), &count));
  int kernels = 0;
  for (auto node : nodes) {
    cudaGraphNodeType type;
    OK(cudaGraphNodeGetType(node, &type));
    kernels += type == cudaGraphNodeTypeKernel;
  }
  CHECK("three kernel nodes", kernels == 3);

  cudaGraphExec_t exec = nullptr;
  OK(cudaGraphInstantiate(&exec, graph, 0));
  bool right = true;
  for (int k = 0; k < launches; k++) {
    for (int i = 0; i < n; i++) host[i] = float(i % 17 + k);  // the copy reads the host buffer at each launch
    OK(cudaGraphLaunch(exec, s));
    OK(cudaStreamSynchronize(s));
    for (int i = 0; i < n; i++) right &= pinned[i] == 2.0f * float(i % 17 + k) + 1.0f + 3.0f;
  }
  CHECK("every launch computed 2x + 1 + 3", right);
  CHECK("the host function ran once per launch", calls == launches);

  // a graph launched into a capturing stream: refused, and the capture is over (so the H100's runtime does)
  cudaGraph_t outer = nullptr;
  OK(cudaStreamBeginCapture(side, cudaStreamCaptureModeGlobal));
  EXPECT(cudaErrorStreamCaptureUnsupported, cudaGraphLaunch(exec, side));
  EXPECT(cudaErrorStreamCaptureInvalidated, cudaMemcpyAsync(pinned, sum, bytes, cudaMemcpyDeviceToHost, side));
  EXPECT(cudaErrorStreamCaptureInvalidated, cudaStreamEndCapture(side, &outer));
  CHECK("no graph from the failed capture", outer == nullptr);
  CHECK("nothing ran during it", calls == launches);

  cudaGraphExec_t exec2 = nullptr;
  OK(cudaGraphInstantiateWithFlags(&exec2, graph, cudaGraphInstantiateFlagAutoFreeOnLaunch));
  for (int k = 0; k < 3; k++) OK(cudaGraphLaunch(exec2, side));  // back to back, without waiting between
  OK(cudaStreamSynchronize(side));
  CHECK("three more launches on another stream", calls == launches + 3);
  OK(cudaGraphExecDestroy(exec2));
  OK(cudaGraphExecDestroy(exec));
  OK(cudaGraphDestroy(graph));

  // errors: a synchronising call ends the capture; ending elsewhere; unjoined work; captured events
  OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  REFUSED("a second capture on a capturing stream", cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  axpb<<<1, 32, 0, s>>>(x, 1.0f, 0.0f, 32);
  EXPECT(cudaErrorStreamCaptureUnsupported, cudaStreamSynchronize(s));
  OK(cudaStreamIsCapturing(s, &status));
  CHECK("invalidated", status == cudaStreamCaptureStatusInvalidated);
  EXPECT(cudaErrorStreamCaptureInvalidated, cudaMemsetAsync(x, 0, 4, s));
  graph = reinterpret_cast<cudaGraph_t>(1);
  EXPECT(cudaErrorStreamCaptureInvalidated, cudaStreamEndCapture(s, &graph));
  CHECK("no graph from an invalidated capture", graph == nullptr);

  OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
  OK(cudaEventRecord(fork, s));
  OK(cudaStreamWaitEvent(side, fork, 0));
  OK(cudaMemsetAsync(y, 0, bytes, side));
  EXPECT(cudaErrorStreamCaptureUnjoined, cudaStreamEndCapture(s, &graph));
  OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
  OK(cudaEventRecord(fork, s));
  EXPECT(cudaErrorCapturedEvent, cudaEventQuery(fork));  // and the capture is over
  EXPECT(cudaErrorStreamCaptureInvalidated, cudaStreamEndCapture(s, &graph));

  REFUSED("no capture on the legacy stream", cudaStreamBeginCapture(cudaStreamLegacy, cudaStreamCaptureModeGlobal));
  REFUSED("no end without a capture", cudaStreamEndCapture(s, &graph));
  OK(cudaStreamIsCapturing(s, &status));
  CHECK("no capture after the errors", status == cudaStreamCaptureStatusNone);

  // potentially unsafe calls (cudaMalloc): refused during a global capture, allowed in a relaxed thread
  float *extra = nullptr;
  OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  EXPECT(cudaErrorStreamCaptureUnsupported, cudaMalloc(&extra, 64));
  EXPECT(cudaErrorStreamCaptureInvalidated, cudaStreamEndCapture(s, &graph));
  OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  OK(cudaThreadExchangeStreamCaptureMode(&mode));
  CHECK("the thread's mode was global", mode == cudaStreamCaptureModeGlobal);
  OK(cudaMalloc(&extra, 64));
  OK(cudaFree(extra));
  OK(cudaThreadExchangeStreamCaptureMode(&mode));
  CHECK("and was relaxed since", mode == cudaStreamCaptureModeRelaxed);
  OK(cudaStreamEndCapture(s, &graph));
  OK(cudaGraphGetNodes(graph, nullptr, &count));
  CHECK("an empty graph", count == 0);
  OK(cudaGraphDestroy(graph));

  // the legacy stream may not wait for a capturing blocking stream (a synchronous copy uses it)
  OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  EXPECT(cudaErrorStreamCaptureImplicit, cudaMemcpy(result.data(), x, bytes, cudaMemcpyDeviceToHost));
  cudaError_t ended = cudaStreamEndCapture(s, &graph);
  if (ended == cudaSuccess) {
    OK(cudaGraphDestroy(graph));
  } else {
    cudaGetLastError();
  }
  OK(cudaStreamIsCapturing(s, &status));
  CHECK("no capture after the implicit dependency", status == cudaStreamCaptureStatusNone);

  // the stream works as before
  OK(cudaMemcpyAsync(x, host.data(), bytes, cudaMemcpyHostToDevice, s));
  axpb<<<(n + 255) / 256, 256, 0, s>>>(x, 1.0f, 1.0f, n);
  OK(cudaMemcpyAsync(result.data(), x, bytes, cudaMemcpyDeviceToHost, s));
  OK(cudaStreamSynchronize(s));
  right = true;
  for (int i = 0; i < n; i++) right &= result[i] == host[i] + 1.0f;
  CHECK("uncaptured work after captures", right);

  OK(cudaEventDestroy(fork));
  OK(cudaEventDestroy(join));
  OK(cudaStreamDestroy(side));
  OK(cudaStreamDestroy(s));
  OK(cudaFreeHost(pinned));
  OK(cudaFree(x));
  OK(cudaFree(y));
  OK(cudaFree(sum));
  return finish();
}
