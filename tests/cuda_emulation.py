"""A host stand-in for the GPU, so that the cuda backend's own code runs where there is none.

- ``compile_kernels`` builds python/l2fast/backends/cuda_kernels.cu as C++. A launch runs its blocks one
  after another; within a block, threads run one after another too, except in the kernels that call
  ``__syncthreads``, whose threads run as fibers (ucontext) taking turns from one barrier to the next, as
  the GPU's do; ``__shared__`` variables are one per block. ``HostKernels`` calls the kernels with NumPy
  arrays, their argument types read from their signatures (templates by their name expressions), and
  counts the atomic adds the kernels make.
- ``FakeCublasLibrary`` is the part of libcublas the backend calls: its GEMMs (column-major, on raw
  addresses, alpha and beta read from memory when they run in device pointer mode) in NumPy, and the
  handles it creates and destroys, counted.
- ``fake_cupy`` is the part of CuPy the backend uses, on host memory: arrays with ``.data.ptr``,
  streams whose capture records the launches and replays them like a CUDA graph (captures counted),
  and a RawModule whose kernels are the host-compiled ones.
- ``fake_cupyx`` is the part of cupyx.scipy.sparse the backend uses, over scipy.sparse: csr_matrix built from
  device (data, indices, indptr), its row slices and row indexing by a device array, ``.T`` a csc_matrix, and
  products with dense device arrays only (a host array is refused, as cupyx's are not dense to it), answered in
  column-major order as cuSPARSE's SpMM writes them; a product during a capture is refused, as CuPy's allocations
  are. Products and row gathers counted.
What stays untested without a GPU: CuPy itself, NVRTC and the GPU's arithmetic (tests/test_cuda_compile.py
compiles the kernels with NVRTC), cuBLAS, cuSPARSE and cupyx, real graph capture and streams.
"""
import contextlib
import ctypes
import os
import re
import shutil
import subprocess
import types
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from l2fast.backends import cuda as cuda_backend

KERNELS = Path(cuda_backend.__file__).with_name("cuda_kernels.cu")

SHIM = r"""
#include <cmath>
#include <cstdio>
#include <ucontext.h>
#include <vector>
using std::exp; using std::fabs; using std::log; using std::log1p; using std::pow; using std::sqrt; using std::tanh;
struct Index3 { unsigned x; };
static Index3 blockIdx, blockDim, threadIdx;
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
static long long atomic_adds = 0;
extern "C" long long host_atomic_adds() { return atomic_adds; }
inline double atomicAdd(double* a, double v) { double old = *a; *a += v; ++atomic_adds; return old; }
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
    unsigned long long old = *a; *a += v; ++atomic_adds; return old;
}
extern "C" void host_thread(unsigned block, unsigned threads, unsigned thread) {
    blockIdx.x = block; blockDim.x = threads; threadIdx.x = thread;
}

// The threads of one block as fibers: each runs until its next __syncthreads (or its end), in turn, so that
// every thread reaches a barrier before any passes it.
static ucontext_t scheduler;
static std::vector<ucontext_t> fibers;
static std::vector<std::vector<char>> stacks;
static std::vector<char> finished;
static ucontext_t* running = nullptr;
static void (*fiber_body)(void*) = nullptr;
static void* fiber_args = nullptr;
inline void __syncthreads() { if (running) swapcontext(running, &scheduler); }
static void fiber_main(int thread) { fiber_body(fiber_args); finished[thread] = 1; }

// 0, or -1 when some threads of a block ended while others waited at a barrier (undefined on a GPU).
static int run_block_as_fibers(unsigned block, unsigned threads, void (*body)(void*), void* args) {
    fibers.resize(threads); stacks.resize(threads); finished.assign(threads, 0);
    fiber_body = body; fiber_args = args;
    for (unsigned t = 0; t < threads; ++t) {
        stacks[t].resize(1 << 16);
        getcontext(&fibers[t]);
        fibers[t].uc_stack.ss_sp = stacks[t].data();
        fibers[t].uc_stack.ss_size = stacks[t].size();
        fibers[t].uc_link = &scheduler;
        makecontext(&fibers[t], (void (*)())fiber_main, 1, int(t));
    }
    for (;;) {
        unsigned done = 0;
        for (unsigned t = 0; t < threads; ++t) {
            if (finished[t]) { ++done; continue; }
            host_thread(block, threads, t);
            running = &fibers[t];
            swapcontext(&scheduler, &fibers[t]);
            running = nullptr;
            done += finished[t];
        }
        if (done == threads) return 0;
        for (unsigned t = 0; t < threads; ++t)
            if (finished[t]) return -1;
    }
}
"""


def _symbol(expression):
    return re.sub(r"\W+", "_", expression).strip("_")


def signatures(source):
    """{name expression: (parameter declarations, calls __syncthreads)} of every kernel in source; a
    template over the index type I gives name<int> and name<long long>."""
    found = {}
    pattern = r'(template <typename I>\s*)?(?:extern "C" )?__global__ void (\w+)\(([^)]*)\)\s*\{(.*?)\n\}'
    for template, name, params, body in re.findall(pattern, source, flags=re.S):
        params = [" ".join(p.split()) for p in params.split(",")]
        barrier = "__syncthreads" in body
        for index in (cuda_backend.INDEX_TYPES.values() if template else [None]):
            expression = f"{name}<{index}>" if index else name
            found[expression] = ([re.sub(r"\bI\b", index, p) for p in params] if index else params, barrier)
    return found


def launchers(source):
    """C++ that runs each kernel over n_threads threads in blocks of `threads`:
    int launch_<symbol>(n_threads, threads, ...) returns 0, or -1 for threads of a block that ended
    while others waited at a barrier."""
    code = []
    for expression, (params, barrier) in signatures(source).items():
        symbol, names = _symbol(expression), [p.split()[-1].lstrip("*") for p in params]
        head = f'extern "C" int launch_{symbol}(long long n_threads, int threads, {", ".join(params)}) {{\n'
        if not barrier:
            code.append(head + f"    for (long long i = 0; i < n_threads; ++i) {{\n"
                        f"        host_thread(unsigned(i / threads), unsigned(threads), unsigned(i % threads));\n"
                        f"        {expression}({', '.join(names)});\n    }}\n    return 0;\n}}\n")
            continue
        fields = "; ".join(params)  # each declaration is a struct field as it stands
        code.append(f"struct args_{symbol} {{ {fields}; }};\n"
                    f"static void body_{symbol}(void* p) {{\n    args_{symbol}& a = *(args_{symbol}*)p;\n"
                    f"    {expression}({', '.join('a.' + n for n in names)});\n}}\n" + head +
                    f"    args_{symbol} a = {{{', '.join(names)}}};\n"
                    f"    for (long long b = 0; b * threads < n_threads; ++b)\n"
                    f"        if (run_block_as_fibers(unsigned(b), unsigned(threads), body_{symbol}, &a)) return -1;\n"
                    f"    return 0;\n}}\n")
    return "\n".join(code)


def compile_kernels(source, folder):
    """A shared library of the kernels in `source` (cuda.kernel_source(dtype)), with a launch_<symbol>
    beside each kernel."""
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    assert compiler, "a C++ compiler is needed (the package itself is built with one)"
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "shim.hpp").write_text(SHIM)
    (folder / "kernels.cpp").write_text('#include "shim.hpp"\n' + source + "\n" + launchers(source))
    library = folder / "kernels.so"
    subprocess.run([compiler, "-std=c++14", "-O1", "-shared", "-fPIC", "-Wall", "-Werror", "-Wl,-Bsymbolic", "-o",
                    str(library), str(folder / "kernels.cpp")], check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(library))


class HostKernels:
    """kernel(name, n_threads, *args): runs whole blocks of THREADS threads, as a launch would."""

    def __init__(self, lib, dtype, source):
        self.lib, self.dtype = lib, np.dtype(dtype)
        self.scalar = ctypes.c_float if self.dtype == np.float32 else ctypes.c_double
        self.signatures = {name: params for name, (params, _) in signatures(source).items()}
        self.lib.host_atomic_adds.restype = ctypes.c_longlong

    @property
    def atomic_adds(self):
        """Atomic adds made by the kernels so far."""
        return self.lib.host_atomic_adds()

    def convert(self, name, args, strict=False):
        """ctypes arguments for the kernel; strict (a launch by the backend, as CuPy sees it): every
        scalar a NumPy scalar of the parameter's own type, which is what CuPy passes."""
        params = self.signatures[name]
        assert len(params) == len(args), f"{name}: {len(args)} arguments for {len(params)} parameters"
        converted = []
        for declaration, value in zip(params, args):
            if "*" in declaration:
                assert isinstance(value, np.ndarray) and value.flags.c_contiguous, (name, declaration)
                converted.append(ctypes.c_void_p(value.ctypes.data))
                continue
            kind = declaration.rsplit(" ", 1)[0]
            ctype, dtype = {"long long": (ctypes.c_longlong, np.int64), "int": (ctypes.c_int, np.int32),
                            "double": (ctypes.c_double, np.float64), "T": (self.scalar, self.dtype)}[kind]
            if strict or not isinstance(value, (int, float)):
                assert isinstance(value, np.generic), f"{name}: {declaration} given {type(value)}"
                assert np.asarray(value).dtype == dtype, f"{name}: {declaration} given {np.asarray(value).dtype}"
            converted.append(ctype(value))
        return converted

    def run(self, name, n_threads, converted, threads=cuda_backend.THREADS):
        status = getattr(self.lib, "launch_" + _symbol(name))(ctypes.c_longlong(n_threads), ctypes.c_int(threads),
                                                              *converted)
        assert status == 0, f"{name}: threads of a block ended while others waited at __syncthreads"

    def __call__(self, name, n_threads, *args):
        threads = cuda_backend.THREADS
        self.run(name, -(-n_threads // threads) * threads, self.convert(name, args))


def _column_major(address, rows, cols, ld, dtype):
    """The column-major rows x cols matrix at `address` with leading dimension ld, as a NumPy view."""
    count = ld * (cols - 1) + rows
    flat = np.frombuffer((ctypes.c_char * (count * dtype.itemsize)).from_address(address), dtype=dtype, count=count)
    return np.lib.stride_tricks.as_strided(flat, shape=(rows, cols), strides=(dtype.itemsize, ld * dtype.itemsize))


def _scalar_value(value, dtype):
    """alpha or beta: by value (a byref to a ctypes number), or read now from its address (device mode)."""
    if isinstance(value, ctypes.c_void_p):
        return np.frombuffer((ctypes.c_char * dtype.itemsize).from_address(value.value), dtype=dtype)[0]
    return dtype.type(value._obj.value)


def column_major_gemm(dtype, op_a, op_b, m, n, k, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C, ldc, stride_c,
                      batch):
    """cublas<t>gemmStridedBatched: C_i = alpha op(A_i) op(B_i) + beta C_i, C not read when beta = 0."""
    alpha, beta = _scalar_value(alpha, dtype), _scalar_value(beta, dtype)
    stride = [int(getattr(s, "value", s)) * dtype.itemsize for s in (stride_a, stride_b, stride_c)]
    for i in range(int(batch)):
        a = _column_major(A.value + i * stride[0], k, m, lda, dtype).T if op_a else \
            _column_major(A.value + i * stride[0], m, k, lda, dtype)
        b = _column_major(B.value + i * stride[1], n, k, ldb, dtype).T if op_b else \
            _column_major(B.value + i * stride[1], k, n, ldb, dtype)
        c = _column_major(C.value + i * stride[2], m, n, ldc, dtype)
        product = (a @ b).astype(dtype)
        c[...] = alpha * product if beta == 0 else alpha * product + beta * c


# -- a CuPy on the host ---------------------------------------------------------------------------------


class FakeArray(np.ndarray):
    """A "device" array: host memory with CuPy's .data.ptr, .set and .get."""

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.ctypes.data)

    def set(self, array, stream=None):
        self[...] = array

    def get(self, stream=None):
        return np.array(self)


def _device(result):
    if isinstance(result, np.ndarray) and not isinstance(result, FakeArray):
        return result.view(FakeArray)
    return result


class _Recorder:
    """Where launches go: run now, or recorded while a stream captures (replayed by the graph)."""

    capture = None

    @classmethod
    def submit(cls, work):
        if cls.capture is None:
            work()
        else:
            cls.capture.append(work)


class FakeGraph:
    def __init__(self, works):
        self.works, self.launches = works, 0

    def upload(self, stream=None):
        pass

    def launch(self, stream=None):
        self.launches += 1
        for work in self.works:
            work()


class _Synchronous:
    """Work on the host is done when it returns: entering, leaving and synchronising do nothing."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self):
        pass


class FakeStream(_Synchronous):
    def __init__(self, non_blocking=False):
        self.ptr = 0

    captures = 0

    def begin_capture(self, mode=None):
        assert _Recorder.capture is None, "already capturing"
        FakeStream.captures += 1
        _Recorder.capture = []

    def end_capture(self):
        works, _Recorder.capture = _Recorder.capture, None
        return FakeGraph(works)

    def is_capturing(self):
        return _Recorder.capture is not None


class FakeKernel:
    def __init__(self, kernels, name):
        self.kernels, self.name = kernels, name

    def __call__(self, grid, block, args):
        converted = self.kernels.convert(self.name, args, strict=True)
        n_threads = int(grid[0]) * int(block[0])
        _Recorder.submit(lambda: self.kernels.run(self.name, n_threads, converted, threads=int(block[0])))


class FakeRawModule:
    """Compiles the kernel source for the host (cached per dtype in `folder`)."""

    folder = None
    built = {}

    def __init__(self, code, options=(), name_expressions=()):
        self.name_expressions = tuple(name_expressions)
        ctype = re.match(r"typedef (\w+) T;", code).group(1)
        if ctype not in FakeRawModule.built:
            lib = compile_kernels(code, Path(FakeRawModule.folder) / ctype)
            FakeRawModule.built[ctype] = HostKernels(lib, np.float32 if ctype == "float" else np.float64, code)
        self.kernels = FakeRawModule.built[ctype]

    def get_function(self, name):
        assert name in self.kernels.signatures, name
        assert "<" not in name or name in self.name_expressions, f"{name}: CuPy finds a template by its name expression"
        return FakeKernel(self.kernels, name)


class FakeCublasLibrary:
    """The libcublas entry points the backend calls, on the host: GEMMs recorded while a stream captures,
    alpha and beta read by value (pointer mode host) or from memory when the GEMM runs (pointer mode
    device, as cuBLAS does), a mismatch of the two refused with CUBLAS_STATUS_INVALID_VALUE; handles
    counted as they are created and destroyed. create_status: what cublasCreate returns."""

    created = destroyed = 0
    create_status = 0

    def __init__(self, major=12):
        self.major = major
        self.modes = {}

    def cublasGetProperty(self, kind, value):
        value._obj.value = self.major
        return 0

    def cublasCreate_v2(self, handle):
        if FakeCublasLibrary.create_status:
            return FakeCublasLibrary.create_status
        FakeCublasLibrary.created += 1
        handle._obj.value = 0x1000 + FakeCublasLibrary.created
        self.modes[handle._obj.value] = cuda_backend.CUBLAS_POINTER_MODE_HOST
        return 0

    def cublasDestroy_v2(self, handle):
        assert self.modes.pop(handle.value, None) is not None, "cublasDestroy of a handle that is not live"
        FakeCublasLibrary.destroyed += 1
        return 0

    def cublasSetStream_v2(self, handle, stream):
        return 0

    def cublasSetMathMode(self, handle, mode):
        return 0

    def cublasSetWorkspace_v2(self, handle, workspace, size):
        return 0

    def cublasSetPointerMode_v2(self, handle, mode):
        self.modes[handle.value] = mode.value
        return 0

    def _gemm(self, dtype, handle, args):
        on_device = self.modes[handle.value] == cuda_backend.CUBLAS_POINTER_MODE_DEVICE
        alpha, beta = args[5], args[12]
        if any(isinstance(s, ctypes.c_void_p) != on_device for s in (alpha, beta)):
            return 7  # CUBLAS_STATUS_INVALID_VALUE: cuBLAS itself would misread them
        _Recorder.submit(lambda: column_major_gemm(dtype, *args))
        return 0

    def cublasSgemm_v2(self, handle, *args):
        return self._gemm(np.dtype(np.float32), handle, (*args[:8], 0, *args[8:10], 0, *args[10:], 0, 1))

    def cublasDgemm_v2(self, handle, *args):
        return self._gemm(np.dtype(np.float64), handle, (*args[:8], 0, *args[8:10], 0, *args[10:], 0, 1))

    def cublasSgemmStridedBatched(self, handle, *args):
        return self._gemm(np.dtype(np.float32), handle, args)

    def cublasDgemmStridedBatched(self, handle, *args):
        return self._gemm(np.dtype(np.float64), handle, args)


class FakeDevice(_Synchronous):
    """cupy.cuda.Device: device 0, usable as a context manager."""

    id = 0

    def __init__(self, device_id=0):
        assert device_id == 0, "the stand-in has one device"


class FakeEvent:
    """cupy.cuda.Event: the host's clock when recorded (work on the host is done when it returns)."""

    time = 0.0

    def record(self, stream=None):
        import time

        self.time = time.perf_counter()

    def synchronize(self):
        pass


class FakeGenerator:
    """cupy.random.default_rng(seed): NumPy's generator, answering in device arrays."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def standard_normal(self, size, dtype=np.float64):
        return self.rng.standard_normal(size, dtype=dtype).view(FakeArray)


def fake_cupy(cuda_version=12080):
    """A module standing in for cupy, enough for l2fast.backends.cuda and the Network around it."""
    module = types.ModuleType("cupy")
    module.__version__ = "host-emulation"
    module.ndarray = FakeArray

    def asarray(x, dtype=None):
        if isinstance(x, FakeArray) and (dtype is None or x.dtype == dtype):
            return x
        return np.array(x, dtype=dtype).view(FakeArray)  # a copy, as a host-to-device transfer is

    def ascontiguousarray(x, dtype=None):
        if isinstance(x, FakeArray) and x.flags.c_contiguous and (dtype is None or x.dtype == np.dtype(dtype)):
            return x
        return np.array(x, dtype=dtype, order="C").view(FakeArray)

    module.asarray, module.ascontiguousarray = asarray, ascontiguousarray
    module.asnumpy = lambda a, stream=None: np.array(a)
    module.from_dlpack = lambda x: np.from_dlpack(x).view(FakeArray)
    for name in ("empty", "zeros", "ones", "zeros_like", "stack", "concatenate", "isfinite", "sum", "square",
                 "array_equal", "argmax"):
        function = getattr(np, name)
        setattr(module, name, lambda *a, _f=function, **k: _device(_f(*a, **k)))
    module.RawModule = FakeRawModule
    module.random = types.SimpleNamespace(default_rng=lambda seed: FakeGenerator(seed))
    module.cuda = types.SimpleNamespace(
        Stream=FakeStream, Device=FakeDevice, Event=FakeEvent,
        get_elapsed_time=lambda start, stop: (stop.time - start.time) * 1e3,
        runtime=types.SimpleNamespace(
            getDeviceCount=lambda: 1, runtimeGetVersion=lambda: cuda_version, driverGetVersion=lambda: cuda_version,
            getDeviceProperties=lambda device: {"name": b"host stand-in", "totalGlobalMem": 0}))
    module.__getattr__ = lambda name: getattr(np, name)
    return module


class DeviceSparse:
    """What cupyx's sparse matrices do with a dense operand (``@``, ``dot``): a device array only, and a 2-D
    product comes back column-major, as cuSPARSE's SpMM writes it. Not while a stream captures: CuPy allocates
    the output and cuSPARSE's workspace at every call, which capture refuses."""

    products = row_gathers = 0

    def _product(self, other, product):
        if not isinstance(other, FakeArray):
            raise TypeError(f"cupyx.scipy.sparse: a dense operand must be a cupy.ndarray, got {type(other)}")
        assert _Recorder.capture is None, "cupyx allocates: no sparse product inside a stream capture"
        DeviceSparse.products += 1
        result = product(other)
        return np.asfortranarray(result).view(FakeArray) if result.ndim == 2 else result.view(FakeArray)

    def __matmul__(self, other):
        return self._product(other, super().__matmul__)

    def dot(self, other):
        return self._product(other, super().dot)

    def get(self, stream=None):
        """The matrix in host memory, as scipy.sparse."""
        return getattr(sp, self.format + "_matrix")((self.data, self.indices, self.indptr), shape=self.shape)


def fake_cupyx():
    """cupyx, cupyx.scipy and cupyx.scipy.sparse standing in for CuPy's, over scipy.sparse (see the module's notes)."""
    def host(arrays):
        return tuple(np.asarray(a).view(np.ndarray) for a in arrays)

    class csc_matrix(DeviceSparse, sp.csc_matrix):
        def __init__(self, arg1, shape=None, dtype=None, copy=False):
            super().__init__(host(arg1) if isinstance(arg1, tuple) and len(arg1) == 3 else arg1, shape=shape,
                             dtype=dtype, copy=copy)

    class csr_matrix(DeviceSparse, sp.csr_matrix):
        def __init__(self, arg1, shape=None, dtype=None, copy=False):
            super().__init__(host(arg1) if isinstance(arg1, tuple) and len(arg1) == 3 else arg1, shape=shape,
                             dtype=dtype, copy=copy)

        def __getitem__(self, key):  # rows: a slice, or a device array of row numbers (cupyx's row indexing)
            assert isinstance(key, (slice, FakeArray)), f"cupyx row indexing given {type(key)}"
            assert _Recorder.capture is None, "cupyx allocates: no row indexing inside a stream capture"
            DeviceSparse.row_gathers += not isinstance(key, slice)
            picked = super().__getitem__(key if isinstance(key, slice) else np.asarray(key).view(np.ndarray))
            return type(self)((picked.data, picked.indices, picked.indptr), shape=picked.shape)

        def transpose(self, axes=None, copy=False):
            return csc_matrix((self.data, self.indices, self.indptr), shape=self.shape[::-1], copy=copy)

    modules = {name: types.ModuleType(name) for name in ("cupyx", "cupyx.scipy", "cupyx.scipy.sparse")}
    sparse = modules["cupyx.scipy.sparse"]
    sparse.csr_matrix, sparse.csc_matrix = csr_matrix, csc_matrix
    sparse.issparse = lambda x: isinstance(x, (csr_matrix, csc_matrix))
    modules["cupyx"].scipy = modules["cupyx.scipy"]
    modules["cupyx.scipy"].sparse = sparse
    return modules


@contextlib.contextmanager
def emulated_gpu(monkeypatch, folder):
    """Within: backend="cuda" runs the cuda backend's code on the host, with no shared context (and no
    cuBLAS handle) made before, captures counted from zero in FakeStream.captures and sparse products in
    DeviceSparse.products, and cupyx's stand-in in place of cupyx."""
    import sys

    FakeRawModule.folder = folder
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy())
    for name, module in fake_cupyx().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(cuda_backend, "_DEVICE_CSR", [])
    monkeypatch.setattr(DeviceSparse, "products", 0)
    monkeypatch.setattr(DeviceSparse, "row_gathers", 0)
    monkeypatch.setattr(cuda_backend, "_cublas_library", FakeCublasLibrary)
    monkeypatch.setattr(cuda_backend, "_MODULES", {})
    monkeypatch.setattr(cuda_backend, "_CONTEXTS", {})
    monkeypatch.setattr(FakeStream, "captures", 0)
    monkeypatch.setattr(FakeCublasLibrary, "created", 0)
    monkeypatch.setattr(FakeCublasLibrary, "destroyed", 0)
    yield
    cuda_backend.release()
