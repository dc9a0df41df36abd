"""The shipped tools run on tiny configurations: parity fails when a backend is wrong, bench writes its record."""
import json

import numpy as np
import pytest

import l2fast
from l2fast import bench, parity
from l2fast.__main__ import main
from l2fast.backends.cpu import CpuBackend, _core


def test_parity_passes_and_covers_every_problem(capsys):
    assert main(["parity"]) == 0
    text = capsys.readouterr().out
    for problem, *_ in parity.PROBLEMS:
        assert problem in text
    for optimizer in ("momentum", "nesterov", "adam", "adamw"):
        assert f"{optimizer}: parameters, state" in text
    assert "44 passed, 0 failed" in text


def test_parity_exits_non_zero_when_a_backend_is_off(monkeypatch, capsys):
    honest = CpuBackend.gradients

    def off_by_a_little(self, *args):
        dW, db, loss_sum = honest(self, *args)
        return [g * (1 + 1e-6) for g in dW], db, loss_sum

    monkeypatch.setattr(CpuBackend, "gradients", off_by_a_little)
    assert main(["parity"]) == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if "FAIL" in line]
    # float64's 1e-10 tolerance catches a 1e-6 relative error; float32's 1e-4 does not.
    assert lines and all("float64" in line and "gradients" in line for line in lines)


def test_bench_writes_its_record(tmp_path, capsys):
    json_path, plot_path = tmp_path / "bench.json", tmp_path / "bench.png"
    main(["bench", "--quick", "--repeats", "2", "--json", str(json_path), "--plot", str(plot_path)])
    record = json.loads(json_path.read_text())
    for key in ("machine", "versions", "threads", "commit", "blas", "backends", "configs", "lambda_price", "update",
                "sweep", "optimizers"):
        assert key in record, key
    assert record["commit"] == _core.build_commit and record["threads"]["l2fast OpenBLAS"] >= 1
    for key in ("A", "B"):
        entry = record["configs"][key]
        for name in ("l2fast numpy", "l2fast cpu", bench.GemmOnlyContender.name):
            result = entry["results"][name]
            assert len(result["seconds"]) == 2 and result["min_s"] <= result["median_s"]
            assert result["samples_per_s"] == pytest.approx(entry["config"]["m"] / result["median_s"])
        assert entry["ratios"]["l2fast numpy / l2fast cpu"] > 0
        assert entry["ratios"][f"l2fast cpu / {bench.GemmOnlyContender.name}"] > 0
        assert set(record["lambda_price"][key]) == {"numpy", "cpu"}
    for name in (bench.ShuffledReadContender.name, bench.GatheredBatchContender.name):  # the linear model's floors
        assert record["configs"]["A"]["ratios"][f"l2fast cpu / {name}"] > 0
    (row,) = record["update"]
    assert row["parameters"] == 10_000 and set(row["median_s"]) == {"l2fast", "naive", "axpy"}
    assert {row["backend"] for row in record["sweep"]} == {"numpy", "cpu"}
    assert all(row["separate_over_stacked"] > 0 for row in record["sweep"])
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {row["optimizer"] for row in record["optimizers"]} == {"sgd", "momentum", "nesterov", "adam", "adamw"}
    assert all(row["l2fast_over_limit"] > 0 and row["median_s"]["axpy"] > 0 for row in record["optimizers"])
    assert set(record["optimizer_epochs"]["B"]) == {"sgd", "momentum", "nesterov", "adam", "adamw"}
    assert record["optimizer_epochs"]["B"]["sgd"]["over_sgd"] == 1.0
    (small,) = record["small"]
    assert small["ratios"][f"l2fast cpu / {bench.GemmOnlyContender.name}"] > 0 and len(small["loadavg"]) == 2
    printed = capsys.readouterr().out
    assert "N: small networks" in printed
    assert "U: the L2 update alone" in printed and "O: one optimizer step alone" in printed


@pytest.mark.parametrize("shape", [(7, 5), (1500, 2001)], ids=["small", "3M-entries-threaded"])
def test_standalone_l2_update_matches_the_reference_formula(shape):
    rng = np.random.default_rng(0)
    for dtype, tol in ((np.float64, 1e-15), (np.float32, 1e-6)):
        W = rng.normal(size=shape).astype(dtype)
        dW = rng.normal(size=shape).astype(dtype)
        want = W - 0.1 * (dW + 0.02 * W)
        _core.l2_update(W, dW, 0.1, 0.02)
        np.testing.assert_allclose(W, want, rtol=tol, atol=tol)


def test_floor_reads_take_time_for_every_batch_size():
    X = np.random.default_rng(0).normal(size=(3000, 37)).astype(np.float32)
    for batch in (0, 1, 256, 2999, 3000, 10**6):  # 0: the rows read once; else gathered by batch, read twice
        for data in (X, X.astype(np.float64)):
            seconds = _core.shuffled_read_seconds(data, 2, batch)
            assert 0 < seconds < 10


@pytest.mark.parametrize("call, error, match", [
    (lambda W, dW: _core.l2_update(W, dW.astype(np.float32), 0.1, 0.0), TypeError, "dW: expected dtype float64"),
    (lambda W, dW: _core.l2_update(W, dW[:3], 0.1, 0.0), ValueError, r"dW: expected shape \(7, 5\)"),
    (lambda W, dW: _core.l2_update(W[:, ::2], dW, 0.1, 0.0), ValueError, "W: array must be C-contiguous"),
    (lambda W, dW: _core.l2_update(W, dW, 0.0, 0.0), ValueError, "lr"),
    (lambda W, dW: _core.l2_update(W, dW, 0.1, -1.0), ValueError, "lam_over_m"),
    (lambda W, dW: _core.l2_update(W.ravel()[1:].reshape(2, 17), W.ravel()[:-1].reshape(2, 17), 0.1, 0.0),
     ValueError, "dW: overlaps W"),
    (lambda W, dW: _core.l2_update(W.astype(np.int64), dW, 0.1, 0.0), TypeError, "W: expected dtype float32 or float64"),
    (lambda W, dW: _core.axpy(float("nan"), dW, W), ValueError, "alpha"),
    (lambda W, dW: _core.gemm_only_epoch_seconds([3], 10, 2, "float32"), ValueError, "layer_sizes"),
    (lambda W, dW: _core.gemm_only_epoch_seconds([3, 2], 10, 2, "int8"), ValueError, "dtype"),
    (lambda W, dW: _core.shuffled_read_seconds(W, 1, -1), ValueError, "batch_size"),
    (lambda W, dW: _core.shuffled_read_seconds(W, 0, 4), ValueError, "repeats"),
    (lambda W, dW: _core.shuffled_read_seconds(W[:0], 1, 4), ValueError, "X"),
    (lambda W, dW: _core.shuffled_read_seconds(W.astype(np.int32), 1, 4), TypeError, "X"),
])
def test_standalone_kernels_validate(call, error, match):
    W = np.ones((7, 5))
    before = W.copy()
    with pytest.raises(error, match=match):
        call(W, np.ones((7, 5)))
    np.testing.assert_array_equal(W, before)


def test_read_only_W_refused_by_l2_update():
    W = np.ones(4)
    W.flags.writeable = False
    with pytest.raises(ValueError, match="W: array is read-only"):
        _core.l2_update(W, np.ones(4), 0.1, 0.0)


def assert_follows_l2fast(config, X, y, peer):
    """Three epochs of the peer against an l2fast network of the same seed: the cost after each (the peer's summed
    minibatch losses over m plus the penalty) and the final parameters agree to float32 rounding."""
    net = l2fast.Network(config.sizes, activation=config.activation, loss=config.loss, lam=config.lam,
                         dtype="float32", seed=0)
    for _ in range(3):
        cost = net.fit(X, y, epochs=1, lr=config.lr, batch_size=config.batch).cost[0]
        loss_sum = peer.train()
        penalty = config.lam / (2 * config.m) * sum(np.sum(np.asarray(W, np.float64) ** 2) for W, _ in peer.params)
        assert loss_sum / config.m + penalty == pytest.approx(cost, rel=1e-5)
    for (W, b), W_ref, b_ref in zip(peer.params, net.weights, net.biases):
        np.testing.assert_allclose(np.asarray(W), W_ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(b), b_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("config", [
    bench.Config("D", "small network", [20, 16, 3], 500, 32),
    bench.Config("A", "logistic regression", [10, 1], 600, 64, activation="identity", loss="logistic"),
    bench.Config("T", "two tanh layers, a partial last batch", [12, 8, 8, 4], 300, 16, activation="tanh"),
], ids=lambda c: c.key)
def test_the_jax_peer_trains_as_l2fast_does(config):
    """bench's JAX peer is the same training, not just a network of the same size: from the same seed it takes
    the same orders and steps, so its cost after each epoch and its weights follow l2fast's to float32 rounding."""
    pytest.importorskip("jax")
    X, y = bench.make_data(config)
    peer = bench.JaxContender(config, X, y)
    assert_follows_l2fast(config, X, y, peer)
    assert peer.name.startswith("JAX ") and peer.compile_seconds > 0 and peer.epoch() > 0


@pytest.mark.parametrize("config", [
    bench.Config("T", "two tanh layers, a partial last batch", [12, 8, 8, 4], 300, 16, activation="tanh"),
    bench.Config("A", "logistic regression", [10, 1], 640, 64, activation="identity", loss="logistic"),
], ids=lambda c: c.key)
def test_the_torch_compile_peer_trains_as_l2fast_does(config):
    """bench's torch.compile peer (N) is the same training too: the compiled step (one graph per minibatch shape)
    follows l2fast's epochs from the same seed. Two networks only: each shape costs seconds of compilation."""
    pytest.importorskip("torch")
    X, y = bench.make_data(config)
    peer = bench.TorchCompileContender(config, X, y)
    assert_follows_l2fast(config, X, y, peer)
    assert peer.name.endswith("torch.compile") and peer.compile_seconds > 0 and peer.epoch() > 0
