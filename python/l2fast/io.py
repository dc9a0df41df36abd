"""Saving and loading networks: a versioned ``.npz`` file, arrays plus JSON metadata, no pickle.

Layout of format version 1 (a NumPy ``.npz``, i.e. a zip of ``.npy`` files):

- ``metadata``: the UTF-8 bytes of a JSON object, stored as a uint8 array:
  ``{"format": "l2fast.Network", "version": 1, "l2fast_version": ..., "layer_sizes": [...],
  "activation": ..., "loss": ..., "lam": ..., "dtype": "float32" | "float64", "backend": ...}``
- ``W0``, ``W1``, ...: the weights, shape (n_l, n_{l-1}), in the network's dtype.
- ``b0``, ``b1``, ...: the biases, shape (n_l,).

Loading reads with ``allow_pickle=False`` and checks every field before building anything, so a
truncated, corrupted or foreign file raises ``ValueError`` and executes nothing.
"""
from __future__ import annotations

import json
import os
import zipfile
from typing import Optional, Union

import numpy as np

FORMAT = "l2fast.Network"
VERSION = 1

PathLike = Union[str, "os.PathLike[str]"]


def save(net, path: PathLike) -> None:
    """Writes ``net`` to ``path`` (a ``.npz`` file; the name is used as given)."""
    weights, biases = net.weights, net.biases
    metadata = {"format": FORMAT, "version": VERSION, "l2fast_version": _version(),
                "layer_sizes": list(net.layer_sizes), "activation": net.activation, "loss": net.loss,
                "lam": net.lam, "dtype": net.dtype.name, "backend": net.backend}
    arrays = {"metadata": np.frombuffer(json.dumps(metadata).encode("utf-8"), dtype=np.uint8)}
    arrays.update({f"W{layer}": W for layer, W in enumerate(weights)})
    arrays.update({f"b{layer}": b for layer, b in enumerate(biases)})
    with open(path, "wb") as file:  # a file object: savez would otherwise append ".npz" to the name
        np.savez(file, **arrays)


def load(path: PathLike, backend: Optional[str] = None):
    """Reads a network written by ``Network.save``; ``backend`` overrides the one it was saved from."""
    from l2fast.network import Network

    where = os.fspath(path)
    with open(where, "rb") as file:  # FileNotFoundError as it is; opened here so it is always closed
        try:
            with np.load(file, allow_pickle=False) as archive:
                contents = {name: archive[name] for name in archive.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError, AttributeError, TypeError) as exc:
            raise ValueError(f"path: {where!r} is not a readable l2fast network file ({exc})") from exc
    metadata = _metadata(contents, where)
    sizes = metadata["layer_sizes"]
    weights, biases = [], []
    for layer in range(len(sizes) - 1):
        for name, shape, out in ((f"W{layer}", (sizes[layer + 1], sizes[layer]), weights),
                                 (f"b{layer}", (sizes[layer + 1],), biases)):
            array = contents.get(name)
            if array is None or array.shape != shape or array.dtype.name != metadata["dtype"]:
                found = "missing" if array is None else f"shape {array.shape}, dtype {array.dtype}"
                raise ValueError(f"path: {where!r}: {name} should be {metadata['dtype']} of shape {shape}, "
                                 f"found {found}")
            out.append(array)
    extra = set(contents) - {"metadata"} - {f"{k}{l}" for k in "Wb" for l in range(len(sizes) - 1)}
    if extra:
        raise ValueError(f"path: {where!r}: unexpected entries {sorted(extra)}")
    try:
        net = Network(sizes, activation=metadata["activation"], loss=metadata["loss"], lam=metadata["lam"],
                      backend=backend or metadata["backend"], dtype=metadata["dtype"])
        net.set_parameters(weights, biases)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"path: {where!r} holds an invalid network: {exc}") from exc
    return net


def _metadata(contents, where):
    raw = contents.get("metadata")
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
        raise ValueError(f"path: {where!r} is not an l2fast network file (no metadata)")
    try:
        metadata = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"path: {where!r}: its metadata is not valid JSON ({exc})") from exc
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ValueError(f"path: {where!r} is not an l2fast network file (format "
                         f"{metadata.get('format') if isinstance(metadata, dict) else None!r})")
    version = metadata.get("version")
    if not isinstance(version, int) or version > VERSION or version < 1:
        raise ValueError(f"path: {where!r} has format version {version!r}; this l2fast reads versions up to "
                         f"{VERSION}: upgrade l2fast to read it")
    expected = {"layer_sizes": list, "activation": str, "loss": str, "lam": (int, float), "dtype": str,
                "backend": str}
    for key, kind in expected.items():
        if not isinstance(metadata.get(key), kind) or isinstance(metadata.get(key), bool):
            raise ValueError(f"path: {where!r}: metadata field {key!r} is missing or malformed")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in metadata["layer_sizes"]):
        raise ValueError(f"path: {where!r}: metadata field 'layer_sizes' is malformed")
    return metadata


def _version():
    from l2fast import __version__

    return __version__
