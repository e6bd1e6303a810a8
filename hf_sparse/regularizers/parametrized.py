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

import json
import logging
import os
import shutil
from typing import Dict, Iterable, List, Mapping, Optional, Union

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
        """Hook: the parametrization module installed on ``module.weight`` (STR and spred each define it)."""
        raise NotImplementedError(f"{type(self).__name__} must define the parametrization it installs.")

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
        # Decoupled weight decay on the stored tensors: Table 1 of Singh et al. 2024 gives it for spred; for STR
        # it is this package's reading of the unspecified pSTR (see `STR`). For STR it also pulls s towards 0,
        # raising the threshold sigmoid(s) from a negative start: the sparsifying pressure of STR.
        raw_weight(module).mul_(1.0 - scale)
        self._own_parameter(module).mul_(1.0 - scale)
        return 2


@register_regularizer
class STR(_Reparametrization):
    """Soft-threshold reparametrisation with a learnable threshold per layer, trained with decoupled weight decay.

    What the paper gives: the Cerebras upper-bounds paper (Singh et al. 2024, Table 1) lists STR (Kusupati et al.
    2020, arXiv:2002.03231) with the parametrisation ``S_g(W, s)``, no pre-regulariser and the update
    ``pSTR(W_t - eta * dW_t, W_t)``; its App. B defines only the projection
    ``S_g(w, s) = sign(w) * ReLU(|w| - g(s))`` and never spells out ``pSTR``.

    What this code does: the forward pass uses ``S_g`` with ``g = sigmoid`` and one scalar ``s`` per layer; the
    optimizer moves the stored ``W`` and ``s`` along their gradients through ``S_g`` (weights below the threshold
    get none); then `apply_` decays both, decoupled as in AdamW, so one step with a plain gradient step is

        ``W <- (W - eta * dL/dW) * (1 - eta * lambda)``,  ``s <- (s - eta * dL/ds) * (1 - eta * lambda)``.

    This follows how Kusupati et al. 2020 train STR (ordinary weight decay on ``W`` and ``s``; from a negative
    ``s_init`` the decay of ``s`` raises the threshold ``sigmoid(s)`` over training). It is our reading of
    ``pSTR``, not a form the paper states; no proximal step is derived.

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


def folded_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The model's state dict with STR / spred folded into plain weights, without changing the model.

    Example:
        >>> model.save_pretrained(out_dir, state_dict=folded_state_dict(model))
    """
    return fold_state_dict(model.state_dict())


SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"


def fold_checkpoint(
    directory: Union[str, os.PathLike], output_dir: Optional[Union[str, os.PathLike]] = None
) -> List[str]:
    """Folds the STR / spred weights of a saved checkpoint so vanilla ``from_pretrained`` loads it.

    Reads ``model.safetensors`` (or the shards listed in ``model.safetensors.index.json``), folds every
    reparametrised layer (see `fold_state_dict`), and writes the result to ``output_dir`` (default: in place),
    keeping every other file. Everything is read and folded before anything is written, and only safetensors
    are read.

    Args:
        directory: A checkpoint written by ``save_pretrained`` of a reparametrised model.
        output_dir: Where to write the folded checkpoint (copied from ``directory`` first when different).

    Returns:
        Names of the folded layers.

    Example:
        >>> fold_checkpoint("run/checkpoint-1000", "run/folded")
        >>> AutoModel.from_pretrained("run/folded")
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    src = os.fspath(directory)
    index_path = os.path.join(src, SAFE_INDEX)
    if os.path.isfile(index_path):
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
        shard_of = dict(index["weight_map"])
    elif os.path.isfile(os.path.join(src, SAFE_WEIGHTS)):
        index, shard_of = None, None
    else:
        raise FileNotFoundError(f"No {SAFE_WEIGHTS} or {SAFE_INDEX} in {src!r}.")
    files = sorted(set(shard_of.values())) if shard_of else [SAFE_WEIGHTS]
    state: Dict[str, torch.Tensor] = {}
    metadata: Dict[str, Optional[Dict[str, str]]] = {}
    for name in files:
        with safe_open(os.path.join(src, name), framework="pt") as f:
            metadata[name] = f.metadata()
            for key in f.keys():
                state[key] = f.get_tensor(key)
    folded = fold_state_dict(state)
    layers = sorted(k[: -len(_ORIGINAL)] for k in state if k.endswith(_ORIGINAL))
    if shard_of is None:
        shard_of = {k: SAFE_WEIGHTS for k in state}
    new_shard_of = {}
    for key in folded:
        origin = key if key in shard_of else key[: -len(".weight")] + _ORIGINAL
        new_shard_of[key] = shard_of[origin]

    dst = os.fspath(output_dir) if output_dir is not None else src
    if os.path.abspath(dst) != os.path.abspath(src):
        shutil.copytree(src, dst, dirs_exist_ok=True)
    for name in files:
        part = {k: v.contiguous() for k, v in folded.items() if new_shard_of[k] == name}
        save_file(part, os.path.join(dst, name), metadata=metadata[name] or {"format": "pt"})
    if index is not None:
        index = dict(index, weight_map=dict(sorted(new_shard_of.items())))
        with open(os.path.join(dst, SAFE_INDEX), "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2)
    logger.info("Folded %d reparametrised layers of %s into %s.", len(layers), src, dst)
    return layers
