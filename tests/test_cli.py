import subprocess
import sys
import warnings

import pytest

from hf_sparse.cli import build_parser, main


@pytest.mark.parametrize("argv", [
    ["demo", "--steps", "8"],
    ["demo", "--model", "gpt2", "--structure", "nm", "--steps", "8"],
    ["demo", "--structure", "block", "--block_size", "16", "--steps", "3"],
])
def test_demo_trains_and_stays_sparse(argv, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "sparse modules" in out and "non-zero inactive weights after training: 0" in out
    first, last = (float(x) for x in out.split("loss ")[1].split(";")[0].split(" -> "))
    if "--steps" in argv and int(argv[argv.index("--steps") + 1]) >= 8:
        assert last < first


def test_bad_value_gives_clean_error(capsys):
    assert main(["demo", "--sparsity", "1.5", "--steps", "1"]) == 2
    assert "sparsity=1.5" in capsys.readouterr().err


def test_parser_lists_commands():
    assert "demo" in build_parser().format_help()


@pytest.mark.slow
def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "hf_sparse", "demo", "--steps", "2"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "12 sparse modules" in out.stdout


@pytest.mark.parametrize("model", ["bert", "gpt2"])
def test_demo_raises_no_warning(model, capfd):
    # Every Python warning is an error here, and transformers' own logger (it writes to stderr directly) must stay
    # silent too: e.g. GPT-2's "`loss_type=None` ... unrecognized", which the demo fixes by naming the loss.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["demo", "--model", model, "--steps", "2"]) == 0
    err = capfd.readouterr().err
    assert "unrecognized" not in err and "warn" not in err.lower(), err
