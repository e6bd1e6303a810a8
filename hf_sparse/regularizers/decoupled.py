"""Decoupled regularizers: direct weight updates applied right after ``optimizer.step()``.

"Decoupled" (Loshchilov & Hutter) means the regulariser never enters the gradient, so an adaptive optimizer's
moments never see it: the update is ``W <- W - lr * lambda * dR/dW`` (or its proximal form), with ``lr`` the
learning rate of the optimizer step that just happened. Every update here is an element-wise *multiplicative*
shrink ``W <- W * c(W)``, so inactive (exactly zero) weights of sparse layers stay exactly zero.
"""

from __future__ import annotations

import math
from typing import Dict

import torch
from torch import nn

from .base import Regularizer, effective_weight, raw_weight, register_regularizer, shrink_


@register_regularizer
class WeightDecay(Regularizer):
    """Ordinary decoupled weight decay ``W <- W - lr * lambda * W`` on the target layers only.

    Example:
        >>> reg = WeightDecay(strength=0.01)
    """

    name = "weight_decay"

    def _decay_(self, name: str, module: nn.Module, scale: float) -> int:
        raw_weight(module).mul_(1.0 - scale)
        return 1


@register_regularizer
class GroupLasso(Regularizer):
    """Decoupled Group Lasso over the blocks of each layer (DynSparse paper, Eq. 2).

    ``W_ij <- W_ij - lr * lambda * w_std * sqrt(B) * W_ij / sqrt(sum_{block of ij} W^2 + eps)``.

    The blocks are the layer's mask blocks (``structure.block_size``) unless ``config.block_size`` is set;
    unstructured and N:M layers use single weights (then it is a decoupled L1 scaled by ``w_std``).
    ``B`` is the block size as the paper defines it, the side of a ``B x B`` block (its Algorithm 1 input and
    "block size B = 16" for 16x16 blocks). Note: the paper motivates ``w_std * sqrt(B)`` as making Group Lasso
    and weight decay coefficients comparable; at init a block's norm is ``w_std * B``, so the step is
    ``lr * lambda * W / sqrt(B)``, within a factor ``sqrt(B)`` of weight decay. ``eps`` keeps all-zero
    (inactive) blocks at exactly zero instead of 0/0.
    ``proximal=True`` clamps the shrink factor at 0 (block soft-thresholding: a block can reach zero but
    never flip sign); the default follows Eq. 2 as written.

    Example:
        >>> reg = GroupLasso(strength=1e-3)          # blocks from the sparse layers' structure
        >>> reg = GroupLasso(strength=1e-3, block_size=16)
    """

    name = "group_lasso"

    def block_side(self, name: str, module: nn.Module) -> int:
        """The block side used for ``module`` (validated to divide its weight)."""
        b = self.config.block_size
        if b is None:
            structure = getattr(module, "structure", None)
            b = structure.block_size if structure is not None and structure.kind == "block" else 1
        shape = tuple(raw_weight(module).shape)
        if len(shape) != 2 or shape[0] % b or shape[1] % b:
            raise ValueError(f"{name}: group lasso block_size={b} does not divide its weight of shape {shape}.")
        return b

    def _validate(self, name: str, module: nn.Module) -> None:
        self.block_side(name, module)

    def _decay_(self, name: str, module: nn.Module, scale: float) -> int:
        w = raw_weight(module)
        b = self.block_side(name, module)
        rows, cols = w.shape
        blocks = w.float().reshape(rows // b, b, cols // b, b)
        norms = blocks.square().sum(dim=(1, 3), keepdim=True).add_(self.config.eps).sqrt_()
        factor = 1.0 - (scale * self.config.w_std * math.sqrt(b)) / norms
        if self.config.proximal:
            factor.clamp_(min=0.0)
        w.copy_((blocks * factor).reshape(rows, cols))
        return 1


@register_regularizer
class PNormWeightDecay(Regularizer):
    """Decoupled p-norm weight decay, pWD (Outmezguine & Levi 2024; Singh et al. 2024, App. B), for p in (0, 2].

    The L_p penalty is written with auxiliary variables, ``R_p(w, s) = lambda/p * sum(s*w^2 + K(s))`` with
    ``K(s) = (2-p)/p * s^(p/(p-2))``; minimising over ``s`` gives ``s = |w|^(p-2)`` (set dR/ds = 0:
    ``w^2 = s^(2/(p-2))``), and with ``s`` fixed the penalty is a per-weight weight decay of coefficient
    ``lambda * s``. The proximal step of that quadratic is ``w <- w / (1 + lr * lambda * |w|^(p-2))`` (the
    default: stable for p < 1, where the explicit step diverges near zero); ``proximal=False`` gives the
    explicit step ``w <- w - lr * lambda * |w|^(p-2) * w``. At ``p = 2``, ``s = 1``: the explicit step is
    exactly decoupled weight decay and the proximal one its implicit form ``w / (1 + lr*lambda)``. ``s`` is
    taken at the weights as they are after the optimizer step. Zero weights stay zero.

    Example:
        >>> reg = PNormWeightDecay(strength=0.1, p=0.5)
    """

    name = "pwd"

    def __init__(self, config=None, **kwargs) -> None:
        super().__init__(config, **kwargs)
        if self.config.proximal is False and self.config.p < 1.0:
            # The explicit step moves w by lr*lambda*|w|^(p-1), unbounded as w -> 0 when p < 1.
            raise ValueError(
                f"pwd with proximal=False needs p >= 1 (got p={self.config.p!r}): the explicit step diverges "
                "near zero for p < 1; use the proximal step (proximal=None or True)."
            )

    def _decay_(self, name: str, module: nn.Module, scale: float) -> int:
        w = raw_weight(module)
        wf = w.float()
        p = self.config.p
        # |w|^(p-2) is +inf at w == 0 for p < 2; both forms below map those weights to exactly 0.
        s = wf.abs().pow(p - 2.0)
        if self.config.proximal is False:
            factor = torch.where(wf == 0, 0.0, 1.0 - scale * s)
        else:
            factor = 1.0 / (1.0 + scale * s)
        shrink_(w, factor)
        return 1


@register_regularizer
class DeepRelativeTrust(Regularizer):
    """DRT: shrinks each layer along the gradient of its deep-relative-trust ratio ``R(W) = ||W||_F / ||g||_F``.

    Bernstein et al.'s Fromage rule trusts an update in proportion to ``||W|| / ||g||`` per layer; Singh et al.
    2024 (App. B) turn the ratio into a regulariser that penalises magnitude growth. Its decoupled step, with
    the gradient ``g`` held fixed, is ``W <- W - lr * lambda * dR/dW = W * (1 - lr * lambda / (||W||_F ||g||_F))``
    (factor clamped at 0). ``g`` is the layer's current ``.grad`` (call `apply_` after ``optimizer.step()`` and
    before ``zero_grad()``, which is where the Trainer callback runs); layers without a gradient are skipped.

    Example:
        >>> reg = DeepRelativeTrust(strength=1e-4)
    """

    name = "drt"

    def _decay_(self, name: str, module: nn.Module, scale: float) -> int:
        w = raw_weight(module)
        if w.grad is None:
            return 0
        denom = w.float().norm() * w.grad.float().norm() + self.config.eps
        factor = (1.0 - scale / denom).clamp(min=0.0)
        shrink_(w, factor)
        return 1


@torch.no_grad()
def drt_ratio(modules: Dict[str, nn.Module], eps: float = 1e-12) -> Dict[str, torch.Tensor]:
    """Per-layer deep-relative-trust ratio ``||W_eff||_F / ||g||_F`` (a 0-dim tensor each, no host sync).

    Args:
        modules: Layers by name (for example ``reg.targets(model)`` or `sparse_modules(model)`).
        eps: Added to the gradient norm so a zero gradient gives a large finite ratio.

    Returns:
        The ratio per layer that has a gradient.
    """
    out = {}
    for name, module in modules.items():
        grad = raw_weight(module).grad
        if grad is not None:
            out[name] = effective_weight(module).float().norm() / (grad.float().norm() + eps)
    return out

