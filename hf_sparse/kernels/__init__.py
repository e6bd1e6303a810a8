"""Optional fast execution of sparse layers: CPU inference conversion, Triton block-sparse training kernels and
2:4 semi-structured inference on GPU. Everything here is checked against the dense masked reference."""

from .cpu import METHODS, MethodChoice, SparseInferenceLinear, numba_available, to_cpu_inference_

__all__ = ["METHODS", "MethodChoice", "SparseInferenceLinear", "numba_available", "to_cpu_inference_"]
