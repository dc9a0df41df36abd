"""Saving and loading: exact round trips, and clear refusals of files that are not ours."""
import json
import pickle
import subprocess
import sys
import textwrap
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
    with pytest.raises(ValueError, match="W0 should be float32 of shape"):
        l2fast.load(path)
    assert not marker.exists()


def test_package_ships_its_type_marker():
    from importlib.resources import files

    assert files("l2fast").joinpath("py.typed").is_file()
    assert files("l2fast").joinpath("_core.pyi").is_file()


# -- what a file may make load do (issue 18, items 4 and 7) ----------------------------------------

def saved_with_adam(tmp_path):
    X, y = make_problem("softmax", 3, 2, m=10, seed=0)
    net = l2fast.Network([3, 4, 2], seed=0)
    net.fit(X, y, optimizer="adam", schedule="exponential")
    path = tmp_path / "adam.npz"
    net.save(path)
    return path


def rewrite(path, change, raw_metadata=None):
    """A copy of the file at path with change(metadata, contents) applied; raw_metadata(text) may edit
    the JSON text afterwards."""
    with np.load(path) as archive:
        contents = {name: archive[name] for name in archive.files}
    metadata = json.loads(contents["metadata"].tobytes())
    change(metadata, contents)
    text = json.dumps(metadata)
    if raw_metadata is not None:
        text = raw_metadata(text)
    contents["metadata"] = np.frombuffer(text.encode(), dtype=np.uint8)
    edited = path.with_name("edited.npz")
    with open(edited, "wb") as file:
        np.savez(file, **contents)
    return edited


def deep(text):
    return text[:-1] + ', "deep": ' + "[" * 200000 + "]" * 200000 + "}"


def set_optimizer(**fields):
    return lambda m, c: m["optimizer"].update(fields)


BAD_STATES = [
    (lambda m, c: m.update(lam=10**400), None, "lam"),
    (lambda m, c: None, deep, "metadata is not valid JSON"),
    (lambda m, c: m.update(layer_sizes=[3, 10**400, 2]), None, "too large to load"),
    (lambda m, c: m.update(layer_sizes=[3, 0, 2]), None, "layer_sizes"),
    (lambda m, c: m.update(dtype=">f4"), None, "native byte order"),
    (set_optimizer(step=2**70), None, r"step, epoch and bad_epochs must be integers in \[0, 2\*\*53\]"),
    (set_optimizer(epoch=10**30), None, "must be integers in"),
    (set_optimizer(best=0.5), lambda t: t.replace('"best": 0.5', '"best": NaN'), "NaN is not a number JSON allows"),
    (set_optimizer(hyperparameters={"beta1": 10**400, "beta2": 0.999, "eps": 1e-8, "decoupled": False}), None,
     "beta1"),
    (lambda m, c: m["shuffle_state"]["state"].update(state=10**400), None, "invalid network"),
    (lambda m, c: m.update(shuffle_state={"bit_generator": "MT19937", "state": {}}), None, "invalid network"),
    (lambda m, c: c.update(slot0_W0=c["slot0_W0"].astype(">f4")), None, "slot0_W0 should be float32"),
    (lambda m, c: c.update(W1=c["W1"].astype(">f4")), None, "W1 should be float32"),
    (lambda m, c: c.update(slot1_b1=-np.ones_like(c["slot1_b1"])), None, r"second moments \(slot1\) must be >= 0"),
    (lambda m, c: c.update(slot0_W1=np.full_like(c["slot0_W1"], np.nan)), None, "slot0 contains NaN"),
    (lambda m, c: c.update(W0=np.asfortranarray(c["W0"].T.copy().T)), None, "in C order"),
]


@pytest.mark.parametrize("change, raw, match", BAD_STATES)
def test_every_malformed_file_is_a_value_error(tmp_path, change, raw, match):
    path = rewrite(saved_with_adam(tmp_path), change, raw)
    with pytest.raises(ValueError, match=match):
        l2fast.load(path)


def test_a_loaded_adam_state_trains_on(tmp_path):
    net = l2fast.load(saved_with_adam(tmp_path), backend="cpu")
    state = net.optimizer_state
    assert state.step == 1 and (state.slots[1][0] >= 0).all()
    X, y = make_problem("softmax", 3, 2, m=10, seed=0)
    net.fit(X, y, optimizer="adam", schedule="exponential")
    assert net.optimizer_state.step == 2


BOMB_SCRIPT = textwrap.dedent("""
    import resource, sys, zipfile
    import numpy as np
    import l2fast

    good, bomb, case = sys.argv[1:4]
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            if case == "huge_W0" and info.filename == "W0.npy":
                continue
            out.writestr(info.filename, source.read(info.filename))
        name = {"extra_member": "junk.npy", "huge_W0": "W0.npy"}[case]
        if name is not None:
            with out.open(name, "w", force_zip64=True) as member:
                # A header that declares 400 MB, then the 400 MB, deflated to well under 1 MB.
                np.lib.format.write_array_header_1_0(
                    member, {"descr": "<f4", "fortran_order": False, "shape": (100_000_000,)})
                zeros = bytes(1 << 20)
                for _ in range(400):
                    member.write(zeros)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:
        l2fast.load(bomb)
    except ValueError as exc:
        print("refused:", exc)
    print("grew", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before)
""")


@pytest.mark.parametrize("case, match", [("extra_member", "unexpected entries"),
                                         ("huge_W0", r"W0 should be float32 of shape \(4, 3\)")])
def test_load_checks_names_and_headers_before_reading(tmp_path, case, match):
    good = tmp_path / "good.npz"
    l2fast.Network([3, 4, 2], seed=0).save(good)
    bomb = tmp_path / "bomb.npz"
    result = subprocess.run([sys.executable, "-c", BOMB_SCRIPT, str(good), str(bomb), case], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("refused:") and __import__("re").search(match, lines[0]), result.stdout
    assert int(lines[1].split()[1]) < 50 * 2**20  # the 400 MB member is never read


def test_load_reads_no_more_than_the_header_declares(tmp_path):
    good = tmp_path / "good.npz"
    l2fast.Network([3, 4, 2], seed=0).save(good)
    padded = tmp_path / "padded.npz"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(padded, "w", zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            data = source.read(info.filename)
            out.writestr(info.filename, data + bytes(1000) if info.filename == "b1.npy" else data)
    with pytest.raises(ValueError, match="b1 holds more bytes than its header declares"):
        l2fast.load(padded)


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
