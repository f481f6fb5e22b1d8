"""Helpers shared by the budget, recommend and cost tests: read a PNG header, check a one-line error."""

import struct

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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
