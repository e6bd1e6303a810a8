"""The ``hf-sparse`` command: one module per command group; heavy libraries load only when a command runs.

- `main`: the parser and `main` (``hf-sparse --help`` imports neither torch nor transformers).
- `demo`: ``hf-sparse demo``; `flops`: ``hf-sparse flops``; `checkpoint`: ``inspect``, ``densify``, ``card``,
  ``bench-inference``; `report`: ``hf-sparse report``; `quickstart` / `quickstart_run`: ``hf-sparse quickstart``.
"""

from .main import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "build_parser", "main"]
