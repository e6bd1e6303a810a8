"""Shared machinery of the sparsifying regularizers: registry, target layers, strength schedule, effective weights.

A regularizer acts on the *target layers* of a model: the sparse layers of a sparsified model, or the
``target_modules`` of its `RegularizerConfig` resolved like `SparsityConfig.target_modules`. Two kinds exist
(Singh et al. 2024, Algorithm 1 and Table 1):

- *coupled* ones contribute a ``penalty(model)`` that is added to the loss, so their gradient goes through the
  (adaptive) optimizer (L1);
- *decoupled* ones change the weights directly with ``apply_(model, lr)``, called right after
  ``optimizer.step()`` with the learning rate that step used, outside the optimizer state (weight decay,
  Group Lasso, pWD, DRT, and the decay of the STR / spred reparametrisations).
"""

from __future__ import annotations

import contextlib
import logging
from typing import ClassVar, Dict, Iterable, List, Optional, Type

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..config import RegularizerConfig, SparsityConfig
from ..config.registry import REGULARIZER_REGISTRY
from ..layers import SPARSE_CLASSES, SparseMixin, is_sparse_module
from ..patching import sparse_modules
from ..targets import _matches, find_target_modules

logger = logging.getLogger(__name__)

#: Regularizer classes by name (a live, read-only view of `hf_sparse.config.REGULARIZER_REGISTRY`).
REGISTRY = REGULARIZER_REGISTRY


def register_regularizer(cls: Type["Regularizer"]) -> Type["Regularizer"]:
    """Registers a `Regularizer` subclass under ``cls.name`` (use as a class decorator).

    Once registered, the name is accepted by `RegularizerConfig(name=...)`, `build_regularizer` and the recipes'
    ``--regularizer.name``.

    Example:
        >>> @hf_sparse.register_regularizer
        ... class Lp(hf_sparse.regularizers.Regularizer):
        ...     name = "lp"
        ...     coupled = True
        ...     def penalty(self, model, step=None): ...
        >>> reg = hf_sparse.build_regularizer(name="lp", strength=1e-5)
    """
    if not (isinstance(cls, type) and issubclass(cls, Regularizer)):
        raise TypeError(f"register_regularizer takes a Regularizer subclass, got {cls!r}.")
    return REGULARIZER_REGISTRY.register(cls)


def build_regularizer(config: Optional[RegularizerConfig] = None, **kwargs) -> "Regularizer":
    """Instantiates the registered regularizer a config names.

    Args:
        config: A `RegularizerConfig`; or leave it ``None`` and pass its fields as keyword arguments.

    Returns:
        The regularizer.

    Example:
        >>> reg = build_regularizer(name="group_lasso", strength=1e-3)
    """
    if config is None:
        config = RegularizerConfig(**kwargs)
    elif kwargs:
        raise TypeError(f"Pass either a config or keyword fields, not both (got {sorted(kwargs)}).")
    if not isinstance(config, RegularizerConfig):
        raise TypeError(f"config must be a RegularizerConfig, got {type(config).__name__}.")
    return REGULARIZER_REGISTRY.get(config.name)(config)


def raw_weight(module: nn.Module) -> torch.Tensor:
    """The stored weight parameter of a layer: the parametrisation's ``original`` when reparametrised."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight the matmul uses: the reparametrised value, masked for sparse layers (autograd-connected).

    Example:
        >>> with torch.no_grad():
        ...     w = effective_weight(layer)
    """
    w = module.weight  # the parametrisation output when reparametrised
    if is_sparse_module(module):
        return torch.where(module.weight_mask, w, 0.0)
    return w


def resolve_targets(model: nn.Module, config: RegularizerConfig) -> Dict[str, nn.Module]:
    """The layers a regularizer acts on, by qualified name.

    With ``config.target_modules=None`` a sparsified model's sparse layers are used; otherwise (or for a dense
    model) the names are resolved exactly like `SparsityConfig.target_modules` (model-type defaults for
    ``None``). ``exclude_modules`` is removed in both cases.

    Args:
        model: The model.
        config: The regularizer config.

    Returns:
        Target modules by name, in module order.
    """
    sparse = sparse_modules(model)
    if config.target_modules is None and sparse:
        found: Dict[str, nn.Module] = dict(sparse)
        if config.exclude_modules is not None:
            found = {n: m for n, m in found.items() if not _matches(n, config.exclude_modules)}
        if not found:
            raise ValueError(f"No sparse modules of {type(model).__name__} left after exclude_modules.")
        return found
    spec = SparsityConfig(sparsity=0.0, target_modules=config.target_modules, exclude_modules=config.exclude_modules)
    with _plain_classes(model):
        return find_target_modules(model, spec)


@contextlib.contextmanager
def _plain_classes(model: nn.Module):
    """Temporarily gives reparametrised and sparse layers their plain ``nn.Linear`` / ``Conv1D`` class.

    ``find_target_modules`` accepts only modules whose exact type is ``nn.Linear`` / ``Conv1D``, while
    ``torch.nn.utils.parametrize`` swaps a layer's class for a generated subclass (``ParametrizedLinear``) and
    sparsified layers are ``SparseLinear`` / ``SparseConv1D``. Name resolution only walks the module tree (no
    forward, no weights), so the plain class is safe for its duration; the classes are restored in ``finally``.
    """
    swapped = []
    for module in model.modules():
        cls = type(module)
        plain = cls.__bases__[0] if parametrize.is_parametrized(module) else cls
        if issubclass(plain, SparseMixin):
            plain = next(c for c in plain.__mro__ if c in SPARSE_CLASSES)
        if plain is not cls:
            swapped.append((module, cls))
            module.__class__ = plain
    try:
        yield
    finally:
        for module, cls in swapped:
            module.__class__ = cls


class Regularizer:
    """Base class of the sparsifying regularizers.

    Subclasses set ``name`` (registry key) and ``coupled``, and override `penalty` (coupled) or
    `_decay_` (decoupled). Targets are resolved once per model and remembered by name, so wrapping layers in a
    parametrisation later does not change what the regularizer acts on.

    Args:
        config: The `RegularizerConfig` (its ``name`` must match the class).

    Example:
        >>> reg = build_regularizer(name="weight_decay", strength=0.01)
        >>> loss.backward(); optimizer.step(); reg.apply_(model, lr=scheduler.get_last_lr()[0]); optimizer.zero_grad()
    """

    name: ClassVar[str] = ""
    #: ``True``: the regularizer is a loss penalty (`penalty`); ``False``: a direct weight update (`apply_`).
    coupled: ClassVar[bool] = False

    def __init__(self, config: Optional[RegularizerConfig] = None, **kwargs) -> None:
        if config is None:
            config = RegularizerConfig(name=self.name, **kwargs)
        elif kwargs:
            raise TypeError(f"Pass either a config or keyword fields, not both (got {sorted(kwargs)}).")
        if config.name != self.name:
            raise ValueError(f"{type(self).__name__} needs a config with name={self.name!r}, got {config.name!r}.")
        self.config = config
        self._target_names: Dict[int, List[str]] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(strength={self.config.strength:g})"

    # ---- schedule -----------------------------------------------------------------------------------------
    def strength_at(self, step: Optional[int] = None) -> float:
        """The coefficient lambda at optimizer step ``step`` (full strength when ``step`` is ``None``)."""
        cfg = self.config
        if step is None:
            return cfg.strength
        if step < cfg.start_step or (cfg.end_step is not None and step >= cfg.end_step):
            return 0.0
        if cfg.warmup_steps > 0:
            return cfg.strength * min(1.0, (step - cfg.start_step + 1) / cfg.warmup_steps)
        return cfg.strength

    # ---- targets ------------------------------------------------------------------------------------------
    def targets(self, model: nn.Module) -> Dict[str, nn.Module]:
        """The target layers of ``model`` by name (resolved on first use, then remembered)."""
        names = self._target_names.get(id(model))
        if names is None:
            found = resolve_targets(model, self.config)
            for name, module in found.items():  # validate every layer before anything is changed
                self._validate(name, module)
            names = list(found)
            self._target_names[id(model)] = names
        return {n: model.get_submodule(n) for n in names}

    def reset_targets(self, model: Optional[nn.Module] = None) -> None:
        """Forgets remembered targets (of ``model``, or of all models), e.g. after re-patching a model."""
        if model is None:
            self._target_names.clear()
        else:
            self._target_names.pop(id(model), None)

    def _validate(self, name: str, module: nn.Module) -> None:
        """Raises ``ValueError`` naming ``name`` when the regularizer cannot act on ``module`` (default: any)."""

    # ---- hooks --------------------------------------------------------------------------------------------
    def prepare_(self, model: nn.Module) -> List[str]:
        """Installs what the regularizer needs on ``model`` (reparametrisations); call before building the optimizer.

        Returns:
            Names of the layers changed (empty for regularizers that need nothing).
        """
        self.targets(model)
        return []

    def penalty(self, model: nn.Module, step: Optional[int] = None) -> torch.Tensor:
        """The loss term of a coupled regularizer (a zero scalar for decoupled ones).

        Args:
            model: The model (forward graph connected, so the penalty's gradient reaches the weights).
            step: Optimizer step for the strength schedule (``None``: full strength).

        Returns:
            A scalar tensor to add to the loss.
        """
        param = next(iter(self.targets(model).values())).weight
        return param.new_zeros((), dtype=torch.float32)

    @torch.no_grad()
    def apply_(self, model: nn.Module, lr: float, step: Optional[int] = None) -> int:
        """Applies a decoupled update to the target weights, in place (no-op for coupled regularizers).

        Call right after ``optimizer.step()``, before ``zero_grad()``, with the learning rate that step used.

        Args:
            model: The model.
            lr: The scheduler's current learning rate eta(t).
            step: Optimizer step for the strength schedule (``None``: full strength).

        Returns:
            The number of tensors updated.
        """
        if self.coupled:
            return 0
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr < 0:
            raise ValueError(f"lr={lr!r} must be a non-negative number.")
        scale = float(lr) * self.strength_at(step)
        if scale == 0.0:
            return 0
        count = 0
        for name, module in self.targets(model).items():
            count += self._decay_(name, module, scale)
        return count

    def _decay_(self, name: str, module: nn.Module, scale: float) -> int:
        """Updates one layer given ``scale = lr * lambda``; returns the number of tensors changed.

        Hook for decoupled regularizers; coupled ones (whose penalty goes through the loss) never call it.
        """
        raise NotImplementedError(f"{type(self).__name__} is not a decoupled regularizer (no _decay_ step).")

    def parameters(self, model: nn.Module) -> Iterable[nn.Parameter]:
        """Extra trainable parameters the regularizer added to ``model`` (STR thresholds, spred factors)."""
        return iter(())


def shrink_(tensor: torch.Tensor, factor: torch.Tensor) -> None:
    """``tensor *= factor`` computed in float32 (bf16 / fp16 weights keep their dtype)."""
    if tensor.dtype == torch.float32:
        tensor.mul_(factor)
    else:
        tensor.copy_(tensor.float() * factor)
