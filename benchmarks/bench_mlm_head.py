"""Training-step time of BertForPreTraining's default MLM head vs hf_sparse's gathered head.

Run: ``python benchmarks/bench_mlm_head.py [--sizes mini small medium] [--steps 5]``

Both models share weights and batch (batch 32 x 128 tokens, vocab 30,522, 20 masked positions per sequence as
in BERT phase 1) and take AdamW steps alternately in the same process, so the ratio is measured side by side.
The encoder is 90% sparse (unstructured), as in the DynSparse recipes.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import BertConfig, BertForPreTraining

from hf_sparse import SparsityConfig, sparsify_
from hf_sparse.heads import BertForPreTrainingMasked

SIZES = {  # Turc et al. BERT sizes: layers, hidden
    "tiny": (2, 128), "mini": (4, 256), "small": (4, 512), "medium": (8, 512), "base": (12, 768),
}


def _step(model, opt, batch):
    start = time.perf_counter()
    model(**batch).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["mini", "small", "medium"], choices=SIZES)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=32)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}x128, "
          f"vocab 30522, 20 predictions/sequence, median of {args.steps} steps")
    for size in args.sizes:
        layers, hidden = SIZES[size]
        cfg = BertConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=hidden // 64,
                         intermediate_size=4 * hidden)
        torch.manual_seed(0)
        default = BertForPreTraining(cfg)
        gathered = BertForPreTrainingMasked(cfg)
        gathered.load_state_dict(default.state_dict())
        for m in (default, gathered):
            sparsify_(m, SparsityConfig(sparsity=0.9, init="truncated_normal"))
        ids = torch.randint(1000, 30000, (args.batch_size, 128))
        labels = torch.full_like(ids, -100)
        pos = torch.rand(args.batch_size, 128).argsort(1)[:, :20]
        labels.scatter_(1, pos, ids.gather(1, pos))
        batch = dict(input_ids=ids, labels=labels, next_sentence_label=torch.randint(0, 2, (args.batch_size,)))
        opts = [torch.optim.AdamW(m.parameters(), lr=1e-4) for m in (default, gathered)]
        times = {"default": [], "gathered": []}
        for i in range(args.steps + 1):  # the first step of each is a warm-up
            for key, model, opt in (("default", default, opts[0]), ("gathered", gathered, opts[1])):
                t = _step(model, opt, batch)
                if i:
                    times[key].append(t)
        d, g = (sorted(times[k])[len(times[k]) // 2] for k in ("default", "gathered"))
        print(f"BERT-{size:<7} default {d * 1e3:8.1f} ms/step   gathered {g * 1e3:8.1f} ms/step   speed-up {d / g:5.2f}x")


if __name__ == "__main__":
    main()
