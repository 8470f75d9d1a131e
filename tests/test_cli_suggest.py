"""Errors suggest the fix: an unknown flag or subcommand names the close one, in both CLIs."""

from __future__ import annotations

import argparse

import pytest

from thermoledger._cli_suggest import suggest_close, suggestion
from thermoledger.meters import cli as meter_cli
from thermoledger.service import cli as server_cli


def _usage_error(capsys: pytest.CaptureFixture[str], run: object, argv: list[str]) -> str:
    assert callable(run)
    with pytest.raises(SystemExit) as exc:
        run(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_meter_unknown_flag_suggests_the_close_one(capsys: pytest.CaptureFixture[str]) -> None:
    err = _usage_error(capsys, meter_cli.main, ["push", "--sever", "http://x"])
    assert "unknown flag --sever; did you mean --server?" in err


def test_meter_unknown_subcommand_suggests_the_close_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    err = _usage_error(capsys, meter_cli.main, ["pus"])
    assert "did you mean 'push'?" in err


def test_server_unknown_subcommand_suggests_the_close_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    err = _usage_error(capsys, server_cli.main, ["serv"])
    assert "did you mean 'serve'?" in err


def test_server_unknown_nested_subcommand_and_flag(capsys: pytest.CaptureFixture[str]) -> None:
    err = _usage_error(capsys, server_cli.main, ["token", "creat"])
    assert "did you mean 'create'?" in err
    err = _usage_error(capsys, server_cli.main, ["migrate", "--database-ulr", "sqlite://"])
    assert "unknown flag --database-ulr; did you mean --database-url?" in err


def test_server_bad_choice_suggests_the_close_one(capsys: pytest.CaptureFixture[str]) -> None:
    err = _usage_error(capsys, server_cli.main, ["serve", "--log-format", "jsn"])
    assert "did you mean 'json'?" in err


def test_nothing_close_adds_no_hint(capsys: pytest.CaptureFixture[str]) -> None:
    err = _usage_error(capsys, server_cli.main, ["migrate", "--qqqqqqq"])
    assert "unrecognized arguments: --qqqqqqq" in err
    assert "did you mean" not in err


def test_suggestion_reads_argparse_messages() -> None:
    options = ["--server", "--token", "-v"]
    assert suggestion("unrecognized arguments: --sever=u", options) == (
        "unknown flag --sever; did you mean --server?"
    )
    assert suggestion("unrecognized arguments: positional", options) is None
    message = "argument COMMAND: invalid choice: 'rn' (choose from 'run', 'push')"
    assert suggestion(message, options) == "did you mean 'run'?"
    assert suggestion("the following arguments are required: --x", options) is None


def test_suggest_close_keeps_argparse_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="p")
    parser.add_argument("--alpha")
    assert suggest_close(parser) is parser
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--alpah", "1"])
    assert exc.value.code == 2
    assert "did you mean --alpha?" in capsys.readouterr().err
