"""The cuda backend's parts that can be checked without a GPU: its errors when CuPy or a GPU is missing,
its kernels compiled as C++ and run on the host (a block's threads in turn, as fibers between barriers)
against the NumPy reference, its row-major-to-cuBLAS mapping against NumPy's matmul, the libcublas it
loads, and benchmarks/gpu_check.sh where there is no GPU. tests/test_cuda.py runs it on a GPU."""
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import l2fast
from l2fast.backends import cuda as cuda_backend
from l2fast.backends import numpy_ref
from l2fast.testing import assert_parity, make_problem

from cuda_emulation import FakeCublasLibrary, FakeStream, HostKernels, compile_kernels, emulated_gpu


# -- no CuPy, no GPU -----------------------------------------------------------------------------------


def test_without_cupy_the_error_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy now raises ModuleNotFoundError
    with pytest.raises(l2fast.BackendUnavailableError) as caught:
        l2fast.Network([2, 2], backend="cuda")
    message = str(caught.value)
    assert "CuPy is not installed" in message and 'pip install "l2fast[cuda]"' in message
    assert "backend='cpu'" in message
    assert "cuda" not in l2fast.available_backends()


def test_with_cupy_but_no_gpu_the_error_says_so(monkeypatch):
    class NoDevice(RuntimeError):
        pass

    def no_device():
        raise NoDevice("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake = types.ModuleType("cupy")
    fake.__version__ = "13.9.9"
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_device))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(l2fast.BackendUnavailableError) as caught:
        l2fast.Network([2, 2], backend="cuda")
    message = str(caught.value)
    assert "CuPy is installed, but CuPy 13.9.9 finds no usable CUDA device" in message
    assert "cudaErrorNoDevice" in message and "nvidia-smi" in message
    fake.cuda.runtime.getDeviceCount = lambda: 0
    with pytest.raises(l2fast.BackendUnavailableError, match="CuPy 13.9.9 sees no CUDA device"):
        l2fast.Network([2, 2], backend="cuda")
    assert "cuda" not in l2fast.available_backends()


def test_a_cupy_that_fails_to_import_is_reported_as_such(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def failing_import(name, *args, **kwargs):
        if name == "cupy":
            raise ImportError("libcudart.so.12: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing_import)
    with pytest.raises(l2fast.BackendUnavailableError, match="CuPy is installed but failed to import .*libcudart"):
        l2fast.Network([2, 2], backend="cuda")


# -- the kernels, compiled for the host ----------------------------------------------------------------


@pytest.fixture(scope="module", params=["float64", "float32"])
def host_kernels(request, tmp_path_factory):
    source = cuda_backend.kernel_source(request.param)
    library = compile_kernels(source, tmp_path_factory.mktemp(f"kernels_{request.param}"))
    return HostKernels(library, request.param, source)


def test_every_kernel_the_backend_loads_is_defined(host_kernels):
    assert set(cuda_backend.KERNEL_NAMES) == set(host_kernels.signatures)


def test_gathers_follow_the_order_from_the_device_offset(host_kernels):
    dt = host_kernels.dtype
    X = np.arange(40, dtype=dt).reshape(10, 4)
    labels = np.arange(10, dtype=np.int64) * 7
    order = np.array([3, 1, 4, 1, 5, 9, 2, 6], dtype=np.int64)
    counters = np.array([2, 0], dtype=np.int64)
    for index in ("int", "long long"):
        rows = np.empty((3, 4), dt)
        host_kernels(f"gather_rows<{index}>", 12, X, order, counters, rows, 3, 4)
        np.testing.assert_array_equal(rows, X[[4, 1, 5]])
    picked = np.empty(3, np.int64)
    host_kernels("gather_labels", 3, labels, order, counters, picked, 3)
    np.testing.assert_array_equal(picked, labels[[4, 1, 5]])
    host_kernels("advance_counters", 1, counters, 3)
    np.testing.assert_array_equal(counters, [5, 1])


@pytest.mark.parametrize("activation", ["identity", "relu", "tanh", "sigmoid"])
def test_bias_activation_and_its_derivative_match_the_reference(host_kernels, activation):
    dt, code = host_kernels.dtype, cuda_backend.ACTIVATION_CODES[activation]
    rng = np.random.default_rng(1)
    K, rows, n = 2, 5, 3
    Z = rng.normal(size=(K, rows, n)).astype(dt) * 3
    b = rng.normal(size=(K, n)).astype(dt)
    expected = np.stack([numpy_ref.activate(Z[k] + b[k], activation) for k in range(K)])
    for index in ("int", "long long"):
        A = Z.copy()
        host_kernels(f"bias_activation<{index}>", Z.size, A, b, rows, n, Z.size, code)
        assert_parity(A, expected, dt, f"bias + {activation}")
    dA = rng.normal(size=A.shape).astype(dt)
    dZ = dA.copy()
    host_kernels("activation_backward", dZ.size, dZ, A, dZ.size, code)
    assert_parity(dZ, numpy_ref.activation_backward(dA, A, activation), dt, f"{activation} derivative")


def loss_gradient(host_kernels, Z, values, labels, rows, K, n, loss, weights=None):
    """Runs the loss_gradient kernel as the backend launches it; returns (loss sums, right answers,
    atomic adds made)."""
    loss_sum, correct = np.zeros(K), np.zeros(K, np.uint64)
    blocks_per_model, before = -(-rows // cuda_backend.THREADS), host_kernels.atomic_adds
    w = np.zeros(1, Z.dtype) if weights is None else weights
    host_kernels("loss_gradient", K * blocks_per_model * cuda_backend.THREADS, Z, values, labels, w,
                 int(weights is not None), rows, blocks_per_model, n, cuda_backend.LOSS_CODES[loss], loss_sum,
                 correct)
    return loss_sum, correct, host_kernels.atomic_adds - before


@pytest.mark.parametrize("rows", [6, 600], ids=["one-block", "three-blocks"])
@pytest.mark.parametrize("loss, n", [("softmax", 4), ("logistic", 1), ("squared_error", 3)])
def test_loss_gradient_matches_the_reference_for_stacked_models(host_kernels, loss, n, rows):
    dt, K = host_kernels.dtype, 3
    _, y = make_problem(loss, 2, n, m=rows, seed=2)
    y = numpy_ref_targets(y, loss, n, dt)
    rng = np.random.default_rng(3)
    Z = (rng.normal(size=(K, rows, n)) * 4).astype(dt)
    dZ = Z.copy()
    labels = y if loss == "softmax" else np.zeros(1, np.int64)
    values = y if loss != "softmax" else np.zeros(1, dt)
    loss_sum, correct, _ = loss_gradient(host_kernels, dZ, values, labels, rows, K, n, loss)
    for k in range(K):
        ref_loss, ref_correct, ref_dZ = numpy_ref.loss_gradient(Z[k], y, loss)
        assert_parity(dZ[k], ref_dZ, dt, f"{loss} dL/dZ, model {k}")
        assert_parity(loss_sum[k], ref_loss, dt, f"{loss} loss sum, model {k}")
        assert int(correct[k]) == ref_correct


def test_loss_gradient_adds_once_per_block_not_once_per_record(host_kernels):
    """All records of a model add into one address: one atomic add per record serialises them."""
    dt, K, rows, n = host_kernels.dtype, 2, 700, 3
    _, y = make_problem("softmax", 2, n, m=rows, seed=4)
    Z = np.random.default_rng(5).normal(size=(K, rows, n)).astype(dt)
    _, correct, atomic_adds = loss_gradient(host_kernels, Z, np.zeros(1, dt), y.astype(np.int64), rows, K, n,
                                            "softmax")
    blocks = K * -(-rows // cuda_backend.THREADS)
    assert correct.sum() > 0 and atomic_adds <= 2 * blocks, f"{atomic_adds} atomic adds for {blocks} blocks"


def numpy_ref_targets(y, loss, n, dtype):
    from l2fast import _validate

    return _validate.targets(y, len(y), loss, n, dtype)


@pytest.mark.parametrize("loss, n", [("softmax", 4), ("logistic", 1)])
def test_output_activation_matches_the_reference(host_kernels, loss, n):
    dt = host_kernels.dtype
    Z = (np.random.default_rng(4).normal(size=(7, n)) * 5).astype(dt)
    out = Z.copy()
    host_kernels("output_activation", 7, out, 7, n, cuda_backend.LOSS_CODES[loss])
    assert_parity(out, numpy_ref.output_activation(Z, loss), dt, f"{loss} output")


def column_sums(host_kernels, out, dZ, rows, n, K, scale, beta):
    """Runs column_sums as the backend launches it (through CudaBackend._column_sums)."""
    T = host_kernels.dtype.type
    launches = []
    kernels = {"column_sums": lambda grid, block, args: launches.append((grid, block, args))}
    backend = cuda_backend.CudaBackend.__new__(cuda_backend.CudaBackend)  # its launch arithmetic only
    backend._column_sums(kernels, out, dZ, rows, n, K, np.array([scale], host_kernels.dtype),
                         T(beta))
    (grid, block, args), = launches
    host_kernels("column_sums", grid[0] * block[0], *args)
    return grid[0] * block[0]


@pytest.mark.parametrize("K, rows, n", [(2, 7, 3), (1, 256, 10), (3, 300, 1), (1, 70, 33), (2, 5, 64)])
def test_column_sums_cover_the_bias_step_the_mean_and_the_accumulation(host_kernels, K, rows, n):
    dt = host_kernels.dtype
    rng = np.random.default_rng(5)
    dZ = rng.normal(size=(K, rows, n)).astype(dt)
    b = rng.normal(size=(K, n)).astype(dt)
    stepped = b.copy()
    threads = column_sums(host_kernels, stepped, dZ, rows, n, K, -0.1 / rows, 1)
    assert_parity(stepped, b - 0.1 * dZ.sum(axis=1) / rows, dt, "bias step")
    mean = np.full((1, n), np.nan, dt)  # beta = 0 must not read what was there
    column_sums(host_kernels, mean, dZ[0], rows, n, 1, 1 / rows, 0)
    assert_parity(mean[0], dZ[0].mean(axis=0), dt, "mean gradient")
    # A block of threads shares the rows of each column: not one thread per column.
    assert threads >= K * cuda_backend.THREADS and threads // (K * n) >= 8


def test_scale_models_decays_each_model_by_its_own_factor(host_kernels):
    dt = host_kernels.dtype
    W = np.ones((3, 2, 2), dt)
    keep = np.array([0.5, 1.0, 0.25], dt)
    for index in ("int", "long long"):
        W = np.ones((3, 2, 2), dt)
        host_kernels(f"scale_models<{index}>", W.size, W, keep, 4, W.size)
        np.testing.assert_array_equal(W, keep[:, None, None] * np.ones((3, 2, 2), dt))


@pytest.mark.parametrize("spec", [l2fast.Momentum(0.9), l2fast.Momentum(0.8, nesterov=True, decoupled=True),
                                  l2fast.Adam(), l2fast.Adam(0.8, 0.99, 1e-6, decoupled=True),
                                  l2fast.Adam(eps=1e-2, eps_on_v=True)],
                         ids=["momentum", "nesterov-decoupled", "adam", "adamw", "adam-eps-on-v"])
def test_optimizer_steps_match_the_reference(host_kernels, spec):
    dt, T = host_kernels.dtype, host_kernels.dtype.type
    rng = np.random.default_rng(6)
    P, G = rng.normal(size=50).astype(dt), rng.normal(size=50).astype(dt)
    slots = [np.abs(rng.normal(size=50)).astype(dt) for _ in range(spec.n_slots)]
    P_ref, slots_ref = P.copy(), [s.copy() for s in slots]
    counters = np.array([0, 6], np.int64)  # six steps taken: this is step 7
    rates = np.array([0.01, 0.02], dt)  # lr and the decay, read on the device
    numpy_ref.optimizer_step(P_ref, G, slots_ref, 0.01, 0.02, spec, 7)
    if spec.name == "momentum":
        host_kernels("momentum_step", 50, P, G, slots[0], 50, rates, T(spec.momentum), int(spec.nesterov),
                     int(spec.decoupled))
    else:
        host_kernels("adam_step", 50, P, G, slots[0], slots[1], 50, rates, spec.beta1, spec.beta2,
                     T(spec.eps), int(spec.decoupled), int(spec.eps_on_v), counters)
    assert_parity(P, P_ref, dt, f"{spec.name} parameters")
    for s, s_ref in zip(slots, slots_ref):
        assert_parity(s, s_ref, dt, f"{spec.name} state")


# -- the mapping of row-major products onto column-major cuBLAS ------------------------------------------


@pytest.fixture
def blas(monkeypatch, tmp_path):
    """The backend's own _Cublas over the host's libcublas stand-in."""
    with emulated_gpu(monkeypatch, tmp_path):
        cuda_backend._bind_cupy()
        yield cuda_backend._Cublas(FakeStream())


def ptr(array):
    return array.ctypes.data


@pytest.mark.parametrize("rows, n_in, n_out", [(5, 3, 4), (1, 6, 1), (7, 1, 2)])
def test_row_major_products_map_onto_cublas(blas, rows, n_in, n_out):
    rng = np.random.default_rng(7)
    A, W = rng.normal(size=(rows, n_in)), rng.normal(size=(n_out, n_in))
    dZ, Z, dA = rng.normal(size=(rows, n_out)), np.zeros((rows, n_out)), np.zeros((rows, n_in))
    W_before = W.copy()
    dt = np.dtype("float64")
    blas.gemm(dt, False, True, rows, n_out, n_in, 1.0, ptr(A), n_in, ptr(W), n_in, 0.0, ptr(Z), n_out)
    np.testing.assert_allclose(Z, A @ W.T, rtol=1e-13)
    blas.gemm(dt, False, False, rows, n_in, n_out, 1.0, ptr(dZ), n_out, ptr(W), n_in, 0.0, ptr(dA), n_in)
    np.testing.assert_allclose(dA, dZ @ W, rtol=1e-13)
    blas.gemm(dt, True, False, n_out, n_in, rows, -0.1 / rows, ptr(dZ), n_out, ptr(A), n_in, 0.97, ptr(W), n_in)
    np.testing.assert_allclose(W, 0.97 * W_before - 0.1 / rows * dZ.T @ A, rtol=1e-13)


def test_stacked_products_share_the_input_batch_through_a_zero_stride(blas):
    rng = np.random.default_rng(8)
    K, rows, n_in, n_out = 3, 4, 5, 2
    X, W = rng.normal(size=(rows, n_in)), rng.normal(size=(K, n_out, n_in))
    dZ, Z = rng.normal(size=(K, rows, n_out)), np.zeros((K, rows, n_out))
    W_before = W.copy()
    dt = np.dtype("float64")
    blas.gemm(dt, False, True, rows, n_out, n_in, 1.0, ptr(X), n_in, ptr(W), n_in, 0.0, ptr(Z), n_out, batch=K,
              stride_a=0, stride_b=n_out * n_in, stride_c=rows * n_out)
    np.testing.assert_allclose(Z, np.stack([X @ W[k].T for k in range(K)]), rtol=1e-13)
    blas.gemm(dt, True, False, n_out, n_in, rows, -0.5, ptr(dZ), n_out, ptr(X), n_in, 1.0, ptr(W), n_in, batch=K,
              stride_a=rows * n_out, stride_b=0, stride_c=n_out * n_in)
    np.testing.assert_allclose(W, W_before - 0.5 * np.stack([dZ[k].T @ X for k in range(K)]), rtol=1e-13)


def test_alpha_and_beta_on_the_device_are_read_when_the_gemm_runs(blas):
    """A captured update GEMM takes lr-dependent alpha and beta by address: a replay after they changed
    uses the new values (a schedule changes no graph)."""
    rng = np.random.default_rng(9)
    A, B = rng.normal(size=(3, 4)), rng.normal(size=(4, 2))
    C = np.ones((3, 2))
    scalars = np.array([2.0, 0.5])
    stream = FakeStream()
    stream.begin_capture()
    blas.gemm(np.dtype("float64"), False, False, 3, 2, 4, cuda_backend.DeviceScalar(ptr(scalars)), ptr(A), 4, ptr(B), 2,
              cuda_backend.DeviceScalar(ptr(scalars) + 8), ptr(C), 2)
    graph = stream.end_capture()
    scalars[:] = [-1.0, 3.0]
    graph.launch()
    np.testing.assert_allclose(C, -1.0 * A @ B + 3.0, rtol=1e-13)
    C[...] = 1.0
    blas.gemm(np.dtype("float64"), False, False, 3, 2, 4, 0.25, ptr(A), 4, ptr(B), 2, 1.0, ptr(C), 2)
    np.testing.assert_allclose(C, 0.25 * A @ B + 1.0, rtol=1e-13)  # back to host pointer mode
    with pytest.raises(TypeError, match="alpha and beta"):
        blas.gemm(np.dtype("float64"), False, False, 3, 2, 4, cuda_backend.DeviceScalar(ptr(scalars)), ptr(A), 4,
                  ptr(B), 2, 1.0, ptr(C), 2)


# -- loading cuBLAS, and probe() ---------------------------------------------------------------------------


class Library:
    """A libcublas found by name, of one major version."""

    def __init__(self, name, major):
        self.name, self.major = name, major

    def cublasGetProperty(self, kind, value):
        value._obj.value = self.major
        return 0


@pytest.mark.parametrize("cuda_version, expected", [(12080, "libcublas.so.12"), (13000, "libcublas.so.13")])
def test_the_cublas_loaded_is_of_cupys_cuda_major_version(monkeypatch, cuda_version, expected):
    """With cupy-cuda12x on a machine that also has CUDA 13's libcublas, libcublas.so.13 must not be the
    one loaded: its cublasCreate fails against CuPy's CUDA 12 runtime."""
    from cuda_emulation import fake_cupy

    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(cuda_version))
    cuda_backend._bind_cupy()
    on_disk = {"libcublas.so.13": 13, "libcublas.so.12": 12}
    tried = []

    def open_library(name):
        tried.append(name)
        if name not in on_disk:
            raise OSError(f"{name}: cannot open shared object file")
        return Library(name, on_disk[name])

    monkeypatch.setattr(cuda_backend, "_open_library", open_library)
    assert cuda_backend._cublas_library().name == expected
    del on_disk[expected]
    on_disk["libcublas.so"] = 11  # an unversioned library of the wrong major is refused too
    with pytest.raises(OSError, match=f"no libcublas of CUDA {cuda_version // 1000}"):
        cuda_backend._cublas_library()
    assert all(str(cuda_version // 1000) in name for name in tried if "libcublas" in name)


def test_probe_creates_a_cublas_handle_and_reports_its_failure(monkeypatch, tmp_path):
    """A cuBLAS that cannot start makes the backend unavailable up front, not at the first fit."""
    with emulated_gpu(monkeypatch, tmp_path):
        assert cuda_backend.probe() is None and FakeCublasLibrary.created == 1
        cuda_backend.release()
        monkeypatch.setattr(FakeCublasLibrary, "create_status", 3)  # CUBLAS_STATUS_ALLOC_FAILED
        with pytest.raises(l2fast.BackendUnavailableError, match="cuBLAS could not be started.*cublasCreate.*status 3"):
            l2fast.Network([2, 2], backend="cuda")


# -- benchmarks/gpu_check.sh without a GPU -------------------------------------------------------------------

GPU_CHECK = Path(__file__).parents[1] / "benchmarks" / "gpu_check.sh"


def gpu_check(tmp_path, parts, seconds=450, path_first=None):
    """Runs gpu_check.sh with OUT=tmp_path/out; returns (exit status, output, the record)."""
    import json
    import os
    import subprocess

    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, OUT=str(tmp_path / "out"), GPU_CHECK_PARTS=parts, GPU_CHECK_SECONDS=str(seconds),
               PATH=os.pathsep.join([*([str(path_first)] if path_first else []), str(bin_dir), os.environ["PATH"]]))
    done = subprocess.run(["bash", str(GPU_CHECK)], env=env, capture_output=True, text=True, timeout=120)
    record = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    return done.returncode, done.stdout + done.stderr, record


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_gpu_check_without_a_gpu_records_its_parts_as_skipped(tmp_path):
    status, output, record = gpu_check(tmp_path, "device,tests,parity,bench")
    assert status == 2, output
    assert {name: part["status"] for name, part in record["parts"].items()} == \
        dict.fromkeys(["device", "tests", "parity", "bench"], "skipped: no GPU")
    assert "backend='cuda' is unavailable" in record["device"] and record["commit"]


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_gpu_check_cuts_a_part_that_hangs_and_still_writes_its_record(tmp_path):
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "python3").write_text(f'#!/usr/bin/env bash\n[ "$1 $2" = "-m pip" ] && exec sleep 60\n'
                                  f'exec "{sys.executable}" "$@"\n')
    (stub / "python3").chmod(0o755)
    status, output, record = gpu_check(tmp_path, "build,tests", seconds=4, path_first=stub)
    assert status == 1, output
    assert record["parts"]["build"]["status"].startswith("timed out after")
    assert record["parts"]["build"]["seconds"] < 30 and record["parts"]["tests"]["status"] == "skipped: no GPU"
