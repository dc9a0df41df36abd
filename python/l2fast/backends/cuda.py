"""backend="cuda": the same training on an NVIDIA GPU, through CuPy, with data resident on the device.

- GEMMs go through cuBLAS, called through ``ctypes`` on a handle of l2fast's own: CuPy refuses cuBLAS
  calls while a stream is being captured into a CUDA graph, and graphs are what make small networks
  fast. The weight update is one GEMM, W <- (1 - lr lam/m) W - (lr/b) dZ^T A_prev, the decay riding
  on its beta. Plain float32 (no TF32) unless ``L2FAST_CUDA_TF32=1`` is set.
- Everything else is a kernel of ``cuda_kernels.cu``: bias and activation together over each GEMM
  output, the loss with its gradient, the activation derivative, the bias sums, the optimizers'
  fused steps, and the gather of each minibatch from X on the GPU.
- X and y go to the GPU once per ``fit`` (CuPy arrays, and anything with ``__cuda_array_interface__``
  or a CUDA ``__dlpack__``, are used where they lie); the epoch's order goes up once per epoch; the
  loss and accuracy come back once per epoch, the only synchronisation.
- Each step reads its batch offset and step number from counters on the device, and its learning rate,
  decay and the scales made of them from a few scalars there (the update GEMMs take alpha and beta by
  device pointer), so a training step captured once as a CUDA graph (``STEPS_PER_GRAPH`` steps per
  graph) replays the whole epoch with one launch per graph instead of one per kernel, and replays again
  in later epochs and fits, whatever the schedule does to the rate. Graphs are kept in a small cache by
  what they depend on (the arrays' addresses, the activation, the loss, the optimizer).
  ``L2FAST_CUDA_GRAPHS=0`` launches kernels one by one.
- Every backend on a GPU shares one stream, one cuBLAS handle bound to it with its workspace, and a lock
  (``_DeviceContext``); the handles are destroyed at exit.
- A scipy.sparse X goes to the GPU once as a ``cupyx.scipy.sparse`` CSR (``_device_csr``); only the first layer's two
  products change: Z = X W1^T and dW1 = (X^T dZ)^T, cuSPARSE SpMM through cupyx, one product for all K stacked
  models; an epoch's rows are gathered in its order by cupyx's row indexing, SPARSE_CHUNK_ROWS at a time, and each
  minibatch is a small CSR sliced from them. cupyx allocates at every call, which stream capture does not allow, so
  sparse epochs run uncaptured, kernel by kernel.

Shapes as in ``numpy_ref``. Stacked models (``train_epoch_stacked``) are held as (K, n_out, n_in)
arrays for the epoch; their products are strided-batched GEMMs.
"""
from __future__ import annotations

import atexit
import collections
import contextlib
import ctypes
import os
import threading
from pathlib import Path

import numpy as np

from l2fast import _validate
from l2fast.backends import numpy_ref

cupy = None  # bound by _bind_cupy(): backends.get_backend checks first that CuPy imports


def _bind_cupy():
    global cupy
    import cupy as module

    cupy = module

BLOCK_ROWS = 16384  # records per block in predict, evaluate and gradients
SPARSE_CHUNK_ROWS = 65536  # rows of a sparse X gathered at once in an epoch's order; its batches are slices of them
STEPS_PER_GRAPH = 32
GRAPH_CACHE = 8  # step graphs kept per backend, each for one set of arrays and settings
THREADS = 256
INT_INDEX_LIMIT = 2**31 - THREADS  # a launch of fewer threads than this indexes them all in an int
ACTIVATION_CODES = {"identity": 0, "relu": 1, "tanh": 2, "sigmoid": 3}
LOSS_CODES = {"squared_error": 0, "logistic": 1, "softmax": 2}
# extern "C" kernels, then the index-type templates (loaded as NVRTC name expressions, int and long long).
PLAIN_KERNELS = ("gather_labels", "activation_backward", "loss_gradient", "output_activation", "column_sums",
                 "momentum_step", "adam_step", "advance_counters", "sum_squares")
INDEXED_KERNELS = ("gather_rows", "bias_activation", "scale_models")
INDEX_TYPES = {np.dtype(np.int32): "int", np.dtype(np.int64): "long long"}
NAME_EXPRESSIONS = tuple(f"{name}<{index}>" for name in INDEXED_KERNELS for index in INDEX_TYPES.values())
KERNEL_NAMES = PLAIN_KERNELS + NAME_EXPRESSIONS
NVRTC_OPTIONS = ("--std=c++14",)  # CuPy adds -ftz=true and -arch=sm_XX (tests/test_cuda_compile.py does too)
CUBLAS_OP_N, CUBLAS_OP_T = 0, 1
CUBLAS_DEFAULT_MATH, CUBLAS_TF32_TENSOR_OP_MATH = 0, 3
CUBLAS_POINTER_MODE_HOST, CUBLAS_POINTER_MODE_DEVICE = 0, 1
CUBLAS_MAJOR_VERSION = 0  # libraryPropertyType MAJOR_VERSION
CUBLAS_WORKSPACE_BYTES = 32 << 20


def probe():
    """None when a GPU can be used through CuPy, else the reason it cannot (for the error message). It
    creates the device's shared cuBLAS handle, so a cuBLAS that cannot start is found here, not at the
    first fit."""
    _bind_cupy()
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError: no driver, no device, driver too old
        return f"CuPy {cupy.__version__} finds no usable CUDA device ({exc})"
    if count < 1:
        return f"CuPy {cupy.__version__} sees no CUDA device"
    try:
        _context(cupy.cuda.Device().id)
    except OSError as exc:
        return f"the cuBLAS library could not be loaded ({exc})"
    except Exception as exc:  # cublasCreate failed (driver and library apart, no memory), or CUDA did
        return f"cuBLAS could not be started ({type(exc).__name__}: {exc})"
    return None


def _open_library(name):
    return ctypes.CDLL(name)


def _cuda_major():
    """The CUDA major version CuPy runs (12 for cupy-cuda12x): the libcublas to load is the same one."""
    return cupy.cuda.runtime.runtimeGetVersion() // 1000


def _cublas_library():
    """libcublas of CuPy's CUDA major version: by soname (which finds the copy CuPy has loaded), else
    where NVIDIA's cuda-pathfinder (which recent CuPy uses) finds it, else the nvidia-cublas wheel's.
    A library of another major version is refused: its cublasCreate fails on the first fit."""
    major = _cuda_major()
    errors = []

    def candidates():
        try:
            import cupy_backends.cuda.libs.cublas  # noqa: F401  (makes CuPy load libcublas)
        except ImportError:
            pass
        yield f"libcublas.so.{major}"
        yield f"cublas64_{major}.dll"
        try:
            from cuda.pathfinder import load_nvidia_dynamic_lib

            loaded = load_nvidia_dynamic_lib("cublas")
            if loaded.abs_path:
                yield loaded.abs_path
        except Exception as exc:  # not installed, or it found nothing: the wheels may still have it
            errors.append(f"cuda.pathfinder: {exc}")
        try:
            import nvidia
        except ImportError:
            return
        for folder in nvidia.__path__:  # nvidia-cublas-cu12 (nvidia/cublas/lib) and nvidia-cublas (nvidia/cu13/lib)
            for lib in (Path(folder, "cublas", "lib"), Path(folder, f"cu{major}", "lib")):
                yield from map(str, sorted(lib.glob(f"libcublas.so.{major}*")))

    for name in candidates():
        try:
            lib = _open_library(name)
        except OSError as exc:
            errors.append(str(exc))
            continue
        found = ctypes.c_int(-1)
        if lib.cublasGetProperty(ctypes.c_int(CUBLAS_MAJOR_VERSION), ctypes.byref(found)) == 0 and \
                found.value == major:
            return lib
        errors.append(f"{name} is cuBLAS {found.value}, but CuPy runs CUDA {major}")
    raise OSError(f"no libcublas of CUDA {major}: " + "; ".join(errors))


class DeviceScalar(int):
    """The device address of a GEMM's alpha or beta: cuBLAS reads it when the GEMM runs (pointer mode
    device), so a captured GEMM follows a learning rate that changes between replays."""


class _Cublas:
    """Row-major GEMMs through cuBLAS on one handle bound to `stream`.

    cuBLAS is column-major: a row-major (r, c) array is a column-major (c, r) one, so the row-major
    C = op(A) op(B) is computed as the column-major C^T = op(B)^T op(A)^T.
    """

    def __init__(self, stream):
        lib = _cublas_library()
        self._lib = lib
        self.handle = ctypes.c_void_p()
        self._check(lib.cublasCreate_v2(ctypes.byref(self.handle)), "cublasCreate")
        self._check(lib.cublasSetStream_v2(self.handle, ctypes.c_void_p(stream.ptr)), "cublasSetStream")
        self._math_mode = self._pointer_mode = None
        self.set_tf32(False)
        # A workspace of its own: cuBLAS must not allocate while a graph is being captured.
        self._workspace = cupy.empty(CUBLAS_WORKSPACE_BYTES, dtype=cupy.uint8)
        if hasattr(lib, "cublasSetWorkspace_v2"):
            self._check(lib.cublasSetWorkspace_v2(self.handle, ctypes.c_void_p(self._workspace.data.ptr),
                                                  ctypes.c_size_t(CUBLAS_WORKSPACE_BYTES)), "cublasSetWorkspace")
        self._gemm = {np.dtype("float32"): lib.cublasSgemm_v2, np.dtype("float64"): lib.cublasDgemm_v2}
        self._batched = {np.dtype("float32"): lib.cublasSgemmStridedBatched,
                         np.dtype("float64"): lib.cublasDgemmStridedBatched}
        self._scalar = {np.dtype("float32"): ctypes.c_float, np.dtype("float64"): ctypes.c_double}

    @staticmethod
    def _check(status, what):
        if status != 0:
            raise RuntimeError(f"{what} failed with cuBLAS status {status}")

    def set_tf32(self, tf32):
        mode = CUBLAS_TF32_TENSOR_OP_MATH if tf32 else CUBLAS_DEFAULT_MATH
        if mode != self._math_mode:
            self._check(self._lib.cublasSetMathMode(self.handle, ctypes.c_int(mode)), "cublasSetMathMode")
            self._math_mode = mode

    def destroy(self):
        if self.handle:
            self._check(self._lib.cublasDestroy_v2(self.handle), "cublasDestroy")
            self.handle = ctypes.c_void_p()
            self._workspace = None

    def gemm(self, dtype, trans_a, trans_b, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc, batch=1, stride_a=0,
             stride_b=0, stride_c=0):
        """Row-major C (m, n) <- alpha op(A) op(B) + beta C for device pointers A, B, C; with batch > 1,
        `batch` products whose operands lie stride_* elements apart (a stride of 0 shares the operand).
        alpha and beta are numbers, or both DeviceScalar addresses of numbers of dtype on the device."""
        on_device = isinstance(alpha, DeviceScalar)
        if on_device != isinstance(beta, DeviceScalar):
            raise TypeError("gemm: alpha and beta must both be DeviceScalar or both numbers")
        mode = CUBLAS_POINTER_MODE_DEVICE if on_device else CUBLAS_POINTER_MODE_HOST
        if mode != self._pointer_mode:
            self._check(self._lib.cublasSetPointerMode_v2(self.handle, ctypes.c_int(mode)), "cublasSetPointerMode")
            self._pointer_mode = mode
        if on_device:
            a, b = ctypes.c_void_p(alpha), ctypes.c_void_p(beta)
        else:
            scalar = self._scalar[dtype]
            a, b = ctypes.byref(scalar(alpha)), ctypes.byref(scalar(beta))
        op_a, op_b = (CUBLAS_OP_T if trans_a else CUBLAS_OP_N), (CUBLAS_OP_T if trans_b else CUBLAS_OP_N)
        if batch == 1:
            status = self._gemm[dtype](self.handle, op_b, op_a, n, m, k, a, ctypes.c_void_p(B), ldb,
                                       ctypes.c_void_p(A), lda, b, ctypes.c_void_p(C), ldc)
        else:
            status = self._batched[dtype](self.handle, op_b, op_a, n, m, k, a, ctypes.c_void_p(B), ldb,
                                          ctypes.c_longlong(stride_b), ctypes.c_void_p(A), lda,
                                          ctypes.c_longlong(stride_a), b, ctypes.c_void_p(C), ldc,
                                          ctypes.c_longlong(stride_c), batch)
        self._check(status, "gemm")


class _DeviceContext:
    """What every backend on one GPU shares: the stream l2fast's work runs on, one cuBLAS handle bound
    to it with its workspace, and a lock that keeps one thread at a time on them (a capture would record
    another thread's launches into its graph)."""

    def __init__(self, device_id):
        with cupy.cuda.Device(device_id):
            self.stream = cupy.cuda.Stream(non_blocking=True)
            self.blas = _Cublas(self.stream)
        self.lock = threading.RLock()


_CONTEXTS = {}
_CONTEXTS_LOCK = threading.Lock()


def _context(device_id):
    """The shared _DeviceContext of a GPU, created on first use."""
    with _CONTEXTS_LOCK:
        if device_id not in _CONTEXTS:
            _CONTEXTS[device_id] = _DeviceContext(device_id)
        return _CONTEXTS[device_id]


@atexit.register
def release():
    """Destroys the shared cuBLAS handles and frees their workspaces (at exit; a backend used after
    this starts a new context, dropping the graphs made with the old one)."""
    with _CONTEXTS_LOCK:
        contexts = list(_CONTEXTS.values())
        _CONTEXTS.clear()
    for context in contexts:
        with context.lock:
            try:
                context.blas.destroy()
            except RuntimeError:  # at exit, with the driver going away: the process's end frees it anyway
                pass


_MODULES = {}


def kernel_source(dtype):
    """cuda_kernels.cu as NVRTC compiles it for float32 or float64."""
    ctype = "float" if np.dtype(dtype) == np.float32 else "double"
    return f"typedef {ctype} T;\nconstexpr int THREADS = {THREADS};\n" + \
        Path(__file__).with_name("cuda_kernels.cu").read_text()


def _kernels(dtype):
    """The compiled kernels for float32 or float64, every function loaded (so none loads mid-capture),
    by name: the templates as `name<int>` and `name<long long>`."""
    key = np.dtype(dtype)
    if key not in _MODULES:
        module = cupy.RawModule(code=kernel_source(key), options=NVRTC_OPTIONS, name_expressions=NAME_EXPRESSIONS)
        _MODULES[key] = {name: module.get_function(name) for name in KERNEL_NAMES}
    return _MODULES[key]


def _detached(obj):
    """A torch tensor that requires grad, detached: torch refuses __cuda_array_interface__, DLPack and
    NumPy to those (with a RuntimeError, which hasattr does not absorb)."""
    if getattr(type(obj), "__module__", "").split(".")[0] == "torch" and getattr(obj, "requires_grad", False):
        return obj.detach()
    return obj


def column_tile_width(n):
    """Columns per block of column_sums: n rounded up to a power of two, at most 32."""
    return min(32, 1 << max(n - 1, 0).bit_length())


def as_device_array(obj):
    """obj as a CuPy array without a copy when it lives on a GPU (CuPy, __cuda_array_interface__, a
    CUDA __dlpack__); None for host objects."""
    obj = _detached(obj)
    if isinstance(obj, cupy.ndarray):
        return obj
    if hasattr(obj, "__cuda_array_interface__"):
        return cupy.asarray(obj)
    if hasattr(obj, "__dlpack__") and hasattr(obj, "__dlpack_device__"):
        device_type, _ = obj.__dlpack_device__()
        if int(device_type) in (2, 13):  # kDLCUDA, kDLCUDAManaged
            return cupy.from_dlpack(obj)
    return None


_DEVICE_CSR = []  # the class, made once cupyx is imported


def _device_csr(X):
    """A canonical host CSR (``_validate.sparse_features``) as a cupyx.scipy.sparse CSR matrix on the GPU whose
    len() is its number of rows, as the host one's is, and is known canonical (no check on the GPU); its row_nnz, each
    row's number of entries, stays on the host, so that an epoch cuts its batches without reading the GPU. Its products
    go through cuSPARSE (SpMM), outside the captured graphs: CuPy allocates each product's output and workspace and
    makes its descriptors at every call."""
    if not _DEVICE_CSR:
        import cupyx.scipy.sparse

        class DeviceCSR(cupyx.scipy.sparse.csr_matrix):
            def __len__(self):
                return self.shape[0]

        _DEVICE_CSR.append(DeviceCSR)
    device = _DEVICE_CSR[0]((cupy.asarray(X.data), cupy.asarray(X.indices), cupy.asarray(X.indptr)), shape=X.shape)
    device.has_canonical_format = True
    device.row_nnz = np.diff(X.indptr)
    return device


def _device_sparse(X):
    """Whether X is a cupyx.scipy.sparse matrix (on the GPU), not a scipy.sparse one."""
    return numpy_ref.is_sparse(X) and not _validate.is_sparse(X)


def _sparse_rows(X, rows):
    """Rows of a device CSR X (a slice, or a device array of row numbers) as a small device CSR, known canonical as X
    is: cupyx's row indexing gathers the picked rows' index and value ranges on the GPU, never densifying them."""
    picked = X[rows]
    picked.has_canonical_format = True
    return picked


def _sparse_batches(X, order, device_order, n, batch):
    """The epoch's minibatches of a device CSR X (made by ``_device_csr``), each a small device CSR: rows
    gathered SPARSE_CHUNK_ROWS at a time in the epoch's order (``order``, n row numbers on the host and the same
    on the device in ``device_order``; None for X's own order) by cupyx's row indexing, which reads the chunk's
    size back from the GPU; each batch is then a slice of its chunk's arrays, cut where the host knows its rows'
    entries lie (from X.row_nnz), with no synchronisation."""
    chunk = max(batch, SPARSE_CHUNK_ROWS // batch * batch)
    for chunk_start in range(0, n, chunk):
        chunk_stop = min(chunk_start + chunk, n)
        if order is None:
            X_chunk, lengths = _sparse_rows(X, slice(chunk_start, chunk_stop)), X.row_nnz[chunk_start:chunk_stop]
        else:
            X_chunk = _sparse_rows(X, device_order[chunk_start:chunk_stop])
            lengths = X.row_nnz[order[chunk_start:chunk_stop]]
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        for s in range(0, chunk_stop - chunk_start, batch):
            e = min(s + batch, chunk_stop - chunk_start)
            a, b = int(offsets[s]), int(offsets[e])
            part = type(X_chunk)((X_chunk.data[a:b], X_chunk.indices[a:b], X_chunk.indptr[s:e + 1] - a),
                                 shape=(e - s, X.shape[1]))
            part.has_canonical_format = True
            yield part


def _sparse_first_layer(X, W, out, K):
    """out[:K rows n_out] <- X W[k]^T (K, rows, n_out) for a device CSR X (rows, n_in) and the first-layer weights W
    (n_out, n_in), or (K, n_out, n_in) stacked: one SpMM for all K models (their weights side by side)."""
    rows, n_out = X.shape[0], W.shape[-2]
    if X.nnz == 0:  # a batch of empty rows: its products are zeros, no SpMM needed
        out[: K * rows * n_out] = 0
        return
    Z = X @ W.reshape(K * n_out, W.shape[-1]).T  # (rows, K n_out), cuSPARSE SpMM
    if K == 1:
        out[: rows * n_out].reshape(rows, n_out)[...] = Z
    else:
        out[: K * rows * n_out].reshape(K, rows, n_out)[...] = Z.reshape(rows, K, n_out).transpose(1, 0, 2)


def _sparse_weight_product(X, dZ, K, n_out):
    """(K, n_out, n_in): dZ[k]^T X for a device CSR X (rows, n_in) and dZ holding (K, rows, n_out), as (X^T dZ)^T:
    one transposed SpMM for all K models."""
    rows, n_in = X.shape
    if X.nnz == 0:
        return cupy.zeros((K, n_out, n_in), dZ.dtype)
    D = dZ[: K * rows * n_out].reshape(K, rows, n_out)
    D = D[0] if K == 1 else D.transpose(1, 0, 2).reshape(rows, K * n_out)
    return (X.T @ D).T.reshape(K, n_out, n_in)


def _ptr(array, offset_elements=0):
    return array.data.ptr + offset_elements * array.itemsize


class _Workspace:
    """Every buffer one training step touches, allocated before any capture and kept while the
    shapes stay the same (a captured graph holds their addresses)."""

    # The step's scalars on the device, in `scalars`: the rates {lr, decay} of the weights and of the
    # biases (the optimizers' kernels read them), -lr/rows and 1/rows for a full batch and for the last,
    # smaller one, and a one (the beta of the stacked update GEMM).
    LR_W, LR_B, STEP_FULL, MEAN_FULL, STEP_REST, MEAN_REST, ONE = 0, 2, 4, 5, 6, 7, 8

    def __init__(self, sizes, batch, K, dtype, loss, n_slots, weighted=False, sparse=False):
        L = len(sizes) - 1
        self.key = (tuple(sizes), batch, K, np.dtype(dtype), loss, bool(n_slots), weighted, sparse)
        self.batch = batch
        self.wb = cupy.empty(batch if weighted else 1, dtype)  # the batch's sample weights
        # the batch of a dense X; a sparse X's batch is a small CSR of its own (``_sparse_rows``), never dense
        self.xb = cupy.empty((1, 1) if sparse else (batch, sizes[0]), dtype)
        self.yb_labels = cupy.empty(batch, np.int64) if loss == "softmax" else cupy.empty(1, np.int64)
        self.yb_values = cupy.empty((batch, sizes[-1]), dtype) if loss != "softmax" else cupy.empty(1, dtype)
        self.out = [cupy.empty(K * batch * sizes[l + 1], dtype) for l in range(L)]
        self.grad = [cupy.empty(K * batch * sizes[l + 1], dtype) for l in range(L - 1)]
        self.gW = [cupy.empty(sizes[l + 1] * sizes[l], dtype) for l in range(L)] if n_slots else []
        self.gb = [cupy.empty(sizes[l + 1], dtype) for l in range(L)] if n_slots else []
        # The stacked models' parameters for an epoch: kept, so that their addresses (and graphs) last.
        self.stacked_W = [cupy.empty((K, sizes[l + 1], sizes[l]), dtype) for l in range(L)] if K > 1 else []
        self.stacked_b = [cupy.empty((K, sizes[l + 1]), dtype) for l in range(L)] if K > 1 else []
        self.counters = cupy.zeros(2, np.int64)  # [offset of the next batch in the order, steps taken]
        self.loss_sum = cupy.zeros(K, np.float64)
        self.correct = cupy.zeros(K, np.uint64)
        self.norms = cupy.zeros(1, np.float64)  # train_epoch's with_norms: the steps' sum of ||W||^2
        self.keep = cupy.ones(K, dtype)  # each model's decay factor 1 - lr lam/m
        self.scalars = cupy.zeros(9, dtype)
        self.rates_W, self.rates_b = self.scalars[self.LR_W:self.LR_W + 2], self.scalars[self.LR_B:self.LR_B + 2]
        self.order = cupy.empty(0, np.int64)

    def set_scalars(self, lr, lam_over_m, n, stream):
        """This epoch's rates: lr and the decay lam/m of the first model, for n records in batches."""
        rest = n % self.batch or self.batch
        values = [0.0] * 9
        values[self.LR_W:self.LR_W + 2] = lr, lam_over_m[0]
        values[self.LR_B:self.LR_B + 2] = lr, 0.0
        values[self.STEP_FULL:self.MEAN_REST + 1] = -lr / self.batch, 1 / self.batch, -lr / rest, 1 / rest
        values[self.ONE] = 1.0
        self.scalars.set(np.array(values, self.scalars.dtype), stream=stream)
        self.keep.set(np.array([1.0 - lr * lam for lam in lam_over_m], self.keep.dtype), stream=stream)

    def scalar(self, index):
        return DeviceScalar(_ptr(self.scalars, index))


class CudaBackend:
    """backend="cuda": parameters are CuPy arrays on the current GPU, updated in place."""

    name = "cuda"

    def __init__(self):
        _bind_cupy()
        self.xp = cupy
        self.device_id = cupy.cuda.Device().id
        self.tf32 = os.environ.get("L2FAST_CUDA_TF32", "0") == "1"
        self.use_graphs = os.environ.get("L2FAST_CUDA_GRAPHS", "1") != "0"
        self.graph_error = None  # why graphs were turned off, if a capture failed
        self.captures = 0  # step graphs captured so far
        self._context = None
        self._workspace = None
        self._graphs = collections.OrderedDict()  # graph key -> {steps: graph}, least recently used first

    def _shared(self):
        """The device's shared context; a new one (after release()) invalidates every graph made before."""
        context = _context(self.device_id)
        if context is not self._context:
            self._context, self._workspace = context, None
            self._graphs.clear()
        return context

    @property
    def stream(self):
        return self._shared().stream

    @contextlib.contextmanager
    def _on_stream(self):
        """Runs the body's work on the device's shared stream, one thread at a time. The stream does not
        wait on other streams by itself: everything queued before (the caller's arrays, copies made on
        CuPy's default stream) finishes first, and everything queued here finishes before the caller
        goes on."""
        context = self._shared()
        with context.lock:
            cupy.cuda.Device().synchronize()
            with context.stream:
                yield
            context.stream.synchronize()

    # -- memory -----------------------------------------------------------------------------------

    def features(self, X, n_in, dtype):
        X = _detached(X)
        if _DEVICE_CSR and isinstance(X, _DEVICE_CSR[0]) and X.shape[1] == n_in and X.dtype == dtype:
            return X  # made by this method: checked already
        if _device_sparse(X):  # cupyx.scipy.sparse: checked (and made canonical) on the host too
            with self._on_stream():
                X = X.get()
        if _validate.is_sparse(X):  # checked and made canonical on the host, then resident on the GPU
            return _device_csr(_validate.sparse_features(X, n_in, dtype))
        device = as_device_array(X)
        if device is None:
            return self.from_host(_validate.features(X, n_in, dtype))
        with self._on_stream():
            return _validate.features(device, n_in, dtype, xp=cupy)

    def targets(self, y, m, loss, n_out, dtype):
        y = _detached(y)
        device = as_device_array(y)
        if device is None:
            return self.from_host(_validate.targets(y, m, loss, n_out, dtype))
        with self._on_stream():
            return _validate.targets(device, m, loss, n_out, dtype, xp=cupy)

    def from_host(self, array):
        with self._on_stream():
            return cupy.asarray(array)

    def to_host(self, array):
        if isinstance(array, np.ndarray):
            return array
        with self._on_stream():
            return cupy.asnumpy(array, stream=self.stream)

    def like_input(self, array, X):
        """The result in the caller's array type: NumPy for host input, CuPy (or a torch tensor, for
        a torch input) for input on the GPU (a cupyx.scipy.sparse X included)."""
        if as_device_array(X) is None and not _device_sparse(X):
            return self.to_host(array)
        self.stream.synchronize()
        if type(X).__module__.split(".")[0] == "torch":
            import torch

            return torch.from_dlpack(array)
        return array

    def all_finite(self, arrays):
        with self._on_stream():
            flags = cupy.stack([cupy.isfinite(a).all() for a in arrays])
            return bool(flags.all())

    def sum_squares(self, array):
        with self._on_stream():
            return float(cupy.sum(cupy.square(array.astype(np.float64))))

    # -- the pieces of a pass -----------------------------------------------------------------------

    def _blas_for(self):
        blas = self._shared().blas
        blas.set_tf32(self.tf32)
        return blas

    def _launch(self, kernels, name, count, args):
        kernels[name](((max(count, 1) + THREADS - 1) // THREADS,), (THREADS,), args)

    def _launch_indexed(self, kernels, name, count, args):
        """A kernel template over count threads, in its 32-bit instantiation when every index fits one;
        args(index type) gives the arguments."""
        index = np.dtype(np.int32 if count < INT_INDEX_LIMIT else np.int64)
        self._launch(kernels, f"{name}<{INDEX_TYPES[index]}>", count, args(index.type))

    def _loss_gradient(self, kernels, out, values, labels, rows, K, n, loss, loss_sum, correct, weights=None):
        """The loss kernel over K models' logits; weights (rows,), when given, scale each record."""
        blocks_per_model = -(-rows // THREADS)
        self._launch(kernels, "loss_gradient", K * blocks_per_model * THREADS,
                     (out, values, labels, values if weights is None else weights, np.int32(weights is not None),
                      np.int64(rows), np.int32(blocks_per_model), np.int64(n), np.int32(LOSS_CODES[loss]),
                      loss_sum, correct))

    def _column_sums(self, kernels, out, dZ, rows, n, K, scale, beta):
        """out (K, n) <- beta out + scale[0] (sums over the rows of dZ (K, rows, n)); scale is a
        one-element device array."""
        width = column_tile_width(n)
        self._launch(kernels, "column_sums", K * (-(-n // width)) * THREADS,
                     (out, dZ, np.int64(rows), np.int32(n), np.int32(width), scale, beta))

    def _forward(self, kernels, Ws, bs, x, rows, K, sizes, outs, act, dtype):
        """Every layer's output for `rows` records x (shared by the K models): the device address of dense rows, or
        a device CSR; outs[l] holds K x rows x n_{l+1}, the last the logits."""
        blas, L = self._blas_for(), len(Ws)
        for l in range(L):
            n_in, n_out = sizes[l], sizes[l + 1]
            if l == 0 and not isinstance(x, int):
                _sparse_first_layer(x, Ws[0], outs[0], K)
            else:
                a_ptr, stride_a = (x, 0) if l == 0 else (_ptr(outs[l - 1]), rows * n_in)
                blas.gemm(dtype, False, True, rows, n_out, n_in, 1.0, a_ptr, n_in, _ptr(Ws[l]), n_in, 0.0,
                          _ptr(outs[l]), n_out, batch=K, stride_a=stride_a, stride_b=n_out * n_in,
                          stride_c=rows * n_out)
            total, code = K * rows * n_out, 0 if l == L - 1 else act
            self._launch_indexed(kernels, "bias_activation", total,
                                 lambda I: (outs[l], bs[l], I(rows), I(n_out), I(total), np.int32(code)))

    def _step(self, kernels, ws, cfg, rows, x_sparse=None):
        """One training step on `rows` records (the next ones of the order): forward, loss, backward
        with each layer's update, counters moved on. Launches only; allocates nothing. The learning
        rate and decay come from ws.scalars and ws.keep on the device. For a sparse X, x_sparse is the step's
        rows of it gathered as a device CSR: the first layer's products go through cupyx, which allocates (such
        a step is never captured)."""
        blas, dtype, sizes, K = self._blas_for(), cfg["dtype"], cfg["sizes"], cfg["K"]
        Ws, bs, L, T = cfg["Ws"], cfg["bs"], len(cfg["Ws"]), dtype.type
        n0, n_out_last = sizes[0], sizes[-1]
        full = rows == ws.batch  # -lr/rows and 1/rows of a full batch, or of the last, smaller one
        step_index, mean_index = (ws.STEP_FULL, ws.MEAN_FULL) if full else (ws.STEP_REST, ws.MEAN_REST)
        step_scale = ws.scalar(step_index)
        if x_sparse is None:
            self._launch_indexed(kernels, "gather_rows", rows * n0,
                                 lambda I: (cfg["X"], ws.order, ws.counters, ws.xb, I(rows), I(n0)))
        if cfg["loss"] == "softmax":
            self._launch(kernels, "gather_labels", rows, (cfg["y"], ws.order, ws.counters, ws.yb_labels, np.int64(rows)))
        else:
            self._launch_indexed(kernels, "gather_rows", rows * n_out_last,
                                 lambda I: (cfg["y"], ws.order, ws.counters, ws.yb_values, I(rows), I(n_out_last)))
        weights = None
        if cfg["w"] is not None:
            self._launch_indexed(kernels, "gather_rows", rows,
                                 lambda I: (cfg["w"], ws.order, ws.counters, ws.wb, I(rows), I(1)))
            weights = ws.wb
        self._forward(kernels, Ws, bs, _ptr(ws.xb) if x_sparse is None else x_sparse, rows, K, sizes, ws.out,
                      cfg["act"], dtype)
        self._loss_gradient(kernels, ws.out[-1], ws.yb_values, ws.yb_labels, rows, K, n_out_last, cfg["loss"],
                            ws.loss_sum, ws.correct, weights)
        if cfg["norms"]:  # the weights this step's loss was computed with, before any update
            for W in Ws:
                self._launch(kernels, "sum_squares", W.size, (W, np.int64(W.size), ws.norms))
        optimizer = cfg["optimizer"]
        for l in reversed(range(L)):
            n_in, n_out = sizes[l], sizes[l + 1]
            dZ = ws.out[l] if l == L - 1 else ws.grad[l]
            a_ptr, stride_a = (_ptr(ws.xb), 0) if l == 0 else (_ptr(ws.out[l - 1]), rows * n_in)
            if l > 0:  # the input gradient first, with the old weights
                blas.gemm(dtype, False, False, rows, n_in, n_out, 1.0, _ptr(dZ), n_out, _ptr(Ws[l]), n_in, 0.0,
                          _ptr(ws.grad[l - 1]), n_in, batch=K, stride_a=rows * n_out, stride_b=n_out * n_in,
                          stride_c=rows * n_in)
                self._launch(kernels, "activation_backward", K * rows * n_in,
                             (ws.grad[l - 1], ws.out[l - 1], np.int64(K * rows * n_in), np.int32(cfg["act"])))
            if l == 0 and x_sparse is not None:
                self._sparse_first_update(kernels, ws, cfg, rows, x_sparse, dZ, step_index, mean_index)
                continue
            if optimizer is None:
                if K == 1:  # W <- (1 - lr lam/m) W - (lr/rows) dZ^T A_prev: one GEMM, the decay its beta
                    blas.gemm(dtype, True, False, n_out, n_in, rows, step_scale, _ptr(dZ), n_out, a_ptr, n_in,
                              DeviceScalar(_ptr(ws.keep)), _ptr(Ws[l]), n_in)
                else:  # each model's decay, then one batched GEMM for all
                    per_model, total = n_out * n_in, K * n_out * n_in
                    self._launch_indexed(kernels, "scale_models", total,
                                         lambda I: (Ws[l], ws.keep, I(per_model), I(total)))
                    blas.gemm(dtype, True, False, n_out, n_in, rows, step_scale, _ptr(dZ), n_out, a_ptr, n_in,
                              ws.scalar(ws.ONE), _ptr(Ws[l]), n_in, batch=K, stride_a=rows * n_out,
                              stride_b=stride_a, stride_c=n_out * n_in)
                self._column_sums(kernels, bs[l], dZ, rows, n_out, K, ws.scalars[step_index:step_index + 1], T(1))
                continue
            blas.gemm(dtype, True, False, n_out, n_in, rows, 1.0 / rows, _ptr(dZ), n_out, a_ptr, n_in, 0.0,
                      _ptr(ws.gW[l]), n_in)
            self._column_sums(kernels, ws.gb[l], dZ, rows, n_out, 1, ws.scalars[mean_index:mean_index + 1], T(0))
            for P, G, slot_index, rates in ((Ws[l], ws.gW[l], l, ws.rates_W), (bs[l], ws.gb[l], L + l, ws.rates_b)):
                self._optimizer_step(kernels, optimizer, P, G, [slot[slot_index] for slot in cfg["slots"]], rates,
                                     ws, T)
        self._launch(kernels, "advance_counters", 1, (ws.counters, np.int64(rows)))

    def _sparse_first_update(self, kernels, ws, cfg, rows, X, dZ, step_index, mean_index):
        """The first layer's step of ``_step`` for a sparse batch X (device CSR): its weight gradient (X^T dZ)^T by
        cupyx, then the same update as the dense step's, in CuPy array operations reading the step's scalars
        (ws.scalars[step_index] = -lr/rows, ws.scalars[mean_index] = 1/rows) on the device; the biases and the
        optimizers' steps by the same kernels."""
        K, sizes, L, T = cfg["K"], cfg["sizes"], len(cfg["Ws"]), cfg["dtype"].type
        n_in, n_out = sizes[0], sizes[1]
        W, b, optimizer = cfg["Ws"][0], cfg["bs"][0], cfg["optimizer"]
        dL_dW = _sparse_weight_product(X, dZ, K, n_out)  # (K, n_out, n_in): dZ[k]^T X
        if optimizer is None:  # W <- (1 - lr lam/m) W - (lr/rows) dZ^T X, each model's decay its own
            W_k = W.reshape(K, n_out, n_in)
            W_k *= ws.keep.reshape(K, 1, 1)
            W_k += ws.scalars[step_index] * dL_dW
            self._column_sums(kernels, b, dZ, rows, n_out, K, ws.scalars[step_index:step_index + 1], T(1))
            return
        ws.gW[0].reshape(n_out, n_in)[...] = dL_dW[0] * ws.scalars[mean_index]
        self._column_sums(kernels, ws.gb[0], dZ, rows, n_out, 1, ws.scalars[mean_index:mean_index + 1], T(0))
        for P, G, slot_index, rates in ((W, ws.gW[0], 0, ws.rates_W), (b, ws.gb[0], L, ws.rates_b)):
            self._optimizer_step(kernels, optimizer, P, G, [slot[slot_index] for slot in cfg["slots"]], rates, ws, T)

    def _optimizer_step(self, kernels, optimizer, P, G, slots, rates, ws, T):
        """One Momentum or Adam step of parameter P, given G, its batch mean gradient, and its state slots."""
        if optimizer.name == "momentum":
            self._launch(kernels, "momentum_step", P.size,
                         (P, G, slots[0], np.int64(P.size), rates, T(optimizer.momentum),
                          np.int32(optimizer.nesterov), np.int32(optimizer.decoupled)))
        else:
            self._launch(kernels, "adam_step", P.size,
                         (P, G, slots[0], slots[1], np.int64(P.size), rates, np.float64(optimizer.beta1),
                          np.float64(optimizer.beta2), T(optimizer.eps), np.int32(optimizer.decoupled),
                          np.int32(optimizer.eps_on_v), ws.counters))

    def _capture(self, kernels, ws, cfg, rows, steps):
        """A CUDA graph of `steps` consecutive training steps, or None when capture fails (graphs are
        then off for this backend, and graph_error says why)."""
        stream = self.stream
        try:
            self.captures += 1
            stream.begin_capture()
            try:
                for _ in range(steps):
                    self._step(kernels, ws, cfg, rows)
            finally:
                graph = stream.end_capture()
            graph.upload()
            return graph
        except Exception as exc:  # NotImplementedError, CUDARuntimeError: nothing ran, parameters untouched
            self.use_graphs = False
            self.graph_error = f"{type(exc).__name__}: {exc}"
            return None

    def _graphs_for(self, cfg, ws):
        """The step graphs ({steps: graph}) of this configuration, from the cache or new and empty: a
        graph depends on every address it touches and on the settings baked into its launches."""
        arrays = list(cfg["Ws"]) + list(cfg["bs"]) + [cfg["X"], cfg["y"], ws.order] + \
            [a for slot in cfg["slots"] for a in slot] + ([] if cfg["w"] is None else [cfg["w"]])
        key = (tuple(a.data.ptr for a in arrays), cfg["act"], cfg["loss"], cfg["optimizer"], cfg["norms"])
        if key in self._graphs:
            self._graphs.move_to_end(key)
        else:
            self._graphs[key] = {}
            while len(self._graphs) > GRAPH_CACHE:
                self._graphs.popitem(last=False)
        return self._graphs[key]

    def _workspace_for(self, sizes, batch, K, dtype, loss, n_slots, weighted=False, sparse=False):
        self._shared()
        key = (tuple(sizes), batch, K, np.dtype(dtype), loss, bool(n_slots), weighted, sparse)
        if self._workspace is None or self._workspace.key != key:
            with self._on_stream():
                self._workspace = _Workspace(sizes, batch, K, dtype, loss, n_slots, weighted, sparse)
            self._graphs.clear()  # they hold the old workspace's addresses
        return self._workspace

    # -- the backend protocol -------------------------------------------------------------------------

    def _epoch(self, Ws, bs, X, y, order, batch_size, lr, lam_over_m, activation, loss, K, optimizer=None,
               slots=(), step=0, sample_weight=None, with_norms=False):
        dtype = np.dtype(Ws[0].dtype)
        sizes = [Ws[0].shape[-1]] + [W.shape[-2] for W in Ws]
        n = len(X) if order is None else len(order)
        batch = min(batch_size, n)
        kernels = _kernels(dtype)
        sparse = numpy_ref.is_sparse(X)
        ws = self._workspace_for(sizes, batch, K, dtype, loss, 0 if optimizer is None else optimizer.n_slots,
                                 sample_weight is not None, sparse)
        cfg = {"dtype": dtype, "sizes": sizes, "K": K, "Ws": Ws, "bs": bs, "X": X, "y": y, "w": sample_weight,
               "act": ACTIVATION_CODES[activation], "loss": loss, "optimizer": optimizer,
               "slots": [list(slot) for slot in slots], "norms": with_norms}
        with self._on_stream():
            stream = self.stream
            if len(ws.order) < n:
                ws.order = cupy.empty(n, np.int64)
            ws.order[:n].set(np.arange(n, dtype=np.int64) if order is None else np.asarray(order, np.int64),
                             stream=stream)
            ws.counters.set(np.array([0, step], np.int64), stream=stream)
            ws.loss_sum.fill(0)
            ws.correct.fill(0)
            ws.norms.fill(0)
            ws.set_scalars(lr, lam_over_m, n, stream)
            full, rest = divmod(n, batch)
            done = 0
            if sparse:  # uncaptured: cupyx allocates the gathered rows and each product's output
                for X_batch in _sparse_batches(X, order, ws.order, n, batch):
                    self._step(kernels, ws, cfg, X_batch.shape[0], X_batch)
                full = rest = 0  # every step taken
            if full and self.use_graphs and full > 1:
                self._step(kernels, ws, cfg, batch)  # eager first: every kernel is loaded before any capture
                done = 1
                graphs = self._graphs_for(cfg, ws)
                for steps in (STEPS_PER_GRAPH, 1):
                    if not self.use_graphs:
                        break
                    if (full - done) // steps == 0:
                        continue
                    if steps not in graphs:
                        graphs[steps] = self._capture(kernels, ws, cfg, batch, steps)
                    graph = graphs[steps]
                    if graph is None:
                        break
                    for _ in range((full - done) // steps):
                        graph.launch(stream=stream)
                        done += steps
            for _ in range(full - done):
                self._step(kernels, ws, cfg, batch)
            if rest:
                self._step(kernels, ws, cfg, rest)
            loss_sum, correct = ws.loss_sum.get(stream=stream), ws.correct.get(stream=stream)
            if with_norms:
                return [(float(loss_sum[0]), int(correct[0]), float(ws.norms.get(stream=stream)[0]))]
        return [(float(loss_sum[k]), int(correct[k])) for k in range(K)]

    def train_epoch(self, weights, biases, X, y, order, batch_size, lr, lam_over_m, activation, loss,
                    optimizer=None, slots=(), step=0, sample_weight=None, check_finite=True, with_norms=False):
        return self._epoch(weights, biases, X, y, order, batch_size, lr, [lam_over_m], activation, loss, 1,
                           optimizer, slots, step, sample_weight, with_norms)[0]

    def train_epoch_stacked(self, weights, biases, X, y, order, batch_size, lr, lam_over_m, activation, loss,
                            sample_weight=None, check_finite=True):
        K, L = len(weights), len(weights[0])
        dtype = np.dtype(weights[0][0].dtype)
        sizes = [weights[0][0].shape[1]] + [W.shape[0] for W in weights[0]]
        batch = min(batch_size, len(X) if order is None else len(order))
        ws = self._workspace_for(sizes, batch, K, dtype, loss, 0, sample_weight is not None, numpy_ref.is_sparse(X))
        Ws, bs = ws.stacked_W, ws.stacked_b
        with self._on_stream():
            for k in range(K):
                for l in range(L):
                    Ws[l][k] = weights[k][l]
                    bs[l][k] = biases[k][l]
        stats = self._epoch(Ws, bs, X, y, order, batch_size, lr, list(lam_over_m), activation, loss, K,
                            sample_weight=sample_weight)
        with self._on_stream():
            for k in range(K):
                for l in range(L):
                    weights[k][l][...] = Ws[l][k]
                    biases[k][l][...] = bs[l][k]
        return stats

    def _blocks(self, m):
        return [(s, min(s + BLOCK_ROWS, m)) for s in range(0, m, BLOCK_ROWS)]

    @staticmethod
    def _rows_of(X, s, e, n_in):
        """Rows s:e of X as ``_forward`` takes them: the device address of dense rows, a device CSR of sparse ones."""
        return _sparse_rows(X, slice(s, e)) if numpy_ref.is_sparse(X) else _ptr(X, s * n_in)

    def predict(self, weights, biases, X, activation, loss):
        dtype, sizes = np.dtype(weights[0].dtype), [weights[0].shape[1]] + [W.shape[0] for W in weights]
        kernels, m = _kernels(dtype), len(X)
        with self._on_stream():
            out = cupy.empty((m, sizes[-1]), dtype)
            outs = [cupy.empty(min(m, BLOCK_ROWS) * n, dtype) for n in sizes[1:]]
            for s, e in self._blocks(m):
                self._forward(kernels, weights, biases, self._rows_of(X, s, e, sizes[0]), e - s, 1, sizes, outs,
                              ACTIVATION_CODES[activation], dtype)
                if loss != "squared_error":
                    self._launch(kernels, "output_activation", e - s,
                                 (outs[-1], np.int64(e - s), np.int64(sizes[-1]), np.int32(LOSS_CODES[loss])))
                out[s:e] = outs[-1][: (e - s) * sizes[-1]].reshape(e - s, sizes[-1])
        return out

    def evaluate(self, weights, biases, X, y, activation, loss, sample_weight=None, check_finite=True):
        return self._whole_data(weights, biases, X, y, activation, loss, None, sample_weight)

    def gradients(self, weights, biases, X, y, lam_over_m, activation, loss, sample_weight=None, check_finite=True,
                  with_correct=False):
        """(dJ/dW, dJ/db, loss sum) as float64 CuPy arrays: each block's products in the network's dtype,
        added up in float64; with_correct appends the count of records classified right. X was checked when
        it came to the GPU: ``check_finite`` (as in train_epoch, train_epoch_stacked and evaluate) changes
        nothing here."""
        with self._on_stream():
            dW = [cupy.zeros(W.shape, np.float64) for W in weights]
            db = [cupy.zeros(b.shape, np.float64) for b in biases]
        loss_sum, correct = self._whole_data(weights, biases, X, y, activation, loss, (dW, db), sample_weight)
        with self._on_stream():
            m = len(X)
            dW = [g / m + lam_over_m * W.astype(np.float64) for g, W in zip(dW, weights)]
            db = [g / m for g in db]
        return (dW, db, loss_sum, correct) if with_correct else (dW, db, loss_sum)

    def linear_gradient_curvature(self, W, b, X, y, lam_over_m, loss, sample_weight=None):
        """(dW, db, loss_sum, c, P) as CuPy arrays (see ``numpy_ref.linear_gradient_curvature``): the gradients
        and predict passes for dense X, ``numpy_ref.linear_pass`` (cuSPARSE SpMM through cupyx) for sparse X."""
        with self._on_stream():
            if numpy_ref.is_sparse(X):
                return numpy_ref.linear_pass(W, b, X, y, lam_over_m, loss, sample_weight, xp=cupy)
            return numpy_ref.linear_gradient_curvature(self, W, b, X, y, lam_over_m, loss, sample_weight)

    def linear_hessian_diagonal(self, X, c, P):
        """See ``numpy_ref.linear_hessian_diagonal``; CuPy arrays."""
        with self._on_stream():
            return numpy_ref.linear_hessian_diagonal(X, c, P, xp=cupy)

    def linear_hessian_product(self, X, c, P, V, v_b, lam_over_m):
        """(HV, Hv_b) as float64 CuPy arrays: the reference's array code (``numpy_ref.linear_hessian_product``)
        on the GPU, its products through CuPy (cuBLAS)."""
        with self._on_stream():
            return numpy_ref.linear_hessian_product(X, c, P, V, v_b, lam_over_m, xp=cupy)

    def sample_weights(self, sample_weight, m, dtype):
        """sample_weight validated (see ``_validate.sample_weight``) on the GPU, or None."""
        sample_weight = _detached(sample_weight)
        device = as_device_array(sample_weight)
        if device is None:
            weights = _validate.sample_weight(sample_weight, m, dtype)
            return None if weights is None else self.from_host(weights)
        with self._on_stream():
            return _validate.sample_weight(device, m, dtype, xp=cupy)

    def _whole_data(self, weights, biases, X, y, activation, loss, grads, sample_weight=None):
        """Loss sum and correct count over (X, y) in blocks (each record's loss weighted by sample_weight
        when given); with grads = (dW, db), float64 arrays, also adds sum dL/dW and dL/db of every block
        into them. A sparse X's blocks are device CSR slices (their first-layer products by cupyx)."""
        dtype, sizes = np.dtype(weights[0].dtype), [weights[0].shape[1]] + [W.shape[0] for W in weights]
        kernels, m, L, act = _kernels(dtype), len(X), len(weights), ACTIVATION_CODES[activation]
        blas, T = self._blas_for(), dtype.type
        with self._on_stream():
            rows_max = min(m, BLOCK_ROWS)
            outs = [cupy.empty(rows_max * n, dtype) for n in sizes[1:]]
            below = [cupy.empty(rows_max * n, dtype) for n in sizes[1:-1]]
            block_W = [cupy.empty(W.shape, dtype) for W in weights] if grads else []
            block_b = [cupy.empty(b.shape, dtype) for b in biases] if grads else []
            loss_sum, correct = cupy.zeros(1, np.float64), cupy.zeros(1, np.uint64)
            dummy_values, dummy_labels = cupy.empty(1, dtype), cupy.empty(1, np.int64)
            one = cupy.ones(1, dtype)
            for s, e in self._blocks(m):
                rows, x = e - s, self._rows_of(X, s, e, sizes[0])
                self._forward(kernels, weights, biases, x, rows, 1, sizes, outs, act, dtype)
                labels = y[s:e] if loss == "softmax" else dummy_labels
                values = y[s:e] if loss != "softmax" else dummy_values
                self._loss_gradient(kernels, outs[-1], values, labels, rows, 1, sizes[-1], loss, loss_sum, correct,
                                    None if sample_weight is None else sample_weight[s:e])
                if grads is None:
                    continue
                dW, db = grads
                for l in reversed(range(L)):
                    n_in, n_out = sizes[l], sizes[l + 1]
                    dZ = outs[l] if l == L - 1 else below[l]
                    if l > 0:
                        blas.gemm(dtype, False, False, rows, n_in, n_out, 1.0, _ptr(dZ), n_out, _ptr(weights[l]),
                                  n_in, 0.0, _ptr(below[l - 1]), n_in)
                        self._launch(kernels, "activation_backward", rows * n_in,
                                     (below[l - 1], outs[l - 1], np.int64(rows * n_in), np.int32(act)))
                    if l == 0 and not isinstance(x, int):
                        block_W[0][...] = _sparse_weight_product(x, dZ, 1, n_out)[0]
                    else:
                        a_ptr = x if l == 0 else _ptr(outs[l - 1])
                        blas.gemm(dtype, True, False, n_out, n_in, rows, 1.0, _ptr(dZ), n_out, a_ptr, n_in, 0.0,
                                  _ptr(block_W[l]), n_in)
                    self._column_sums(kernels, block_b[l], dZ, rows, n_out, 1, one, T(0))
                    dW[l] += block_W[l]  # float64 totals of the block's products in T
                    db[l] += block_b[l]
            return float(loss_sum.get(stream=self.stream)[0]), int(correct.get(stream=self.stream)[0])


def device_summary():
    """The GPU's name and memory, CuPy's and CUDA's versions, for benchmark records."""
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return {"gpu": name, "memory_GiB": round(props["totalGlobalMem"] / 2**30, 1), "cupy": cupy.__version__,
            "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(), "driver": cupy.cuda.runtime.driverGetVersion()}

