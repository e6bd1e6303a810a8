"""The token-panel layout of the Numba CPU kernels, and the ways to pay for it less often.

The kernels (`hf_sparse.kernels._numba_spmm`) read the activation *packed* as ``xp[c, k, j] = X[c * P + j, k]``
(``[panels, in, P]``) and write ``yp[c, o, j] = Y[c * P + j, o]``. Turning a ``[tokens, features]`` activation
into panels and back is a transpose of the whole tensor: on BERT-Base at 90% sparsity (8 x 128 tokens) packing and
unpacking took about a third of the converted encoder's time, as much as half of the kernels themselves. Three
things cut it down:

- `PackCache`: the query, key and value projections receive the *same* tensor, so it is packed once, not three
  times.
- Packed outputs: a ``[batch, seq, out]`` result can be returned as a strided *view* of ``yp`` when the panel is
  one whole sequence (``P = seq``). Element-wise PyTorch ops keep that layout (GELU of it is laid out the same
  way), so the next sparse layer finds its input already packed (`packed_view`) and neither side copies.
  Only safe where the consumer accepts a non-contiguous tensor, so `to_cpu_inference_` switches it on for the
  first projection of a feed-forward block (BERT ``intermediate.dense`` -> GELU -> ``output.dense``).
- Both directions go through a cache-blocked Numba transpose (`_numba_spmm.transpose_panels`).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

#: Sequence lengths a panel can span (``P = seq``) for packed outputs: multiples of 16 up to this width. Wider
#: panels no longer fit the per-core L2 cache with the input rows they stream.
MAX_SEQUENCE_PANEL = 256


def sequence_panel(x: torch.Tensor) -> Optional[int]:
    """``seq`` when a 3-D ``[batch, seq, features]`` input can be processed one sequence per panel, else ``None``."""
    if x.dim() != 3:
        return None
    seq = x.shape[1]
    return seq if 16 <= seq <= MAX_SEQUENCE_PANEL and seq % 16 == 0 else None


def packed_view(x: torch.Tensor) -> Optional[torch.Tensor]:
    """The ``[batch, features, seq]`` panel view of ``x`` when ``x`` already *is* in panel layout (a packed output,
    or an element-wise function of one), else ``None``. No copy is made."""
    if sequence_panel(x) is None:
        return None
    batch, seq, features = x.shape
    if x.stride() != (seq * features, 1, seq):
        return None
    return x.transpose(1, 2)  # contiguous [batch, features, seq]


def _transpose(src: torch.Tensor, dst: torch.Tensor, transpose: Optional[Callable]) -> None:
    """``dst[c] = src[c].T`` for 3-D tensors, through the Numba tile kernel when given (``dst`` contiguous)."""
    if transpose is None:
        dst.copy_(src.transpose(1, 2))
    else:
        transpose(src.contiguous().numpy(), dst.numpy())


def pack(x: torch.Tensor, panel: int, transpose: Optional[Callable] = None) -> torch.Tensor:
    """Packs a 2-D ``[tokens, features]`` activation into ``[panels, features, panel]``, zero-padding the tail.

    Args:
        x: Activation rows.
        panel: Tokens per panel.
        transpose: ``hf_sparse.kernels._numba_spmm.transpose_panels`` (faster), or ``None`` for PyTorch's copy.

    Returns:
        A new contiguous tensor.

    Example:
        >>> pack(torch.arange(6.0).view(3, 2), 2)[1]
        tensor([[4., 0.],
                [5., 0.]])
    """
    tokens, features = x.shape
    full = tokens // panel
    panels = -(-tokens // panel)
    xp = torch.empty(panels, features, panel, dtype=x.dtype)
    if full:
        _transpose(x[: full * panel].reshape(full, panel, features), xp[:full], transpose)
    if panels > full:
        xp[full].zero_()
        xp[full, :, : tokens - full * panel].copy_(x[full * panel:].t())
    return xp


def unpack(yp: torch.Tensor, tokens: int, transpose: Optional[Callable] = None) -> torch.Tensor:
    """``[panels, out, panel]`` back to a contiguous ``[tokens, out]`` (the kernels already added the bias).

    Writing ``[tokens, out]`` from inside the kernel was measured 2-3x slower than this separate pass: a panel's
    stores, one row apart, alias in L1 when ``out`` is a multiple of 1024.

    Args:
        yp: Kernel output in panel layout.
        tokens: Rows to keep (the tail panel may be padded).
        transpose: As for `pack`.

    Returns:
        A contiguous ``[tokens, out]`` tensor (a prefix view when the tail was padded).
    """
    panels, out, panel = yp.shape
    y = torch.empty(panels * panel, out, dtype=yp.dtype)
    _transpose(yp, y.view(panels, panel, out), transpose)
    return y[:tokens]


class PackCache:
    """Packs the input shared by sibling layers (query / key / value) once per call of their parent module.

    The cache is only *open* while its parent module runs (`attach_` installs forward hooks on it), so it never
    holds an activation between forward passes and a layer called on its own always packs afresh. While open, a
    hit needs the very same tensor object (not just its address, which a freed buffer may reuse) and, for tensors
    that have one, the same in-place version counter, so an input edited in place is packed again. Inference
    tensors (``torch.inference_mode``) have no version counter: for them the hit rests on the parent's forward
    passing the same, unmodified tensor to its projections, which is what transformers' attention modules do.
    """

    def __init__(self) -> None:
        # One tuple, replaced whole: a model called from two threads can never pair one tensor with another's pack.
        self._entry: tuple = ()
        self._open = 0
        self._hooks: list = []

    @staticmethod
    def _version(x: torch.Tensor) -> int:
        return -1 if x.is_inference() else x._version

    def get(self, x: torch.Tensor, panel: int, transpose: Optional[Callable] = None) -> torch.Tensor:
        """``x`` (any leading shape, features last) packed for ``panel``; from the cache when it is open and ``x``
        is the very tensor packed last, unchanged (the layers' own reshaped views are new objects each call, so
        the caller's tensor is the key)."""
        entry = self._entry
        if self._open and entry and entry[0] is x and entry[1:3] == (self._version(x), panel):
            return entry[3]
        packed = pack(x.reshape(-1, x.shape[-1]), panel, transpose)
        if self._open:
            self._entry = (x, self._version(x), panel, packed)
        return packed

    def open(self) -> None:
        """Starts a scope in which packs are kept (nested scopes count)."""
        self._open += 1

    def close(self) -> None:
        """Ends a scope; the last one drops the cached tensors."""
        self._open = max(0, self._open - 1)
        if not self._open:
            self._entry = ()

    def attach_(self, parent: torch.nn.Module) -> None:
        """Opens the cache for each forward of ``parent`` (the module calling the sibling layers) and closes it
        after, also when the forward raises."""
        self._hooks.append(parent.register_forward_pre_hook(lambda module, args: self.open()))
        self._hooks.append(parent.register_forward_hook(lambda module, args, out: self.close(), always_call=True))

    def clear(self) -> None:
        """Drops the cached tensors."""
        self._entry = ()
