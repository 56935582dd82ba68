"""Every make target's command (python -m covidseg.<target>) prints its usage with --help: a help text that
argparse cannot format (a literal % in it) crashed `python -m covidseg.experiment --help`."""
import importlib

import pytest

from tests.helpers import exit_status

COMMANDS = ("synthetic", "convert", "preprocess", "baseline", "control", "selftrain", "meanteacher", "weights",
            "semi", "evaluate", "predict", "gradcam", "report", "export", "import", "experiment")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_prints_its_usage(command, capsys):
    module = importlib.import_module(f"covidseg.{command}")
    assert exit_status(module.main, "--help") == 0
    assert capsys.readouterr().out.startswith("usage:")


def test_the_package_docstring_lists_every_command():
    import covidseg
    listed = {line.split()[0] for line in covidseg.__doc__.split("\n\n")[2].splitlines() if line.startswith("    ")}
    assert listed == set(COMMANDS)
