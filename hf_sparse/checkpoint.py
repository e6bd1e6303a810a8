"""Saving and loading sparse checkpoints (`save_pretrained`, `from_pretrained`).

A sparse checkpoint is a normal transformers checkpoint (``config.json`` + ``model.safetensors``, inactive
weights stored as zeros, so vanilla ``from_pretrained`` opens it) plus:

- ``sparsity_config.json``: format and library version, the sparsity / dynamic / Sparse-IFT configs, one record
  per sparse module (name, layout, shape, structure, target and actual density, active count), training
  statistics when known, the model card inputs, and the SHA-256 of every file it vouches for;
- ``sparsity_masks.safetensors``: the bit-packed masks (`mask_io`);
- ``README.md``: the model card (`model_card`).

Masks are never inferred from zeros: a re-allocated weight can be active and exactly zero. Loading validates
every file against the freshly built model before anything is returned; saving writes into a temporary
sibling directory and swaps it in, so an interrupted save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
from torch import nn

from . import mask_io
from .atomic import atomic_directory, in_place_directory, is_main_process as _is_main_process
from .config import SparsityConfig
from .ift import from_pretrained_sparse_ift
from .layers import is_sparse_module, sparse_class_for
from .checkpoint_read import (  # noqa: F401 - re-exported: the readers belong to the checkpoint API
    FORMAT_VERSION,
    LAYOUTS,
    SPARSITY_CONFIG_NAME,
    read_checkpoint,
    read_sparsity_config,
)
from .mask_io import CheckpointError, MASKS_NAME
from .patching import densify_, get_sparsity_config, sparse_modules
from .version import __version__

logger = logging.getLogger(__name__)

MODEL_CARD_NAME = "README.md"
# Files a save writes (transformers' weights / index / configs and our own); anything else already in a
# checkpoint directory (tokenizer files, trainer state, sub-folders) is carried over into the new checkpoint.
_OWNED = re.compile(
    r"(model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?|(generation_)?config\.json|"
    + "|".join(re.escape(n) for n in (SPARSITY_CONFIG_NAME, MASKS_NAME, MODEL_CARD_NAME))
)


def _carry_over(entry: str) -> bool:
    return _OWNED.fullmatch(entry) is None


def _as_dict(obj: Any, what: str) -> Optional[Dict[str, Any]]:
    if obj is None or isinstance(obj, dict):
        out = obj
    elif hasattr(obj, "to_dict"):
        out = obj.to_dict()
    else:
        raise TypeError(f"{what} must be a dict or have to_dict(), got {type(obj).__name__}.")
    try:
        json.dumps(out)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what} is not JSON-serialisable: {err}.") from err
    return out


def _base_prefix(model: nn.Module) -> str:
    """``base_model_prefix`` when the base model is a child (``BertForQA.bert``), else ``""``."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    child = getattr(model, prefix, None) if prefix else None
    return prefix if isinstance(child, nn.Module) and child is not model else ""


def module_records(model: nn.Module) -> List[Dict[str, Any]]:
    """One JSON-ready record per sparse module of ``model`` (name, layout, shape, structure, densities)."""
    prefix = _base_prefix(model)
    records = []
    for name, m in sparse_modules(model).items():
        active = int(m.weight_mask.sum())
        in_base = not prefix or name.startswith(prefix + ".")
        records.append(
            {
                "name": name,
                "base_name": (name[len(prefix) + 1:] if prefix else name) if in_base else None,
                "layout": LAYOUTS[m.input_dim],
                "shape": list(m.weight.shape),
                "structure": asdict(m.structure),
                "target_density": m.target_density,
                "density": active / m.weight_mask.numel(),
                "active": active,
                "numel": m.weight_mask.numel(),
                # "frozen": inactive weights take part in the forward pass with their stored values, so the
                # checkpoint keeps them (the effective weight is the whole weight) and loading does not
                # require zeros there.
                "inactive_mode": getattr(m, "inactive_mode", "zero"),
            }
        )
    return records


def save_pretrained(
    model: nn.Module,
    save_directory: Union[str, os.PathLike],
    *,
    dynamic_config: Any = None,
    ift_config: Any = None,
    training_stats: Optional[Dict[str, Any]] = None,
    card_info: Optional[Dict[str, Any]] = None,
    tokenizer: Any = None,
    is_main_process: Optional[bool] = None,
    atomic: bool = True,
    **kwargs,
) -> Optional[Path]:
    """Writes a sparse checkpoint: the model's own files plus masks, sparsity metadata and a model card.

    Args:
        model: A sparsified transformers model.
        save_directory: Target directory; replaced atomically if it exists (other files in it are kept).
        dynamic_config: The dynamic-sparsity / algorithm config (a dict or an object with ``to_dict()``).
        ift_config: The Sparse-IFT config, same forms.
        training_stats: Known training statistics, e.g. ``{"step": 1000, "dof": 0.31, "train_flops": 1.2e15,
            "dense_train_flops": 4.1e15}`` (JSON values).
        card_info: Model card inputs (`model_card.render_model_card`): ``base_model``, ``datasets``,
            ``eval_results``, ``license``, ``language``, ``model_name``, ``algorithm``.
        tokenizer: A tokenizer / processor saved alongside (anything with ``save_pretrained``).
        is_main_process: Whether this process writes; by default rank 0 of a ``torch.distributed`` /
            Accelerate run (the others return ``None`` without writing).
        atomic: Build the checkpoint in a temporary sibling directory and swap it in (an interrupted save
            leaves the previous checkpoint intact). Pass ``False`` when other processes write into the same
            directory concurrently (e.g. per-rank RNG states of a Trainer checkpoint): files are then written in
            place, ``sparsity_config.json`` last, so an interrupted save fails its checksum check on load.
        **kwargs: Passed to ``model.save_pretrained`` (e.g. ``max_shard_size``).

    Returns:
        The checkpoint path, or ``None`` on non-main processes.

    Example:
        >>> hf_sparse.save_pretrained(model, "out/bert-mini-s90", training_stats={"step": 1000})
    """
    from .model_card import render_model_card

    found = sparse_modules(model)
    if not found:
        raise ValueError(f"{type(model).__name__} has no sparse modules; save it with model.save_pretrained.")
    if tokenizer is not None and not hasattr(tokenizer, "save_pretrained"):
        raise TypeError(f"tokenizer must have save_pretrained(), got {type(tokenizer).__name__}.")
    if kwargs.get("push_to_hub"):
        raise ValueError("push_to_hub=True would upload without masks; use hf_sparse.push_to_hub instead.")
    cfg = get_sparsity_config(model)
    record = {
        "format_version": FORMAT_VERSION,
        "hf_sparse_version": __version__,
        "model_class": type(model).__name__,
        "model_type": getattr(getattr(model, "config", None), "model_type", None),
        "base_model_prefix": _base_prefix(model),
        "sparsity_config": cfg.to_dict() if cfg is not None else None,
        "dynamic_config": _as_dict(dynamic_config, "dynamic_config"),
        "ift_config": _as_dict(ift_config, "ift_config"),
        "training_stats": _as_dict(training_stats, "training_stats"),
        "card": {"repo_id": str(save_directory), **(_as_dict(card_info, "card_info") or {})},
        "modules": module_records(model),
    }
    card = render_model_card(record)  # validates the card inputs before anything is written
    if not _is_main_process(is_main_process):
        return None
    final = Path(save_directory).resolve()
    masks = {name: m.weight_mask for name, m in found.items()}
    with (atomic_directory(final, _carry_over) if atomic else in_place_directory(final)) as tmp:
        if not atomic:  # in place: no sparsity config (the commit record) until the new files are complete
            (tmp / SPARSITY_CONFIG_NAME).unlink(missing_ok=True)
        model.save_pretrained(str(tmp), **_effective_state_dict_kwargs(model, found, kwargs))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        mask_io.save_masks(masks, tmp / MASKS_NAME)
        record["files"] = {f: mask_io.file_sha256(tmp / f) for f in (*mask_io.weight_files(tmp), MASKS_NAME)}
        (tmp / SPARSITY_CONFIG_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        card.save(str(tmp / MODEL_CARD_NAME))
    logger.info("Saved sparse checkpoint with %d sparse modules to %s.", len(found), final)
    return final


def _effective_state_dict_kwargs(model: nn.Module, found: Dict[str, nn.Module], kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Adds a ``state_dict`` holding the effective (masked) weights when some inactive weight is non-zero.

    Algorithms that keep values for inactive weights (top-k with straight-through gradients) would otherwise
    publish weights the sparse model never uses, and vanilla ``from_pretrained`` would load them. Layers in
    ``inactive_mode="frozen"`` are left whole: their frozen inactive weights *are* used by the forward pass.
    """
    leaking = {
        n: m for n, m in found.items()
        if getattr(m, "inactive_mode", "zero") != "frozen" and bool(torch.any(m.weight.detach()[~m.weight_mask] != 0))
    }
    if not leaking or "state_dict" in kwargs:
        return kwargs
    state = model.state_dict()
    for name, m in leaking.items():
        state[f"{name}.weight"] = torch.where(m.weight_mask, m.weight.detach(), 0.0)
    logger.info("Saving effective (masked) weights for %d modules with non-zero inactive weights.", len(leaking))
    return {**kwargs, "state_dict": state}


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
        model._hf_sparse_config = cfg
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
        **kwargs: Passed to ``model_class.from_pretrained`` (e.g. ``dtype``, ``num_labels``).

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

    config = kwargs.pop("config", None) or AutoConfig.from_pretrained(str(directory))
    if getattr(config, "sparse_ift", None):
        # Parallel / Factorized / Doped change the module tree: rebuild it from config.json, load the weights
        # (safetensors only), then put the saved masks on the rebuilt sparse layers below.
        model = from_pretrained_sparse_ift(model_class, directory, masks="nonzero")
    else:
        model = model_class.from_pretrained(str(directory), config=config, **kwargs)
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
