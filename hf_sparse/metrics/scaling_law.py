"""Scaling-law advantages of sparse training (Singh et al. 2024, Sec. 5).

FLOPs a compute-efficient dense model would need to reach the same loss (Eq. 3, 6, 8), minus the sparse FLOPs
actually spent (Eq. 7, 9). FLOP counts are plain inputs (per module group, from `hf_sparse.flops` or any other
accounting); `sparse_flops` scales each group by its density. Re-exported by `hf_sparse.metrics`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

@dataclass(frozen=True)
class ScalingLaw:
    """Compute-efficient scaling law ``L(f) = (f / f_b)^-gamma + E`` (Singh et al. 2024, Eq. 3) and its FLOPs-per-token fit
    ``f_d(L) = d_coef * L^d_exp`` (Eq. 8). Defaults: the Pile fit of Dey et al. (2023) used by the paper.

    ``f_d`` is in the FLOPs-per-token units of Singh et al. 2024, Algorithm 2 (I = 3: forward and backward); a 111M-parameter
    Cerebras-GPT at L ~ 2.6 gives ~8e8, matching Algorithm 2's count for that model, so sparse FLOPs per token
    passed to `inference_advantage` must use the same accounting.
    """

    E: float = 0.5066
    f_b: float = 5.984e22
    gamma: float = 0.07037
    d_coef: float = 2.6198e12
    d_exp: float = -8.4243

    def __post_init__(self) -> None:
        for key in ("f_b", "gamma", "d_coef"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key}={getattr(self, key)!r} must be > 0.")

    def loss(self, flops: float) -> float:
        """Eq. 3: the loss a compute-efficient model reaches with ``flops`` training FLOPs."""
        return (flops / self.f_b) ** (-self.gamma) + self.E

    def compute_for_loss(self, loss: float) -> float:
        """Eq. 6: training FLOPs a compute-efficient model needs to reach ``loss``.

        Inverting Eq. 3: ``L - E = (f/f_b)^-gamma``, so ``log(L - E) = -gamma (log f - log f_b)`` and
        ``f = exp(log f_b - log(L - E) / gamma)``. Only defined for ``L > E``.
        """
        if not loss > self.E:
            raise ValueError(f"loss={loss!r} must exceed the irreducible loss E={self.E}.")
        return math.exp(math.log(self.f_b) - math.log(loss - self.E) / self.gamma)

    def flops_per_token_for_loss(self, loss: float) -> float:
        """Eq. 8: FLOPs per token of the compute-efficient model that reaches ``loss``."""
        if not loss > 0:
            raise ValueError(f"loss={loss!r} must be > 0.")
        return self.d_coef * loss**self.d_exp


PILE_SCALING_LAW = ScalingLaw()


@dataclass(frozen=True)
class Advantage:
    """FLOPs saved against the compute-efficient dense model reaching the same loss.

    Attributes:
        equivalent: FLOPs the scaling law needs for the loss (``f_hat``).
        spent: Sparse FLOPs actually spent (``s``).
        absolute: ``equivalent - spent`` (Eq. 7 / 9); positive means sparsity paid off.
        relative: ``absolute / equivalent``: the fraction of the equivalent FLOPs saved.
    """

    equivalent: float
    spent: float
    absolute: float = field(init=False)
    relative: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "absolute", self.equivalent - self.spent)
        object.__setattr__(self, "relative", (self.equivalent - self.spent) / self.equivalent)


def sparse_flops(flops_by_group: Mapping[str, float], density_by_group: Mapping[str, float]) -> float:
    """FLOPs with each group's FLOPs scaled by its density (Singh et al. 2024, App. A); groups without a density stay dense.

    Args:
        flops_by_group: Dense FLOPs per group (``"qkv"``, ``"attn_out"``, ``"ffn_up"``, ``"ffn_down"`` and any
            dense remainder such as attention matmuls or embeddings under other keys).
        density_by_group: Density in ``[0, 1]`` per group; every key must be a key of ``flops_by_group``.

    Example:
        >>> sparse_flops({"qkv": 3e9, "ffn_up": 8e9, "attention": 1e9}, {"qkv": 0.5, "ffn_up": 0.25})
        4500000000.0
    """
    unknown = sorted(set(density_by_group) - set(flops_by_group))
    if unknown:
        raise ValueError(f"Densities given for groups {unknown} that have no FLOPs (known: {sorted(flops_by_group)}).")
    bad = {g: d for g, d in density_by_group.items() if not 0.0 <= float(d) <= 1.0}
    if bad:
        raise ValueError(f"Densities must be in [0, 1], got {bad}.")
    return float(sum(float(f) * float(density_by_group.get(g, 1.0)) for g, f in flops_by_group.items()))


def pretraining_advantage(loss: float, sparse_training_flops: float, law: ScalingLaw = PILE_SCALING_LAW) -> Advantage:
    """Pre-training advantage (Singh et al. 2024, Eq. 7): ``f_hat(L) - s(eps, rho_bar)``.

    Args:
        loss: Validation loss the sparse run reached.
        sparse_training_flops: Training FLOPs spent, each group scaled by its mean density (`sparse_flops` with
            `ThresholdSparsityTracker.mean_density`).
        law: The scaling law (default: the Pile fit).

    Example:
        >>> pretraining_advantage(3.0, 1e19).relative
    """
    # Eq. 7: Delta f = f_hat(L) - s. f_hat(L) (Eq. 6) is what a dense compute-efficient model needs to reach L;
    # a run that spends s < f_hat(L) reached L more cheaply than the scaling law, so sparsity paid off. Any
    # loss increase raises f_hat's requirement exponentially (exponent 1/gamma ~ 14): the "tyranny" of Sec. 5.1.
    return Advantage(law.compute_for_loss(loss), float(sparse_training_flops))


def inference_advantage(loss: float, sparse_flops_per_token: float, law: ScalingLaw = PILE_SCALING_LAW) -> Advantage:
    """Inference advantage (Singh et al. 2024, Eq. 9): ``f_hat_d(L) - s_d(eps, rho_D)`` with the final checkpoint's densities.

    Args:
        loss: Validation loss of the final checkpoint.
        sparse_flops_per_token: FLOPs per token of the final model scaled by its group densities (same
            accounting as `ScalingLaw.flops_per_token_for_loss`).
        law: The scaling law.
    """
    # Eq. 9: Delta f_d = f_hat_d(L) - s_d. Eq. 8 (fitted by the paper) gives the FLOPs per token of the
    # compute-efficient dense model that reaches L; the sparse final model costs s_d per token.
    return Advantage(law.flops_per_token_for_loss(loss), float(sparse_flops_per_token))
