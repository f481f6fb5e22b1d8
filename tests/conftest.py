"""Fixtures shared by the tests: `run_cli` runs `kvplan ARGS` in this process, `run_json` its --json output."""

import json

import pytest

from kvplan.cli import main


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """run_cli(*args) -> (exit status, stdout, stderr) of `kvplan ARGS`, run in this process, its tables as a
    400-column terminal shows them (a test may set COLUMNS again)."""
    monkeypatch.setenv("COLUMNS", "400")

    def run(*args: str) -> tuple[int, str, str]:
        try:
            main([str(arg) for arg in args])
            code = 0
        except SystemExit as stop:
            code = 0 if stop.code is None else stop.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def run_json(run_cli):
    """run_json(*args) -> the parsed output of `kvplan ARGS --json`, which must exit 0."""

    def run(*args: str):
        code, out, err = run_cli(*args, "--json")
        assert code == 0, err
        return json.loads(out)

    return run
