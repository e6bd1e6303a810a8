"""Loading a saved Sparse-IFT model: build from ``config.json``, rebuild the structure, load the safetensors.

Sparse Parallel / Factorized / Doped checkpoints have parameter names (``...c_attn.branches.1.weight``) that
the plain architecture lacks, so ``from_pretrained`` alone cannot load them; this helper can. It behaves like
transformers' ``from_pretrained`` across heads (a BERT pre-training checkpoint into ``BertForQuestionAnswering``,
a GPT-2 LM into ``GPT2ForSequenceClassification(num_labels=3)``, a head model into its bare base model and back):
unused head weights are dropped and new ones initialised, both reported, and config keyword arguments reach the
config. Only safetensors weights are read (never pickles).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Type, Union

import torch
from safetensors.torch import load_file
from torch import nn

from ..patching import densify_, sparse_modules
from .transform import CONFIG_KEY, rebuild_sparse_ift_

logger = logging.getLogger(__name__)

MASK_MODES = ("initial", "nonzero", "dense")


def _read_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        state: Dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(str(path / shard)))
        return state
    raise FileNotFoundError(f"No model.safetensors (or sharded index) in {str(path)!r}; only safetensors are read.")


_DTYPE_KEYS = ("dtype", "torch_dtype")


def _resolve_dtype(value, config) -> Optional[torch.dtype]:
    """``dtype`` as ``from_pretrained`` takes it: a ``torch.dtype``, its name, or ``"auto"`` (the config's)."""
    if value is None or isinstance(value, torch.dtype):
        return value
    if value == "auto":
        value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        if value is None or isinstance(value, torch.dtype):
            return value
    resolved = getattr(torch, str(value).replace("torch.", ""), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"dtype={value!r} is not a torch dtype (e.g. torch.float16, 'bfloat16' or 'auto').")
    return resolved


def _base_prefix(model: nn.Module) -> str:
    prefix = getattr(model, "base_model_prefix", "") or ""
    child = getattr(model, prefix, None) if prefix else None
    return prefix if isinstance(child, nn.Module) and child is not model else ""


def _align_prefix(state: Dict[str, torch.Tensor], targets: List[str], model: nn.Module):
    """Maps checkpoint names onto ``model``'s base-model prefix, as transformers' ``from_pretrained`` does.

    A bare base model's checkpoint (``encoder...``) loads into a head model (``bert.encoder...``) and a head
    model's checkpoint into the bare base model (its head weights are then unused); checkpoints of one head
    loaded into another head of the same base model need no change.

    Returns:
        ``(state, targets, unused)``: the renamed weights and Sparse-IFT target names, and the names of
        checkpoint weights outside the base model that a bare base model cannot use.
    """
    name = getattr(model, "base_model_prefix", "") or ""
    if not name:
        return state, targets, []
    dot = name + "."
    saved_with_prefix = any(k.startswith(dot) for k in state)
    if _base_prefix(model) and not saved_with_prefix:  # base-model checkpoint into a head model
        return {dot + k: v for k, v in state.items()}, [dot + t for t in targets], []
    if not _base_prefix(model) and saved_with_prefix:  # head-model checkpoint into the bare base model
        kept = {k[len(dot):]: v for k, v in state.items() if k.startswith(dot)}
        unused = sorted(k for k in state if not k.startswith(dot))
        return kept, [t[len(dot):] if t.startswith(dot) else t for t in targets], unused
    return state, targets, []


def _check_keys(model: nn.Module, path: Path, missing, unexpected, loaded, unused=()) -> None:
    """Raises on weights that contradict the rebuilt base model; reports head weights like transformers.

    The task heads may differ: a pre-training head is dropped when fine-tuning (``cls.*`` into
    ``BertForQuestionAnswering``), a new head is freshly initialised (``score.weight`` of
    ``GPT2ForSequenceClassification``), and so is a whole base-model part the other side lacks (BERT's pooler).
    A weight missing or unexpected *inside* a part both sides have (``bert.encoder``) means another architecture
    or another Sparse-IFT: that is an error. Missing buffers and parameters tied to a loaded one are fine.
    """
    prefix = _base_prefix(model)
    dot = prefix + "." if prefix else ""

    def part(key: str) -> Optional[str]:  # the base-model part holding ``key`` ("bert.encoder"), None for heads
        if not key.startswith(dot):
            return None
        return dot + key[len(dot):].split(".", 1)[0]

    params = dict(model.named_parameters(remove_duplicate=False))
    loaded_ids = {id(params[k]) for k in loaded if k in params}
    missing = [k for k in missing if k in params and id(params[k]) not in loaded_ids]
    loaded_parts = {part(k) for k in loaded} - {None}
    model_parts = {part(k) for k, _ in model.named_parameters(remove_duplicate=False)} - {None}
    bad_missing = [k for k in missing if part(k) in loaded_parts]
    bad_unexpected = [k for k in unexpected if part(k) in model_parts]
    name = type(model).__name__
    if bad_missing or bad_unexpected:
        raise ValueError(
            f"{str(path)!r} does not fit the rebuilt {name}: missing weights {bad_missing[:5]} "
            f"({len(bad_missing)} in all), unexpected weights {bad_unexpected[:5]} ({len(bad_unexpected)} in all) "
            "inside its base model; was it saved from another architecture or Sparse-IFT?"
        )
    unexpected = sorted([*unexpected, *unused])
    if unexpected:
        logger.warning(
            "Some weights of the checkpoint at %s were not used when initializing %s: %s. This is expected when "
            "the checkpoint was trained with another head (e.g. pre-training weights loaded for fine-tuning).",
            path, name, unexpected,
        )
    if missing:
        logger.warning(
            "Some weights of %s were not initialized from the checkpoint at %s and are newly initialized: %s. "
            "Train this model on a down-stream task before using it for predictions.",
            name, path, sorted(missing),
        )


def from_pretrained_sparse_ift(
    model_class: Type[nn.Module], path: Union[str, os.PathLike], masks: str = "initial", **kwargs
) -> nn.Module:
    """Loads a model saved with ``save_pretrained`` after a Sparse-IFT (or any plain transformers model).

    Like transformers' ``from_pretrained``, any head class of the saved base model works: unused head weights
    of the checkpoint (a pre-training head when fine-tuning) are dropped with a warning, head weights the
    checkpoint lacks are newly initialised (reported too), and weights of the base model must all fit.

    Args:
        model_class: The transformers model class, e.g. ``GPT2LMHeadModel`` or ``BertForQuestionAnswering``.
        path: Local checkpoint directory (``config.json`` and ``model.safetensors``).
        masks: ``"initial"``: the masks the transformation drew (right for static sparsity; a weight that is
            non-zero outside them raises instead of being silently masked); ``"nonzero"``: each mask becomes
            the weight's non-zeros (right after dynamic training as long as no active weight is exactly zero;
            hf_sparse's sparse checkpoints store masks exactly); ``"dense"``: densify every sparse layer (for
            a model saved after dense fine-tuning).
        **kwargs: As for ``from_pretrained``: ``config`` (a config object), ``dtype`` (a ``torch.dtype``, its
            name or ``"auto"``), config overrides (``num_labels=3``, ...); the rest goes to the model's
            constructor.

    Returns:
        The model in eval mode, like ``from_pretrained``.

    Example:
        >>> model.save_pretrained(tmp)
        >>> again = from_pretrained_sparse_ift(GPT2LMHeadModel, tmp)
        >>> classifier = from_pretrained_sparse_ift(GPT2ForSequenceClassification, tmp, num_labels=3)
    """
    if masks not in MASK_MODES:
        raise ValueError(f"masks={masks!r} must be one of {', '.join(map(repr, MASK_MODES))}.")
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"No config.json in {str(path)!r}.")
    from transformers import AutoConfig

    kwargs = dict(kwargs)
    dtype_value = None
    for key in _DTYPE_KEYS:
        dtype_value = kwargs.pop(key, None) or dtype_value
    config = kwargs.pop("config", None)
    if config is None:
        config, model_kwargs = AutoConfig.from_pretrained(str(path), return_unused_kwargs=True, **kwargs)
    else:
        config, model_kwargs = copy.deepcopy(config), kwargs
    dtype = _resolve_dtype(dtype_value, config)
    # Auto classes (AutoModelForCausalLM, ...) pick the concrete class from the config; others take it directly.
    build = model_class.from_config if hasattr(model_class, "_model_mapping") else model_class
    model = build(config, **model_kwargs)
    record = getattr(model.config, CONFIG_KEY, None)
    targets = list(record["targets"]) if isinstance(record, dict) and isinstance(record.get("targets"), list) else []
    state, targets, unused = _align_prefix(_read_state_dict(path), targets, model)
    if targets:  # the Sparse-IFT modules carry the names of the class being built
        setattr(model.config, CONFIG_KEY, {**record, "targets": targets})
    rebuild_sparse_ift_(model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    _check_keys(model, path, missing, unexpected, state.keys(), unused)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    found = sparse_modules(model)
    with torch.no_grad():
        if masks == "dense" and found:
            densify_(model)
        elif masks == "nonzero":
            for m in found.values():
                m.set_mask_(m.weight != 0, zero_inactive=False)
        else:
            outside = {n: int(torch.count_nonzero(m.weight[~m.weight_mask])) for n, m in found.items()}
            outside = {n: c for n, c in outside.items() if c}
            if outside:
                raise ValueError(
                    f"Weights of {str(path)!r} are non-zero outside the initial masks of {len(outside)} layers "
                    f"(e.g. {next(iter(outside))!r}): the masks changed during training. Load with "
                    "masks='nonzero', masks='dense', or through hf_sparse's sparse checkpoint loader."
                )
    if dtype is not None:
        model.to(dtype)
        config.dtype = dtype
    if getattr(config, CONFIG_KEY, None) is None:
        logger.info("%s has no Sparse-IFT record; loaded as a plain %s.", path, model_class.__name__)
    model.eval()
    return model
