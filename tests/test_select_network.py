"""select_network: architectures x lambdas x seeds (x folds) as one list of select_lambda's tasks; each
(architecture, seed) is select_lambda's sweep bit for bit, each (architecture, lambda) is judged by the mean over
the seeds."""
import concurrent.futures

import numpy as np
import pytest

import l2fast
from l2fast.testing import make_problem
from sweep_checks import assert_same_sweep

OPTIONS = dict(epochs=8, lr=0.1, batch_size=16, progress=False, dtype="float64")
ARCHITECTURES = [[6, 3], [6, 10, 3]]
LAMS = [0.0, 1.0, 10.0]

quiet = pytest.mark.filterwarnings("ignore::l2fast.NoisyChoiceWarning")  # mechanics, not the choice


def problem():
    return make_problem("softmax", 6, 3, m=120, seed=40)


class RecordingExecutor(concurrent.futures.Executor):
    """Runs each task at once, here, and records its arguments: what select_network hands an executor."""

    def __init__(self):
        self.tasks = []

    def submit(self, fn, *args, **kwargs):
        self.tasks.append(args)
        future = concurrent.futures.Future()
        future.set_result(fn(*args, **kwargs))
        return future


@quiet
def test_each_architecture_and_seed_is_the_sweep_select_lambda_gives_and_the_seeds_are_averaged():
    X, y = problem()
    pool = RecordingExecutor()
    search = l2fast.select_network(X, y, lams=LAMS, architectures=ARCHITECTURES, seeds=[3, 5], cv=3, chunk_size=2,
                                   executor=pool, **OPTIONS)
    # One task per architecture, seed, fold and chunk of lambdas (2 x 2 x 3 x 2), then the refit of the chosen one.
    assert len(pool.tasks) == 2 * 2 * 3 * 2 + 1
    groups = [(tuple(spec["network"]["layer_sizes"]), spec["network"]["seed"], tuple(rows[1]), tuple(lams))
              for spec, _, rows, lams in pool.tasks[:-1]]
    assert len(set(groups)) == len(groups)
    assert {tuple(lams) for *_, lams in groups} == {(0.0, 1.0), (10.0,)}
    for sizes in ARCHITECTURES:
        for seed in (3, 5):
            alone = l2fast.select_lambda(X, y, lams=LAMS, layer_sizes=sizes, seed=seed, cv=3, chunk_size=2,
                                         refit=False, **OPTIONS)
            assert_same_sweep(search.selection(sizes, seed), alone)
    folds = [search.selection(ARCHITECTURES[0], seed).results[0].fold_dev_losses for seed in (3, 5)]
    assert folds[0] != folds[1]  # each seed its own folds, initial weights and order
    assert [(r.layer_sizes, r.lam) for r in search.results] == [(sizes, lam) for sizes in ARCHITECTURES
                                                                  for lam in LAMS]
    for r in search.results:
        per_seed = [search.selection(r.layer_sizes, seed).results[LAMS.index(r.lam)] for seed in (3, 5)]
        assert r.seed_dev_losses == [s.dev_loss for s in per_seed]
        assert r.dev_loss == np.mean(r.seed_dev_losses)
        assert r.train_loss == np.mean([s.train_loss for s in per_seed])
        assert r.dev_accuracy == np.mean([s.dev_accuracy for s in per_seed])
        assert r.dev_loss_se == pytest.approx(np.std(r.seed_dev_losses, ddof=1) / np.sqrt(2), rel=1e-12)
    best = min(search.results, key=lambda r: r.dev_loss)
    assert (search.best_layer_sizes, search.best_lam) == (best.layer_sizes, best.lam)
    refit = l2fast.Network(best.layer_sizes, lam=best.lam, dtype="float64", seed=3)  # seeds[0], all the records
    refit.fit(X, y, epochs=8, lr=0.1, batch_size=16)
    assert all(np.array_equal(p, q) for p, q in zip(refit.weights + refit.biases,
                                                     search.best_network.weights + search.best_network.biases))
    table = search.table()
    assert table.count("*") == 1 and "mean over seeds 3, 5" in table
    starred = next(line for line in table.splitlines() if line.endswith("*"))
    assert starred.startswith("-".join(map(str, best.layer_sizes)) + " ")


@quiet
def test_with_development_data_the_chosen_network_is_the_first_seeds():
    X, y = problem()
    X_dev, y_dev = make_problem("softmax", 6, 3, m=60, seed=41)
    search = l2fast.select_network(X, y, X_dev, y_dev, LAMS, architectures=ARCHITECTURES, seeds=[0, 1],
                                   criterion="accuracy", **OPTIONS)
    best = min(search.results, key=lambda r: (-r.dev_accuracy, r.dev_loss))
    assert (search.best_layer_sizes, search.best_lam) == (best.layer_sizes, best.lam)
    assert search.best_network is search.selection(best.layer_sizes, 0).networks[LAMS.index(best.lam)]
    for sizes in ARCHITECTURES:
        alone = l2fast.select_lambda(X, y, X_dev, y_dev, LAMS, layer_sizes=sizes, seed=1, criterion="accuracy",
                                     **OPTIONS)
        assert_same_sweep(search.selection(sizes, 1), alone)
    one_seed = l2fast.select_network(X, y, X_dev, y_dev, LAMS, architectures=ARCHITECTURES, **OPTIONS)
    assert one_seed.seeds == [0] and "(se)" in one_seed.table()
    for r, alone in zip(one_seed.results, search.selection(ARCHITECTURES[0], 0).results):
        assert (r.dev_loss, r.dev_loss_se) == (alone.dev_loss, alone.dev_loss_se)  # one seed: its own figures


def test_a_search_whose_candidates_lie_within_their_noise_warns():
    X, y = problem()
    X_dev, y_dev = make_problem("softmax", 6, 3, m=30, seed=42)
    with pytest.warns(l2fast.NoisyChoiceWarning, match="select_network: .* every \\(architecture, lambda\\) of the 4"):
        search = l2fast.select_network(X, y, X_dev, y_dev, [0.0, 0.001], architectures=ARCHITECTURES,
                                       **{**OPTIONS, "epochs": 1, "lr": 0.001})
    assert not search.meaningful


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(architectures=[6, 10, 3]), TypeError, r"architectures\[0\]: expected a list of layer sizes"),
    (dict(architectures=[]), ValueError, "architectures: need at least one"),
    (dict(architectures=[[6, 3], [6, 3]]), ValueError, r"architectures\[1\]: \[6, 3\] is given twice"),
    (dict(architectures=[[6, 3], [6, 0, 3]]), ValueError, r"architectures\[1\]: "),
    (dict(architectures=[[6, 3], [5, 3]]), ValueError, r"X_train, y_train for architectures\[1\]"),
    (dict(seeds=[]), ValueError, "seeds: need at least one seed"),
    (dict(seeds=[1, 1]), ValueError, "seeds: each seed once"),
    (dict(seeds=[0, -1]), ValueError, r"seeds\[1\]: must be >= 0"),
    (dict(seeds=5), TypeError, "seeds: expected a list"),
    (dict(layer_sizes=[6, 3]), TypeError, "layer_sizes: select_network takes architectures"),
    (dict(seed=1), TypeError, "seed: select_network takes seeds"),
    (dict(cv=1), ValueError, "cv: must be >= 2"),
])
def test_bad_arguments_are_refused_before_training(kwargs, error, match):
    X, y = problem()
    options = {**OPTIONS, "architectures": ARCHITECTURES, **kwargs}
    with pytest.raises(error, match=match):
        l2fast.select_network(X, y, lams=LAMS, executor=RecordingExecutor(), **options)
