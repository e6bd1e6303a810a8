"""User-facing configuration dataclasses.

Every config is a dataclass whose fields carry their help text in ``metadata["help"]`` (so
``HfArgumentParser`` can turn them into command-line options), is validated in ``__post_init__`` with
errors that repeat the bad value, and round-trips through JSON with the library version stamped in.
Keys written by a newer hf_sparse that this version does not know are dropped with a warning, so an old
install can still read a newer checkpoint's settings.

This module imports nothing from the rest of the package (it is the bottom layer).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Union

from .version import __version__

logger = logging.getLogger(__name__)

STRUCTURES = ("unstructured", "block", "nm", "nm_transposable")
BLOCK_NORMS = ("l1", "l2", "linf")
DISTRIBUTIONS = ("uniform", "erk")
INITS = ("keep", "truncated_normal")
MASK_INITS = ("auto", "random", "magnitude")


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {', '.join(map(repr, choices))}.")


class ConfigMixin:
    """JSON round trip, version stamp and forward-compatible loading shared by all hf_sparse configs."""

    config_name: ClassVar[str] = "config"

    def to_dict(self) -> Dict[str, Any]:
        """Returns the config as a plain, JSON-serialisable dict stamped with the hf_sparse version."""
        out = dataclasses.asdict(self)
        out["hf_sparse_version"] = __version__
        return out

    def to_json_string(self) -> str:
        """Returns the config as a pretty-printed JSON string."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: Union[str, os.PathLike]) -> None:
        """Writes the config to ``path`` as JSON."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())

    @classmethod
    def from_dict(cls, data: Dict[str, Any]):
        """Builds a config from a dict, dropping (with a warning) keys this version does not know.

        Args:
            data: A dict as written by `to_dict`, possibly by another hf_sparse version.

        Returns:
            A validated instance of the config class.

        Example:
            >>> cfg = SparsityConfig.from_dict({"sparsity": 0.9, "hf_sparse_version": "0.1.0"})
        """
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}.from_dict expects a dict, got {type(data).__name__}.")
        known = {f.name for f in dataclasses.fields(cls)}
        data = dict(data)
        written_by = data.pop("hf_sparse_version", None)
        unknown = sorted(set(data) - known)
        if unknown:
            logger.warning(
                "Dropping unknown %s keys %s (written by hf_sparse %s, this is %s).",
                cls.__name__, unknown, written_by, __version__,
            )
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json_string(cls, text: str):
        """Builds a config from a JSON string (see `from_dict`)."""
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_json_file(cls, path: Union[str, os.PathLike]):
        """Builds a config from a JSON file (see `from_dict`)."""
        with open(path, encoding="utf-8") as f:
            return cls.from_json_string(f.read())


@dataclass
class SparsityConfig(ConfigMixin):
    """What to sparsify and how: the target sparsity, the mask structure and the initial pattern.

    Args:
        sparsity: Fraction of weights that are zero in each targeted layer (on average for ``"erk"``).
            For N:M structures it may be left ``None`` and is then ``1 - n/m``.
        structure: ``"unstructured"``, ``"block"`` (``block_size`` x ``block_size`` blocks), ``"nm"``
            (N of every M consecutive input weights) or ``"nm_transposable"`` (N per row and per column of
            every M x M tile, so the transpose is N:M too).
        block_size: Side of the square blocks for ``structure="block"``.
        block_norm: Norm that scores a block: ``"l1"`` (the best in the DynSparse paper), ``"l2"``, ``"linf"``.
        n, m: The N:M ratio for ``"nm"`` and ``"nm_transposable"`` (default 2:4).
        distribution: ``"uniform"`` (same density everywhere) or ``"erk"`` (Erdos-Renyi-Kernel scaling).
        init: ``"keep"`` the current weights, or ``"truncated_normal"`` re-initialises the targeted weights
            with ``init_std`` (truncated at two standard deviations) for pre-training from scratch.
        init_std: Standard deviation for ``init="truncated_normal"``.
        mask_init: ``"random"`` pattern, ``"magnitude"`` (keep the largest weights), or ``"auto"``: random
            when the weights are re-initialised, magnitude when they are kept.
        target_modules: ``None`` for the defaults of the model type, ``"all-linear"``, a regex matched against
            the full module name, or a list of module names / name suffixes.
        exclude_modules: Regex or list of names / suffixes removed from the targets.
        seed: Seed of every random choice (initial pattern, re-initialisation).

    Example:
        >>> cfg = SparsityConfig(sparsity=0.9, structure="block", block_size=16)
    """

    config_name: ClassVar[str] = "sparsity_config"

    sparsity: Optional[float] = field(
        default=0.9, metadata={"help": "Fraction of zero weights per targeted layer (None for N:M: 1 - n/m)."}
    )
    structure: str = field(
        default="unstructured", metadata={"help": f"Mask structure, one of {', '.join(STRUCTURES)}."}
    )
    block_size: int = field(default=16, metadata={"help": "Block side for structure='block'."})
    block_norm: str = field(default="l1", metadata={"help": f"Block score norm, one of {', '.join(BLOCK_NORMS)}."})
    n: int = field(default=2, metadata={"help": "N of N:M (active weights per group)."})
    m: int = field(default=4, metadata={"help": "M of N:M (group size along the input dimension)."})
    distribution: str = field(
        default="uniform", metadata={"help": f"Per-layer density distribution, one of {', '.join(DISTRIBUTIONS)}."}
    )
    init: str = field(default="keep", metadata={"help": f"Weight initialisation, one of {', '.join(INITS)}."})
    init_std: float = field(default=0.02, metadata={"help": "Std of the truncated normal initialisation."})
    mask_init: str = field(
        default="auto", metadata={"help": f"Initial pattern, one of {', '.join(MASK_INITS)}."}
    )
    target_modules: Optional[Union[str, List[str]]] = field(
        default=None,
        metadata={"help": "None (model-type defaults), 'all-linear', a regex, or a list of names/suffixes."},
    )
    exclude_modules: Optional[Union[str, List[str]]] = field(
        default=None, metadata={"help": "Regex or list of names/suffixes excluded from the targets."}
    )
    seed: int = field(default=0, metadata={"help": "Seed for every random choice."})

    def __post_init__(self) -> None:
        _check_choice("structure", self.structure, STRUCTURES)
        _check_choice("block_norm", self.block_norm, BLOCK_NORMS)
        _check_choice("distribution", self.distribution, DISTRIBUTIONS)
        _check_choice("init", self.init, INITS)
        _check_choice("mask_init", self.mask_init, MASK_INITS)
        if self.structure in ("nm", "nm_transposable"):
            if not (isinstance(self.n, int) and isinstance(self.m, int) and 0 < self.n < self.m):
                raise ValueError(f"N:M needs integers 0 < n < m, got n={self.n!r}, m={self.m!r}.")
            implied = 1.0 - self.n / self.m
            if self.sparsity is None:
                self.sparsity = implied
            elif abs(float(self.sparsity) - implied) > 1e-6:
                raise ValueError(
                    f"sparsity={self.sparsity!r} contradicts {self.n}:{self.m} structure, which has sparsity "
                    f"{implied:g}; leave sparsity=None or set it to {implied:g}."
                )
            if self.distribution != "uniform":
                raise ValueError(
                    f"distribution={self.distribution!r} cannot be used with structure={self.structure!r}: "
                    "N:M fixes the density of every layer; use distribution='uniform'."
                )
        if self.sparsity is None:
            raise ValueError(f"sparsity=None is only allowed for N:M structures, not structure={self.structure!r}.")
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)):
            raise TypeError(f"sparsity must be a number, got {self.sparsity!r}.")
        self.sparsity = float(self.sparsity)
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity={self.sparsity!r} must be in [0, 1).")
        if self.structure == "block" and (
            isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1
        ):
            raise ValueError(f"block_size={self.block_size!r} must be a positive integer.")
        if not (isinstance(self.init_std, (int, float)) and self.init_std > 0):
            raise ValueError(f"init_std={self.init_std!r} must be a positive number.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed={self.seed!r} must be an integer.")
        for name in ("target_modules", "exclude_modules"):
            value = getattr(self, name)
            if isinstance(value, tuple):
                value = list(value)
                setattr(self, name, value)
            if value is not None and not isinstance(value, str):
                if not (isinstance(value, list) and all(isinstance(v, str) and v for v in value) and value):
                    raise TypeError(f"{name}={value!r} must be None, a string, or a non-empty list of names.")

    @property
    def density(self) -> float:
        """Fraction of active weights, ``1 - sparsity``."""
        return 1.0 - self.sparsity

    @property
    def resolved_mask_init(self) -> str:
        """The initial pattern actually used: ``"auto"`` resolved against ``init``."""
        if self.mask_init != "auto":
            return self.mask_init
        return "random" if self.init == "truncated_normal" else "magnitude"


ALGORITHMS = ("static", "dynsparse", "set", "rigl", "gmp", "topk")
PRUNE_SCHEDULES = ("cosine", "linear", "constant")
INACTIVE_MODES = ("zero", "frozen")
TOPK_EXPLOITATIONS = ("FIX", "RESET", "REGULARIZE")

# Literature defaults filled in for fields left ``None``: DynSparse (seed paper 000, App. A.1: n=160, pr=0.5,
# cosine decay over the whole run), SET / RigL (drop fraction 0.3, every 100 steps, cosine decay ending at 75% of
# training, Sparse-IFT App. B.2), GMP (Zhu & Gupta cubic schedule ending at 75%), top-k (seed paper 002).
ALGORITHM_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "static": {"prune_ratio": 0.0, "end_fraction": 1.0},
    "dynsparse": {"num_updates": 160, "prune_ratio": 0.5, "end_fraction": 1.0},
    "set": {"update_interval": 100, "prune_ratio": 0.3, "end_fraction": 0.75},
    "rigl": {"update_interval": 100, "prune_ratio": 0.3, "end_fraction": 0.75},
    "gmp": {"update_interval": 100, "prune_ratio": 0.0, "end_fraction": 0.75},
    "topk": {"update_interval": 100, "prune_ratio": 0.0, "end_fraction": 1.0},
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class DynamicSparsityConfig(ConfigMixin):
    """How the sparsity pattern evolves during training: the algorithm, its cadence and its options.

    Every schedule is counted in optimizer steps. Fields left ``None`` take the chosen algorithm's literature
    default (``ALGORITHM_DEFAULTS``), resolved on construction so the saved JSON records what actually ran.

    Args:
        algorithm: ``"static"`` (the initial pattern never changes), ``"dynsparse"`` (magnitude / block-norm
            pruning with random re-allocation, seed paper 000), ``"set"`` (same, SET defaults), ``"rigl"``
            (re-allocation by dense-gradient magnitude), ``"gmp"`` (gradual magnitude pruning, cubic schedule) or
            ``"topk"`` (top-d magnitude rewiring with straight-through gradients, seed paper 002).
        num_updates: Number of pattern updates ``n`` spread over the run (one every ``total_steps / n`` steps).
        update_interval: Optimizer steps between updates (``Delta T``). Give this or ``num_updates``, not both.
        prune_ratio: Maximum fraction of active granules pruned (and re-allocated) at an update.
        prune_schedule: Decay of the pruning ratio over time: ``"cosine"``, ``"linear"`` or ``"constant"``.
        start_fraction: No update before this fraction of training (GMP starts pruning here).
        end_fraction: No update after this fraction of training; the pruning ratio decays to zero there.
        inactive: ``"zero"`` (inactive weights are exactly zero) or ``"frozen"`` (inactive weights keep their
            values but are never updated; re-allocated weights resume from their kept value).
        apply_sparse_lr: Scale the learning rate by the sparse learning-rate rule (seed paper 000, Eq. 3).
        gmp_initial_density: Density GMP starts from (1.0 = dense).
        topk_exploitation: ``"FIX"`` (stop rewiring after ``topk_fix_fraction`` and zero non-participating
            weights), ``"RESET"`` (zero them every ``topk_reset_interval`` steps) or ``"REGULARIZE"`` (decay them
            by ``topk_regularize_beta`` every step).
        topk_fix_fraction: ``v`` of seed paper 002: fraction of training after which FIX stops rewiring.
        topk_reset_interval: ``z``: steps between RESETs.
        topk_regularize_beta: ``beta``: per-step decay of non-participating weights for REGULARIZE.
        topk_ste_scale: Scale ``s`` of the straight-through gradient reaching non-participating weights.
        seed: Seed of the update randomness; ``None`` uses the `SparsityConfig` seed.
        log_per_layer: Also log density / DOF / churn of every layer (otherwise only model-wide values).

    Example:
        >>> DynamicSparsityConfig(algorithm="dynsparse", num_updates=160, prune_ratio=0.5)
        >>> DynamicSparsityConfig(algorithm="rigl")  # update_interval=100, prune_ratio=0.3, end_fraction=0.75
    """

    config_name: ClassVar[str] = "dynamic_sparsity_config"

    algorithm: str = field(default="dynsparse", metadata={"help": f"One of {', '.join(ALGORITHMS)}."})
    num_updates: Optional[int] = field(
        default=None, metadata={"help": "Number of pattern updates spread over training (seed 000's n)."}
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
        default=False, metadata={"help": "Scale the learning rate with the sparse LR rule (seed 000 Eq. 3)."}
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
    seed: Optional[int] = field(default=None, metadata={"help": "Update seed (None: the SparsityConfig seed)."})
    log_per_layer: bool = field(default=False, metadata={"help": "Log per-layer sparsity metrics too."})

    def __post_init__(self) -> None:
        _check_choice("algorithm", self.algorithm, ALGORITHMS)
        _check_choice("prune_schedule", self.prune_schedule, PRUNE_SCHEDULES)
        _check_choice("inactive", self.inactive, INACTIVE_MODES)
        if isinstance(self.topk_exploitation, str):
            self.topk_exploitation = self.topk_exploitation.upper()
        _check_choice("topk_exploitation", self.topk_exploitation, TOPK_EXPLOITATIONS)
        if self.num_updates is not None and self.update_interval is not None:
            raise ValueError(
                f"Give num_updates={self.num_updates!r} or update_interval={self.update_interval!r}, not both."
            )
        defaults = ALGORITHM_DEFAULTS[self.algorithm]
        if self.num_updates is None and self.update_interval is None:
            self.num_updates = defaults.get("num_updates")
            self.update_interval = defaults.get("update_interval")
        if self.prune_ratio is None:
            self.prune_ratio = defaults["prune_ratio"]
        if self.end_fraction is None:
            self.end_fraction = defaults["end_fraction"]
        for name in ("num_updates", "update_interval", "topk_reset_interval"):
            value = getattr(self, name)
            if value is not None and not (_is_int(value) and value >= 1):
                raise ValueError(f"{name}={value!r} must be a positive integer.")
        if not (_is_number(self.prune_ratio) and 0.0 <= self.prune_ratio <= 1.0):
            raise ValueError(f"prune_ratio={self.prune_ratio!r} must be a number in [0, 1].")
        if self.algorithm in ("dynsparse", "set", "rigl") and self.prune_ratio == 0.0:
            raise ValueError(
                f"prune_ratio={self.prune_ratio!r} makes algorithm={self.algorithm!r} static; "
                "use algorithm='static' or a positive prune_ratio."
            )
        for name in ("start_fraction", "end_fraction", "topk_fix_fraction"):
            value = getattr(self, name)
            if not (_is_number(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name}={value!r} must be a number in [0, 1].")
        if self.start_fraction >= self.end_fraction and self.algorithm != "static":
            raise ValueError(
                f"start_fraction={self.start_fraction!r} must be smaller than end_fraction={self.end_fraction!r}."
            )
        if not (_is_number(self.gmp_initial_density) and 0.0 < self.gmp_initial_density <= 1.0):
            raise ValueError(f"gmp_initial_density={self.gmp_initial_density!r} must be in (0, 1].")
        if not (_is_number(self.topk_regularize_beta) and 0.0 <= self.topk_regularize_beta < 1.0):
            raise ValueError(f"topk_regularize_beta={self.topk_regularize_beta!r} must be in [0, 1).")
        if not (_is_number(self.topk_ste_scale) and self.topk_ste_scale >= 0.0):
            raise ValueError(f"topk_ste_scale={self.topk_ste_scale!r} must be a non-negative number.")
        if self.algorithm == "topk" and self.inactive != "zero":
            raise ValueError(
                f"inactive={self.inactive!r} cannot be used with algorithm='topk': its non-participating weights "
                "keep training through the straight-through estimator; use inactive='zero'."
            )
        if self.seed is not None and not _is_int(self.seed):
            raise TypeError(f"seed={self.seed!r} must be an integer or None.")
