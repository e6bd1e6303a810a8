"""`RegularizerConfig`: sparsifying regularizers and their strength schedule."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, List, Optional, Union

from .base import ConfigMixin
from .registry import REGULARIZER_REGISTRY



def __getattr__(name: str):
    # Old name, kept readable: the regularizer names now come from the registry.
    if name == "REGULARIZERS":
        return REGULARIZER_REGISTRY.names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class RegularizerConfig(ConfigMixin):
    """A sparsifying regularizer and its strength schedule (see `hf_sparse.regularizers`).

    Args:
        name: A registered regularizer (`hf_sparse.register_regularizer`); built in: ``"group_lasso"`` (decoupled, DynSparse Eq. 2), ``"l1"`` (coupled penalty),
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

    name: str = field(
        default="weight_decay",
        metadata={"help": "A registered regularizer: group_lasso, l1, pwd, weight_decay, str, spred, drt, or your own."},
    )
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
        REGULARIZER_REGISTRY.get(self.name)  # unknown names fail here, listing the registered ones
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
