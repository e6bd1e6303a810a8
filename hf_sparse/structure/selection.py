"""Building whole masks: by score (`select_mask`), at random (`random_mask`) and N:M groups (`nm_mask`).

Every mask has exactly the active count `num_active` gives (N:M and transposable N:M fix it per group / tile);
everything is vectorised over groups, blocks and tiles.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .granules import (
    MaskStructure,
    check_fits,
    expand_granules,
    granule_scores,
    granule_shape,
    num_active,
    topk_granules,
)
from .transposable import MAX_TRANSPOSABLE_M, _from_tiles, _transposable_patterns_cpu, transposable_nm_mask


def _input_last(t: torch.Tensor, input_dim: int) -> torch.Tensor:
    return t.transpose(0, 1) if input_dim == 0 else t


def nm_mask(scores: torch.Tensor, n: int, m: int, input_dim: int) -> torch.Tensor:
    """Keeps the ``n`` largest ``|scores|`` in every group of ``m`` consecutive *input* weights.

    Args:
        scores: 2-D score tensor in the weight's layout.
        n, m: The N:M ratio.
        input_dim: Index of the input dimension (groups run along it).

    Returns:
        A boolean mask with exactly ``n`` active in each group.
    """
    s = _input_last(scores.detach().float().abs(), input_dim)
    rows, cols = s.shape
    groups = s.reshape(rows, cols // m, m)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(-1, torch.topk(groups, n, dim=-1, sorted=False).indices, True)
    return _input_last(mask.reshape(rows, cols), input_dim)


def select_mask(
    scores: torch.Tensor, structure: MaskStructure, density: float, input_dim: int
) -> torch.Tensor:
    """Mask of the highest-scoring granules, with exactly the count `num_active` gives.

    Args:
        scores: Element scores in the weight's layout (``weight`` for magnitude pruning, or any score).
        structure: The mask structure.
        density: Fraction of granules to keep (ignored by N:M structures).
        input_dim: Index of the input dimension.

    Returns:
        A boolean element mask shaped like ``scores``.

    Example:
        >>> w = torch.tensor([[0.1, -0.9], [0.5, 0.2]])
        >>> select_mask(w, MaskStructure(), 0.5, input_dim=1)
        tensor([[False,  True],
                [ True, False]])
    """
    check_fits(structure, scores.shape, input_dim)
    if structure.kind == "nm":
        return nm_mask(scores, structure.n, structure.m, input_dim)
    if structure.kind == "nm_transposable":
        return transposable_nm_mask(scores, structure.n, structure.m)
    k = num_active(structure, scores.shape, density)
    return expand_granules(topk_granules(granule_scores(scores, structure), k), structure)


def random_mask(
    shape: Sequence[int],
    structure: MaskStructure,
    density: float,
    input_dim: int,
    generator: torch.Generator,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """A uniformly random mask of ``structure`` with exact counts, drawn from ``generator``.

    Args:
        shape: The 2-D weight shape.
        structure: The mask structure.
        density: Fraction of granules active (ignored by N:M structures).
        input_dim: Index of the input dimension.
        generator: Source of randomness (seeded by the caller for reproducibility).
        device: Device of the result; must match the generator's device.

    Returns:
        A boolean element mask.
    """
    check_fits(structure, shape, input_dim)
    device = torch.device(device) if device is not None else generator.device
    if structure.kind == "nm_transposable" and structure.m > MAX_TRANSPOSABLE_M:
        # Too many patterns to draw one uniformly: the exact solver on random scores gives a random valid pattern.
        noise = torch.rand(tuple(shape), generator=generator, device=device)
        return transposable_nm_mask(noise, structure.n, structure.m)
    if structure.kind == "nm_transposable":
        patterns = _transposable_patterns_cpu(structure.n, structure.m).to(device)
        n_tiles = (shape[0] // structure.m) * (shape[1] // structure.m)
        idx = torch.randint(patterns.shape[0], (n_tiles,), generator=generator, device=device)
        return _from_tiles(patterns[idx], shape, structure.m)
    g_shape = granule_shape(structure, shape)
    noise = torch.rand(g_shape, generator=generator, device=device)
    if structure.kind == "nm":
        return nm_mask(noise, structure.n, structure.m, input_dim)
    return expand_granules(topk_granules(noise, num_active(structure, shape, density)), structure)
