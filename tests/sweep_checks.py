"""What the sweep tests share: a small problem, its options, and the check that two sweeps are the same bit for
bit. Imported by tests/test_sweep_executor.py and by the scripts tests/test_mpi.py runs on MPI ranks, so it
imports no engine."""
import numpy as np

from l2fast.testing import make_problem

OPTIONS = dict(layer_sizes=[6, 12, 3], epochs=15, lr=0.1, batch_size=16, progress=False)  # float32, the default
LAMS = [0.0, 0.3, 3.0, 30.0]


def problem():
    X, y = make_problem("softmax", 6, 3, m=150, seed=20)
    X_dev, y_dev = make_problem("softmax", 6, 3, m=60, seed=21)
    return X, y, X_dev, y_dev


def assert_same_sweep(a, b):
    """Two Selections with the same figures, choice and parameters, bit for bit."""
    assert a.table() == b.table() and a.best_lam == b.best_lam and a.meaningful == b.meaningful
    for r, s in zip(a.results, b.results):
        assert (r.lam, r.train_loss, r.dev_loss, r.dev_loss_se, r.dev_accuracy, r.fold_dev_losses) == \
               (s.lam, s.train_loss, s.dev_loss, s.dev_loss_se, s.dev_accuracy, s.fold_dev_losses)
        assert r.history.val_loss == s.history.val_loss and r.history.n_iter == s.history.n_iter
    nets_a = a.networks + [n for fold in a.fold_networks for n in fold] + [a.best_network]
    nets_b = b.networks + [n for fold in b.fold_networks for n in fold] + [b.best_network]
    assert len(nets_a) == len(nets_b)
    for p, q in zip(nets_a, nets_b):
        assert (p is None) == (q is None)
        if p is not None:
            assert p.lam == q.lam
            assert all(np.array_equal(u, v) for u, v in zip(p.weights + p.biases, q.weights + q.biases))


def assert_same_search(a, b):
    """Two NetworkSelections with the same figures, choice, sweeps and chosen network, bit for bit."""
    assert a.table() == b.table() and a.meaningful == b.meaningful
    assert (a.best_layer_sizes, a.best_lam, a.seeds) == (b.best_layer_sizes, b.best_lam, b.seeds)
    assert a.results == b.results  # dataclasses: every figure equal
    assert a.selections.keys() == b.selections.keys()
    for key in a.selections:
        assert_same_sweep(a.selections[key], b.selections[key])
    p, q = a.best_network, b.best_network
    assert all(np.array_equal(u, v) for u, v in zip(p.weights + p.biases, q.weights + q.biases))
