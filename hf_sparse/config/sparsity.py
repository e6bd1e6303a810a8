"""`SparsityConfig`: what to sparsify and how."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Union

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
        sparsity_pattern: Per-module sparsity overrides, ``{regex: sparsity}`` (peft's ``rank_pattern``
            convention): each regex is matched in full against the module name, the first matching entry wins,
            and every entry must match at least one target module. Other modules keep ``sparsity`` (uniform) or
            share what the pinned modules leave of the overall budget (``"erk"``, see `layer_densities`). For N:M
            structures a module's ``1 - sparsity`` must be a multiple of ``1/m`` (it then gets ``N' : M``). A JSON
            object string (command line) or ordered ``[[regex, sparsity], ...]`` pairs (how JSON files store it,
            since their keys are sorted) are accepted too.
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
    sparsity_pattern: Optional[Dict[str, float]] = field(
        default=None,
        metadata={"help": "Per-module sparsity {regex: sparsity} (JSON on the command line); regexes match module "
                          "names in full, the first match wins."},
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
        self._check_sparsity_pattern()
        self._check_kernel_backend()

    def _check_sparsity_pattern(self) -> None:
        pattern = self.sparsity_pattern
        if pattern is None:
            return
        if isinstance(pattern, str):  # the command line passes a JSON object
            try:
                pattern = json.loads(pattern)
            except json.JSONDecodeError as err:
                raise ValueError(f"sparsity_pattern={self.sparsity_pattern!r} is not a JSON object: {err}.") from err
        if isinstance(pattern, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pattern):
            pattern = dict(pattern)  # the ordered [[regex, sparsity], ...] form `to_dict` writes
        if not isinstance(pattern, dict) or not pattern:
            raise TypeError(f"sparsity_pattern={pattern!r} must be None or a non-empty dict {{regex: sparsity}}.")
        checked: Dict[str, float] = {}
        for regex, value in pattern.items():
            if not isinstance(regex, str) or not regex:
                raise TypeError(f"sparsity_pattern key {regex!r} must be a non-empty regex string.")
            try:
                re.compile(regex)
            except re.error as err:
                raise ValueError(f"sparsity_pattern key {regex!r} is not a valid regex: {err}.") from err
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"sparsity_pattern[{regex!r}]={value!r} must be a sparsity in [0, 1).")
            value = float(value)
            if self.structure in ("nm", "nm_transposable"):
                n = (1.0 - value) * self.m
                if abs(n - round(n)) > 1e-6 or not 1 <= round(n) < self.m:
                    valid = ", ".join(f"{1 - k / self.m:g}" for k in range(1, self.m))
                    raise ValueError(
                        f"sparsity_pattern[{regex!r}]={value!r} is not an N:{self.m} sparsity; with "
                        f"structure={self.structure!r} and m={self.m} choose one of {valid}."
                    )
                if self.kernel_backend == "semi_structured" and round(n) != self.n:
                    raise ValueError(
                        f"sparsity_pattern[{regex!r}]={value!r} gives {round(n)}:{self.m}, but "
                        f"kernel_backend='semi_structured' runs 2:4 only; use kernel_backend=None."
                    )
            checked[regex] = value
        self.sparsity_pattern = checked

    def to_dict(self) -> Dict[str, Any]:
        """As `ConfigMixin.to_dict`, with ``sparsity_pattern`` as ordered ``[[regex, sparsity], ...]`` pairs: JSON
        files are written with sorted keys, and the first matching entry wins, so the order must survive."""
        out = super().to_dict()
        if self.sparsity_pattern is not None:
            out["sparsity_pattern"] = [[regex, value] for regex, value in self.sparsity_pattern.items()]
        return out

    def pattern_sparsity(self, name: str) -> Optional[float]:
        r"""The sparsity `sparsity_pattern` pins for module ``name``, or ``None`` when no entry matches.

        Entries are tried in order; the first whose regex matches the whole name wins.

        Example:
            >>> cfg = SparsityConfig(sparsity=0.9, sparsity_pattern={r".*\.query": 0.5})
            >>> cfg.pattern_sparsity("bert.encoder.layer.0.attention.self.query")
            0.5
        """
        for regex, value in (self.sparsity_pattern or {}).items():
            if re.fullmatch(regex, name):
                return value
        return None

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
