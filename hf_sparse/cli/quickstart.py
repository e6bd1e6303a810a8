"""``hf-sparse quickstart``: registered in `hf_sparse.cli.COMMANDS` (this top-layer module may print)."""

from __future__ import annotations

import argparse


def _add_quickstart_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output_dir", default=None, help="Where checkpoints go (omitted: a new temporary directory).")
    p.add_argument("--pretrain_steps", type=int, default=200, help="DynSparse pre-training steps.")
    p.add_argument("--finetune_steps", type=int, default=60, help="Fixed-mask QA fine-tuning steps.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the synthetic data, masks and training.")
    p.add_argument("--json", action="store_true", help="Print the report as JSON.")


def _run_quickstart(args: argparse.Namespace) -> int:
    """Pre-trains a tiny DynSparse BERT on synthetic text, saves, reloads, fine-tunes, prints the report."""
    import json
    import logging

    import datasets
    from transformers.utils import logging as transformers_logging

    from .quickstart_run import format_report, run_quickstart

    for name in ("hf_sparse", "transformers", "datasets"):  # the report is the output; keep the run quiet
        logging.getLogger(name).setLevel(logging.WARNING)
    transformers_logging.set_verbosity_error()  # e.g. the expected "qa_outputs newly initialised" load report
    transformers_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    for name, value in (("pretrain_steps", args.pretrain_steps), ("finetune_steps", args.finetune_steps)):
        if value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}.")
    report = run_quickstart(args.output_dir, args.pretrain_steps, args.finetune_steps, args.seed)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["masks_fixed_in_finetuning"] else 1


QUICKSTART_COMMANDS = {
    "quickstart": ("Offline end-to-end demo: pre-train a tiny DynSparse BERT on synthetic text, save, reload, "
                   "fine-tune on synthetic QA.", _add_quickstart_args, _run_quickstart),
}
