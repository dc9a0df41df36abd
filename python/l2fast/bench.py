"""``l2fast bench``: epoch times of every available backend and every installed peer, side by side.

Contenders of one configuration run interleaved (one epoch each, in turn, for every repeat), so that
a noisy machine slows them alike; ratios are taken between medians of the same run. The yardsticks
are measured too: the GEMMs alone at the training shapes, and an in-place axpy over the same bytes as
an update.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import l2fast
from l2fast import _plotting, shuffling

ACTIVATION_NAMES_SKLEARN = {"relu": "relu", "tanh": "tanh", "sigmoid": "logistic", "identity": "identity"}


@dataclass
class Config:
    key: str
    title: str
    sizes: list
    m: int
    batch: int
    activation: str = "relu"
    loss: str = "softmax"
    lr: float = 0.01
    lam: float = 1.0

    def describe(self):
        return (f"{self.key}: {self.title}, {'-'.join(map(str, self.sizes))} {self.activation} {self.loss}, "
                f"{self.m} records, batch {self.batch}, float32, lambda {self.lam:g}")


CONFIGS = [
    Config("A", "logistic regression", [100, 1], 100_000, 256, activation="identity", loss="logistic"),
    Config("B", "one hidden layer", [784, 256, 10], 60_000, 128),
    Config("C", "two wide hidden layers", [784, 1024, 1024, 10], 60_000, 256),
    Config("D", "small network, overhead-bound", [64, 64, 10], 50_000, 32),
]
QUICK_CONFIGS = [
    Config("A", "logistic regression", [10, 1], 600, 64, activation="identity", loss="logistic"),
    Config("B", "one hidden layer", [20, 16, 4], 500, 32),
]
SMALL_CONFIGS = [  # N: overhead-bound networks, widths 64-128 and batches 8-64 (only when named: --configs N)
    Config("N", "small network", [64, 64, 10], 50_000, 32),
    Config("N", "small network", [64, 64, 10], 50_000, 8),
    Config("N", "small network", [64, 64, 10], 50_000, 64),
    Config("N", "small network", [64, 128, 10], 50_000, 32),
    Config("N", "small network, wide input", [784, 64, 10], 20_000, 32),
    Config("N", "small network, wide input", [784, 128, 10], 20_000, 64),
]
QUICK_SMALL_CONFIGS = [Config("N", "small network", [16, 16, 4], 400, 8)]
UPDATE_SIZES = [1_000_000, 10_000_000, 100_000_000]
QUICK_UPDATE_SIZES = [10_000]
LAMBDA_PRICE_CONFIGS = ("B", "D")


def make_data(config, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(config.m, config.sizes[0])).astype(np.float32)
    if config.loss == "logistic":
        y = (X @ rng.normal(size=config.sizes[0]) > 0).astype(np.int64)
    else:
        y = rng.integers(0, config.sizes[-1], size=config.m)
    return X, y


# -- contenders: each has a name and epoch() -> seconds ----------------------------------------

class L2fastContender:
    def __init__(self, config, X, y, backend, lam=None, optimizer="sgd"):
        self.name = f"l2fast {backend}" + ("" if lam is None else f" lambda={lam:g}") + \
            ("" if optimizer == "sgd" else f" {optimizer}")
        self.net = l2fast.Network(config.sizes, activation=config.activation, loss=config.loss,
                                  lam=config.lam if lam is None else lam, backend=backend, dtype="float32", seed=0)
        if backend == "cuda":  # the data lives on the GPU, as PyTorch's does
            X, y = self.net._data(X, y)
        self.config, self.X, self.y, self.optimizer = config, X, y, optimizer

    def epoch(self):
        lr = self.config.lr / 10 if self.optimizer.startswith("adam") else self.config.lr
        history = self.net.fit(self.X, self.y, epochs=1, lr=lr, batch_size=self.config.batch,
                               optimizer=self.optimizer)
        return history.seconds[0]


class TorchContender:
    """The same network in PyTorch: nn.Linear layers, SGD with weight decay lam/m on weights only."""

    def __init__(self, config, X, y, device="cpu"):
        import torch

        self.torch, self.device, self.config = torch, device, config
        torch.manual_seed(0)
        layers = []
        act = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid,
               "identity": torch.nn.Identity}[config.activation]
        for n_in, n_out in zip(config.sizes[:-1], config.sizes[1:]):
            layers += [torch.nn.Linear(n_in, n_out), act()]
        self.model = torch.nn.Sequential(*layers[:-1]).to(device)
        weights = [p for name, p in self.model.named_parameters() if name.endswith("weight")]
        biases = [p for name, p in self.model.named_parameters() if name.endswith("bias")]
        self.optimizer = torch.optim.SGD([{"params": weights, "weight_decay": config.lam / config.m},
                                          {"params": biases, "weight_decay": 0.0}], lr=config.lr)
        self.X = torch.from_numpy(X).to(device)
        if config.loss == "logistic":
            self.y = torch.from_numpy(y.astype(np.float32)[:, None]).to(device)
            self.loss_fn = torch.nn.BCEWithLogitsLoss()
        else:
            self.y = torch.from_numpy(y).to(device)
            self.loss_fn = torch.nn.CrossEntropyLoss()
        self.name = f"PyTorch {torch.__version__} {device}"

    def _sync(self):
        if self.device != "cpu":
            self.torch.cuda.synchronize()

    def epoch(self):
        torch, cfg = self.torch, self.config
        self._sync()
        start = time.perf_counter()
        order = torch.randperm(cfg.m, device=self.device)
        for s in range(0, cfg.m, cfg.batch):
            rows = order[s:s + cfg.batch]
            self.optimizer.zero_grad(set_to_none=True)
            self.loss_fn(self.model(self.X[rows]), self.y[rows]).backward()
            self.optimizer.step()
        self._sync()
        return time.perf_counter() - start


def summed_loss(config, activation, logistic, softmax):
    """batch_loss(params, X, y), the minibatch's summed loss of the network, written with a peer framework's
    operations: its activation, and its summed logistic or softmax loss of the logits Z and targets y."""
    def batch_loss(params, X, y):
        A = X
        for W, b in params[:-1]:
            A = activation(A @ W.T + b)
        W, b = params[-1]
        Z = A @ W.T + b
        return logistic(Z, y) if config.loss == "logistic" else softmax(Z, y)

    return batch_loss


def stepped(params, grads, lr, decay, rows):
    """l2fast's step on a peer's (W, b) pairs: W - lr (dL/dW / rows + decay W), b - lr dL/db / rows."""
    scale = lr / rows
    return [(W - scale * gW - lr * decay * W, b - scale * gb) for (W, b), (gW, gb) in zip(params, grads)]


class JaxContender:
    """The same network in JAX, the whole epoch one jitted ``lax.scan`` over its minibatches: the order is
    drawn on the host (NumPy, as l2fast's), each step gathers its rows inside the jitted function, and the
    step is l2fast's, W <- W - lr (mean dL/dW + (lam/m) W), b <- b - lr mean dL/db. The parameters start as
    an l2fast network of the same seed starts, and the orders come from a generator seeded as its are, so
    the two give the same training to float rounding (tests/test_tools.py checks it). The epoch is compiled
    here, ahead of time, timed as ``compile_seconds``."""

    def __init__(self, config, X, y, device="cpu", seed=0):
        import jax

        self.jax, self.config, self.device = jax, config, device
        self._jax_device = jax.devices("gpu" if device == "cuda" else device)[0]
        start = l2fast.Network(config.sizes, activation=config.activation, loss=config.loss, lam=config.lam,
                               backend="numpy", dtype="float32", seed=seed)
        self._order_rng = start._shuffle_rng
        self.params = jax.device_put([(W, b) for W, b in zip(start.weights, start.biases)], self._jax_device)
        targets = y.astype(np.float32)[:, None] if config.loss == "logistic" else y.astype(np.int32)
        self.X, self.y = jax.device_put(X, self._jax_device), jax.device_put(targets, self._jax_device)
        began = time.perf_counter()  # compiled ahead of the epochs, for one order's shape
        order = jax.ShapeDtypeStruct((config.m,), np.int32,
                                     sharding=jax.sharding.SingleDeviceSharding(self._jax_device))
        self._epoch = jax.jit(self._epoch_fn(), donate_argnums=0).lower(self.params, self.X, self.y, order).compile()
        self.compile_seconds = time.perf_counter() - began
        self.name = f"JAX {jax.__version__} {device}"

    def _epoch_fn(self):
        import jax
        import jax.numpy as jnp

        cfg = self.config
        act = {"relu": jax.nn.relu, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "identity": lambda z: z}[
            cfg.activation]
        full, rest = divmod(cfg.m, cfg.batch)
        lr, decay = np.float32(cfg.lr), np.float32(cfg.lam / cfg.m)
        batch_loss = summed_loss(
            cfg, act, lambda Z, y: jnp.sum(jnp.maximum(Z, 0) - Z * y + jnp.log1p(jnp.exp(-jnp.abs(Z)))),
            lambda Z, y: jnp.sum(jax.nn.logsumexp(Z, axis=1) - jnp.take_along_axis(Z, y[:, None], axis=1)[:, 0]))

        def step(params, X, y, rows):
            loss, grads = jax.value_and_grad(batch_loss)(params, X[rows], y[rows])
            return stepped(params, grads, lr, decay, rows.shape[0]), loss

        def epoch(params, X, y, order):
            def scanned(carry, rows):
                params, loss_sum = carry
                params, loss = step(params, X, y, rows)
                return (params, loss_sum + loss), None

            (params, loss_sum), _ = jax.lax.scan(scanned, (params, jnp.float32(0)),
                                                 order[:full * cfg.batch].reshape(full, cfg.batch))
            if rest:
                params, loss = step(params, X, y, order[full * cfg.batch:])
                loss_sum = loss_sum + loss
            return params, loss_sum

        return epoch

    def train(self):
        """One epoch; returns the sum of its minibatches' losses, each before its own step (l2fast's)."""
        order = self.jax.device_put(shuffling.epoch_order(self._order_rng, self.config.m).astype(np.int32),
                                   self._jax_device)
        self.params, loss_sum = self._epoch(self.params, self.X, self.y, order)
        return float(loss_sum)  # waits for the epoch

    def epoch(self):
        start = time.perf_counter()
        self.train()
        return time.perf_counter() - start


class TorchCompileContender:
    """The same training in PyTorch with the whole step compiled by ``torch.compile`` (its default inductor
    backend): one function gathers the minibatch's rows, takes the loss and its gradients (``torch.func``) and
    returns the stepped parameters, W <- W - lr (mean dL/dW + (lam/m) W), b <- b - lr mean dL/db, compiled once
    per minibatch shape (``dynamic=False``: a full and a partial last batch) into one graph (``fullgraph``: a graph
    break is an error, not a silent return to eager mode). The order is drawn on the host as l2fast's; parameters
    and orders start as an l2fast network of the same seed does, so the two give the same training to float
    rounding (tests/test_tools.py checks it). The compilation runs here, timed as ``compile_seconds``, and stays
    out of the epochs."""

    def __init__(self, config, X, y, seed=0):
        import torch

        self.torch, self.config = torch, config
        start = l2fast.Network(config.sizes, activation=config.activation, loss=config.loss, lam=config.lam,
                               backend="numpy", dtype="float32", seed=seed)
        self._order_rng = start._shuffle_rng
        self.params = [(torch.from_numpy(W.copy()), torch.from_numpy(b.copy()))
                       for W, b in zip(start.weights, start.biases)]
        targets = y.astype(np.float32)[:, None] if config.loss == "logistic" else y.astype(np.int64)
        self.X, self.y = torch.from_numpy(X), torch.from_numpy(targets)
        # Every contender's steps are new entries of one cache for the step function, which takes 8 at most (a hard
        # error under fullgraph): earlier contenders' are dropped (they recompile if they are used again).
        torch.compiler.reset()
        self._step = torch.compile(self._step_fn(), dynamic=False, fullgraph=True)  # one graph, or an error
        self.name = f"PyTorch {torch.__version__} torch.compile"
        began = time.perf_counter()
        full, rest = divmod(config.m, config.batch)
        with warnings.catch_warnings():  # inductor calls a torch.jit function that torch itself deprecates
            warnings.filterwarnings("ignore", "`torch.jit.script_method` is deprecated", DeprecationWarning)
            for rows in [config.batch] * bool(full) + [rest] * bool(rest):  # each shape the epoch meets
                self._step(self.params, self.X, self.y, torch.arange(rows))  # functional: self.params stay put
        self.compile_seconds = time.perf_counter() - began

    def _step_fn(self):
        torch = self.torch
        F = torch.nn.functional
        cfg = self.config
        act = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "identity": lambda z: z}[
            cfg.activation]
        batch_loss = summed_loss(cfg, act, lambda Z, y: F.binary_cross_entropy_with_logits(Z, y, reduction="sum"),
                                 lambda Z, y: F.cross_entropy(Z, y, reduction="sum"))

        def step(params, X, y, rows):
            grads, loss = torch.func.grad_and_value(batch_loss)(params, X[rows], y[rows])
            return stepped(params, grads, cfg.lr, cfg.lam / cfg.m, rows.shape[0]), loss

        return step

    def train(self):
        """One epoch; returns the sum of its minibatches' losses, each before its own step (l2fast's)."""
        torch, batch = self.torch, self.config.batch
        order = torch.from_numpy(shuffling.epoch_order(self._order_rng, self.config.m))
        losses = []
        for s in range(0, self.config.m, batch):
            self.params, loss = self._step(self.params, self.X, self.y, order[s:s + batch])
            losses.append(loss)
        return float(torch.stack(losses).sum())

    def epoch(self):
        start = time.perf_counter()
        self.train()
        return time.perf_counter() - start


class SklearnContender:
    """scikit-learn's MLPClassifier, plain SGD (momentum 0), alpha = lam * batch / m for the same steps."""

    def __init__(self, config, X, y):
        import sklearn
        from sklearn.neural_network import MLPClassifier

        self.model = MLPClassifier(
            hidden_layer_sizes=tuple(config.sizes[1:-1]), activation=ACTIVATION_NAMES_SKLEARN[config.activation],
            solver="sgd", momentum=0.0, nesterovs_momentum=False, learning_rate="constant",
            learning_rate_init=config.lr, alpha=config.lam * config.batch / config.m, batch_size=config.batch,
            shuffle=True, random_state=0)
        self.X, self.y = X, y
        self.classes = np.unique(y)
        self.name = f"scikit-learn {sklearn.__version__} MLPClassifier"

    def epoch(self):
        start = time.perf_counter()
        self.model.partial_fit(self.X, self.y, classes=self.classes)
        return time.perf_counter() - start


class GemmOnlyContender:
    """The limit: the same GEMMs alone at the same shapes, through l2fast's BLAS."""

    name = "GEMMs alone (limit)"
    device = "cpu"

    def __init__(self, config):
        from l2fast.backends.cpu import _core

        self.core, self.config = _core, config

    def epoch(self):
        cfg = self.config
        # On the threads l2fast's own epoch of this network would get now (its policy reads the load).
        with l2fast.threads.call_threads(cfg.sizes, cfg.batch, np.float32):
            return self.core.gemm_only_epoch_seconds(cfg.sizes, cfg.m, cfg.batch, "float32")


class ShuffledReadContender:
    """The floor of a linear model's epoch (one layer): reading every row of the same X once, in a shuffled order,
    with the prefetching the one-layer step does (``_core.shuffled_read_seconds``): the memory traffic an epoch
    cannot avoid."""

    name = "X read once, shuffled (floor)"
    device = "cpu"

    def __init__(self, config, X):
        from l2fast.backends.cpu import _core

        self.core, self.X = _core, X

    def epoch(self):
        return self.core.shuffled_read_seconds(self.X, 1)


class GatheredBatchContender:
    """Issue 19's floor of a linear model's epoch: each batch's rows gathered once out of X in a shuffled order (copied
    into a buffer, with the same prefetching), then the batch read twice from cache, as a step's forward and gradient
    passes read it (``_core.shuffled_read_seconds(X, 1, batch)``). Looser than the floor above: a fused step reads
    each block of rows from L1 while it is there, so it can come in under this one."""

    name = "X by batch, read twice (issue's floor)"
    device = "cpu"

    def __init__(self, config, X):
        from l2fast.backends.cpu import _core

        self.core, self.X, self.batch = _core, X, config.batch

    def epoch(self):
        return self.core.shuffled_read_seconds(self.X, 1, self.batch)


class GpuGemmOnlyContender:
    """The GPU's limit: the GEMMs of one epoch alone (forward, input gradients, weight gradients with
    beta = 1, a partial last batch included) through cuBLAS, as one CUDA graph timed with CUDA events
    (eagerly when the capture fails)."""

    name = "GEMMs alone on the GPU (limit)"
    device = "cuda"

    def __init__(self, config):
        import cupy

        from l2fast.backends.cuda import CudaBackend, _ptr

        self.cupy, self.config, self.backend = cupy, config, CudaBackend()
        rng = cupy.random.default_rng(0)
        sizes, batch = config.sizes, config.batch
        self.X = rng.standard_normal((batch, sizes[0]), dtype=np.float32)
        self.W = [rng.standard_normal((n_out, n_in), dtype=np.float32) * 0.01
                  for n_in, n_out in zip(sizes[:-1], sizes[1:])]
        self.out = [cupy.zeros((batch, n), np.float32) for n in sizes[1:]]  # finite: no NaN or overflow
        self.grad = [cupy.zeros((batch, n), np.float32) for n in sizes[1:]]
        self._ptr = _ptr
        self.graph = None

    def _products(self, rows):
        blas, f32, sizes = self.backend._blas_for(), np.dtype("float32"), self.config.sizes
        p = self._ptr
        for l, W in enumerate(self.W):
            n_in, n_out = sizes[l], sizes[l + 1]
            a = p(self.X) if l == 0 else p(self.out[l - 1])
            blas.gemm(f32, False, True, rows, n_out, n_in, 1.0, a, n_in, p(W), n_in, 0.0, p(self.out[l]), n_out)
        for l in reversed(range(len(self.W))):
            n_in, n_out = sizes[l], sizes[l + 1]
            a = p(self.X) if l == 0 else p(self.out[l - 1])
            if l > 0:
                blas.gemm(f32, False, False, rows, n_in, n_out, 1.0, p(self.grad[l]), n_out, p(self.W[l]), n_in, 0.0,
                          p(self.grad[l - 1]), n_in)
            blas.gemm(f32, True, False, n_out, n_in, rows, -1e-6, p(self.grad[l]), n_out, a, n_in, 1.0, p(self.W[l]),
                      n_in)

    def _all_steps(self):
        full, rest = divmod(self.config.m, self.config.batch)
        for _ in range(full):
            self._products(self.config.batch)
        if rest:
            self._products(rest)

    def epoch(self):
        cupy, stream = self.cupy, self.backend.stream
        with stream:
            if self.graph is None:
                self._all_steps()  # loads every kernel before the capture
                try:
                    stream.begin_capture()
                    try:
                        self._all_steps()
                    finally:
                        self.graph = stream.end_capture()
                except Exception:  # time it eagerly then
                    self.graph = False
            start, stop = cupy.cuda.Event(), cupy.cuda.Event()
            start.record(stream)
            if self.graph:
                self.graph.launch(stream=stream)
            else:
                self._all_steps()
            stop.record(stream)
            stop.synchronize()
        return cupy.cuda.get_elapsed_time(start, stop) / 1e3


def peers(config, X, y, backends):
    """Installed peers on the devices of the available backends; missing ones are skipped quietly."""
    found = []
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        found.append(TorchContender(config, X, y, "cpu"))
        if "cuda" in backends and torch.cuda.is_available():
            found.append(TorchContender(config, X, y, "cuda"))
    try:
        import jax
    except ImportError:
        jax = None
    if jax is not None:
        found.append(JaxContender(config, X, y, "cpu"))
        if "cuda" in backends and any(d.platform == "gpu" for d in jax.devices()):
            found.append(JaxContender(config, X, y, "cuda"))
    try:
        import sklearn  # noqa: F401
    except ImportError:
        pass
    else:
        found.append(SklearnContender(config, X, y))
    return found


def interleaved(contenders, repeats, warmup=1, pause=0.0, cpu=None):
    """{name: [seconds of each timed epoch]}: every contender runs one epoch in turn, repeats times, each
    after `pause` seconds (the thread pools of the one before, PyTorch's and NumPy's, spin on a while). Given a
    dict `cpu`, it gets {name: [the process's CPU seconds over each timed epoch call]} too: on a shared machine
    the time a contender's threads ran, which waiting for a core does not add to."""
    times = {c.name: [] for c in contenders}
    if cpu is not None:
        cpu.update({c.name: [] for c in contenders})
    for r in range(warmup + repeats):
        for c in contenders:
            time.sleep(pause)
            began = time.process_time()
            t = c.epoch()
            used = time.process_time() - began
            if r >= warmup:
                times[c.name].append(t)
                if cpu is not None:
                    cpu[c.name].append(used)
    return times


def summarise(times, m):
    return {name: {"median_s": statistics.median(ts), "min_s": min(ts), "samples_per_s": m / statistics.median(ts),
                   "seconds": ts} for name, ts in times.items()}


def ratios_for(results, ours):
    """Speed-ups of `ours` over every other contender (their median over ours), and, for the
    limit, ours over it (1.0 = at the limit)."""
    t = results[ours]["median_s"]
    ratios = {}
    for name, r in results.items():
        if name == ours:
            continue
        if name in LIMITS:
            if LIMITS[name] == ours.split()[-1]:  # each backend against the limit of its own device
                ratios[f"{ours} / {name}"] = t / r["median_s"]
        else:
            ratios[f"{name} / {ours}"] = r["median_s"] / t
    return ratios


LIMITS = {GemmOnlyContender.name: "cpu", ShuffledReadContender.name: "cpu", GatheredBatchContender.name: "cpu",
          GpuGemmOnlyContender.name: "cuda"}


def bench_config(config, backends, repeats, out):
    X, y = make_data(config)
    contenders = [L2fastContender(config, X, y, b) for b in backends]
    contenders += peers(config, X, y, backends)
    if "cpu" in backends:
        contenders.append(GemmOnlyContender(config))
        if len(config.sizes) == 2:
            contenders += [ShuffledReadContender(config, X), GatheredBatchContender(config, X)]
    if "cuda" in backends:
        contenders.append(GpuGemmOnlyContender(config))
    results = summarise(interleaved(contenders, repeats), config.m)
    names = [c.name for c in contenders]
    ratios = {}
    for b in backends:
        if b != "numpy":
            ratios.update(ratios_for(results, f"l2fast {b}"))
    print(config.describe(), file=out)
    print(f"  {'contender':<40} {'median s':>10} {'min s':>10} {'samples/s':>12}", file=out)
    for name in names:
        r = results[name]
        print(f"  {name:<40} {r['median_s']:>10.4g} {r['min_s']:>10.4g} {r['samples_per_s']:>12.0f}", file=out)
    for key, value in ratios.items():
        print(f"  {key:<52} {value:>7.2f}x", file=out)
    entry = {"config": config.__dict__, "results": results, "ratios": ratios}
    for c in contenders:
        if isinstance(c, L2fastContender) and c.net.backend == "cuda":
            gpu = c.net._backend
            entry["cuda_graphs"] = {"used": gpu.use_graphs and bool(gpu._graphs), "error": gpu.graph_error}
            print(f"  l2fast cuda: CUDA graphs {'used' if entry['cuda_graphs']['used'] else 'NOT used'}"
                  + (f" ({gpu.graph_error})" if gpu.graph_error else ""), file=out)
    return entry


@contextlib.contextmanager
def torch_on_one_thread():
    """PyTorch's intra-op threads set to one while N runs (when it is installed), as l2fast's policy runs products
    this small: with its default (every core) on a busy 2-core machine, each of its tiny steps waits for a thread
    that has no core, and an epoch of 64-64-10 took 37 s (eager) and 22 s (torch.compile) instead of about 1."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def small_peers(config, X, y):
    """N's peers, where installed: PyTorch eager, PyTorch with its step compiled by torch.compile, and JAX's jitted
    epoch (the compilations done here, outside the epochs)."""
    found = []
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        found += [TorchContender(config, X, y, "cpu"), TorchCompileContender(config, X, y)]
    try:
        import jax  # noqa: F401
    except ImportError:
        pass
    else:
        found.append(JaxContender(config, X, y, "cpu"))
    return found


def bench_small(configs, repeats, out):
    """N: small networks, where the time beyond the matrix products shows: l2fast cpu (X given as an
    l2fast.Dataset, checked once) against its GEMMs alone, PyTorch eager, torch.compile and JAX's jitted epoch
    (when installed), interleaved, 50 ms apart (other pools' spinning threads stay out of the next one's times);
    wall and process CPU time, the compile times, the load average with each row. PyTorch on one thread."""
    with torch_on_one_thread():
        return _bench_small(configs, repeats, out)


def _bench_small(configs, repeats, out):
    rows = []
    print("N: small networks, l2fast cpu against its GEMMs alone, PyTorch (eager, torch.compile) and JAX's jitted "
          "epoch (median s per epoch; cpu = the process's CPU time; PyTorch on one thread)", file=out)
    for config in configs:
        X, y = make_data(config)
        contenders = [L2fastContender(config, l2fast.Dataset(X, y), None, "cpu"), GemmOnlyContender(config)]
        contenders += small_peers(config, X, y)
        compiled = {c.name: c.compile_seconds for c in contenders if hasattr(c, "compile_seconds")}
        load, cpu = os.getloadavg(), {}
        results = summarise(interleaved(contenders, repeats, pause=0.05, cpu=cpu), config.m)
        for name, ts in cpu.items():
            results[name]["cpu_median_s"] = statistics.median(ts)
            results[name]["cpu_seconds"] = ts
        ratios = ratios_for(results, "l2fast cpu")
        cpu_ratios = ratios_for({name: {"median_s": r["cpu_median_s"]} for name, r in results.items()}, "l2fast cpu")
        rows.append({"config": config.__dict__, "results": results, "ratios": ratios, "cpu_ratios": cpu_ratios,
                     "compile_s": compiled, "loadavg": [load, os.getloadavg()]})
        print(f"  {'-'.join(map(str, config.sizes)):>11} batch {config.batch:<3} (load {load[0]:.1f} -> "
              f"{os.getloadavg()[0]:.1f})", file=out)
        for name, r in results.items():
            key, what = (f"l2fast cpu / {name}", "l2fast / it") if name in LIMITS else (f"{name} / l2fast cpu",
                                                                                         "it / l2fast")
            shown = f"{what} {ratios[key]:>6.2f}x wall {cpu_ratios[key]:>6.2f}x cpu" if key in ratios else ""
            built = f"  (compiled in {compiled[name]:.1f} s)" if name in compiled else ""
            print(f"    {name:<44} {r['median_s']:>9.4g} s  cpu {r['cpu_median_s']:>9.4g} s  {shown}{built}",
                  file=out, flush=True)
    return rows


def bench_lambda_price(config, backends, repeats, out):
    """Epoch time with lambda > 0 over lambda = 0, per backend, measured interleaved."""
    X, y = make_data(config)
    price = {}
    for b in backends:
        pair = [L2fastContender(config, X, y, b, lam=config.lam), L2fastContender(config, X, y, b, lam=0.0)]
        res = summarise(interleaved(pair, repeats), config.m)
        price[b] = res[pair[0].name]["median_s"] / res[pair[1].name]["median_s"]
        print(f"  L ({config.key}) l2fast {b}: epoch with lambda={config.lam:g} / lambda=0 = {price[b]:.3f}", file=out)
    return price


def update_operands(n):
    """The weights W (n,) and a small gradient dW (n,), float32, that U and O update."""
    rng = np.random.default_rng(0)
    return rng.standard_normal(n, dtype=np.float32), rng.standard_normal(n, dtype=np.float32) * np.float32(1e-3)


def time_in_blocks(kernels, rounds, calls, pause, warmup=0.03):
    """Seconds per call of each kernel (name -> callable), timed in blocks of `calls` back-to-back calls
    after `warmup` seconds of untimed ones (one at least), the kernels taking turns for `rounds` rounds. Each
    block starts after `pause` seconds of quiet: thread pools (OpenBLAS's, l2fast's, PyTorch's) spin for a
    while after their last job, and a kernel timed while another's threads still spin shares a core with them.
    The warm-up: on the development machine a memory-bound kernel's first milliseconds after a sleep run up to
    3 x slower, whichever kernel it is (10M float32 parameters: l2fast's update and OpenBLAS's axpy 1.4-8 ms a call
    after one untimed call, 1.3-1.9 ms after 30 ms of them; benchmarks/README.md, U, session 21)."""
    times = {k: [] for k in kernels}
    for _ in range(rounds):
        for k, f in kernels.items():
            time.sleep(pause)
            began = time.perf_counter()
            f()
            while time.perf_counter() - began < warmup:
                f()
            for _ in range(calls):
                start = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - start)
    return times


def bench_update(sizes, repeats, out, lr=0.01, lam_over_m=1e-5, pause=0.2):
    """The L2 update alone: l2fast's one-pass kernel, naive NumPy, and OpenBLAS's in-place axpy."""
    from l2fast.backends.cpu import _core

    rows = []
    print("U: the L2 update alone, W <- W - lr (dW + lam/m W), float32", file=out)
    print(f"  {'parameters':>12} {'l2fast ms':>10} {'naive NumPy ms':>15} {'axpy ms':>9} {'l2fast GB/s':>12} "
          f"{'l2fast/axpy':>12} {'naive/axpy':>11}", file=out)
    for n in sizes:
        W, dW = update_operands(n)

        def naive():
            W[...] -= lr * (dW + lam_over_m * W)

        kernels = {"l2fast": lambda: _core.l2_update(W, dW, lr, lam_over_m), "naive": naive,
                   "axpy": lambda: _core.axpy(-lr, dW, W)}
        # Each kernel back to back, as an update sweeps tensor after tensor: called once between other
        # work, each would pay for waking its threads, and interleaved, each would meet the others'
        # threads still spinning.
        times = time_in_blocks(kernels, repeats, 3, pause)
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"parameters": n, "median_s": med, "min_s": {k: min(v) for k, v in times.items()},
               "l2fast_over_axpy": med["l2fast"] / med["axpy"], "naive_over_axpy": med["naive"] / med["axpy"],
               "l2fast_GB_per_s": 3 * 4 * n / med["l2fast"] / 1e9}
        rows.append(row)
        print(f"  {n:>12} {med['l2fast'] * 1e3:>10.3f} {med['naive'] * 1e3:>15.3f} {med['axpy'] * 1e3:>9.3f} "
              f"{row['l2fast_GB_per_s']:>12.1f} {row['l2fast_over_axpy']:>12.2f} {row['naive_over_axpy']:>11.2f}",
              file=out)
    return rows


OPTIMIZER_SIZES = [1_000_000, 10_000_000]
QUICK_OPTIMIZER_SIZES = [10_000]
# Arrays each update streams through memory (read or write, counting a read-and-write twice): W, G
# and the state; the axpy W <- W + a G streams 3.
OPTIMIZER_STREAMS = {"sgd": 3, "momentum": 5, "nesterov": 5, "adam": 7, "adamw": 7}


def _torch_optimizer(torch, name, params, lr, decay):
    """PyTorch's own optimizer for ``name`` with the same (coupled or, for AdamW, decoupled) decay,
    fused where PyTorch has a fused CPU kernel, else foreach."""
    groups = [{"params": params, "weight_decay": decay}]
    make = {"sgd": lambda **k: torch.optim.SGD(groups, lr=lr, **k),
            "momentum": lambda **k: torch.optim.SGD(groups, lr=lr, momentum=0.9, **k),
            "nesterov": lambda **k: torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True, **k),
            "adam": lambda **k: torch.optim.Adam(groups, lr=lr, **k),
            "adamw": lambda **k: torch.optim.AdamW(groups, lr=lr, **k)}[name]
    try:
        return make(fused=True), "fused"
    except (RuntimeError, TypeError, ValueError):
        return make(foreach=True), "foreach"


def bench_optimizers(sizes, repeats, out, lr=0.01, lam_over_m=1e-5, pause=0.2):
    """O: one step of each optimizer's update on a tensor of n float32 parameters, against the
    memory-bandwidth limit: OpenBLAS's in-place axpy, scaled to the bytes the update must stream."""
    from l2fast.backends.cpu import _core, core_options
    from l2fast.backends.numpy_ref import optimizer_step
    from l2fast.optim import resolve_optimizer

    try:
        import torch
    except ImportError:
        torch = None
    rows = []
    print("O: one optimizer step alone (the update with its L2 term), float32; limit = axpy time x streams / 3",
          file=out)
    print(f"  {'parameters':>11} {'optimizer':>9} {'l2fast ms':>10} {'limit ms':>9} {'l2fast/limit':>13} "
          f"{'NumPy ref ms':>13} {'PyTorch ms':>14}", file=out)
    for n in sizes:
        W, G = update_operands(n)
        for name, streams in OPTIMIZER_STREAMS.items():
            spec = resolve_optimizer(name)
            slots = [np.zeros(n, np.float32) for _ in range(spec.n_slots)]
            ref_W, ref_slots = W.copy(), [s.copy() for s in slots]
            step = [0]

            def ours():
                step[0] += 1
                _core.optimizer_step(W, G, slots, lr, lam_over_m, step[0], **core_options(spec))

            kernels = {"l2fast": ours, "axpy": lambda: _core.axpy(-lr, G, W),
                       "numpy": lambda: optimizer_step(ref_W, G, ref_slots, lr, lam_over_m, spec, max(step[0], 1))}
            torch_kind = None
            if torch is not None:
                param = torch.nn.Parameter(torch.from_numpy(W.copy()))
                param.grad = torch.from_numpy(G)
                opt, torch_kind = _torch_optimizer(torch, name, [param], lr, lam_over_m)
                kernels["torch"] = opt.step
            times = time_in_blocks(kernels, 2, repeats, pause)
            med = {k: statistics.median(v) for k, v in times.items()}
            limit = med["axpy"] * streams / 3
            row = {"parameters": n, "optimizer": name, "streams": streams, "median_s": med, "limit_s": limit,
                   "l2fast_over_limit": med["l2fast"] / limit, "numpy_over_limit": med["numpy"] / limit,
                   "torch_kind": torch_kind}
            if "torch" in med:
                row["torch_over_limit"] = med["torch"] / limit
            rows.append(row)
            torch_ms = f"{med['torch'] * 1e3:>8.3f} ({torch_kind})" if "torch" in med else f"{'-':>14}"
            print(f"  {n:>11} {name:>9} {med['l2fast'] * 1e3:>10.3f} {limit * 1e3:>9.3f} "
                  f"{row['l2fast_over_limit']:>13.2f} {med['numpy'] * 1e3:>13.3f} {torch_ms}", file=out)
    return rows


def bench_optimizers_gpu(sizes, repeats, out, lr=0.01, lam_over_m=1e-5):
    """O on the GPU: each optimizer's fused kernel alone against cuBLAS's axpy over the same bytes
    (scaled by streams, as on the CPU) and PyTorch's fused CUDA optimizers; CUDA-event timing."""
    import cupy

    from l2fast.backends.cuda import THREADS, _kernels
    from l2fast.optim import resolve_optimizer

    try:
        import torch
    except ImportError:
        torch = None
    kernels = _kernels(np.float32)
    f32 = np.float32
    rows = []
    print("O (GPU): one optimizer step alone, float32, CUDA events; limit = axpy time x streams / 3", file=out)

    def timed(f):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        f()
        times = []
        for _ in range(repeats):
            start.record()
            f()
            stop.record()
            stop.synchronize()
            times.append(cupy.cuda.get_elapsed_time(start, stop) / 1e3)
        return statistics.median(times)

    for n in sizes:
        W = cupy.random.default_rng(0).standard_normal(n, dtype=f32)
        G = W * f32(1e-3)
        counters = cupy.zeros(2, np.int64)
        rates = cupy.asarray(np.array([lr, lam_over_m], f32))  # the kernels read lr and the decay on the GPU
        axpy = timed(lambda: cupy.cublas.axpy(f32(-lr), G, W))
        for name in ("momentum", "nesterov", "adam", "adamw"):
            spec, streams = resolve_optimizer(name), OPTIMIZER_STREAMS[name]
            slots = [cupy.zeros(n, f32) for _ in range(spec.n_slots)]
            grid = ((n + THREADS - 1) // THREADS,)
            if spec.name == "momentum":
                def ours():
                    kernels["momentum_step"](grid, (THREADS,), (W, G, slots[0], np.int64(n), rates, f32(spec.momentum),
                                                                 np.int32(spec.nesterov), np.int32(spec.decoupled)))
            else:
                def ours():
                    kernels["adam_step"](grid, (THREADS,), (W, G, slots[0], slots[1], np.int64(n), rates,
                                                            np.float64(spec.beta1),
                                                            np.float64(spec.beta2), f32(spec.eps),
                                                            np.int32(spec.decoupled), counters))
            row = {"parameters": n, "optimizer": name, "l2fast_s": timed(ours), "limit_s": axpy * streams / 3}
            row["l2fast_over_limit"] = row["l2fast_s"] / row["limit_s"]
            if torch is not None and torch.cuda.is_available():
                param = torch.nn.Parameter(torch.as_tensor(W, device="cuda").clone())
                param.grad = torch.as_tensor(G, device="cuda").clone()
                opt, kind = _torch_optimizer(torch, name, [param], lr, lam_over_m)
                row["torch_s"], row["torch_kind"] = timed(opt.step), kind
            rows.append(row)
            print(f"  {n:>11} {name:>9} l2fast {row['l2fast_s'] * 1e6:9.1f} us  limit {row['limit_s'] * 1e6:9.1f} us  "
                  f"({row['l2fast_over_limit']:.2f}x)"
                  + (f"  PyTorch {row['torch_s'] * 1e6:9.1f} us ({row['torch_kind']})" if "torch_s" in row else ""),
                  file=out)
    return rows


def bench_optimizer_epochs(config, repeats, out):
    """The price of each optimizer in a whole cpu epoch: its epoch time over plain SGD's."""
    X, y = make_data(config)
    contenders = [L2fastContender(config, X, y, "cpu", optimizer=name) for name in OPTIMIZER_STREAMS]
    results = summarise(interleaved(contenders, repeats), config.m)
    sgd = results[contenders[0].name]["median_s"]
    rows = {}
    for c in contenders:
        rows[c.optimizer] = {"median_s": results[c.name]["median_s"],
                             "over_sgd": results[c.name]["median_s"] / sgd}
        print(f"  O ({config.key}) l2fast cpu epoch, {c.optimizer:>8}: {rows[c.optimizer]['median_s']:.4f} s "
              f"({rows[c.optimizer]['over_sgd']:.3f} x sgd)", file=out)
    return rows


SWEEP_CONFIGS = [  # (sizes, records, batch, epochs): the demo's network, and D's
    ([64, 256, 256, 10], 100, 20, 100),
    ([64, 64, 10], 50_000, 32, 1),
]
QUICK_SWEEP_CONFIGS = [([10, 16, 3], 300, 32, 2)]
SWEEP_LAMS = [0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0]


def bench_sweep(configs, backends, repeats, out):
    """S: eight lambdas trained as one stacked model (fit_together) against eight separate fits."""
    rows = []
    print(f"S: {len(SWEEP_LAMS)} values of lambda, stacked against one after the other", file=out)
    for sizes, m, batch, epochs in configs:
        rng = np.random.default_rng(0)
        X = rng.normal(size=(m, sizes[0])).astype(np.float32)
        y = rng.integers(0, sizes[-1], size=m)
        for backend in backends:
            def stacked():
                nets = [l2fast.Network(sizes, lam=lam, backend=backend, seed=0) for lam in SWEEP_LAMS]
                l2fast.fit_together(nets, X, y, epochs=epochs, lr=0.01, batch_size=batch)

            def separate():
                for lam in SWEEP_LAMS:
                    l2fast.Network(sizes, lam=lam, backend=backend, seed=0).fit(X, y, epochs=epochs, lr=0.01,
                                                                                 batch_size=batch)

            times = {"stacked": [], "separate": []}
            for r in range(1 + repeats):
                for name, f in (("stacked", stacked), ("separate", separate)):
                    start = time.perf_counter()
                    f()
                    if r:
                        times[name].append(time.perf_counter() - start)
            med = {k: statistics.median(v) for k, v in times.items()}
            row = {"sizes": sizes, "m": m, "batch": batch, "epochs": epochs, "backend": backend,
                   "median_s": med, "separate_over_stacked": med["separate"] / med["stacked"]}
            rows.append(row)
            print(f"  {'-'.join(map(str, sizes)):>14} m={m:<6} batch {batch:<4} {epochs:>4} epochs  {backend:>6}: "
                  f"stacked {med['stacked']:.3f} s, separate {med['separate']:.3f} s "
                  f"({row['separate_over_stacked']:.2f}x)", file=out)
    return rows


GPU_CONFIGS = ("C", "D")  # the GPU check's configurations: GEMM-bound and overhead-bound
GPU_SWEEP_LAMS = 16
GPU_TARGETS = {"C": ("l2fast cuda / GEMMs alone on the GPU (limit)", "<=", 1.15),
               "D": ("PyTorch {torch} cuda / l2fast cuda", ">=", 5.0)}


def bench_gpu_sweep(config, repeats, out, n_lams=GPU_SWEEP_LAMS):
    """A grid of n_lams values of lambda trained as one stacked model on the GPU (fit_together), one
    epoch, against one network's epoch; the two interleaved, wall time after the epoch's sync."""
    X, y = make_data(config)
    lams = [0.0] + list(np.logspace(-2, 2, n_lams - 1))
    make = lambda lam: l2fast.Network(config.sizes, activation=config.activation, loss=config.loss,  # noqa: E731
                                      lam=lam, backend="cuda", dtype="float32", seed=0)
    grid, one = [make(lam) for lam in lams], make(config.lam)
    X, y = one._data(X, y)  # on the GPU once, as in bench_config
    fits = {"grid": lambda: l2fast.fit_together(grid, X, y, epochs=1, lr=config.lr, batch_size=config.batch),
            "one": lambda: one.fit(X, y, epochs=1, lr=config.lr, batch_size=config.batch)}
    times = {name: [] for name in fits}
    for r in range(1 + repeats):
        for name, fit in fits.items():
            start = time.perf_counter()
            fit()
            if r:
                times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    row = {"config": config.key, "lambdas": n_lams, "median_s": med, "seconds": times,
           "grid_over_one": med["grid"] / med["one"], "captures": one._backend.captures}
    print(f"  sweep ({config.key}): {n_lams} lambdas stacked {med['grid']:.4f} s, one network {med['one']:.4f} s: "
          f"{row['grid_over_one']:.2f} x one run (target <= 2)", file=out)
    return row


def run_gpu(repeats=5, json_path=None, out=None):
    """The GPU check's benchmark: C and D with l2fast cuda, PyTorch on the same GPU and the cuBLAS GEMMs
    alone, and a 16-lambda stacked sweep against one run; each target's ratio printed beside it."""
    out = out or sys.stdout
    record = environment()
    record["repeats"] = repeats
    if "cuda" not in record["backends"]:
        raise l2fast.BackendUnavailableError("the GPU benchmark needs backend='cuda'")
    print(f"l2fast GPU bench on {record['gpu']}, commit {record['commit']}", file=out)
    record["configs"], record["targets"] = {}, {}
    for config in (c for c in CONFIGS if c.key in GPU_CONFIGS):
        X, y = make_data(config)
        contenders = [L2fastContender(config, X, y, "cuda")]
        contenders += [c for c in peers(config, X, y, ["cuda"]) if getattr(c, "device", None) == "cuda"]
        contenders.append(GpuGemmOnlyContender(config))
        results = summarise(interleaved(contenders, repeats), config.m)
        ratios = ratios_for(results, "l2fast cuda")
        print(config.describe(), file=out)
        for name, r in results.items():
            print(f"  {name:<40} {r['median_s']:>10.4g} s (min {r['min_s']:.4g} s)", file=out)
        for key, value in ratios.items():
            print(f"  {key:<52} {value:>7.2f}x", file=out)
        gpu = contenders[0].net._backend
        record["configs"][config.key] = {"config": config.__dict__, "results": results, "ratios": ratios,
                                         "cuda_graphs": {"used": gpu.use_graphs and bool(gpu._graphs),
                                                         "captures": gpu.captures, "error": gpu.graph_error}}
        print(f"  l2fast cuda: CUDA graphs {'used' if gpu.use_graphs and gpu._graphs else 'NOT used'}, "
              f"{gpu.captures} captured" + (f" ({gpu.graph_error})" if gpu.graph_error else ""), file=out)
        name, sense, bound = GPU_TARGETS[config.key]
        name = name.format(torch=record["versions"].get("torch", ""))
        if name in ratios:
            met = ratios[name] <= bound if sense == "<=" else ratios[name] >= bound
            record["targets"][config.key] = {"ratio": name, "value": ratios[name], "target": f"{sense} {bound}",
                                             "met": met}
            print(f"  target: {name} {sense} {bound}: {ratios[name]:.2f} ({'met' if met else 'NOT met'})", file=out)
    record["sweep"] = bench_gpu_sweep(next(c for c in CONFIGS if c.key == "D"), repeats, out)
    record["targets"]["sweep"] = {"ratio": "16-lambda grid / one run", "value": record["sweep"]["grid_over_one"],
                                  "target": "<= 2", "met": record["sweep"]["grid_over_one"] <= 2}
    from l2fast import bench_solution

    record["lbfgs"] = bench_solution.gpu_lbfgs(repeats, out)
    if json_path:
        Path(json_path).write_text(json.dumps(record, indent=1))
        print(f"wrote {json_path}", file=out)
    return record


LOAD_LEVELS = (0, 1, 2)  # busy-loop processes running beside the benchmark


@contextlib.contextmanager
def busy_loops(n):
    """Runs the block with `n` other processes each spinning on a core (a browser tab, a compile, a
    neighbour's job); yields the load average and the runnable tasks when they have started."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.5 if n else 0.0)
        yield {"busy_loops": n, "loadavg": Path("/proc/loadavg").read_text().split()[:4]}
    finally:
        for p in loops:
            p.kill()
            p.wait()


class ThreadsContender:
    """Another contender run with l2fast's threads set for it: a fixed count (adaptive=False) or the policy."""

    def __init__(self, inner, n, adaptive, label):
        self.inner, self.n, self.adaptive = inner, n, adaptive
        self.name = f"{inner.name} {label}"

    def epoch(self):
        with l2fast.threads.using(self.n, adaptive=self.adaptive):
            return self.inner.epoch()


class DemoContender:
    """The whole of ``l2fast demo --quick`` (the data, a stacked sweep of 4 lambdas, plots), timed as one run."""

    def __init__(self, backend):
        self.backend, self.name = backend, f"l2fast {backend}"

    def epoch(self):
        import io
        import tempfile

        from l2fast import demo

        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            demo.run(self.backend, quick=True, out_dir=folder, progress=False, out=io.StringIO())
            return time.perf_counter() - start


def bench_load(quick, repeats, out):
    """K: B's and D's epochs and the demo's --quick run, quiet and beside 1 and 2 busy-loop processes, for
    l2fast cpu (its thread policy, and on one thread), the NumPy reference and PyTorch (no demo: it has no
    such sweep); each figure also as a slowdown over its own quiet time. The demo runs once untimed first
    (its imports), then without a warm-up round."""
    cap = l2fast.get_num_threads()
    workloads = {}
    for config in (QUICK_CONFIGS[1:] if quick else [c for c in CONFIGS if c.key in "BD"]):
        X, y = make_data(config)
        ours = L2fastContender(config, X, y, "cpu")
        contenders = [ours, ThreadsContender(L2fastContender(config, X, y, "cpu"), 1, False, "1 thread"),
                      L2fastContender(config, X, y, "numpy")]
        contenders += [p for p in peers(config, X, y, ["cpu"]) if isinstance(p, TorchContender)]
        workloads[f"{config.key} epoch"] = contenders
    if not quick:
        workloads["demo --quick"] = [DemoContender("cpu"),
                                     ThreadsContender(DemoContender("cpu"), 1, False, "1 thread"),
                                     DemoContender("numpy")]
        workloads["demo --quick"][0].epoch()
    rows = {"levels": []}
    print(f"K: under load; l2fast's cap {cap} threads, machine {os.cpu_count()} cores", file=out)
    for level in (LOAD_LEVELS[:2] if quick else LOAD_LEVELS):
        with busy_loops(level) as load:
            entry = {"load": load, "results": {}}
            print(f"  {level} busy loop(s); load average {' '.join(load['loadavg'][:3])} (runnable "
                  f"{load['loadavg'][3]}) as they start", file=out, flush=True)
            quiet = rows["levels"][0]["results"] if rows["levels"] else entry["results"]
            for name, contenders in workloads.items():
                results = summarise(interleaved(contenders, repeats, warmup=0 if name.startswith("demo") else 1,
                                                pause=0.3), 1)
                entry["results"][name] = results
                for contender, r in results.items():
                    r["over_quiet"] = r["median_s"] / quiet[name][contender]["median_s"]
                    print(f"    {name:<13} {contender:<32} {r['median_s']:>9.4f} s  {r['over_quiet']:>6.2f}x quiet",
                          file=out, flush=True)
            load["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:4]
        rows["levels"].append(entry)
        print(f"    load average at the end {' '.join(load['loadavg_after'][:3])}", file=out, flush=True)
    return rows


def environment():
    """Machine, versions, thread counts and commit, for the JSON record."""
    from l2fast.backends.cpu import _core

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"l2fast": l2fast.__version__, "numpy": np.__version__, "python": platform.python_version()}
    threads = {"l2fast OpenBLAS": _core.get_num_threads()}
    try:
        import torch

        versions["torch"] = torch.__version__
        threads["torch"] = torch.get_num_threads()
    except ImportError:
        pass
    try:
        import sklearn

        versions["scikit-learn"] = sklearn.__version__
    except ImportError:
        pass
    commit = _core.build_commit  # the commit the compiled module was built from
    gpu = None
    if "cuda" in l2fast.available_backends():
        from l2fast.backends.cuda import CudaBackend, device_summary

        gpu = device_summary()
        backend = CudaBackend()
        gpu.update(graphs=backend.use_graphs, tf32=backend.tf32)
    return {"machine": {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count()},
            "versions": versions, "threads": threads, "blas": _core.blas_config(), "commit": commit,
            "backends": l2fast.available_backends(), "gpu": gpu,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def plot(record, path):
    """Bar chart of the median epoch time of every contender, one panel per configuration."""
    plt = _plotting.pyplot("l2fast bench --plot", "bench")
    configs = record["configs"]
    columns = min(2, len(configs))
    rows = -(-len(configs) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6.5 * columns, 2.8 * rows), squeeze=False)
    for ax in axes.flat[len(configs):]:
        ax.set_visible(False)
    for ax, (key, entry) in zip(axes.flat, configs.items()):
        names = list(entry["results"])
        medians = [entry["results"][n]["median_s"] for n in names]
        bars = ax.barh(names, medians, color=["tab:orange" if n.startswith("l2fast") else "tab:gray" for n in names])
        ax.bar_label(bars, labels=[f"{t:.3g} s" for t in medians], padding=3, fontsize=8)
        ax.set_xlim(0, 1.25 * max(medians))
        ax.set_title(f"{key}: {'-'.join(map(str, entry['config']['sizes']))}, batch {entry['config']['batch']}",
                     fontsize=10)
        ax.set_xlabel("seconds per epoch (median, lower is better)", fontsize=8)
        ax.tick_params(labelsize=8)
    _plotting.save(plt, fig, path)


def run(configs=None, repeats=5, quick=False, json_path=None, plot_path=None, out=None):
    """Runs the benchmark, prints the tables, writes JSON (and a plot); returns the record."""
    out = out or sys.stdout
    backends = l2fast.available_backends()
    chosen = QUICK_CONFIGS if quick else [c for c in CONFIGS if configs is None or c.key in configs]
    record = environment()
    record["repeats"] = repeats
    print(f"l2fast bench on {record['machine']['cpu']} ({record['machine']['cores']} cores), commit "
          f"{record['commit']}, threads {record['threads']}", file=out)
    if record["gpu"]:
        print(f"GPU: {record['gpu']}", file=out)
    record["configs"] = {c.key: bench_config(c, backends, repeats, out) for c in chosen}
    record["lambda_price"] = {c.key: bench_lambda_price(c, backends, repeats, out) for c in chosen
                              if quick or c.key in LAMBDA_PRICE_CONFIGS}
    if configs is None or "S" in configs:
        record["sweep"] = bench_sweep(QUICK_SWEEP_CONFIGS if quick else SWEEP_CONFIGS, backends, repeats, out)
    if configs is None or "U" in configs:
        record["update"] = bench_update(QUICK_UPDATE_SIZES if quick else UPDATE_SIZES, repeats, out,
                                        pause=0 if quick else 0.2)
    if configs is None or "O" in configs:
        record["optimizers"] = bench_optimizers(QUICK_OPTIMIZER_SIZES if quick else OPTIMIZER_SIZES, repeats, out,
                                                pause=0 if quick else 0.2)
        record["optimizer_epochs"] = {c.key: bench_optimizer_epochs(c, repeats, out) for c in
                                      (QUICK_CONFIGS[1:] if quick else [c for c in CONFIGS if c.key in "BD"])}
        if "cuda" in backends:
            record["optimizers_gpu"] = bench_optimizers_gpu(QUICK_OPTIMIZER_SIZES if quick else
                                                            [1_000_000, 10_000_000, 100_000_000], repeats, out)
    if configs is not None and "N" in configs or quick:
        record["small"] = bench_small(QUICK_SMALL_CONFIGS if quick else SMALL_CONFIGS, repeats, out)
    if configs is not None and "T" in configs or quick:
        from l2fast import bench_solution

        record["solution"] = bench_solution.run(backends, repeats, out, quick=quick)
    if configs is not None and "K" in configs:
        record["load"] = bench_load(quick, repeats, out)
    if configs is not None and "P" in configs:
        from l2fast import bench_sparse

        record["sparse"] = bench_sparse.run(backends, repeats, out, quick=quick)
    if configs is not None and "M" in configs:
        from l2fast import bench_mpi

        record["mpi"] = bench_mpi.run(repeats, out, quick=quick)
    if configs is not None and "R" in configs:
        from l2fast.sklearn import bench as bench_dropin

        record["dropin"] = bench_dropin.report(quick, repeats, out=out)
    if json_path:
        Path(json_path).write_text(json.dumps(record, indent=1))
        print(f"wrote {json_path}", file=out)
    if plot_path:
        plot(record, plot_path)
        print(f"wrote {plot_path}", file=out)
    return record
