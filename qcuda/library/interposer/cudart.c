/* The C part of qcuda's libcudart.so.13: only what must be C.
 *
 * - Registration (__cudaRegisterFatBinary/Function/Var) runs in the program's static
 *   constructors, before main: it only records pointers here; Python and the daemon connection
 *   start at the first real CUDA call, and modules load at their first launch.
 * - The <<<>>> call-configuration stack and the per-thread last error are hot and per thread.
 * - cudaGetErrorString/Name return C strings (tables generated from qcuda's error table).
 * - The device and arena address ranges are reserved before main, so that no host allocation of
 *   the program can ever equal a device address (cudaMemcpyDefault tells them apart by address).
 * Included by the cffi-generated source; the build script appends the generated parts.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

#define QCUDA_EXPORT __attribute__((visibility("default")))
#define FATBIN_WRAPPER_MAGIC 0x466243b1u
#define FATBIN_MAGIC 0xBA55ED50u
#define CUDA_SUCCESS 0
#define CUDA_ERROR_MISSING_CONFIGURATION 52
#define CUDA_ERROR_NOT_SUPPORTED 801
#define CUDA_ERROR_INVALID_VALUE 1
#define CUDA_ERROR_INVALID_DEVICE_FUNCTION 98
#define CALL_CONFIG_DEPTH 32

struct fatbin_wrapper { uint32_t magic; uint32_t version; const uint8_t *data; void *filename_or_fatbins; };
struct fatbin_header { uint32_t magic; uint16_t version; uint16_t header_size; uint64_t fat_size; };

/* ---- registrations ------------------------------------------------------------------------ */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static qcuda_fatbin *fatbins;  /* linked through ->next; a handle is a qcuda_fatbin* */
static qcuda_function *functions;
static qcuda_variable *variables;

QCUDA_EXPORT void **__cudaRegisterFatBinary(void *fatCubin) {
    const struct fatbin_wrapper *w = fatCubin;
    qcuda_fatbin *f = calloc(1, sizeof *f);
    if (w != NULL && w->magic == FATBIN_WRAPPER_MAGIC && w->data != NULL) {
        const struct fatbin_header *h = (const struct fatbin_header *)w->data;
        if (h->magic == FATBIN_MAGIC) {
            f->image = w->data;
            f->size = (uint64_t)h->header_size + h->fat_size;
        }
    }
    f->id = -1;
    pthread_mutex_lock(&registry_lock);
    f->next = fatbins;
    fatbins = f;
    pthread_mutex_unlock(&registry_lock);
    return (void **)f;
}

QCUDA_EXPORT void __cudaRegisterFatBinaryEnd(void **handle) { (void)handle; }

QCUDA_EXPORT void __cudaUnregisterFatBinary(void **handle) {
    /* Runs from atexit: the daemon frees the session's modules when the process hangs up. */
    ((qcuda_fatbin *)handle)->unregistered = 1;
}

QCUDA_EXPORT char __cudaInitModule(void **handle) { (void)handle; return 1; }

QCUDA_EXPORT void __cudaRegisterFunction(void **handle, const char *hostFun, char *deviceFun, const char *deviceName,
                                         int thread_limit, void *tid, void *bid, void *bDim, void *gDim, int *wSize) {
    qcuda_function *fn = calloc(1, sizeof *fn);
    fn->fatbin = (qcuda_fatbin *)handle;
    fn->host = hostFun;
    fn->name = deviceName;
    pthread_mutex_lock(&registry_lock);
    fn->next = functions;
    functions = fn;
    pthread_mutex_unlock(&registry_lock);
}

QCUDA_EXPORT void __cudaRegisterVar(void **handle, char *hostVar, char *deviceAddress, const char *deviceName,
                                    int ext, size_t size, int constant, int global) {
    qcuda_variable *v = calloc(1, sizeof *v);
    v->fatbin = (qcuda_fatbin *)handle;
    v->host = hostVar;
    v->name = deviceName;
    v->size = size;
    v->constant = constant;
    pthread_mutex_lock(&registry_lock);
    v->next = variables;
    variables = v;
    pthread_mutex_unlock(&registry_lock);
}

qcuda_function *qcuda_find_function(const void *host) {
    pthread_mutex_lock(&registry_lock);
    qcuda_function *fn = functions;
    while (fn != NULL && fn->host != host) fn = fn->next;
    pthread_mutex_unlock(&registry_lock);
    return fn;
}

qcuda_variable *qcuda_find_variable(const void *host) {
    pthread_mutex_lock(&registry_lock);
    qcuda_variable *v = variables;
    while (v != NULL && v->host != host) v = v->next;
    pthread_mutex_unlock(&registry_lock);
    return v;
}

QCUDA_EXPORT cudaError_t __cudaGetKernel(void **kernel, const void *hostFun) {
    /* A kernel handle is the stub's own address: launches find the registration from it. */
    if (kernel == NULL || qcuda_find_function(hostFun) == NULL) return CUDA_ERROR_INVALID_DEVICE_FUNCTION;
    *kernel = (void *)hostFun;
    return CUDA_SUCCESS;
}

/* ---- <<<>>> configuration and the last error, per host thread ------------------------------ */
struct call_config { dim3 grid, block; size_t shared; void *stream; };
static __thread struct call_config call_configs[CALL_CONFIG_DEPTH];
static __thread int call_depth;
static __thread cudaError_t last_error;

QCUDA_EXPORT unsigned __cudaPushCallConfiguration(dim3 gridDim, dim3 blockDim, size_t sharedMem, void *stream) {
    if (call_depth == CALL_CONFIG_DEPTH) return 1;
    call_configs[call_depth++] = (struct call_config){gridDim, blockDim, sharedMem, stream};
    return 0;
}

QCUDA_EXPORT cudaError_t __cudaPopCallConfiguration(dim3 *gridDim, dim3 *blockDim, size_t *sharedMem, void *stream) {
    if (call_depth == 0) return CUDA_ERROR_MISSING_CONFIGURATION;
    struct call_config *c = &call_configs[--call_depth];
    *gridDim = c->grid;
    *blockDim = c->block;
    *sharedMem = c->shared;
    *(void **)stream = c->stream;
    return CUDA_SUCCESS;
}

void qcuda_set_error(cudaError_t code) {
    if (code != CUDA_SUCCESS) last_error = code;
}

QCUDA_EXPORT cudaError_t cudaGetLastError(void) {
    cudaError_t code = last_error;
    last_error = CUDA_SUCCESS;
    return code;
}

QCUDA_EXPORT cudaError_t cudaPeekAtLastError(void) { return last_error; }

QCUDA_EXPORT const char *cudaGetErrorName(cudaError_t code) {
    const char *name = qcuda_error_name(code);
    return name != NULL ? name : "cudaErrorUnknown";
}

QCUDA_EXPORT const char *cudaGetErrorString(cudaError_t code) {
    const char *text = qcuda_error_text(code);
    return text != NULL ? text : "unrecognized error code";
}

QCUDA_EXPORT cudaError_t cudaRuntimeGetVersion(int *version) {
    if (version == NULL) return last_error = CUDA_ERROR_INVALID_VALUE;
    *version = CUDART_VERSION;
    return CUDA_SUCCESS;
}

QCUDA_EXPORT cudaError_t cudaDriverGetVersion(int *version) {
    /* The CUDA version qcuda's device side speaks, whatever the GPU host's driver. */
    if (version == NULL) return last_error = CUDA_ERROR_INVALID_VALUE;
    *version = CUDART_VERSION;
    return CUDA_SUCCESS;
}

struct cudaChannelFormatDesc { int x, y, z, w; int f; };

QCUDA_EXPORT struct cudaChannelFormatDesc cudaCreateChannelDesc(int x, int y, int z, int w, int f) {
    return (struct cudaChannelFormatDesc){x, y, z, w, f};
}

/* ---- what qcuda does not implement ---------------------------------------------------------- */
int qcuda_unsupported(const char *name, int *warned) {
    if (!__atomic_exchange_n(warned, 1, __ATOMIC_RELAXED))
        fprintf(stderr, "qcuda: %s is not supported yet: it returns cudaErrorNotSupported\n", name);
    last_error = CUDA_ERROR_NOT_SUPPORTED;
    return CUDA_ERROR_NOT_SUPPORTED;
}

/* ---- the process ------------------------------------------------------------------------------ */
void qcuda_write_stdout(const char *data, size_t size) {
    /* Device printf goes through the program's own stdout buffer, as CUDA's does: ordered with its printf. */
    fwrite(data, 1, size, stdout);
    fflush(stdout);
}

const char *qcuda_library_path(void) {
    Dl_info info;
    return dladdr((void *)qcuda_library_path, &info) && info.dli_fname != NULL ? info.dli_fname : "";
}

void *qcuda_alias(void *mapping, size_t size, void *address) {
    /* A second mapping of the same shared pages at `address` (inside the reserved span): pinned memory then
     * has one address on the host and on the device, as under CUDA's unified addressing. */
    void *p = mremap(mapping, 0, size, MREMAP_MAYMOVE | MREMAP_FIXED, address);
    return p == MAP_FAILED ? NULL : p;
}

static void reserve(uintptr_t base, size_t size) {
    void *p = mmap((void *)base, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
    if (p != MAP_FAILED && p != (void *)base) munmap(p, size); /* kernels without NOREPLACE: not ours to keep */
}

/* fork(): CPython does not see a C program's fork, so take the GIL across it (as os.fork does), or a child
 * could inherit a GIL held by one of qcuda's threads and hang at its first CUDA call. The child's at-fork
 * hooks then drop the parent's connections: it gets its own session at its next call. */
static int fork_with_python;
static PyGILState_STATE fork_gil;

static void before_fork(void) {
    fork_with_python = Py_IsInitialized();
    if (fork_with_python) {
        fork_gil = PyGILState_Ensure();
        PyOS_BeforeFork();
    }
}

static void after_fork_in_parent(void) {
    if (fork_with_python) {
        PyOS_AfterFork_Parent();
        PyGILState_Release(fork_gil);
    }
}

static void after_fork_in_child(void) {
    if (fork_with_python) {
        PyOS_AfterFork_Child();
        PyGILState_Release(fork_gil);
    }
}

__attribute__((constructor)) static void watch_forks(void) {
    pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child);
}

__attribute__((constructor)) static void reserve_device_ranges(void) {
    reserve(QCUDA_RESERVED_BASE, QCUDA_RESERVED_SIZE); /* the guest's client checks it and says what went wrong */
}
