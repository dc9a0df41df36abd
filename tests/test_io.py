"""Saving and loading: exact round trips, and clear refusals of files that are not ours."""
import json
import pickle
import zipfile

import numpy as np
import pytest

import l2fast
from l2fast.testing import make_problem

BACKENDS = ["numpy", "cpu"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("loss, n_out", [("softmax", 3), ("logistic", 1), ("squared_error", 2)])
def test_round_trip_is_exact(tmp_path, backend, dtype, loss, n_out):
    X, y = make_problem(loss, 4, n_out, m=30, seed=0)
    net = l2fast.Network([4, 6, n_out], activation="tanh", loss=loss, lam=0.25, backend=backend, dtype=dtype,
                         seed=1)
    net.fit(X, y, epochs=2, lr=0.1, batch_size=8)
    path = tmp_path / "model.npz"
    net.save(path)
    assert path.exists() and len(list(tmp_path.iterdir())) == 1  # a name ending in .npz is kept as given
    back = l2fast.load(path)
    assert (back.layer_sizes, back.activation, back.loss, back.lam, back.dtype, back.backend) == \
        (net.layer_sizes, net.activation, net.loss, net.lam, net.dtype, net.backend)
    for p, q in zip(back.weights + back.biases, net.weights + net.biases):
        assert p.dtype == q.dtype
        np.testing.assert_array_equal(p, q)
    assert back.cost(X, y) == net.cost(X, y)
    other = l2fast.load(path, backend="numpy" if backend == "cpu" else "cpu")
    np.testing.assert_array_equal(other.weights[0], net.weights[0])


def test_pickled_network_keeps_its_backend_and_parameters():
    net = l2fast.Network([3, 4, 2], backend="cpu", seed=0)
    back = pickle.loads(pickle.dumps(net))
    assert back.backend == "cpu"
    np.testing.assert_array_equal(back.weights[1], net.weights[1])
    X, y = make_problem("softmax", 3, 2, m=10, seed=0)
    back.fit(X, y)  # the restored network trains (its lock was rebuilt)


def saved(tmp_path):
    path = tmp_path / "good.npz"
    l2fast.Network([3, 4, 2], seed=0).save(path)
    return path


def rewrite_metadata(tmp_path, change):
    with np.load(saved(tmp_path)) as archive:
        contents = {name: archive[name] for name in archive.files}
    metadata = json.loads(contents["metadata"].tobytes())
    change(metadata, contents)
    contents["metadata"] = np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8)
    path = tmp_path / "edited.npz"
    with open(path, "wb") as file:
        np.savez(file, **contents)
    return path


class Trap:
    """Unpickling this would create a file: proof that loading executed something."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("make, match", [
    (lambda d: d / "missing.npz", None),
    (lambda d: (d / "text.npz").write_text("hello") and d / "text.npz", "not a readable l2fast network file"),
    (lambda d: (d / "cut.npz").write_bytes(saved(d).read_bytes()[:200]) and d / "cut.npz",
     "not a readable l2fast network file"),
    (lambda d: (np.savez(d / "foreign.npz", a=np.ones(3)), d / "foreign.npz")[1], "no metadata"),
    (lambda d: (np.save(d / "plain.npy", np.ones(3)), d / "plain.npy")[1], "not a readable l2fast network file"),
    (lambda d: rewrite_metadata(d, lambda m, c: m.update(format="somebody.else")), "not an l2fast network file"),
    (lambda d: rewrite_metadata(d, lambda m, c: m.update(version=99)), "upgrade l2fast"),
    (lambda d: rewrite_metadata(d, lambda m, c: m.pop("loss")), "'loss' is missing"),
    (lambda d: rewrite_metadata(d, lambda m, c: m.update(activation="softplus")), "invalid network"),
    (lambda d: rewrite_metadata(d, lambda m, c: m.update(layer_sizes=[3, 5, 2])), r"W0 should be float32 of shape \(5, 3\)"),
    (lambda d: rewrite_metadata(d, lambda m, c: c.update(W1=c["W1"].astype(np.float64))), "W1 should be float32"),
    (lambda d: rewrite_metadata(d, lambda m, c: c.update(W1=np.full_like(c["W1"], np.nan))), "contains NaN"),
    (lambda d: rewrite_metadata(d, lambda m, c: c.update(extra=np.ones(2))), "unexpected entries"),
])
def test_bad_files_are_refused_clearly(tmp_path, make, match):
    path = make(tmp_path)
    if match is None:
        with pytest.raises(FileNotFoundError):
            l2fast.load(path)
    else:
        with pytest.raises(ValueError, match=match):
            l2fast.load(path)


def test_loading_never_unpickles(tmp_path):
    marker = tmp_path / "executed"
    path = rewrite_metadata(tmp_path, lambda m, c: c.update(W0=np.array([Trap(str(marker))], dtype=object)))
    with zipfile.ZipFile(path) as archive:
        assert "W0.npy" in archive.namelist()
    with pytest.raises(ValueError, match="not a readable l2fast network file"):
        l2fast.load(path)
    assert not marker.exists()


def test_package_ships_its_type_marker():
    from importlib.resources import files

    assert files("l2fast").joinpath("py.typed").is_file()
    assert files("l2fast").joinpath("_core.pyi").is_file()


def test_save_appends_npz_as_numpy_does_and_load_takes_either_name(tmp_path):
    net = l2fast.Network([3, 4, 2], lam=0.5, seed=0)
    net.save(tmp_path / "model")
    net.save(str(tmp_path / "plain"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz", "plain.npz"]
    for name in ("model.npz", "model", "plain"):
        back = l2fast.load(tmp_path / name)
        assert back.lam == 0.5 and all(np.array_equal(p, q) for p, q in zip(back.weights, net.weights))
    with pytest.raises(FileNotFoundError):
        l2fast.load(tmp_path / "absent")
