"""`SparseIFTConfig`: Sparse Iso-FLOP Transformations (Sparse-IFT paper)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, List, Optional, Union

from .base import ConfigMixin, _check_choice
from .sparsity import BLOCK_NORMS, STRUCTURES, SparsityConfig

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
