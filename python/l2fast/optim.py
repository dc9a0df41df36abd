"""Optimizers and learning-rate schedules for ``Network.fit``, with the L2 term done right.

Every optimizer works on the gradient of J, g = mean over the batch of dL/dW + (lam/m) W (biases:
no lam term), with m the training-set size. Per weight tensor W, with state V (and M), step t >= 1:

- ``SGD()``: W <- W - lr g.
- ``Momentum(momentum=mu, nesterov=False)``: V <- mu V + g, then W <- W - lr V; with Nesterov
  W <- W - lr (g + mu V). These are PyTorch's ``SGD(momentum=mu, nesterov=..., weight_decay=lam/m)``.
- ``Adam(beta1, beta2, eps)``: M <- b1 M + (1 - b1) g, V <- b2 V + (1 - b2) g*g, then
  W <- W - lr/(1 - b1^t) M / (sqrt(V)/sqrt(1 - b2^t) + eps): PyTorch's ``Adam(weight_decay=lam/m)``.
  ``Adam(eps_on_v=True)`` adds eps to sqrt(V) instead: W <- W - lr sqrt(1 - b2^t)/(1 - b1^t) M / (sqrt(V) + eps),
  scikit-learn's and Keras' Adam (the paper's epsilon-hat form); the two differ once sqrt(V) is near eps.

``decoupled=True`` (Momentum and Adam) takes the L2 term out of g and applies it straight to W as
weight decay: g = mean dL/dW, and the step ends W <- (1 - lr lam/m) W - lr (update from g). Adam so
becomes AdamW (PyTorch's ``AdamW(weight_decay=lam/m)``). With plain SGD the two are the same step.
With momentum or Adam they differ: coupled, the penalty's gradient is averaged into the velocity and,
for Adam, divided by sqrt(V), so large-gradient weights are decayed less; decoupled, every weight
shrinks by the same factor each step. Coupled descent still minimises J; decoupled is the method of
Loshchilov and Hutter (2019), whose fixed point is not J's minimum.

Schedules change lr between epochs (epoch e counted from 0 over all of a network's fits with one
schedule): ``Constant()``, ``InverseScaling(power)``: lr / (e + 1)^power, ``StepDecay(step_size,
gamma)``: lr gamma^floor(e / step_size), ``ExponentialDecay(gamma)``: lr gamma^e, and
``ReduceOnPlateau(factor, patience, threshold, min_lr)``: lr is multiplied by factor once the
validation cost has not improved by a relative threshold for more than patience epochs. Decay factors
(gamma) lie in (0, 1], so no schedule ever raises the rate; one that would take it below ``MIN_LR``
(float32's smallest normal number, 1.2e-38; or below lr itself where lr is smaller) gives that floor
instead, on every backend, however many epochs have passed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import ClassVar, List, Optional, Union

import numpy as np

MIN_LR = float(np.finfo(np.float32).tiny)  # a schedule's floor: positive, and still normal in float32


def _check_unit(value, name, *, allow_zero):
    """A float in [0, 1) (or (0, 1) without allow_zero), named in the error."""
    from l2fast import _validate

    value = _validate.real(value, name, positive=not allow_zero)
    if value >= 1:
        raise ValueError(f"{name}: must be < 1, got {value}")
    return value


def _check_gamma(value):
    """A decay factor in (0, 1]: a growing rate would overflow after enough epochs."""
    from l2fast import _validate

    value = _validate.real(value, "gamma", positive=True)
    if value > 1:
        raise ValueError(f"gamma: must be <= 1 (a decay), got {value}")
    return value


def _check_flag(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


@dataclass(frozen=True)
class SGD:
    """Plain minibatch gradient descent: W <- W - lr (mean dL/dW + (lam/m) W). The default."""

    name: ClassVar[str] = "sgd"
    n_slots: ClassVar[int] = 0
    decoupled: ClassVar[bool] = False


@dataclass(frozen=True)
class Momentum:
    """Heavy-ball momentum, or Nesterov's with ``nesterov=True``; one velocity per parameter."""

    momentum: float = 0.9
    nesterov: bool = False
    decoupled: bool = False
    name: ClassVar[str] = "momentum"
    n_slots: ClassVar[int] = 1

    def __post_init__(self):
        object.__setattr__(self, "momentum", _check_unit(self.momentum, "momentum", allow_zero=True))
        object.__setattr__(self, "nesterov", _check_flag(self.nesterov, "nesterov"))
        object.__setattr__(self, "decoupled", _check_flag(self.decoupled, "decoupled"))


@dataclass(frozen=True)
class Adam:
    """Adam with bias correction; ``decoupled=True`` is AdamW. Two moments per parameter."""

    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    decoupled: bool = False
    eps_on_v: bool = False
    name: ClassVar[str] = "adam"
    n_slots: ClassVar[int] = 2

    def __post_init__(self):
        from l2fast import _validate

        object.__setattr__(self, "beta1", _check_unit(self.beta1, "beta1", allow_zero=True))
        object.__setattr__(self, "beta2", _check_unit(self.beta2, "beta2", allow_zero=True))
        object.__setattr__(self, "eps", _validate.real(self.eps, "eps", positive=True))
        object.__setattr__(self, "decoupled", _check_flag(self.decoupled, "decoupled"))
        object.__setattr__(self, "eps_on_v", _check_flag(self.eps_on_v, "eps_on_v"))


OptimizerSpec = Union[SGD, Momentum, Adam]

OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "nesterov": lambda: Momentum(nesterov=True), "adam": Adam,
              "adamw": lambda: Adam(decoupled=True)}


def resolve_optimizer(optimizer) -> OptimizerSpec:
    """An optimizer from its name ("sgd", "momentum", "nesterov", "adam", "adamw") or an instance."""
    if isinstance(optimizer, (SGD, Momentum, Adam)):
        return optimizer
    if isinstance(optimizer, str) and optimizer in OPTIMIZERS:
        return OPTIMIZERS[optimizer]()
    raise ValueError(f"optimizer: expected one of {', '.join(map(repr, OPTIMIZERS))} or an instance of "
                     f"l2fast.SGD, l2fast.Momentum or l2fast.Adam, got {optimizer!r}")


def hyperparameters(spec: OptimizerSpec) -> dict:
    """The spec's fields as a plain dict (for the save format)."""
    return {f.name: getattr(spec, f.name) for f in fields(spec)}


# -- learning-rate schedules ------------------------------------------------------------------------


@dataclass(frozen=True)
class Constant:
    """lr in every epoch."""

    name: ClassVar[str] = "constant"

    def factor(self, epoch: int) -> float:
        return 1.0


@dataclass(frozen=True)
class InverseScaling:
    """lr / (epoch + 1)^power, like scikit-learn's ``learning_rate="invscaling"`` but per epoch."""

    power: float = 0.5
    name: ClassVar[str] = "invscaling"

    def __post_init__(self):
        from l2fast import _validate

        object.__setattr__(self, "power", _validate.real(self.power, "power", positive=True))

    def factor(self, epoch: int) -> float:
        try:
            return 1.0 / (epoch + 1) ** self.power
        except OverflowError:  # (epoch + 1)^power beyond float64: the rate is at its floor
            return 0.0


@dataclass(frozen=True)
class StepDecay:
    """lr gamma^floor(epoch / step_size), PyTorch's ``StepLR``."""

    step_size: int = 10
    gamma: float = 0.1
    name: ClassVar[str] = "step"

    def __post_init__(self):
        from l2fast import _validate

        object.__setattr__(self, "step_size", _validate.integer(self.step_size, "step_size", 1))
        object.__setattr__(self, "gamma", _check_gamma(self.gamma))

    def factor(self, epoch: int) -> float:
        return _power(self.gamma, epoch // self.step_size)


@dataclass(frozen=True)
class ExponentialDecay:
    """lr gamma^epoch, PyTorch's ``ExponentialLR``."""

    gamma: float = 0.95
    name: ClassVar[str] = "exponential"

    def __post_init__(self):
        from l2fast import _validate

        object.__setattr__(self, "gamma", _check_gamma(self.gamma))

    def factor(self, epoch: int) -> float:
        return _power(self.gamma, epoch)


@dataclass(frozen=True)
class ReduceOnPlateau:
    """lr times factor each time the validation cost has gone more than ``patience`` epochs without
    falling below best (1 - threshold); never below min_lr. PyTorch's ``ReduceLROnPlateau`` (mode
    "min", relative threshold, no cooldown). Needs ``validation_data`` in ``fit``."""

    factor: float = 0.1
    patience: int = 10
    threshold: float = 1e-4
    min_lr: float = 0.0
    name: ClassVar[str] = "plateau"

    def __post_init__(self):
        from l2fast import _validate

        object.__setattr__(self, "factor", _check_unit(self.factor, "factor", allow_zero=False))
        object.__setattr__(self, "patience", _validate.integer(self.patience, "patience", 0))
        object.__setattr__(self, "threshold", _check_unit(self.threshold, "threshold", allow_zero=True))
        object.__setattr__(self, "min_lr", _validate.real(self.min_lr, "min_lr", positive=False))


def _power(gamma, n):
    """gamma^n for gamma in (0, 1] and an integer n >= 0 of any size (0.0 once it underflows)."""
    try:
        return gamma ** n
    except OverflowError:  # n beyond float64's range
        return 1.0 if gamma == 1 else 0.0


ScheduleSpec = Union[Constant, InverseScaling, StepDecay, ExponentialDecay, ReduceOnPlateau]

SCHEDULES = {"constant": Constant, "invscaling": InverseScaling, "step": StepDecay, "exponential": ExponentialDecay,
             "plateau": ReduceOnPlateau}


def resolve_schedule(schedule) -> ScheduleSpec:
    """A schedule from None (constant), its name or an instance."""
    if schedule is None:
        return Constant()
    if isinstance(schedule, (Constant, InverseScaling, StepDecay, ExponentialDecay, ReduceOnPlateau)):
        return schedule
    if isinstance(schedule, str) and schedule in SCHEDULES:
        return SCHEDULES[schedule]()
    raise ValueError(f"schedule: expected None, one of {', '.join(map(repr, SCHEDULES))} or an instance of "
                     f"an l2fast schedule, got {schedule!r}")


# -- the state that training resumes from -----------------------------------------------------------


@dataclass
class OptimizerState:
    """What an optimizer and a schedule carry from one step and epoch to the next.

    ``slots[s]`` holds one array per parameter, ``[W_0, ..., W_{L-1}, b_0, ..., b_{L-1}]`` in shape:
    the velocity for Momentum; the first and second moments for Adam. ``step`` counts minibatch
    steps (Adam's t), ``epoch`` the epochs trained under ``schedule``; ``best``, ``bad_epochs`` and
    ``lr_scale`` are ReduceOnPlateau's record of the validation cost.
    """

    optimizer: OptimizerSpec
    schedule: ScheduleSpec
    slots: List[list] = field(default_factory=list)
    step: int = 0
    epoch: int = 0
    best: float = math.inf
    bad_epochs: int = 0
    lr_scale: float = 1.0

    @classmethod
    def fresh(cls, optimizer, schedule, weights, biases, zeros_like=np.zeros_like):
        zeros = lambda arrays: [zeros_like(a) for a in arrays]  # noqa: E731
        return cls(optimizer, schedule, [zeros(weights) + zeros(biases) for _ in range(optimizer.n_slots)])

    def restart_schedule(self, schedule):
        self.schedule, self.epoch, self.best, self.bad_epochs, self.lr_scale = schedule, 0, math.inf, 0, 1.0

    def copy(self) -> "OptimizerState":
        return OptimizerState(self.optimizer, self.schedule, [[a.copy() for a in slot] for slot in self.slots],
                              self.step, self.epoch, self.best, self.bad_epochs, self.lr_scale)

    def lr(self, lr0: float) -> float:
        """The learning rate of the coming epoch for a base rate lr0, never below MIN_LR."""
        if isinstance(self.schedule, ReduceOnPlateau):
            return max(lr0 * self.lr_scale, self.schedule.min_lr, min(lr0, MIN_LR))
        return max(lr0 * self.schedule.factor(self.epoch), min(lr0, MIN_LR))

    def end_epoch(self, val_cost: Optional[float]) -> None:
        """Moves the schedule on past an epoch that ended with this validation cost."""
        self.epoch += 1
        if not isinstance(self.schedule, ReduceOnPlateau):
            return
        if val_cost < self.best * (1 - self.schedule.threshold):
            self.best, self.bad_epochs = val_cost, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs > self.schedule.patience:
            self.lr_scale *= self.schedule.factor
            self.bad_epochs = 0
