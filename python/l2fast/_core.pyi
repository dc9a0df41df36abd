# Type stub for the compiled module l2fast._core (src/bindings.cpp); tests/test_api.py checks it agrees.
from typing import Optional

import numpy as np
import numpy.typing as npt

build_commit: str

def train_epoch(
    weights: list[np.ndarray],
    biases: list[np.ndarray],
    X: np.ndarray,
    y: np.ndarray,
    order: Optional[npt.NDArray[np.int64]],
    batch_size: int,
    lr: float,
    lam_over_m: float,
    activation: str,
    loss: str,
) -> tuple[float, int]: ...
def train_epoch_stacked(
    weights: list[list[np.ndarray]],
    biases: list[list[np.ndarray]],
    X: np.ndarray,
    y: np.ndarray,
    order: Optional[npt.NDArray[np.int64]],
    batch_size: int,
    lr: float,
    lam_over_m: list[float],
    activation: str,
    loss: str,
) -> list[tuple[float, int]]: ...
def predict(
    weights: list[np.ndarray], biases: list[np.ndarray], X: np.ndarray, activation: str, loss: str
) -> np.ndarray: ...
def evaluate(
    weights: list[np.ndarray], biases: list[np.ndarray], X: np.ndarray, y: np.ndarray, activation: str, loss: str
) -> tuple[float, int]: ...
def gradients(
    weights: list[np.ndarray],
    biases: list[np.ndarray],
    X: np.ndarray,
    y: np.ndarray,
    lam_over_m: float,
    activation: str,
    loss: str,
) -> tuple[list[np.ndarray], list[np.ndarray], float]: ...
def blas_config() -> str: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
def l2_update(W: np.ndarray, dW: np.ndarray, lr: float, lam_over_m: float) -> None: ...
def axpy(alpha: float, x: np.ndarray, y: np.ndarray) -> None: ...
def gemm_only_epoch_seconds(layer_sizes: list[int], m: int, batch_size: int, dtype: str) -> float: ...
