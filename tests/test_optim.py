"""Optimizers and schedules: the reference's formulas, cpu against it, PyTorch against it, resuming."""
import json
import math

import numpy as np
import pytest

import l2fast
from l2fast import _core, optim
from l2fast.backends.cpu import core_options
from l2fast.backends.numpy_ref import optimizer_step
from l2fast.testing import assert_parity, make_problem, parameters, twin_networks

DTYPES = ["float64", "float32"]
OPTIMIZERS = {
    "sgd": l2fast.SGD(),
    "momentum": l2fast.Momentum(0.9),
    "nesterov": l2fast.Momentum(0.8, nesterov=True),
    "adam": l2fast.Adam(),
    "momentum-decoupled": l2fast.Momentum(0.9, decoupled=True),
    "nesterov-decoupled": l2fast.Momentum(0.7, nesterov=True, decoupled=True),
    "adamw": l2fast.Adam(beta1=0.8, beta2=0.99, eps=1e-6, decoupled=True),
    "adam-eps-on-v": l2fast.Adam(eps=1e-3, eps_on_v=True),  # scikit-learn's placement; eps large to tell
}




# -- the reference's update against the formulas ------------------------------------------------------


def test_first_adam_step_moves_each_weight_by_lr_against_its_gradient_sign():
    # At t = 1, M/(1 - b1) = g and sqrt(V/(1 - b2)) = |g|: the step is lr g / (|g| + eps).
    rng = np.random.default_rng(0)
    P, G = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    before = P.copy()
    optimizer_step(P, G, [np.zeros_like(P), np.zeros_like(P)], 0.01, 0.0, l2fast.Adam(eps=1e-12), 1)
    np.testing.assert_allclose(before - P, 0.01 * np.sign(G), rtol=1e-9)


def test_momentum_accumulates_the_velocity_of_the_l2_gradient():
    P, G = np.array([2.0, -1.0]), np.array([0.5, 0.25])
    V = np.array([1.0, 1.0])
    decay, lr, mu = 0.1, 0.5, 0.9
    g = G + decay * np.array([2.0, -1.0])
    optimizer_step(P, G, [V], lr, decay, l2fast.Momentum(mu), 3)
    np.testing.assert_allclose(V, mu * 1.0 + g)
    np.testing.assert_allclose(P, np.array([2.0, -1.0]) - lr * (mu + g))


@pytest.mark.parametrize("name", ["momentum", "nesterov", "adam"])
def test_coupled_and_decoupled_agree_without_lambda_and_differ_with_it(name):
    X, y = make_problem("softmax", 5, 3, m=40, seed=2)
    coupled = OPTIMIZERS[name]
    decoupled = type(coupled)(**{**optim.hyperparameters(coupled), "decoupled": True})
    results = {}
    for lam in (0.0, 4.0):
        for spec in (coupled, decoupled):
            net = l2fast.Network([5, 6, 3], lam=lam, backend="numpy", dtype="float64", seed=1)
            net.fit(X, y, epochs=3, lr=0.05, batch_size=8, optimizer=spec)
            results[lam, spec.decoupled] = parameters(net)
    for a, b in zip(results[0.0, False], results[0.0, True]):
        np.testing.assert_array_equal(a, b)
    assert max(np.abs(a - b).max() for a, b in zip(results[4.0, False], results[4.0, True])) > 1e-6


def test_plain_sgd_is_momentum_zero_and_decoupled_sgd():
    X, y = make_problem("softmax", 5, 3, m=40, seed=2)
    runs = []
    for spec in ("sgd", l2fast.Momentum(0.0), l2fast.Momentum(0.0, decoupled=True)):
        net = l2fast.Network([5, 6, 3], lam=3.0, backend="numpy", dtype="float64", seed=1)
        net.fit(X, y, epochs=3, lr=0.1, batch_size=8, optimizer=spec)
        runs.append(parameters(net))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("spec", ["momentum", "nesterov", "adam"])
def test_coupled_optimizers_find_the_minimum_of_j(spec):
    # A convex J (logistic regression): coupled L2 drives dJ/dW, penalty included, to zero.
    X, y = make_problem("logistic", 4, 1, m=60, seed=3)
    net = l2fast.Network([4, 1], loss="logistic", lam=5.0, backend="numpy", dtype="float64", seed=0)
    net.fit(X, y, epochs=1500, lr=0.02, shuffle=False, optimizer=spec)
    dW, db = net.gradients(X, y)
    assert np.abs(dW[0]).max() < 1e-6 and np.abs(db[0]).max() < 1e-6


# -- cpu against the reference ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_cpu_fit_matches_the_reference(loss_out, dtype, name):
    loss, n_out = loss_out
    X, y = make_problem(loss, 6, n_out, m=53, seed=23)  # 3 batches of 16 and a partial one of 5
    X_val, y_val = make_problem(loss, 6, n_out, m=11, seed=24)
    ref, fast = twin_networks([6, 7, 5, n_out], "tanh", loss, dtype, "cpu", lam=2.0)
    fit = dict(epochs=4, lr=0.02, batch_size=16, validation_data=(X_val, y_val), optimizer=OPTIMIZERS[name],
               schedule=l2fast.ExponentialDecay(0.9))
    ref_history, history = ref.fit(X, y, **fit), fast.fit(X, y, **fit)
    for p, p_ref in zip(parameters(fast), parameters(ref)):
        assert p.dtype == np.dtype(dtype)
        assert_parity(p, p_ref, dtype, f"{name}: parameters after fit")
    state, ref_state = fast.optimizer_state, ref.optimizer_state
    assert state.step == ref_state.step == 16
    for slot, ref_slot in zip(state.slots, ref_state.slots):
        for a, b in zip(slot, ref_slot):
            assert_parity(a, b, dtype, f"{name}: optimizer state")
    assert_parity(history.val_cost, ref_history.val_cost, dtype, "history.val_cost")


@pytest.mark.parametrize("name", ["nesterov", "adamw"])
def test_cpu_matches_the_reference_for_every_activation(activation, name):
    X, y = make_problem("softmax", 5, 3, m=37, seed=5)
    ref, fast = twin_networks([5, 8, 3], activation, "softmax", "float64", "cpu", lam=2.0)
    for net in (ref, fast):
        net.fit(X, y, epochs=3, lr=0.01, batch_size=10, optimizer=OPTIMIZERS[name])
    for p, p_ref in zip(parameters(fast), parameters(ref)):
        assert_parity(p, p_ref, "float64", f"{activation}: parameters")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("n", [7, 3_000_001], ids=["small", "threaded"])
def test_core_optimizer_step_matches_the_reference(dtype, name, n):
    rng = np.random.default_rng(n)
    spec = OPTIMIZERS[name]
    P, G = rng.normal(size=n).astype(dtype), rng.normal(size=n).astype(dtype)
    slots = [np.abs(rng.normal(size=n)).astype(dtype) for _ in range(spec.n_slots)]
    P_ref, slots_ref = P.copy(), [s.copy() for s in slots]
    optimizer_step(P_ref, G, slots_ref, 0.01, 0.003, spec, 5)
    _core.optimizer_step(P, G, slots, 0.01, 0.003, 5, **core_options(spec))
    assert_parity(P, P_ref, dtype, "P")
    for s, s_ref in zip(slots, slots_ref):
        assert_parity(s, s_ref, dtype, "state")


def test_fit_together_with_an_optimizer_equals_separate_fits():
    X, y = make_problem("softmax", 5, 3, m=45, seed=6)
    for backend in ("numpy", "cpu"):
        together = [l2fast.Network([5, 6, 3], lam=lam, backend=backend, dtype="float64", seed=2) for lam in (0, 1, 9)]
        alone = [l2fast.Network([5, 6, 3], lam=lam, backend=backend, dtype="float64", seed=2) for lam in (0, 1, 9)]
        l2fast.fit_together(together, X, y, epochs=3, lr=0.01, batch_size=10, optimizer="adam")
        for net in alone:
            net.fit(X, y, epochs=3, lr=0.01, batch_size=10, optimizer="adam")
        for a, b in zip(together, alone):
            for p, q in zip(parameters(a), parameters(b)):
                np.testing.assert_array_equal(p, q)


# -- PyTorch ------------------------------------------------------------------------------------------

TORCH_OPTIMIZERS = {
    "sgd": (l2fast.SGD(), lambda torch, groups: torch.optim.SGD(groups, lr=0.02)),
    "momentum": (l2fast.Momentum(0.9), lambda torch, groups: torch.optim.SGD(groups, lr=0.02, momentum=0.9)),
    "nesterov": (l2fast.Momentum(0.9, nesterov=True),
                 lambda torch, groups: torch.optim.SGD(groups, lr=0.02, momentum=0.9, nesterov=True)),
    "adam": (l2fast.Adam(0.85, 0.99, 1e-7), lambda torch, groups: torch.optim.Adam(groups, lr=0.02, betas=(0.85, 0.99),
                                                                                   eps=1e-7)),
    "adamw": (l2fast.Adam(decoupled=True), lambda torch, groups: torch.optim.AdamW(groups, lr=0.02)),
}


@pytest.mark.parametrize("name", TORCH_OPTIMIZERS)
@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_matches_pytorch_from_the_same_start(name, backend):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed: its parity test needs it")
    spec, make = TORCH_OPTIMIZERS[name]
    X, y = make_problem("softmax", 6, 4, m=48, seed=23)
    lam, epochs, batch = 3.0, 5, 16
    net = l2fast.Network([6, 7, 5, 4], lam=lam, backend=backend, dtype="float64", seed=4)
    linears = [torch.nn.Linear(W.shape[1], W.shape[0], dtype=torch.float64) for W in net.weights]
    with torch.no_grad():
        for linear, W, b in zip(linears, net.weights, net.biases):
            linear.weight.copy_(torch.from_numpy(W))
            linear.bias.copy_(torch.from_numpy(b))
    model = torch.nn.Sequential(linears[0], torch.nn.ReLU(), linears[1], torch.nn.ReLU(), linears[2])
    # (lam/m) on the weights only: the penalty never touches a bias.
    opt = make(torch, [{"params": [lin.weight for lin in linears], "weight_decay": lam / len(X)},
                       {"params": [lin.bias for lin in linears], "weight_decay": 0.0}])
    X_t, y_t = torch.from_numpy(X), torch.from_numpy(y)
    for _ in range(epochs):
        for start in range(0, len(X), batch):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(X_t[start:start + batch]), y_t[start:start + batch]).backward()
            opt.step()
    net.fit(X, y, epochs=epochs, lr=0.02, batch_size=batch, shuffle=False, optimizer=spec)
    theirs = [lin.weight.detach().numpy() for lin in linears] + [lin.bias.detach().numpy() for lin in linears]
    for p, q in zip(parameters(net), theirs):
        assert_parity(p, q, "float64", f"{name} against PyTorch")


# -- schedules ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule, factors", [
    (None, [1, 1, 1, 1, 1]),
    ("constant", [1, 1, 1, 1, 1]),
    (l2fast.InverseScaling(0.5), [1, 2 ** -0.5, 3 ** -0.5, 0.5, 5 ** -0.5]),
    (l2fast.StepDecay(2, 0.5), [1, 1, 0.5, 0.5, 0.25]),
    (l2fast.ExponentialDecay(0.9), [1, 0.9, 0.81, 0.729, 0.6561]),
])
def test_schedules_set_each_epochs_learning_rate(schedule, factors):
    X, y = make_problem("softmax", 4, 3, m=20, seed=0)
    net = l2fast.Network([4, 3], seed=0)
    history = net.fit(X, y, epochs=5, lr=0.2, schedule=schedule)
    np.testing.assert_allclose(history.lr, 0.2 * np.array(factors), rtol=1e-12)


def test_schedule_steps_change_the_training_as_the_reference_says():
    # Epoch e of StepDecay runs with lr gamma^(e // step): two constant-lr fits, lr then lr/2, take a
    # network to the same place as one fit of 2 epochs with StepDecay(1, 0.5).
    X, y = make_problem("softmax", 4, 3, m=20, seed=0)
    scheduled = l2fast.Network([4, 5, 3], lam=1.0, backend="numpy", dtype="float64", seed=0)
    scheduled.fit(X, y, epochs=2, lr=0.2, batch_size=6, schedule=l2fast.StepDecay(1, 0.5))
    by_hand = l2fast.Network([4, 5, 3], lam=1.0, backend="numpy", dtype="float64", seed=0)
    by_hand.fit(X, y, epochs=1, lr=0.2, batch_size=6)
    by_hand.fit(X, y, epochs=1, lr=0.1, batch_size=6)
    for p, q in zip(parameters(scheduled), parameters(by_hand)):
        np.testing.assert_array_equal(p, q)


def test_reduce_on_plateau_cuts_the_rate_after_patience_epochs_without_improvement():
    X, y = make_problem("softmax", 4, 3, m=30, seed=0)
    X_val, y_val = make_problem("softmax", 4, 3, m=30, seed=1)
    net = l2fast.Network([4, 3], seed=0)
    # A relative threshold of 0.9: no epoch improves that much, so only the first counts as progress.
    plateau = l2fast.ReduceOnPlateau(factor=0.5, patience=1, threshold=0.9, min_lr=0.03)
    history = net.fit(X, y, epochs=8, lr=0.2, validation_data=(X_val, y_val), schedule=plateau)
    assert history.lr == [0.2, 0.2, 0.2, 0.1, 0.1, 0.05, 0.05, 0.03]
    with pytest.raises(ValueError, match="schedule: ReduceOnPlateau watches the validation cost"):
        l2fast.Network([4, 3]).fit(X, y, schedule="plateau")


# -- resuming -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("name", ["nesterov", "adamw"])
def test_training_resumes_exactly_after_a_second_fit_or_a_save_and_load(tmp_path, backend, name):
    X, y = make_problem("softmax", 5, 3, m=50, seed=9)
    X_val, y_val = make_problem("softmax", 5, 3, m=20, seed=10)
    fit = dict(lr=0.01, batch_size=8, optimizer=OPTIMIZERS[name], validation_data=(X_val, y_val),
               schedule=l2fast.ReduceOnPlateau(0.5, patience=0, threshold=0.01))
    make = lambda: l2fast.Network([5, 6, 3], lam=2.0, backend=backend, dtype="float64", seed=3)  # noqa: E731
    straight = make()
    whole = straight.fit(X, y, epochs=6, **fit)
    halves = make()
    first = halves.fit(X, y, epochs=3, **fit)
    path = tmp_path / "half.npz"
    halves.save(path)
    second = halves.fit(X, y, epochs=3, **fit)
    loaded = l2fast.load(path)
    third = loaded.fit(X, y, epochs=3, **fit)
    assert first.lr + second.lr == whole.lr and third.lr == second.lr
    assert first.loss + second.loss == whole.loss and third.loss == second.loss
    for net in (halves, loaded):
        for p, q in zip(parameters(net), parameters(straight)):
            np.testing.assert_array_equal(p, q)
        assert net.optimizer_state.step == straight.optimizer_state.step == 42


def test_another_optimizer_or_set_parameters_starts_the_state_afresh():
    X, y = make_problem("softmax", 4, 3, m=20, seed=0)
    net = l2fast.Network([4, 3], seed=0)
    net.fit(X, y, epochs=2, batch_size=5, optimizer="adam")
    assert net.optimizer_state.step == 8 and net.optimizer_state.optimizer == l2fast.Adam()
    net.fit(X, y, epochs=1, batch_size=5, optimizer="adam", schedule="exponential")  # schedule restarts alone
    assert (net.optimizer_state.step, net.optimizer_state.epoch) == (12, 1)
    net.fit(X, y, epochs=1, batch_size=5, optimizer="momentum")
    assert net.optimizer_state.step == 4 and len(net.optimizer_state.slots) == 1
    net.set_parameters(net.weights, net.biases)
    assert net.optimizer_state is None
    net.fit(X, y, epochs=1, optimizer="nesterov")
    net.reset_optimizer()
    assert net.optimizer_state is None


def test_early_stopping_restores_the_optimizer_state_of_the_best_epoch():
    X, y = make_problem("softmax", 4, 3, m=40, seed=0)
    X_val, y_val = make_problem("softmax", 4, 3, m=40, seed=1)  # unrelated labels: it overfits at once
    net = l2fast.Network([4, 16, 3], seed=0)
    history = net.fit(X, y, epochs=60, lr=0.05, batch_size=10, optimizer="adam", validation_data=(X_val, y_val),
                      patience=3)
    assert history.stopped_early
    assert net.optimizer_state.step == 4 * history.best_epoch


def test_divergence_leaves_the_state_of_the_last_finite_epoch():
    X, y = make_problem("squared_error", 4, 1, m=30, seed=0)
    X = X * 100
    net = l2fast.Network([4, 8, 1], loss="squared_error", dtype="float64", seed=0, backend="cpu")
    with pytest.raises(l2fast.DivergenceError) as caught:
        net.fit(X, y, epochs=50, lr=0.05, batch_size=10, optimizer="momentum")
    done = len(caught.value.history.loss)
    assert net.optimizer_state.step == 3 * done
    assert all(np.isfinite(v).all() for v in net.optimizer_state.slots[0])


# -- refusals -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, message", [
    (dict(optimizer="rmsprop"), "optimizer: expected one of"),
    (dict(optimizer=3), "optimizer: expected one of"),
    (dict(schedule="cosine"), "schedule: expected None"),
])
def test_unknown_optimizers_and_schedules_are_refused_and_change_nothing(bad, message):
    X, y = make_problem("softmax", 4, 3, m=20, seed=0)
    net = l2fast.Network([4, 3], seed=0)
    before = parameters(net)
    with pytest.raises(ValueError, match=message):
        net.fit(X, y, **bad)
    for p, q in zip(parameters(net), before):
        np.testing.assert_array_equal(p, q)
    assert net.optimizer_state is None


@pytest.mark.parametrize("make, error, message", [
    (lambda: l2fast.Momentum(1.0), ValueError, "momentum: must be < 1"),
    (lambda: l2fast.Momentum(-0.1), ValueError, "momentum: must be a finite number >= 0"),
    (lambda: l2fast.Momentum(0.9, nesterov="yes"), TypeError, "nesterov: expected True or False"),
    (lambda: l2fast.Adam(beta1=1.5), ValueError, "beta1: must be < 1"),
    (lambda: l2fast.Adam(beta2=math.nan), ValueError, "beta2: must be a finite number"),
    (lambda: l2fast.Adam(eps=0), ValueError, "eps: must be a finite number > 0"),
    (lambda: l2fast.Adam(decoupled=1), TypeError, "decoupled: expected True or False"),
    (lambda: l2fast.StepDecay(0), ValueError, "step_size: must be >= 1"),
    (lambda: l2fast.ExponentialDecay(-1), ValueError, "gamma: must be a finite number > 0"),
    (lambda: l2fast.ReduceOnPlateau(factor=1), ValueError, "factor: must be < 1"),
    (lambda: l2fast.InverseScaling(power=math.inf), ValueError, "power: must be a finite number > 0"),
])
def test_bad_hyperparameters_name_themselves(make, error, message):
    with pytest.raises(error, match=message):
        make()


def core_args(dtype="float64", n_slots=2):
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(3, 4)).astype(dtype), rng.normal(size=(2, 3)).astype(dtype)]
    biases = [np.zeros(3, dtype), np.zeros(2, dtype)]
    slots = [[np.zeros_like(a) for a in weights + biases] for _ in range(n_slots)]
    X, y = rng.normal(size=(6, 4)).astype(dtype), rng.integers(0, 2, size=6)
    return weights, biases, slots, X, y


@pytest.mark.parametrize("spoil, error, message", [
    (lambda s: s.pop(), ValueError, "slots: this optimizer keeps 2 state arrays per parameter, got 1"),
    (lambda s: s[0].pop(), ValueError, r"slots\[0\]: expected a list of 4 arrays"),
    (lambda s: s[1].__setitem__(1, np.zeros((3, 2))), ValueError, r"slots\[1\]\[1\]: expected shape \(2, 3\)"),
    (lambda s: s[0].__setitem__(2, np.zeros(3, np.float32)), TypeError, r"slots\[0\]\[2\]: expected dtype float64"),
    (lambda s: s[0].__setitem__(0, np.zeros((4, 3)).T), ValueError, r"slots\[0\]\[0\]: array must be C-contiguous"),
    (lambda s: s[1][3].setflags(write=False), ValueError, r"slots\[1\]\[3\]: array is read-only"),
    (lambda s: s[1].__setitem__(0, s[0][0]), ValueError, "slots: two arrays written in place share memory"),
])
def test_core_refuses_bad_state_arrays_before_touching_anything(spoil, error, message):
    weights, biases, slots, X, y = core_args()
    spoil(slots)
    before = [a.copy() for a in weights + biases]
    with pytest.raises(error, match=message):
        _core.train_epoch(weights, biases, X, y, None, 2, 0.1, 0.01, "relu", "softmax", slots=slots, step=0,
                          optimizer="adam")
    for a, b in zip(weights + biases, before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("options, message", [
    (dict(optimizer="rmsprop"), "optimizer: expected 'sgd', 'momentum' or 'adam'"),
    (dict(optimizer="adam", beta1=1.0), "beta1 must be in"),
    (dict(optimizer="adam", eps=-1.0), "eps must be a finite number > 0"),
    (dict(optimizer="momentum", momentum=math.nan), "momentum must be in"),
    (dict(optimizer="adam", step=-1), "step must be >= 0"),
])
def test_core_refuses_bad_hyperparameters(options, message):
    weights, biases, slots, X, y = core_args()
    options = {"slots": slots if options.get("optimizer") == "adam" else slots[:1], **options}
    with pytest.raises(ValueError, match=message):
        _core.train_epoch(weights, biases, X, y, None, 2, 0.1, 0.01, "relu", "softmax", **options)


def test_core_optimizer_step_refuses_overlap_and_bad_step():
    P, G = np.zeros(10), np.ones(10)
    with pytest.raises(ValueError, match="G: overlaps an array written in place"):
        _core.optimizer_step(P, G, [G], 0.1, 0.0, 1, optimizer="momentum")
    with pytest.raises(ValueError, match="step must be >= 1"):
        _core.optimizer_step(P, G, [np.zeros(10)], 0.1, 0.0, 0, optimizer="momentum")
    np.testing.assert_array_equal(P, 0)


def test_saved_optimizer_state_is_checked_on_load(tmp_path):
    X, y = make_problem("softmax", 3, 2, m=10, seed=0)
    net = l2fast.Network([3, 2], seed=0)
    net.fit(X, y, epochs=2, optimizer="adam")
    path = tmp_path / "adam.npz"
    net.save(path)
    with np.load(path) as archive:
        contents = {name: archive[name] for name in archive.files}
    assert sorted(n for n in contents if n.startswith("slot")) == ["slot0_W0", "slot0_b0", "slot1_W0", "slot1_b0"]
    metadata = json.loads(contents["metadata"].tobytes())
    for change, message in [
        (lambda m: m["optimizer"]["hyperparameters"].update(beta1=2.0), "beta1: must be < 1"),
        (lambda m: m["optimizer"].update(name="lbfgs"), "the optimizer is not one of"),
        (lambda m: m["optimizer"].update(step=-3), "step, epoch and bad_epochs must be integers"),
        (lambda m: m["optimizer"]["schedule"].update(parameters={"gamma": 0.5, "extra": 1}),
         "the schedule's parameters should be"),
    ]:
        edited = json.loads(json.dumps(metadata))
        change(edited)
        bad = dict(contents, metadata=np.frombuffer(json.dumps(edited).encode(), dtype=np.uint8))
        with open(tmp_path / "bad.npz", "wb") as file:
            np.savez(file, **bad)
        with pytest.raises(ValueError, match=message):
            l2fast.load(tmp_path / "bad.npz")
    missing = {k: v for k, v in contents.items() if k != "slot1_b0"}
    with open(tmp_path / "bad.npz", "wb") as file:
        np.savez(file, **missing)
    with pytest.raises(ValueError, match="slot1_b0 should be float32 of shape"):
        l2fast.load(tmp_path / "bad.npz")


def test_adam_eps_on_v_is_saved_and_files_from_before_it_load_as_the_default(tmp_path):
    X, y = make_problem("softmax", 3, 2, m=10, seed=0)
    net = l2fast.Network([3, 2], seed=0)
    net.fit(X, y, epochs=2, optimizer=l2fast.Adam(eps_on_v=True))
    path = tmp_path / "adam.npz"
    net.save(path)
    assert l2fast.load(path).optimizer_state.optimizer == l2fast.Adam(eps_on_v=True)
    with np.load(path) as archive:
        contents = {name: archive[name] for name in archive.files}
    metadata = json.loads(contents["metadata"].tobytes())
    del metadata["optimizer"]["hyperparameters"]["eps_on_v"]  # as written before the field existed
    with open(tmp_path / "old.npz", "wb") as file:
        np.savez(file, **dict(contents, metadata=np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8)))
    assert l2fast.load(tmp_path / "old.npz").optimizer_state.optimizer == l2fast.Adam()
    del metadata["optimizer"]["hyperparameters"]["beta1"]  # an older field is still required
    with open(tmp_path / "bad.npz", "wb") as file:
        np.savez(file, **dict(contents, metadata=np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8)))
    with pytest.raises(ValueError, match="the optimizer's parameters should be"):
        l2fast.load(tmp_path / "bad.npz")


def test_version_1_files_still_load(tmp_path):
    net = l2fast.Network([3, 4, 2], seed=0)
    path = tmp_path / "v2.npz"
    net.save(path)
    with np.load(path) as archive:
        contents = {name: archive[name] for name in archive.files}
    metadata = json.loads(contents["metadata"].tobytes())
    for key in ("shuffle_state", "optimizer"):
        del metadata[key]
    metadata["version"] = 1
    contents["metadata"] = np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8)
    with open(tmp_path / "v1.npz", "wb") as file:
        np.savez(file, **contents)
    back = l2fast.load(tmp_path / "v1.npz")
    for p, q in zip(parameters(back), parameters(net)):
        np.testing.assert_array_equal(p, q)
    assert back.optimizer_state is None


# -- an optimizer's steps in two shares of records (the drop-ins' steps of 64 records or more) ---------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adam", "adamw"])
@pytest.mark.parametrize("case", [
    ("softmax", 9, 7, "relu", True, False),
    ("logistic", 1, 16, "tanh", False, True),   # records in turn (no gather), sample weights
    ("squared_error", 3, 12, "sigmoid", True, True),
], ids=["softmax-relu", "logistic-tanh-in-turn", "regression-weights"])
def test_steps_in_two_shares_of_records_match_the_reference(dtype, name, case):
    # Steps of >= 64 records run in two shares of records (OptimizerStep in cpp/network.cpp), their gradient sums
    # added in share order; the short last step is one share. Plain SGD too in float64 (sgd_step_shares; float32
    # keeps its fused step).
    loss, n_out, hidden, activation, shuffle, weighted = case
    assert _core.optimizer_step_shares([11, hidden, n_out], 80)
    assert _core.sgd_step_shares([11, hidden, n_out], 80, dtype) == (dtype == "float64")
    X, y = make_problem(loss, 11, n_out, m=293, seed=31)  # 3 steps of 80 and a short one of 53
    weights = np.random.default_rng(32).uniform(0.2, 2.0, size=len(X)) if weighted else None
    ref, fast = twin_networks([11, hidden, n_out], activation, loss, dtype, "cpu", lam=1.5)
    fit = dict(epochs=3, lr=0.02, batch_size=80, shuffle=shuffle, optimizer=OPTIMIZERS[name], sample_weight=weights)
    ref_history, history = ref.fit(X, y, **fit), fast.fit(X, y, **fit)
    for p, p_ref in zip(parameters(fast), parameters(ref)):
        assert_parity(p, p_ref, dtype, f"{name}: parameters after fit")
    for slot, ref_slot in zip(*(net.optimizer_state.slots if net.optimizer_state else () for net in (fast, ref))):
        for a, b in zip(slot, ref_slot):
            assert_parity(a, b, dtype, f"{name}: optimizer state")
    assert_parity(np.array(history.loss), np.array(ref_history.loss), dtype, "history.loss")
