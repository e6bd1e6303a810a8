"""Forward+backward time of Triton block-sparse BERT-Base layers vs cuBLAS dense, as ratios measured in one run.

Run (CUDA machine): ``python benchmarks/bench_blocksparse_gpu.py [--dtype float16] [--tokens 4096 8192 16384]
[--densities 0.5 0.25 0.1 0.05] [--blocks 16 32 64] [--repeats 20]``, and end to end
``python benchmarks/bench_blocksparse_gpu.py --model [--batch 32 --seq 128] [--semi-structured]``

For every layer shape (768x3072 and 3072x768, ``nn.Linear`` ``[out, in]``), token count, block size and density it
times ``y = layer(x); y.backward(g)`` through `hf_sparse.kernels.triton_blocksparse` (forward, dX and dW over
active blocks) and through ``F.linear`` on the dense weight (cuBLAS), with CUDA events, and prints
``dense / sparse`` (> 1 means the block-sparse layer is faster), followed by the launch config the autotuner
picked for each kernel (forward, dX, dW) at that shape. Autotuning happens in the warm-up calls and is not timed
(``HF_SPARSE_TRITON_AUTOTUNE=0`` times one fixed config per kernel instead). Without CUDA it prints why and
exits 0.

``--model`` times whole training steps of a BERT-Base encoder instead (forward, backward and AdamW, fp32 weights
under autocast to ``--dtype``; a synthetic loss on the last hidden state, so attention, LayerNorm and embeddings
stay dense as in real training): the dense model, the same model block-sparse on the masked PyTorch path, and with
``enable_(model, backend="triton")``; ``--semi-structured`` adds transposable 2:4 through PyTorch's semi-structured
sparse tensors. ``--device cpu`` with ``TRITON_INTERPRET=1`` runs that code path on Triton's CPU interpreter with a
tiny config (``--hidden 64 --layers 1``): a smoke test, its timings mean nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

SHAPES = [(3072, 768), (768, 3072)]  # BERT-Base intermediate (up) and output (down) projections, [out, in]


def _time_ms(fn, repeats: int, device: str = "cuda") -> float:
    for _ in range(3):
        fn()  # warm-up: Triton compiles and autotunes, cuBLAS picks its algorithm
    if device != "cuda":
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - start) * 1e3 / repeats
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def _train_step(model: nn.Module, ids: torch.Tensor, target: torch.Tensor, dtype: torch.dtype):
    """One optimizer step of ``model`` (a ``BertModel``) on a synthetic regression loss, as a closure."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    device = ids.device.type

    def step():
        with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
            hidden = model(input_ids=ids).last_hidden_state
        loss = F.mse_loss(hidden.float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def model_rows(args, dtype: torch.dtype) -> None:
    """End-to-end training steps: dense vs masked block-sparse vs Triton block-sparse (and optionally 2:4)."""
    from transformers import BertConfig, BertModel

    from hf_sparse.config import SparsityConfig
    from hf_sparse.kernels import enable_
    from hf_sparse.kernels.triton_blocksparse import interpreter_active
    from hf_sparse.patching import sparsify_

    config = BertConfig(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                        intermediate_size=4 * args.hidden, vocab_size=args.vocab)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), generator=generator).to(args.device)
    target = torch.randn(args.batch, args.seq, args.hidden, generator=generator).to(args.device)

    def build(sparsity: SparsityConfig = None, backend: str = None) -> nn.Module:
        torch.manual_seed(0)
        model = BertModel(config, add_pooling_layer=False).to(args.device).train()
        if sparsity is not None:
            sparsify_(model, sparsity)
        if backend is not None:
            enable_(model, backend=backend, allow_interpreter=interpreter_active())
        return model

    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (Triton interpreter: smoke test only)"
    print(f"{name}, BERT encoder {args.layers} x {args.hidden}, batch {args.batch} x {args.seq}, {args.dtype} "
          "autocast, ms per training step; speed-up = dense / sparse")
    print(f"{'structure':<16}{'density':>8}{'dense ms':>10}{'masked ms':>11}{'kernel ms':>11}{'speed-up':>10}")
    dense_ms = _time_ms(_train_step(build(), ids, target, dtype), args.repeats, args.device)
    rows = [(f"block {b}x{b}", d, SparsityConfig(sparsity=1 - d, structure="block", block_size=b), "triton")
            for b in args.blocks for d in args.densities]
    if args.semi_structured:
        rows.append(("2:4 transposable", 0.5, SparsityConfig(sparsity=None, structure="nm_transposable"),
                     "semi_structured"))
    for label, density, sparsity, backend in rows:
        masked_ms = _time_ms(_train_step(build(sparsity), ids, target, dtype), args.repeats, args.device)
        kernel_ms = _time_ms(_train_step(build(sparsity, backend), ids, target, dtype), args.repeats, args.device)
        print(f"{label:<16}{density:>8.2f}{dense_ms:>10.2f}{masked_ms:>11.2f}{kernel_ms:>11.2f}"
              f"{dense_ms / kernel_ms:>9.2f}x", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float16")
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--densities", type=float, nargs="+", default=[0.5, 0.25, 0.1, 0.05])
    parser.add_argument("--blocks", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--model", action="store_true", help="time whole BERT encoder training steps")
    parser.add_argument("--semi-structured", action="store_true", help="--model: add a transposable 2:4 row")
    parser.add_argument("--hidden", type=int, default=768, help="--model: hidden size (BERT-Base: 768)")
    parser.add_argument("--layers", type=int, default=12, help="--model: encoder layers")
    parser.add_argument("--heads", type=int, default=12, help="--model: attention heads")
    parser.add_argument("--vocab", type=int, default=30522, help="--model: vocabulary size")
    parser.add_argument("--batch", type=int, default=32, help="--model: sequences per step")
    parser.add_argument("--seq", type=int, default=128, help="--model: tokens per sequence")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="--model: 'cpu' only with TRITON_INTERPRET=1, as a smoke test")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    if args.model and args.device == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            print("bench_blocksparse_gpu: --device cpu needs TRITON_INTERPRET=1 (a smoke test of the code path).")
            return 2
        model_rows(args, dtype)
        return 0
    if not torch.cuda.is_available():
        print("bench_blocksparse_gpu: skipped, CUDA is not available (the Triton kernels need a GPU).")
        return 0
    try:
        from hf_sparse.kernels import triton_blocksparse as tb
    except ImportError as err:
        print(f"bench_blocksparse_gpu: skipped, Triton is not importable ({err}).")
        return 0
    if args.model:
        model_rows(args, dtype)
        return 0
    from hf_sparse.layers import SparseLinear
    from hf_sparse.structure import MaskStructure, make_generator, random_mask

    print(f"{torch.cuda.get_device_name()}, {args.dtype}, fwd+bwd ms; speedup = dense / block-sparse")
    print(f"{'out x in':>10}{'tokens':>8}{'block':>6}{'density':>8}{'dense ms':>10}{'sparse ms':>10}{'speedup':>9}"
          "  autotuned configs (fwd | dx | dw)")
    for out_f, in_f in SHAPES:
        for tokens in args.tokens:
            x = torch.randn(tokens, in_f, device="cuda", dtype=dtype, requires_grad=True)
            grad = torch.randn(tokens, out_f, device="cuda", dtype=dtype)
            dense = nn.Linear(in_f, out_f, device="cuda", dtype=dtype)
            dense_ms = _time_ms(lambda: F.linear(x, dense.weight, dense.bias).backward(grad), args.repeats)
            for block in args.blocks:
                structure = MaskStructure("block", block_size=block)
                for density in args.densities:
                    mask = random_mask((out_f, in_f), structure, density, 1, make_generator(0, block, density),
                                       device="cuda")
                    layer = SparseLinear.from_dense(nn.Linear(in_f, out_f, device="cuda", dtype=dtype), mask,
                                                    structure)
                    sparse_ms = _time_ms(lambda: tb.block_sparse_forward(layer, x).backward(grad), args.repeats)
                    chosen = tb.chosen_configs()  # what the timed calls ran with (set on every launch)
                    configs = " | ".join(chosen.get(k, "-") for k in ("fwd", "dx", "dw"))
                    print(f"{out_f:>5}x{in_f:<4}{tokens:>8}{block:>6}{density:>8.2f}{dense_ms:>10.3f}"
                          f"{sparse_ms:>10.3f}{dense_ms / sparse_ms:>8.2f}x  {configs}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
