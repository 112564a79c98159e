// Self-checking helpers for the corpus: one line per check ("ok NAME" or "FAIL NAME: why"), then
// PASS or FAIL; the exit status is the number of failures. The output names no device-specific
// values, so a native run and a qcuda run of the same program print the same lines.
#pragma once
#include <cstdio>
#include <cuda_runtime.h>

static int failures = 0;

#define CHECK(name, cond)                                                  \
  do {                                                                     \
    if (cond) {                                                            \
      printf("ok %s\n", name);                                             \
    } else {                                                               \
      printf("FAIL %s: %s is false\n", name, #cond);                       \
      failures++;                                                          \
    }                                                                      \
  } while (0)

// `call` must return `want`; a failure is then cleared so that later checks start clean.
#define EXPECT(want, call)                                                               \
  do {                                                                                   \
    cudaError_t got_ = (call);                                                           \
    if (got_ == (want)) {                                                                \
      printf("ok %s -> %s\n", #call, cudaGetErrorName(got_));                            \
    } else {                                                                             \
      printf("FAIL %s -> %s (%s), expected %s\n", #call, cudaGetErrorName(got_),         \
             cudaGetErrorString(got_), cudaGetErrorName(want));                          \
      failures++;                                                                        \
    }                                                                                    \
    if (got_ != cudaSuccess) cudaGetLastError();                                         \
  } while (0)

#define OK(call) EXPECT(cudaSuccess, call)

static int finish() {
  printf("%s\n", failures ? "FAIL" : "PASS");
  return failures;
}
