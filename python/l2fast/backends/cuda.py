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
- Each step reads its batch offset and step number from counters on the device, so a training step
  captured once as a CUDA graph (``STEPS_PER_GRAPH`` steps per graph) replays the whole epoch with one
  launch per graph instead of one per kernel. ``L2FAST_CUDA_GRAPHS=0`` launches kernels one by one.

Shapes as in ``numpy_ref``. Stacked models (``train_epoch_stacked``) are held as (K, n_out, n_in)
arrays for the epoch; their products are strided-batched GEMMs.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
from pathlib import Path

import numpy as np

from l2fast import _validate

cupy = None  # bound by _bind_cupy(): backends.get_backend checks first that CuPy imports


def _bind_cupy():
    global cupy
    import cupy as module

    cupy = module

BLOCK_ROWS = 16384  # records per block in predict, evaluate and gradients
STEPS_PER_GRAPH = 32
THREADS = 256
ACTIVATION_CODES = {"identity": 0, "relu": 1, "tanh": 2, "sigmoid": 3}
LOSS_CODES = {"squared_error": 0, "logistic": 1, "softmax": 2}
KERNEL_NAMES = ("gather_rows", "gather_labels", "bias_activation", "activation_backward", "loss_gradient",
                "output_activation", "column_sums", "scale_models", "momentum_step", "adam_step", "advance_counters")
CUBLAS_OP_N, CUBLAS_OP_T = 0, 1
CUBLAS_DEFAULT_MATH, CUBLAS_TF32_TENSOR_OP_MATH = 0, 3
CUBLAS_WORKSPACE_BYTES = 32 << 20


def probe():
    """None when a GPU can be used through CuPy, else the reason it cannot (for the error message)."""
    _bind_cupy()
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError: no driver, no device, driver too old
        return f"CuPy {cupy.__version__} finds no usable CUDA device ({exc})"
    if count < 1:
        return f"CuPy {cupy.__version__} sees no CUDA device"
    try:
        _cublas_library()
    except OSError as exc:
        return f"the cuBLAS library could not be loaded ({exc})"
    return None


def _cublas_library():
    """libcublas: where NVIDIA's cuda-pathfinder (which recent CuPy uses) finds it, else the copy CuPy
    has loaded (dlopen by soname finds a loaded library), else the nvidia-cublas wheel's."""
    errors = []
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib

        loaded = load_nvidia_dynamic_lib("cublas")
        if loaded.abs_path:
            return ctypes.CDLL(loaded.abs_path)
    except Exception as exc:  # not installed, or it found nothing: the other ways may still work
        errors.append(f"cuda.pathfinder: {exc}")
    try:
        import cupy_backends.cuda.libs.cublas  # noqa: F401  (makes CuPy load libcublas)
    except ImportError:
        pass
    for name in ("libcublas.so.13", "libcublas.so.12", "libcublas.so.11", "libcublas.so", "cublas64_13.dll",
                 "cublas64_12.dll"):
        try:
            return ctypes.CDLL(name)
        except OSError as exc:
            errors.append(str(exc))
    try:  # the pip wheel nvidia-cublas-cu12 keeps it beside its package
        import nvidia.cublas

        for folder in nvidia.cublas.__path__:
            for path in sorted(Path(folder, "lib").glob("libcublas.so*")):
                return ctypes.CDLL(str(path))
    except ImportError:
        pass
    raise OSError("; ".join(errors))


class _Cublas:
    """Row-major GEMMs through cuBLAS on one handle bound to the backend's stream.

    cuBLAS is column-major: a row-major (r, c) array is a column-major (c, r) one, so the row-major
    C = op(A) op(B) is computed as the column-major C^T = op(B)^T op(A)^T.
    """

    def __init__(self, stream, tf32):
        lib = _cublas_library()
        self._lib = lib
        self.handle = ctypes.c_void_p()
        self._check(lib.cublasCreate_v2(ctypes.byref(self.handle)), "cublasCreate")
        self._check(lib.cublasSetStream_v2(self.handle, ctypes.c_void_p(stream.ptr)), "cublasSetStream")
        mode = CUBLAS_TF32_TENSOR_OP_MATH if tf32 else CUBLAS_DEFAULT_MATH
        self._check(lib.cublasSetMathMode(self.handle, ctypes.c_int(mode)), "cublasSetMathMode")
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

    def gemm(self, dtype, trans_a, trans_b, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc, batch=1, stride_a=0,
             stride_b=0, stride_c=0):
        """Row-major C (m, n) <- alpha op(A) op(B) + beta C for device pointers A, B, C; with batch > 1,
        `batch` products whose operands lie stride_* elements apart (a stride of 0 shares the operand)."""
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


_MODULES = {}


def _kernels(dtype):
    """The compiled kernels for float32 or float64, every function loaded (so none loads mid-capture)."""
    key = np.dtype(dtype)
    if key not in _MODULES:
        source = Path(__file__).with_name("cuda_kernels.cu").read_text()
        ctype = "float" if key == np.float32 else "double"
        module = cupy.RawModule(code=f"typedef {ctype} T;\n" + source, options=("--std=c++14",))
        _MODULES[key] = {name: module.get_function(name) for name in KERNEL_NAMES}
    return _MODULES[key]


def as_device_array(obj):
    """obj as a CuPy array without a copy when it lives on a GPU (CuPy, __cuda_array_interface__, a
    CUDA __dlpack__); None for host objects."""
    if isinstance(obj, cupy.ndarray):
        return obj
    if hasattr(obj, "__cuda_array_interface__"):
        return cupy.asarray(obj)
    if hasattr(obj, "__dlpack__") and hasattr(obj, "__dlpack_device__"):
        device_type, _ = obj.__dlpack_device__()
        if int(device_type) in (2, 13):  # kDLCUDA, kDLCUDAManaged
            return cupy.from_dlpack(obj)
    return None


def _ptr(array, offset_elements=0):
    return array.data.ptr + offset_elements * array.itemsize


class _Workspace:
    """Every buffer one training step touches, allocated before any capture and kept while the
    shapes stay the same (a captured graph holds their addresses)."""

    def __init__(self, sizes, batch, K, dtype, loss, n_slots):
        L = len(sizes) - 1
        self.key = (tuple(sizes), batch, K, np.dtype(dtype), loss, bool(n_slots))
        self.xb = cupy.empty((batch, sizes[0]), dtype)
        self.yb_labels = cupy.empty(batch, np.int64) if loss == "softmax" else cupy.empty(1, np.int64)
        self.yb_values = cupy.empty((batch, sizes[-1]), dtype) if loss != "softmax" else cupy.empty(1, dtype)
        self.out = [cupy.empty(K * batch * sizes[l + 1], dtype) for l in range(L)]
        self.grad = [cupy.empty(K * batch * sizes[l + 1], dtype) for l in range(L - 1)]
        self.gW = [cupy.empty(sizes[l + 1] * sizes[l], dtype) for l in range(L)] if n_slots else []
        self.gb = [cupy.empty(sizes[l + 1], dtype) for l in range(L)] if n_slots else []
        self.counters = cupy.zeros(2, np.int64)  # [offset of the next batch in the order, steps taken]
        self.loss_sum = cupy.zeros(K, np.float64)
        self.correct = cupy.zeros(K, np.uint64)
        self.keep = cupy.ones(K, dtype)
        self.order = cupy.empty(0, np.int64)


class CudaBackend:
    """backend="cuda": parameters are CuPy arrays on the current GPU, updated in place."""

    name = "cuda"

    def __init__(self):
        _bind_cupy()
        self.xp = cupy
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.tf32 = os.environ.get("L2FAST_CUDA_TF32", "0") == "1"
        self.use_graphs = os.environ.get("L2FAST_CUDA_GRAPHS", "1") != "0"
        self.graph_error = None  # why graphs were turned off, if a capture failed
        self._blas = None
        self._workspace = None
        self._graphs = {}
        self._graph_key = None

    @contextlib.contextmanager
    def _on_stream(self):
        """Runs the body's work on the backend's stream, which does not wait on other streams by
        itself: everything queued before (the caller's arrays, copies made on CuPy's default stream)
        finishes first, and everything queued here finishes before the caller goes on."""
        cupy.cuda.Device().synchronize()
        with self.stream:
            yield
        self.stream.synchronize()

    # -- memory -----------------------------------------------------------------------------------

    def features(self, X, n_in, dtype):
        device = as_device_array(X)
        if device is None:
            return self.from_host(_validate.features(X, n_in, dtype))
        with self._on_stream():
            return _validate.features(device, n_in, dtype, xp=cupy)

    def targets(self, y, m, loss, n_out, dtype):
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
        a torch input) for input on the GPU."""
        if as_device_array(X) is None:
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
        if self._blas is None:
            self._blas = _Cublas(self.stream, self.tf32)
        return self._blas

    def _launch(self, kernels, name, count, args):
        kernels[name](((max(count, 1) + THREADS - 1) // THREADS,), (THREADS,), args)

    def _forward(self, kernels, Ws, bs, x_ptr, rows, K, sizes, outs, act, dtype):
        """Every layer's output for `rows` records at x_ptr (shared by the K models); outs[l] holds
        K x rows x n_{l+1}, the last the logits."""
        blas, L = self._blas_for(), len(Ws)
        for l in range(L):
            n_in, n_out = sizes[l], sizes[l + 1]
            a_ptr, stride_a = (x_ptr, 0) if l == 0 else (_ptr(outs[l - 1]), rows * n_in)
            blas.gemm(dtype, False, True, rows, n_out, n_in, 1.0, a_ptr, n_in, _ptr(Ws[l]), n_in, 0.0, _ptr(outs[l]),
                      n_out, batch=K, stride_a=stride_a, stride_b=n_out * n_in, stride_c=rows * n_out)
            self._launch(kernels, "bias_activation", K * rows * n_out,
                         (outs[l], bs[l], np.int64(rows), np.int64(n_out), np.int64(K * rows * n_out),
                          np.int32(0 if l == L - 1 else act)))

    def _step(self, kernels, ws, cfg, rows):
        """One training step on `rows` records (the next ones of the order): forward, loss, backward
        with each layer's update, counters moved on. Launches only; allocates nothing."""
        blas, dtype, sizes, K = self._blas_for(), cfg["dtype"], cfg["sizes"], cfg["K"]
        Ws, bs, L, T = cfg["Ws"], cfg["bs"], len(cfg["Ws"]), dtype.type
        n0, n_out_last = sizes[0], sizes[-1]
        self._launch(kernels, "gather_rows", rows * n0,
                     (cfg["X"], ws.order, ws.counters, ws.xb, np.int64(rows), np.int64(n0)))
        if cfg["loss"] == "softmax":
            self._launch(kernels, "gather_labels", rows, (cfg["y"], ws.order, ws.counters, ws.yb_labels, np.int64(rows)))
        else:
            self._launch(kernels, "gather_rows", rows * n_out_last,
                         (cfg["y"], ws.order, ws.counters, ws.yb_values, np.int64(rows), np.int64(n_out_last)))
        self._forward(kernels, Ws, bs, _ptr(ws.xb), rows, K, sizes, ws.out, cfg["act"], dtype)
        self._launch(kernels, "loss_gradient", K * rows,
                     (ws.out[-1], ws.yb_values, ws.yb_labels, np.int64(rows), np.int64(K), np.int64(n_out_last),
                      np.int32(LOSS_CODES[cfg["loss"]]), ws.loss_sum, ws.correct))
        lr, optimizer = cfg["lr"], cfg["optimizer"]
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
            if optimizer is None:
                if K == 1:  # W <- (1 - lr lam/m) W - (lr/rows) dZ^T A_prev: one GEMM, the decay its beta
                    blas.gemm(dtype, True, False, n_out, n_in, rows, -lr / rows, _ptr(dZ), n_out, a_ptr, n_in,
                              cfg["keep"][0], _ptr(Ws[l]), n_in)
                else:  # each model's decay, then one batched GEMM for all
                    self._launch(kernels, "scale_models", K * n_out * n_in,
                                 (Ws[l], ws.keep, np.int64(n_out * n_in), np.int64(K * n_out * n_in)))
                    blas.gemm(dtype, True, False, n_out, n_in, rows, -lr / rows, _ptr(dZ), n_out, a_ptr, n_in, 1.0,
                              _ptr(Ws[l]), n_in, batch=K, stride_a=rows * n_out, stride_b=stride_a,
                              stride_c=n_out * n_in)
                self._launch(kernels, "column_sums", K * n_out,
                             (bs[l], dZ, np.int64(rows), np.int64(n_out), np.int64(K), T(-lr / rows), T(1)))
                continue
            blas.gemm(dtype, True, False, n_out, n_in, rows, 1.0 / rows, _ptr(dZ), n_out, a_ptr, n_in, 0.0,
                      _ptr(ws.gW[l]), n_in)
            self._launch(kernels, "column_sums", n_out,
                         (ws.gb[l], dZ, np.int64(rows), np.int64(n_out), np.int64(1), T(1.0 / rows), T(0)))
            for P, G, slot_index, decay in ((Ws[l], ws.gW[l], l, cfg["lam_over_m"][0]), (bs[l], ws.gb[l], L + l, 0.0)):
                slots = [slot[slot_index] for slot in cfg["slots"]]
                if optimizer.name == "momentum":
                    self._launch(kernels, "momentum_step", P.size,
                                 (P, G, slots[0], np.int64(P.size), T(lr), T(decay), T(optimizer.momentum),
                                  np.int32(optimizer.nesterov), np.int32(optimizer.decoupled)))
                else:
                    self._launch(kernels, "adam_step", P.size,
                                 (P, G, slots[0], slots[1], np.int64(P.size), T(lr), T(decay),
                                  np.float64(optimizer.beta1), np.float64(optimizer.beta2), T(optimizer.eps),
                                  np.int32(optimizer.decoupled), ws.counters))
        self._launch(kernels, "advance_counters", 1, (ws.counters, np.int64(rows)))

    def _capture(self, kernels, ws, cfg, rows, steps):
        """A CUDA graph of `steps` consecutive training steps, or None when capture fails (graphs are
        then off for this backend, and graph_error says why)."""
        try:
            self.stream.begin_capture()
            try:
                for _ in range(steps):
                    self._step(kernels, ws, cfg, rows)
            finally:
                graph = self.stream.end_capture()
            graph.upload()
            return graph
        except Exception as exc:  # NotImplementedError, CUDARuntimeError: nothing ran, parameters untouched
            self.use_graphs = False
            self.graph_error = f"{type(exc).__name__}: {exc}"
            return None

    # -- the backend protocol -------------------------------------------------------------------------

    def _epoch(self, Ws, bs, X, y, order, batch_size, lr, lam_over_m, activation, loss, K, optimizer=None,
               slots=(), step=0):
        dtype = np.dtype(Ws[0].dtype)
        sizes = [Ws[0].shape[-1]] + [W.shape[-2] for W in Ws]
        n = len(X) if order is None else len(order)
        batch = min(batch_size, n)
        kernels = _kernels(dtype)
        n_slots = 0 if optimizer is None else optimizer.n_slots
        key = (tuple(sizes), batch, K, dtype, loss, bool(n_slots))
        if self._workspace is None or self._workspace.key != key:
            self._workspace = _Workspace(sizes, batch, K, dtype, loss, n_slots)
            self._graphs = {}
        ws = self._workspace
        keep = [1.0 - lr * lam for lam in lam_over_m]
        cfg = {"dtype": dtype, "sizes": sizes, "K": K, "Ws": Ws, "bs": bs, "X": X, "y": y, "lr": lr, "keep": keep,
               "lam_over_m": lam_over_m, "act": ACTIVATION_CODES[activation], "loss": loss, "optimizer": optimizer,
               "slots": [list(slot) for slot in slots]}
        with self._on_stream():
            if len(ws.order) < n:
                ws.order = cupy.empty(n, np.int64)
                self._graphs = {}
            ws.order[:n].set(np.arange(n, dtype=np.int64) if order is None else np.asarray(order, np.int64),
                             stream=self.stream)
            ws.counters.set(np.array([0, step], np.int64), stream=self.stream)
            ws.loss_sum.fill(0)
            ws.correct.fill(0)
            ws.keep.set(np.array(keep, dtype), stream=self.stream)
            full, rest = divmod(n, batch)
            done = 0
            if full and self.use_graphs and full > 1:
                self._step(kernels, ws, cfg, batch)  # eager first: every kernel is loaded before any capture
                done = 1
                graph_key = self._key(cfg, ws, batch)
                if graph_key != self._graph_key:
                    self._graphs, self._graph_key = {}, graph_key
                for steps in (STEPS_PER_GRAPH, 1):
                    if not self.use_graphs:
                        break
                    if (full - done) // steps == 0:
                        continue
                    if steps not in self._graphs:
                        self._graphs[steps] = self._capture(kernels, ws, cfg, batch, steps)
                    graph = self._graphs[steps]
                    if graph is None:
                        break
                    for _ in range((full - done) // steps):
                        graph.launch(stream=self.stream)
                        done += steps
            for _ in range(full - done):
                self._step(kernels, ws, cfg, batch)
            if rest:
                self._step(kernels, ws, cfg, rest)
            loss_sum, correct = ws.loss_sum.get(stream=self.stream), ws.correct.get(stream=self.stream)
        return [(float(loss_sum[k]), int(correct[k])) for k in range(K)]

    @staticmethod
    def _key(cfg, ws, batch):
        """What a captured graph depends on: every address it touches and every scalar baked into it."""
        arrays = list(cfg["Ws"]) + list(cfg["bs"]) + [cfg["X"], cfg["y"], ws.order] + \
            [a for slot in cfg["slots"] for a in slot]
        optimizer = cfg["optimizer"]
        return (tuple(a.data.ptr for a in arrays), batch, cfg["lr"], tuple(cfg["keep"]), tuple(cfg["lam_over_m"]),
                None if optimizer is None else (optimizer.name, tuple(sorted(vars(optimizer).items()))))

    def train_epoch(self, weights, biases, X, y, order, batch_size, lr, lam_over_m, activation, loss,
                    optimizer=None, slots=(), step=0, sample_weight=None):
        _no_weights(sample_weight)
        return self._epoch(weights, biases, X, y, order, batch_size, lr, [lam_over_m], activation, loss, 1,
                           optimizer, slots, step)[0]

    def train_epoch_stacked(self, weights, biases, X, y, order, batch_size, lr, lam_over_m, activation, loss,
                            sample_weight=None):
        _no_weights(sample_weight)
        K, L = len(weights), len(weights[0])
        with self._on_stream():
            Ws = [cupy.stack([weights[k][l] for k in range(K)]) for l in range(L)]
            bs = [cupy.stack([biases[k][l] for k in range(K)]) for l in range(L)]
        stats = self._epoch(Ws, bs, X, y, order, batch_size, lr, list(lam_over_m), activation, loss, K)
        with self._on_stream():
            for k in range(K):
                for l in range(L):
                    weights[k][l][...] = Ws[l][k]
                    biases[k][l][...] = bs[l][k]
        return stats

    def _blocks(self, m):
        return [(s, min(s + BLOCK_ROWS, m)) for s in range(0, m, BLOCK_ROWS)]

    def predict(self, weights, biases, X, activation, loss):
        dtype, sizes = np.dtype(weights[0].dtype), [weights[0].shape[1]] + [W.shape[0] for W in weights]
        kernels, m = _kernels(dtype), len(X)
        with self._on_stream():
            out = cupy.empty((m, sizes[-1]), dtype)
            outs = [cupy.empty(min(m, BLOCK_ROWS) * n, dtype) for n in sizes[1:]]
            for s, e in self._blocks(m):
                self._forward(kernels, weights, biases, _ptr(X, s * sizes[0]), e - s, 1, sizes, outs,
                              ACTIVATION_CODES[activation], dtype)
                if loss != "squared_error":
                    self._launch(kernels, "output_activation", e - s,
                                 (outs[-1], np.int64(e - s), np.int64(sizes[-1]), np.int32(LOSS_CODES[loss])))
                out[s:e] = outs[-1][: (e - s) * sizes[-1]].reshape(e - s, sizes[-1])
        return out

    def evaluate(self, weights, biases, X, y, activation, loss, sample_weight=None):
        _no_weights(sample_weight)
        return self._whole_data(weights, biases, X, y, activation, loss, None)

    def gradients(self, weights, biases, X, y, lam_over_m, activation, loss, sample_weight=None):
        _no_weights(sample_weight)
        with self._on_stream():
            dW = [W * W.dtype.type(lam_over_m) for W in weights]
            db = [cupy.zeros_like(b) for b in biases]
        loss_sum, _ = self._whole_data(weights, biases, X, y, activation, loss, (dW, db))
        return dW, db, loss_sum

    def _whole_data(self, weights, biases, X, y, activation, loss, grads):
        """Loss sum and correct count over (X, y) in blocks; with grads = (dW, db) also adds
        (1/m) sum dL/dW and dL/db of every block into them."""
        dtype, sizes = np.dtype(weights[0].dtype), [weights[0].shape[1]] + [W.shape[0] for W in weights]
        kernels, m, L, act = _kernels(dtype), len(X), len(weights), ACTIVATION_CODES[activation]
        blas, T = self._blas_for(), dtype.type
        with self._on_stream():
            rows_max = min(m, BLOCK_ROWS)
            outs = [cupy.empty(rows_max * n, dtype) for n in sizes[1:]]
            below = [cupy.empty(rows_max * n, dtype) for n in sizes[1:-1]]
            loss_sum, correct = cupy.zeros(1, np.float64), cupy.zeros(1, np.uint64)
            dummy_values, dummy_labels = cupy.empty(1, dtype), cupy.empty(1, np.int64)
            for s, e in self._blocks(m):
                rows = e - s
                self._forward(kernels, weights, biases, _ptr(X, s * sizes[0]), rows, 1, sizes, outs, act, dtype)
                labels = y[s:e] if loss == "softmax" else dummy_labels
                values = y[s:e] if loss != "softmax" else dummy_values
                self._launch(kernels, "loss_gradient", rows,
                             (outs[-1], values, labels, np.int64(rows), np.int64(1), np.int64(sizes[-1]),
                              np.int32(LOSS_CODES[loss]), loss_sum, correct))
                if grads is None:
                    continue
                dW, db = grads
                for l in reversed(range(L)):
                    n_in, n_out = sizes[l], sizes[l + 1]
                    dZ = outs[l] if l == L - 1 else below[l]
                    a_ptr = _ptr(X, s * n_in) if l == 0 else _ptr(outs[l - 1])
                    if l > 0:
                        blas.gemm(dtype, False, False, rows, n_in, n_out, 1.0, _ptr(dZ), n_out, _ptr(weights[l]),
                                  n_in, 0.0, _ptr(below[l - 1]), n_in)
                        self._launch(kernels, "activation_backward", rows * n_in,
                                     (below[l - 1], outs[l - 1], np.int64(rows * n_in), np.int32(act)))
                    blas.gemm(dtype, True, False, n_out, n_in, rows, 1.0 / m, _ptr(dZ), n_out, a_ptr, n_in, 1.0,
                              _ptr(dW[l]), n_in)
                    self._launch(kernels, "column_sums", n_out,
                                 (db[l], dZ, np.int64(rows), np.int64(n_out), np.int64(1), T(1.0 / m), T(1)))
            return float(loss_sum.get(stream=self.stream)[0]), int(correct.get(stream=self.stream)[0])


def _no_weights(sample_weight):
    if sample_weight is not None:
        raise NotImplementedError("sample_weight: not yet supported on backend='cuda'; use backend='cpu'")


def device_summary():
    """The GPU's name and memory, CuPy's and CUDA's versions, for benchmark records."""
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return {"gpu": name, "memory_GiB": round(props["totalGlobalMem"] / 2**30, 1), "cupy": cupy.__version__,
            "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(), "driver": cupy.cuda.runtime.driverGetVersion()}

