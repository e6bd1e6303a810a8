"""Shared machinery of the configuration dataclasses: JSON round trip, version stamp, validation helpers.

Every config is a dataclass whose fields carry their help text in ``metadata["help"]`` (so
``HfArgumentParser`` can turn them into command-line options), is validated in ``__post_init__`` with
errors that repeat the bad value, and round-trips through JSON with the library version stamped in.
Keys written by a newer hf_sparse that this version does not know are dropped with a warning, so an old
install can still read a newer checkpoint's settings.

This package imports nothing from the rest of hf_sparse (it is the bottom layer).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, ClassVar, Dict, Union

from ..version import __version__

logger = logging.getLogger(__name__)




def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {', '.join(map(repr, choices))}.")


class ConfigMixin:
    """JSON round trip, version stamp and forward-compatible loading shared by all hf_sparse configs."""

    config_name: ClassVar[str] = "config"

    def to_dict(self) -> Dict[str, Any]:
        """Returns the config as a plain, JSON-serialisable dict stamped with the hf_sparse version."""
        out = dataclasses.asdict(self)
        out["hf_sparse_version"] = __version__
        return out

    def to_json_string(self) -> str:
        """Returns the config as a pretty-printed JSON string."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: Union[str, os.PathLike]) -> None:
        """Writes the config to ``path`` as JSON."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())

    @classmethod
    def from_dict(cls, data: Dict[str, Any]):
        """Builds a config from a dict, dropping (with a warning) keys this version does not know.

        Args:
            data: A dict as written by `to_dict`, possibly by another hf_sparse version.

        Returns:
            A validated instance of the config class.

        Example:
            >>> cfg = SparsityConfig.from_dict({"sparsity": 0.9, "hf_sparse_version": "0.1.0"})
        """
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}.from_dict expects a dict, got {type(data).__name__}.")
        known = {f.name for f in dataclasses.fields(cls)}
        data = dict(data)
        written_by = data.pop("hf_sparse_version", None)
        unknown = sorted(set(data) - known)
        if unknown:
            logger.warning(
                "Dropping unknown %s keys %s (written by hf_sparse %s, this is %s).",
                cls.__name__, unknown, written_by, __version__,
            )
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json_string(cls, text: str):
        """Builds a config from a JSON string (see `from_dict`)."""
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_json_file(cls, path: Union[str, os.PathLike]):
        """Builds a config from a JSON file (see `from_dict`)."""
        with open(path, encoding="utf-8") as f:
            return cls.from_json_string(f.read())
