"""Size of hf_sparse exports and checkpoints against the dense fp32 model, measured side by side.

Run: OMP_NUM_THREADS=1 python benchmarks/export_size.py [--hidden 256 --layers 4 --sparsity 0.9]
Prints, for a randomly initialised BERT (BERT-Mini shape by default), the bytes of the compressed export (fp32
and fp16 values) and of the sparse checkpoint's mask file, relative to dense fp32: for the sparsified encoder
weights alone and for the whole model (embeddings stay dense).
"""

import argparse
import tempfile
from pathlib import Path

import torch
from transformers import BertConfig, BertForMaskedLM

import hf_sparse
from hf_sparse import checkpoint
from hf_sparse.checkpoint import export


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=30522)
    p.add_argument("--sparsity", type=float, default=0.9)
    args = p.parse_args()
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                                       num_attention_heads=max(1, args.hidden // 64), intermediate_size=4 * args.hidden))
    hf_sparse.sparsify_(model, hf_sparse.SparsityConfig(sparsity=args.sparsity, seed=0))
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export(model, Path(tmp) / "fp32")
        fp16 = export(model, Path(tmp) / "fp16", dtype=torch.float16)
        ck = checkpoint.save_pretrained(model, Path(tmp) / "ckpt")
        masks = (ck / "sparsity_masks.safetensors").stat().st_size
    print(f"BERT hidden={args.hidden} layers={args.layers} vocab={args.vocab}, sparsity {args.sparsity}")
    print(f"{'artifact':<34} {'sparse weights':>15} {'whole model':>12}")
    for name, r in (("compressed export, fp32 values", fp32), ("compressed export, fp16 values", fp16)):
        print(f"{name:<34} {r.sparse_ratio:>15.2%} {r.ratio:>12.2%}")
    print(f"{'checkpoint masks file':<34} {masks / fp32.sparse_dense_fp32_bytes:>15.2%} "
          f"{masks / fp32.dense_fp32_bytes:>12.2%}")


if __name__ == "__main__":
    main()
