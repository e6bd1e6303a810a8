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
    target_modules: Optional[Union[List[str], str]] = field(
        default=None,
        metadata={"help": "None (model-type defaults), 'all-linear', a regex, or a list of names/suffixes."},
    )
    exclude_modules: Optional[Union[List[str], str]] = field(
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


IFT_KINDS = ("wide", "parallel", "factorized", "doped")
IFT_NONLINEARITIES = ("auto", "identity", "relu", "gelu", "gelu_new", "gelu_pytorch_tanh", "silu", "tanh", "layernorm")


def parallel_branches(sparsity: float, tol: float = 1e-3) -> int:
    """Number of Sparse Parallel branches ``k = 1 / (1 - s)``; raises when ``k`` is not an integer.

    ``k`` may be off an integer by a relative ``tol`` (so ``s = 0.6667`` means three branches). The error
    names the nearest sparsities that give an integer ``k``.

    Example:
        >>> parallel_branches(0.75)
        4
    """
    k = 1.0 / (1.0 - sparsity)
    if abs(k - round(k)) > tol * k:
        lo, hi = max(int(k), 1), int(k) + 1
        raise ValueError(
            f"kind='parallel' needs k = 1/(1-s) to be an integer, but sparsity={sparsity!r} gives k={k:.4g}; "
            f"the nearest valid sparsities are {1 - 1 / lo:.4g} (k={lo}) and {1 - 1 / hi:.4g} (k={hi})."
        )
    return int(round(k))


@dataclass
class SparseIFTConfig(ConfigMixin):
    """A Sparse Iso-FLOP Transformation (Sparse-IFT paper, Sec. 2.4): every targeted dense layer is replaced
    by a transformation with the same FLOPs, parameterised by the sparsity ``s`` alone.

    Args:
        kind: ``"wide"`` (hidden and intermediate sizes widened by ``k = sqrt(1/(1-s))``, every targeted layer
            ``s``-sparse; the result is a standard architecture), ``"parallel"`` (``k = 1/(1-s)`` parallel
            ``s``-sparse branches, each followed by the non-linearity, summed; ``k`` must be an integer),
            ``"factorized"`` (``V sigma(U x)`` with ``s``-sparse ``U``, ``V`` and inner size
            ``d = D_in D_out / ((D_in + D_out)(1 - s))``) or ``"doped"`` (dense low-rank ``V U x`` of rank
            ``d = s D_in D_out / (D_in + D_out)`` plus ``sigma(W x)`` with an ``s``-sparse full-size ``W``).
        sparsity: The sparsity ``s`` in ``[0, 1)`` of every sparse matrix of the transformation.
        nonlinearity: ``sigma`` of parallel / factorized / doped (ignored by wide). ``"auto"`` (default) uses the
            model's own feed-forward activation (GELU for BERT and GPT-2): element-wise, so it works on fused
            q/k/v projections, and a function the architecture already trains well with. ``"identity"``
            recovers a linear layer; ``"layernorm"`` adds a LayerNorm per branch (the paper's Fig. 2 lists
            BatchNorm / ReLU / LayerNorm).
        structure, block_size, block_norm, n, m: Mask structure of the sparse matrices, as in
            `SparsityConfig`. N:M structures fix the density to ``n/m``, so ``sparsity`` must equal ``1 - n/m``.
        init_std: Standard deviation of the normal initialisation of new matrices; ``None`` uses the model
            config's ``initializer_range`` (what transformers uses for Linear layers).
        target_modules: ``None`` for the same defaults as `sparsify_` (every Linear / Conv1D of the
            transformer blocks; embeddings and heads stay dense), a regex, or a list of names / suffixes.
        exclude_modules: Regex or list of names / suffixes removed from the targets.
        seed: Seed of every random choice (masks, initial weights).

    The sparse matrices are ordinary hf_sparse sparse layers, so every dynamic-sparsity algorithm trains them;
    the paper trains all members with RigL and its default hyperparameters (recommended).

    Example:
        >>> cfg = SparseIFTConfig(kind="parallel", sparsity=0.5)   # two 50%-sparse branches per layer
    """

    config_name: ClassVar[str] = "sparse_ift_config"

    kind: str = field(default="wide", metadata={"help": f"Transformation, one of {', '.join(IFT_KINDS)}."})
    sparsity: Optional[float] = field(
        default=0.5, metadata={"help": "Sparsity s of every sparse matrix (None for N:M: 1 - n/m)."}
    )
    nonlinearity: str = field(
        default="auto",
        metadata={"help": f"Non-linearity sigma, one of {', '.join(IFT_NONLINEARITIES)} ('auto': model's own)."},
    )
    structure: str = field(
        default="unstructured", metadata={"help": f"Mask structure, one of {', '.join(STRUCTURES)}."}
    )
    block_size: int = field(default=16, metadata={"help": "Block side for structure='block'."})
    block_norm: str = field(default="l1", metadata={"help": f"Block score norm, one of {', '.join(BLOCK_NORMS)}."})
    n: int = field(default=2, metadata={"help": "N of N:M (active weights per group)."})
    m: int = field(default=4, metadata={"help": "M of N:M (group size along the input dimension)."})
    init_std: Optional[float] = field(
        default=None, metadata={"help": "Std of new weights (None: the model config's initializer_range)."}
    )
    target_modules: Optional[Union[List[str], str]] = field(
        default=None,
        metadata={"help": "None (model-type defaults), 'all-linear', a regex, or a list of names/suffixes."},
    )
    exclude_modules: Optional[Union[List[str], str]] = field(
        default=None, metadata={"help": "Regex or list of names/suffixes excluded from the targets."}
    )
    seed: int = field(default=0, metadata={"help": "Seed for every random choice."})

    def __post_init__(self) -> None:
        _check_choice("kind", self.kind, IFT_KINDS)
        _check_choice("nonlinearity", self.nonlinearity, IFT_NONLINEARITIES)
        if self.init_std is not None and not (
            isinstance(self.init_std, (int, float)) and not isinstance(self.init_std, bool) and self.init_std > 0
        ):
            raise ValueError(f"init_std={self.init_std!r} must be None or a positive number.")
        # The structure / sparsity / target fields follow exactly SparsityConfig's rules: validate through it.
        sparsity_cfg = self.sparsity_config()
        self.sparsity = sparsity_cfg.sparsity
        self.target_modules = sparsity_cfg.target_modules
        self.exclude_modules = sparsity_cfg.exclude_modules
        if self.kind == "parallel":
            parallel_branches(self.sparsity)

    def sparsity_config(self, **overrides: Any) -> SparsityConfig:
        """The `SparsityConfig` with this transformation's sparsity, structure, targets and seed.

        Args:
            overrides: Fields to replace (e.g. ``target_modules`` or ``mask_init``).

        Returns:
            A validated `SparsityConfig` (uniform distribution, as in the paper).
        """
        fields = dict(
            sparsity=self.sparsity, structure=self.structure, block_size=self.block_size,
            block_norm=self.block_norm, n=self.n, m=self.m, target_modules=self.target_modules,
            exclude_modules=self.exclude_modules, seed=self.seed,
        )
        fields.update(overrides)
        return SparsityConfig(**fields)

    @property
    def density(self) -> float:
        """Fraction of active weights of each sparse matrix, ``1 - sparsity``."""
        return 1.0 - self.sparsity


REGULARIZERS = ("group_lasso", "l1", "pwd", "weight_decay", "str", "spred", "drt")


@dataclass
class RegularizerConfig(ConfigMixin):
    """A sparsifying regularizer and its strength schedule (see `hf_sparse.regularizers`).

    Args:
        name: Which regularizer: ``"group_lasso"`` (decoupled, DynSparse Eq. 2), ``"l1"`` (coupled penalty),
            ``"pwd"`` (decoupled p-norm weight decay), ``"weight_decay"`` (ordinary decoupled weight decay),
            ``"str"`` (soft-threshold reparametrisation), ``"spred"`` (``W * U`` reparametrisation with weight
            decay) or ``"drt"`` (deep-relative-trust shrinkage ``||W||_F / ||g||_F``).
        strength: The regularisation coefficient lambda (``0`` disables the regularizer).
        p: Exponent of ``"pwd"``, in ``(0, 2]``; ``p=2`` is ordinary weight decay.
        eps: Small constant in denominators (Group Lasso block norm, DRT gradient norm).
        w_std: Group Lasso pre-factor: the standard deviation of the weights at initialisation.
        block_size: Group Lasso block side; ``None`` uses each sparse layer's block structure (1 otherwise).
        proximal: ``None`` for the paper's form of each method; ``True`` uses the proximal (implicit) step
            (Group Lasso: block soft-thresholding that cannot flip signs; pWD: ``w / (1 + lr*lambda*|w|^(p-2))``),
            ``False`` the explicit step (Group Lasso Eq. 2 as written; pWD ``w - lr*lambda*|w|^(p-2)*w``).
        s_init: STR: initial value of the per-layer threshold parameter ``s``; the threshold is ``sigmoid(s)``.
        start_step: Optimizer step at which the regularizer starts acting.
        warmup_steps: The strength ramps linearly from 0 to ``strength`` over this many steps after ``start_step``.
        end_step: Optimizer step from which the regularizer stops acting (``None``: never).
        target_modules: ``None`` (the sparse layers of a sparsified model, else the model-type defaults),
            ``"all-linear"``, a regex or a list of module names / suffixes, as in `SparsityConfig`.
        exclude_modules: Regex or list of names / suffixes removed from the targets.

    Example:
        >>> cfg = RegularizerConfig(name="group_lasso", strength=1e-3)
    """

    config_name: ClassVar[str] = "regularizer_config"

    name: str = field(default="weight_decay", metadata={"help": f"Regularizer, one of {', '.join(REGULARIZERS)}."})
    strength: float = field(default=0.0, metadata={"help": "Regularisation coefficient lambda (>= 0)."})
    p: float = field(default=1.0, metadata={"help": "Exponent of the p-norm weight decay, in (0, 2]."})
    eps: float = field(default=1e-6, metadata={"help": "Stability constant of the Group Lasso / DRT denominators."})
    w_std: float = field(default=0.02, metadata={"help": "Group Lasso pre-factor: init std of the weights."})
    block_size: Optional[int] = field(
        default=None, metadata={"help": "Group Lasso block side (None: the layer's sparsity structure, else 1)."}
    )
    proximal: Optional[bool] = field(
        default=None, metadata={"help": "Proximal (True) or explicit (False) step; None: the paper's form."}
    )
    s_init: float = field(default=-10.0, metadata={"help": "STR: initial threshold parameter s (threshold sigmoid(s))."})
    start_step: int = field(default=0, metadata={"help": "Optimizer step at which the regularizer starts."})
    warmup_steps: int = field(default=0, metadata={"help": "Linear ramp of the strength over this many steps."})
    end_step: Optional[int] = field(default=None, metadata={"help": "Step from which it stops (None: never)."})
    target_modules: Optional[Union[List[str], str]] = field(
        default=None, metadata={"help": "None (sparse layers / model-type defaults), 'all-linear', a regex or names."}
    )
    exclude_modules: Optional[Union[List[str], str]] = field(
        default=None, metadata={"help": "Regex or list of names/suffixes excluded from the targets."}
    )

    def __post_init__(self) -> None:
        _check_choice("name", self.name, REGULARIZERS)
        for key in ("strength", "p", "eps", "w_std", "s_init"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise TypeError(f"{key} must be a number, got {value!r}.")
            setattr(self, key, float(value))
        if self.strength < 0:
            raise ValueError(f"strength={self.strength!r} must be >= 0.")
        if not 0.0 < self.p <= 2.0:
            raise ValueError(f"p={self.p!r} must be in (0, 2].")
        if self.eps <= 0:
            raise ValueError(f"eps={self.eps!r} must be > 0.")
        if self.w_std <= 0:
            raise ValueError(f"w_std={self.w_std!r} must be > 0.")
        if self.block_size is not None and (
            isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1
        ):
            raise ValueError(f"block_size={self.block_size!r} must be None or a positive integer.")
        if self.proximal is not None and not isinstance(self.proximal, bool):
            raise TypeError(f"proximal={self.proximal!r} must be None, True or False.")
        for key in ("start_step", "warmup_steps"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{key}={value!r} must be a non-negative integer.")
        if self.end_step is not None and (
            isinstance(self.end_step, bool) or not isinstance(self.end_step, int) or self.end_step <= self.start_step
        ):
            raise ValueError(f"end_step={self.end_step!r} must be None or an integer > start_step={self.start_step}.")
        for key in ("target_modules", "exclude_modules"):
            value = getattr(self, key)
            if isinstance(value, tuple):
                value = list(value)
                setattr(self, key, value)
            if value is not None and not isinstance(value, str):
                if not (isinstance(value, list) and value and all(isinstance(v, str) and v for v in value)):
                    raise TypeError(f"{key}={value!r} must be None, a string, or a non-empty list of names.")
