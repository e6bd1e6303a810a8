"""`SparsityConfig`: what to sparsify and how."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, List, Optional, Union

from .base import ConfigMixin, _check_choice

STRUCTURES = ("unstructured", "block", "nm", "nm_transposable")
BLOCK_NORMS = ("l1", "l2", "linf")
DISTRIBUTIONS = ("uniform", "erk")
INITS = ("keep", "truncated_normal")
MASK_INITS = ("auto", "random", "magnitude")
#: Kernel backends `hf_sparse.kernels.enable_` can switch sparse layers to (``None``: the masked PyTorch path).
KERNEL_BACKENDS = ("triton", "semi_structured")
#: Block sizes the Triton block-sparse kernels compile for (kept equal to the kernels' own list by a test).
TRITON_BLOCK_SIZES = (16, 32, 64)


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
        kernel_backend: ``None`` (default: the masked PyTorch path), ``"triton"`` (block-sparse Triton kernels
            for ``structure="block"`` with ``block_size`` 16 / 32 / 64, CUDA) or ``"semi_structured"`` (2:4
            sparse tensor cores, CUDA compute capability >= 8.0, layers that cannot use them log why and keep the
            masked path). `SparsityCallback` / `SparseTrainer` enable it at train start, once the model is on its
            device; ``hf_sparse.kernels.enable_(model)`` enables it by hand. Loading a checkpoint never does.

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
    kernel_backend: Optional[str] = field(
        default=None,
        metadata={"help": "Kernels used in training: None (masked PyTorch path), 'triton' (block structure, "
                          "block_size 16/32/64, CUDA) or 'semi_structured' (2:4, CUDA compute capability >= 8.0)."},
    )

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
        self._check_kernel_backend()

    def _check_kernel_backend(self) -> None:
        if self.kernel_backend is None:
            return
        if self.kernel_backend not in KERNEL_BACKENDS:
            raise ValueError(f"kernel_backend={self.kernel_backend!r} is not supported; choose None or one of "
                             f"{', '.join(map(repr, KERNEL_BACKENDS))}.")
        if self.kernel_backend == "triton" and (
            self.structure != "block" or self.block_size not in TRITON_BLOCK_SIZES
        ):
            raise ValueError(
                f"kernel_backend='triton' needs structure='block' with block_size in {TRITON_BLOCK_SIZES}, got "
                f"structure={self.structure!r}, block_size={self.block_size!r}; use kernel_backend=None otherwise."
            )
        if self.kernel_backend == "semi_structured" and (
            self.structure not in ("nm", "nm_transposable") or (self.n, self.m) != (2, 4)
        ):
            desc = f"{self.structure!r}" + (f" {self.n}:{self.m}" if self.structure.startswith("nm") else "")
            raise ValueError(
                f"kernel_backend='semi_structured' needs 2:4 structure (structure='nm' or 'nm_transposable' with "
                f"n=2, m=4), got structure={desc}; use kernel_backend=None otherwise."
            )

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
