"""``hf-sparse quickstart``: registered in `hf_sparse.cli.COMMANDS` (this top-layer module may print)."""

from __future__ import annotations

import argparse

# The default output folder, repeated from `quickstart_run.DEFAULT_OUTPUT_DIR` so that building the parser does
# not import that module (tests/test_quickstart.py checks that the two agree).
DEFAULT_OUTPUT_DIR = "hf_sparse_quickstart"


def _add_quickstart_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output_dir", default=DEFAULT_OUTPUT_DIR,
                   help="Folder for the tokenizer, the pre-trained sparse checkpoint and both Trainer runs "
                        "(created; its files are overwritten on a rerun).")
    p.add_argument("--pretrain_steps", type=int, default=120, help="DynSparse pre-training steps.")
    p.add_argument("--finetune_steps", type=int, default=80, help="Fixed-mask QA fine-tuning steps.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the synthetic data, masks and training.")
    p.add_argument("--json", action="store_true", help="Print the report as JSON.")
    p.add_argument("--no_progress", action="store_true",
                   help="Do not name the phases or draw progress bars on stderr.")


def _run_quickstart(args: argparse.Namespace) -> int:
    """Pre-trains a tiny DynSparse BERT on synthetic text, saves, reloads, fine-tunes, prints the report."""
    import json
    import logging
    import sys

    if not args.no_progress:  # the imports below take seconds: say what is happening
        print("hf-sparse quickstart: loading torch and transformers ...", file=sys.stderr, flush=True)
    for name, value in (("pretrain_steps", args.pretrain_steps), ("finetune_steps", args.finetune_steps)):
        if value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}.")
    for name in ("hf_sparse", "transformers", "datasets"):  # the report is the output; keep the run quiet
        logging.getLogger(name).setLevel(logging.WARNING)
    import datasets
    from transformers.utils import logging as transformers_logging

    from .quickstart_run import format_report, run_quickstart

    transformers_logging.set_verbosity_error()  # e.g. the expected "qa_outputs newly initialised" load report
    transformers_logging.disable_progress_bar()  # e.g. "Writing model shards" for a model of a few hundred KB
    datasets.disable_progress_bars()  # the maps over a few hundred synthetic examples take well under a second
    report = run_quickstart(args.output_dir, args.pretrain_steps, args.finetune_steps, args.seed,
                            progress=not args.no_progress)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["masks_fixed_in_finetuning"] and report["reload_exact"] else 1


QUICKSTART_COMMANDS = {
    "quickstart": ("Offline end-to-end demo: pre-train a tiny DynSparse BERT on synthetic text, save, reload, "
                   "fine-tune on synthetic QA.", _add_quickstart_args, _run_quickstart),
}
