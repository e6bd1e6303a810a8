"""Reparametrising regularizers (STR, spred) and folding them back to plain weights.

Both use ``torch.nn.utils.parametrize`` on the layer's ``weight``: the stored tensor becomes
``<layer>.parametrizations.weight.original`` (the *same* ``Parameter`` object, so an optimizer built before
keeps it) and the layer's ``weight`` attribute returns the effective weight, which sparse layers then mask.
The extra parameters are ``<layer>.parametrizations.weight.0.s`` (STR threshold) and
``<layer>.parametrizations.weight.0.u`` (spred factor). `fold_` replaces the parametrisation with a plain
``weight`` holding the effective value; `fold_state_dict` does the same on a saved state dict, so a
checkpoint written during training can be turned into one vanilla ``from_pretrained`` loads.
"""

from __future__ import annotations

import logging
from typing import Dict, Iterable, List, Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from .base import Regularizer, raw_weight, register_regularizer

logger = logging.getLogger(__name__)

_ORIGINAL = ".parametrizations.weight.original"


def _soft_threshold(w: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    return torch.sign(w) * torch.relu(w.abs() - threshold)


class SoftThreshold(nn.Module):
    """STR parametrisation ``S_g(w, s) = sign(w) * ReLU(|w| - g(s))`` with ``g = sigmoid`` and one learnable
    ``s`` per layer (Kusupati et al. 2020). Weights below the threshold are exactly zero and get no gradient.

    Args:
        s_init: Initial value of ``s`` (threshold ``sigmoid(s_init)``).
    """

    def __init__(self, s_init: float) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.tensor(float(s_init)))

    def threshold(self) -> torch.Tensor:
        """The current pruning threshold ``g(s)``."""
        return torch.sigmoid(self.s)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return _soft_threshold(w, self.threshold().to(w.dtype))

    @torch.no_grad()
    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        # Store |w| + g(s) so that the effective weight equals w when the parametrisation is installed
        # (zeros stay zero): installing STR does not change what a pretrained model computes.
        return torch.sign(w) * (w.abs() + self.threshold().to(w.dtype))


class Hadamard(nn.Module):
    """spred parametrisation ``W * U`` (Ziyin & Wang 2023); ``U`` is a learnable tensor shaped like ``W``.

    Args:
        weight: The current weight; ``U`` starts at ``sqrt(|weight|)`` (``sqrt(fill)`` where the weight is
            zero, so zero weights can still move) and ``right_inverse`` stores ``weight / U``: the balanced
            ``|W| = |U|`` start of spred, with the effective weight unchanged.
        fill: Magnitude used for ``U`` where the weight is zero.
    """

    def __init__(self, weight: torch.Tensor, fill: float) -> None:
        super().__init__()
        mag = weight.detach().float().abs()
        u = torch.where(mag > 0, mag, torch.full_like(mag, float(fill))).sqrt()
        self.u = nn.Parameter(u.to(weight.dtype))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.u

    @torch.no_grad()
    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        return torch.where(self.u != 0, w / self.u, torch.zeros_like(w))


class _Reparametrization(Regularizer):
    """Shared install / decay logic of STR and spred: both decay the stored weight and their own parameter."""

    parametrization_class: type = nn.Module

    def _make(self, module: nn.Module) -> nn.Module:
        raise NotImplementedError

    def _validate(self, name: str, module: nn.Module) -> None:
        if parametrize.is_parametrized(module, "weight"):
            plist = module.parametrizations.weight
            if len(plist) != 1 or not isinstance(plist[0], self.parametrization_class):
                kinds = [type(p).__name__ for p in plist]
                raise ValueError(f"{name}: its weight is already reparametrised by {kinds}; cannot add {self.name}.")

    def prepare_(self, model: nn.Module) -> List[str]:
        """Reparametrises every target layer (idempotent); call before the optimizer is built.

        Returns:
            Names of the layers newly reparametrised.
        """
        changed = []
        for name, module in self.targets(model).items():
            if not parametrize.is_parametrized(module, "weight"):
                parametrize.register_parametrization(module, "weight", self._make(module))
                changed.append(name)
        if changed:
            logger.info("%s reparametrised %d layers of %s.", self.name, len(changed), type(model).__name__)
        return changed

    def _own_parameter(self, module: nn.Module) -> nn.Parameter:
        if not parametrize.is_parametrized(module, "weight"):
            raise RuntimeError(f"{self.name} needs prepare_(model) before training: a target layer is not reparametrised.")
        return next(module.parametrizations.weight[0].parameters())

    def parameters(self, model: nn.Module) -> Iterable[nn.Parameter]:
        return [self._own_parameter(m) for m in self.targets(model).values()]

    def _decay_(self, name: str, module: nn.Module, scale: float) -> int:
        # Table 1 of seed paper 003: ordinary decoupled weight decay on the stored tensors (for STR this also
        # pulls s towards 0, raising the threshold sigmoid(s): the sparsifying pressure of STR).
        raw_weight(module).mul_(1.0 - scale)
        self._own_parameter(module).mul_(1.0 - scale)
        return 2


@register_regularizer
class STR(_Reparametrization):
    """Soft-threshold reparametrisation with a learnable threshold per layer, trained with decoupled weight decay.

    Example:
        >>> reg = STR(strength=1e-4, s_init=-10.0)
        >>> reg.prepare_(model)          # before creating the optimizer
    """

    name = "str"
    parametrization_class = SoftThreshold

    def _make(self, module: nn.Module) -> nn.Module:
        return SoftThreshold(self.config.s_init).to(raw_weight(module).device)


@register_regularizer
class Spred(_Reparametrization):
    """spred: effective weight ``W * U``, trained with ordinary decoupled weight decay on ``W`` and ``U``.

    With both factors decayed, the minimum of ``kappa * (||W||^2 + ||U||^2)`` at fixed product is
    ``2 * kappa * ||W * U||_1``: an L1 penalty on the effective weight reached by plain weight decay.

    Example:
        >>> reg = Spred(strength=0.1)
        >>> reg.prepare_(model)
    """

    name = "spred"
    parametrization_class = Hadamard

    def _make(self, module: nn.Module) -> nn.Module:
        return Hadamard(raw_weight(module), fill=self.config.w_std)


def fold_(model: nn.Module) -> List[str]:
    """Replaces every STR / spred parametrisation with a plain ``weight`` holding the effective value, in place.

    The stored ``Parameter`` object is kept (an optimizer that holds it stays valid); sparse layers keep their
    masks. The model computes exactly what it computed before.

    Args:
        model: A model prepared by `STR` or `Spred`.

    Returns:
        Names of the folded layers.

    Example:
        >>> fold_(model); model.save_pretrained(out_dir)
    """
    folded = []
    for name, module in list(model.named_modules()):
        if parametrize.is_parametrized(module, "weight") and all(
            isinstance(p, (SoftThreshold, Hadamard)) for p in module.parametrizations.weight
        ):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            folded.append(name)
    return folded


@torch.no_grad()
def fold_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Folds STR / spred entries of a saved state dict into plain ``<layer>.weight`` tensors.

    ``<layer>.parametrizations.weight.original`` with ``...weight.0.s`` becomes the soft-thresholded weight,
    with ``...weight.0.u`` the product ``W * U``; other keys are copied unchanged. Masks are not applied here:
    inactive weights of sparse layers are stored as zeros and fold to zero.

    Args:
        state_dict: Tensors by name (for example read with ``safetensors.torch.load_file``).

    Returns:
        A new dict with plain weights.
    """
    out: Dict[str, torch.Tensor] = {}
    consumed = set()
    for key, value in state_dict.items():
        if not key.endswith(_ORIGINAL):
            continue
        layer = key[: -len(_ORIGINAL)]
        s_key, u_key = f"{layer}.parametrizations.weight.0.s", f"{layer}.parametrizations.weight.0.u"
        if s_key in state_dict:
            threshold = torch.sigmoid(state_dict[s_key].float())
            out[f"{layer}.weight"] = _soft_threshold(value.float(), threshold).to(value.dtype)
            consumed.update((key, s_key))
        elif u_key in state_dict:
            out[f"{layer}.weight"] = (value.float() * state_dict[u_key].float()).to(value.dtype)
            consumed.update((key, u_key))
        else:
            raise ValueError(f"{key}: no STR threshold ({s_key}) or spred factor ({u_key}) in the state dict.")
    for key, value in state_dict.items():
        if key not in consumed:
            out[key] = value
    return out
