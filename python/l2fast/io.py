"""Saving and loading networks: a versioned ``.npz`` file, arrays plus JSON metadata, no pickle.

Layout of format version 2 (a NumPy ``.npz``, i.e. a zip of ``.npy`` files):

- ``metadata``: the UTF-8 bytes of a JSON object, stored as a uint8 array:
  ``{"format": "l2fast.Network", "version": 2, "l2fast_version": ..., "layer_sizes": [...],
  "activation": ..., "loss": ..., "lam": ..., "dtype": "float32" | "float64", "backend": ...,
  "shuffle_state": {...}, "optimizer": null | {...}}``. ``shuffle_state`` is the state of the
  generator that draws ``fit``'s orders (NumPy's ``bit_generator.state``); ``optimizer`` is the
  state ``fit`` resumes from: ``{"name": "sgd" | "momentum" | "adam", "hyperparameters": {...},
  "schedule": {"name": ..., "parameters": {...}}, "step": int, "epoch": int, "best": float | null,
  "bad_epochs": int, "lr_scale": float}`` (see ``l2fast.optim.OptimizerState``).
- ``W0``, ``W1``, ...: the weights, shape (n_l, n_{l-1}), in the network's dtype.
- ``b0``, ``b1``, ...: the biases, shape (n_l,).
- ``slot0_W0``, ``slot0_b0``, ...: the optimizer's state arrays (velocity; first and second
  moments), shaped like the parameter they belong to.

Version 1 files (no shuffle or optimizer state) still load. A loaded network trains on exactly as
the saved one would have.

Loading reads with ``allow_pickle=False`` and checks every field before building anything, so a
truncated, corrupted or foreign file raises ``ValueError`` and executes nothing.
"""
from __future__ import annotations

import json
import math
import os
import zipfile
import zlib
from dataclasses import fields
from typing import Optional, Union

import numpy as np

from l2fast import _validate, optim

FORMAT = "l2fast.Network"
VERSION = 2

PathLike = Union[str, "os.PathLike[str]"]


def save(net, path: PathLike) -> None:
    """Writes ``net`` to ``path``, a ``.npz`` file; ".npz" is appended to a name without it, as
    ``np.savez`` does."""
    path = os.fsdecode(path)
    if not path.endswith(".npz"):
        path += ".npz"
    weights, biases, state = net.weights, net.biases, net._host_optimizer_state()
    metadata = {"format": FORMAT, "version": VERSION, "l2fast_version": _version(),
                "layer_sizes": list(net.layer_sizes), "activation": net.activation, "loss": net.loss,
                "lam": net.lam, "dtype": net.dtype.name, "backend": net.backend,
                "shuffle_state": net._shuffle_rng.bit_generator.state,
                "optimizer": None if state is None else _state_metadata(state)}
    arrays = {"metadata": np.frombuffer(json.dumps(metadata, allow_nan=False).encode("utf-8"), dtype=np.uint8)}
    arrays.update({f"W{layer}": W for layer, W in enumerate(weights)})
    arrays.update({f"b{layer}": b for layer, b in enumerate(biases)})
    L = len(weights)
    for s, slot in enumerate(state.slots if state is not None else []):
        arrays.update({f"slot{s}_W{layer}": slot[layer] for layer in range(L)})
        arrays.update({f"slot{s}_b{layer}": slot[L + layer] for layer in range(L)})
    with open(path, "wb") as file:  # a file object: savez would otherwise append ".npz" to the name
        np.savez(file, **arrays)


def load(path: PathLike, backend: Optional[str] = None):
    """Reads a network written by ``Network.save``; ``backend`` overrides the one it was saved from.

    Nothing is read into memory before the metadata has said what to expect: member names, then each
    array's header (dtype, shape, layout) are checked against it, and no member is read past the size
    it should have. Any malformed file raises ``ValueError``. A ``path`` that does not exist is tried with
    ".npz" appended, the name ``save`` gave it."""
    from l2fast.network import Network

    where = os.fspath(path)
    if not os.path.exists(where) and os.path.exists(os.fsdecode(where) + ".npz"):
        where = os.fsdecode(where) + ".npz"
    with open(where, "rb") as file:  # FileNotFoundError as it is; opened here so it is always closed
        try:
            with zipfile.ZipFile(file) as archive:
                metadata, arrays = _read_archive(archive, where)
        except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, NotImplementedError,
                ValueError) as exc:
            if isinstance(exc, ValueError) and str(exc).startswith(f"path: {where!r}"):
                raise
            raise ValueError(f"path: {where!r} is not a readable l2fast network file ({exc})") from exc
    sizes = metadata["layer_sizes"]
    L = len(sizes) - 1
    state_meta = metadata.get("optimizer")
    try:
        net = Network(sizes, activation=metadata["activation"], loss=metadata["loss"], lam=metadata["lam"],
                      backend=backend or metadata["backend"], dtype=metadata["dtype"])
        net.set_parameters([arrays[f"W{layer}"] for layer in range(L)], [arrays[f"b{layer}"] for layer in range(L)])
        if "shuffle_state" in metadata:
            net._shuffle_rng.bit_generator.state = metadata["shuffle_state"]
        if state_meta is not None:
            slots = [[arrays[f"slot{s}_{k}{layer}"] for k in "Wb" for layer in range(L)]
                     for s in range(_spec(state_meta, where).n_slots)]
            net._restore_optimizer_state(_state(state_meta, slots, where))
    except (ValueError, TypeError, KeyError, OverflowError, MemoryError) as exc:
        raise ValueError(f"path: {where!r} holds an invalid network: {exc}") from exc
    return net


_MAX_METADATA = 1 << 20  # bytes of JSON; a saved network's are a few hundred
_MAX_COUNT = 2**53  # step and epoch counts: exact as floats, far from int64's end


def _read_archive(archive, where):
    """(metadata, {name: array}) from an open zip, each member checked before it is read."""
    members = {}
    for info in archive.infolist():
        name = info.filename
        if not name.endswith(".npy") or name[:-4] in members:
            raise ValueError(f"path: {where!r}: unexpected or repeated entry {name!r}")
        members[name[:-4]] = info
    if "metadata" not in members:
        raise ValueError(f"path: {where!r} is not an l2fast network file (no metadata)")
    raw = _read_npy(archive, members["metadata"], where, np.dtype(np.uint8), None)
    metadata = _metadata(raw, where)
    sizes = metadata["layer_sizes"]
    L = len(sizes) - 1
    state_meta = metadata.get("optimizer")
    n_slots = 0 if state_meta is None else _spec(state_meta, where).n_slots
    expected = {}
    for prefix in [""] + [f"slot{s}_" for s in range(n_slots)]:
        for layer in range(L):
            expected[f"{prefix}W{layer}"] = (sizes[layer + 1], sizes[layer])
            expected[f"{prefix}b{layer}"] = (sizes[layer + 1],)
    extra = set(members) - {"metadata"} - set(expected)
    if extra:
        raise ValueError(f"path: {where!r}: unexpected entries {sorted(extra)}")
    dtype = np.dtype(metadata["dtype"])
    total = sum(math.prod(shape) for shape in expected.values()) * dtype.itemsize
    try:
        _validate.fits_in_memory(total, "its arrays")
    except MemoryError as exc:
        raise ValueError(f"path: {where!r} declares a network too large to load: {exc}") from exc
    arrays = {}
    for name, shape in expected.items():
        if name not in members:
            raise ValueError(f"path: {where!r}: {name} should be {dtype.name} of shape {shape}, found missing")
        arrays[name] = _read_npy(archive, members[name], where, dtype, shape)
    return metadata, arrays


def _read_npy(archive, info, where, dtype, shape):
    """The array in one .npy member, read only if its header shows ``dtype`` (native byte order) in C
    order and ``shape`` (None: any 1-D up to _MAX_METADATA entries), and never more bytes than that."""
    name = info.filename[:-4]
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            found_shape, fortran, found_dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            found_shape, fortran, found_dtype = np.lib.format.read_array_header_2_0(member)
        else:
            raise ValueError(f"path: {where!r}: {name} has .npy format version {version}, not 1.0 or 2.0")
        if shape is None:
            fits = len(found_shape) == 1 and found_shape[0] <= _MAX_METADATA
            want = f"a 1-D array of at most {_MAX_METADATA} entries"
        else:
            fits = found_shape == shape
            want = f"of shape {shape}"
        if found_dtype != dtype or not fits or (fortran and len(found_shape) > 1):
            raise ValueError(f"path: {where!r}: {name} should be {dtype.name} {want} in C order, found shape "
                             f"{found_shape}, dtype {found_dtype}{', Fortran order' if fortran else ''}")
        n_bytes = math.prod(found_shape) * dtype.itemsize
        data = member.read(n_bytes)
        if len(data) != n_bytes or member.read(1):
            raise ValueError(f"path: {where!r}: {name} holds {'fewer' if len(data) < n_bytes else 'more'} bytes "
                             f"than its header declares")
    return np.frombuffer(data, dtype=dtype).reshape(found_shape).copy()


def _state_metadata(state):
    """The JSON side of an OptimizerState (its arrays are stored beside it)."""
    return {"name": state.optimizer.name, "hyperparameters": optim.hyperparameters(state.optimizer),
            "schedule": {"name": state.schedule.name, "parameters": optim.hyperparameters(state.schedule)},
            "step": state.step, "epoch": state.epoch, "best": None if math.isinf(state.best) else state.best,
            "bad_epochs": state.bad_epochs, "lr_scale": state.lr_scale}


_ADDED_FIELDS = {"eps_on_v"}  # fields newer than the format: files written before them load with the default


def _build(kinds, meta, what, where):
    """An instance of kinds[meta["name"]] from meta["<params key>"], every field checked by its class."""
    if not isinstance(meta, dict) or meta.get("name") not in kinds:
        raise ValueError(f"path: {where!r}: the {what} is not one of {sorted(kinds)}")
    kind = kinds[meta["name"]]
    params = meta.get("hyperparameters" if what == "optimizer" else "parameters")
    names = {f.name for f in fields(kind)}
    if not isinstance(params, dict) or not names - _ADDED_FIELDS <= set(params) <= names:
        raise ValueError(f"path: {where!r}: the {what}'s parameters should be {sorted(names)}")
    try:
        return kind(**params)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"path: {where!r}: the saved {what} is invalid ({exc})") from exc


def _spec(state_meta, where):
    return _build({"sgd": optim.SGD, "momentum": optim.Momentum, "adam": optim.Adam}, state_meta, "optimizer",
                  where)


def _state(meta, slots, where):
    schedule = _build(optim.SCHEDULES, meta.get("schedule"), "schedule", where)
    counts = {key: meta.get(key) for key in ("step", "epoch", "bad_epochs")}
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _MAX_COUNT for v in counts.values()):
        raise ValueError(f"path: {where!r}: the optimizer's step, epoch and bad_epochs must be integers in "
                         f"[0, 2**53]")
    best, lr_scale = meta.get("best"), meta.get("lr_scale")
    for name, value in (("best", best), ("lr_scale", lr_scale)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            raise ValueError(f"path: {where!r}: the optimizer's {name} is malformed")
    if lr_scale is None or not 0 < lr_scale <= 1:
        raise ValueError(f"path: {where!r}: the optimizer's lr_scale must be in (0, 1]")
    spec = _spec(meta, where)
    for s, slot in enumerate(slots):
        for a in slot:
            if not np.isfinite(a).all():
                raise ValueError(f"path: {where!r}: the optimizer's state slot{s} contains NaN or infinity")
            if spec.name == "adam" and s == 1 and (a < 0).any():
                raise ValueError(f"path: {where!r}: Adam's second moments (slot1) must be >= 0")
    return optim.OptimizerState(spec, schedule, [[a.copy() for a in slot] for slot in slots],
                                counts["step"], counts["epoch"], math.inf if best is None else float(best),
                                counts["bad_epochs"], float(lr_scale))


def _no_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")


def _metadata(raw, where):
    """The metadata JSON from its uint8 array, each field's type and range checked."""
    try:
        metadata = json.loads(raw.tobytes().decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise ValueError(f"path: {where!r}: its metadata is not valid JSON ({exc})") from exc
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ValueError(f"path: {where!r} is not an l2fast network file (format "
                         f"{metadata.get('format') if isinstance(metadata, dict) else None!r})")
    version = metadata.get("version")
    if not isinstance(version, int) or version > VERSION or version < 1:
        raise ValueError(f"path: {where!r} has format version {version!r}; this l2fast reads versions up to "
                         f"{VERSION}: upgrade l2fast to read it")
    if version >= 2 and not isinstance(metadata.get("shuffle_state"), dict):
        raise ValueError(f"path: {where!r}: metadata field 'shuffle_state' is missing or malformed")
    if version >= 2 and "optimizer" not in metadata:
        raise ValueError(f"path: {where!r}: metadata field 'optimizer' is missing")
    expected = {"layer_sizes": list, "activation": str, "loss": str, "lam": (int, float), "dtype": str,
                "backend": str}
    for key, kind in expected.items():
        if not isinstance(metadata.get(key), kind) or isinstance(metadata.get(key), bool):
            raise ValueError(f"path: {where!r}: metadata field {key!r} is missing or malformed")
    try:
        metadata["layer_sizes"] = list(_validate.layer_sizes(metadata["layer_sizes"]))
        _validate.float_dtype(metadata["dtype"])
        _validate.real(metadata["lam"], "lam", positive=False)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"path: {where!r}: malformed metadata: {exc}") from exc
    return metadata


def _version():
    from l2fast import __version__

    return __version__
