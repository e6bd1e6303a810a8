"""Cost of the training-FLOPs accounting, measured side by side in one run (process CPU time).

Per optimizer step `SparsityCallback` records each micro-batch shape (a forward pre-hook) and adds three
multiply-adds (`StepFlopsAccumulator.add_batch` / `end_step_`); only after a mask update does it walk the model
again (`refresh_`, one `hf_sparse.flops.count`). Both are compared with one forward + backward of BERT-Mini
(4 layers, hidden 256) on a batch of 8 x 128 tokens at 90% sparsity.

Usage:
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_train_flops.py
"""

from __future__ import annotations

import time

import torch
from transformers import BertConfig, BertForMaskedLM

from hf_sparse.config import SparsityConfig
from hf_sparse.patching import sparsify_
from hf_sparse.flops import StepFlopsAccumulator


def cpu_time(fn, repeat):
    start = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - start) / repeat


def main() -> None:
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                       intermediate_size=1024))
    sparsify_(model, SparsityConfig(sparsity=0.9))
    ids = torch.randint(5, 30000, (8, 128))
    acc = StepFlopsAccumulator(model)

    def train_step():
        model(input_ids=ids, labels=ids).loss.backward()

    def bookkeeping():
        acc.add_batch(8, 128)
        acc.end_step_(1)

    def refresh():
        acc.refresh_(model)

    train_step()  # warm-up
    for _ in range(3):  # interleaved rounds: the shared machine's load hits all three alike
        t_step = cpu_time(train_step, 3)
        t_book = cpu_time(bookkeeping, 2000)
        t_refresh = cpu_time(refresh, 20)
        print(f"fwd+bwd {t_step * 1e3:8.2f} ms | per-step accounting {t_book * 1e6:6.2f} us "
              f"({t_book / t_step:.2e} of a step) | refresh after an update {t_refresh * 1e3:6.2f} ms "
              f"({t_refresh / t_step:.2e} of a step)")


if __name__ == "__main__":
    main()
