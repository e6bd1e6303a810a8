"""``hf-sparse --help`` and ``import hf_sparse`` must not import the heavy libraries.

Each check runs in a fresh interpreter (the test process itself has long imported torch) and reads the
modules it loaded from ``-X importtime`` or ``sys.modules``. Together the subprocesses take about a second.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "datasets", "evaluate", "matplotlib")
# The sub-commands, listed here rather than read from `COMMANDS` so a new command cannot slip by unlisted.
SUBCOMMANDS = ("demo", "flops", "bench-inference", "inspect", "densify", "card", "report", "quickstart",
               "reproduce")


def _python(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=60)


def _imported(importtime_stderr: str) -> set:
    """Module names listed by ``-X importtime`` (lines ``import time: self | cumulative | name``)."""
    return {line.rsplit("|", 1)[1].strip() for line in importtime_stderr.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


def _heavy(modules) -> list:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def _subparsers() -> dict:
    from hf_sparse.cli import build_parser

    return next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_build_parser_imports_nothing_heavy():
    # `hf_sparse.cli.main` as an attribute is the re-exported function, so import the module by name.
    code = ("import sys; from hf_sparse.cli.main import build_parser; build_parser(); "
            "print('\\n'.join(sys.modules))")
    res = _python("-c", code)
    assert res.returncode == 0, res.stderr
    assert _heavy(res.stdout.split()) == []


def test_command_list_matches():
    from hf_sparse.cli import COMMANDS

    assert tuple(COMMANDS) == SUBCOMMANDS


@pytest.mark.parametrize("argv", [[], *([c] for c in SUBCOMMANDS)], ids=["hf-sparse", *SUBCOMMANDS])
def test_help_imports_nothing_heavy(argv):
    res = _python("-X", "importtime", "-m", "hf_sparse", *argv, "--help")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"usage: hf-sparse {' '.join(argv)}".rstrip())
    modules = _imported(res.stderr)
    assert "hf_sparse.cli.main" in modules  # the parse of -X importtime output found something
    assert _heavy(modules) == []


def test_help_shows_defaults():
    sub = _subparsers()
    assert "(default: 20)" in sub["demo"].format_help()
    assert "(default: 1024)" in sub["flops"].format_help()


def test_every_option_has_help():
    for name, parser in _subparsers().items():
        for action in parser._actions:
            assert action.help, f"hf-sparse {name} {action.option_strings or action.dest} has no help"


def test_import_package_is_light():
    res = _python("-c", "import sys, hf_sparse; print('\\n'.join(sys.modules))")
    assert res.returncode == 0, res.stderr
    modules = set(res.stdout.split())
    assert "hf_sparse" in modules
    assert sorted(m for m in modules if m == "transformers.trainer"
                  or m.split(".")[0] in ("datasets", "evaluate", "matplotlib")) == []
