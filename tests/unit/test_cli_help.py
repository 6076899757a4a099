"""Help screens read as sentences: no summary cut mid-sentence, no placeholder defaults or
type names where a user expects a value's form, plain flags without a `--no-` twin."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from gpuflow.cli.main import app

_GROUPS = [[], ["server"], ["env"]]
_COMMANDS = [
    *([name] for name in ("submit", "status", "logs", "batch", "janitor", "bootstrap")),
    *([name] for name in ("demo", "run", "reconcile")),
    *(["server", name] for name in ("start", "stop", "status")),
    *(["env", name] for name in ("build", "list", "show", "resolve", "pin", "unpin", "gc")),
]


def _help(command: list[str]) -> str:
    # 80 columns: the width of a default terminal, where click cuts summaries shortest.
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("group", _GROUPS, ids=lambda group: " ".join(["gpuflow", *group]))
def test_command_summaries_are_whole_sentences(group: list[str]) -> None:
    listing = _help(group).split("Commands:")[1]
    cut = [line.strip() for line in listing.splitlines() if line.rstrip().endswith("...")]
    assert cut == [], f"summaries cut mid-sentence: {cut}"


@pytest.mark.parametrize("command", _COMMANDS, ids=lambda command: " ".join(command))
def test_options_show_forms_and_defaults_a_user_can_read(command: list[str]) -> None:
    screen = _help(command)
    assert "(dynamic)" not in screen
    assert "list[str]" not in screen and "<bool>" not in screen
    assert " / --no-" not in screen, "a plain flag is shown with a --no- twin"


def test_submit_help_names_units_and_examples() -> None:
    screen = " ".join(_help(["submit"]).split())
    assert "--set FIELD=VALUE" in screen
    assert "Video size in pixels, WIDTHxHEIGHT" in screen and "e.g. 832x480" in screen
    assert "GPU type the job must run on (e.g. h100); empty means any." in screen
    assert "default: (the nearest .gpuflow/ here or above, else ./.gpuflow)" in screen
