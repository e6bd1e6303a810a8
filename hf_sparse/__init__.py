"""hf_sparse: sparse pre-training and fine-tuning for Hugging Face Transformers and Accelerate.

Example:
    >>> import hf_sparse
    >>> hf_sparse.sparsify_(model, hf_sparse.SparsityConfig(sparsity=0.9, structure="unstructured"))
    >>> print(hf_sparse.sparsity_report(model))
    >>> hf_sparse.densify_(model)
"""

from . import flops, ift, kernels
from .checkpoint import from_pretrained, save_pretrained
from .config import DynamicSparsityConfig, RegularizerConfig, SparseIFTConfig, SparsityConfig
from .controller import SparsityController
from .export import ExportReport, export, load_compressed
from .heads import BertForPreTrainingMasked
from .hub import push_to_hub
from .mask_io import CheckpointError
from .metrics import ThresholdSparsityTracker, inference_advantage, pretraining_advantage, threshold_sparsity
from .metrics_callback import MetricsCallback
from .regularizers import RegularizerCallback, add_penalty, build_regularizer, fold_
from .model_card import render_model_card
from .layers import SparseConv1D, SparseLinear, is_sparse_module
from .patching import (
    DEFAULT_TARGET_MODULES,
    densify_,
    find_target_modules,
    get_sparsity_config,
    set_straight_through_,
    sparse_modules,
    sparsify_,
)
from .report import LayerSparsity, SparsityReport, sparsity_report
from .ift import (
    SparseDoped,
    SparseFactorized,
    SparseParallel,
    apply_sparse_ift,
    from_pretrained_sparse_ift,
    get_sparse_ift_config,
    rebuild_sparse_ift_,
    sparse_ift_,
)
from .lr_rule import sparse_lr
from .reporting import load_run, write_report
from .structure import MaskStructure
from .train_flops import StepFlopsAccumulator
from .trainer import SparseTrainer, SparsityCallback
from .version import __version__

__all__ = [
    "StepFlopsAccumulator",
    "load_run",
    "write_report",
    "DynamicSparsityConfig",
    "SparseTrainer",
    "SparsityCallback",
    "SparsityController",
    "sparse_lr",
    "MetricsCallback",
    "RegularizerCallback",
    "RegularizerConfig",
    "ThresholdSparsityTracker",
    "add_penalty",
    "build_regularizer",
    "fold_",
    "inference_advantage",
    "pretraining_advantage",
    "threshold_sparsity",
    "BertForPreTrainingMasked",
    "CheckpointError",
    "ExportReport",
    "export",
    "from_pretrained",
    "load_compressed",
    "push_to_hub",
    "render_model_card",
    "save_pretrained",
    "DEFAULT_TARGET_MODULES",
    "LayerSparsity",
    "MaskStructure",
    "SparseConv1D",
    "SparseDoped",
    "SparseFactorized",
    "SparseIFTConfig",
    "SparseParallel",
    "SparseLinear",
    "SparsityConfig",
    "SparsityReport",
    "__version__",
    "apply_sparse_ift",
    "flops",
    "from_pretrained_sparse_ift",
    "get_sparse_ift_config",
    "ift",
    "kernels",
    "rebuild_sparse_ift_",
    "sparse_ift_",
    "densify_",
    "find_target_modules",
    "get_sparsity_config",
    "is_sparse_module",
    "set_straight_through_",
    "sparse_modules",
    "sparsify_",
    "sparsity_report",
]
