"""`SparseInferenceLinear`: one converted layer, holding its masked weight in the representation(s) chosen for it.

A layer can hold two representations: the *main* one, for prefill / encoder inputs of many token rows, and a
*few-rows* one for inputs of at most ``few_rows`` rows (the decode steps of generation with a KV cache, one token
per sequence). Decoding reads every weight once per token, so there the SELL-8 layout of ``"numba_sell"`` (values
plus 8-bit column steps, 8 rows per step; `hf_sparse.kernels._numba_rows`) wins, while for many rows the panel
kernels' FMAs do.
`hf_sparse.kernels.cpu.to_cpu_inference_` picks both by timing them.
"""

from __future__ import annotations

import functools
import threading
import warnings
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .panels import PackCache, pack, packed_view, sequence_panel, unpack

METHODS = ("dense", "torch_csr", "torch_bsr", "numba_csr", "numba_bsr", "numba_sell")
NUMBA_METHODS = ("numba_csr", "numba_bsr", "numba_sell")
#: Panels per thread from which a CSR layer with an unshared row-major input packs each panel inside its task
#: (`csr_matmul_unpacked`) rather than in a separate pass: below it the tasks, whole panels, would leave threads idle.
IN_TASK_PACKING_PANELS_PER_THREAD = 2
#: Element-wise activations a layer can apply to its own output (``activation=``), so that a model's separate
#: activation module can be dropped: the decode kernel applies it per thread while the outputs are in cache.
#: ``"gelu"`` is the erf GELU, ``"gelu_tanh"`` its tanh approximation (GPT-2's ``gelu_new``).
ACTIVATIONS = ("gelu", "gelu_tanh", "relu")
_TORCH_ACTIVATIONS = {"gelu": F.gelu, "gelu_tanh": functools.partial(F.gelu, approximate="tanh"), "relu": F.relu}
#: Per Python thread: torch's thread count when Numba's was last set to follow it (``.torch``), and Numba's (``.numba``).
_THREADS = threading.local()


@functools.lru_cache(maxsize=None)
def load_numba():
    """``(numba, kernels module, None)`` or ``(None, None, reason)`` (the module `_numba_spmm` also carries the
    few-rows kernels of `_numba_rows`); imported on first use because compiling and
    loading Numba takes a noticeable fraction of a second that plain ``import hf_sparse`` should not pay."""
    try:  # optional dependency: `pip install hf_sparse[cpu-kernels]`
        import numba

        from . import _numba_spmm
    except Exception as err:  # ImportError, or a numba/llvmlite build that does not match this numpy
        return None, None, f"{type(err).__name__}: {err}"
    return numba, _numba_spmm, None


def numba_available() -> bool:
    """Whether the Numba CPU kernels can be used (``pip install hf_sparse[cpu-kernels]``)."""
    return load_numba()[1] is not None


def check_method(method: str, shape: tuple, block_size: int) -> None:
    """Raises a `ValueError` / `RuntimeError` naming the problem when ``method`` cannot hold a ``shape`` weight."""
    if method not in METHODS:
        raise ValueError(f"Unknown CPU inference method {method!r}; choose one of {', '.join(METHODS)}.")
    if method in NUMBA_METHODS and not numba_available():
        raise RuntimeError(f"method={method!r} needs numba (pip install 'hf_sparse[cpu-kernels]'): {load_numba()[2]}")
    if method.endswith("_bsr") and (block_size < 1 or shape[0] % block_size or shape[1] % block_size):
        raise ValueError(f"block_size={block_size} does not tile the weight {tuple(shape)}.")
    if method == "numba_bsr" and block_size % 4:
        raise ValueError(f"numba_bsr needs a block size that is a multiple of 4, got {block_size}.")


def to_sparse(weight: torch.Tensor, block_size: int = 1) -> torch.Tensor:
    """PyTorch CSR (``block_size`` 1) or BSR copy of ``weight``, without PyTorch's "sparse CSR support is in beta"
    `UserWarning`: the tensor is only ever used in ``torch.mm``, which the tests check against the dense product, and users cannot act
    on the warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*beta.*")
        if block_size == 1:
            return weight.to_sparse_csr()
        return weight.to_sparse_bsr((block_size, block_size))


class _Representation:
    """The weight stored for one method: a tensor (dense / PyTorch sparse) or NumPy arrays (Numba kernels)."""

    def __init__(self, weight: torch.Tensor, method: str, block_size: int):
        self.method = method
        self.block_size = block_size
        self.tensor: Optional[torch.Tensor] = None
        self.arrays: tuple = ()
        if method == "dense":
            self.tensor = weight.clone()
        elif method == "torch_csr":
            self.tensor = to_sparse(weight)
        elif method == "torch_bsr":
            self.tensor = to_sparse(weight, block_size)
        elif method == "numba_csr":
            spmm = load_numba()[1]
            self.arrays = spmm.chunked_csr(weight, spmm.CSR_COLUMN_CHUNK)
        elif method == "numba_sell":
            self.arrays = load_numba()[1].sell_pack(weight)
        else:
            bsr = to_sparse(weight, block_size)
            self.arrays = (bsr.crow_indices().to(torch.int32).numpy(), bsr.col_indices().to(torch.int32).numpy(),
                           bsr.values().contiguous().numpy())


class SparseInferenceLinear(nn.Module):
    """Inference-only ``y = x W^T + b`` with ``W`` stored in the representation named by ``method``.

    Args:
        weight: Masked weight ``[out, in]`` (``float32``, CPU); inactive entries must be zero.
        bias: Optional bias ``[out]``.
        method: One of `METHODS`, used for inputs of more than ``few_rows`` token rows.
        block_size: Block side for the BSR methods.
        few_rows_method: Method for inputs of at most ``few_rows`` rows (decode steps); ``None`` uses ``method``.
        few_rows: Largest row count (tokens x batch) that goes to ``few_rows_method``.
        activation: One of `ACTIVATIONS` applied to the output (after the bias), or ``None``.

    Example:
        >>> layer = SparseInferenceLinear(torch.eye(4), None, "torch_csr")
        >>> layer(torch.ones(2, 4)).shape
        torch.Size([2, 4])
    """

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], method: str, block_size: int = 1,
                 few_rows_method: Optional[str] = None, few_rows: int = 0, activation: Optional[str] = None):
        super().__init__()
        check_method(method, tuple(weight.shape), block_size)
        if activation is not None and activation not in ACTIVATIONS:
            raise ValueError(f"Unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)} or None.")
        if few_rows_method is not None:
            check_method(few_rows_method, tuple(weight.shape), block_size)
            if few_rows < 1:
                raise ValueError(f"few_rows={few_rows} must be >= 1 when few_rows_method is given.")
        weight = weight.detach().contiguous()
        self.out_features, self.in_features = weight.shape
        self.method = method
        self.block_size = int(block_size)
        if bias is not None and bias.shape != (weight.shape[0],):
            raise ValueError(f"bias of shape {tuple(bias.shape)} does not match {weight.shape[0]} output features.")
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(weight.dtype).clone(), requires_grad=False)
        self.nnz = int(torch.count_nonzero(weight))
        self._main = _Representation(weight, method, self.block_size)
        self.few_rows_method = None if few_rows_method in (None, method) else few_rows_method
        self.few_rows = int(few_rows) if self.few_rows_method else 0
        self._few = _Representation(weight, self.few_rows_method, self.block_size) if self.few_rows_method else None
        self.dtype = weight.dtype
        self.activation = activation
        self._act_code = 0 if activation is None else ACTIVATIONS.index(activation) + 1  # `_numba_rows.ACT_*`
        # The Numba kernels start each output row at its bias (zeros when there is none).
        self._bias_array = (torch.zeros(self.out_features, dtype=weight.dtype) if self.bias is None
                            else self.bias.detach()).numpy()
        #: Return ``[batch, seq, out]`` as a view of the kernel's panel layout (see `hf_sparse.kernels.panels`);
        #: only for layers whose output feeds element-wise ops and then another Numba layer.
        self.packed_output = False
        #: Shared with sibling layers that read the same input (query / key / value) so it is packed once.
        self.pack_cache: Optional[PackCache] = None

    def _torch_matmul(self, rep: _Representation, x: torch.Tensor) -> torch.Tensor:
        """``x W^T + b`` for a 2-D ``x`` through PyTorch (dense, CSR or BSR)."""
        if rep.method == "dense":
            return F.linear(x, rep.tensor, self.bias)
        # Sparse on the left: MKL's sparse x dense path. F.linear(x, W_sparse) would be 3-5x slower than dense.
        y = torch.mm(rep.tensor, x.t()).t()
        return y if self.bias is None else y + self.bias

    @staticmethod
    def _set_threads():
        """The Numba kernels module, with Numba's thread count following torch's (``OMP_NUM_THREADS`` /
        ``torch.set_num_threads``) so both libraries agree. Numba's setting is per calling thread and costs a few
        microseconds, a tenth of a decode-step layer, so it is only made when torch's count changed."""
        numba, spmm, _ = load_numba()
        threads = torch.get_num_threads()
        if getattr(_THREADS, "torch", None) != threads:
            _THREADS.numba = max(1, min(threads, numba.config.NUMBA_NUM_THREADS))
            numba.set_num_threads(_THREADS.numba)
            _THREADS.torch = threads
        return spmm

    def _rows_forward(self, rep: _Representation, x: torch.Tensor) -> torch.Tensor:
        """``x W^T + b`` through the few-rows SELL-8 kernel (row-major input and output, no packing). A decode step
        calls this once per layer and token, so it stays in NumPy: views and allocations cost a third of torch's,
        and at ~20 us per call the wrapper was a quarter of a 90%-sparse layer's time in `generate`."""
        rows = self._set_threads()
        x2 = np.ascontiguousarray((x.detach() if x.requires_grad else x).numpy().reshape(-1, self.in_features))
        y = np.empty((x2.shape[0], self.out_features), dtype=x2.dtype)
        if _THREADS.numba > 1:
            rows.sell_rows_matmul(*rep.arrays, self._bias_array, x2, y, _THREADS.numba, self._act_code)
        else:
            rows.sell_rows_matmul_serial(*rep.arrays, self._bias_array, x2, y, self._act_code)
        return torch.from_numpy(y.reshape(*x.shape[:-1], self.out_features))

    def _panel_forward(self, rep: _Representation, x: torch.Tensor) -> torch.Tensor:
        """``x W^T + b`` through the Numba panel kernels (see `hf_sparse.kernels.panels`)."""
        spmm = self._set_threads()
        seq = sequence_panel(x)
        tokens = x.numel() // self.in_features
        xp = packed_view(x)  # the input may already be in panel layout: then nothing is copied
        if xp is None:
            widest = spmm.BSR_PANEL if rep.method == "numba_bsr" else spmm.CSR_PANEL
            # A packed output needs one whole sequence per panel.
            panel = seq if self.packed_output and seq is not None else spmm.panel_width(tokens, widest)
            packed = self.packed_output and seq is not None
            in_task = tokens >= IN_TASK_PACKING_PANELS_PER_THREAD * _THREADS.numba * panel
            if rep.method == "numba_csr" and self.pack_cache is None and in_task:
                # Enough panels for every thread: each task packs its own panel in cache (no packed copy).
                x2 = np.ascontiguousarray(x.reshape(-1, self.in_features).numpy())
                y = np.empty((0 if packed else tokens, self.out_features), dtype=np.float32)
                yp = np.empty((-(-tokens // panel) if packed else 0, self.out_features, panel), dtype=np.float32)
                spmm.csr_matmul_unpacked(*rep.arrays, self._bias_array, x2, y, yp)
                if packed:
                    return torch.from_numpy(yp).transpose(1, 2)  # [batch, seq, out] view, holding the bias
                return torch.from_numpy(y).view(*x.shape[:-1], self.out_features)
            if self.pack_cache is not None:
                xp = self.pack_cache.get(x, panel, spmm.transpose_panels)
            else:
                xp = pack(x.reshape(-1, x.shape[-1]), panel, spmm.transpose_panels)
        panels, _, panel = xp.shape
        packed = self.packed_output and seq is not None and panel == seq
        if rep.method == "numba_csr" and not packed:  # the kernel writes the row-major output itself
            y = np.empty((tokens, self.out_features), dtype=np.float32)
            spmm.csr_panel_matmul_rows(*rep.arrays, self._bias_array, xp.numpy(), y)
            return torch.from_numpy(y).view(*x.shape[:-1], self.out_features)
        yp = torch.empty(panels, self.out_features, panel, dtype=x.dtype)
        kernel = spmm.csr_panel_matmul if rep.method == "numba_csr" else spmm.bsr_panel_matmul
        kernel(*rep.arrays, self._bias_array, xp.numpy(), yp.numpy())
        if packed:
            return yp.transpose(1, 2)  # [batch, seq, out] view, already holding the bias
        y = unpack(yp, tokens, spmm.transpose_panels)
        return y.reshape(*x.shape[:-1], self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.dtype or not x.is_cpu:
            raise ValueError(
                f"SparseInferenceLinear({self.method}) takes {self.dtype} CPU input, got {x.dtype} on {x.device}."
            )
        if x.requires_grad and torch.is_grad_enabled():
            raise RuntimeError("SparseInferenceLinear is inference-only; run it under torch.no_grad() or "
                               "torch.inference_mode().")
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Expected input with last dimension {self.in_features}, got shape {tuple(x.shape)}.")
        numel = x.numel()
        if not numel:  # every activation in ACTIVATIONS maps 0 to 0
            return x.new_zeros(*x.shape[:-1], self.out_features)
        rep = self._few if numel <= self.few_rows * self.in_features else self._main  # few_rows is 0 without one
        if rep.method == "numba_sell":
            return self._rows_forward(rep, x)  # applies the activation in the kernel
        if rep.method in NUMBA_METHODS:
            y = self._panel_forward(rep, x)
        else:
            y = self._torch_matmul(rep, x.reshape(-1, self.in_features)).reshape(*x.shape[:-1], self.out_features)
        # Element-wise ops keep a packed output's strides, so the next layer still reads it without a copy.
        return y if self.activation is None else _TORCH_ACTIVATIONS[self.activation](y)

    def extra_repr(self) -> str:
        density = self.nnz / (self.out_features * self.in_features)
        block = f", block_size={self.block_size}" if "bsr" in (self.method + str(self.few_rows_method)) else ""
        few = f", few_rows_method={self.few_rows_method} (<= {self.few_rows} rows)" if self.few_rows_method else ""
        act = f", activation={self.activation}" if self.activation else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, method={self.method}{block}"
                f"{few}{act}, density={density:.4f}")
