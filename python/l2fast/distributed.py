"""Data-parallel training over MPI: ``Network.fit(..., comm=MPI.COMM_WORLD)`` on every rank of ``mpiexec -n N``.

Every rank holds the same network (rank 0's parameters, shuffling generator and optimizer state are broadcast
when a fit starts) and takes part of each global minibatch. A step: each rank sums dL/dW and dL/db over its
rows of the batch, the ranks add the sums up (MPI ``Iallreduce`` on the host, NCCL through CuPy on ``cuda``),
and every rank makes the same optimizer step with the mean over the whole batch, through the backend's own
update kernel (``_core.optimizer_step`` on cpu, ``numpy_ref.optimizer_step`` elsewhere). So the run equals a
single-process fit with the same global batch, to rounding.

The gradient sums travel in one float64 buffer, laid out from the last layer to the first as PyTorch DDP's
buckets are, and cut into buckets of whole layers (``BUCKET_BYTES``). A bucket's allreduce starts as soon as
the backward pass has produced its layers, while the layers below are still being worked out: the numpy backend
hands over each layer's gradient as it is made, and the cpu backend's ``_core.gradients`` calls back
(``on_layer``) between the layers of its pass. MPI moves a started allreduce on only inside MPI calls (MPICH
has no progress thread by default), so each later layer's call back also tests the started ones. The cuda
backend works out every layer's gradient in one call (``CudaBackend._whole_data``), so there the buffer is one
bucket and its allreduce follows the backward pass. The loss and accuracy sums are added up once per epoch.

Two layouts of the data:

- replicated (``sharded=False``): every rank passes all of X. The epoch's order is the single-process one
  (drawn from the network's seeded generator); rank r takes the r-th of N near-equal slices of each batch.
- sharded (``sharded=True``): rank r passes its own shard. The training set is the concatenation of the
  shards in rank order (m = the sum of their sizes, so the penalty's lam/m is the whole set's), and the epoch's
  order is the single-process order over that concatenation: the global minibatch k is the union of the ranks'
  rows that fall in positions [k B, (k + 1) B) of it. A sharded fit therefore equals a single-process fit of
  the same seed on ``np.concatenate(shards)``. Local batches vary in size around B m_r / m with
  ``shuffle=True``; with ``shuffle=False`` the batches go through the shards one after another (rank 0's rows
  first), which is exact but leaves the other ranks idle, so keep shuffling on.

A rank that raises (a bad argument, a kernel error) does not leave the others waiting: the argument check and
every allreduce of a step or an epoch carry a status flag, and once one is set every rank raises -- the failing
rank its own exception, the others ``RankError`` naming it. A rank that raises anywhere else in the fit (say,
scoring its validation data) aborts the MPI job, since the others could only wait for it. An exception outside
``fit`` is beyond l2fast's reach: run the script with ``mpiexec -n N python -m mpi4py train.py``, which aborts
the whole job on an uncaught exception.

Each rank uses cores / (ranks on its node) BLAS threads during the fit (``threads_per_rank``), unless
``L2FAST_NUM_THREADS`` or OpenBLAS's own variables say otherwise. Only rank 0 shows a progress bar and
warnings; write files from rank 0 alone (``if comm.Get_rank() == 0: net.save(...)``).
"""
from __future__ import annotations

import contextlib
import os
import time
import warnings

import numpy as np

from l2fast import _validate, solvers, threads

BUCKET_BYTES = 1 << 20  # a bucket's most bytes (PyTorch DDP's first bucket is 1 MiB too)


class RankError(RuntimeError):
    """Another rank of a data-parallel fit raised; the message names it and its exception."""


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError('comm: data-parallel training needs mpi4py and an MPI: pip install "l2fast[mpi]"') from exc
    return MPI


def _check_comm(comm):
    """comm must be an mpi4py intracommunicator; checked by its type's module, so that a wrong argument is
    refused without starting MPI."""
    if not type(comm).__module__.startswith("mpi4py") or not hasattr(comm, "Iallreduce"):
        raise TypeError(f"comm: expected an mpi4py communicator such as MPI.COMM_WORLD, got {type(comm).__name__}")
    return comm


def threads_per_rank(local_ranks: int, environ=os.environ) -> int:
    """The BLAS threads of one rank: ``L2FAST_NUM_THREADS`` or OpenBLAS's variable when set, otherwise the
    CPUs this process may use shared out among the ``local_ranks`` ranks of its node (at least one)."""
    if environ.get("L2FAST_NUM_THREADS", "").strip():
        return threads.default_num_threads(environ)
    if threads.default_num_threads(environ) is None:  # OPENBLAS_NUM_THREADS or the like is set
        return threads.openblas_variable_threads(environ) or 1
    return max(1, threads.available_cpus() // max(local_ranks, 1))


def _describe(exc):
    return f"{type(exc).__name__}: {exc}"


def _raise_for(messages, failure, rank, agreed=None):
    """After a collective in which some rank reported a failure: this rank's own exception if it failed,
    else RankError naming the first rank that did. ``agreed`` (a list) records the exception: every rank
    raises together, so it needs no abort."""
    if failure is None:
        failed = next(r for r, message in enumerate(messages) if message is not None)
        failure = RankError(f"rank {failed} of {len(messages)} raised {messages[failed]}; rank {rank} stopped with it")
    if agreed is not None:
        agreed.append(failure)
    raise failure


def _abort(comm, exc, what):
    """Ends the whole MPI job after an exception on this rank alone, which would leave the others waiting."""
    import sys
    import traceback

    sys.stderr.write(f"l2fast: rank {comm.Get_rank()} {what} ({_describe(exc)}), where the other ranks cannot "
                     "learn of it; aborting the MPI job\n" +
                     "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    sys.stderr.flush()
    comm.Abort(1)


def _settings(networks, run):
    """What must be the same on every rank for the ranks to take the same steps."""
    first = networks[0]
    return (len(networks), first.layer_sizes, first.activation, first.loss, first.dtype.name, first.backend,
            tuple(net.lam for net in networks), run.epochs, run.lr, run.shuffle, run.validation is not None,
            run.sample_weight is not None, run.restore_best, repr(run.optimizer), repr(run.schedule), run.stopping)


_SETTING_NAMES = ("the number of networks", "layer_sizes", "activation", "loss", "dtype", "backend", "lam",
                  "epochs", "lr", "shuffle", "validation_data", "sample_weight", "restore_best", "optimizer",
                  "schedule", "tol/patience", "batch_size")


def checked_run(comm, sharded, batch_size, networks, check):
    """``check()`` (fit's argument checks, returning its ``_Run``) on every rank, then one collective in which
    the ranks compare notes: a rank whose checks raised makes every rank raise, and settings that differ
    between ranks are refused on all. Returns the run with its ``comm`` (a ``Communicator``) set."""
    _check_comm(comm)
    if not isinstance(sharded, (bool, np.bool_)):
        raise TypeError(f"sharded: expected True or False, got {sharded!r}")
    failure, run, report = None, None, None
    try:
        run = check()
        if isinstance(run.optimizer, solvers.LBFGS):
            raise ValueError("optimizer: L-BFGS does not run data-parallel; use a minibatch optimizer with comm")
        if isinstance(run.X, _validate.SparseFeatures) or hasattr(run.X, "tocsr"):  # scipy's, or cupyx's on cuda
            raise ValueError("X: data-parallel training takes dense X; pass X.toarray() or train without comm")
        if networks[0].backend == "cuda":
            nccl_module()
        report = (_settings(networks, run) + (batch_size,), len(run.X))
    except Exception as exc:
        failure = exc
    reports = comm.allgather((None if failure is None else _describe(failure), report))
    if any(message is not None for message, _ in reports):
        _raise_for([message for message, _ in reports], failure, comm.Get_rank())
    ours = reports[0][1][0]
    for r, (_, (settings, _)) in enumerate(reports):
        for name, a, b in zip(_SETTING_NAMES, ours, settings):
            if a != b:
                raise ValueError(f"comm: every rank's fit needs the same {name}; rank 0 has {a!r}, rank {r} {b!r}")
    sizes = [size for _, (_, size) in reports]
    if not sharded and len(set(sizes)) > 1:
        raise ValueError(f"X: every rank holds all of X unless sharded=True, but the ranks have {sizes} records")
    run.comm = Communicator(comm, networks[0]._backend, bool(sharded), sizes)
    if sharded:
        run.batch_size = run.comm.m if batch_size is None else min(int(batch_size), run.comm.m)
    return run


class _Gradients:
    """The float64 buffer of one step's gradient sums that the ranks add up: the last layer's W and b first,
    the first layer's last, then a status entry (non-zero: some rank failed). ``dW[l]`` and ``db[l]`` are views
    of it; ``buckets`` are its (start, stop, layers) pieces, each of whole layers, the status in the last."""

    def __init__(self, xp, weights, biases, bucket_bytes, cpu):
        L = len(weights)
        total = sum(W.size + b.size for W, b in zip(weights, biases))
        self.flat = xp.zeros(total + 1, dtype=np.float64)
        self.dW, self.db = [None] * L, [None] * L
        self.buckets, start, offset = [], 0, 0
        layers = []
        for l in reversed(range(L)):
            n_W, n_b = weights[l].size, biases[l].size
            if layers and (offset + n_W + n_b - start) * 8 > bucket_bytes:
                self.buckets.append((start, offset, layers))
                start, layers = offset, []
            self.dW[l] = self.flat[offset:offset + n_W].reshape(weights[l].shape)
            self.db[l] = self.flat[offset + n_W:offset + n_W + n_b]
            offset += n_W + n_b
            layers.append(l)
        self.buckets.append((start, total + 1, layers))
        self.bucket_of = {l: b for b, (_, _, layers) in enumerate(self.buckets) for l in layers}
        self.status = self.flat[total:]
        self.means = [xp.empty(P.shape, P.dtype) for P in list(weights) + list(biases)]  # in the parameters' dtype
        # Kept for the fit, so that a step allocates nothing: the cpu backend's scratch memory for the backward
        # pass, and the host backends' buffers for the rows of X, y and sample weights a step gathers.
        self.workspace = None
        if cpu:
            from l2fast import _core

            self.workspace = _core.GradientsWorkspace()
        self._rows = None

    def gather(self, run, rows):
        """(X, y, sample weights or None) of rows, copied into buffers that every step reuses (host arrays)."""
        arrays = (run.X, run.y, run.sample_weight)
        if self._rows is None or len(rows) > len(self._rows[0]):
            capacity = max(len(rows), min(run.batch_size, len(run.X)))
            self._rows = [None if a is None else np.empty((capacity,) + a.shape[1:], a.dtype) for a in arrays]
        # mode="clip": with the default, np.take writes through a temporary copy; the rows are in range
        return tuple(None if a is None else np.take(a, rows, axis=0, out=buffer[:len(rows)], mode="clip")
                     for a, buffer in zip(arrays, self._rows))


class Communicator:
    """The ranks of a data-parallel fit, as the epoch loop sees them: the global m, each step's rows of this
    rank, the gradient allreduce and the per-epoch sums. Made by ``checked_run``; ``Network.fit`` hands it down
    as ``run.comm``.

    ``seconds_reducing`` adds up the time steps spent starting and waiting for gradient allreduces (with
    overlap, only what the backward pass did not hide); ``steps`` counts them."""

    def __init__(self, comm, backend, sharded, sizes):
        self.comm, self.backend, self.sharded = comm, backend, sharded
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.m = sum(sizes) if sharded else sizes[0]
        self.lo = sum(sizes[:self.rank]) if sharded else 0  # this rank's shard in the concatenation
        self.hi = self.lo + sizes[self.rank]
        # cuda works out every layer in one call, so its sums are one bucket; the host backends hand over each
        # layer's as it is made
        self.bucket_bytes = 1 << 62 if backend.name == "cuda" else BUCKET_BYTES
        self.nccl = _Nccl(comm) if backend.name == "cuda" else None
        self.seconds_reducing, self.steps = 0.0, 0
        self._buffers = {}
        self._requests = []
        self._agreed = []  # exceptions that every rank raised together

    # -- the fit around the epochs ---------------------------------------------------------------------------

    def train(self, networks, run, train):
        """``train(networks, run)`` (network._train) after rank 0's state is broadcast, on this rank's share of
        the BLAS threads, with warnings and the progress bar on rank 0 only."""
        try:
            self._broadcast_state(networks)
            with contextlib.ExitStack() as stack:
                if self.backend.name == "cpu":
                    share = threads_per_rank(self._local_ranks())
                    stack.enter_context(threads.using(share, adaptive=threads._adaptive))
                if self.rank != 0:
                    stack.enter_context(warnings.catch_warnings())
                    warnings.simplefilter("ignore")
                return train(networks, run)
        except BaseException as exc:
            # Raised on every rank at once: a failure the ranks agreed on, a divergence (seen in the summed loss
            # and in parameters that are the same everywhere). Anything else may leave the others waiting.
            if not (any(exc is e for e in self._agreed) or isinstance(exc, FloatingPointError)):
                _abort(self.comm, exc, "raised during a data-parallel fit")
            raise

    def _local_ranks(self):
        MPI = _mpi()
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED, self.rank)
        try:
            return local.Get_size()
        finally:
            local.Free()

    def _broadcast_state(self, networks):
        """Rank 0's parameters, shuffling generator and optimizer state on every rank, as DDP does at the start."""
        for net in networks:
            state = None
            if self.rank == 0:
                state = (net._to_host(net._weights), net._to_host(net._biases), net._shuffle_rng.bit_generator.state,
                         net._host_optimizer_state())
            weights, biases, rng_state, optimizer_state = self.comm.bcast(state, root=0)
            if self.rank != 0:
                net._weights, net._biases = net._to_backend(weights), net._to_backend(biases)
                net._shuffle_rng.bit_generator.state = rng_state
                net._restore_optimizer_state(optimizer_state)

    def show_progress(self, progress):
        return progress and self.rank == 0

    def validation_sums(self, loss_sum, correct, n):
        """A validation pass's (loss_sum, correct, records): the sum over the ranks' shards when sharded; each
        rank's own (the same on every rank) when every rank holds all the data."""
        if not self.sharded:
            return loss_sum, correct, n
        totals = self._sum_scalars([loss_sum, correct, n])
        return float(totals[0]), int(totals[1]), int(totals[2])

    def _sum_scalars(self, values):
        MPI = _mpi()
        totals = np.array(values, dtype=np.float64)
        self.comm.Allreduce(MPI.IN_PLACE, totals, op=MPI.SUM)
        return totals

    # -- one epoch --------------------------------------------------------------------------------------------

    def run_epoch(self, networks, run, active, states, rates, order):
        """The epoch of each active network (one after another, on the same batches): [(loss_sum, correct)]
        summed over the ranks, as ``_run_epoch`` returns them."""
        return [self._epoch(networks[k], run, states[k], rates[k], order) for k in active]

    def local_rows(self, chunk):
        """This rank's rows (indices into its own X) of a global batch, given as positions in the training set."""
        if self.sharded:
            return chunk[(chunk >= self.lo) & (chunk < self.hi)] - self.lo
        n = len(chunk)
        return chunk[self.rank * n // self.size:(self.rank + 1) * n // self.size]

    def _buffer(self, net):
        key = id(net)
        if key not in self._buffers:
            self._buffers[key] = _Gradients(self.backend.xp, net._weights, net._biases, self.bucket_bytes,
                                            self.backend.name == "cpu")
        return self._buffers[key]

    def _epoch(self, net, run, state, lr, order):
        grads = self._buffer(net)
        loss_sum, correct, failure = 0.0, 0, None
        step = state.step
        for start in range(0, self.m, run.batch_size):
            chunk = np.arange(start, min(start + run.batch_size, self.m)) if order is None else \
                order[start:start + run.batch_size]
            step += 1
            grads.status.fill(0)
            started = [False] * len(grads.buckets)
            if failure is None:
                try:
                    batch_loss, batch_correct = self._local_sums(net, run, self.local_rows(chunk), grads, started)
                    loss_sum, correct = loss_sum + batch_loss, correct + batch_correct
                except Exception as exc:
                    failure = exc
            if failure is not None:
                self._fill_status(grads)
            for b in range(len(grads.buckets)):
                if not started[b]:
                    self._start(grads, b)
            self._wait(grads)
            if self._status(grads) != 0:
                _raise_for(self.comm.allgather(None if failure is None else _describe(failure)), failure, self.rank,
                           self._agreed)
            try:
                self._update(net, grads, state, lr, step, len(chunk))
            except Exception as exc:  # the others learn of it at the next collective
                failure = exc
        totals = self._sum_scalars([loss_sum, correct, failure is not None])
        if totals[2] != 0:
            _raise_for(self.comm.allgather(None if failure is None else _describe(failure)), failure, self.rank,
                           self._agreed)
        return float(totals[0]), int(totals[1])

    def _local_sums(self, net, run, rows, grads, started):
        """Writes sum over this rank's rows of dL/dW and dL/db into grads (starting each bucket's allreduce once
        its layers are in); returns (loss_sum, correct) of the rows, scored before the step."""
        backend = net._backend
        if len(rows) == 0 or backend.name == "cuda":  # the others write every layer's sums
            grads.flat.fill(0)
        if len(rows) == 0:
            return 0.0, 0
        if backend.name == "cuda":  # sums in float64 on the device, with the count of hits
            index = backend.xp.asarray(rows)
            w = None if run.sample_weight is None else run.sample_weight[index]
            return backend._whole_data(net._weights, net._biases, run.X[index], run.y[index], net.activation,
                                       net.loss, (grads.dW, grads.db), w)
        X, y, w = grads.gather(run, rows)
        if backend.name == "numpy":
            return self._numpy_sums(net, X, y, w, grads, started)
        # run.X was scanned for NaN and infinity at the fit's start: not again per step; the hits come from the
        # same pass. The means go straight into the buffer the ranks add up, and become sums there, a layer at a
        # time, each as soon as the backward pass has made it (its bucket's allreduce may start then).
        layer_done = self._layer_done(grads, started)

        def on_layer(layer):
            for total in (grads.dW[layer], grads.db[layer]):
                np.multiply(total, len(rows), out=total)  # gradients gives the mean over the rows
            layer_done(layer)

        _, _, batch_loss, batch_correct = backend.gradients(net._weights, net._biases, X, y, 0.0, net.activation,
                                                            net.loss, w, check_finite=False, with_correct=True,
                                                            out=(grads.dW, grads.db), workspace=grads.workspace,
                                                            on_layer=on_layer)
        return batch_loss, batch_correct

    def _layer_done(self, grads, started):
        """The function a step's backward pass calls with each layer once its sums are in grads: it starts the
        allreduce of a bucket whose layers are all in (the last bucket, which holds the status, is started after
        the pass), and otherwise lets MPI move the started buckets on."""
        waiting = [len(layers) for _, _, layers in grads.buckets]

        def done(layer):
            b = grads.bucket_of[layer]
            waiting[b] -= 1
            if waiting[b] == 0 and b < len(grads.buckets) - 1:
                self._start(grads, b)
                started[b] = True
            elif self._requests:
                _mpi().Request.Testall(self._requests)

        return done

    def _numpy_sums(self, net, X, y, w, grads, started):
        from l2fast.backends import numpy_ref

        layer_done = self._layer_done(grads, started)

        def consume(layer, dZ, A_prev):
            grads.dW[layer][...] = numpy_ref.weight_product(dZ, A_prev)
            grads.db[layer][...] = dZ.sum(axis=0)
            layer_done(layer)

        with np.errstate(over="ignore", invalid="ignore"):
            outputs = numpy_ref.forward_all(net._weights, net._biases, X, net.activation)
            batch_loss, batch_correct, dZ = numpy_ref.loss_gradient(outputs[-1], y, net.loss, w)
            numpy_ref.backward_all(net._weights, X, outputs, dZ, net.activation, consume)
        return batch_loss, batch_correct

    def _update(self, net, grads, state, lr, step, batch):
        """The same optimizer step on every rank, from the mean over the global batch of `batch` records."""
        backend, optimizer = net._backend, state.optimizer
        L = len(net._weights)
        decay = net._lam / self.m
        params = list(net._weights) + list(net._biases)
        context = backend._on_stream() if backend.name == "cuda" else contextlib.nullcontext()
        with context, np.errstate(over="ignore", invalid="ignore"):
            for i, (P, total, G) in enumerate(zip(params, grads.dW + grads.db, grads.means)):
                backend.xp.divide(total, batch, out=G, casting="unsafe")
                slots = [slot[i] for slot in state.slots]
                d = decay if i < L else 0.0
                if backend.name == "cpu":
                    from l2fast import _core
                    from l2fast.backends.cpu import core_options

                    _core.optimizer_step(P, G, slots, lr, d, step, **core_options(optimizer))
                else:
                    from l2fast.backends.numpy_ref import optimizer_step

                    optimizer_step(P, G, slots, lr, d, optimizer, step)

    # -- the allreduce ----------------------------------------------------------------------------------------

    def _fill_status(self, grads):
        grads.status.fill(1)

    def _status(self, grads):
        return float(grads.status[0]) if self.nccl is None else float(grads.status.get()[0])

    def _start(self, grads, b):
        begin = time.perf_counter()
        start, stop, _ = grads.buckets[b]
        if self.nccl is not None:
            self.nccl.allreduce(grads.flat[start:stop])
        else:
            MPI = _mpi()
            self._requests.append(self.comm.Iallreduce(MPI.IN_PLACE, grads.flat[start:stop], op=MPI.SUM))
        self.seconds_reducing += time.perf_counter() - begin

    def _wait(self, grads):
        begin = time.perf_counter()
        if self.nccl is not None:
            self.nccl.wait()
        else:
            _mpi().Request.Waitall(self._requests)
            self._requests = []
        self.seconds_reducing += time.perf_counter() - begin
        self.steps += 1


class _Nccl:
    """The gradient allreduce on cuda: NCCL through CuPy on a stream of its own, the buffer on the device. The
    ranks meet through MPI once, to share NCCL's unique id. The gradient sums are complete when the backend's
    call returns (it synchronises its stream), so NCCL's stream waits on nothing. Never run on a GPU by l2fast's
    authors: tests/test_mpi.py runs it at world size 1 where there is one and checks its calls on the host
    stand-in otherwise."""

    def __init__(self, comm):
        import cupy

        self.cupy, self.nccl = cupy, nccl_module()
        rank, size = comm.Get_rank(), comm.Get_size()
        uid = failure = None
        if rank == 0:
            try:
                uid = self.nccl.get_unique_id()
            except Exception as exc:
                failure = exc
        uid, message = comm.bcast((uid, None if failure is None else _describe(failure)), root=0)
        if message is not None:
            _raise_for([message] + [None] * (size - 1), failure, rank)
        try:
            self.communicator = self.nccl.NcclCommunicator(size, uid, rank)
            self.stream = cupy.cuda.Stream(non_blocking=True)
        except Exception as exc:  # the other ranks wait inside NCCL's set-up for this one: only an abort frees them
            _abort(comm, exc, "could not start NCCL")

    def allreduce(self, buffer):
        self.cupy.cuda.Device().synchronize()  # the zeroing and the status flag, queued on CuPy's stream
        self.communicator.allReduce(buffer.data.ptr, buffer.data.ptr, buffer.size, self.nccl.NCCL_FLOAT64,
                                    self.nccl.NCCL_SUM, self.stream.ptr)

    def wait(self):
        self.stream.synchronize()


def nccl_module():
    """CuPy's NCCL binding (``cupy.cuda.nccl``); ImportError with the install hint where CuPy has none."""
    import cupy

    try:
        from cupy.cuda import nccl
    except ImportError:
        nccl = getattr(cupy.cuda, "nccl", None)
    if nccl is None or not getattr(nccl, "available", True):
        raise ImportError("comm: data-parallel training on backend='cuda' sends the gradients through NCCL, which "
                          "CuPy cannot load here; install it (pip install nvidia-nccl-cu12, or "
                          "python -m cupyx.tools.install_library --library nccl --cuda 12.x)")
    return nccl


def shard(n: int, ranks: int, rank: int) -> slice:
    """Rank's part of n records cut into `ranks` contiguous, near-equal shards: slice(rank n // ranks, ...)."""
    return slice(rank * n // ranks, (rank + 1) * n // ranks)

