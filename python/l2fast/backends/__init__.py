"""The backend switch: one name, checked against a list, loaded lazily, never a silent fallback.

Every backend implements the same small protocol on parameters held as lists of arrays:
``train_epoch``, ``predict``, ``evaluate`` and ``gradients`` (see ``numpy_ref.NumpyBackend``).
"""
from __future__ import annotations

BACKENDS = ("numpy", "cpu", "cuda")


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run on this machine; the message says why and what to do."""


def get_backend(name):
    """The backend object for ``name``; raises ValueError for an unknown name and
    BackendUnavailableError for one this machine cannot run."""
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(map(repr, BACKENDS))}, got {name!r}")
    if name == "numpy":
        from l2fast.backends.numpy_ref import NumpyBackend

        return NumpyBackend()
    if name == "cpu":
        try:
            from l2fast.backends.cpu import CpuBackend
        except ImportError as exc:
            raise BackendUnavailableError(
                f"backend='cpu' needs l2fast's compiled module, which failed to load ({exc}); "
                "reinstall with `pip install --force-reinstall l2fast`"
            ) from exc
        return CpuBackend()
    try:
        import cupy  # noqa: F401
    except ImportError as exc:
        missing = isinstance(exc, ModuleNotFoundError) and exc.name == "cupy"
        raise BackendUnavailableError(
            "backend='cuda' needs CuPy and an NVIDIA GPU; "
            + ("CuPy is not installed. " if missing else f"CuPy is installed but failed to import ({exc}). ")
            + "Install it with `pip install \"l2fast[cuda]\"` (the CuPy wheel for CUDA 12; \"l2fast[cuda13]\" for "
            "CUDA 13) on a machine with an NVIDIA driver; backend='cpu' runs here without one."
        ) from exc
    from l2fast.backends import cuda

    reason = cuda.probe()
    if reason is not None:
        raise BackendUnavailableError(
            f"backend='cuda' needs a usable NVIDIA GPU: CuPy is installed, but {reason}. Check `nvidia-smi`, the "
            "driver (CUDA 12 needs 525 or newer) and CUDA_VISIBLE_DEVICES; backend='cpu' runs without a GPU."
        )
    return cuda.CudaBackend()


def available_backends():
    """The backend names that can run here, in the order numpy, cpu, cuda."""
    names = []
    for name in BACKENDS:
        try:
            get_backend(name)
        except BackendUnavailableError:
            continue
        names.append(name)
    return names
