"""The sparse learning-rate rule of the DynSparse paper (Dietrich et al. 2021, arXiv:2108.06277, Eq. 3)."""

from __future__ import annotations

import math


def sparse_lr(base_lr: float, sparsity: float) -> float:
    """Optimal learning rate of a sparse model from the dense model's: ``eta(s) = eta(0) * exp(1.969 s^2 + 0.2905 s)``.

    Fitted on static unstructured sparse BERT-Medium and checked on DynSparse and 16x16 blocks (Dietrich et al. 2021, arXiv:2108.06277,
    Sec. 3 and App. A.4).

    Args:
        base_lr: Optimal learning rate of the dense model of the same size, ``eta(s = 0)``.
        sparsity: Fraction of zero weights ``s`` in ``[0, 1)``.

    Returns:
        The scaled learning rate.

    Example:
        >>> round(sparse_lr(1e-4, 0.9), 8)
        0.00064003
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity={sparsity!r} must be a number in [0, 1).")
    if isinstance(base_lr, bool) or not isinstance(base_lr, (int, float)) or base_lr < 0:
        raise ValueError(f"base_lr={base_lr!r} must be a non-negative number.")
    return float(base_lr) * math.exp(1.969 * sparsity**2 + 0.2905 * sparsity)
