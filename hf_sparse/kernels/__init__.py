"""Optional fast execution of sparse layers, always checked against the dense masked reference.

- `to_cpu_inference_`: converts sparse layers to the fastest measured CPU representation for inference.
- `enable_` / `disable_`: route sparse layers through Triton block-sparse kernels (training and inference, CUDA) or
  2:4 semi-structured sparse tensor cores (training and inference, CUDA cc >= 8.0). Off by default; also switched
  on from ``SparsityConfig.kernel_backend`` by the Trainer integration (`enable_from_config_`).

Triton is imported only when its backend is used, so this package imports on machines without it.
"""

from .benchmark import GenerationBenchmark, InferenceBenchmark, benchmark_generation, benchmark_inference
from .cpu import MethodChoice, to_cpu_inference_
from .inference_linear import METHODS, SparseInferenceLinear, numba_available
from .dispatch import BACKENDS, active_backends, disable_, enable_, enable_from_config_


def refresh_layout_(model) -> int:
    """Rebuilds the Triton block layouts of every sparse layer using the Triton backend (layouts already follow
    ``set_mask_`` automatically; this is for masks edited behind PyTorch's version counter, e.g. via ``.data``).

    Returns:
        The number of layouts rebuilt.
    """
    from . import triton_blocksparse as tb

    rebuilt = 0
    for module in model.modules():
        if getattr(module, "_hf_sparse_backend", None) == "triton":
            tb.refresh_layout_(module)
            rebuilt += 1
    return rebuilt


__all__ = [
    "BACKENDS", "METHODS", "GenerationBenchmark", "InferenceBenchmark", "MethodChoice", "SparseInferenceLinear", "active_backends",
    "benchmark_generation", "benchmark_inference", "disable_", "enable_", "enable_from_config_", "numba_available", "refresh_layout_", "to_cpu_inference_",
]
