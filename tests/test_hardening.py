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

# The start of each Ctrl-C script: interrupt(seconds) sends SIGINT to the process that many seconds later, from a
# thread, and notes when in sent.
INTERRUPT_PRELUDE = textwrap.dedent("""
    import os, signal, sys, threading, time
    import numpy as np
    import l2fast

    # Ctrl-C in a terminal: Python's own handler. A process started in the background of a non-interactive shell (a
    # test suite run with `&`) inherits SIGINT ignored, and Python then leaves it so: no KeyboardInterrupt would come.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sent = []

    def interrupt(seconds):
        def send():
            time.sleep(seconds)
            sent.append(time.perf_counter())
            os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=send, daemon=True).start()
""")

INTERRUPT_SCRIPT = INTERRUPT_PRELUDE + textwrap.dedent("""
    backend, optimizer = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(0)
    # One record per step: an epoch of several seconds on either backend, so the signal lands in the first.
    X = rng.normal(size=(100000, 256)).astype(np.float32)
    y = rng.integers(0, 10, size=100000)
    net = l2fast.Network([256, 512, 512, 10], backend=backend, seed=0)
    before = net.weights + net.biases
    interrupt(0.5)
    try:
        net.fit(X, y, epochs=1000, lr=0.01, batch_size=1, optimizer=optimizer)
    except KeyboardInterrupt:
        latency = time.perf_counter() - sent[0]
        unchanged = all(np.array_equal(p, q) for p, q in zip(before, net.weights + net.biases))
        unchanged = unchanged and net.optimizer_state is None  # the state from before the call: none
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


RUNS_INTERRUPT_SCRIPT = INTERRUPT_PRELUDE + textwrap.dedent("""
    sizes, activation = [int(n) for n in sys.argv[1].split(",")], sys.argv[2]
    m, batch, optimizer = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    rng = np.random.default_rng(0)
    # Epochs whose steps run in runs of about 10 ms, each one job of the pool, Ctrl-C looked for between the runs
    # (cpp/parallel.hpp's parallel_steps): several epochs before the signal
    X = rng.normal(size=(m, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], size=m)
    make = lambda: l2fast.Network(sizes, activation=activation, loss="softmax", backend="cpu", seed=0)
    net = make()
    interrupt(0.3)
    try:
        net.fit(X, y, epochs=100000, lr=0.01, batch_size=batch, optimizer=optimizer)
    except KeyboardInterrupt:
        latency = time.perf_counter() - sent[0]
    else:
        print("fit finished without noticing the interrupt")
        sys.exit(1)
    # the parameters of the last complete epoch: those of a twin trained epoch by epoch, at some count
    twin = make()
    for epochs in range(100000):
        if all(np.array_equal(p, q) for p, q in zip(net.weights + net.biases, twin.weights + twin.biases)):
            print(f"interrupted after {latency:.3f} s, at the end of epoch {epochs}")
            sys.exit(0 if latency < 0.5 and epochs > 0 else 1)
        twin.fit(X, y, epochs=1, lr=0.01, batch_size=batch, optimizer=optimizer)
        if epochs > 5000:
            break
    print("the parameters are no epoch's")
    sys.exit(1)
""")


# A linear model's epoch (cpp/linear_step.cpp), steps of two shares of 256 records; a hidden layer's cut by its
# units (UnitSplitEpoch, cpp/network.cpp), at 784-256-10, plain SGD and Adam; and a small one's cut by its units with
# partial outputs (PartialOutputEpoch), Adam at 64-64-10 (1000 steps, tens of ms an epoch).
@pytest.mark.parametrize("sizes, activation, m, batch, optimizer", [("256,10", "identity", 100000, 512, "sgd"),
                                                                    ("784,256,10", "relu", 20000, 128, "sgd"),
                                                                    ("784,256,10", "relu", 20000, 128, "adam"),
                                                                    ("64,64,10", "relu", 200000, 200, "adam")])
def test_ctrl_c_stops_a_fit_of_runs_of_steps_at_an_epochs_end(tmp_path, sizes, activation, m, batch, optimizer):
    if sizes == "784,256,10":
        assert l2fast.threads._core.split_step_fits([784, 256, 10], batch, activation)
    if sizes == "64,64,10":
        assert l2fast.threads._core.partial_output_fits([64, 64, 10], batch)
    script = tmp_path / "interrupt_runs.py"
    script.write_text(RUNS_INTERRUPT_SCRIPT)
    result = subprocess.run([sys.executable, str(script), sizes, activation, str(m), str(batch), optimizer],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "at the end of epoch" in result.stdout


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


# -- arrays the kernels index with cannot change under them (issue 18, item 1) -------------------

ALIASED_INDEX_SCRIPT = textwrap.dedent("""
    import sys, threading
    import numpy as np
    from l2fast import _core

    case = sys.argv[1]
    rng = np.random.default_rng(0)
    n_hidden = 64  # the records: y or order is a view of a 64-entry float64 bias or state array
    weights = [rng.normal(size=(n_hidden, 8)), rng.normal(size=(3, n_hidden))]
    biases = [np.zeros(n_hidden), np.zeros(3)]
    X = rng.normal(size=(n_hidden, 8))
    labels = rng.integers(0, 3, size=n_hidden)
    if case == "labels_view_a_bias":  # zeros now (valid labels 0); the steps write doubles into it
        _core.train_epoch(weights, biases, X, biases[0].view(np.int64), None, 1, 0.5, 0.0, "relu", "softmax")
    elif case == "order_views_an_adam_moment":
        slots = [[np.zeros_like(p) for p in weights + biases] for _ in range(2)]
        order = slots[0][2].view(np.int64)  # the first moment of the hidden biases
        _core.train_epoch(weights, biases, X, labels, order, 1, 0.5, 0.0, "relu", "softmax",
                          optimizer="adam", slots=slots, step=0)
        try:  # the moment now holds doubles: as indexes they are refused, never used
            _core.train_epoch(weights, biases, X, labels, order, 1, 0.5, 0.0, "relu", "softmax",
                              optimizer="adam", slots=slots, step=64)
        except ValueError as exc:
            assert "order: index" in str(exc), exc
    elif case == "stacked_labels_view_another_models_bias":
        others = [[w.copy() for w in weights], [b.copy() for b in biases]]
        _core.train_epoch_stacked([weights, others[0]], [biases, others[1]], X, biases[0].view(np.int64), None,
                                  1, 0.5, [0.0, 0.0], "relu", "softmax")
    elif case == "labels_rewritten_by_another_thread":
        X = rng.normal(size=(200000, 8))
        y = rng.integers(0, 3, size=200000)
        done = threading.Event()

        def scribble():
            while not done.is_set():
                y[::7] = 10**12

        thread = threading.Thread(target=scribble)
        thread.start()
        try:
            _core.train_epoch(weights, biases, X, y, None, 1, 0.01, 0.0, "relu", "softmax")
        except ValueError as exc:  # caught while copying: a refusal, not a crash
            assert "y: label" in str(exc), exc
        finally:
            done.set()
            thread.join()
    print("survived")
""")


@pytest.mark.parametrize("case", ["labels_view_a_bias", "order_views_an_adam_moment",
                                  "stacked_labels_view_another_models_bias", "labels_rewritten_by_another_thread"])
def test_core_indexes_only_with_arrays_no_one_can_change_during_the_call(case, tmp_path):
    script = tmp_path / "aliased.py"
    script.write_text(ALIASED_INDEX_SCRIPT)
    result = subprocess.run([sys.executable, str(script), case], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "survived" in result.stdout, (result.returncode, result.stderr[-2000:])


def test_core_refuses_training_data_that_shares_memory_with_the_parameters():
    from l2fast import _core

    rng = np.random.default_rng(0)
    weights, biases = [rng.normal(size=(6, 6)), rng.normal(size=(2, 6))], [np.zeros(6), np.zeros(2)]
    before = [p.copy() for p in weights + biases]
    with pytest.raises(ValueError, match="shares memory with an array written in place"):
        _core.train_epoch(weights, biases, weights[0], np.zeros(6, np.int64), None, 2, 0.1, 0.0, "relu", "softmax")
    assert all(np.array_equal(p, q) for p, q in zip(weights + biases, before))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("call", ["predict", "evaluate", "gradients", "train_epoch"])
def test_core_refuses_non_finite_X(call, bad):
    from l2fast import _core

    rng = np.random.default_rng(0)
    weights, biases = [rng.normal(size=(2, 3))], [np.zeros(2)]
    X, y = rng.normal(size=(4, 3)), np.array([0, 1, 1, 0])
    X[2, 1] = bad
    calls = {"predict": lambda: _core.predict(weights, biases, X, "relu", "softmax"),
             "evaluate": lambda: _core.evaluate(weights, biases, X, y, "relu", "softmax"),
             "gradients": lambda: _core.gradients(weights, biases, X, y, 0.0, "relu", "softmax"),
             "train_epoch": lambda: _core.train_epoch(weights, biases, X, y, None, 2, 0.1, 0.0, "relu", "softmax")}
    before = weights[0].copy()
    with pytest.raises(ValueError, match=r"X: contains NaN or infinity \(at flat index 7\)"):
        calls[call]()
    assert np.array_equal(weights[0], before)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_core_all_finite_finds_every_non_finite_value(dtype):
    from l2fast import _core

    values = np.random.default_rng(1).normal(size=3_000_017).astype(dtype)
    assert _core.all_finite(values) and _core.all_finite(values.reshape(-1, 1)) and _core.all_finite(values[:0])
    for at in (0, 17, 1 << 20, len(values) - 1):
        for bad in (np.nan, np.inf, -np.inf):
            spoilt = values.copy()
            spoilt[at] = bad
            assert not _core.all_finite(spoilt), (at, bad)
    with pytest.raises(TypeError, match="values: expected float32 or float64"):
        _core.all_finite(np.arange(3))


def test_core_refuses_non_finite_regression_targets():
    from l2fast import _core

    weights, biases = [np.ones((2, 3))], [np.zeros(2)]
    y = np.zeros((4, 2))
    y[3, 0] = np.nan
    with pytest.raises(ValueError, match=r"y: contains NaN or infinity \(at flat index 6\)"):
        _core.gradients(weights, biases, np.ones((4, 3)), y, 0.0, "identity", "squared_error")


def test_core_refuses_a_step_count_that_would_overflow():
    from l2fast import _core

    rng = np.random.default_rng(0)
    weights, biases = [rng.normal(size=(2, 3))], [np.zeros(2)]
    slots = [[np.zeros_like(p) for p in weights + biases] for _ in range(2)]
    X, y = rng.normal(size=(4, 3)), np.array([0, 1, 1, 0])
    with pytest.raises(ValueError, match="step: .* overflows a 64-bit count"):
        _core.train_epoch(weights, biases, X, y, None, 1, 0.1, 0.0, "relu", "softmax", optimizer="adam",
                          slots=slots, step=2**63 - 3)
    _core.train_epoch(weights, biases, X, y, None, 1, 0.1, 0.0, "relu", "softmax", optimizer="adam",
                      slots=slots, step=2**63 - 5)  # the last four steps a count can take


def test_gemm_yardstick_refuses_sizes_beyond_blas_ints():
    from l2fast import _core

    with pytest.raises(ValueError, match="layer_sizes: a layer of more than 2"):
        _core.gemm_only_epoch_seconds([2**31, 1], 1, 1, "float32")
    with pytest.raises(ValueError, match="batch_size: more than 2"):
        _core.gemm_only_epoch_seconds([1, 1], 2**31, 2**31, "float32")


# -- interpreter exit with a daemon thread inside a kernel (issue 18, item 2) --------------------

EXIT_SCRIPT = textwrap.dedent("""
    import sys, threading, time
    import numpy as np
    import l2fast

    call = sys.argv[1]
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20000, 256)).astype(np.float32)
    y = rng.integers(0, 10, size=20000)
    net = l2fast.Network([256, 256, 10], backend="cpu", seed=0)
    started = threading.Event()

    def work():
        started.set()
        if call == "fit":  # an epoch of many steps with stop checks in between
            net.fit(X, y, epochs=1000, lr=0.01, batch_size=1, optimizer="adam")
        else:  # one pass without stop checks, repeated
            while True:
                net.gradients(X, y)

    threading.Thread(target=work, daemon=True).start()
    started.wait()
    time.sleep(0.3)
    print("main thread exits")
""")


@pytest.mark.parametrize("call", ["fit", "gradients"])
def test_interpreter_exits_cleanly_with_a_daemon_thread_inside_a_cpu_kernel(call, tmp_path):
    script = tmp_path / "daemon.py"
    script.write_text(EXIT_SCRIPT)
    for _ in range(3):  # the abort came every run; three catch an exit that is clean only by luck
        result = subprocess.run([sys.executable, str(script), call], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
        assert "main thread exits" in result.stdout


FORK_EXIT_SCRIPT = textwrap.dedent("""
    import os, sys, threading, time
    import numpy as np
    from l2fast import _core

    # The other thread spends its time in a kernel, on one thread: forking while OpenBLAS or the helper
    # pool runs a job on other threads may hang the child (see the README's Guarantees).
    _core.set_num_threads(1)
    W, dW = np.ones(1 << 23), np.full(1 << 23, 1e-9)

    def work():
        while True:
            _core.l2_update(W, dW, 1e-3, 0.0)

    threading.Thread(target=work, daemon=True).start()
    time.sleep(0.2)
    pid = os.fork()  # most likely while the other thread is inside a kernel
    if pid == 0:
        sys.exit(0)  # the child's interpreter exit waits for no kernel of the parent's
    for _ in range(200):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            print("child exited", os.waitstatus_to_exitcode(status))
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        print("child hung at exit")
""")


def test_a_forked_child_exits_although_its_parent_was_inside_a_kernel(tmp_path):
    script = tmp_path / "fork_exit.py"
    script.write_text(FORK_EXIT_SCRIPT)
    for _ in range(3):
        result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "child exited 0" in result.stdout, (result.stdout, result.stderr[-2000:])
