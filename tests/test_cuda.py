"""backend="cuda" against the NumPy reference: on a GPU ("gpu") and on the host stand-in of
tests/cuda_emulation.py ("emulated": the backend's own code, its kernels compiled for the host,
cuBLAS's semantics in NumPy, graphs recorded and replayed), which runs everywhere. Without a usable
GPU the "gpu" variants are left out and test_a_gpu_is_here skips, once, saying why."""
import sys
import warnings

import numpy as np
import pytest

import l2fast
from l2fast.backends import cuda as cuda_backend
from l2fast.backends import get_backend
from l2fast.testing import (assert_accuracy_parity, assert_labels_agree, assert_network_parity, assert_parity,
                            make_problem, near_ties, parameters, twin_networks)

from cuda_emulation import FakeCublasLibrary, FakeGraph, FakeStream, emulated_gpu


def gpu_missing():
    """None where backend='cuda' runs on a real GPU, else why not."""
    try:
        get_backend("cuda")
    except l2fast.BackendUnavailableError as exc:
        return str(exc)
    return None


GPU_MISSING = gpu_missing()
needs_gpu = pytest.mark.skipif(GPU_MISSING is not None, reason="no GPU (test_a_gpu_is_here says why)")


def test_a_gpu_is_here():
    if GPU_MISSING is not None:
        pytest.skip(f"no GPU for backend='cuda' here, so only the emulated variants run: {GPU_MISSING}")
    import cupy

    assert cuda_backend.device_summary()["gpu"] and cupy.cuda.runtime.getDeviceCount() >= 1


@pytest.fixture(params=["emulated"] + (["gpu"] if GPU_MISSING is None else []))
def cupy(request, monkeypatch, kernel_folder):
    """The array module of the device the cuda backend runs on in this test."""
    if request.param == "gpu":
        get_backend("cuda")  # binds the real CuPy again after an emulated test
        import cupy

        yield cupy
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
    assert_accuracy_parity(history.accuracy, ref_history.accuracy, len(X), "history.accuracy")
    assert_accuracy_parity(history.val_accuracy, ref_history.val_accuracy, len(X_val), "history.val_accuracy")
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


def trained_twins(data, host_data):
    """Two equal cuda networks [4, 5, 3] trained alike, one on `data` (tensors), the other on the same
    values from NumPy; asserts they end equal and returns (net, twin)."""
    net = l2fast.Network([4, 5, 3], backend="cuda", dtype="float64", seed=0)
    twin = l2fast.Network([4, 5, 3], backend="cuda", dtype="float64", seed=0)
    net.fit(*data, epochs=2, batch_size=16)
    twin.fit(*host_data, epochs=2, batch_size=16)
    for p, q in zip(parameters(net), parameters(twin)):
        np.testing.assert_array_equal(p, q)
    return net, twin


@needs_gpu
@pytest.mark.parametrize("requires_grad", [False, True])
def test_torch_cuda_tensors_go_in_without_a_host_copy(requires_grad):
    get_backend("cuda")
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch has no CUDA device here")
    X, y = make_problem("softmax", 4, 3, m=64, seed=0)
    X_t, y_t = torch.from_numpy(X).cuda().requires_grad_(requires_grad), torch.from_numpy(y).cuda()
    net, twin = trained_twins((X_t, y_t), (X, y))
    out = net.predict_proba(X_t)
    assert isinstance(out, torch.Tensor) and out.is_cuda
    np.testing.assert_array_equal(out.cpu().numpy(), twin.predict_proba(X))
    np.testing.assert_array_equal(net.predict(X_t).cpu().numpy(), twin.predict(X))


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
    dev_losses = sorted(r.dev_loss for r in reference.results)
    if dev_losses[1] - dev_losses[0] > 1e-9 * dev_losses[0]:  # not a near tie of two lambdas
        assert on_gpu.best_lam == reference.best_lam
    assert_parity([r.dev_loss for r in on_gpu.results], [r.dev_loss for r in reference.results], "float64",
                  "development losses")


def test_the_estimators_run_on_the_device(cupy):
    pytest.importorskip("sklearn", reason="scikit-learn is not installed")
    from l2fast.sklearn import L2MLPClassifier

    X, y = make_problem("softmax", 5, 3, m=80, seed=9)
    X_dev, _ = make_problem("softmax", 5, 3, m=40, seed=10)
    clf = L2MLPClassifier(hidden_layer_sizes=(8,), epochs=3, tol=None, backend="cuda", random_state=0).fit(X, y)
    twin = L2MLPClassifier(hidden_layer_sizes=(8,), epochs=3, tol=None, backend="numpy", random_state=0).fit(X, y)
    assert_labels_agree(clf.predict(X_dev), twin.predict(X_dev), near_ties(twin.predict_proba(X_dev), "float64"))


# -- what a review found (issue 17) --------------------------------------------------------------------


def captured_graphs(net):
    return [g for graphs in net._backend._graphs.values() for g in graphs.values()]


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_32_step_graph_replays_and_agrees(cupy, dtype):
    """Benchmark D replays the 32-step graph ~48 times an epoch: 40 full batches here, one eager, one
    launch of 32 steps, seven of one, and the partial batch."""
    X, y = make_problem("softmax", 6, 3, m=16 * 40 + 3, seed=31)
    ref, gpu = pair([6, 7, 3], "tanh", "softmax", dtype)
    for net in (ref, gpu):
        net.fit(X, y, epochs=2, lr=0.05, batch_size=16)
    for p, p_ref in zip(parameters(gpu), parameters(ref)):
        assert_parity(p, p_ref, dtype, "parameters after fit")
    graphs = next(iter(gpu._backend._graphs.values()))
    assert set(graphs) == {cuda_backend.STEPS_PER_GRAPH, 1} and all(g is not None for g in graphs.values())
    if isinstance(graphs[32], FakeGraph):
        assert graphs[32].launches == 2 and graphs[1].launches == 2 * 7


def test_a_schedule_changes_no_graph(cupy):
    """The learning rate is read on the device: a decaying rate over four epochs replays the graph
    captured in the first, and the parameters still follow the reference."""
    X, y = make_problem("softmax", 6, 3, m=197, seed=23)
    ref, gpu = pair([6, 7, 3], "relu", "softmax", "float64")
    for net in (ref, gpu):
        history = net.fit(X, y, epochs=4, lr=0.05, batch_size=16, schedule="exponential")
    assert len(set(history.lr)) == 4
    for p, p_ref in zip(parameters(gpu), parameters(ref)):
        assert_parity(p, p_ref, "float64", "parameters after a scheduled fit")
    assert gpu._backend.captures == 1, f"{gpu._backend.captures} captures for one graph"
    if isinstance(captured_graphs(gpu)[0], FakeGraph):
        assert FakeStream.captures == 1


@pytest.mark.parametrize("optimizer, lrs", [("momentum", None), ("sgd", [0.05, 0.02, 0.01])])
def test_fit_together_captures_each_network_once(cupy, optimizer, lrs):
    """fit_together with an optimizer (or unequal rates) trains the networks one after another on one
    backend: each keeps its graph from epoch to epoch instead of re-capturing."""
    X, y = make_problem("softmax", 5, 3, m=90, seed=6)
    nets = [l2fast.Network([5, 8, 3], lam=lam, backend="cuda", dtype="float64", seed=2) for lam in (0.0, 1.0, 10.0)]
    refs = [l2fast.Network([5, 8, 3], lam=lam, backend="numpy", dtype="float64", seed=2) for lam in (0.0, 1.0, 10.0)]
    if lrs is not None:  # unequal rates: each network at its own epoch count in a schedule
        for group in (nets, refs):
            for net, epochs in zip(group, (0, 2, 5)):
                if epochs:
                    net.fit(X, y, epochs=epochs, lr=0.05, batch_size=16, schedule="exponential")
    backend = nets[0]._backend
    before = backend.captures
    for group in (nets, refs):
        l2fast.fit_together(group, X, y, epochs=4, lr=0.05, batch_size=16, optimizer=optimizer,
                            schedule="exponential" if lrs is not None else None)
    for net, ref in zip(nets, refs):
        for p, q in zip(parameters(net), parameters(ref)):
            assert_parity(p, q, "float64", f"lam={net.lam}: parameters")
    assert backend.captures - before == 3, f"{backend.captures - before} captures for 3 networks x 4 epochs"


def test_a_stacked_sweep_captures_once(cupy):
    X, y = make_problem("softmax", 5, 3, m=90, seed=6)
    nets = [l2fast.Network([5, 8, 3], lam=lam, backend="cuda", dtype="float64", seed=2) for lam in (0.0, 1.0, 10.0)]
    l2fast.fit_together(nets, X, y, epochs=4, lr=0.05, batch_size=16, schedule="exponential")
    assert nets[0]._backend.captures == 1


@pytest.mark.parametrize("what", ["activation", "loss"])
def test_a_changed_activation_or_loss_replays_no_stale_graph(cupy, what):
    """The same arrays on the device (so the same addresses) trained again with another activation (or
    loss): the step graph of the old settings must not be replayed. The public attributes are read-only
    now; the private ones stand in for any network that reuses those arrays with other settings."""
    X, y = make_problem("logistic", 6, 1, m=197, seed=23)
    X_dev, y_dev = cupy.asarray(X), cupy.asarray(y.astype(np.float64))
    ref, gpu = pair([6, 7, 1], "relu", "logistic", "float64")
    for net, data in ((ref, (X, y.astype(np.float64))), (gpu, (X_dev, y_dev))):
        net.fit(*data, epochs=1, lr=0.05, batch_size=16)
        if what == "activation":
            net._activation = "tanh"
        else:  # the single output trained as a regression: same shapes, another loss code
            net._loss = "squared_error"
        net.fit(*data, epochs=1, lr=0.05, batch_size=16)
    for p, p_ref in zip(parameters(gpu), parameters(ref)):
        assert_parity(p, p_ref, "float64", f"parameters after the {what} changed")


def test_every_backend_on_a_device_shares_one_cublas_handle(emulated):
    X, y = make_problem("softmax", 4, 3, m=40, seed=0)
    nets = [l2fast.Network([4, 5, 3], lam=lam, backend="cuda", seed=0) for lam in range(6)]
    for net in nets:
        net.fit(X, y, epochs=1, batch_size=8)
    assert FakeCublasLibrary.created == 1 and FakeCublasLibrary.destroyed == 0
    assert len({id(net._backend._shared().blas) for net in nets}) == 1
    cuda_backend.release()
    assert FakeCublasLibrary.destroyed == 1
    nets[0].fit(X, y, epochs=1, batch_size=8)  # a new context after the release: a new handle, new graphs
    assert FakeCublasLibrary.created == 2


class FakeTorchTensor:
    """What torch's CUDA tensor does with requires_grad=True: __cuda_array_interface__ raises
    RuntimeError (which hasattr passes on), detach() gives a tensor that shares the memory."""

    __module__ = "torch"

    def __init__(self, array, requires_grad):
        self.array, self.requires_grad = array, requires_grad

    @property
    def __cuda_array_interface__(self):
        if self.requires_grad:
            raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires grad. "
                               "If gradients aren't required, use var.detach() to get Variable that doesn't require grad.")
        return {"shape": self.array.shape}

    def __array__(self, dtype=None, copy=None):
        assert not self.requires_grad, "torch refuses numpy() on a tensor that requires grad"
        return np.asarray(self.array, dtype=dtype)

    def __len__(self):
        return len(self.array)

    def detach(self):
        return FakeTorchTensor(self.array, False)


def test_torch_tensors_that_require_grad_are_detached(emulated, monkeypatch):
    import types

    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(from_dlpack=lambda a: ("torch", a)))
    X, y = make_problem("softmax", 4, 3, m=40, seed=0)
    X_t = FakeTorchTensor(emulated.asarray(X), requires_grad=True)
    net, twin = trained_twins((X_t, y), (X, y))
    kind, proba = net.predict_proba(X_t)
    assert kind == "torch"
    np.testing.assert_array_equal(proba, twin.predict_proba(X))


def test_parity_allows_a_label_flipped_at_a_near_tie_only():
    """A backend that rounds differently may pick the other label where the reference's probabilities
    tie; nowhere else."""
    X = np.array([[0.0, 0.0], [1.0, 2.0], [-1.0, 0.5], [2.0, -1.0]])
    y = np.array([1, 1, 0, 1])
    ref = l2fast.Network([2, 1], loss="logistic", backend="numpy", dtype="float64", seed=0)
    near = l2fast.Network([2, 1], loss="logistic", backend="numpy", dtype="float64", seed=0)
    near.set_parameters(ref.weights, [np.array([-1e-13])])  # record 0: p = 0.5 against 0.5 - 2.5e-14
    assert ref.predict(X)[0] == 1 and near.predict(X)[0] == 0
    assert_network_parity(near, ref, X, y, "float64")
    far = l2fast.Network([2, 1], loss="logistic", backend="numpy", dtype="float64", seed=0)
    far.set_parameters([-w for w in ref.weights], ref.biases)
    with pytest.raises(AssertionError, match="away from a near tie"):
        assert_labels_agree(far.predict(X), ref.predict(X), near_ties(ref.predict_proba(X), "float64"))
    with pytest.raises(AssertionError, match="records apart"):
        assert_accuracy_parity([0.5, 0.75], [0.5, 0.25], 4)


def test_the_gpu_benchmark_runs_and_records_its_targets(emulated, monkeypatch, tmp_path):
    """benchmarks/gpu_check.sh's benchmark, end to end on the host stand-in with tiny C and D (the
    real ones need a GPU): every contender timed, the targets' ratios and the device in the record."""
    import json

    from l2fast import bench, bench_solution

    tiny = [bench.Config("C", "two wide hidden layers", [12, 16, 16, 3], 100, 16),
            bench.Config("D", "small network, overhead-bound", [8, 8, 3], 64, 8)]
    monkeypatch.setattr(bench, "CONFIGS", tiny)
    monkeypatch.setattr(bench_solution, "GPU_LBFGS_SIZE", (300, 5))
    path = tmp_path / "gpu-bench.json"
    with open(tmp_path / "gpu-bench.txt", "w") as out:
        record = bench.run_gpu(repeats=1, json_path=path, out=out)
    assert json.loads(path.read_text())["gpu"]["gpu"] == "host stand-in"
    assert set(record["configs"]) == {"C", "D"} and record["sweep"]["lambdas"] == 16
    c = record["configs"]["C"]
    assert {"l2fast cuda", bench.GpuGemmOnlyContender.name} <= set(c["results"])
    assert c["cuda_graphs"]["used"] and c["cuda_graphs"]["captures"] == 1
    assert record["targets"]["C"]["ratio"] == "l2fast cuda / GEMMs alone on the GPU (limit)"
    assert record["targets"]["sweep"]["value"] > 0
    assert "target: l2fast cuda / GEMMs alone" in (tmp_path / "gpu-bench.txt").read_text()
    lbfgs = record["lbfgs"]["results"]
    assert set(lbfgs) == {f"l2fast {b} lbfgs {d}" for b in ("cuda", "cpu") for d in ("float64", "float32")}
    assert all(0 <= r["relative_gap"] < 1e-6 for r in lbfgs.values())


# -- training to the answer on the GPU: sample weights and L-BFGS ---------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("graphs", [True, False], ids=["graphs", "eager"])
def test_weighted_passes_and_training_agree_with_the_reference(cupy, dtype, graphs):
    X, y = make_problem("softmax", 5, 3, m=16 * 40 + 3, seed=41)
    w = np.random.default_rng(41).uniform(0, 2, size=len(X))
    w[::5] = 0
    ref, gpu = pair([5, 6, 3], "tanh", "softmax", dtype, graphs=graphs)
    assert_parity(gpu.cost(X, y, sample_weight=w), ref.cost(X, y, sample_weight=w), dtype, "weighted cost")
    for g, g_ref in zip(gpu.gradients(X, y, w)[0], ref.gradients(X, y, w)[0]):
        assert_parity(g, g_ref, dtype, "weighted gradients")
    for net in (ref, gpu):
        net.fit(X, y, epochs=2, lr=0.05, batch_size=16, sample_weight=w)
    for p, p_ref in zip(parameters(gpu), parameters(ref)):
        assert_parity(p, p_ref, dtype, "parameters after weighted training")


@pytest.mark.parametrize("dtype", DTYPES)
def test_lbfgs_agrees_with_the_reference_iteration_by_iteration(cupy, dtype):
    X, y = make_problem("logistic", 6, 1, m=300, seed=42)
    ref, gpu = pair([6, 4, 1], "tanh", "logistic", dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", l2fast.ConvergenceWarning)  # 8 iterations: not converged, on purpose
        histories = [net.fit(X, y, epochs=8, optimizer="lbfgs") for net in (ref, gpu)]
    assert histories[0].n_iter == histories[1].n_iter == 8
    assert_parity(histories[1].cost, histories[0].cost, dtype, "costs per iteration")
    for p, p_ref in zip(parameters(gpu), parameters(ref)):
        assert_parity(p, p_ref, dtype, "parameters after L-BFGS")
