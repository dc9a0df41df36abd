"""Divergence, Ctrl-C, leaks, determinism and threads: a training library must never corrupt weights
silently, never hang a notebook and never leak."""
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

import l2fast
from l2fast.testing import make_problem

BACKENDS = ["numpy", "cpu"]


def same_parameters(a, b):
    return all(np.array_equal(p, q) for p, q in zip(a.weights + a.biases, b.weights + b.biases))


# -- divergence ----------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss, n_out", [("squared_error", 2), ("softmax", 3)])
def test_divergence_stops_with_the_last_finite_parameters(backend, loss, n_out):
    X, y = make_problem(loss, 4, n_out, m=64, seed=0)
    X = X * 30  # large inputs and a large step: the weights blow up within a few epochs
    net = l2fast.Network([4, 16, n_out], activation="relu", loss=loss, backend=backend, dtype="float32", seed=1)
    with pytest.raises(l2fast.DivergenceError, match="smaller learning rate") as info:
        net.fit(X, y, epochs=50, lr=50.0, batch_size=16)
    finished = len(info.value.history.loss)
    assert finished < 50 and all(np.isfinite(info.value.history.loss))
    assert all(np.isfinite(p).all() for p in net.weights + net.biases)
    twin = l2fast.Network([4, 16, n_out], activation="relu", loss=loss, backend=backend, dtype="float32", seed=1)
    twin.fit(X, y, epochs=finished, lr=50.0, batch_size=16)
    assert same_parameters(net, twin)


# -- Ctrl-C --------------------------------------------------------------------------------------

INTERRUPT_SCRIPT = textwrap.dedent("""
    import os, signal, sys, threading, time
    import numpy as np
    import l2fast

    backend, optimizer = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(0)
    # One record per step: an epoch of several seconds on either backend, so the signal lands in the first.
    X = rng.normal(size=(100000, 256)).astype(np.float32)
    y = rng.integers(0, 10, size=100000)
    net = l2fast.Network([256, 512, 512, 10], backend=backend, seed=0)
    before = net.weights + net.biases
    sent = []

    def interrupt():
        time.sleep(0.5)
        sent.append(time.perf_counter())
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    try:
        net.fit(X, y, epochs=1000, lr=0.01, batch_size=1, optimizer=optimizer)
    except KeyboardInterrupt:
        latency = time.perf_counter() - sent[0]
        unchanged = all(np.array_equal(p, q) for p, q in zip(before, net.weights + net.biases))
        state = net.optimizer_state  # the epoch's starting state too: no steps, zero moments
        unchanged = unchanged and state.step == 0 and all(not a.any() for slot in state.slots for a in slot)
        print(f"interrupted after {latency:.3f} s; parameters back at the epoch's start: {unchanged}")
        sys.exit(0 if unchanged and latency < 0.5 else 1)
    print("fit finished without noticing the interrupt")
    sys.exit(1)
""")


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_ctrl_c_stops_fit_promptly_and_leaves_consistent_parameters(backend, optimizer, tmp_path):
    script = tmp_path / "interrupt.py"
    script.write_text(INTERRUPT_SCRIPT)
    result = subprocess.run([sys.executable, str(script), backend, optimizer], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "parameters back at the epoch's start: True" in result.stdout


# -- leaks ---------------------------------------------------------------------------------------

def resident_bytes():
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096


@pytest.mark.parametrize("backend", BACKENDS)
def test_memory_stays_flat_over_thousands_of_calls(backend):
    X, y = make_problem("softmax", 8, 3, m=64, seed=0)
    net = l2fast.Network([8, 16, 3], backend=backend, seed=0)

    def work(n):
        for _ in range(n):
            net.fit(X, y, epochs=1, lr=0.01, batch_size=16)
            net.predict_proba(X)
            net.gradients(X, y)

    work(200)  # warm-up: allocator pools, OpenBLAS buffers
    start = resident_bytes()
    work(3000)
    assert resident_bytes() - start < 8 * 2**20


# -- determinism ---------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_same_seed_gives_bit_identical_parameters(backend, dtype):
    X, y = make_problem("softmax", 30, 5, m=700, seed=4)
    nets = [l2fast.Network([30, 64, 5], lam=0.5, backend=backend, dtype=dtype, seed=7) for _ in range(2)]
    for net in nets:
        net.fit(X, y, epochs=3, lr=0.05, batch_size=32)
    assert same_parameters(*nets)


# -- threads -------------------------------------------------------------------------------------

def test_cpu_kernels_release_the_gil():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20000, 256)).astype(np.float32)
    y = rng.integers(0, 10, size=20000)
    net = l2fast.Network([256, 512, 10], backend="cpu", seed=0)
    ticks = []
    done = threading.Event()

    def count():
        while not done.is_set():
            ticks.append(1)

    counter = threading.Thread(target=count)
    counter.start()
    try:
        history = net.fit(X, y, epochs=1, lr=0.01, batch_size=64)  # one call into C++ of about 0.2 s
    finally:
        done.set()
        counter.join()
    # Holding the GIL for the whole epoch would leave the counter a handful of ticks at most.
    assert history.seconds[0] > 0.05 and len(ticks) > 10000


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_networks_in_two_threads_match_one_after_the_other(backend):
    X, y = make_problem("softmax", 20, 4, m=2000, seed=1)

    def make(seed):
        return l2fast.Network([20, 32, 4], lam=0.3, backend=backend, dtype="float64", seed=seed)

    sequential = [make(1), make(2)]
    for net in sequential:
        net.fit(X, y, epochs=3, lr=0.05, batch_size=16)
    parallel = [make(1), make(2)]
    threads = [threading.Thread(target=net.fit, args=(X, y), kwargs=dict(epochs=3, lr=0.05, batch_size=16))
               for net in parallel]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(same_parameters(a, b) for a, b in zip(sequential, parallel))


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_network_from_two_threads_takes_turns(backend):
    X, y = make_problem("softmax", 20, 4, m=2000, seed=2)
    shared = l2fast.Network([20, 32, 4], backend=backend, dtype="float64", seed=3)
    errors = []

    def train():
        try:
            shared.fit(X, y, epochs=3, lr=0.05, batch_size=16)
            shared.predict(X)
        except Exception as exc:  # collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=train) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # Six whole epochs, one call after the other, whichever thread went first.
    twin = l2fast.Network([20, 32, 4], backend=backend, dtype="float64", seed=3)
    twin.fit(X, y, epochs=3, lr=0.05, batch_size=16)
    twin.fit(X, y, epochs=3, lr=0.05, batch_size=16)
    assert same_parameters(shared, twin)
