"""Inference exports: a compressed format (active values + bitmask) and a plain dense one.

``format="compressed"`` stores, for every sparse module, only the active weight values (row-major order of the
mask, in the weight's layout) and the bit-packed mask; every other tensor is stored as is. At 90% sparsity a
sparse weight costs 10% (values) + 1/32 (mask) = 13.1% of its dense fp32 bytes. `load_compressed` rebuilds the
masked model. ``format="dense"`` writes a vanilla transformers checkpoint (inactive weights zero, no hf_sparse
files). Only safetensors and JSON are written and read.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import masks as mask_io
from .atomic import apply_umask_, atomic_directory, is_main_process as _is_main_process
from .load import restore_sparse_modules_
from .save import architecture_name, module_records
from ..config import SparsityConfig
from .masks import CheckpointError
from ..patching import get_sparsity_config, set_sparsity_config, sparse_modules
from ..structure import MaskStructure

logger = logging.getLogger(__name__)

COMPRESSED_WEIGHTS = "model.compressed.safetensors"
COMPRESSED_CONFIG = "compressed_config.json"
FORMATS = ("compressed", "dense")
_VALUES = ".weight.values"


@dataclass
class ExportReport:
    """Sizes of an export, in bytes, against the dense fp32 model.

    Attributes:
        path: The export directory.
        format: ``"compressed"`` or ``"dense"``.
        file_bytes: Size of the weight file written.
        dense_fp32_bytes: Bytes of every unique parameter / buffer tensor stored densely in fp32.
        sparse_bytes: Bytes spent on the sparse modules (values + packed masks).
        sparse_dense_fp32_bytes: Dense fp32 bytes of those modules' weights.
    """

    path: Path
    format: str
    file_bytes: int
    dense_fp32_bytes: int
    sparse_bytes: int
    sparse_dense_fp32_bytes: int

    @property
    def ratio(self) -> float:
        """Weight file size / dense fp32 size of the whole model."""
        return self.file_bytes / self.dense_fp32_bytes

    @property
    def sparse_ratio(self) -> float:
        """Sparse-module bytes / their dense fp32 bytes (the compression of the sparsified weights)."""
        return self.sparse_bytes / self.sparse_dense_fp32_bytes if self.sparse_dense_fp32_bytes else 1.0


def _unique_state(model: nn.Module):
    """State-dict tensors with tied aliases removed (safetensors refuses shared storage)."""
    seen: Dict[Any, str] = {}
    tensors, tied = {}, {}
    for key, t in model.state_dict().items():
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if ident in seen and t.numel():
            tied[key] = seen[ident]
            continue
        seen[ident] = key
        tensors[key] = t.detach()
    return tensors, tied


def export(
    model: nn.Module,
    directory: Union[str, os.PathLike],
    format: str = "compressed",
    dtype: Optional[torch.dtype] = None,
    is_main_process: Optional[bool] = None,
) -> Optional[ExportReport]:
    """Exports a sparse model for inference.

    Args:
        model: A sparsified transformers model.
        directory: Output directory (written atomically).
        format: ``"compressed"`` (active values + bitmask, load with `load_compressed`) or ``"dense"`` (a vanilla
            transformers checkpoint).
        dtype: Store floating-point tensors in this dtype (e.g. ``torch.float16``); default: as they are.
        is_main_process: Whether this process writes (default: rank 0).

    Returns:
        An `ExportReport` with the sizes, or ``None`` on non-main processes.

    Example:
        >>> report = hf_sparse.export(model, "out/bert-s90-compressed")
        >>> print(f"{report.ratio:.1%} of dense fp32")
    """
    if format not in FORMATS:
        raise ValueError(f"format={format!r} is not supported; choose one of {', '.join(map(repr, FORMATS))}.")
    found = sparse_modules(model)
    if not found:
        raise ValueError(f"{type(model).__name__} has no sparse modules to export.")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype={dtype!r} must be a floating-point torch.dtype.")
    frozen = [n for n, m in found.items() if getattr(m, "inactive_mode", "zero") == "frozen"]
    if frozen and format == "compressed":
        raise ValueError(
            f"format='compressed' stores active values only, but modules {frozen[:3]} use inactive_mode='frozen' "
            "(their inactive weights take part in the forward pass); use hf_sparse.save_pretrained or "
            "format='dense', or set_inactive_mode_('zero') and zero them first."
        )
    if not _is_main_process(is_main_process):
        return None
    tensors, tied = _unique_state(model)
    cast = (lambda t: t.to(dtype) if t.is_floating_point() else t) if dtype is not None else (lambda t: t)
    dense_fp32 = sum(t.numel() * (4 if t.is_floating_point() else t.element_size()) for t in tensors.values())
    sparse_fp32 = sum(m.weight.numel() * 4 for m in found.values())
    out: Dict[str, torch.Tensor] = {}
    sparse_bytes = 0
    if format == "compressed":
        for name, m in found.items():
            values = cast(m.weight.detach()[m.weight_mask]).contiguous()  # row-major order of the mask
            packed = mask_io.pack_mask(m.weight_mask)
            out[name + _VALUES] = values
            out[name + mask_io.MASK_SUFFIX] = packed
            sparse_bytes += values.numel() * values.element_size() + packed.numel()
            tensors.pop(name + ".weight")
    else:
        sparse_bytes = sum(m.weight.numel() * cast(m.weight[:0]).element_size() for m in found.values())
    out.update({k: cast(t).contiguous() for k, t in tensors.items()})
    final = Path(directory).resolve()
    with atomic_directory(final) as tmp:
        if format == "dense":
            # The model's own writer, with our (possibly cast) tensors: a vanilla checkpoint.
            model.save_pretrained(str(tmp), state_dict={k: out[k] for k in tensors})
            apply_umask_([tmp / f for f in mask_io.weight_files(tmp)])
            file_bytes = sum((tmp / f).stat().st_size for f in mask_io.weight_files(tmp))
        else:
            model.config.save_pretrained(str(tmp))
            save_file({k: v.cpu() for k, v in out.items()}, str(tmp / COMPRESSED_WEIGHTS), metadata={"format": "pt"})
            apply_umask_([tmp / COMPRESSED_WEIGHTS])
            cfg = get_sparsity_config(model)
            record = {"format": "compressed", "format_version": 1, "model_class": architecture_name(model),
                      "sparsity_config": cfg.to_dict() if cfg is not None else None, "tied": tied,
                      "modules": module_records(model)}
            (tmp / COMPRESSED_CONFIG).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            file_bytes = (tmp / COMPRESSED_WEIGHTS).stat().st_size
    report = ExportReport(final, format, file_bytes, dense_fp32, sparse_bytes, sparse_fp32)
    logger.info("Exported %s (%s): %.1f%% of dense fp32 (sparse modules %.1f%%).", type(model).__name__, format,
                100 * report.ratio, 100 * report.sparse_ratio)
    return report


def load_compressed(model_class: Any, directory: Union[str, os.PathLike], **kwargs) -> nn.Module:
    """Rebuilds the masked model from a ``format="compressed"`` export.

    Args:
        model_class: A transformers model class or Auto class.
        directory: The export directory.
        **kwargs: Passed to ``AutoConfig.from_pretrained``.

    Returns:
        The model with its sparse modules and masks, in eval mode.

    Raises:
        CheckpointError: missing / malformed files, or values that do not match their masks.
    """
    from transformers import AutoConfig

    directory = Path(directory)
    meta_path = directory / COMPRESSED_CONFIG
    if not meta_path.is_file() or not (directory / COMPRESSED_WEIGHTS).is_file():
        raise CheckpointError(
            f"{directory} is not a compressed export ({COMPRESSED_CONFIG} / {COMPRESSED_WEIGHTS} missing)."
        )
    try:
        record = json.loads(meta_path.read_text(encoding="utf-8"))
        tensors = load_file(str(directory / COMPRESSED_WEIGHTS))
    except (json.JSONDecodeError, SafetensorError, OSError) as err:
        raise CheckpointError(f"{directory}: unreadable compressed export ({err}).") from err
    if record.get("format") != "compressed" or record.get("format_version") != 1:
        raise CheckpointError(f"{COMPRESSED_CONFIG}: unsupported format {record.get('format')!r} "
                              f"version {record.get('format_version')!r}.")
    state, masks = {}, {}
    for rec in record["modules"]:
        name = rec["name"]
        rec["_structure"] = MaskStructure(**rec["structure"])
        if name + _VALUES not in tensors or name + mask_io.MASK_SUFFIX not in tensors:
            raise CheckpointError(f"{COMPRESSED_WEIGHTS}: values or mask of module {name!r} missing.")
        packed = tensors.pop(name + mask_io.MASK_SUFFIX)
        mask = mask_io.unpack_mask(packed, rec["shape"], f"{COMPRESSED_WEIGHTS}: {name!r}")
        values = tensors.pop(name + _VALUES)
        if values.dim() != 1 or values.numel() != int(mask.sum()):
            raise CheckpointError(f"{COMPRESSED_WEIGHTS}: module {name!r} has {values.numel()} values for "
                                  f"{int(mask.sum())} active weights.")
        weight = torch.zeros(mask.shape, dtype=values.dtype)
        weight[mask] = values
        state[name + ".weight"] = weight
        masks[name] = mask
    state.update(tensors)
    config = AutoConfig.from_pretrained(str(directory), **kwargs)
    model = model_class.from_config(config) if not isinstance(model_class, type) or not issubclass(
        model_class, nn.Module) else model_class(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    untied = sorted(set(missing) - set(record.get("tied", {})))
    if untied or unexpected:
        raise CheckpointError(f"{COMPRESSED_WEIGHTS} does not fit {type(model).__name__}: missing {untied}, "
                              f"unexpected {sorted(unexpected)}.")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    restore_sparse_modules_(model, record, masks)
    if record.get("sparsity_config") and get_sparsity_config(model) is None:
        set_sparsity_config(model, SparsityConfig.from_dict(record["sparsity_config"]))
    return model.eval()
