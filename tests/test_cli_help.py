"""The commands' `--help`, in process (typer's CliRunner): what it promises is what they do."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from llm_router.cli import app


def _help(*command: str) -> str:
    out = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    return " ".join(out.output.replace("│", " ").split())  # one line, without the boxes


def test_ps_help_says_it_needs_a_server() -> None:
    text = _help("ps")
    assert "this process" not in text  # ps has nothing to show without a server
    assert "needs a running server" in text


def test_commands_that_can_work_alone_say_so() -> None:
    for command in ("show", "rm", "chat", "run", "bench"):
        assert "else work in this process" in _help(command), command


def test_version() -> None:
    from llm_router import __version__

    out = CliRunner().invoke(app, ["--version"])
    assert out.exit_code == 0 and out.output.strip() == f"llm-router {__version__}"
    assert __version__ != "0.0.0"  # the installed package's, from pyproject.toml


def test_bench_refuses_no_streams_or_no_tokens() -> None:
    """`--streams 0` measured one stream as if it were asked for."""
    for flag in ("--streams", "--max-tokens"):
        out = CliRunner().invoke(app, ["bench", "m", flag, "0"], env={"COLUMNS": "200"})
        assert out.exit_code == 2, out.output
        assert f"Invalid value for '{flag}'" in out.output


def test_list_is_ls_as_in_ollama(tmp_path: Path) -> None:
    """`llm-router list` (what `ollama list` taught) was "No such command"."""
    ls, listed = (
        CliRunner().invoke(app, [name, "--models-dir", str(tmp_path)], env={"COLUMNS": "200"})
        for name in ("ls", "list")
    )
    assert listed.exit_code == ls.exit_code == 0, listed.output
    assert listed.output == ls.output and "id" in ls.output
    assert " list " not in _help()  # not a second line in the commands' list
