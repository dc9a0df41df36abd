"""How many threads the cpu backend uses: the CPUs this process may really use, fewer when the machine is busy.

The cap is the thread count of l2fast's OpenBLAS (the ``scipy-openblas32`` library, not NumPy's): it bounds
OpenBLAS's GEMMs and l2fast's own helper threads alike, and it is what ``threadpoolctl`` and
``l2fast.set_num_threads`` change. Its default is the CPUs the process may run on (its affinity mask, and the
CPU quota of its cgroup: a container's ``--cpus``), not the cores present; ``L2FAST_NUM_THREADS`` sets it, and
OpenBLAS's own variables (``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS``, which Dask and Ray workers set to 1) are
respected when it is unset, except where a Dask ``Nanny`` running in this process put them there (see
``set_by_dask_nanny``).

Each kernel call may then use fewer (``call_threads``): one when the network's products are too small to gain
from a second thread, and no more than the CPUs that other processes leave free when the machine is busy, since
OpenBLAS's threads wait for one another by spinning, and a thread that shares its core with another process holds
up every product it takes part in. The products give the same bits on any thread count (see the README), so
this choice never changes a result (float32; float64 calls keep the cap, see ``call_threads``).
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import threading
import time
from typing import Iterator, Optional, Sequence

import numpy as np

# OpenBLAS's helper threads spin 2**28 clock cycles (about 0.1 s) after each job before they sleep, taking a
# core from whatever runs next: another process, or this one's Python between epochs. 2**20 cycles (a few
# tenths of a millisecond) still covers the gaps between the products of a training step. OpenBLAS reads the
# variable once, when the library loads; it is set for that moment only, unless the user set it.
_OPENBLAS_THREAD_TIMEOUT = "20"

# A network whose largest product (batch x n_in x n_out multiply-adds) is below this runs on one thread.
# OpenBLAS itself gives a GEMM of fewer than 2 x 262144 multiply-adds one thread; measured on the 2-core
# development machine (best of 150 calls, one thread against two, benchmarks/README.md "Under load"), two
# threads gain 1.06-1.14x from there (0.52M-1.05M) and 1.3x at 1.3M (the demo's 20 x 256 x 256), so the
# threshold is OpenBLAS's: l2fast only skips reading the load for networks that could not use a second thread.
MIN_THREADED_PRODUCT = 2 * 262_144


def _load_core():
    """Imports ``l2fast._core`` (and with it OpenBLAS) with the thread timeout above; None if it is missing."""
    own = "OPENBLAS_THREAD_TIMEOUT" not in os.environ
    if own:
        os.environ["OPENBLAS_THREAD_TIMEOUT"] = _OPENBLAS_THREAD_TIMEOUT
    try:
        from l2fast import _core
    except ImportError:
        return None
    finally:
        if own:
            del os.environ["OPENBLAS_THREAD_TIMEOUT"]
    return _core


# ---------------------------------------------------------------------------------------------------------------
# What the process may use: affinity and cgroup quota, each parsed from the text of its file.

def parse_cpu_max(text: str) -> Optional[float]:
    """CPUs allowed by a cgroup v2 ``cpu.max`` ("$QUOTA $PERIOD", or "max $PERIOD"); None without a limit."""
    fields = text.split()
    if not fields or fields[0] == "max":
        return None
    quota = int(fields[0])
    period = int(fields[1]) if len(fields) > 1 else 100_000
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs_quota(quota_text: str, period_text: str) -> Optional[float]:
    """CPUs allowed by cgroup v1 ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us``; None for -1 (no limit)."""
    quota, period = int(quota_text.strip()), int(period_text.strip())
    return quota / period if quota > 0 and period > 0 else None


def parse_proc_cgroup(text: str):
    """``/proc/self/cgroup`` -> (the cgroup v2 path or None, the v1 cpu controller's path or None)."""
    unified = cpu = None
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            unified = path
        elif "cpu" in controllers.split(","):
            cpu = path
    return unified, cpu


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _ancestors(root: str, path: str) -> Iterator[str]:
    """The cgroup directory of `path` under `root` and each one above it up to `root` (a limit set on a
    parent binds its children). Inside a container the path names the host's hierarchy and only `root`
    exists; missing directories are skipped."""
    parts = [p for p in path.strip("/").split("/") if p]
    for depth in range(len(parts), -1, -1):
        yield os.path.join(root, *parts[:depth])


def cgroup_cpu_limit(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> Optional[float]:
    """The CPU quota of this process's cgroup (v2, or v1's CFS quota), in CPUs; None when there is none.
    The tightest limit on the way up to the root counts."""
    text = _read(proc_cgroup)
    if text is None:
        return None
    unified, cpu = parse_proc_cgroup(text)
    limits = []
    if unified is not None:
        for directory in _ancestors(root, unified):
            limit = _read(os.path.join(directory, "cpu.max"))
            if limit is not None and parse_cpu_max(limit) is not None:
                limits.append(parse_cpu_max(limit))
    if cpu is not None:
        for mount in ("cpu,cpuacct", "cpu", "cpuacct,cpu"):
            for directory in _ancestors(os.path.join(root, mount), cpu):
                quota = _read(os.path.join(directory, "cpu.cfs_quota_us"))
                period = _read(os.path.join(directory, "cpu.cfs_period_us"))
                if quota is not None and period is not None and parse_cfs_quota(quota, period) is not None:
                    limits.append(parse_cfs_quota(quota, period))
    return min(limits) if limits else None


def affinity_cpus() -> int:
    """The CPUs this process may be scheduled on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(len(os.sched_getaffinity(0)), 1)
    return os.cpu_count() or 1


def available_cpus(affinity: Optional[int] = None, quota: Optional[float] = None) -> int:
    """Whole CPUs the process may use: its affinity, lowered by its cgroup quota (rounded down, at least 1:
    a thread more than the quota is throttled for the rest of each period, holding up the others).
    Without arguments both are read from the system."""
    cpus = affinity_cpus() if affinity is None else affinity
    limit = cgroup_cpu_limit() if quota is None else quota
    if limit is not None:
        cpus = min(cpus, max(int(math.floor(limit + 1e-9)), 1))
    return max(cpus, 1)


def default_num_threads(environ=os.environ) -> Optional[int]:
    """The cap at start-up: ``L2FAST_NUM_THREADS`` if set; None (OpenBLAS's own choice) if one of OpenBLAS's
    variables is; otherwise the CPUs the process may use."""
    value = environ.get("L2FAST_NUM_THREADS", "").strip()
    if value:
        try:
            n = int(value)
        except ValueError:
            raise ValueError(f"L2FAST_NUM_THREADS must be a whole number >= 1, got {value!r}") from None
        if n < 1:
            raise ValueError(f"L2FAST_NUM_THREADS must be a whole number >= 1, got {value!r}")
        return n
    if any(environ.get(name, "").strip() and not set_by_dask_nanny(name, environ) for name in _OPENBLAS_VARIABLES):
        return None
    return available_cpus()


def set_by_dask_nanny(name: str, environ=os.environ) -> bool:
    """Whether the variable `name` was put into this process's environment by a Dask ``Nanny`` running here.

    A ``LocalCluster`` (processes=True) starts a Nanny per worker in the calling process, and the Nanny sets
    ``distributed.nanny.pre-spawn-environ`` (OMP/MKL/OPENBLAS_NUM_THREADS=1) in this process's own
    environment before it spawns its worker, for the worker's sake. Such a variable is not the user's
    choice for this process: it is absent from the environment the process started with
    (/proc/self/environ), and a Nanny lives here. Workers themselves start with it, so they keep it."""
    nanny = sys.modules.get("distributed.nanny")
    if environ is not os.environ or nanny is None or not len(getattr(nanny.Nanny, "_instances", ())):
        return False
    try:
        with open("/proc/self/environ", "rb") as f:
            initial = f.read().split(b"\0")
    except OSError:
        return False
    return not any(entry.startswith(name.encode() + b"=") for entry in initial)


_OPENBLAS_VARIABLES = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")  # in OpenBLAS's order


def openblas_variable_threads(environ=os.environ) -> Optional[int]:
    """The thread count OpenBLAS takes from its variables (the first set of them, if a whole number >= 1)."""
    for name in _OPENBLAS_VARIABLES:
        value = environ.get(name, "").strip()
        if value:
            try:
                return max(int(value.split(",")[0]), 1)
            except ValueError:
                return None
    return None


# ---------------------------------------------------------------------------------------------------------------
# How busy the machine is, and what one call then uses.

def parse_loadavg_running(text: str) -> int:
    """The runnable tasks (threads) on the whole machine now, the numerator of /proc/loadavg's 4th field."""
    return int(text.split()[3].split("/")[0])


def _own_running_threads() -> int:
    """This process's threads that are runnable now (state R), this one included."""
    running = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 1
    for task in tasks:
        stat = _read(f"/proc/self/task/{task}/stat")
        if stat is not None and stat.rsplit(")", 1)[-1].split()[:1] == ["R"]:
            running += 1
    return max(running, 1)


_busy_seen = (-1.0, 0, 0.0)  # (time.monotonic() of the last reading, its value, how long it serves)
BUSY_READING_LIFETIME = 0.2  # seconds a reading (about 1 ms on a busy machine) serves the calls that follow
# A reading that finds other work serves this long at first, twice as long for each such reading in a row, up to
# BUSY_READING_LIFETIME: a machine that wakes from idle often runs a kernel task for a few milliseconds (5-12 ms seen
# on the 2-vCPU EPYC guest, in 2 of 60 wakes after 0.25 s of sleep), and a reading taken then made a whole small fit
# after a pause run on one thread (3-6 of 25 digits fits, 24-44 ms instead of about 17; benchmarks/README.md, R, session
# 14). Work that lasts is read again a few times in its first 0.3 s (0.1-0.3 ms each), then every 0.2 s as before.
BUSY_FIRST_LIFETIME = 0.005


def busy_cpus() -> int:
    """CPUs kept busy by other processes now (see `read_busy_cpus`), read at most every 0.2 s, or sooner after a
    reading that found some (BUSY_FIRST_LIFETIME)."""
    global _busy_seen
    now = time.monotonic()
    seen, value, lifetime = _busy_seen
    if now - seen > lifetime:
        busy = read_busy_cpus()
        if busy == 0:
            lifetime = BUSY_READING_LIFETIME
        elif value > 0 and now - seen <= 2 * lifetime:  # busy again, at the first chance to read: work that lasts
            lifetime = min(2 * lifetime, BUSY_READING_LIFETIME)
        else:
            lifetime = BUSY_FIRST_LIFETIME
        _busy_seen = (now, busy, lifetime)
    return _busy_seen[1]


def read_busy_cpus(samples: int = 3, interval: float = 5e-5) -> int:
    """CPUs kept busy by other processes: the runnable tasks of the machine (the median of a few readings a fraction
    of a millisecond apart: a task runnable for a moment is not load; one that is runnable in most readings is) less
    this process's own, counted once after them. 0 where /proc/loadavg cannot be read. The waits between readings
    spin: a sleep of 0.1 ms takes 0.2-0.7 ms on a busy machine (the wake-up waits for a core), which with a count of
    our own threads per reading made the reading 1.2-2.7 ms, a tenth of a small fit taken after a pause (its first
    call reads afresh). It stops as soon as most of the readings it would take have found this thread alone (the
    median is then this thread). Three readings 50 us apart, since a reading that finds work is taken again 5 ms later
    (busy_cpus): five 0.1 ms apart took 0.6 ms of a digits fit after a pause, these 0.23 ms (0.08 ms warm)."""
    readings = []
    for i in range(samples):
        text = _read("/proc/loadavg")
        if text is None:
            return 0
        readings.append(parse_loadavg_running(text))
        if sum(1 for r in readings if r <= 1) > samples // 2:
            return 0
        if i + 1 < samples:
            deadline = time.perf_counter() + interval
            while time.perf_counter() < deadline:
                pass
    running = sorted(readings)[len(readings) // 2]
    if running <= 1:  # only this thread: no need to count our own
        return 0
    return max(running - _own_running_threads(), 0)


@functools.lru_cache(maxsize=None)
def _cpus_online() -> int:
    """The CPUs of the machine, read once (``os.cpu_count`` reads a file each time: 15 us, a tenth of a drop-in's
    small epoch); 0 where it cannot be told."""
    return os.cpu_count() or 0


def choose_threads(cap: int, largest_product: int, busy: int, online: int, min_product: int = MIN_THREADED_PRODUCT) -> int:
    """Threads for one call: `cap`, but one when the largest product of a step (batch x n_in x n_out
    multiply-adds) is below `min_product`, and no more than the `online` CPUs less the `busy` ones."""
    if cap <= 1 or largest_product < min_product:
        return 1
    return max(1, min(cap, online - busy))


def largest_product(layer_sizes: Sequence[int], batch: int) -> int:
    """The largest product of a step on `batch` rows: max over layers of batch x n_in x n_out."""
    return max(batch * a * b for a, b in zip(layer_sizes[:-1], layer_sizes[1:]))


class _Limit:
    """Lowers OpenBLAS's thread count for the calls in progress and puts the cap back after the last one.
    The count is one setting for the whole process: calls that overlap share the lowest."""

    def __init__(self):
        self._lock = threading.Lock()
        self._active = 0
        self._cap = 1

    @contextlib.contextmanager
    def __call__(self, core, n: int):
        with self._lock:
            if self._active == 0:
                self._cap = core.get_num_threads()
            self._active += 1
            if n < core.get_num_threads():
                core.set_num_threads(n)
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                if self._active == 0 and core.get_num_threads() != self._cap:
                    core.set_num_threads(self._cap)


_limit = _Limit()
_adaptive = True


def two_share_epoch(layer_sizes: Sequence[int], batch: int, optimizer: Optional[str], dense: bool, dtype,
                    activation: str) -> bool:
    """Whether an epoch with this optimizer (its name; None or "sgd": plain SGD) on a dense (or sparse) X of this
    dtype in steps of `batch` records cuts its steps in two parts, one per thread with OpenBLAS on one
    (``call_threads``'s ``two_shares``): two shares of records (``_core.optimizer_step_shares``; plain SGD in float64:
    ``_core.sgd_step_shares``; a small hidden layer's units instead, each part with its partial of the output
    layer, where ``_core.partial_output_fits``), or else the hidden layer's units (``_core.split_step_fits``, which
    the hidden layers' `activation` decides too). Its bits are then the same on any thread count, float64 too."""
    if _core is None or not dense or batch < 1:
        return False
    if optimizer in (None, "sgd"):
        shares = _core.sgd_step_shares(list(layer_sizes), batch, np.dtype(dtype).name)
    else:
        shares = _core.optimizer_step_shares(list(layer_sizes), batch)
    return shares or _core.split_step_fits(list(layer_sizes), batch, activation)


class KernelThreads:
    """The thread rule of ``call_threads`` for the calls of one network on one batch size and dtype, its inputs worked
    out once: a fit's epochs call ``run`` each (a call costs a few microseconds where entering ``call_threads`` cost
    ~20, cold, of a 1 ms epoch); each call still gets the count for the load of the machine then."""

    def __init__(self, layer_sizes: Sequence[int], batch: int, dtype, models: int = 1, memory_bound: bool = False,
                 two_shares: bool = False):
        self._chooses = dtype == np.float32 or two_shares  # other float64 calls keep the cap (see call_threads)
        self._product = largest_product(layer_sizes, batch)
        self._min_product = MIN_THREADED_PRODUCT if models == 1 and not memory_bound and not two_shares else 0
        self._two_shares = two_shares

    def count(self):
        """(the count for a call now, the cap)."""
        cap = _core.get_num_threads()
        if cap <= 1 or not self._chooses or not _adaptive:
            return cap, cap
        busy = busy_cpus() if self._product >= self._min_product else 0
        return choose_threads(cap, self._product, busy, _cpus_online() or cap, self._min_product), cap

    def run(self, kernel, *args, **kwargs):
        """kernel(*args, **kwargs) on the count for now, as inside ``call_threads``. A two-share epoch's kernel
        (``_core.train_epoch``) gets the count as ``share_threads`` and runs with OpenBLAS on one thread, so that each
        share's products stay on the share's own thread."""
        n, cap = self.count()
        if self._two_shares:
            with _limit(_core, 1):
                return kernel(*args, share_threads=n, **kwargs)
        if n >= cap:
            return kernel(*args, **kwargs)
        with _limit(_core, n):
            return kernel(*args, **kwargs)


@contextlib.contextmanager
def call_threads(layer_sizes: Sequence[int], batch: int, dtype, models: int = 1, memory_bound: bool = False,
                 two_shares: bool = False):
    """Runs the block (one kernel call) on the threads `choose_threads` gives for this network and the load
    of the machine now; yields that count. Models trained together (``models`` > 1) hand OpenBLAS their
    products as one batch that it runs side by side, a product per thread, which gains at any size; so does
    a ``memory_bound`` call (a linear model's SGD epoch, whose time is reading X's rows: two threads have twice
    the rows in flight), and a ``two_shares`` one (an optimizer's epoch whose steps are cut in two shares of
    records, ``_core.optimizer_step_shares``: one per thread).
    Other float64 calls keep the cap: OpenBLAS's float64 GEMM kernels give other last bits on one thread than
    on several (at the edges of the tiles), so only a fixed count keeps float64 runs repeatable. A two-share
    epoch's products each run on one thread whatever the count, and its shares are added in a fixed order, so its
    bits are the same on any count, float64 too."""
    n, cap = KernelThreads(layer_sizes, batch, dtype, models, memory_bound, two_shares).count()
    if n >= cap:
        yield cap
        return
    with _limit(_core, n):
        yield n


def set_num_threads(n: Optional[int] = None, *, adaptive: bool = True) -> None:
    """Sets the most threads l2fast's cpu backend uses (OpenBLAS's GEMMs and l2fast's helpers); None goes
    back to the default (``L2FAST_NUM_THREADS``, else the CPUs the process may use). With ``adaptive=False``
    every call uses exactly `n`, whatever the size of its products and the load of the machine."""
    global _adaptive
    if _core is None:
        raise RuntimeError("l2fast's compiled module is not available, so there are no cpu threads to set")
    if n is None:
        n = default_num_threads() or openblas_variable_threads() or available_cpus()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a whole number >= 1 or None, got {n!r}")
    _core.set_num_threads(n)
    _adaptive = bool(adaptive)


@contextlib.contextmanager
def using(n: int, adaptive: bool = True):
    """Runs the block with `set_num_threads(n, adaptive=adaptive)`, then puts the settings back."""
    before = get_num_threads(), _adaptive
    set_num_threads(n, adaptive=adaptive)
    try:
        yield
    finally:
        set_num_threads(before[0], adaptive=before[1])


def get_num_threads() -> int:
    """The most threads l2fast's cpu backend uses (1 when the compiled module is missing)."""
    return _core.get_num_threads() if _core is not None else 1


_core = _load_core()
if _core is not None:
    _start = default_num_threads()
    if _start is not None:
        _core.set_num_threads(_start)
