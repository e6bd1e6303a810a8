"""Dynamic sparse training overheads, measured side by side in one run.

1. Step time of BERT-Mini MLM training with the same ``Trainer`` setup: dense vs ``SparseTrainer`` at s=0.9
   (dynsparse, unstructured and 16x16 blocks, with pattern updates inside the measured window). The sparse
   layers use the masked dense matmul, so this measures hf_sparse's bookkeeping overhead, not a sparse speed-up.
2. Wall time of one mask update over all BERT-Base encoder weight shapes (12 x [4 x 768x768, 3072x768,
   768x3072]) per algorithm, as a ratio to one AdamW step over the same weights.

On CPU both are timed in process CPU time (``--wall`` for wall-clock): on a shared machine wall time mostly
measures the neighbours' load. Dense and sparse runs are interleaved in rounds for the same reason.

Usage:
    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/bench_dst.py [--device cpu|cuda] [--layers 12]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch import nn
from transformers import BertConfig, BertForMaskedLM, Trainer, TrainerCallback, TrainingArguments

from hf_sparse.config import DynamicSparsityConfig, SparsityConfig
from hf_sparse.controller import SparsityController
from hf_sparse.trainer import SparseTrainer


def clock() -> float:
    """Process CPU time on CPU runs: on a shared machine wall time mostly measures the neighbours' load."""
    return time.process_time() if CLOCK["cpu"] else time.perf_counter()


CLOCK = {"cpu": False}


class StepTimer(TrainerCallback):
    """Times whole optimizer steps (begin to next begin, so every callback's on_step_end is included)."""

    def __init__(self):
        self.starts = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.starts.append(clock())

    def on_train_end(self, args, state, control, **kwargs):
        self.starts.append(clock())

    def step_times(self, skip: int):
        return [b - a for a, b in zip(self.starts[skip:], self.starts[skip + 1 :])]


def bert_mini():
    torch.manual_seed(0)
    return BertForMaskedLM(BertConfig(vocab_size=30522, hidden_size=256, num_hidden_layers=4,
                                      num_attention_heads=4, intermediate_size=1024))


def mlm_data(n, seq):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (n, seq), generator=g)
    labels = torch.where(torch.rand(n, seq, generator=g) < 0.15, ids, torch.full_like(ids, -100))
    return [{"input_ids": ids[i], "labels": labels[i]} for i in range(n)]


def time_trainer(kind: str, steps: int, batch: int, seq: int, device: str) -> float:
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(out, max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-4,
                                 save_strategy="no", report_to=[], logging_steps=10_000, disable_tqdm=True,
                                 use_cpu=device == "cpu", seed=0)
        common = dict(model=bert_mini(), args=args, train_dataset=mlm_data(steps * batch, seq), callbacks=[timer])
        if kind == "dense":
            trainer = Trainer(**common)
        else:
            structure = "block" if kind.endswith("block16") else "unstructured"
            trainer = SparseTrainer(
                **common, sparsity_config=SparsityConfig(sparsity=0.9, structure=structure, block_size=16),
                dynamic_config=DynamicSparsityConfig(algorithm="dynsparse", num_updates=steps // 4),
            )
        trainer.train()
    return statistics.median(timer.step_times(skip=2))


class BertBaseShapes(nn.Module):
    """Only the encoder weight matrices of BERT-Base (the layers DynSparse makes sparse)."""

    def __init__(self, layers: int):
        super().__init__()
        shapes = {"q": (768, 768), "k": (768, 768), "v": (768, 768), "o": (768, 768),
                  "up": (768, 3072), "down": (3072, 768)}
        self.names = [f"l{i}_{k}" for i in range(layers) for k in shapes]
        for name in self.names:
            fan_in, fan_out = shapes[name.split("_", 1)[1]]
            self.add_module(name, nn.Linear(fan_in, fan_out))

    def forward(self, x768):
        return sum(getattr(self, n)(x768 if getattr(self, n).in_features == 768 else x768.repeat(1, 4)).sum()
                   for n in self.names)


def time_update(algorithm: str, structure: str, layers: int, device: str, repeats: int = 3):
    torch.manual_seed(0)
    model = BertBaseShapes(layers).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sparsity = SparsityConfig(sparsity=None if structure == "nm" else 0.9, structure=structure, block_size=16,
                              target_modules=model.names, mask_init="random")
    dyn = DynamicSparsityConfig(algorithm=algorithm, update_interval=1, end_fraction=1.0) if algorithm != "static" \
        else DynamicSparsityConfig(algorithm="static")
    ctrl = SparsityController(model, opt, sparsity, dyn, total_steps=1000)
    x = torch.randn(1, 768, device=device)
    update_times, opt_times = [], []
    for step in range(1, repeats + 2):
        model(x).backward()  # RigL captures the dense gradient here; the others ignore it
        sync(device)
        t0 = clock()
        opt.step()
        sync(device)
        t1 = clock()
        opt.zero_grad()
        ctrl.step(step)
        sync(device)
        t2 = clock()
        if step > 1:  # the first round warms up allocators and caches
            opt_times.append(t1 - t0)
            update_times.append(t2 - t1)
    return statistics.median(update_times), statistics.median(opt_times)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--part", choices=("all", "steps", "updates"), default="all")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--layers", type=int, default=12, help="BERT-Base encoder layers for the update timing")
    parser.add_argument("--wall", action="store_true", help="time wall-clock instead of process CPU time on CPU")
    args = parser.parse_args()
    CLOCK["cpu"] = args.device == "cpu" and not args.wall
    print(f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"clock={'process CPU time' if CLOCK['cpu'] else 'wall'}")

    if args.part in ("all", "steps"):
        step_time_ratios(args)
    if args.part in ("all", "updates"):
        update_costs(args)


def step_time_ratios(args) -> None:
    kinds = ("dense", "dynsparse s=0.9 unstructured", "dynsparse s=0.9 block16")
    print(f"\n[1] BERT-Mini MLM step time, batch {args.batch} x seq {args.seq}, {args.steps} steps per run, "
          f"{args.rounds} interleaved rounds (median step time per run; ratio = median over rounds)")
    times = {k: [] for k in kinds}
    for _ in range(args.rounds):  # interleaved, so drifting machine load hits every configuration alike
        for kind in kinds:
            times[kind].append(time_trainer(kind, args.steps, args.batch, args.seq, args.device))
    for kind in kinds:
        ratios = [t / d for t, d in zip(times[kind], times["dense"])]
        per_round = " ".join(f"{t * 1e3:.0f}" for t in times[kind])
        print(f"  {kind:29s} ms/step per round [{per_round}]   ratio {statistics.median(ratios):.3f}")


def update_costs(args) -> None:
    print(f"\n[2] One mask update over BERT-Base encoder shapes ({args.layers} layers), median of 3")
    for algorithm, structure in (("static", "unstructured"), ("dynsparse", "unstructured"), ("dynsparse", "block"),
                                 ("set", "unstructured"), ("rigl", "unstructured"), ("rigl", "block"),
                                 ("gmp", "unstructured"), ("topk", "unstructured"), ("topk", "nm")):
        upd, step = time_update(algorithm, structure, args.layers, args.device)
        print(f"  {algorithm:9s} {structure:12s} update {upd * 1e3:9.1f} ms   = {upd / step:6.2f} x AdamW step "
              f"({step * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
