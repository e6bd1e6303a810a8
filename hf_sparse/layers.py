"""Sparse drop-in replacements for ``nn.Linear`` and GPT-2's ``Conv1D``.

The sparse classes subclass the dense ones, keep the parameter names ``weight`` and ``bias`` (the very same
``Parameter`` objects after patching) and add one boolean buffer, ``weight_mask``, in the weight's own
layout. The buffer is non-persistent: ``state_dict()`` is exactly the dense model's, so vanilla
``save_pretrained`` / ``from_pretrained`` keep working; masks travel in hf_sparse's own files.

The forward pass uses ``where(mask, weight, 0)``: the output equals the dense layer holding the same zeros,
and autograd sends exactly zero gradient to inactive weights (always-sparse semantics). With
``straight_through=True`` the forward is the same but the gradient reaches every weight (dense gradient of the
effective weight), which some algorithms (top-k with STE, SR-STE) need; it is a per-layer switch, no
re-patching required.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from .structure import MaskStructure

#: How inactive weights behave in the forward pass (see `SparseMixin.inactive_mode`).
INACTIVE_MODES = ("zero", "frozen")


class SparseMixin:
    """State and helpers shared by `SparseLinear` and `SparseConv1D`.

    Attributes:
        weight_mask: Boolean buffer, ``True`` = active, shaped like ``weight``.
        structure: The `MaskStructure` the mask obeys.
        target_density: The density this layer is meant to hold.
        straight_through: When ``True``, gradients reach inactive weights too.
        inactive_mode: ``"zero"`` (inactive weights count as zero) or ``"frozen"`` (they take part in the
            forward pass with their stored values but get no gradient: the "untrained" inactive weights of
            DynSparse, Dietrich et al. 2021, arXiv:2108.06277 Sec. 1.2). Set by `SparsityController` from
            ``DynamicSparsityConfig.inactive``; use `set_inactive_mode_` to change it.
    """

    #: Index of the input (reduction) dimension of ``weight``.
    input_dim: int = 1
    weight: nn.Parameter
    weight_mask: torch.Tensor

    def _init_sparse(self, mask: torch.Tensor, structure: MaskStructure, target_density: float) -> None:
        if mask.shape != self.weight.shape or mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be a bool tensor of shape {tuple(self.weight.shape)}, "
                f"got {mask.dtype} {tuple(mask.shape)}."
            )
        self.register_buffer("weight_mask", mask.to(self.weight.device), persistent=False)
        self.structure = structure
        self.target_density = float(target_density)
        self.straight_through = False
        self.inactive_mode = "zero"

    def masked_weight(self) -> torch.Tensor:
        """The effective weight the matmul uses.

        With ``inactive_mode="zero"`` inactive entries are exactly zero. With ``"frozen"`` they keep their
        (frozen) values in the forward pass but are detached, so they receive exactly zero gradient.
        """
        if self.inactive_mode == "frozen":
            if self.straight_through:  # the forward value is the whole weight; the gradient reaches every entry
                return self.weight
            return torch.where(self.weight_mask, self.weight, self.weight.detach())
        effective = torch.where(self.weight_mask, self.weight, 0.0)
        if self.straight_through:
            # Forward value of the masked weight, gradient of the identity: a dense gradient for every weight.
            return self.weight + (effective - self.weight).detach()
        return effective

    def set_inactive_mode_(self, mode: str) -> None:
        """Sets ``inactive_mode`` (``"zero"`` or ``"frozen"``); weights are not touched.

        Example:
            >>> layer.set_inactive_mode_("frozen")
        """
        if mode not in INACTIVE_MODES:
            raise ValueError(f"inactive_mode={mode!r} must be one of {INACTIVE_MODES}.")
        self.inactive_mode = mode

    @torch.no_grad()
    def set_mask_(self, mask: torch.Tensor, zero_inactive: bool = True) -> torch.Tensor:
        """Replaces the mask in place (same buffer object) and optionally zeroes the newly inactive weights.

        Args:
            mask: Boolean tensor shaped like ``weight``.
            zero_inactive: Zero the weights that are inactive under the new mask.

        Returns:
            The layer's mask buffer.
        """
        if mask.shape != self.weight_mask.shape or mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be a bool tensor of shape {tuple(self.weight_mask.shape)}, "
                f"got {mask.dtype} {tuple(mask.shape)}."
            )
        self.weight_mask.copy_(mask)
        if zero_inactive:
            self.weight.masked_fill_(~self.weight_mask, 0)
        return self.weight_mask

    @property
    def density(self) -> float:
        """Actual fraction of active weights."""
        active = self.weight_mask.sum()
        if hasattr(active, "full_tensor"):  # an FSDP2-sharded mask (DTensor): sum over every process's shard
            active = active.full_tensor()
        return float(active) / self.weight_mask.numel()

    def extra_repr(self) -> str:  # noqa: D401 - nn.Module hook
        base = super().extra_repr() if not isinstance(self, Conv1D) else f"nf={self.nf}, nx={self.nx}"
        st = ", straight_through=True" if self.straight_through else ""
        st += ", inactive_mode=frozen" if self.inactive_mode == "frozen" else ""
        return f"{base}, structure={self.structure.describe()}, density={self.density:.4f}{st}"


class SparseLinear(SparseMixin, nn.Linear):
    """An ``nn.Linear`` whose weight ``[out, in]`` is multiplied by a boolean mask.

    Example:
        >>> dense = nn.Linear(8, 4)
        >>> layer = SparseLinear.from_dense(dense, torch.ones(4, 8, dtype=torch.bool))
        >>> layer.weight is dense.weight
        True
    """

    input_dim = 1

    @classmethod
    def from_dense(
        cls,
        module: nn.Linear,
        mask: torch.Tensor,
        structure: Optional[MaskStructure] = None,
        target_density: Optional[float] = None,
    ) -> "SparseLinear":
        """Wraps ``module``'s own ``weight`` / ``bias`` parameters (no copy) with ``mask``.

        Args:
            module: The dense layer.
            mask: Boolean mask shaped like ``module.weight``.
            structure: Structure the mask obeys (unstructured by default).
            target_density: Intended density (the mask's own density by default).

        Returns:
            The sparse layer, sharing parameters with ``module``.
        """
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = module.in_features, module.out_features
        new.weight = module.weight
        new.bias = module.bias
        new.training = module.training
        new._init_sparse(mask, structure or MaskStructure(), _density_or(mask, target_density))
        return new

    def to_dense(self) -> nn.Linear:
        """A plain ``nn.Linear`` sharing this layer's parameters (weights kept, zeros stay zero)."""
        new = nn.Linear.__new__(nn.Linear)
        nn.Module.__init__(new)
        new.in_features, new.out_features = self.in_features, self.out_features
        new.weight, new.bias, new.training = self.weight, self.bias, self.training
        return new

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, self.masked_weight(), self.bias)


class SparseConv1D(SparseMixin, Conv1D):
    """GPT-2's ``Conv1D`` (weight stored ``[in, out]``) with a boolean mask; N:M groups run along dim 0."""

    input_dim = 0

    @classmethod
    def from_dense(
        cls,
        module: Conv1D,
        mask: torch.Tensor,
        structure: Optional[MaskStructure] = None,
        target_density: Optional[float] = None,
    ) -> "SparseConv1D":
        """Wraps ``module``'s own parameters (no copy) with ``mask``; see `SparseLinear.from_dense`."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.nf, new.nx = module.nf, module.nx
        new.weight, new.bias, new.training = module.weight, module.bias, module.training
        new._init_sparse(mask, structure or MaskStructure(), _density_or(mask, target_density))
        return new

    def to_dense(self) -> Conv1D:
        """A plain ``Conv1D`` sharing this layer's parameters."""
        new = Conv1D.__new__(Conv1D)
        nn.Module.__init__(new)
        new.nf, new.nx = self.nf, self.nx
        new.weight, new.bias, new.training = self.weight, self.bias, self.training
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size_out = x.size()[:-1] + (self.nf,)
        out = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.masked_weight())
        return out.view(size_out)


SPARSE_CLASSES = {nn.Linear: SparseLinear, Conv1D: SparseConv1D}


def _density_or(mask: torch.Tensor, density: Optional[float]) -> float:
    return float(mask.sum()) / mask.numel() if density is None else float(density)


def is_sparse_module(module: nn.Module) -> bool:
    """Whether ``module`` is an hf_sparse sparse layer."""
    return isinstance(module, SparseMixin)


def sparse_class_for(module: nn.Module):
    """The sparse class replacing ``module`` (exact type match), or ``None`` when it is not supported."""
    return SPARSE_CLASSES.get(type(module))
