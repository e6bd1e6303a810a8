"""Crash-safe writes and the main-process rule shared by every writer of checkpoints and exports.

`atomic_directory` builds a directory in a temporary sibling and swaps it in, so an interrupted write leaves
the previous version in place, and removes the temporaries that killed writers left behind; `replace_file` does
the same for one file; `apply_umask_` gives files the permissions ``open()`` would (safetensors writes 0600);
`is_main_process` decides which process of a distributed run writes.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Union

import torch

logger = logging.getLogger(__name__)

#: Temporaries without an owner record (hf_sparse <= 0.1) count as stale once this old.
LEGACY_STALE_SECONDS = 24 * 3600


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


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (``os.umask`` must set it to read it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def apply_umask_(paths: Iterable[Union[str, os.PathLike]]) -> None:
    """Gives each file the mode ``open()`` would have created it with (``0o666 & ~umask``), in place.

    safetensors writes its files with mode 0600, so a checkpoint would otherwise mix 0600 weights with 0644
    configs, and a group-shared output directory could not be read by the rest of the group.

    Args:
        paths: Files this process just wrote.

    Example:
        >>> apply_umask_([out / "model.safetensors"])
    """
    mode = 0o666 & ~_umask()
    for path in paths:
        os.chmod(path, mode)


def _owner_tag() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def remove_stale_temporaries(final: Path) -> int:
    """Removes the hidden ``.<name>.tmp-*`` / ``.<name>.old-*`` siblings of ``final`` that no live process owns.

    A writer killed during `atomic_directory` leaves its temporary (a whole checkpoint in size) behind. Names
    carry ``<host>-<pid>``: a temporary of this host whose process is gone is removed; those of other hosts (a
    shared file system) and of live processes are kept. An ``.old-*`` directory is only removed while ``final``
    exists (otherwise it is the previous version, caught between the two renames of the swap). Temporaries
    written before owners were recorded are removed once older than `LEGACY_STALE_SECONDS`.

    Args:
        final: The checkpoint directory whose temporaries to clean.

    Returns:
        How many were removed.
    """
    final = Path(final)
    if not final.parent.is_dir():
        return 0
    pattern = re.compile(rf"\.{re.escape(final.name)}\.(tmp|old)-(?:(.+)-(\d+)-)?([0-9a-f]{{8}})")
    host, removed = socket.gethostname(), 0
    for entry in os.listdir(final.parent):
        match = pattern.fullmatch(entry)
        if match is None:
            continue
        kind, owner_host, pid = match.group(1), match.group(2), match.group(3)
        path = final.parent / entry
        if kind == "old" and not final.is_dir():
            continue
        if pid is None:
            try:
                stale = time.time() - path.lstat().st_mtime > LEGACY_STALE_SECONDS
            except OSError:
                continue
        else:
            stale = owner_host == host and not _pid_alive(int(pid))
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    if removed:
        logger.info("Removed %d stale temporaries of %s left by interrupted saves.", removed, final)
    return removed


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
    hidden ``.<name>.old-*`` name instead of ``final``. Temporaries of ``final`` left by killed writers are removed
    first (`remove_stale_temporaries`).

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
    remove_stale_temporaries(final)
    tmp = final.parent / f".{final.name}.tmp-{_owner_tag()}-{uuid.uuid4().hex[:8]}"
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
            old = final.parent / f".{final.name}.old-{_owner_tag()}-{uuid.uuid4().hex[:8]}"
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
