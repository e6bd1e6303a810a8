"""Bit-packed mask files and the checks that tell a sound mask from a corrupted one.

A sparse checkpoint stores one mask per sparse module in ``sparsity_masks.safetensors``. Each mask is the
boolean tensor in the weight's own layout, flattened row-major and packed eight entries per byte (numpy
``packbits``, big bit order), so it costs 1/32 of the fp32 weight bytes. The tensor key is
``"<module name>.weight_mask"``; the safetensors metadata records every shape (``"<key>.shape"``) and the
bit order, so the file alone is enough to unpack it.

Everything here reads and writes safetensors only (never pickle) and is vectorised.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, Sequence, Tuple, Union

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..structure import MaskStructure

MASKS_NAME = "sparsity_masks.safetensors"
MASK_SUFFIX = ".weight_mask"
BITORDER = "big"


class CheckpointError(ValueError):
    """A sparse checkpoint is missing files, tampered with, or inconsistent with the model it describes."""


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Packs a boolean mask into a flat ``uint8`` tensor, eight entries per byte.

    Args:
        mask: Boolean tensor of any shape.

    Returns:
        A 1-D ``uint8`` tensor of ``ceil(numel / 8)`` bytes; the padding bits of the last byte are zero.

    Example:
        >>> pack_mask(torch.tensor([True, False, True])).tolist()
        [160]
    """
    if mask.dtype != torch.bool:
        raise TypeError(f"pack_mask expects a bool tensor, got {mask.dtype}.")
    flat = mask.detach().to("cpu").contiguous().reshape(-1).numpy()
    return torch.from_numpy(np.packbits(flat, bitorder=BITORDER))


def unpack_mask(packed: torch.Tensor, shape: Sequence[int], name: str = "mask") -> torch.Tensor:
    """Inverse of `pack_mask`: checks the byte count and that the padding bits are zero.

    Args:
        packed: 1-D ``uint8`` tensor.
        shape: Shape of the mask.
        name: Used in error messages.

    Returns:
        The boolean mask of ``shape``.
    """
    numel = int(np.prod(shape)) if len(shape) else 1
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise CheckpointError(
            f"{name}: packed mask must be a 1-D uint8 tensor, got {packed.dtype} {tuple(packed.shape)}."
        )
    expected = (numel + 7) // 8
    if packed.numel() != expected:
        raise CheckpointError(
            f"{name}: packed mask has {packed.numel()} bytes, a mask of shape {tuple(shape)} needs {expected}."
        )
    bits = np.unpackbits(packed.numpy(), bitorder=BITORDER)
    if bits[numel:].any():
        raise CheckpointError(f"{name}: packed mask has non-zero padding bits (tampered or wrong shape).")
    return torch.from_numpy(bits[:numel].astype(bool)).reshape(tuple(shape))


def save_masks(masks: Dict[str, torch.Tensor], path: Union[str, os.PathLike]) -> None:
    """Writes boolean masks bit-packed into one safetensors file (keys ``<name>.weight_mask``)."""
    tensors = {name + MASK_SUFFIX: pack_mask(mask) for name, mask in masks.items()}
    metadata = {name + MASK_SUFFIX + ".shape": json.dumps(list(mask.shape)) for name, mask in masks.items()}
    metadata["format"] = "hf_sparse-packed-bool"
    metadata["bitorder"] = BITORDER
    save_file(tensors, str(path), metadata=metadata)


def load_masks(path: Union[str, os.PathLike], shapes: Dict[str, Sequence[int]]) -> Dict[str, torch.Tensor]:
    """Reads and unpacks the masks of `save_masks`, checking keys and shapes against ``shapes``.

    Args:
        path: The masks file.
        shapes: Expected mask shape per module name (from ``sparsity_config.json``).

    Returns:
        Boolean masks by module name.

    Raises:
        CheckpointError: unreadable file, missing / unexpected modules, shape or size mismatches.
    """
    fname = os.path.basename(str(path))
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{fname}: not a readable safetensors file ({err}).") from err
    if metadata.get("bitorder", BITORDER) != BITORDER:
        raise CheckpointError(f"{fname}: unsupported bit order {metadata.get('bitorder')!r}.")
    names = {key[: -len(MASK_SUFFIX)] for key in tensors if key.endswith(MASK_SUFFIX)}
    stray = sorted(key for key in tensors if not key.endswith(MASK_SUFFIX))
    missing = sorted(set(shapes) - names)
    unexpected = sorted(names - set(shapes))
    if stray or missing or unexpected:
        raise CheckpointError(
            f"{fname} does not match sparsity_config.json: missing masks for {missing}, masks for unknown "
            f"modules {unexpected}, unexpected tensors {stray}."
        )
    out = {}
    for name, shape in shapes.items():
        key = name + MASK_SUFFIX
        stored_shape = metadata.get(key + ".shape")
        if stored_shape is not None and json.loads(stored_shape) != list(shape):
            raise CheckpointError(
                f"{fname}: mask of module {name!r} has shape {json.loads(stored_shape)} in the file but "
                f"{list(shape)} in sparsity_config.json."
            )
        out[name] = unpack_mask(tensors[key], shape, f"{fname}: module {name!r}")
    return out


def check_mask_structure(mask: torch.Tensor, structure: MaskStructure, input_dim: int, name: str) -> None:
    """Raises `CheckpointError` when ``mask`` does not obey ``structure`` (vectorised, no loops over granules).

    Blocks must be all-active or all-inactive; N:M groups along the input dimension hold exactly ``n`` active
    weights; transposable N:M tiles hold exactly ``n`` per row and per column.
    """
    rows, cols = mask.shape
    if structure.kind == "block" and structure.block_size > 1:
        b = structure.block_size
        if rows % b or cols % b:
            raise CheckpointError(f"module {name!r}: block_size={b} does not divide the mask shape {(rows, cols)}.")
        blocks = mask.reshape(rows // b, b, cols // b, b)
        if not torch.equal(blocks.all(dim=3).all(dim=1), blocks.any(dim=3).any(dim=1)):
            raise CheckpointError(f"module {name!r}: mask is not made of whole {b}x{b} blocks.")
    elif structure.kind == "nm":
        groups = (mask.transpose(0, 1) if input_dim == 0 else mask)
        if groups.shape[1] % structure.m:
            raise CheckpointError(f"module {name!r}: m={structure.m} does not divide the input dimension.")
        counts = groups.reshape(groups.shape[0], -1, structure.m).sum(dim=-1)
        if not bool((counts == structure.n).all()):
            raise CheckpointError(
                f"module {name!r}: mask violates {structure.n}:{structure.m} (a group holds "
                f"{int(counts[counts != structure.n][0])} active weights)."
            )
    elif structure.kind == "nm_transposable":
        m = structure.m
        if rows % m or cols % m:
            raise CheckpointError(f"module {name!r}: m={m} does not divide the mask shape {(rows, cols)}.")
        tiles = mask.reshape(rows // m, m, cols // m, m)
        if not (bool((tiles.sum(dim=3) == structure.n).all()) and bool((tiles.sum(dim=1) == structure.n).all())):
            raise CheckpointError(f"module {name!r}: mask violates transposable {structure.n}:{m}.")


def file_sha256(path: Union[str, os.PathLike]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weight_files(directory: Union[str, os.PathLike]) -> Tuple[str, ...]:
    """The safetensors weight files transformers wrote into ``directory`` (our masks file excluded)."""
    return tuple(
        sorted(
            f for f in os.listdir(directory)
            if f.endswith(".safetensors") and f != MASKS_NAME and f.startswith("model")
        )
    )
