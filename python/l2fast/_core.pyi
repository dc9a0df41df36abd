# Type stub for the compiled module l2fast._core (src/bindings.cpp); tests/test_api.py checks it agrees.
from typing import Callable, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

build_commit: str

# X: a C-contiguous (m, n_in) array, or a canonical CSR matrix's (data, indices, indptr, (m, n_in)) with indices
# and indptr both int32 or both int64, checked whole (indptr monotone, indices sorted and in range) before use.
Features = Union[np.ndarray, Tuple[np.ndarray, np.ndarray, np.ndarray, Tuple[int, int]]]

def train_epoch(
    weights: list[np.ndarray],
    biases: list[np.ndarray],
    X: Features,
    y: np.ndarray,
    order: Optional[npt.NDArray[np.int64]],
    batch_size: int,
    lr: float,
    lam_over_m: float,
    activation: str,
    loss: str,
    *,
    optimizer: str = "sgd",
    slots: list[list[np.ndarray]] = [],
    step: int = 0,
    momentum: float = 0.9,
    nesterov: bool = False,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    decoupled: bool = False,
    eps_on_v: bool = False,
    sample_weight: Optional[np.ndarray] = None,
    check_finite: bool = True,
    with_norms: bool = False,
    short_lam_over_m: Optional[float] = None,
    share_threads: int = 0,
) -> Union[tuple[float, int], tuple[float, int, float]]: ...
def train_epoch_stacked(
    weights: list[list[np.ndarray]],
    biases: list[list[np.ndarray]],
    X: Features,
    y: np.ndarray,
    order: Optional[npt.NDArray[np.int64]],
    batch_size: int,
    lr: float,
    lam_over_m: list[float],
    activation: str,
    loss: str,
    *,
    sample_weight: Optional[np.ndarray] = None,
    check_finite: bool = True,
) -> list[tuple[float, int]]: ...
def predict(
    weights: list[np.ndarray], biases: list[np.ndarray], X: Features, activation: str, loss: str
) -> np.ndarray: ...
def evaluate(
    weights: list[np.ndarray],
    biases: list[np.ndarray],
    X: Features,
    y: np.ndarray,
    activation: str,
    loss: str,
    *,
    sample_weight: Optional[np.ndarray] = None,
    check_finite: bool = True,
) -> tuple[float, int]: ...
class GradientsWorkspace:
    def __init__(self) -> None: ...
    @property
    def times_grown(self) -> int: ...

def gradients(
    weights: list[np.ndarray],
    biases: list[np.ndarray],
    X: Features,
    y: np.ndarray,
    lam_over_m: float,
    activation: str,
    loss: str,
    *,
    sample_weight: Optional[np.ndarray] = None,
    check_finite: bool = True,
    with_correct: bool = False,
    out: Optional[tuple[list[npt.NDArray[np.float64]], list[npt.NDArray[np.float64]]]] = None,
    workspace: Optional[GradientsWorkspace] = None,
    on_layer: Optional[Callable[[int], None]] = None,
    share_threads: int = 0,
) -> Union[tuple[list[npt.NDArray[np.float64]], list[npt.NDArray[np.float64]], float],
           tuple[list[npt.NDArray[np.float64]], list[npt.NDArray[np.float64]], float, int]]: ...
def all_finite(values: np.ndarray) -> bool: ...
class LinearObjective:
    def __init__(
        self,
        X: Features,
        y: np.ndarray,
        n_out: int,
        loss: str,
        lam: float,
        *,
        sample_weight: np.ndarray | None = None,
        check_X: bool = True,
    ) -> None: ...
    def evaluate(self, x: np.ndarray, grad: np.ndarray) -> tuple[float, float]: ...
    @property
    def n_params(self) -> int: ...
    @property
    def m(self) -> int: ...

def linear_gradient_curvature(
    W: np.ndarray,
    b: np.ndarray,
    X: Features,
    y: np.ndarray,
    lam_over_m: float,
    loss: str,
    *,
    sample_weight: Optional[np.ndarray] = None,
    check_X: bool = True,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], float, npt.NDArray[np.float64],
           Optional[npt.NDArray[np.float64]]]: ...
def linear_hessian_product(
    X: Features,
    V: npt.NDArray[np.float64],
    v_b: npt.NDArray[np.float64],
    c: npt.NDArray[np.float64],
    P: Optional[npt.NDArray[np.float64]],
    lam_over_m: float,
    *,
    check_X: bool = True,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]: ...
def linear_hessian_diagonal(
    X: Features,
    c: npt.NDArray[np.float64],
    P: Optional[npt.NDArray[np.float64]],
    n_in: int,
    *,
    check_X: bool = True,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]: ...
def blas_config() -> str: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
def l2_update(W: np.ndarray, dW: np.ndarray, lr: float, lam_over_m: float) -> None: ...
def optimizer_step(
    P: np.ndarray,
    G: np.ndarray,
    slots: list[np.ndarray],
    lr: float,
    decay: float,
    step: int,
    *,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    nesterov: bool = False,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    decoupled: bool = False,
    eps_on_v: bool = False,
) -> None: ...
def axpy(alpha: float, x: np.ndarray, y: np.ndarray) -> None: ...
def gemm_only_epoch_seconds(layer_sizes: list[int], m: int, batch_size: int, dtype: str) -> float: ...
def linear_step_fits(layer_sizes: list[int]) -> bool: ...
def optimizer_step_shares(layer_sizes: list[int], batch_size: int) -> bool: ...
def sgd_step_shares(layer_sizes: list[int], batch_size: int, dtype: str) -> bool: ...
def split_step_fits(layer_sizes: list[int], batch_size: int, activation: str) -> bool: ...
def partial_output_fits(layer_sizes: list[int], batch_size: int) -> bool: ...
def gradients_shares(layer_sizes: list[int], m: int) -> bool: ...
def shuffled_read_seconds(X: np.ndarray, repeats: int = 5, batch_size: int = 0) -> float: ...
def epoch_order(raw: npt.NDArray[np.uint64], m: int) -> Optional[Tuple[npt.NDArray[np.int64], int]]: ...
def epoch_order_drawn(capsule: object, m: int, spare_words: int) -> Optional[npt.NDArray[np.int64]]: ...
