"""Sparse Parallel, Sparse Factorized and Sparse Doped modules (Sparse-IFT paper, Sec. 2.4).

Each module is a drop-in replacement for one ``nn.Linear`` (weight ``[out, in]``) or GPT-2 ``Conv1D``
(weight ``[in, out]``): same input and output features, same call signature. Its matrices are hf_sparse
`SparseLinear` / `SparseConv1D` layers of the replaced layer's own layout, so every sparsity algorithm,
`sparsity_report`, `densify_` and the FLOP counter see them as ordinary sparse layers; the dense low-rank
factors of Sparse Doped are plain ``nn.Linear`` / ``Conv1D``.

Naming (what lands in the state dict): ``branches.{j}`` and ``activations.{j}`` (parallel); ``u``,
``activation``, ``v`` (factorized); ``sparse``, ``activation``, ``u``, ``v`` (doped).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.pytorch_utils import Conv1D

from ..layers import SparseConv1D, SparseLinear
from ..structure import MaskStructure, check_fits, make_generator, random_mask

LAYOUTS = ("linear", "conv1d")


def layout_of(module: nn.Module) -> str:
    """``"linear"`` for ``nn.Linear`` (weight ``[out, in]``), ``"conv1d"`` for GPT-2 ``Conv1D`` (``[in, out]``)."""
    if isinstance(module, Conv1D):
        return "conv1d"
    if isinstance(module, nn.Linear):
        return "linear"
    raise TypeError(f"Sparse-IFT replaces nn.Linear or Conv1D layers, not {type(module).__name__}.")


def features_of(module: nn.Module) -> tuple:
    """``(in_features, out_features)`` of an ``nn.Linear`` or ``Conv1D``."""
    return (module.nx, module.nf) if layout_of(module) == "conv1d" else (module.in_features, module.out_features)


def make_activation(name: str, dim: int, eps: float = 1e-5) -> nn.Module:
    """The non-linearity module ``name`` (``"identity"``, ``"layernorm"`` over ``dim``, or a transformers
    activation name such as ``"gelu"`` / ``"gelu_new"`` / ``"relu"``)."""
    if name == "identity":
        return nn.Identity()
    if name == "layernorm":
        return nn.LayerNorm(dim, eps=eps)
    if name not in ACT2FN:
        raise ValueError(f"nonlinearity={name!r} is not 'identity', 'layernorm' or a transformers activation.")
    return ACT2FN[name]


def check_matrix_fits(structure: MaskStructure, layout: str, d_in: int, d_out: int, name: str) -> None:
    """`check_fits` for a ``d_in -> d_out`` matrix of ``layout``."""
    shape = (d_in, d_out) if layout == "conv1d" else (d_out, d_in)
    check_fits(structure, shape, 0 if layout == "conv1d" else 1, name)


def make_matrix(
    layout: str,
    d_in: int,
    d_out: int,
    bias: bool,
    *,
    density: Optional[float],
    structure: MaskStructure,
    std: float,
    seed: int,
    name: str,
    device=None,
    dtype=None,
) -> nn.Module:
    """A freshly initialised ``d_in -> d_out`` matrix of ``layout``; sparse with a random exact-count mask of
    ``density`` unless ``density`` is ``None`` (dense).

    Weights are drawn from ``N(0, std)`` (transformers' Linear initialisation), biases are zero. The weight
    values and the mask come from generators derived from ``(seed, name)``, so rebuilding the same module
    from the same config reproduces them exactly.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} must be one of {LAYOUTS}.")
    shape = (d_in, d_out) if layout == "conv1d" else (d_out, d_in)
    weight = torch.empty(shape).normal_(0.0, std, generator=make_generator(seed, "ift-init", name))
    if layout == "conv1d":
        if not bias:
            raise ValueError(f"{name}: GPT-2 Conv1D layers always have a bias; bias=False needs layout='linear'.")
        module = Conv1D(d_out, d_in)
    else:
        module = nn.Linear(d_in, d_out, bias=bias)
    with torch.no_grad():
        module.weight.copy_(weight)
        if module.bias is not None:
            module.bias.zero_()
    module = module.to(device=device, dtype=dtype)
    if density is None:
        return module
    input_dim = 0 if layout == "conv1d" else 1
    gen = make_generator(seed, "ift-mask", name)
    mask = random_mask(shape, structure, density, input_dim, gen, device="cpu").to(module.weight.device)
    cls = SparseConv1D if layout == "conv1d" else SparseLinear
    sparse = cls.from_dense(module, mask, structure, density)
    with torch.no_grad():
        sparse.weight.masked_fill_(~mask, 0)
    return sparse


class _IFTModule(nn.Module):
    """Shared attributes: ``in_features``, ``out_features``, ``layout``, ``sparsity``, ``nonlinearity``."""

    kind: str = ""

    def _init_common(self, layout: str, d_in: int, d_out: int, sparsity: float, nonlinearity: str) -> None:
        self.layout, self.in_features, self.out_features = layout, d_in, d_out
        self.sparsity, self.nonlinearity = float(sparsity), nonlinearity
        if layout == "conv1d":  # GPT-2 code and tools read Conv1D's sizes under these names
            self.nx, self.nf = d_in, d_out

    def extra_repr(self) -> str:
        return (f"{self.layout}, in_features={self.in_features}, out_features={self.out_features}, "
                f"sparsity={self.sparsity:g}, nonlinearity={self.nonlinearity}")


class SparseParallel(_IFTModule):
    """``sum_j sigma(W_j x + b_j)`` over ``k = 1/(1-s)`` parallel ``s``-sparse branches of the replaced shape.

    With ``k = 1`` (``s = 0``) and ``nonlinearity="identity"`` it is exactly the dense layer.

    Args:
        layout: ``"linear"`` or ``"conv1d"``. d_in, d_out: Features of the replaced layer.
        branches: ``k``. sparsity: ``s`` of every branch. nonlinearity: `make_activation` name.
        bias: Whether the branches have biases. structure: Mask structure. std: Init std.
        seed, name: Derive the random masks / weights. eps: LayerNorm epsilon.
    """

    kind = "parallel"

    def __init__(self, layout: str, d_in: int, d_out: int, *, branches: int, sparsity: float, nonlinearity: str,
                 bias: bool = True, structure: MaskStructure = MaskStructure(), std: float = 0.02, seed: int = 0,
                 name: str = "", eps: float = 1e-5, device=None, dtype=None) -> None:
        super().__init__()
        self._init_common(layout, d_in, d_out, sparsity, nonlinearity)
        self.branches = nn.ModuleList(
            make_matrix(layout, d_in, d_out, bias, density=1.0 - sparsity, structure=structure, std=std, seed=seed,
                        name=f"{name}.branches.{j}", device=device, dtype=dtype)
            for j in range(branches)
        )
        self.activations = nn.ModuleList(make_activation(nonlinearity, d_out, eps) for _ in range(branches))
        self.activations.to(device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # k is a small constant (2-10): a loop over branches, not over weights.
        out = self.activations[0](self.branches[0](x))
        for branch, act in zip(self.branches[1:], self.activations[1:]):
            out = out + act(branch(x))
        return out


class SparseFactorized(_IFTModule):
    """``V sigma(U x + b_u) + b_v`` with ``s``-sparse ``U: d_in -> rank`` and ``V: rank -> d_out``.

    Args: as `SparseParallel`, with ``rank`` (``d_sf``) instead of ``branches``.
    """

    kind = "factorized"

    def __init__(self, layout: str, d_in: int, d_out: int, *, rank: int, sparsity: float, nonlinearity: str,
                 bias: bool = True, structure: MaskStructure = MaskStructure(), std: float = 0.02, seed: int = 0,
                 name: str = "", eps: float = 1e-5, device=None, dtype=None) -> None:
        super().__init__()
        self._init_common(layout, d_in, d_out, sparsity, nonlinearity)
        self.rank = rank
        common = dict(density=1.0 - sparsity, structure=structure, std=std, seed=seed, device=device, dtype=dtype)
        self.u = make_matrix(layout, d_in, rank, bias, name=f"{name}.u", **common)
        self.activation = make_activation(nonlinearity, rank, eps).to(device=device, dtype=dtype)
        self.v = make_matrix(layout, rank, d_out, bias, name=f"{name}.v", **common)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.v(self.activation(self.u(x)))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}"


class SparseDoped(_IFTModule):
    """``sigma(W x + b) + V U x``: an ``s``-sparse full-size ``W`` plus a dense rank-``d_sd`` product
    (every matrix has a bias when the replaced layer has one, zero-initialised).

    At ``s = 0`` the rank is 0 (no ``u`` / ``v``), and with ``nonlinearity="identity"`` it is the dense layer.

    Args: as `SparseParallel`, with ``rank`` (``d_sd``) instead of ``branches``.
    """

    kind = "doped"

    def __init__(self, layout: str, d_in: int, d_out: int, *, rank: int, sparsity: float, nonlinearity: str,
                 bias: bool = True, structure: MaskStructure = MaskStructure(), std: float = 0.02, seed: int = 0,
                 name: str = "", eps: float = 1e-5, device=None, dtype=None) -> None:
        super().__init__()
        self._init_common(layout, d_in, d_out, sparsity, nonlinearity)
        self.rank = rank
        self.sparse = make_matrix(layout, d_in, d_out, bias, density=1.0 - sparsity, structure=structure, std=std,
                                  seed=seed, name=f"{name}.sparse", device=device, dtype=dtype)
        self.activation = make_activation(nonlinearity, d_out, eps).to(device=device, dtype=dtype)
        if rank > 0:
            dense = dict(density=None, structure=structure, std=std, seed=seed, device=device, dtype=dtype)
            self.u = make_matrix(layout, d_in, rank, bias, name=f"{name}.u", **dense)
            self.v = make_matrix(layout, rank, d_out, bias, name=f"{name}.v", **dense)
        else:
            self.u = self.v = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.activation(self.sparse(x))
        if self.u is not None:
            out = out + self.v(self.u(x))
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}"


IFT_MODULES = {cls.kind: cls for cls in (SparseParallel, SparseFactorized, SparseDoped)}
