"""Seeded random generators: every random choice of hf_sparse is drawn from one of these.

A generator is keyed by the config seed and by what it is for (``"mask"``, ``"init"``, ``"update"``), the step
and the module name, so every process of a distributed run, and a resumed run, draws exactly the same values
without any communication.
"""

from __future__ import annotations

import hashlib
from typing import Optional

import torch


def derive_seed(seed: int, *keys) -> int:
    """A stable 63-bit seed from a base seed and any keys (module name, step...).

    Uses SHA-256 rather than Python's ``hash`` (randomised per process), so every process of a distributed
    run, and a resumed run, derives the same seed.

    Example:
        >>> derive_seed(0, "bert.encoder.layer.0.attention.self.query", 100) == derive_seed(
        ...     0, "bert.encoder.layer.0.attention.self.query", 100)
        True
    """
    text = "\x1f".join(str(k) for k in (seed,) + keys)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def make_generator(seed: int, *keys, device: Optional[torch.device] = None) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``derive_seed(seed, *keys)``."""
    gen = torch.Generator(device=device if device is not None else "cpu")
    gen.manual_seed(derive_seed(seed, *keys))
    return gen
