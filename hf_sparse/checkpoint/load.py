"""Loading sparse checkpoints (`from_pretrained`) and restoring sparse modules onto a built model.

Loading validates every file against the freshly built model before anything is returned: missing or tampered
files, a newer format, masks that do not fit their weights or structure, non-zero inactive weights and unknown
modules raise `CheckpointError` naming the file and module. Only JSON and safetensors are read.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
from torch import nn

from ..config import SparsityConfig
from ..ift import from_pretrained_sparse_ift
from ..layers import is_sparse_module, sparse_class_for
from ..patching import densify_, set_sparsity_config, sparse_modules
from .masks import MASKS_NAME, CheckpointError
from .read import LAYOUTS, SPARSITY_CONFIG_NAME, read_checkpoint
from .save import MODEL_CARD_NAME, _base_prefix

logger = logging.getLogger(__name__)


def _resolve_dir(path_or_repo_id: Union[str, os.PathLike], **hub_kwargs) -> Path:
    path = Path(path_or_repo_id)
    if path.is_dir():
        return path
    text = str(path_or_repo_id)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise FileNotFoundError(f"{text} is not a checkpoint directory (and not a Hub repo id).")
    from huggingface_hub import snapshot_download

    # JSON, safetensors, the card and tokenizer files: never a pickle (*.bin, *.pt) from the repo.
    patterns = ["*.json", "*.safetensors", MODEL_CARD_NAME, "*.txt", "*.model"]
    try:
        return Path(snapshot_download(repo_id=text, allow_patterns=patterns, **hub_kwargs))
    except Exception as err:  # offline, unknown repo, bad id: say what we tried, keep the cause chained
        raise OSError(
            f"{text!r} is not a local checkpoint directory and could not be downloaded from the Hub "
            f"({type(err).__name__}: {err})."
        ) from err


def _plan_restore(model: nn.Module, record: Dict[str, Any], masks: Dict[str, torch.Tensor]) -> List[tuple]:
    """Maps every recorded module onto ``model`` and checks it, without changing anything.

    Returns:
        ``(target name, dense module, mask, structure, target density, inactive mode)`` per recorded module.
    """
    prefix = _base_prefix(model)
    named = dict(model.named_modules())
    plan = []
    for rec in record["modules"]:
        base_name = rec.get("base_name")
        target = rec["name"] if base_name is None else (f"{prefix}.{base_name}" if prefix else base_name)
        module = named.get(target)
        if module is None:
            raise CheckpointError(
                f"{SPARSITY_CONFIG_NAME}: module {rec['name']!r} (looked up as {target!r}) does not exist in "
                f"{type(model).__name__}."
            )
        # A Sparse-IFT model is rebuilt with its sparse modules in place; a plain one holds dense layers.
        cls = type(module) if is_sparse_module(module) else sparse_class_for(module)
        if cls is None or LAYOUTS[cls.input_dim] != rec["layout"]:
            raise CheckpointError(
                f"{SPARSITY_CONFIG_NAME}: module {target!r} is a {type(module).__name__} in "
                f"{type(model).__name__}, the checkpoint recorded a {rec['layout']} layer."
            )
        mask = masks[rec["name"]]
        if tuple(module.weight.shape) != tuple(mask.shape):
            raise CheckpointError(
                f"{MASKS_NAME}: mask of module {target!r} has shape {tuple(mask.shape)}, its weight has "
                f"{tuple(module.weight.shape)}."
            )
        mask = mask.to(module.weight.device)
        mode = rec.get("inactive_mode", "zero")
        leaked = 0 if mode == "frozen" else int(torch.count_nonzero(module.weight.detach()[~mask]))
        if leaked:
            raise CheckpointError(
                f"model weights: module {target!r} has {leaked} non-zero weights where {MASKS_NAME} marks them "
                "inactive (corrupted weights or masks)."
            )
        plan.append((target, module, mask, rec["_structure"], float(rec.get("target_density", rec["density"])), mode))
    unrecorded = sorted(set(sparse_modules(model)) - {p[0] for p in plan})
    if unrecorded:
        raise CheckpointError(
            f"{SPARSITY_CONFIG_NAME}: the rebuilt {type(model).__name__} has sparse modules with no recorded "
            f"mask: {unrecorded[:5]}."
        )
    return plan


def restore_sparse_modules_(model: nn.Module, record: Dict[str, Any], masks: Dict[str, torch.Tensor]) -> nn.Module:
    """Swaps the recorded modules of a dense ``model`` for sparse ones holding ``masks``, in place.

    Everything is checked first (`_plan_restore`); on error the model is unchanged.

    Args:
        model: The model built from the checkpoint's weights.
        record: The parsed ``sparsity_config.json``.
        masks: Boolean masks by recorded module name.

    Returns:
        The same ``model``, sparse; ``get_sparsity_config(model)`` returns the saved `SparsityConfig`.
    """
    plan = _plan_restore(model, record, masks)
    cfg = SparsityConfig.from_dict(record["sparsity_config"]) if record.get("sparsity_config") else None
    for target, module, mask, structure, density, mode in plan:
        if is_sparse_module(module):  # rebuilt Sparse-IFT layer: replace its initial mask with the saved one
            module.set_mask_(mask, zero_inactive=False)
            module.structure, module.target_density = structure, density
            module.set_inactive_mode_(mode)
            continue
        sparse = sparse_class_for(module).from_dense(module, mask, structure, density)
        sparse.set_inactive_mode_(mode)
        parent_name, _, child = target.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, sparse)
    if cfg is not None:
        set_sparsity_config(model, cfg)
    return model


def from_pretrained(
    model_class: Any,
    path_or_repo_id: Union[str, os.PathLike],
    *,
    dense: bool = False,
    verify_checksums: bool = True,
    revision: Optional[str] = None,
    token: Optional[Union[str, bool]] = None,
    cache_dir: Optional[Union[str, os.PathLike]] = None,
    **kwargs,
) -> nn.Module:
    """Loads a sparse checkpoint with any head class of its base model, restoring sparse modules and masks.

    Args:
        model_class: A transformers class (``BertForQuestionAnswering``, ``AutoModelForCausalLM``, ...); a
            pre-training checkpoint loads into any head of the same base model.
        path_or_repo_id: A checkpoint directory or a Hub repo id (downloaded with ``huggingface_hub``).
        dense: Return the plain dense model (inactive weights zero) for dense fine-tuning.
        verify_checksums: Check every file against the SHA-256 recorded at save time.
        revision, token, cache_dir: Hub download options.
        **kwargs: As for ``model_class.from_pretrained``: config overrides (``num_labels=3``), ``dtype``,
            ``config``; Sparse-IFT checkpoints take the same (`ift.from_pretrained_sparse_ift`). Weights of the
            checkpoint's head that ``model_class`` lacks are dropped, and a new head is initialised, with
            transformers' usual report.

    Returns:
        The model, with `SparseLinear` / `SparseConv1D` modules and their masks unless ``dense=True``.

    Raises:
        CheckpointError: missing or tampered files, unsupported format version, masks that do not fit the
            weights or their structure, non-zero inactive weights, unknown modules; nothing is returned then.

    Example:
        >>> model = hf_sparse.from_pretrained(BertForQuestionAnswering, "out/bert-mini-s90")
    """
    hub_kwargs = {k: v for k, v in (("revision", revision), ("token", token), ("cache_dir", cache_dir)) if v}
    directory = _resolve_dir(path_or_repo_id, **hub_kwargs)
    record, masks = read_checkpoint(directory, verify_checksums=verify_checksums)
    from transformers import AutoConfig

    # Config overrides (num_labels=3, ...) go to transformers with the path, exactly as in its from_pretrained;
    # the config read here only tells whether the checkpoint records a Sparse-IFT.
    config = kwargs.get("config") or AutoConfig.from_pretrained(str(directory))
    if getattr(config, "sparse_ift", None):
        # Parallel / Factorized / Doped change the module tree: rebuild it from config.json, load the weights
        # (safetensors only; unused head weights dropped, new head weights initialised), then put the saved
        # masks on the rebuilt sparse layers below.
        model = from_pretrained_sparse_ift(model_class, directory, masks="nonzero", **kwargs)
    else:
        model = model_class.from_pretrained(str(directory), **kwargs)
    n = len(record["modules"])
    if dense:
        _plan_restore(model, record, masks)  # the masks are validated even when the caller wants the dense model
        if sparse_modules(model):
            densify_(model)
        logger.info("Loaded %s densely from %s (%d masks validated).", type(model).__name__, directory, n)
        return model
    restore_sparse_modules_(model, record, masks)
    logger.info("Loaded %s with %d sparse modules from %s.", type(model).__name__, n, directory)
    return model
