"""A host stand-in for the GPU, so that the cuda backend's own code runs where there is none.

- ``compile_kernels`` builds python/l2fast/backends/cuda_kernels.cu as C++ (no kernel there uses shared
  memory or barriers, so running its threads one after another computes what the GPU computes);
  ``HostKernels`` calls them with NumPy arrays, their argument types read from their signatures.
- ``column_major_gemm`` is cuBLAS's <t>gemm(StridedBatched) in NumPy, on raw addresses.
- ``fake_cupy`` is the part of CuPy the backend uses, on host memory: arrays with ``.data.ptr``,
  streams whose capture records the launches and replays them like a CUDA graph, and a RawModule
  whose kernels are the host-compiled ones.
What stays untested without a GPU: CuPy itself, NVRTC, cuBLAS, real graph capture and streams.
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

from l2fast.backends import cuda as cuda_backend

KERNELS = Path(cuda_backend.__file__).with_name("cuda_kernels.cu")

SHIM = r"""
#include <cmath>
using std::exp; using std::fabs; using std::log; using std::log1p; using std::pow; using std::sqrt; using std::tanh;
struct Index3 { unsigned x; };
static Index3 blockIdx, blockDim, threadIdx;
#define __global__
#define __device__
#define __forceinline__ inline
inline double atomicAdd(double* a, double v) { double old = *a; *a += v; return old; }
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
    unsigned long long old = *a; *a += v; return old;
}
extern "C" void host_thread(unsigned block, unsigned threads, unsigned thread) {
    blockIdx.x = block; blockDim.x = threads; threadIdx.x = thread;
}
"""


def launchers(source):
    """C++ that runs each kernel over n_threads threads in blocks of `threads`: launch_<name>(n, threads, ...)."""
    code = []
    for name, params in signatures(source).items():
        names = ", ".join(p.split()[-1].lstrip("*") for p in params)
        code.append(f'extern "C" void launch_{name}(long long n_threads, int threads, {", ".join(params)}) {{\n'
                    f"    for (long long i = 0; i < n_threads; ++i) {{\n"
                    f"        host_thread(unsigned(i / threads), unsigned(threads), unsigned(i % threads));\n"
                    f"        {name}({names});\n    }}\n}}\n")
    return "\n".join(code)


def compile_kernels(source, folder):
    """A shared library of the kernels in `source` (which starts with its `typedef ... T;`), with a
    launch_<name> beside each kernel."""
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    assert compiler, "a C++ compiler is needed (the package itself is built with one)"
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "shim.hpp").write_text(SHIM)
    (folder / "kernels.cpp").write_text('#include "shim.hpp"\n' + source + "\n" + launchers(source))
    library = folder / "kernels.so"
    subprocess.run([compiler, "-std=c++14", "-O1", "-shared", "-fPIC", "-Wall", "-Werror", "-Wl,-Bsymbolic", "-o", str(library),
                    str(folder / "kernels.cpp")], check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(library))


def signatures(source):
    return {name: [p.strip() for p in params.split(",")]
            for name, params in re.findall(r'extern "C" __global__ void (\w+)\(([^)]*)\)', source)}


class HostKernels:
    """kernel(name, n_threads, *args): runs whole blocks of THREADS threads, as a launch would."""

    def __init__(self, lib, dtype, source):
        self.lib, self.dtype = lib, np.dtype(dtype)
        self.scalar = ctypes.c_float if self.dtype == np.float32 else ctypes.c_double
        self.signatures = signatures(source)

    def convert(self, name, args):
        params = self.signatures[name]
        assert len(params) == len(args), f"{name}: {len(args)} arguments for {len(params)} parameters"
        converted = []
        for declaration, value in zip(params, args):
            if "*" in declaration:
                assert isinstance(value, np.ndarray) and value.flags.c_contiguous, (name, declaration)
                converted.append(ctypes.c_void_p(value.ctypes.data))
                continue
            kind = declaration.rsplit(" ", 1)[0]
            ctype = {"long long": ctypes.c_longlong, "int": ctypes.c_int, "double": ctypes.c_double,
                     "T": self.scalar}[kind]
            if kind == "T":
                assert np.asarray(value).dtype == self.dtype, f"{name}: {declaration} given {type(value)}"
            converted.append(ctype(value))
        return converted

    def run(self, name, n_threads, converted, threads=cuda_backend.THREADS):
        getattr(self.lib, "launch_" + name)(ctypes.c_longlong(n_threads), ctypes.c_int(threads), *converted)

    def __call__(self, name, n_threads, *args):
        threads = cuda_backend.THREADS
        self.run(name, -(-n_threads // threads) * threads, self.convert(name, args))


def _column_major(address, rows, cols, ld, dtype):
    """The column-major rows x cols matrix at `address` with leading dimension ld, as a NumPy view."""
    count = ld * (cols - 1) + rows
    flat = np.frombuffer((ctypes.c_char * (count * dtype.itemsize)).from_address(address), dtype=dtype, count=count)
    return np.lib.stride_tricks.as_strided(flat, shape=(rows, cols), strides=(dtype.itemsize, ld * dtype.itemsize))


def column_major_gemm(handle, op_a, op_b, m, n, k, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C, ldc, stride_c,
                      batch):
    """cublas<t>gemmStridedBatched: C_i = alpha op(A_i) op(B_i) + beta C_i, C not read when beta = 0."""
    dtype = np.dtype(np.float32 if isinstance(alpha._obj, ctypes.c_float) else np.float64)
    alpha, beta = alpha._obj.value, beta._obj.value
    stride = [int(getattr(s, "value", s)) * dtype.itemsize for s in (stride_a, stride_b, stride_c)]
    for i in range(int(batch)):
        a = _column_major(A.value + i * stride[0], k, m, lda, dtype).T if op_a else \
            _column_major(A.value + i * stride[0], m, k, lda, dtype)
        b = _column_major(B.value + i * stride[1], n, k, ldb, dtype).T if op_b else \
            _column_major(B.value + i * stride[1], k, n, ldb, dtype)
        c = _column_major(C.value + i * stride[2], m, n, ldc, dtype)
        product = (a @ b).astype(dtype)
        c[...] = dtype.type(alpha) * product if beta == 0 else dtype.type(alpha) * product + dtype.type(beta) * c
    return 0


def column_major_gemm_single(handle, op_a, op_b, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc):
    return column_major_gemm(handle, op_a, op_b, m, n, k, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1)


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


class FakeStream:
    def __init__(self, non_blocking=False):
        self.ptr = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self):
        pass

    def begin_capture(self, mode=None):
        assert _Recorder.capture is None, "already capturing"
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
        converted = self.kernels.convert(self.name, args)
        n_threads = int(grid[0]) * int(block[0])
        _Recorder.submit(lambda: self.kernels.run(self.name, n_threads, converted, threads=int(block[0])))


class FakeRawModule:
    """Compiles the kernel source for the host (cached per dtype in `folder`)."""

    folder = None
    built = {}

    def __init__(self, code, options=()):
        ctype = re.match(r"typedef (\w+) T;", code).group(1)
        if ctype not in FakeRawModule.built:
            lib = compile_kernels(code, Path(FakeRawModule.folder) / ctype)
            FakeRawModule.built[ctype] = HostKernels(lib, np.float32 if ctype == "float" else np.float64, code)
        self.kernels = FakeRawModule.built[ctype]

    def get_function(self, name):
        assert name in self.kernels.signatures, name
        return FakeKernel(self.kernels, name)


class FakeCublas(cuda_backend._Cublas):
    """The backend's own row-major mapping over column_major_gemm, recorded while capturing."""

    def __init__(self, stream, tf32):
        self.handle = ctypes.c_void_p()
        record = lambda f: lambda *args: _Recorder.submit(lambda: f(*args)) or 0  # noqa: E731
        self._gemm = {np.dtype(t): record(column_major_gemm_single) for t in ("float32", "float64")}
        self._batched = {np.dtype(t): record(column_major_gemm) for t in ("float32", "float64")}
        self._scalar = {np.dtype("float32"): ctypes.c_float, np.dtype("float64"): ctypes.c_double}


def fake_cupy():
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
    module.cuda = types.SimpleNamespace(
        Stream=FakeStream, Device=lambda *a: types.SimpleNamespace(synchronize=lambda: None, id=0),
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))
    module.__getattr__ = lambda name: getattr(np, name)
    return module


@contextlib.contextmanager
def emulated_gpu(monkeypatch, folder):
    """Within: backend="cuda" runs the cuda backend's code on the host."""
    import sys

    FakeRawModule.folder = folder
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy())
    monkeypatch.setattr(cuda_backend, "_cublas_library", lambda: None)
    monkeypatch.setattr(cuda_backend, "_Cublas", FakeCublas)
    monkeypatch.setattr(cuda_backend, "_MODULES", {})
    yield
