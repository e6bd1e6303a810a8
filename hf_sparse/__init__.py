"""hf_sparse: sparse pre-training and fine-tuning for Hugging Face Transformers and Accelerate.

Importing the package is cheap: every public name is loaded from its subpackage on first use (as transformers
does), so ``import hf_sparse`` and ``hf-sparse --help`` import neither ``transformers.Trainer`` nor matplotlib,
datasets or evaluate. The layers of the package are listed in the README's Layout section.

Example:
    >>> import hf_sparse
    >>> hf_sparse.sparsify_(model, hf_sparse.SparsityConfig(sparsity=0.9, structure="unstructured"))
    >>> print(hf_sparse.sparsity_report(model))
    >>> hf_sparse.densify_(model)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Dict, List

from .version import __version__

# Public name -> the module that defines it. Subpackages are importable attributes too (`_SUBMODULES`).
_LAZY: Dict[str, str] = {
    **dict.fromkeys(("DynamicSparsityConfig", "RegularizerConfig", "SparseIFTConfig", "SparsityConfig"), "config"),
    "MaskStructure": "structure",
    **dict.fromkeys(("SparseConv1D", "SparseLinear", "is_sparse_module"), "layers"),
    **dict.fromkeys(("DEFAULT_TARGET_MODULES", "find_target_modules", "module_group"), "targets"),
    **dict.fromkeys(
        ("densify_", "get_sparsity_config", "set_sparsity_config", "set_straight_through_", "sparse_modules",
         "sparsify_"),
        "patching",
    ),
    **dict.fromkeys(
        ("SparseDoped", "SparseFactorized", "SparseParallel", "apply_sparse_ift", "from_pretrained_sparse_ift",
         "get_sparse_ift_config", "rebuild_sparse_ift_", "sparse_ift_"),
        "ift",
    ),
    **dict.fromkeys(("build_algorithm", "register_algorithm"), "algorithms"),
    "SparsityController": "controller",
    "sparse_lr": "lr_rule",
    "StepFlopsAccumulator": "flops",
    **dict.fromkeys(
        ("RegularizerCallback", "add_penalty", "build_regularizer", "fold_", "register_regularizer"), "regularizers"
    ),
    **dict.fromkeys(
        ("MetricsCallback", "ThresholdSparsityTracker", "inference_advantage", "pretraining_advantage",
         "threshold_sparsity"),
        "metrics",
    ),
    **dict.fromkeys(
        ("CheckpointError", "ExportReport", "export", "from_pretrained", "load_compressed", "push_to_hub",
         "render_model_card", "save_pretrained"),
        "checkpoint",
    ),
    "BertForPreTrainingMasked": "heads",
    **dict.fromkeys(("DistillationConfig", "SparseTrainer", "SparsityCallback"), "trainer"),
    **dict.fromkeys(("LayerSparsity", "SparsityReport", "load_run", "sparsity_report", "write_report"), "reporting"),
}
_SUBMODULES = (
    "algorithms", "checkpoint", "cli", "config", "controller", "data", "flops", "heads", "ift", "kernels", "layers",
    "lr_rule", "metrics", "patching", "regularizers", "reporting", "structure", "targets", "trainer",
)

__all__ = sorted({*_LAZY, "__version__", "flops", "ift", "kernels"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # cache: later lookups do not come back here
    return value


def __dir__() -> List[str]:
    return sorted({*globals(), *_LAZY, *_SUBMODULES})


if TYPE_CHECKING:  # static analysers and IDEs see the real names
    from . import flops, ift, kernels  # noqa: F401
    from .algorithms import build_algorithm, register_algorithm  # noqa: F401
    from .checkpoint import (  # noqa: F401
        CheckpointError, ExportReport, export, from_pretrained, load_compressed, push_to_hub, render_model_card,
        save_pretrained,
    )
    from .config import DynamicSparsityConfig, RegularizerConfig, SparseIFTConfig, SparsityConfig  # noqa: F401
    from .controller import SparsityController  # noqa: F401
    from .flops import StepFlopsAccumulator  # noqa: F401
    from .heads import BertForPreTrainingMasked  # noqa: F401
    from .ift import (  # noqa: F401
        SparseDoped, SparseFactorized, SparseParallel, apply_sparse_ift, from_pretrained_sparse_ift,
        get_sparse_ift_config, rebuild_sparse_ift_, sparse_ift_,
    )
    from .layers import SparseConv1D, SparseLinear, is_sparse_module  # noqa: F401
    from .lr_rule import sparse_lr  # noqa: F401
    from .metrics import (  # noqa: F401
        MetricsCallback, ThresholdSparsityTracker, inference_advantage, pretraining_advantage, threshold_sparsity,
    )
    from .patching import (  # noqa: F401
        densify_, get_sparsity_config, set_sparsity_config, set_straight_through_, sparse_modules, sparsify_,
    )
    from .regularizers import (  # noqa: F401
        RegularizerCallback, add_penalty, build_regularizer, fold_, register_regularizer,
    )
    from .reporting import LayerSparsity, SparsityReport, load_run, sparsity_report, write_report  # noqa: F401
    from .structure import MaskStructure  # noqa: F401
    from .targets import DEFAULT_TARGET_MODULES, find_target_modules, module_group  # noqa: F401
    from .trainer import DistillationConfig, SparseTrainer, SparsityCallback  # noqa: F401
