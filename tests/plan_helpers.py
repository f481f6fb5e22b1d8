"""Helpers shared by the budget, recommend and cost tests: run the CLI in-process, read a PNG header."""

import json
import struct

from kvplan.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `kvplan ARGS`, run in this process."""
    try:
        main(list(args))
        code = 0
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(capsys, *args: str):
    code, out, err = run_cli(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def png_size(path) -> tuple[int, int]:
    """(width, height) from a PNG's signature and IHDR chunk; fails unless the file starts as a PNG must."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", data[16:24])
    assert data[-8:-4] == b"IEND"  # the last chunk, so the file was written to the end
    return width, height


def assert_one_line_error(code: int, out: str, err: str) -> None:
    assert code != 0
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvplan: error:"), err
    assert "Traceback" not in err
