"""Saving sparse checkpoints (`save_pretrained`) and the per-module records they hold.

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
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Union

import torch
from torch import nn

from . import masks as mask_io
from .atomic import apply_umask_, atomic_directory, in_place_directory, is_main_process as _is_main_process
from .read import FORMAT_VERSION, LAYOUTS, SPARSITY_CONFIG_NAME
from .masks import MASKS_NAME
from ..controller.sharding import gathered_for_saving, is_sharded
from ..patching import get_sparsity_config, sparse_modules
from ..version import __version__

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
        card_info: Model card inputs (`card.render_model_card`, keys `card.CARD_KEYS`): ``base_model``,
            ``datasets`` (Hub ids, for the YAML header), ``training_data`` / ``eval_data`` (file names or Hub ids
            with config and split, listed in the card), ``eval_results`` (``huggingface_hub.EvalResult`` keyword
            dicts plus an optional ISO ``"date"``, default: today, UTC), ``papers`` (extra keys of
            `citations.PAPERS`), ``intended_use`` / ``limitations`` (extra text), ``license``, ``language``,
            ``model_name``, ``title``, ``algorithm``, ``tags``, ``repo_id``, ``training_command`` (the command
            that trained it, shown in the card's summary).
        tokenizer: A tokenizer / processor saved alongside (anything with ``save_pretrained``).
        is_main_process: Whether this process writes; by default rank 0 of a ``torch.distributed`` /
            Accelerate run (the others return ``None`` without writing). With FSDP2-sharded weights
            (``fully_shard``) every process must call this: they gather the whole weights and masks onto the main
            process's CPU together.
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
    from .card import prepare_card_info, render_model_card

    found = sparse_modules(model)
    if not found:
        raise ValueError(f"{type(model).__name__} has no sparse modules; save it with model.save_pretrained.")
    if is_sharded(found):
        # FSDP2: every process takes part in gathering the whole weights and masks; only the main one holds them
        # (on the CPU) and writes the same checkpoint a one-process run would.
        main = _is_main_process(is_main_process)
        with gathered_for_saving(model, main) as whole:
            if not whole:
                return None
            return save_pretrained(
                model, save_directory, dynamic_config=dynamic_config, ift_config=ift_config,
                training_stats=training_stats, card_info=card_info, tokenizer=tokenizer, is_main_process=True,
                atomic=atomic, **kwargs,
            )
    if tokenizer is not None and not hasattr(tokenizer, "save_pretrained"):
        raise TypeError(f"tokenizer must have save_pretrained(), got {type(tokenizer).__name__}.")
    if kwargs.get("push_to_hub"):
        raise ValueError("push_to_hub=True would upload without masks; use hf_sparse.push_to_hub instead.")
    cfg = get_sparsity_config(model)
    record = {
        "format_version": FORMAT_VERSION,
        "hf_sparse_version": __version__,
        "model_class": architecture_name(model),
        "model_type": getattr(getattr(model, "config", None), "model_type", None),
        "base_model_prefix": _base_prefix(model),
        "sparsity_config": cfg.to_dict() if cfg is not None else None,
        "dynamic_config": _as_dict(dynamic_config, "dynamic_config"),
        "ift_config": _as_dict(ift_config, "ift_config"),
        "training_stats": _as_dict(training_stats, "training_stats"),
        "card": {"repo_id": str(save_directory), **prepare_card_info(_as_dict(card_info, "card_info"))},
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
        with _quiet_shard_progress(model, kwargs):
            model.save_pretrained(str(tmp), **_effective_state_dict_kwargs(model, found, kwargs))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        mask_io.save_masks(masks, tmp / MASKS_NAME)
        apply_umask_([tmp / f for f in (*mask_io.weight_files(tmp), MASKS_NAME)])
        record["files"] = {f: mask_io.file_sha256(tmp / f) for f in (*mask_io.weight_files(tmp), MASKS_NAME)}
        (tmp / SPARSITY_CONFIG_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        card.save(str(tmp / MODEL_CARD_NAME))
    logger.info("Saved sparse checkpoint with %d sparse modules to %s.", len(found), final)
    return final


def architecture_name(model: nn.Module) -> str:
    """The transformers class name a checkpoint of ``model`` records (``BertForPreTrainingMasked`` saves as
    ``BertForPreTraining``: same weights, and a class vanilla transformers has)."""
    return getattr(model, "checkpoint_architecture", None) or type(model).__name__


@contextmanager
def _quiet_shard_progress(model: nn.Module, kwargs: Dict[str, Any]) -> Iterator[None]:
    """Silences transformers' "Writing model shards" bar while a checkpoint fits one shard.

    One shard makes the bar jump from 0/1 to 1/1: noise in every log (tests write hundreds of tiny checkpoints).
    Sharded saves of large models keep it.
    """
    from transformers.utils import logging as hf_logging

    limit = kwargs.get("max_shard_size", "50GB")
    try:
        from transformers.utils.hub import convert_file_size_to_int

        limit = convert_file_size_to_int(limit)
    except (ImportError, ValueError):
        limit = None
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    quiet = limit is not None and size <= limit and hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet:
            hf_logging.enable_progress_bar()


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
