"""The ``hf-sparse report`` sub-command, registered in `hf_sparse.cli.COMMANDS`.

matplotlib is imported (through `hf_sparse.reporting`) only when the command runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse


def add_report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="Run directories (Trainer output_dir) or checkpoint directories.")
    p.add_argument("--out", required=True, help="Directory for the PNG figures, report.md and summary.json.")
    p.add_argument("--layer", default=None, help="Layer for the accumulated-mask image (omitted: the first).")
    p.add_argument("--names", nargs="+", default=None, help="Display names of the runs (omitted: the directory names).")


def run_report(args: argparse.Namespace) -> int:
    """Reads the runs, writes the report, prints where it is and the headline numbers."""
    from ..reporting import load_run
    from ..reporting import REPORT_NAME, write_report

    if args.names is not None and len(args.names) != len(args.runs):
        raise ValueError(f"--names has {len(args.names)} names for {len(args.runs)} runs.")
    names = args.names or [None] * len(args.runs)
    runs = [load_run(path, name) for path, name in zip(args.runs, names)]
    result = write_report(runs, args.out, layer=args.layer)
    for s in result["runs"]:
        loss = "n/a" if s["final_loss"] is None else f"{s['final_loss']:.4f}"
        flops = "n/a" if not s["train_flops"] else f"{s['train_flops']:.3e}"
        print(f"{s['name']}: steps {s['steps']}, final loss {loss}, training FLOPs {flops}")
    drawn = sum(1 for f in result["figures"].values() for v in f.values() if v) + sum(
        1 for v in result["shared"].values() if v)
    print(f"wrote {drawn} figures and {args.out}/{REPORT_NAME}")
    return 0
