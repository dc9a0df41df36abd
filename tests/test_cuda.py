"""backend="cuda" against the NumPy reference: on a GPU ("gpu", skipped with the reason where CuPy or a
usable GPU is missing) and on the host stand-in of tests/cuda_emulation.py ("emulated": the backend's
own code, its kernels compiled for the host, cuBLAS's semantics in NumPy, graphs recorded and
replayed), which runs everywhere."""
import sys

import numpy as np
import pytest

import l2fast
from l2fast.backends import get_backend
from l2fast.testing import assert_network_parity, assert_parity, make_problem, parameters, twin_networks

from cuda_emulation import FakeGraph, emulated_gpu


def real_cupy():
    try:
        get_backend("cuda")
    except l2fast.BackendUnavailableError as exc:
        pytest.skip(f"no GPU for backend='cuda' here: {exc}")
    import cupy

    return cupy


@pytest.fixture(scope="session")
def kernel_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("host_kernels")


@pytest.fixture(params=["gpu", "emulated"])
def cupy(request, monkeypatch, kernel_folder):
    """The array module of the device the cuda backend runs on in this test."""
    if request.param == "gpu":
        yield real_cupy()
        return
    with emulated_gpu(monkeypatch, kernel_folder):
        yield sys.modules["cupy"]


DTYPES = ["float64", "float32"]


def pair(sizes, activation, loss, dtype, lam=0.8, graphs=True):
    ref, gpu = twin_networks(sizes, activation, loss, dtype, "cuda", lam=lam)
    gpu._backend.use_graphs = graphs
    return ref, gpu


@pytest.mark.parametrize("dtype", DTYPES)
def test_cost_gradients_predictions_agree(cupy, activation, loss_out, dtype):
    loss, n_out = loss_out
    X, y = make_problem(loss, 6, n_out, m=41, seed=17)
    ref, gpu = pair([6, 7, 5, n_out], activation, loss, dtype)
    assert_network_parity(gpu, ref, X, y, dtype)


@pytest.mark.parametrize("graphs", [True, False], ids=["graphs", "eager"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_parameters_after_fit_agree(cupy, activation, loss_out, dtype, graphs):
    loss, n_out = loss_out
    X, y = make_problem(loss, 6, n_out, m=197, seed=23)  # 12 batches of 16 and a partial one of 5
    X_val, y_val = make_problem(loss, 6, n_out, m=11, seed=24)
    ref, gpu = pair([6, 7, 5, n_out], activation, loss, dtype, graphs=graphs)
    fit = dict(epochs=3, lr=0.05, batch_size=16, validation_data=(X_val, y_val))
    ref_history, history = ref.fit(X, y, **fit), gpu.fit(X, y, **fit)
    for p, p_ref in zip(parameters(gpu), parameters(ref)):
        assert isinstance(p, np.ndarray) and p.dtype == np.dtype(dtype)
        assert_parity(p, p_ref, dtype, "parameters after fit")
    for key in ("loss", "cost", "val_loss", "val_cost"):
        assert_parity(getattr(history, key), getattr(ref_history, key), dtype, f"history.{key}")
    assert history.accuracy == ref_history.accuracy
    if graphs:
        assert gpu._backend.graph_error is None, gpu._backend.graph_error
        captured = gpu._backend._graphs
        assert captured and all(g is not None for g in captured.values()), "the epochs ran without a captured graph"
        assert all(g.launches for g in captured.values() if isinstance(g, FakeGraph))


@pytest.mark.parametrize("graphs", [True, False], ids=["graphs", "eager"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("optimizer", ["momentum", "nesterov", "adam", "adamw"])
def test_optimizers_agree(cupy, optimizer, dtype, graphs):
    X, y = make_problem("softmax", 6, 3, m=101, seed=5)
    ref, gpu = pair([6, 9, 3], "tanh", "softmax", dtype, graphs=graphs)
    for net in (ref, gpu):
        net.fit(X, y, epochs=4, lr=0.01, batch_size=8, optimizer=optimizer, schedule="exponential")
    for p, p_ref in zip(parameters(gpu), parameters(ref)):
        assert_parity(p, p_ref, dtype, f"{optimizer}: parameters")
    state, ref_state = gpu.optimizer_state, ref.optimizer_state
    assert state.step == ref_state.step == 52
    for slot, ref_slot in zip(state.slots, ref_state.slots):
        for a, b in zip(slot, ref_slot):
            assert_parity(cupy.asnumpy(a), b, dtype, f"{optimizer}: state")


@pytest.mark.parametrize("dtype", DTYPES)
def test_stacked_sweep_equals_separate_runs(cupy, dtype):
    X, y = make_problem("softmax", 5, 3, m=90, seed=6)
    lams = [0.0, 1.0, 10.0, 100.0]
    together = [l2fast.Network([5, 8, 3], lam=lam, backend="cuda", dtype=dtype, seed=2) for lam in lams]
    reference = [l2fast.Network([5, 8, 3], lam=lam, backend="numpy", dtype=dtype, seed=2) for lam in lams]
    histories = l2fast.fit_together(together, X, y, epochs=3, lr=0.05, batch_size=16)
    ref_histories = l2fast.fit_together(reference, X, y, epochs=3, lr=0.05, batch_size=16)
    for net, ref, history, ref_history in zip(together, reference, histories, ref_histories):
        for p, q in zip(parameters(net), parameters(ref)):
            assert_parity(p, q, dtype, f"lam={net.lam}: parameters")
        assert_parity(history.loss, ref_history.loss, dtype, "history.loss")


def test_heavy_decay_agrees(cupy):
    X, y = make_problem("softmax", 5, 3, m=40, seed=3)
    ref, gpu = pair([5, 4, 3], "tanh", "softmax", "float64", lam=1.2 * 40 / 0.1)
    for net in (ref, gpu):
        net.fit(X, y, epochs=2, lr=0.1, batch_size=8)
    for p, q in zip(parameters(gpu), parameters(ref)):
        assert_parity(p, q, "float64", "parameters")


def test_cupy_arrays_are_used_in_place_and_predictions_keep_the_input_type(cupy):
    X, y = make_problem("softmax", 4, 3, m=64, seed=0)
    X_gpu, y_gpu = cupy.asarray(X), cupy.asarray(y)
    net = l2fast.Network([4, 5, 3], backend="cuda", dtype="float64", seed=0)
    assert net._backend.features(X_gpu, 4, np.dtype("float64")) is X_gpu
    twin = l2fast.Network([4, 5, 3], backend="cuda", dtype="float64", seed=0)
    net.fit(X_gpu, y_gpu, epochs=2, batch_size=16)
    twin.fit(X, y, epochs=2, batch_size=16)
    for p, q in zip(parameters(net), parameters(twin)):
        np.testing.assert_array_equal(p, q)
    assert isinstance(net.predict(X_gpu), cupy.ndarray) and isinstance(net.predict(X), np.ndarray)
    np.testing.assert_array_equal(cupy.asnumpy(net.predict_proba(X_gpu)), net.predict_proba(X))
    with pytest.raises(ValueError, match="y: class labels must lie in"):
        net.fit(X_gpu, y_gpu + 5)


def test_torch_cuda_tensors_go_in_without_a_host_copy():
    real_cupy()
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch has no CUDA device here")
    X, y = make_problem("softmax", 4, 3, m=64, seed=0)
    X_t, y_t = torch.from_numpy(X).cuda(), torch.from_numpy(y).cuda()
    net = l2fast.Network([4, 5, 3], backend="cuda", dtype="float64", seed=0)
    twin = l2fast.Network([4, 5, 3], backend="cuda", dtype="float64", seed=0)
    net.fit(X_t, y_t, epochs=2, batch_size=16)
    twin.fit(X, y, epochs=2, batch_size=16)
    for p, q in zip(parameters(net), parameters(twin)):
        np.testing.assert_array_equal(p, q)
    out = net.predict_proba(X_t)
    assert isinstance(out, torch.Tensor) and out.is_cuda
    np.testing.assert_array_equal(out.cpu().numpy(), twin.predict_proba(X))


def test_save_load_and_pickle_round_trips_from_the_gpu(cupy, tmp_path):
    import pickle

    X, y = make_problem("softmax", 4, 3, m=40, seed=0)
    net = l2fast.Network([4, 5, 3], lam=0.5, backend="cuda", seed=0)
    net.fit(X, y, epochs=2, batch_size=8, optimizer="adam")
    net.save(tmp_path / "gpu.npz")
    for back in (l2fast.load(tmp_path / "gpu.npz"), pickle.loads(pickle.dumps(net))):
        assert back.backend == "cuda"
        for p, q in zip(parameters(back), parameters(net)):
            np.testing.assert_array_equal(p, q)
        back.fit(X, y, epochs=1, batch_size=8, optimizer="adam")
    on_cpu = l2fast.load(tmp_path / "gpu.npz", backend="cpu")
    assert_parity(on_cpu.predict_proba(X), net.predict_proba(X), "float32", "cpu copy of a GPU network")


def test_nan_input_on_the_gpu_is_refused_before_anything_changes(cupy):
    X, y = make_problem("softmax", 4, 3, m=20, seed=0)
    X_gpu = cupy.asarray(X)
    X_gpu[3, 1] = cupy.nan
    net = l2fast.Network([4, 3], backend="cuda", seed=0)
    before = parameters(net)
    with pytest.raises(ValueError, match="X: contains NaN or infinity"):
        net.fit(X_gpu, y)
    for p, q in zip(parameters(net), before):
        np.testing.assert_array_equal(p, q)


@pytest.mark.filterwarnings("ignore::l2fast.NoisyChoiceWarning")  # 3 epochs: a flat grid
def test_lambda_selection_runs_on_the_device(cupy):
    X, y = make_problem("softmax", 5, 3, m=80, seed=9)
    X_dev, y_dev = make_problem("softmax", 5, 3, m=40, seed=10)
    options = dict(layer_sizes=[5, 8, 3], epochs=3, lr=0.05, batch_size=16, dtype="float64", progress=False)
    on_gpu = l2fast.select_lambda(X, y, X_dev, y_dev, [0.0, 1.0, 10.0], backend="cuda", **options)
    reference = l2fast.select_lambda(X, y, X_dev, y_dev, [0.0, 1.0, 10.0], backend="numpy", **options)
    assert on_gpu.best_lam == reference.best_lam
    assert_parity([r.dev_loss for r in on_gpu.results], [r.dev_loss for r in reference.results], "float64",
                  "development losses")


def test_the_estimators_run_on_the_device(cupy):
    pytest.importorskip("sklearn", reason="scikit-learn is not installed")
    from l2fast.sklearn import L2MLPClassifier

    X, y = make_problem("softmax", 5, 3, m=80, seed=9)
    X_dev, _ = make_problem("softmax", 5, 3, m=40, seed=10)
    clf = L2MLPClassifier(hidden_layer_sizes=(8,), epochs=3, backend="cuda", random_state=0).fit(X, y)
    twin = L2MLPClassifier(hidden_layer_sizes=(8,), epochs=3, backend="numpy", random_state=0).fit(X, y)
    np.testing.assert_array_equal(clf.predict(X_dev), twin.predict(X_dev))
