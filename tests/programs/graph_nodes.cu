// CUDA graphs built node by node: memset, kernel, 1-D copy, host and empty nodes, a child graph, a dependency
// added afterwards, a clone, and new kernel arguments for one node of an instantiated graph; launched again
// and again.
#include "check.h"

__global__ void axpb(float *x, float a, float b, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] = a * x[i] + b;
}

static int calls = 0;
static float seen = -1.0f;
static void CUDART_CB look(void *host) {  // runs after the copy to `host`, if the added dependency holds
  seen = static_cast<float *>(host)[0];
  calls++;
}

static bool all_equal(const float *host, int n, float want) {
  bool right = true;
  for (int i = 0; i < n; i++) right &= host[i] == want;
  return right;
}

int main() {
  const int n = 4096;
  const size_t bytes = n * sizeof(float);
  float *x, *y, *host;
  OK(cudaMalloc(&x, bytes));
  OK(cudaMalloc(&y, bytes));
  OK(cudaMallocHost(&host, bytes));
  cudaStream_t s;
  OK(cudaStreamCreate(&s));

  cudaGraph_t g, child;
  OK(cudaGraphCreate(&g, 0));
  cudaGraphNode_t set, scale, nested, copy, host_node, join;
  cudaMemsetParams ms = {};
  ms.dst = x;
  ms.value = 0;
  ms.elementSize = 4;
  ms.width = n;
  ms.height = 1;
  OK(cudaGraphAddMemsetNode(&set, g, nullptr, 0, &ms));
  float a = 2.0f, b = 1.0f;
  int count = n;
  void *args[] = {&x, &a, &b, &count};
  cudaKernelNodeParams kp = {};
  kp.func = (void *)axpb;
  kp.gridDim = dim3(n / 256);
  kp.blockDim = dim3(256);
  kp.kernelParams = args;
  OK(cudaGraphAddKernelNode(&scale, g, &set, 1, &kp));  // x = 1
  a = 5.0f;  // the node took its arguments when it was added

  OK(cudaGraphCreate(&child, 0));
  cudaGraphNode_t child_copy, child_scale;
  OK(cudaGraphAddMemcpyNode1D(&child_copy, child, nullptr, 0, y, x, bytes, cudaMemcpyDeviceToDevice));
  float a2 = 3.0f, b2 = 0.0f;
  void *args2[] = {&y, &a2, &b2, &count};
  kp.kernelParams = args2;
  OK(cudaGraphAddKernelNode(&child_scale, child, &child_copy, 1, &kp));  // y = 3x
  OK(cudaGraphAddChildGraphNode(&nested, g, &scale, 1, child));
  OK(cudaGraphAddMemcpyNode1D(&copy, g, &nested, 1, host, y, bytes, cudaMemcpyDeviceToHost));
  cudaHostNodeParams hp = {look, host};
  OK(cudaGraphAddHostNode(&host_node, g, nullptr, 0, &hp));
  OK(cudaGraphAddDependencies(g, &copy, &host_node, nullptr, 1));  // added first, it runs after the copy
  OK(cudaGraphAddEmptyNode(&join, g, &host_node, 1));
  cudaEvent_t done;
  OK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  cudaGraphNode_t record;
  OK(cudaGraphAddEventRecordNode(&record, g, &join, 1, done));  // the event marks the graph's end

  size_t nodes = 0;
  OK(cudaGraphGetNodes(g, nullptr, &nodes));
  CHECK("seven nodes", nodes == 7);
  cudaGraphNodeType type;
  OK(cudaGraphNodeGetType(nested, &type));
  CHECK("a child graph node", type == cudaGraphNodeTypeGraph);
  OK(cudaGraphNodeGetType(join, &type));
  CHECK("an empty node", type == cudaGraphNodeTypeEmpty);
  OK(cudaGraphNodeGetType(set, &type));
  CHECK("a memset node", type == cudaGraphNodeTypeMemset);
  OK(cudaGraphNodeGetType(record, &type));
  CHECK("an event record node", type == cudaGraphNodeTypeEventRecord);

  cudaGraphExec_t exec;
  OK(cudaGraphInstantiate(&exec, g, 0));
  bool right = true;
  for (int k = 0; k < 3; k++) {
    for (int i = 0; i < n; i++) host[i] = -7.0f;
    OK(cudaGraphLaunch(exec, s));
    OK(cudaStreamSynchronize(s));
    right &= all_equal(host, n, 3.0f) && seen == 3.0f && calls == k + 1;
  }
  CHECK("three launches: memset, kernel, child graph, copy, then the host node", right);
  OK(cudaEventQuery(done));  // recorded by the last launch, which has finished

  // a second graph waits for the first one's event before it reads y
  cudaGraph_t after;
  cudaGraphNode_t wait, fetch;
  OK(cudaGraphCreate(&after, 0));
  OK(cudaGraphAddEventWaitNode(&wait, after, nullptr, 0, done));
  OK(cudaGraphAddMemcpyNode1D(&fetch, after, &wait, 1, host, y, bytes, cudaMemcpyDeviceToHost));
  cudaGraphExec_t after_exec;
  OK(cudaGraphInstantiate(&after_exec, after, 0));
  cudaStream_t other;
  OK(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking));
  for (int i = 0; i < n; i++) host[i] = -7.0f;
  OK(cudaGraphLaunch(exec, s));
  OK(cudaGraphLaunch(after_exec, other));
  OK(cudaStreamSynchronize(other));
  CHECK("an event wait node orders a graph on another stream after the first", all_equal(host, n, 3.0f));
  OK(cudaStreamSynchronize(s));
  OK(cudaGraphExecDestroy(after_exec));
  OK(cudaGraphDestroy(after));
  OK(cudaStreamDestroy(other));

  float a3 = 4.0f, b3 = 2.0f;
  void *args3[] = {&x, &a3, &b3, &count};
  kp.kernelParams = args3;
  OK(cudaGraphExecKernelNodeSetParams(exec, scale, &kp));  // x = 2, y = 6
  OK(cudaGraphLaunch(exec, s));
  OK(cudaStreamSynchronize(s));
  CHECK("new arguments for one node of the instantiated graph", all_equal(host, n, 6.0f) && seen == 6.0f);

  cudaGraphExec_t again;
  OK(cudaGraphInstantiate(&again, g, 0));
  OK(cudaGraphLaunch(again, s));
  OK(cudaStreamSynchronize(s));
  CHECK("the graph itself kept its arguments", all_equal(host, n, 3.0f));

  cudaGraph_t twin;
  cudaGraphExec_t twin_exec;
  OK(cudaGraphClone(&twin, g));
  OK(cudaGraphGetNodes(twin, nullptr, &nodes));
  CHECK("a clone has the same nodes", nodes == 7);
  OK(cudaGraphInstantiate(&twin_exec, twin, 0));
  for (int i = 0; i < n; i++) host[i] = -7.0f;
  OK(cudaGraphLaunch(twin_exec, s));
  OK(cudaStreamSynchronize(s));
  CHECK("and does the same", all_equal(host, n, 3.0f) && calls == 7);

  OK(cudaGraphExecDestroy(twin_exec));
  OK(cudaGraphExecDestroy(again));
  OK(cudaGraphExecDestroy(exec));
  OK(cudaGraphDestroy(twin));
  OK(cudaGraphDestroy(child));
  OK(cudaGraphDestroy(g));
  OK(cudaEventDestroy(done));
  OK(cudaStreamDestroy(s));
  OK(cudaFreeHost(host));
  OK(cudaFree(x));
  OK(cudaFree(y));
  return finish();
}
