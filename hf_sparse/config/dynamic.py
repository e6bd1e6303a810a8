"""`DynamicSparsityConfig`: how masks evolve during training."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

from .base import ConfigMixin, _check_choice, _is_int, _is_number
from .registry import ALGORITHM_REGISTRY

PRUNE_SCHEDULES = ("cosine", "linear", "constant")
INACTIVE_MODES = ("zero", "frozen")
TOPK_EXPLOITATIONS = ("FIX", "RESET", "REGULARIZE", "NONE")


def __getattr__(name: str):
    # Old names, kept readable: the algorithm names and defaults now live on the registered classes.
    if name == "ALGORITHMS":
        return ALGORITHM_REGISTRY.names()
    if name == "ALGORITHM_DEFAULTS":
        return {n: dict(ALGORITHM_REGISTRY.get(n).defaults) for n in ALGORITHM_REGISTRY.names()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class DynamicSparsityConfig(ConfigMixin):
    """How the sparsity pattern evolves during training: the algorithm, its cadence and its options.

    Every schedule is counted in optimizer steps. Fields left ``None`` take the chosen algorithm's literature
    default (the ``defaults`` of its registered class), resolved on construction so the saved JSON records what
    actually ran. The algorithm's own checks run on construction too (``check_config`` of its class).

    Args:
        algorithm: The name of a registered algorithm (`hf_sparse.register_algorithm`). Built in: ``"static"``
            (the initial pattern never changes), ``"dynsparse"`` (magnitude / block-norm pruning with random
            re-allocation, Dietrich et al. 2021, arXiv:2108.06277), ``"set"`` (same, SET defaults), ``"rigl"``
            (re-allocation by dense-gradient magnitude), ``"gmp"`` (gradual magnitude pruning, cubic schedule) or
            ``"topk"`` (top-d magnitude rewiring with straight-through gradients, the NVIDIA sparse-training study), ``"movement"``
            / ``"soft_movement"`` (movement pruning of a dense model, Sanh et al. 2020, arXiv:2005.07683).
        num_updates: Number of pattern updates ``n`` spread over the run (one every ``total_steps / n`` steps).
        update_interval: Optimizer steps between updates (``Delta T``). Give this or ``num_updates``, not both.
        prune_ratio: Maximum fraction of active granules pruned (and re-allocated) at an update.
        prune_schedule: Decay of the pruning ratio over time: ``"cosine"``, ``"linear"`` or ``"constant"``.
        start_fraction: No update before this fraction of training (GMP starts pruning here).
        end_fraction: No update after this fraction of training; the pruning ratio decays to zero there.
        inactive: ``"zero"`` (inactive weights are exactly zero) or ``"frozen"`` (inactive weights keep their
            initial values, take part in the forward pass with them but get no gradient and are never updated;
            re-allocated weights resume from their kept value; checkpoints store the full weights).
        apply_sparse_lr: Scale the learning rate by the sparse learning-rate rule (Dietrich et al. 2021, arXiv:2108.06277, Eq. 3).
        gmp_initial_density: Density GMP starts from (1.0 = dense).
        topk_exploitation: ``"FIX"`` (stop rewiring after ``topk_fix_fraction`` and zero non-participating
            weights), ``"RESET"`` (zero them every ``topk_reset_interval`` steps) or ``"REGULARIZE"`` (decay them
            by ``topk_regularize_beta`` every step); ``"NONE"``: rewiring with no exploitation, the baseline of
            the NVIDIA paper's Fig. 3.
        topk_fix_fraction: ``v`` of the NVIDIA sparse-training study, anonymous ICLR 2022 submission: fraction of training after which FIX stops rewiring.
        topk_reset_interval: ``z``: steps between RESETs.
        topk_regularize_beta: ``beta``: per-step decay of non-participating weights for REGULARIZE.
        topk_ste_scale: Scale ``s`` of the straight-through gradient reaching non-participating weights.
        soft_movement_lambda: ``soft_movement`` (Sanh et al. 2020, arXiv:2005.07683): final weight ``lambda`` of the
            regulariser ``lambda * sum sigmoid(S)`` on the scores; it rises with the cubic schedule from 0.
        soft_movement_score_lr: ``soft_movement``: step size of the score updates (the movement gradients are
            normalised by their RMS over all layers, so this sets how fast scores saturate).
        seed: Seed of the update randomness; ``None`` uses the `SparsityConfig` seed.
        log_per_layer: Also log density / DOF / churn of every layer (otherwise only model-wide values).
        regrow_pruned: Prune-and-regrow algorithms: may a granule pruned at an update be re-allocated at that same
            update? ``None`` takes the algorithm's default: ``True`` for ``rigl`` (Evci et al. 2020,
            arXiv:1911.11134, Algorithm 1 grows among all weights outside the kept set), ``False`` for
            ``dynsparse`` / ``set`` (re-allocation only among weights inactive before the update).

    Example:
        >>> DynamicSparsityConfig(algorithm="dynsparse", num_updates=160, prune_ratio=0.5)
        >>> DynamicSparsityConfig(algorithm="rigl")  # update_interval=100, prune_ratio=0.3, end_fraction=0.75
    """

    config_name: ClassVar[str] = "dynamic_sparsity_config"

    algorithm: str = field(
        default="dynsparse",
        metadata={"help": "A registered algorithm: static, dynsparse, set, rigl, gmp, topk, movement, soft_movement, or your own."},
    )
    num_updates: Optional[int] = field(
        default=None, metadata={"help": "Number of pattern updates spread over training (n of Dietrich et al. 2021, arXiv:2108.06277)."}
    )
    update_interval: Optional[int] = field(
        default=None, metadata={"help": "Optimizer steps between pattern updates (RigL/SET Delta T)."}
    )
    prune_ratio: Optional[float] = field(
        default=None, metadata={"help": "Maximum fraction of active granules pruned and re-allocated per update."}
    )
    prune_schedule: str = field(
        default="cosine", metadata={"help": f"Pruning-ratio decay, one of {', '.join(PRUNE_SCHEDULES)}."}
    )
    start_fraction: float = field(default=0.0, metadata={"help": "No update before this fraction of training."})
    end_fraction: Optional[float] = field(
        default=None, metadata={"help": "No update after this fraction of training (decay horizon)."}
    )
    inactive: str = field(
        default="zero", metadata={"help": f"Inactive weights, one of {', '.join(INACTIVE_MODES)}."}
    )
    apply_sparse_lr: bool = field(
        default=False, metadata={"help": "Scale the learning rate with the sparse LR rule (Dietrich et al. 2021, arXiv:2108.06277 Eq. 3)."}
    )
    gmp_initial_density: float = field(default=1.0, metadata={"help": "Density GMP starts from (1.0 = dense)."})
    topk_exploitation: str = field(
        default="RESET", metadata={"help": f"top-k exploitation, one of {', '.join(TOPK_EXPLOITATIONS)}."}
    )
    topk_fix_fraction: float = field(default=0.5, metadata={"help": "top-k FIX: stop rewiring after this fraction."})
    topk_reset_interval: int = field(default=1000, metadata={"help": "top-k RESET: steps between resets (z)."})
    topk_regularize_beta: float = field(
        default=0.0002, metadata={"help": "top-k REGULARIZE: per-step decay of non-participating weights."}
    )
    topk_ste_scale: float = field(
        default=1.0, metadata={"help": "top-k: scale of the straight-through gradient of non-participating weights."}
    )
    soft_movement_lambda: float = field(
        default=1.0,
        metadata={"help": "soft_movement: final weight of the score regulariser lambda * sum sigmoid(S) (rises with the "
                  "cubic schedule)."},
    )
    soft_movement_score_lr: float = field(
        default=0.01, metadata={"help": "soft_movement: step size of the score updates (RMS-normalised gradients)."}
    )
    seed: Optional[int] = field(default=None, metadata={"help": "Update seed (None: the SparsityConfig seed)."})
    log_per_layer: bool = field(default=False, metadata={"help": "Log per-layer sparsity metrics too."})
    regrow_pruned: Optional[bool] = field(
        default=None,
        metadata={"help": "Let just-pruned granules be regrown at the same update (None: the algorithm's default).",
                  "algorithms": ("dynsparse", "set", "rigl")},
    )

    def __post_init__(self) -> None:
        algorithm_cls = ALGORITHM_REGISTRY.get(self.algorithm)
        _check_choice("prune_schedule", self.prune_schedule, PRUNE_SCHEDULES)
        _check_choice("inactive", self.inactive, INACTIVE_MODES)
        if isinstance(self.topk_exploitation, str):
            self.topk_exploitation = self.topk_exploitation.upper()
        _check_choice("topk_exploitation", self.topk_exploitation, TOPK_EXPLOITATIONS)
        if self.num_updates is not None and self.update_interval is not None:
            raise ValueError(
                f"Give num_updates={self.num_updates!r} or update_interval={self.update_interval!r}, not both."
            )
        defaults = algorithm_cls.defaults
        if self.num_updates is None and self.update_interval is None:
            self.num_updates = defaults.get("num_updates")
            self.update_interval = defaults.get("update_interval")
        if self.prune_ratio is None:
            self.prune_ratio = defaults.get("prune_ratio", 0.0)
        if self.end_fraction is None:
            self.end_fraction = defaults.get("end_fraction", 1.0)
        if self.regrow_pruned is None:
            self.regrow_pruned = bool(defaults.get("regrow_pruned", False))
        if not isinstance(self.regrow_pruned, bool):
            raise TypeError(f"regrow_pruned={self.regrow_pruned!r} must be a bool or None.")
        for name in ("num_updates", "update_interval", "topk_reset_interval"):
            value = getattr(self, name)
            if value is not None and not (_is_int(value) and value >= 1):
                raise ValueError(f"{name}={value!r} must be a positive integer.")
        if not (_is_number(self.prune_ratio) and 0.0 <= self.prune_ratio <= 1.0):
            raise ValueError(f"prune_ratio={self.prune_ratio!r} must be a number in [0, 1].")
        for name in ("start_fraction", "end_fraction", "topk_fix_fraction"):
            value = getattr(self, name)
            if not (_is_number(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name}={value!r} must be a number in [0, 1].")
        if self.start_fraction >= self.end_fraction and algorithm_cls.updates_masks:
            raise ValueError(
                f"start_fraction={self.start_fraction!r} must be smaller than end_fraction={self.end_fraction!r}."
            )
        if not (_is_number(self.gmp_initial_density) and 0.0 < self.gmp_initial_density <= 1.0):
            raise ValueError(f"gmp_initial_density={self.gmp_initial_density!r} must be in (0, 1].")
        if not (_is_number(self.topk_regularize_beta) and 0.0 <= self.topk_regularize_beta < 1.0):
            raise ValueError(f"topk_regularize_beta={self.topk_regularize_beta!r} must be in [0, 1).")
        if not (_is_number(self.topk_ste_scale) and self.topk_ste_scale >= 0.0):
            raise ValueError(f"topk_ste_scale={self.topk_ste_scale!r} must be a non-negative number.")
        for name in ("soft_movement_lambda", "soft_movement_score_lr"):
            value = getattr(self, name)
            if not (_is_number(value) and value >= 0.0):
                raise ValueError(f"{name}={value!r} must be a non-negative number.")
        if self.seed is not None and not _is_int(self.seed):
            raise TypeError(f"seed={self.seed!r} must be an integer or None.")
        algorithm_cls.check_config(self)
