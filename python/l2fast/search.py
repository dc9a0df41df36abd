"""Choosing the architecture and lambda together, over several seeds: one sweep of ``select_lambda`` per
(architecture, seed), all their tasks run as one list, each (architecture, lambda) judged by its figures
averaged over the seeds.

    search = l2fast.select_network(X, y, lams=[0.1, 1, 10], architectures=[[64, 10], [64, 32, 10]],
                                   seeds=[0, 1, 2], cv=3, executor=client, lr=0.1, batch_size=32)
    print(search.table())
    net = search.best_network  # the chosen (architecture, lambda), refitted on all the data with seeds[0]

The tasks are select_lambda's (a stacked group: a chunk of the lambdas for one architecture, seed and fold),
so each (architecture, seed) gives the very sweep ``select_lambda(..., layer_sizes=a, seed=s)`` gives.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from numpy.typing import ArrayLike

from l2fast import _validate
from l2fast.network import Network
from l2fast.selection import (Selection, _Sweep, best_index, is_meaningful, spread, table_head, table_row,
                              warn_noisy)


@dataclass
class CandidateResult:
    """One (architecture, lambda) of ``select_network``: each figure is the mean over the seeds of that seed's
    sweep's figure (with cv, itself a mean over the folds). ``seed_dev_losses`` holds each seed's development
    loss. ``dev_loss_se`` is their standard deviation / sqrt(seeds) with several seeds; with one seed, that
    sweep's own standard error (over the development parts, or over the folds with cv)."""

    layer_sizes: List[int]
    lam: float
    train_loss: float
    dev_loss: float
    train_accuracy: Optional[float]
    dev_accuracy: Optional[float]
    dev_loss_se: float
    seed_dev_losses: List[float] = field(default_factory=list)

    @property
    def gap(self) -> float:
        """Development loss minus training loss: how much the network overfits."""
        return self.dev_loss - self.train_loss

    @property
    def dev_loss_sd(self) -> float:
        """The spread (standard deviation) of the development loss over the seeds; 0 with one seed."""
        return spread(self.seed_dev_losses)


@dataclass
class NetworkSelection:
    """The outcome of ``select_network``: every (architecture, lambda)'s figures over the seeds, the chosen one
    and its network, and each (architecture, seed)'s own sweep.

    ``results`` go architecture by architecture, each with the lambdas in order. ``best_network`` is the chosen
    (architecture, lambda)'s network of ``seeds[0]``: without cv the one its sweep trained, with cv a refit on
    all the training data (``refit=True``) or None. ``selection(layer_sizes, seed)`` is that (architecture,
    seed)'s ``Selection``, as ``select_lambda`` with ``refit=False`` returns it."""

    results: List[CandidateResult]
    best_layer_sizes: List[int]
    best_lam: float
    best_network: Optional[Network]
    criterion: str
    seeds: List[int]
    selections: Dict[Tuple[Tuple[int, ...], int], Selection] = field(repr=False, default_factory=dict)
    meaningful: bool = True  # False when every candidate's dev loss lies within its noise of the best one

    def selection(self, layer_sizes: Sequence[int], seed: int) -> Selection:
        """The sweep of one architecture and seed."""
        return self.selections[(tuple(layer_sizes), seed)]

    def table(self) -> str:
        """The search as a text table, the chosen (architecture, lambda) marked with '*': per candidate the
        layer sizes and select_lambda's columns, each figure the mean over the seeds; the bracket holds the
        spread of the development loss over the seeds (sd), or with one seed that sweep's own (se, or sd over
        the folds with cv)."""
        several = len(self.seeds) > 1
        cv = bool(self.selections[(tuple(self.results[0].layer_sizes), self.seeds[0])].fold_networks)
        names = ["-".join(map(str, r.layer_sizes)) for r in self.results]
        width = max(len("layers"), *map(len, names))
        lines = [f"{'layers':<{width}} " + table_head(self.results, "(sd)" if several or cv else "(se)")]
        for name, r in zip(names, self.results):
            spread = r.dev_loss_sd if several else self._alone(r).dev_loss_sd if cv else r.dev_loss_se
            chosen = r.lam == self.best_lam and list(r.layer_sizes) == list(self.best_layer_sizes)
            lines.append(f"{name:<{width}} " + table_row(r, spread) + (" *" if chosen else ""))
        if several:
            lines.append(f"(mean over seeds {', '.join(map(str, self.seeds))}; sd: the spread over the seeds)")
        elif cv:
            lines.append("(mean over the folds; sd: the spread over the folds)")
        return "\n".join(lines)

    def _alone(self, r):
        """The LambdaResult of r in the sweep of its architecture and the one seed."""
        sweep = self.selections[(tuple(r.layer_sizes), self.seeds[0])]
        return next(s for s in sweep.results if s.lam == r.lam)


def _checked_architectures(architectures, network_options):
    """architectures as a list of lists of layer sizes, each one a network ``Network`` accepts, none twice."""
    if isinstance(architectures, (str, bytes)) or not hasattr(architectures, "__iter__"):
        raise TypeError(f"architectures: expected a list of layer_sizes such as [[64, 10], [64, 32, 10]], got "
                        f"{architectures!r}")
    checked = []
    for i, sizes in enumerate(architectures):
        if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
            raise TypeError(f"architectures[{i}]: expected a list of layer sizes such as [64, 10], got {sizes!r} "
                            "(one architecture is [[64, 10]], not [64, 10])")
        try:
            Network(sizes, backend="numpy", **network_options)  # the sizes alone; the backend is checked after
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"architectures[{i}]: {exc}") from exc
        sizes = [int(n) for n in sizes]
        if sizes in checked:
            raise ValueError(f"architectures[{i}]: {sizes} is given twice")
        checked.append(sizes)
    if not checked:
        raise ValueError("architectures: need at least one architecture")
    return checked


def _checked_seeds(seeds):
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
        raise TypeError(f"seeds: expected a list of integer seeds such as [0, 1, 2], got {seeds!r}")
    checked = [_validate.integer(seed, f"seeds[{i}]", 0) for i, seed in enumerate(seeds)]
    if not checked:
        raise ValueError("seeds: need at least one seed")
    if len(set(checked)) < len(checked):
        raise ValueError(f"seeds: each seed once, got {checked}")
    return checked


def select_network(X_train: ArrayLike, y_train: Optional[ArrayLike] = None, X_dev: Optional[ArrayLike] = None,
                   y_dev: Optional[ArrayLike] = None, lams: Optional[Sequence[float]] = None, *,
                   architectures: Sequence[Sequence[int]], seeds: Sequence[int] = (0,),
                   **options) -> NetworkSelection:
    """Trains a network per (architecture, lambda, seed) and picks the best (architecture, lambda) on the
    development data, each judged by its figures averaged over the seeds.

    ``architectures``: a list of ``layer_sizes`` (the same n_x and outputs, any hidden layers); ``seeds``:
    the repetitions, each drawing its own initial weights, order of records, and held-out records or
    cross-validation folds (repeated k-fold, as scikit-learn's ``RepeatedStratifiedKFold``; folds given as
    pairs are the same for every seed). The other arguments and options are ``select_lambda``'s (``lams``,
    ``activation``, ``loss``, ``backend``, ``dtype``, ``epochs``, ``lr``, ``batch_size``, ``cv``, ``refit``,
    ``criterion``, ``executor``, ``chunk_size``, ...), with the same meaning; ``lams`` is one grid for every
    architecture.

    Each (architecture, seed) is select_lambda's sweep: its tasks (a chunk of the lambdas for one fold) run,
    all of them together, here or on the ``executor``, and ``selection(layer_sizes, seed)`` gives the same bits
    as ``select_lambda(..., layer_sizes=layer_sizes, seed=seed, refit=False)``. The chosen (architecture,
    lambda) has the lowest mean development loss (``criterion="accuracy"``: the highest mean accuracy; ties:
    the lower loss); ``NoisyChoiceWarning`` when every candidate lies within two standard errors of it (with
    several seeds, the standard error of the mean over the seeds). With cv and ``refit=True`` it is trained
    again on all the training data with ``seeds[0]``.
    """
    for name, instead in (("layer_sizes", "architectures=[layer_sizes, ...]"), ("seed", "seeds=[seed, ...]"),
                          ("names", None)):
        if name in options:
            raise TypeError(f"{name}: select_network takes {instead}" if instead else
                            f"select_network() got an unexpected keyword argument {name!r}")
    network_options = {key: options[key] for key in ("activation", "loss", "dtype") if key in options}
    architectures = _checked_architectures(architectures, network_options)
    seeds = _checked_seeds(seeds)
    sweep = _Sweep(X_train, y_train, X_dev, y_dev, lams, architectures=architectures, seeds=seeds,
                   names=[f"architectures[{i}]" for i in range(len(architectures))], **options)
    plan = [(sizes, seed, sweep.tasks(sizes, seed)) for sizes in architectures for seed in seeds]
    outcomes = sweep.run([task for _, _, tasks in plan for task in tasks])
    selections, start = {}, 0
    for sizes, seed, tasks in plan:
        selections[(tuple(sizes), seed)] = sweep.selection(outcomes[start:start + len(tasks)])
        start += len(tasks)
    results = [_candidate(sizes, i, [selections[(tuple(sizes), seed)] for seed in seeds])
               for sizes in architectures for i in range(len(sweep.lams))]
    best = best_index(results, sweep.criterion)
    meaningful = is_meaningful(results, best)
    chosen = results[best]
    if not meaningful and len(results) > 1:
        warn_noisy("select_network", f"every (architecture, lambda) of the {len(results)}",
                   f"{chosen.layer_sizes} with lambda = {chosen.lam:g}")
    if not sweep.cv:
        first = selections[(tuple(chosen.layer_sizes), seeds[0])]
        best_network = first.networks[best % len(sweep.lams)]
    elif options.get("refit", True):
        best_network = sweep.refit(chosen.layer_sizes, seeds[0], chosen.lam)
    else:
        best_network = None
    return NetworkSelection(results, chosen.layer_sizes, chosen.lam, best_network, sweep.criterion, seeds,
                            selections, meaningful)


def _candidate(layer_sizes, i, selections):
    """The CandidateResult of lambda i of one architecture from its sweeps, one per seed."""
    figures = [sweep.results[i] for sweep in selections]

    def mean(key):
        values = [getattr(r, key) for r in figures]
        return None if values[0] is None else float(np.mean(values))

    seed_losses = [r.dev_loss for r in figures]
    if len(figures) > 1:
        se = float(np.std(seed_losses, ddof=1) / math.sqrt(len(figures)))
    else:
        se = figures[0].dev_loss_se
    return CandidateResult(layer_sizes=list(layer_sizes), lam=figures[0].lam, train_loss=mean("train_loss"),
                           dev_loss=mean("dev_loss"), train_accuracy=mean("train_accuracy"),
                           dev_accuracy=mean("dev_accuracy"), dev_loss_se=se, seed_dev_losses=seed_losses)
