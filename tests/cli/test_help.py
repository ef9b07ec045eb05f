"""Every command has help, found by walking the real parser (so a new command is checked too)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from agenttasks.cli.main import build_parser
from agenttasks.settings import NOT_READ_BY_SERVE, Settings

from .support import ok, run_cli, usage_error


def walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str | None]]:
    """(path, parser, the help its parent lists it with) for every command and subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            listed = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield (*path, name), sub, listed.get(name)
                yield from walk(sub, (*path, name))


COMMANDS = {path: (parser, listed) for path, parser, listed in walk(build_parser())}
LEAVES = {path: parser for path, (parser, _) in COMMANDS.items() if not parser._subparsers}
CLIENT_COMMANDS = sorted(path for path, parser in LEAVES.items() if "client_command" in parser._defaults)


def ids(path: tuple[str, ...]) -> str:
    return " ".join(path)


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def test_the_tree_is_what_the_issue_asks_for() -> None:
    """A guard that the walk found the commands at all (it is not a list of what must exist)."""
    for path in [("serve",), ("keys", "create"), ("token",), ("agents", "create"), ("submit",), ("tasks", "list")]:
        assert path in COMMANDS, sorted(COMMANDS)
    assert len(CLIENT_COMMANDS) >= 10


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=ids)
def test_every_command_has_help_text(path: tuple[str, ...]) -> None:
    parser, listed = COMMANDS[path]
    assert listed and listed.strip(), f"'{ids(path)}' has no help in its parent's list"
    assert parser.description and parser.description.strip(), f"'{ids(path)}' has no description"
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help.strip(), f"'{ids(path)}' argument {name} has no help"


@pytest.mark.parametrize("path", CLIENT_COMMANDS, ids=ids)
def test_every_client_command_takes_server_and_api_key(path: tuple[str, ...]) -> None:
    assert {"--server", "--api-key", "--json"} <= options(LEAVES[path])


@pytest.mark.parametrize("path", sorted(LEAVES), ids=ids)
def test_connection_and_database_flags_go_together_consistently(path: tuple[str, ...]) -> None:
    found = options(LEAVES[path])
    if "--server" in found:
        assert "--api-key" in found, f"'{ids(path)}' connects to a server without a way to pass a credential"
    if path in CLIENT_COMMANDS:
        assert "--db" not in found, f"'{ids(path)}' talks to the server; it has no business with the file"


def test_help_on_every_command_exits_0_and_prints_usage() -> None:
    """Real processes, a few at a time (each one pays the interpreter's start-up)."""
    paths = [(), *sorted(COMMANDS)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda path: run_cli(*path, "--help"), paths))
    for path, result in zip(paths, results, strict=True):
        out = ok(result)
        assert out.startswith("usage: agenttasks" + "".join(f" {p}" for p in path)), (path, out[:200])
        assert result.stderr == "", (path, result.stderr)
    top = results[0].stdout
    for name in {path[0] for path in COMMANDS}:
        assert name in top, f"'agenttasks --help' does not list {name}"


def test_no_command_prints_help_and_exits_2() -> None:
    result = run_cli()
    assert result.returncode == 2
    assert result.stdout.startswith("usage: agenttasks")


def test_a_group_without_its_action_is_a_usage_error() -> None:
    for group in sorted({path[0] for path in COMMANDS if len(path) > 1}):
        assert "required" in usage_error(run_cli(group)), group


def test_an_unknown_command_is_a_usage_error() -> None:
    assert "invalid choice" in usage_error(run_cli("frobnicate"))


def test_version() -> None:
    assert ok(run_cli("--version")).startswith("agenttasks ")


def test_serve_help_lists_every_setting_it_reads_with_its_default() -> None:
    out = ok(run_cli("serve", "--help"))
    listed = {line.split()[0]: line for line in out.splitlines() if line.startswith("  AGENTTASKS_")}
    for name in Settings.model_fields:
        variable = f"AGENTTASKS_{name.upper()}"
        if name in NOT_READ_BY_SERVE:
            assert variable not in listed, f"'serve --help' lists {variable}, which serve does not read"
            continue
        line = listed.get(variable)
        assert line is not None, f"'serve --help' does not list {variable}"
        assert "(default " in line, line
    assert "AGENTTASKS_MAX_TIME_SHARE_PER_TENANT (default 0.25)" in out
