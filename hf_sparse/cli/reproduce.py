"""``hf-sparse reproduce``: run (or resume) the reproduction study and write its document.

torch / transformers are imported only when the command runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import os

SUITES = ("smoke", "cpu", "gpu")


def add_reproduce_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", choices=SUITES, default="smoke",
                   help="smoke: every claim at the smallest settings (minutes); cpu: the published suite (~3 "
                        "CPU-hours, resumable); gpu: print the recipe commands that run the claims at the papers' "
                        "scale.")
    p.add_argument("--claims", nargs="+", default=None,
                   help="Claim ids to run (omitted: all); the calibration of their models always runs.")
    p.add_argument("--seeds", type=int, default=None, help="Seeds per arm (omitted: the suite's, 3 for cpu).")
    p.add_argument("--out", default="reproduction/results",
                   help="Folder of the stored runs (runs/<hash>.json) and the corpus cache.")
    p.add_argument("--data_dir", default=os.environ.get("HF_SPARSE_SHARED_DATA", "../shared/data"),
                   help="The shared data folder (text/, pile/); env HF_SPARSE_SHARED_DATA.")
    p.add_argument("--jobs", type=int, default=1, help="Runs side by side, one process of one thread each.")
    p.add_argument("--no_run", action="store_true", help="Only decide and document from the stored runs.")
    p.add_argument("--write", default=None,
                   help="Write the study document here (e.g. REPRODUCTION.md; figures go to reproduction/).")
    p.add_argument("--figures", default="reproduction",
                   help="Folder of the figures written with --write.")
    p.add_argument("--reference", default=None, metavar="DIR",
                   help="After the runs, re-train the sparse BERT arm with the lowest mean eval loss (seed 0), save "
                        "it here as a sparse checkpoint and copy its model card to --card_dir (smoke / cpu only).")
    p.add_argument("--card_dir", default="model_cards",
                   help="Folder the reference checkpoint's model card is copied to (with --reference).")


def run_reproduce(args: argparse.Namespace) -> int:
    """Runs the suite (or prints the gpu commands), prints one line per claim, writes the document if asked."""
    from ..reproduction import gpu_commands, reproduce, write_document

    if args.suite == "gpu":
        if args.reference:  # reported by `main` as a usage error, before anything runs
            raise ValueError("--reference trains the checkpoint on this machine: use --suite smoke or cpu.")
        print("\n".join(gpu_commands()))
        return 0
    decisions = reproduce(args.suite, claims=args.claims, seeds=args.seeds, out_dir=args.out,
                          data_dir=args.data_dir, jobs=args.jobs, run=not args.no_run)
    width = max(len(c) for c in decisions)
    for cid, d in decisions.items():
        print(f"{cid:<{width}}  {d['verdict']}")
    if args.write:
        path = write_document(decisions, args.suite, args.out, args.data_dir, args.write, args.figures)
        print(f"wrote {path}")
    if args.reference:
        from ..reproduction import train_reference

        info = train_reference(args.suite, out_dir=args.out, data_dir=args.data_dir, checkpoint_dir=args.reference,
                               card_dir=args.card_dir, seeds=args.seeds)
        print(f"reference {info['arm']}: eval loss {info['eval_loss']:.4f} (stored seed 0: "
              f"{info['stored_seed0']:.4f}); checkpoint {info['checkpoint']}, card {info['card']}")
    return 0


REPRODUCE_COMMANDS = {
    "reproduce": ("Run the reproduction study of the papers' claims (resumable) and write REPRODUCTION.md.",
                  add_reproduce_args, run_reproduce),
}
