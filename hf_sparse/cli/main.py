"""The ``hf-sparse`` command line.

Sub-commands are registered in `COMMANDS` as ``name -> (help, add_arguments, run)``; each ``run`` takes the
parsed ``argparse.Namespace`` and returns an exit code. This is the top layer: it may print.

Building the parser imports only the standard library and the command modules, whose heavy imports (torch,
transformers, datasets, evaluate, matplotlib) live inside their ``run`` functions: ``hf-sparse --help`` and
``hf-sparse <command> --help`` stay fast (``tests/test_cli_import.py`` checks it).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Dict, List, Optional, Tuple

from .checkpoint import CHECKPOINT_COMMANDS
from .demo import DEMO_COMMANDS
from .flops import FLOPS_COMMANDS
from .quickstart import QUICKSTART_COMMANDS
from .report import add_report_args, run_report
from .reproduce import REPRODUCE_COMMANDS


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: ...)`` to every option's help, except required options, flags and ``None`` defaults.

    A ``None`` default means "derived when omitted" and the help text says from what; ``(default: None)`` would
    only contradict it, and ``(default: False)`` on a flag says nothing.
    """

    def _get_help_string(self, action: argparse.Action) -> Optional[str]:
        if action.required or action.default is None or isinstance(action, argparse._StoreTrueAction):
            return action.help
        return super()._get_help_string(action)


Command = Tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
COMMANDS: Dict[str, Command] = {
    **DEMO_COMMANDS,  # demo
    **FLOPS_COMMANDS,  # flops
    **CHECKPOINT_COMMANDS,  # bench-inference, inspect, densify, card
    "report": ("Plot a training run (or several): densities, DOF, masks, threshold sparsity, loss vs FLOPs.",
               add_report_args, run_report),
    **QUICKSTART_COMMANDS,  # quickstart
    **REPRODUCE_COMMANDS,  # reproduce
}


def build_parser() -> argparse.ArgumentParser:
    """The ``hf-sparse`` argument parser with every registered sub-command (imports nothing heavy)."""
    parser = argparse.ArgumentParser(prog="hf-sparse", description="Sparse training for Hugging Face models.",
                                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_args, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        add_args(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``hf-sparse`` console script."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args._run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"hf-sparse {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
