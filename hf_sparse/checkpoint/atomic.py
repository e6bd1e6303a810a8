"""Crash-safe writes and the main-process rule shared by every writer of checkpoints and exports.

`atomic_directory` builds a directory in a temporary sibling and swaps it in, so an interrupted write leaves
the previous version in place; `replace_file` does the same for one file; `is_main_process` decides which
process of a distributed run writes.
"""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch


def is_main_process(explicit: Optional[bool] = None) -> bool:
    """Whether this process should write: ``explicit`` if given, else rank 0 of ``torch.distributed`` or of an
    Accelerate run that has initialised its state, else ``True``."""
    if explicit is not None:
        return bool(explicit)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    from accelerate import PartialState

    if PartialState._shared_state:  # set up by `accelerate launch` / Accelerator(); never created here
        return PartialState().is_main_process
    return True


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # no data copied; removing the old directory later keeps the data alive
    except OSError:
        shutil.copy2(src, dst)


@contextmanager
def atomic_directory(final: Path, carry_over: Callable[[str], bool] = lambda entry: True) -> Iterator[Path]:
    """Yields an empty temporary sibling of ``final``; on success it replaces ``final``, on error it is removed.

    Entries of an existing ``final`` for which ``carry_over(name)`` is true and that the new version did not
    write (tokenizer files, trainer state, sub-folders) are hard-linked into the new version first. The swap
    is two renames on the same file system; only between them (microseconds) is the old version under a
    hidden ``.<name>.old-*`` name instead of ``final``.

    Args:
        final: The directory to (re)place.
        carry_over: Which existing entries to keep.

    Example:
        >>> with atomic_directory(Path("out/ckpt")) as tmp:
        ...     (tmp / "config.json").write_text("{}")
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and not final.is_dir():
        raise FileExistsError(f"{final} exists and is not a directory.")
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if final.is_dir():
            for entry in os.listdir(final):
                if not carry_over(entry) or (tmp / entry).exists():
                    continue
                src = final / entry
                if src.is_dir() and not src.is_symlink():
                    shutil.copytree(src, tmp / entry, copy_function=_link_or_copy, symlinks=True)
                else:
                    _link_or_copy(str(src), str(tmp / entry))
            old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def in_place_directory(final: Path) -> Iterator[Path]:
    """The non-atomic counterpart of `atomic_directory`: yields ``final`` itself (created if missing)."""
    final = Path(final)
    final.mkdir(parents=True, exist_ok=True)
    yield final


def replace_file(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and ``os.replace`` (readers see old or new, never half)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
