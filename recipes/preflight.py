"""What the recipes check before any data is prepared, and how they report a bad input.

`run_recipe` runs a script's ``main``: any error becomes one line on stderr naming the problem (plus a second line
saying how to see the traceback), exit status 1, and an ``--output_dir`` this run created is removed again, so a
failed run leaves nothing behind. ``--debug`` (or ``HF_SPARSE_DEBUG=1``) re-raises with the full traceback.

`check_output_dir`, `check_sparsity_fits` and `check_sequence_length` are the checks the scripts call before data
preparation: the output directory's state, the sparsity structure against the model's real weight shapes, and the
context length against the model's position embeddings.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from torch import nn

import hf_sparse
from hf_sparse.layers import sparse_class_for
from hf_sparse.structure import MaskStructure, check_fits
from hf_sparse.targets import find_target_modules

from arguments import strip_debug_flag

#: Set to 1 for tracebacks instead of one-line errors (same as ``--debug``).
DEBUG_ENV = "HF_SPARSE_DEBUG"
#: Errors of the user's input: reported by their message alone. Anything else also shows its type.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, KeyError)
#: Files whose presence means ``output_dir`` already holds a finished run.
FINISHED_MARKERS = ("results.json", "config.json", "sparsity_config.json")

_created_output_dir: Optional[Path] = None


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) == 0


def check_output_dir(training_args) -> None:
    """Refuses an ``output_dir`` that already holds a finished run (unless resuming), and remembers whether this
    run creates the directory, so `run_recipe` can remove it again after an error.

    Raises:
        ValueError: naming the directory and the file that marks it as finished.
    """
    global _created_output_dir
    out = Path(training_args.output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output_dir {str(out)!r} is a file, not a directory.")
    if training_args.resume_from_checkpoint is None and out.is_dir():
        found = [m for m in FINISHED_MARKERS if (out / m).is_file()]
        if found:
            raise ValueError(f"--output_dir {str(out)!r} already holds a finished run ({found[0]}); choose a new "
                             "directory, delete it, or resume with --resume_from_checkpoint.")
    _created_output_dir = None if out.exists() else out


def check_sparsity_fits(model: nn.Module, sparsity_config) -> None:
    """Checks that ``sparsity_config`` selects layers of ``model`` and that its structure tiles every one of them.

    The same checks `hf_sparse.sparsify_` makes at train start, done before any data is prepared; nothing is
    changed. A model that is already sparse (a sparse checkpoint) keeps its own masks and is not checked.

    Raises:
        ValueError: naming the module, its weight shape and the structure that does not fit.
    """
    if sparsity_config is None or hf_sparse.sparse_modules(model):
        return
    structure = MaskStructure.from_config(sparsity_config)
    for name, module in find_target_modules(model, sparsity_config).items():
        try:
            check_fits(structure, module.weight.shape, sparse_class_for(module).input_dim, name)
        except ValueError as err:
            raise ValueError(f"{err} Choose a --sparsity.block_size / m that divides the model's widths "
                             f"({structure.describe()} does not fit {type(model).__name__}).") from None


def check_sequence_length(model: nn.Module, seq_len: int) -> None:
    """Refuses ``--max_seq_length`` longer than the model's position embeddings (BERT 512, GPT-2 n_positions)."""
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if limit is not None and seq_len > limit:
        raise ValueError(f"max_seq_length={seq_len} exceeds the model's {limit} positions; lower --max_seq_length "
                         "(or raise the positions with --config_overrides when training from scratch).")


def _one_line(err: BaseException) -> str:
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    text = " ".join(text.split()) or type(err).__name__
    return text if isinstance(err, USER_ERRORS) else f"{type(err).__name__}: {text}"


def run_recipe(main: Callable[[Optional[Sequence[str]]], object], argv: Optional[Sequence[str]] = None) -> None:
    """Runs a recipe's ``main(argv)`` and turns any error into a short report and exit status 1.

    Args:
        main: The script's ``main``; it must call `check_output_dir` once the arguments are parsed.
        argv: Command line (``sys.argv[1:]`` by default). A bare ``--debug`` shows the traceback instead (and is
            not passed on; ``--debug <value>`` stays ``TrainingArguments.debug``).

    Example:
        >>> if __name__ == "__main__":
        ...     run_recipe(main)
    """
    global _created_output_dir
    argv, flag = strip_debug_flag(sys.argv[1:] if argv is None else argv)
    debug = flag or os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")
    module = getattr(main, "__module__", "__main__")
    script = f"{module}.py" if module != "__main__" else os.path.basename(sys.argv[0] or "recipe")
    _created_output_dir = None
    try:
        main(argv)
    except (Exception, KeyboardInterrupt) as err:
        if _created_output_dir is not None and _created_output_dir.is_dir() and _is_main_process():
            shutil.rmtree(_created_output_dir, ignore_errors=True)  # only a directory this run created
        if debug or isinstance(err, KeyboardInterrupt):
            raise
        # Deterministic input errors are the same on every process: rank 0 reports them once.
        if _is_main_process() or not isinstance(err, USER_ERRORS):
            print(f"{script}: error: {_one_line(err)}", file=sys.stderr)
            print(f"{script}: (run with --debug or {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        sys.exit(1)
