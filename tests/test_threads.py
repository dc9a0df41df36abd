"""The thread policy: what the process may use (affinity, cgroup quotas, from fixture files), the choice for
one call, threadpoolctl's control of l2fast's OpenBLAS, results that do not depend on the thread count, and a
fork while the helper threads work."""
import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np
import pytest
import threadpoolctl
from sklearn.exceptions import ConvergenceWarning

import l2fast
from l2fast import _core, threads
from l2fast.backends import cpu
from l2fast.testing import make_problem

# -- what the process may use ---------------------------------------------------------------------


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize("text, cpus", [
    ("max 100000\n", None), ("200000 100000\n", 2.0), ("150000 100000", 1.5), ("50000 100000\n", 0.5),
    ("400000\n", 4.0), ("", None),
])
def test_cgroup_v2_cpu_max_is_parsed(text, cpus):
    assert threads.parse_cpu_max(text) == cpus


@pytest.mark.parametrize("quota, period, cpus", [("-1\n", "100000\n", None), ("300000\n", "100000\n", 3.0),
                                                 ("50000", "100000", 0.5)])
def test_cgroup_v1_cfs_quota_is_parsed(quota, period, cpus):
    assert threads.parse_cfs_quota(quota, period) == cpus


def test_proc_self_cgroup_gives_the_unified_and_the_cpu_paths():
    hybrid = "9:name=systemd:/\n4:memory:/jobs/7\n2:cpuacct:/\n1:cpu,cpuacct:/docker/abc\n0::/user.slice/job\n"
    assert threads.parse_proc_cgroup(hybrid) == ("/user.slice/job", "/docker/abc")
    assert threads.parse_proc_cgroup("0::/\n") == ("/", None)
    assert threads.parse_proc_cgroup("") == (None, None)


def test_cgroup_v2_limit_is_the_tightest_on_the_way_to_the_root(tmp_path):
    root = tmp_path / "sys"
    write(tmp_path / "cgroup", "0::/outer/inner\n")
    write(root / "outer" / "inner" / "cpu.max", "max 100000\n")
    write(root / "outer" / "cpu.max", "250000 100000\n")
    write(root / "cpu.max", "max 100000\n")
    assert threads.cgroup_cpu_limit(str(tmp_path / "cgroup"), str(root)) == 2.5
    write(root / "outer" / "inner" / "cpu.max", "120000 100000\n")
    assert threads.cgroup_cpu_limit(str(tmp_path / "cgroup"), str(root)) == 1.2


def test_cgroup_v2_inside_a_container_reads_the_root(tmp_path):
    # The path names the host's hierarchy, which the container does not see: its own root holds the limit.
    root = tmp_path / "sys"
    write(tmp_path / "cgroup", "0::/kubepods/burstable/pod1/abc\n")
    write(root / "cpu.max", "150000 100000\n")
    assert threads.cgroup_cpu_limit(str(tmp_path / "cgroup"), str(root)) == 1.5


def test_cgroup_v1_cfs_quota_is_found_under_the_cpu_controller(tmp_path):
    root = tmp_path / "sys"
    write(tmp_path / "cgroup", "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n")
    write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us", "300000\n")
    write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_period_us", "100000\n")
    assert threads.cgroup_cpu_limit(str(tmp_path / "cgroup"), str(root)) == 3.0
    write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us", "-1\n")
    assert threads.cgroup_cpu_limit(str(tmp_path / "cgroup"), str(root)) is None


def test_no_cgroup_files_means_no_limit(tmp_path):
    assert threads.cgroup_cpu_limit(str(tmp_path / "missing"), str(tmp_path)) is None
    write(tmp_path / "cgroup", "0::/\n")
    assert threads.cgroup_cpu_limit(str(tmp_path / "cgroup"), str(tmp_path / "sys")) is None


@pytest.mark.parametrize("affinity, quota, cpus", [(8, None, 8), (8, 2.5, 2), (8, 0.5, 1), (2, 16.0, 2),
                                                   (4, 3.0, 3)])
def test_available_cpus_is_the_affinity_lowered_by_the_quota(affinity, quota, cpus):
    assert threads.available_cpus(affinity, quota) == cpus


def test_available_cpus_on_this_machine_respects_the_affinity_mask():
    assert 1 <= threads.available_cpus() <= len(os.sched_getaffinity(0))


def test_default_thread_count_from_the_environment():
    assert threads.default_num_threads({"L2FAST_NUM_THREADS": "3", "OMP_NUM_THREADS": "1"}) == 3
    assert threads.default_num_threads({"OPENBLAS_NUM_THREADS": "1"}) is None  # OpenBLAS's own choice stands
    assert threads.default_num_threads({"OMP_NUM_THREADS": "1"}) is None  # what Dask and Ray workers set
    assert threads.default_num_threads({}) == threads.available_cpus()
    assert threads.openblas_variable_threads({"OMP_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "1"}) == 1
    assert threads.openblas_variable_threads({"OMP_NUM_THREADS": "4,2"}) == 4
    assert threads.openblas_variable_threads({}) is None
    for bad in ("0", "-2", "two", "1.5"):
        with pytest.raises(ValueError, match="L2FAST_NUM_THREADS"):
            threads.default_num_threads({"L2FAST_NUM_THREADS": bad})


def test_the_environment_variable_sets_the_count_at_import():
    code = "import l2fast; print(l2fast.get_num_threads())"
    env = dict(os.environ, L2FAST_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


# -- the choice for one call ----------------------------------------------------------------------

def test_loadavg_gives_the_runnable_tasks():
    assert threads.parse_loadavg_running("0.50 0.40 0.30 3/123 4567\n") == 3
    assert threads.parse_loadavg_running("8.77 4.52 1.83 12/143 16094") == 12
    assert threads.busy_cpus() >= 0


def test_a_reading_that_finds_work_is_taken_again_soon_then_less_often_while_the_work_lasts(monkeypatch):
    clock, answers, reads = [100.0], [], []
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(threads, "read_busy_cpus", lambda: reads.append(clock[0]) or answers.pop(0))
    monkeypatch.setattr(threads, "_busy_seen", (-1.0, 0, 0.0))

    def at(t, answer=None):
        clock[0] = 100.0 + t
        if answer is not None:
            answers.append(answer)
        return threads.busy_cpus()

    first = threads.BUSY_FIRST_LIFETIME
    assert at(0.0, 1) == 1  # a kernel task for a moment after a wake-up...
    assert at(first / 2) == 1 and len(reads) == 1  # ...serves a short while
    assert at(first * 1.5, 0) == 0 and len(reads) == 2  # read again: gone, and a quiet reading serves 0.2 s
    assert at(first * 1.5 + threads.BUSY_READING_LIFETIME * 0.9) == 0 and len(reads) == 2
    # work that lasts: each busy reading in a row serves twice as long, up to BUSY_READING_LIFETIME
    t, lifetimes = 1.0, []
    for _ in range(8):
        assert at(t, 1) == 1
        lifetimes.append(threads._busy_seen[2])
        t += threads._busy_seen[2] * 1.01
    assert lifetimes[:3] == [first, 2 * first, 4 * first]
    assert lifetimes[-1] == threads.BUSY_READING_LIFETIME
    assert not answers
    # after a long gap a busy reading is new work again: the short lifetime
    assert at(t + 5.0, 1) == 1 and threads._busy_seen[2] == first


def test_a_quiet_reading_stops_once_most_samples_found_this_thread_alone(monkeypatch):
    texts = iter(["0.0 0.0 0.0 1/80 9", "0.0 0.0 0.0 2/80 9", "0.0 0.0 0.0 1/80 9", "0.0 0.0 0.0 1/80 9",
                  "0.0 0.0 0.0 3/80 9"])
    taken = []
    monkeypatch.setattr(threads, "_read", lambda path: taken.append(path) or next(texts))
    assert threads.read_busy_cpus(samples=5, interval=0.0) == 0
    assert len(taken) == 4  # three of five found this thread alone: the fifth is not needed
    busy = iter(["0.0 0.0 0.0 3/80 9"] * 5)
    monkeypatch.setattr(threads, "_read", lambda path: next(busy))
    monkeypatch.setattr(threads, "_own_running_threads", lambda: 1)
    assert threads.read_busy_cpus(samples=5, interval=0.0) == 2


@pytest.mark.parametrize("cap, product, busy, online, n", [
    (2, 10**5, 0, 2, 1),      # too small to gain from a second thread
    (2, 10**8, 0, 2, 2),      # large, machine quiet
    (2, 10**8, 1, 2, 1),      # one core of two busy elsewhere: threads would wait on each other
    (2, 10**8, 5, 2, 1),
    (4, 10**8, 0, 16, 4),     # the cap holds on a large machine
    (4, 10**8, 14, 16, 2),    # what the others leave
    (1, 10**8, 0, 16, 1),
])
def test_choose_threads(cap, product, busy, online, n):
    assert threads.choose_threads(cap, product, busy, online) == n


def test_largest_product_of_a_step():
    assert threads.largest_product([784, 256, 10], 128) == 128 * 784 * 256
    assert threads.largest_product([100, 1], 256) == 25600


@pytest.fixture
def restore_threads():
    before = l2fast.get_num_threads()
    yield
    l2fast.set_num_threads(before)


def test_set_num_threads_sets_the_cap_and_refuses_bad_counts(restore_threads):
    l2fast.set_num_threads(1)
    assert l2fast.get_num_threads() == 1 == _core.get_num_threads()
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="n must be"):
            l2fast.set_num_threads(bad)
        assert l2fast.get_num_threads() == 1
    l2fast.set_num_threads(None)
    assert l2fast.get_num_threads() == (threads.default_num_threads() or threads.openblas_variable_threads()
                                        or threads.available_cpus())


# -- threadpoolctl, observed from inside a fit ----------------------------------------------------

def cpu_ticks_by_thread():
    ticks = {}
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks[task] = int(fields[11]) + int(fields[12])
    return ticks


def fit_observed(monkeypatch, sizes=(784, 256, 10)):
    """Fits a network whose products l2fast splits over threads; returns, at each kernel call, the threads given
    to its parts (share_threads, 0 when not given) and the OpenBLAS thread count that threadpoolctl reported, and
    the threads other than the caller that ran meanwhile."""
    seen = []
    train_epoch = _core.train_epoch

    def observed(*args, **kwargs):
        info = [lib for lib in threadpoolctl.threadpool_info() if "scipy_openblas32" in lib["filepath"]]
        seen.append((kwargs.get("share_threads", 0), [lib["num_threads"] for lib in info]))
        return train_epoch(*args, **kwargs)

    monkeypatch.setattr(cpu._core, "train_epoch", observed)
    X, y = make_problem("softmax", sizes[0], sizes[-1], m=4096, seed=0)
    net = l2fast.Network(list(sizes), backend="cpu", seed=0)
    time.sleep(0.3)  # threads of other pools (NumPy's OpenBLAS after an earlier test) stop spinning first
    before = cpu_ticks_by_thread()
    net.fit(X, y, epochs=3, batch_size=256)
    after = cpu_ticks_by_thread()
    me = str(threading.get_native_id())
    helpers = [t for t in after if t != me and after[t] - before.get(t, 0) >= 2]
    return seen, helpers


# 784-256-10 (float32 plain SGD) cuts its steps by the hidden units, OpenBLAS on one thread and l2fast's helper on
# the other (split_step_fits); 784-256-256-10 runs on OpenBLAS's two threads.
@pytest.mark.parametrize("sizes, free", [((784, 256, 10), (2, [1])), ((784, 256, 256, 10), (0, [2]))])
def test_threadpool_limits_controls_l2fasts_openblas_inside_a_fit(monkeypatch, restore_threads, sizes, free):
    l2fast.set_num_threads(2, adaptive=False)
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        seen, helpers = fit_observed(monkeypatch, sizes)
    assert len(seen) == 3 and all(share_threads <= 1 and counts == [1] for share_threads, counts in seen)
    assert helpers == []  # no OpenBLAS worker and no l2fast helper ran beside the caller
    assert l2fast.get_num_threads() == 2  # threadpoolctl put the count back
    seen, helpers = fit_observed(monkeypatch, sizes)
    assert seen == [free] * 3
    assert helpers  # and without the limit a second thread did share the products


# -- results do not depend on the thread count ----------------------------------------------------

@pytest.mark.parametrize("sizes, loss, batch, optimizer", [
    ([784, 256, 10], "softmax", 128, "sgd"),
    ([300, 512, 64, 1], "logistic", 256, "adam"),      # a 154K-entry tensor, and GEMV for the output layer
    ([784, 512, 10], "softmax", 64, "momentum"),       # 401K entries: the optimizer step uses the helpers
    ([777, 300, 10], "softmax", 600, "sgd"),           # inner dimensions above OpenBLAS's block: sliced
    ([64, 256, 256, 10], "softmax", 20, "sgd"),        # the demo's network
])
def test_float32_results_are_bit_identical_on_one_thread_and_on_two(restore_threads, sizes, loss, batch, optimizer):
    # (float64 calls always run on the cap: OpenBLAS's float64 kernels differ in the last bits across counts.)
    dtype = "float32"
    X, y = make_problem(loss, sizes[0], sizes[-1], m=1024, seed=3)
    results = []
    for n in (1, 2):
        l2fast.set_num_threads(n, adaptive=False)
        net = l2fast.Network(sizes, loss=loss, lam=1.0, backend="cpu", dtype=dtype, seed=0)
        net.fit(X, y, epochs=2, lr=0.01, batch_size=batch, optimizer=optimizer)
        results.append((net.weights + net.biases, net.predict_proba(X), net.gradients(X, y)))
    (p1, proba1, (dW1, db1)), (p2, proba2, (dW2, db2)) = results
    assert all(np.array_equal(a, b) for a, b in zip(p1 + dW1 + db1, p2 + dW2 + db2))
    assert np.array_equal(proba1, proba2)


# -- a hidden layer cut by its units ---------------------------------------------------------------

SPLIT_CASES = {  # sizes, activation, loss, batch, records
    "784-256-10": ([784, 256, 10], "relu", "softmax", 128, 1025),  # W[1] trained transposed; a last step of one
    "200-200-10": ([200, 200, 10], "relu", "softmax", 32, 999),  # W[1] as it is
    "300-301-7": ([300, 301, 7], "identity", "squared_error", 300, 2001),  # odd units; a batch above 256 (k sliced)
}


def train_two_epochs(backend, dtype, X, targets, loss, start, order, batch, activation, spec, lams,
                     sample_weight=None):
    """Two epochs of the network of parameters `start` (weights, then biases, of one hidden layer) with optimizer spec
    (None: plain SGD) at lr 0.01, the full steps decayed by lams[0] and the short last one by lams[1]: on cpu one call
    an epoch (the short step's decay given beside, the weight norms asked for), on the numpy reference two (the full
    steps, then the short one). Returns the cpu calls' results ([] on numpy), and the parameters and optimizer state
    after them."""
    from l2fast import optim
    from l2fast.backends import get_backend

    be = get_backend(backend)
    m, n_in, n_out = len(X), start[0].shape[1], start[1].shape[0]
    params = [a.astype(dtype) for a in start]
    state = optim.OptimizerState.fresh(spec or optim.SGD(), optim.Constant(), params[:2], params[2:], np.zeros_like)
    Xb, y = be.features(X.astype(dtype), n_in, dtype), be.targets(targets, m, loss, n_out, dtype)
    w = None if sample_weight is None else be.sample_weights(sample_weight, m, dtype)
    rows = np.arange(m) if order is None else order
    steps, cut = -(-m // batch), m - m % batch
    common = dict(activation=activation, loss=loss, optimizer=spec, slots=state.slots, sample_weight=w)
    results = []
    for epoch in range(2):
        if backend == "cpu":
            results.append(be.train_epoch(params[:2], params[2:], Xb, y, order, batch, 0.01, lams[0],
                                          step=epoch * steps, with_norms=True, short_lam_over_m=lams[1], **common))
            continue
        be.train_epoch(params[:2], params[2:], Xb, y, rows[:cut], batch, 0.01, lams[0], step=epoch * steps, **common)
        if cut < m:
            be.train_epoch(params[:2], params[2:], Xb, y, rows[cut:], batch, 0.01, lams[1],
                           step=epoch * steps + cut // batch, **common)
    return results, params + [a for slot in state.slots for a in slot]


def parts_and_blas_threads_of_each_epoch(monkeypatch):
    """A list that gets (share_threads, OpenBLAS's count) of each ``_core.train_epoch`` call of the cpu backend."""
    seen = []
    train_epoch = _core.train_epoch

    def observed(*args, **kwargs):
        seen.append((kwargs.get("share_threads", 0), _core.get_num_threads()))
        return train_epoch(*args, **kwargs)

    monkeypatch.setattr(cpu._core, "train_epoch", observed)
    return seen


@pytest.mark.parametrize("optimizer, dtype", [("sgd", "float32"), ("adam", "float32"), ("sgd", "float64"),
                                              ("nesterov", "float64"), ("adam", "float64")])
@pytest.mark.parametrize("ordered", [True, False], ids=["shuffled", "in-turn"])
@pytest.mark.parametrize("case", list(SPLIT_CASES))
def test_an_epoch_cut_by_hidden_units_gives_the_one_thread_bits(monkeypatch, restore_threads, case, ordered, optimizer,
                                                                 dtype):
    """UnitSplitEpoch: each step cut by the hidden layer's units, OpenBLAS on one thread, the parts side by side on two
    threads or one after the other on one; plain SGD and optimizers, in either dtype. The same loss, correct
    count, weight norms, parameters and optimizer state, with sample weights and the drop-ins' short last step of its
    own decay; and the reference's training to rounding."""
    from l2fast import optim

    sizes, activation, loss, batch, m = SPLIT_CASES[case]
    spec = {"sgd": None, "adam": optim.Adam(eps_on_v=True), "nesterov": optim.Momentum(0.9, nesterov=True)}[optimizer]
    assert _core.split_step_fits(sizes, batch, activation) and not _core.optimizer_step_shares(sizes, batch)
    assert not _core.sgd_step_shares(sizes, batch, dtype)
    assert threads.two_share_epoch(sizes, batch, optimizer, True, dtype, activation)
    rng = np.random.default_rng(7)
    X = rng.normal(size=(m, sizes[0])).astype(dtype)
    targets = rng.integers(0, sizes[-1], m) if loss == "softmax" else rng.normal(size=(m, sizes[-1]))
    start = [(rng.normal(size=(n_out, n_in)) * 0.05).astype(dtype) for n_in, n_out in zip(sizes, sizes[1:])]
    start += [(rng.normal(size=n_out) * 0.1).astype(dtype) for n_out in sizes[1:]]
    order = rng.permutation(m).astype(np.int64) if ordered else None
    sample_weight = rng.uniform(0.5, 1.5, m)
    seen = parts_and_blas_threads_of_each_epoch(monkeypatch)
    runs = []
    for n in (1, 2):
        l2fast.set_num_threads(n, adaptive=False)
        seen.clear()
        runs.append(train_two_epochs("cpu", dtype, X, targets, loss, start, order, batch, activation, spec,
                                     (0.002, 0.005), sample_weight))
        assert seen == [(n, 1)] * 2  # OpenBLAS on one thread, the parts on n
    (results_1, arrays_1), (results_2, arrays_2) = runs
    assert results_1 == results_2
    assert all(np.array_equal(a, b) for a, b in zip(arrays_1, arrays_2))
    # and the training is the reference's (the last step's own decay taken apart there)
    _, reference = train_two_epochs("numpy", np.float64, X, targets, loss, start, order, batch, activation, spec,
                                    (0.002, 0.005), sample_weight)
    tol = dict(rtol=2e-4, atol=1e-4) if dtype == "float32" else dict(rtol=1e-9, atol=1e-12)
    for ours, theirs in zip(arrays_2, reference):
        np.testing.assert_allclose(ours, theirs, **tol)


PARTIAL_CASES = {  # sizes, activation, loss, batch, records
    "64-64-10": ([64, 64, 10], "relu", "softmax", 200, 1037),  # the drop-ins' digits network; a short step of 37
    "20-33-1": ([20, 33, 1], "tanh", "logistic", 64, 301),  # odd units, one output (GEMVs); a short step of 45
    "30-40-3": ([30, 40, 3], "identity", "squared_error", 100, 250),
}


@pytest.mark.parametrize("optimizer, dtype", [("sgd", "float64"), ("adam", "float32"), ("nesterov", "float64"),
                                              ("adam", "float64")])
@pytest.mark.parametrize("ordered", [True, False], ids=["shuffled", "in-turn"])
@pytest.mark.parametrize("case", list(PARTIAL_CASES))
def test_an_epoch_cut_by_units_with_partial_outputs_gives_the_one_thread_bits(monkeypatch, restore_threads, case,
                                                                             ordered, optimizer, dtype):
    """PartialOutputEpoch: a small network's steps that optimizer_step_shares would cut in two shares of records, cut
    by the hidden units instead, each part with its partial of the output layer (plain SGD in float64, as
    sgd_step_shares' epochs, and optimizers). The same loss, correct count, weight norms, parameters and optimizer
    state on one thread and on two, with sample weights and a short last step of its own decay; and the reference's
    training to rounding."""
    from l2fast import optim

    sizes, activation, loss, batch, m = PARTIAL_CASES[case]
    spec = {"sgd": None, "adam": optim.Adam(eps_on_v=True), "nesterov": optim.Momentum(0.9, nesterov=True)}[optimizer]
    assert _core.partial_output_fits(sizes, batch) and _core.optimizer_step_shares(sizes, batch)
    assert threads.two_share_epoch(sizes, batch, optimizer, True, dtype, activation)
    rng = np.random.default_rng(11)
    X = rng.normal(size=(m, sizes[0]))
    targets = {"softmax": rng.integers(0, sizes[-1], m), "logistic": rng.integers(0, 2, m),
               "squared_error": rng.normal(size=(m, sizes[-1]))}[loss]
    start = [rng.normal(size=(n_out, n_in)) * 0.2 for n_in, n_out in zip(sizes, sizes[1:])]
    start += [rng.normal(size=n_out) * 0.1 for n_out in sizes[1:]]
    order = rng.permutation(m).astype(np.int64) if ordered else None
    sample_weight = rng.uniform(0.5, 1.5, m)
    seen = parts_and_blas_threads_of_each_epoch(monkeypatch)
    runs = []
    for n in (1, 2, 1):
        l2fast.set_num_threads(n, adaptive=False)
        seen.clear()
        runs.append(train_two_epochs("cpu", dtype, X, targets, loss, start, order, batch, activation, spec,
                                     (0.002, 0.005), sample_weight))
        assert seen == [(n, 1)] * 2  # OpenBLAS on one thread, the parts on n
    for results, arrays in runs[1:]:
        assert results == runs[0][0]
        assert all(np.array_equal(a, b) for a, b in zip(arrays, runs[0][1]))
    _, reference = train_two_epochs("numpy", np.float64, X, targets, loss, start, order, batch, activation, spec,
                                    (0.002, 0.005), sample_weight)
    tol = dict(rtol=2e-4, atol=1e-4) if dtype == "float32" else dict(rtol=1e-9, atol=1e-12)
    for ours, theirs in zip(runs[1][1], reference):
        np.testing.assert_allclose(ours, theirs, **tol)


@pytest.mark.parametrize("seed", range(8))
def test_random_epochs_cut_by_units_with_partial_outputs(restore_threads, seed):
    """Random shapes that partial_output_fits takes, each activation and loss (one output unit included), both dtypes,
    plain SGD in float64, Adam and momentum, records in turn or shuffled, with and without sample weights: the same
    bits on one thread and on two, and the reference's training. (A throwaway run of the same check passed over 120
    shapes.)"""
    from l2fast import optim

    rng = np.random.default_rng(5000 + seed)
    while True:
        n_in, n1, n2 = int(rng.integers(2, 129)), int(rng.integers(32, 300)), int(rng.integers(1, 20))
        batch = int(rng.integers(64, 400))
        m = int(rng.integers(batch + 1, 4 * batch))
        if _core.partial_output_fits([n_in, n1, n2], batch):
            break
    loss = ("logistic" if seed % 3 else "squared_error") if n2 == 1 else ("softmax", "squared_error")[seed % 2]
    activation = ("relu", "tanh", "sigmoid", "identity")[seed % 4]
    name, dtype = [("sgd", "float64"), ("adam", "float64"), ("momentum", "float32"), ("adam", "float32")][seed // 2]
    spec = {"sgd": None, "adam": optim.Adam(), "momentum": optim.Momentum(0.9, nesterov=bool(seed % 2))}[name]
    X = rng.normal(size=(m, n_in))
    targets = {"softmax": rng.integers(0, max(n2, 2), m), "logistic": rng.integers(0, 2, m),
               "squared_error": rng.normal(size=(m, n2))}[loss]
    start = [rng.normal(size=(n1, n_in)) * 0.1, rng.normal(size=(n2, n1)) * 0.1, rng.normal(size=n1) * 0.1,
             rng.normal(size=n2) * 0.1]
    order = rng.permutation(m).astype(np.int64) if seed % 2 else None
    sample_weight = rng.uniform(0.5, 1.5, m) if seed % 3 == 0 else None
    runs = []
    for n in (1, 2):
        l2fast.set_num_threads(n, adaptive=False)
        runs.append(train_two_epochs("cpu", dtype, X, targets, loss, start, order, batch, activation, spec,
                                     (0.003, 0.004), sample_weight))
    assert runs[0][0] == runs[1][0]
    assert all(np.array_equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    _, reference = train_two_epochs("numpy", np.float64, X, targets, loss, start, order, batch, activation, spec,
                                    (0.003, 0.004), sample_weight)
    tol = dict(rtol=1e-3, atol=2e-4) if dtype == "float32" else dict(rtol=1e-8, atol=1e-10)
    for ours, theirs in zip(runs[1][1], reference):
        np.testing.assert_allclose(ours, theirs, **tol)


def test_which_epochs_cut_their_steps_by_units_with_partial_outputs():
    fits = _core.partial_output_fits
    assert fits([64, 64, 10], 200) and fits([64, 256, 10], 200) and fits([128, 32, 2], 64)
    assert not fits([64, 64, 10], 63)  # too few records for two shares: whole steps
    assert not fits([64, 16, 10], 200)  # fewer than 32 hidden units
    assert not fits([784, 100, 10], 200) and not fits([129, 64, 10], 200)  # more than 128 inputs
    assert not fits([64, 64, 64, 10], 200) and not fits([64, 10], 200)  # one hidden layer only
    assert not fits([64, 512, 10], 200)  # a share's product over optimizer_step_shares' bound
    with pytest.raises(ValueError, match="batch_size"):
        fits([64, 64, 10], 0)


@pytest.mark.parametrize("seed", range(8))
def test_random_epochs_cut_by_hidden_units(restore_threads, seed):
    """Random shapes that split_step_fits takes (odd unit counts, batches that leave a short step, records in turn or
    shuffled): the same bits on one thread and on two, and the reference's training (float32 plain SGD and momentum to
    float32 rounding; Adam, whose normalised steps magnify float32 rounding at gradients near zero, and plain SGD in
    float64)."""
    from l2fast import optim

    rng = np.random.default_rng(1000 + seed)
    while True:
        n_in, n1, n2 = int(rng.integers(20, 900)), int(rng.integers(129, 700)), int(rng.integers(2, 30))
        batch = int(rng.integers(8, 300))
        m = int(rng.integers(batch + 1, 3 * batch))
        if _core.split_step_fits([n_in, n1, n2], batch, "relu") and not _core.optimizer_step_shares([n_in, n1, n2],
                                                                                                    batch):
            break
    name, dtype = [("sgd", "float32"), ("momentum", "float32"), ("adam", "float64"), ("sgd", "float64")][seed % 4]
    activation = ("relu", "identity")[seed // 4]
    spec = {"sgd": None, "adam": optim.Adam(), "momentum": optim.Momentum(0.9)}[name]
    X = rng.normal(size=(m, n_in))
    labels = rng.integers(0, n2, m)
    start = [rng.normal(size=(n1, n_in)) * 0.05, rng.normal(size=(n2, n1)) * 0.05, rng.normal(size=n1) * 0.1,
             rng.normal(size=n2) * 0.1]
    order = rng.permutation(m).astype(np.int64) if seed % 2 else None
    runs = []
    for n in (1, 2):
        l2fast.set_num_threads(n, adaptive=False)
        runs.append(train_two_epochs("cpu", dtype, X, labels, "softmax", start, order, batch, activation, spec,
                                     (0.003, 0.004)))
    assert runs[0][0] == runs[1][0]
    assert all(np.array_equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    _, reference = train_two_epochs("numpy", np.float64, X, labels, "softmax", start, order, batch, activation, spec,
                                    (0.003, 0.004))
    tol = dict(rtol=1e-3, atol=2e-4) if dtype == "float32" else dict(rtol=1e-8, atol=1e-10)
    for ours, theirs in zip(runs[1][1], reference):
        np.testing.assert_allclose(ours, theirs, **tol)


def test_fits_cut_by_hidden_units_in_two_threads_match_one_after_the_other(restore_threads):
    # each fit's runs of steps take the helper pool in turn (parallel_steps: one job at a time); a run's parts never
    # mix with the other fit's
    l2fast.set_num_threads(2, adaptive=False)
    X, y = make_problem("softmax", 784, 10, m=1500, seed=5)
    X = X.astype(np.float32)

    def make(seed):
        return l2fast.Network([784, 256, 10], lam=0.3, backend="cpu", seed=seed)

    fits = [dict(epochs=3, lr=0.05, batch_size=128), dict(epochs=3, lr=0.005, batch_size=100, optimizer="adam")]
    sequential = [make(1), make(2)]
    for net, options in zip(sequential, fits):
        net.fit(X, y, **options)
    parallel = [make(1), make(2)]
    workers = [threading.Thread(target=net.fit, args=(X, y), kwargs=options) for net, options in zip(parallel, fits)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    for a, b in zip(sequential, parallel):
        assert all(np.array_equal(p, q) for p, q in zip(a.weights + a.biases, b.weights + b.biases))


def test_which_epochs_cut_their_steps_by_hidden_units():
    fits = _core.split_step_fits
    assert fits([784, 256, 10], 128, "relu") and fits([784, 256, 10], 128, "identity")
    assert not fits([784, 256, 10], 128, "tanh") and not fits([784, 256, 10], 128, "sigmoid")  # exp: not exact by parts
    assert not fits([784, 256, 256, 10], 128, "relu")  # one hidden layer only
    assert not fits([784, 256, 1], 128, "relu")  # one output unit: its products are GEMVs
    assert not fits([784, 256, 10], 4, "relu")  # 4 x 784 x 256 multiply-adds a step, below 2^20
    assert not fits([100, 256, 10], 128, "relu")  # the output layer's product over a sixteenth of the hidden one's
    assert not fits([784, 1024, 10], 256, "relu") and fits([784, 1024, 10], 128, "relu")  # up to 2^27
    with pytest.raises(ValueError, match="activation"):
        fits([784, 256, 10], 128, "swish")
    # the cpu backend's thread rule: dense X only, either dtype, plain SGD and optimizers
    assert threads.two_share_epoch([784, 256, 10], 128, "sgd", True, np.float32, "relu")
    assert threads.two_share_epoch([784, 256, 10], 128, "sgd", True, np.float64, "relu")
    assert threads.two_share_epoch([784, 256, 10], 128, "adam", True, np.float64, "relu")
    assert not threads.two_share_epoch([784, 256, 10], 128, "sgd", False, np.float32, "relu")
    assert not threads.two_share_epoch([784, 256, 10], 128, "sgd", True, np.float32, "tanh")


@pytest.mark.parametrize("sizes", [[64, 64, 10], [600, 64, 10]])
def test_stacked_sweep_is_bit_identical_on_one_thread_and_on_two(restore_threads, sizes):
    X, y = make_problem("softmax", sizes[0], 10, m=2000, seed=4)
    results = []
    for n in (1, 2):
        l2fast.set_num_threads(n, adaptive=False)
        nets = [l2fast.Network(sizes, lam=lam, backend="cpu", seed=0) for lam in (0.0, 0.1, 1.0, 10.0)]
        l2fast.fit_together(nets, X, y, epochs=2, lr=0.05, batch_size=32)
        results.append([p for net in nets for p in net.weights + net.biases])
    assert all(np.array_equal(a, b) for a, b in zip(*results))


# -- fork ---------------------------------------------------------------------------------------------

FORK_WHILE_HELPERS_WORK = textwrap.dedent("""
    import os, signal, sys, threading, time
    import numpy as np
    from l2fast import _core

    _core.set_num_threads(2)  # the optimizer step of a 1M-entry tensor then uses l2fast's helper threads
    n = 1 << 20
    P, G, M, V = (np.full(n, 0.5, np.float32) for _ in range(4))
    stop = threading.Event()

    def steps():
        step = 0
        while not stop.is_set():
            step += 1
            _core.optimizer_step(P, G, [M, V], 1e-3, 0.0, step, optimizer="adam")

    worker = threading.Thread(target=steps)
    worker.start()
    hung = 0
    for _ in range(12):
        time.sleep(0.01)
        pid = os.fork()
        if pid == 0:  # the child uses the helper pool at once
            Q = np.ones(n, np.float32)
            _core.optimizer_step(Q, Q.copy(), [np.zeros(n, np.float32), np.zeros(n, np.float32)], 1e-3, 0.0, 1,
                                 optimizer="adam")
            os._exit(0)
        deadline = time.monotonic() + 10
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                hung += 1
                break
            time.sleep(0.005)
    stop.set()
    worker.join()
    print("hung", hung)
    sys.exit(3 if hung else 0)
""")


def test_fork_while_another_thread_runs_an_optimizer_step_does_not_hang_the_child(tmp_path):
    script = tmp_path / "fork.py"
    script.write_text(FORK_WHILE_HELPERS_WORK)
    result = subprocess.run([sys.executable, "-W", "ignore::DeprecationWarning", str(script)], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hung 0" in result.stdout


def test_float64_calls_keep_the_cap_whatever_the_load(restore_threads, monkeypatch):
    l2fast.set_num_threads(2)
    monkeypatch.setattr(threads, "busy_cpus", lambda: 5)  # as if the machine were overloaded
    with threads.call_threads([784, 256, 10], 128, np.dtype("float64")) as n:
        assert n == 2 == _core.get_num_threads()
    with threads.call_threads([784, 256, 10], 128, np.dtype("float32")) as n:
        assert n == 1 == _core.get_num_threads()
    assert _core.get_num_threads() == 2  # the cap is back after the call
    with threads.call_threads([64, 64, 10], 32, np.dtype("float32")) as n:  # too small for two
        assert n == 1


def threads_of_each_epoch(monkeypatch, blas_counts=None):
    """A list that gets the thread count of each ``_core.train_epoch`` call as it starts: its share_threads when it
    has them (an epoch in two shares of records), else OpenBLAS's count. blas_counts, when given, gets OpenBLAS's."""
    seen = []
    train_epoch = _core.train_epoch

    def recording(*args, **kwargs):
        seen.append(kwargs.get("share_threads") or _core.get_num_threads())
        if blas_counts is not None:
            blas_counts.append(_core.get_num_threads())
        return train_epoch(*args, **kwargs)

    monkeypatch.setattr(_core, "train_epoch", recording)
    return seen


def test_a_linear_models_sgd_epoch_reads_on_two_threads_when_a_cpu_is_free(restore_threads, monkeypatch):
    # Its products are tiny (100 x 1 at batch 256), but its time is reading X's rows (cpp/linear_step.cpp).
    l2fast.set_num_threads(2)
    seen = threads_of_each_epoch(monkeypatch)
    X = np.random.default_rng(0).normal(size=(600, 100)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    for busy in (0, 1):
        monkeypatch.setattr(threads, "busy_cpus", lambda: busy)
        for sizes, optimizer in (([100, 1], "sgd"), ([100, 1], "adam"), ([100, 8, 1], "sgd")):
            net = l2fast.Network(sizes, loss="logistic", seed=0)
            net.fit(X, y, epochs=1, batch_size=256, optimizer=optimizer)
    # a CPU free: the linear SGD epoch on 2, Adam's in two shares of records on 2 too, the hidden layer's tiny
    # products on 1; one busy: all on 1
    assert seen == [2, 2, 1, 1, 1, 1]
    # the policy asks the C++ which networks take that step: one layer of at most 8192 weights
    assert _core.linear_step_fits([100, 1]) and _core.linear_step_fits([819, 10])
    assert not _core.linear_step_fits([100, 8, 1]) and not _core.linear_step_fits([1000, 10])


def test_a_linear_models_sgd_epoch_gives_the_same_bits_on_one_and_two_threads(restore_threads):
    X = np.random.default_rng(1).normal(size=(1000, 37)).astype(np.float32)
    y = np.random.default_rng(2).integers(0, 3, size=1000)
    results = []
    for n in (1, 2):
        l2fast.set_num_threads(n, adaptive=False)
        net = l2fast.Network([37, 3], seed=0)
        net.fit(X, y, epochs=2, batch_size=300, lr=0.05)  # steps of 300 and 100 records: two shares and one
        results.append(net.weights + net.biases)
    for a, b in zip(*results):
        assert np.array_equal(a, b)


def test_an_optimizers_epoch_in_two_shares_follows_the_load_in_float64_too(restore_threads, monkeypatch):
    # Its steps are cut in two shares of records whose sums are added in order (_core.optimizer_step_shares), so its
    # bits do not depend on the count and the policy may give it a free CPU, float64 included.
    l2fast.set_num_threads(2)
    blas_counts = []
    seen = threads_of_each_epoch(monkeypatch, blas_counts)
    X, y = make_problem("softmax", 64, 10, m=500, seed=5)
    for busy in (0, 1):
        monkeypatch.setattr(threads, "busy_cpus", lambda: busy)
        for dtype, optimizer, batch in (("float64", "adam", 200), ("float32", "nesterov", 100),
                                        ("float64", "adam", 32), ("float64", "sgd", 200)):
            net = l2fast.Network([64, 64, 10], dtype=dtype, seed=0)
            net.fit(X, y, epochs=1, batch_size=batch, optimizer=optimizer)
    # a CPU free: the two-share epochs (float64 plain SGD's too) on 2; steps of 32 (one share) keep float64's cap;
    # one busy: the two-share epochs on 1, the others as before
    assert seen == [2, 2, 2, 2, 1, 1, 2, 1]
    # OpenBLAS on one thread in the two-share epochs, so that each share's products stay on its own thread
    assert blas_counts == [1, 1, 2, 1, 1, 1, 2, 1]
    assert _core.get_num_threads() == 2  # and back after them
    assert _core.optimizer_step_shares([64, 64, 10], 200) and not _core.optimizer_step_shares([64, 64, 10], 32)
    # up to 2^21 multiply-adds a share's product, 2^24 for a layer of at most 128 units: 64-256-10 and 784-100-10
    # at batch 200, not 784-256-10
    assert _core.optimizer_step_shares([64, 256, 10], 200) and _core.optimizer_step_shares([784, 100, 10], 200)
    assert not _core.optimizer_step_shares([784, 256, 10], 200)
    # plain SGD: float64 only, and not a linear model (cpp/linear_step.cpp takes it)
    assert _core.sgd_step_shares([64, 64, 10], 200, "float64")
    assert not _core.sgd_step_shares([64, 64, 10], 200, "float32")
    assert not _core.sgd_step_shares([64, 64, 10], 32, "float64")
    assert not _core.sgd_step_shares([64, 10], 200, "float64")
    assert not _core.sgd_step_shares([784, 256, 10], 200, "float64")
    with pytest.raises(ValueError, match="dtype"):
        _core.sgd_step_shares([64, 64, 10], 200, "float16")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("optimizer", ["adam", "nesterov", "sgd"])
def test_an_optimizers_epoch_in_two_shares_gives_the_same_bits_on_one_and_two_threads(restore_threads, dtype,
                                                                                      optimizer):
    X, y = make_problem("softmax", 64, 10, m=1037, seed=6)  # steps of 200 (two shares) and a short one of 37 (one)
    results = []
    for n in (1, 2, 1, 2):
        l2fast.set_num_threads(n, adaptive=False)
        net = l2fast.Network([64, 64, 10], lam=0.5, dtype=dtype, seed=0)
        history = net.fit(X, y, epochs=2, batch_size=200, lr=0.01, optimizer=optimizer)
        results.append((net.weights + net.biases, list(history.loss)))
    for params, losses in results[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(params, results[0][0]))
        assert losses == results[0][1]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gradients_in_two_halves_give_the_same_bits_on_one_and_two_threads(restore_threads, dtype):
    rng = np.random.default_rng(7)
    X, y = make_problem("softmax", 30, 4, m=2501, seed=7)  # halves of 1251 and 1250 records
    X = X.astype(dtype)
    sizes = [30, 40, 4]
    assert _core.gradients_shares(sizes, len(X))
    W = [rng.normal(size=(n_out, n_in)).astype(dtype) * 0.3 for n_in, n_out in zip(sizes, sizes[1:])]
    b = [rng.normal(size=n_out).astype(dtype) * 0.1 for n_out in sizes[1:]]
    weights = rng.random(len(X)).astype(dtype)
    whole = _core.gradients(W, b, X, y, 0.02, "tanh", "softmax", sample_weight=weights)
    halves = []
    for blas, share_threads in ((1, 1), (1, 2), (2, 2), (1, 2)):
        l2fast.set_num_threads(blas, adaptive=False)
        halves.append(_core.gradients(W, b, X, y, 0.02, "tanh", "softmax", sample_weight=weights,
                                      share_threads=share_threads))
    for dW, db, loss in halves[1:]:
        assert all(np.array_equal(p, q) for p, q in zip(dW + db, halves[0][0] + halves[0][1]))
        assert loss == halves[0][2]
    # the same gradient as one pass, to the rounding of another order of the sums
    tol = 1e-12 if dtype == "float64" else 2e-5
    for p, q in zip(halves[0][0] + halves[0][1], whole[0] + whole[1]):
        np.testing.assert_allclose(p, q, rtol=tol, atol=tol * np.abs(q).max())
    assert halves[0][2] == pytest.approx(whole[2], rel=tol)
    # on_layer: each layer once, from the last down, the values it then holds final
    out = ([np.full(M.shape, np.nan) for M in W], [np.full(v.shape, np.nan) for v in b])
    seen = []
    _core.gradients(W, b, X, y, 0.02, "tanh", "softmax", sample_weight=weights, share_threads=2, out=out,
                    on_layer=lambda layer: seen.append((layer, out[0][layer].copy(), out[1][layer].copy())))
    assert [layer for layer, *_ in seen] == [1, 0]
    for layer, dW, db in seen:
        assert np.array_equal(dW, halves[0][0][layer]) and np.array_equal(db, halves[0][1][layer])
    with pytest.raises(ValueError, match="share_threads must be >= 0"):
        _core.gradients(W, b, X, y, 0.02, "tanh", "softmax", share_threads=-1)


def test_a_solvers_gradients_take_two_halves_on_the_threads_the_load_leaves(restore_threads, monkeypatch):
    from sklearn.datasets import load_digits

    from l2fast.sklearn import MLPClassifier

    seen = []
    gradients = _core.gradients

    def recording(*args, **kwargs):
        seen.append((kwargs.get("share_threads", 0), _core.get_num_threads()))
        return gradients(*args, **kwargs)

    monkeypatch.setattr(_core, "gradients", recording)
    X, y = load_digits(return_X_y=True)
    X = (X - X.mean(axis=0)) / (X.std(axis=0) + 1.0)
    fits = []
    for n, busy in ((2, 0), (2, 1), (1, 0)):
        l2fast.set_num_threads(n)
        monkeypatch.setattr(threads, "busy_cpus", lambda: busy)
        seen.clear()
        est = MLPClassifier(hidden_layer_sizes=(64,), solver="lbfgs", max_iter=15, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(X, y)
        fits.append(est)
        # every evaluation in two halves, OpenBLAS on one thread: the halves on both threads when a CPU is free
        assert seen and set(seen) == {(2 if n == 2 and not busy else 1, 1)}
    for est in fits[1:]:  # the same bits whatever the threads
        assert all(np.array_equal(p, q) for p, q in zip(est.coefs_ + est.intercepts_,
                                                        fits[0].coefs_ + fits[0].intercepts_))
        assert est.loss_ == fits[0].loss_
    # halves of at most 2048 records whose products pass optimizer_step_shares' bound; not for 784-256-10, nor
    # for too few records, nor (no products to share) for a linear model
    assert _core.gradients_shares([64, 100, 10], 1797) and _core.gradients_shares([64, 100, 10], 60000)
    assert not _core.gradients_shares([784, 256, 10], 1000) and not _core.gradients_shares([64, 100, 10], 60)
    assert not _core.gradients_shares([100, 128, 10], 10000) and _core.gradients_shares([100, 128, 10], 2000)
    assert not _core.gradients_shares([64, 10], 1797)


def test_the_dropin_mlps_two_share_epochs_give_the_same_bits_on_one_and_two_threads(restore_threads):
    from sklearn.datasets import load_digits

    from l2fast.sklearn import MLPClassifier

    X, y = load_digits(return_X_y=True)
    X = (X - X.mean(axis=0)) / (X.std(axis=0) + 1.0)
    fits = []
    for n in (1, 2):
        l2fast.set_num_threads(n, adaptive=False)
        est = MLPClassifier(hidden_layer_sizes=(64,), max_iter=3, tol=0.0, n_iter_no_change=100, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(X, y)
        fits.append(est)
    for a, b in zip(fits[0].coefs_ + fits[0].intercepts_, fits[1].coefs_ + fits[1].intercepts_):
        assert np.array_equal(a, b)
    assert fits[0].loss_curve_ == fits[1].loss_curve_


@pytest.mark.parametrize("sizes, batch", [([7, 10_000], 64), ([7, 300, 2_000], 100)])
def test_wide_layers_bias_sums_give_the_same_bits_on_one_and_two_threads(restore_threads, sizes, batch):
    # A bias's gradient sums dZ's rows for each of its units: through OpenBLAS's GEMV, a float32 10 000-class layer had
    # other last bits on one thread than on two (its columns split at other places); blas::sum_rows adds them in one
    # order. Training and the gradients pass alike (float32: float64 calls keep one thread count, see the README).
    rng = np.random.default_rng(4)
    dtype = "float32"
    X = rng.normal(size=(257, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], size=257)
    results = []
    for n in (1, 2):
        l2fast.set_num_threads(n, adaptive=False)
        net = l2fast.Network(sizes, seed=0, dtype=dtype, lam=0.5)
        net.fit(X, y, epochs=2, batch_size=batch, lr=0.05)
        dW, db = net.gradients(X, y)
        results.append(net.weights + net.biases + dW + db)
    for a, b in zip(*results):
        assert np.array_equal(a, b)


OPENBLAS_ON_THE_POOL = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    import l2fast

    def cpu_seconds():  # each thread's name and CPU time (user + system), by thread id
        tick = os.sysconf("SC_CLK_TCK")
        threads = {}
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/comm") as f:
                    name = f.read().strip()
                with open(f"/proc/self/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except FileNotFoundError:  # a thread that ended meanwhile
                continue
            threads[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / tick)
        return threads

    l2fast.set_num_threads(2, adaptive=False)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4096, 784)).astype(np.float32)
    y = rng.integers(0, 10, size=4096)
    net = l2fast.Network([784, 1024, 1024, 10], backend="cpu", dtype="float32", seed=0, lam=1.0)
    net.fit(X[:512], y[:512], epochs=1, batch_size=256, lr=0.01)  # every thread started
    time.sleep(0.5)  # OpenBLAS's own threads poll about 0.1 s after their last job, then sleep
    before = cpu_seconds()
    net.fit(X, y, epochs=3, batch_size=256, lr=0.01)
    after = cpu_seconds()
    main = os.getpid()
    gained = {tid: (name, t - before.get(tid, (name, 0.0))[1]) for tid, (name, t) in after.items()}
    helpers = sum(t for tid, (name, t) in gained.items() if name == "l2fast-helper")
    others = sum(t for tid, (name, t) in gained.items() if name != "l2fast-helper" and tid != main)
    print(gained[main][1], helpers, others)
""")


@pytest.mark.skipif(not os.path.isdir("/proc/self/task") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux's /proc and two CPUs")
def test_openblas_runs_its_jobs_on_l2fasts_helpers_and_its_own_threads_stay_idle():
    # l2fast hands OpenBLAS's threaded jobs to its own pool (blas_threads.hpp): the second job of each product and the
    # second share of each pass between them run on a thread named l2fast-helper, and OpenBLAS's own server threads
    # (and any other) stay asleep, where they used to poll beside l2fast's (a third thread on two cores).
    out = subprocess.run([sys.executable, "-c", OPENBLAS_ON_THE_POOL], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "L2FAST_NUM_THREADS": "2"})
    assert out.returncode == 0, out.stderr
    main, helpers, others = map(float, out.stdout.split())
    assert helpers >= 0.3 * main, (main, helpers, others)  # the helper took about half of the products
    assert others <= 0.05 * max(helpers, 0.01) + 0.02, (main, helpers, others)


def test_busy_loops_of_other_processes_are_seen():
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        time.sleep(0.3)
        assert threads.read_busy_cpus() >= 2  # (others may be busy too on a shared machine)
    finally:
        for p in loops:
            p.kill()
            p.wait()


def test_using_puts_the_settings_back(restore_threads):
    l2fast.set_num_threads(2)
    with threads.using(1, adaptive=False):
        assert l2fast.get_num_threads() == 1 and not threads._adaptive
    assert l2fast.get_num_threads() == 2 and threads._adaptive


def test_load_benchmark_runs_each_contender_quiet_and_beside_a_busy_loop():
    import io

    from l2fast import bench

    record = bench.run({"K"}, repeats=1, quick=True, out=io.StringIO())
    levels = record["load"]["levels"]
    assert [level["load"]["busy_loops"] for level in levels] == [0, 1]
    for level in levels:
        results = level["results"]["B epoch"]
        assert {"l2fast cpu", "l2fast cpu 1 thread", "l2fast numpy"} <= set(results)
        assert all(r["median_s"] > 0 and r["over_quiet"] > 0 for r in results.values())
    assert all(r["over_quiet"] == 1.0 for r in levels[0]["results"]["B epoch"].values())


@pytest.mark.parametrize("adaptive", [True, False])
@pytest.mark.parametrize("cap", [1, 2, 3])
def test_kernel_threads_run_a_call_on_call_threads_count(restore_threads, monkeypatch, cap, adaptive):
    """KernelThreads (the rule's inputs worked out once for a fit's epochs) runs each call on the count that
    call_threads gives it, for every kind of call and load, and puts the cap back after it, also when it raises."""
    l2fast.set_num_threads(cap, adaptive=adaptive)
    cases = [([784, 256, 10], 128, np.float64, {}), ([784, 256, 10], 128, np.float32, {}),
             ([64, 64, 10], 32, np.float32, {}), ([64, 64, 10], 200, np.float64, {"two_shares": True}),
             ([100, 1], 256, np.float32, {"memory_bound": True}), ([100, 1], 256, np.float64, {"memory_bound": True}),
             ([64, 64, 10], 32, np.float32, {"models": 3})]
    for busy in (0, 1, 5):
        monkeypatch.setattr(threads, "busy_cpus", lambda: busy)
        for sizes, batch, dtype, options in cases:
            with threads.call_threads(sizes, batch, np.dtype(dtype), **options) as expected:
                pass
            kernel_threads = threads.KernelThreads(sizes, batch, np.dtype(dtype), **options)
            if options.get("two_shares"):  # the count as share_threads, OpenBLAS on one thread meanwhile
                assert kernel_threads.run(lambda a, b=0, share_threads=0: (share_threads, _core.get_num_threads(), a,
                                                                           b), 7, b=8) == (expected, 1, 7, 8)
            else:
                assert kernel_threads.run(lambda a, b=0: (_core.get_num_threads(), a, b), 7, b=8) == (expected, 7, 8)
            assert _core.get_num_threads() == cap

            def failing(**_):
                raise KeyError("inside")

            with pytest.raises(KeyError, match="inside"):
                kernel_threads.run(failing)
            assert _core.get_num_threads() == cap
