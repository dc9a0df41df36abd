"""l2fast: L2-regularised dense networks with a NumPy reference backend and a fused C++ one.

    import l2fast
    net = l2fast.Network([784, 256, 10], lam=1.0, backend="cpu", seed=0)
    history = net.fit(X, y, epochs=10, lr=0.1, batch_size=128)
    net.fit(X, y, epochs=10, lr=1e-3, batch_size=128, optimizer="adamw", schedule=l2fast.StepDecay(5, 0.5))
"""
from l2fast import threads  # first: loads the compiled module with OpenBLAS configured (see threads.py)
from l2fast.backends import BackendUnavailableError, available_backends
from l2fast.dataset import Dataset
from l2fast.io import load
from l2fast.monitor import ConvergenceWarning, DivergenceWarning
from l2fast.network import CostParts, DivergenceError, History, Network, fit_together
from l2fast.optim import (SGD, Adam, Constant, ExponentialDecay, InverseScaling, Momentum, OptimizerState,
                          ReduceOnPlateau, StepDecay)
from l2fast.search import CandidateResult, NetworkSelection, select_network
from l2fast.selection import LambdaResult, NoisyChoiceWarning, Selection, lambda_grid, select_lambda
from l2fast.solvers import LBFGS, NewtonCG
from l2fast.threads import get_num_threads, set_num_threads

__version__ = "0.1.0"

__all__ = [
    "Network", "History", "CostParts", "DivergenceError", "load", "fit_together", "select_lambda", "Selection",
    "LambdaResult", "lambda_grid", "NoisyChoiceWarning", "select_network", "NetworkSelection", "CandidateResult",
    "SGD", "Momentum", "Adam", "OptimizerState", "Constant", "InverseScaling", "StepDecay", "ExponentialDecay",
    "ReduceOnPlateau", "LBFGS", "NewtonCG", "ConvergenceWarning", "DivergenceWarning", "Dataset",
    "available_backends", "BackendUnavailableError", "set_num_threads", "get_num_threads",
    "__version__",
]
