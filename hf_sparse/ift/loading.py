"""Loading a saved Sparse-IFT model: build from ``config.json``, rebuild the structure, load the safetensors.

Sparse Parallel / Factorized / Doped checkpoints have parameter names (``...c_attn.branches.1.weight``) that
the plain architecture lacks, so ``from_pretrained`` alone cannot load them; this helper can. Only
safetensors weights are read (never pickles).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Dict, Type, Union

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


def _check_missing(model: nn.Module, missing, loaded) -> None:
    """Missing keys are fine only for parameters tied to a loaded one, and for buffers."""
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded_ids = {id(params[k]) for k in loaded if k in params}
    bad = [k for k in missing if k in params and id(params[k]) not in loaded_ids]
    if bad:
        raise ValueError(f"The checkpoint lacks parameters of the rebuilt model: {bad[:5]} ({len(bad)} in all).")


def from_pretrained_sparse_ift(
    model_class: Type[nn.Module], path: Union[str, os.PathLike], masks: str = "initial"
) -> nn.Module:
    """Loads a model saved with ``save_pretrained`` after a Sparse-IFT (or any plain transformers model).

    Args:
        model_class: The transformers model class, e.g. ``GPT2LMHeadModel``.
        path: Local checkpoint directory (``config.json`` and ``model.safetensors``).
        masks: ``"initial"``: the masks the transformation drew (right for static sparsity; a weight that is
            non-zero outside them raises instead of being silently masked); ``"nonzero"``: each mask becomes
            the weight's non-zeros (right after dynamic training as long as no active weight is exactly zero;
            hf_sparse's sparse checkpoints store masks exactly); ``"dense"``: densify every sparse layer (for
            a model saved after dense fine-tuning).

    Returns:
        The model in eval mode, like ``from_pretrained``.

    Example:
        >>> model.save_pretrained(tmp)
        >>> again = from_pretrained_sparse_ift(GPT2LMHeadModel, tmp)
    """
    if masks not in MASK_MODES:
        raise ValueError(f"masks={masks!r} must be one of {', '.join(map(repr, MASK_MODES))}.")
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"No config.json in {str(path)!r}.")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path))
    state = _read_state_dict(path)
    # Auto classes (AutoModelForCausalLM, ...) pick the concrete class from the config; others take it directly.
    build = model_class.from_config if hasattr(model_class, "_model_mapping") else model_class
    model = rebuild_sparse_ift_(build(config))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(
            f"{str(path)!r} holds weights the rebuilt {model_class.__name__} does not have: {unexpected[:5]} "
            f"({len(unexpected)} in all); was it saved from another architecture or Sparse-IFT?"
        )
    _check_missing(model, missing, state.keys())
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
    if getattr(config, CONFIG_KEY, None) is None:
        logger.info("%s has no Sparse-IFT record; loaded as a plain %s.", path, model_class.__name__)
    model.eval()
    return model
